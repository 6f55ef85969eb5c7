//! The Via header (RFC 3261 §20.42, RFC 3581 rport).

use crate::params::{Param, Params};
use crate::scan;
use crate::uri::{Host, HostRef};
use compact_str::{format_compact, CompactString};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::SocketAddr;

/// The RFC 3261 branch prefix that marks a compliant transaction id.
pub const MAGIC_COOKIE: &str = "z9hG4bK";

/// One Via value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Via {
    /// Protocol name and version, normally `SIP/2.0`. (`CompactString`s, as in
    /// [`Param`]: a Via is parsed several times per message, and these fit inline.)
    pub protocol: CompactString,
    /// Transport as written (`UDP`, `TCP`, `TLS`, `WS`, or any extension).
    pub transport: CompactString,
    pub host: Host,
    pub port: Option<u16>,
    pub params: Params,
}

impl Via {
    /// Parses one comma-free Via value. LWS around `/` and before parameters is
    /// allowed (RFC 4475 §3.1.1.1).
    pub fn parse(v: &[u8]) -> Option<Via> {
        let r = ViaRef::split(v)?;
        let protocol = if r.name == "SIP" && r.version == "2.0" {
            CompactString::const_new("SIP/2.0")
        } else {
            format_compact!("{}/{}", r.name, r.version)
        };
        Some(Via {
            protocol,
            transport: CompactString::from(r.transport),
            host: r.host.to_host(),
            port: r.port,
            params: Params::parse_header(r.params)?,
        })
    }

    /// A Via this node adds to a request it sends.
    pub fn new(transport: &str, host: Host, port: Option<u16>, branch: String) -> Via {
        Via {
            protocol: CompactString::const_new("SIP/2.0"),
            transport: CompactString::from(transport),
            host,
            port,
            params: Params::from(vec![
                Param::new("branch", Some(branch)),
                Param::new("rport", None),
            ]),
        }
    }

    pub fn param(&self, name: &str) -> Option<Option<&str>> {
        self.params.get(name)
    }

    /// The branch parameter, the transaction id for RFC 3261 peers.
    pub fn branch(&self) -> Option<&str> {
        self.param("branch").flatten()
    }

    /// True when the branch carries the RFC 3261 magic cookie (and more than it:
    /// a branch that is only the cookie is treated as an RFC 2543 branch).
    pub fn has_rfc3261_branch(&self) -> bool {
        self.branch().is_some_and(Via::is_rfc3261_branch)
    }

    /// True for a branch that carries the magic cookie and more.
    pub fn is_rfc3261_branch(branch: &str) -> bool {
        branch.len() > MAGIC_COOKIE.len() && branch.starts_with(MAGIC_COOKIE)
    }

    /// Sets or replaces a parameter.
    pub fn set_param(&mut self, name: &str, value: Option<String>) {
        self.params.set(name, value);
    }

    /// Applies RFC 3261 §18.2.1 and RFC 3581 §4 for a request received from `source`:
    /// `received` when the sent-by host differs from the source IP (or rport asked for),
    /// and `rport` filled in with the source port when the client asked for it.
    /// `force_rport` answers to the source port even if the client did not ask,
    /// which is what keeps clients behind NAT reachable.
    pub fn stamp_received(&mut self, source: SocketAddr, force_rport: bool) {
        let asked_rport = self.params.contains("rport");
        if asked_rport || force_rport {
            self.set_param("rport", Some(source.port().to_string()));
        }
        if self.host.ip() != Some(source.ip()) || asked_rport || force_rport {
            let received = match source.ip() {
                std::net::IpAddr::V4(a) => crate::text::Ipv4Text::new(a).as_str().to_string(),
                ip => ip.to_string(),
            };
            self.set_param("received", Some(received));
        }
    }

    /// Where a response to this Via goes over an unreliable transport
    /// (RFC 3261 §18.2.2 with RFC 3581): received/rport when present, else sent-by.
    pub fn response_target(&self) -> Option<SocketAddr> {
        let ip = match self.param("received").flatten() {
            Some(r) => Host::parse(r)?.ip()?,
            None => self.host.ip()?,
        };
        let port = match self.param("rport").flatten() {
            Some(p) => p.parse().ok()?,
            None => self.port.unwrap_or(5060),
        };
        Some(SocketAddr::new(ip, port))
    }
}

