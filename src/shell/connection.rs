//! The Durable Object of one socket.io connection (named by its Engine.IO sid): serves long-polling and the WebSocket it upgrades to, and relays each conversation's socket.io socket; what to do is the pure `Connection`'s decision.
//!
//! Its state lives in memory only: the client's transport and the relays keep the object
//! awake, and a connection whose object restarted is unknown to it, so the client reconnects
//! and recovers its conversation through the offsets it holds.

use super::gateway::{H_TOKEN, H_TOKEN_EXPIRES, H_USER};
use super::{new_id, now_ms};
use crate::config::Config;
use crate::connection::{Action, Connection};
use crate::protocol::{self, sio, Limits};
use futures::channel::oneshot;
use futures::future::{select, Either};
use futures::StreamExt;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;
use worker::*;

/// The internal header naming the transport of a handshake (`polling` or `websocket`).
pub const H_TRANSPORT: &str = "x-gateway-transport";
/// The internal header with the connection's sid on its handshake.
pub const H_SID: &str = "x-gateway-sid";
/// The internal header marking a relay's socket to a conversation: the connection object owns
/// its client's heartbeat, so the conversation never pings the relay (and an idle connection
/// wakes none of the conversations it has used).
pub const H_RELAY: &str = "x-gateway-relay";

/// One socket.io connection.
#[durable_object]
pub struct ConnectionObject {
    state: State,
    inner: Rc<Inner>,
}

/// What the object's request handlers and its socket tasks share.
struct Inner {
    env: Env,
    config: std::result::Result<Rc<Config>, String>,
    conn: RefCell<Option<Connection>>,
    /// Open relays by conversation, each with the generation that tells a reopened relay from
    /// the socket it replaced.
    relays: RefCell<HashMap<String, (u64, WebSocket)>>,
    relay_generation: Cell<u64>,
    /// The client's WebSocket, once it opened one (an upgrade in progress, or done).
    socket: RefCell<Option<WebSocket>>,
    /// The WebSocket carries the packets (the upgrade completed, or it was the only transport).
    upgraded: Cell<bool>,
    /// The client probed its WebSocket: it is switching, and polls end at once.
    probed: Cell<bool>,
    /// Wakes the long-poll waiting for packets; `true`: the transport upgraded meanwhile.
    poll: RefCell<Option<oneshot::Sender<bool>>>,
    /// When the client last sent anything (a poll, a post, a frame).
    last_seen: Cell<i64>,
    /// The connection has its row in the live registry.
    registered: Cell<bool>,
    /// Closed, with the reason its WebSocket closes with once its last packets are out.
    closing: RefCell<Option<String>>,
}

impl Inner {
    fn has_outgoing(&self) -> bool {
        self.conn
            .borrow()
            .as_ref()
            .is_some_and(|c| c.has_outgoing())
    }
}

impl DurableObject for ConnectionObject {
    fn new(state: State, env: Env) -> Self {
        let config = super::load_config(&env)
            .map(Rc::new)
            .map_err(|e| e.to_string());
        ConnectionObject {
            state,
            inner: Rc::new(Inner {
                env,
                config,
                conn: RefCell::new(None),
                relays: RefCell::new(HashMap::new()),
                relay_generation: Cell::new(0),
                socket: RefCell::new(None),
                upgraded: Cell::new(false),
                probed: Cell::new(false),
                poll: RefCell::new(None),
                last_seen: Cell::new(now_ms()),
                registered: Cell::new(false),
                closing: RefCell::new(None),
            }),
        }
    }

