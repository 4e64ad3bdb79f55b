//! A conversation's sockets as data: what the gateway keeps of each (its attachment), how a frame one sent is read, and which events reach it in which framing.

use crate::error::RoomError;
use crate::protocol::framing::{Framing, NSP};
use crate::protocol::{self, sio, ClientEvent, ErrorCode, Limits, OutEvent};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// What a socket hears when its token expires.
pub const TOKEN_EXPIRED: &str = "unauthorized: the token has expired";
/// What a socket hears when its token is revoked.
pub const TOKEN_REVOKED: &str = "unauthorized: the token was revoked";
/// What a socket.io event outside the connected namespace gets.
/// The refusal of an event sent before the namespace CONNECT.
pub const CONNECT_FIRST: &str = "connect to the /chat namespace first";
/// Longest recovery id taken from a client: longer ones were not issued by the gateway (and
/// would not fit the attachment).
const MAX_PID_CHARS: usize = 64;

/// Per-socket data kept in the hibernation attachment (at most 2 KB).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SocketMeta {
    /// The authenticated user; `None` for a socket.io socket before its CONNECT.
    pub user: Option<String>,
    /// socket.io framing (else JSON).
    pub sio: bool,
    /// socket.io: CONNECT to `/chat` accepted.
    pub connected: bool,
    /// socket.io session id of the namespace.
    pub sid: String,
    /// socket.io recovery id.
    pub pid: String,
    /// The conversation an unauthenticated socket.io socket asked for: the object's storage is
    /// not touched (not even to record its id) until CONNECT proves who the socket is.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub conversation: String,
    /// SHA-256 of the token that authenticated the socket: a revocation closes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// When that token expires (ms since the epoch): the socket is closed then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<i64>,
    /// Why the upgrade's session cookie signed nobody in: a CONNECT without a token is refused
    /// with it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub refused: String,
    /// Closed by the gateway (revoked or expired): whatever it still sends is ignored.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shut: bool,
    /// A connection object's relay: the client behind it is pinged by its connection object.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub relay: bool,
}

impl SocketMeta {
    /// The socket's framing.
    pub fn framing(&self) -> Framing {
        Framing::of(self.sio)
    }

    /// Whether the conversation's alarm sends it Engine.IO pings: a socket.io client, not a relay,
    /// so an idle multi-conversation connection never wakes the conversations it has used.
    pub fn pinged(&self) -> bool {
        self.sio && !self.relay
    }

    /// Whether events reach it: a socket.io socket only once its CONNECT was accepted.
    pub fn hears_events(&self) -> bool {
        !self.sio || self.connected
    }

    /// `event` framed for this socket, if it hears events.
    pub fn frame(&self, event: &OutEvent) -> Option<String> {
        self.hears_events().then(|| self.framing().encode(event))
    }

    /// A socket.io socket that has not authenticated: it is nobody's, is served only the
    /// handshake, and costs the conversation no load, storage or registry row.
    pub fn unauthenticated(&self) -> bool {
        self.sio && self.user.is_none()
    }

    /// Whether its token has expired at `now_ms`.
    pub fn expired(&self, now_ms: i64) -> bool {
        self.expires.is_some_and(|at| at <= now_ms)
    }

    /// The attachment of a socket the gateway closed: nobody's, and ignored from now on.
    pub fn shut_down(&self) -> SocketMeta {
        SocketMeta {
            user: None,
            connected: false,
            shut: true,
            ..self.clone()
        }
    }
}

/// A frame a socket sent.
#[derive(Debug, Clone, Copy)]
pub enum Frame<'a> {
    Text(&'a str),
    Binary,
}

