//! A JSON Web Key Set as data: which of its keys may verify which algorithm, the key a token names, and when the set is fetched again (time passed in).

use super::jwt::{Alg, Kty};
use serde_json::{json, Map, Value};

/// How long a fetched key set is used before it is fetched again.
pub const JWKS_TTL_MS: i64 = 10 * 60 * 1000;
/// A token naming a key the set lacks makes the gateway fetch the set again at most this often,
/// so a flood of made-up `kid`s cannot make it hammer the key server.
pub const JWKS_MIN_REFRESH_MS: i64 = 30 * 1000;
/// After a failed fetch, the next is tried no sooner than this.
pub const JWKS_RETRY_MS: i64 = 5 * 1000;
/// Longest key set answer read.
pub const MAX_JWKS_BYTES: usize = 256 * 1024;

/// A public signing key of the set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    pub kid: Option<String>,
    pub kty: Kty,
    /// The algorithm the set pins the key to, if it does.
    pub alg: Option<String>,
    /// The key reduced to its public members (`kty`, `crv`, `n`, `e`, `x`, `y`), as JSON for
    /// `crypto.subtle.importKey("jwk", ...)`: `use`, `key_ops`, `alg` and private members never
    /// reach WebCrypto.
    pub jwk: String,
}

/// The usable keys of a set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Jwks {
    pub keys: Vec<Key>,
}

/// Why no key verifies a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// The set has no such key (or none fits, for a token without `kid`): a newer set may.
    Unknown,
    /// The named key exists but is of another kind or pinned to another algorithm.
    Mismatch,
    /// No `kid`, and several keys fit.
    Ambiguous,
}

fn text(key: &Map<String, Value>, name: &str) -> Option<String> {
    key.get(name)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// One member of `keys`, when it is a public signing key of a supported kind.
fn key(value: &Value) -> Option<Key> {
    let k = value.as_object()?;
    if k.get("use").is_some_and(|u| u.as_str() != Some("sig")) {
        return None;
    }
    if let Some(ops) = k.get("key_ops") {
        if !ops
            .as_array()
            .is_some_and(|ops| ops.iter().any(|o| o.as_str() == Some("verify")))
        {
            return None;
        }
    }
    let (kty, jwk) = match k.get("kty").and_then(Value::as_str)? {
        "RSA" => {
            let (n, e) = (text(k, "n")?, text(k, "e")?);
            (Kty::Rsa, json!({ "kty": "RSA", "n": n, "e": e }))
        }
        "EC" => {
            let curve = match k.get("crv").and_then(Value::as_str)? {
                "P-256" => "P-256",
                "P-384" => "P-384",
                _ => return None,
            };
            let (x, y) = (text(k, "x")?, text(k, "y")?);
            (
                Kty::Ec(curve),
                json!({ "kty": "EC", "crv": curve, "x": x, "y": y }),
            )
        }
        // Symmetric ("oct") and other keys are never used.
        _ => return None,
    };
    Some(Key {
        kid: text(k, "kid"),
        kty,
        alg: text(k, "alg"),
        jwk: jwk.to_string(),
    })
}

/// Reads a key set answer; keys the gateway cannot use are left out, not errors.
pub fn parse(body: &str) -> Result<Jwks, String> {
    let v: Value =
        serde_json::from_str(body).map_err(|e| format!("the key set is not JSON: {e}"))?;
    let keys = v
        .get("keys")
        .and_then(Value::as_array)
        .ok_or("the key set has no keys array")?;
    Ok(Jwks {
        keys: keys.iter().filter_map(key).collect(),
    })
}

impl Key {
    /// Whether this key may verify a signature made with `alg`.
    pub fn fits(&self, alg: Alg) -> bool {
        self.kty == alg.kty() && self.alg.as_deref().is_none_or(|a| a == alg.name())
    }
}

impl Jwks {
    /// The key that verifies a token of `alg` naming `kid`. A token without `kid` is verified by
    /// the one key that fits its algorithm, if there is exactly one.
    pub fn find(&self, kid: Option<&str>, alg: Alg) -> Result<&Key, Lookup> {
        match kid {
            Some(kid) => {
                let mut named = self
                    .keys
                    .iter()
                    .filter(|k| k.kid.as_deref() == Some(kid))
                    .peekable();
                if named.peek().is_none() {
                    return Err(Lookup::Unknown);
                }
                named.find(|k| k.fits(alg)).ok_or(Lookup::Mismatch)
            }
            None => {
                let mut fitting = self.keys.iter().filter(|k| k.fits(alg));
                match (fitting.next(), fitting.next()) {
                    (Some(k), None) => Ok(k),
                    (None, _) => Err(Lookup::Unknown),
                    (Some(_), Some(_)) => Err(Lookup::Ambiguous),
                }
            }
        }
    }
}

/// When the isolate's copy of the key set was fetched and last asked for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Freshness {
    /// When the set in hand was fetched (`None`: no set yet).
    pub fetched_at: Option<i64>,
    /// When a fetch was last started, successful or not.
    pub attempted_at: Option<i64>,
    /// When a token naming an unknown key last made the set be fetched again.
    pub refreshed_at: Option<i64>,
}