    async fn fetch(&self, mut req: Request) -> Result<Response> {
        let config = self
            .inner
            .config
            .clone()
            .map_err(|e| Error::RustError(format!("configuration: {e}")))?;
        let path = req.path();
        if path == "/open" {
            return self.open(&req, &config).await;
        }
        let (known, waiting) = match self.inner.conn.borrow().as_ref() {
            Some(c) => (!c.closed(), c.has_outgoing()),
            None => (false, false),
        };
        // A closed connection still hands its last packets (an error, DISCONNECT) to a poll.
        if !(known || (waiting && path == "/poll")) {
            return engine_error(400, 1, "Session ID unknown");
        }
        self.inner.last_seen.set(now_ms());
        match path.as_str() {
            "/poll" => self.inner.clone().long_poll(&config).await,
            "/post" => {
                let body = req.text().await.unwrap_or_default();
                if body.len() > max_payload(&config) as usize {
                    return engine_error(413, 3, "Payload too large");
                }
                for packet in sio::split_payload(&body) {
                    self.inner.clone().from_client(packet).await;
                }
                text_response("ok")
            }
            "/upgrade" => self.upgrade(),
            "/reload" => {
                let body = req.text().await.unwrap_or_default();
                let actions = self.inner.with_conn(|c| c.reload(&body));
                let sent = u64::from(actions.is_empty() && self.inner.has_outgoing());
                self.inner.clone().perform(actions);
                super::json_response(200, &serde_json::json!({ "sockets": sent, "failed": 0 }))
            }
            "/revoke" => {
                let body: serde_json::Value = req.json().await.unwrap_or_default();
                let hashes: Vec<String> = body
                    .get("tokens")
                    .and_then(|t| serde_json::from_value(t.clone()).ok())
                    .unwrap_or_default();
                let (hit, actions) = self
                    .inner
                    .conn
                    .borrow_mut()
                    .as_mut()
                    .map(|c| c.revoke(&hashes))
                    .unwrap_or_default();
                self.inner.clone().perform(actions);
                let closed = u64::from(hit);
                super::json_response(200, &serde_json::json!({ "sockets": closed, "failed": 0 }))
            }
            _ => engine_error(400, 0, "Transport unknown"),
        }
    }

    async fn alarm(&self) -> Result<Response> {
        let Ok(config) = self.inner.config.clone() else {
            return Response::ok("ok");
        };
        let alive = self
            .inner
            .conn
            .borrow()
            .as_ref()
            .is_some_and(|c| !c.closed());
        if !alive {
            return Response::ok("ok");
        }
        let silent = now_ms() - self.inner.last_seen.get();
        if silent > (config.sio_ping_interval_ms + config.sio_ping_timeout_ms) as i64 {
            let actions = self.inner.with_conn(|c| c.shut("ping timeout"));
            self.inner.clone().perform(actions);
            return Response::ok("ok");
        }
        if self.inner.upgraded.get() {
            if let Some(ws) = self.inner.socket.borrow().as_ref() {
                let _ = ws.send_with_str(sio::ping());
            }
        }
        self.arm(config.sio_ping_interval_ms).await;
        Response::ok("ok")
    }
}

impl ConnectionObject {
    /// The handshake: a new connection, answered with Engine.IO OPEN over the transport it
    /// started on.
    async fn open(&self, req: &Request, config: &Config) -> Result<Response> {
        if self.inner.conn.borrow().is_some() {
            return engine_error(400, 1, "Session ID unknown");
        }
        let headers = req.headers();
        let sid = headers.get(H_SID)?.unwrap_or_else(new_id);
        let user = headers.get(H_USER)?;
        let token = headers.get(H_TOKEN)?;
        let expires = headers
            .get(H_TOKEN_EXPIRES)?
            .and_then(|s| s.parse::<i64>().ok());
        let limits = Limits {
            max_content_bytes: config.max_message_bytes,
        };
        let mut conn = Connection::new(sid.clone(), new_id(), user, expires, limits);
        conn.token = token;
        conn.refused = headers.get(super::gateway::H_REFUSED)?;
        *self.inner.conn.borrow_mut() = Some(conn);
        self.inner.last_seen.set(now_ms());
        self.arm(config.sio_ping_interval_ms).await;
        let max = max_payload(config);
        let (interval, timeout) = (config.sio_ping_interval_ms, config.sio_ping_timeout_ms);
        if headers.get(H_TRANSPORT)?.as_deref() == Some("websocket") {
            let pair = WebSocketPair::new()?;
            let ws = pair.server;
            ws.accept()?;
            let _ = ws.send_with_str(sio::open_packet(&sid, interval, timeout, max));
            self.inner.upgraded.set(true);
            *self.inner.socket.borrow_mut() = Some(ws.clone());
            self.inner.clone().watch_client(ws);
            return Response::from_websocket(pair.client);
        }
        text_response(&sio::open_packet_polling(&sid, interval, timeout, max))
    }

    /// The client opens the WebSocket it will upgrade to: probed, then switched to on `5`.
    fn upgrade(&self) -> Result<Response> {
        if self.inner.socket.borrow().is_some() {
            return engine_error(400, 3, "Bad request");
        }
        let pair = WebSocketPair::new()?;
        let ws = pair.server;
        ws.accept()?;
        *self.inner.socket.borrow_mut() = Some(ws.clone());
        self.inner.clone().watch_client(ws);
        Response::from_websocket(pair.client)
    }

    async fn arm(&self, ms: u64) {
        let storage = self.state.storage();
        if let Err(e) = storage.set_alarm(Duration::from_millis(ms)).await {
            console_warn!("arming the connection's alarm: {e}");
        }
    }
}

