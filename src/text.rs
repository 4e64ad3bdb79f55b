//! Cutting text and bodies to a bound without splitting a character: the gateway's one truncator, by bytes or by characters, and the bounded reader of answers.

/// The longest prefix of `s` of at most `max_bytes` bytes that ends on a character boundary.
pub fn prefix_bytes(s: &str, max_bytes: usize) -> &str {
    if s.len() <= max_bytes {
        return s;
    }
    let mut cut = max_bytes;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    &s[..cut]
}

/// The prefix of `s` of at most `max_chars` characters.
pub fn prefix_chars(s: &str, max_chars: usize) -> &str {
    match s.char_indices().nth(max_chars) {
        Some((cut, _)) => &s[..cut],
        None => s,
    }
}

/// Bytes as text, cutting a character split by a bound.
pub fn lossy_text(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) => s.to_string(),
        Err(e) if e.error_len().is_none() => {
            // Only the last character is incomplete: the bound cut it.
            String::from_utf8_lossy(&bytes[..e.valid_up_to()]).into_owned()
        }
        Err(_) => String::from_utf8_lossy(bytes).into_owned(),
    }
}

/// A body read up to a bound: at most `limit` bytes are kept, and the reader stops (cancelling
/// the rest) as soon as the bound is passed, so an endless or huge answer costs `limit` bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bounded {
    pub bytes: Vec<u8>,
    /// More bytes followed than were kept.
    pub truncated: bool,
    limit: usize,
}

impl Bounded {
    /// An empty body bounded to `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Bounded {
            bytes: Vec::new(),
            truncated: false,
            limit,
        }
    }

    /// Adds a chunk; false once the bound is passed, when reading must stop.
    pub fn push(&mut self, chunk: &[u8]) -> bool {
        let room = self.limit - self.bytes.len();
        if chunk.len() > room {
            self.bytes.extend_from_slice(&chunk[..room]);
            self.truncated = true;
            return false;
        }
        self.bytes.extend_from_slice(chunk);
        true
    }

    /// The kept bytes as text.
    pub fn text(&self) -> String {
        lossy_text(&self.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn cuts_on_character_boundaries() {
        assert_eq!(prefix_bytes("héllo", 2), "h");
        assert_eq!(prefix_bytes("héllo", 3), "hé");
        assert_eq!(prefix_bytes("abc", 10), "abc");
        assert_eq!(prefix_chars("héllo", 2), "hé");
        assert_eq!(prefix_chars("ab", 5), "ab");
        assert_eq!(prefix_chars("", 0), "");
    }

    #[test]
    fn a_bounded_body_keeps_the_first_bytes_and_says_it_was_cut() {
        let mut b = Bounded::new(5);
        assert!(b.push(b"ab"));
        assert!(!b.push(b"cdefg"));
        assert_eq!((b.text().as_str(), b.truncated), ("abcde", true));
        let mut exact = Bounded::new(2);
        assert!(exact.push(b"ab") && !exact.truncated);
        // A character split by the bound is dropped, not mangled.
        let mut split = Bounded::new(2);
        split.push("hé".as_bytes());
        assert_eq!(split.text(), "h");
        assert_eq!(lossy_text(b"a\xffb"), "a\u{fffd}b");
    }

    proptest! {
        #[test]
        fn prefixes_are_prefixes_within_the_bound(s in "\\PC{0,40}", n in 0usize..60) {
            let b = prefix_bytes(&s, n);
            prop_assert!(s.starts_with(b) && b.len() <= n);
            prop_assert!(b.len() == s.len() || s.len() > n);
            let c = prefix_chars(&s, n);
            prop_assert!(s.starts_with(c) && c.chars().count() == n.min(s.chars().count()));
        }
    }
}
