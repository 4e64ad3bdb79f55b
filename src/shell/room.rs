//! The conversation Durable Object: owns the sockets, the session and the running turn; streams model output to every socket.

use super::{db, new_id, now_iso, now_ms, tools, upstream};
use crate::agents::AgentConfig;
use crate::catalog::{self, Catalog};
use crate::commands::{self, Command};
use crate::config::{Config, ProviderConfig};
use crate::conversation::{
    self, Emit, RateLimiter, SessionState, StepOutcome, StopReason, StreamLog, Turn,
};
use crate::llm::{
    CallSpec, ChatMessage, ThinkingLevel, ToolCall, UpstreamError, UpstreamErrorKind,
};
use crate::protocol::{self, sio, ClientEvent, ErrorCode, Limits, MessageEvent, OutEvent};
use crate::routing::{RoutingContext, RoutingDecision, Target};
use crate::selection;
use crate::store::{self, sql};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::Duration;
use worker::*;

/// The socket.io namespace the gateway serves.
const NSP: &str = "/chat";
/// What a user hears about someone else's conversation.
const FORBIDDEN: &str = "forbidden: this conversation belongs to another user";
/// How long operator configuration read from D1 is reused by a conversation.
const OPERATOR_CACHE_MS: i64 = 60_000;
/// Bytes of stream events kept for resume.
const REPLAY_BYTES: usize = 4 * 1024 * 1024;

/// Per-socket data kept in the hibernation attachment (at most 2 KB).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct SocketMeta {
    /// The authenticated user; `None` for a socket.io socket before its CONNECT.
    user: Option<String>,
    /// socket.io framing (else JSON).
    sio: bool,
    /// socket.io: CONNECT to `/chat` accepted.
    connected: bool,
    /// socket.io session id of the namespace.
    sid: String,
    /// socket.io recovery id.
    pid: String,
}

/// A message waiting for the running turn to end.
struct Pending {
    ws: WebSocket,
    meta: SocketMeta,
    message: MessageEvent,
    ack: Option<u64>,
}

/// In-memory state, rebuilt from storage after eviction or hibernation.
struct Room {
    loaded: bool,
    id: String,
    id_json: String,
    owner: Option<String>,
    session: SessionState,
    log: StreamLog,
    history: Option<Vec<ChatMessage>>,
    turn_running: bool,
    queue: VecDeque<Pending>,
    rate: RateLimiter,
    sockets: Option<Vec<(WebSocket, SocketMeta)>>,
}

/// Operator configuration from D1, cached per object.
struct Operator {
    fetched_ms: i64,
    catalog: Catalog,
    rules: crate::routing::CompiledRules,
    agents: Vec<(String, AgentConfig)>,
}

/// A planned turn: its model candidates, agent and context, with the first call started.
struct Plan {
    operator: Rc<Operator>,
    agent_name: Option<String>,
    agent: Option<AgentConfig>,
    candidates: Vec<RoutingDecision>,
    tools: Vec<crate::llm::ToolSpec>,
    base: Vec<ChatMessage>,
    first_call: Option<std::result::Result<upstream::ModelStream, UpstreamError>>,
}

/// What every model call of a turn shares.
struct Steps<'a> {
    candidates: &'a [RoutingDecision],
    /// The context before this turn's own steps: system prompt, history, the user message.
    base: &'a [ChatMessage],
    tools: &'a [crate::llm::ToolSpec],
    agent: Option<&'a AgentConfig>,
    config: &'a Config,
    id: &'a str,
    id_json: &'a str,
    catalog: &'a Catalog,
}

#[durable_object]
pub struct Conversation {
    state: State,
    env: Env,
    config: Result<Rc<Config>>,
    room: RefCell<Room>,
    operator: RefCell<Option<Rc<Operator>>>,
    abort: RefCell<Option<AbortController>>,
    aborted: Cell<bool>,
}

impl DurableObject for Conversation {
    fn new(state: State, env: Env) -> Self {
        let config = super::load_config(&env)
            .map(Rc::new)
            .map_err(|e| Error::RustError(e.to_string()));
        let window = config
            .as_ref()
            .map(|c| c.replay_window_ms)
            .unwrap_or(120_000);
        Conversation {
            state,
            env,
            config,
            room: RefCell::new(Room {
                loaded: false,
                id: String::new(),
                id_json: "\"\"".into(),
                owner: None,
                session: SessionState::default(),
                log: StreamLog::new(1, window, REPLAY_BYTES),
                history: None,
                turn_running: false,
                queue: VecDeque::new(),
                rate: RateLimiter::default(),
                sockets: None,
            }),
            operator: RefCell::new(None),
            abort: RefCell::new(None),
            aborted: Cell::new(false),
        }
    }

    async fn fetch(&self, mut req: Request) -> Result<Response> {
        let conversation = req
            .headers()
            .get(super::gateway::H_CONVERSATION)?
            .unwrap_or_default();
        self.ensure_loaded(Some(&conversation))?;
        let config = self.config()?;
        match req.path().as_str() {
            "/connect" => self.attach(&req, &config).await,
            "/reload" => {
                let body: Value = req.json().await.unwrap_or(Value::Null);
                self.reload(body).await
            }
            "/invalidate" => {
                // An admin changed rules, agents or catalog rows: read them again at the next turn.
                self.operator.borrow_mut().take();
                super::json_response(200, &json!({ "sockets": self.socket_count(), "failed": 0 }))
            }
            "/model" => {
                let body: Value = req.json().await.unwrap_or(Value::Null);
                let model = body
                    .get("model")
                    .and_then(|m| m.as_str())
                    .map(str::to_string);
                match self.set_model_override(model).await {
                    Ok(info) => super::json_text(200, info),
                    Err(message) => super::json_response(400, &json!({ "error": message })),
                }
            }
            _ => super::json_response(404, &json!({ "error": "unknown conversation route" })),
        }
    }

    async fn websocket_message(
        &self,
        ws: WebSocket,
        message: WebSocketIncomingMessage,
    ) -> Result<()> {
        self.ensure_loaded(None)?;
        let config = self.config()?;
        let meta: SocketMeta = ws.deserialize_attachment()?.unwrap_or_default();
        let limits = Limits {
            max_content_bytes: config.max_message_bytes,
        };
        let text = match message {
            WebSocketIncomingMessage::String(s) => s,
            WebSocketIncomingMessage::Binary(_) => {
                if meta.sio {
                    let _ = ws.close(Some(1003), Some("binary packets are not supported"));
                } else {
                    self.send_error(
                        &ws,
                        &meta,
                        ErrorCode::InvalidPayload,
                        "binary frames are not supported; send JSON text frames",
                    );
                }
                return Ok(());
            }
        };
        if !meta.sio {
            match protocol::decode_json_frame(&text, &limits) {
                Ok(event) => self.handle_event(&ws, &meta, event, None, &config).await,
                Err(e) => self.send_error(&ws, &meta, e.code, &e.message),
            }
            return Ok(());
        }
        if text.len() > protocol::max_frame_bytes(&limits) {
            self.send_error(
                &ws,
                &meta,
                ErrorCode::PayloadTooLarge,
                "packet larger than the gateway accepts",
            );
            return Ok(());
        }
        match sio::decode(&text) {
            Ok(sio::Inbound::Ping) => {
                let _ = ws.send_with_str("3");
            }
            Ok(
                sio::Inbound::Pong
                | sio::Inbound::Noop
                | sio::Inbound::Upgrade
                | sio::Inbound::Ack { .. },
            ) => {}
            Ok(sio::Inbound::Close) => {
                let _ = ws.close(Some(1000), Some("closed by client"));
            }
            Ok(sio::Inbound::Connect { nsp, auth }) => {
                self.sio_connect(&ws, meta, &nsp, auth).await?
            }
            Ok(sio::Inbound::Disconnect { .. }) => {
                let mut meta = meta;
                meta.connected = false;
                self.set_meta(&ws, &meta)?;
            }
            Ok(sio::Inbound::Event {
                nsp,
                ack_id,
                name,
                args,
            }) => {
                if nsp != NSP || !meta.connected {
                    let _ = ws.send_with_str(sio::connect_error(
                        &nsp,
                        "connect to the /chat namespace first",
                        None,
                    ));
                    return Ok(());
                }
                let data = args.into_iter().next().unwrap_or_else(|| json!({}));
                match protocol::decode_event(&name, data, &limits) {
                    Ok(event) => self.handle_event(&ws, &meta, event, ack_id, &config).await,
                    Err(e) => {
                        self.send_error(&ws, &meta, e.code, &e.message);
                        if let Some(id) = ack_id {
                            let _ = ws.send_with_str(sio::ack(
                                NSP,
                                id,
                                &format!("[{}]", protocol::error_payload(None, e.code, &e.message)),
                            ));
                        }
                    }
                }
            }
            Err(e) => {
                if meta.connected {
                    self.send_error(
                        &ws,
                        &meta,
                        ErrorCode::InvalidPayload,
                        &format!("malformed socket.io packet: {e}"),
                    );
                } else {
                    let reason: String = e.to_string().chars().take(120).collect();
                    let _ = ws.close(Some(1008), Some(reason));
                }
            }
        }
        Ok(())
    }

