//! One socket.io connection serving any number of conversations, as the reference gateway's clients use it: the namespace CONNECT, which conversation each event goes to, which of a conversation's packets reach the client, and the packets waiting for a long-poll; no I/O.
//!
//! The connection reaches each conversation through a relay: a socket.io socket to the
//! conversation's object, opened and connected like any client socket, so the object keeps
//! owning the turn, its sequence numbers, acks and replay. A `message` names its conversation
//! (or none: a new one is minted) and makes it the connection's current one; from then on the
//! client gets that conversation's turn events, and stops getting the previous one's, as the
//! reference gateway's per-client session does. Replies to the client's own requests (acks,
//! errors, command results) come back from any relay. Offsets sent to the client name their
//! conversation (`seq:conversationId`), so a client that reconnects with connection state
//! recovery resumes the right conversation on whichever connection it lands.

use crate::conversation::room::manifest_event;
use crate::conversation::socket;
use crate::error::RoomError;
use crate::protocol::framing::{Framing, NSP};
use crate::protocol::{self, sio, ClientEvent, ErrorCode, Limits};
use serde_json::{json, Value};
use std::collections::VecDeque;

/// Relays one connection keeps open at most; the least recently used goes first.
pub const MAX_RELAYS: usize = 4;
/// Packets waiting for the client (a long-poll not taken yet) at most; past it the connection
/// is closed rather than holding an unbounded backlog for a client that stopped polling.
pub const MAX_WAITING_PACKETS: usize = 4096;
/// Times a relay that dropped is reopened in a row before the client is told.
pub const MAX_RELAY_REOPENS: u32 = 3;
/// `system:reload` payloads a connection remembers having passed on: reloads sent while others
/// are still on their way arrive interleaved, each from the fan-out and from every relay.
pub const REMEMBERED_RELOADS: usize = 16;

/// What the connection asks its shell to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Open a relay to the conversation and send it `connect` (a CONNECT packet) once open.
    OpenRelay {
        conversation: String,
        connect: String,
    },
    /// Send a packet to the conversation's relay.
    ToRelay {
        conversation: String,
        packet: String,
    },
    /// Close the conversation's relay.
    CloseRelay(String),
    /// Close the whole connection: its transport, after the packets waiting for the client,
    /// and every relay.
    Close { reason: String },
}

#[derive(Debug, Clone)]
struct Relay {
    conversation: String,
    /// Its CONNECT was answered: packets go straight to it.
    ready: bool,
    /// Packets for it while it opens.
    waiting: Vec<String>,
    /// The last sequence number it sent the client, to resume from if it drops.
    last_seq: Option<u64>,
    reopens: u32,
}

/// A client CONNECT that asked to recover, waiting for the relay's answer.
#[derive(Debug, Clone)]
struct Recovering {
    conversation: String,
    pid: String,
}

/// One socket.io connection's state.
#[derive(Debug)]
pub struct Connection {
    pub sid: String,
    /// The recovery id the client gets (its own, when a recovery succeeds).
    pub pid: String,
    /// Who the connection's credential names; `None`: not signed in.
    pub user: Option<String>,
    /// When that credential expires (ms since the epoch).
    pub expires: Option<i64>,
    /// The SHA-256 of the gateway token it came from, passed to relays so a revocation reaches
    /// them.
    pub token: Option<String>,
    /// Why the handshake's credential was refused (a cookie this page may not use): a CONNECT
    /// without a token of its own is refused with it, instead of connected and disconnected.
    pub refused: Option<String>,
    /// The conversation of the latest `message`.
    pub current: Option<String>,
    connected: bool,
    relays: Vec<Relay>,
    recovering: Option<Recovering>,
    /// Packets for the client not yet taken by a send or a long-poll.
    outbox: VecDeque<String>,
    closed: bool,
    limits: Limits,
    /// Hashes of the latest `system:reload` payloads passed on, oldest first: a reload reaches
    /// the connection both from the admin's fan-out and through its relays, and the client gets
    /// it once. Hashes, not the payloads (up to 16 KiB each), keep this small.
    passed_reloads: VecDeque<u64>,
}

impl Connection {
    pub fn new(
        sid: String,
        pid: String,
        user: Option<String>,
        expires: Option<i64>,
        limits: Limits,
    ) -> Self {
        Connection {
            sid,
            pid,
            user,
            expires,
            token: None,
            refused: None,
            current: None,
            connected: false,
            relays: Vec::new(),
            recovering: None,
            outbox: VecDeque::new(),
            closed: false,
            limits,
            passed_reloads: VecDeque::new(),
        }
    }

    /// Whether the connection was closed; nothing more is acted on.
    pub fn closed(&self) -> bool {
        self.closed
    }

    /// Whether the namespace is connected.
    pub fn connected(&self) -> bool {
        self.connected
    }

    /// The packets waiting for the client, oldest first; they are the caller's to deliver.
    pub fn take_outgoing(&mut self) -> Vec<String> {
        self.outbox.drain(..).collect()
    }

    /// Whether packets wait for the client.
    pub fn has_outgoing(&self) -> bool {
        !self.outbox.is_empty()
    }

    /// The conversations with an open relay, least recently used first.
    pub fn relays(&self) -> Vec<&str> {
        self.relays
            .iter()
            .map(|r| r.conversation.as_str())
            .collect()
    }

    fn push_out(&mut self, packet: String, actions: &mut Vec<Action>) {
        if self.closed {
            return;
        }
        if self.outbox.len() >= MAX_WAITING_PACKETS {
            self.close("the client stopped taking packets", actions);
            return;
        }
        self.outbox.push_back(packet);
    }

