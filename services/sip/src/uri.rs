//! SIP and other URIs (RFC 3261 §19.1, §25.1).

use crate::params::Params;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A URI host: a domain name or an IP literal. IPv6 is written with brackets.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Host {
    Domain(String),
    V4(Ipv4Addr),
    V6(Ipv6Addr),
}

impl Host {
    /// Parses a host (`[v6]`, dotted IPv4 or hostname).
    pub fn parse(s: &str) -> Option<Host> {
        HostRef::parse(s).map(HostRef::to_host)
    }

    /// The IP address when the host is a literal.
    pub fn ip(&self) -> Option<IpAddr> {
        match self {
            Host::V4(a) => Some(IpAddr::V4(*a)),
            Host::V6(a) => Some(IpAddr::V6(*a)),
            Host::Domain(_) => None,
        }
    }
}

/// A host read from text, the domain name borrowed: what a validator needs to check a
/// host without allocating (the grammar is [`Host::parse`]'s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostRef<'a> {
    Domain(&'a str),
    V4(Ipv4Addr),
    V6(Ipv6Addr),
}

impl<'a> HostRef<'a> {
    /// Parses a host (`[v6]`, dotted IPv4 or hostname).
    pub fn parse(s: &'a str) -> Option<HostRef<'a>> {
        if let Some(inner) = s.strip_prefix('[') {
            let inner = inner.strip_suffix(']')?;
            return inner.parse().ok().map(HostRef::V6);
        }
        if s.is_empty() {
            return None;
        }
        if s.as_bytes()[0].is_ascii_digit() {
            if let Some(v4) = parse_ipv4(s.as_bytes()) {
                return Some(HostRef::V4(v4));
            }
        }
        // A bare IPv6 literal appears in some Via received= values.
        if s.contains(':') {
            return s.parse().ok().map(HostRef::V6);
        }
        if s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'.' || c == b'_')
        {
            Some(HostRef::Domain(s))
        } else {
            None
        }
    }

    /// The IP address when the host is a literal.
    pub fn ip(self) -> Option<IpAddr> {
        match self {
            HostRef::V4(a) => Some(IpAddr::V4(a)),
            HostRef::V6(a) => Some(IpAddr::V6(a)),
            HostRef::Domain(_) => None,
        }
    }

    pub fn to_host(self) -> Host {
        match self {
            HostRef::Domain(d) => Host::Domain(d.to_string()),
            HostRef::V4(a) => Host::V4(a),
            HostRef::V6(a) => Host::V6(a),
        }
    }
}

/// A dotted quad as `Ipv4Addr::from_str` reads it (four decimal octets, no leading
/// zeros), without its generic parser: hosts are read from every Via and URI.
fn parse_ipv4(b: &[u8]) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut i = 0;
    for (n, octet) in octets.iter_mut().enumerate() {
        if n > 0 {
            if b.get(i) != Some(&b'.') {
                return None;
            }
            i += 1;
        }
        let start = i;
        let mut value: u32 = 0;
        while let Some(c) = b.get(i).filter(|c| c.is_ascii_digit()) {
            value = value * 10 + u32::from(c - b'0');
            i += 1;
            if i - start > 3 {
                return None;
            }
        }
        if i == start || value > 255 || (i - start > 1 && b[start] == b'0') {
            return None;
        }
        *octet = value as u8;
    }
    (i == b.len()).then(|| Ipv4Addr::from(octets))
}

impl From<IpAddr> for Host {
    fn from(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(a) => Host::V4(a),
            IpAddr::V6(a) => Host::V6(a),
        }
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Domain(d) => f.write_str(d),
            Host::V4(a) => f.write_str(crate::text::Ipv4Text::new(*a).as_str()),
            Host::V6(a) => write!(f, "[{a}]"),
        }
    }
}

/// `sip:` or `sips:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SipScheme {
    Sip,
    Sips,
}

/// A sip/sips URI broken into its parts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SipUri {
    pub scheme: SipScheme,
    /// User part, still %-escaped as received.
    pub user: Option<String>,
    pub password: Option<String>,
    pub host: Host,
    pub port: Option<u16>,
    pub params: Params,
    /// Everything after `?`, as received.
    pub headers: Option<String>,
}

