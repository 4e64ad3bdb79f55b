//! The conversation Durable Object: owns the sockets, the session and the running turn; streams model output to every socket.

mod approval;
mod checkpoint;
mod mcp;
mod outbox;
mod session;
mod sockets;
mod turn;

use super::{db, new_id, now_iso, now_ms, tools, upstream};
use crate::agents::AgentConfig;
use crate::catalog::Catalog;
use crate::commands;
use crate::config::Config;
use crate::conversation::room::Room;
use crate::conversation::socket::{self, Frame, SocketInput, SocketMeta};
use crate::conversation::steps::{StepAction, TurnSteps};
use crate::conversation::{self, plan, reply, StopReason, Turn};
use crate::error::RoomError;
use crate::llm::{
    CallSpec, ChatMessage, ThinkingLevel, ToolCall, UpstreamError, UpstreamErrorKind,
};
use crate::outbox::CopyKind;
use crate::protocol::framing::NSP;
use crate::protocol::{self, sio, ClientEvent, ErrorCode, Limits, MessageEvent, OutEvent};
use crate::retry::RetryPolicy;
use crate::routing::RoutingDecision;
use crate::store::{self, sql};
use futures::future::{FutureExt, LocalBoxFuture, Shared};
use serde::Deserialize;
use serde_json::{json, Value};
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;
use worker::*;

/// How long operator configuration read from D1 is reused by a conversation.
const OPERATOR_CACHE_MS: i64 = 60_000;
/// When the alarm a long turn arms copies what the turn wrote, should its instance die first.
const OUTBOX_ALARM_SLACK_MS: u64 = 10_000;
/// When the alarm copies messages a dead instance left waiting, found on load.
const ORPHAN_COPY_MS: u64 = 1_000;
/// While a turn that has written checkpoints runs, an alarm is due within this long: should
/// the instance die, the alarm wakes the conversation, which stores the interrupted turn.
const RECOVERY_ALARM_MS: u64 = 5_000;

/// Operator configuration from D1, cached per object.
struct Operator {
    /// D1 could not be read: built-in defaults, not to be reused.
    failed: bool,
    catalog: Catalog,
    rules: crate::routing::CompiledRules,
    agents: Vec<(String, AgentConfig)>,
}

impl Operator {
    /// What a turn's plan reads of it.
    fn view(&self) -> plan::Operator<'_> {
        plan::Operator {
            catalog: &self.catalog,
            rules: &self.rules,
            agents: &self.agents,
        }
    }
}

/// A read of operator configuration, shared by everyone who waits for it.
type OperatorLoad = Shared<LocalBoxFuture<'static, Rc<Operator>>>;

/// What a turn answers: the stored user message and whose conversation it is.
#[derive(Clone, Copy)]
struct TurnInput<'a> {
    id: &'a str,
    id_json: &'a str,
    user: &'a str,
    message: &'a MessageEvent,
    message_id: &'a str,
    /// Whether the conversation stored messages before this one (else there is no history to read).
    known_history: bool,
}

/// A planned turn and the operator configuration it was planned with.
struct Plan {
    operator: Rc<Operator>,
    turn: plan::TurnPlan,
    /// The agent's tools from MCP servers (their specs are in `turn.tools` too).
    mcp_tools: Vec<crate::mcp::McpTool>,
}

/// What every model call of a turn shares.
struct CallContext<'a> {
    tools: &'a [crate::llm::ToolSpec],
    agent: Option<&'a AgentConfig>,
    /// The turn's tools from the agent's MCP servers, by the names the model knows.
    mcp_tools: &'a [crate::mcp::McpTool],
    config: &'a Config,
    id_json: &'a str,
    catalog: &'a Catalog,
    /// The thinking level of every call, instead of the session's (a continuation's prefill
    /// runs without thinking).
    thinking: Option<ThinkingLevel>,
}