    fn close(&mut self, reason: &str, actions: &mut Vec<Action>) {
        if self.closed {
            return;
        }
        self.closed = true;
        for r in self.relays.drain(..) {
            actions.push(Action::CloseRelay(r.conversation));
        }
        actions.push(Action::Close {
            reason: reason.to_string(),
        });
    }

    fn send_error(
        &mut self,
        e: &RoomError,
        conversation: Option<&str>,
        ack: Option<u64>,
        actions: &mut Vec<Action>,
    ) {
        let payload = e.event_payload(conversation);
        self.push_out(sio::event(NSP, "error", &payload, None), actions);
        if let Some(id) = ack {
            self.push_out(sio::ack(NSP, id, &format!("[{payload}]")), actions);
        }
    }

    /// The credential of the client's CONNECT (`auth.token`) names `user`: it replaces the
    /// handshake's.
    pub fn sign_in(&mut self, user: String, token: Option<String>, expires: Option<i64>) {
        self.refused = None;
        self.user = Some(user);
        self.token = token;
        self.expires = expires;
    }

    /// The client's CONNECT presented a credential that is refused.
    pub fn refuse_connect(&mut self, nsp: &str, message: &str) -> Vec<Action> {
        let mut actions = Vec::new();
        self.push_out(sio::connect_error(nsp, message, None), &mut actions);
        actions
    }

    /// The client CONNECTs to a namespace (its credential, if any, already checked by the
    /// caller and in `user`). Signed in: CONNECT and the manifest, or, when it asks to recover
    /// a conversation, the relay's answer first. Not signed in: the namespace connects and is
    /// disconnected at once, as the reference gateway does, with nothing else sent or stored.
    pub fn connect(&mut self, nsp: &str, auth: &Option<Value>) -> Vec<Action> {
        let mut actions = Vec::new();
        if self.closed {
            return actions;
        }
        if nsp != NSP {
            self.push_out(
                sio::connect_error(nsp, "Invalid namespace", None),
                &mut actions,
            );
            return actions;
        }
        if let (None, Some(reason)) = (&self.user, &self.refused) {
            let refusal = sio::connect_error(NSP, &format!("unauthorized: {reason}"), None);
            self.push_out(refusal, &mut actions);
            return actions;
        }
        if self.user.is_none() {
            self.push_out(sio::connect_ok(NSP, &self.sid, None), &mut actions);
            self.push_out(sio::disconnect(NSP), &mut actions);
            return actions;
        }
        self.connected = true;
        if let Some((pid, offset)) = sio::recovery(auth) {
            if let Some((seq, conversation)) = parse_offset(&offset) {
                self.current = Some(conversation.to_string());
                let connect = relay_connect(Some((&pid, seq)));
                self.recovering = Some(Recovering {
                    conversation: conversation.to_string(),
                    pid,
                });
                self.open_relay(conversation, connect, Some(seq), &mut actions);
                return actions;
            }
        }
        self.accept_connect(&mut actions);
        actions
    }

    fn accept_connect(&mut self, actions: &mut Vec<Action>) {
        let ok = sio::connect_ok(NSP, &self.sid, Some(&self.pid));
        self.push_out(ok, actions);
        let manifest = Framing::SocketIo.encode(&manifest_event());
        self.push_out(manifest, actions);
    }

    /// A packet from the client (a WebSocket frame or one record of a polling body), at `now_ms`.
    pub fn client_packet(
        &mut self,
        text: &str,
        now_ms: i64,
        mint: impl FnOnce() -> String,
    ) -> Vec<Action> {
        let mut actions = Vec::new();
        if self.closed {
            return actions;
        }
        if text.len() > protocol::max_frame_bytes(&self.limits) {
            let e = RoomError::client(
                ErrorCode::PayloadTooLarge,
                "packet larger than the gateway accepts",
            );
            self.send_error(&e, None, None, &mut actions);
            return actions;
        }
        let packet = match sio::decode(text) {
            Ok(p) => p,
            Err(e) if self.connected => {
                let e = RoomError::client(
                    ErrorCode::InvalidPayload,
                    format!("malformed socket.io packet: {e}"),
                );
                self.send_error(&e, None, None, &mut actions);
                return actions;
            }
            Err(e) => {
                self.close(crate::text::prefix_chars(&e.to_string(), 120), &mut actions);
                return actions;
            }
        };
        match packet {
            sio::Inbound::Ping => self.push_out("3".into(), &mut actions),
            sio::Inbound::Close => self.close("closed by client", &mut actions),
            sio::Inbound::Pong
            | sio::Inbound::Noop
            | sio::Inbound::Upgrade
            | sio::Inbound::Ack { .. } => {}
            sio::Inbound::Connect { nsp, auth } => return self.connect(&nsp, &auth),
            sio::Inbound::Disconnect { .. } => {
                self.connected = false;
                self.current = None;
                for r in self.relays.drain(..) {
                    actions.push(Action::CloseRelay(r.conversation));
                }
            }
            sio::Inbound::Event {
                nsp,
                ack_id,
                name,
                args,
            } => {
                if nsp != NSP || !self.connected {
                    let refusal = sio::connect_error(&nsp, socket::CONNECT_FIRST, None);
                    self.push_out(refusal, &mut actions);
                    return actions;
                }
                if self.expires.is_some_and(|at| now_ms >= at) {
                    let e = RoomError::client(
                        ErrorCode::Unauthorized,
                        "the credential expired; sign in again",
                    );
                    self.send_error(&e, None, ack_id, &mut actions);
                    self.push_out(sio::disconnect(NSP), &mut actions);
                    self.close("credential expired", &mut actions);
                    return actions;
                }
                let data = args.into_iter().next().unwrap_or_else(|| json!({}));
                let event = match protocol::decode_event(&name, data, &self.limits) {
                    Ok(event) => event,
                    Err(e) => {
                        let e = RoomError::client(e.code, e.message);
                        self.send_error(&e, None, ack_id, &mut actions);
                        return actions;
                    }
                };
                self.route(event, text, ack_id, mint, &mut actions);
            }
        }
        actions
    }