impl SipUri {
    /// A plain `sip:[user@]host[:port]`.
    pub fn new(user: Option<String>, host: Host, port: Option<u16>) -> Self {
        SipUri {
            scheme: SipScheme::Sip,
            user,
            password: None,
            host,
            port,
            params: Params::new(),
            headers: None,
        }
    }

    /// Looks up a URI parameter by case-insensitive name.
    pub fn param(&self, name: &str) -> Option<Option<&str>> {
        self.params.get(name)
    }

    /// Sets or replaces a parameter.
    pub fn set_param(&mut self, name: &str, value: Option<String>) {
        self.params.set(name, value);
    }

    /// Loose routing flag (RFC 3261 §16.12.1.1).
    pub fn is_lr(&self) -> bool {
        self.params.contains("lr")
    }
}

/// Any URI. Non-SIP schemes are kept opaque so they can be relayed or rejected
/// (416) by policy instead of failing the parse.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Uri {
    Sip(SipUri),
    Other { scheme: String, rest: String },
}

impl Uri {
    /// Parses an absolute URI. Whitespace and angle brackets are not allowed here:
    /// a Request-URI like `<sip:x>` or one with embedded LWS is malformed (RFC 4475 §3.1.2.7/8).
    pub fn parse(s: &str) -> Result<Uri, &'static str> {
        UriRef::parse(s).map(|u| u.to_uri())
    }

    /// The SIP form, if this is a sip/sips URI.
    pub fn as_sip(&self) -> Option<&SipUri> {
        match self {
            Uri::Sip(u) => Some(u),
            Uri::Other { .. } => None,
        }
    }

    /// The scheme, lower-cased for sip/sips.
    pub fn scheme(&self) -> &str {
        match self {
            Uri::Sip(u) => match u.scheme {
                SipScheme::Sip => "sip",
                SipScheme::Sips => "sips",
            },
            Uri::Other { scheme, .. } => scheme,
        }
    }

    /// The user part (or a tel: number), used for routing.
    pub fn user(&self) -> Option<&str> {
        match self {
            Uri::Sip(u) => u.user.as_deref(),
            Uri::Other { scheme, rest } if scheme.eq_ignore_ascii_case("tel") => {
                Some(rest.split(';').next().unwrap_or(rest))
            }
            Uri::Other { .. } => None,
        }
    }
}

/// A URI checked against [`Uri::parse`]'s grammar, its parts borrowed from the text.
///
/// The validator checks the To, From and Contact URIs of every message and keeps
/// nothing; building owned URIs for that was the largest share of its allocations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UriRef<'a> {
    Sip(SipUriRef<'a>),
    Other { scheme: &'a str, rest: &'a str },
}

/// The parts of a sip/sips URI, borrowed; see [`SipUri`] for each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SipUriRef<'a> {
    pub scheme: SipScheme,
    pub user: Option<&'a str>,
    pub password: Option<&'a str>,
    pub host: HostRef<'a>,
    pub port: Option<u16>,
    /// The parameters' text (`;a=b;c`), already checked.
    pub params: &'a str,
    pub headers: Option<&'a str>,
}

/// Whether `b` holds a byte no URI may hold (controls, space, `<`, `>`, `"`, non-ASCII).
/// Every URI of every message is checked (about thirty per anchored call), so the test is
/// written without an early exit or a table, which lets the compiler compare many bytes
/// at once (`load/callgrind.sh`: ~650 fewer instructions per call than a lookup per byte).
fn has_byte_not_in_uri(b: &[u8]) -> bool {
    b.iter().fold(false, |bad, &c| {
        bad | (c <= b' ') | (c == b'<') | (c == b'>') | (c == b'"') | (c >= 0x7f)
    })
}

