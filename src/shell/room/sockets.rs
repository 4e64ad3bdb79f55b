//! The sockets of a conversation: attaching, framing and broadcasting, resume replay, socket.io CONNECT, the live registry.

use super::*;
use crate::conversation::checkpoint::Flush;
use crate::login::Grant;
use crate::protocol::framing::Framing;
use wasm_bindgen::{prelude::wasm_bindgen, JsCast, JsValue};

#[wasm_bindgen]
extern "C" {
    /// A WebSocket seen only through `send`, so a frame already converted to a JavaScript
    /// string is passed as it is (`send_with_str` converts it again for every socket).
    type SendTarget;
    #[wasm_bindgen(method, catch, js_name = send)]
    fn send(this: &SendTarget, data: &JsValue) -> std::result::Result<(), JsValue>;
}

impl ConversationObject {
    /// Fills the socket cache from the runtime after a wake-up; a no-op when it is warm.
    pub(super) fn ensure_sockets(&self) {
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
    pub(super) fn sockets(&self) -> Vec<(WebSocket, SocketMeta)> {
        self.ensure_sockets();
        self.room.borrow().sockets.clone().unwrap_or_default()
    }

    /// Authenticated sockets: what the live registry counts (a socket.io socket that has not
    /// authenticated yet is nobody's and costs the registry nothing).
    pub(super) fn socket_count(&self) -> usize {
        self.ensure_sockets();
        self.room.borrow().socket_count()
    }

    pub(super) fn set_meta(&self, ws: &WebSocket, meta: &SocketMeta) -> Result<()> {
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

    pub(super) async fn forget_socket(&self, ws: &WebSocket) {
        self.ensure_sockets();
        self.forget_cached(ws);
        self.update_live(self.socket_count()).await;
    }

    /// Drops a socket from the cache.
    pub(super) fn forget_cached(&self, ws: &WebSocket) {
        if let Some(list) = self.room.borrow_mut().sockets.as_mut() {
            list.retain(|(w, _)| !same(w, ws));
        }
    }

    /// A socket closed or failed: forgets it and updates the registry, except for a socket that
    /// never authenticated, which must not make the object load or write anything.
    pub(super) async fn socket_gone(&self, ws: &WebSocket) -> Result<()> {
        let meta: SocketMeta = ws
            .deserialize_attachment()
            .ok()
            .flatten()
            .unwrap_or_default();
        if meta.unauthenticated() && !meta.shut {
            self.forget_cached(ws);
            return Ok(());
        }
        self.load(None).await?;
        self.forget_socket(ws).await;
        Ok(())
    }

    /// Keeps this conversation's row in the live registry in step with its sockets and turn.
    pub(super) async fn update_live(&self, sockets: usize) {
        let Ok(d) = db::db(&self.env) else { return };
        let turning = self.room.borrow().turn_running;
        let write = self.live.borrow_mut().write(sockets, turning);
        let result = match self.live_statement(&d, write) {
            Ok(statement) => statement.run().await.map(|_| ()),
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            self.live_unknown();
            console_warn!("live registry: {e}");
        }
    }

    // ---- sending -------------------------------------------------------------------------

    pub(super) fn send_to(&self, ws: &WebSocket, meta: &SocketMeta, event: &OutEvent) {
        if let Some(frame) = meta.frame(event) {
            let _ = ws.send_with_str(frame);
        }
    }

    /// Numbers a stream event, keeps it for resume and sends it to every socket; each framing is
    /// built once, and crosses into JavaScript once however many sockets get it.
    pub(super) fn broadcast(&self, name: &'static str, data: String) {
        self.ensure_sockets();
        let now = now_ms();
        let mut guard = self.room.borrow_mut();
        let room = &mut *guard; // split borrows: the logged event and the socket list
        let event = room.log.push(name, data, now);
        // One frame per framing, made when the first socket of that framing needs it.
        let mut frames: [Option<JsValue>; 2] = [None, None];
        for (ws, meta) in room.sockets.iter().flatten() {
            if !meta.hears_events() {
                continue;
            }
            let frame = frames[usize::from(meta.sio)]
                .get_or_insert_with(|| JsValue::from_str(&meta.framing().encode(event)));
            let socket: &JsValue = ws.as_ref().as_ref();
            // A socket that closed meanwhile throws; its close event cleans up.
            let _ = socket.unchecked_ref::<SendTarget>().send(frame);
        }
        // After the sends: a checkpoint write holds every later outgoing frame until it commits,
        // and these need not wait for it.
        let bytes = event.data.len();
        let policy = self.checkpoint_policy();
        let flush = room.checkpoint.sent(bytes, now, policy);
        drop(guard);
        if flush == Flush::Now {
            self.flush_checkpoint();
        }
    }

    /// Sends an event outside the stream to every socket; returns (sent, failed).
    pub(super) fn broadcast_unsequenced(&self, event: &OutEvent) -> (u64, u64) {
        let (mut sent, mut failed) = (0, 0);
        for (ws, meta) in self.sockets() {
            if let Some(frame) = meta.frame(event) {
                match ws.send_with_str(frame) {
                    Ok(()) => sent += 1,
                    Err(_) => failed += 1,
                }
            }
        }
        (sent, failed)
    }

    /// Sends an `error` to one socket.
    pub(super) fn send_error(&self, ws: &WebSocket, meta: &SocketMeta, error: &RoomError) {
        let id = self.room.borrow().id.clone();
        let payload = error.event_payload(Some(&id));
        self.send_to(ws, meta, &OutEvent::unsequenced("error", payload));
    }

    /// Refuses a client event: an `error` to the sender, and the same payload as its ack.
    pub(super) fn refuse(
        &self,
        ws: &WebSocket,
        meta: &SocketMeta,
        ack: Option<u64>,
        error: &RoomError,
    ) {
        self.send_error(ws, meta, error);
        let id = self.room.borrow().id.clone();
        Self::send_ack(ws, ack, &error.event_payload(Some(&id)));
    }

    pub(super) fn send_ack(ws: &WebSocket, ack: Option<u64>, payload: &str) {
        // Only socket.io events carry an ack id.
        if let Some(frame) = Framing::SocketIo.ack(ack, payload) {
            let _ = ws.send_with_str(frame);
        }
    }

    // ---- connecting ----------------------------------------------------------------------

    pub(super) async fn attach(&self, req: &Request, config: &Config) -> Result<Response> {
        let headers = req.headers();
        let framing = headers
            .get(crate::shell::gateway::H_FRAMING)?
            .unwrap_or_default();
        let user = headers.get(crate::shell::gateway::H_USER)?;
        let token = headers.get(crate::shell::gateway::H_TOKEN)?;
        let expires: Option<i64> = headers
            .get(crate::shell::gateway::H_TOKEN_EXPIRES)?
            .and_then(|s| s.parse().ok());
        let last_seq: Option<u64> = headers
            .get(crate::shell::gateway::H_LAST_SEQ)?
            .and_then(|s| s.parse().ok());
        let relay = headers.get(crate::shell::connection::H_RELAY)?.is_some();
        // The first authenticated user claims the conversation before any socket of it opens, so
        // nobody else can attach, listen or send commands before its first message is stored.
        if let Some(user) = &user {
            if let Err(e) = self.claim(user).await {
                return crate::shell::error_response(&e.into());
            }
        }
        // A conversation that was idle may have missed configuration changes pushed to live ones.
        if self.socket_count() == 0 {
            self.operator.borrow_mut().take();
        }
        // Read now, while the client opens its socket, so its first message does not wait for it.
        self.prefetch_operator();
        let pair = WebSocketPair::new()?;
        let ws = pair.server;
        self.accept(&ws);
        let mut meta = SocketMeta {
            user: user.clone(),
            sio: framing == "sio",
            connected: framing != "sio",
            token,
            expires,
            relay,
            ..SocketMeta::default()
        };
        if meta.sio {
            meta.sid = new_id();
            self.set_meta(&ws, &meta)?;
            self.send_open(&ws, &meta, config);
            if meta.pinged() {
                self.arm_alarm_within(config.sio_ping_interval_ms).await;
            }
        } else {
            self.set_meta(&ws, &meta)?;
            for frame in self.room.borrow().greeting(&meta, last_seq) {
                let _ = ws.send_with_str(frame);
            }
        }
        self.arm_expiry(expires).await;
        if let Some(user) = user {
            self.warm_rate_limit(user);
        }
        let count = self.socket_count();
        self.update_live(count).await;
        Response::from_websocket(pair.client)
    }

    /// Holds a socket.io socket that will authenticate in its CONNECT packet. Until it does it
    /// touches none of the conversation's storage, no live-registry row and no alarm, and it is
    /// closed when `CONNECT_TIMEOUT_MS` passes without a successful CONNECT.
    pub(super) async fn attach_unauthenticated(
        &self,
        conversation: &str,
        refused: Option<String>,
        config: &Config,
    ) -> Result<Response> {
        let pair = WebSocketPair::new()?;
        let ws = pair.server;
        self.accept(&ws);
        let meta = SocketMeta {
            sio: true,
            sid: new_id(),
            conversation: conversation.to_string(),
            // Bounded: the attachment holds at most 2 KB.
            refused: crate::text::prefix_bytes(&refused.unwrap_or_default(), 200).to_string(),
            ..SocketMeta::default()
        };
        self.set_meta(&ws, &meta)?;
        self.send_open(&ws, &meta, config);
        let timeout = config.connect_timeout_ms;
        let socket = ws.clone();
        // A timer, not an alarm: an alarm is storage, and this socket may never be anybody's.
        wasm_bindgen_futures::spawn_local(async move {
            Delay::from(Duration::from_millis(timeout)).await;
            let meta: Option<SocketMeta> = socket.deserialize_attachment().ok().flatten();
            if meta.is_some_and(|m| m.user.is_none() && !m.shut) {
                let _ = socket.close(Some(1008), Some("authenticate with CONNECT first"));
            }
        });
        Response::from_websocket(pair.client)
    }

    /// Loads the user's rate-limit state in its shard while the client opens its socket.
    fn warm_rate_limit(&self, user: String) {
        let env = self.env.clone();
        wasm_bindgen_futures::spawn_local(async move {
            crate::shell::limiter::warm(&env, &user).await;
        });
    }

    /// Accepts a socket for hibernation.
    fn accept(&self, ws: &WebSocket) {
        self.state.accept_web_socket(ws);
        // JSON clients' keepalives are answered by the runtime, so an idle socket never wakes the object.
        // (socket.io pongs arrive right after the alarm's ping, while the object is awake anyway.)
        if let Ok(keepalive) =
            WebSocketRequestResponsePair::new(protocol::KEEPALIVE_PING, protocol::KEEPALIVE_PONG)
        {
            self.state.set_websocket_auto_response(&keepalive);
        }
    }

    /// The Engine.IO OPEN packet.
    fn send_open(&self, ws: &WebSocket, meta: &SocketMeta, config: &Config) {
        let max_payload = protocol::max_frame_bytes(&Limits {
            max_content_bytes: config.max_message_bytes,
        }) as u64;
        let _ = ws.send_with_str(sio::open_packet(
            &meta.sid,
            config.sio_ping_interval_ms,
            config.sio_ping_timeout_ms,
            max_payload,
        ));
    }

    /// Makes sure the alarm fires when a socket's token expires.
    pub(super) async fn arm_expiry(&self, expires: Option<i64>) {
        if let Some(at) = expires {
            self.arm_alarm_within((at - now_ms()).max(0) as u64).await;
        }
    }

    /// Closes the sockets `which` picks, telling each it is no longer authorized; returns how many.
    pub(super) fn shut_sockets(&self, which: impl Fn(&SocketMeta) -> bool, message: &str) -> usize {
        let chosen: Vec<(WebSocket, SocketMeta)> = self
            .sockets()
            .into_iter()
            .filter(|(_, m)| !m.shut && which(m))
            .collect();
        for (ws, meta) in &chosen {
            self.shut_socket(ws, meta, message);
        }
        chosen.len()
    }

    /// Tells a socket it is no longer authorized and closes it; it is forgotten at once, and
    /// whatever it sent meanwhile is ignored (its attachment says so).
    pub(super) fn shut_socket(&self, ws: &WebSocket, meta: &SocketMeta, message: &str) {
        self.send_error(
            ws,
            meta,
            &RoomError::client(ErrorCode::Unauthorized, message),
        );
        if meta.sio && meta.connected {
            let _ = ws.send_with_str(sio::disconnect(NSP));
        }
        let _ = ws.serialize_attachment(meta.shut_down());
        self.forget_cached(ws);
        // The registry row follows at the socket's close event.
        let _ = ws.close(Some(1008), Some("unauthorized"));
    }

    /// Closes the sockets whose token has expired; returns the earliest expiry still ahead.
    pub(super) fn shut_expired(&self, now: i64) -> Option<i64> {
        self.shut_sockets(|m| m.expired(now), socket::TOKEN_EXPIRED);
        self.room.borrow().earliest_expiry()
    }

    pub(super) async fn sio_connect(
        &self,
        ws: &WebSocket,
        mut meta: SocketMeta,
        nsp: &str,
        auth: Option<Value>,
        config: &Config,
    ) -> Result<()> {
        if nsp != NSP {
            let _ = ws.send_with_str(sio::connect_error(nsp, "Invalid namespace", None));
            return Ok(());
        }
        let was_counted = meta.user.is_some();
        if let Some(token) = sio::connect_auth_token(&auth) {
            match self.connect_grant(token, config).await {
                Ok(grant) => {
                    meta.user = Some(grant.user);
                    meta.token = grant.token_hash;
                    meta.expires = grant.expires_at;
                    meta.refused.clear();
                }
                Err(message) => {
                    let _ = ws.send_with_str(sio::connect_error(NSP, &message, None));
                    return Ok(());
                }
            }
        }
        let Some(user) = meta.user.clone() else {
            let message = if meta.refused.is_empty() {
                "unauthorized: pass auth: { token } to io()".to_string()
            } else {
                format!("unauthorized: {}", meta.refused)
            };
            let _ = ws.send_with_str(sio::connect_error(NSP, &message, None));
            return Ok(());
        };
        if !meta.conversation.is_empty() {
            // Authenticated at last: the conversation's storage may be read and written now.
            self.load(Some(&meta.conversation)).await?;
        }
        if let Err(e) = self.claim(&user).await {
            let _ = ws.send_with_str(sio::connect_error(NSP, &e.connect_error(), None));
            return Ok(());
        }
        let frames = self.room.borrow().accept_connect(&mut meta, &auth, new_id);
        self.set_meta(ws, &meta)?;
        for frame in frames {
            let _ = ws.send_with_str(frame);
        }
        if !was_counted {
            self.warm_rate_limit(user);
            self.prefetch_operator();
            self.arm_alarm_within(config.sio_ping_interval_ms).await;
            self.update_live(self.socket_count()).await;
        }
        self.arm_expiry(meta.expires).await;
        Ok(())
    }

    /// What a CONNECT `auth.token` grants, or the reason to refuse it.
    async fn connect_grant(
        &self,
        token: &str,
        config: &Config,
    ) -> std::result::Result<Grant, String> {
        crate::shell::login::connect_token(&self.env, config, token).await
    }

    /// Makes `user` the owner of a conversation that has none yet; refuses anyone else.
    ///
    /// Atomic within the object (the only place a conversation is decided): the lock is held
    /// from reading the owner to recording it, so of two users racing for a new conversation
    /// exactly one gets it.
    pub(super) async fn claim(&self, user: &str) -> std::result::Result<(), RoomError> {
        let _claiming = self.claim_lock.lock().await;
        self.check_owner(user).await?;
        if self.room.borrow().owner.is_none() {
            self.room.borrow_mut().owner = Some(user.to_string());
            self.kv_put("owner", user);
        }
        Ok(())
    }

    /// Refuses a user who does not own this conversation.
    pub(super) async fn check_owner(&self, user: &str) -> std::result::Result<(), RoomError> {
        let (id, owner) = {
            let room = self.room.borrow();
            (room.id.clone(), room.owner.clone())
        };
        let owner = match owner {
            Some(o) => Some(o),
            None => {
                let d = db::db(&self.env).map_err(|e| owner_unknown("database binding", e))?;
                db::conversation_owner(&d, &id)
                    .await
                    .map_err(|e| owner_unknown("owner lookup", e))?
            }
        };
        match owner {
            Some(o) if o != user => Err(RoomError::Forbidden),
            _ => Ok(()),
        }
    }

    // ---- admin ---------------------------------------------------------------------------

    pub(super) async fn reload(&self, body: Value) -> Result<Response> {
        // The admin's payload as given (the Worker made `{at}` of an empty one).
        let payload = match body {
            Value::Object(_) => body.to_string(),
            _ => json!({ "at": now_iso() }).to_string(),
        };
        let event = OutEvent::unsequenced("system:reload", payload);
        let (sent, failed) = self.broadcast_unsequenced(&event);
        if sent == 0 && failed == 0 {
            // A stale registry entry: nobody is attached any more.
            self.update_live(0).await;
        }
        crate::shell::json_response(200, &json!({ "sockets": sent, "failed": failed }))
    }
}

/// The owner could not be read: the gateway's fault, logged in full, told generically.
fn owner_unknown(context: &str, e: impl std::fmt::Display) -> RoomError {
    console_error!("{context}: {e}");
    RoomError::internal("the gateway could not check who owns this conversation; try again")
}
