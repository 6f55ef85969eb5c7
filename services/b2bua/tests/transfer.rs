//! Blind transfer by the node: the target is called without an offer, its offer goes
//! to the remaining leg in a re-INVITE, the answer comes back in the ACK, and only then
//! is the old party released. Every way it can fail leaves the call as it was, or ends
//! it cleanly, and never leaves a leg up.

mod harness;

use harness::*;
use trunkline_b2bua::{EndCause, Event, Leg, MediaOp, TransferError, TransferTarget};
use trunkline_sip::{Message, Method, Peer, Transport, Uri};

const T_ADDR: &str = "192.0.2.30:5080";

/// The transfer target: a UA at its own address.
fn target_ua() -> Ua {
    let mut t = Ua::callee(Transport::Udp);
    t.user = "carol";
    t.addr = T_ADDR.parse().expect("addr");
    t.contact = format!("<sip:carol@{T_ADDR}>");
    t.tag = "ttag-55c1".into();
    t
}

fn target(w: &World) -> TransferTarget {
    TransferTarget {
        peer: Peer::new(Transport::Udp, T_ADDR.parse().expect("addr")),
        local: w.b_local.clone(),
        request_uri: Uri::parse(&format!("sip:3000@{T_ADDR}")).expect("uri"),
    }
}

/// An established call with its peers allowed to change.
fn world(anchor: bool) -> World {
    let mut w = World::established(Setup {
        anchor,
        ..Setup::default()
    });
    w.strict_peers = false;
    w
}

/// The next message toward `leg`, checked to go to `addr`.
fn recv_at(w: &mut World, leg: Leg, addr: &str) -> Message {
    let s = w
        .recv_sent(leg)
        .unwrap_or_else(|| panic!("expected a message toward {addr}"));
    assert_eq!(
        s.peer.addr.to_string(),
        addr,
        "sent to the wrong party: {}",
        summary(&s.msg)
    );
    s.msg
}

fn sent_by(w: &mut World, leg: Leg, ua: &Ua, msg: Message) {
    let now = w.now;
    w.call.handle_message(now, leg, msg, ua.peer());
    w.pump();
}

fn transfer_events(w: &mut World) -> Vec<Event> {
    w.take_events()
        .into_iter()
        .filter(|e| {
            matches!(
                e,
                Event::TransferAnswered { .. }
                    | Event::Transferred { .. }
                    | Event::TransferFailed { .. }
                    | Event::Ended { .. }
            )
        })
        .collect()
}

/// Runs a transfer of B to the target up to the re-INVITE A receives; returns the
/// target UA, its INVITE, its 200, and A's re-INVITE.
fn up_to_reinvite(w: &mut World) -> (Ua, Message, Message, Message) {
    let now = w.now;
    w.call
        .transfer(now, Leg::B, target(w))
        .expect("transfer starts");
    w.pump();
    let inv = recv_at(w, Leg::B, T_ADDR);
    assert!(
        is_request(&inv, Method::Invite),
        "target got {}",
        summary(&inv)
    );
    assert!(
        body(&inv).is_empty(),
        "the target is called without an offer"
    );
    assert_eq!(request_uri(&inv), format!("sip:3000@{T_ADDR}"));
    assert!(
        hdr(&inv, trunkline_sip::HeaderName::From).contains("alice"),
        "the target sees the caller"
    );
    assert_ne!(
        call_id(&inv),
        w.b.call_id,
        "a new dialog, not the old callee's"
    );
    let mut t = target_ua();
    t.accept_invite(&inv);
    let ringing = t.respond(&inv, 180, None);
    sent_by(w, Leg::B, &t, ringing);
    w.assert_quiet();
    let ok = t.respond(&inv, 200, Some(&sdp(60000, "sendrecv")));
    sent_by(w, Leg::B, &t, ok.clone());
    let reinv = w.recv_a();
    assert!(
        is_request(&reinv, Method::Invite),
        "A got {}",
        summary(&reinv)
    );
    assert_eq!(
        to_tag(&reinv).as_deref(),
        Some(w.a.tag.as_str()),
        "on A's dialog"
    );
    (t, inv, ok, reinv)
}

