//! Credentials: where a token is read from, how it is stored (SHA-256) and how the admin token is compared (constant time).

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Prefix of every minted API token, so leaked tokens are recognisable by scanners.
pub const TOKEN_PREFIX: &str = "ecg_";

/// Lowercase hex SHA-256 of a token: the only form a token is stored in.
pub fn token_hash(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

/// Builds a token from 32 random bytes supplied by the caller (the core draws no randomness).
pub fn token_from_bytes(random: &[u8; 32]) -> String {
    format!("{TOKEN_PREFIX}{}", hex(random))
}

/// Compares a presented admin token with the configured one without leaking where they differ.
///
/// Both sides are hashed first so the comparison also takes the same time whatever the lengths.
pub fn admin_token_matches(presented: &str, configured: &str) -> bool {
    let a = Sha256::digest(presented.as_bytes());
    let b = Sha256::digest(configured.as_bytes());
    a.as_slice().ct_eq(b.as_slice()).into()
}

/// The token of an `Authorization: Bearer ...` header value.
pub fn bearer(header: &str) -> Option<&str> {
    let (scheme, rest) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = rest.trim();
    (!token.is_empty()).then_some(token)
}

/// The value of a cookie in a `Cookie` header.
pub fn cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|part| {
        let (k, v) = part.trim().split_once('=')?;
        (k == name && !v.is_empty()).then_some(v)
    })
}

/// Whether a stored token row is usable at `now_ms`.
pub fn token_usable(expires_at: Option<i64>, revoked_at: Option<i64>, now_ms: i64) -> bool {
    revoked_at.is_none() && expires_at.is_none_or(|e| e > now_ms)
}

/// Whether a user id is acceptable: short, printable, no spaces.
pub fn valid_user_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && id.chars().all(|c| c.is_ascii_graphic())
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 0xf) as usize] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_sha256_hex() {
        assert_eq!(
            token_hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn tokens_are_prefixed_hex() {
        let t = token_from_bytes(&[0xab; 32]);
        assert!(t.starts_with("ecg_"));
        assert_eq!(t.len(), 4 + 64);
    }

    #[test]
    fn admin_comparison_accepts_only_the_exact_token() {
        assert!(admin_token_matches("s3cret-token", "s3cret-token"));
        assert!(!admin_token_matches("s3cret-toke", "s3cret-token"));
        assert!(!admin_token_matches("s3cret-tokenX", "s3cret-token"));
        assert!(!admin_token_matches("", "s3cret-token"));
        assert!(!admin_token_matches("S3cret-token", "s3cret-token"));
    }

    #[test]
    fn bearer_parsing() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
        assert_eq!(bearer("Bearer"), None);
    }

    #[test]
    fn cookie_parsing() {
        assert_eq!(cookie("a=1; session=xyz; b=2", "session"), Some("xyz"));
        assert_eq!(cookie("a=1", "session"), None);
        assert_eq!(cookie("session=", "session"), None);
    }

    #[test]
    fn token_usability() {
        assert!(token_usable(None, None, 5));
        assert!(token_usable(Some(10), None, 5));
        assert!(!token_usable(Some(5), None, 5));
        assert!(!token_usable(None, Some(1), 5));
    }
}
