//! HTTP-facing errors: one enum, mapped to a status and a JSON body in one place.

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

#[cfg(test)]
mod tests {
    use super::*;

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
