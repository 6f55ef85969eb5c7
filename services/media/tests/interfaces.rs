//! Several named interfaces: each party of a call is anchored on the interface `direction`
//! names for it (rtpengine semantics), over real sockets on two loopback addresses
//! (127.0.0.0/8 is all loopback on Linux). Every wait is bounded.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{IpAddr, SocketAddr, UdpSocket};

use common::*;
use trunkline_media::{AddressFamily, Flags, MediaConfig, MediaError, MediaInterface, Relay};

const INTERNAL: &str = "127.0.0.1";
const EXTERNAL: &str = "127.0.0.2";
/// What the external interface advertises (as behind 1:1 NAT); nothing listens there.
const EXTERNAL_PUBLIC: &str = "192.0.2.50";

fn interfaces() -> Vec<MediaInterface> {
    vec![
        MediaInterface::new("internal", ip(INTERNAL), ip(INTERNAL)),
        MediaInterface::new("external", ip(EXTERNAL), ip(EXTERNAL_PUBLIC)),
    ]
}

/// A relay on window `window` of [`INTERFACES_RS`] (20 port pairs, one worker), anchoring
/// media on `interfaces`.
fn relay_on(window: u16, interfaces: Vec<MediaInterface>) -> Relay {
    start_relay(INTERFACES_RS, window, 20, 1, |c| c.interfaces = interfaces)
}

/// (connection address, RTP port) of the first m-line of a rewritten SDP.
fn relay_addr(body: &[u8]) -> (IpAddr, u16) {
    let m = anchors(body)[0];
    (m.addr, m.port)
}

fn direction(from: &str, to: &str) -> Flags {
    Flags {
        direction: [Some(from.into()), Some(to.into())],
        ..Flags::default()
    }
}

/// `from` sends RTP to `relay`; `to` must get it from `expect_src` — the relay port of
/// `to`'s own side, on `to`'s interface.
fn flows(seq: u16, from: &UdpSocket, relay: SocketAddr, to: &UdpSocket, expect_src: SocketAddr) {
    let src = send_through(
        "a relayed packet in time",
        from,
        relay,
        to,
        &rtp(seq, b"media"),
    );
    assert_eq!(
        src, expect_src,
        "packets leave from the receiver's interface"
    );
}

/// A port of the relay's range is bound on `addr` (binding it again fails).
fn bound_on(addr: &str, port: u16) -> bool {
    matches!(
        UdpSocket::bind((ip(addr), port)),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse
    )
}

#[test]
fn direction_anchors_each_party_on_its_interface() {
    let relay = relay_on(0, interfaces());
    let (o, a) = (endpoint_on(INTERNAL), endpoint_on(EXTERNAL));

    // The offer comes from the internal network and goes out to the external one.
    let offer = offered(
        &relay,
        "c1",
        &audio(INTERNAL, port(&o)),
        &direction("internal", "external"),
    );
    let (adv, to_a_side) = relay_addr(&offer);
    assert_eq!(adv, ip(EXTERNAL_PUBLIC), "the external advertised address");
    assert!(
        bound_on(EXTERNAL, to_a_side),
        "answerer's port on 127.0.0.2"
    );
    assert!(!bound_on(INTERNAL, to_a_side));

    // The answer needs no direction: the offer chose both sides.
    let answer = answered(&relay, "c1", &audio(EXTERNAL, port(&a)), &Flags::default());
    let (adv, to_o_side) = relay_addr(&answer);
    assert_eq!(adv, ip(INTERNAL));
    assert!(bound_on(INTERNAL, to_o_side), "offerer's port on 127.0.0.1");
    assert!(!bound_on(EXTERNAL, to_o_side));

    // 192.0.2.50 is what a NAT would map to 127.0.0.2; the answerer sends to the latter.
    flows(1, &o, sa(INTERNAL, to_o_side), &a, sa(EXTERNAL, to_a_side));
    flows(2, &a, sa(EXTERNAL, to_a_side), &o, sa(INTERNAL, to_o_side));

    let q = relay.query("c1", now()).unwrap();
    let st = &q.streams[0];
    assert_eq!(st.offerer.interface, "internal");
    assert_eq!(st.offerer.local_address, Some(ip(INTERNAL)));
    assert_eq!(st.offerer.local_port, to_o_side);
    assert_eq!(st.answerer.interface, "external");
    assert_eq!(st.answerer.local_address, Some(ip(EXTERNAL)));
    assert_eq!(st.answerer.local_port, to_a_side);
    relay.shutdown();
}

