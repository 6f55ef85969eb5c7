//! Byte-level scanning helpers shared by the parsers: character classes, quoted
//! strings, parameter lists and comma splitting that respects quotes and brackets.

use bytes::Bytes;

/// RFC 3261 `token` characters.
pub fn is_token_char(c: u8) -> bool {
    c.is_ascii_alphanumeric()
        || matches!(
            c,
            b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~'
        )
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
        match b[j] {
            b'\\' => j += 2,
            b'"' => return Some(j + 1),
            _ => j += 1,
        }
    }
    None
}

/// Splits a header value on top-level commas (not inside quotes or `<...>`).
/// Returns `None` on an unbalanced quote or bracket, which callers report as a
/// malformed header rather than guessing.
pub fn split_commas(b: &Bytes) -> Option<Vec<Bytes>> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    let mut angle = false;
    while i < b.len() {
        match b[i] {
            b'"' => {
                i = quoted_end(b, i)?;
                continue;
            }
            b'<' if !angle => angle = true,
            b'>' if angle => angle = false,
            b',' if !angle => {
                out.push(trim_bytes(&b.slice(start..i)));
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    if angle {
        return None;
    }
    out.push(trim_bytes(&b.slice(start..)));
    Some(out)
}

/// One `;name[=value]` parameter. Names compare case-insensitively; values are
/// kept as received (quoted values keep their quotes) so re-serialising is exact.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Param {
    pub name: String,
    pub value: Option<String>,
}

impl Param {
    pub fn new(name: impl Into<String>, value: Option<String>) -> Self {
        Param {
            name: name.into(),
            value,
        }
    }
}

/// Looks a parameter up by case-insensitive name. `Some(None)` means present without a value.
pub fn find_param<'a>(params: &'a [Param], name: &str) -> Option<Option<&'a str>> {
    params
        .iter()
        .find(|p| p.name.eq_ignore_ascii_case(name))
        .map(|p| p.value.as_deref())
}

/// Parses `*( SEMI generic-param )` starting at `i` (which must be at `;` or the end),
/// stopping at `stop` bytes outside quotes. Returns the params and the index where
/// parsing stopped.
pub fn parse_params(b: &[u8], mut i: usize, stop: &[u8]) -> Option<(Vec<Param>, usize)> {
    let mut params = Vec::new();
    loop {
        i = skip_ws(b, i);
        if i >= b.len() || stop.contains(&b[i]) {
            return Some((params, i));
        }
        if b[i] != b';' {
            return None;
        }
        i = skip_ws(b, i + 1);
        let ns = i;
        while i < b.len() && is_param_char(b[i]) {
            i += 1;
        }
        if i == ns {
            return None;
        }
        let name = std::str::from_utf8(&b[ns..i]).ok()?.to_string();
        i = skip_ws(b, i);
        let mut value = None;
        if i < b.len() && b[i] == b'=' {
            i = skip_ws(b, i + 1);
            let vs = i;
            if i < b.len() && b[i] == b'"' {
                i = quoted_end(b, i)?;
            } else {
                while i < b.len() && is_param_char(b[i]) {
                    i += 1;
                }
            }
            if i == vs {
                return None;
            }
            value = Some(std::str::from_utf8(&b[vs..i]).ok()?.to_string());
        }
        params.push(Param { name, value });
    }
}

/// Characters allowed in generic-param names and token values, plus the IPv6
/// brackets and colon that `received=` and `maddr=` values carry.
fn is_param_char(c: u8) -> bool {
    is_token_char(c) || matches!(c, b'[' | b']' | b':')
}

/// Writes params back in `;name=value` form.
pub fn write_params(out: &mut String, params: &[Param]) {
    for p in params {
        out.push(';');
        out.push_str(&p.name);
        if let Some(v) = &p.value {
            out.push('=');
            out.push_str(v);
        }
    }
}
