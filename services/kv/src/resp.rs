//! RESP framing: an incremental request parser (multibulk and inline, as
//! Redis accepts them) and reply encoders for RESP2 and RESP3.
//!
//! The parser never allocates from a length the client declared before the
//! bytes are there, and every length is bounded, so a hostile client cannot
//! make a replica reserve memory it never sends.

use std::io::Write;

/// The longest bulk argument accepted (Redis allows 512 MB; a replicated
/// store keeps every byte on every replica and in every snapshot, so we
/// refuse much earlier).
pub const MAX_BULK_LEN: usize = 16 * 1024 * 1024;

/// The most arguments in one multibulk request (Redis's own limit).
pub const MAX_ARGS: usize = 1024 * 1024;

/// The longest inline request or `*`/`$` header line (Redis's 64 KiB).
pub const MAX_INLINE: usize = 64 * 1024;

/// The most bytes an unfinished request may hold in a connection's input
/// buffer before the connection is refused and closed.
pub const MAX_REQUEST: usize = 32 * 1024 * 1024;

/// What the front of an input buffer holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// A complete request and the bytes it took.
    Command(Vec<Vec<u8>>, usize),
    /// Bytes that carry no request (`*0`, `*-1`, a blank inline line).
    Nothing(usize),
    /// Not enough bytes yet.
    Incomplete,
    /// A malformed frame: the text of the error reply (without `-`).
    Error(String),
}

/// How far an unfinished multibulk request has been parsed, so the next
/// bytes resume there instead of re-reading every argument header: a
/// request of a million small arguments trickling in would otherwise cost
/// quadratic time on every replica. A cache only: parsing from scratch gives
/// the same result, so it is left out of snapshots.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    /// Arguments announced by the `*` header (0: no request under way).
    count: usize,
    /// (start, length) of each argument already complete.
    spans: Vec<(usize, usize)>,
    /// Where the next argument's header starts.
    pos: usize,
}

/// Parses one request from the front of `buf`, resuming from `progress`
/// (which must come from the previous call on the same request, with `buf`
/// starting at the same byte) and leaving it ready for the next call.
pub fn parse(buf: &[u8], progress: &mut Progress) -> Parsed {
    parse_limited(buf, progress, MAX_BULK_LEN)
}

/// [`parse`] with the longest bulk argument accepted set to `max_bulk`
/// bytes (the service's configured [`tandem_core::sdk::Limits::max_value`]).
pub fn parse_limited(buf: &[u8], progress: &mut Progress, max_bulk: usize) -> Parsed {
    if progress.count > 0 {
        return parse_multibulk(buf, progress, max_bulk);
    }
    match buf.first() {
        None => Parsed::Incomplete,
        Some(b'*') => parse_multibulk(buf, progress, max_bulk),
        Some(_) => parse_inline(buf),
    }
}

/// Finds the `\r` that ends a header line starting at `from`, if the `\n`
/// after it is there too. `Err` if the line is too long to ever be valid.
fn header_end(buf: &[u8], from: usize, what: &str) -> Result<Option<usize>, String> {
    let rest = buf.get(from..).unwrap_or_default();
    match rest.iter().position(|&b| b == b'\r') {
        Some(cr) if cr + 1 < rest.len() => Ok(Some(from + cr)),
        Some(_) => Ok(None),
        None if rest.len() > MAX_INLINE => {
            Err(format!("Protocol error: too big {what} count string"))
        }
        None => Ok(None),
    }
}

fn parse_multibulk(buf: &[u8], progress: &mut Progress, max_bulk: usize) -> Parsed {
    let result = multibulk_step(buf, progress, max_bulk);
    if result != Parsed::Incomplete {
        *progress = Progress::default();
    }
    result
}

