//! Symmetric-RTP latching policy as a pure function: given what a socket knows about
//! its peer and the source of a packet, accept (maybe latching) or drop.
//!
//! Latching is what makes endpoints behind NAT work: the address in their SDP is
//! often private, so the relay sends back to wherever their packets really come from.

use std::net::SocketAddr;

/// How one party's packets are checked and its return address learnt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LatchPolicy {
    /// Never latch: send to the SDP address, accept from anyone (rtpengine "asymmetric").
    pub asymmetric: bool,
    /// Before latching, accept only packets from the SDP address.
    pub strict_source: bool,
    /// After latching, a packet from a new source re-latches instead of being dropped.
    pub media_handover: bool,
    /// Once latched, never re-latch, not even after a re-offer changes the address.
    pub port_latching: bool,
}

/// What a socket knows about the party that sends to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LatchState {
    /// The address from SDP (possibly 0.0.0.0 on hold, or absent before an answer).
    pub advertised: Option<SocketAddr>,
    /// The source learnt from packets.
    pub latched: Option<SocketAddr>,
}

impl LatchState {
    /// Where to send packets destined for this party: the latched source, else the SDP
    /// address; never an unspecified address or port 0.
    pub fn destination(&self) -> Option<SocketAddr> {
        self.latched
            .or(self.advertised)
            .filter(|a| !a.ip().is_unspecified() && a.port() != 0)
    }

    /// Applies a re-offer/answer carrying `advertised`: a changed address re-arms
    /// latching (the endpoint may have moved) unless `port_latching` pins the latch.
    pub fn readvertise(&mut self, advertised: Option<SocketAddr>, policy: &LatchPolicy) {
        let changed = self.advertised != advertised;
        self.advertised = advertised;
        if changed && !(policy.port_latching && self.latched.is_some()) {
            self.latched = None;
        }
    }
}

/// Why a packet was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Not the advertised source while `strict_source` waits for the first packet.
    NotAdvertisedSource,
    /// Not the latched source (and no `media_handover`).
    NotLatchedSource,
}

/// The decision for one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Forward it; `latch` is the new latched source when this packet (re)latches.
    Accept {
        /// Set when this packet's source becomes the latched address.
        latch: Option<SocketAddr>,
    },
    /// Count it and throw it away.
    Drop(DropReason),
}

/// Decides what to do with a packet from `source`.
pub fn decide(state: &LatchState, policy: &LatchPolicy, source: SocketAddr) -> Verdict {
    let advertised_ok = || match state.advertised {
        Some(a) if !a.ip().is_unspecified() => a == source,
        // Nothing usable advertised (on hold, before the answer): cannot be strict.
        _ => true,
    };
    if policy.asymmetric {
        if policy.strict_source && !advertised_ok() {
            return Verdict::Drop(DropReason::NotAdvertisedSource);
        }
        return Verdict::Accept { latch: None };
    }
    match state.latched {
        None => {
            if policy.strict_source && !advertised_ok() {
                Verdict::Drop(DropReason::NotAdvertisedSource)
            } else {
                Verdict::Accept {
                    latch: Some(source),
                }
            }
        }
        Some(l) if l == source => Verdict::Accept { latch: None },
        Some(_) if policy.media_handover && !policy.port_latching => Verdict::Accept {
            latch: Some(source),
        },
        Some(_) => Verdict::Drop(DropReason::NotLatchedSource),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn symmetric_latches_first_source_then_drops_others() {
        let mut st = LatchState {
            advertised: Some(addr("192.0.2.1:4000")),
            latched: None,
        };
        let p = LatchPolicy::default();
        let nat = addr("198.51.100.7:61000");
        assert_eq!(st.destination(), Some(addr("192.0.2.1:4000")));
        assert_eq!(decide(&st, &p, nat), Verdict::Accept { latch: Some(nat) });
        st.latched = Some(nat);
        assert_eq!(st.destination(), Some(nat));
        assert_eq!(decide(&st, &p, nat), Verdict::Accept { latch: None });
        assert_eq!(
            decide(&st, &p, addr("203.0.113.9:1")),
            Verdict::Drop(DropReason::NotLatchedSource)
        );
    }

    #[test]
    fn media_handover_relatches() {
        let st = LatchState {
            advertised: None,
            latched: Some(addr("192.0.2.1:4000")),
        };
        let p = LatchPolicy {
            media_handover: true,
            ..Default::default()
        };
        let new = addr("192.0.2.2:5000");
        assert_eq!(decide(&st, &p, new), Verdict::Accept { latch: Some(new) });
    }

    #[test]
    fn strict_source_before_latching() {
        let st = LatchState {
            advertised: Some(addr("192.0.2.1:4000")),
            latched: None,
        };
        let p = LatchPolicy {
            strict_source: true,
            ..Default::default()
        };
        assert_eq!(
            decide(&st, &p, addr("192.0.2.1:4001")),
            Verdict::Drop(DropReason::NotAdvertisedSource)
        );
        let good = addr("192.0.2.1:4000");
        assert_eq!(decide(&st, &p, good), Verdict::Accept { latch: Some(good) });
        // On hold (0.0.0.0) there is nothing to be strict about.
        let held = LatchState {
            advertised: Some(addr("0.0.0.0:4000")),
            latched: None,
        };
        assert!(matches!(decide(&held, &p, good), Verdict::Accept { .. }));
    }

    #[test]
    fn asymmetric_never_latches() {
        let st = LatchState {
            advertised: Some(addr("192.0.2.1:4000")),
            latched: None,
        };
        let p = LatchPolicy {
            asymmetric: true,
            ..Default::default()
        };
        assert_eq!(
            decide(&st, &p, addr("203.0.113.1:9")),
            Verdict::Accept { latch: None }
        );
        let strict = LatchPolicy {
            strict_source: true,
            ..p
        };
        assert!(matches!(
            decide(&st, &strict, addr("203.0.113.1:9")),
            Verdict::Drop(_)
        ));
    }

    #[test]
    fn never_sends_to_unspecified() {
        let st = LatchState {
            advertised: Some(addr("0.0.0.0:4000")),
            latched: None,
        };
        assert_eq!(st.destination(), None);
        let st = LatchState {
            advertised: Some(addr("192.0.2.1:0")),
            latched: None,
        };
        assert_eq!(st.destination(), None);
    }

    #[test]
    fn readvertise_rearms_unless_port_latching() {
        let nat = addr("198.51.100.7:61000");
        let mut st = LatchState {
            advertised: Some(addr("192.0.2.1:4000")),
            latched: Some(nat),
        };
        let p = LatchPolicy::default();
        st.readvertise(Some(addr("192.0.2.1:4000")), &p);
        assert_eq!(st.latched, Some(nat), "same address keeps the latch");
        st.readvertise(Some(addr("192.0.2.9:4000")), &p);
        assert_eq!(st.latched, None);
        let pl = LatchPolicy {
            port_latching: true,
            media_handover: true,
            ..Default::default()
        };
        st.latched = Some(nat);
        st.readvertise(Some(addr("192.0.2.10:4000")), &pl);
        assert_eq!(st.latched, Some(nat));
        assert_eq!(
            decide(&st, &pl, addr("192.0.2.10:4000")),
            Verdict::Drop(DropReason::NotLatchedSource)
        );
    }
}
