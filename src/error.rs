//! The gateway's errors: `ApiError` for HTTP routes, `RoomError` for a conversation; each says whose fault it is and is mapped to the wire in one place.

use crate::protocol::{self, ErrorCode};

/// A request the gateway refuses, with the reason it gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    BadRequest(String),
    Unauthorized(String),
    Forbidden(String),
    NotFound(String),
    MethodNotAllowed,
    Conflict(String),
    PayloadTooLarge(String),
    UpgradeRequired,
    /// A feature that needs configuration the operator did not give.
    Unavailable(String),
    Internal(String),
    /// The gateway's own storage failed before anything was decided: try again (503, code `internal`).
    InternalRetry(String),
}

impl ApiError {
    /// The HTTP status.
    pub fn status(&self) -> u16 {
        match self {
            ApiError::BadRequest(_) => 400,
            ApiError::Unauthorized(_) => 401,
            ApiError::Forbidden(_) => 403,
            ApiError::NotFound(_) => 404,
            ApiError::MethodNotAllowed => 405,
            ApiError::Conflict(_) => 409,
            ApiError::PayloadTooLarge(_) => 413,
            ApiError::UpgradeRequired => 426,
            ApiError::Unavailable(_) => 503,
            ApiError::Internal(_) => 500,
            ApiError::InternalRetry(_) => 503,
        }
    }

    /// A short machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::Conflict(_) => "conflict",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::UpgradeRequired => "upgrade_required",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Internal(_) | ApiError::InternalRetry(_) => "internal",
        }
    }

    /// The human-readable reason.
    pub fn message(&self) -> &str {
        match self {
            ApiError::BadRequest(m)
            | ApiError::Unauthorized(m)
            | ApiError::Forbidden(m)
            | ApiError::NotFound(m)
            | ApiError::Conflict(m)
            | ApiError::PayloadTooLarge(m)
            | ApiError::Unavailable(m)
            | ApiError::Internal(m)
            | ApiError::InternalRetry(m) => m,
            ApiError::MethodNotAllowed => "method not allowed on this route",
            ApiError::UpgradeRequired => {
                "this route needs a WebSocket upgrade (Upgrade: websocket)"
            }
        }
    }

    /// The JSON body `{"error": reason, "code": code}`.
    pub fn body(&self) -> String {
        serde_json::json!({ "error": self.message(), "code": self.code() }).to_string()
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message(), self.status())
    }
}

impl std::error::Error for ApiError {}

/// Whose fault a failure is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The client sent something the gateway refuses; it must change the request.
    Client,
    /// A model provider (or a tool) failed.
    Upstream,
    /// The gateway itself failed; the client did nothing wrong.
    Internal,
}

/// The reference gateway's error texts, for the situations it has. Clients written for it match
/// on them; the gateway's own reason goes with them as `detail`.
pub mod seed {
    /// A turn that could not start: no model to serve it, an agent that cannot be run, the
    /// conversation's history or storage unavailable.
    pub const START_FAILED: &str = "Failed to start agent session. Please try again.";
    /// A turn the model failed (an upstream error), or a message refused while turns run.
    pub const PROMPT_FAILED: &str = "The agent failed to process your message. Please try again.";
    /// `set:thinking` on a conversation that never had a turn.
    pub const NO_SESSION: &str = "No active session for this conversation.";
    /// `abort` on a conversation that never had a turn.
    pub const NO_SESSION_TO_ABORT: &str = "No active session to abort.";
}

/// Why a conversation refused or failed something a client asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoomError {
    /// A request the gateway refuses, with the code and reason the client gets.
    Client { code: ErrorCode, message: String },
    /// The conversation belongs to another user.
    Forbidden,
    /// A provider failed; its message is already fit for clients (masked).
    Upstream {
        code: &'static str,
        message: String,
        retryable: bool,
    },
    /// The gateway failed; `message` is generic, the detail went to the log.
    Internal { message: String },
    /// A situation the reference gateway has: its `text` is what clients see as the reason, and
    /// `cause` (code, fault, the gateway's own reason as `detail`) is everything else.
    Seed {
        text: &'static str,
        cause: Box<RoomError>,
    },
}

