//! Lossy UDP and loss-free TCP: retransmissions recover lost datagrams on UDP, and
//! reliable legs never retransmit.

mod harness;

use harness::*;
use std::time::Duration;
use trunkline_b2bua::{EndCause, Leg};
use trunkline_sip::{HeaderName, Method, Transport};

const PATIENCE: Duration = Duration::from_secs(30);

/// INVITE … 180 … 200 … ACK … BYE from A, each UA retransmitting as a real one
/// would while it waits. Returns the world after the call is over.
fn lossy_call(pipe: Pipe) -> World {
    let mut w = World::new(Setup {
        pipe,
        ..Setup::default()
    });
    w.route();
    let inv = w.wait_for(Leg::B, None, PATIENCE, |m| is_request(m, Method::Invite));
    w.b.accept_invite(&inv);
    let ringing = w.b.respond(&inv, 180, None);
    w.b_sends(ringing);
    let ok = w.b.respond(&inv, 200, Some(&sdp(50000, "sendrecv")));
    w.b_sends(ok.clone());
    // A: the call retransmits its 200 until A ACKs.
    let ok_a = w.wait_for(Leg::A, None, PATIENCE, |m| {
        is_response(m, 200, Method::Invite)
    });
    w.a.learn_answer(&ok_a);
    let ack = w.a.ack(&ok_a, None);
    w.a_sends(ack.clone());
    // B: retransmits its 200 until our ACK arrives.
    w.wait_for(Leg::B, Some((Leg::B, &ok)), PATIENCE, |m| {
        is_request(m, Method::Ack)
    });
    // Any 200 the call still retransmits to A gets A's ACK again.
    let bye = w.a.request("BYE", &[], None);
    w.a_sends(bye.clone());
    let bye_b = w.wait_for(Leg::B, None, PATIENCE, |m| is_request(m, Method::Bye));
    let bye_ok = w.b.respond(&bye_b, 200, None);
    w.b_sends(bye_ok);
    w.wait_for(Leg::A, Some((Leg::A, &bye)), PATIENCE, |m| {
        is_response(m, 200, Method::Bye)
    });
    // Late retransmissions: answer them as the UAs would until the call is done.
    for _ in 0..1000 {
        for m in w.drain(Leg::A) {
            if is_response(&m, 200, Method::Invite) {
                w.send_once(Leg::A, ack.clone());
            }
        }
        for m in w.drain(Leg::B) {
            if is_request(&m, Method::Bye) {
                let r = w.b.respond(&m, 200, None);
                w.send_once(Leg::B, r);
            }
        }
        if !w.next_timer() {
            break;
        }
    }
    w
}

fn invite_finals_at_a(w: &World) -> Vec<(u16, bool)> {
    w.log_a
        .iter()
        .filter(|s| cseq(&s.msg).1 == Method::Invite)
        .filter_map(|s| {
            status(&s.msg)
                .filter(|c| *c >= 200)
                .map(|c| (c, s.retransmission))
        })
        .collect()
}

fn assert_completed(w: &World) {
    let finals = invite_finals_at_a(w);
    assert!(
        finals.iter().all(|(c, _)| *c == 200),
        "A's finals: {finals:?}"
    );
    assert_eq!(
        finals.iter().filter(|(_, re)| !re).count(),
        1,
        "exactly one final response (retransmissions aside): {finals:?}"
    );
    let invites: std::collections::HashSet<_> = w
        .log_b
        .iter()
        .filter(|s| is_request(&s.msg, Method::Invite))
        .map(|s| branch(&s.msg))
        .collect();
    assert_eq!(invites.len(), 1, "one INVITE transaction toward B");
    assert_eq!(w.ended(), vec![(200, EndCause::CallerHangup)]);
    assert!(w.call.is_finished(), "the call can be dropped");
}

#[test]
fn call_over_a_lossy_pipe_completes() {
    let mut total_dropped = 0;
    for seed in [1u64, 7, 42, 1234, 99991, 31337] {
        let w = lossy_call(Pipe::seeded(seed, 4));
        assert_completed(&w);
        total_dropped += w.pipe.dropped;
    }
    assert!(
        total_dropped >= 10,
        "the pipe dropped only {total_dropped} datagrams"
    );
}

