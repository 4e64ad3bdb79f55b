//! The chat protocol: client events validated from either framing, server events serialised once and framed per socket.

pub mod framing;
pub mod sio;
mod strict_json;

use serde_json::Value;

pub use strict_json::parse_strict;

/// Error codes a client may see in an `error` event (PROTOCOL.md, Values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    InvalidJson,
    InvalidPayload,
    UnknownEvent,
    PayloadTooLarge,
    ConversationMismatch,
    NoActiveTurn,
    /// `set:thinking` on a conversation that never had a turn (the reference gateway's "no session").
    NoActiveSession,
    InvalidThinkingLevel,
    RateLimited,
    QueueFull,
    ProviderNotConfigured,
    /// An agent that does not exist or that this user may not run (the two look the same).
    UnknownAgent,
    /// `tool:approve` naming a call that does not wait for approval (any more).
    NoPendingApproval,
    /// A `message` while a tool call waits for approval.
    ApprovalPending,
    Unauthorized,
    Internal,
    /// An upstream failure; the code comes from its class.
    Upstream(&'static str),
}

impl ErrorCode {
    /// The wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::InvalidPayload => "invalid_payload",
            ErrorCode::UnknownEvent => "unknown_event",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::ConversationMismatch => "conversation_mismatch",
            ErrorCode::NoActiveTurn => "no_active_turn",
            ErrorCode::NoActiveSession => "no_active_session",
            ErrorCode::InvalidThinkingLevel => "invalid_thinking_level",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::QueueFull => "queue_full",
            ErrorCode::ProviderNotConfigured => "provider_not_configured",
            ErrorCode::UnknownAgent => "unknown_agent",
            ErrorCode::NoPendingApproval => "no_pending_approval",
            ErrorCode::ApprovalPending => "approval_pending",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Internal => "internal",
            ErrorCode::Upstream(code) => code,
        }
    }
}

/// A client frame that cannot be acted on, with what to tell the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError {
    pub code: ErrorCode,
    pub message: String,
}

impl ProtocolError {
    /// Builds an error.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ProtocolError {
            code,
            message: message.into(),
        }
    }
}

/// Limits applied while validating client events.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Bytes of `content` a message may carry.
    pub max_content_bytes: usize,
}

/// Bytes a whole frame may have: content plus generous room for the other fields.
pub fn max_frame_bytes(limits: &Limits) -> usize {
    limits.max_content_bytes * 2 + 16 * 1024
}

/// `message`: starts a turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageEvent {
    pub conversation_id: Option<String>,
    pub content: String,
    pub provider: Option<String>,
    pub model_id: Option<String>,
    pub agent_id: Option<String>,
    pub client_message_id: Option<String>,
}

/// An event a client sent, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    Message(MessageEvent),
    SetThinking {
        conversation_id: Option<String>,
        level: String,
    },
    Abort {
        conversation_id: Option<String>,
    },
    CommandExecute {
        conversation_id: Option<String>,
        command: String,
        args: Option<Value>,
    },
    /// The answer to a tool call that waits for a person's approval.
    ToolApprove {
        conversation_id: Option<String>,
        tool_call_id: String,
        approved: bool,
        reason: Option<String>,
    },
    /// Keepalive from a JSON-framing client; normally answered by the runtime without waking the object.
    Ping,
}

/// Bytes the reason of a `tool:approve` may have.
pub const MAX_APPROVAL_REASON_BYTES: usize = 1000;

impl ClientEvent {
    /// The conversation the event names, if any.
    pub fn conversation_id(&self) -> Option<&str> {
        match self {
            ClientEvent::Message(m) => m.conversation_id.as_deref(),
            ClientEvent::SetThinking {
                conversation_id, ..
            }
            | ClientEvent::Abort { conversation_id }
            | ClientEvent::CommandExecute {
                conversation_id, ..
            }
            | ClientEvent::ToolApprove {
                conversation_id, ..
            } => conversation_id.as_deref(),
            ClientEvent::Ping => None,
        }
    }

    /// Whether the event counts against the user's rate limit: everything that changes the
    /// conversation does; `abort`, `tool:approve` and `ping` do not, so a limited user can still
    /// stop a turn, answer the question it waits on and keep the socket alive.
    pub fn is_rate_limited(&self) -> bool {
        !matches!(
            self,
            ClientEvent::Abort { .. } | ClientEvent::ToolApprove { .. } | ClientEvent::Ping
        )
    }
}

