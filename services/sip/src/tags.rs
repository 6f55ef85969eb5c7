//! Dialog and transaction identifiers read straight from header bytes.
//!
//! Dispatching a message needs only its From-tag, To-tag and top Via branch. Parsing
//! the whole name-addr (display name, URI, every parameter, each into owned strings) to
//! get one parameter costs allocations on every message of the hot path, several times
//! over; these readers return a slice of the header value instead. They agree with
//! `NameAddr::parse(..).tag()` and `Via::parse(..).branch()` on what those accept (a
//! property test holds them to it); on values those reject they may still find a tag,
//! which only means the message reaches a call that then refuses it.

use crate::header::{HeaderName, Headers};
use crate::scan;

/// The value of parameter `name` in a `;`-separated parameter list (`;a=1;tag=x`); text
/// before the first `;` is skipped. A quoted value may hold `;` or `,`. With
/// `stop_at_comma`, the list ends at the first `,` outside quotes (the end of a Via's
/// first value).
///
/// The dispatcher reads the branch and tags of every message several times, so this is
/// on the hot path: a list without quotes (nearly all of them) is cut at its delimiters
/// with `memchr`, which skips the bytes between them a word at a time; only a list with
/// a quote is walked byte by byte.
fn param<'a>(params: &'a [u8], name: &[u8], stop_at_comma: bool) -> Option<&'a [u8]> {
    if memchr::memchr(b'"', params).is_some() {
        return param_quoted(params, name, stop_at_comma);
    }
    let params = match stop_at_comma
        .then(|| memchr::memchr(b',', params))
        .flatten()
    {
        Some(comma) => &params[..comma],
        None => params,
    };
    let mut rest = &params[memchr::memchr(b';', params)? + 1..];
    loop {
        let end = memchr::memchr(b';', rest);
        if let Some(v) = param_value(&rest[..end.unwrap_or(rest.len())], name) {
            return Some(v);
        }
        rest = &rest[end? + 1..];
    }
}

/// [`param`] for a list with quotes: one pass over the bytes, tracking quoted strings
/// and their escapes.
fn param_quoted<'a>(params: &'a [u8], name: &[u8], stop_at_comma: bool) -> Option<&'a [u8]> {
    let mut chunk: Option<usize> = None;
    let (mut quoted, mut escaped) = (false, false);
    let mut i = 0;
    loop {
        let c = params.get(i).copied();
        let boundary = match c {
            None => true,
            Some(_) if escaped => {
                escaped = false;
                false
            }
            Some(b'\\') if quoted => {
                escaped = true;
                false
            }
            Some(b'"') => {
                quoted = !quoted;
                false
            }
            Some(b';') => !quoted,
            Some(b',') => stop_at_comma && !quoted,
            Some(_) => false,
        };
        if boundary {
            if let Some(s) = chunk {
                if let Some(v) = param_value(&params[s..i], name) {
                    return Some(v);
                }
            }
            if c != Some(b';') {
                return None;
            }
            chunk = Some(i + 1);
        }
        i += 1;
    }
}

/// The trimmed value of one `name[=value]` parameter when its name is `name` (any case).
/// Most parameters a caller looks at are not the one it wants: they are turned away on
/// their first bytes, before any search for `=`.
fn param_value<'a>(p: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let (s, e) = scan::trim(p);
    let p = &p[s..e];
    if p.len() < name.len() || !p[..name.len()].eq_ignore_ascii_case(name) {
        return None;
    }
    // After the name: nothing (a parameter without a value), or `=` (whitespace allowed
    // around it); anything else means a longer name.
    let rest = &p[name.len()..];
    let eq = scan::skip_ws(rest, 0);
    match rest.get(eq) {
        None => Some(&rest[rest.len()..]),
        Some(b'=') => {
            let v = &rest[eq + 1..];
            let (vs, ve) = scan::trim(v);
            Some(&v[vs..ve])
        }
        Some(_) => None,
    }
}

/// The `tag` of a From or To value.
pub fn name_addr_tag(v: &[u8]) -> Option<&[u8]> {
    name_addr_param(v, b"tag").filter(|t| !t.is_empty())
}

/// The header parameter `name` of a name-addr or addr-spec value: `Some(b"")` when it
/// is present without a value.
pub fn name_addr_param<'a>(v: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let mut i = scan::skip_ws(v, 0);
    if v.get(i) == Some(&b'"') {
        i = scan::quoted_end(v, i)?;
    }
    let params = match v[i..].iter().position(|c| *c == b'<') {
        Some(lt) => {
            let lt = i + lt;
            let gt = lt + v[lt..].iter().position(|c| *c == b'>')?;
            &v[gt + 1..]
        }
        // addr-spec: the URI ends at the first ';' or whitespace (RFC 3261 §20.10).
        None => {
            let end = v[i..]
                .iter()
                .position(|c| *c == b';' || scan::is_ws(*c))
                .map_or(v.len(), |p| i + p);
            &v[end..]
        }
    };
    param(params, name, false)
}

/// The `branch` of the first value of a Via header.
pub fn via_branch(v: &[u8]) -> Option<&[u8]> {
    let semi = v.iter().position(|c| *c == b';' || *c == b',')?;
    if v[semi] == b',' {
        return None;
    }
    param(&v[semi..], b"branch", true).filter(|b| !b.is_empty())
}

impl Headers {
    /// The From-tag, as written.
    pub fn from_tag(&self) -> Option<&[u8]> {
        name_addr_tag(self.get(HeaderName::From)?)
    }

