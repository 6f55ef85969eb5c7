//! Several named interfaces: each party of a call is anchored on the interface `direction`
//! names for it (rtpengine semantics), over real sockets on two loopback addresses
//! (127.0.0.0/8 is all loopback on Linux). Every wait is bounded.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::Duration;

use trunkline_media::{AddressFamily, Flags, MediaConfig, MediaError, MediaInterface, Relay};

const INTERNAL: &str = "127.0.0.1";
const EXTERNAL: &str = "127.0.0.2";
/// What the external interface advertises (as behind 1:1 NAT); nothing listens there.
const EXTERNAL_PUBLIC: &str = "192.0.2.50";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn interfaces() -> Vec<MediaInterface> {
    vec![
        MediaInterface::new("internal", ip(INTERNAL), ip(INTERNAL)),
        MediaInterface::new("external", ip(EXTERNAL), ip(EXTERNAL_PUBLIC)),
    ]
}

/// Each test gets its own port window (below the kernel's ephemeral range, apart from
/// `relay.rs`'s windows).
fn relay_on(window: u16, interfaces: Vec<MediaInterface>) -> Relay {
    let port_min = 26000 + window * 100;
    Relay::start(
        MediaConfig {
            interfaces,
            port_min,
            port_max: port_min + 39,
            workers: 1,
            port_rest: Duration::from_secs(60),
            ..MediaConfig::default()
        },
        None,
    )
    .unwrap()
}

fn endpoint(on: &str) -> UdpSocket {
    let s = UdpSocket::bind((ip(on), 0)).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(2000)))
        .unwrap();
    s
}

fn port(s: &UdpSocket) -> u16 {
    s.local_addr().unwrap().port()
}

fn audio(addr: &str, port: u16) -> Vec<u8> {
    let ty = if ip(addr).is_ipv4() { "IP4" } else { "IP6" };
    format!(
        "v=0\r\no=- 1 1 IN {ty} {addr}\r\ns=-\r\nc=IN {ty} {addr}\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP 0\r\n"
    )
    .into_bytes()
}

/// (connection address, RTP port) of the first m-line of a rewritten SDP.
fn relay_addr(body: &[u8]) -> (IpAddr, u16) {
    let m = trunkline_sdp::parse(body).unwrap().media().remove(0);
    (m.connection.unwrap(), m.port)
}

fn direction(from: &str, to: &str) -> Flags {
    Flags {
        direction: [Some(from.into()), Some(to.into())],
        ..Flags::default()
    }
}

