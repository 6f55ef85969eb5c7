//! RTP Bleed and endpoint learning, over real loopback sockets: a stranger who sprays a
//! call's relay ports before the parties send must never receive anything, in every
//! `endpoint_learning` mode, and its packets are dropped and counted. The parties are on
//! 127.0.0.1, the stranger on 127.0.0.9 (all of 127.0.0.0/8 is loopback on Linux). Every wait
//! is bounded.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use common::*;
use trunkline_media::{AddressPolicy, EndpointLearning, Flags, MediaConfig, Relay};

/// A relay on window `window` of [`LEARNING_RS`] (20 port pairs, two workers) learning
/// endpoints by `mode`, its learning window a minute long: longer than any test runs, so
/// no test depends on how fast it runs.
fn relay(window: u16, mode: EndpointLearning) -> Relay {
    relay_with(window, |c| c.endpoint_learning = mode)
}

fn relay_with(window: u16, f: impl FnOnce(&mut MediaConfig)) -> Relay {
    start_relay(LEARNING_RS, window, 20, 2, |c| {
        c.learning_window = Duration::from_secs(60);
        f(c);
    })
}

/// Reads `s` until `payload` arrives (bounded by its read timeout); returns the payloads of
/// the other packets read before it.
#[track_caller]
fn receive_until(what: &str, s: &UdpSocket, payload: &[u8]) -> Vec<Vec<u8>> {
    let mut others = Vec::new();
    loop {
        let Some((p, _)) = recv(s) else {
            panic!("{what}: {payload:?} never arrived (got {others:?})");
        };
        if p.get(12..) == Some(payload) {
            return others;
        }
        others.push(p[12..].to_vec());
    }
}

/// The stranger sprays `n` packets at both relay ports of the call.
fn spray(x: &UdpSocket, ports: [u16; 2], n: u16, seq: u16) {
    for port in ports {
        for i in 0..n {
            x.send_to(&rtp(seq + i, b"stranger"), to(port)).unwrap();
        }
    }
}

/// Where the stranger sends from.
const STRANGER: &str = "127.0.0.9";

/// The scenario of RTP Bleed: a stranger sprays both relay ports of an answered call before
/// either party sends; then the parties talk (each from its SDP address), the stranger sprays
/// again, and they talk once more. Returns what the parties received from the stranger
/// before they were latched.
fn stranger_first(relay: &Relay, call: &str) -> usize {
    let (o, a, x) = (endpoint(), endpoint(), endpoint_on(STRANGER));
    let (ro, ra) = audio_call(relay, call, &o, &a, &Flags::default());
    spray(&x, [ro, ra], 3, 100);
    // The stranger's packets are read before the parties' (one socket, one queue).
    let mut injected = 0;
    o.send_to(&rtp(1, b"hello from o"), to(ro)).unwrap();
    injected += receive_until("a hears o", &a, b"hello from o").len();
    a.send_to(&rtp(1, b"hello from a"), to(ra)).unwrap();
    injected += receive_until("o hears a", &o, b"hello from a").len();

    spray(&x, [ro, ra], 3, 200);
    send_through(
        "o to a after the spray",
        &o,
        to(ro),
        &a,
        &rtp(2, b"o again"),
    );
    send_through(
        "a to o after the spray",
        &a,
        to(ra),
        &o,
        &rtp(2, b"a again"),
    );

    assert!(
        stays_quiet(&x),
        "the stranger must never receive the call's audio"
    );
    let s = relay.query(call, now()).unwrap();
    let st = &s.streams[0];
    assert_eq!(st.offerer.latched, Some(o.local_addr().unwrap()));
    assert_eq!(st.answerer.latched, Some(a.local_addr().unwrap()));
    // Every spray after the latch was dropped and counted, on both sides.
    stats_when(relay, call, "the stranger's packets counted", |s| {
        let st = &s.streams[0];
        st.offerer.rtp.errors >= 3 && st.answerer.rtp.errors >= 3
    });
    injected
}

#[test]
fn delayed_a_stranger_who_sends_first_gets_nothing() {
    let relay = relay(0, EndpointLearning::Delayed);
    assert_eq!(
        stranger_first(&relay, "bleed-delayed"),
        0,
        "nothing injected"
    );
    let st = &relay.query("bleed-delayed", now()).unwrap().streams[0];
    // All six of the stranger's packets per side were dropped: three while learning, three
    // after the latch.
    assert_eq!((st.offerer.rtp.errors, st.answerer.rtp.errors), (6, 6));
    assert_eq!(relay.totals().packets_dropped, 12);
}