/// Decodes a JSON-framing text frame `{"event": name, "data": {...}}`.
pub fn decode_json_frame(text: &str, limits: &Limits) -> Result<ClientEvent, ProtocolError> {
    if text.len() > max_frame_bytes(limits) {
        return Err(ProtocolError::new(
            ErrorCode::PayloadTooLarge,
            format!(
                "frame of {} bytes exceeds {}",
                text.len(),
                max_frame_bytes(limits)
            ),
        ));
    }
    if text.trim().is_empty() {
        return Err(ProtocolError::new(ErrorCode::InvalidJson, "empty frame"));
    }
    let value = parse_strict(text)
        .map_err(|e| ProtocolError::new(ErrorCode::InvalidJson, format!("invalid JSON: {e}")))?;
    let Value::Object(mut frame) = value else {
        return Err(ProtocolError::new(
            ErrorCode::InvalidPayload,
            "a frame must be an object {\"event\", \"data\"}",
        ));
    };
    let name = match frame.remove("event") {
        Some(Value::String(s)) => s,
        Some(_) => {
            return Err(ProtocolError::new(
                ErrorCode::InvalidPayload,
                "\"event\" must be a string",
            ))
        }
        None => {
            return Err(ProtocolError::new(
                ErrorCode::InvalidPayload,
                "missing \"event\"",
            ))
        }
    };
    let data = frame
        .remove("data")
        .unwrap_or(Value::Object(Default::default()));
    decode_event(&name, data, limits)
}

/// Validates one named event with its payload; shared by both framings.
pub fn decode_event(
    name: &str,
    data: Value,
    limits: &Limits,
) -> Result<ClientEvent, ProtocolError> {
    let Value::Object(mut data) = data else {
        return Err(ProtocolError::new(
            ErrorCode::InvalidPayload,
            format!("the data of \"{}\" must be an object", printable(name)),
        ));
    };
    let mut field = |key: &'static str| -> Result<Option<String>, ProtocolError> {
        match data.remove(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(ProtocolError::new(
                ErrorCode::InvalidPayload,
                format!("\"{key}\" must be a string"),
            )),
        }
    };
    let id_field =
        |value: Option<String>, key: &'static str| -> Result<Option<String>, ProtocolError> {
            match value {
                Some(v) if !valid_id(&v) => Err(ProtocolError::new(
                    ErrorCode::InvalidPayload,
                    format!("\"{key}\" must be 1 to 128 printable characters"),
                )),
                v => Ok(v),
            }
        };
    match name {
        "message" => {
            let conversation_id = id_field(field("conversationId")?, "conversationId")?;
            let content = field("content")?.ok_or_else(|| {
                ProtocolError::new(ErrorCode::InvalidPayload, "\"content\" is required")
            })?;
            let provider = id_field(field("provider")?, "provider")?;
            let model_id = id_field(field("modelId")?, "modelId")?;
            let agent_id = id_field(field("agentId")?, "agentId")?;
            let client_message_id = id_field(field("clientMessageId")?, "clientMessageId")?;
            if content.len() > limits.max_content_bytes {
                return Err(ProtocolError::new(
                    ErrorCode::PayloadTooLarge,
                    format!(
                        "content of {} bytes exceeds MAX_MESSAGE_BYTES ({})",
                        content.len(),
                        limits.max_content_bytes
                    ),
                ));
            }
            if content.trim().is_empty() {
                return Err(ProtocolError::new(
                    ErrorCode::InvalidPayload,
                    "\"content\" must not be empty",
                ));
            }
            if content
                .chars()
                .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
            {
                return Err(ProtocolError::new(
                    ErrorCode::InvalidPayload,
                    "\"content\" contains control characters",
                ));
            }
            Ok(ClientEvent::Message(MessageEvent {
                conversation_id,
                content,
                provider,
                model_id,
                agent_id,
                client_message_id,
            }))
        }
        "set:thinking" => {
            let conversation_id = id_field(field("conversationId")?, "conversationId")?;
            let level = field("level")?.ok_or_else(|| {
                ProtocolError::new(ErrorCode::InvalidPayload, "\"level\" is required")
            })?;
            Ok(ClientEvent::SetThinking {
                conversation_id,
                level,
            })
        }
        "abort" => Ok(ClientEvent::Abort {
            conversation_id: id_field(field("conversationId")?, "conversationId")?,
        }),
        "command:execute" => {
            let conversation_id = id_field(field("conversationId")?, "conversationId")?;
            let command = field("command")?.ok_or_else(|| {
                ProtocolError::new(ErrorCode::InvalidPayload, "\"command\" is required")
            })?;
            if command.len() > 4096 {
                return Err(ProtocolError::new(
                    ErrorCode::PayloadTooLarge,
                    "\"command\" is longer than 4096 bytes",
                ));
            }
            let args = data.remove("args").filter(|v| !v.is_null());
            Ok(ClientEvent::CommandExecute {
                conversation_id,
                command,
                args,
            })
        }
        "tool:approve" => {
            let conversation_id = id_field(field("conversationId")?, "conversationId")?;
            let tool_call_id = id_field(field("toolCallId")?, "toolCallId")?.ok_or_else(|| {
                ProtocolError::new(ErrorCode::InvalidPayload, "\"toolCallId\" is required")
            })?;
            let reason = field("reason")?;
            let approved = match data.remove("approved") {
                Some(Value::Bool(b)) => b,
                _ => {
                    return Err(ProtocolError::new(
                        ErrorCode::InvalidPayload,
                        "\"approved\" must be true or false",
                    ))
                }
            };
            if let Some(r) = &reason {
                if r.len() > MAX_APPROVAL_REASON_BYTES {
                    return Err(ProtocolError::new(
                        ErrorCode::PayloadTooLarge,
                        format!("\"reason\" is longer than {MAX_APPROVAL_REASON_BYTES} bytes"),
                    ));
                }
            }
            // Shown to the model and to every socket: control characters go.
            let reason = reason
                .map(|r| printable_text(&r))
                .filter(|r| !r.trim().is_empty());
            Ok(ClientEvent::ToolApprove {
                conversation_id,
                tool_call_id,
                approved,
                reason,
            })
        }
        "ping" => Ok(ClientEvent::Ping),
        other => Err(ProtocolError::new(
            ErrorCode::UnknownEvent,
            format!(
                "unknown event \"{}\"; expected message, set:thinking, abort, tool:approve or command:execute",
                printable(other)
            ),
        )),
    }
}