#[test]
fn without_direction_both_parties_get_the_first_interface() {
    let relay = relay_on(1, interfaces());
    let (o, a) = (endpoint_on(INTERNAL), endpoint_on(INTERNAL));
    let (to_o, to_a) = offer_answer(
        &relay,
        "c2",
        &audio(INTERNAL, port(&o)),
        &audio(INTERNAL, port(&a)),
        &Flags::default(),
    )
    .first();
    let (to_a_side, to_o_side) = (to_a.port, to_o.port);
    assert_eq!((to_a.addr, to_o.addr), (ip(INTERNAL), ip(INTERNAL)));
    assert!(bound_on(INTERNAL, to_a_side) && bound_on(INTERNAL, to_o_side));
    flows(1, &o, sa(INTERNAL, to_o_side), &a, sa(INTERNAL, to_a_side));
    flows(2, &a, sa(INTERNAL, to_a_side), &o, sa(INTERNAL, to_o_side));
    let q = relay.query("c2", now()).unwrap();
    assert_eq!(q.streams[0].offerer.interface, "internal");
    assert_eq!(q.streams[0].answerer.interface, "internal");
    relay.shutdown();
}

#[test]
fn an_unknown_interface_is_an_error_and_changes_nothing() {
    let relay = relay_on(2, interfaces());
    let o = endpoint_on(INTERNAL);
    let e = relay
        .offer(
            "c3",
            FROM_TAG,
            &audio(INTERNAL, port(&o)),
            &direction("internal", "dmz"),
            now(),
        )
        .unwrap_err();
    assert!(
        matches!(e, MediaError::UnknownInterface(ref n) if n == "dmz"),
        "{e}"
    );
    assert!(relay.query("c3", now()).is_none(), "no session left behind");
    assert_eq!(relay.totals().ports_in_use, 0);

    // On a re-offer too, before anything changes.
    let offer = offered(
        &relay,
        "c3",
        &audio(INTERNAL, port(&o)),
        &direction("internal", "external"),
    );
    let before = relay.query("c3", now()).unwrap().streams;
    let flags = Flags {
        direction: [None, Some("nowhere".into())],
        ..Flags::default()
    };
    assert!(matches!(
        relay.offer("c3", FROM_TAG, &audio(INTERNAL, port(&o)), &flags, now()),
        Err(MediaError::UnknownInterface(_))
    ));
    let after = relay.query("c3", now()).unwrap().streams;
    assert_eq!(after[0].answerer.local_port, before[0].answerer.local_port);
    assert_eq!(relay_addr(&offer).0, ip(EXTERNAL_PUBLIC));
    // And in an answer, although an answer does not move anyone.
    assert!(matches!(
        relay.answer(
            "c3",
            FROM_TAG,
            TO_TAG,
            &audio(EXTERNAL, 4000),
            &flags,
            now()
        ),
        Err(MediaError::UnknownInterface(_))
    ));
    relay.shutdown();
}

