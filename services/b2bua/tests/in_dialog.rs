//! Requests inside an established call: re-INVITE (hold/resume, glare), UPDATE,
//! INFO/MESSAGE/NOTIFY, and the errors for requests that do not fit the dialog.

mod harness;

use harness::*;
use trunkline_b2bua::{CallState, Event, Leg};
use trunkline_sip::{HeaderName, Message, Method};

fn ua(w: &mut World, leg: Leg) -> &mut Ua {
    match leg {
        Leg::A => &mut w.a,
        Leg::B => &mut w.b,
    }
}

fn recv(w: &mut World, leg: Leg) -> Message {
    w.try_recv(leg)
        .unwrap_or_else(|| panic!("{leg:?} expected a message, got none"))
}

/// `from` sends a re-INVITE with `offer`; the other side answers 200 with `answer`.
/// Checks the relay both ways and the per-leg ACKs. Returns the 200 `from` got.
fn reinvite(w: &mut World, from: Leg, offer: &str, answer: &str) -> Message {
    let to = from.other();
    let req = ua(w, from).request("INVITE", &[], Some(("application/sdp", offer)));
    w.send(from, req.clone());
    let trying = recv(w, from);
    assert!(
        is_response(&trying, 100, Method::Invite),
        "{from:?} got {} (100 Trying stops its retransmissions)",
        summary(&trying)
    );
    let relayed = recv(w, to);
    assert!(
        is_request(&relayed, Method::Invite),
        "{to:?} got {}",
        summary(&relayed)
    );
    assert_eq!(body(&relayed), offer);
    assert_eq!(hdr(&relayed, HeaderName::ContentType), "application/sdp");
    let me = ua(w, to);
    assert_eq!(
        call_id(&relayed),
        me.call_id,
        "relayed inside the other leg's dialog"
    );
    assert_eq!(to_tag(&relayed), Some(me.tag.clone()));
    assert_eq!(Some(from_tag(&relayed)), me.remote_tag);
    assert!(!hdr(&relayed, HeaderName::Contact).is_empty());
    assert_eq!(hdr(&relayed, HeaderName::MaxForwards), "69");

    let ok = ua(w, to).respond(&relayed, 200, Some(answer));
    w.send(to, ok);
    let ack = recv(w, to);
    assert!(
        is_request(&ack, Method::Ack),
        "{to:?} got {}",
        summary(&ack)
    );
    assert_eq!(cseq(&ack).0, cseq(&relayed).0);
    let ok_back = recv(w, from);
    assert!(
        is_response(&ok_back, 200, Method::Invite),
        "{from:?} got {}",
        summary(&ok_back)
    );
    assert_eq!(body(&ok_back), answer);
    assert_eq!(cseq(&ok_back), cseq(&req));
    assert_eq!(branch(&ok_back), branch(&req));
    let ack = ua(w, from).ack(&ok_back, None);
    w.send(from, ack);
    w.assert_quiet();
    assert_eq!(w.call.state(), CallState::Established);
    ok_back
}

#[test]
fn hold_and_resume_from_the_caller() {
    let mut w = World::established(Setup::default());
    w.take_events();
    reinvite(
        &mut w,
        Leg::A,
        &sdp(40000, "sendonly"),
        &sdp(50000, "recvonly"),
    );
    assert!(w.events.iter().any(|e| matches!(e, Event::Settled)));
    let holds = |w: &mut World| -> Vec<(Leg, bool)> {
        w.take_events()
            .into_iter()
            .filter_map(|e| match e {
                Event::Hold { by, held } => Some((by, held)),
                _ => None,
            })
            .collect()
    };
    assert_eq!(
        holds(&mut w),
        vec![(Leg::A, true)],
        "the caller held the call"
    );
    reinvite(
        &mut w,
        Leg::A,
        &sdp(40000, "sendrecv"),
        &sdp(50000, "sendrecv"),
    );
    assert_eq!(holds(&mut w), vec![(Leg::A, false)], "and took it off hold");
    // B's next request carries CSeq numbers past both re-INVITEs of ours.
    let bye = w.a.request("BYE", &[], None);
    w.a_sends(bye);
    w.recv_a();
    let bye_b = w.recv_b();
    assert_eq!(cseq(&bye_b), (4, Method::Bye));
}