/// One Via value checked against [`Via::parse`]'s grammar, its parts borrowed from the
/// text. The validator and the server transaction key read every request's Vias; a
/// borrowed view spares building (and dropping) an owned `Via` for each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ViaRef<'a> {
    /// Protocol name and version (`SIP`, `2.0`) and transport, as written.
    pub name: &'a str,
    pub version: &'a str,
    pub transport: &'a str,
    pub host: HostRef<'a>,
    pub port: Option<u16>,
    /// The parameters' text (`;branch=z9hG4bK1;rport`), checked.
    pub params: &'a str,
}

impl<'a> ViaRef<'a> {
    /// The text [`Via::stamp_received`] and `Display` make of this Via, written from the
    /// borrowed parts: the dispatcher stamps the top Via of every request, and parsing it
    /// into an owned `Via` (each parameter allocated) to write it back out cost about a
    /// hundredth of the node's instructions per call. Parameters keep their order;
    /// `rport` and `received` replace the first of their name, or come last in that order,
    /// as [`Params::set`] places them. `None` when the parameters do not parse.
    pub fn stamped(&self, source: SocketAddr, force_rport: bool) -> Option<String> {
        let asked_rport = Params::find_header(self.params, "rport").is_some();
        let mut port_buf = itoa::Buffer::new();
        let rport = (asked_rport || force_rport).then(|| port_buf.format(source.port()));
        let v4;
        let v6;
        let received: Option<&str> =
            if self.host.ip() != Some(source.ip()) || asked_rport || force_rport {
                Some(match source.ip() {
                    std::net::IpAddr::V4(a) => {
                        v4 = crate::text::Ipv4Text::new(a);
                        v4.as_str()
                    }
                    ip => {
                        v6 = ip.to_string();
                        &v6
                    }
                })
            } else {
                None
            };
        let mut out = String::with_capacity(self.params.len() + 64);
        out.push_str(self.name);
        out.push('/');
        out.push_str(self.version);
        out.push('/');
        out.push_str(self.transport);
        out.push(' ');
        match self.host {
            HostRef::Domain(d) => out.push_str(d),
            HostRef::V4(a) => out.push_str(crate::text::Ipv4Text::new(a).as_str()),
            HostRef::V6(a) => {
                out.push('[');
                out.push_str(&a.to_string());
                out.push(']');
            }
        }
        if let Some(p) = self.port {
            out.push(':');
            out.push_str(itoa::Buffer::new().format(p));
        }
        let (mut rport_set, mut received_set) = (rport.is_none(), received.is_none());
        crate::params::walk_header(self.params, |name, value| {
            let mut value = value;
            if !rport_set && name.eq_ignore_ascii_case("rport") {
                value = rport;
                rport_set = true;
            } else if !received_set && name.eq_ignore_ascii_case("received") {
                value = received;
                received_set = true;
            }
            push_param(&mut out, name, value);
        })?;
        if !rport_set {
            push_param(&mut out, "rport", rport);
        }
        if !received_set {
            push_param(&mut out, "received", received);
        }
        Some(out)
    }

