//! What the Worker decides from a request's URL and headers alone: decoded path segments, the gateway's own origin, and which origins may use which credentials.

use crate::config::Config;
use crate::error::ApiError;

/// How a request presented its credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialSource {
    /// `Authorization` header or `?token=`: a page can only send it on purpose.
    Explicit,
    /// A cookie: the browser attaches it to any request, whichever page makes it.
    Ambient,
}

/// Why a request's origin is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginRefusal {
    /// The origin is not allowed at all.
    NotAllowed(String),
    /// The origin may call the gateway, but not with a cookie.
    NoAmbientCredential(String),
}

impl OriginRefusal {
    /// The reason given to the client.
    pub fn message(&self) -> String {
        match self {
            OriginRefusal::NotAllowed(o) => format!("origin {o} is not in ALLOWED_ORIGINS"),
            OriginRefusal::NoAmbientCredential(o) => format!(
                "origin {o} may not authenticate with a cookie: list it in ALLOWED_ORIGINS or send the token in the Authorization header or auth payload"
            ),
        }
    }
}

/// The origin (`scheme://host[:port]`) of an absolute URL, lowercased, or `None` when it has none.
pub fn origin_of(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if scheme.is_empty() || host.is_empty() {
        return None;
    }
    let scheme = scheme.to_ascii_lowercase();
    let host = host.to_ascii_lowercase();
    // The default port is not part of a browser's Origin header.
    let host = match (scheme.as_str(), host.rsplit_once(':')) {
        ("http", Some((h, "80"))) | ("https", Some((h, "443"))) => h.to_string(),
        _ => host,
    };
    Some(format!("{scheme}://{host}"))
}

/// Whether a request from `origin` may be served, given how it authenticates.
///
/// No `Origin` header: not a browser's cross-site request (browsers send one with every
/// cross-site request and WebSocket), so any credential goes. The gateway's own origin always
/// goes. Any other origin must be allowed by `ALLOWED_ORIGINS`, and for a cookie it must be
/// listed there by name: `*` never lets a cookie through (cross-site WebSocket hijacking).
pub fn check_origin(
    origin: Option<&str>,
    own_origin: Option<&str>,
    config: &Config,
    source: Option<CredentialSource>,
) -> Result<(), OriginRefusal> {
    let Some(origin) = origin.map(|o| o.trim().trim_end_matches('/')) else {
        return Ok(());
    };
    if own_origin.is_some_and(|own| own.eq_ignore_ascii_case(origin)) {
        return Ok(());
    }
    if !config.origin_allowed(origin) {
        return Err(OriginRefusal::NotAllowed(origin.to_string()));
    }
    if source == Some(CredentialSource::Ambient) && !config.origin_listed(origin) {
        return Err(OriginRefusal::NoAmbientCredential(origin.to_string()));
    }
    Ok(())
}

/// Why a path could not be split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadPath;

/// The path's segments after `skip` leading ones, each percent-decoded exactly once.
///
/// `/admin/tokens/alice%20laptop` gives `["tokens", "alice laptop"]` with `skip = 1`; an
/// encoded `/` stays inside its segment. A segment that does not decode to UTF-8 is refused.
pub fn path_segments(path: &str, skip: usize) -> Result<Vec<String>, BadPath> {
    path.trim_start_matches('/')
        .trim_end_matches('/')
        .split('/')
        .skip(skip)
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .map(|d| d.into_owned())
                .map_err(|_| BadPath)
        })
        .collect()
}

/// The decoded pairs of an absolute URL's query (`+` is a space), in order.
///
/// The runtime hands over request URLs already normalised by its WHATWG parser, so the query
/// is read as it stands: parsing the URL again would bring a URL parser and its IDNA tables
/// into the bundle for nothing.
pub fn query_pairs(url: &str) -> Vec<(String, String)> {
    let url = url.split_once('#').map_or(url, |(u, _)| u);
    let query = url.split_once('?').map_or("", |(_, q)| q);
    form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect()
}

