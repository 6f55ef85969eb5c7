//! The node ending a call on an operator's behalf: the RFC 3326 Reason reaches both
//! ends, whether the call is answered or still ringing; and the provisional answers a
//! call reports on its way there.

mod harness;

use bytes::Bytes;
use harness::*;
use trunkline_b2bua::{EndCause, Event};
use trunkline_sip::Method;

const REASON: &str = "Q.850;cause=16;text=\"Terminated by operator\"";

#[test]
fn an_operator_hangup_sends_bye_with_the_reason_to_both_legs() {
    let mut w = World::established(Setup::default());
    let now = w.now;
    w.call.hangup_with_reason(
        now,
        EndCause::Local,
        Some(Bytes::from_static(REASON.as_bytes())),
    );
    w.pump();
    let bye_a = w.recv_a();
    let bye_b = w.recv_b();
    for bye in [&bye_a, &bye_b] {
        assert!(is_request(bye, Method::Bye), "got {}", summary(bye));
        assert_eq!(hdr_named(bye, "Reason").as_deref(), Some(REASON));
    }
    assert_eq!(w.ended(), vec![(200, EndCause::Local)]);
    let ra = w.a.respond(&bye_a, 200, None);
    w.a_sends(ra);
    let rb = w.b.respond(&bye_b, 200, None);
    w.b_sends(rb);
    w.run_out();
    assert!(w.call.is_finished());
}

#[test]
fn an_operator_hangup_while_ringing_cancels_with_the_reason_and_answers_480() {
    let mut w = World::new(Setup::default());
    let inv = w.route_to_b();
    let ringing = w.b.respond(&inv, 180, None);
    w.b_sends(ringing);
    assert_eq!(status(&w.recv_a()), Some(180));
    let progress: Vec<_> = w
        .take_events()
        .into_iter()
        .filter_map(|e| match e {
            Event::Progress {
                status,
                early_media,
            } => Some((status, early_media)),
            _ => None,
        })
        .collect();
    assert_eq!(progress, vec![(180, false)]);

    let now = w.now;
    w.call.hangup_with_reason(
        now,
        EndCause::Local,
        Some(Bytes::from_static(REASON.as_bytes())),
    );
    w.pump();
    let cancel = w.recv_b();
    assert!(
        is_request(&cancel, Method::Cancel),
        "B got {}",
        summary(&cancel)
    );
    assert_eq!(hdr_named(&cancel, "Reason").as_deref(), Some(REASON));
    let fin = w.recv_a();
    assert!(
        is_response(&fin, 480, Method::Invite),
        "A got {}",
        summary(&fin)
    );
    assert_eq!(hdr_named(&fin, "Reason").as_deref(), Some(REASON));
    assert_eq!(w.ended(), vec![(480, EndCause::Local)]);

    let ok = w.b.respond(&cancel, 200, None);
    w.b_sends(ok);
    let r487 = w.b.respond(&inv, 487, None);
    w.b_sends(r487);
    assert!(is_request(&w.recv_b(), Method::Ack));
    let ack = w.a.ack_non2xx(&w.invite, &fin);
    w.a_sends(ack);
    w.run_out();
    assert!(w.call.is_finished());
}

#[test]
fn early_media_is_reported_as_such() {
    let mut w = World::new(Setup::default());
    let inv = w.route_to_b();
    let early = w.b.respond(&inv, 183, Some(&sdp(50000, "sendrecv")));
    w.b_sends(early);
    assert_eq!(status(&w.recv_a()), Some(183));
    assert!(w.take_events().iter().any(|e| matches!(
        e,
        Event::Progress {
            status: 183,
            early_media: true
        }
    )));
}