#[test]
fn immediate_a_stranger_who_sends_first_gets_nothing() {
    let relay = relay(3, EndpointLearning::Immediate);
    assert_eq!(
        stranger_first(&relay, "bleed-immediate"),
        0,
        "nothing injected"
    );
    let st = &relay.query("bleed-immediate", now()).unwrap().streams[0];
    assert_eq!((st.offerer.rtp.errors, st.answerer.rtp.errors), (6, 6));
}

#[test]
fn heuristic_a_stranger_who_sends_first_gets_nothing() {
    let relay = relay(1, EndpointLearning::Heuristic);
    assert_eq!(
        stranger_first(&relay, "bleed-heuristic"),
        0,
        "nothing injected"
    );
    let st = &relay.query("bleed-heuristic", now()).unwrap().streams[0];
    assert_eq!((st.offerer.rtp.errors, st.answerer.rtp.errors), (6, 6));
}

#[test]
fn off_a_stranger_who_sends_first_gets_nothing() {
    let relay = relay(2, EndpointLearning::Off);
    assert_eq!(stranger_first(&relay, "bleed-off"), 0, "nothing injected");
    let st = &relay.query("bleed-off", now()).unwrap().streams[0];
    assert_eq!((st.offerer.rtp.errors, st.answerer.rtp.errors), (6, 6));
}

/// `immediate` does not wait for a party that sends from its expected address with another
/// port (a NAT that remaps ports): its first packet latches it, and the other party's media
/// goes there at once.
#[test]
fn immediate_latches_a_remapped_port_at_once() {
    let relay = relay(9, EndpointLearning::Immediate);
    let (o, nat, a) = (endpoint(), endpoint(), endpoint());
    let (ro, ra) = offer_answer(
        &relay,
        "remapped",
        &audio(LOCALHOST, port(&o)),
        &audio(LOCALHOST, port(&a)),
        &Flags::default(),
    )
    .ports();
    send_through("at once", &nat, to(ro), &a, &rtp(1, b"via nat"));
    send_through("back to the NAT's port", &a, to(ra), &nat, &rtp(1, b"back"));
}

/// A request's `endpoint_learning` overrides the relay's mode for the party that sent it.
#[test]
fn a_request_chooses_the_mode_of_its_party() {
    let relay = relay(4, EndpointLearning::Immediate);
    let flags = Flags {
        endpoint_learning: Some(EndpointLearning::Delayed),
        ..Flags::default()
    };
    let (o, a, x) = (endpoint(), endpoint(), endpoint());
    let (ro, _) = audio_call(&relay, "override", &o, &a, &flags);
    // Immediate would latch `x` (127.0.0.1, the offerer's address) at once.
    x.send_to(&rtp(1, b"stranger"), to(ro)).unwrap();
    // Delayed: dropped while learning, so the first thing the answerer hears is the
    // offerer.
    send_through("o to a", &o, to(ro), &a, &rtp(1, b"o"));
    let st = &relay.query("override", now()).unwrap().streams[0];
    assert_eq!(st.offerer.latched, Some(o.local_addr().unwrap()));
}