#[durable_object]
pub struct ConversationObject {
    state: State,
    env: Env,
    config: Result<Rc<Config>>,
    room: RefCell<Room<WebSocket>>,
    /// When the read started, and the read.
    operator: RefCell<Option<(i64, OperatorLoad)>>,
    /// One copy to D1 at a time, so D1 numbers messages in the order they were kept.
    copy_lock: futures::lock::Mutex<()>,
    /// Which outbox rows are in D1 and deleted, and failed copies in a row (memory only: after
    /// a restart every kept row is copied again).
    replicator: RefCell<crate::outbox::Replicator>,
    /// The running turn's closing copy has started: a delayed copy must not mark it running.
    closing: Cell<bool>,
    /// What the last live-registry write said.
    live: RefCell<crate::outbox::LiveRow>,
    abort: RefCell<Option<AbortController>>,
    aborted: Cell<bool>,
    /// The running turn armed the alarm that recovers it.
    recovery_armed: Cell<bool>,
    /// Held from reading a conversation's owner to recording it, so two users racing for a new
    /// conversation cannot both claim it.
    claim_lock: futures::lock::Mutex<()>,
    /// The tools listed from the agent's MCP servers (memory only).
    mcp_cache: RefCell<crate::mcp::ToolCache>,
    /// This conversation's sessions with MCP servers, by [`crate::agents::McpServer::session_key`]
    /// (memory only: a new instance opens new ones).
    mcp_sessions: RefCell<std::collections::HashMap<String, crate::mcp::Session>>,
}

impl DurableObject for ConversationObject {
    fn new(state: State, env: Env) -> Self {
        let config = super::load_config(&env)
            .map(Rc::new)
            .map_err(|e| Error::RustError(e.to_string()));
        let window = config
            .as_ref()
            .map(|c| c.replay_window_ms)
            .unwrap_or(120_000);
        ConversationObject {
            state,
            env,
            config,
            room: RefCell::new(Room::new(window)),
            operator: RefCell::new(None),
            copy_lock: futures::lock::Mutex::new(()),
            replicator: RefCell::new(crate::outbox::Replicator::default()),
            closing: Cell::new(false),
            live: RefCell::new(crate::outbox::LiveRow::default()),
            abort: RefCell::new(None),
            aborted: Cell::new(false),
            recovery_armed: Cell::new(false),
            claim_lock: futures::lock::Mutex::new(()),
            mcp_cache: RefCell::new(crate::mcp::ToolCache::default()),
            mcp_sessions: RefCell::new(std::collections::HashMap::new()),
        }
    }

