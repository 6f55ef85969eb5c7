//! Races a real network produces: a CANCEL or BYE crossing the callee's 2xx while the
//! media relay is still rewriting it, a CANCEL before the callee's first response, and
//! a callee that never answers a CANCEL. Each ends with no leg left up.

mod harness;

use harness::*;
use trunkline_b2bua::{CallState, EndCause, Leg};
use trunkline_sip::{Message, Method};

/// Media anchored, and the relay's answers held until the test releases them.
fn anchored_slow_relay() -> Setup {
    Setup {
        anchor: true,
        defer_media: true,
        ..Setup::default()
    }
}

/// Routes the call, lets the relay rewrite the offer, and has B ring (180 with a
/// To-tag, which gives A an early dialog). Returns B's INVITE.
fn ringing(w: &mut World) -> Message {
    assert_eq!(status(&w.recv_a()), Some(100));
    w.route();
    w.release_media();
    let inv = w.recv_b();
    assert!(is_request(&inv, Method::Invite), "B got {}", summary(&inv));
    w.b.accept_invite(&inv);
    let r180 = w.b.respond(&inv, 180, None);
    w.b_sends(r180);
    let r = w.recv_a();
    assert_eq!(status(&r), Some(180));
    w.a.learn_answer(&r);
    inv
}

fn names(msgs: &[Message]) -> Vec<String> {
    msgs.iter().map(summary).collect()
}

/// Everything A ever received for its INVITE (final statuses, first transmissions).
fn a_invite_finals(w: &World) -> Vec<u16> {
    w.log_a
        .iter()
        .filter(|s| !s.retransmission && cseq(&s.msg).1 == Method::Invite)
        .filter_map(|s| status(&s.msg))
        .filter(|s| *s >= 200)
        .collect()
}

#[test]
fn cancel_racing_an_anchored_2xx_answers_487_and_hangs_up_the_callee() {
    let mut w = World::new(anchored_slow_relay());
    let inv = ringing(&mut w);
    let ok = w.b.respond(&inv, 200, Some(&sdp(50000, "sendrecv")));
    w.b_sends(ok);
    // B's 200 is ACKed at once; A's copy waits for the relay's rewrite.
    let ack = w.recv_b();
    assert!(is_request(&ack, Method::Ack), "B got {}", summary(&ack));
    assert!(w.drain(Leg::A).is_empty(), "A's 200 waits for the relay");

    let cancel = w.a.cancel(&w.invite);
    w.a_sends(cancel);
    let got = w.drain(Leg::A);
    assert_eq!(
        names(&got),
        vec!["200 (1 CANCEL)", "487 (1 INVITE)"],
        "CANCEL answered before the INVITE (RFC 3261 §9.2)"
    );
    let bye = w.recv_b();
    assert!(is_request(&bye, Method::Bye), "B got {}", summary(&bye));

    // The relay answers late: the 200 it was rewriting never reaches A.
    w.release_media();
    assert!(w.drain(Leg::A).is_empty());
    let bye_ok = w.b.respond(&bye, 200, None);
    w.b_sends(bye_ok);
    let ack487 = w.a.ack_non2xx(&w.invite, &got[1]);
    w.a_sends(ack487);
    w.assert_quiet();
    assert_eq!(a_invite_finals(&w), vec![487]);
    assert_eq!(w.ended(), vec![(487, EndCause::CallerCancel)]);
    w.run_out();
    assert!(w.call.is_finished());
}

#[test]
fn caller_bye_racing_an_anchored_2xx_answers_487_and_hangs_up_the_callee() {
    let mut w = World::new(anchored_slow_relay());
    let inv = ringing(&mut w);
    let ok = w.b.respond(&inv, 200, Some(&sdp(50000, "sendrecv")));
    w.b_sends(ok);
    assert!(is_request(&w.recv_b(), Method::Ack));

    // A gives up on its early dialog (RFC 3261 §15) while its 200 is being rewritten.
    let bye = w.a.request("BYE", &[], None);
    w.a_sends(bye);
    let got = w.drain(Leg::A);
    assert_eq!(names(&got), vec!["200 (2 BYE)", "487 (1 INVITE)"]);
    let b_bye = w.recv_b();
    assert!(is_request(&b_bye, Method::Bye), "B got {}", summary(&b_bye));
    w.release_media();
    assert!(w.drain(Leg::A).is_empty(), "no 200 after the 487");
    let bye_ok = w.b.respond(&b_bye, 200, None);
    w.b_sends(bye_ok);
    let ack487 = w.a.ack_non2xx(&w.invite, &got[1]);
    w.a_sends(ack487);
    w.assert_quiet();
    assert_eq!(a_invite_finals(&w), vec![487]);
    assert_eq!(w.ended(), vec![(487, EndCause::CallerCancel)]);
    w.run_out();
    assert!(w.call.is_finished());
}

