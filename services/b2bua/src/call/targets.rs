//! Where the call's requests toward each leg go: the caller's real source address
//! (NAT), the callee's dialog target, and the refreshes that move them.

use super::{Call, LegState};
use crate::event::Leg;
use std::net::IpAddr;
use trunkline_sip::{Host, NameAddr, Peer, Uri};

/// An address that is not reachable across the public network: RFC 1918, shared
/// address space (RFC 6598, carrier-grade NAT), link-local, and IPv6 unique-local and
/// link-local. A Contact naming one, on a message from a public address, comes from
/// behind NAT.
pub(crate) fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_private() || v4.is_link_local() || (a == 100 && (64..128).contains(&b))
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            (first & 0xfe00) == 0xfc00 || (first & 0xffc0) == 0xfe80
        }
    }
}

impl Call {
    /// Where in-dialog requests toward `leg` go. Toward the caller we use the address
    /// its requests come from (and that connection): phones behind NAT advertise
    /// unreachable Contacts. Toward the callee we follow the dialog's next hop when
    /// it is an IP literal, else the trunk address (no DNS on this path).
    pub(super) fn request_peer(&self, leg: Leg) -> Peer {
        let Some(l) = self.leg(leg) else {
            return self.a.peer;
        };
        if leg == Leg::A {
            return l.peer;
        }
        leg_peer(l)
    }

    /// A target refresh from `leg` (re-INVITE, UPDATE, or a 2xx to one of ours) that
    /// came from `source`: the dialog's remote target follows its Contact, and the
    /// caller's requests go to where this one came from (a phone whose NAT binding
    /// changed, or that moved to another connection).
    pub(super) fn refresh_target(&mut self, leg: Leg, contact: Option<NameAddr>, source: Peer) {
        let Some(l) = self.leg_mut(leg) else { return };
        if let Some(d) = l.dialog.as_mut() {
            d.refresh_target(contact);
        }
        if leg == Leg::A {
            l.peer = source;
        }
        self.fix_nated_target(leg, source);
    }

    /// nathelper's `fix_nated_contact` toward a trunk that asks for it: when the
    /// callee's target is a private address with no route set while its messages come
    /// from elsewhere, its requests go to the source address instead.
    pub(super) fn fix_nated_target(&mut self, leg: Leg, source: Peer) {
        if leg != Leg::B || !self.fix_nated_contact {
            return;
        }
        let Some(d) = self.b.as_mut().and_then(|b| b.dialog.as_mut()) else {
            return;
        };
        if !d.route_set.is_empty() {
            return;
        }
        let Uri::Sip(u) = &mut d.remote_target else {
            return;
        };
        let private = u.host.ip().is_some_and(is_private);
        let from_elsewhere =
            u.host.ip() != Some(source.addr.ip()) || u.port.unwrap_or(5060) != source.addr.port();
        if private && from_elsewhere && !is_private(source.addr.ip()) {
            u.host = Host::from(source.addr.ip());
            u.port = Some(source.addr.port());
        }
    }
}

/// Where requests on a dialog we opened go: its next hop when that is an IP literal,
/// else the peer it was opened toward (no DNS on this path).
pub(super) fn leg_peer(l: &LegState) -> Peer {
    let hop = l.dialog.as_ref().map(|d| d.next_hop());
    match hop.as_ref().and_then(Uri::as_sip) {
        Some(u) => match u.host.ip() {
            Some(ip) => {
                // RFC 3261 §19.1.2: 5061 is the default port of SIP over TLS.
                let default_port = match l.peer.transport {
                    trunkline_sip::Transport::Tls => 5061,
                    _ => 5060,
                };
                let addr = std::net::SocketAddr::new(ip, u.port.unwrap_or(default_port));
                if addr == l.peer.addr {
                    l.peer
                } else {
                    Peer {
                        addr,
                        connection: None,
                        ..l.peer
                    }
                }
            }
            None => l.peer,
        },
        None => l.peer,
    }
}

#[cfg(test)]
mod tests {
    use super::is_private;

    #[test]
    fn private_ranges() {
        for a in [
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "100.64.0.1",
            "100.127.255.255",
            "169.254.1.1",
            "fd00::1",
            "fe80::1",
        ] {
            assert!(is_private(a.parse().unwrap()), "{a}");
        }
        for a in [
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "100.63.255.255",
            "127.0.0.1",
            "192.0.2.1",
            "2001:db8::1",
            "::1",
        ] {
            assert!(!is_private(a.parse().unwrap()), "{a}");
        }
    }
}