fn rtp(seq: u16, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x80, 0];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
    p.extend_from_slice(&0x1234_5678u32.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

fn recv(s: &UdpSocket) -> (Vec<u8>, SocketAddr) {
    let mut buf = [0u8; 2048];
    let (n, from) = s.recv_from(&mut buf).expect("a relayed packet in time");
    (buf[..n].to_vec(), from)
}

/// `from` sends RTP to `relay`; `to` must get it from `expect_src` — the relay port of
/// `to`'s own side, on `to`'s interface.
fn flows(seq: u16, from: &UdpSocket, relay: SocketAddr, to: &UdpSocket, expect_src: SocketAddr) {
    let pkt = rtp(seq, b"media");
    from.send_to(&pkt, relay).unwrap();
    let (got, src) = recv(to);
    assert_eq!(got, pkt);
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

fn sa(addr: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip(addr), port)
}

#[test]
fn direction_anchors_each_party_on_its_interface() {
    let relay = relay_on(0, interfaces());
    let (o, a) = (endpoint(INTERNAL), endpoint(EXTERNAL));

    // The offer comes from the internal network and goes out to the external one.
    let offer = relay
        .offer(
            "c1",
            "ot",
            &audio(INTERNAL, port(&o)),
            &direction("internal", "external"),
        )
        .unwrap();
    let (adv, to_a_side) = relay_addr(&offer);
    assert_eq!(adv, ip(EXTERNAL_PUBLIC), "the external advertised address");
    assert!(
        bound_on(EXTERNAL, to_a_side),
        "answerer's port on 127.0.0.2"
    );
    assert!(!bound_on(INTERNAL, to_a_side));

    // The answer needs no direction: the offer chose both sides.
    let answer = relay
        .answer(
            "c1",
            "ot",
            "at",
            &audio(EXTERNAL, port(&a)),
            &Flags::default(),
        )
        .unwrap();
    let (adv, to_o_side) = relay_addr(&answer);
    assert_eq!(adv, ip(INTERNAL));
    assert!(bound_on(INTERNAL, to_o_side), "offerer's port on 127.0.0.1");
    assert!(!bound_on(EXTERNAL, to_o_side));

    // 192.0.2.50 is what a NAT would map to 127.0.0.2; the answerer sends to the latter.
    flows(1, &o, sa(INTERNAL, to_o_side), &a, sa(EXTERNAL, to_a_side));
    flows(2, &a, sa(EXTERNAL, to_a_side), &o, sa(INTERNAL, to_o_side));

    let q = relay.query("c1").unwrap();
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
    let (o, a) = (endpoint(INTERNAL), endpoint(INTERNAL));
    let offer = relay
        .offer("c2", "ot", &audio(INTERNAL, port(&o)), &Flags::default())
        .unwrap();
    let answer = relay
        .answer(
            "c2",
            "ot",
            "at",
            &audio(INTERNAL, port(&a)),
            &Flags::default(),
        )
        .unwrap();
    let (adv_a, to_a_side) = relay_addr(&offer);
    let (adv_o, to_o_side) = relay_addr(&answer);
    assert_eq!((adv_a, adv_o), (ip(INTERNAL), ip(INTERNAL)));
    assert!(bound_on(INTERNAL, to_a_side) && bound_on(INTERNAL, to_o_side));
    flows(1, &o, sa(INTERNAL, to_o_side), &a, sa(INTERNAL, to_a_side));
    flows(2, &a, sa(INTERNAL, to_a_side), &o, sa(INTERNAL, to_o_side));
    let q = relay.query("c2").unwrap();
    assert_eq!(q.streams[0].offerer.interface, "internal");
    assert_eq!(q.streams[0].answerer.interface, "internal");
    relay.shutdown();
}

#[test]
fn an_unknown_interface_is_an_error_and_changes_nothing() {
    let relay = relay_on(2, interfaces());
    let o = endpoint(INTERNAL);
    let e = relay
        .offer(
            "c3",
            "ot",
            &audio(INTERNAL, port(&o)),
            &direction("internal", "dmz"),
        )
        .unwrap_err();
    assert!(
        matches!(e, MediaError::UnknownInterface(ref n) if n == "dmz"),
        "{e}"
    );
    assert!(relay.query("c3").is_none(), "no session left behind");
    assert_eq!(relay.totals().ports_in_use, 0);

    // On a re-offer too, before anything changes.
    let offer = relay
        .offer(
            "c3",
            "ot",
            &audio(INTERNAL, port(&o)),
            &direction("internal", "external"),
        )
        .unwrap();
    let before = relay.query("c3").unwrap().streams;
    let flags = Flags {
        direction: [None, Some("nowhere".into())],
        ..Flags::default()
    };
    assert!(matches!(
        relay.offer("c3", "ot", &audio(INTERNAL, port(&o)), &flags),
        Err(MediaError::UnknownInterface(_))
    ));
    let after = relay.query("c3").unwrap().streams;
    assert_eq!(after[0].answerer.local_port, before[0].answerer.local_port);
    assert_eq!(relay_addr(&offer).0, ip(EXTERNAL_PUBLIC));
    // And in an answer, although an answer does not move anyone.
    assert!(matches!(
        relay.answer("c3", "ot", "at", &audio(EXTERNAL, 4000), &flags),
        Err(MediaError::UnknownInterface(_))
    ));
    relay.shutdown();
}

#[test]
fn re_offers_keep_each_party_on_its_interface_unless_told_otherwise() {
    let relay = relay_on(3, interfaces());
    let (o, a) = (endpoint(INTERNAL), endpoint(EXTERNAL));
    let offer = relay
        .offer(
            "c4",
            "ot",
            &audio(INTERNAL, port(&o)),
            &direction("internal", "external"),
        )
        .unwrap();
    let answer = relay
        .answer(
            "c4",
            "ot",
            "at",
            &audio(EXTERNAL, port(&a)),
            &Flags::default(),
        )
        .unwrap();
    let (_, to_a_side) = relay_addr(&offer);
    let (_, to_o_side) = relay_addr(&answer);

    // A re-offer from either party without `direction`: nothing moves.
    let re = relay
        .offer("c4", "ot", &audio(INTERNAL, port(&o)), &Flags::default())
        .unwrap();
    assert_eq!(relay_addr(&re), (ip(EXTERNAL_PUBLIC), to_a_side));
    let re = relay
        .offer("c4", "at", &audio(EXTERNAL, port(&a)), &Flags::default())
        .unwrap();
    assert_eq!(relay_addr(&re), (ip(INTERNAL), to_o_side));
    let re_answer = relay
        .answer(
            "c4",
            "at",
            "ot",
            &audio(INTERNAL, port(&o)),
            &Flags::default(),
        )
        .unwrap();
    assert_eq!(relay_addr(&re_answer), (ip(EXTERNAL_PUBLIC), to_a_side));
    flows(1, &o, sa(INTERNAL, to_o_side), &a, sa(EXTERNAL, to_a_side));
    flows(2, &a, sa(EXTERNAL, to_a_side), &o, sa(INTERNAL, to_o_side));

    // A re-offer naming other interfaces moves both sides (rtpengine re-allocates); the
    // new addresses reach the parties in this offer and its answer.
    let moved = relay
        .offer(
            "c4",
            "ot",
            &audio(INTERNAL, port(&o)),
            &direction("external", "internal"),
        )
        .unwrap();
    let (adv, new_to_a_side) = relay_addr(&moved);
    assert_eq!(adv, ip(INTERNAL));
    let answer = relay
        .answer(
            "c4",
            "ot",
            "at",
            &audio(EXTERNAL, port(&a)),
            &Flags::default(),
        )
        .unwrap();
    let (adv, new_to_o_side) = relay_addr(&answer);
    assert_eq!(adv, ip(EXTERNAL_PUBLIC));
    assert!(bound_on(EXTERNAL, new_to_o_side) && bound_on(INTERNAL, new_to_a_side));
    let q = relay.query("c4").unwrap();
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
    let (o, a) = (endpoint(INTERNAL), endpoint("::1"));
    // The SDP's family (IPv4) would pick 127.0.0.2; `address family` asks for IPv6.
    let flags = Flags {
        address_family: Some(AddressFamily::Ip6),
        ..direction("internal", "external")
    };
    let offer = relay
        .offer("c5", "ot", &audio(INTERNAL, port(&o)), &flags)
        .unwrap();
    let (adv, to_a_side) = relay_addr(&offer);
    assert_eq!(adv, ip("::1"));
    assert!(String::from_utf8_lossy(&offer).contains("c=IN IP6 ::1"));
    let answer = relay
        .answer("c5", "ot", "at", &audio("::1", port(&a)), &Flags::default())
        .unwrap();
    let (adv, to_o_side) = relay_addr(&answer);
    assert_eq!(adv, ip(INTERNAL));
    flows(1, &o, sa(INTERNAL, to_o_side), &a, sa("::1", to_a_side));
    flows(2, &a, sa("::1", to_a_side), &o, sa(INTERNAL, to_o_side));

    // Without `address family`, an IPv4 offer gets the name's IPv4 address.
    let offer = relay
        .offer(
            "c6",
            "ot",
            &audio(INTERNAL, port(&o)),
            &direction("internal", "external"),
        )
        .unwrap();
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
