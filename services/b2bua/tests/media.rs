//! Media anchoring hooks: every SDP body leaving the call goes through the relay
//! (`Event::Media` / `handle_media`) with the right offer/answer role, in order.

mod harness;

use harness::*;
use trunkline_b2bua::{CallState, EndCause, Leg, MediaOp};
use trunkline_sip::{HeaderName, Message, Method};

fn anchored() -> Setup {
    Setup {
        anchor: true,
        ..Setup::default()
    }
}

fn relay_line() -> String {
    format!("c=IN IP4 {RELAY_IP}")
}

#[test]
fn offer_and_answer_of_a_call_are_anchored() {
    let mut w = World::new(anchored());
    let inv = w.route_to_b();
    assert!(
        body(&inv).contains(&relay_line()),
        "B's offer is the relay's:\n{}",
        body(&inv)
    );
    let early = w.b.respond(&inv, 183, Some(&sdp(50000, "sendrecv")));
    w.b_sends(early);
    let early_a = w.recv_a();
    assert_eq!(status(&early_a), Some(183));
    assert!(body(&early_a).contains(&relay_line()));
    let ok = w.b.respond(&inv, 200, Some(&sdp(50000, "sendrecv")));
    w.b_sends(ok);
    assert!(is_request(&w.recv_b(), Method::Ack));
    let ok_a = w.recv_a();
    assert!(body(&ok_a).contains(&relay_line()));
    assert_eq!(
        w.media_ops,
        vec![
            MediaOp::Offer { from: Leg::A },
            MediaOp::Answer { offerer: Leg::A },
            MediaOp::Answer { offerer: Leg::A },
        ]
    );
}

#[test]
fn bodies_pass_untouched_when_the_trunk_does_not_anchor() {
    let mut w = World::new(Setup::default());
    let inv = w.route_to_b();
    assert!(!body(&inv).contains(&relay_line()));
    assert!(w.media_ops.is_empty());
}

#[test]
fn reinvite_from_the_callee_is_an_offer_from_b() {
    let mut w = World::established(anchored());
    w.media_ops.clear();
    let re = w.b.request(
        "INVITE",
        &[],
        Some(("application/sdp", &sdp(50002, "sendonly"))),
    );
    w.b_sends(re);
    assert!(is_response(&w.recv_b(), 100, Method::Invite));
    let re_a = w.recv_a();
    assert!(body(&re_a).contains(&relay_line()));
    assert!(body(&re_a).contains("a=sendonly"), "direction kept");
    let ok = w.a.respond(&re_a, 200, Some(&sdp(40002, "recvonly")));
    w.a_sends(ok);
    let ack_a = w.recv_a();
    assert!(is_request(&ack_a, Method::Ack));
    let ok_b = w.recv_b();
    assert!(body(&ok_b).contains(&relay_line()));
    assert_eq!(
        w.media_ops,
        vec![
            MediaOp::Offer { from: Leg::B },
            MediaOp::Answer { offerer: Leg::B }
        ]
    );
}

#[test]
fn late_offer_goes_through_the_relay_in_the_acks() {
    let mut w = World::new(Setup {
        offer: None,
        ..anchored()
    });
    let inv = w.route_to_b();
    assert!(body(&inv).is_empty());
    let ok = w.b.respond(&inv, 200, Some(&sdp(50000, "sendrecv")));
    w.b_sends(ok);
    let ok_a = w.recv_a();
    assert!(body(&ok_a).contains(&relay_line()));
    w.a.learn_answer(&ok_a);
    let ack = w.a.ack(&ok_a, Some(&sdp(40000, "sendrecv")));
    w.a_sends(ack);
    let ack_b = w.recv_b();
    assert!(is_request(&ack_b, Method::Ack));
    assert!(body(&ack_b).contains(&relay_line()));
    assert_eq!(
        w.media_ops,
        vec![
            MediaOp::Offer { from: Leg::B },
            MediaOp::Answer { offerer: Leg::B }
        ]
    );
}

#[test]
fn an_offer_the_relay_cannot_anchor_is_refused_and_never_reaches_b() {
    let mut w = World::new(Setup {
        media_fails: Some(503),
        ..anchored()
    });
    assert_eq!(status(&w.recv_a()), Some(100));
    w.route();
    let r = w.recv_a();
    assert_eq!(status(&r), Some(503), "A got {}", summary(&r));
    assert!(w.drain(Leg::B).is_empty(), "nothing reaches B");
    assert_eq!(w.ended(), vec![(503, EndCause::MediaUnavailable)]);
}