/// Time since `t`; forever when it never happened.
fn since(t: Option<i64>, now: i64) -> i64 {
    t.map_or(i64::MAX, |t| now.saturating_sub(t))
}

impl Freshness {
    fn since_attempt(&self, now: i64) -> i64 {
        since(self.attempted_at, now)
    }

    /// Whether a token must wait for a fetch before its key is looked up: there is no set, or it
    /// is older than `JWKS_TTL_MS`, and no fetch was tried in the last `JWKS_RETRY_MS` (a stale
    /// set is used meanwhile, and when the key server fails).
    pub fn must_fetch(&self, now: i64) -> bool {
        let stale = self
            .fetched_at
            .is_none_or(|t| now.saturating_sub(t) >= JWKS_TTL_MS);
        stale && self.since_attempt(now) >= JWKS_RETRY_MS
    }

    /// Whether a token naming a key the set lacks may fetch the set again: at most once per
    /// `JWKS_MIN_REFRESH_MS` (a key rotated in just after the set was fetched is found at once,
    /// and a flood of made-up kids after it costs nothing more).
    pub fn may_refresh(&self, now: i64) -> bool {
        since(self.refreshed_at, now) >= JWKS_MIN_REFRESH_MS
    }

    /// An unknown key makes the set be fetched again.
    pub fn refreshing(&mut self, now: i64) {
        self.refreshed_at = Some(now);
    }

    /// A fetch starts.
    pub fn attempted(&mut self, now: i64) {
        self.attempted_at = Some(now);
    }

