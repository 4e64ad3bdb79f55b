//! The app's session as data: what a better-auth get-session answer means, the cache key of the headers that asked, and the isolate's bounded cache of answers (time passed in).

use serde_json::Value;
use sha2::{Digest, Sha256};

/// Longest session answer read.
pub const MAX_SESSION_BYTES: usize = 64 * 1024;
/// Answers kept at most; the oldest goes first.
pub const SESSION_CACHE_ENTRIES: usize = 1024;
/// A "not signed in" is remembered at most this long, so a sign-in shows soon.
pub const NEGATIVE_TTL_MS: i64 = 5 * 1000;

/// What the app says of a credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionAnswer {
    SignedIn {
        user: String,
        /// `session.expiresAt`, in ms since the epoch.
        expires_at: Option<i64>,
    },
    /// The reason, for the log.
    NotSignedIn(String),
}

/// Reads the session endpoint's answer at `now_ms`. `Err` (with the detail for the log) when
/// the endpoint failed: a 5xx, or a 2xx that is not JSON. Any other non-2xx, `null`, a missing
/// or invalid `user.id`, or a session whose `expiresAt` is past means not signed in.
pub fn read_answer(status: u16, body: &str, now_ms: i64) -> Result<SessionAnswer, String> {
    let not = |why: &str| Ok(SessionAnswer::NotSignedIn(why.to_string()));
    if status >= 500 {
        return Err(format!("the session endpoint answered {status}"));
    }
    if !(200..300).contains(&status) {
        return not(&format!("the session endpoint answered {status}"));
    }
    let v: Value = serde_json::from_str(body.trim())
        .map_err(|e| format!("the session endpoint answered {status} with no JSON: {e}"))?;
    if v.is_null() {
        return not("no session");
    }
    let Some(user) = v
        .pointer("/user/id")
        .and_then(Value::as_str)
        .filter(|id| crate::auth::valid_user_id(id))
    else {
        return not("the answer has no valid user.id");
    };
    let expires_at = match v.pointer("/session/expiresAt") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => match parse_rfc3339_ms(s) {
            Some(t) => Some(t),
            None => return not("session.expiresAt is not a time"),
        },
        Some(Value::Number(n)) => match n.as_f64() {
            Some(ms) if ms.is_finite() => Some(ms as i64),
            _ => return not("session.expiresAt is not a time"),
        },
        Some(_) => return not("session.expiresAt is not a time"),
    };
    if expires_at.is_some_and(|t| t <= now_ms) {
        return not("the session has expired");
    }
    Ok(SessionAnswer::SignedIn {
        user: user.to_string(),
        expires_at,
    })
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// An RFC 3339 time (`2025-01-31T12:00:00.000Z`, or with an offset) in ms since the epoch.
pub fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let num = |from: usize, len: usize| -> Option<i64> {
        let part = b.get(from..from + len)?;
        part.iter()
            .all(u8::is_ascii_digit)
            .then(|| part.iter().fold(0i64, |n, d| n * 10 + i64::from(d - b'0')))
    };
    let sep = |at: usize, c: &[u8]| b.get(at).is_some_and(|x| c.contains(x));
    if !(sep(4, b"-") && sep(7, b"-") && sep(10, b"Tt ") && sep(13, b":") && sep(16, b":")) {
        return None;
    }
    let (y, mo, d) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
    let (h, mi, sec) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut at = 19;
    let mut ms = 0;
    if sep(at, b".") {
        at += 1;
        let digits = b[at..].iter().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return None;
        }
        // Milliseconds: the first three digits, the rest dropped.
        let first3 = &b[at..at + digits.min(3)];
        ms = first3
            .iter()
            .fold(0i64, |n, c| n * 10 + i64::from(c - b'0'))
            * 10i64.pow(3 - first3.len() as u32);
        at += digits;
    }
    let offset_min = match b.get(at..)? {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let m = num(at + 1, 2)? * 60 + num(at + 4, 2)?;
            if *sign == b'-' {
                -m
            } else {
                m
            }
        }
        _ => return None,
    };
    let secs = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + sec - offset_min * 60;
    Some(secs * 1000 + ms)
}

