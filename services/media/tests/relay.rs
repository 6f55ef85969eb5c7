//! End-to-end tests of the relay engine over real loopback sockets: offer/answer, then
//! endpoints exchanging RTP/RTCP through the relay. Every wait is bounded.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::UdpSocket;
use std::time::Duration;

use common::*;
use trunkline_media::{AddressPolicy, Flags, MediaConfig, MediaError, Relay};

/// A relay on window `window` of [`RELAY_RS`], with two forwarding threads.
fn relay(window: u16, pairs: u16) -> Relay {
    relay_with(window, pairs, |_| {})
}

fn relay_with(window: u16, pairs: u16, f: impl FnOnce(&mut MediaConfig)) -> Relay {
    start_relay(RELAY_RS, window, pairs, 2, f)
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
    let (ro, ra) = audio_call(&relay, "call-1", &o, &a, &Flags::default());
    assert_ne!(ro, ra);
    assert_eq!(ro % 2, 0);

    let from = send_through(
        "answerer gets RTP",
        &o,
        to(ro),
        &a,
        &rtp(1, b"from offerer"),
    );
    assert_eq!(
        from,
        to(ra),
        "relay sends from the port the answerer sends to"
    );

    let from = send_through(
        "offerer gets RTP",
        &a,
        to(ra),
        &o,
        &rtp(9, b"from answerer"),
    );
    assert_eq!(from, to(ro));

    let stats = stats_when(&relay, "call-1", "stats", |s| {
        let st = &s.streams[0];
        st.offerer.rtp.packets == 1 && st.answerer.rtp.packets == 1
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
    let (ro, _) = audio_call(&relay, "loss", &o, &a, &Flags::default());
    for seq in [1u16, 2, 5, 6] {
        send_through("relayed", &o, to(ro), &a, &rtp(seq, b"x"));
    }
    stats_when(&relay, "loss", "loss", |s| {
        s.streams[0].offerer.rtp_lost == 2
    });
}

/// A party that does not send from its signalled address is latched where it really sends
/// from once the learning window is over (here: at once, the window set to zero).
#[test]
fn nat_latching_sends_back_to_the_real_source() {
    let relay = relay_with(2, 20, |c| c.learning_window = Duration::ZERO);
    let (o, a) = (endpoint(), endpoint());
    // The offerer advertises a documentation address it does not really send from.
    let (ro, ra) = offer_answer(
        &relay,
        "nat",
        &audio("192.0.2.1", 4000),
        &audio(LOCALHOST, port(&a)),
        &Flags::default(),
    )
    .ports();
    send_through("to answerer", &o, to(ro), &a, &rtp(1, b"hello"));
    send_through(
        "the latched offerer gets the return path",
        &a,
        to(ra),
        &o,
        &rtp(1, b"back"),
    );
    let s = relay.query("nat", now()).unwrap();
    assert_eq!(s.streams[0].offerer.latched, Some(o.local_addr().unwrap()));
}

#[test]
fn packets_from_a_stranger_after_latching_are_dropped_and_counted() {
    let relay = relay(3, 20);
    let (o, a, x) = (endpoint(), endpoint(), endpoint());
    let (ro, _) = audio_call(&relay, "strict", &o, &a, &Flags::default());
    send_through("latching packet relayed", &o, to(ro), &a, &rtp(1, b"real"));
    for i in 0..5 {
        x.send_to(&rtp(100 + i, b"spray"), to(ro)).unwrap();
    }
    stats_when(&relay, "strict", "drops", |s| {
        s.streams[0].offerer.rtp.errors == 5
    });
    assert_eq!(relay.totals().packets_dropped, 5);
    assert!(
        stays_quiet(&a),
        "sprayed packets must not reach the answerer"
    );
    // The real source still gets through.
    send_through("still", &o, to(ro), &a, &rtp(2, b"still"));
}

#[test]
fn media_handover_relatches_to_the_new_source() {
    let relay = relay(4, 20);
    let (o, a, moved) = (endpoint(), endpoint(), endpoint());
    let flags = Flags {
        media_handover: true,
        ..Flags::default()
    };
    let (ro, ra) = audio_call(&relay, "handover", &o, &a, &flags);
    send_through("first source", &o, to(ro), &a, &rtp(1, b"one"));
    send_through("new source accepted", &moved, to(ro), &a, &rtp(2, b"two"));
    send_through("return path follows", &a, to(ra), &moved, &rtp(1, b"back"));
    let s = relay.query("handover", now()).unwrap();
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
    let (ro, ra) = offer_answer(
        &relay,
        "asym",
        &audio(LOCALHOST, port(&advertised)),
        &audio(LOCALHOST, port(&a)),
        &flags,
    )
    .ports();
    send_through(
        "accepted from any source",
        &actual,
        to(ro),
        &a,
        &rtp(1, b"x"),
    );
    send_through(
        "sent to SDP address",
        &a,
        to(ra),
        &advertised,
        &rtp(1, b"y"),
    );
    assert!(stays_quiet(&actual));
    assert_eq!(
        relay.query("asym", now()).unwrap().streams[0]
            .offerer
            .latched,
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
    let (ro, _) = audio_call(&relay, "strict-src", &o, &a, &flags);
    x.send_to(&rtp(1, b"no"), to(ro)).unwrap();
    // What arrives first is the expected source's packet: the stranger's was dropped.
    send_through("yes", &o, to(ro), &a, &rtp(1, b"yes"));
    stats_when(&relay, "strict-src", "drop", |s| {
        s.streams[0].offerer.rtp.errors == 1
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
    let (ro, ra) = offer_answer(
        &relay,
        "rtcp",
        &audio_with(LOCALHOST, port(&o), &rtcp_attr(port(&o_rtcp))),
        &audio_with(LOCALHOST, port(&a), &rtcp_attr(port(&a_rtcp))),
        &Flags::default(),
    )
    .first();
    assert_eq!(ra.rtcp_port, ra.port + 1, "RTCP port is RTP + 1");
    assert!(!ra.rtcp_mux && !ro.rtcp_mux);

    let ntp: u64 = 0x0000_1234_5678_0000;
    let sr = rtcp_sr(0xaaaa, ntp);
    let from = send_through(
        "SR relayed to the answerer's RTCP port",
        &o_rtcp,
        to(ro.rtcp_port),
        &a_rtcp,
        &sr,
    );
    assert_eq!(from, to(ra.rtcp_port));

    let rr = rtcp_rr(0xbbbb, 0xaaaa, 25, 77, 0x1234_5678, 0);
    send_through(
        "RR relayed to the offerer's RTCP port",
        &a_rtcp,
        to(ra.rtcp_port),
        &o_rtcp,
        &rr,
    );

    let s = stats_when(&relay, "rtcp", "rtcp stats", |s| {
        s.streams[0].answerer.rtt_ms.is_some()
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
    let (ro, ra) = muxed_call(&relay, "mux", &o, &a);
    assert!(ra.rtcp_mux && ro.rtcp_mux, "rtcp-mux kept both ways");
    let rr = rtcp_rr(1, 2, 0, 0, 0, 0);
    send_through("muxed RTCP", &o, to(ro.port), &a, &rr);
    send_through("media", &a, to(ra.port), &o, &rtp(5, b"media"));
}

#[test]
fn demux_gives_the_answerer_separate_rtcp() {
    let relay = relay(9, 20);
    let (o, a, a_rtcp) = (endpoint(), endpoint(), endpoint());
    let flags = Flags {
        rtcp_mux_demux: true,
        ..Flags::default()
    };
    let (ro, ra) = offer_answer(
        &relay,
        "demux",
        &audio_with(LOCALHOST, port(&o), RTCP_MUX),
        &audio_with(LOCALHOST, port(&a), &rtcp_attr(port(&a_rtcp))),
        &flags,
    )
    .first();
    assert!(!ra.rtcp_mux, "rtcp-mux removed toward the answerer");
    assert!(ro.rtcp_mux, "the offerer keeps mux");
    // Offerer's muxed RTCP goes to the answerer's RTCP port ...
    let rr = rtcp_rr(1, 2, 0, 0, 0, 0);
    send_through("demuxed", &o, to(ro.port), &a_rtcp, &rr);
    // ... and the answerer's RTCP comes back on the offerer's RTP port.
    send_through("muxed again", &a_rtcp, to(ra.rtcp_port), &o, &rr);
}

/// Ports are never held back by their rest: with every pair in use an offer is refused,
/// but once a call is deleted the next one gets its ports at once (counted as reused early,
/// they rested less than the configured 60 s).
#[test]
fn exhaustion_is_no_ports_and_freed_ports_serve_the_next_call_at_once() {
    // 4 pairs: two calls with one stream each (2 pairs per stream).
    let relay = relay(12, 4);
    let body = audio(LOCALHOST, 5000);
    let first = anchors(&offered(&relay, "c1", &body, &Flags::default()))[0].port;
    offered(&relay, "c2", &body, &Flags::default());
    let err = relay
        .offer("c3", FROM_TAG, &body, &Flags::default(), now())
        .unwrap_err();
    assert!(matches!(err, MediaError::NoPorts), "{err}");
    assert!(
        relay.query("c3", now()).is_none(),
        "a failed offer leaves no session"
    );
    let stats = relay.delete("c1", None, None, now()).unwrap();
    assert_eq!(stats.call_id, "c1");
    // Freed once the worker has closed their sockets (it does so at once).
    let t = wait_for("c1's sockets closed", || {
        let t = relay.totals();
        (t.ports_in_use == 4).then_some(t)
    });
    assert_eq!(t.ports_resting, 4);
    let reused = anchors(&offered(&relay, "c3", &body, &Flags::default()))[0].port;
    assert!(
        reused == first || reused == first + 2,
        "c3 gets c1's ports ({first}/{}), got {reused}",
        first + 2
    );
    let t = relay.totals();
    assert_eq!(
        (t.ports_in_use, t.ports_resting, t.ports_reused_early),
        (8, 0, 4)
    );
    assert!(matches!(
        relay.delete("c1", None, None, now()),
        Err(MediaError::UnknownCall(_))
    ));
}

/// The control side batches its commands to a forwarding thread instead of waking it for
/// each offer, answer and hang-up: a new stream's first packet wakes the thread, which
/// applies what is queued before reading it. Calls set up and torn down without media
/// cost a handful of wake-ups, not several per call, and media still flows on the next
/// call from its first packet.
#[test]
fn commands_are_batched_and_the_first_packet_still_flows() {
    // Room for every call's two pairs: no allocation has to wait for a removal.
    let relay = start_relay(RELAY_RS, 10, 100, 1, |_| {});
    let (o, a) = (endpoint(), endpoint());
    let calls = 45;
    for i in 0..calls {
        let call = format!("batch-{i}");
        audio_call(&relay, &call, &o, &a, &Flags::default());
        relay.delete(&call, None, None, now()).unwrap();
    }
    let wakeups = relay.totals().worker_wakeups;
    // Three commands per call (add, update, remove), a wake-up per 64 queued at most.
    assert!(
        wakeups <= calls * 3 / 64 + 1,
        "{wakeups} wake-ups for {calls} calls"
    );
    let (ro, ra) = audio_call(&relay, "after", &o, &a, &Flags::default());
    send_through(
        "first packet, offerer to answerer",
        &o,
        to(ro),
        &a,
        &rtp(1, b"one"),
    );
    send_through("first packet back", &a, to(ra), &o, &rtp(2, b"two"));
    // The ended calls' sockets are kept as spares.
    wait_for("the ended calls' sockets kept", || {
        (relay.totals().spare_sockets >= 4).then_some(())
    });
}

/// An ended call's sockets stay bound for the next call on their ports (no new socket,
/// bind and close per call); whatever reaches them meanwhile never reaches the next call;
/// and idle longer than `spare_ttl`, they are closed.
#[test]
fn ended_calls_sockets_serve_the_next_call_and_close_when_idle() {
    let relay = relay_with(25, 2, |c| c.spare_ttl = Duration::from_secs(2));
    let (o, a) = (endpoint(), endpoint());
    let (ro, _) = audio_call(&relay, "s1", &o, &a, &Flags::default());
    relay.delete("s1", None, None, now()).unwrap();
    wait_for("the call's sockets kept", || {
        (relay.totals().spare_sockets == 4).then_some(())
    });
    // A stranger sprays the idle port: its worker reads and drops it all.
    let stranger = endpoint();
    let before = relay.totals().packets_dropped;
    for seq in 0..20 {
        stranger.send_to(&rtp(seq, b"junk"), to(ro)).unwrap();
    }
    wait_for("the spray read and dropped, not left in the socket", || {
        (relay.totals().packets_dropped >= before + 20).then_some(())
    });
    // The only two pairs: the next call gets the same ports, on the same sockets.
    let (o2, a2) = (endpoint(), endpoint());
    let (ro2, ra2) = audio_call(&relay, "s2", &o2, &a2, &Flags::default());
    assert_eq!(ro2, ro);
    assert_eq!(relay.totals().spare_sockets, 0, "reused, not bound anew");
    o2.send_to(&rtp(1, b"hello"), to(ro2)).unwrap();
    let (got, _) = recv(&a2).expect("the new call's media flows");
    assert_eq!(
        &got[12..],
        b"hello",
        "and it is the new call's, not the stranger's"
    );
    a2.send_to(&rtp(1, b"back"), to(ra2)).unwrap();
    assert_eq!(&recv(&o2).expect("both ways").0[12..], b"back");
    assert!(stays_quiet(&stranger), "the stranger gets nothing");
    relay.delete("s2", None, None, now()).unwrap();
    wait_for("kept again", || {
        (relay.totals().spare_sockets == 4).then_some(())
    });
    // Idle past spare_ttl: closed (the housekeeping runs every second).
    std::thread::sleep(Duration::from_secs(2));
    wait_for("spares closed", || {
        (relay.totals().spare_sockets == 0).then_some(())
    });
    // Closed once its worker has let go of it too, which it is woken for.
    wait_for("the port free", || {
        std::net::UdpSocket::bind(sa(LOCALHOST, ro)).ok()
    });
}

/// A spare reused on the worker that put it away (one worker here) is the same socket,
/// still watched: calls after calls on the same ports carry their own media both ways,
/// and what a stranger sent between two of them reaches neither.
#[test]
fn spares_reused_on_their_own_worker_carry_the_next_calls_media() {
    let relay = start_relay(RELAY_RS, 11, 2, 1, |_| {});
    let stranger = endpoint();
    let mut first = None;
    for i in 0..3u16 {
        let (o, a) = (endpoint(), endpoint());
        let call = format!("same-{i}");
        let (ro, ra) = audio_call(&relay, &call, &o, &a, &Flags::default());
        assert_eq!(*first.get_or_insert(ro), ro, "the same ports every time");
        assert_eq!(relay.totals().spare_sockets, 0, "reused, not bound anew");
        send_through("offerer to answerer", &o, to(ro), &a, &rtp(i, b"forth"));
        send_through("answerer to offerer", &a, to(ra), &o, &rtp(i, b"back"));
        relay.delete(&call, None, None, now()).unwrap();
        for seq in 0..5 {
            stranger.send_to(&rtp(seq, b"junk"), to(ro)).unwrap();
        }
    }
    assert!(stays_quiet(&stranger), "the stranger gets nothing");
}

/// Freed pairs are reused least recently freed first: a never-used pair before any freed
/// one, then the pairs freed longest ago.
#[test]
fn ports_are_reused_least_recently_freed_first() {
    // One worker: it closes the calls' sockets in the order they were deleted.
    let relay = start_relay(RELAY_RS, 13, 6, 1, |_| {});
    let body = audio(LOCALHOST, 5000);
    // The port the answerer sends to (a call's second pair: the first is the offerer's).
    let port_of = |call: &str| anchors(&offered(&relay, call, &body, &Flags::default()))[0].port;
    let r1 = port_of("r1");
    let r2 = port_of("r2");
    relay.delete("r1", Some(FROM_TAG), None, now()).unwrap();
    relay.delete("r2", None, None, now()).unwrap();
    wait_for("the deleted calls' sockets closed", || {
        (relay.totals().ports_in_use == 0).then_some(())
    });
    // The two pairs never used yet come first ...
    let r3 = port_of("r3");
    assert!(![r1, r1 - 2, r2, r2 - 2].contains(&r3), "{r3}");
    // ... then r1's pairs (freed before r2's), then r2's.
    assert_eq!(port_of("r4"), r1);
    assert_eq!(port_of("r5"), r2);
}

#[test]
fn re_offer_keeps_ports_from_either_side() {
    let relay = relay(14, 20);
    let (o, a) = (endpoint(), endpoint());
    let (ro, ra) = audio_call(&relay, "reinvite", &o, &a, &Flags::default());
    // Re-offer from the offerer with a new port: same relay port toward the answerer.
    let again = offered(
        &relay,
        "reinvite",
        &audio(LOCALHOST, port(&o) ^ 1),
        &Flags::default(),
    );
    assert_eq!(anchors(&again)[0].port, ra);
    // Re-INVITE from the answerer: its offer goes to the offerer, with the offerer's port.
    let from_b = relay
        .offer(
            "reinvite",
            TO_TAG,
            &audio(LOCALHOST, port(&a)),
            &Flags::default(),
            now(),
        )
        .unwrap();
    assert_eq!(anchors(&from_b)[0].port, ro);
    let answer = relay
        .answer(
            "reinvite",
            TO_TAG,
            FROM_TAG,
            &audio(LOCALHOST, port(&o)),
            &Flags::default(),
            now(),
        )
        .unwrap();
    assert_eq!(anchors(&answer)[0].port, ra);
    assert_eq!(relay.totals().ports_in_use, 4);
    // Media still flows after all that.
    send_through("after", &o, to(ro), &a, &rtp(1, b"after"));
    send_through("back", &a, to(ra), &o, &rtp(1, b"back"));
    // Unknown tags and calls are errors.
    assert!(matches!(
        relay.offer(
            "reinvite",
            "stranger",
            &audio(LOCALHOST, 1),
            &Flags::default(),
            now()
        ),
        Err(MediaError::UnknownTag(_))
    ));
    assert!(matches!(
        relay.answer(
            "nope",
            "f",
            "t",
            &audio(LOCALHOST, 1),
            &Flags::default(),
            now()
        ),
        Err(MediaError::UnknownCall(_))
    ));
}

#[test]
fn audio_and_video_relay_separately_and_port_zero_frees() {
    let relay = relay(15, 20);
    let (oa, ov, aa, av) = (endpoint(), endpoint(), endpoint(), endpoint());
    let two = |pa, pv| {
        sdp(
            LOCALHOST,
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
    let Anchored {
        offerer_side: ro,
        answerer_side: ra,
    } = offer_answer(
        &relay,
        "av",
        &two(port(&oa), port(&ov)),
        &two(port(&aa), port(&av)),
        &Flags::default(),
    );
    assert_eq!(ra.len(), 2);
    assert_eq!(relay.totals().ports_in_use, 8);
    oa.send_to(&rtp(1, b"audio"), to(ro[0].port)).unwrap();
    ov.send_to(&rtp(1, b"video"), to(ro[1].port)).unwrap();
    assert_eq!(&recv(&aa).unwrap().0[12..], b"audio");
    assert_eq!(&recv(&av).unwrap().0[12..], b"video");
    let s = relay.query("av", now()).unwrap();
    assert_eq!(s.streams[1].media, "video");

    // Re-offer turning video off: its ports are freed, audio keeps its ports.
    let off = offered(&relay, "av", &two(port(&oa), 0), &Flags::default());
    let off_ports = anchors(&off);
    assert_eq!(off_ports[0].port, ra[0].port);
    assert_eq!(off_ports[1].port, 0);
    wait_for("video's sockets closed", || {
        (relay.totals().ports_in_use == 4).then_some(())
    });
    assert_eq!(relay.query("av", now()).unwrap().streams.len(), 1);
}

/// A party on hold from the start (`c=0.0.0.0`) is never sent to before it sends; what it
/// sends (music on hold) latches a return path once learnt (the window is zero here).
#[test]
fn hold_with_zero_address_never_sends_to_it() {
    let relay = relay_with(16, 20, |c| c.learning_window = Duration::ZERO);
    let (o, a) = (endpoint(), endpoint());
    let (ro, ra) = offer_answer(
        &relay,
        "hold",
        &audio("0.0.0.0", 4000),
        &audio(LOCALHOST, port(&a)),
        &Flags::default(),
    )
    .ports();
    a.send_to(&rtp(1, b"to nowhere"), to(ra)).unwrap();
    stats_when(&relay, "hold", "dropped toward 0.0.0.0", |s| {
        s.streams[0].answerer.rtp.errors == 1
    });
    // Whatever the held side still sends is forwarded, and latches a return path.
    send_through("moh", &o, to(ro), &a, &rtp(1, b"moh"));
    send_through("now", &a, to(ra), &o, &rtp(2, b"now"));
}

#[test]
fn received_from_replaces_the_sdp_address_unless_trusted() {
    let relay = relay(17, 20);
    let (o, a) = (endpoint(), endpoint());
    let flags = Flags {
        address: AddressPolicy::Source,
        received_from: Some(sa(LOCALHOST, 5060)),
        asymmetric: true,
        ..Flags::default()
    };
    // SDP says 192.0.2.1, SIP came from 127.0.0.1: media goes to 127.0.0.1:<SDP port>.
    let offer = offered(&relay, "src", &audio("192.0.2.1", port(&o)), &flags);
    answered(
        &relay,
        "src",
        &audio(LOCALHOST, port(&a)),
        &Flags::default(),
    );
    let ra = anchors(&offer)[0].port;
    send_through("via sip source", &a, to(ra), &o, &rtp(1, b"via sip source"));
}

#[test]
fn metrics_are_registered_and_refreshed() {
    let mut registry = prometheus_client::registry::Registry::default();
    // Not `relay()`: this one registers its metrics, with one worker and the default rest.
    let relay = Relay::start(
        MediaConfig {
            workers: 1,
            ..RELAY_RS.config(18, 20)
        },
        Some(&mut registry),
    )
    .unwrap();
    let (o, a) = (endpoint(), endpoint());
    let (ro, _) = audio_call(&relay, "metrics", &o, &a, &Flags::default());
    send_through("m", &o, to(ro), &a, &rtp(1, b"m"));
    wait_for("relayed total", || {
        (relay.totals().packets_relayed == 1).then_some(())
    });
    relay.delete("metrics", None, None, now()).unwrap();
    // Refreshed on delete and once a second; the ports count as free once the worker closed
    // their sockets, which the next refresh shows.
    let text = wait_for("metrics after the delete", || {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        text.contains("trunkline_media_ports_in_use 0")
            .then_some(text)
    });
    assert!(
        text.contains("trunkline_media_packets_total{result=\"relayed\"} 1"),
        "{text}"
    );
    assert!(text.contains("trunkline_media_sessions_active 0"), "{text}");
    assert!(text.contains("trunkline_media_bytes_total 13"), "{text}");
    assert!(
        text.contains("trunkline_media_timeouts_total{reason=\"timeout\"} 0"),
        "{text}"
    );
    relay.shutdown();
    assert!(matches!(
        relay.offer("late", "f", &audio(LOCALHOST, 1), &Flags::default(), now()),
        Err(MediaError::ShutDown)
    ));
}

#[test]
fn bursts_are_relayed_in_batches_intact_and_in_order() {
    let relay = relay_with(19, 20, |c| c.batch = 8);
    let (o, a) = (endpoint(), endpoint());

    let (ro, _) = audio_call(&relay, "burst", &o, &a, &Flags::default());
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
    stats_when(&relay, "burst", "counters", |s| {
        s.streams[0].offerer.rtp.packets == 300 && relay.totals().packets_relayed == 300
    });
    assert_eq!(
        relay.query("burst", now()).unwrap().streams[0]
            .offerer
            .rtp_lost,
        0
    );
}

#[test]
fn ipv6_loopback_relays_when_available() {
    let Ok(probe) = UdpSocket::bind("[::1]:0") else {
        return; // no IPv6 loopback on this host
    };
    drop(probe);
    let v6 = "::1";
    let relay = relay_with(20, 20, |c| {
        c.interfaces = MediaConfig::single(ip(v6), ip(v6)).interfaces;
    });
    let (o, a) = (endpoint_on(v6), endpoint_on(v6));
    let (ro, ra) = offer_answer(
        &relay,
        "v6",
        &audio(v6, port(&o)),
        &audio(v6, port(&a)),
        &Flags::default(),
    )
    .first();
    assert_eq!(ra.addr, ip(v6));
    send_through("six", &o, sa(v6, ro.port), &a, &rtp(1, b"six"));
    send_through("back", &a, sa(v6, ra.port), &o, &rtp(1, b"back"));
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

/// A call whose parties both offer rtcp-mux; returns the first m-line's (offerer's side,
/// answerer's side).
fn muxed_call(relay: &Relay, call: &str, o: &UdpSocket, a: &UdpSocket) -> (Anchor, Anchor) {
    offer_answer(
        relay,
        call,
        &audio_with(LOCALHOST, port(o), RTCP_MUX),
        &audio_with(LOCALHOST, port(a), RTCP_MUX),
        &Flags::default(),
    )
    .first()
}

#[test]
fn rtp_and_muxed_rtcp_are_counted_apart() {
    let relay = relay(21, 20);
    let (o, a, x) = (endpoint(), endpoint(), endpoint());
    let ro = muxed_call(&relay, "split", &o, &a).0.port;
    let media = rtp(1, &[0u8; 160]);
    let rr = rtcp_rr(0x1234_5678, 1, 0, 0, 0, 0);
    for p in [&media, &rr, &media, &rr, &media] {
        send_through("relayed", &o, to(ro), &a, p);
    }
    // After latching, a stranger's RTCP on the RTP port is an RTCP error, not an RTP one.
    x.send_to(&rr, to(ro)).unwrap();
    let s = stats_when(&relay, "split", "split counters", |s| {
        let off = &s.streams[0].offerer;
        off.rtp.packets == 3 && off.rtcp.packets == 2 && off.rtcp.errors == 1
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
    let (ro, ra) = (ro.port, ra.port);
    // Before the answerer has heard any RTP: the first block counts.
    let early = rtcp_rr_blocks(0xbbbb, &[(0x9999, 200, 1), (0x1234_5678, 25, 77)]);
    send_through("RR relayed", &a, to(ra), &o, &early);
    stats_when(&relay, "blocks", "first block", |s| {
        s.streams[0].answerer.rtcp_fraction_lost == Some(200)
    });
    // Once the offerer's RTP (SSRC 0x12345678) went through, its block is the one read,
    // wherever it sits in the report.
    send_through("RTP relayed", &o, to(ro), &a, &rtp(1, b"media"));
    send_through("RR relayed", &a, to(ra), &o, &early);
    let s = stats_when(&relay, "blocks", "matching block", |s| {
        s.streams[0].answerer.rtcp_fraction_lost == Some(25)
    });
    assert_eq!(s.streams[0].answerer.rtcp_jitter, Some(77));
    assert_eq!(s.streams[0].answerer.rtcp.packets, 2);
    assert_eq!(s.streams[0].offerer.ssrc, Some(0x1234_5678));
}

/// One SDP cannot take the port range: more m-lines than `max_streams` are refused whole,
/// with nothing allocated and no session left behind.
#[test]
fn too_many_m_lines_are_refused_whole() {
    let relay = relay_with(23, 20, |c| c.max_streams = 2);
    let m = |kind| M {
        kind,
        port: 5000,
        extra: "",
    };
    let three = sdp(LOCALHOST, &[m("audio"), m("video"), m("audio")]);
    let err = relay
        .offer("big", FROM_TAG, &three, &Flags::default(), now())
        .unwrap_err();
    assert!(
        matches!(err, MediaError::TooManyStreams { count: 3, max: 2 }),
        "{err}"
    );
    assert!(err.is_offer_fault(), "SIP answers it with 488");
    assert!(relay.query("big", now()).is_none());
    assert_eq!(relay.totals().ports_in_use, 0);
    // Two are fine; an answer with three is refused too, and changes nothing.
    let two = sdp(LOCALHOST, &[m("audio"), m("video")]);
    offered(&relay, "ok", &two, &Flags::default());
    assert!(matches!(
        relay.answer("ok", FROM_TAG, TO_TAG, &three, &Flags::default(), now()),
        Err(MediaError::TooManyStreams { .. })
    ));
    assert_eq!(
        relay.query("ok", now()).unwrap().tags.len(),
        1,
        "not answered"
    );
}

/// A call's ports are bounded: an offer (first or re-offer) that would make the call hold
/// more than `max_ports_per_call` is refused and changes nothing; the call goes on.
#[test]
fn a_call_may_not_hold_more_ports_than_its_budget() {
    // Two streams' worth: 2 x (RTP + RTCP) x 2 sides.
    let relay = relay_with(24, 20, |c| c.max_ports_per_call = 8);
    let (o, a) = (endpoint(), endpoint());
    let m = |kind, port| M {
        kind,
        port,
        extra: "",
    };
    let three = sdp(
        LOCALHOST,
        &[m("audio", 5000), m("video", 5002), m("audio", 5004)],
    );
    let err = relay
        .offer("greedy", FROM_TAG, &three, &Flags::default(), now())
        .unwrap_err();
    assert!(
        matches!(err, MediaError::TooManyPorts { needed: 12, max: 8 }),
        "{err}"
    );
    assert!(err.is_offer_fault());
    assert!(relay.query("greedy", now()).is_none());
    assert_eq!(relay.totals().ports_in_use, 0);

    let (ro, ra) = audio_call(&relay, "budget", &o, &a, &Flags::default());
    // A re-offer adding two streams would need 12 ports.
    let more = sdp(
        LOCALHOST,
        &[m("audio", port(&o)), m("video", 5002), m("audio", 5004)],
    );
    assert!(matches!(
        relay.offer("budget", FROM_TAG, &more, &Flags::default(), now()),
        Err(MediaError::TooManyPorts { needed: 12, max: 8 })
    ));
    assert_eq!(relay.query("budget", now()).unwrap().streams.len(), 1);
    assert_eq!(relay.totals().ports_in_use, 4);
    send_through("the call goes on", &o, to(ro), &a, &rtp(1, b"still"));
    send_through("both ways", &a, to(ra), &o, &rtp(1, b"still"));
}
