//! Failover between the trunks of a route: a trunk that answers nothing within the
//! route's provisional timeout is given up for the next, is CANCELled if it wakes up
//! and hung up if it answers late; the route's own failover statuses decide which
//! final answers try the next trunk.

mod harness;

use harness::*;
use std::time::Duration;
use trunkline_b2bua::{EndCause, Event, Leg};
use trunkline_sip::{Message, Method};

const TIMER: Duration = Duration::from_secs(2);

/// Routes with a provisional timeout and another trunk left; B stays silent. Returns
/// the first INVITE (never answered in time) and the second one, which B accepts.
fn silent_first_trunk(w: &mut World) -> (Message, Message) {
    assert_eq!(status(&w.recv_a()), Some(100));
    w.route_with(true, Some(TIMER), None);
    w.take_events();
    let first = w.recv_b();
    assert!(is_request(&first, Method::Invite));
    // B hears the INVITE's retransmissions but says nothing until the timer runs out.
    w.run_until(w.now + TIMER - Duration::from_millis(1));
    assert!(w
        .take_events()
        .iter()
        .all(|e| !matches!(e, Event::RouteFailed { .. })));
    w.drain(Leg::B);
    w.run_until(w.now + Duration::from_millis(2));
    let events = w.take_events();
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::RouteFailed { status: 408 })),
        "{events:?}"
    );
    assert!(events
        .iter()
        .any(|e| matches!(e, Event::RouteRequired { .. })));
    assert!(w.timeouts().is_empty() || w.timeouts().iter().all(|(l, _)| *l == Leg::B));
    // The next trunk (B again, by another Call-ID) gets the call; no CANCEL goes to
    // the silent one, which never answered (RFC 3261 §9.1).
    w.events.push(Event::RouteRequired {
        request_uri: trunkline_sip::Uri::parse("sip:+15550100@203.0.113.5").expect("uri"),
        caller: None,
    });
    w.route_with(false, None, None);
    let mut second = None;
    for m in w.drain(Leg::B) {
        assert!(
            is_request(&m, Method::Invite),
            "B got {} after the timeout",
            summary(&m)
        );
        if call_id(&m) != call_id(&first) {
            second = Some(m);
        }
    }
    let second = second.expect("no INVITE to the next trunk");
    assert_ne!(call_id(&second), call_id(&first));
    (first, second)
}

fn answer_second(w: &mut World, second: &Message) {
    w.b.accept_invite(second);
    let ok = w.b.respond(second, 200, Some(&sdp(50000, "sendrecv")));
    w.b_sends(ok);
    let got = w.drain(Leg::B);
    assert!(
        got.iter().any(|m| is_request(m, Method::Ack)),
        "B got {:?}",
        got.iter().map(summary).collect::<Vec<_>>()
    );
    let ok_a = w
        .drain(Leg::A)
        .into_iter()
        .find(|m| is_response(m, 200, Method::Invite))
        .expect("A gets the 200");
    w.a.learn_answer(&ok_a);
    let ack = w.a.ack(&ok_a, None);
    w.a_sends(ack);
    assert!(w.answered());
}

#[test]
fn a_silent_trunk_is_given_up_and_cancelled_when_it_wakes_up() {
    let mut w = World::new(Setup::default());
    let (first, second) = silent_first_trunk(&mut w);
    answer_second(&mut w, &second);
    // The first trunk wakes up and rings: the INVITE it rings for gets its CANCEL.
    let ringing = w.b.respond(&first, 180, None);
    w.b_sends(ringing);
    let cancel = w.recv_b();
    assert!(
        is_request(&cancel, Method::Cancel),
        "B got {}",
        summary(&cancel)
    );
    assert_eq!(branch(&cancel), branch(&first));
    assert_eq!(call_id(&cancel), call_id(&first));
    let ok = w.b.respond(&cancel, 200, None);
    w.b_sends(ok);
    let terminated = w.b.respond(&first, 487, None);
    w.b_sends(terminated);
    let ack = w.recv_b();
    assert!(is_request(&ack, Method::Ack));
    assert_eq!(call_id(&ack), call_id(&first));
    // The caller heard one call, answered, and nothing of the first trunk.
    assert!(w.drain(Leg::A).is_empty());
    assert!(w.ended().is_empty());
}

#[test]
fn a_late_answer_from_a_given_up_trunk_is_acked_and_hung_up() {
    let mut w = World::new(Setup::default());
    let (first, second) = silent_first_trunk(&mut w);
    answer_second(&mut w, &second);
    let late = w.b.respond(&first, 200, Some(&sdp(50002, "sendrecv")));
    w.b_sends(late);
    let got = w.drain(Leg::B);
    let summaries: Vec<String> = got.iter().map(summary).collect();
    let ack = got
        .iter()
        .find(|m| is_request(m, Method::Ack))
        .unwrap_or_else(|| panic!("B got {summaries:?}"));
    let bye = got
        .iter()
        .find(|m| is_request(m, Method::Bye))
        .unwrap_or_else(|| panic!("B got {summaries:?}"));
    assert_eq!(call_id(ack), call_id(&first));
    assert_eq!(call_id(bye), call_id(&first));
    assert!(w.drain(Leg::A).is_empty(), "the caller hears nothing of it");
    assert!(w.ended().is_empty(), "the call on the second trunk goes on");
}

#[test]
fn a_trunk_that_sends_100_in_time_is_kept_past_the_timer() {
    let mut w = World::new(Setup::default());
    assert_eq!(status(&w.recv_a()), Some(100));
    w.route_with(true, Some(TIMER), None);
    w.take_events();
    let inv = w.recv_b();
    w.b.accept_invite(&inv);
    let trying = w.b.respond(&inv, 100, None);
    w.b_sends(trying);
    w.run_until(w.now + TIMER * 3);
    assert!(w
        .take_events()
        .iter()
        .all(|e| !matches!(e, Event::RouteFailed { .. } | Event::Ended { .. })));
    let ok = w.b.respond(&inv, 200, Some(&sdp(50000, "sendrecv")));
    w.b_sends(ok);
    assert!(w.answered());
}

#[test]
fn the_last_trunk_silent_past_the_timer_gives_the_caller_408() {
    let mut w = World::new(Setup::default());
    assert_eq!(status(&w.recv_a()), Some(100));
    w.route_with(false, Some(TIMER), None);
    let _ = w.recv_b();
    w.run_until(w.now + TIMER + Duration::from_millis(1));
    let got = w.drain(Leg::A);
    assert!(
        got.iter().any(|m| is_response(m, 408, Method::Invite)),
        "A got {:?}",
        got.iter().map(summary).collect::<Vec<_>>()
    );
    assert_eq!(w.ended(), vec![(408, EndCause::NoAnswer)]);
}

#[test]
fn the_route_decides_which_final_answers_fail_over() {
    // This route fails over on 486 (a carrier whose busy means "full") but not on 503.
    for (status_code, fails_over) in [(486, true), (503, false)] {
        let mut w = World::new(Setup::default());
        assert_eq!(status(&w.recv_a()), Some(100));
        w.route_with(true, None, Some(&[486]));
        w.take_events();
        let inv = w.recv_b();
        w.b.accept_invite(&inv);
        let no = w.b.respond(&inv, status_code, None);
        w.b_sends(no);
        let failed = w
            .take_events()
            .iter()
            .any(|e| matches!(e, Event::RouteFailed { .. }));
        assert_eq!(failed, fails_over, "status {status_code}");
    }
}
