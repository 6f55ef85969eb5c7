//! `;name[=value]` parameter lists, shared by URIs, name-addr headers and Via.
//!
//! One type so that lookup rules (case-insensitive names, first match wins) and
//! the exact re-serialisation a proxy owes its peers cannot drift apart between
//! the three places parameters appear. The two grammars differ only in what a
//! parameter may contain: header parameters (RFC 3261 `generic-param`) allow LWS
//! around `;` and `=` and quoted values, URI parameters (`uri-parameter`) allow
//! more unescaped characters but no LWS or quotes.

use crate::scan::{is_token_char, quoted_end, skip_ws};
use compact_str::CompactString;
use serde::{Deserialize, Serialize};
use std::fmt;

/// One `;name[=value]` parameter. Names compare case-insensitively; name and
/// value are kept as received (quoted values keep their quotes) so re-serialising
/// is exact.
///
/// Both are `CompactString`s: names and most values (tags, branches, `rport`
/// numbers) fit in its 24 inline bytes, so parsing a header's parameters costs
/// no allocation per parameter. Every message carries a dozen of them, parsed
/// several times on its way through the node. They serialise as plain strings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Param {
    pub name: CompactString,
    pub value: Option<CompactString>,
}

impl Param {
    pub fn new(name: impl Into<CompactString>, value: Option<String>) -> Self {
        Param {
            name: name.into(),
            value: value.map(CompactString::from),
        }
    }
}

/// An ordered parameter list. Order and duplicates are kept as received, since
/// some peers depend on both; lookups see the first parameter of a name.
/// Serialises as a plain list of [`Param`], as the `Vec<Param>` it replaced did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Params(Vec<Param>);

impl Params {
    pub fn new() -> Self {
        Params(Vec::new())
    }

    /// The first parameter called `name` (any case): `Some(None)` when it is
    /// present without a value, `None` when absent.
    pub fn get(&self, name: &str) -> Option<Option<&str>> {
        self.0
            .iter()
            .find(|p| p.name.eq_ignore_ascii_case(name))
            .map(|p| p.value.as_deref())
    }

    /// True when a parameter called `name` (any case) is present, with or
    /// without a value (flags such as `lr` or `rport`).
    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// Replaces the value of the first parameter called `name` (its name keeps
    /// the case it was written in), or appends a new one.
    pub fn set(&mut self, name: &str, value: Option<String>) {
        match self
            .0
            .iter_mut()
            .find(|p| p.name.eq_ignore_ascii_case(name))
        {
            Some(p) => p.value = value.map(CompactString::from),
            None => self.0.push(Param::new(name, value)),
        }
    }

    /// Removes every parameter called `name` (any case) and returns the value of
    /// the first one; duplicates go too, so none can resurface in a lookup.
    pub fn remove(&mut self, name: &str) -> Option<Option<String>> {
        let mut first = None;
        self.0.retain_mut(|p| {
            if !p.name.eq_ignore_ascii_case(name) {
                return true;
            }
            if first.is_none() {
                first = Some(p.value.take().map(CompactString::into_string));
            }
            false
        });
        first
    }

    /// Keeps only the parameters `keep` accepts, in order.
    pub fn retain(&mut self, keep: impl FnMut(&Param) -> bool) {
        self.0.retain(keep);
    }

    pub fn clear(&mut self) {
        self.0.clear();
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Param> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Parses header parameters, `*( SEMI generic-param )`, which must fill all of
    /// `b`. LWS is allowed around `;` and `=` (RFC 4475 §3.1.1.1); a value may be
    /// a token or a quoted string. `None` on anything else. Text, not bytes: a header
    /// value is checked as UTF-8 once, by the caller that cuts it into parts.
    pub fn parse_header(b: &str) -> Option<Params> {
        let mut params = Vec::new();
        walk_header(b, |name, value| {
            params.push(Param {
                name: CompactString::from(name),
                value: value.map(CompactString::from),
            })
        })?;
        Some(Params(params))
    }

    /// True when `b` is a list [`Params::parse_header`] accepts; allocates nothing, for
    /// validators that only need to know.
    pub fn check_header(b: &str) -> bool {
        walk_header(b, |_, _| {}).is_some()
    }

    /// The first parameter called `name` (any case) in a header parameter list that
    /// [`Params::check_header`] accepts, as [`Params::get`] would find it once parsed.
    pub fn find_header<'a>(b: &'a str, name: &str) -> Option<Option<&'a str>> {
        let mut found = None;
        walk_header(b, |n, v| {
            if found.is_none() && n.eq_ignore_ascii_case(name) {
                found = Some(v);
            }
        })?;
        found
    }

    /// Parses URI parameters, `*( ";" uri-parameter )`, from the start of `b`.
    /// Stops at the first byte that cannot continue them (`?` before URI headers,
    /// or junk the caller rejects) and returns the index it stopped at. `None`
    /// when a parameter has an empty name.
    pub fn parse_uri(b: &[u8]) -> Option<(Params, usize)> {
        let mut params = Vec::new();
        let used = walk_uri(b, |name, value| {
            params.push(Param {
                name: CompactString::from_utf8_lossy(name),
                value: value.map(CompactString::from_utf8_lossy),
            })
        })?;
        Some((Params(params), used))
    }

    /// Where [`Params::parse_uri`] would stop in `b`, without building the list.
    pub fn scan_uri(b: &[u8]) -> Option<usize> {
        walk_uri(b, |_, _| {})
    }
}