#[test]
fn the_callee_leg_moves_to_the_target_and_the_old_callee_is_released() {
    for anchor in [false, true] {
        let mut w = world(anchor);
        let (mut t, _inv, ok, reinv) = up_to_reinvite(&mut w);
        assert!(
            body(&reinv).contains("m=audio 60000 "),
            "A is offered the target's media (anchor={anchor}): {}",
            body(&reinv)
        );
        assert_eq!(
            body(&reinv).contains(&format!("c=IN IP4 {RELAY_IP}")),
            anchor,
            "through the relay exactly when media is anchored"
        );
        let ok_a = w.a.respond(&reinv, 200, Some(&sdp(40002, "sendrecv")));
        w.a_sends(ok_a);
        let ack_a = w.recv_a();
        assert!(is_request(&ack_a, Method::Ack), "A got {}", summary(&ack_a));
        let ack_t = recv_at(&mut w, Leg::B, T_ADDR);
        assert!(is_request(&ack_t, Method::Ack));
        assert_eq!(call_id(&ack_t), t.call_id);
        assert_eq!(cseq(&ack_t).0, cseq(&ok).0);
        assert!(
            body(&ack_t).contains("m=audio"),
            "the ACK carries A's answer to the target's offer"
        );
        let bye_old = recv_at(&mut w, Leg::B, B_ADDR);
        assert!(
            is_request(&bye_old, Method::Bye),
            "old callee got {}",
            summary(&bye_old)
        );
        assert_eq!(call_id(&bye_old), w.b.call_id);
        let ok_bye = w.b.respond(&bye_old, 200, None);
        w.b_sends(ok_bye);
        let evs = transfer_events(&mut w);
        assert_eq!(
            evs.iter()
                .filter(|e| matches!(e, Event::Transferred { leg: Leg::B }))
                .count(),
            1,
            "{evs:?}"
        );
        assert!(!evs.iter().any(|e| matches!(e, Event::Ended { .. })));
        if anchor {
            let ops = &w.media_ops[w.media_ops.len() - 2..];
            assert_eq!(
                ops,
                &[
                    MediaOp::Offer { from: Leg::B },
                    MediaOp::Answer { offerer: Leg::B }
                ]
            );
        }
        // A retransmitted 2xx from the target gets the same ACK again.
        sent_by(&mut w, Leg::B, &t.clone(), ok.clone());
        let again = recv_at(&mut w, Leg::B, T_ADDR);
        assert!(is_request(&again, Method::Ack));
        // The call now runs between A and the target: A's BYE reaches the target.
        let bye = w.a.request("BYE", &[], None);
        w.a_sends(bye);
        assert_eq!(status(&w.recv_a()), Some(200));
        let bye_t = recv_at(&mut w, Leg::B, T_ADDR);
        assert!(is_request(&bye_t, Method::Bye));
        assert_eq!(call_id(&bye_t), t.call_id);
        t.cseq = 0;
        let ok_t = t.respond(&bye_t, 200, None);
        sent_by(&mut w, Leg::B, &t, ok_t);
        assert_eq!(w.ended(), vec![(200, EndCause::CallerHangup)]);
        w.run_out();
        assert!(w.call.is_finished(), "anchor={anchor}");
    }
}

#[test]
fn the_target_can_hang_up_the_transferred_call() {
    let mut w = world(false);
    let (mut t, _inv, _ok, reinv) = up_to_reinvite(&mut w);
    let ok_a = w.a.respond(&reinv, 200, Some(&sdp(40002, "sendrecv")));
    w.a_sends(ok_a);
    let _ack_a = w.recv_a();
    let _ack_t = recv_at(&mut w, Leg::B, T_ADDR);
    let bye_old = recv_at(&mut w, Leg::B, B_ADDR);
    let ok_bye = w.b.respond(&bye_old, 200, None);
    w.b_sends(ok_bye);
    // The target's own BYE, on its dialog.
    t.remote_target = format!("sip:{OUR_IP}:{B_LOCAL_PORT}");
    t.local_uri = t.local_uri.clone();
    let bye = t.request("BYE", &[], None);
    sent_by(&mut w, Leg::B, &t, bye);
    assert_eq!(status(&recv_at(&mut w, Leg::B, T_ADDR)), Some(200));
    let bye_a = w.recv_a();
    assert!(is_request(&bye_a, Method::Bye));
    assert_eq!(w.ended(), vec![(200, EndCause::CalleeHangup)]);
}

