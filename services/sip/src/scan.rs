//! Byte-level scanning helpers shared by the parsers: character classes, quoted
//! strings and comma splitting that respects quotes and brackets. Parameter lists
//! live in [`crate::params`].

use bytes::Bytes;

/// RFC 3261 `token` characters.
pub fn is_token_char(c: u8) -> bool {
    TOKEN[c as usize]
}

/// A byte class as a 256-entry table, built at compile time from a predicate (written as a
/// closure, `byte_class!(|c| ...)`, though it is evaluated in a const loop): the
/// parsers test every byte of every header against such classes.
macro_rules! byte_class {
    (|$c:ident| $e:expr) => {{
        let mut t = [false; 256];
        let mut i = 0;
        while i < 256 {
            let $c = i as u8;
            t[i] = $e;
            i += 1;
        }
        t
    }};
}
pub(crate) use byte_class;

/// [`is_token_char`] as a table.
static TOKEN: [bool; 256] = byte_class!(|c| c.is_ascii_alphanumeric()
    || matches!(
        c,
        b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~'
    ));

/// The value of one to ten ASCII digits (leading zeros allowed); `None` for anything
/// else. The numbers of headers and URIs (CSeq, Max-Forwards, Expires, ports) are read
/// from every message, several times, and `str::parse`'s generic path was most of each
/// reader's cost; callers check their own bound.
pub fn decimal(b: &[u8]) -> Option<u64> {
    if b.is_empty() || b.len() > 10 || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(b.iter().fold(0, |n, d| n * 10 + u64::from(d - b'0')))
}

/// Linear white space inside an unfolded header value.
pub fn is_ws(c: u8) -> bool {
    c == b' ' || c == b'\t'
}

/// Index of the first non-whitespace byte at or after `i`.
pub fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && is_ws(b[i]) {
        i += 1;
    }
    i
}

/// Trims SP/HT from both ends.
pub fn trim(b: &[u8]) -> (usize, usize) {
    let mut s = 0;
    let mut e = b.len();
    while s < e && is_ws(b[s]) {
        s += 1;
    }
    while e > s && is_ws(b[e - 1]) {
        e -= 1;
    }
    (s, e)
}

/// Trims a `Bytes` without copying.
pub fn trim_bytes(b: &Bytes) -> Bytes {
    let (s, e) = trim(b);
    b.slice(s..e)
}

/// Given `b[i] == '"'`, returns the index just past the closing quote, honouring
/// backslash escapes; `None` when the quote is never closed.
pub fn quoted_end(b: &[u8], i: usize) -> Option<usize> {
    debug_assert!(b.get(i) == Some(&b'"'));
    let mut j = i + 1;
    while j < b.len() {
        j += memchr::memchr2(b'\\', b'"', &b[j..])?;
        match b[j] {
            b'"' => return Some(j + 1),
            _ => j += 2,
        }
    }
    None
}

/// Calls `part` with the trimmed `(start, end)` of each top-level comma-separated part
/// of a header value (commas inside quotes or `<...>` do not split). Returns `None` on
/// an unbalanced quote or bracket, which callers report as a malformed header rather
/// than guessing. Allocates nothing: the validator and the transaction layer walk Via,
/// To and From values of every message, and a `Vec` of slices per walk showed up in
/// the per-call profile.
///
/// It jumps from one delimiter to the next with `memchr` (outside brackets `"`, `<` and
/// `,` matter, inside them `"` and `>`) rather than matching every byte: these walks
/// were 3 % of the node's instructions per call as a byte loop.
pub fn for_each_comma_part(b: &[u8], mut part: impl FnMut(usize, usize)) -> Option<()> {
    let mut start = 0;
    let mut i = 0;
    let mut angle = false;
    let mut emit = |s: usize, e: usize| {
        let (ts, te) = trim(&b[s..e]);
        part(s + ts, s + te);
    };
    loop {
        let rest = &b[i..];
        let found = if angle {
            memchr::memchr2(b'"', b'>', rest)
        } else {
            memchr::memchr3(b'"', b'<', b',', rest)
        };
        let Some(at) = found else { break };
        i += at;
        match b[i] {
            b'"' => {
                i = quoted_end(b, i)?;
                continue;
            }
            b'<' => angle = true,
            b'>' => angle = false,
            _ => {
                emit(start, i);
                start = i + 1;
            }
        }
        i += 1;
    }
    if angle {
        return None;
    }
    emit(start, b.len());
    Some(())
}

