//! Redis' glob patterns (KEYS, SCAN MATCH, PSUBSCRIBE, CONFIG GET): `*`,
//! `?`, `[abc]`, `[^a-z]` and `\x`, matched in O(pattern × text) by
//! backtracking to the last `*` only, so a hostile pattern cannot make a
//! replica spin (Redis' recursive matcher needed a nesting limit for that).

/// Whether `text` matches `pattern`.
pub fn matches(pattern: &[u8], text: &[u8]) -> bool {
    let (mut pi, mut ti) = (0, 0);
    // Where to resume after the last `*`: (pattern after it, text position).
    let mut star: Option<(usize, usize)> = None;
    while ti < text.len() {
        if let Some(&p) = pattern.get(pi) {
            if p == b'*' {
                while pattern.get(pi) == Some(&b'*') {
                    pi += 1;
                }
                if pi == pattern.len() {
                    return true;
                }
                star = Some((pi, ti));
                continue;
            }
            let (used, ok) = one(&pattern[pi..], text[ti]);
            if ok {
                pi += used;
                ti += 1;
                continue;
            }
        }
        match star {
            Some((sp, st)) => {
                pi = sp;
                ti = st + 1;
                star = Some((sp, st + 1));
            }
            None => return false,
        }
    }
    while pattern.get(pi) == Some(&b'*') {
        pi += 1;
    }
    pi == pattern.len()
}

/// Matches one text byte against the element at the front of a non-empty
/// pattern: (pattern bytes the element takes, whether it matched).
fn one(p: &[u8], c: u8) -> (usize, bool) {
    match p[0] {
        b'?' => (1, true),
        b'\\' if p.len() >= 2 => (2, p[1] == c),
        b'[' => {
            let mut i = 1;
            let not = p.get(1) == Some(&b'^');
            if not {
                i += 1;
            }
            let mut hit = false;
            // An unterminated class ends with the pattern, as in Redis.
            while let Some(&x) = p.get(i) {
                if x == b']' {
                    break;
                }
                if x == b'\\' && i + 1 < p.len() {
                    i += 1;
                    hit |= p[i] == c;
                } else if p.get(i + 1) == Some(&b'-') && i + 2 < p.len() {
                    let (lo, hi) = (x.min(p[i + 2]), x.max(p[i + 2]));
                    hit |= (lo..=hi).contains(&c);
                    i += 2;
                } else {
                    hit |= x == c;
                }
                i += 1;
            }
            ((i + 1).min(p.len()), hit != not)
        }
        x => (1, x == c),
    }
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn globs_like_redis() {
        let m = |p: &str, t: &str| matches(p.as_bytes(), t.as_bytes());
        assert!(m("*", ""));
        assert!(m("*", "abc"));
        assert!(m("a*", "abc"));
        assert!(!m("a*", "bac"));
        assert!(m("h?llo", "hello"));
        assert!(!m("h?llo", "hllo"));
        assert!(m("h*llo", "hllo"));
        assert!(m("h[ae]llo", "hallo"));
        assert!(!m("h[ae]llo", "hillo"));
        assert!(m("h[^e]llo", "hallo"));
        assert!(!m("h[^e]llo", "hello"));
        assert!(m("h[a-b]llo", "hbllo"));
        assert!(m("h[b-a]llo", "hallo"));
        assert!(m("h\\*llo", "h*llo"));
        assert!(!m("h\\*llo", "hello"));
        assert!(m("*a*b*c", "xxaxxbxxc"));
        assert!(!m("*a*b*c", "xxaxxbxx"));
        assert!(m("user:*:name", "user:12:name"));
        assert!(!m("", "a"));
        assert!(m("", ""));
    }

    #[test]
    fn a_hostile_pattern_is_matched_without_exponential_backtracking() {
        let pattern = "*a".repeat(500) + "b";
        let text = "a".repeat(5000);
        // Exponential backtracking would never finish this.
        assert!(!matches(pattern.as_bytes(), text.as_bytes()));
        assert!(matches(pattern.as_bytes(), (text + "b").as_bytes()));
    }
}