fn multibulk_step(buf: &[u8], p: &mut Progress, max_bulk: usize) -> Parsed {
    if p.count == 0 {
        let end = match header_end(buf, 1, "mbulk") {
            Ok(Some(e)) => e,
            Ok(None) => return Parsed::Incomplete,
            Err(e) => return Parsed::Error(e),
        };
        let count = match parse_i64(&buf[1..end]) {
            Some(n) if n <= MAX_ARGS as i64 => n,
            _ => return Parsed::Error("Protocol error: invalid multibulk length".into()),
        };
        if count <= 0 {
            return Parsed::Nothing(end + 2);
        }
        p.count = count as usize;
        p.pos = end + 2;
    }
    // Lengths first: nothing is copied until the whole request is there.
    while p.spans.len() < p.count {
        let pos = p.pos;
        match buf.get(pos) {
            None => return Parsed::Incomplete,
            Some(b'$') => {}
            Some(&c) => {
                return Parsed::Error(format!("Protocol error: expected '$', got '{}'", c as char))
            }
        }
        let end = match header_end(buf, pos + 1, "bulk") {
            Ok(Some(e)) => e,
            Ok(None) => return Parsed::Incomplete,
            Err(e) => return Parsed::Error(e),
        };
        let len = match parse_i64(&buf[pos + 1..end]) {
            Some(n) if n >= 0 && (n as u64) <= max_bulk as u64 => n as usize,
            _ => return Parsed::Error("Protocol error: invalid bulk length".into()),
        };
        let start = end + 2;
        // Like Redis, the two bytes after the payload are skipped unchecked.
        if buf.len() < start + len + 2 {
            return Parsed::Incomplete;
        }
        p.spans.push((start, len));
        p.pos = start + len + 2;
    }
    let args = p
        .spans
        .iter()
        .map(|&(s, l)| buf[s..s + l].to_vec())
        .collect();
    Parsed::Command(args, p.pos)
}

fn parse_inline(buf: &[u8]) -> Parsed {
    let Some(nl) = buf.iter().position(|&b| b == b'\n') else {
        return if buf.len() > MAX_INLINE {
            Parsed::Error("Protocol error: too big inline request".into())
        } else {
            Parsed::Incomplete
        };
    };
    if nl > MAX_INLINE {
        return Parsed::Error("Protocol error: too big inline request".into());
    }
    let line = &buf[..nl];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    match split_args(line) {
        None => Parsed::Error("Protocol error: unbalanced quotes in request".into()),
        Some(args) if args.is_empty() => Parsed::Nothing(nl + 1),
        Some(args) => Parsed::Command(args, nl + 1),
    }
}

/// Redis's `sdssplitargs`: words separated by blanks, `"..."` with `\n`,
/// `\r`, `\t`, `\b`, `\a`, `\\`, `\"` and `\xHH` escapes, `'...'` with
/// `\'`. A closing quote must be followed by a blank or the end. `None` on
/// unbalanced quotes.
pub fn split_args(line: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut args = Vec::new();
    let mut i = 0;
    let at = |i: usize| line.get(i).copied();
    loop {
        while at(i).is_some_and(|c| c.is_ascii_whitespace()) {
            i += 1;
        }
        let Some(_) = at(i) else { return Some(args) };
        let mut cur = Vec::new();
        let (mut inq, mut insq) = (false, false);
        loop {
            let c = at(i);
            if inq {
                match c {
                    None => return None,
                    Some(b'\\')
                        if at(i + 1) == Some(b'x')
                            && hex(at(i + 2)).is_some()
                            && hex(at(i + 3)).is_some() =>
                    {
                        cur.push(hex(at(i + 2))? * 16 + hex(at(i + 3))?);
                        i += 3;
                    }
                    Some(b'\\') if at(i + 1).is_some() => {
                        i += 1;
                        cur.push(match at(i)? {
                            b'n' => b'\n',
                            b'r' => b'\r',
                            b't' => b'\t',
                            b'b' => 8,
                            b'a' => 7,
                            o => o,
                        });
                    }
                    Some(b'"') => {
                        if at(i + 1).is_some_and(|c| !c.is_ascii_whitespace()) {
                            return None;
                        }
                        i += 1;
                        break;
                    }
                    Some(o) => cur.push(o),
                }
            } else if insq {
                match c {
                    None => return None,
                    Some(b'\\') if at(i + 1) == Some(b'\'') => {
                        i += 1;
                        cur.push(b'\'');
                    }
                    Some(b'\'') => {
                        if at(i + 1).is_some_and(|c| !c.is_ascii_whitespace()) {
                            return None;
                        }
                        i += 1;
                        break;
                    }
                    Some(o) => cur.push(o),
                }
            } else {
                match c {
                    None => break,
                    Some(c) if c.is_ascii_whitespace() => break,
                    Some(b'"') => inq = true,
                    Some(b'\'') => insq = true,
                    Some(o) => cur.push(o),
                }
            }
            i += 1;
        }
        args.push(cur);
    }
}

fn hex(c: Option<u8>) -> Option<u8> {
    (c? as char).to_digit(16).map(|d| d as u8)
}