/// Walks header parameters (the grammar of [`Params::parse_header`]), handing each
/// name and value to `each`. `None` when `b` is not such a list.
pub(crate) fn walk_header<'a>(
    text: &'a str,
    mut each: impl FnMut(&'a str, Option<&'a str>),
) -> Option<()> {
    // Names and token values are ASCII, so only a quoted value can hold other bytes, and
    // it is cut at its ASCII quotes: the cuts fall on character boundaries.
    let b = text.as_bytes();
    let mut i = 0;
    loop {
        i = skip_ws(b, i);
        let Some(&c) = b.get(i) else {
            return Some(());
        };
        if c != b';' {
            return None;
        }
        i = skip_ws(b, i + 1);
        let ns = i;
        i = span(b, i, is_header_char);
        if i == ns {
            return None;
        }
        let name = text.get(ns..i)?;
        i = skip_ws(b, i);
        let mut value = None;
        if b.get(i) == Some(&b'=') {
            i = skip_ws(b, i + 1);
            let vs = i;
            if b.get(i) == Some(&b'"') {
                i = quoted_end(b, i)?;
            } else {
                i = span(b, i, is_header_char);
            }
            if i == vs {
                return None;
            }
            value = Some(text.get(vs..i)?);
        }
        each(name, value);
    }
}

/// Walks URI parameters (the grammar of [`Params::parse_uri`]) from the start of `b`,
/// handing each name and value to `each`; returns the index it stopped at.
fn walk_uri(b: &[u8], mut each: impl FnMut(&[u8], Option<&[u8]>)) -> Option<usize> {
    let mut i = 0;
    while b.get(i) == Some(&b';') {
        let ns = i + 1;
        i = span(b, ns, is_uri_char);
        if i == ns {
            return None;
        }
        let name = &b[ns..i];
        let mut value = None;
        if b.get(i) == Some(&b'=') {
            let vs = i + 1;
            i = span(b, vs, is_uri_char);
            value = Some(&b[vs..i]);
        }
        each(name, value);
    }
    Some(i)
}

/// Index of the first byte at or after `i` that `ok` rejects (or the end).
fn span(b: &[u8], mut i: usize, ok: impl Fn(u8) -> bool) -> usize {
    while b.get(i).is_some_and(|c| ok(*c)) {
        i += 1;
    }
    i
}

/// Characters allowed in generic-param names and token values, plus the IPv6
/// brackets and colon that `received=` and `maddr=` values carry.
fn is_header_char(c: u8) -> bool {
    is_token_char(c) || matches!(c, b'[' | b']' | b':')
}

/// RFC 3261 `paramchar`: unreserved, escaped (`%`) and `param-unreserved`
/// characters, plus `:` which IPv6 `maddr` values carry.
fn is_uri_char(c: u8) -> bool {
    URI_CHAR[c as usize]
}

/// [`is_uri_char`] as a table.
static URI_CHAR: [bool; 256] = crate::scan::byte_class!(|c| c.is_ascii_alphanumeric()
    || matches!(
        c,
        b'-' | b'_'
            | b'.'
            | b'!'
            | b'~'
            | b'*'
            | b'\''
            | b'('
            | b')'
            | b'%'
            | b'['
            | b']'
            | b'/'
            | b':'
            | b'&'
            | b'+'
            | b'$'
    ));

impl From<Vec<Param>> for Params {
    fn from(v: Vec<Param>) -> Self {
        Params(v)
    }
}

impl FromIterator<Param> for Params {
    fn from_iter<I: IntoIterator<Item = Param>>(iter: I) -> Self {
        Params(iter.into_iter().collect())
    }
}