/// Whether an identifier from a client is acceptable (ids, provider and model names).
pub fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && id.chars().all(|c| !c.is_control() && !c.is_whitespace())
}

/// Client text with control characters other than newlines and tabs removed.
fn printable_text(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_control() || matches!(c, '\n' | '\t'))
        .collect()
}

/// A client-supplied name cut short and stripped of control characters, safe to echo back.
fn printable(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(64).collect()
}

/// A server event, its payload serialised once; framed per socket without re-serialising.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutEvent {
    pub name: &'static str,
    /// Stream sequence number; `None` for events outside the conversation's stream (manifest, command results).
    pub seq: Option<u64>,
    /// The payload as JSON text.
    pub data: String,
}

impl OutEvent {
    /// An event outside the stream.
    pub fn unsequenced(name: &'static str, data: String) -> Self {
        OutEvent {
            name,
            seq: None,
            data,
        }
    }

    /// The JSON framing: `{"event":"agent:text","seq":42,"data":{...}}`.
    pub fn json_frame(&self) -> String {
        let mut s = String::with_capacity(self.data.len() + self.name.len() + 32);
        s.push_str("{\"event\":\"");
        s.push_str(self.name); // event names are ASCII constants, no escaping needed
        s.push('"');
        if let Some(seq) = self.seq {
            s.push_str(",\"seq\":");
            s.push_str(&seq.to_string());
        }
        s.push_str(",\"data\":");
        s.push_str(&self.data);
        s.push('}');
        s
    }
}

/// Serialises a string as a JSON string literal.
pub fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    push_json_str(&mut out, s);
    out
}

/// Appends `s` as a JSON string literal: the gateway's one string escaper (serde_json's, so
/// hand-built frames are byte-identical to serialised ones).
pub fn push_json_str(out: &mut String, s: &str) {
    let mut bytes = std::mem::take(out).into_bytes();
    bytes.reserve(s.len() + 2);
    // Writing a `str` into a Vec cannot fail, and serde_json writes UTF-8.
    let _ = serde_json::to_writer(&mut bytes, s);
    *out = String::from_utf8(bytes).unwrap_or_default();
}

/// The keepalive a JSON client sends, byte for byte, and the answer the runtime gives without waking the object.
pub const KEEPALIVE_PING: &str = r#"{"event":"ping"}"#;
/// See [`KEEPALIVE_PING`].
pub const KEEPALIVE_PONG: &str = r#"{"event":"pong"}"#;

/// The conversation's stream events, by name: a stored event's name is one of these.
pub const STREAM_EVENTS: [&str; 10] = [
    "message:ack",
    "session:info",
    "agent:start",
    "agent:text",
    "agent:thinking",
    "agent:tool:start",
    "agent:tool:approval",
    "agent:tool:end",
    "agent:end",
    "error",
];

