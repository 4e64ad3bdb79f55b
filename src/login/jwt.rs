//! JSON Web Tokens as data: splitting and base64url, the header's algorithm and the WebCrypto parameters that verify it, and the claims' checks with the time passed in (no signature math here).

use serde_json::Value;

/// Longest token taken: a JWT that carries a user id and a few claims is far shorter.
pub const MAX_JWT_BYTES: usize = 8 * 1024;
/// Clock skew allowed on `exp` and `nbf`, in seconds.
pub const LEEWAY_S: i64 = 30;

/// The signature algorithms the gateway verifies. `none` and the HMAC family (`HS*`) are
/// refused: the gateway holds no shared secret, and a key set's public key must never be
/// usable as one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Alg {
    Rs256,
    Rs384,
    Rs512,
    Ps256,
    Ps384,
    Ps512,
    Es256,
    Es384,
}

/// The key family an algorithm needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kty {
    Rsa,
    /// An elliptic curve key on the named curve (`P-256`, `P-384`).
    Ec(&'static str),
}

impl Alg {
    /// The algorithm a JOSE header names, or why it is not accepted.
    pub fn parse(name: &str) -> Result<Alg, JwtError> {
        Ok(match name {
            "RS256" => Alg::Rs256,
            "RS384" => Alg::Rs384,
            "RS512" => Alg::Rs512,
            "PS256" => Alg::Ps256,
            "PS384" => Alg::Ps384,
            "PS512" => Alg::Ps512,
            "ES256" => Alg::Es256,
            "ES384" => Alg::Es384,
            other if other.eq_ignore_ascii_case("none") || other.starts_with("HS") => {
                return Err(JwtError::AlgRefused(other.to_string()))
            }
            other => return Err(JwtError::AlgUnsupported(other.to_string())),
        })
    }