#[test]
fn a_target_that_refuses_leaves_the_call_as_it_was() {
    let mut w = world(true);
    let now = w.now;
    w.call.transfer(now, Leg::B, target(&w)).expect("starts");
    w.pump();
    let inv = recv_at(&mut w, Leg::B, T_ADDR);
    let mut t = target_ua();
    t.accept_invite(&inv);
    let busy = t.respond(&inv, 486, None);
    sent_by(&mut w, Leg::B, &t, busy);
    let ack = recv_at(&mut w, Leg::B, T_ADDR);
    assert!(is_request(&ack, Method::Ack), "the 486 is ACKed");
    assert!(matches!(
        transfer_events(&mut w).as_slice(),
        [Event::TransferFailed {
            leg: Leg::B,
            status: 486
        }]
    ));
    w.assert_quiet();
    // Over: another transfer may start.
    let now = w.now;
    w.call
        .transfer(now, Leg::B, target(&w))
        .expect("a second transfer starts");
    w.pump();
    let again = recv_at(&mut w, Leg::B, T_ADDR);
    assert!(is_request(&again, Method::Invite));
    let busy = t.respond(&again, 486, None);
    sent_by(&mut w, Leg::B, &t, busy);
    let _ack = recv_at(&mut w, Leg::B, T_ADDR);
    transfer_events(&mut w);
    // The old callee is still the callee: A's re-INVITE reaches it, and A's BYE too.
    let reinv = w.a.request(
        "INVITE",
        &[],
        Some(("application/sdp", &sdp(40004, "sendonly"))),
    );
    w.a_sends(reinv);
    let _trying = w.recv_a();
    let at_b = recv_at(&mut w, Leg::B, B_ADDR);
    assert!(is_request(&at_b, Method::Invite));
}

#[test]
fn a_remaining_leg_that_refuses_the_target_releases_it() {
    for anchor in [false, true] {
        let mut w = world(anchor);
        let (_t, _inv, _ok, reinv) = up_to_reinvite(&mut w);
        let refused = w.a.respond(&reinv, 488, None);
        w.a_sends(refused);
        let mut to_a = w.drain(Leg::A);
        assert!(
            to_a.iter().any(|m| is_request(m, Method::Ack)),
            "A's 488 is ACKed"
        );
        let ack_t = recv_at(&mut w, Leg::B, T_ADDR);
        assert!(is_request(&ack_t, Method::Ack));
        let bye_t = recv_at(&mut w, Leg::B, T_ADDR);
        assert!(is_request(&bye_t, Method::Bye), "the target is released");
        let evs = transfer_events(&mut w);
        assert!(
            evs.iter().any(|e| matches!(
                e,
                Event::TransferFailed {
                    leg: Leg::B,
                    status: 488
                }
            )),
            "{evs:?}"
        );
        if anchor {
            // The relay already points the moved leg at the target: the call ends
            // rather than going on without audio.
            assert!(
                evs.iter().any(|e| matches!(e, Event::Ended { .. })),
                "{evs:?}"
            );
            to_a.retain(|m| is_request(m, Method::Bye));
            assert_eq!(to_a.len(), 1, "A gets BYE");
            let old = recv_at(&mut w, Leg::B, B_ADDR);
            assert!(is_request(&old, Method::Bye), "the old callee gets BYE");
        } else {
            assert!(!evs.iter().any(|e| matches!(e, Event::Ended { .. })));
            w.assert_quiet();
        }
    }
}