#[test]
fn a_reinvite_the_relay_cannot_anchor_gets_its_status_and_the_call_stays_up() {
    let mut w = World::established(anchored());
    w.media_fails = Some(488);
    let re = w.a.request(
        "INVITE",
        &[],
        Some(("application/sdp", &sdp(40002, "sendonly"))),
    );
    w.a_sends(re);
    assert!(is_response(&w.recv_a(), 100, Method::Invite));
    let r = w.recv_a();
    assert!(
        is_response(&r, 488, Method::Invite),
        "A got {}",
        summary(&r)
    );
    assert!(w.drain(Leg::B).is_empty());
    assert_eq!(w.call.state(), CallState::Established);
    w.media_fails = None;
    let re = w.a.request(
        "INVITE",
        &[],
        Some(("application/sdp", &sdp(40002, "sendonly"))),
    );
    w.a_sends(re);
    assert!(
        is_request(&w.recv_b(), Method::Invite),
        "a later re-INVITE goes through"
    );
}

#[test]
fn media_timeout_hangs_up_both_legs_and_records_why() {
    let mut w = World::established(anchored());
    let now = w.now;
    w.call.hangup(now, EndCause::MediaTimeout);
    w.pump();
    let bye_a = w.recv_a();
    let bye_b = w.recv_b();
    assert!(is_request(&bye_a, Method::Bye));
    assert!(is_request(&bye_b, Method::Bye));
    assert_eq!(w.ended(), vec![(200, EndCause::MediaTimeout)]);
    let ra = w.a.respond(&bye_a, 200, None);
    w.a_sends(ra);
    let rb = w.b.respond(&bye_b, 200, None);
    w.b_sends(rb);
    w.run_out();
    assert!(w.call.is_finished());
}

/// A body toward the caller that still carries the callee's own media address.
fn unanchored(m: &Message) -> bool {
    body(m).contains(&format!("c=IN IP4 {OUR_IP}"))
}

#[test]
fn an_answer_the_relay_cannot_anchor_never_reaches_the_caller() {
    let mut w = World::new(anchored());
    let inv = w.route_to_b();
    // From here the relay refuses: the callee's answers must not leak through as they are.
    w.media_fails = Some(503);
    let early = w.b.respond(&inv, 183, Some(&sdp(50000, "sendrecv")));
    w.b_sends(early);
    let early_a = w.recv_a();
    assert_eq!(status(&early_a), Some(183));
    assert!(body(&early_a).is_empty(), "the 183 goes without its SDP");
    assert!(hdr(&early_a, HeaderName::ContentType).is_empty());
    let ok = w.b.respond(&inv, 200, Some(&sdp(50000, "sendrecv")));
    w.b_sends(ok);
    let got: Vec<_> = w.drain(Leg::B).iter().map(summary).collect();
    assert_eq!(got, vec!["ACK 1", "BYE 2"], "B got {got:?}");
    let r = w.recv_a();
    assert!(
        is_response(&r, 503, Method::Invite),
        "A got {}",
        summary(&r)
    );
    assert!(w.log_a.iter().all(|s| !unanchored(&s.msg)));
    assert_eq!(w.ended(), vec![(503, EndCause::MediaUnavailable)]);
}

#[test]
fn a_late_offer_answer_the_relay_cannot_anchor_hangs_up_both_legs() {
    let mut w = World::new(Setup {
        offer: None,
        ..anchored()
    });
    let inv = w.route_to_b();
    let ok = w.b.respond(&inv, 200, Some(&sdp(50000, "sendrecv")));
    w.b_sends(ok);
    let ok_a = w.recv_a();
    assert!(body(&ok_a).contains(&relay_line()));
    w.a.learn_answer(&ok_a);
    w.media_fails = Some(488);
    let ack = w.a.ack(&ok_a, Some(&sdp(40000, "sendrecv")));
    w.a_sends(ack);
    let to_b = w.drain(Leg::B);
    let names: Vec<_> = to_b.iter().map(summary).collect();
    assert_eq!(names, vec!["ACK 1", "BYE 2"], "B got {names:?}");
    assert!(
        body(&to_b[0]).is_empty(),
        "the caller's answer does not leak"
    );
    assert!(is_request(&w.recv_a(), Method::Bye));
    assert_eq!(w.ended(), vec![(200, EndCause::MediaUnavailable)]);
}

#[test]
fn a_reinvite_answer_the_relay_cannot_anchor_gets_its_status_not_the_sdp() {
    let mut w = World::established(anchored());
    let re = w.a.request(
        "INVITE",
        &[],
        Some(("application/sdp", &sdp(40002, "sendonly"))),
    );
    w.a_sends(re);
    let re_b = w.recv_b();
    assert!(is_request(&re_b, Method::Invite));
    w.media_fails = Some(503);
    let ok = w.b.respond(&re_b, 200, Some(&sdp(50002, "recvonly")));
    w.b_sends(ok);
    assert!(is_request(&w.recv_b(), Method::Ack));
    let r = w
        .drain(Leg::A)
        .into_iter()
        .find(|m| status(m).is_some_and(|s| s >= 200))
        .expect("a final answer for A's re-INVITE");
    assert!(
        is_response(&r, 503, Method::Invite),
        "A got {}",
        summary(&r)
    );
    assert!(w.log_a.iter().all(|s| !unanchored(&s.msg)));
}