    /// The JOSE name.
    pub fn name(self) -> &'static str {
        match self {
            Alg::Rs256 => "RS256",
            Alg::Rs384 => "RS384",
            Alg::Rs512 => "RS512",
            Alg::Ps256 => "PS256",
            Alg::Ps384 => "PS384",
            Alg::Ps512 => "PS512",
            Alg::Es256 => "ES256",
            Alg::Es384 => "ES384",
        }
    }

    /// The key a signature of this algorithm is made with.
    pub fn kty(self) -> Kty {
        match self {
            Alg::Es256 => Kty::Ec("P-256"),
            Alg::Es384 => Kty::Ec("P-384"),
            _ => Kty::Rsa,
        }
    }

    fn hash(self) -> &'static str {
        match self {
            Alg::Rs256 | Alg::Ps256 | Alg::Es256 => "SHA-256",
            Alg::Rs384 | Alg::Ps384 | Alg::Es384 => "SHA-384",
            Alg::Rs512 | Alg::Ps512 => "SHA-512",
        }
    }

    /// The WebCrypto algorithm (as JSON) that `crypto.subtle.importKey` takes with the JWK.
    pub fn import_params(self) -> String {
        match self {
            Alg::Rs256 | Alg::Rs384 | Alg::Rs512 => {
                format!(r#"{{"name":"RSASSA-PKCS1-v1_5","hash":"{}"}}"#, self.hash())
            }
            Alg::Ps256 | Alg::Ps384 | Alg::Ps512 => {
                format!(r#"{{"name":"RSA-PSS","hash":"{}"}}"#, self.hash())
            }
            Alg::Es256 | Alg::Es384 => {
                let Kty::Ec(curve) = self.kty() else {
                    unreachable!("an ECDSA algorithm has a curve")
                };
                format!(r#"{{"name":"ECDSA","namedCurve":"{curve}"}}"#)
            }
        }
    }

    /// The WebCrypto algorithm (as JSON) that `crypto.subtle.verify` takes.
    pub fn verify_params(self) -> String {
        match self {
            Alg::Rs256 | Alg::Rs384 | Alg::Rs512 => r#"{"name":"RSASSA-PKCS1-v1_5"}"#.into(),
            // JWA: the salt is as long as the hash.
            Alg::Ps256 => r#"{"name":"RSA-PSS","saltLength":32}"#.into(),
            Alg::Ps384 => r#"{"name":"RSA-PSS","saltLength":48}"#.into(),
            Alg::Ps512 => r#"{"name":"RSA-PSS","saltLength":64}"#.into(),
            Alg::Es256 | Alg::Es384 => {
                format!(r#"{{"name":"ECDSA","hash":"{}"}}"#, self.hash())
            }
        }
    }

    /// The exact signature length, for the algorithms that have one: a JWS ECDSA signature is
    /// `r || s` (what WebCrypto's ECDSA verify takes), not DER.
    pub fn signature_len(self) -> Option<usize> {
        match self {
            Alg::Es256 => Some(64),
            Alg::Es384 => Some(96),
            _ => None,
        }
    }
}

/// Why a token is refused. The reasons are safe to tell the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwtError {
    /// Not three base64url parts of JSON, or a claim of the wrong type.
    Malformed(&'static str),
    TooLong,
    /// `none` or `HS*`.
    AlgRefused(String),
    AlgUnsupported(String),
    /// The header has `crit` extensions, none of which the gateway understands.
    Critical,
    MissingExp,
    Expired,
    NotYetValid,
    WrongIssuer,
    WrongAudience,
    /// `sub` is missing, not a string, or not an acceptable user id.
    BadSubject,
    /// No key of the key set fits the token's `kid` and algorithm.
    UnknownKey,
    BadSignature,
}

impl JwtError {
    /// The reason given to the client.
    pub fn message(&self) -> String {
        match self {
            JwtError::Malformed(what) => format!("malformed token: {what}"),
            JwtError::TooLong => format!("token longer than {MAX_JWT_BYTES} bytes"),
            JwtError::AlgRefused(a) => format!("token algorithm {a} is not accepted"),
            JwtError::AlgUnsupported(a) => format!("token algorithm {a} is not supported"),
            JwtError::Critical => "token has critical header extensions".into(),
            JwtError::MissingExp => "token has no exp".into(),
            JwtError::Expired => "token has expired".into(),
            JwtError::NotYetValid => "token is not valid yet (nbf)".into(),
            JwtError::WrongIssuer => "token issuer is not accepted".into(),
            JwtError::WrongAudience => "token audience is not accepted".into(),
            JwtError::BadSubject => "token sub is not a valid user id".into(),
            JwtError::UnknownKey => "token signing key is unknown".into(),
            JwtError::BadSignature => "token signature is invalid".into(),
        }
    }
}

/// A token split and decoded, its signature not yet verified.
#[derive(Debug, Clone, PartialEq)]
pub struct Jwt {
    pub alg: Alg,
    pub kid: Option<String>,
    pub claims: Value,
    /// `header.payload` as sent: the bytes the signature covers.
    pub signing_input: String,
    pub signature: Vec<u8>,
}

/// What the claims must say, and the time to judge them at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expect<'a> {
    pub issuer: Option<&'a str>,
    pub audience: Option<&'a str>,
    pub now_ms: i64,
}

/// What valid claims grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// `sub`.
    pub user: String,
    /// `exp`, in ms since the epoch.
    pub expires_at: i64,
}

fn is_b64url(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'-' || c == b'_'
}

/// Whether a bearer has the shape of a compact JWS: three dot-separated base64url parts, the
/// first two non-empty. Anything else is not a JWT (a gateway token, an app session token).
pub fn looks_like_jwt(token: &str) -> bool {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    !h.is_empty() && !p.is_empty() && [h, p, s].iter().all(|part| part.bytes().all(is_b64url))
}

/// Decodes unpadded base64url (RFC 7515); `None` for any other character, padding, an
/// impossible length or non-zero leftover bits.
pub fn b64url_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    (bits < 6 && acc == 0).then_some(out)
}

fn json_part(part: &str, what: &'static str) -> Result<Value, JwtError> {
    let bytes = b64url_decode(part).ok_or(JwtError::Malformed(what))?;
    // `from_str`, as everywhere else in the gateway: one JSON reader in the bundle, not two.
    let text = std::str::from_utf8(&bytes).map_err(|_| JwtError::Malformed(what))?;
    match serde_json::from_str::<Value>(text) {
        Ok(v @ Value::Object(_)) => Ok(v),
        _ => Err(JwtError::Malformed(what)),
    }
}

