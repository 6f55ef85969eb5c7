//! CANCEL from the caller: before any provisional, after ringing, and racing a 200.

mod harness;

use harness::*;
use trunkline_b2bua::{CallState, EndCause, Leg};
use trunkline_sip::Method;

/// A's CANCEL: A gets 200 for the CANCEL and 487 for the INVITE (in either order
/// relative to each other, but both), and ACKs the 487.
fn cancel_from_a(w: &mut World) {
    let cancel = w.a.cancel(&w.invite);
    w.a_sends(cancel);
    let got = w.drain(Leg::A);
    let ok = got.iter().find(|m| is_response(m, 200, Method::Cancel));
    assert!(
        ok.is_some(),
        "A got {:?}",
        got.iter().map(summary).collect::<Vec<_>>()
    );
    let r487 = got
        .iter()
        .find(|m| is_response(m, 487, Method::Invite))
        .unwrap_or_else(|| panic!("A got {:?}", got.iter().map(summary).collect::<Vec<_>>()));
    assert!(to_tag(r487).is_some());
    let ack = w.a.ack_non2xx(&w.invite, r487);
    w.a_sends(ack);
}

#[test]
fn cancel_before_any_provisional_waits_for_the_first_1xx() {
    let mut w = World::new(Setup::default());
    let inv = w.route_to_b();
    cancel_from_a(&mut w);
    assert_eq!(w.ended(), vec![(487, EndCause::CallerCancel)]);
    let early: Vec<_> = w.drain(Leg::B);
    assert!(
        early.iter().all(|m| !is_request(m, Method::Cancel)),
        "no CANCEL before B's first provisional (RFC 3261 §9.1)"
    );

    let ringing = w.b.respond(&inv, 180, None);
    w.b_sends(ringing);
    let cancel = w.recv_b();
    assert!(
        is_request(&cancel, Method::Cancel),
        "B got {}",
        summary(&cancel)
    );
    assert_eq!(branch(&cancel), branch(&inv));
    assert_eq!(call_id(&cancel), call_id(&inv));
    assert_eq!(cseq(&cancel), (1, Method::Cancel));
    assert_eq!(request_uri(&cancel), request_uri(&inv));
    assert!(
        w.drain(Leg::A).is_empty(),
        "the 180 is not relayed after the CANCEL"
    );

    let ok = w.b.respond(&cancel, 200, None);
    w.b_sends(ok);
    let r487 = w.b.respond(&inv, 487, None);
    w.b_sends(r487);
    let ack = w.recv_b();
    assert!(is_request(&ack, Method::Ack));
    assert_eq!(branch(&ack), branch(&inv));
    w.assert_quiet();
    assert_eq!(w.ended().len(), 1, "Ended once");
    w.run_out();
    assert!(w.call.is_finished());
    assert_eq!(w.call.state(), CallState::Ended);
}

#[test]
fn cancel_after_ringing_cancels_b_and_answers_a_487() {
    let mut w = World::new(Setup::default());
    let inv = w.route_to_b();
    let ringing = w.b.respond(&inv, 180, None);
    w.b_sends(ringing);
    assert_eq!(status(&w.recv_a()), Some(180));
    cancel_from_a(&mut w);
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
    w.assert_quiet();
    assert_eq!(w.ended(), vec![(487, EndCause::CallerCancel)]);
    w.run_out();
    assert!(w.call.is_finished());
    // Nothing was retransmitted to A after its ACK, and A saw one final for the INVITE.
    let finals: Vec<_> = w
        .log_a
        .iter()
        .filter(|s| !s.retransmission && cseq(&s.msg).1 == Method::Invite)
        .filter_map(|s| status(&s.msg))
        .filter(|s| *s >= 200)
        .collect();
    assert_eq!(finals, vec![487]);
}