#[test]
fn reinvite_from_the_callee_is_relayed_to_the_caller() {
    let mut w = World::established(Setup::default());
    let ok = reinvite(
        &mut w,
        Leg::B,
        &sdp(50000, "sendonly"),
        &sdp(40000, "recvonly"),
    );
    assert_eq!(
        to_tag(&ok),
        Some(w.b.remote_tag.clone().unwrap_or_default())
    );
    reinvite(
        &mut w,
        Leg::B,
        &sdp(50000, "sendrecv"),
        &sdp(40000, "sendrecv"),
    );
}

#[test]
fn reinvite_rejected_by_the_other_side_is_relayed_and_acked_per_leg() {
    let mut w = World::established(Setup::default());
    let req = w.a.request(
        "INVITE",
        &[],
        Some(("application/sdp", &sdp(40000, "sendonly"))),
    );
    w.a_sends(req.clone());
    assert!(is_response(&w.recv_a(), 100, Method::Invite));
    let relayed = w.recv_b();
    let r488 = w.b.respond(&relayed, 488, None);
    w.b_sends(r488);
    let ack = w.recv_b();
    assert!(is_request(&ack, Method::Ack));
    assert_eq!(branch(&ack), branch(&relayed));
    let r = w.recv_a();
    assert!(
        is_response(&r, 488, Method::Invite),
        "A got {}",
        summary(&r)
    );
    let ack = w.a.ack_non2xx(&req, &r);
    w.a_sends(ack);
    w.assert_quiet();
    // The offer is over: a new re-INVITE goes through.
    reinvite(
        &mut w,
        Leg::A,
        &sdp(40000, "sendonly"),
        &sdp(50000, "recvonly"),
    );
}

#[test]
fn glare_gets_491() {
    let mut w = World::established(Setup::default());
    let from_b = w.b.request(
        "INVITE",
        &[],
        Some(("application/sdp", &sdp(50000, "sendonly"))),
    );
    w.b_sends(from_b);
    assert!(is_response(&w.recv_b(), 100, Method::Invite));
    let to_a = w.recv_a();
    assert!(is_request(&to_a, Method::Invite));

    // A's own re-INVITE crosses B's.
    let from_a = w.a.request(
        "INVITE",
        &[],
        Some(("application/sdp", &sdp(40000, "sendonly"))),
    );
    w.a_sends(from_a.clone());
    let r = w.recv_a();
    assert!(
        is_response(&r, 491, Method::Invite),
        "A got {}",
        summary(&r)
    );
    assert!(w.drain(Leg::B).is_empty(), "A's re-INVITE is not relayed");
    let ack = w.a.ack_non2xx(&from_a, &r);
    w.a_sends(ack);

    // B's re-INVITE still completes.
    let ok = w.a.respond(&to_a, 200, Some(&sdp(40000, "recvonly")));
    w.a_sends(ok);
    assert!(is_request(&w.recv_a(), Method::Ack));
    let ok_b = w.recv_b();
    assert!(is_response(&ok_b, 200, Method::Invite));
    let ack = w.b.ack(&ok_b, None);
    w.b_sends(ack);
    w.assert_quiet();
}

#[test]
fn update_is_relayed_both_ways() {
    let mut w = World::established(Setup::default());
    for from in [Leg::A, Leg::B] {
        let to = from.other();
        let offer = sdp(41000, "sendonly");
        let req = ua(&mut w, from).request("UPDATE", &[], Some(("application/sdp", &offer)));
        w.send(from, req);
        let relayed = recv(&mut w, to);
        assert!(
            is_request(&relayed, Method::Update),
            "{to:?} got {}",
            summary(&relayed)
        );
        assert_eq!(body(&relayed), offer);
        let answer = sdp(51000, "recvonly");
        let ok = ua(&mut w, to).respond(&relayed, 200, Some(&answer));
        w.send(to, ok);
        let back = recv(&mut w, from);
        assert!(
            is_response(&back, 200, Method::Update),
            "{from:?} got {}",
            summary(&back)
        );
        assert_eq!(body(&back), answer);
        w.assert_quiet();
    }
}