    /// Sends a decoded client event to the conversation it names (or the current one, or, for a
    /// `message` or command naming none, a new one).
    fn route(
        &mut self,
        event: ClientEvent,
        packet: &str,
        ack: Option<u64>,
        mint: impl FnOnce() -> String,
        actions: &mut Vec<Action>,
    ) {
        if let ClientEvent::Ping = event {
            self.push_out(sio::event(NSP, "pong", "{}", None), actions);
            if let Some(id) = ack {
                self.push_out(sio::ack(NSP, id, "[{\"ok\":true}]"), actions);
            }
            return;
        }
        let named = event.conversation_id().map(str::to_string);
        let conversation = match (&event, named) {
            (_, Some(id)) => id,
            (ClientEvent::Message(_), None) => mint(),
            (_, None) => match &self.current {
                Some(current) => current.clone(),
                None => {
                    let e = RoomError::client(
                        ErrorCode::NoActiveSession,
                        crate::error::seed::NO_SESSION,
                    );
                    self.send_error(&e, None, ack, actions);
                    return;
                }
            },
        };
        if let ClientEvent::Message(_) = event {
            self.current = Some(conversation.clone());
        }
        if self.relay_index(&conversation).is_none() {
            self.open_relay(&conversation, relay_connect(None), None, actions);
        }
        self.send_to_relay(&conversation, packet.to_string(), actions);
    }

    fn relay_index(&self, conversation: &str) -> Option<usize> {
        self.relays
            .iter()
            .position(|r| r.conversation == conversation)
    }

    fn open_relay(
        &mut self,
        conversation: &str,
        connect: String,
        last_seq: Option<u64>,
        actions: &mut Vec<Action>,
    ) {
        if let Some(k) = self.relay_index(conversation) {
            self.relays.remove(k);
            actions.push(Action::CloseRelay(conversation.to_string()));
        }
        while self.relays.len() >= MAX_RELAYS {
            // The least recently used that is not the current conversation.
            let k = self
                .relays
                .iter()
                .position(|r| Some(&r.conversation) != self.current.as_ref())
                .unwrap_or(0);
            let old = self.relays.remove(k);
            actions.push(Action::CloseRelay(old.conversation));
        }
        self.relays.push(Relay {
            conversation: conversation.to_string(),
            ready: false,
            waiting: Vec::new(),
            last_seq,
            reopens: 0,
        });
        actions.push(Action::OpenRelay {
            conversation: conversation.to_string(),
            connect,
        });
    }

    fn send_to_relay(&mut self, conversation: &str, packet: String, actions: &mut Vec<Action>) {
        let Some(k) = self.relay_index(conversation) else {
            return;
        };
        // Most recently used last.
        let mut relay = self.relays.remove(k);
        if relay.ready {
            actions.push(Action::ToRelay {
                conversation: conversation.to_string(),
                packet,
            });
        } else {
            relay.waiting.push(packet);
        }
        self.relays.push(relay);
    }

    /// A packet from a conversation's relay.
    pub fn relay_packet(&mut self, conversation: &str, text: &str) -> Vec<Action> {
        let mut actions = Vec::new();
        if self.closed {
            return actions;
        }
        let Some(k) = self.relay_index(conversation) else {
            return actions;
        };
        if text.starts_with('0') {
            return actions; // the relay's Engine.IO OPEN
        }
        if let Some(rest) = text.strip_prefix("44") {
            let message = rest
                .split_once(',')
                .and_then(|(_, json)| serde_json::from_str::<Value>(json).ok())
                .and_then(|v| v["message"].as_str().map(str::to_string))
                .unwrap_or_else(|| "the conversation refused the connection".into());
            self.relay_refused(k, &message, &mut actions);
            return actions;
        }
        // Per delta: the event's name and offset are read from the packet's ends, its data is
        // passed on unparsed. A reload (whose payload is compared) takes the full decode.
        if let Some((name, seq)) = event_head(text).filter(|(n, _)| n != "system:reload") {
            self.relay_event(k, &name, seq, text, &mut actions);
            return actions;
        }
        let packet = match sio::decode(text) {
            Ok(p) => p,
            Err(_) => return actions,
        };
        match packet {
            sio::Inbound::Connect { auth, .. } => {
                let granted = auth
                    .as_ref()
                    .and_then(|a| a["pid"].as_str())
                    .map(str::to_string);
                self.relay_ready(k, granted, &mut actions);
            }
            sio::Inbound::Disconnect { .. } => {
                // The credential was revoked or expired: the conversation said so first.
                self.push_out(sio::disconnect(NSP), &mut actions);
                self.close("the conversation ended the session", &mut actions);
            }
            sio::Inbound::Ack { .. } => self.push_out(text.to_string(), &mut actions),
            sio::Inbound::Event { name, args, .. } if name == "system:reload" => {
                let data = args.first().map(Value::to_string).unwrap_or_default();
                self.push_reload(data, &mut actions);
            }
            _ => {}
        }
        actions
    }

    fn relay_ready(&mut self, k: usize, granted_pid: Option<String>, actions: &mut Vec<Action>) {
        let relay = &mut self.relays[k];
        relay.ready = true;
        relay.reopens = 0;
        let conversation = relay.conversation.clone();
        let waiting = std::mem::take(&mut relay.waiting);
        if let Some(r) = self.recovering.take_if(|r| r.conversation == conversation) {
            // The client recovered only if the conversation still held what it missed.
            if granted_pid.as_deref() == Some(r.pid.as_str()) {
                self.pid = r.pid;
            }
            self.accept_connect(actions);
        }
        for packet in waiting {
            actions.push(Action::ToRelay {
                conversation: conversation.clone(),
                packet,
            });
        }
    }