    /// Checks one comma-free Via value as [`Via::parse`] does.
    pub fn parse(v: &'a [u8]) -> Option<ViaRef<'a>> {
        ViaRef::split(v).filter(|r| Params::check_header(r.params))
    }

    /// Everything but the parameters checked: [`Via::parse`] checks those as it builds
    /// them. The value is checked as UTF-8 once (the parameters must be text too) and cut
    /// at ASCII delimiters, so every cut is a character boundary.
    fn split(v: &'a [u8]) -> Option<ViaRef<'a>> {
        let text = std::str::from_utf8(v).ok()?;
        let mut i = scan::skip_ws(v, 0);
        let mut parts = [""; 3];
        for (n, part) in parts.iter_mut().enumerate() {
            let s = i;
            while i < v.len() && scan::is_token_char(v[i]) {
                i += 1;
            }
            if i == s {
                return None;
            }
            *part = text.get(s..i)?;
            i = scan::skip_ws(v, i);
            if n < 2 {
                if v.get(i) != Some(&b'/') {
                    return None;
                }
                i = scan::skip_ws(v, i + 1);
            }
        }
        // sent-by: host [ ":" port ]
        if i >= v.len() {
            return None;
        }
        let hs = i;
        if v[i] == b'[' {
            while i < v.len() && v[i] != b']' {
                i += 1;
            }
            i += 1;
        } else {
            while i < v.len() && !matches!(v[i], b':' | b';' | b' ' | b'\t') {
                i += 1;
            }
        }
        let host = HostRef::parse(text.get(hs..i)?)?;
        i = scan::skip_ws(v, i);
        let mut port = None;
        if i < v.len() && v[i] == b':' {
            i = scan::skip_ws(v, i + 1);
            let ps = i;
            while i < v.len() && v[i].is_ascii_digit() {
                i += 1;
            }
            if i == ps || i - ps > 5 {
                return None;
            }
            port = scan::decimal(&v[ps..i]).and_then(|n| u16::try_from(n).ok());
            port?;
        }
        Some(ViaRef {
            name: parts[0],
            version: parts[1],
            transport: parts[2],
            host,
            port,
            params: text.get(i..)?,
        })
    }

    /// The first parameter called `name`, as [`Via::param`] finds it.
    pub fn param(&self, name: &str) -> Option<Option<&'a str>> {
        Params::find_header(self.params, name)
    }

    /// The branch parameter.
    pub fn branch(&self) -> Option<&'a str> {
        self.param("branch").flatten()
    }

    /// As [`Via::has_rfc3261_branch`].
    pub fn has_rfc3261_branch(&self) -> bool {
        self.branch().is_some_and(Via::is_rfc3261_branch)
    }
}

impl fmt::Display for Via {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.protocol)?;
        f.write_str("/")?;
        f.write_str(&self.transport)?;
        f.write_str(" ")?;
        fmt::Display::fmt(&self.host, f)?;
        if let Some(p) = self.port {
            crate::text::write_port(f, p)?;
        }
        fmt::Display::fmt(&self.params, f)
    }
}

