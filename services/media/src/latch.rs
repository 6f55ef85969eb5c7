//! Endpoint learning and symmetric-RTP latching as pure state: what a relay socket knows
//! about the party that sends to it, and the decision for each packet.
//!
//! Latching is what makes endpoints behind NAT work: the address in their SDP is often not
//! where their packets come from, so the relay sends back to wherever they really come from.
//! Done naively (latch onto the first source) it is RTP Bleed: a stranger who sprays a call's
//! relay ports before the parties send is latched and receives the call's audio. So a source
//! is *learnt*, as rtpengine's `--endpoint-learning` does, in a window after each signal
//! (offer or answer) that prefers the address signalling gave (the *expected* address), and
//! once learnt the latch is held strictly:
//!
//! - a packet from the expected address is latched at once, whatever the mode, and takes the
//!   latch back from a source learnt otherwise (the signalled address always wins);
//! - while a party is unconfirmed its audio is never sent toward an unconfirmed source: the
//!   other party's packets go to the expected address, and a packet from any other source is
//!   dropped (counted) until learning confirms it;
//! - once latched, a packet from elsewhere is dropped and counted, unless `media_handover`.
//!
//! The modes differ in how a source other than the expected one is confirmed:
//! [`EndpointLearning::Delayed`] after the window, the first source seen then;
//! [`EndpointLearning::Heuristic`] after the window, the source seen during it that looks most
//! like the expected one (same address, then same port, then anything, as rtpengine ranks
//! them); [`EndpointLearning::Immediate`] at once if it has the expected IP address (a NAT that
//! remaps the port), else as `Delayed`; [`EndpointLearning::Off`] never: the expected address
//! is the latch.
//!
//! Time is the caller's, in milliseconds on any monotonic clock (the worker threads use their
//! own); nothing here reads a clock.

use std::net::SocketAddr;

/// How the relay learns where a party sends from: rtpengine's `--endpoint-learning`, with
/// one difference in every mode: the expected (signalled) address is preferred, so a
/// stranger never wins over a party that sends from where signalling says it is.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum EndpointLearning {
    /// Wait out the learning window (3 s after the last signal) for the expected address;
    /// after it, latch the first source seen. rtpengine's default.
    #[default]
    Delayed,
    /// No waiting for a party at its expected IP address: a source with that address and
    /// any port (a NAT that remaps ports, when the address is the signalling source's) is
    /// latched by its first packet, as is the first source when nothing is expected. Other
    /// sources as `Delayed`. rtpengine latches any first source at once; that is RTP Bleed
    /// for a stranger who sends first, so this mode keeps the wait for other addresses.
    Immediate,
    /// No learning: only the expected address is accepted, and media goes there. Breaks
    /// endpoints behind NAT that do not send from their signalled address.
    Off,
    /// As `Delayed`, but after the window latch the best source seen during it: the
    /// expected address and port, else the expected address with another port (a NAT that
    /// remaps ports), else the expected port from another address, else any source.
    Heuristic,
}

impl EndpointLearning {
    /// rtpengine's names, as its command line and ng `endpoint-learning` spell them.
    pub fn as_str(self) -> &'static str {
        match self {
            EndpointLearning::Delayed => "delayed",
            EndpointLearning::Immediate => "immediate",
            EndpointLearning::Off => "off",
            EndpointLearning::Heuristic => "heuristic",
        }
    }

    /// Parses rtpengine's names (ASCII case ignored).
    pub fn parse(s: &str) -> Option<Self> {
        [
            EndpointLearning::Delayed,
            EndpointLearning::Immediate,
            EndpointLearning::Off,
            EndpointLearning::Heuristic,
        ]
        .into_iter()
        .find(|m| s.trim().eq_ignore_ascii_case(m.as_str()))
    }
}

impl std::fmt::Display for EndpointLearning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for EndpointLearning {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EndpointLearning::parse(s)
            .ok_or_else(|| format!("{s:?} is not one of delayed, immediate, off, heuristic"))
    }
}

/// rtpengine's learning window: a source other than the expected one is confirmed no
/// sooner than 3 s after the last signal.
pub const LEARNING_WINDOW_MS: u64 = 3000;