/// Method, extra headers, Content-Type, body.
type Case = (
    &'static str,
    &'static [(&'static str, &'static str)],
    &'static str,
    &'static str,
);

#[test]
fn info_message_and_notify_are_relayed_both_ways_with_bodies() {
    let mut w = World::established(Setup::default());
    let cases: [Case; 3] = [
        (
            "INFO",
            &[("Info-Package", "dtmf")],
            "application/dtmf-relay",
            "Signal=5\r\nDuration=160\r\n",
        ),
        ("MESSAGE", &[], "text/plain", "hello over the border"),
        (
            "NOTIFY",
            &[
                ("Event", "refer"),
                ("Subscription-State", "active;expires=60"),
            ],
            "message/sipfrag",
            "SIP/2.0 200 OK\r\n",
        ),
    ];
    for from in [Leg::A, Leg::B] {
        let to = from.other();
        for (meth, extra, ct, text) in cases {
            let req = ua(&mut w, from).request(meth, extra, Some((ct, text)));
            w.send(from, req.clone());
            let relayed = recv(&mut w, to);
            assert_eq!(
                method(&relayed),
                method(&req),
                "{to:?} got {}",
                summary(&relayed)
            );
            assert_eq!(body(&relayed), text, "{meth} body");
            assert_eq!(
                hdr(&relayed, HeaderName::ContentType),
                ct,
                "{meth} Content-Type"
            );
            for (k, v) in extra {
                assert_eq!(
                    hdr_named(&relayed, k).as_deref(),
                    Some(*v),
                    "{meth} keeps {k}"
                );
            }
            assert_eq!(call_id(&relayed), ua(&mut w, to).call_id);
            let ok = ua(&mut w, to).respond(&relayed, 200, None);
            w.send(to, ok);
            let back = recv(&mut w, from);
            assert!(
                is_response(&back, 200, method(&req).unwrap()),
                "{from:?} got {}",
                summary(&back)
            );
            assert_eq!(branch(&back), branch(&req));
            w.assert_quiet();
        }
    }
}

#[test]
fn relayed_error_response_reaches_the_sender() {
    let mut w = World::established(Setup::default());
    let req = w.a.request("MESSAGE", &[], Some(("text/plain", "hi")));
    w.a_sends(req);
    let relayed = w.recv_b();
    let r = w.b.respond(&relayed, 415, None);
    w.b_sends(r);
    let back = w.recv_a();
    assert!(
        is_response(&back, 415, Method::Message),
        "A got {}",
        summary(&back)
    );
    w.assert_quiet();
}

#[test]
fn unknown_in_dialog_method_gets_501_with_allow() {
    let mut w = World::established(Setup::default());
    let req = w.a.request("FROBNICATE", &[], None);
    w.a_sends(req);
    let r = w.recv_a();
    assert!(
        status(&r) == Some(501) && cseq(&r).1 == Method::Extension("FROBNICATE".into()),
        "A got {}",
        summary(&r)
    );
    assert!(hdr(&r, HeaderName::Allow).contains("INVITE"));
    w.assert_quiet();
    assert_eq!(w.call.state(), CallState::Established);
}

#[test]
fn in_dialog_request_with_wrong_to_tag_gets_481() {
    let mut w = World::established(Setup::default());
    let real = w.a.remote_tag.clone();
    w.a.remote_tag = Some("n1-000000000bad".into());
    let req = w.a.request("INFO", &[], None);
    w.a_sends(req);
    let r = w.recv_a();
    assert!(is_response(&r, 481, Method::Info), "A got {}", summary(&r));
    assert!(w.drain(Leg::B).is_empty());
    // The real dialog still works and its CSeq space is untouched.
    w.a.remote_tag = real;
    let bye = w.a.request("BYE", &[], None);
    w.a_sends(bye);
    assert!(is_response(&w.recv_a(), 200, Method::Bye));
}