impl RoomError {
    /// A client past the per-user rate limit of `per_minute`, told when to retry.
    pub fn rate_limited(per_minute: u32, retry_after_ms: i64) -> RoomError {
        let msg = format!(
            "rate limit of {per_minute} messages, commands and settings per minute reached; retry in {} s",
            (retry_after_ms + 999) / 1000
        );
        RoomError::client(ErrorCode::RateLimited, msg)
    }

    /// A refusal of the client's request.
    pub fn client(code: ErrorCode, message: impl Into<String>) -> Self {
        RoomError::Client {
            code,
            message: message.into(),
        }
    }

    /// A failure of the gateway, with what the client should do.
    pub fn internal(message: impl Into<String>) -> Self {
        RoomError::Internal {
            message: message.into(),
        }
    }

    /// A turn that could not start, told in the reference gateway's words ([`seed::START_FAILED`]).
    pub fn start_failed(cause: RoomError) -> Self {
        RoomError::Seed {
            text: seed::START_FAILED,
            cause: Box::new(cause),
        }
    }

    /// A message the agent failed to process, told in the reference gateway's words
    /// ([`seed::PROMPT_FAILED`]).
    pub fn prompt_failed(cause: RoomError) -> Self {
        RoomError::Seed {
            text: seed::PROMPT_FAILED,
            cause: Box::new(cause),
        }
    }

    /// Whose fault it is.
    pub fn fault(&self) -> Fault {
        match self {
            RoomError::Client { .. } | RoomError::Forbidden => Fault::Client,
            RoomError::Upstream { .. } => Fault::Upstream,
            RoomError::Internal { .. } => Fault::Internal,
            RoomError::Seed { cause, .. } => cause.fault(),
        }
    }

    /// Whether the same request may succeed if sent again unchanged.
    pub fn retryable(&self) -> bool {
        match self {
            RoomError::Client { code, .. } => {
                matches!(code, ErrorCode::RateLimited | ErrorCode::QueueFull)
            }
            RoomError::Forbidden => false,
            RoomError::Upstream { retryable, .. } => *retryable,
            RoomError::Internal { .. } => true,
            RoomError::Seed { cause, .. } => cause.retryable(),
        }
    }

    /// The `error.code` clients see.
    pub fn code(&self) -> ErrorCode {
        match self {
            RoomError::Client { code, .. } => *code,
            // The code the gateway has always sent for another user's conversation.
            RoomError::Forbidden => ErrorCode::Unauthorized,
            RoomError::Upstream { code, .. } => ErrorCode::Upstream(code),
            RoomError::Internal { .. } => ErrorCode::Internal,
            RoomError::Seed { cause, .. } => cause.code(),
        }
    }

    /// The reason clients see.
    pub fn message(&self) -> &str {
        match self {
            RoomError::Client { message, .. }
            | RoomError::Upstream { message, .. }
            | RoomError::Internal { message } => message,
            RoomError::Forbidden => "forbidden: this conversation belongs to another user",
            RoomError::Seed { text, .. } => text,
        }
    }

    /// The gateway's own reason when the reason clients see is the reference gateway's text.
    pub fn detail(&self) -> Option<&str> {
        match self {
            RoomError::Seed { cause, .. } => Some(cause.detail().unwrap_or(cause.message())),
            _ => None,
        }
    }

    /// The payload of an `error` event (and of a refused event's ack): `{error, code,
    /// conversationId?, detail?}`.
    pub fn event_payload(&self, conversation_id: Option<&str>) -> String {
        protocol::error_payload_detailed(
            conversation_id,
            self.code(),
            self.message(),
            self.detail(),
        )
    }

    /// The message of a socket.io `CONNECT_ERROR`: a gateway failure says `internal:` first,
    /// so a client can tell it from a refusal.
    pub fn connect_error(&self) -> String {
        match self {
            RoomError::Internal { message } => format!("internal: {message}"),
            e => e.message().to_string(),
        }
    }
}

