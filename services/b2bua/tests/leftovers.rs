//! An ended call hands over what it still owes (answers to retransmissions) and can be
//! dropped at once, instead of living on for Timer J.

mod harness;

use harness::*;
use std::time::Duration;
use trunkline_b2bua::Leg;
use trunkline_sip::Method;

#[test]
fn after_a_hang_up_only_the_byes_200_is_owed() {
    let mut w = World::established(Setup::default());
    let bye = w.a.request("BYE", &[], None);
    w.a_sends(bye.clone());
    let ok_a = w.recv_a();
    assert!(is_response(&ok_a, 200, Method::Bye));
    let bye_b = w.recv_b();
    assert!(
        w.call.take_leftovers().is_none(),
        "not while the BYE toward the callee is unanswered"
    );
    let ok = w.b.respond(&bye_b, 200, None);
    w.b_sends(ok);
    let left = w.call.take_leftovers().expect("the call is done");
    assert!(w.call.is_finished(), "nothing else keeps it");
    assert_eq!(left.replays.len(), 1, "{left:?}");
    let r = &left.replays[0];
    assert_eq!(r.leg, Leg::A);
    assert!(r.to_request);
    assert_eq!(&r.branch[..], branch(&bye).as_bytes());
    assert_eq!(
        r.data,
        w.log_a.last().unwrap().raw,
        "the very 200 the caller got"
    );
    assert_eq!(r.peer.addr, w.a.addr);
    assert_eq!(
        left.until.map(|u| u - w.t0),
        Some(w.elapsed() + T1 * 64),
        "until Timer J"
    );
}

#[test]
fn a_refused_call_owes_the_ack_of_the_callees_final_once_the_caller_acked() {
    let mut w = World::new(Setup::default());
    let inv = w.route_to_b();
    let busy = w.b.respond(&inv, 486, None);
    w.b_sends(busy);
    let ack_b = w.recv_b();
    assert!(is_request(&ack_b, Method::Ack));
    let r486 = w.recv_a();
    assert!(
        w.call.take_leftovers().is_none(),
        "the caller's 486 is still being retransmitted until its ACK"
    );
    let ack = w.a.ack_non2xx(&w.invite, &r486);
    w.a_sends(ack);
    let left = w.call.take_leftovers().expect("done once the caller ACKed");
    assert!(w.call.is_finished());
    let r = &left.replays[..];
    assert_eq!(r.len(), 1, "{left:?}");
    assert_eq!(r[0].leg, Leg::B);
    assert!(!r[0].to_request, "answers the callee's retransmitted 486");
    assert_eq!(&r[0].branch[..], branch(&inv).as_bytes());
    assert_eq!(r[0].data, w.log_b.last().unwrap().raw, "our ACK, as sent");
    assert!(left
        .until
        .is_some_and(|u| u - w.t0 >= Duration::from_secs(32)));
}