#[test]
fn out_of_order_cseq_gets_500() {
    let mut w = World::established(Setup::default());
    let first = w.a.request("INFO", &[], None);
    w.a_sends(first);
    let relayed = w.recv_b();
    let ok = w.b.respond(&relayed, 200, None);
    w.b_sends(ok);
    w.recv_a();
    let stale = w.a.request_seq("INFO", 1, &[], None);
    w.a_sends(stale);
    let r = w.recv_a();
    assert!(is_response(&r, 500, Method::Info), "A got {}", summary(&r));
    assert!(!hdr(&r, HeaderName::RetryAfter).is_empty());
    assert!(w.drain(Leg::B).is_empty());
}

#[test]
fn late_offer_answer_travels_in_both_acks() {
    let mut w = World::new(Setup {
        offer: None,
        ..Setup::default()
    });
    let inv = w.route_to_b();
    assert!(body(&inv).is_empty(), "B gets an INVITE without SDP");
    let offer = sdp(50000, "sendrecv");
    let ok = w.b.respond(&inv, 200, Some(&offer));
    w.b_sends(ok.clone());
    assert!(
        w.drain(Leg::B).is_empty(),
        "B's ACK waits for the caller's answer"
    );
    let ok_a = w.recv_a();
    assert_eq!(status(&ok_a), Some(200));
    assert_eq!(body(&ok_a), offer);
    w.a.learn_answer(&ok_a);
    assert!(
        w.call.snapshot().is_none(),
        "not settled while B's ACK is owed"
    );

    let answer = sdp(40000, "sendrecv");
    let ack = w.a.ack(&ok_a, Some(&answer));
    w.a_sends(ack);
    let ack_b = w.recv_b();
    assert!(is_request(&ack_b, Method::Ack), "B got {}", summary(&ack_b));
    assert_eq!(body(&ack_b), answer);
    assert_eq!(hdr(&ack_b, HeaderName::ContentType), "application/sdp");
    assert_eq!(cseq(&ack_b), (1, Method::Ack));
    // B retransmits its 200: the same ACK, answer included.
    w.b_sends(ok);
    let again = w.recv_b();
    assert_eq!(body(&again), answer);
    w.assert_quiet();
    assert!(w.call.snapshot().is_some());
}

#[test]
fn late_offer_reinvite_from_the_caller() {
    let mut w = World::established(Setup::default());
    let req = w.a.request("INVITE", &[], None);
    w.a_sends(req);
    assert!(is_response(&w.recv_a(), 100, Method::Invite));
    let relayed = w.recv_b();
    assert!(body(&relayed).is_empty());
    let offer = sdp(50000, "sendrecv");
    let ok = w.b.respond(&relayed, 200, Some(&offer));
    w.b_sends(ok);
    assert!(w.drain(Leg::B).is_empty(), "the ACK waits for A's answer");
    let ok_a = w.recv_a();
    assert_eq!(body(&ok_a), offer);
    let answer = sdp(40000, "sendrecv");
    let ack = w.a.ack(&ok_a, Some(&answer));
    w.a_sends(ack);
    let ack_b = w.recv_b();
    assert!(is_request(&ack_b, Method::Ack));
    assert_eq!(body(&ack_b), answer);
    assert_eq!(cseq(&ack_b).0, cseq(&relayed).0);
}

#[test]
fn stray_requests_into_a_live_call_cost_it_no_state() {
    let mut w = World::established(Setup::default());
    assert_eq!(w.call.poll_timeout(), None, "an idle established call");
    let real = w.a.remote_tag.clone();
    for i in 0..200 {
        // Wrong To-tag, stale CSeq and unknown methods, the kinds a scanner sends.
        if i % 2 == 0 {
            w.a.remote_tag = Some(format!("n1-{i:012x}"));
            let req = w.a.request("INFO", &[], None);
            w.a_sends(req);
            assert!(is_response(&w.recv_a(), 481, Method::Info));
        } else {
            w.a.remote_tag = real.clone();
            let req = w.a.request_seq("INFO", 1, &[], None);
            w.a_sends(req);
            assert!(is_response(&w.recv_a(), 500, Method::Info));
        }
    }
    assert_eq!(
        w.call.poll_timeout(),
        None,
        "no transaction lingers for any of them"
    );
    assert!(w.drain(Leg::B).is_empty());
    w.a.remote_tag = real;
    let bye = w.a.request("BYE", &[], None);
    w.a_sends(bye);
    assert!(is_response(&w.recv_a(), 200, Method::Bye));
}