/// Splits and decodes a compact JWS; refuses what no key could make valid (its algorithm,
/// critical extensions, a signature of the wrong length).
pub fn decode(token: &str) -> Result<Jwt, JwtError> {
    if token.len() > MAX_JWT_BYTES {
        return Err(JwtError::TooLong);
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed("not three parts"));
    };
    let header = json_part(h, "header is not base64url JSON")?;
    let alg = match header.get("alg") {
        Some(Value::String(a)) => Alg::parse(a)?,
        _ => return Err(JwtError::Malformed("header has no alg")),
    };
    let kid = match header.get("kid") {
        None | Some(Value::Null) => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) => return Err(JwtError::Malformed("kid is not a string")),
    };
    if header.get("crit").is_some() {
        return Err(JwtError::Critical);
    }
    let claims = json_part(p, "payload is not base64url JSON")?;
    let signature = b64url_decode(s).ok_or(JwtError::Malformed("signature is not base64url"))?;
    if signature.is_empty() || alg.signature_len().is_some_and(|n| n != signature.len()) {
        return Err(JwtError::BadSignature);
    }
    Ok(Jwt {
        alg,
        kid,
        claims,
        signing_input: format!("{h}.{p}"),
        signature,
    })
}

/// A NumericDate claim in whole seconds; `Err` when present but not a number.
fn numeric_date(claims: &Value, name: &str) -> Result<Option<i64>, JwtError> {
    match claims.get(name) {
        None => Ok(None),
        Some(v) => v
            .as_f64()
            .filter(|f| f.is_finite())
            .map(|f| Some(f.floor() as i64))
            .ok_or(JwtError::Malformed("a time claim is not a number")),
    }
}

