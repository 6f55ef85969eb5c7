//! name-addr / addr-spec headers: From, To, Contact, Route, Record-Route (RFC 3261 §20).

use crate::params::Params;
use crate::scan;
use crate::uri::{Uri, UriRef};
use serde::{Deserialize, Serialize};
use std::fmt;

/// A display name, URI and header parameters (`tag`, `expires`, `q`...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameAddr {
    /// Display name exactly as written (quoted form keeps its quotes).
    pub display: Option<String>,
    pub uri: Uri,
    pub params: Params,
}

impl NameAddr {
    /// A bare `<uri>`.
    pub fn new(uri: Uri) -> Self {
        NameAddr {
            display: None,
            uri,
            params: Params::new(),
        }
    }

    /// Parses one value (no top-level commas).
    pub fn parse(v: &[u8]) -> Option<NameAddr> {
        let r = NameAddrRef::split(v)?;
        Some(NameAddr {
            display: r.display.map(str::to_string),
            uri: r.uri.to_uri(),
            params: Params::parse_header(r.params)?,
        })
    }

    pub fn param(&self, name: &str) -> Option<Option<&str>> {
        self.params.get(name)
    }

    /// The dialog tag (From/To).
    pub fn tag(&self) -> Option<&str> {
        self.param("tag").flatten()
    }

    /// Sets or replaces a header parameter.
    pub fn set_param(&mut self, name: &str, value: Option<String>) {
        self.params.set(name, value);
    }
}

/// A name-addr or addr-spec checked against [`NameAddr::parse`]'s grammar, its parts
/// borrowed from the text: the validator checks To, From and Contact of every message
/// this way without building (and dropping) owned values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NameAddrRef<'a> {
    /// Display name exactly as written (quoted form keeps its quotes).
    pub display: Option<&'a str>,
    pub uri: UriRef<'a>,
    /// The header parameters' text (`;tag=x`), checked.
    pub params: &'a str,
}

impl<'a> NameAddrRef<'a> {
    /// Checks one value (no top-level commas) as [`NameAddr::parse`] does.
    pub fn parse(v: &'a [u8]) -> Option<NameAddrRef<'a>> {
        NameAddrRef::split(v).filter(|r| Params::check_header(r.params))
    }

    /// Everything but the parameters checked: [`NameAddr::parse`] checks those as it
    /// builds them. The value is checked as UTF-8 once (the parameters must be text too)
    /// and cut at ASCII delimiters, so every cut is a character boundary.
    fn split(v: &'a [u8]) -> Option<NameAddrRef<'a>> {
        let (s, e) = scan::trim(v);
        let text = std::str::from_utf8(&v[s..e]).ok()?;
        let v = text.as_bytes();
        if v.is_empty() {
            return None;
        }
        let mut i = 0;
        let display;
        let uri_text;
        if v[0] == b'"' {
            let q = scan::quoted_end(v, 0)?;
            display = Some(text.get(..q)?);
            i = scan::skip_ws(v, q);
            if v.get(i) != Some(&b'<') {
                return None;
            }
        } else if let Some(lt) = v.iter().position(|c| *c == b'<') {
            let d = &v[..lt];
            let (ds, de) = scan::trim(d);
            if !d[ds..de]
                .iter()
                .all(|c| scan::is_token_char(*c) || scan::is_ws(*c))
            {
                return None;
            }
            display = if de > ds {
                Some(text.get(ds..de)?)
            } else {
                None
            };
            i = lt;
        } else {
            display = None;
        }
        if v.get(i) == Some(&b'<') {
            let gt = i + v[i..].iter().position(|c| *c == b'>')?;
            let (is, ie) = scan::trim(&v[i + 1..gt]);
            uri_text = text.get(i + 1 + is..i + 1 + ie)?;
            i = gt + 1;
        } else {
            // addr-spec: the URI ends at the first ';' or whitespace; what follows are
            // header parameters (RFC 3261 §20.10).
            let us = i;
            while i < v.len() && v[i] != b';' && !scan::is_ws(v[i]) {
                i += 1;
            }
            uri_text = text.get(us..i)?;
        }
        let uri = UriRef::parse(uri_text).ok()?;
        Some(NameAddrRef {
            display,
            uri,
            params: text.get(i..)?,
        })
    }
}

impl fmt::Display for NameAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(d) = &self.display {
            f.write_str(d)?;
            f.write_str(" ")?;
        }
        f.write_str("<")?;
        fmt::Display::fmt(&self.uri, f)?;
        f.write_str(">")?;
        fmt::Display::fmt(&self.params, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The borrowed check accepts exactly what the owned parser accepts, and reads
        /// the same parts.
        #[test]
        fn borrowed_check_agrees_with_the_parser(parts in prop::collection::vec(prop::sample::select(vec![
            "\"Al;ice\" ", "Bob ", "", "<", ">", "sip:", "sips:", "tel:+1", "a@", "b.example", "[2001:db8::1]",
            "192.0.2.1", ":5060", ":99999", ";tag=t1", "; tag = t3 ", ";lr", ";x=\"q;v\"", "?h=1", " ", "\"", ";", "=",
            "@", "é",
        ]), 1..8)) {
            let v = parts.concat();
            let owned = NameAddr::parse(v.as_bytes());
            let borrowed = NameAddrRef::parse(v.as_bytes());
            prop_assert_eq!(owned.is_some(), borrowed.is_some(), "{}", v);
            if let (Some(o), Some(b)) = (owned, borrowed) {
                prop_assert_eq!(o.display.as_deref(), b.display);
                prop_assert_eq!(o.uri, b.uri.to_uri());
                prop_assert_eq!(Some(o.params), Params::parse_header(b.params));
            }
        }
    }

    #[test]
    fn forms() {
        let n = NameAddr::parse(
            br#""J Rosenberg \\\""       <sip:jdrosen@example.com>  ;  tag = 98asjd8"#,
        )
        .unwrap();
        assert_eq!(n.display.as_deref(), Some(r#""J Rosenberg \\\"""#));
        assert_eq!(n.tag(), Some("98asjd8"));
        let n = NameAddr::parse(b"sip:caller@example.net;tag=8814").unwrap();
        assert_eq!(n.tag(), Some("8814"));
        assert!(n.uri.as_sip().unwrap().params.is_empty());
        let n =
            NameAddr::parse(b"Bob <sip:bob@[2001:db8::1]:5060;transport=tcp>;expires=60").unwrap();
        assert_eq!(n.display.as_deref(), Some("Bob"));
        assert_eq!(n.param("expires"), Some(Some("60")));
        assert_eq!(
            n.to_string(),
            "Bob <sip:bob@[2001:db8::1]:5060;transport=tcp>;expires=60"
        );
    }

    #[test]
    fn rejects_unbalanced_and_bad_display() {
        assert!(NameAddr::parse(br#""Mr J. User <sip:j.user@example.com>"#).is_none());
        assert!(NameAddr::parse(b"Bell, Alexander <sip:a.g.bell@bell-tel.com>").is_none());
        assert!(NameAddr::parse(b"<sip:a@b").is_none());
    }
}