/// The cache key of a credential: SHA-256 of the header values sent to the session endpoint,
/// so the cache never holds a cookie.
pub fn cache_key(cookie: Option<&str>, authorization: Option<&str>) -> String {
    let mut h = Sha256::new();
    for value in [cookie, authorization] {
        match value {
            // Length-prefixed, so no two pairs of values hash the same input.
            Some(v) => h.update(format!("{}:{v};", v.len()).as_bytes()),
            None => h.update(b"-;"),
        }
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

struct Entry {
    key: String,
    answer: SessionAnswer,
    until: i64,
}

/// Answers of the session endpoint by credential, each until its time is up (`ttl_ms` for a
/// session, capped by its expiry; `NEGATIVE_TTL_MS` at most for "not signed in"), at most
/// `capacity` of them: a new answer in a full cache first drops the expired ones, then the
/// oldest. Kept in the order they came (a list: at 1,024 short keys a scan costs microseconds,
/// and the oldest is the first).
pub struct SessionCache {
    entries: Vec<Entry>,
    capacity: usize,
}

impl SessionCache {
    pub fn new(capacity: usize) -> Self {
        SessionCache {
            entries: Vec::new(),
            capacity,
        }
    }

    fn position(&self, key: &str) -> Option<usize> {
        self.entries.iter().position(|e| e.key == key)
    }

    /// The remembered answer for `key`, if its time is not up at `now`.
    pub fn get(&mut self, key: &str, now: i64) -> Option<SessionAnswer> {
        let at = self.position(key)?;
        if self.entries[at].until > now {
            return Some(self.entries[at].answer.clone());
        }
        self.entries.remove(at);
        None
    }

    /// Remembers an answer; `ttl_ms` 0 remembers nothing.
    pub fn put(&mut self, key: String, answer: SessionAnswer, now: i64, ttl_ms: i64) {
        let until = match &answer {
            SessionAnswer::SignedIn { expires_at, .. } => {
                let until = now.saturating_add(ttl_ms);
                expires_at.map_or(until, |e| until.min(e))
            }
            SessionAnswer::NotSignedIn(_) => now.saturating_add(ttl_ms.min(NEGATIVE_TTL_MS)),
        };
        if ttl_ms <= 0 || until <= now || self.capacity == 0 {
            return;
        }
        if let Some(at) = self.position(&key) {
            self.entries.remove(at);
        }
        if self.entries.len() >= self.capacity {
            self.entries.retain(|e| e.until > now);
            if self.entries.len() >= self.capacity {
                self.entries.remove(0);
            }
        }
        self.entries.push(Entry { key, answer, until });
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: i64 = 1_700_000_000_000;

    fn signed_in(user: &str, expires_at: Option<i64>) -> SessionAnswer {
        SessionAnswer::SignedIn {
            user: user.into(),
            expires_at,
        }
    }

    fn answer(body: Value) -> Result<SessionAnswer, String> {
        read_answer(200, &body.to_string(), NOW)
    }

    #[test]
    fn a_session_with_a_user_signs_in_until_it_expires() {
        let body = json!({
            "session": {"id": "s1", "userId": "u_1", "expiresAt": "2023-11-15T22:13:20.000Z", "token": "t"},
            "user": {"id": "u_1", "email": "a@example.com", "name": "A"}
        });
        assert_eq!(answer(body), Ok(signed_in("u_1", Some(NOW + 86_400_000))));
        let no_expiry = json!({"session": {}, "user": {"id": "u_2"}});
        assert_eq!(answer(no_expiry), Ok(signed_in("u_2", None)));
        let ms = json!({"session": {"expiresAt": NOW + 5}, "user": {"id": "u_3"}});
        assert_eq!(answer(ms), Ok(signed_in("u_3", Some(NOW + 5))));
    }

    #[test]
    fn null_empty_and_expired_answers_are_not_signed_in() {
        let not = |r: Result<SessionAnswer, String>| matches!(r, Ok(SessionAnswer::NotSignedIn(_)));
        assert!(not(read_answer(200, "null", NOW)));
        assert!(not(answer(json!({}))));
        assert!(not(answer(json!({"session": null, "user": null}))));
        assert!(not(answer(json!({"user": {"id": 42}}))), "a non-string id");
        assert!(not(answer(json!({"user": {"id": ""}}))));
        assert!(not(answer(json!({"user": {"id": "has space"}}))));
        assert!(not(answer(json!([1, 2]))));
        let expired =
            json!({"session": {"expiresAt": "2023-11-14T22:13:19.999Z"}, "user": {"id": "u"}});
        assert!(not(answer(expired)));
        let unreadable = json!({"session": {"expiresAt": "tomorrow"}, "user": {"id": "u"}});
        assert!(not(answer(unreadable)));
        for status in [302, 401, 403, 404] {
            assert!(not(read_answer(status, "", NOW)), "{status}");
        }
    }

    #[test]
    fn a_failing_endpoint_is_not_a_refusal() {
        assert!(read_answer(500, "{}", NOW).is_err());
        assert!(read_answer(503, "", NOW).is_err());
        assert!(read_answer(200, "<html>", NOW).is_err());
    }

    #[test]
    fn rfc3339_times() {
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339_ms("2023-11-14T22:13:20Z"), Some(NOW));
        assert_eq!(parse_rfc3339_ms("2023-11-14T22:13:20.5Z"), Some(NOW + 500));
        assert_eq!(
            parse_rfc3339_ms("2023-11-14T22:13:20.123456Z"),
            Some(NOW + 123)
        );
        assert_eq!(parse_rfc3339_ms("2023-11-15T00:13:20+02:00"), Some(NOW));
        assert_eq!(parse_rfc3339_ms("2023-11-14T21:13:20-01:00"), Some(NOW));
        assert_eq!(
            parse_rfc3339_ms("2000-02-29T00:00:00Z"),
            Some(951_782_400_000)
        );
        for bad in [
            "",
            "2023-11-14",
            "2023-11-14T22:13:20",
            "2023-13-14T22:13:20Z",
            "2023-11-14T22:13:20.Z",
            "2023-11-14T22:13:20Zjunk",
            "2023-11-14T2x:13:20Z",
        ] {
            assert_eq!(parse_rfc3339_ms(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_cache_key_hashes_the_headers_and_tells_them_apart() {
        let k = cache_key(Some("better-auth.session_token=abc"), None);
        assert_eq!(k.len(), 64);
        assert!(!k.contains("abc"));
        assert_ne!(k, cache_key(None, Some("better-auth.session_token=abc")));
        assert_ne!(
            cache_key(Some("a"), Some("b")),
            cache_key(Some("a;"), Some(""))
        );
        assert_eq!(k, cache_key(Some("better-auth.session_token=abc"), None));
    }

    #[test]
    fn answers_are_kept_for_their_time() {
        let mut c = SessionCache::new(8);
        c.put("a".into(), signed_in("u", None), NOW, 60_000);
        assert_eq!(c.get("a", NOW + 59_999), Some(signed_in("u", None)));
        assert_eq!(c.get("a", NOW + 60_000), None);
        assert!(c.is_empty(), "an expired entry is dropped when read");
        // A session that ends sooner is kept only until it ends.
        c.put("b".into(), signed_in("u", Some(NOW + 1000)), NOW, 60_000);
        assert!(c.get("b", NOW + 999).is_some());
        assert_eq!(c.get("b", NOW + 1000), None);
        // "Not signed in" for a shorter time.
        c.put(
            "n".into(),
            SessionAnswer::NotSignedIn("no".into()),
            NOW,
            60_000,
        );
        assert!(c.get("n", NOW + NEGATIVE_TTL_MS - 1).is_some());
        assert_eq!(c.get("n", NOW + NEGATIVE_TTL_MS), None);
        // 0 disables the cache.
        c.put("z".into(), signed_in("u", None), NOW, 0);
        assert_eq!(c.get("z", NOW), None);
    }

    #[test]
    fn a_full_cache_drops_expired_answers_then_the_oldest() {
        let mut c = SessionCache::new(3);
        c.put("a".into(), signed_in("a", None), NOW, 60_000);
        c.put("b".into(), signed_in("b", None), NOW, 1_000);
        c.put("c".into(), signed_in("c", None), NOW, 60_000);
        // b has expired: it goes, the others stay.
        c.put("d".into(), signed_in("d", None), NOW + 2_000, 60_000);
        assert_eq!(c.len(), 3);
        assert!(c.get("a", NOW + 2_000).is_some() && c.get("b", NOW + 2_000).is_none());
        // Nothing expired: the oldest (a) goes.
        c.put("e".into(), signed_in("e", None), NOW + 3_000, 60_000);
        assert_eq!(c.len(), 3);
        assert!(c.get("a", NOW + 3_000).is_none());
        for k in ["c", "d", "e"] {
            assert!(c.get(k, NOW + 3_000).is_some(), "{k}");
        }
        // Replacing an entry does not evict another.
        c.put("e".into(), signed_in("e2", None), NOW + 3_000, 60_000);
        assert_eq!(c.len(), 3);
        assert_eq!(c.get("e", NOW + 3_000), Some(signed_in("e2", None)));
    }
}