/// Redis's `string2ll`: an optional `-`, digits, no leading zeros, no
/// blanks or `+`, within `i64`.
pub fn parse_i64(s: &[u8]) -> Option<i64> {
    if s.is_empty() || s.len() > 20 {
        return None;
    }
    let (neg, digits) = match s.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, s),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    if digits.len() > 1 && digits[0] == b'0' || (neg && digits == b"0") {
        return None;
    }
    let text = std::str::from_utf8(s).ok()?;
    text.parse().ok()
}

/// A reply being built for one connection, in that connection's protocol
/// (RESP2 unless it said `HELLO 3`): the encoders below pick the RESP3
/// type (map, set, double, null, push, verbatim string) or its RESP2
/// equivalent from it, so every command writes one reply for both.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Out {
    /// The encoded bytes.
    pub buf: Vec<u8>,
    /// Whether the connection speaks RESP3.
    pub resp3: bool,
    /// The connection the reply is for (its output room is checked before
    /// big replies are built; not always the event's connection: a client
    /// unblocked by another's push is answered in that other's event).
    pub conn: Option<tandem_core::sdk::ConnId>,
}

impl Out {
    /// An empty reply buffer for a connection speaking RESP3 or not.
    pub fn new(resp3: bool) -> Out {
        Out {
            buf: Vec::new(),
            resp3,
            conn: None,
        }
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Drops what was written after `len` bytes.
    pub fn truncate(&mut self, len: usize) {
        self.buf.truncate(len);
    }

    /// Takes the bytes written, leaving the buffer empty.
    pub fn take(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }
}

/// Appends `+text\r\n`.
pub fn simple(out: &mut Out, text: &str) {
    out.buf.push(b'+');
    out.buf.extend_from_slice(text.as_bytes());
    out.buf.extend_from_slice(b"\r\n");
}

/// Appends `-text\r\n`; line breaks inside become spaces (as Redis does),
/// so an error can never inject a frame.
pub fn error(out: &mut Out, text: &str) {
    out.buf.push(b'-');
    out.buf.extend(
        text.bytes()
            .map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
    );
    out.buf.extend_from_slice(b"\r\n");
}

/// Appends `:n\r\n`.
pub fn int(out: &mut Out, n: i64) {
    // Writing to a Vec cannot fail; no intermediate String is allocated.
    let _ = write!(out.buf, ":{n}\r\n");
}

/// Appends a bulk string.
pub fn bulk(out: &mut Out, bytes: &[u8]) {
    let _ = write!(out.buf, "${}\r\n", bytes.len());
    out.buf.extend_from_slice(bytes);
    out.buf.extend_from_slice(b"\r\n");
}

/// Appends the null bulk string (RESP3: the null).
pub fn nil(out: &mut Out) {
    out.buf
        .extend_from_slice(if out.resp3 { b"_\r\n" } else { b"$-1\r\n" });
}

/// Appends an array header for `n` elements.
pub fn array(out: &mut Out, n: usize) {
    let _ = write!(out.buf, "*{n}\r\n");
}

/// Appends the null array (RESP3: the null).
pub fn nil_array(out: &mut Out) {
    out.buf
        .extend_from_slice(if out.resp3 { b"_\r\n" } else { b"*-1\r\n" });
}

/// Appends a map header for `n` key/value pairs (RESP2: an array of 2n).
pub fn map(out: &mut Out, n: usize) {
    if out.resp3 {
        let _ = write!(out.buf, "%{n}\r\n");
    } else {
        array(out, 2 * n);
    }
}

/// Appends a set header for `n` members (RESP2: an array).
pub fn set(out: &mut Out, n: usize) {
    if out.resp3 {
        let _ = write!(out.buf, "~{n}\r\n");
    } else {
        array(out, n);
    }
}

/// Appends a push header for `n` elements (pub/sub messages; RESP2: an
/// array).
pub fn push(out: &mut Out, n: usize) {
    if out.resp3 {
        let _ = write!(out.buf, ">{n}\r\n");
    } else {
        array(out, n);
    }
}

/// Appends a double (RESP2: its text as a bulk string), formatted as
/// [`score`] does.
pub fn double(out: &mut Out, v: f64) {
    if out.resp3 {
        let _ = write!(out.buf, ",{}\r\n", score(v));
    } else {
        bulk(out, score(v).as_bytes());
    }
}

/// Appends a text reply (INFO, CLIENT INFO/LIST): a verbatim string of
/// format `txt` in RESP3, a bulk string in RESP2.
pub fn verbatim(out: &mut Out, text: &[u8]) {
    if out.resp3 {
        let _ = write!(out.buf, "={}\r\ntxt:", text.len() + 4);
        out.buf.extend_from_slice(text);
        out.buf.extend_from_slice(b"\r\n");
    } else {
        bulk(out, text);
    }
}

/// Formats a score as Redis 7 does for the common cases: the shortest text
/// that reads back as the same double (`1.5`, `3`, `inf`, `-inf`).
pub fn score(v: f64) -> String {
    if v.is_infinite() {
        return if v > 0.0 { "inf".into() } else { "-inf".into() };
    }
    format!("{v}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(buf: &[u8]) -> Parsed {
        super::parse(buf, &mut Progress::default())
    }

    #[test]
    fn resumes_where_it_stopped() {
        let req = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nvalue\r\n";
        let mut p = Progress::default();
        for n in 0..req.len() {
            assert_eq!(super::parse(&req[..n], &mut p), Parsed::Incomplete, "{n}");
        }
        assert_eq!(
            super::parse(req, &mut p),
            Parsed::Command(args(&["SET", "k", "value"]), req.len())
        );
        assert_eq!(p, Progress::default());
    }

    fn args(v: &[&str]) -> Vec<Vec<u8>> {
        v.iter().map(|s| s.as_bytes().to_vec()).collect()
    }

    #[test]
    fn multibulk_and_inline() {
        assert_eq!(
            parse(b"*1\r\n$4\r\nPING\r\n"),
            Parsed::Command(args(&["PING"]), 14)
        );
        assert_eq!(parse(b"*2\r\n$3\r\nGET\r\n$1\r\nk"), Parsed::Incomplete);
        assert_eq!(parse(b"*2\r\n$3\r\nGET\r"), Parsed::Incomplete);
        assert_eq!(parse(b"PING\r\n"), Parsed::Command(args(&["PING"]), 6));
        assert_eq!(
            parse(b"set a \"x y\\n\" 'b\\'c'\n"),
            Parsed::Command(args(&["set", "a", "x y\n", "b'c"]), 21)
        );
        assert_eq!(parse(b"  \r\n"), Parsed::Nothing(4));
        assert_eq!(parse(b"*0\r\n"), Parsed::Nothing(4));
        assert_eq!(parse(b"*-1\r\n"), Parsed::Nothing(5));
        assert_eq!(parse(b"PIN"), Parsed::Incomplete);
    }

    #[test]
    fn malformed() {
        let err = |b: &[u8]| match parse(b) {
            Parsed::Error(e) => e,
            other => panic!("{other:?}"),
        };
        assert_eq!(err(b"*x\r\n"), "Protocol error: invalid multibulk length");
        assert_eq!(
            err(b"*1\r\n+PING\r\n"),
            "Protocol error: expected '$', got '+'"
        );
        assert_eq!(err(b"*1\r\n$-5\r\n"), "Protocol error: invalid bulk length");
        assert_eq!(
            err(b"*1\r\n$99999999999\r\n"),
            "Protocol error: invalid bulk length"
        );
        assert_eq!(
            err(b"*9999999999\r\n"),
            "Protocol error: invalid multibulk length"
        );
        assert_eq!(
            err(b"set \"a\n"),
            "Protocol error: unbalanced quotes in request"
        );
        assert_eq!(
            err(&vec![b'a'; MAX_INLINE + 1]),
            "Protocol error: too big inline request"
        );
        let mut big = b"*".to_vec();
        big.extend(vec![b'1'; MAX_INLINE + 1]);
        assert_eq!(err(&big), "Protocol error: too big mbulk count string");
    }

    #[test]
    fn integers_like_redis() {
        assert_eq!(parse_i64(b"0"), Some(0));
        assert_eq!(parse_i64(b"-12"), Some(-12));
        assert_eq!(parse_i64(b"9223372036854775807"), Some(i64::MAX));
        assert_eq!(parse_i64(b"-9223372036854775808"), Some(i64::MIN));
        for bad in [
            &b""[..],
            b"01",
            b"+1",
            b" 1",
            b"-0",
            b"1.0",
            b"9223372036854775808",
            b"-",
        ] {
            assert_eq!(parse_i64(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn scores() {
        assert_eq!(score(1.5), "1.5");
        assert_eq!(score(3.0), "3");
        assert_eq!(score(-0.25), "-0.25");
        assert_eq!(score(f64::INFINITY), "inf");
    }
}
