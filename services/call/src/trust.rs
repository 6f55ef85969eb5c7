//! Who may place calls through the node.
//!
//! An SBC is an open relay unless it says otherwise: every source is untrusted until a
//! rule names it. A request comes from one of the configured trunks (their `sources`),
//! from the access network (`[sip] access_sources`: the callers' side), or from a
//! stranger, who gets 403 or silence and costs the node no call state.

use ipnet::IpNet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use trunkline_sip::{Peer, Transport};

/// One entry of a source list: a network (`203.0.113.0/24`, a bare address is a /32 or
/// /128) or one exact address and port (`203.0.113.5:5060`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Any port of any address in the network.
    Net(IpNet),
    /// Exactly this address and port: what a trunk's own `address` stands for when no
    /// `sources` are given, so a caller on the same host (another port) is not taken
    /// for the trunk.
    Exact(SocketAddr),
    /// Any port of this address, over TLS only: what a TLS trunk's own `address` stands
    /// for when no `sources` are given. Its connections come from any port, but a
    /// datagram claiming its address is not the carrier: UDP sources are forged at no
    /// cost, and a forged INVITE taken for the trunk's would place a call (toll fraud)
    /// even if the forger never sees an answer.
    TlsFrom(IpAddr),
}

impl Source {
    /// Whether a message from `addr` that arrived over `transport` matches the rule.
    pub fn matches(&self, addr: SocketAddr, transport: Transport) -> bool {
        match self {
            Source::Net(net) => net.contains(&addr.ip()),
            Source::Exact(a) => *a == addr,
            Source::TlsFrom(ip) => transport == Transport::Tls && *ip == addr.ip(),
        }
    }
}

/// A source list entry that is neither an address, an address:port nor a CIDR.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an IP address, IP:port or CIDR network")]
pub struct BadSource(pub String);

impl FromStr for Source {
    type Err = BadSource;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if let Ok(net) = s.parse::<IpNet>() {
            return Ok(Source::Net(net.trunc()));
        }
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(Source::Net(IpNet::from(ip)));
        }
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return Ok(Source::Exact(addr));
        }
        Err(BadSource(s.to_string()))
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Net(n) => write!(f, "{n}"),
            Source::Exact(a) => write!(f, "{a}"),
            Source::TlsFrom(ip) => write!(f, "{ip} (over TLS)"),
        }
    }
}

/// Where a request came from, as far as the node's rules know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// One of the configured trunks (its index in the router's trunk list).
    Trunk(usize),
    /// The access network: callers the node serves.
    Access,
    /// Nobody the configuration names.
    Unknown,
}

impl Origin {
    pub fn is_trusted(self) -> bool {
        self != Origin::Unknown
    }

    /// The trunk the request came from, if any.
    pub fn trunk(self) -> Option<usize> {
        match self {
            Origin::Trunk(i) => Some(i),
            _ => None,
        }
    }
}

/// The node's source rules: each trunk's sources (indexed like the router's trunks) and
/// the access networks.
#[derive(Debug, Clone, Default)]
pub struct Trust {
    trunks: Vec<Vec<Source>>,
    access: Vec<Source>,
}

impl Trust {
    pub fn new(trunks: Vec<Vec<Source>>, access: Vec<Source>) -> Trust {
        Trust { trunks, access }
    }

    /// Who `source` is. A trunk wins over the access network when both match: a carrier
    /// in a network the access list also covers is still that carrier.
    pub fn classify(&self, source: &Peer) -> Origin {
        let (addr, transport) = (unmapped(source.addr), source.transport);
        if let Some(i) = self
            .trunks
            .iter()
            .position(|list| list.iter().any(|s| s.matches(addr, transport)))
        {
            return Origin::Trunk(i);
        }
        if self.access.iter().any(|s| s.matches(addr, transport)) {
            return Origin::Access;
        }
        Origin::Unknown
    }
}

/// An IPv4 peer seen on a dual-stack socket (`::ffff:192.0.2.1`) is matched as IPv4.
fn unmapped(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), addr.port()),
            None => addr,
        },
        IpAddr::V4(_) => addr,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(s: &str) -> Source {
        s.parse().unwrap()
    }

    fn at(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn udp(s: &str) -> Peer {
        Peer::new(Transport::Udp, at(s))
    }

    #[test]
    fn parses_networks_addresses_and_exact_hops() {
        assert_eq!(
            src("10.0.0.0/8"),
            Source::Net("10.0.0.0/8".parse().unwrap())
        );
        assert_eq!(
            src("10.1.2.3/8"),
            Source::Net("10.0.0.0/8".parse().unwrap()),
            "host bits are dropped"
        );
        assert_eq!(
            src("192.0.2.1"),
            Source::Net("192.0.2.1/32".parse().unwrap())
        );
        assert_eq!(src("2001:db8::/32").to_string(), "2001:db8::/32");
        assert_eq!(src("192.0.2.1:5060"), Source::Exact(at("192.0.2.1:5060")));
        assert_eq!(
            "carrier.example".parse::<Source>(),
            Err(BadSource("carrier.example".into()))
        );
        assert!("10.0.0.0/33".parse::<Source>().is_err());
    }

    #[test]
    fn trunks_win_over_access_and_strangers_are_unknown() {
        let trust = Trust::new(
            vec![
                vec![src("203.0.113.0/24")],
                vec![src("127.0.0.1:5090"), src("198.51.100.7")],
            ],
            vec![src("127.0.0.0/8"), src("203.0.0.0/8")],
        );
        assert_eq!(trust.classify(&udp("203.0.113.9:5060")), Origin::Trunk(0));
        assert_eq!(trust.classify(&udp("127.0.0.1:5090")), Origin::Trunk(1));
        assert_eq!(trust.classify(&udp("198.51.100.7:40000")), Origin::Trunk(1));
        assert_eq!(
            trust.classify(&udp("127.0.0.1:5070")),
            Origin::Access,
            "a caller on the trunk's host but another port is not the trunk"
        );
        assert_eq!(trust.classify(&udp("203.0.114.1:5060")), Origin::Access);
        assert_eq!(trust.classify(&udp("192.0.2.66:5060")), Origin::Unknown);
        assert_eq!(
            trust.classify(&udp("[::ffff:127.0.0.1]:5070")),
            Origin::Access,
            "v4-mapped peers match v4 rules"
        );
        assert!(!Origin::Unknown.is_trusted());
        assert_eq!(Origin::Trunk(1).trunk(), Some(1));
    }

    /// A TLS trunk's own address is the trunk over TLS only: a datagram or plain TCP
    /// connection from that address (UDP sources cost nothing to forge) is not.
    #[test]
    fn a_tls_trunks_address_is_the_trunk_over_tls_only() {
        let carrier: IpAddr = "198.51.100.7".parse().unwrap();
        let trust = Trust::new(vec![vec![Source::TlsFrom(carrier)]], vec![]);
        let from = |transport| Peer::new(transport, at("198.51.100.7:41234"));
        assert_eq!(trust.classify(&from(Transport::Tls)), Origin::Trunk(0));
        assert_eq!(trust.classify(&from(Transport::Udp)), Origin::Unknown);
        assert_eq!(trust.classify(&from(Transport::Tcp)), Origin::Unknown);
        assert_eq!(
            trust.classify(&Peer::new(Transport::Tls, at("198.51.100.8:41234"))),
            Origin::Unknown
        );
    }
}