/// B rings with a To-tag; A learns the early dialog from the 180. Returns B's INVITE.
fn early(w: &mut World) -> Message {
    let inv = w.route_to_b();
    let r180 = w.b.respond(&inv, 180, None);
    w.b_sends(r180);
    let r = w.recv_a();
    assert_eq!(status(&r), Some(180));
    w.a.learn_answer(&r);
    inv
}

#[test]
fn update_in_the_early_dialog_is_relayed_both_ways() {
    let mut w = World::new(Setup::default());
    let inv = early(&mut w);
    // From the caller: an early UPDATE (RFC 3311) reaches the callee's early dialog.
    let up = w.a.request(
        "UPDATE",
        &[],
        Some(("application/sdp", &sdp(40002, "sendrecv"))),
    );
    w.a_sends(up);
    let up_b = w.recv_b();
    assert!(
        is_request(&up_b, Method::Update),
        "B got {}",
        summary(&up_b)
    );
    assert_eq!(call_id(&up_b), call_id(&inv));
    assert_eq!(to_tag(&up_b), Some(w.b.tag.clone()));
    assert_eq!(body(&up_b), sdp(40002, "sendrecv"));
    let ok = w.b.respond(&up_b, 200, Some(&sdp(50002, "sendrecv")));
    w.b_sends(ok);
    let ok_a = w.recv_a();
    assert!(
        is_response(&ok_a, 200, Method::Update),
        "A got {}",
        summary(&ok_a)
    );
    assert_eq!(body(&ok_a), sdp(50002, "sendrecv"));
    // And from the callee, with a new Contact: a target refresh of its early dialog.
    w.b.contact = format!("<sip:bob-early@{B_ADDR}>");
    let up = w.b.request("UPDATE", &[], None);
    w.b_sends(up);
    let up_a = w.recv_a();
    assert!(
        is_request(&up_a, Method::Update),
        "A got {}",
        summary(&up_a)
    );
    let ok = w.a.respond(&up_a, 200, None);
    w.a_sends(ok);
    assert!(is_response(&w.recv_b(), 200, Method::Update));
    // The call is still ringing, then answered as usual.
    assert_eq!(w.call.state(), CallState::Early);
    let ok = w.b.respond(&inv, 200, Some(&sdp(50002, "sendrecv")));
    w.b_sends(ok);
    assert!(is_request(&w.recv_b(), Method::Ack));
    assert!(is_response(&w.recv_a(), 200, Method::Invite));
    assert_eq!(w.call.state(), CallState::Established);
}

#[test]
fn update_contact_is_a_target_refresh() {
    let mut w = World::established(Setup::default());
    w.b.contact = format!("<sip:bob-moved@{B_ADDR}>");
    let up = w.b.request("UPDATE", &[], None);
    w.b_sends(up);
    let up_a = w.recv_a();
    let ok = w.a.respond(&up_a, 200, None);
    w.a_sends(ok);
    assert!(is_response(&w.recv_b(), 200, Method::Update));
    let bye = w.a.request("BYE", &[], None);
    w.a_sends(bye);
    w.recv_a();
    let bye_b = w.recv_b();
    assert_eq!(request_uri(&bye_b), format!("sip:bob-moved@{B_ADDR}"));
}