/// What a frame from a socket asks of the conversation.
#[derive(Debug, Clone, PartialEq)]
pub enum SocketInput {
    /// Nothing.
    Ignore,
    /// Send this text back to the socket as it is (a pong, a CONNECT_ERROR).
    Reply(String),
    /// Close the socket.
    Close { code: u16, reason: String },
    /// socket.io CONNECT to `nsp`, with its `auth` object.
    Connect { nsp: String, auth: Option<Value> },
    /// socket.io DISCONNECT: the namespace is left, the transport stays.
    Disconnect,
    /// A valid client event, with the socket.io ack id it asked for.
    Event {
        event: ClientEvent,
        ack: Option<u64>,
    },
    /// A refused frame: an `error` to the socket, and the same payload as the ack it asked for.
    Refuse { error: RoomError, ack: Option<u64> },
}

/// Reads one frame of a socket. An unauthenticated socket.io socket is served only the
/// Engine.IO heartbeat, a close and CONNECT.
pub fn read_frame(meta: &SocketMeta, frame: Frame<'_>, limits: &Limits) -> SocketInput {
    let text = match frame {
        Frame::Text(text) => text,
        Frame::Binary if meta.sio => {
            return close(1003, "binary packets are not supported");
        }
        Frame::Binary => {
            return refuse(
                ErrorCode::InvalidPayload,
                "binary frames are not supported; send JSON text frames",
                None,
            );
        }
    };
    if !meta.sio {
        return match protocol::decode_json_frame(text, limits) {
            Ok(event) => SocketInput::Event { event, ack: None },
            Err(e) => refuse(e.code, e.message, None),
        };
    }
    if meta.user.is_some() && text.len() > protocol::max_frame_bytes(limits) {
        return refuse(
            ErrorCode::PayloadTooLarge,
            "packet larger than the gateway accepts",
            None,
        );
    }
    let packet = match sio::decode(text) {
        Ok(packet) => packet,
        Err(e) if meta.connected && meta.user.is_some() => {
            return refuse(
                ErrorCode::InvalidPayload,
                format!("malformed socket.io packet: {e}"),
                None,
            );
        }
        Err(e) => return close(1008, crate::text::prefix_chars(&e.to_string(), 120)),
    };
    match packet {
        sio::Inbound::Ping => SocketInput::Reply("3".into()),
        sio::Inbound::Close => close(1000, "closed by client"),
        sio::Inbound::Connect { nsp, auth } => SocketInput::Connect { nsp, auth },
        sio::Inbound::Pong
        | sio::Inbound::Noop
        | sio::Inbound::Upgrade
        | sio::Inbound::Ack { .. } => SocketInput::Ignore,
        _ if meta.user.is_none() => match packet {
            sio::Inbound::Event { nsp, .. } => {
                SocketInput::Reply(sio::connect_error(&nsp, CONNECT_FIRST, None))
            }
            _ => SocketInput::Ignore,
        },
        sio::Inbound::Disconnect { .. } => SocketInput::Disconnect,
        sio::Inbound::Event {
            nsp,
            ack_id,
            name,
            args,
        } => {
            if nsp != NSP || !meta.connected {
                return SocketInput::Reply(sio::connect_error(&nsp, CONNECT_FIRST, None));
            }
            let data = args.into_iter().next().unwrap_or_else(|| json!({}));
            match protocol::decode_event(&name, data, limits) {
                Ok(event) => SocketInput::Event { event, ack: ack_id },
                Err(e) => refuse(e.code, e.message, ack_id),
            }
        }
    }
}

/// The recovery a socket.io CONNECT asks for, `(pid, offset)`, when it is one the gateway
/// could have issued.
pub fn recovery_request(auth: &Option<Value>) -> Option<(String, u64)> {
    sio::recovery(auth)
        .filter(|(pid, _)| pid.chars().count() <= MAX_PID_CHARS)
        .and_then(|(pid, offset)| offset.parse::<u64>().ok().map(|o| (pid, o)))
}

/// The reciprocal close code of a socket the client closed with `code` (the reserved codes
/// cannot be sent back).
pub fn close_reply_code(code: usize) -> u16 {
    match code {
        1005 | 1006 | 1015 => 1000,
        c => u16::try_from(c).unwrap_or(1000),
    }
}

