//! Cutting text to a bound without splitting a character: the gateway's one truncator, by bytes or by characters.

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