/// `;name[=value]`, as `Params`' `Display` writes one parameter.
fn push_param(out: &mut String, name: &str, value: Option<&str>) {
    out.push(';');
    out.push_str(name);
    if let Some(v) = value {
        out.push('=');
        out.push_str(v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Vias with and without rport/received (valued, bare, repeated, in other cases),
    /// spaced loosely or not, with IPv4, IPv6 and domain hosts.
    fn via_text() -> impl Strategy<Value = String> {
        let host = prop::sample::select(vec![
            "192.0.2.7",
            "198.51.100.1",
            "[2001:db8::1]",
            "host.example",
            "127.0.0.1",
        ]);
        let port = prop::sample::select(vec!["", ":5060", ":3333", ":40000"]);
        let param = prop::sample::select(vec![
            ";branch=z9hG4bK1",
            ";rport",
            ";rport=1234",
            ";RPort",
            ";received=10.0.0.1",
            ";Received=192.0.2.7",
            " ; ttl = 16",
            ";x=\"a;b\"",
            ";lr",
            ";alias",
        ]);
        let lead = prop::sample::select(vec!["SIP/2.0/UDP ", "SIP / 2.0 / TCP ", "SIP/2.0/TLS  "]);
        (lead, host, port, prop::collection::vec(param, 0..5))
            .prop_map(|(l, h, p, ps)| format!("{l}{h}{p}{}", ps.concat()))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// The borrowed writer writes what parsing, stamping and formatting write.
        #[test]
        fn stamped_text_is_what_the_owned_via_writes(
            v in via_text(),
            source in prop::sample::select(vec![
                "192.0.2.7:3333", "192.0.2.7:5060", "203.0.113.5:40000", "[2001:db8::1]:5060",
                "[2001:db8::2]:7000",
            ]),
            force in any::<bool>(),
        ) {
            let source: SocketAddr = source.parse().unwrap();
            let mut owned = Via::parse(v.as_bytes()).unwrap();
            owned.stamp_received(source, force);
            let borrowed = ViaRef::parse(v.as_bytes()).unwrap().stamped(source, force);
            prop_assert_eq!(borrowed, Some(owned.to_string()));
        }
    }

    #[test]
    fn the_borrowed_check_agrees_with_the_parser() {
        for v in [
            "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1;rport",
            "SIP / 2.0 / TCP host.example ; branch = z9hG4bK2 ; received=192.0.2.9",
            "SIP/2.0/UDP [2001:db8::1]:5060;branch=z9hG4bK3;x=\"a;b\"",
            "SIP/2.0/UDP h:99999;branch=1",
            "SIP/2.0/UDP h;branch=",
            "SIP/2.0/UDP h;=x",
            "SIP/2.0 UDP h",
            "SIP/2.0/UDP ",
            "SIP/2.0/UDP h;x=\"unterminated",
        ] {
            let owned = Via::parse(v.as_bytes());
            let borrowed = ViaRef::parse(v.as_bytes());
            assert_eq!(owned.is_some(), borrowed.is_some(), "{v}");
            if let (Some(o), Some(b)) = (owned, borrowed) {
                assert_eq!(o.protocol, format!("{}/{}", b.name, b.version), "{v}");
                assert_eq!(o.transport, b.transport, "{v}");
                assert_eq!(o.host, b.host.to_host(), "{v}");
                assert_eq!(o.port, b.port, "{v}");
                assert_eq!(o.branch(), b.branch(), "{v}");
                assert_eq!(o.param("received"), b.param("received"), "{v}");
                assert_eq!(o.has_rfc3261_branch(), b.has_rfc3261_branch(), "{v}");
            }
        }
    }

    #[test]
    fn parses_spaced_via() {
        let v = Via::parse(b"SIP  /   2.0 /UDP    192.0.2.2;branch=390skdjuw").unwrap();
        assert_eq!(v.transport, "UDP");
        assert_eq!(v.branch(), Some("390skdjuw"));
        assert!(!v.has_rfc3261_branch());
        let v =
            Via::parse(b"SIP  / 2.0  / TCP     spindle.example.com   ;  branch  =   z9hG4bK9ikj8")
                .unwrap();
        assert_eq!(v.host, Host::Domain("spindle.example.com".into()));
        assert!(v.has_rfc3261_branch());
    }

    #[test]
    fn ipv6_sent_by_and_rport() {
        let mut v = Via::parse(b"SIP/2.0/UDP [2001:db8::9]:5070;branch=z9hG4bKx;rport").unwrap();
        assert_eq!(v.port, Some(5070));
        v.stamp_received("[2001:db8::1]:40000".parse().unwrap(), false);
        assert_eq!(
            v.response_target(),
            Some("[2001:db8::1]:40000".parse().unwrap())
        );
        assert_eq!(
            v.to_string(),
            "SIP/2.0/UDP [2001:db8::9]:5070;branch=z9hG4bKx;rport=40000;received=2001:db8::1"
        );
    }

    #[test]
    fn without_rport_answers_sent_by_port_at_received_ip() {
        let mut v = Via::parse(b"SIP/2.0/UDP host.example.com:5080;branch=z9hG4bKa").unwrap();
        v.stamp_received("192.0.2.7:3333".parse().unwrap(), false);
        assert_eq!(v.response_target(), Some("192.0.2.7:5080".parse().unwrap()));
        v.stamp_received("192.0.2.7:3333".parse().unwrap(), true);
        assert_eq!(v.response_target(), Some("192.0.2.7:3333".parse().unwrap()));
    }

    #[test]
    fn rejects_garbage() {
        assert!(Via::parse(b"SIP/2.0 UDP host").is_none());
        assert!(Via::parse(b"SIP/2.0/UDP").is_none());
        assert!(Via::parse(b"SIP/2.0/UDP host:99999999").is_none());
    }
}