/// `base` (an absolute URL without query) with `pairs` as its form-encoded query.
pub fn with_query(base: &str, pairs: &[(&str, &str)]) -> String {
    let start = base.len() + 1;
    form_urlencoded::Serializer::for_suffix(format!("{base}?"), start)
        .extend_pairs(pairs)
        .finish()
}

/// A query parameter's value.
pub fn query_get<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// The token a request presents, and how: `Authorization: Bearer`, then `?token=`, then the
/// `token` cookie.
pub fn presented_token(
    authorization: Option<&str>,
    query: &[(String, String)],
    cookie: Option<&str>,
) -> Option<(String, CredentialSource)> {
    if let Some(t) = authorization.and_then(crate::auth::bearer) {
        return Some((t.to_string(), CredentialSource::Explicit));
    }
    if let Some(t) = query_get(query, "token").filter(|t| !t.is_empty()) {
        return Some((t.to_string(), CredentialSource::Explicit));
    }
    cookie
        .and_then(|c| crate::auth::cookie(c, "token"))
        .map(|t| (t.to_string(), CredentialSource::Ambient))
}

/// The conversation a socket asks for with `?conversationId=`: that id, or a new one
/// (`mint`) when it names none.
pub fn conversation_param(
    query: &[(String, String)],
    mint: impl FnOnce() -> String,
) -> Result<String, ApiError> {
    match query_get(query, "conversationId") {
        None | Some("") => Ok(mint()),
        Some(id) if crate::protocol::valid_id(id) => Ok(id.to_string()),
        Some(_) => Err(ApiError::BadRequest(
            "conversationId must be 1 to 128 printable characters".into(),
        )),
    }
}

/// The `?lastSeq=` a resuming socket sends.
pub fn last_seq_param(query: &[(String, String)]) -> Result<Option<u64>, ApiError> {
    match query_get(query, "lastSeq") {
        None | Some("") => Ok(None),
        Some(s) => s
            .parse::<u64>()
            .map(Some)
            .map_err(|_| ApiError::BadRequest("lastSeq must be a whole number".into())),
    }
}