/// How one party's packets are checked and its return address learnt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LatchPolicy {
    /// Never latch: send to the expected address, accept from anyone (rtpengine
    /// "asymmetric").
    pub asymmetric: bool,
    /// Accept only the expected address until a latch (no learning of other sources).
    pub strict_source: bool,
    /// After latching, a packet from a new source re-latches instead of being dropped.
    pub media_handover: bool,
    /// Once latched, never re-latch: not after a re-offer with a new address, not for the
    /// expected address.
    pub port_latching: bool,
    /// How a source other than the expected one is learnt.
    pub learning: EndpointLearning,
}

/// How well a source matches the expected address; lower is better.
type Rank = u8;

/// What a socket knows about the party that sends to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LatchState {
    /// Where signalling says the party is: its SDP address, or the signalling source's IP
    /// with the SDP port. The preferred source while learning, and where the party's media
    /// goes until it is latched. Possibly 0.0.0.0 (hold) or absent (before an answer).
    pub expected: Option<SocketAddr>,
    /// The confirmed source: the only one accepted, and where the party's media goes.
    pub latched: Option<SocketAddr>,
    /// Heuristic learning's best source in this window, with its rank.
    candidate: Option<(SocketAddr, Rank)>,
    /// When the learning window ends (caller's milliseconds).
    learn_until: u64,
}

/// `a` unless it cannot be sent to: an unspecified address (hold) or port 0.
fn usable(a: Option<SocketAddr>) -> Option<SocketAddr> {
    a.filter(|a| !a.ip().is_unspecified() && a.port() != 0)
}

/// Whether two addresses are one endpoint: address and port (an IPv6 flow label or scope
/// as the kernel reports them on a received packet is not part of it).
fn same(a: SocketAddr, b: SocketAddr) -> bool {
    a.ip() == b.ip() && a.port() == b.port()
}

/// Whether `a` is the endpoint `b`, if there is one.
fn is(a: SocketAddr, b: Option<SocketAddr>) -> bool {
    b.is_some_and(|b| same(a, b))
}

/// rtpengine's heuristic order: same address and port (0, handled before ranking), same
/// address (1), same port (2), neither or nothing expected (3).
fn rank(expected: Option<SocketAddr>, source: SocketAddr) -> Rank {
    match expected {
        Some(e) if e.ip() == source.ip() => 1,
        Some(e) if e.port() == source.port() => 2,
        _ => 3,
    }
}

impl LatchState {
    /// Where to send packets destined for this party: the latched source, else the
    /// expected address; never an unconfirmed source, an unspecified address or port 0.
    pub fn destination(&self) -> Option<SocketAddr> {
        self.latched.or(usable(self.expected))
    }

    /// Applies a signal (offer or answer) carrying `expected` at `now` (ms), opening a
    /// learning window of `window` ms: a changed address forgets the latch (the endpoint
    /// may have moved) unless `port_latching` pins it or the new address is a hold
    /// (0.0.0.0: the party has not moved, it asks not to be sent media). With learning
    /// `Off` the expected address is the latch.
    pub fn signal(
        &mut self,
        expected: Option<SocketAddr>,
        policy: &LatchPolicy,
        now: u64,
        window: u64,
    ) {
        let changed = self.expected != expected;
        let hold = expected.is_some_and(|a| a.ip().is_unspecified());
        let pinned = policy.port_latching && self.latched.is_some();
        self.expected = expected;
        if policy.asymmetric || (changed && !hold && !pinned) {
            self.latched = None;
        }
        if policy.learning == EndpointLearning::Off && !policy.asymmetric && !pinned && !hold {
            self.latched = usable(expected);
        }
        self.candidate = None;
        self.learn_until = now.saturating_add(window);
    }