/// Splits a header value on top-level commas (not inside quotes or `<...>`), each
/// part trimmed. `None` on an unbalanced quote or bracket.
pub fn split_commas(b: &Bytes) -> Option<Vec<Bytes>> {
    let mut out = Vec::new();
    for_each_comma_part(b, |s, e| out.push(b.slice(s..e)))?;
    Some(out)
}

/// The first top-level part of a header value, trimmed; `None` when the value is
/// unbalanced anywhere (as [`split_commas`] would refuse it).
pub fn first_comma_part(b: &[u8]) -> Option<&[u8]> {
    first_comma_range(b).map(|(s, e)| &b[s..e])
}

/// Where [`first_comma_part`] lies in `b`, as `(start, end)`.
pub fn first_comma_range(b: &[u8]) -> Option<(usize, usize)> {
    let mut first = None;
    for_each_comma_part(b, |s, e| {
        first.get_or_insert((s, e));
    })?;
    first
}

/// How many top-level parts a header value has; `None` when it is unbalanced.
pub fn comma_part_count(b: &[u8]) -> Option<usize> {
    let mut n = 0;
    for_each_comma_part(b, |_, _| n += 1)?;
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The byte-at-a-time walk the `memchr` versions replaced, kept as their oracle.
    fn quoted_end_bytewise(b: &[u8], i: usize) -> Option<usize> {
        let mut j = i + 1;
        while j < b.len() {
            match b[j] {
                b'\\' => j += 2,
                b'"' => return Some(j + 1),
                _ => j += 1,
            }
        }
        None
    }

    fn comma_parts_bytewise(b: &[u8]) -> Option<Vec<(usize, usize)>> {
        let mut out = Vec::new();
        let mut emit = |s: usize, e: usize| {
            let (ts, te) = trim(&b[s..e]);
            out.push((s + ts, s + te));
        };
        let (mut start, mut i, mut angle) = (0, 0, false);
        while i < b.len() {
            match b[i] {
                b'"' => {
                    i = quoted_end_bytewise(b, i)?;
                    continue;
                }
                b'<' if !angle => angle = true,
                b'>' if angle => angle = false,
                b',' if !angle => {
                    emit(start, i);
                    start = i + 1;
                }
                _ => {}
            }
            i += 1;
        }
        if angle {
            return None;
        }
        emit(start, b.len());
        Some(out)
    }

    fn comma_parts(b: &[u8]) -> Option<Vec<(usize, usize)>> {
        let mut out = Vec::new();
        for_each_comma_part(b, |s, e| out.push((s, e)))?;
        Some(out)
    }

    /// Header values built from the bytes that matter to the walk, and others.
    fn value() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(
            prop::sample::select(vec![
                b'"', b'<', b'>', b',', b'\\', b' ', b'\t', b'a', b'z', b';', b'=', b'@',
            ]),
            0..40,
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn comma_parts_match_the_byte_walk(v in value()) {
            prop_assert_eq!(comma_parts(&v), comma_parts_bytewise(&v));
        }

        #[test]
        fn quoted_end_matches_the_byte_walk(tail in value()) {
            let mut v = vec![b'"'];
            v.extend_from_slice(&tail);
            prop_assert_eq!(quoted_end(&v, 0), quoted_end_bytewise(&v, 0));
        }
    }

    #[test]
    fn decimal_reads_one_to_ten_digits() {
        assert_eq!(decimal(b"0"), Some(0));
        assert_eq!(decimal(b"00080"), Some(80));
        assert_eq!(decimal(b"9999999999"), Some(9_999_999_999));
        for bad in [
            &b""[..],
            b"12345678901",
            b"+1",
            b"-1",
            b"1 ",
            b"1a",
            b"\xd9\xa3",
        ] {
            assert_eq!(decimal(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn commas_inside_quotes_and_brackets_do_not_split() {
        let v = b"\"a, b\" <sip:x@h;p=1,2>;tag=1 , <sip:y@h>";
        let parts = comma_parts(v).unwrap_or_default();
        let texts: Vec<&[u8]> = parts.iter().map(|&(s, e)| &v[s..e]).collect();
        assert_eq!(
            texts,
            vec![&b"\"a, b\" <sip:x@h;p=1,2>;tag=1"[..], &b"<sip:y@h>"[..]]
        );
        assert_eq!(comma_parts(b"<sip:x@h"), None);
        assert_eq!(comma_parts(b"\"open"), None);
    }
}