impl<'a> UriRef<'a> {
    /// Checks `s` as [`Uri::parse`] does and splits it into borrowed parts.
    pub fn parse(s: &'a str) -> Result<UriRef<'a>, &'static str> {
        let colon = s.bytes().position(|c| c == b':').ok_or("no scheme")?;
        let scheme = &s[..colon];
        let rest = &s[colon + 1..];
        let sb = scheme.as_bytes();
        if sb.is_empty()
            || !sb[0].is_ascii_alphabetic()
            || !sb
                .iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'-' | b'.'))
        {
            return Err("bad scheme");
        }
        if has_byte_not_in_uri(s.as_bytes()) {
            return Err("invalid character");
        }
        let sip_scheme = if scheme.eq_ignore_ascii_case("sip") {
            SipScheme::Sip
        } else if scheme.eq_ignore_ascii_case("sips") {
            SipScheme::Sips
        } else {
            if rest.is_empty() {
                return Err("empty URI");
            }
            return Ok(UriRef::Other { scheme, rest });
        };
        scan_sip(sip_scheme, rest).map(UriRef::Sip)
    }

    /// The owned URI.
    pub fn to_uri(&self) -> Uri {
        match *self {
            UriRef::Sip(u) => Uri::Sip(SipUri {
                scheme: u.scheme,
                user: u.user.map(str::to_string),
                password: u.password.map(str::to_string),
                host: u.host.to_host(),
                port: u.port,
                // Checked by `scan_sip`, so this parses all of it.
                params: Params::parse_uri(u.params.as_bytes())
                    .map(|(p, _)| p)
                    .unwrap_or_default(),
                headers: u.headers.map(str::to_string),
            }),
            UriRef::Other { scheme, rest } => Uri::Other {
                scheme: scheme.to_string(),
                rest: rest.to_string(),
            },
        }
    }

    /// The SIP form, if this is a sip/sips URI.
    pub fn as_sip(&self) -> Option<&SipUriRef<'a>> {
        match self {
            UriRef::Sip(u) => Some(u),
            UriRef::Other { .. } => None,
        }
    }

    /// The scheme as written.
    pub fn scheme(&self) -> &'a str {
        match *self {
            UriRef::Sip(u) => match u.scheme {
                SipScheme::Sip => "sip",
                SipScheme::Sips => "sips",
            },
            UriRef::Other { scheme, .. } => scheme,
        }
    }
}

fn scan_sip(scheme: SipScheme, s: &str) -> Result<SipUriRef<'_>, &'static str> {
    let (userinfo, hostpart) = match s.bytes().position(|c| c == b'@') {
        Some(at) => (Some(&s[..at]), &s[at + 1..]),
        None => (None, s),
    };
    let (user, password) = match userinfo {
        Some(ui) => {
            let (u, p) = match ui.bytes().position(|c| c == b':') {
                Some(c) => (&ui[..c], Some(&ui[c + 1..])),
                None => (ui, None),
            };
            if u.is_empty() {
                return Err("empty user");
            }
            (Some(u), p)
        }
        None => (None, None),
    };
    let b = hostpart.as_bytes();
    // host
    let mut i = 0;
    if b.first() == Some(&b'[') {
        while i < b.len() && b[i] != b']' {
            i += 1;
        }
        if i == b.len() {
            return Err("unterminated IPv6 reference");
        }
        i += 1;
    } else {
        while i < b.len() && !matches!(b[i], b':' | b';' | b'?') {
            i += 1;
        }
    }
    let host = HostRef::parse(&hostpart[..i]).ok_or("bad host")?;
    let mut port = None;
    if i < b.len() && b[i] == b':' {
        let ps = i + 1;
        i = ps;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == ps || i - ps > 5 {
            return Err("bad port");
        }
        let value = crate::scan::decimal(&b[ps..i]).and_then(|n| u16::try_from(n).ok());
        port = Some(value.ok_or("bad port")?);
    }
    let used = Params::scan_uri(&b[i..]).ok_or("bad uri parameter")?;
    let j = i + used;
    let headers = if j < b.len() {
        if b[j] != b'?' {
            return Err("junk after host");
        }
        Some(&hostpart[j + 1..])
    } else {
        None
    };
    Ok(SipUriRef {
        scheme,
        user,
        password,
        host,
        port,
        params: &hostpart[i..j],
        headers,
    })
}

// The Display impls below write pieces with `write_str` and nested `fmt` calls rather
// than `write!`: headers are formatted for every message the node sends, and
// `write!`'s argument machinery was a visible share of the instructions per call.
impl fmt::Display for SipUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.scheme {
            SipScheme::Sip => "sip:",
            SipScheme::Sips => "sips:",
        })?;
        if let Some(u) = &self.user {
            f.write_str(u)?;
            if let Some(p) = &self.password {
                f.write_str(":")?;
                f.write_str(p)?;
            }
            f.write_str("@")?;
        }
        fmt::Display::fmt(&self.host, f)?;
        if let Some(p) = self.port {
            crate::text::write_port(f, p)?;
        }
        fmt::Display::fmt(&self.params, f)?;
        if let Some(h) = &self.headers {
            f.write_str("?")?;
            f.write_str(h)?;
        }
        Ok(())
    }
}