/// The HTTP answer to a refused upgrade or route: 403 for another user's conversation, 503 for
/// a gateway failure worth retrying.
impl From<RoomError> for ApiError {
    fn from(e: RoomError) -> Self {
        match e {
            RoomError::Forbidden => ApiError::Forbidden(e.message().to_string()),
            RoomError::Internal { message } => ApiError::InternalRetry(message),
            RoomError::Upstream { message, .. } => ApiError::Unavailable(message),
            RoomError::Seed { cause, .. } => ApiError::from(*cause),
            RoomError::Client { code, message } => match code {
                ErrorCode::Unauthorized => ApiError::Unauthorized(message),
                ErrorCode::PayloadTooLarge => ApiError::PayloadTooLarge(message),
                _ => ApiError::BadRequest(message),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_errors_say_whose_fault_and_map_to_each_wire_in_one_place() {
        let forbidden = RoomError::Forbidden;
        assert_eq!(forbidden.fault(), Fault::Client);
        assert!(!forbidden.retryable());
        assert_eq!(
            forbidden.event_payload(Some("c1")),
            r#"{"code":"unauthorized","conversationId":"c1","error":"forbidden: this conversation belongs to another user"}"#
        );
        assert_eq!(ApiError::from(forbidden).status(), 403);

        let down = RoomError::internal("the gateway could not check the owner; try again");
        assert_eq!(down.fault(), Fault::Internal);
        assert!(down.retryable());
        assert_eq!(
            down.connect_error(),
            "internal: the gateway could not check the owner; try again"
        );
        assert_eq!(
            down.event_payload(None),
            r#"{"code":"internal","error":"the gateway could not check the owner; try again"}"#
        );
        let http = ApiError::from(down);
        assert_eq!((http.status(), http.code()), (503, "internal"));

        let limited = RoomError::client(ErrorCode::RateLimited, "slow down");
        assert_eq!(
            (limited.fault(), limited.retryable()),
            (Fault::Client, true)
        );
        assert_eq!(limited.connect_error(), "slow down");
        let upstream = RoomError::Upstream {
            code: "upstream_overloaded",
            message: "anthropic answered 529: Overloaded".into(),
            retryable: true,
        };
        assert_eq!(upstream.fault(), Fault::Upstream);
        assert_eq!(upstream.code().as_str(), "upstream_overloaded");
    }

    #[test]
    fn seed_situations_say_the_seed_text_and_keep_the_cause_apart() {
        let upstream = RoomError::Upstream {
            code: "upstream_overloaded",
            message: "anthropic answered 529: Overloaded".into(),
            retryable: true,
        };
        let failed = RoomError::prompt_failed(upstream);
        assert_eq!(
            failed.message(),
            "The agent failed to process your message. Please try again."
        );
        assert_eq!(failed.detail(), Some("anthropic answered 529: Overloaded"));
        assert_eq!(failed.code().as_str(), "upstream_overloaded");
        assert_eq!(
            (failed.fault(), failed.retryable()),
            (Fault::Upstream, true)
        );
        let v: serde_json::Value = serde_json::from_str(&failed.event_payload(Some("c1"))).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "conversationId": "c1",
                "code": "upstream_overloaded",
                "error": "The agent failed to process your message. Please try again.",
                "detail": "anthropic answered 529: Overloaded",
            })
        );

        let start = RoomError::start_failed(RoomError::client(
            ErrorCode::ProviderNotConfigured,
            "no configured provider",
        ));
        assert_eq!(
            start.message(),
            "Failed to start agent session. Please try again."
        );
        assert_eq!(start.code().as_str(), "provider_not_configured");
        assert_eq!(start.detail(), Some("no configured provider"));
        assert!(!start.retryable());
        assert_eq!(ApiError::from(start).status(), 400);
        let down = RoomError::start_failed(RoomError::internal("history unavailable"));
        assert_eq!((down.fault(), down.retryable()), (Fault::Internal, true));
        // A plain error has no detail and no `detail` field.
        let plain = RoomError::client(ErrorCode::NoActiveTurn, seed::NO_SESSION_TO_ABORT);
        assert_eq!(plain.detail(), None);
        assert!(!plain.event_payload(None).contains("detail"));
    }

    #[test]
    fn maps_to_status_and_body() {
        let e = ApiError::Unauthorized("missing token".into());
        assert_eq!(e.status(), 401);
        assert_eq!(
            e.body(),
            r#"{"code":"unauthorized","error":"missing token"}"#
        );
        assert_eq!(ApiError::UpgradeRequired.status(), 426);
        assert_eq!(ApiError::Unavailable("no ADMIN_TOKEN".into()).status(), 503);
        let e = ApiError::InternalRetry("try again".into());
        assert_eq!((e.status(), e.code()), (503, "internal"));
    }
}