impl Inner {
    fn with_conn(&self, f: impl FnOnce(&mut Connection) -> Vec<Action>) -> Vec<Action> {
        self.conn.borrow_mut().as_mut().map(f).unwrap_or_default()
    }

    /// One Engine.IO packet from the client, over either transport. A CONNECT with
    /// `auth.token` is checked first, so the packets after it find the user signed in.
    async fn from_client(self: Rc<Self>, packet: &str) {
        self.last_seen.set(now_ms());
        if packet.starts_with("40") {
            if let Ok(sio::Inbound::Connect { nsp, auth }) = sio::decode(packet) {
                if let (Some(token), Ok(config)) =
                    (sio::connect_auth_token(&auth), self.config.clone())
                {
                    match super::login::connect_token(&self.env, &config, token).await {
                        Ok(g) => {
                            if let Some(c) = self.conn.borrow_mut().as_mut() {
                                c.sign_in(g.user, g.token_hash, g.expires_at);
                            }
                        }
                        Err(message) => {
                            let actions = self.with_conn(|c| c.refuse_connect(&nsp, &message));
                            return self.perform(actions);
                        }
                    }
                }
            }
        }
        let actions = self.with_conn(|c| c.client_packet(packet, now_ms(), new_id));
        let connected = self.conn.borrow().as_ref().is_some_and(|c| c.connected());
        if connected && !self.registered.replace(true) {
            // Listed for the admin's reload, which must reach it before it uses a conversation.
            self.clone().registry(true).await;
        }
        self.perform(actions);
    }

    /// Adds or removes the connection's row in the live registry (`sio:<sid>`, no sockets of
    /// its own: its relays count in their conversations' rows).
    async fn registry(self: Rc<Self>, listed: bool) {
        let Some(sid) = self.conn.borrow().as_ref().map(|c| c.sid.clone()) else {
            return;
        };
        let key = format!("{}{sid}", crate::store::CONNECTION_ROW_PREFIX);
        let Ok(d) = super::db::db(&self.env) else {
            return;
        };
        let statement = if listed {
            let params = [key.into(), (now_ms() as f64).into(), 0.0.into(), 0.0.into()];
            d.prepare(crate::store::sql::REGISTER_LIVE).bind(&params)
        } else {
            d.prepare(crate::store::sql::UNREGISTER_LIVE)
                .bind(&[key.into()])
        };
        let result = match statement {
            Ok(s) => s.run().await.map(|_| ()),
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            console_warn!("live registry (connection): {e}");
        }
    }

    /// Answers a long-poll GET: what waits, else what comes within a ping interval, else a ping.
    async fn long_poll(self: Rc<Self>, config: &Config) -> Result<Response> {
        if self.upgraded.get() {
            return engine_error(400, 3, "Bad request");
        }
        if self.poll.borrow().is_some() {
            // Engine.IO allows one poll at a time; an overlapping one ends the connection.
            let actions = self.with_conn(|c| c.shut("overlapping polls"));
            self.clone().perform(actions);
            return engine_error(400, 3, "Bad request");
        }
        if self.probed.get() {
            // Switching to the WebSocket: what waits goes there.
            return text_response("6");
        }
        let waiting = self
            .conn
            .borrow()
            .as_ref()
            .is_some_and(|c| c.has_outgoing());
        if !waiting {
            let (tx, rx) = oneshot::channel::<bool>();
            *self.poll.borrow_mut() = Some(tx);
            let ping = Delay::from(Duration::from_millis(config.sio_ping_interval_ms));
            let outcome = select(rx, ping).await;
            self.poll.borrow_mut().take();
            match outcome {
                // The client is switching to its WebSocket: this poll ends with a noop, and
                // what waits goes over the socket.
                Either::Left((Ok(true), _)) => return text_response("6"),
                Either::Left(_) => {}
                Either::Right(_) => return text_response(sio::ping()),
            }
        }
        let (mut packets, closed) = match self.conn.borrow_mut().as_mut() {
            Some(c) => (c.take_outgoing(), c.closed()),
            None => (Vec::new(), true),
        };
        if closed {
            // The Engine.IO CLOSE after the last packets.
            packets.push("1".into());
        }
        if packets.is_empty() {
            return text_response("6");
        }
        text_response(&sio::join_payload(&packets))
    }

