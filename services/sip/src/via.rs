//! The Via header (RFC 3261 §20.42, RFC 3581 rport).

use crate::params::{Param, Params};
use crate::scan;
use crate::uri::Host;
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
            *part = std::str::from_utf8(&v[s..i]).ok()?;
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
        let host = Host::parse(std::str::from_utf8(v.get(hs..i)?).ok()?)?;
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
            port = std::str::from_utf8(&v[ps..i]).ok()?.parse().ok();
            port?;
        }
        let params = Params::parse_header(&v[i..])?;
        let protocol = if parts[0] == "SIP" && parts[1] == "2.0" {
            CompactString::const_new("SIP/2.0")
        } else {
            format_compact!("{}/{}", parts[0], parts[1])
        };
        Some(Via {
            protocol,
            transport: CompactString::from(parts[2]),
            host,
            port,
            params,
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
        self.branch()
            .is_some_and(|b| b.len() > MAGIC_COOKIE.len() && b.starts_with(MAGIC_COOKIE))
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
                std::net::IpAddr::V4(a) => crate::ip_text::Ipv4Text::new(a).as_str().to_string(),
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

impl fmt::Display for Via {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{} {}", self.protocol, self.transport, self.host)?;
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        write!(f, "{}", self.params)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