#[test]
fn re_offers_keep_each_party_on_its_interface_unless_told_otherwise() {
    let relay = relay_on(3, interfaces());
    let (o, a) = (endpoint_on(INTERNAL), endpoint_on(EXTERNAL));
    let offer = offered(
        &relay,
        "c4",
        &audio(INTERNAL, port(&o)),
        &direction("internal", "external"),
    );
    let answer = answered(&relay, "c4", &audio(EXTERNAL, port(&a)), &Flags::default());
    let (_, to_a_side) = relay_addr(&offer);
    let (_, to_o_side) = relay_addr(&answer);

    // A re-offer from either party without `direction`: nothing moves.
    let re = offered(&relay, "c4", &audio(INTERNAL, port(&o)), &Flags::default());
    assert_eq!(relay_addr(&re), (ip(EXTERNAL_PUBLIC), to_a_side));
    let re = relay
        .offer(
            "c4",
            TO_TAG,
            &audio(EXTERNAL, port(&a)),
            &Flags::default(),
            now(),
        )
        .unwrap();
    assert_eq!(relay_addr(&re), (ip(INTERNAL), to_o_side));
    let re_answer = relay
        .answer(
            "c4",
            TO_TAG,
            FROM_TAG,
            &audio(INTERNAL, port(&o)),
            &Flags::default(),
            now(),
        )
        .unwrap();
    assert_eq!(relay_addr(&re_answer), (ip(EXTERNAL_PUBLIC), to_a_side));
    flows(1, &o, sa(INTERNAL, to_o_side), &a, sa(EXTERNAL, to_a_side));
    flows(2, &a, sa(EXTERNAL, to_a_side), &o, sa(INTERNAL, to_o_side));

    // A re-offer naming other interfaces moves both sides (rtpengine re-allocates); the
    // new addresses reach the parties in this offer and its answer.
    let moved = offered(
        &relay,
        "c4",
        &audio(INTERNAL, port(&o)),
        &direction("external", "internal"),
    );
    let (adv, new_to_a_side) = relay_addr(&moved);
    assert_eq!(adv, ip(INTERNAL));
    let answer = answered(&relay, "c4", &audio(EXTERNAL, port(&a)), &Flags::default());
    let (adv, new_to_o_side) = relay_addr(&answer);
    assert_eq!(adv, ip(EXTERNAL_PUBLIC));
    assert!(bound_on(EXTERNAL, new_to_o_side) && bound_on(INTERNAL, new_to_a_side));
    let q = relay.query("c4", now()).unwrap();
    assert_eq!(q.streams[0].offerer.interface, "external");
    assert_eq!(q.streams[0].answerer.interface, "internal");
    // Wherever the kernel routes it: loopback reaches 127.0.0.2 from 127.0.0.1 sockets.
    flows(
        3,
        &o,
        sa(EXTERNAL, new_to_o_side),
        &a,
        sa(INTERNAL, new_to_a_side),
    );
    flows(
        4,
        &a,
        sa(INTERNAL, new_to_a_side),
        &o,
        sa(EXTERNAL, new_to_o_side),
    );
    // The old ports went to rest: in use are the two new pairs only.
    assert_eq!(relay.totals().ports_in_use, 4);
    relay.shutdown();
}

#[test]
fn one_name_with_an_address_per_family() {
    if UdpSocket::bind("[::1]:0").is_err() {
        eprintln!("no IPv6 loopback here; skipping");
        return;
    }
    let mut list = interfaces();
    list.push(MediaInterface::new("external", ip("::1"), ip("::1")));
    let relay = relay_on(4, list);
    let (o, a) = (endpoint_on(INTERNAL), endpoint_on("::1"));
    // The SDP's family (IPv4) would pick 127.0.0.2; `address family` asks for IPv6.
    let flags = Flags {
        address_family: Some(AddressFamily::Ip6),
        ..direction("internal", "external")
    };
    let offer = offered(&relay, "c5", &audio(INTERNAL, port(&o)), &flags);
    let (adv, to_a_side) = relay_addr(&offer);
    assert_eq!(adv, ip("::1"));
    assert!(String::from_utf8_lossy(&offer).contains("c=IN IP6 ::1"));
    let answer = answered(&relay, "c5", &audio("::1", port(&a)), &Flags::default());
    let (adv, to_o_side) = relay_addr(&answer);
    assert_eq!(adv, ip(INTERNAL));
    flows(1, &o, sa(INTERNAL, to_o_side), &a, sa("::1", to_a_side));
    flows(2, &a, sa("::1", to_a_side), &o, sa(INTERNAL, to_o_side));
    // The IPv6 party is latched at its own address: its source, read by a worker that had
    // just read IPv4 sources, comes back whole.
    let s = relay.query("c5", now()).unwrap();
    assert_eq!(s.streams[0].answerer.latched, Some(a.local_addr().unwrap()));

    // Without `address family`, an IPv4 offer gets the name's IPv4 address.
    let offer = offered(
        &relay,
        "c6",
        &audio(INTERNAL, port(&o)),
        &direction("internal", "external"),
    );
    assert_eq!(relay_addr(&offer).0, ip(EXTERNAL_PUBLIC));
    relay.shutdown();
}

#[test]
fn a_bad_interface_list_does_not_start() {
    let start = |interfaces| {
        Relay::start(
            MediaConfig {
                interfaces,
                workers: 1,
                ..MediaConfig::default()
            },
            None,
        )
    };
    assert!(matches!(start(vec![]), Err(MediaError::Config(_))));
    let dup = vec![
        MediaInterface::new("x", ip(INTERNAL), ip(INTERNAL)),
        MediaInterface::new("x", ip(EXTERNAL), ip(EXTERNAL)),
    ];
    assert!(matches!(start(dup), Err(MediaError::Config(_))));
    // The single-interface constructor is the default interface.
    let single = MediaConfig::single(ip(INTERNAL), ip(EXTERNAL_PUBLIC));
    assert_eq!(single.interfaces.len(), 1);
    assert_eq!(
        single.interfaces[0].name,
        trunkline_media::DEFAULT_INTERFACE
    );
}
