//! End-to-end tests of the relay engine over real loopback sockets: offer/answer, then
//! endpoints exchanging RTP/RTCP through the relay. Every wait is bounded.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use trunkline_media::{Flags, MediaConfig, MediaError, Relay};

const LOOP: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Each test gets its own port window (below the kernel's ephemeral range).
fn relay(window: u16, pairs: u16) -> Relay {
    relay_with(window, pairs, |_| {})
}

fn relay_with(window: u16, pairs: u16, f: impl FnOnce(&mut MediaConfig)) -> Relay {
    let port_min = 21000 + window * 200;
    let mut c = MediaConfig {
        port_min,
        port_max: port_min + pairs * 2 - 1,
        workers: 2,
        port_rest: Duration::from_secs(60),
        ..MediaConfig::default()
    };
    f(&mut c);
    Relay::start(c, None).unwrap()
}

fn endpoint() -> UdpSocket {
    let s = UdpSocket::bind((LOOP, 0)).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(2000)))
        .unwrap();
    s
}

fn port(s: &UdpSocket) -> u16 {
    s.local_addr().unwrap().port()
}

struct M<'a> {
    kind: &'a str,
    port: u16,
    extra: &'a str,
}

fn sdp(ip: &str, media: &[M<'_>]) -> Vec<u8> {
    let mut s = format!("v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n");
    for m in media {
        let fmt = if m.kind == "audio" { "0" } else { "96" };
        s.push_str(&format!(
            "m={} {} RTP/AVP {fmt}\r\n{}",
            m.kind, m.port, m.extra
        ));
    }
    s.into_bytes()
}

fn audio(ip: &str, port: u16) -> Vec<u8> {
    sdp(
        ip,
        &[M {
            kind: "audio",
            port,
            extra: "",
        }],
    )
}

/// (relay address, RTP port, RTCP port, rtcp-mux) per m-line of a rewritten SDP.
fn relay_ports(body: &[u8]) -> Vec<(IpAddr, u16, u16, bool)> {
    let s = trunkline_sdp::parse(body).unwrap();
    s.media()
        .into_iter()
        .map(|m| {
            let rtcp = m.rtcp.map_or(m.port.wrapping_add(1), |(p, _)| p);
            (m.connection.unwrap(), m.port, rtcp, m.rtcp_mux)
        })
        .collect()
}

fn rtp(seq: u16, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x80, 0];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
    p.extend_from_slice(&0x1234_5678u32.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

fn recv(s: &UdpSocket) -> Option<(Vec<u8>, SocketAddr)> {
    let mut buf = [0u8; 2048];
    match s.recv_from(&mut buf) {
        Ok((n, from)) => Some((buf[..n].to_vec(), from)),
        Err(_) => None,
    }
}

fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn to(p: u16) -> SocketAddr {
    SocketAddr::new(LOOP, p)
}

/// Offer from `o`, answer from `a`; returns (port offerer sends to, port answerer sends to).
fn setup(relay: &Relay, call: &str, o: &UdpSocket, a: &UdpSocket, flags: &Flags) -> (u16, u16) {
    let offer = relay
        .offer(call, "ftag", &audio("127.0.0.1", port(o)), flags)
        .unwrap();
    let answer = relay
        .answer(call, "ftag", "ttag", &audio("127.0.0.1", port(a)), flags)
        .unwrap();
    let ra = relay_ports(&offer)[0];
    let ro = relay_ports(&answer)[0];
    assert_eq!(ra.0, LOOP);
    assert_eq!(ro.0, LOOP);
    (ro.1, ra.1)
}

#[test]
fn relay_handle_is_send_sync_clone() {
    fn check<T: Send + Sync + Clone + 'static>() {}
    check::<Relay>();
}

#[test]
fn offer_answer_relays_rtp_both_ways() {
    let relay = relay(0, 20);
    let (o, a) = (endpoint(), endpoint());
    let (ro, ra) = setup(&relay, "call-1", &o, &a, &Flags::default());
    assert_ne!(ro, ra);
    assert_eq!(ro % 2, 0);

    o.send_to(&rtp(1, b"from offerer"), to(ro)).unwrap();
    let (p, from) = recv(&a).expect("answerer gets RTP");
    assert_eq!(&p[12..], b"from offerer");
    assert_eq!(
        from,
        to(ra),
        "relay sends from the port the answerer sends to"
    );

    a.send_to(&rtp(9, b"from answerer"), to(ra)).unwrap();
    let (p, from) = recv(&o).expect("offerer gets RTP");
    assert_eq!(&p[12..], b"from answerer");
    assert_eq!(from, to(ro));

    let stats = wait_for("stats", || {
        let s = relay.query("call-1")?;
        let st = &s.streams[0];
        (st.offerer.rtp.packets == 1 && st.answerer.rtp.packets == 1).then_some(s)
    });
    let st = &stats.streams[0];
    assert_eq!(st.media, "audio");
    assert_eq!(st.offerer.local_port, ro);
    assert_eq!(st.answerer.local_port, ra);
    assert_eq!(st.offerer.latched, Some(o.local_addr().unwrap()));
    assert_eq!(st.offerer.rtp.bytes, 12 + 12);
    assert!(st.offerer.rtp.last_packet_ms_ago.is_some());
    assert!(st.offerer.last_packet_ms_ago().is_some());
    assert_eq!(st.offerer.rtcp, Default::default(), "no RTCP was sent");
    assert_eq!(st.offerer.ssrc, Some(0x1234_5678));
    assert_eq!(st.offerer.advertised, Some(o.local_addr().unwrap()));
    assert_eq!(stats.streams[0].protocol, "RTP/AVP");
    assert_eq!(stats.tags, vec!["ftag".to_string(), "ttag".to_string()]);
    let t = relay.totals();
    assert_eq!(t.packets_relayed, 2);
    assert_eq!(t.current_sessions, 1);
    assert_eq!(t.ports_in_use, 4);
    assert_eq!(relay.list(10), vec!["call-1".to_string()]);
    relay.shutdown();
}

#[test]
fn rtp_loss_is_counted_from_sequence_numbers() {
    let relay = relay(1, 20);
    let (o, a) = (endpoint(), endpoint());
    let (ro, _) = setup(&relay, "loss", &o, &a, &Flags::default());
    for seq in [1u16, 2, 5, 6] {
        o.send_to(&rtp(seq, b"x"), to(ro)).unwrap();
        recv(&a).expect("relayed");
    }
    wait_for("loss", || {
        let s = relay.query("loss")?;
        (s.streams[0].offerer.rtp_lost == 2).then_some(())
    });
}

#[test]
fn nat_latching_sends_back_to_the_real_source() {
    let relay = relay(2, 20);
    let (o, a) = (endpoint(), endpoint());
    // The offerer advertises a documentation address it does not really send from.
    let offer = relay
        .offer("nat", "f", &audio("192.0.2.1", 4000), &Flags::default())
        .unwrap();
    let answer = relay
        .answer(
            "nat",
            "f",
            "t",
            &audio("127.0.0.1", port(&a)),
            &Flags::default(),
        )
        .unwrap();
    let ra = relay_ports(&offer)[0].1;
    let ro = relay_ports(&answer)[0].1;
    o.send_to(&rtp(1, b"hello"), to(ro)).unwrap();
    assert_eq!(&recv(&a).expect("to answerer").0[12..], b"hello");
    a.send_to(&rtp(1, b"back"), to(ra)).unwrap();
    let (p, _) = recv(&o).expect("the latched offerer gets the return path");
    assert_eq!(&p[12..], b"back");
    let s = relay.query("nat").unwrap();
    assert_eq!(s.streams[0].offerer.latched, Some(o.local_addr().unwrap()));
}

#[test]
fn packets_from_a_stranger_after_latching_are_dropped_and_counted() {
    let relay = relay(3, 20);
    let (o, a, x) = (endpoint(), endpoint(), endpoint());
    let (ro, _) = setup(&relay, "strict", &o, &a, &Flags::default());
    o.send_to(&rtp(1, b"real"), to(ro)).unwrap();
    recv(&a).expect("latching packet relayed");
    for i in 0..5 {
        x.send_to(&rtp(100 + i, b"spray"), to(ro)).unwrap();
    }
    wait_for("drops", || {
        let s = relay.query("strict")?;
        (s.streams[0].offerer.rtp.errors == 5).then_some(())
    });
    assert_eq!(relay.totals().packets_dropped, 5);
    a.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    assert!(
        recv(&a).is_none(),
        "sprayed packets must not reach the answerer"
    );
    // The real source still gets through.
    o.send_to(&rtp(2, b"still"), to(ro)).unwrap();
    a.set_read_timeout(Some(Duration::from_millis(2000)))
        .unwrap();
    assert_eq!(&recv(&a).unwrap().0[12..], b"still");
}

#[test]
fn media_handover_relatches_to_the_new_source() {
    let relay = relay(4, 20);
    let (o, a, moved) = (endpoint(), endpoint(), endpoint());
    let flags = Flags {
        media_handover: true,
        ..Flags::default()
    };
    let (ro, ra) = setup(&relay, "handover", &o, &a, &flags);
    o.send_to(&rtp(1, b"one"), to(ro)).unwrap();
    recv(&a).unwrap();
    moved.send_to(&rtp(2, b"two"), to(ro)).unwrap();
    assert_eq!(&recv(&a).expect("new source accepted").0[12..], b"two");
    a.send_to(&rtp(1, b"back"), to(ra)).unwrap();
    assert_eq!(&recv(&moved).expect("return path follows").0[12..], b"back");
    let s = relay.query("handover").unwrap();
    assert_eq!(
        s.streams[0].offerer.latched,
        Some(moved.local_addr().unwrap())
    );
}

#[test]
fn asymmetric_sends_to_the_advertised_address() {
    let relay = relay(5, 20);
    let (advertised, actual, a) = (endpoint(), endpoint(), endpoint());
    let flags = Flags {
        asymmetric: true,
        ..Flags::default()
    };
    let offer = relay
        .offer("asym", "f", &audio("127.0.0.1", port(&advertised)), &flags)
        .unwrap();
    let answer = relay
        .answer("asym", "f", "t", &audio("127.0.0.1", port(&a)), &flags)
        .unwrap();
    let (ra, ro) = (relay_ports(&offer)[0].1, relay_ports(&answer)[0].1);
    actual.send_to(&rtp(1, b"x"), to(ro)).unwrap();
    recv(&a).expect("accepted from any source");
    a.send_to(&rtp(1, b"y"), to(ra)).unwrap();
    assert_eq!(
        &recv(&advertised).expect("sent to SDP address").0[12..],
        b"y"
    );
    actual
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    assert!(recv(&actual).is_none());
    assert_eq!(
        relay.query("asym").unwrap().streams[0].offerer.latched,
        None
    );
}

#[test]
fn strict_source_drops_before_latching() {
    let relay = relay(6, 20);
    let (o, a, x) = (endpoint(), endpoint(), endpoint());
    let flags = Flags {
        strict_source: true,
        ..Flags::default()
    };
    let (ro, _) = setup(&relay, "strict-src", &o, &a, &flags);
    x.send_to(&rtp(1, b"no"), to(ro)).unwrap();
    o.send_to(&rtp(1, b"yes"), to(ro)).unwrap();
    assert_eq!(&recv(&a).unwrap().0[12..], b"yes");
    wait_for("drop", || {
        (relay.query("strict-src")?.streams[0].offerer.rtp.errors == 1).then_some(())
    });
}

fn rtcp_sr(ssrc: u32, ntp: u64) -> Vec<u8> {
    let mut p = vec![0x80, 200, 0, 6];
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(&ntp.to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3]);
    p
}

fn rtcp_rr(ssrc: u32, about: u32, fraction: u8, jitter: u32, lsr: u32, dlsr: u32) -> Vec<u8> {
    let mut p = vec![0x81, 201, 0, 7];
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(&about.to_be_bytes());
    p.extend_from_slice(&((u32::from(fraction) << 24) | 3).to_be_bytes());
    for v in [1000u32, jitter, lsr, dlsr] {
        p.extend_from_slice(&v.to_be_bytes());
    }
    p
}

#[test]
fn rtcp_is_relayed_on_rtcp_ports_and_read_for_stats() {
    let relay = relay(7, 20);
    let (o, o_rtcp, a, a_rtcp) = (endpoint(), endpoint(), endpoint(), endpoint());
    let o_extra = format!("a=rtcp:{}\r\n", port(&o_rtcp));
    let a_extra = format!("a=rtcp:{}\r\n", port(&a_rtcp));
    let m = |p, extra| M {
        kind: "audio",
        port: p,
        extra,
    };
    let offer = relay
        .offer(
            "rtcp",
            "f",
            &sdp("127.0.0.1", &[m(port(&o), &o_extra)]),
            &Flags::default(),
        )
        .unwrap();
    let answer = relay
        .answer(
            "rtcp",
            "f",
            "t",
            &sdp("127.0.0.1", &[m(port(&a), &a_extra)]),
            &Flags::default(),
        )
        .unwrap();
    let ra = relay_ports(&offer)[0];
    let ro = relay_ports(&answer)[0];
    assert_eq!(ra.2, ra.1 + 1, "RTCP port is RTP + 1");
    assert!(!ra.3 && !ro.3);

    let ntp: u64 = 0x0000_1234_5678_0000;
    let sr = rtcp_sr(0xaaaa, ntp);
    o_rtcp.send_to(&sr, to(ro.2)).unwrap();
    let (p, from) = recv(&a_rtcp).expect("SR relayed to the answerer's RTCP port");
    assert_eq!(p, sr);
    assert_eq!(from, to(ra.2));

    let rr = rtcp_rr(0xbbbb, 0xaaaa, 25, 77, 0x1234_5678, 0);
    a_rtcp.send_to(&rr, to(ra.2)).unwrap();
    let (p, _) = recv(&o_rtcp).expect("RR relayed to the offerer's RTCP port");
    assert_eq!(p, rr);

    let s = wait_for("rtcp stats", || {
        let s = relay.query("rtcp")?;
        s.streams[0].answerer.rtt_ms.is_some().then_some(s)
    });
    let ans = &s.streams[0].answerer;
    assert_eq!(ans.rtcp_fraction_lost, Some(25));
    assert_eq!(ans.rtcp_jitter, Some(77));
    assert!(ans.rtt_ms.unwrap() >= 0.0);
    // RTCP is counted as RTCP, apart from RTP.
    let off = &s.streams[0].offerer;
    assert_eq!((off.rtcp.packets, off.rtcp.bytes), (1, sr.len() as u64));
    assert_eq!(off.rtp, Default::default());
    assert_eq!(ans.rtcp.packets, 1);
    assert_eq!(ans.latched_rtcp, Some(a_rtcp.local_addr().unwrap()));
    assert_eq!(ans.advertised_rtcp, Some(a_rtcp.local_addr().unwrap()));
    assert!(!ans.rtcp_mux);
}

#[test]
fn rtcp_mux_keeps_rtcp_on_the_rtp_port() {
    let relay = relay(8, 20);
    let (o, a) = (endpoint(), endpoint());
    let mux = |p| {
        sdp(
            "127.0.0.1",
            &[M {
                kind: "audio",
                port: p,
                extra: "a=rtcp-mux\r\n",
            }],
        )
    };
    let offer = relay
        .offer("mux", "f", &mux(port(&o)), &Flags::default())
        .unwrap();
    let answer = relay
        .answer("mux", "f", "t", &mux(port(&a)), &Flags::default())
        .unwrap();
    let (ra, ro) = (relay_ports(&offer)[0], relay_ports(&answer)[0]);
    assert!(ra.3 && ro.3, "rtcp-mux kept both ways");
    let rr = rtcp_rr(1, 2, 0, 0, 0, 0);
    o.send_to(&rr, to(ro.1)).unwrap();
    assert_eq!(recv(&a).expect("muxed RTCP").0, rr);
    a.send_to(&rtp(5, b"media"), to(ra.1)).unwrap();
    assert_eq!(&recv(&o).unwrap().0[12..], b"media");
}

#[test]
fn demux_gives_the_answerer_separate_rtcp() {
    let relay = relay(9, 20);
    let (o, a, a_rtcp) = (endpoint(), endpoint(), endpoint());
    let flags = Flags {
        rtcp_mux_demux: true,
        ..Flags::default()
    };
    let offer_body = sdp(
        "127.0.0.1",
        &[M {
            kind: "audio",
            port: port(&o),
            extra: "a=rtcp-mux\r\n",
        }],
    );
    let offer = relay.offer("demux", "f", &offer_body, &flags).unwrap();
    let ra = relay_ports(&offer)[0];
    assert!(!ra.3, "rtcp-mux removed toward the answerer");
    let a_extra = format!("a=rtcp:{}\r\n", port(&a_rtcp));
    let answer_body = sdp(
        "127.0.0.1",
        &[M {
            kind: "audio",
            port: port(&a),
            extra: &a_extra,
        }],
    );
    let answer = relay
        .answer("demux", "f", "t", &answer_body, &flags)
        .unwrap();
    let ro = relay_ports(&answer)[0];
    assert!(ro.3, "the offerer keeps mux");
    // Offerer's muxed RTCP goes to the answerer's RTCP port ...
    let rr = rtcp_rr(1, 2, 0, 0, 0, 0);
    o.send_to(&rr, to(ro.1)).unwrap();
    assert_eq!(recv(&a_rtcp).expect("demuxed").0, rr);
    // ... and the answerer's RTCP comes back on the offerer's RTP port.
    a_rtcp.send_to(&rr, to(ra.2)).unwrap();
    assert_eq!(recv(&o).expect("muxed again").0, rr);
}

#[test]
fn inactivity_timeout_is_reported_once() {
    let relay = relay_with(10, 20, |c| c.timeout = Duration::from_millis(300));
    let (o, a) = (endpoint(), endpoint());
    setup(&relay, "idle", &o, &a, &Flags::default());
    assert!(relay.take_timeouts().is_empty());
    let t = wait_for("timeout", || {
        let t = relay.take_timeouts();
        (!t.is_empty()).then_some(t)
    });
    assert_eq!(t.len(), 1);
    assert_eq!(t[0].call_id, "idle");
    assert!(t[0].idle >= Duration::from_millis(300));
    assert!(relay.take_timeouts().is_empty(), "reported once");
    assert_eq!(relay.totals().timeouts, 1);
    assert!(relay.query("idle").is_some(), "not deleted");
}

#[test]
fn media_activity_defers_the_timeout() {
    let relay = relay_with(11, 20, |c| c.timeout = Duration::from_millis(300));
    let (o, a) = (endpoint(), endpoint());
    let (ro, _) = setup(&relay, "busy", &o, &a, &Flags::default());
    let t = wait_for("first timeout", || {
        let t = relay.take_timeouts();
        (!t.is_empty()).then_some(t)
    });
    assert_eq!(t[0].call_id, "busy");
    o.send_to(&rtp(1, b"x"), to(ro)).unwrap();
    recv(&a).unwrap();
    // After new media, the session can time out (and be reported) again.
    let t = wait_for("second timeout", || {
        let t = relay.take_timeouts();
        (!t.is_empty()).then_some(t)
    });
    assert_eq!(t[0].call_id, "busy");
}

#[test]
fn deleted_ports_rest_and_exhaustion_is_no_ports() {
    // 4 pairs: two calls with one stream each (2 pairs per stream).
    let relay = relay(12, 4);
    let body = audio("127.0.0.1", 5000);
    let first = relay.offer("c1", "f", &body, &Flags::default()).unwrap();
    relay.offer("c2", "f", &body, &Flags::default()).unwrap();
    let err = relay
        .offer("c3", "f", &body, &Flags::default())
        .unwrap_err();
    assert!(matches!(err, MediaError::NoPorts), "{err}");
    assert!(
        relay.query("c3").is_none(),
        "a failed offer leaves no session"
    );
    let stats = relay.delete("c1", None, None).unwrap();
    assert_eq!(stats.call_id, "c1");
    let t = relay.totals();
    assert_eq!((t.ports_in_use, t.ports_resting), (4, 4));
    // Freed ports rest: still nothing to hand out.
    assert!(matches!(
        relay.offer("c3", "f", &body, &Flags::default()),
        Err(MediaError::NoPorts)
    ));
    assert!(matches!(
        relay.delete("c1", None, None),
        Err(MediaError::UnknownCall(_))
    ));
    let _ = first;
}

#[test]
fn reallocation_within_rest_uses_other_ports_and_rested_ports_come_back() {
    let relay = relay_with(13, 4, |c| c.port_rest = Duration::from_millis(200));
    let body = audio("127.0.0.1", 5000);
    let a = relay_ports(&relay.offer("r1", "f", &body, &Flags::default()).unwrap())[0].1;
    relay.delete("r1", Some("f"), None).unwrap();
    let b = relay_ports(&relay.offer("r2", "f", &body, &Flags::default()).unwrap())[0].1;
    assert_ne!(a, b);
    relay.delete("r2", None, None).unwrap();
    // Once rested, the range is usable again (both calls' ports).
    let c = wait_for("rested ports", || {
        relay
            .offer("r3", "f", &body, &Flags::default())
            .ok()
            .map(|sdp| relay_ports(&sdp)[0].1)
    });
    assert!(c == a || c == b);
}

#[test]
fn re_offer_keeps_ports_from_either_side() {
    let relay = relay(14, 20);
    let (o, a) = (endpoint(), endpoint());
    let (ro, ra) = setup(&relay, "reinvite", &o, &a, &Flags::default());
    // Re-offer from the offerer with a new port: same relay port toward the answerer.
    let again = relay
        .offer(
            "reinvite",
            "ftag",
            &audio("127.0.0.1", port(&o) ^ 1),
            &Flags::default(),
        )
        .unwrap();
    assert_eq!(relay_ports(&again)[0].1, ra);
    // Re-INVITE from the answerer: its offer goes to the offerer, with the offerer's port.
    let from_b = relay
        .offer(
            "reinvite",
            "ttag",
            &audio("127.0.0.1", port(&a)),
            &Flags::default(),
        )
        .unwrap();
    assert_eq!(relay_ports(&from_b)[0].1, ro);
    let answer = relay
        .answer(
            "reinvite",
            "ttag",
            "ftag",
            &audio("127.0.0.1", port(&o)),
            &Flags::default(),
        )
        .unwrap();
    assert_eq!(relay_ports(&answer)[0].1, ra);
    assert_eq!(relay.totals().ports_in_use, 4);
    // Media still flows after all that.
    o.send_to(&rtp(1, b"after"), to(ro)).unwrap();
    assert_eq!(&recv(&a).unwrap().0[12..], b"after");
    a.send_to(&rtp(1, b"back"), to(ra)).unwrap();
    assert_eq!(&recv(&o).unwrap().0[12..], b"back");
    // Unknown tags and calls are errors.
    assert!(matches!(
        relay.offer(
            "reinvite",
            "stranger",
            &audio("127.0.0.1", 1),
            &Flags::default()
        ),
        Err(MediaError::UnknownTag(_))
    ));
    assert!(matches!(
        relay.answer("nope", "f", "t", &audio("127.0.0.1", 1), &Flags::default()),
        Err(MediaError::UnknownCall(_))
    ));
}

#[test]
fn audio_and_video_relay_separately_and_port_zero_frees() {
    let relay = relay(15, 20);
    let (oa, ov, aa, av) = (endpoint(), endpoint(), endpoint(), endpoint());
    let two = |pa, pv| {
        sdp(
            "127.0.0.1",
            &[
                M {
                    kind: "audio",
                    port: pa,
                    extra: "",
                },
                M {
                    kind: "video",
                    port: pv,
                    extra: "",
                },
            ],
        )
    };
    let offer = relay
        .offer("av", "f", &two(port(&oa), port(&ov)), &Flags::default())
        .unwrap();
    let answer = relay
        .answer(
            "av",
            "f",
            "t",
            &two(port(&aa), port(&av)),
            &Flags::default(),
        )
        .unwrap();
    let (ra, ro) = (relay_ports(&offer), relay_ports(&answer));
    assert_eq!(ra.len(), 2);
    assert_eq!(relay.totals().ports_in_use, 8);
    oa.send_to(&rtp(1, b"audio"), to(ro[0].1)).unwrap();
    ov.send_to(&rtp(1, b"video"), to(ro[1].1)).unwrap();
    assert_eq!(&recv(&aa).unwrap().0[12..], b"audio");
    assert_eq!(&recv(&av).unwrap().0[12..], b"video");
    let s = relay.query("av").unwrap();
    assert_eq!(s.streams[1].media, "video");

    // Re-offer turning video off: its ports are freed, audio keeps its ports.
    let off = relay
        .offer("av", "f", &two(port(&oa), 0), &Flags::default())
        .unwrap();
    let off_ports = relay_ports(&off);
    assert_eq!(off_ports[0].1, ra[0].1);
    assert_eq!(off_ports[1].1, 0);
    assert_eq!(relay.totals().ports_in_use, 4);
    assert_eq!(relay.query("av").unwrap().streams.len(), 1);
}

#[test]
fn hold_with_zero_address_never_sends_to_it() {
    let relay = relay(16, 20);
    let (o, a) = (endpoint(), endpoint());
    let offer = relay
        .offer("hold", "f", &audio("0.0.0.0", 4000), &Flags::default())
        .unwrap();
    let answer = relay
        .answer(
            "hold",
            "f",
            "t",
            &audio("127.0.0.1", port(&a)),
            &Flags::default(),
        )
        .unwrap();
    let ra = relay_ports(&offer)[0].1;
    let ro = relay_ports(&answer)[0].1;
    a.send_to(&rtp(1, b"to nowhere"), to(ra)).unwrap();
    wait_for("dropped toward 0.0.0.0", || {
        (relay.query("hold")?.streams[0].answerer.rtp.errors == 1).then_some(())
    });
    // Whatever the held side still sends is forwarded, and latches a return path.
    o.send_to(&rtp(1, b"moh"), to(ro)).unwrap();
    assert_eq!(&recv(&a).unwrap().0[12..], b"moh");
    a.send_to(&rtp(2, b"now"), to(ra)).unwrap();
    assert_eq!(&recv(&o).unwrap().0[12..], b"now");
}

#[test]
fn received_from_replaces_the_sdp_address_unless_trusted() {
    let relay = relay(17, 20);
    let (o, a) = (endpoint(), endpoint());
    let flags = Flags {
        received_from: Some(SocketAddr::new(LOOP, 5060)),
        asymmetric: true,
        ..Flags::default()
    };
    // SDP says 192.0.2.1, SIP came from 127.0.0.1: media goes to 127.0.0.1:<SDP port>.
    let offer = relay
        .offer("src", "f", &audio("192.0.2.1", port(&o)), &flags)
        .unwrap();
    relay
        .answer(
            "src",
            "f",
            "t",
            &audio("127.0.0.1", port(&a)),
            &Flags::default(),
        )
        .unwrap();
    let ra = relay_ports(&offer)[0].1;
    a.send_to(&rtp(1, b"via sip source"), to(ra)).unwrap();
    assert_eq!(&recv(&o).unwrap().0[12..], b"via sip source");
}

#[test]
fn metrics_are_registered_and_refreshed() {
    let mut registry = prometheus_client::registry::Registry::default();
    let port_min = 21000 + 18 * 200;
    let relay = Relay::start(
        MediaConfig {
            port_min,
            port_max: port_min + 39,
            workers: 1,
            ..MediaConfig::default()
        },
        Some(&mut registry),
    )
    .unwrap();
    let (o, a) = (endpoint(), endpoint());
    let (ro, _) = setup(&relay, "metrics", &o, &a, &Flags::default());
    o.send_to(&rtp(1, b"m"), to(ro)).unwrap();
    recv(&a).unwrap();
    wait_for("relayed total", || {
        (relay.totals().packets_relayed == 1).then_some(())
    });
    relay.delete("metrics", None, None).unwrap();
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(
        text.contains("trunkline_media_packets_total{result=\"relayed\"} 1"),
        "{text}"
    );
    assert!(text.contains("trunkline_media_sessions_active 0"), "{text}");
    assert!(text.contains("trunkline_media_ports_in_use 0"), "{text}");
    assert!(text.contains("trunkline_media_bytes_total 13"), "{text}");
    assert!(text.contains("trunkline_media_timeouts_total 0"), "{text}");
    relay.shutdown();
    assert!(matches!(
        relay.offer("late", "f", &audio("127.0.0.1", 1), &Flags::default()),
        Err(MediaError::ShutDown)
    ));
}

#[test]
fn bursts_are_relayed_in_batches_intact_and_in_order() {
    let relay = relay_with(19, 20, |c| c.batch = 8);
    let (o, a) = (endpoint(), endpoint());

    let (ro, _) = setup(&relay, "burst", &o, &a, &Flags::default());
    // Bursts of 60 (several relay batches each), drained between bursts: 300 datagrams
    // at once would overflow the receiving endpoint's default buffer (counted in skb
    // truesize, not payload), which would test the kernel rather than the relay.
    for burst in 0..5u16 {
        for seq in burst * 60..(burst + 1) * 60 {
            o.send_to(&rtp(seq, &seq.to_be_bytes()), to(ro)).unwrap();
        }
        for seq in burst * 60..(burst + 1) * 60 {
            let (p, _) = recv(&a).expect("every packet of the burst");
            assert_eq!(&p[12..], &seq.to_be_bytes());
        }
    }
    wait_for("counters", || {
        let s = relay.query("burst")?;
        (s.streams[0].offerer.rtp.packets == 300 && relay.totals().packets_relayed == 300)
            .then_some(())
    });
    assert_eq!(relay.query("burst").unwrap().streams[0].offerer.rtp_lost, 0);
}

#[test]
fn ipv6_loopback_relays_when_available() {
    let Ok(probe) = UdpSocket::bind("[::1]:0") else {
        return; // no IPv6 loopback on this host
    };
    drop(probe);
    let v6: IpAddr = "::1".parse().unwrap();
    let relay = relay_with(20, 20, |c| {
        c.interfaces = MediaConfig::single(v6, v6).interfaces;
    });
    let ep = || {
        let s = UdpSocket::bind("[::1]:0").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s
    };
    let (o, a) = (ep(), ep());
    let body = |p: u16| {
        format!("v=0\r\no=- 1 1 IN IP6 ::1\r\ns=-\r\nc=IN IP6 ::1\r\nt=0 0\r\nm=audio {p} RTP/AVP 0\r\n")
            .into_bytes()
    };
    let offer = relay
        .offer("v6", "f", &body(port(&o)), &Flags::default())
        .unwrap();
    let answer = relay
        .answer("v6", "f", "t", &body(port(&a)), &Flags::default())
        .unwrap();
    let (ra, ro) = (relay_ports(&offer)[0], relay_ports(&answer)[0]);
    assert_eq!(ra.0, v6);
    o.send_to(&rtp(1, b"six"), SocketAddr::new(v6, ro.1))
        .unwrap();
    assert_eq!(&recv(&a).unwrap().0[12..], b"six");
    a.send_to(&rtp(1, b"back"), SocketAddr::new(v6, ra.1))
        .unwrap();
    assert_eq!(&recv(&o).unwrap().0[12..], b"back");
}

/// An RR from `ssrc` with a block per (source, fraction lost, jitter), LSR/DLSR zero.
fn rtcp_rr_blocks(ssrc: u32, blocks: &[(u32, u8, u32)]) -> Vec<u8> {
    let mut p = vec![0x80 | blocks.len() as u8, 201];
    p.extend_from_slice(&((1 + 6 * blocks.len()) as u16).to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    for &(about, fraction, jitter) in blocks {
        p.extend_from_slice(&about.to_be_bytes());
        p.extend_from_slice(&(u32::from(fraction) << 24).to_be_bytes());
        for v in [1000u32, jitter, 0, 0] {
            p.extend_from_slice(&v.to_be_bytes());
        }
    }
    p
}

fn muxed_call(relay: &Relay, call: &str, o: &UdpSocket, a: &UdpSocket) -> (u16, u16) {
    let mux = |p| {
        sdp(
            "127.0.0.1",
            &[M {
                kind: "audio",
                port: p,
                extra: "a=rtcp-mux\r\n",
            }],
        )
    };
    let offer = relay
        .offer(call, "f", &mux(port(o)), &Flags::default())
        .unwrap();
    let answer = relay
        .answer(call, "f", "t", &mux(port(a)), &Flags::default())
        .unwrap();
    (relay_ports(&answer)[0].1, relay_ports(&offer)[0].1)
}

#[test]
fn rtp_and_muxed_rtcp_are_counted_apart() {
    let relay = relay(21, 20);
    let (o, a, x) = (endpoint(), endpoint(), endpoint());
    let (ro, _) = muxed_call(&relay, "split", &o, &a);
    let media = rtp(1, &[0u8; 160]);
    let rr = rtcp_rr(0x1234_5678, 1, 0, 0, 0, 0);
    for p in [&media, &rr, &media, &rr, &media] {
        o.send_to(p, to(ro)).unwrap();
        assert_eq!(&recv(&a).expect("relayed").0, p);
    }
    // After latching, a stranger's RTCP on the RTP port is an RTCP error, not an RTP one.
    x.send_to(&rr, to(ro)).unwrap();
    let s = wait_for("split counters", || {
        let s = relay.query("split")?;
        let off = &s.streams[0].offerer;
        (off.rtp.packets == 3 && off.rtcp.packets == 2 && off.rtcp.errors == 1).then_some(s)
    });
    let off = &s.streams[0].offerer;
    assert_eq!(off.rtp.bytes, 3 * media.len() as u64);
    assert_eq!(off.rtp.errors, 0);
    assert_eq!(off.rtcp.bytes, 2 * rr.len() as u64);
    assert!(off.rtcp.last_packet_ms_ago.is_some());
    assert!(off.rtcp_mux);
    // A muxing party's RTCP source is its RTP source.
    assert_eq!(off.latched_rtcp, Some(o.local_addr().unwrap()));
    // The relay-wide totals still count every packet relayed.
    assert_eq!(relay.totals().packets_relayed, 5);
    assert_eq!(relay.totals().packets_dropped, 1);
}

#[test]
fn rtcp_stats_come_from_the_block_about_the_other_partys_media() {
    let relay = relay(22, 20);
    let (o, a) = (endpoint(), endpoint());
    let (ro, ra) = muxed_call(&relay, "blocks", &o, &a);
    // Before the answerer has heard any RTP: the first block counts.
    let early = rtcp_rr_blocks(0xbbbb, &[(0x9999, 200, 1), (0x1234_5678, 25, 77)]);
    a.send_to(&early, to(ra)).unwrap();
    recv(&o).expect("RR relayed");
    wait_for("first block", || {
        let s = relay.query("blocks")?;
        (s.streams[0].answerer.rtcp_fraction_lost == Some(200)).then_some(())
    });
    // Once the offerer's RTP (SSRC 0x12345678) went through, its block is the one read,
    // wherever it sits in the report.
    o.send_to(&rtp(1, b"media"), to(ro)).unwrap();
    recv(&a).expect("RTP relayed");
    a.send_to(&early, to(ra)).unwrap();
    recv(&o).expect("RR relayed");
    let s = wait_for("matching block", || {
        let s = relay.query("blocks")?;
        (s.streams[0].answerer.rtcp_fraction_lost == Some(25)).then_some(s)
    });
    assert_eq!(s.streams[0].answerer.rtcp_jitter, Some(77));
    assert_eq!(s.streams[0].answerer.rtcp.packets, 2);
    assert_eq!(s.streams[0].offerer.ssrc, Some(0x1234_5678));
}