/// The `error` a socket resuming after `last` gets when events it missed are gone.
pub fn resume_gap_payload(conversation: &str, last: u64, oldest: u64) -> String {
    let msg = format!("cannot resume after seq {last}: events before {oldest} are no longer held; reload the history over HTTP");
    json!({ "conversationId": conversation, "error": msg, "code": "resume_gap", "oldestSeq": oldest }).to_string()
}

fn close(code: u16, reason: impl Into<String>) -> SocketInput {
    SocketInput::Close {
        code,
        reason: reason.into(),
    }
}

fn refuse(code: ErrorCode, message: impl Into<String>, ack: Option<u64>) -> SocketInput {
    SocketInput::Refuse {
        error: RoomError::client(code, message),
        ack,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_content_bytes: 1000,
    };

    fn json_socket() -> SocketMeta {
        SocketMeta {
            user: Some("alice".into()),
            ..SocketMeta::default()
        }
    }

    fn sio_socket(user: Option<&str>, connected: bool) -> SocketMeta {
        SocketMeta {
            user: user.map(String::from),
            sio: true,
            connected,
            sid: "s".into(),
            ..SocketMeta::default()
        }
    }

    fn read(meta: &SocketMeta, text: &str) -> SocketInput {
        read_frame(meta, Frame::Text(text), &LIMITS)
    }

    fn refused_code(input: &SocketInput) -> (&'static str, Option<u64>) {
        match input {
            SocketInput::Refuse { error, ack } => (error.code().as_str(), *ack),
            other => panic!("not a refusal: {other:?}"),
        }
    }

    #[test]
    fn json_frames_become_events_or_refusals_and_the_socket_stays() {
        let m = json_socket();
        assert!(matches!(
            read(&m, r#"{"event":"message","data":{"content":"hi"}}"#),
            SocketInput::Event {
                event: ClientEvent::Message(_),
                ack: None
            }
        ));
        assert_eq!(refused_code(&read(&m, "{nope")).0, "invalid_json");
        assert_eq!(
            refused_code(&read_frame(&m, Frame::Binary, &LIMITS)).0,
            "invalid_payload"
        );
    }

    #[test]
    fn an_unauthenticated_socket_io_socket_gets_the_handshake_only() {
        let m = sio_socket(None, false);
        assert_eq!(read(&m, "2"), SocketInput::Reply("3".into()));
        assert!(matches!(
            read(&m, r#"40/chat,{"token":"t"}"#),
            SocketInput::Connect { nsp, auth: Some(_) } if nsp == "/chat"
        ));
        assert_eq!(
            read(&m, r#"42/chat,["message",{"content":"hi"}]"#),
            SocketInput::Reply(
                r#"44/chat,{"message":"connect to the /chat namespace first"}"#.into()
            )
        );
        assert_eq!(read(&m, "41/chat,"), SocketInput::Ignore);
        assert!(matches!(
            read(&m, "9"),
            SocketInput::Close { code: 1008, .. }
        ));
        assert!(matches!(
            read_frame(&m, Frame::Binary, &LIMITS),
            SocketInput::Close { code: 1003, .. }
        ));
        // No size check spends anything on it either: a huge packet is just malformed or ignored.
        assert!(matches!(
            read(&m, &"x".repeat(10_000)),
            SocketInput::Close { code: 1008, .. }
        ));
    }

    #[test]
    fn a_connected_socket_io_socket_reads_events_with_their_ack_ids() {
        let m = sio_socket(Some("alice"), true);
        assert!(matches!(
            read(&m, r#"42/chat,7["abort",{}]"#),
            SocketInput::Event {
                event: ClientEvent::Abort { .. },
                ack: Some(7)
            }
        ));
        assert_eq!(
            refused_code(&read(&m, r#"42/chat,8["nope",{}]"#)),
            ("unknown_event", Some(8))
        );
        assert_eq!(refused_code(&read(&m, "4x")).0, "invalid_payload");
        assert_eq!(
            refused_code(&read(
                &m,
                &format!(
                    r#"42/chat,["message",{{"content":"{}"}}]"#,
                    "x".repeat(5000)
                )
            ))
            .0,
            "payload_too_large"
        );
        assert_eq!(read(&m, "41/chat,"), SocketInput::Disconnect);
        assert_eq!(read(&m, "3"), SocketInput::Ignore);
        assert_eq!(read(&m, "1"), close(1000, "closed by client"));
    }

    #[test]
    fn events_outside_the_connected_namespace_are_refused_with_connect_error() {
        let left = sio_socket(Some("alice"), false);
        assert!(
            matches!(read(&left, r#"42/chat,["abort",{}]"#), SocketInput::Reply(r) if r.starts_with("44/chat,"))
        );
        let m = sio_socket(Some("alice"), true);
        assert!(
            matches!(read(&m, r#"42/other,["abort",{}]"#), SocketInput::Reply(r) if r.starts_with("44/other,"))
        );
        // Malformed before CONNECT closes the transport: nothing there to report an error to.
        assert!(matches!(
            read(&left, "4x"),
            SocketInput::Close { code: 1008, .. }
        ));
    }

    #[test]
    fn framing_follows_the_socket_and_its_namespace() {
        let e = OutEvent::unsequenced("pong", "{}".into());
        assert_eq!(
            json_socket().frame(&e).as_deref(),
            Some(r#"{"event":"pong","data":{}}"#)
        );
        assert_eq!(sio_socket(Some("a"), false).frame(&e), None);
        assert_eq!(
            sio_socket(Some("a"), true).frame(&e).as_deref(),
            Some(r#"42/chat,["pong",{}]"#)
        );
    }

    #[test]
    fn only_socket_io_clients_are_pinged_and_relays_never() {
        assert!(sio_socket(Some("alice"), true).pinged());
        assert!(!json_socket().pinged());
        let relay = SocketMeta {
            relay: true,
            ..sio_socket(Some("alice"), true)
        };
        assert!(!relay.pinged() && relay.hears_events());
        let text = serde_json::to_string(&relay).unwrap();
        assert_eq!(serde_json::from_str::<SocketMeta>(&text).unwrap(), relay);
        assert!(!serde_json::to_string(&json_socket())
            .unwrap()
            .contains("relay"));
    }

    #[test]
    fn a_shut_socket_is_nobodys_and_attachments_stay_small() {
        let mut m = sio_socket(Some("alice"), true);
        m.token = Some("h".repeat(64));
        m.expires = Some(5);
        assert!(m.expired(5) && !m.expired(4));
        let shut = m.shut_down();
        assert!(shut.shut && shut.user.is_none() && !shut.hears_events());
        let text = serde_json::to_string(&shut).unwrap();
        assert!(text.len() < 2048);
        let back: SocketMeta = serde_json::from_str(&text).unwrap();
        assert_eq!(back, shut);
        // Older attachments without the newer fields still read.
        let old: SocketMeta =
            serde_json::from_str(r#"{"user":"a","sio":false,"connected":true,"sid":"","pid":""}"#)
                .unwrap();
        assert!(!old.shut && old.token.is_none());
    }

    #[test]
    fn recovery_takes_only_ids_the_gateway_could_have_issued() {
        let ok = Some(json!({ "pid": "p1", "offset": "12" }));
        assert_eq!(recovery_request(&ok), Some(("p1".into(), 12)));
        let long = Some(json!({ "pid": "p".repeat(65), "offset": "12" }));
        assert_eq!(recovery_request(&long), None);
        let bad = Some(json!({ "pid": "p1", "offset": "twelve" }));
        assert_eq!(recovery_request(&bad), None);
        assert_eq!(close_reply_code(1006), 1000);
        assert_eq!(close_reply_code(4001), 4001);
        assert_eq!(close_reply_code(70_000), 1000);
    }
}