    async fn websocket_close(
        &self,
        ws: WebSocket,
        code: usize,
        _reason: String,
        _was_clean: bool,
    ) -> Result<()> {
        self.ensure_loaded(None)?;
        // Reciprocate; reserved codes cannot be sent back.
        let code = match code {
            1005 | 1006 | 1015 => 1000,
            c => c as u16,
        };
        let _ = ws.close(Some(code), Some("closing"));
        self.forget_socket(&ws).await;
        Ok(())
    }

    async fn websocket_error(&self, ws: WebSocket, _error: Error) -> Result<()> {
        self.ensure_loaded(None)?;
        self.forget_socket(&ws).await;
        Ok(())
    }

    async fn alarm(&self) -> Result<Response> {
        self.ensure_loaded(None)?;
        let config = self.config()?;
        let sockets = self.sockets();
        let mut any_sio = false;
        for (ws, meta) in &sockets {
            if meta.sio {
                any_sio = true;
                let _ = ws.send_with_str(sio::ping());
            }
        }
        self.room.borrow_mut().log.prune(now_ms());
        if any_sio {
            self.state
                .storage()
                .set_alarm(Duration::from_millis(config.sio_ping_interval_ms))
                .await?;
        }
        Response::ok("ok")
    }
}

impl Conversation {
    fn config(&self) -> Result<Rc<Config>> {
        match &self.config {
            Ok(c) => Ok(c.clone()),
            Err(e) => Err(Error::RustError(e.to_string())),
        }
    }

    fn sql(&self) -> SqlStorage {
        self.state.storage().sql()
    }

    /// Loads the conversation's durable state into memory once per instance.
    fn ensure_loaded(&self, id_hint: Option<&str>) -> Result<()> {
        if self.room.borrow().loaded {
            return Ok(());
        }
        let sql = self.sql();
        sql.exec(
            "CREATE TABLE IF NOT EXISTS kv (k TEXT PRIMARY KEY, v TEXT NOT NULL)",
            None,
        )?;
        sql.exec("CREATE TABLE IF NOT EXISTS seen (client_id TEXT PRIMARY KEY, message_id TEXT NOT NULL, at INTEGER NOT NULL)", None)?;
        #[derive(Deserialize)]
        struct Kv {
            k: String,
            v: String,
        }
        let rows: Vec<Kv> = sql.exec("SELECT k, v FROM kv", None)?.to_array()?;
        let get = |key: &str| rows.iter().find(|r| r.k == key).map(|r| r.v.clone());
        let mut room = self.room.borrow_mut();
        let id = match (get("id"), id_hint) {
            (Some(id), _) => id,
            (None, Some(hint)) if !hint.is_empty() => {
                sql.exec(
                    "INSERT OR REPLACE INTO kv (k, v) VALUES ('id', ?)",
                    vec![hint.into()],
                )?;
                hint.to_string()
            }
            _ => {
                return Err(Error::RustError(
                    "conversation object used before its id was known".into(),
                ))
            }
        };
        room.id_json = protocol::json_str(&id);
        room.id = id;
        room.owner = get("owner");
        room.session = get("session")
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or_default();
        let mut next_seq: u64 = get("seq").and_then(|s| s.parse().ok()).unwrap_or(1);
        if get("turn").as_deref() == Some("running") {
            // The instance died mid-turn: numbers issued since the last save are unknown, so skip past them.
            next_seq += 1_000_000;
        }
        let window = self
            .config
            .as_ref()
            .map(|c| c.replay_window_ms)
            .unwrap_or(120_000);
        room.log = StreamLog::new(next_seq, window, REPLAY_BYTES);
        room.loaded = true;
        Ok(())
    }

    fn kv_put(&self, key: &str, value: &str) {
        if let Err(e) = self.sql().exec(
            "INSERT OR REPLACE INTO kv (k, v) VALUES (?, ?)",
            vec![key.into(), value.into()],
        ) {
            console_error!("storing {key}: {e}");
        }
    }

    /// Persists the session durably (object storage, authoritative) and mirrors it to D1.
    async fn save_session(&self) {
        let (id, text) = {
            let room = self.room.borrow();
            (
                room.id.clone(),
                serde_json::to_string(&room.session).unwrap_or_default(),
            )
        };
        self.kv_put("session", &text);
        if let Ok(d) = db::db(&self.env) {
            if let Err(e) = db::run(
                &d,
                sql::SAVE_SESSION,
                &[db::text(&id), db::text(&text), db::num(now_ms())],
            )
            .await
            {
                console_warn!("mirroring the session to D1: {e}");
            }
        }
    }

    /// Fills the socket cache from the runtime after a wake-up; a no-op when it is warm.
    fn ensure_sockets(&self) {
        let mut room = self.room.borrow_mut();
        if room.sockets.is_none() {
            let list = self.state.get_websockets().into_iter().map(|ws| {
                let meta = ws
                    .deserialize_attachment()
                    .ok()
                    .flatten()
                    .unwrap_or_default();
                (ws, meta)
            });
            room.sockets = Some(list.collect());
        }
    }

    /// A copy of the attached sockets, for loops that may await.
    fn sockets(&self) -> Vec<(WebSocket, SocketMeta)> {
        self.ensure_sockets();
        self.room.borrow().sockets.clone().unwrap_or_default()
    }

    fn socket_count(&self) -> usize {
        self.ensure_sockets();
        self.room.borrow().sockets.as_ref().map_or(0, |l| l.len())
    }

    fn set_meta(&self, ws: &WebSocket, meta: &SocketMeta) -> Result<()> {
        ws.serialize_attachment(meta)?;
        self.ensure_sockets();
        if let Some(list) = self.room.borrow_mut().sockets.as_mut() {
            match list.iter_mut().find(|(w, _)| same(w, ws)) {
                Some(entry) => entry.1 = meta.clone(),
                None => list.push((ws.clone(), meta.clone())),
            }
        }
        Ok(())
    }

    async fn forget_socket(&self, ws: &WebSocket) {
        self.ensure_sockets();
        let remaining = {
            let mut room = self.room.borrow_mut();
            if let Some(list) = room.sockets.as_mut() {
                list.retain(|(w, _)| !same(w, ws));
            }
            room.sockets.as_ref().map(|l| l.len()).unwrap_or(0)
        };
        self.update_live(remaining).await;
    }

    /// Keeps this conversation's row in the live registry in step with its sockets and turn.
    async fn update_live(&self, sockets: usize) {
        self.live_write(sockets).await;
    }

    /// The same registry write off the turn's path: the turn need not wait for bookkeeping.
    fn update_live_later(&self, sockets: usize) {
        let write = self.live_write(sockets);
        wasm_bindgen_futures::spawn_local(write);
    }