#[test]
fn the_call_ending_during_a_transfer_cancels_the_target() {
    let mut w = world(false);
    let now = w.now;
    w.call.transfer(now, Leg::B, target(&w)).expect("starts");
    w.pump();
    let inv = recv_at(&mut w, Leg::B, T_ADDR);
    let mut t = target_ua();
    t.accept_invite(&inv);
    let ringing = t.respond(&inv, 180, None);
    sent_by(&mut w, Leg::B, &t, ringing);
    // The old callee hangs up while the target rings.
    let bye = w.b.request("BYE", &[], None);
    w.b_sends(bye);
    assert_eq!(status(&recv_at(&mut w, Leg::B, B_ADDR)), Some(200));
    let cancel = recv_at(&mut w, Leg::B, T_ADDR);
    assert!(
        is_request(&cancel, Method::Cancel),
        "got {}",
        summary(&cancel)
    );
    let bye_a = w.recv_a();
    assert!(is_request(&bye_a, Method::Bye));
    let evs = transfer_events(&mut w);
    assert!(evs
        .iter()
        .any(|e| matches!(e, Event::TransferFailed { status: 487, .. })));
    // The target answers anyway, crossing the CANCEL: ACKed and released.
    let ok = t.respond(&inv, 200, Some(&sdp(60000, "sendrecv")));
    sent_by(&mut w, Leg::B, &t, ok);
    let ack = recv_at(&mut w, Leg::B, T_ADDR);
    assert!(is_request(&ack, Method::Ack));
    let bye_t = recv_at(&mut w, Leg::B, T_ADDR);
    assert!(is_request(&bye_t, Method::Bye));
    let ok_a = w.a.respond(&bye_a, 200, None);
    w.a_sends(ok_a);
    let ok_t = t.respond(&bye_t, 200, None);
    sent_by(&mut w, Leg::B, &t, ok_t);
    let ok_c = t.respond(&cancel, 200, None);
    sent_by(&mut w, Leg::B, &t, ok_c);
    w.run_out();
    assert!(w.call.is_finished());
}

#[test]
fn a_target_that_never_answers_is_given_up_at_the_ring_limit() {
    let mut w = world(false);
    let now = w.now;
    w.call.transfer(now, Leg::B, target(&w)).expect("starts");
    w.pump();
    let inv = recv_at(&mut w, Leg::B, T_ADDR);
    let mut t = target_ua();
    t.accept_invite(&inv);
    let ringing = t.respond(&inv, 180, None);
    sent_by(&mut w, Leg::B, &t, ringing);
    let limit = w.cfg.no_answer;
    w.advance(limit + T1);
    let cancel = recv_at(&mut w, Leg::B, T_ADDR);
    assert!(is_request(&cancel, Method::Cancel));
    assert!(transfer_events(&mut w)
        .iter()
        .any(|e| matches!(e, Event::TransferFailed { status: 408, .. })));
    // The call goes on with the old callee.
    assert_eq!(w.ended(), vec![]);
}

#[test]
fn the_caller_leg_can_be_transferred_too() {
    let mut w = world(false);
    let now = w.now;
    let tgt = TransferTarget {
        local: w.a_local.clone(),
        ..target(&w)
    };
    w.call.transfer(now, Leg::A, tgt).expect("starts");
    w.pump();
    let inv = recv_at(&mut w, Leg::A, T_ADDR);
    assert!(is_request(&inv, Method::Invite));
    let mut t = target_ua();
    t.accept_invite(&inv);
    let ok = t.respond(&inv, 200, Some(&sdp(60000, "sendrecv")));
    sent_by(&mut w, Leg::A, &t, ok);
    let reinv = recv_at(&mut w, Leg::B, B_ADDR);
    assert!(
        is_request(&reinv, Method::Invite),
        "B got {}",
        summary(&reinv)
    );
    let ok_b = w.b.respond(&reinv, 200, Some(&sdp(50002, "sendrecv")));
    w.b_sends(ok_b);
    assert!(is_request(&recv_at(&mut w, Leg::B, B_ADDR), Method::Ack));
    assert!(is_request(&recv_at(&mut w, Leg::A, T_ADDR), Method::Ack));
    let bye_old = recv_at(&mut w, Leg::A, A_ADDR);
    assert!(
        is_request(&bye_old, Method::Bye),
        "the old caller is released"
    );
    assert!(transfer_events(&mut w)
        .iter()
        .any(|e| matches!(e, Event::Transferred { leg: Leg::A })));
    // B's BYE now reaches the target.
    let bye = w.b.request("BYE", &[], None);
    w.b_sends(bye);
    assert_eq!(status(&recv_at(&mut w, Leg::B, B_ADDR)), Some(200));
    let bye_t = recv_at(&mut w, Leg::A, T_ADDR);
    assert!(is_request(&bye_t, Method::Bye));
    assert_eq!(call_id(&bye_t), t.call_id);
}