impl<'a> IntoIterator for &'a Params {
    type Item = &'a Param;
    type IntoIter = std::slice::Iter<'a, Param>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl IntoIterator for Params {
    type Item = Param;
    type IntoIter = std::vec::IntoIter<Param>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

/// Writes `;name=value` for each parameter, in order, exactly as held.
impl fmt::Display for Params {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in &self.0 {
            f.write_str(";")?;
            f.write_str(&p.name)?;
            if let Some(v) = &p.value {
                f.write_str("=")?;
                f.write_str(v)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(s: &str) -> Params {
        Params::parse_header(s).unwrap()
    }

    #[test]
    fn lookups_ignore_case_and_see_the_first_of_a_name() {
        let p = header(";Tag=abc;lr;tag=second");
        assert_eq!(p.get("TAG"), Some(Some("abc")));
        assert_eq!(p.get("LR"), Some(None));
        assert!(p.contains("lr"));
        assert_eq!(p.get("branch"), None);
        assert!(!p.contains("branch"));
        assert_eq!(p.len(), 3);
    }

    #[test]
    fn set_replaces_in_place_keeping_the_written_name() {
        let mut p = header(";RPort;branch=z9hG4bKa");
        p.set("rport", Some("4000".into()));
        p.set("received", Some("192.0.2.1".into()));
        assert_eq!(
            p.to_string(),
            ";RPort=4000;branch=z9hG4bKa;received=192.0.2.1"
        );
        p.set("rport", None);
        assert_eq!(p.get("rport"), Some(None));
    }

    #[test]
    fn remove_takes_every_duplicate_and_returns_the_first_value() {
        let mut p = header(";tag=a;x;TAG=b");
        assert_eq!(p.remove("tag"), Some(Some("a".to_string())));
        assert_eq!(p.get("tag"), None);
        assert_eq!(p.to_string(), ";x");
        assert_eq!(p.remove("x"), Some(None));
        assert_eq!(p.remove("x"), None);
        assert!(p.is_empty());
    }

    #[test]
    fn header_params_round_trip_as_written() {
        let p = header(r#"  ;  q = 0.33 ;Name="quoted; \"value\"" ;flag;maddr=[2001:db8::1]"#);
        let names: Vec<&str> = p.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["q", "Name", "flag", "maddr"]);
        assert_eq!(p.get("name"), Some(Some(r#""quoted; \"value\"""#)));
        assert_eq!(
            p.to_string(),
            r#";q=0.33;Name="quoted; \"value\"";flag;maddr=[2001:db8::1]"#
        );
        assert_eq!(header("").to_string(), "");
    }

    #[test]
    fn header_params_reject_malformed_lists() {
        for bad in [
            "tag=a",      // no leading ';'
            ";",          // empty name
            ";=v",        // empty name
            ";a=",        // empty value
            ";a=\"open",  // unterminated quote
            ";a=b c",     // junk after a value
            ";a=\"x\"\\", // junk after a quoted value
            ";a\x01",     // control character
        ] {
            assert_eq!(Params::parse_header(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn uri_params_stop_at_headers_and_keep_escapes() {
        let s = b";transport=tcp;lr;n%61me=v%61lue;maddr=[::1]?subject=x";
        let (p, end) = Params::parse_uri(s).unwrap();
        assert_eq!(&s[end..], b"?subject=x");
        assert_eq!(p.get("n%61me"), Some(Some("v%61lue")));
        assert!(p.contains("LR"));
        assert_eq!(p.to_string().as_bytes(), &s[..end]);
        // An empty value is allowed in URIs and written back the same way.
        let (p, end) = Params::parse_uri(b";a=").unwrap();
        assert_eq!((p.to_string().as_str(), end), (";a=", 3));
        assert_eq!(Params::parse_uri(b";;a"), None);
        assert_eq!(
            Params::parse_uri(b"").map(|(p, e)| (p.len(), e)),
            Some((0, 0))
        );
    }

    #[test]
    fn serialises_as_the_plain_list_it_replaced() {
        let p = header(";tag=a;lr");
        let as_vec: Vec<Param> = p.iter().cloned().collect();
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(json, serde_json::to_string(&as_vec).unwrap());
        assert_eq!(serde_json::from_str::<Params>(&json).unwrap(), p);
    }

    proptest::proptest! {
        /// Whatever prefix `parse_uri` accepts prints back byte for byte, so a
        /// relayed URI keeps its parameters exactly as the peer wrote them.
        #[test]
        fn accepted_uri_params_print_back_exactly(
            s in r#"(;[a-zA-Z0-9%:\[\]-]{0,5}(=[a-zA-Z0-9%:\[\]=-]{0,5})?){0,5}[?" ,<>a-z;=]{0,4}"#
        ) {
            if let Some((p, end)) = Params::parse_uri(s.as_bytes()) {
                proptest::prop_assert_eq!(p.to_string(), &s[..end]);
            }
        }

        /// Whatever `parse_header` accepts prints to a list it parses back to the
        /// same parameters (only the LWS around `;` and `=` is dropped).
        #[test]
        fn accepted_header_params_reparse_unchanged(
            s in r#"([ \t]{0,2};[ \t]{0,2}[a-zA-Z0-9.:\[\]-]{0,5}([ \t]{0,2}=[ \t]{0,2}([a-zA-Z0-9.:-]{0,5}|"[a-z ;,\\"]{0,6}"))?){0,5}[ \t]{0,2}"#
        ) {
            if let Some(p) = Params::parse_header(&s) {
                let again = Params::parse_header(&p.to_string());
                proptest::prop_assert_eq!(again, Some(p));
            }
        }
    }
}