    async fn fetch(&self, mut req: Request) -> Result<Response> {
        let conversation = req
            .headers()
            .get(super::gateway::H_CONVERSATION)?
            .unwrap_or_default();
        let config = self.config()?;
        let path = req.path();
        if path == "/connect" && req.headers().get(super::gateway::H_USER)?.is_none() {
            // A socket.io socket that authenticates in its CONNECT packet: held without loading.
            let refused = req.headers().get(super::gateway::H_REFUSED)?;
            return self
                .attach_unauthenticated(&conversation, refused, &config)
                .await;
        }
        if path == "/held" {
            return self.held_messages().await;
        }
        self.load(Some(&conversation)).await?;
        match path.as_str() {
            "/connect" => self.attach(&req, &config).await,
            "/revoke" => {
                let body: Value = req.json().await.unwrap_or(Value::Null);
                let hashes: Vec<String> = body
                    .get("tokens")
                    .and_then(|t| serde_json::from_value(t.clone()).ok())
                    .unwrap_or_default();
                let closed = self.shut_sockets(
                    |meta| meta.token.as_ref().is_some_and(|t| hashes.contains(t)),
                    socket::TOKEN_REVOKED,
                );
                super::json_response(200, &json!({ "sockets": closed, "failed": 0 }))
            }
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
        let config = self.config()?;
        let meta: SocketMeta = ws.deserialize_attachment()?.unwrap_or_default();
        if meta.shut {
            return Ok(());
        }
        // Not authenticated yet: only the handshake is served, and nothing is loaded or stored.
        if !meta.unauthenticated() {
            self.load(None).await?;
            if meta.expired(now_ms()) {
                self.shut_socket(&ws, &meta, socket::TOKEN_EXPIRED);
                return Ok(());
            }
        }
        let limits = Limits {
            max_content_bytes: config.max_message_bytes,
        };
        let frame = match &message {
            WebSocketIncomingMessage::String(text) => Frame::Text(text),
            WebSocketIncomingMessage::Binary(_) => Frame::Binary,
        };
        match socket::read_frame(&meta, frame, &limits) {
            SocketInput::Ignore => {}
            SocketInput::Reply(text) => {
                let _ = ws.send_with_str(text);
            }
            SocketInput::Close { code, reason } => {
                let _ = ws.close(Some(code), Some(reason));
            }
            SocketInput::Connect { nsp, auth } => {
                self.sio_connect(&ws, meta, &nsp, auth, &config).await?
            }
            SocketInput::Disconnect => {
                let meta = SocketMeta {
                    connected: false,
                    ..meta
                };
                self.set_meta(&ws, &meta)?;
            }
            SocketInput::Event { event, ack } => {
                self.handle_event(&ws, &meta, event, ack, &config).await
            }
            SocketInput::Refuse { error, ack } => self.refuse(&ws, &meta, ack, &error),
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
        let _ = ws.close(Some(socket::close_reply_code(code)), Some("closing"));
        self.socket_gone(&ws).await
    }

    async fn websocket_error(&self, ws: WebSocket, _error: Error) -> Result<()> {
        self.socket_gone(&ws).await
    }

    async fn alarm(&self) -> Result<Response> {
        self.load(None).await?;
        let config = self.config()?;
        let next_expiry = self.shut_expired(now_ms());
        let sockets = self.sockets();
        let mut any_pinged = false;
        for (ws, meta) in &sockets {
            if meta.pinged() {
                any_pinged = true;
                let _ = ws.send_with_str(sio::ping());
            }
        }
        self.room.borrow_mut().log.prune(now_ms());
        // Messages a failed copy or a dead instance left: one copy takes a bounded number of
        // rows, so a backlog goes in several (a failure arms the next retry itself).
        if self.outbox_waiting() {
            let d = db::db(&self.env)?;
            let mut copies = 0;
            while copies < 10 && self.outbox_waiting() {
                copies += 1;
                if let Err(e) = self.copy_to_d1(&d, CopyKind::Retry, Vec::new).await {
                    console_warn!("retrying the copy to D1: {e}");
                    break;
                }
            }
        }
        if any_pinged {
            self.arm_alarm_within(config.sio_ping_interval_ms).await;
        }
        if self.room.borrow().turn_running && self.recovery_armed.get() {
            // The turn runs on: should this instance die later, the next alarm stores it.
            self.arm_alarm_within(RECOVERY_ALARM_MS).await;
        }
        self.arm_expiry(next_expiry).await;
        // A turn parked on a tool call nobody answered in time goes on without it.
        self.approval_alarm(&config).await;
        // A turn a restart interrupted, to be continued: it runs here, so it needs no client.
        let continuation = self.room.borrow_mut().begin_continuation();
        if let Some(job) = continuation {
            self.continue_turn(job, &config).await;
            let next = self.room.borrow_mut().next_turn();
            self.run_queue(next, &config).await;
        }
        Response::ok("ok")
    }
}

impl ConversationObject {
    fn config(&self) -> Result<Rc<Config>> {
        match &self.config {
            Ok(c) => Ok(c.clone()),
            Err(e) => Err(Error::RustError(e.to_string())),
        }
    }

    fn sql(&self) -> SqlStorage {
        self.state.storage().sql()
    }

    /// Loads the conversation's durable state; messages a previous instance left waiting for D1
    /// get an alarm that copies them.
    async fn load(&self, id_hint: Option<&str>) -> Result<()> {
        self.ensure_loaded(id_hint)?;
        let orphaned = std::mem::take(&mut self.room.borrow_mut().orphaned_outbox);
        if orphaned {
            self.arm_alarm_within(ORPHAN_COPY_MS).await;
        }
        Ok(())
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
        sql.exec(crate::outbox::CREATE_TABLE, None)?;
        sql.exec(checkpoint::CREATE_TURN_LOG, None)?;
        sql.exec("CREATE TABLE IF NOT EXISTS seen (client_id TEXT PRIMARY KEY, message_id TEXT NOT NULL, at INTEGER NOT NULL)", None)?;
        #[derive(Deserialize)]
        struct Kv {
            k: String,
            v: String,
        }
        let rows: Vec<Kv> = sql.exec("SELECT k, v FROM kv", None)?.to_array()?;
        let get = |key: &str| rows.iter().find(|r| r.k == key).map(|r| r.v.clone());
        // A turn marked running in storage was left by an instance that died during it.
        let interrupted = get("turn").as_deref() == Some("running");
        let record = get(checkpoint::RECORD_KEY);
        // Counted only where there can be something to count: a new conversation has no outbox.
        let waiting = get("stored").is_some() && self.outbox_waiting();
        let loaded = self.room.borrow_mut().load(get, id_hint, waiting);
        match loaded {
            Ok(Some(new_id)) => {
                sql.exec(
                    "INSERT OR REPLACE INTO kv (k, v) VALUES ('id', ?)",
                    vec![new_id.into()],
                )?;
            }
            Ok(None) => {}
            Err(_) => {
                return Err(Error::RustError(
                    "conversation object used before its id was known".into(),
                ))
            }
        }
        if interrupted {
            self.recover_turn(record)?;
        } else if self.room.borrow().waiting.is_some() {
            self.restore_parked()?;
        }
        Ok(())
    }

    /// The owner and the messages this conversation holds that D1 may lack, for the history
    /// over HTTP. A conversation that never stored anything answers without creating storage.
    async fn held_messages(&self) -> Result<Response> {
        #[derive(Deserialize)]
        struct Table {
            #[allow(dead_code)]
            name: String,
        }
        let known = self.room.borrow().loaded
            || !self
                .sql()
                .exec(
                    "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'kv'",
                    None,
                )?
                .to_array::<Table>()?
                .is_empty();
        if !known {
            return super::json_response(200, &json!({ "owner": null, "messages": [] }));
        }
        self.load(None).await?;
        let (id, owner) = {
            let room = self.room.borrow();
            (room.id.clone(), room.owner.clone())
        };
        let messages: Vec<Value> = self
            .kept_messages()?
            .iter()
            .map(|m| {
                store::message_json(
                    &m.id,
                    &id,
                    &m.role,
                    &m.content,
                    &m.metadata,
                    m.created_at as f64,
                )
            })
            .collect();
        super::json_response(200, &json!({ "owner": owner, "messages": messages }))
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
        self.save_session_locally();
        if let Ok(d) = db::db(&self.env) {
            let mirror = || self.session_mirror(&d).into_iter().collect();
            if let Err(e) = self.copy_to_d1(&d, CopyKind::Session, mirror).await {
                console_warn!("mirroring the session to D1: {e}");
            }
        }
    }

    /// The session in object storage only; D1 gets it with the next copy.
    fn save_session_locally(&self) {
        let text = serde_json::to_string(&self.room.borrow().session).unwrap_or_default();
        self.kv_put("session", &text);
    }
}

/// Whether two handles are the same socket.
fn same(a: &WebSocket, b: &WebSocket) -> bool {
    let a: &wasm_bindgen::JsValue = a.as_ref().as_ref();
    let b: &wasm_bindgen::JsValue = b.as_ref().as_ref();
    js_sys::Object::is(a, b)
}