    fn live_write(&self, sockets: usize) -> impl std::future::Future<Output = ()> + 'static {
        let (id, turning) = {
            let room = self.room.borrow();
            (room.id.clone(), room.turn_running)
        };
        let env = self.env.clone();
        async move {
            let Ok(d) = db::db(&env) else { return };
            let result = if sockets == 0 && !turning {
                db::run(&d, sql::UNREGISTER_LIVE, &[db::text(&id)]).await
            } else {
                let params = [
                    db::text(&id),
                    db::num(now_ms()),
                    db::num(sockets as i64),
                    db::num(turning as i64),
                ];
                db::run(&d, sql::REGISTER_LIVE, &params).await
            };
            if let Err(e) = result {
                console_warn!("live registry: {e}");
            }
        }
    }

    // ---- sending -------------------------------------------------------------------------

    /// Frames an event for one socket.
    fn frame(event: &OutEvent, meta: &SocketMeta) -> Option<String> {
        if meta.sio {
            // Events reach a socket.io client only in its connected namespace; the offset enables recovery.
            meta.connected.then(|| {
                sio::event(
                    NSP,
                    event.name,
                    &event.data,
                    event.seq.map(|s| s.to_string()).as_deref(),
                )
            })
        } else {
            Some(event.json_frame())
        }
    }

    fn send_to(&self, ws: &WebSocket, meta: &SocketMeta, event: &OutEvent) {
        if let Some(frame) = Self::frame(event, meta) {
            let _ = ws.send_with_str(frame);
        }
    }

    /// Numbers a stream event, keeps it for resume and sends it to every socket; each framing is built once.
    fn broadcast(&self, name: &'static str, data: String) {
        self.ensure_sockets();
        let mut guard = self.room.borrow_mut();
        let room = &mut *guard; // split borrows: the logged event and the socket list
        let event = room.log.push(name, data, now_ms());
        let mut json_frame: Option<String> = None;
        let mut sio_frame: Option<String> = None;
        for (ws, meta) in room.sockets.iter().flatten() {
            let frame = if meta.sio {
                if !meta.connected {
                    continue;
                }
                sio_frame.get_or_insert_with(|| {
                    sio::event(
                        NSP,
                        event.name,
                        &event.data,
                        Some(&event.seq.unwrap_or(0).to_string()),
                    )
                })
            } else {
                json_frame.get_or_insert_with(|| event.json_frame())
            };
            let _ = ws.send_with_str(frame.as_str());
        }
    }

    /// Sends an event outside the stream to every socket; returns (sent, failed).
    fn broadcast_unsequenced(&self, event: &OutEvent) -> (u64, u64) {
        let (mut sent, mut failed) = (0, 0);
        for (ws, meta) in self.sockets() {
            if let Some(frame) = Self::frame(event, &meta) {
                match ws.send_with_str(frame) {
                    Ok(()) => sent += 1,
                    Err(_) => failed += 1,
                }
            }
        }
        (sent, failed)
    }

    fn send_error(&self, ws: &WebSocket, meta: &SocketMeta, code: ErrorCode, message: &str) {
        let id = self.room.borrow().id.clone();
        self.send_to(
            ws,
            meta,
            &OutEvent::unsequenced("error", protocol::error_payload(Some(&id), code, message)),
        );
    }

    fn send_ack(ws: &WebSocket, ack: Option<u64>, payload: &str) {
        if let Some(id) = ack {
            let _ = ws.send_with_str(sio::ack(NSP, id, &format!("[{payload}]")));
        }
    }

    fn manifest(&self) -> OutEvent {
        let models = Catalog::builtin().model_ids();
        OutEvent::unsequenced(
            "commands:manifest",
            json!({ "manifest": commands::manifest(&models) }).to_string(),
        )
    }

    // ---- connecting ----------------------------------------------------------------------

    async fn attach(&self, req: &Request, config: &Config) -> Result<Response> {
        let framing = req
            .headers()
            .get(super::gateway::H_FRAMING)?
            .unwrap_or_default();
        let user = req.headers().get(super::gateway::H_USER)?;
        let last_seq: Option<u64> = req
            .headers()
            .get(super::gateway::H_LAST_SEQ)?
            .and_then(|s| s.parse().ok());
        // A conversation that was idle may have missed configuration changes pushed to live ones.
        if self.socket_count() == 0 {
            self.operator.borrow_mut().take();
        }
        let pair = WebSocketPair::new()?;
        let ws = pair.server;
        self.state.accept_web_socket(&ws);
        // JSON clients' keepalives are answered by the runtime, so an idle socket never wakes the object.
        // (socket.io pongs arrive right after the alarm's ping, while the object is awake anyway.)
        if let Ok(keepalive) =
            WebSocketRequestResponsePair::new(protocol::KEEPALIVE_PING, protocol::KEEPALIVE_PONG)
        {
            self.state.set_websocket_auto_response(&keepalive);
        }
        if framing == "sio" {
            let meta = SocketMeta {
                user: None,
                sio: true,
                connected: false,
                sid: new_id(),
                pid: String::new(),
            };
            self.set_meta(&ws, &meta)?;
            let max_payload = protocol::max_frame_bytes(&Limits {
                max_content_bytes: config.max_message_bytes,
            }) as u64;
            let _ = ws.send_with_str(sio::open_packet(
                &meta.sid,
                config.sio_ping_interval_ms,
                config.sio_ping_timeout_ms,
                max_payload,
            ));
            self.arm_heartbeat(config).await;
        } else {
            let meta = SocketMeta {
                user: user.clone(),
                sio: false,
                connected: true,
                sid: String::new(),
                pid: String::new(),
            };
            self.set_meta(&ws, &meta)?;
            self.greet(&ws, &meta, last_seq);
        }
        let count = self.socket_count();
        self.update_live(count).await;
        Response::from_websocket(pair.client)
    }

    /// On connect: the manifest, then what a resuming client missed.
    fn greet(&self, ws: &WebSocket, meta: &SocketMeta, last_seq: Option<u64>) {
        self.send_to(ws, meta, &self.manifest());
        let Some(last) = last_seq else { return };
        match self.replay_frames(last, meta) {
            Ok(frames) => {
                for frame in frames {
                    let _ = ws.send_with_str(frame);
                }
            }
            Err(gap) => {
                let id = self.room.borrow().id.clone();
                let msg = format!("cannot resume after seq {last}: events before {} are no longer held; reload the history over HTTP", gap.oldest);
                let payload = json!({ "conversationId": id, "error": msg, "code": "resume_gap", "oldestSeq": gap.oldest }).to_string();
                self.send_to(ws, meta, &OutEvent::unsequenced("error", payload));
            }
        }
    }

    /// The frames a socket missed after `last`, in order.
    fn replay_frames(
        &self,
        last: u64,
        meta: &SocketMeta,
    ) -> std::result::Result<Vec<String>, conversation::ReplayGap> {
        let room = self.room.borrow();
        let frames = room
            .log
            .after(last)?
            .filter_map(|e| Self::frame(e, meta))
            .collect();
        Ok(frames)
    }

    async fn arm_heartbeat(&self, config: &Config) {
        let storage = self.state.storage();
        if let Ok(None) = storage.get_alarm().await {
            if let Err(e) = storage
                .set_alarm(Duration::from_millis(config.sio_ping_interval_ms))
                .await
            {
                console_warn!("arming the heartbeat alarm: {e}");
            }
        }
    }

    async fn sio_connect(
        &self,
        ws: &WebSocket,
        mut meta: SocketMeta,
        nsp: &str,
        auth: Option<Value>,
    ) -> Result<()> {
        if nsp != NSP {
            let _ = ws.send_with_str(sio::connect_error(nsp, "Invalid namespace", None));
            return Ok(());
        }
        let Some(token) = sio::connect_auth_token(&auth) else {
            let _ = ws.send_with_str(sio::connect_error(
                NSP,
                "unauthorized: pass auth: { token } to io()",
                None,
            ));
            return Ok(());
        };
        let d = db::db(&self.env)?;
        let user = match db::user_for_token(&d, token, now_ms()).await {
            Ok(Some(u)) => u,
            Ok(None) => {
                let _ = ws.send_with_str(sio::connect_error(
                    NSP,
                    "unauthorized: invalid, expired or revoked token",
                    None,
                ));
                return Ok(());
            }
            Err(e) => {
                console_error!("token lookup: {e}");
                let _ = ws.send_with_str(sio::connect_error(
                    NSP,
                    "the gateway could not check the token; try again",
                    None,
                ));
                return Ok(());
            }
        };
        if let Err(message) = self.check_owner(&user).await {
            let _ = ws.send_with_str(sio::connect_error(NSP, &message, None));
            return Ok(());
        }
        let recovery = sio::recovery(&auth)
            .and_then(|(pid, offset)| offset.parse::<u64>().ok().map(|o| (pid, o)));
        let recovered = recovery
            .as_ref()
            .is_some_and(|(_, offset)| self.room.borrow().log.after(*offset).is_ok());
        meta.user = Some(user);
        meta.connected = true;
        meta.pid = match (&recovery, recovered) {
            (Some((pid, _)), true) => pid.clone(),
            _ => new_id(),
        };
        self.set_meta(ws, &meta)?;
        let _ = ws.send_with_str(sio::connect_ok(NSP, &meta.sid, Some(&meta.pid)));
        self.send_to(ws, &meta, &self.manifest());
        if let (Some((_, offset)), true) = (recovery, recovered) {
            for frame in self.replay_frames(offset, &meta).unwrap_or_default() {
                let _ = ws.send_with_str(frame);
            }
        }
        Ok(())
    }

    /// Refuses a user who does not own this conversation.
    async fn check_owner(&self, user: &str) -> std::result::Result<(), String> {
        let (id, owner) = {
            let room = self.room.borrow();
            (room.id.clone(), room.owner.clone())
        };
        let owner = match owner {
            Some(o) => Some(o),
            None => {
                let d = db::db(&self.env).map_err(|e| e.to_string())?;
                db::conversation_owner(&d, &id)
                    .await
                    .map_err(|e| e.to_string())?
            }
        };
        match owner {
            Some(o) if o != user => Err(FORBIDDEN.into()),
            _ => Ok(()),
        }
    }

    // ---- admin ---------------------------------------------------------------------------

    async fn reload(&self, body: Value) -> Result<Response> {
        let event = OutEvent::unsequenced("system:reload", json!({ "reason": body.get("reason").cloned().unwrap_or(Value::Null), "at": body.get("at").cloned().unwrap_or_else(|| Value::String(now_iso())) }).to_string());
        let (sent, failed) = self.broadcast_unsequenced(&event);
        if sent == 0 && failed == 0 {
            // A stale registry entry: nobody is attached any more.
            self.update_live(0).await;
        }
        super::json_response(200, &json!({ "sockets": sent, "failed": failed }))
    }

    // ---- events --------------------------------------------------------------------------

    async fn handle_event(
        &self,
        ws: &WebSocket,
        meta: &SocketMeta,
        event: ClientEvent,
        ack: Option<u64>,
        config: &Config,
    ) {
        let id = self.room.borrow().id.clone();
        if let Some(named) = event.conversation_id() {
            if named != id {
                let msg = format!(
                    "this socket is bound to conversation {id}; open another socket for {named}"
                );
                self.send_error(ws, meta, ErrorCode::ConversationMismatch, &msg);
                Self::send_ack(
                    ws,
                    ack,
                    &protocol::error_payload(Some(&id), ErrorCode::ConversationMismatch, &msg),
                );
                return;
            }
        }
        let Some(user) = meta.user.clone() else {
            self.send_error(ws, meta, ErrorCode::Unauthorized, "not authenticated");
            return;
        };
        match event {
            ClientEvent::Message(message) => {
                self.on_message(ws, meta, &user, message, ack, config).await
            }
            ClientEvent::SetThinking { level, .. } => {
                let result = self.set_thinking(&level).await;
                match result {
                    Ok(()) => Self::send_ack(ws, ack, &json!({ "ok": true }).to_string()),
                    Err(msg) => {
                        self.send_error(ws, meta, ErrorCode::InvalidThinkingLevel, &msg);
                        Self::send_ack(
                            ws,
                            ack,
                            &protocol::error_payload(
                                Some(&id),
                                ErrorCode::InvalidThinkingLevel,
                                &msg,
                            ),
                        );
                    }
                }
            }
            ClientEvent::Abort { .. } => {
                if self.room.borrow().turn_running {
                    self.abort_turn();
                    Self::send_ack(ws, ack, &json!({ "ok": true }).to_string());
                } else {
                    self.send_error(
                        ws,
                        meta,
                        ErrorCode::NoActiveTurn,
                        "No active session to abort.",
                    );
                    Self::send_ack(
                        ws,
                        ack,
                        &protocol::error_payload(
                            Some(&id),
                            ErrorCode::NoActiveTurn,
                            "No active session to abort.",
                        ),
                    );
                }
            }
            ClientEvent::Ping => {
                let _ = ws.send_with_str(protocol::KEEPALIVE_PONG);
            }
            ClientEvent::CommandExecute { command, args, .. } => {
                let result = self.execute_command(&command, args.as_ref()).await;
                let event = OutEvent::unsequenced("command:result", result.to_string());
                self.send_to(ws, meta, &event);
                Self::send_ack(ws, ack, &event.data);
            }
        }
    }

    fn abort_turn(&self) {
        self.aborted.set(true);
        if let Some(ctrl) = self.abort.borrow_mut().take() {
            ctrl.abort();
        }
    }

    async fn on_message(
        &self,
        ws: &WebSocket,
        meta: &SocketMeta,
        user: &str,
        message: MessageEvent,
        ack: Option<u64>,
        config: &Config,
    ) {
        let id = self.room.borrow().id.clone();
        // Bound first: a guard in the `if let` scrutinee would live through the block below.
        let admitted =
            self.room
                .borrow_mut()
                .rate
                .admit(user, now_ms(), config.rate_limit_per_minute);
        if let Err(wait) = admitted {
            let msg = format!(
                "rate limit of {} messages per minute reached; retry in {} s",
                config.rate_limit_per_minute,
                (wait + 999) / 1000
            );
            self.send_error(ws, meta, ErrorCode::RateLimited, &msg);
            Self::send_ack(
                ws,
                ack,
                &protocol::error_payload(Some(&id), ErrorCode::RateLimited, &msg),
            );
            return;
        }
        if let Some(client_id) = &message.client_message_id {
            if let Some(message_id) = self.seen_message(client_id) {
                // A resend of a stored message: same ack, no second turn.
                let payload = json!({ "conversationId": id, "messageId": message_id, "clientMessageId": client_id, "duplicate": true }).to_string();
                self.send_to(
                    ws,
                    meta,
                    &OutEvent::unsequenced("message:ack", payload.clone()),
                );
                Self::send_ack(ws, ack, &payload);
                return;
            }
            if self
                .room
                .borrow()
                .queue
                .iter()
                .any(|p| p.message.client_message_id.as_deref() == Some(client_id))
            {
                return; // already queued; its ack comes when it runs
            }
        }
        {
            let mut room = self.room.borrow_mut();
            if room.turn_running {
                if room.queue.len() >= config.max_queued_messages {
                    drop(room);
                    let msg = format!(
                        "a turn is running and {} messages are already queued; wait for agent:end",
                        config.max_queued_messages
                    );
                    self.send_error(ws, meta, ErrorCode::QueueFull, &msg);
                    Self::send_ack(
                        ws,
                        ack,
                        &protocol::error_payload(Some(&id), ErrorCode::QueueFull, &msg),
                    );
                    return;
                }
                room.queue.push_back(Pending {
                    ws: ws.clone(),
                    meta: meta.clone(),
                    message,
                    ack,
                });
                return;
            }
            room.turn_running = true;
        }
        self.kv_put("turn", "running");
        let mut next = Some(Pending {
            ws: ws.clone(),
            meta: meta.clone(),
            message,
            ack,
        });
        while let Some(p) = next {
            self.run_turn(p, config).await;
            next = self.room.borrow_mut().queue.pop_front();
        }
        let seq = {
            let mut room = self.room.borrow_mut();
            room.turn_running = false;
            room.log.next_seq()
        };
        self.kv_put("seq", &seq.to_string());
        self.kv_put("turn", "idle");
        let count = self.socket_count();
        self.update_live(count).await;
    }

    fn seen_message(&self, client_id: &str) -> Option<String> {
        #[derive(Deserialize)]
        struct Row {
            message_id: String,
        }
        let rows: Vec<Row> = self
            .sql()
            .exec(
                "SELECT message_id FROM seen WHERE client_id = ?",
                vec![client_id.into()],
            )
            .ok()?
            .to_array()
            .ok()?;
        rows.into_iter().next().map(|r| r.message_id)
    }

    /// Stores the user message, then runs the model (and tools) to the end of the turn.
    async fn run_turn(&self, p: Pending, config: &Config) {
        let Pending {
            ws,
            meta,
            message,
            ack,
        } = p;
        let user = meta.user.clone().unwrap_or_default();
        let (id, id_json) = {
            let room = self.room.borrow();
            (room.id.clone(), room.id_json.clone())
        };
        // A known owner is checked here; an unknown one is checked by the insert itself (below).
        if self
            .room
            .borrow()
            .owner
            .as_deref()
            .is_some_and(|o| o != user)
        {
            self.send_error(&ws, &meta, ErrorCode::Unauthorized, FORBIDDEN);
            return;
        }
        let d = match db::db(&self.env) {
            Ok(d) => d,
            Err(e) => {
                console_error!("database binding: {e}");
                self.send_error(
                    &ws,
                    &meta,
                    ErrorCode::Internal,
                    "storage is unavailable; nothing was sent to the model",
                );
                return;
            }
        };
        // The message is stored while the turn is planned and the model call starts: time to
        // first token is max(storage, planning + provider), not their sum. Nothing reaches a
        // client before the store succeeds, and a failed store cancels the call.
        self.aborted.set(false);
        let message_id = new_id();
        let (stored, plan) = futures::join!(
            self.store_user_message(&d, &id, &user, &message, &message_id),
            self.plan_turn(&d, &id, &user, &message, &message_id, config)
        );
        match stored {
            Ok(true) => {}
            Ok(false) | Err(_) => {
                if let Some(ctrl) = self.abort.borrow_mut().take() {
                    ctrl.abort();
                }
                let (code, text) = match stored {
                    Ok(_) => (ErrorCode::Unauthorized, FORBIDDEN),
                    Err(e) => {
                        // Unlike the seed, no ack without storage: the client may resend safely.
                        console_error!("storing the user message: {e}");
                        (
                            ErrorCode::Internal,
                            "your message could not be stored; nothing was sent to the model",
                        )
                    }
                };
                self.send_error(&ws, &meta, code, text);
                Self::send_ack(&ws, ack, &protocol::error_payload(Some(&id), code, text));
                return;
            }
        }
        self.after_user_message_stored(&user, &message, &message_id);
        self.update_live_later(self.socket_count());
        let mut ack_payload = json!({ "conversationId": id, "messageId": message_id });
        if let Some(c) = &message.client_message_id {
            ack_payload["clientMessageId"] = Value::String(c.clone());
        }
        let ack_payload = ack_payload.to_string();
        self.broadcast("message:ack", ack_payload.clone());
        Self::send_ack(&ws, ack, &ack_payload);

        let Plan {
            operator,
            agent_name,
            agent,
            candidates,
            tools,
            base,
            first_call,
        } = match plan {
            Ok(plan) => plan,
            Err(e) => {
                console_error!("loading history: {e}");
                let msg = "the conversation history could not be loaded; try again";
                self.end_early(&id, ErrorCode::Internal, msg).await;
                return;
            }
        };
        if let (Some(name), None) = (&agent_name, &agent) {
            let text = format!("agent \"{name}\" is not configured; answering without it");
            self.broadcast(
                "error",
                protocol::error_payload(Some(&id), ErrorCode::InvalidPayload, &text),
            );
        }
        let Some(first_call) = first_call else {
            let msg = "no configured provider can serve this conversation's model; configure its provider or change the model with /model";
            self.end_early(&id, ErrorCode::ProviderNotConfigured, msg)
                .await;
            return;
        };
        self.broadcast("session:info", self.session_info(&operator.catalog));
        self.broadcast("agent:start", format!("{{\"conversationId\":{id_json}}}"));

        let steps = Steps {
            candidates: &candidates,
            base: &base,
            tools: &tools,
            agent: agent.as_ref(),
            config,
            id: &id,
            id_json: &id_json,
            catalog: &operator.catalog,
        };
        let (turn, stop, last_error) = self.run_steps(&steps, first_call).await;
        self.abort.borrow_mut().take();
        self.finish_turn(turn, stop, last_error.as_ref(), &operator.catalog, &d)
            .await;
    }

    /// Ends a turn that could not reach a model: an `error`, then `agent:end`, which clients wait for.
    async fn end_early(&self, id: &str, code: ErrorCode, msg: &str) {
        self.broadcast("error", protocol::error_payload(Some(id), code, msg));
        let end = json!({ "conversationId": id, "stopReason": StopReason::Error.as_str(), "error": { "code": code.as_str(), "message": msg } });
        self.broadcast("agent:end", end.to_string());
        self.save_session().await;
    }

    /// Decides the model, agent and context of a turn and starts its first model call.
    /// Errs only when the history cannot be read.
    async fn plan_turn(
        &self,
        d: &D1Database,
        id: &str,
        user: &str,
        message: &MessageEvent,
        message_id: &str,
        config: &Config,
    ) -> Result<Plan> {
        let (operator, history) =
            futures::join!(self.operator(d), self.load_history(d, id, message_id));
        history?;
        // Which model: /model override, then the client's choice, then the agent's, then routing.
        if let Some(agent) = &message.agent_id {
            self.room.borrow_mut().session.agent = Some(agent.clone());
        }
        let agent_name = self.room.borrow().session.agent.clone();
        let agent: Option<AgentConfig> = agent_name.as_ref().and_then(|n| {
            operator
                .agents
                .iter()
                .find(|(aid, a)| &a.name == n || aid == n)
                .map(|(_, a)| a.clone())
        });
        if agent_name.is_some() && agent.is_none() {
            self.room.borrow_mut().session.agent = None;
        }
        let candidates: Vec<RoutingDecision> = self
            .candidates(
                message,
                user,
                agent.as_ref(),
                &operator.catalog,
                config,
                &operator.rules,
            )
            .into_iter()
            .filter(|c| config.provider(&c.provider).is_some())
            .collect();
        if let Some(first) = candidates.first() {
            let mut room = self.room.borrow_mut();
            room.session.use_model(&first.provider, &first.model);
            if room.session.thinking_level.is_none() {
                room.session.thinking_level = agent.as_ref().and_then(|a| a.thinking_level);
            }
            let levels = catalog::thinking_levels_for(
                operator.catalog.lookup(Some(&first.provider), &first.model),
            );
            if !levels.contains(&room.session.thinking()) {
                room.session.thinking_level = Some(ThinkingLevel::Off);
            }
        }
        let tools = agent.as_ref().map(|a| a.tool_specs()).unwrap_or_default();
        let mut base: Vec<ChatMessage> = Vec::new();
        if let Some(a) = agent.as_ref().filter(|a| !a.system_prompt.is_empty()) {
            base.push(ChatMessage::System {
                content: a.system_prompt.clone(),
            });
        }
        base.extend(self.room.borrow().history.clone().unwrap_or_default());
        base.push(ChatMessage::User {
            content: message.content.clone(),
        });
        let thinking = self.room.borrow().session.thinking();
        let first_call = match candidates
            .first()
            .and_then(|c| config.provider(&c.provider).map(|p| (p, c)))
        {
            Some((provider, target)) => Some(
                self.open_call(provider, &target.model, &base, &tools, thinking, config)
                    .await,
            ),
            None => None,
        };
        Ok(Plan {
            operator,
            agent_name,
            agent,
            candidates,
            tools,
            base,
            first_call,
        })
    }

    /// Stores the user message with its conversation row; `Ok(false)` when the user does not own it.
    async fn store_user_message(
        &self,
        d: &D1Database,
        id: &str,
        user: &str,
        message: &MessageEvent,
        message_id: &str,
    ) -> Result<bool> {
        let now = now_ms();
        let mut user_meta = json!({ "timestamp": now_iso() });
        if let Some(c) = &message.client_message_id {
            user_meta["clientMessageId"] = Value::String(c.clone());
        }
        let ensure = d.prepare(sql::ENSURE_CONVERSATION).bind(&[
            db::text(id),
            db::text(user),
            db::text(&store::title_from(&message.content)),
            db::num(now),
        ])?;
        let insert = d.prepare(sql::INSERT_USER_MESSAGE).bind(&[
            db::text(message_id),
            db::text(id),
            db::text(user),
            db::text(&message.content),
            db::text(&user_meta.to_string()),
            db::num(now),
        ])?;
        let touch = d
            .prepare(sql::TOUCH_CONVERSATION)
            .bind(&[db::text(id), db::num(now)])?;
        let results = d.batch(vec![ensure, insert, touch]).await?;
        let inserted = results
            .get(1)
            .and_then(|r| r.meta().ok().flatten())
            .and_then(|m| m.changes);
        Ok(inserted == Some(1))
    }

    /// Bookkeeping once the user message is durable: owner, dedupe id, counts, history.
    fn after_user_message_stored(&self, user: &str, message: &MessageEvent, message_id: &str) {
        if self.room.borrow().owner.is_none() {
            self.room.borrow_mut().owner = Some(user.to_string());
            self.kv_put("owner", user);
        }
        if let Some(c) = &message.client_message_id {
            let row = vec![
                c.as_str().into(),
                message_id.into(),
                (now_ms() as f64).into(),
            ];
            if let Err(e) = self.sql().exec(
                "INSERT OR IGNORE INTO seen (client_id, message_id, at) VALUES (?, ?, ?)",
                row,
            ) {
                console_warn!("remembering clientMessageId: {e}");
            }
        }
        let mut room = self.room.borrow_mut();
        room.session.metrics.messages += 1;
        if let Some(h) = room.history.as_mut() {
            h.push(ChatMessage::User {
                content: message.content.clone(),
            });
        }
    }

    /// Loads the model context from D1 once per instance. A conversation this object never stored
    /// a message for (no owner yet) has no history, so its first turn skips the read.
    async fn load_history(&self, d: &D1Database, id: &str, storing: &str) -> Result<()> {
        let (loaded, known) = {
            let room = self.room.borrow();
            (room.history.is_some(), room.owner.is_some())
        };
        if loaded {
            return Ok(());
        }
        if !known {
            self.room.borrow_mut().history = Some(Vec::new());
            return Ok(());
        }
        let rows = db::list_messages(d, id).await?;
        // The read races the insert of `storing`; that message is appended once it is stored.
        let rows: Vec<(String, String, Value)> = rows
            .into_iter()
            .filter(|m| m.id != storing)
            .map(|m| {
                (
                    m.role,
                    m.content,
                    serde_json::from_str(&m.metadata).unwrap_or_default(),
                )
            })
            .collect();
        self.room.borrow_mut().history = Some(conversation::context_from_rows(&rows));
        Ok(())
    }

    /// Operator configuration (catalog rows, routing rules, agents), read together and reused for
    /// `OPERATOR_CACHE_MS`; admin changes push an invalidation to live conversations at once.
    async fn operator(&self, d: &D1Database) -> Rc<Operator> {
        if let Some(o) = self
            .operator
            .borrow()
            .as_ref()
            .filter(|o| now_ms() - o.fetched_ms < OPERATOR_CACHE_MS)
        {
            return o.clone();
        }
        let (catalog, rules, agents) =
            futures::join!(db::catalog(d), db::compiled_rules(d), db::agents(d));
        let operator = Rc::new(Operator {
            fetched_ms: now_ms(),
            catalog: catalog.unwrap_or_else(|e| {
                console_warn!("catalog rows unavailable, using the built-in catalog: {e}");
                Catalog::builtin()
            }),
            rules: rules.unwrap_or_else(|e| {
                console_warn!("routing rules unavailable, using the default: {e}");
                crate::routing::CompiledRules::compile(Vec::new())
            }),
            agents: agents.unwrap_or_else(|e| {
                console_warn!("agents unavailable: {e}");
                Vec::new()
            }),
        });
        *self.operator.borrow_mut() = Some(operator.clone());
        operator
    }

    /// The model calls of one turn: tools between calls, retries and fallover before the first byte.
    async fn run_steps(
        &self,
        s: &Steps<'_>,
        first_call: std::result::Result<upstream::ModelStream, UpstreamError>,
    ) -> (Turn, StopReason, Option<UpstreamError>) {
        let mut turn = Turn::default();
        let mut pending_call = Some(first_call);
        let mut candidate = 0usize;
        let mut attempts = 0u32;
        let stop = loop {
            let target = &s.candidates[candidate];
            let Some(provider) = s.config.provider(&target.provider) else {
                break (StopReason::Error, None);
            };
            turn.begin_step();
            let opened = match pending_call.take() {
                Some(opened) => opened,
                None => {
                    let thinking = self.room.borrow().session.thinking();
                    let mut messages = s.base.to_vec();
                    messages.extend(turn.new_context.iter().cloned());
                    self.open_call(
                        provider,
                        &target.model,
                        &messages,
                        s.tools,
                        thinking,
                        s.config,
                    )
                    .await
                }
            };
            let outcome = self
                .stream_call(&mut turn, opened, s.id_json, s.config.max_tool_steps)
                .await;
            if self.aborted.get() {
                if let StepOutcome::RunTools(calls) = outcome {
                    // Calls the model made before the abort still need results, or the history is invalid.
                    self.run_tools(&mut turn, calls, s.agent, s.config, s.id)
                        .await;
                }
                break (StopReason::Aborted, None);
            }
            match outcome {
                StepOutcome::Done(reason) => break (reason, None),
                StepOutcome::RunTools(calls) => {
                    self.run_tools(&mut turn, calls, s.agent, s.config, s.id)
                        .await;
                    if self.aborted.get() {
                        break (StopReason::Aborted, None);
                    }
                }
                StepOutcome::Failed {
                    error,
                    before_output,
                } => {
                    if before_output && error.kind.retryable() {
                        turn.forget_failed_step();
                        if attempts < s.config.upstream_retries {
                            attempts += 1;
                            let backoff = error
                                .retry_after_ms
                                .unwrap_or(250u64 << attempts)
                                .min(10_000);
                            Delay::from(Duration::from_millis(backoff)).await;
                            continue;
                        }
                        if candidate + 1 < s.candidates.len() {
                            candidate += 1;
                            attempts = 0;
                            let next = s.candidates[candidate].clone();
                            console_log!(
                                "falling over from {}/{} to {}/{}: {}",
                                target.provider,
                                target.model,
                                next.provider,
                                next.model,
                                error.message
                            );
                            {
                                let mut room = self.room.borrow_mut();
                                room.session.use_model(&next.provider, &next.model);
                                room.session.routing_decision = Some(RoutingDecision {
                                    reason: format!("fallover: {}", error.message),
                                    ..next
                                });
                            }
                            self.broadcast("session:info", self.session_info(s.catalog));
                            continue;
                        }
                    }
                    // The stream broke after text went out: say it was cut, not that the model failed.
                    let broke = matches!(
                        error.kind,
                        UpstreamErrorKind::Malformed
                            | UpstreamErrorKind::Network
                            | UpstreamErrorKind::Timeout
                    );
                    let stop = if !turn.text.is_empty() && broke {
                        StopReason::Truncated
                    } else {
                        StopReason::Error
                    };
                    self.broadcast(
                        "error",
                        protocol::error_payload(
                            Some(s.id),
                            ErrorCode::Upstream(error.kind.code()),
                            &error.message,
                        ),
                    );
                    break (stop, Some(error));
                }
            }
        };
        (turn, stop.0, stop.1)
    }

    /// Starts one model call under a fresh abort controller.
    async fn open_call(
        &self,
        provider: &ProviderConfig,
        model: &str,
        messages: &[ChatMessage],
        tools: &[crate::llm::ToolSpec],
        thinking: ThinkingLevel,
        config: &Config,
    ) -> std::result::Result<upstream::ModelStream, UpstreamError> {
        let ctrl = AbortController::default();
        let signal = ctrl.signal();
        *self.abort.borrow_mut() = Some(ctrl);
        if self.aborted.get() {
            return Err(UpstreamError::new(UpstreamErrorKind::Network, "aborted"));
        }
        let spec = CallSpec {
            base_url: &provider.base_url,
            api_key: provider.api_key.as_deref(),
            model,
            messages,
            tools,
            thinking,
            max_tokens: config.max_output_tokens,
        };
        upstream::open(provider, &spec, &signal, config.upstream_stall_ms).await
    }

    /// Streams one model call's deltas to every socket as they arrive.
    async fn stream_call(
        &self,
        turn: &mut Turn,
        opened: std::result::Result<upstream::ModelStream, UpstreamError>,
        id_json: &str,
        max_steps: u32,
    ) -> StepOutcome {
        match opened {
            Err(e) => turn.fail_step(e),
            Ok(mut stream) => {
                while let Some(event) = stream.next().await {
                    if self.aborted.get() {
                        break;
                    }
                    match turn.on_stream_event(event) {
                        Some(Emit::Text(t)) => {
                            self.broadcast("agent:text", protocol::delta_payload(id_json, &t))
                        }
                        Some(Emit::Thinking(t)) => {
                            self.broadcast("agent:thinking", protocol::delta_payload(id_json, &t))
                        }
                        None => {}
                    }
                }
            }
        }
        turn.end_step(max_steps)
    }

    /// Runs the model's tool calls in order. After an abort every call still owed gets an error
    /// result, so the stored history stays valid for both providers.
    async fn run_tools(
        &self,
        turn: &mut Turn,
        calls: Vec<ToolCall>,
        agent: Option<&AgentConfig>,
        config: &Config,
        id: &str,
    ) {
        for call in calls {
            if self.aborted.get() {
                turn.record_tool_result(&call, "not run: the turn was aborted".into(), true);
                continue;
            }
            self.broadcast(
                "agent:tool:start",
                json!({ "conversationId": id, "toolCallId": call.id, "toolName": call.name })
                    .to_string(),
            );
            let signal = self.abort.borrow().as_ref().map(|c| c.signal());
            let (result, is_error) = match (agent.and_then(|a| a.tool(&call.name)), signal) {
                (Some(tool), Some(signal)) => {
                    tools::run(tool, &call.arguments, &signal, config.tool_timeout_ms).await
                }
                (Some(_), None) => ("not run: the turn was aborted".to_string(), true),
                (None, _) => (format!("unknown tool \"{}\"", call.name), true),
            };
            let (result, is_error) = if self.aborted.get() {
                ("aborted while running".to_string(), true)
            } else {
                (result, is_error)
            };
            turn.record_tool_result(&call, result, is_error);
            self.broadcast(
                "agent:tool:end",
                json!({ "conversationId": id, "toolCallId": call.id, "toolName": call.name, "isError": is_error })
                    .to_string(),
            );
        }
    }

    /// Candidates in order: override, client choice, agent model, then routing rules and the default.
    fn candidates(
        &self,
        message: &MessageEvent,
        user: &str,
        agent: Option<&AgentConfig>,
        catalog: &Catalog,
        config: &Config,
        rules: &crate::routing::CompiledRules,
    ) -> Vec<RoutingDecision> {
        let over = self.room.borrow().session.model_override.clone();
        let choice = selection::Choice {
            model_override: over.as_deref(),
            client_provider: message.provider.as_deref(),
            client_model: message.model_id.as_deref(),
            agent,
        };
        if let Some(only) = selection::explicit_candidate(&choice, catalog, config) {
            return vec![only];
        }
        let default = Target {
            provider: config.default_provider.clone(),
            model: config.default_model.clone(),
        };
        let ctx = RoutingContext {
            content: &message.content,
            user_id: user,
            agent: agent.map(|a| a.name.as_str()),
        };
        let candidates = rules.candidates(&ctx, &default);
        if let Some(first) = candidates.first() {
            self.room.borrow_mut().session.routing_decision = Some(first.clone());
        }
        candidates
    }

    /// Stores the assistant message (also when aborted or failed), updates metrics and ends the turn for every socket.
    async fn finish_turn(
        &self,
        turn: Turn,
        stop: StopReason,
        error: Option<&UpstreamError>,
        catalog: &Catalog,
        d: &D1Database,
    ) {
        let (id, provider, model, thinking) = {
            let room = self.room.borrow();
            let s = &room.session;
            (
                room.id.clone(),
                s.provider.clone().unwrap_or_default(),
                s.model_id.clone().unwrap_or_default(),
                s.thinking(),
            )
        };
        let usage = conversation::turn_usage(catalog, &provider, &model, thinking, &turn);
        let mut metadata = conversation::assistant_metadata(&now_iso(), &usage, &turn, stop, error);
        if turn.new_context.len() > 1
            || turn.new_context.iter().any(|m| {
                matches!(
                    m,
                    ChatMessage::Assistant {
                        thinking: Some(_),
                        ..
                    }
                )
            })
        {
            // Tool steps and signed thinking replay to the model on resume.
            metadata["context"] = serde_json::to_value(&turn.new_context).unwrap_or(Value::Null);
        }
        let (content, cut) = store::fit_content(&turn.text);
        if cut {
            metadata["truncatedForStorage"] =
                json!({ "storedBytes": content.len(), "totalBytes": turn.text.len() });
        }
        let mut metadata_text = metadata.to_string();
        if metadata_text.len() > 400_000 {
            // Oversized tool arguments or steps: keep the row storable, say so.
            metadata.as_object_mut().map(|m| m.remove("context"));
            metadata["contextDropped"] = Value::Bool(true);
            metadata_text = metadata.to_string();
        }
        let store_it = !turn.text.is_empty()
            || !turn.tool_records.is_empty()
            || matches!(
                stop,
                StopReason::Aborted | StopReason::Error | StopReason::Truncated
            );
        if store_it {
            let now = now_ms();
            let result = db::run(
                d,
                sql::INSERT_MESSAGE,
                &[
                    db::text(&new_id()),
                    db::text(&id),
                    db::text("assistant"),
                    db::text(&content),
                    db::text(&metadata_text),
                    db::num(now),
                ],
            )
            .await;
            if let Err(e) = result {
                console_error!("storing the assistant message: {e}");
                self.broadcast(
                    "error",
                    protocol::error_payload(
                        Some(&id),
                        ErrorCode::Internal,
                        "the reply could not be stored",
                    ),
                );
            }
        }
        {
            let mut room = self.room.borrow_mut();
            if let Some(h) = room.history.as_mut() {
                h.extend(turn.new_context.iter().cloned());
            }
            room.session.metrics.record_turn(&usage);
        }
        self.save_session().await;
        let mut end = json!({ "conversationId": id, "usage": usage, "stopReason": stop.as_str() });
        if let Some(e) = error {
            end["error"] = json!({ "code": e.kind.code(), "message": e.message });
        }
        self.broadcast("agent:end", end.to_string());
        self.aborted.set(false);
        let seq = self.room.borrow().log.next_seq();
        self.kv_put("seq", &seq.to_string());
    }

    fn session_info(&self, catalog: &Catalog) -> String {
        let config = self.config.as_ref().ok();
        let default = config
            .map(|c| (c.default_provider.clone(), c.default_model.clone()))
            .unwrap_or_else(|| ("echo".into(), "echo".into()));
        let room = self.room.borrow();
        let provider = room.session.provider.clone().unwrap_or(default.0.clone());
        let model = room.session.model_id.clone().unwrap_or(default.1.clone());
        let levels = catalog::thinking_levels_for(catalog.lookup(Some(&provider), &model));
        room.session
            .info_payload(&room.id, (&default.0, &default.1), &levels)
    }

    /// Operator configuration for commands; the built-in catalog alone when D1 is unreachable.
    async fn current_operator(&self) -> Rc<Operator> {
        match db::db(&self.env) {
            Ok(d) => self.operator(&d).await,
            Err(_) => Rc::new(Operator {
                fetched_ms: 0,
                catalog: Catalog::builtin(),
                rules: crate::routing::CompiledRules::compile(Vec::new()),
                agents: Vec::new(),
            }),
        }
    }

    /// The thinking levels the session's current model takes.
    fn available_levels(&self, catalog: &Catalog) -> Vec<ThinkingLevel> {
        let (provider, model) = self.current_model();
        catalog::thinking_levels_for(catalog.lookup(Some(&provider), &model))
    }

    /// The seed's error text for a level the session does not take.
    async fn thinking_levels_error(&self, level: &str) -> String {
        let levels = self.available_levels(&self.current_operator().await.catalog);
        let names: Vec<&str> = levels.iter().map(|l| l.as_str()).collect();
        format!(
            "Invalid thinking level \"{level}\". Available: {}",
            names.join(", ")
        )
    }

    async fn set_thinking(&self, level: &str) -> std::result::Result<(), String> {
        let operator = self.current_operator().await;
        let catalog = &operator.catalog;
        let levels = self.available_levels(catalog);
        let Some(parsed) = ThinkingLevel::parse(level).filter(|l| levels.contains(l)) else {
            return Err(self.thinking_levels_error(level).await);
        };
        self.room.borrow_mut().session.thinking_level = Some(parsed);
        self.save_session().await;
        self.broadcast("session:info", self.session_info(catalog));
        Ok(())
    }

    fn current_model(&self) -> (String, String) {
        let room = self.room.borrow();
        let config = self.config.as_ref().ok();
        let provider = room
            .session
            .provider
            .clone()
            .or_else(|| config.map(|c| c.default_provider.clone()))
            .unwrap_or_else(|| "echo".into());
        let model = room
            .session
            .model_id
            .clone()
            .or_else(|| config.map(|c| c.default_model.clone()))
            .unwrap_or_else(|| "echo".into());
        (provider, model)
    }

    /// Sets (`Some`) or clears (`None`) the `/model` override; every socket gets `session:info`.
    async fn set_model_override(
        &self,
        model: Option<String>,
    ) -> std::result::Result<String, String> {
        let config = self.config().map_err(|e| e.to_string())?;
        let operator = self.current_operator().await;
        let catalog = &operator.catalog;
        match &model {
            Some(spec) => {
                let (provider, id) = selection::resolve_model(spec, None, catalog, &config);
                if config.provider(&provider).is_none() {
                    return Err(format!(
                        "provider \"{provider}\" is not configured; configured: {}",
                        config
                            .providers
                            .iter()
                            .map(|p| p.name)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                }
                let mut room = self.room.borrow_mut();
                room.session.model_override = Some(format!("{provider}/{id}"));
                room.session.use_model(&provider, &id);
                room.session.routing_decision = None;
                let levels = catalog::thinking_levels_for(catalog.lookup(Some(&provider), &id));
                if !levels.contains(&room.session.thinking()) {
                    room.session.thinking_level = Some(ThinkingLevel::Off);
                }
            }
            None => {
                self.room.borrow_mut().session.model_override = None;
            }
        }
        self.save_session().await;
        let info = self.session_info(catalog);
        self.broadcast("session:info", info.clone());
        Ok(info)
    }

    async fn execute_command(&self, command: &str, args: Option<&Value>) -> Value {
        let id = self.room.borrow().id.clone();
        let parsed = match commands::parse(command, args) {
            Ok(c) => c,
            Err(e) => {
                let message = match e {
                    // The levels this session's model takes, as set:thinking says them.
                    commands::CommandError::InvalidThinkingLevel { value } => {
                        self.thinking_levels_error(&value).await
                    }
                    e => e.to_string(),
                };
                let name = commands::canonical_name(command).unwrap_or(command);
                return json!({ "conversationId": id, "command": name, "success": false, "message": message });
            }
        };
        let name = parsed.name();
        let (success, message, data) = match parsed {
            Command::Help => (true, commands::help_text(), Value::Null),
            Command::New => {
                let fresh = new_id();
                (
                    true,
                    format!("New conversation {fresh}: open a socket with conversationId={fresh}"),
                    json!({ "conversationId": fresh }),
                )
            }
            Command::ShowModel => {
                let (p, m) = self.current_model();
                let over = self.room.borrow().session.model_override.clone();
                let how = match &over {
                    Some(o) => format!("override {o}"),
                    None => "routing decides".into(),
                };
                (
                    true,
                    format!("Model: {p}/{m} ({how})"),
                    json!({ "provider": p, "modelId": m, "override": over }),
                )
            }
            Command::SetModel(spec) => match self.set_model_override(Some(spec)).await {
                Ok(info) => {
                    let (p, m) = self.current_model();
                    (true, format!("Model set to {p}/{m} for this conversation; routing is bypassed until /model clear"), serde_json::from_str(&info).unwrap_or(Value::Null))
                }
                Err(e) => (false, e, Value::Null),
            },
            Command::ClearModel => match self.set_model_override(None).await {
                Ok(info) => (
                    true,
                    "Model override cleared; routing decides again".into(),
                    serde_json::from_str(&info).unwrap_or(Value::Null),
                ),
                Err(e) => (false, e, Value::Null),
            },
            Command::SetThinking(level) => match self.set_thinking(level.as_str()).await {
                Ok(()) => (
                    true,
                    format!("Thinking level set to {}", level.as_str()),
                    json!({ "thinkingLevel": level.as_str() }),
                ),
                Err(e) => (false, e, Value::Null),
            },
            Command::ShowAgent => {
                let agent = self.room.borrow().session.agent.clone();
                let msg = agent
                    .as_ref()
                    .map(|a| format!("Agent: {a}"))
                    .unwrap_or_else(|| "No agent is active".into());
                (true, msg, json!({ "agentName": agent }))
            }
            Command::SetAgent(name) => {
                let operator = self.current_operator().await;
                let found = &operator.agents;
                match found.iter().find(|(aid, a)| a.name == name || *aid == name) {
                    Some((_, a)) => {
                        self.room.borrow_mut().session.agent = Some(a.name.clone());
                        self.save_session().await;
                        self.broadcast("session:info", self.session_info(&operator.catalog));
                        (
                            true,
                            format!("Agent set to {}", a.name),
                            json!({ "agentName": a.name }),
                        )
                    }
                    None => {
                        let names: Vec<&str> = found.iter().map(|(_, a)| a.name.as_str()).collect();
                        let list = if names.is_empty() {
                            "none are configured".to_string()
                        } else {
                            names.join(", ")
                        };
                        (
                            false,
                            format!("Unknown agent \"{name}\". Available: {list}"),
                            Value::Null,
                        )
                    }
                }
            }
            Command::ClearAgent => {
                self.room.borrow_mut().session.agent = None;
                self.save_session().await;
                let catalog = &self.current_operator().await.catalog;
                self.broadcast("session:info", self.session_info(catalog));
                (true, "Agent cleared".into(), Value::Null)
            }
            Command::Status => {
                let (msg, data) = self.room.borrow().session.status_report();
                (true, msg, data)
            }
        };
        let mut result = json!({ "conversationId": id, "command": name, "success": success, "message": message });
        if !data.is_null() {
            result["data"] = data;
        }
        result
    }
}

/// Whether two handles are the same socket.
fn same(a: &WebSocket, b: &WebSocket) -> bool {
    let a: &wasm_bindgen::JsValue = a.as_ref().as_ref();
    let b: &wasm_bindgen::JsValue = b.as_ref().as_ref();
    js_sys::Object::is(a, b)
}