#[test]
fn cancel_of_a_pending_reinvite_is_relayed() {
    let mut w = World::established(Setup::default());
    let re = w.a.request(
        "INVITE",
        &[],
        Some(("application/sdp", &sdp(40002, "sendonly"))),
    );
    w.a_sends(re.clone());
    assert!(is_response(&w.recv_a(), 100, Method::Invite));
    let re_b = w.recv_b();
    let ringing = w.b.respond(&re_b, 180, None);
    w.b_sends(ringing);
    assert!(is_response(&w.recv_a(), 180, Method::Invite));
    let cancel = w.a.cancel(&re);
    w.a_sends(cancel);
    assert!(is_response(&w.recv_a(), 200, Method::Cancel));
    let cancel_b = w.recv_b();
    assert!(
        is_request(&cancel_b, Method::Cancel),
        "B got {}",
        summary(&cancel_b)
    );
    assert_eq!(branch(&cancel_b), branch(&re_b));
    assert_eq!(cseq(&cancel_b).0, cseq(&re_b).0);
    let ok = w.b.respond(&cancel_b, 200, None);
    w.b_sends(ok);
    let r487 = w.b.respond(&re_b, 487, None);
    w.b_sends(r487);
    assert!(is_request(&w.recv_b(), Method::Ack));
    let r = w.recv_a();
    assert!(
        is_response(&r, 487, Method::Invite),
        "A got {}",
        summary(&r)
    );
    let ack = w.a.ack_non2xx(&re, &r);
    w.a_sends(ack);
    w.assert_quiet();
    assert_eq!(w.call.state(), CallState::Established, "the call stays up");
    // The offer is over: a new re-INVITE goes through.
    let re = w.b.request(
        "INVITE",
        &[],
        Some(("application/sdp", &sdp(50004, "sendrecv"))),
    );
    w.b_sends(re);
    assert!(is_response(&w.recv_b(), 100, Method::Invite));
    assert!(is_request(&w.recv_a(), Method::Invite));
}

#[test]
fn a_callers_reinvite_from_a_new_address_moves_its_requests_there() {
    let mut w = World::established(Setup::default());
    // The phone's NAT binding changed: its re-INVITE comes from a new port.
    let moved: std::net::SocketAddr = "192.0.2.10:6001".parse().unwrap();
    let re = w.a.request(
        "INVITE",
        &[],
        Some(("application/sdp", &sdp(40002, "sendrecv"))),
    );
    w.call.handle_message(
        w.now,
        Leg::A,
        re,
        trunkline_sip::Peer::new(trunkline_sip::Transport::Udp, moved),
    );
    let sent: Vec<_> = std::iter::from_fn(|| w.call.poll_transmit()).collect();
    let trying = sent.iter().find(|t| t.leg == Leg::A).expect("100 to A");
    assert_eq!(trying.peer.addr, moved, "answered where it came from");
    // The callee hangs up: the BYE goes to the caller's new address.
    let re_b = sent
        .iter()
        .find(|t| t.leg == Leg::B)
        .map(|t| trunkline_sip::parse_message(t.data.clone()).unwrap())
        .unwrap();
    let ok = w.b.respond(&re_b, 200, Some(&sdp(50002, "sendrecv")));
    w.call.handle_message(w.now, Leg::B, ok, w.b.peer());
    let bye = w.b.request("BYE", &[], None);
    w.call.handle_message(w.now, Leg::B, bye, w.b.peer());
    let sent: Vec<_> = std::iter::from_fn(|| w.call.poll_transmit()).collect();
    let bye_a = sent
        .iter()
        .find(|t| t.leg == Leg::A && t.data.starts_with(b"BYE "))
        .expect("BYE to A");
    assert_eq!(bye_a.peer.addr, moved);
}

#[test]
fn a_trunk_behind_nat_is_reached_where_it_sends_from() {
    let mut w = World::new(Setup {
        fix_nated_contact: true,
        ..Setup::default()
    });
    // The PBX writes its private address into Contact; its packets come from B_ADDR.
    w.b.contact = "<sip:bob@10.0.0.20:5060>".into();
    w.establish();
    let bye = w.a.request("BYE", &[], None);
    w.a_sends(bye);
    w.recv_a();
    let bye_b = w.recv_b();
    assert!(is_request(&bye_b, Method::Bye));
    assert_eq!(
        request_uri(&bye_b),
        format!("sip:bob@{B_ADDR}"),
        "nathelper-style: the Contact follows the source"
    );
}

#[test]
fn a_trunk_contact_is_kept_when_nat_fixing_is_off() {
    let mut w = World::new(Setup::default());
    w.strict_peers = false;
    w.b.contact = "<sip:bob@10.0.0.20:5060>".into();
    w.establish();
    let bye = w.a.request("BYE", &[], None);
    w.a_sends(bye);
    let bye_b = w.log_b.last().expect("BYE to B");
    assert!(is_request(&bye_b.msg, Method::Bye));
    assert_eq!(bye_b.peer.addr, "10.0.0.20:5060".parse().unwrap());
}