/// Whether an `Upgrade` header asks for a WebSocket.
pub fn require_websocket(upgrade: Option<&str>) -> Result<(), ApiError> {
    if upgrade.is_some_and(|u| u.eq_ignore_ascii_case("websocket")) {
        Ok(())
    } else {
        Err(ApiError::UpgradeRequired)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_pairs_are_decoded_in_order_and_stop_at_the_fragment() {
        assert_eq!(
            query_pairs("https://gw.example/chat?token=a%20b&x=1+2&token=c&flag#f?x=9"),
            q(&[("token", "a b"), ("x", "1 2"), ("token", "c"), ("flag", "")])
        );
        assert_eq!(query_pairs("https://gw.example/chat"), q(&[]));
        assert_eq!(query_pairs("https://gw.example/chat#a?b=c"), q(&[]));
        assert_eq!(
            query_pairs("https://gw.example/?name=%C3%A9t%C3%A9"),
            q(&[("name", "\u{e9}t\u{e9}")])
        );
    }

    #[test]
    fn with_query_form_encodes_each_pair() {
        assert_eq!(
            with_query(
                "https://rate-limit/admit",
                &[("user", "alice laptop&co"), ("limit", "60")]
            ),
            "https://rate-limit/admit?user=alice+laptop%26co&limit=60"
        );
        assert_eq!(
            with_query("https://rate-limit/warm", &[("user", "\u{e9}")]),
            "https://rate-limit/warm?user=%C3%A9"
        );
    }

    fn q(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_token_is_taken_from_the_header_then_the_query_then_the_cookie() {
        let query = q(&[("token", "fromquery")]);
        assert_eq!(
            presented_token(Some("Bearer fromheader"), &query, Some("token=c")),
            Some(("fromheader".into(), CredentialSource::Explicit))
        );
        assert_eq!(
            presented_token(None, &query, Some("token=c")),
            Some(("fromquery".into(), CredentialSource::Explicit))
        );
        assert_eq!(
            presented_token(None, &q(&[("token", "")]), Some("a=1; token=c")),
            Some(("c".into(), CredentialSource::Ambient))
        );
        assert_eq!(presented_token(Some("Basic x"), &[], None), None);
    }

    #[test]
    fn socket_query_parameters_are_checked() {
        assert_eq!(conversation_param(&[], || "new".into()), Ok("new".into()));
        assert_eq!(
            conversation_param(&q(&[("conversationId", "c1")]), || "new".into()),
            Ok("c1".into())
        );
        assert_eq!(
            conversation_param(&q(&[("conversationId", "bad id")]), || "new".into())
                .unwrap_err()
                .status(),
            400
        );
        assert_eq!(last_seq_param(&q(&[("lastSeq", "12")])), Ok(Some(12)));
        assert_eq!(last_seq_param(&q(&[("lastSeq", "")])), Ok(None));
        assert!(last_seq_param(&q(&[("lastSeq", "-1")])).is_err());
        assert!(require_websocket(Some("WebSocket")).is_ok());
        assert_eq!(require_websocket(None), Err(ApiError::UpgradeRequired));
    }

    fn config(origins: &str) -> Config {
        Config::from_lookup(|k| (k == "ALLOWED_ORIGINS").then(|| origins.to_string())).unwrap()
    }

    #[test]
    fn origins_of_urls() {
        assert_eq!(
            origin_of("https://gw.example/chat?x=1").as_deref(),
            Some("https://gw.example")
        );
        assert_eq!(
            origin_of("http://127.0.0.1:8787/socket.io/").as_deref(),
            Some("http://127.0.0.1:8787")
        );
        assert_eq!(
            origin_of("HTTPS://GW.example:443/").as_deref(),
            Some("https://gw.example")
        );
        assert_eq!(origin_of("not a url"), None);
    }

    #[test]
    fn a_wildcard_never_lets_a_cookie_through_from_another_site() {
        let c = config("*");
        let evil = Some("https://evil.example");
        let own = Some("https://gw.example");
        assert_eq!(
            check_origin(evil, own, &c, Some(CredentialSource::Ambient)),
            Err(OriginRefusal::NoAmbientCredential(
                "https://evil.example".into()
            ))
        );
        assert_eq!(
            check_origin(evil, own, &c, Some(CredentialSource::Explicit)),
            Ok(())
        );
        assert_eq!(check_origin(evil, own, &c, None), Ok(()));
    }

    #[test]
    fn a_listed_origin_may_use_a_cookie() {
        let c = config("https://app.example");
        let app = Some("https://app.example");
        assert_eq!(
            check_origin(app, None, &c, Some(CredentialSource::Ambient)),
            Ok(())
        );
        assert!(check_origin(
            Some("https://evil.example"),
            None,
            &c,
            Some(CredentialSource::Explicit)
        )
        .is_err());
    }

    #[test]
    fn the_gateway_s_own_origin_and_no_origin_always_pass() {
        let c = config("https://app.example");
        let own = Some("http://127.0.0.1:8787");
        for source in [
            None,
            Some(CredentialSource::Explicit),
            Some(CredentialSource::Ambient),
        ] {
            assert_eq!(check_origin(own, own, &c, source), Ok(()));
            assert_eq!(check_origin(None, own, &c, source), Ok(()));
        }
    }

    #[test]
    fn segments_are_decoded_once() {
        assert_eq!(
            path_segments("/admin/tokens/alice%20laptop", 1).unwrap(),
            vec!["tokens", "alice laptop"]
        );
        assert_eq!(
            path_segments("/admin/tokens/a%2520b/", 1).unwrap(),
            vec!["tokens", "a%20b"]
        );
        assert_eq!(
            path_segments("/api/conversations/x%2Fy/messages", 1).unwrap(),
            vec!["conversations", "x/y", "messages"]
        );
        assert_eq!(path_segments("/admin/tokens/%FF", 1), Err(BadPath));
    }
}