#[test]
fn callee_bye_racing_its_own_anchored_2xx_reaches_the_caller_after_the_200() {
    let mut w = World::new(anchored_slow_relay());
    let inv = ringing(&mut w);
    let ok = w.b.respond(&inv, 200, Some(&sdp(50000, "sendrecv")));
    w.b_sends(ok);
    assert!(is_request(&w.recv_b(), Method::Ack));
    // The callee hangs up at once, before the relay has answered.
    let bye = w.b.request("BYE", &[], None);
    w.b_sends(bye);
    let bye_ok = w.recv_b();
    assert!(is_response(&bye_ok, 200, Method::Bye));
    assert!(
        w.drain(Leg::A).is_empty(),
        "nothing overtakes the 200 the relay is rewriting"
    );
    w.release_media();
    let got = w.drain(Leg::A);
    assert_eq!(names(&got), vec!["200 (1 INVITE)", "BYE 1"]);
    w.a.learn_answer(&got[0]);
    let ack = w.a.ack(&got[0], None);
    w.a_sends(ack);
    let bye_ok = w.a.respond(&got[1], 200, None);
    w.a_sends(bye_ok);
    w.assert_quiet();
    assert_eq!(w.ended(), vec![(200, EndCause::CalleeHangup)]);
    w.run_out();
    assert!(w.call.is_finished());
}

#[test]
fn cancel_before_the_trunks_100_goes_out_when_the_100_arrives() {
    let mut w = World::new(Setup::default());
    let inv = w.route_to_b();
    let cancel = w.a.cancel(&w.invite);
    w.a_sends(cancel);
    let got = w.drain(Leg::A);
    assert_eq!(names(&got), vec!["200 (1 CANCEL)", "487 (1 INVITE)"]);
    assert!(
        w.drain(Leg::B).is_empty(),
        "no CANCEL before B has answered at all (RFC 3261 §9.1)"
    );
    let trying = w.b.respond(&inv, 100, None);
    w.b_sends(trying);
    let cancel = w.recv_b();
    assert!(
        is_request(&cancel, Method::Cancel),
        "B got {}",
        summary(&cancel)
    );
    assert_eq!(branch(&cancel), branch(&inv));
    let ok = w.b.respond(&cancel, 200, None);
    w.b_sends(ok);
    let r487 = w.b.respond(&inv, 487, None);
    w.b_sends(r487);
    assert!(is_request(&w.recv_b(), Method::Ack));
    let ack = w.a.ack_non2xx(&w.invite, &got[1]);
    w.a_sends(ack);
    w.assert_quiet();
    w.run_out();
    assert!(w.call.is_finished());
}

#[test]
fn a_cancelled_invite_whose_callee_never_answers_ends_after_64_t1() {
    let mut w = World::new(Setup::default());
    let inv = w.route_to_b();
    let r180 = w.b.respond(&inv, 180, None);
    w.b_sends(r180);
    assert_eq!(status(&w.recv_a()), Some(180));
    let cancel = w.a.cancel(&w.invite);
    w.a_sends(cancel);
    let got = w.drain(Leg::A);
    let ack = w.a.ack_non2xx(&w.invite, &got[1]);
    w.a_sends(ack);
    let cancel = w.recv_b();
    assert!(is_request(&cancel, Method::Cancel));
    let cancelled_at = w.elapsed();
    // B answers the CANCEL but never sends a final response to its INVITE.
    let ok = w.b.respond(&cancel, 200, None);
    w.b_sends(ok);
    w.run_out();
    assert!(
        w.call.is_finished(),
        "the call does not wait forever for a callee that never answers"
    );
    assert!(
        w.elapsed() <= cancelled_at + T1 * 64 + T1,
        "over after 64*T1 (RFC 3261 §9.1), not later: {:?}",
        w.elapsed() - cancelled_at
    );
    assert_eq!(w.call.state(), CallState::Ended);
}