#[test]
fn lost_invite_and_lost_200_are_retransmitted_on_time() {
    // Toward B: #0 is the INVITE. Toward A: #0 is 100 Trying, #1 the 200.
    let pipe = Pipe {
        drop: vec![(Dir::ToB, 0), (Dir::ToA, 1)],
        ..Pipe::default()
    };
    let mut w = World::new(Setup {
        pipe,
        ..Setup::default()
    });
    w.route();
    assert!(w.try_recv(Leg::B).is_none(), "the INVITE was lost");
    let inv = w.wait_for(Leg::B, None, PATIENCE, |m| is_request(m, Method::Invite));
    assert_eq!(w.elapsed(), T1, "Timer A re-sends the INVITE after T1");
    w.b.accept_invite(&inv);
    let ok = w.b.respond(&inv, 200, Some(&sdp(50000, "sendrecv")));
    w.b_sends(ok);
    assert!(is_request(&w.recv_b(), Method::Ack));
    let ok_a = w.wait_for(Leg::A, None, PATIENCE, |m| {
        is_response(m, 200, Method::Invite)
    });
    assert_eq!(
        w.elapsed(),
        T1 * 2,
        "the 200 is re-sent T1 after it was lost"
    );
    let ack = w.a.ack(&ok_a, None);
    w.a_sends(ack);
    w.advance(PATIENCE);
    assert!(w.drain(Leg::A).is_empty());
    assert!(w.ended().is_empty());
}

#[test]
fn tcp_legs_retransmit_only_the_unacked_2xx() {
    let setup = || Setup {
        a_transport: Transport::Tcp,
        b_transport: Transport::Tcp,
        ..Setup::default()
    };
    // A whole call, with long silences where UDP would retransmit.
    let mut w = World::new(setup());
    let inv = w.route_to_b();
    assert!(hdr(&inv, HeaderName::Via).starts_with("SIP/2.0/TCP "));
    assert!(hdr(&inv, HeaderName::Contact).contains("transport=tcp"));
    w.advance(T1 * 10);
    assert!(
        w.drain(Leg::B).is_empty(),
        "no INVITE retransmission over TCP"
    );
    let ok = w.b.respond(&inv, 200, Some(&sdp(50000, "sendrecv")));
    w.b_sends(ok);
    assert!(is_request(&w.recv_b(), Method::Ack));
    let ok_a = w.recv_a();
    w.a.learn_answer(&ok_a);
    w.advance(T1 * 10);
    // The one exception: the UAS core re-sends its 2xx until the ACK, over TCP too
    // (RFC 3261 §13.3.1.4).
    let again = w.drain(Leg::A);
    assert!(
        !again.is_empty() && again.iter().all(|m| is_response(m, 200, Method::Invite)),
        "A got {:?}",
        again.iter().map(summary).collect::<Vec<_>>()
    );
    let ack = w.a.ack(&ok_a, None);
    w.a_sends(ack);
    let acked_at = w.elapsed();
    let bye = w.b.request("BYE", &[], None);
    w.b_sends(bye);
    w.recv_b();
    let bye_a = w.recv_a();
    w.advance(T1 * 10);
    assert!(w.drain(Leg::A).is_empty(), "no BYE retransmission over TCP");
    let r = w.a.respond(&bye_a, 200, None);
    w.a_sends(r);
    w.run_out();
    assert!(w.call.is_finished());
    assert!(w
        .log_a
        .iter()
        .chain(&w.log_b)
        .filter(|s| s.retransmission)
        .all(|s| is_response(&s.msg, 200, Method::Invite) && s.at < acked_at));

    // A silent callee over TCP: still 408 after Timer B, with nothing re-sent.
    let mut w = World::new(setup());
    w.route_to_b();
    w.run_out();
    let r = w.recv_a();
    assert!(
        is_response(&r, 408, Method::Invite),
        "A got {}",
        summary(&r)
    );
    let sent = w
        .log_a
        .iter()
        .find(|s| status(&s.msg) == Some(408))
        .map(|s| s.at);
    assert_eq!(sent, Some(T1 * 64), "Timer B still runs over TCP");
    assert!(w.log_a.iter().chain(&w.log_b).all(|s| !s.retransmission));
}
