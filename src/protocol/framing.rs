//! How one socket frames events: JSON text frames, or Socket.IO packets in the `/chat` namespace; an event is encoded once per framing, by one function each, so the two cannot drift.

use super::{sio, OutEvent};

/// The socket.io namespace the gateway serves.
pub const NSP: &str = "/chat";

/// A socket's framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `{"event":name,"seq":n,"data":{...}}` text frames.
    Json,
    /// Engine.IO 4 / Socket.IO 5 packets; a stream event's seq is its recovery offset.
    SocketIo,
}

impl Framing {
    /// The framing of a socket (`sio`: it speaks socket.io).
    pub fn of(sio: bool) -> Self {
        if sio {
            Framing::SocketIo
        } else {
            Framing::Json
        }
    }

    /// `event` as one text frame of this framing.
    pub fn encode(self, event: &OutEvent) -> String {
        match self {
            Framing::Json => event.json_frame(),
            Framing::SocketIo => {
                let offset = event.seq.map(|s| s.to_string());
                sio::event(NSP, event.name, &event.data, offset.as_deref())
            }
        }
    }

    /// The answer to a client event that asked for an acknowledgement (`ack_id`): Socket.IO
    /// only; `payload` is the JSON of the one callback argument.
    pub fn ack(self, ack_id: Option<u64>, payload: &str) -> Option<String> {
        match (self, ack_id) {
            (Framing::SocketIo, Some(id)) => Some(sio::ack(NSP, id, &format!("[{payload}]"))),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delta() -> OutEvent {
        OutEvent {
            name: "agent:text",
            seq: Some(42),
            data: r#"{"conversationId":"c1","text":"hé \"x\""}"#.into(),
        }
    }

    #[test]
    fn a_stream_event_in_each_framing() {
        assert_eq!(
            Framing::Json.encode(&delta()),
            r#"{"event":"agent:text","seq":42,"data":{"conversationId":"c1","text":"hé \"x\""}}"#
        );
        assert_eq!(
            Framing::SocketIo.encode(&delta()),
            r#"42/chat,["agent:text",{"conversationId":"c1","text":"hé \"x\""},"42"]"#
        );
    }

    #[test]
    fn an_event_outside_the_stream_has_no_seq_and_no_offset() {
        let e = OutEvent::unsequenced("command:result", r#"{"success":true}"#.into());
        assert_eq!(
            Framing::Json.encode(&e),
            r#"{"event":"command:result","data":{"success":true}}"#
        );
        assert_eq!(
            Framing::SocketIo.encode(&e),
            r#"42/chat,["command:result",{"success":true}]"#
        );
    }

    #[test]
    fn both_framings_carry_the_same_strict_json_payload() {
        let e = delta();
        let json: serde_json::Value = serde_json::from_str(&Framing::Json.encode(&e)).unwrap();
        let sio = Framing::SocketIo.encode(&e);
        let args: serde_json::Value = serde_json::from_str(&sio["42/chat,".len()..]).unwrap();
        assert_eq!(json["data"], args[1]);
        assert_eq!(
            json["seq"].as_u64().map(|s| s.to_string()),
            args[2].as_str().map(String::from)
        );
    }

    #[test]
    fn acks_exist_only_in_socket_io() {
        assert_eq!(
            Framing::SocketIo.ack(Some(7), r#"{"ok":true}"#).as_deref(),
            Some(r#"43/chat,7[{"ok":true}]"#)
        );
        assert_eq!(Framing::SocketIo.ack(None, "{}"), None);
        assert_eq!(Framing::Json.ack(Some(7), "{}"), None);
        assert_eq!(Framing::of(true), Framing::SocketIo);
    }
}