    /// A relay could not be opened (the conversation's object refused it: another user's
    /// conversation, or a failure): as if it refused the CONNECT.
    pub fn relay_open_failed(&mut self, conversation: &str, reason: &str) -> Vec<Action> {
        let mut actions = Vec::new();
        if let Some(k) = self.relay_index(conversation) {
            self.relay_refused(k, reason, &mut actions);
        }
        actions
    }

    fn relay_refused(&mut self, k: usize, message: &str, actions: &mut Vec<Action>) {
        let relay = self.relays.remove(k);
        actions.push(Action::CloseRelay(relay.conversation.clone()));
        if self
            .recovering
            .take_if(|r| r.conversation == relay.conversation)
            .is_some()
        {
            self.accept_connect(actions);
        }
        if self.current.as_ref() == Some(&relay.conversation) {
            self.current = None;
        }
        let e = if let Some(detail) = message.strip_prefix("internal: ") {
            RoomError::internal(detail)
        } else {
            RoomError::client(ErrorCode::Unauthorized, message.to_string())
        };
        let payload = e.event_payload(Some(&relay.conversation));
        self.push_out(sio::event(NSP, "error", &payload, None), actions);
        for packet in relay.waiting {
            if let Ok(sio::Inbound::Event {
                ack_id: Some(id), ..
            }) = sio::decode(&packet)
            {
                self.push_out(sio::ack(NSP, id, &format!("[{payload}]")), actions);
            }
        }
    }

    /// An event from a relay, `text` as the conversation encoded it (passed on as it is, so
    /// nothing is serialized twice; a sequenced one gets an offset naming its conversation).
    fn relay_event(
        &mut self,
        k: usize,
        name: &str,
        seq: Option<u64>,
        text: &str,
        actions: &mut Vec<Action>,
    ) {
        let conversation = self.relays[k].conversation.clone();
        let is_current = self.current.as_ref() == Some(&conversation);
        match (name, seq) {
            // The client got the manifest with its own CONNECT.
            ("commands:manifest", _) => {}
            (_, Some(seq)) => {
                self.relays[k].last_seq = Some(seq);
                if is_current {
                    if let Some(packet) = with_offset(text, seq, &conversation) {
                        self.push_out(packet, actions);
                    }
                }
            }
            (_, None) => self.push_out(text.to_string(), actions),
        }
    }

    /// A relay closed without being asked to: the current conversation's is reopened (resuming
    /// after the last event the client got), a bounded number of times; others are dropped.
    pub fn relay_closed(&mut self, conversation: &str) -> Vec<Action> {
        let mut actions = Vec::new();
        if self.closed {
            return actions;
        }
        let Some(k) = self.relay_index(conversation) else {
            return actions;
        };
        let relay = self.relays.remove(k);
        let is_current = self.current.as_deref() == Some(conversation);
        if !is_current {
            return actions;
        }
        if relay.reopens >= MAX_RELAY_REOPENS {
            let e = RoomError::internal("the conversation is unreachable; send the message again");
            self.send_error(&e, Some(conversation), None, &mut actions);
            self.current = None;
            return actions;
        }
        let connect = relay_connect(relay.last_seq.map(|seq| (self.pid.as_str(), seq)));
        self.open_relay(conversation, connect, relay.last_seq, &mut actions);
        if let Some(k) = self.relay_index(conversation) {
            self.relays[k].reopens = relay.reopens + 1;
            self.relays[k].waiting = relay.waiting;
        }
        actions
    }

    /// The admin revoked gateway tokens (their SHA-256s): a connection signed in with one of
    /// them is told, disconnected and closed, relays and all. Returns whether it was.
    pub fn revoke(&mut self, hashes: &[String]) -> (bool, Vec<Action>) {
        let mut actions = Vec::new();
        let hit = !self.closed && self.token.as_ref().is_some_and(|t| hashes.contains(t));
        if hit {
            let e = RoomError::client(ErrorCode::Unauthorized, socket::TOKEN_REVOKED);
            self.send_error(&e, None, None, &mut actions);
            self.push_out(sio::disconnect(NSP), &mut actions);
            self.close("token revoked", &mut actions);
        }
        (hit, actions)
    }

    /// The gateway closes the connection (a reload, the credential revoked, the client gone).
    pub fn shut(&mut self, reason: &str) -> Vec<Action> {
        let mut actions = Vec::new();
        self.close(reason, &mut actions);
        actions
    }

    /// The admin's reload, sent to the connection itself (its payload JSON): passed on once,
    /// however many of its relays also bring it.
    pub fn reload(&mut self, data_json: &str) -> Vec<Action> {
        let mut actions = Vec::new();
        let data = serde_json::from_str::<Value>(data_json)
            .map(|v| v.to_string())
            .unwrap_or_else(|_| "{}".into());
        self.push_reload(data, &mut actions);
        actions
    }

    fn push_reload(&mut self, data: String, actions: &mut Vec<Action>) {
        use std::hash::{Hash, Hasher};
        // Fixed keys: the same payload hashes alike for the connection's whole life.
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        data.hash(&mut hasher);
        let hash = hasher.finish();
        if !self.connected || self.passed_reloads.contains(&hash) {
            return;
        }
        self.push_out(sio::event(NSP, "system:reload", &data, None), actions);
        if self.passed_reloads.len() == REMEMBERED_RELOADS {
            self.passed_reloads.pop_front();
        }
        self.passed_reloads.push_back(hash);
    }
}

/// The CONNECT a relay sends its conversation: a plain one, or one recovering after `seq` with
/// the client's recovery id.
fn relay_connect(recover: Option<(&str, u64)>) -> String {
    let auth = match recover {
        Some((pid, seq)) => json!({ "pid": pid, "offset": seq.to_string() }),
        None => json!({}),
    };
    format!("40{NSP},{auth}")
}