    /// Decides a packet from `source` at `now` (ms), latching or learning as the policy
    /// says; the caller sees a (re)latch as a change of `latched`.
    pub fn on_packet(&mut self, policy: &LatchPolicy, source: SocketAddr, now: u64) -> Verdict {
        let expected = usable(self.expected);
        if policy.asymmetric {
            if policy.strict_source && expected.is_some_and(|e| !same(e, source)) {
                return Verdict::Drop(DropReason::NotExpectedSource);
            }
            return Verdict::Accept;
        }
        if let Some(latched) = self.latched {
            if same(latched, source) {
                return Verdict::Accept;
            }
            if !policy.port_latching && (is(source, expected) || policy.media_handover) {
                self.latched = Some(source);
                return Verdict::Accept;
            }
            return Verdict::Drop(DropReason::NotLatchedSource);
        }
        if is(source, expected) {
            self.latch(source);
            return Verdict::Accept;
        }
        if policy.strict_source && expected.is_some() {
            return Verdict::Drop(DropReason::NotExpectedSource);
        }
        let learning = now < self.learn_until;
        match policy.learning {
            EndpointLearning::Off => Verdict::Drop(DropReason::NotExpectedSource),
            EndpointLearning::Immediate
                if learning && expected.is_some_and(|e| e.ip() != source.ip()) =>
            {
                Verdict::Drop(DropReason::Learning)
            }
            EndpointLearning::Delayed if learning => Verdict::Drop(DropReason::Learning),
            EndpointLearning::Immediate | EndpointLearning::Delayed => {
                self.latch(source);
                Verdict::Accept
            }
            EndpointLearning::Heuristic => {
                let r = rank(expected, source);
                if self.candidate.is_none_or(|(_, best)| r <= best) {
                    self.candidate = Some((source, r));
                }
                if learning {
                    return Verdict::Drop(DropReason::Learning);
                }
                let best = self.candidate.map_or(source, |(a, _)| a);
                self.latch(best);
                if same(best, source) {
                    Verdict::Accept
                } else {
                    Verdict::Drop(DropReason::NotLatchedSource)
                }
            }
        }
    }

    fn latch(&mut self, source: SocketAddr) {
        self.latched = Some(source);
        self.candidate = None;
    }
}

/// Why a packet was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Not the expected address where only that one is accepted (`strict_source`, or
    /// learning `Off`).
    NotExpectedSource,
    /// Not the latched source (and no `media_handover`).
    NotLatchedSource,
    /// From an unconfirmed source while the learning window runs.
    Learning,
}