#[test]
fn cancel_racing_a_200_acks_and_hangs_up_b_and_a_gets_only_487() {
    let mut w = World::new(Setup::default());
    let inv = w.route_to_b();
    let ringing = w.b.respond(&inv, 180, None);
    w.b_sends(ringing);
    assert_eq!(status(&w.recv_a()), Some(180));
    cancel_from_a(&mut w);
    let cancel = w.recv_b();
    assert!(is_request(&cancel, Method::Cancel));

    // B had already answered: its 200 crosses our CANCEL.
    let ok = w.b.respond(&inv, 200, Some(&sdp(50000, "sendrecv")));
    w.b_sends(ok.clone());
    let cancel_ok = w.b.respond(&cancel, 200, None);
    w.b_sends(cancel_ok);
    let got = w.drain(Leg::B);
    let names: Vec<_> = got.iter().map(summary).collect();
    assert_eq!(names, vec!["ACK 1", "BYE 2"], "B got {names:?}");
    assert_eq!(to_tag(&got[1]), Some(w.b.tag.clone()));
    // B retransmits its 200 while our BYE is out: ACKed again, still nothing for A.
    w.b_sends(ok);
    assert!(is_request(&w.recv_b(), Method::Ack));
    let bye_ok = w.b.respond(&got[1], 200, None);
    w.b_sends(bye_ok);
    w.assert_quiet();
    assert!(
        w.log_a
            .iter()
            .all(|s| status(&s.msg) != Some(200) || cseq(&s.msg).1 == Method::Cancel),
        "A never sees a 200 for its INVITE"
    );
    assert_eq!(w.ended(), vec![(487, EndCause::CallerCancel)]);
    w.run_out();
    assert!(w.call.is_finished());
}

#[test]
fn cancel_with_a_silent_callee_never_reaches_it_and_ends_cleanly() {
    let mut w = World::new(Setup::default());
    w.route_to_b();
    cancel_from_a(&mut w);
    w.run_out();
    assert!(
        w.log_b.iter().all(|s| !is_request(&s.msg, Method::Cancel)),
        "no CANCEL toward a callee that never answered"
    );
    assert_eq!(w.ended(), vec![(487, EndCause::CallerCancel)]);
    assert!(w.call.is_finished());
}

#[test]
fn cancel_for_an_unknown_transaction_gets_481() {
    let mut w = World::new(Setup::default());
    w.route_to_b();
    let mut other = w.invite.clone();
    other.headers_mut().set(
        trunkline_sip::HeaderName::Via,
        format!("SIP/2.0/UDP {A_ADDR};branch=z9hG4bKnope"),
    );
    let cancel = w.a.cancel(&other);
    w.a_sends(cancel);
    let r = w.recv_a();
    assert!(
        is_response(&r, 481, Method::Cancel),
        "A got {}",
        summary(&r)
    );
    assert!(w.drain(Leg::B).is_empty());
    assert_eq!(w.call.state(), CallState::Calling);
}

#[test]
fn cancel_before_any_provisional_then_a_200_hangs_up_b() {
    let mut w = World::new(Setup::default());
    let inv = w.route_to_b();
    cancel_from_a(&mut w);
    // B never rang: its first answer is a 200.
    let ok = w.b.respond(&inv, 200, Some(&sdp(50000, "sendrecv")));
    w.b_sends(ok);
    let names: Vec<_> = w.drain(Leg::B).iter().map(summary).collect();
    assert_eq!(names, vec!["ACK 1", "BYE 2"]);
    assert!(w.drain(Leg::A).is_empty());
    assert_eq!(w.ended(), vec![(487, EndCause::CallerCancel)]);
}

#[test]
fn cancel_after_the_answer_changes_nothing() {
    let mut w = World::new(Setup::default());
    let (_, ok) = w.answer(Some(&sdp(50000, "sendrecv")));
    let cancel = w.a.cancel(&w.invite);
    w.a_sends(cancel);
    let r = w.recv_a();
    assert!(
        is_response(&r, 200, Method::Cancel),
        "A got {}",
        summary(&r)
    );
    assert!(w.drain(Leg::B).is_empty(), "no CANCEL and no BYE toward B");
    let ack = w.a.ack(&ok, None);
    w.a_sends(ack);
    assert_eq!(w.call.state(), CallState::Established);
    assert!(w.ended().is_empty());
}

#[test]
fn ring_timeout_cancels_b_and_answers_a() {
    let cfg = trunkline_b2bua::CallConfig {
        no_answer: std::time::Duration::from_secs(20),
        ..Default::default()
    };
    let mut w = World::with_config(Setup::default(), cfg);
    let inv = w.route_to_b();
    let ringing = w.b.respond(&inv, 180, None);
    w.b_sends(ringing);
    w.recv_a();
    w.advance(std::time::Duration::from_secs(20));
    let cancel = w.recv_b();
    assert!(
        is_request(&cancel, Method::Cancel),
        "B got {}",
        summary(&cancel)
    );
    let r = w.recv_a();
    assert!(
        status(&r).is_some_and(|s| s == 408 || s == 480),
        "A got {}",
        summary(&r)
    );
    assert_eq!(w.ended().len(), 1);
    assert_eq!(w.ended()[0].1, EndCause::NoAnswer);
}
