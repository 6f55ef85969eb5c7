//! Snapshots of settled calls: round trip through the replication format, and a restored call that ends the
//! call on both legs with the original dialog identifiers.

mod harness;

use harness::*;
use std::collections::HashSet;
use trunkline_b2bua::{Call, CallSnapshot, CallState, EndCause};
use trunkline_sip::Method;

fn restore(w: &mut World) {
    let snap = w
        .call
        .snapshot()
        .expect("an established call has a snapshot");
    // Postcard, the positional format the cluster replicates snapshots in: every
    // field must come back, in order.
    let bytes = postcard::to_stdvec(&snap).expect("serialise");
    let back: CallSnapshot = postcard::from_bytes(&bytes).expect("deserialise");
    assert_eq!(postcard::to_stdvec(&back).expect("serialise"), bytes);
    assert_eq!(back.a, snap.a);
    assert_eq!(back.b, snap.b);
    let (a_cid, b_cid) = (
        w.call.a_call_id().to_string(),
        w.call.b_call_id().map(str::to_string),
    );
    // The node that ran the call is gone; its buddy restores it.
    w.call = Call::restore(w.cfg.clone(), back);
    assert_eq!(w.call.state(), CallState::Established);
    assert_eq!(w.call.a_call_id(), a_cid);
    assert_eq!(w.call.b_call_id().map(str::to_string), b_cid);
    assert_eq!(w.call.poll_timeout(), None, "nothing transient survives");
}

fn branches(log: &[Sent]) -> HashSet<String> {
    log.iter()
        .filter(|s| method(&s.msg).is_some())
        .map(|s| branch(&s.msg))
        .collect()
}

#[test]
fn restored_call_relays_callers_bye_with_the_same_b_dialog() {
    let mut w = World::established(Setup::default());
    let before = branches(&w.log_b);
    restore(&mut w);
    let bye = w.a.request("BYE", &[], None);
    w.a_sends(bye);
    let ok = w.recv_a();
    assert!(is_response(&ok, 200, Method::Bye), "A got {}", summary(&ok));
    assert_eq!(to_tag(&ok), w.a.remote_tag);
    let bye_b = w.recv_b();
    assert!(is_request(&bye_b, Method::Bye), "B got {}", summary(&bye_b));
    assert_eq!(call_id(&bye_b), w.b.call_id);
    assert_eq!(Some(from_tag(&bye_b)), w.b.remote_tag);
    assert_eq!(to_tag(&bye_b), Some(w.b.tag.clone()));
    assert_eq!(request_uri(&bye_b), format!("sip:bob@{B_ADDR}"));
    assert_eq!(cseq(&bye_b), (2, Method::Bye));
    assert!(
        !before.contains(&branch(&bye_b)),
        "a fresh branch after restore"
    );
    let resp = w.b.respond(&bye_b, 200, None);
    w.b_sends(resp);
    w.assert_quiet();
    assert!(w.ended().contains(&(200, EndCause::CallerHangup)));
    assert_eq!(w.call.state(), CallState::Ended);
    w.run_out();
    assert!(w.call.is_finished());
}

#[test]
fn restored_call_relays_callees_bye_with_the_same_a_dialog_and_cseq() {
    let mut w = World::established(Setup::default());
    // A re-INVITE toward A moves our A-leg CSeq before the snapshot.
    let re = w.b.request(
        "INVITE",
        &[],
        Some(("application/sdp", &sdp(50000, "sendonly"))),
    );
    w.b_sends(re);
    assert!(is_response(&w.recv_b(), 100, Method::Invite));
    let to_a = w.recv_a();
    assert!(
        w.call.snapshot().is_none(),
        "no snapshot while a re-INVITE is in flight"
    );
    let ok = w.a.respond(&to_a, 200, Some(&sdp(40000, "recvonly")));
    w.a_sends(ok);
    w.recv_a();
    let ok_b = w.recv_b();
    let ack = w.b.ack(&ok_b, None);
    w.b_sends(ack);
    restore(&mut w);

    let bye = w.b.request("BYE", &[], None);
    w.b_sends(bye);
    assert!(is_response(&w.recv_b(), 200, Method::Bye));
    let bye_a = w.recv_a();
    assert!(is_request(&bye_a, Method::Bye), "A got {}", summary(&bye_a));
    assert_eq!(call_id(&bye_a), w.a.call_id);
    assert_eq!(to_tag(&bye_a), Some(w.a.tag.clone()));
    assert_eq!(Some(from_tag(&bye_a)), w.a.remote_tag);
    assert_eq!(cseq(&bye_a), (cseq(&to_a).0 + 1, Method::Bye));
    let resp = w.a.respond(&bye_a, 200, None);
    w.a_sends(resp);
    w.assert_quiet();
    assert!(w.ended().contains(&(200, EndCause::CalleeHangup)));
}

#[test]
fn restored_call_still_rejects_stale_cseq_and_foreign_tags() {
    let mut w = World::established(Setup::default());
    let info = w.a.request("INFO", &[], None);
    w.a_sends(info);
    let relayed = w.recv_b();
    let ok = w.b.respond(&relayed, 200, None);
    w.b_sends(ok);
    w.recv_a();
    restore(&mut w);
    let stale = w.a.request_seq("INFO", 2, &[], None);
    w.a_sends(stale);
    assert!(is_response(&w.recv_a(), 500, Method::Info));
    let real = w.a.remote_tag.replace("n1-0000deadbeef".into());
    let foreign = w.a.request("INFO", &[], None);
    w.a_sends(foreign);
    assert!(is_response(&w.recv_a(), 481, Method::Info));
    w.a.remote_tag = real;
    let info = w.a.request("INFO", &[], None);
    w.a_sends(info);
    assert!(is_request(&w.recv_b(), Method::Info));
}

#[test]
fn no_snapshot_before_the_call_is_established() {
    let mut w = World::new(Setup::default());
    assert!(w.call.snapshot().is_none());
    let inv = w.route_to_b();
    let r = w.b.respond(&inv, 180, None);
    w.b_sends(r);
    assert!(w.call.snapshot().is_none());
    let ok = w.b.respond(&inv, 200, Some(&sdp(50000, "sendrecv")));
    w.b_sends(ok);
    assert!(w.call.snapshot().is_some());
}