    /// Carries out the connection's decisions, then delivers what waits for the client.
    fn perform(self: Rc<Self>, actions: Vec<Action>) {
        let mut close = None;
        for action in actions {
            match action {
                Action::OpenRelay {
                    conversation,
                    connect,
                } => {
                    let inner = self.clone();
                    wasm_bindgen_futures::spawn_local(async move {
                        inner.open_relay(conversation, connect).await;
                    });
                }
                Action::ToRelay {
                    conversation,
                    packet,
                } => {
                    if let Some((_, ws)) = self.relays.borrow().get(&conversation) {
                        let _ = ws.send_with_str(&packet);
                    }
                }
                Action::CloseRelay(conversation) => {
                    if let Some((_, ws)) = self.relays.borrow_mut().remove(&conversation) {
                        let _ = ws.close(Some(1000), Some("moved on"));
                    }
                }
                Action::Close { reason } => close = Some(reason),
            }
        }
        self.deliver();
        if close.is_some() && self.registered.replace(false) {
            let inner = self.clone();
            wasm_bindgen_futures::spawn_local(async move { inner.registry(false).await });
        }
        if let Some(reason) = close {
            self.closing
                .replace(Some(crate::text::prefix_chars(&reason, 120).to_string()));
            if self.upgraded.get() || !self.probed.get() {
                self.close_socket();
            }
            // Mid-upgrade, the socket closes once the switch delivers what waits (`deliver`);
            // on polling, the next poll takes it.
            if let Some(tx) = self.poll.borrow_mut().take() {
                let _ = tx.send(false);
            }
        }
    }

    /// Closes the client's WebSocket (its last packets already sent).
    fn close_socket(&self) {
        let reason = self.closing.take().unwrap_or_default();
        if let Some(ws) = self.socket.borrow_mut().take() {
            let _ = ws.close(Some(1000), Some(reason));
        }
    }

    /// Sends what waits over the WebSocket, or wakes the long-poll that will take it.
    fn deliver(&self) {
        if self.upgraded.get() {
            let packets = match self.conn.borrow_mut().as_mut() {
                Some(c) => c.take_outgoing(),
                None => return,
            };
            if let Some(ws) = self.socket.borrow().as_ref() {
                for p in packets {
                    let _ = ws.send_with_str(&p);
                }
            }
            if self.conn.borrow().as_ref().is_some_and(|c| c.closed()) {
                self.close_socket();
            }
        } else if self
            .conn
            .borrow()
            .as_ref()
            .is_some_and(|c| c.has_outgoing())
        {
            if let Some(tx) = self.poll.borrow_mut().take() {
                let _ = tx.send(false);
            }
        }
    }

    /// Reads the client's WebSocket: the upgrade probe, the switch, then packets.
    fn watch_client(self: Rc<Self>, ws: WebSocket) {
        wasm_bindgen_futures::spawn_local(async move {
            let Ok(mut events) = ws.events() else { return };
            while let Some(Ok(event)) = events.next().await {
                match event {
                    WebsocketEvent::Message(m) => {
                        let Some(text) = m.text() else {
                            let _ = ws.close(Some(1003), Some("binary packets are not supported"));
                            break;
                        };
                        self.last_seen.set(now_ms());
                        if text == "2probe" && !self.upgraded.get() {
                            let _ = ws.send_with_str("3probe");
                            self.probed.set(true);
                            // The client pauses polling before it switches: the poll it has
                            // out ends now, with a noop, so it can.
                            if let Some(tx) = self.poll.borrow_mut().take() {
                                let _ = tx.send(true);
                            }
                        } else if text == "5" && !self.upgraded.get() {
                            self.upgraded.set(true);
                            if let Some(tx) = self.poll.borrow_mut().take() {
                                let _ = tx.send(true);
                            }
                            self.deliver();
                        } else {
                            self.clone().from_client(&text).await;
                        }
                    }
                    WebsocketEvent::Close(_) => {
                        // Answered, or the client waits for the close handshake to time out.
                        let _ = ws.close(Some(1000), Some("closed"));
                        break;
                    }
                }
            }
            // The client's socket is gone: so is the connection (socket.io clients reconnect
            // with a new one and recover through their offsets).
            let current = self.socket.borrow().as_ref().is_some_and(|s| s == &ws);
            if current && self.upgraded.get() {
                self.socket.borrow_mut().take();
                let actions = self.with_conn(|c| c.shut("transport closed"));
                self.perform(actions);
            }
        });
    }