/// The name of a conversation's EVENT packet (`42/chat,["name",{data},"seq"]`) and its offset
/// (the sequence number after an object's data), read without parsing the data.
fn event_head(packet: &str) -> Option<(String, Option<u64>)> {
    let body = packet
        .strip_prefix("42")?
        .strip_prefix(NSP)?
        .strip_prefix(",[")?;
    let name = serde_json::Deserializer::from_str(body)
        .into_iter::<String>()
        .next()?
        .ok()?;
    let seq = packet.strip_suffix("\"]").and_then(|head| {
        let (before, digits) = head.rsplit_once(",\"")?;
        let sequenced = before.ends_with('}') && !digits.is_empty();
        sequenced.then(|| digits.parse::<u64>().ok()).flatten()
    });
    Some((name, seq))
}

/// `packet` (an EVENT ending in the offset `,"<seq>"]`) with the offset `seq:conversation`.
fn with_offset(packet: &str, seq: u64, conversation: &str) -> Option<String> {
    let tail = format!(",\"{seq}\"]");
    let head = packet.strip_suffix(&tail)?;
    let offset = protocol::json_str(&format!("{seq}:{conversation}"));
    Some(format!("{head},{offset}]"))
}

/// An offset the connection gave the client: `seq:conversationId`.
pub fn parse_offset(offset: &str) -> Option<(u64, &str)> {
    let (seq, conversation) = offset.split_once(':')?;
    let seq = seq.parse().ok()?;
    protocol::valid_id(conversation).then_some((seq, conversation))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_content_bytes: 1000,
    };

    fn signed_in() -> Connection {
        Connection::new(
            "sid1".into(),
            "pid1".into(),
            Some("alice".into()),
            None,
            LIMITS,
        )
    }

    fn connected() -> Connection {
        let mut c = signed_in();
        c.connect(NSP, &None);
        c.take_outgoing();
        c
    }

    fn opened(actions: &[Action]) -> Vec<&str> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::OpenRelay { conversation, .. } => Some(conversation.as_str()),
                _ => None,
            })
            .collect()
    }

    fn to_relay(actions: &[Action]) -> Vec<(&str, &str)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::ToRelay {
                    conversation,
                    packet,
                } => Some((conversation.as_str(), packet.as_str())),
                _ => None,
            })
            .collect()
    }

    /// A relay that opened and answered CONNECT.
    fn ready(c: &mut Connection, conversation: &str) -> Vec<Action> {
        c.relay_packet(conversation, "0{\"sid\":\"r\",\"upgrades\":[]}");
        c.relay_packet(conversation, "40/chat,{\"sid\":\"r\",\"pid\":\"rp\"}")
    }

    #[test]
    fn a_signed_in_client_gets_connect_then_the_manifest() {
        let mut c = signed_in();
        assert!(c.connect(NSP, &None).is_empty());
        let out = c.take_outgoing();
        assert_eq!(out[0], "40/chat,{\"sid\":\"sid1\",\"pid\":\"pid1\"}");
        assert!(
            out[1].starts_with("42/chat,[\"commands:manifest\","),
            "{}",
            out[1]
        );
        assert_eq!(out.len(), 2);
        assert!(c.connected());
    }

    #[test]
    fn a_client_not_signed_in_is_connected_and_disconnected_at_once_with_nothing_else() {
        let mut c = Connection::new("sid1".into(), "pid1".into(), None, None, LIMITS);
        let actions = c.connect(NSP, &None);
        assert!(actions.is_empty(), "no relay, nothing stored");
        assert_eq!(
            c.take_outgoing(),
            vec![
                "40/chat,{\"sid\":\"sid1\"}".to_string(),
                "41/chat,".to_string()
            ]
        );
        assert!(!c.connected());
        let later = c.client_packet("42/chat,[\"message\",{\"content\":\"hi\"}]", 0, || {
            "new".into()
        });
        assert!(
            opened(&later).is_empty(),
            "events after it reach no conversation"
        );
    }

    #[test]
    fn a_cookie_this_page_may_not_use_is_refused_with_its_reason_unless_connect_signs_in() {
        let mut c = Connection::new("s".into(), "p".into(), None, None, LIMITS);
        c.refused = Some("origin https://evil.example may not authenticate with a cookie".into());
        c.connect(NSP, &None);
        let out = c.take_outgoing();
        assert_eq!(out.len(), 1);
        assert!(
            out[0].starts_with("44/chat,{\"message\":\"unauthorized: origin https://evil.example"),
            "{out:?}"
        );
        c.sign_in("alice".into(), None, None);
        c.connect(NSP, &None);
        assert!(c.take_outgoing()[0].starts_with("40/chat,"));
    }

    #[test]
    fn another_namespace_is_refused() {
        let mut c = signed_in();
        c.connect("/", &None);
        assert_eq!(
            c.take_outgoing(),
            vec!["44{\"message\":\"Invalid namespace\"}".to_string()]
        );
    }

    #[test]
    fn a_message_without_an_id_mints_one_and_waits_for_its_relay() {
        let mut c = connected();
        let packet = "42/chat,1[\"message\",{\"content\":\"hi\"}]";
        let actions = c.client_packet(packet, 0, || "minted".into());
        assert_eq!(opened(&actions), vec!["minted"]);
        assert_eq!(
            actions[0],
            Action::OpenRelay {
                conversation: "minted".into(),
                connect: "40/chat,{}".into()
            }
        );
        assert!(
            to_relay(&actions).is_empty(),
            "held until the relay connects"
        );
        assert_eq!(c.current.as_deref(), Some("minted"));
        let actions = ready(&mut c, "minted");
        assert_eq!(to_relay(&actions), vec![("minted", packet)]);
        assert!(
            c.take_outgoing().is_empty(),
            "the relay's CONNECT is not the client's"
        );
    }

    #[test]
    fn switching_conversations_moves_the_turn_events_and_keeps_replies() {
        let mut c = connected();
        c.client_packet(
            "42/chat,[\"message\",{\"conversationId\":\"a\",\"content\":\"1\"}]",
            0,
            || unreachable!(),
        );
        ready(&mut c, "a");
        c.relay_packet("a", "42/chat,[\"agent:text\",{\"text\":\"x\"},\"7\"]");
        assert_eq!(
            c.take_outgoing(),
            vec!["42/chat,[\"agent:text\",{\"text\":\"x\"},\"7:a\"]".to_string()]
        );

        c.client_packet(
            "42/chat,[\"message\",{\"conversationId\":\"b\",\"content\":\"2\"}]",
            0,
            || unreachable!(),
        );
        ready(&mut c, "b");
        assert_eq!(c.current.as_deref(), Some("b"));
        // a's turn goes on in its conversation; this socket moved on.
        c.relay_packet("a", "42/chat,[\"agent:text\",{\"text\":\"late\"},\"8\"]");
        c.relay_packet("b", "42/chat,[\"agent:text\",{\"text\":\"y\"},\"3\"]");
        // Replies to this client's own requests come from either.
        c.relay_packet("a", "43/chat,5[{\"ok\":true}]");
        c.relay_packet(
            "a",
            "42/chat,[\"error\",{\"error\":\"e\",\"code\":\"rate_limited\"}]",
        );
        assert_eq!(
            c.take_outgoing(),
            vec![
                "42/chat,[\"agent:text\",{\"text\":\"y\"},\"3:b\"]".to_string(),
                "43/chat,5[{\"ok\":true}]".to_string(),
                "42/chat,[\"error\",{\"error\":\"e\",\"code\":\"rate_limited\"}]".to_string(),
            ]
        );
        // Back to a: its events flow again, and abort names its conversation.
        let actions = c.client_packet(
            "42/chat,[\"message\",{\"conversationId\":\"a\",\"content\":\"3\"}]",
            0,
            || unreachable!(),
        );
        assert!(opened(&actions).is_empty(), "a's relay is still open");
        assert_eq!(to_relay(&actions).len(), 1);
        let actions = c.client_packet(
            "42/chat,[\"abort\",{\"conversationId\":\"b\"}]",
            0,
            || unreachable!(),
        );
        assert_eq!(
            to_relay(&actions),
            vec![("b", "42/chat,[\"abort\",{\"conversationId\":\"b\"}]")]
        );
        assert_eq!(
            c.current.as_deref(),
            Some("a"),
            "abort does not move the socket"
        );
    }

    #[test]
    fn events_naming_no_conversation_go_to_the_current_one_or_are_refused() {
        let mut c = connected();
        c.client_packet("42/chat,2[\"abort\",{}]", 0, || unreachable!());
        let out = c.take_outgoing();
        assert!(
            out[0].contains("No active session for this conversation."),
            "{out:?}"
        );
        assert!(out[1].starts_with("43/chat,2["));
        c.client_packet(
            "42/chat,[\"message\",{\"conversationId\":\"a\",\"content\":\"1\"}]",
            0,
            || unreachable!(),
        );
        ready(&mut c, "a");
        let actions = c.client_packet(
            "42/chat,[\"set:thinking\",{\"level\":\"high\"}]",
            0,
            || unreachable!(),
        );
        assert_eq!(to_relay(&actions).len(), 1);
        assert_eq!(to_relay(&actions)[0].0, "a");
    }

    #[test]
    fn bad_events_get_an_error_and_the_connection_stays_usable() {
        let mut c = connected();
        c.client_packet(
            "42/chat,3[\"message\",{\"content\":5}]",
            0,
            || unreachable!(),
        );
        let out = c.take_outgoing();
        assert!(out[0].starts_with("42/chat,[\"error\","), "{out:?}");
        assert!(out[1].starts_with("43/chat,3["));
        c.client_packet("42/chat,[\"nonsense\",{}]", 0, || unreachable!());
        assert!(c.take_outgoing()[0].contains("unknown_event"));
        c.client_packet("42/chat,[", 0, || unreachable!());
        assert!(c.take_outgoing()[0].contains("malformed socket.io packet"));
        let long = format!(
            "42/chat,[\"message\",{{\"conversationId\":\"{}\",\"content\":\"x\"}}]",
            "c".repeat(200)
        );
        c.client_packet(&long, 0, || unreachable!());
        assert!(c.take_outgoing()[0].contains("must be 1 to 128 printable characters"));
        c.client_packet("42/chat,[\"ping\"]", 0, || unreachable!());
        assert_eq!(c.take_outgoing(), vec!["42/chat,[\"pong\",{}]".to_string()]);
        assert!(!c.closed());
        assert!(c.relays().is_empty());
    }

    #[test]
    fn events_before_connect_are_refused_and_garbage_before_it_closes() {
        let mut c = signed_in();
        c.client_packet(
            "42/chat,[\"message\",{\"content\":\"hi\"}]",
            0,
            || unreachable!(),
        );
        assert!(c.take_outgoing()[0].starts_with("44/chat,"));
        let actions = c.client_packet("x", 0, || unreachable!());
        assert!(matches!(actions.last(), Some(Action::Close { .. })));
        assert!(c.closed());
    }

    #[test]
    fn an_expired_credential_is_told_and_the_connection_closed() {
        let mut c = Connection::new(
            "s".into(),
            "p".into(),
            Some("alice".into()),
            Some(1_000),
            LIMITS,
        );
        c.connect(NSP, &None);
        c.take_outgoing();
        let actions = c.client_packet("42/chat,[\"message\",{\"content\":\"hi\"}]", 1_000, || {
            "n".into()
        });
        assert!(opened(&actions).is_empty());
        assert!(matches!(actions.last(), Some(Action::Close { .. })));
        let out = c.take_outgoing();
        assert!(out[0].contains("unauthorized"), "{out:?}");
        assert_eq!(out[1], "41/chat,");
    }

    #[test]
    fn recovery_resumes_the_conversation_its_offset_names_and_keeps_the_pid_only_if_it_could() {
        let auth = Some(json!({ "pid": "old", "offset": "41:conv-a" }));
        let mut c = signed_in();
        let actions = c.connect(NSP, &auth);
        assert_eq!(
            actions,
            vec![Action::OpenRelay {
                conversation: "conv-a".into(),
                connect: "40/chat,{\"offset\":\"41\",\"pid\":\"old\"}".into()
            }]
        );
        assert!(
            c.take_outgoing().is_empty(),
            "CONNECT waits for the conversation's answer"
        );
        c.relay_packet("conv-a", "40/chat,{\"sid\":\"r\",\"pid\":\"old\"}");
        c.relay_packet(
            "conv-a",
            "42/chat,[\"agent:text\",{\"text\":\"missed\"},\"42\"]",
        );
        let out = c.take_outgoing();
        assert_eq!(out[0], "40/chat,{\"sid\":\"sid1\",\"pid\":\"old\"}");
        assert!(out[1].contains("commands:manifest"));
        assert_eq!(
            out[2],
            "42/chat,[\"agent:text\",{\"text\":\"missed\"},\"42:conv-a\"]"
        );

        // The conversation no longer holds what it missed: a fresh pid, so the client knows.
        let mut c = signed_in();
        c.connect(NSP, &auth);
        c.relay_packet("conv-a", "40/chat,{\"sid\":\"r\",\"pid\":\"fresh\"}");
        assert_eq!(
            c.take_outgoing()[0],
            "40/chat,{\"sid\":\"sid1\",\"pid\":\"pid1\"}"
        );

        // An offset this gateway did not give: an ordinary connect.
        let mut c = signed_in();
        let actions = c.connect(NSP, &Some(json!({ "pid": "x", "offset": "nonsense" })));
        assert!(actions.is_empty());
        assert!(c.take_outgoing()[0].starts_with("40/chat,"));
    }

    #[test]
    fn a_refused_relay_answers_the_waiting_acks_with_the_reason() {
        let mut c = connected();
        c.client_packet(
            "42/chat,9[\"message\",{\"conversationId\":\"theirs\",\"content\":\"hi\"}]",
            0,
            || unreachable!(),
        );
        let actions = c.relay_packet(
            "theirs",
            "44/chat,{\"message\":\"this conversation belongs to another user\"}",
        );
        assert!(actions.contains(&Action::CloseRelay("theirs".into())));
        assert!(to_relay(&actions).is_empty(), "nothing reaches it");
        let out = c.take_outgoing();
        assert!(
            out[0].contains("another user") && out[0].contains("unauthorized"),
            "{out:?}"
        );
        assert!(out[1].starts_with("43/chat,9["));
        assert_eq!(c.current, None);
    }

    #[test]
    fn the_relays_are_bounded_and_the_current_one_is_kept() {
        let mut c = connected();
        let mut closed = Vec::new();
        for k in 0..6 {
            let packet =
                format!("42/chat,[\"message\",{{\"conversationId\":\"c{k}\",\"content\":\"x\"}}]");
            for a in c.client_packet(&packet, 0, || unreachable!()) {
                if let Action::CloseRelay(id) = a {
                    closed.push(id);
                }
            }
            ready(&mut c, &format!("c{k}"));
        }
        assert_eq!(closed, vec!["c0", "c1"]);
        assert_eq!(c.relays(), vec!["c2", "c3", "c4", "c5"]);
        assert_eq!(c.current.as_deref(), Some("c5"));
    }

    #[test]
    fn a_dropped_relay_of_the_current_conversation_is_reopened_from_its_last_event_a_bounded_number_of_times(
    ) {
        let mut c = connected();
        c.client_packet(
            "42/chat,[\"message\",{\"conversationId\":\"a\",\"content\":\"1\"}]",
            0,
            || unreachable!(),
        );
        ready(&mut c, "a");
        c.relay_packet("a", "42/chat,[\"agent:text\",{\"text\":\"x\"},\"12\"]");
        let actions = c.relay_closed("a");
        assert_eq!(
            actions,
            vec![Action::OpenRelay {
                conversation: "a".into(),
                connect: "40/chat,{\"offset\":\"12\",\"pid\":\"pid1\"}".into()
            }]
        );
        for _ in 0..MAX_RELAY_REOPENS - 1 {
            assert_eq!(opened(&c.relay_closed("a")), vec!["a"]);
        }
        c.take_outgoing();
        assert!(opened(&c.relay_closed("a")).is_empty());
        assert!(c.take_outgoing()[0].contains("unreachable"));
        assert_eq!(c.current, None);
    }

    #[test]
    fn heartbeats_and_the_manifest_from_a_relay_never_reach_the_client() {
        let mut c = connected();
        c.client_packet(
            "42/chat,[\"message\",{\"conversationId\":\"a\",\"content\":\"1\"}]",
            0,
            || unreachable!(),
        );
        ready(&mut c, "a");
        // Relays are not pinged (the connection owns its client's heartbeat); a stray ping is
        // neither answered nor passed on.
        assert!(c.relay_packet("a", "2").is_empty());
        c.relay_packet("a", "42/chat,[\"commands:manifest\",{}]");
        assert!(c.take_outgoing().is_empty());
    }

    #[test]
    fn a_relay_disconnect_ends_the_connection_and_a_client_that_stops_polling_is_dropped() {
        let mut c = connected();
        c.client_packet(
            "42/chat,[\"message\",{\"conversationId\":\"a\",\"content\":\"1\"}]",
            0,
            || unreachable!(),
        );
        ready(&mut c, "a");
        let actions = c.relay_packet("a", "41/chat,");
        assert!(actions.contains(&Action::CloseRelay("a".into())));
        assert!(matches!(actions.last(), Some(Action::Close { .. })));
        assert_eq!(c.take_outgoing(), vec!["41/chat,".to_string()]);

        let mut c = connected();
        c.client_packet(
            "42/chat,[\"message\",{\"conversationId\":\"a\",\"content\":\"1\"}]",
            0,
            || unreachable!(),
        );
        ready(&mut c, "a");
        let mut closed = false;
        for k in 0..=MAX_WAITING_PACKETS {
            let packet = format!("42/chat,[\"agent:text\",{{\"text\":\"x\"}},\"{k}\"]");
            closed |= c
                .relay_packet("a", &packet)
                .iter()
                .any(|a| matches!(a, Action::Close { .. }));
        }
        assert!(closed && c.closed());
    }

    #[test]
    fn a_reload_reaches_the_client_once_whichever_way_it_comes() {
        let mut c = connected();
        for id in ["a", "b"] {
            let packet =
                format!("42/chat,[\"message\",{{\"conversationId\":\"{id}\",\"content\":\"x\"}}]");
            c.client_packet(&packet, 0, || unreachable!());
            ready(&mut c, id);
        }
        c.reload(r#"{"reason":"deploy","at":"t1"}"#);
        c.relay_packet(
            "a",
            r#"42/chat,["system:reload",{"reason":"deploy","at":"t1"}]"#,
        );
        c.relay_packet(
            "b",
            r#"42/chat,["system:reload",{"reason":"deploy","at":"t1"}]"#,
        );
        assert_eq!(
            c.take_outgoing(),
            vec![r#"42/chat,["system:reload",{"at":"t1","reason":"deploy"}]"#.to_string()]
        );
        c.relay_packet("b", r#"42/chat,["system:reload",{"at":"t2"}]"#);
        assert_eq!(c.take_outgoing().len(), 1, "the next reload");
        let mut fresh = signed_in();
        fresh.reload("{}");
        assert!(fresh.take_outgoing().is_empty(), "nothing before CONNECT");
    }

    #[test]
    fn reloads_sent_while_others_are_on_their_way_each_reach_the_client_once() {
        let mut c = connected();
        let relayed = |at: &str| format!(r#"42/chat,["system:reload",{{"at":"{at}"}}]"#);
        c.client_packet(
            r#"42/chat,["message",{"conversationId":"a","content":"x"}]"#,
            0,
            || unreachable!(),
        );
        ready(&mut c, "a");
        c.take_outgoing();
        // Two reloads in flight: each comes straight from the fan-out and through the relay,
        // in any order.
        c.reload(r#"{"at":"r1"}"#);
        c.reload(r#"{"at":"r2"}"#);
        c.relay_packet("a", &relayed("r1"));
        c.relay_packet("a", &relayed("r2"));
        assert_eq!(c.take_outgoing(), vec![relayed("r1"), relayed("r2")]);
        // The memory is bounded: the oldest of more reloads than it keeps is forgotten.
        for k in 0..REMEMBERED_RELOADS {
            c.reload(&format!(r#"{{"at":"n{k}"}}"#));
        }
        assert_eq!(c.take_outgoing().len(), REMEMBERED_RELOADS);
        c.relay_packet("a", &relayed("r2"));
        assert_eq!(c.take_outgoing(), vec![relayed("r2")]);
    }

    #[test]
    fn a_revoked_token_ends_its_connection_even_before_any_conversation() {
        let mut c = connected();
        c.token = Some("h1".into());
        let (hit, _) = c.revoke(&["other".into()]);
        assert!(!hit && !c.closed());
        let (hit, actions) = c.revoke(&["h1".into()]);
        assert!(hit && c.closed());
        assert!(matches!(actions.last(), Some(Action::Close { .. })));
        let out = c.take_outgoing();
        assert!(
            out[0].contains("revoked") && out[0].contains("unauthorized"),
            "{out:?}"
        );
        assert_eq!(out[1], "41/chat,");
        let later = c.client_packet("42/chat,[\"message\",{\"content\":\"hi\"}]", 0, || {
            "n".into()
        });
        assert!(later.is_empty(), "nothing it sends after is acted on");
    }

    #[test]
    fn an_event_head_is_read_without_its_data() {
        let head = |p: &str| event_head(p);
        assert_eq!(
            head(r#"42/chat,["agent:text",{"text":"a\"],\"9\"]"},"12"]"#),
            Some(("agent:text".into(), Some(12)))
        );
        assert_eq!(
            head(r#"42/chat,["error",{"error":"e"}]"#),
            Some(("error".into(), None))
        );
        assert_eq!(
            head(r#"42/chat,["x",{"t":"1"}]"#),
            Some(("x".into(), None)),
            "a string at the data's end is not an offset"
        );
        assert_eq!(head("43/chat,5[{}]"), None);
        assert_eq!(head("40/chat,{}"), None);
    }

    #[test]
    fn offsets_name_their_conversation() {
        assert_eq!(parse_offset("12:conv-a"), Some((12, "conv-a")));
        assert_eq!(parse_offset("12:a:b"), Some((12, "a:b")));
        assert_eq!(parse_offset("12"), None);
        assert_eq!(parse_offset("x:conv"), None);
        assert_eq!(parse_offset("3:"), None);
    }
}