/// The static name of a stream event read back from storage.
pub fn stream_event_name(name: &str) -> Option<&'static str> {
    STREAM_EVENTS.iter().copied().find(|n| *n == name)
}

/// Payload of `agent:text` / `agent:thinking`, built by hand: it is the per-delta hot path.
pub fn delta_payload(conversation_id_json: &str, text: &str) -> String {
    let mut s = String::with_capacity(conversation_id_json.len() + text.len() + 32);
    s.push_str("{\"conversationId\":");
    s.push_str(conversation_id_json);
    s.push_str(",\"text\":");
    // Escaped straight into the payload: one buffer per delta, not one more for the string.
    push_json_str(&mut s, text);
    s.push('}');
    s
}

/// Payload of an `error` event.
pub fn error_payload(conversation_id: Option<&str>, code: ErrorCode, message: &str) -> String {
    error_payload_detailed(conversation_id, code, message, None)
}

/// Payload of an `error` event whose reason is the reference gateway's text, with the gateway's
/// own reason as `detail`.
pub fn error_payload_detailed(
    conversation_id: Option<&str>,
    code: ErrorCode,
    message: &str,
    detail: Option<&str>,
) -> String {
    let mut v = serde_json::json!({ "error": message, "code": code.as_str() });
    if let Some(id) = conversation_id {
        v["conversationId"] = Value::String(id.to_string());
    }
    if let Some(detail) = detail {
        v["detail"] = Value::String(detail.to_string());
    }
    v.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_content_bytes: 100,
    };

    fn code(text: &str) -> ErrorCode {
        decode_json_frame(text, &LIMITS).unwrap_err().code
    }

    #[test]
    fn what_counts_against_the_rate_limit() {
        let event =
            |name: &str, data: serde_json::Value| decode_event(name, data, &LIMITS).unwrap();
        assert!(event("message", serde_json::json!({"content": "hi"})).is_rate_limited());
        assert!(event("set:thinking", serde_json::json!({"level": "low"})).is_rate_limited());
        assert!(
            event("command:execute", serde_json::json!({"command": "/status"})).is_rate_limited()
        );
        assert!(!event("abort", serde_json::json!({})).is_rate_limited());
        let answer = serde_json::json!({"toolCallId": "t", "approved": true});
        assert!(!event("tool:approve", answer).is_rate_limited());
    }

    #[test]
    fn decodes_a_message() {
        let e = decode_json_frame(r#"{"event":"message","data":{"content":"hi","conversationId":"c1","clientMessageId":"m1"}}"#, &LIMITS).unwrap();
        assert_eq!(
            e,
            ClientEvent::Message(MessageEvent {
                conversation_id: Some("c1".into()),
                content: "hi".into(),
                provider: None,
                model_id: None,
                agent_id: None,
                client_message_id: Some("m1".into()),
            })
        );
    }

    #[test]
    fn decodes_the_other_events() {
        assert_eq!(
            decode_json_frame(
                r#"{"event":"set:thinking","data":{"conversationId":"c","level":"high"}}"#,
                &LIMITS
            )
            .unwrap(),
            ClientEvent::SetThinking {
                conversation_id: Some("c".into()),
                level: "high".into()
            }
        );
        assert_eq!(
            decode_json_frame(r#"{"event":"abort","data":{}}"#, &LIMITS).unwrap(),
            ClientEvent::Abort {
                conversation_id: None
            }
        );
        assert_eq!(
            decode_json_frame(
                r#"{"event":"tool:approve","data":{"conversationId":"c","toolCallId":"t1","approved":false,"reason":"no\u0007 thanks"}}"#,
                &LIMITS
            )
            .unwrap(),
            ClientEvent::ToolApprove {
                conversation_id: Some("c".into()),
                tool_call_id: "t1".into(),
                approved: false,
                reason: Some("no thanks".into())
            }
        );
        assert_eq!(
            decode_json_frame(
                r#"{"event":"tool:approve","data":{"toolCallId":"t1","approved":true,"reason":"  "}}"#,
                &LIMITS
            )
            .unwrap(),
            ClientEvent::ToolApprove {
                conversation_id: None,
                tool_call_id: "t1".into(),
                approved: true,
                reason: None
            }
        );
        assert_eq!(
            decode_json_frame(
                r#"{"event":"command:execute","data":{"command":"/model","args":"gpt-4o"}}"#,
                &LIMITS
            )
            .unwrap(),
            ClientEvent::CommandExecute {
                conversation_id: None,
                command: "/model".into(),
                args: Some(Value::String("gpt-4o".into()))
            }
        );
    }

    #[test]
    fn malformed_frames_get_codes() {
        use ErrorCode::*;
        let cases: &[(&str, ErrorCode)] = &[
            ("not json", InvalidJson),
            ("", InvalidJson),
            ("   ", InvalidJson),
            ("{", InvalidJson),
            ("[]", InvalidPayload),
            ("42", InvalidPayload),
            ("null", InvalidPayload),
            ("{}", InvalidPayload),
            (r#"{"event":5}"#, InvalidPayload),
            (r#"{"event":"nope","data":{}}"#, UnknownEvent),
            (
                r#"{"event":"tool:approve","data":{"approved":true}}"#,
                InvalidPayload,
            ),
            (
                r#"{"event":"tool:approve","data":{"toolCallId":"t","approved":"yes"}}"#,
                InvalidPayload,
            ),
            (
                r#"{"event":"tool:approve","data":{"toolCallId":"t"}}"#,
                InvalidPayload,
            ),
            (
                r#"{"event":"tool:approve","data":{"toolCallId":"t","approved":true,"reason":5}}"#,
                InvalidPayload,
            ),
            (r#"{"event":"message","data":[]}"#, InvalidPayload),
            (r#"{"event":"message","data":"hi"}"#, InvalidPayload),
            (r#"{"event":"message","data":{}}"#, InvalidPayload),
            (
                r#"{"event":"message","data":{"content":5}}"#,
                InvalidPayload,
            ),
            (
                r#"{"event":"message","data":{"content":""}}"#,
                InvalidPayload,
            ),
            (
                r#"{"event":"message","data":{"content":"  \n"}}"#,
                InvalidPayload,
            ),
            (
                r#"{"event":"message","data":{"content":"a\u0000b"}}"#,
                InvalidPayload,
            ),
            (
                r#"{"event":"message","data":{"content":"hi","conversationId":7}}"#,
                InvalidPayload,
            ),
            (
                r#"{"event":"message","data":{"content":"hi","conversationId":""}}"#,
                InvalidPayload,
            ),
            (
                r#"{"event":"message","data":{"content":"hi","conversationId":"a b"}}"#,
                InvalidPayload,
            ),
            (
                r#"{"event":"message","data":{"content":"hi","modelId":{}}}"#,
                InvalidPayload,
            ),
            (
                r#"{"event":"message","data":{"content":"hi","content":"twice"}}"#,
                InvalidJson,
            ),
            (
                r#"{"event":"message","data":{"content":1e999}}"#,
                InvalidJson,
            ),
            (
                r#"{"event":"set:thinking","data":{"level":3}}"#,
                InvalidPayload,
            ),
            (r#"{"event":"set:thinking","data":{}}"#, InvalidPayload),
            (r#"{"event":"command:execute","data":{}}"#, InvalidPayload),
            ("\u{feff}{}", InvalidJson),
        ];
        for (frame, expected) in cases {
            assert_eq!(code(frame), *expected, "frame {frame:?}");
        }
        let big = format!(
            r#"{{"event":"message","data":{{"content":"{}"}}}}"#,
            "x".repeat(101)
        );
        assert_eq!(code(&big), PayloadTooLarge);
        let deep = format!("{}{}", "[".repeat(5_000), "]".repeat(5_000));
        assert_eq!(code(&deep), InvalidJson);
    }

    #[test]
    fn json_frame_wire_format() {
        let e = OutEvent {
            name: "agent:text",
            seq: Some(42),
            data: delta_payload(&json_str("c1"), "hé\""),
        };
        assert_eq!(
            e.json_frame(),
            r#"{"event":"agent:text","seq":42,"data":{"conversationId":"c1","text":"hé\""}}"#
        );
        let m = OutEvent::unsequenced("commands:manifest", "{}".into());
        assert_eq!(m.json_frame(), r#"{"event":"commands:manifest","data":{}}"#);
    }

    #[test]
    fn error_payload_shape() {
        let p: Value =
            serde_json::from_str(&error_payload(Some("c"), ErrorCode::QueueFull, "full")).unwrap();
        assert_eq!(
            p,
            serde_json::json!({"conversationId": "c", "error": "full", "code": "queue_full"})
        );
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_frames_never_panic(s in ".{0,300}") {
            let _ = decode_json_frame(&s, &LIMITS);
        }
    }
}