    /// The To-tag, as written.
    pub fn to_tag(&self) -> Option<&[u8]> {
        name_addr_tag(self.get(HeaderName::To)?)
    }

    /// The branch of the top Via.
    pub fn top_branch(&self) -> Option<&[u8]> {
        via_branch(self.get(HeaderName::Via)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::name_addr::NameAddr;
    use crate::via::Via;
    use proptest::prelude::*;

    fn tag(s: &str) -> Option<&str> {
        name_addr_tag(s.as_bytes()).map(|t| std::str::from_utf8(t).unwrap())
    }

    #[test]
    fn reads_tags_of_every_form() {
        assert_eq!(tag("<sip:a@b>;tag=x1"), Some("x1"));
        assert_eq!(
            tag("\"A;tag=no\" <sip:a@b;tag=uri>;foo=1; TAG = x2 "),
            Some("x2")
        );
        assert_eq!(tag("Alice <sip:a@b>;tag=x3;expires=5"), Some("x3"));
        assert_eq!(tag("sip:a@b;tag=x4"), Some("x4"));
        assert_eq!(tag("sip:a@b"), None);
        assert_eq!(tag("<sip:a@b;tag=inside>"), None);
        assert_eq!(tag("<sip:a@b>;tag="), None);
        assert_eq!(tag("<sip:a@b>;tagx=1"), None);
        assert_eq!(tag("\"unterminated <sip:a@b>;tag=1"), None);
        assert_eq!(tag("<sip:a@b;tag=1"), None);
        // A quoted parameter value may hold ';' (found by the property test below).
        assert_eq!(tag("<sip:a@b.example>;tag=\"Al;ice\""), Some("\"Al;ice\""));
        assert_eq!(tag("<sip:a@b>;x=\"a;tag=no\";tag=yes"), Some("yes"));
    }

    #[test]
    fn reads_the_top_branch() {
        fn b(s: &str) -> Option<&str> {
            via_branch(s.as_bytes()).map(|t| std::str::from_utf8(t).unwrap())
        }
        assert_eq!(
            b("SIP/2.0/UDP [2001:db8::1]:5060;rport;branch=z9hG4bK1, SIP/2.0/UDP x;branch=2"),
            Some("z9hG4bK1")
        );
        assert_eq!(
            b("SIP/2.0/UDP h ; Branch = z9hG4bK3 ;received=1.2.3.4"),
            Some("z9hG4bK3")
        );
        assert_eq!(b("SIP/2.0/UDP h, SIP/2.0/UDP x;branch=2"), None);
        assert_eq!(b("SIP/2.0/UDP h;branchx=1"), None);
        assert_eq!(
            b("SIP/2.0/UDP h;x=\"a,b;branch=no\";branch=z9hG4bK4"),
            Some("z9hG4bK4")
        );
    }

    fn part() -> impl Strategy<Value = String> {
        prop::sample::select(vec![
            "\"Al;ice\" ",
            "Bob ",
            "",
            "<sip:a@b.example>",
            "<sip:a@b;tag=u>",
            "sip:c@d",
            ";tag=t1",
            ";TAG=t2",
            "; tag = t3 ",
            ";foo",
            ";foo=bar",
            ";tag=",
            " ",
            "<",
            ">",
            "\"",
            ";",
            "=",
            ",",
        ])
        .prop_map(str::to_string)
    }

    proptest! {
        /// The quote-free fast path reads what the byte walk reads, on any list.
        #[test]
        fn fast_path_agrees_with_the_byte_walk(
            parts in prop::collection::vec(prop::sample::select(vec![
                ";", ",", "=", " ", "\"", "\\", "tag", "TAG", "ta", "tagx", "\t", "branch", "x",
                "z9hG4bK1", ";tag=", "; tag = t ", ";tag =",
            ]), 0..10),
            stop_at_comma in any::<bool>(),
        ) {
            let v = parts.concat();
            for name in [&b"tag"[..], b"branch"] {
                prop_assert_eq!(
                    param(v.as_bytes(), name, stop_at_comma),
                    param_quoted(v.as_bytes(), name, stop_at_comma),
                    "{}", v
                );
            }
        }

        /// Wherever the full parser accepts a value, both read the same tag.
        #[test]
        fn agrees_with_the_name_addr_parser(parts in prop::collection::vec(part(), 1..7)) {
            let v = parts.concat();
            if let Some(na) = NameAddr::parse(v.as_bytes()) {
                let full = na.tag().filter(|t| !t.is_empty());
                prop_assert_eq!(tag(&v), full, "{}", v);
            }
        }

        #[test]
        fn agrees_with_the_via_parser(
            params in prop::collection::vec(prop::sample::select(vec![
                ";branch=z9hG4bKa", ";BRANCH=z9hG4bKb", "; branch = c ", ";rport", ";received=1.2.3.4",
                ";branch=", ";x=y", ", SIP/2.0/TCP h2;branch=z9hG4bKz",
            ]), 0..5)
        ) {
            let v = format!("SIP/2.0/UDP 192.0.2.1:5060{}", params.concat());
            let bytes = bytes::Bytes::from(v.clone());
            let first = crate::scan::split_commas(&bytes).and_then(|vs| vs.into_iter().next());
            if let Some(via) = first.and_then(|f| Via::parse(&f)) {
                let full = via.branch().filter(|b| !b.is_empty()).map(str::to_string);
                let fast = via_branch(v.as_bytes()).map(|b| String::from_utf8_lossy(b).into_owned());
                prop_assert_eq!(fast, full, "{}", v);
            }
        }
    }
}