/// Checks the claims at `expect.now_ms`: `exp` required and not past (with `LEEWAY_S`), `nbf`
/// not ahead when present, `iss` and `aud` when the gateway expects them (`aud` may be a string
/// or an array), and `sub` a valid user id.
pub fn check_claims(claims: &Value, expect: &Expect<'_>) -> Result<Claims, JwtError> {
    let now_s = expect.now_ms.div_euclid(1000);
    let exp = numeric_date(claims, "exp")?.ok_or(JwtError::MissingExp)?;
    if now_s > exp.saturating_add(LEEWAY_S) {
        return Err(JwtError::Expired);
    }
    if let Some(nbf) = numeric_date(claims, "nbf")? {
        if now_s.saturating_add(LEEWAY_S) < nbf {
            return Err(JwtError::NotYetValid);
        }
    }
    if let Some(issuer) = expect.issuer {
        if claims.get("iss").and_then(Value::as_str) != Some(issuer) {
            return Err(JwtError::WrongIssuer);
        }
    }
    if let Some(audience) = expect.audience {
        let ok = match claims.get("aud") {
            Some(Value::String(a)) => a == audience,
            Some(Value::Array(list)) => list.iter().any(|a| a.as_str() == Some(audience)),
            _ => false,
        };
        if !ok {
            return Err(JwtError::WrongAudience);
        }
    }
    let user = claims
        .get("sub")
        .and_then(Value::as_str)
        .filter(|s| crate::auth::valid_user_id(s))
        .ok_or(JwtError::BadSubject)?;
    Ok(Claims {
        user: user.to_string(),
        expires_at: exp.saturating_mul(1000),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    /// Unpadded base64url, for building tokens in tests.
    pub fn b64url(bytes: &[u8]) -> String {
        const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
            for i in 0..=chunk.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            }
        }
        out
    }

    pub fn token(header: &Value, claims: &Value, signature: &[u8]) -> String {
        format!(
            "{}.{}.{}",
            b64url(header.to_string().as_bytes()),
            b64url(claims.to_string().as_bytes()),
            b64url(signature)
        )
    }

    const NOW: i64 = 1_700_000_000_000;

    fn expect() -> Expect<'static> {
        Expect {
            issuer: Some("https://app.example"),
            audience: Some("chat"),
            now_ms: NOW,
        }
    }

    fn claims() -> Value {
        json!({"sub": "alice", "exp": NOW / 1000 + 600, "iss": "https://app.example", "aud": "chat"})
    }

    #[test]
    fn base64url_round_trips_and_refuses_what_is_not_canonical() {
        for n in 0..40u8 {
            let bytes: Vec<u8> = (0..n).map(|k| k.wrapping_mul(37)).collect();
            assert_eq!(b64url_decode(&b64url(&bytes)), Some(bytes));
        }
        assert_eq!(b64url_decode("aGk"), Some(b"hi".to_vec()));
        assert_eq!(b64url_decode("aGk="), None, "padding");
        assert_eq!(b64url_decode("a+8"), None, "standard alphabet");
        assert_eq!(b64url_decode("a"), None, "impossible length");
        assert_eq!(b64url_decode("aGl"), None, "leftover bits");
    }

    #[test]
    fn the_shape_of_a_jwt() {
        assert!(looks_like_jwt("eyJh.eyJi.c2ln"));
        assert!(
            looks_like_jwt("eyJh.eyJi."),
            "an unsigned token is still a JWT, and refused as one"
        );
        assert!(!looks_like_jwt("ecg_0123abcd"));
        assert!(!looks_like_jwt("a.b"));
        assert!(!looks_like_jwt("a.b.c.d"));
        assert!(!looks_like_jwt(".b.c"));
        assert!(!looks_like_jwt("a b.c.d"));
        assert!(!looks_like_jwt("abc.def+.ghi"));
    }

    #[test]
    fn a_well_formed_token_decodes() {
        let t = token(
            &json!({"alg": "RS256", "kid": "k1", "typ": "JWT"}),
            &claims(),
            &[7; 256],
        );
        let jwt = decode(&t).unwrap();
        assert_eq!(jwt.alg, Alg::Rs256);
        assert_eq!(jwt.kid.as_deref(), Some("k1"));
        assert_eq!(jwt.claims["sub"], "alice");
        assert_eq!(jwt.signature.len(), 256);
        assert_eq!(jwt.signing_input, t.rsplit_once('.').unwrap().0);
    }

    #[test]
    fn none_and_hmac_are_refused_before_any_key_is_looked_at() {
        for alg in ["none", "None", "HS256", "HS512"] {
            let t = token(&json!({"alg": alg}), &claims(), b"sig");
            assert_eq!(decode(&t), Err(JwtError::AlgRefused(alg.into())), "{alg}");
        }
        let unsigned = format!(
            "{}.{}.",
            b64url(br#"{"alg":"none"}"#),
            b64url(claims().to_string().as_bytes())
        );
        assert_eq!(decode(&unsigned), Err(JwtError::AlgRefused("none".into())));
        let t = token(&json!({"alg": "EdDSA"}), &claims(), b"sig");
        assert_eq!(decode(&t), Err(JwtError::AlgUnsupported("EdDSA".into())));
    }

    #[test]
    fn malformed_parts_are_refused() {
        let good = token(&json!({"alg": "ES256"}), &claims(), &[1; 64]);
        let (h, rest) = good.split_once('.').unwrap();
        let (p, s) = rest.split_once('.').unwrap();
        assert!(matches!(decode("a.b"), Err(JwtError::Malformed(_))));
        assert!(matches!(
            decode(&format!("{h}.{p}")),
            Err(JwtError::Malformed(_))
        ));
        assert!(
            matches!(
                decode(&format!("{h}!.{p}.{s}")),
                Err(JwtError::Malformed(_))
            ),
            "bad base64"
        );
        assert!(matches!(
            decode(&format!("{h}.{p}.{s}=")),
            Err(JwtError::Malformed(_))
        ));
        let not_json = b64url(b"not json");
        assert!(matches!(
            decode(&format!("{not_json}.{p}.{s}")),
            Err(JwtError::Malformed(_))
        ));
        assert!(matches!(
            decode(&format!("{h}.{not_json}.{s}")),
            Err(JwtError::Malformed(_))
        ));
        let array = b64url(b"[1]");
        assert!(matches!(
            decode(&format!("{h}.{array}.{s}")),
            Err(JwtError::Malformed(_))
        ));
        let no_alg = b64url(br#"{"typ":"JWT"}"#);
        assert!(matches!(
            decode(&format!("{no_alg}.{p}.{s}")),
            Err(JwtError::Malformed(_))
        ));
        let numeric_kid = b64url(br#"{"alg":"ES256","kid":5}"#);
        assert!(matches!(
            decode(&format!("{numeric_kid}.{p}.{s}")),
            Err(JwtError::Malformed(_))
        ));
        let crit = b64url(br#"{"alg":"ES256","crit":["b64"],"b64":false}"#);
        assert_eq!(decode(&format!("{crit}.{p}.{s}")), Err(JwtError::Critical));
        // ES256 is r || s, 64 bytes; a DER signature (or any other length) cannot be valid.
        let short = token(&json!({"alg": "ES256"}), &claims(), &[1; 70]);
        assert_eq!(decode(&short), Err(JwtError::BadSignature));
        let long = "a".repeat(MAX_JWT_BYTES + 1);
        assert_eq!(decode(&long), Err(JwtError::TooLong));
    }

    #[test]
    fn valid_claims_grant_the_subject_until_exp() {
        let c = check_claims(&claims(), &expect()).unwrap();
        assert_eq!(c.user, "alice");
        assert_eq!(c.expires_at, (NOW / 1000 + 600) * 1000);
        // Without expectations, iss and aud are not looked at.
        let open = Expect {
            issuer: None,
            audience: None,
            now_ms: NOW,
        };
        assert!(check_claims(&json!({"sub": "bob", "exp": NOW / 1000 + 1}), &open).is_ok());
    }

    #[test]
    fn exp_is_required_and_checked_with_leeway() {
        let at = |exp: Value| {
            let mut c = claims();
            c["exp"] = exp;
            check_claims(&c, &expect())
        };
        let now_s = NOW / 1000;
        assert_eq!(at(json!(now_s - LEEWAY_S - 1)), Err(JwtError::Expired));
        assert!(at(json!(now_s - LEEWAY_S + 1)).is_ok(), "within the leeway");
        assert!(
            at(json!(now_s as f64 + 0.5)).is_ok(),
            "a fractional NumericDate"
        );
        assert!(matches!(at(json!("soon")), Err(JwtError::Malformed(_))));
        let mut c = claims();
        c.as_object_mut().unwrap().remove("exp");
        assert_eq!(check_claims(&c, &expect()), Err(JwtError::MissingExp));
    }

    #[test]
    fn nbf_is_checked_when_present() {
        let mut c = claims();
        c["nbf"] = json!(NOW / 1000 + LEEWAY_S + 5);
        assert_eq!(check_claims(&c, &expect()), Err(JwtError::NotYetValid));
        c["nbf"] = json!(NOW / 1000 + 5);
        assert!(check_claims(&c, &expect()).is_ok(), "within the leeway");
        c["nbf"] = json!(true);
        assert!(matches!(
            check_claims(&c, &expect()),
            Err(JwtError::Malformed(_))
        ));
    }

    #[test]
    fn issuer_and_audience_must_match_when_expected() {
        let mut c = claims();
        c["iss"] = json!("https://evil.example");
        assert_eq!(check_claims(&c, &expect()), Err(JwtError::WrongIssuer));
        c.as_object_mut().unwrap().remove("iss");
        assert_eq!(check_claims(&c, &expect()), Err(JwtError::WrongIssuer));
        let mut c = claims();
        c["aud"] = json!("other");
        assert_eq!(check_claims(&c, &expect()), Err(JwtError::WrongAudience));
        c["aud"] = json!(["other", "chat"]);
        assert!(
            check_claims(&c, &expect()).is_ok(),
            "an array naming the audience"
        );
        c["aud"] = json!(["other"]);
        assert_eq!(check_claims(&c, &expect()), Err(JwtError::WrongAudience));
        c["aud"] = json!(5);
        assert_eq!(check_claims(&c, &expect()), Err(JwtError::WrongAudience));
    }

    #[test]
    fn the_subject_must_be_a_valid_user_id_string() {
        for sub in [
            json!(42),
            json!(null),
            json!(""),
            json!("has space"),
            json!(["alice"]),
        ] {
            let mut c = claims();
            c["sub"] = sub.clone();
            assert_eq!(
                check_claims(&c, &expect()),
                Err(JwtError::BadSubject),
                "{sub}"
            );
        }
    }

    #[test]
    fn each_algorithm_maps_to_its_webcrypto_parameters() {
        let params = |a: Alg| {
            let import: Value = serde_json::from_str(&a.import_params()).unwrap();
            let verify: Value = serde_json::from_str(&a.verify_params()).unwrap();
            (import, verify)
        };
        assert_eq!(
            params(Alg::Rs256),
            (
                json!({"name": "RSASSA-PKCS1-v1_5", "hash": "SHA-256"}),
                json!({"name": "RSASSA-PKCS1-v1_5"})
            )
        );
        assert_eq!(
            params(Alg::Ps384),
            (
                json!({"name": "RSA-PSS", "hash": "SHA-384"}),
                json!({"name": "RSA-PSS", "saltLength": 48})
            )
        );
        assert_eq!(
            params(Alg::Es256),
            (
                json!({"name": "ECDSA", "namedCurve": "P-256"}),
                json!({"name": "ECDSA", "hash": "SHA-256"})
            )
        );
        assert_eq!(
            params(Alg::Es384),
            (
                json!({"name": "ECDSA", "namedCurve": "P-384"}),
                json!({"name": "ECDSA", "hash": "SHA-384"})
            )
        );
        for name in [
            "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384",
        ] {
            assert_eq!(Alg::parse(name).unwrap().name(), name);
        }
        assert_eq!(Alg::Rs512.kty(), Kty::Rsa);
        assert_eq!(Alg::Es384.kty(), Kty::Ec("P-384"));
    }
}