#[test]
fn one_transfer_at_a_time_and_no_offers_meanwhile() {
    let mut w = world(false);
    let now = w.now;
    w.call.transfer(now, Leg::B, target(&w)).expect("starts");
    w.pump();
    assert_eq!(
        w.call.transfer(now, Leg::A, target(&w)),
        Err(TransferError::Busy)
    );
    let _inv = recv_at(&mut w, Leg::B, T_ADDR);
    let reinv = w.a.request(
        "INVITE",
        &[],
        Some(("application/sdp", &sdp(40004, "sendonly"))),
    );
    w.a_sends(reinv);
    assert_eq!(
        status(&w.recv_a()),
        Some(491),
        "A's offer waits for the transfer"
    );

    let mut ringing = World::new(Setup::default());
    ringing.route_to_b();
    let now = ringing.now;
    assert_eq!(
        ringing.call.transfer(now, Leg::B, target(&ringing)),
        Err(TransferError::NotEstablished)
    );
}

#[test]
fn the_target_hanging_up_before_the_remaining_leg_answers_ends_the_call() {
    let mut w = world(false);
    let (mut t, _inv, _ok, reinv) = up_to_reinvite(&mut w);
    t.remote_target = format!("sip:{OUR_IP}:{B_LOCAL_PORT}");
    let bye = t.request("BYE", &[], None);
    sent_by(&mut w, Leg::B, &t, bye);
    assert_eq!(status(&recv_at(&mut w, Leg::B, T_ADDR)), Some(200));
    // A may be taking the target's session: the call cannot go on with the old callee.
    let bye_a = w
        .drain(Leg::A)
        .into_iter()
        .find(|m| is_request(m, Method::Bye))
        .expect("A gets BYE");
    let old = recv_at(&mut w, Leg::B, B_ADDR);
    assert!(is_request(&old, Method::Bye), "the old callee gets BYE");
    let evs = transfer_events(&mut w);
    assert!(evs
        .iter()
        .any(|e| matches!(e, Event::TransferFailed { status: 487, .. })));
    assert!(
        evs.iter().any(|e| matches!(e, Event::Ended { .. })),
        "{evs:?}"
    );
    // A's late 200 to the re-INVITE is still ACKed.
    let ok_a = w.a.respond(&reinv, 200, Some(&sdp(40002, "sendrecv")));
    w.a_sends(ok_a);
    assert!(w.drain(Leg::A).iter().any(|m| is_request(m, Method::Ack)));
    let ok = w.a.respond(&bye_a, 200, None);
    w.a_sends(ok);
    let ok = w.b.respond(&old, 200, None);
    w.b_sends(ok);
    w.run_out();
    assert!(w.call.is_finished());
}

#[test]
fn a_remaining_leg_that_never_answers_the_reinvite_ends_the_call() {
    let mut w = world(false);
    let (_t, _inv, _ok, _reinv) = up_to_reinvite(&mut w);
    // A is silent: the re-INVITE times out (Timer B).
    w.advance(std::time::Duration::from_secs(40));
    let to_t = w.drain(Leg::B);
    assert!(to_t
        .iter()
        .any(|m| is_request(m, Method::Ack) && call_id(m) != w.b.call_id));
    assert!(to_t
        .iter()
        .any(|m| is_request(m, Method::Bye) && call_id(m) != w.b.call_id));
    assert!(
        to_t.iter()
            .any(|m| is_request(m, Method::Bye) && call_id(m) == w.b.call_id),
        "the old callee is released too"
    );
    let evs = transfer_events(&mut w);
    assert!(
        evs.iter()
            .any(|e| matches!(e, Event::TransferFailed { status: 408, .. })),
        "{evs:?}"
    );
    assert!(
        evs.iter().any(|e| matches!(e, Event::Ended { .. })),
        "{evs:?}"
    );
}
