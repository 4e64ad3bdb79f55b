//! Who a request is: which checks its credentials call for and in which order (the app's JWT, the gateway's own token, the app's session), and what a successful one grants (pure).

pub mod jwks;
pub mod jwt;
pub mod session;

use crate::config::LoginConfig;
use crate::http::CredentialSource;

/// What a valid credential grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub user: String,
    /// The SHA-256 of a gateway token, the handle a revocation names it by; `None` for the
    /// app's session and JWTs, which the app revokes (they end at their expiry).
    pub token_hash: Option<String>,
    /// When the credential expires (ms since the epoch): the socket is closed then.
    pub expires_at: Option<i64>,
}

/// One check of a credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// A JWT, verified against the app's key set (`AUTH_JWKS_URL`).
    Jwt(String),
    /// A gateway token, looked up (as its SHA-256) in D1.
    GatewayToken(String),
    /// The app's session, asked of `AUTH_SESSION_URL` with these request headers.
    Session {
        cookie: Option<String>,
        authorization: Option<String>,
    },
}

/// The credentials a request carries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Presented<'a> {
    /// The bearer (`Authorization`, `?token=`, socket.io CONNECT `auth.token`) or the `token`
    /// cookie, and how it came.
    pub token: Option<(&'a str, CredentialSource)>,
    /// The `Cookie` header.
    pub cookie: Option<&'a str>,
    /// The `Authorization` header.
    pub authorization: Option<&'a str>,
}

/// The checks a request's credentials call for, in order, each with how its credential came
/// (the origin rule for that source applies before it runs). The first that grants decides.
///
/// - A bearer shaped like a JWT, with `AUTH_JWKS_URL` set, is verified as one, and that is
///   final: a refused JWT is not tried as anything else.
/// - Any other bearer is looked up as a gateway token.
/// - Then, with `AUTH_SESSION_URL` set, the app's session: the `Cookie` and `Authorization`
///   headers go to the app. A cookie is an ambient credential; when the request's origin may not
///   use one (`cookie_allowed` false) only the `Authorization` header goes, if there is one.
///   A gateway token in `Authorization` is never sent to the app.
pub fn plan(
    presented: Presented<'_>,
    login: &LoginConfig,
    cookie_allowed: bool,
) -> Vec<(Check, CredentialSource)> {
    let mut checks = Vec::new();
    if let Some((token, source)) = presented.token {
        if login.jwks_url.is_some() && jwt::looks_like_jwt(token) {
            return vec![(Check::Jwt(token.to_string()), source)];
        }
        checks.push((Check::GatewayToken(token.to_string()), source));
    }
    if login.session_url.is_some() {
        let authorization = presented
            .authorization
            .filter(|a| {
                crate::auth::bearer(a).is_none_or(|t| !t.starts_with(crate::auth::TOKEN_PREFIX))
            })
            .map(str::to_string);
        let cookie = presented.cookie.map(str::to_string);
        let check = match (cookie, authorization) {
            (None, None) => None,
            (Some(_), Some(a)) if !cookie_allowed => Some((
                Check::Session {
                    cookie: None,
                    authorization: Some(a),
                },
                CredentialSource::Explicit,
            )),
            (cookie, authorization) => {
                let source = if cookie.is_some() {
                    CredentialSource::Ambient
                } else {
                    CredentialSource::Explicit
                };
                Some((
                    Check::Session {
                        cookie,
                        authorization,
                    },
                    source,
                ))
            }
        };
        checks.extend(check);
    }
    checks
}

#[cfg(test)]
mod tests {
    use super::*;
    use CredentialSource::{Ambient, Explicit};

    const JWT: &str = "eyJh.eyJi.c2ln";

    fn login(session: bool, jwks: bool) -> LoginConfig {
        LoginConfig {
            session_url: session.then(|| "https://app.example/api/auth/get-session".into()),
            jwks_url: jwks.then(|| "https://app.example/api/auth/jwks".into()),
            ..LoginConfig::default()
        }
    }

    fn session(cookie: Option<&str>, authorization: Option<&str>) -> Check {
        Check::Session {
            cookie: cookie.map(str::to_string),
            authorization: authorization.map(str::to_string),
        }
    }

    #[test]
    fn without_the_app_s_login_only_gateway_tokens_are_checked() {
        let p = Presented {
            token: Some((JWT, Explicit)),
            cookie: Some("better-auth.session_token=s"),
            authorization: Some("Bearer x"),
        };
        assert_eq!(
            plan(p, &login(false, false), true),
            vec![(Check::GatewayToken(JWT.into()), Explicit)]
        );
        assert_eq!(
            plan(Presented::default(), &login(false, false), true),
            vec![]
        );
    }

    #[test]
    fn a_jwt_is_verified_as_one_and_nothing_else_is_tried() {
        let p = Presented {
            token: Some((JWT, Explicit)),
            cookie: Some("better-auth.session_token=s"),
            authorization: Some("Bearer eyJh.eyJi.c2ln"),
        };
        assert_eq!(
            plan(p, &login(true, true), true),
            vec![(Check::Jwt(JWT.into()), Explicit)]
        );
        // A token that is not a JWT keeps going to the gateway-token lookup.
        let p = Presented {
            token: Some(("ecg_abc", Explicit)),
            ..Presented::default()
        };
        assert_eq!(
            plan(p, &login(false, true), true),
            vec![(Check::GatewayToken("ecg_abc".into()), Explicit)]
        );
    }

    #[test]
    fn the_session_follows_a_gateway_token_that_may_fail() {
        let p = Presented {
            token: Some(("app-session-token", Explicit)),
            cookie: None,
            authorization: Some("Bearer app-session-token"),
        };
        assert_eq!(
            plan(p, &login(true, false), true),
            vec![
                (Check::GatewayToken("app-session-token".into()), Explicit),
                (session(None, Some("Bearer app-session-token")), Explicit),
            ]
        );
        // The gateway's own tokens never go to the app.
        let p = Presented {
            token: Some(("ecg_abc", Explicit)),
            cookie: None,
            authorization: Some("Bearer ecg_abc"),
        };
        assert_eq!(
            plan(p, &login(true, false), true),
            vec![(Check::GatewayToken("ecg_abc".into()), Explicit)]
        );
    }

    #[test]
    fn a_cookie_makes_the_session_ambient_and_is_left_out_where_it_may_not_be_used() {
        let cookie = "better-auth.session_token=s";
        let only_cookie = Presented {
            cookie: Some(cookie),
            ..Presented::default()
        };
        assert_eq!(
            plan(only_cookie, &login(true, false), true),
            vec![(session(Some(cookie), None), Ambient)]
        );
        // From an origin that may not use a cookie, the check stays ambient: the origin rule refuses it.
        assert_eq!(
            plan(only_cookie, &login(true, false), false),
            vec![(session(Some(cookie), None), Ambient)]
        );
        let both = Presented {
            cookie: Some(cookie),
            authorization: Some("Bearer app"),
            ..Presented::default()
        };
        assert_eq!(
            plan(both, &login(true, false), true),
            vec![(session(Some(cookie), Some("Bearer app")), Ambient)]
        );
        assert_eq!(
            plan(both, &login(true, false), false),
            vec![(session(None, Some("Bearer app")), Explicit)]
        );
    }
}