/// A party that sends from elsewhere than its signalled address (a NAT that remaps ports)
/// is not latched while the window runs: its packets are dropped and the other party's
/// media goes to the signalled address, never to the unconfirmed source. After the window
/// it is latched (the window is zero here, so at once).
#[test]
fn an_unconfirmed_source_is_never_sent_to() {
    let relay = relay(5, EndpointLearning::Delayed);
    let (o, nat, a) = (endpoint(), endpoint(), endpoint());
    let (ro, ra) = offer_answer(
        &relay,
        "nat",
        &audio(LOCALHOST, port(&o)),
        &audio(LOCALHOST, port(&a)),
        &Flags::default(),
    )
    .ports();
    // The offerer's packets come from `nat`, not the port its SDP names.
    nat.send_to(&rtp(1, b"via nat"), to(ro)).unwrap();
    a.send_to(&rtp(1, b"to o"), to(ra)).unwrap();
    // The answerer's audio goes to the signalled address, not to `nat`.
    assert_eq!(&recv(&o).unwrap().0[12..], b"to o");
    assert!(stays_quiet(&nat));
    assert!(
        stays_quiet(&a),
        "the unconfirmed source's packet was dropped"
    );
    let st = &relay.query("nat", now()).unwrap().streams[0];
    assert_eq!(st.offerer.latched, None);
    assert_eq!(st.offerer.rtp.errors, 1);

    let relay = relay_with(6, |c| c.learning_window = Duration::ZERO);
    let (ro, ra) = offer_answer(
        &relay,
        "nat-later",
        &audio(LOCALHOST, port(&o)),
        &audio(LOCALHOST, port(&a)),
        &Flags::default(),
    )
    .ports();
    send_through("learnt after the window", &nat, to(ro), &a, &rtp(1, b"n"));
    send_through("back to the learnt source", &a, to(ra), &nat, &rtp(1, b"b"));
}

/// A port pair reused by a new call right after the old one ended: the old parties' late
/// packets do not come from where the new parties signalled, so they never reach the new
/// call, and the new parties are latched as usual.
#[test]
fn late_packets_of_an_old_call_stay_out_of_the_new_one() {
    // Two pairs: one call at a time, the second reusing the first's ports.
    let relay = start_relay(LEARNING_RS, 7, 2, 1, |c| {
        c.learning_window = Duration::from_secs(60);
    });
    let (o1, a1) = (endpoint(), endpoint());
    let (ro, ra) = audio_call(&relay, "old", &o1, &a1, &Flags::default());
    send_through("old call", &o1, to(ro), &a1, &rtp(1, b"old"));
    relay.delete("old", None, None, now()).unwrap();
    wait_for("the old call's sockets closed", || {
        (relay.totals().ports_in_use == 0).then_some(())
    });
    let (o2, a2) = (endpoint(), endpoint());
    let (ro2, ra2) = audio_call(&relay, "new", &o2, &a2, &Flags::default());
    assert_eq!([ro2, ra2].map(|p| [ro, ra].contains(&p)), [true, true]);
    // The old parties keep sending to the ports they knew.
    o1.send_to(&rtp(2, b"late o1"), to(ro)).unwrap();
    a1.send_to(&rtp(2, b"late a1"), to(ra)).unwrap();
    send_through("new call o2 to a2", &o2, to(ro2), &a2, &rtp(1, b"new o"));
    send_through("new call a2 to o2", &a2, to(ra2), &o2, &rtp(1, b"new a"));
    assert!(
        stays_quiet(&o1) && stays_quiet(&a1),
        "old parties get nothing"
    );
}

/// [`AddressPolicy::Auto`], the rule for callers: a private SDP address from a caller whose
/// signalling came from elsewhere is replaced by the signalling source's IP (the NAT case);
/// a public one is kept.
#[test]
fn auto_address_policy_replaces_only_an_unreachable_sdp_address() {
    let relay = relay(8, EndpointLearning::Delayed);
    let (o, a) = (endpoint(), endpoint());
    let auto = Flags {
        address: AddressPolicy::Auto,
        received_from: Some(sa(LOCALHOST, 5060)),
        ..Flags::default()
    };
    // The caller writes its LAN address; its SIP came from 127.0.0.1.
    let (ro, ra) = offer_answer(
        &relay,
        "lan",
        &audio("192.168.1.10", port(&o)),
        &audio(LOCALHOST, port(&a)),
        &auto,
    )
    .ports();
    let st = &relay.query("lan", now()).unwrap().streams[0];
    assert_eq!(st.offerer.advertised, Some(o.local_addr().unwrap()));
    // The expected address is where it really sends from: latched at once, no window.
    send_through("o to a", &o, to(ro), &a, &rtp(1, b"o"));
    send_through("a to o", &a, to(ra), &o, &rtp(1, b"a"));

    // A public SDP address is where the caller said it receives.
    offered(&relay, "public", &audio("192.0.2.1", 4000), &auto);
    let st = &relay.query("public", now()).unwrap().streams[0];
    let want: SocketAddr = "192.0.2.1:4000".parse().unwrap();
    assert_eq!(st.offerer.advertised, Some(want));
}