/// The decision for one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Forward it.
    Accept,
    /// Count it and throw it away.
    Drop(DropReason),
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: u64 = LEARNING_WINDOW_MS;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn policy(learning: EndpointLearning) -> LatchPolicy {
        LatchPolicy {
            learning,
            ..LatchPolicy::default()
        }
    }

    /// A socket signalled at t = 1000 ms with `expected`.
    fn signalled(expected: &str, p: &LatchPolicy) -> LatchState {
        let mut st = LatchState::default();
        st.signal(Some(addr(expected)), p, 1000, WINDOW);
        st
    }

    const PARTY: &str = "192.0.2.1:4000";
    const STRANGER: &str = "203.0.113.9:6666";

    const ALL: [EndpointLearning; 4] = [
        EndpointLearning::Delayed,
        EndpointLearning::Immediate,
        EndpointLearning::Off,
        EndpointLearning::Heuristic,
    ];

    #[test]
    fn in_every_mode_the_expected_address_beats_a_stranger_who_sent_first() {
        for mode in ALL {
            let p = policy(mode);
            let mut st = signalled(PARTY, &p);
            assert_eq!(st.destination(), Some(addr(PARTY)), "{mode}");
            // The stranger sprays first, from another address: no mode takes it.
            assert!(
                matches!(st.on_packet(&p, addr(STRANGER), 1001), Verdict::Drop(_)),
                "{mode}"
            );
            assert_eq!(
                st.on_packet(&p, addr(PARTY), 1002),
                Verdict::Accept,
                "{mode}"
            );
            assert_eq!(st.latched, Some(addr(PARTY)), "{mode}");
            assert_eq!(st.destination(), Some(addr(PARTY)), "{mode}");
            // Held strictly from then on, window or not.
            for t in [1003, 1000 + WINDOW + 1] {
                assert_eq!(
                    st.on_packet(&p, addr(STRANGER), t),
                    Verdict::Drop(DropReason::NotLatchedSource),
                    "{mode}"
                );
            }
            assert_eq!(st.latched, Some(addr(PARTY)), "{mode}");
        }
    }

    #[test]
    fn delayed_learns_a_nat_source_only_after_the_window() {
        let p = policy(EndpointLearning::Delayed);
        let mut st = signalled(PARTY, &p);
        let nat = addr("198.51.100.7:61000");
        assert_eq!(
            st.on_packet(&p, nat, 1000 + WINDOW - 1),
            Verdict::Drop(DropReason::Learning)
        );
        assert_eq!(st.latched, None, "never confirmed during the window");
        assert_eq!(
            st.destination(),
            Some(addr(PARTY)),
            "not sent to the source"
        );
        assert_eq!(st.on_packet(&p, nat, 1000 + WINDOW), Verdict::Accept);
        assert_eq!(st.latched, Some(nat));
        assert_eq!(st.destination(), Some(nat));
        // A later signal with the same address keeps it; the expected address still wins.
        st.signal(Some(addr(PARTY)), &p, 9000, WINDOW);
        assert_eq!(st.latched, Some(nat));
        assert_eq!(st.on_packet(&p, addr(PARTY), 9001), Verdict::Accept);
        assert_eq!(st.latched, Some(addr(PARTY)));
    }

    #[test]
    fn immediate_latches_a_remapped_port_at_once_and_waits_for_other_addresses() {
        let p = policy(EndpointLearning::Immediate);
        let mut st = signalled(PARTY, &p);
        // Another address: as delayed.
        assert_eq!(
            st.on_packet(&p, addr(STRANGER), 1001),
            Verdict::Drop(DropReason::Learning)
        );
        // The expected address with a port a NAT chose: at once.
        let nat = addr("192.0.2.1:61000");
        assert_eq!(st.on_packet(&p, nat, 1002), Verdict::Accept);
        assert_eq!(st.latched, Some(nat));
        assert_eq!(
            st.on_packet(&p, addr(STRANGER), 1003),
            Verdict::Drop(DropReason::NotLatchedSource)
        );
        // Nothing expected (a hold): the first source.
        let mut held = signalled("0.0.0.0:4000", &p);
        assert_eq!(held.on_packet(&p, addr(STRANGER), 1001), Verdict::Accept);
        // After the window, any first source.
        let mut late = signalled(PARTY, &p);
        assert_eq!(
            late.on_packet(&p, addr(STRANGER), 1000 + WINDOW),
            Verdict::Accept
        );
    }

    #[test]
    fn off_accepts_only_the_expected_address() {
        let p = policy(EndpointLearning::Off);
        let mut st = signalled(PARTY, &p);
        assert_eq!(
            st.latched,
            Some(addr(PARTY)),
            "the expected address is the latch"
        );
        for t in [1001, 1000 + 10 * WINDOW] {
            assert_eq!(
                st.on_packet(&p, addr("198.51.100.7:61000"), t),
                Verdict::Drop(DropReason::NotLatchedSource)
            );
        }
        assert_eq!(st.on_packet(&p, addr(PARTY), 1002), Verdict::Accept);
        // Nothing expected yet (before an answer): nothing is accepted.
        let mut none = LatchState::default();
        none.signal(None, &p, 0, WINDOW);
        assert_eq!(
            none.on_packet(&p, addr(PARTY), 10 * WINDOW),
            Verdict::Drop(DropReason::NotExpectedSource)
        );
    }

    #[test]
    fn heuristic_prefers_the_source_most_like_the_expected_one() {
        let p = policy(EndpointLearning::Heuristic);
        let mut st = signalled(PARTY, &p);
        let stranger = addr(STRANGER);
        let same_port = addr("198.51.100.7:4000");
        let same_ip = addr("192.0.2.1:61000");
        for (source, t) in [(stranger, 1001), (same_ip, 1002), (same_port, 1003)] {
            assert_eq!(
                st.on_packet(&p, source, t),
                Verdict::Drop(DropReason::Learning)
            );
        }
        // After the window, the stranger's next packet confirms the best one seen, and is
        // itself dropped.
        assert_eq!(
            st.on_packet(&p, stranger, 1000 + WINDOW),
            Verdict::Drop(DropReason::NotLatchedSource)
        );
        assert_eq!(st.latched, Some(same_ip));
        assert_eq!(
            st.on_packet(&p, same_ip, 1000 + WINDOW + 1),
            Verdict::Accept
        );
    }

    #[test]
    fn a_signal_restarts_learning_and_a_new_address_forgets_the_latch() {
        let p = policy(EndpointLearning::Delayed);
        let mut st = signalled(PARTY, &p);
        let nat = addr("198.51.100.7:61000");
        st.on_packet(&p, nat, 1000 + WINDOW);
        assert_eq!(st.latched, Some(nat));
        // Moved (re-INVITE with a new address): learning again, from this signal.
        st.signal(Some(addr("192.0.2.9:4000")), &p, 20_000, WINDOW);
        assert_eq!(st.latched, None);
        assert_eq!(st.destination(), Some(addr("192.0.2.9:4000")));
        assert_eq!(
            st.on_packet(&p, nat, 20_000 + WINDOW - 1),
            Verdict::Drop(DropReason::Learning)
        );
        // A hold (0.0.0.0) is not a move: the latch stays.
        st.on_packet(&p, nat, 20_000 + WINDOW);
        st.signal(Some(addr("0.0.0.0:4000")), &p, 30_000, WINDOW);
        assert_eq!(st.latched, Some(nat));
    }

    #[test]
    fn media_handover_relatches_and_port_latching_pins() {
        let handover = LatchPolicy {
            media_handover: true,
            ..LatchPolicy::default()
        };
        let mut st = signalled(PARTY, &handover);
        st.on_packet(&handover, addr(PARTY), 1001);
        let moved = addr("192.0.2.2:5000");
        assert_eq!(st.on_packet(&handover, moved, 1002), Verdict::Accept);
        assert_eq!(st.latched, Some(moved));

        let pinned = LatchPolicy {
            port_latching: true,
            media_handover: true,
            ..LatchPolicy::default()
        };
        let mut st = signalled(PARTY, &pinned);
        st.on_packet(&pinned, addr(PARTY), 1001);
        st.signal(Some(addr("192.0.2.10:4000")), &pinned, 2000, WINDOW);
        assert_eq!(st.latched, Some(addr(PARTY)));
        assert_eq!(
            st.on_packet(&pinned, addr("192.0.2.10:4000"), 2001),
            Verdict::Drop(DropReason::NotLatchedSource)
        );
    }

    #[test]
    fn strict_source_learns_nothing_but_the_expected_address() {
        let p = LatchPolicy {
            strict_source: true,
            learning: EndpointLearning::Immediate,
            ..LatchPolicy::default()
        };
        let mut st = signalled(PARTY, &p);
        assert_eq!(
            st.on_packet(&p, addr("192.0.2.1:4001"), 1001),
            Verdict::Drop(DropReason::NotExpectedSource)
        );
        assert_eq!(st.on_packet(&p, addr(PARTY), 1002), Verdict::Accept);
        // On hold (0.0.0.0) there is nothing to be strict about: learning as usual.
        let mut held = signalled("0.0.0.0:4000", &p);
        assert_eq!(held.on_packet(&p, addr(PARTY), 1001), Verdict::Accept);
    }

    #[test]
    fn asymmetric_never_latches() {
        let p = LatchPolicy {
            asymmetric: true,
            ..LatchPolicy::default()
        };
        let mut st = signalled(PARTY, &p);
        assert_eq!(st.on_packet(&p, addr(STRANGER), 1001), Verdict::Accept);
        assert_eq!(st.latched, None);
        assert_eq!(st.destination(), Some(addr(PARTY)));
        let strict = LatchPolicy {
            strict_source: true,
            ..p
        };
        assert_eq!(
            st.on_packet(&strict, addr(STRANGER), 1002),
            Verdict::Drop(DropReason::NotExpectedSource)
        );
    }

    #[test]
    fn never_sends_to_unspecified_or_port_zero() {
        for expected in ["0.0.0.0:4000", "192.0.2.1:0"] {
            let st = signalled(expected, &LatchPolicy::default());
            assert_eq!(st.destination(), None, "{expected}");
        }
    }

    #[test]
    fn modes_parse_by_rtpengine_name() {
        for m in ALL {
            assert_eq!(EndpointLearning::parse(m.as_str()), Some(m));
        }
        assert_eq!(
            EndpointLearning::parse(" Heuristic "),
            Some(EndpointLearning::Heuristic)
        );
        assert_eq!(EndpointLearning::parse("sometimes"), None);
    }
}
