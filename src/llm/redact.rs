//! What a client may read of a provider's error: its class and status, and the provider's words with anything that looks like a credential or an account id masked.

use super::{UpstreamError, UpstreamErrorKind};

/// Prefixes of API keys, session keys and account or project ids that providers echo in errors.
const SECRET_PREFIXES: &[&str] = &[
    "sk-", "sk_", "pk-", "pk_", "rk_", "sess-", "org-", "org_", "proj_", "acct_", "key-", "key_",
    "AKIA", "ghp_", "gho_", "xox", "user-", "ak-",
];

/// The longest provider text passed on.
const MAX_PUBLIC_CHARS: usize = 300;

/// The message a client sees for an upstream failure of `provider`.
///
/// Authentication failures never carry the provider's text (it names the key it refused);
/// other classes carry it masked by [`redact`] and cut to a few hundred characters.
pub fn public_message(provider: &str, error: &UpstreamError) -> String {
    let status = error.status.map(|s| format!(" {s}")).unwrap_or_default();
    if error.kind == UpstreamErrorKind::Auth {
        return format!(
            "{provider} answered{status}: the provider refused the gateway's credentials"
        );
    }
    let text = redact(&error.message);
    let text = crate::text::prefix_chars(&text, MAX_PUBLIC_CHARS);
    format!("{provider} answered{status}: {text}")
}

/// `text` with credential-like words masked as `[redacted]`.
///
/// A word (letters, digits, `-`, `_`, `*`) is masked when it starts with a known key or account
/// prefix, follows `Bearer` (up to the next space), or is 20 or more characters mixing letters and digits.
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut word = String::new();
    let mut after_bearer = false;
    fn flush(word: &mut String, out: &mut String, after_bearer: &mut bool) {
        if word.is_empty() {
            return;
        }
        if *after_bearer || looks_secret(word) {
            out.push_str("[redacted]");
        } else {
            out.push_str(word);
        }
        *after_bearer = word.eq_ignore_ascii_case("bearer");
        word.clear();
    }
    for c in text.chars() {
        // A bearer credential runs to the next space (a JWT has dots).
        let in_credential = after_bearer && !c.is_whitespace();
        if in_credential || c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '*') {
            word.push(c);
        } else {
            flush(&mut word, &mut out, &mut after_bearer);
            out.push(c);
        }
    }
    flush(&mut word, &mut out, &mut after_bearer);
    out
}

fn looks_secret(word: &str) -> bool {
    if SECRET_PREFIXES
        .iter()
        .any(|p| word.starts_with(p) && word.len() > p.len() + 2)
    {
        return true;
    }
    word.len() >= 20
        && word.chars().any(|c| c.is_ascii_digit())
        && word.chars().any(|c| c.is_ascii_alphabetic())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_account_ids_are_masked() {
        assert_eq!(
            redact("Incorrect API key provided: sk-abc***wxyz. You can find your API key at https://platform.openai.com/account/api-keys."),
            "Incorrect API key provided: [redacted]. You can find your API key at https://platform.openai.com/account/api-keys."
        );
        assert_eq!(
            redact("Rate limit reached for gpt-4o in organization org-AbC123xyz on tokens per min"),
            "Rate limit reached for gpt-4o in organization [redacted] on tokens per min"
        );
        assert_eq!(
            redact("Authorization: Bearer abc.def-1 then"),
            "Authorization: Bearer [redacted] then"
        );
        assert_eq!(
            redact("request req_011CSHoEeqs5C35K2UUqR7Fy failed"),
            "request [redacted] failed"
        );
        assert_eq!(
            redact("project proj_x1y2z3 over quota"),
            "project [redacted] over quota"
        );
    }

    #[test]
    fn ordinary_words_stay() {
        let s =
            "This model's maximum context length is 128000 tokens; claude-sonnet-4-5 is overloaded";
        assert_eq!(redact(s), s);
    }

    #[test]
    fn auth_failures_never_carry_the_provider_text() {
        let mut e = UpstreamError::new(
            UpstreamErrorKind::Auth,
            "Incorrect API key provided: sk-live-1234",
        );
        e.status = Some(401);
        let m = public_message("openai", &e);
        assert_eq!(
            m,
            "openai answered 401: the provider refused the gateway's credentials"
        );
        let mut e = UpstreamError::new(
            UpstreamErrorKind::RateLimited,
            "org-Zz9 over limit for sk-proj-99aa",
        );
        e.status = Some(429);
        assert_eq!(
            public_message("openai", &e),
            "openai answered 429: [redacted] over limit for [redacted]"
        );
    }

    #[test]
    fn long_texts_are_cut() {
        let e = UpstreamError::new(UpstreamErrorKind::Server, "x ".repeat(1000));
        assert!(public_message("anthropic", &e).chars().count() < 340);
    }
}