    /// A fetch brought a set.
    pub fn fetched(&mut self, now: i64) {
        self.fetched_at = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set() -> Jwks {
        parse(
            &json!({"keys": [
                {"kty": "RSA", "kid": "r1", "alg": "RS256", "use": "sig", "n": "AQAB-n", "e": "AQAB", "d": "private!"},
                {"kty": "EC", "kid": "e1", "crv": "P-256", "x": "xx", "y": "yy", "key_ops": ["verify"]},
                {"kty": "EC", "kid": "e2", "crv": "P-521", "x": "xx", "y": "yy"},
                {"kty": "oct", "kid": "h1", "k": "c2VjcmV0"},
                {"kty": "RSA", "kid": "enc", "use": "enc", "n": "n", "e": "e"},
                {"kty": "RSA", "kid": "wrap", "key_ops": ["wrapKey"], "n": "n", "e": "e"},
                {"kty": "RSA", "kid": "broken", "n": "n"},
                "not a key"
            ]})
            .to_string(),
        )
        .unwrap()
    }

    #[test]
    fn only_public_signing_keys_of_supported_kinds_are_kept() {
        let s = set();
        let kids: Vec<_> = s.keys.iter().map(|k| k.kid.as_deref().unwrap()).collect();
        assert_eq!(kids, ["r1", "e1"]);
        // Only public members reach WebCrypto.
        let jwk: Value = serde_json::from_str(&s.keys[0].jwk).unwrap();
        assert_eq!(jwk, json!({"kty": "RSA", "n": "AQAB-n", "e": "AQAB"}));
        let jwk: Value = serde_json::from_str(&s.keys[1].jwk).unwrap();
        assert_eq!(
            jwk,
            json!({"kty": "EC", "crv": "P-256", "x": "xx", "y": "yy"})
        );
        assert!(parse("[]").is_err());
        assert!(parse("nope").is_err());
        assert_eq!(parse(r#"{"keys": []}"#).unwrap(), Jwks::default());
    }

    #[test]
    fn a_kid_finds_its_key_when_it_fits_the_algorithm() {
        let s = set();
        assert_eq!(
            s.find(Some("r1"), Alg::Rs256).unwrap().kid.as_deref(),
            Some("r1")
        );
        assert_eq!(
            s.find(Some("e1"), Alg::Es256).unwrap().kid.as_deref(),
            Some("e1")
        );
        assert_eq!(s.find(Some("nobody"), Alg::Rs256), Err(Lookup::Unknown));
        // Pinned to RS256: not for PS256. An EC key is not an RSA key, nor another curve's.
        assert_eq!(s.find(Some("r1"), Alg::Ps256), Err(Lookup::Mismatch));
        assert_eq!(s.find(Some("e1"), Alg::Rs256), Err(Lookup::Mismatch));
        assert_eq!(s.find(Some("e1"), Alg::Es384), Err(Lookup::Mismatch));
        // A symmetric key is never found, whatever the token says.
        assert_eq!(s.find(Some("h1"), Alg::Rs256), Err(Lookup::Unknown));
    }

    #[test]
    fn without_a_kid_the_one_fitting_key_is_used() {
        let s = set();
        assert_eq!(s.find(None, Alg::Es256).unwrap().kid.as_deref(), Some("e1"));
        assert_eq!(s.find(None, Alg::Es384), Err(Lookup::Unknown));
        let two = parse(
            &json!({"keys": [
                {"kty": "RSA", "kid": "a", "n": "n", "e": "e"},
                {"kty": "RSA", "kid": "b", "n": "n", "e": "e"}
            ]})
            .to_string(),
        )
        .unwrap();
        assert_eq!(two.find(None, Alg::Rs256), Err(Lookup::Ambiguous));
    }

    #[test]
    fn the_set_is_fetched_first_then_after_its_ttl() {
        let mut f = Freshness::default();
        assert!(f.must_fetch(0));
        f.attempted(0);
        assert!(!f.must_fetch(1000), "a failed fetch is not retried at once");
        assert!(f.must_fetch(JWKS_RETRY_MS));
        f.attempted(JWKS_RETRY_MS);
        f.fetched(JWKS_RETRY_MS);
        assert!(!f.must_fetch(JWKS_RETRY_MS + JWKS_TTL_MS - 1));
        assert!(f.must_fetch(JWKS_RETRY_MS + JWKS_TTL_MS));
    }

    #[test]
    fn unknown_kids_refresh_the_set_at_most_once_per_interval() {
        let mut f = Freshness::default();
        f.attempted(1000);
        f.fetched(1000);
        // A key rotated in right after the set was fetched is looked for at once.
        assert!(f.may_refresh(3000));
        f.refreshing(3000);
        f.attempted(3000);
        f.fetched(3000);
        // A flood of made-up kids right after: no more fetches until the interval passes.
        for t in 0..100 {
            assert!(!f.may_refresh(3000 + t * 100));
        }
        assert!(!f.may_refresh(3000 + JWKS_MIN_REFRESH_MS - 1));
        assert!(f.may_refresh(3000 + JWKS_MIN_REFRESH_MS));
    }
}