impl fmt::Display for Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Uri::Sip(u) => u.fmt(f),
            Uri::Other { scheme, rest } => {
                f.write_str(scheme)?;
                f.write_str(":")?;
                f.write_str(rest)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_hosts_read_as_the_standard_parser_reads_them() {
        for s in [
            "0.0.0.0",
            "1.2.3.4",
            "255.255.255.255",
            "256.1.1.1",
            "01.2.3.4",
            "1.2.3",
            "1.2.3.4.5",
            "1..3.4",
            "1.2.3.4 ",
            "1.2.3.04",
            "10.0.0.10",
            "1234.1.1.1",
            "1.2.3.",
            ".1.2.3",
            "1.2.3.4a",
            "0.0.0.00",
            "9.99.199.249",
        ] {
            assert_eq!(parse_ipv4(s.as_bytes()), s.parse().ok(), "{s}");
        }
    }

    #[test]
    fn parses_full_sip_uri() {
        let u =
            Uri::parse("sips:alice:secret@[2001:db8::10]:5061;transport=tcp;lr?subject=x").unwrap();
        let s = u.as_sip().unwrap();
        assert_eq!(s.scheme, SipScheme::Sips);
        assert_eq!(s.user.as_deref(), Some("alice"));
        assert_eq!(s.password.as_deref(), Some("secret"));
        assert_eq!(s.host, Host::V6("2001:db8::10".parse().unwrap()));
        assert_eq!(s.port, Some(5061));
        assert!(s.is_lr());
        assert_eq!(s.param("TRANSPORT"), Some(Some("tcp")));
        assert_eq!(s.headers.as_deref(), Some("subject=x"));
        assert_eq!(
            u.to_string(),
            "sips:alice:secret@[2001:db8::10]:5061;transport=tcp;lr?subject=x"
        );
    }

    #[test]
    fn user_part_may_hold_semicolons() {
        let u = Uri::parse("sip:+1-212-555-1212;isub=1@gw.example.com;user=phone").unwrap();
        let s = u.as_sip().unwrap();
        assert_eq!(s.user.as_deref(), Some("+1-212-555-1212;isub=1"));
        assert_eq!(s.param("user"), Some(Some("phone")));
    }

    #[test]
    fn other_schemes_are_opaque() {
        let u = Uri::parse("tel:+15551234;phone-context=x").unwrap();
        assert_eq!(u.scheme(), "tel");
        assert_eq!(u.user(), Some("+15551234"));
        assert!(Uri::parse("<sip:a@b>").is_err());
        assert!(Uri::parse("sip:a@b c").is_err());
        assert!(Uri::parse("sip:a@b:99999").is_err());
        assert!(Uri::parse("sip:a@b:65536").is_err());
        assert!(Uri::parse("sip:a@b:123456").is_err());
        assert!(Uri::parse("sip:a@b:").is_err());
        for (text, port) in [
            ("sip:a@b:65535", 65535),
            ("sip:a@b:00080", 80),
            ("sip:b:0", 0),
        ] {
            let u = Uri::parse(text).unwrap();
            assert_eq!(u.as_sip().and_then(|s| s.port), Some(port), "{text}");
        }
        assert!(Uri::parse("sip:@b").is_err());
    }

    #[test]
    fn bytes_outside_the_uri_alphabet_are_refused_wherever_they_are() {
        for c in (0u8..0x80).map(char::from).chain(['\u{e9}', '\u{20ac}']) {
            let refused = c <= ' ' || matches!(c, '<' | '>' | '"') || c >= '\u{7f}';
            // Before the 32nd byte, after it (past the first vector block), and in a
            // scheme other than sip.
            for text in [
                format!("sip:a{c}b@example.com"),
                format!("sip:alice@proxy.example.com;transport=udp;x=1{c}"),
                format!("tel:+1555{c}1234"),
            ] {
                let invalid = UriRef::parse(&text) == Err("invalid character");
                assert_eq!(invalid, refused, "{text:?}");
            }
        }
    }
}