    /// Opens a relay to a conversation's object: a socket.io socket authenticated as the
    /// connection's user, which then CONNECTs with `connect`.
    async fn open_relay(self: Rc<Self>, conversation: String, connect: String) {
        let generation = self.relay_generation.get() + 1;
        self.relay_generation.set(generation);
        let opened = self.request_relay(&conversation).await;
        let ws = match opened {
            Ok(ws) => ws,
            Err(reason) => {
                console_warn!("relay to a conversation refused: {reason}");
                let actions = self.with_conn(|c| c.relay_open_failed(&conversation, &reason));
                self.perform(actions);
                return;
            }
        };
        let still_wanted = self
            .conn
            .borrow()
            .as_ref()
            .is_some_and(|c| c.relays().contains(&conversation.as_str()));
        if !still_wanted {
            let _ = ws.close(Some(1000), Some("moved on"));
            return;
        }
        if let Some((_, old)) = self
            .relays
            .borrow_mut()
            .insert(conversation.clone(), (generation, ws.clone()))
        {
            let _ = old.close(Some(1000), Some("replaced"));
        }
        let _ = ws.send_with_str(&connect);
        let Ok(mut events) = ws.events() else { return };
        let current = |inner: &Inner| {
            inner
                .relays
                .borrow()
                .get(&conversation)
                .is_some_and(|(g, _)| *g == generation)
        };
        while let Some(Ok(event)) = events.next().await {
            match event {
                WebsocketEvent::Message(m) => {
                    if !current(&self) {
                        break;
                    }
                    if let Some(text) = m.text() {
                        let actions = self.with_conn(|c| c.relay_packet(&conversation, &text));
                        self.clone().perform(actions);
                    }
                }
                WebsocketEvent::Close(_) => {
                    let _ = ws.close(Some(1000), Some("closed"));
                    break;
                }
            }
        }
        if current(&self) {
            self.relays.borrow_mut().remove(&conversation);
            let actions = self.with_conn(|c| c.relay_closed(&conversation));
            self.perform(actions);
        }
    }

    /// The relay's socket from the conversation's object, or why it refused.
    async fn request_relay(&self, conversation: &str) -> std::result::Result<WebSocket, String> {
        let (user, token, expires) = match self.conn.borrow().as_ref() {
            Some(c) => (c.user.clone(), c.token.clone(), c.expires),
            None => return Err("the connection is closed".into()),
        };
        let Some(user) = user else {
            return Err("not signed in".into());
        };
        let headers = Headers::new();
        let set = |k: &str, v: &str| headers.set(k, v).map_err(|e| e.to_string());
        set("upgrade", "websocket")?;
        set(super::gateway::H_FRAMING, "sio")?;
        set(H_RELAY, "1")?;
        set(super::gateway::H_CONVERSATION, conversation)?;
        set(H_USER, &user)?;
        if let Some(t) = &token {
            set(H_TOKEN, t)?;
        }
        if let Some(at) = expires {
            set(H_TOKEN_EXPIRES, &at.to_string())?;
        }
        let mut init = RequestInit::new();
        init.with_method(Method::Get).with_headers(headers);
        let req = Request::new_with_init("https://conversation/connect", &init)
            .map_err(|e| e.to_string())?;
        let stub = super::gateway::conversation_stub(&self.env, conversation)
            .map_err(|e| e.message().to_string())?;
        let mut resp = stub.fetch_with_request(req).await.map_err(|e| {
            console_error!("opening a relay: {e}");
            "internal: the conversation is unreachable".to_string()
        })?;
        let status = resp.status_code();
        if status == 101 {
            let ws = resp
                .websocket()
                .ok_or_else(|| "internal: the conversation sent no socket".to_string())?;
            ws.accept().map_err(|e| e.to_string())?;
            return Ok(ws);
        }
        let body: serde_json::Value = resp.json().await.unwrap_or_default();
        let reason = body["error"]
            .as_str()
            .unwrap_or("the conversation refused the connection");
        Err(if status >= 500 {
            format!("internal: {reason}")
        } else {
            reason.to_string()
        })
    }
}

/// The largest packet or polling body accepted.
fn max_payload(config: &Config) -> u64 {
    protocol::max_frame_bytes(&Limits {
        max_content_bytes: config.max_message_bytes,
    }) as u64
}

fn text_response(body: &str) -> Result<Response> {
    let headers = Headers::new();
    headers.set("content-type", "text/plain; charset=UTF-8")?;
    headers.set("cache-control", "no-store")?;
    Ok(Response::ok(body)?.with_headers(headers))
}

/// An Engine.IO error answer (`{"code":1,"message":"Session ID unknown"}`), which clients read
/// as the end of the connection.
pub fn engine_error(status: u16, code: u8, message: &str) -> Result<Response> {
    super::json_text(
        status,
        serde_json::json!({ "code": code, "message": message }).to_string(),
    )
}
