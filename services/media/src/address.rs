//! Where a party's media goes before it is latched: the address in its SDP, or the IP its
//! signalling came from. Pure, so each case is a unit test.
//!
//! A phone behind NAT writes its private address into SDP; the relay can never reach it, and
//! the address its SIP came from is the NAT's public one. A trunk writes the address it
//! really uses, which may differ from where its signalling comes from (separate media
//! servers), so its SDP must be trusted. The policy says which rule a party gets.

use std::net::IpAddr;

/// How the address of the party that sent an SDP is read.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum AddressPolicy {
    /// The SDP address as written: rtpengine's `trust address`. Right for trunks and any
    /// peer that handles its own NAT.
    #[default]
    Sdp,
    /// The IP the signalling came from, with the SDP's ports: rtpengine's default when the
    /// proxy passes `received from` (and its `SIP source address`).
    Source,
    /// The SDP address, unless the node cannot reach it — a private (RFC 1918, IPv6 unique
    /// local), shared (CGNAT, RFC 6598), link-local, loopback or unspecified address, or a
    /// host name — while the signalling came from another address: then the signalling
    /// source, as [`AddressPolicy::Source`]. An SBC's default for callers: a public SDP
    /// address is honoured, a NATed phone's private one is not.
    Auto,
}

impl AddressPolicy {
    /// The IP media for the party goes to (and is expected from) before it is latched:
    /// `sdp` is the SDP's connection address (`None` when it is not an IP literal),
    /// `source` the IP the signalling carrying it came from, if known. A hold (`0.0.0.0`
    /// in SDP) must not reach here: it stays a hold whatever the policy.
    pub fn resolve(self, sdp: Option<IpAddr>, source: Option<IpAddr>) -> Option<IpAddr> {
        match (self, source) {
            (AddressPolicy::Sdp, _) | (_, None) => sdp,
            (AddressPolicy::Source, Some(src)) => Some(src),
            (AddressPolicy::Auto, Some(src)) => match sdp {
                Some(ip) if ip == src || !unroutable(ip) => Some(ip),
                _ => Some(src),
            },
        }
    }

    /// The names the node's configuration uses.
    pub fn as_str(self) -> &'static str {
        match self {
            AddressPolicy::Sdp => "sdp",
            AddressPolicy::Source => "source",
            AddressPolicy::Auto => "auto",
        }
    }
}

impl std::fmt::Display for AddressPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether an SDP address cannot be where a remote party receives media as seen from the
/// node: private, shared (CGNAT), link-local, loopback or unspecified.
pub fn unroutable(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                // 100.64.0.0/10, shared address space for carrier-grade NAT (RFC 6598).
                || (a == 100 && (64..128).contains(&b))
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return unroutable(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                // fc00::/7 unique local, fe80::/10 link-local.
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn unroutable_addresses() {
        for a in [
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.10",
            "100.64.0.1",
            "100.127.255.254",
            "169.254.3.4",
            "127.0.0.1",
            "0.0.0.0",
            "fd00::1",
            "fe80::1",
            "::1",
            "::",
            "::ffff:192.168.1.10",
        ] {
            assert!(unroutable(ip(a)), "{a}");
        }
        for a in [
            "192.0.2.1",
            "203.0.113.5",
            "100.128.0.1",
            "100.63.255.255",
            "172.32.0.1",
            "2001:db8::1",
            "::ffff:203.0.113.5",
        ] {
            assert!(!unroutable(ip(a)), "{a}");
        }
    }

    #[test]
    fn auto_replaces_only_an_unroutable_address_from_elsewhere() {
        let src = Some(ip("203.0.113.7"));
        let auto = AddressPolicy::Auto;
        // The NAT case: private SDP, public source.
        assert_eq!(auto.resolve(Some(ip("192.168.1.10")), src), src);
        assert_eq!(auto.resolve(Some(ip("100.70.1.1")), src), src);
        assert_eq!(auto.resolve(None, src), src, "a host name in c=");
        // A public SDP address is where the party said it receives.
        assert_eq!(
            auto.resolve(Some(ip("198.51.100.9")), src),
            Some(ip("198.51.100.9"))
        );
        // A private address the signalling also came from: the party is on our network.
        let lan = Some(ip("10.0.0.5"));
        assert_eq!(auto.resolve(lan, lan), lan);
        // No source known: the SDP as written.
        assert_eq!(auto.resolve(lan, None), lan);
    }

    #[test]
    fn sdp_and_source_are_rtpengines_two_rules() {
        let (sdp, src) = (Some(ip("192.0.2.1")), Some(ip("203.0.113.7")));
        assert_eq!(AddressPolicy::Sdp.resolve(sdp, src), sdp);
        assert_eq!(AddressPolicy::Source.resolve(sdp, src), src);
        assert_eq!(AddressPolicy::Source.resolve(sdp, None), sdp);
    }
}
