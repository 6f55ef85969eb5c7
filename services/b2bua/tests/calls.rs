//! Basic call flows: set-up, answer, hang-up, final errors, retransmissions.

mod harness;

use harness::*;
use trunkline_b2bua::{owner_of, CallState, EndCause, Event, Leg};
use trunkline_sip::{HeaderName, Method};

#[test]
fn call_answered_and_hung_up_by_caller() {
    let mut w = World::new(Setup::default());
    let ok = w.establish();
    assert!(w.answered());
    assert_eq!(w.call.state(), CallState::Established);
    assert_eq!(to_tag(&ok).as_deref().and_then(owner_of), Some("n1"));

    let bye = w.a.request("BYE", &[], None);
    w.a_sends(bye);
    let ok_a = w.recv_a();
    assert!(
        is_response(&ok_a, 200, Method::Bye),
        "A got {}",
        summary(&ok_a)
    );
    let bye_b = w.recv_b();
    assert!(is_request(&bye_b, Method::Bye), "B got {}", summary(&bye_b));
    assert_eq!(call_id(&bye_b), w.b.call_id);
    assert_eq!(to_tag(&bye_b), Some(w.b.tag.clone()));
    assert_eq!(cseq(&bye_b).0, 2, "B-leg BYE follows the INVITE's CSeq 1");
    let resp = w.b.respond(&bye_b, 200, None);
    w.b_sends(resp);
    w.assert_quiet();

    assert_eq!(w.ended(), vec![(200, EndCause::CallerHangup)]);
    assert_eq!(w.call.state(), CallState::Ended);
    w.run_out();
    assert!(w.call.is_finished());
    w.assert_quiet();
}

#[test]
fn call_answered_and_hung_up_by_callee() {
    let mut w = World::established(Setup::default());
    let bye = w.b.request("BYE", &[], None);
    w.b_sends(bye);
    let ok_b = w.recv_b();
    assert!(
        is_response(&ok_b, 200, Method::Bye),
        "B got {}",
        summary(&ok_b)
    );
    let bye_a = w.recv_a();
    assert!(is_request(&bye_a, Method::Bye), "A got {}", summary(&bye_a));
    assert_eq!(call_id(&bye_a), w.a.call_id);
    assert_eq!(from_tag(&bye_a), w.a.remote_tag.clone().unwrap_or_default());
    assert_eq!(to_tag(&bye_a), Some(w.a.tag.clone()));
    assert_eq!(request_uri(&bye_a), format!("sip:alice@{A_ADDR}"));
    let resp = w.a.respond(&bye_a, 200, None);
    w.a_sends(resp);
    w.assert_quiet();
    assert_eq!(w.ended(), vec![(200, EndCause::CalleeHangup)]);
    assert_eq!(w.call.state(), CallState::Ended);
    w.run_out();
    assert!(w.call.is_finished());
}

#[test]
fn b_leg_invite_has_fresh_identifiers_of_this_node() {
    let mut w = World::new(Setup::default());
    let inv = w.route_to_b();
    let cid = call_id(&inv);
    let tag = from_tag(&inv);
    let br = branch(&inv);
    assert_ne!(cid, w.a.call_id);
    assert_ne!(tag, w.a.tag);
    assert_ne!(br, branch(&w.invite));
    assert_eq!(owner_of(&cid), Some("n1"), "Call-ID {cid}");
    assert_eq!(owner_of(&tag), Some("n1"), "From-tag {tag}");
    assert_eq!(owner_of(&br), Some("n1"), "branch {br}");
    assert!(br.starts_with("z9hG4bK"));
    assert_eq!(w.call.b_call_id(), Some(cid.as_str()));
    assert_eq!(w.call.a_call_id(), w.a.call_id);
    assert_eq!(hdr(&inv, HeaderName::MaxForwards), "69");
    assert_eq!(to_tag(&inv), None);
    assert_eq!(cseq(&inv), (1, Method::Invite));
    assert_eq!(request_uri(&inv), format!("sip:+15550100@{B_ADDR}"));
    assert_eq!(
        hdr(&inv, HeaderName::Contact),
        format!("<sip:{OUR_IP}:{B_LOCAL_PORT}>")
    );
    assert!(hdr(&inv, HeaderName::Via).contains(&format!("{OUR_IP}:{B_LOCAL_PORT}")));
    assert_eq!(body(&inv), sdp(40000, "sendrecv"));
    assert_eq!(hdr(&inv, HeaderName::ContentType), "application/sdp");
    // The caller's display name and user survive; its host does not.
    assert!(hdr(&inv, HeaderName::From).contains("alice@198.51.100.1"));
}

#[test]
fn ringing_and_early_media_reach_the_caller_intact() {
    let mut w = World::new(Setup::default());
    let inv = w.route_to_b();
    let ringing = w.b.respond(&inv, 180, None);
    w.b_sends(ringing);
    let r180 = w.recv_a();
    assert_eq!(status(&r180), Some(180));
    let our_tag = to_tag(&r180).expect("180 carries our To-tag");
    assert_eq!(owner_of(&our_tag), Some("n1"));
    assert_eq!(call_id(&r180), w.a.call_id);
    assert_eq!(branch(&r180), branch(&w.invite));
    assert_eq!(
        hdr(&r180, HeaderName::Contact),
        format!("<sip:{OUR_IP}:{A_LOCAL_PORT}>")
    );

    let early = sdp(50000, "sendrecv");
    let progress = w.b.respond(&inv, 183, Some(&early));
    w.b_sends(progress);
    let r183 = w.recv_a();
    assert_eq!(status(&r183), Some(183));
    assert_eq!(body(&r183), early);
    assert_eq!(hdr(&r183, HeaderName::ContentType), "application/sdp");
    assert_eq!(to_tag(&r183), Some(our_tag.clone()));
    assert_eq!(w.call.state(), CallState::Early);

    let ok = w.b.respond(&inv, 200, Some(&early));
    w.b_sends(ok);
    let ok_a = w.recv_a();
    assert_eq!(status(&ok_a), Some(200));
    assert_eq!(
        to_tag(&ok_a),
        Some(our_tag),
        "the dialog keeps its early To-tag"
    );
    assert_eq!(body(&ok_a), early);
}

#[test]
fn busy_callee_gives_caller_486_and_both_acks_are_handled() {
    let mut w = World::new(Setup::default());
    let inv = w.route_to_b();
    let busy = w.b.respond(&inv, 486, None);
    w.b_sends(busy.clone());
    let ack_b = w.recv_b();
    assert!(is_request(&ack_b, Method::Ack));
    assert_eq!(branch(&ack_b), branch(&inv), "non-2xx ACK is hop-by-hop");
    assert_eq!(to_tag(&ack_b), Some(w.b.tag.clone()));
    let r = w.recv_a();
    assert!(
        is_response(&r, 486, Method::Invite),
        "A got {}",
        summary(&r)
    );
    assert!(to_tag(&r).is_some());
    assert_eq!(w.ended(), vec![(486, EndCause::Rejected)]);

    // A's ACK is absorbed; the 486 is not retransmitted after it.
    let ack = w.a.ack_non2xx(&w.invite, &r);
    w.a_sends(ack);
    // B retransmits its 486: the transaction re-sends the ACK, nothing reaches A.
    w.b_sends(busy);
    let again = w.recv_b();
    assert!(is_request(&again, Method::Ack));
    w.run_out();
    w.assert_quiet();
    assert!(
        w.log_a.iter().all(|s| !s.retransmission),
        "486 retransmitted after ACK"
    );
    assert!(w.call.is_finished());
}

#[test]
fn unacked_486_is_retransmitted_to_the_caller() {
    let mut w = World::new(Setup::default());
    let inv = w.route_to_b();
    let busy = w.b.respond(&inv, 486, None);
    w.b_sends(busy);
    w.recv_b();
    assert_eq!(status(&w.recv_a()), Some(486));
    w.advance(T1);
    let re = w.recv_a();
    assert_eq!(status(&re), Some(486), "Timer G re-sends the 486");
    let ack = w.a.ack_non2xx(&w.invite, &re);
    w.a_sends(ack);
    w.run_out();
    w.assert_quiet();
}

#[test]
fn silent_callee_gives_caller_408_after_timer_b() {
    let mut w = World::new(Setup::default());
    let inv = w.route_to_b();
    // The INVITE is retransmitted (Timer A) but the callee never answers.
    let mut final_at = None;
    while w.next_timer() {
        for m in w.drain(Leg::B) {
            assert_eq!(
                branch(&m),
                branch(&inv),
                "only INVITE retransmissions go to B"
            );
        }
        if let Some(r) = w.try_recv(Leg::A) {
            final_at = Some((w.elapsed(), r));
            break;
        }
    }
    let (at, r) = final_at.expect("A got a final response");
    assert!(
        is_response(&r, 408, Method::Invite),
        "A got {}",
        summary(&r)
    );
    assert_eq!(at, T1 * 64, "Timer B is 64*T1");
    assert!(w.timeouts().contains(&(Leg::B, 'B')));
    assert_eq!(w.ended(), vec![(408, EndCause::NoAnswer)]);
    let retrans = w.log_b.iter().filter(|s| s.retransmission).count();
    assert!(retrans >= 6, "INVITE retransmitted {retrans} times");
}

#[test]
fn no_route_gives_404() {
    let mut w = World::new(Setup::default());
    assert_eq!(status(&w.recv_a()), Some(100));
    w.reject(404, EndCause::NoRoute);
    let r = w.recv_a();
    assert!(
        is_response(&r, 404, Method::Invite),
        "A got {}",
        summary(&r)
    );
    assert!(to_tag(&r).is_some());
    assert_eq!(w.ended(), vec![(404, EndCause::NoRoute)]);
    assert!(w.log_b.is_empty());
    let ack = w.a.ack_non2xx(&w.invite, &r);
    w.a_sends(ack);
    w.run_out();
    assert!(w.call.is_finished());
}

#[test]
fn max_forwards_zero_gives_483_and_nothing_reaches_b() {
    let mut w = World::new(Setup {
        max_forwards: 0,
        ..Setup::default()
    });
    let mut msgs = w.drain(Leg::A);
    // The call may ask for a route first; the 483 must come whatever it decides.
    if w.events
        .iter()
        .any(|e| matches!(e, Event::RouteRequired { .. }))
    {
        w.route();
        msgs.extend(w.drain(Leg::A));
    }
    let finals: Vec<_> = msgs
        .iter()
        .filter_map(status)
        .filter(|s| *s >= 200)
        .collect();
    assert_eq!(finals, vec![483]);
    assert!(
        w.log_b.is_empty(),
        "no B-leg INVITE for an exhausted Max-Forwards"
    );
    assert_eq!(w.ended(), vec![(483, EndCause::TooManyHops)]);
}

#[test]
fn invite_retransmission_from_caller_is_absorbed() {
    let mut w = World::new(Setup::default());
    let inv = w.route_to_b();
    w.a_sends(w.invite.clone());
    let r = w.recv_a();
    assert_eq!(status(&r), Some(100), "the 100 is re-sent");
    let ringing = w.b.respond(&inv, 180, None);
    w.b_sends(ringing);
    assert_eq!(status(&w.recv_a()), Some(180));
    w.a_sends(w.invite.clone());
    assert_eq!(
        status(&w.recv_a()),
        Some(180),
        "the last response is re-sent"
    );
    assert!(w.drain(Leg::B).is_empty(), "no second INVITE toward B");
    assert!(w
        .events
        .iter()
        .any(|e| matches!(e, Event::RetransmissionReceived { leg: Leg::A })));
    assert_eq!(w.log_b.len(), 1);
}

#[test]
fn callee_2xx_retransmission_is_acked_again() {
    let mut w = World::new(Setup::default());
    let inv = w.route_to_b();
    let ok = w.b.respond(&inv, 200, Some(&sdp(50000, "sendrecv")));
    w.b_sends(ok.clone());
    let ack1 = w.recv_b();
    assert!(is_request(&ack1, Method::Ack));
    assert_ne!(
        branch(&ack1),
        branch(&inv),
        "2xx ACK is its own transaction"
    );
    assert_eq!(cseq(&ack1), (1, Method::Ack));
    assert_eq!(status(&w.recv_a()), Some(200));
    w.b_sends(ok);
    let ack2 = w.recv_b();
    assert!(is_request(&ack2, Method::Ack), "B got {}", summary(&ack2));
    assert_eq!(ack2.encode(), ack1.encode(), "the same ACK again");
    assert!(w.drain(Leg::A).is_empty(), "A sees one 200");
}

#[test]
fn caller_200_is_retransmitted_until_acked() {
    let mut w = World::new(Setup::default());
    let (_, ok) = w.answer(Some(&sdp(50000, "sendrecv")));
    w.advance(T1);
    assert_eq!(status(&w.recv_a()), Some(200));
    w.advance(T1 * 2);
    assert_eq!(status(&w.recv_a()), Some(200));
    let ack = w.a.ack(&ok, None);
    w.a_sends(ack);
    let sent_before = w.log_a.len();
    w.advance(T1 * 64);
    assert_eq!(w.log_a.len(), sent_before, "no 200 after the ACK");
    assert_eq!(w.call.state(), CallState::Established);
    assert!(w.ended().is_empty());
    assert!(w.log_b.iter().all(|s| !is_request(&s.msg, Method::Bye)));
}

#[test]
fn caller_that_never_acks_is_hung_up_after_64_t1() {
    let mut w = World::new(Setup::default());
    w.answer(Some(&sdp(50000, "sendrecv")));
    let mut byes = Vec::new();
    while w.next_timer() {
        for leg in [Leg::A, Leg::B] {
            for m in w.drain(leg) {
                if is_request(&m, Method::Bye) {
                    byes.push((leg, w.elapsed(), m));
                }
            }
        }
        if byes.len() == 2 {
            break;
        }
    }
    assert_eq!(byes.len(), 2, "BYE on both legs");
    for (leg, at, _) in &byes {
        assert_eq!(*at, T1 * 64, "{leg:?} BYE at Timer L");
    }
    let retrans = w
        .log_a
        .iter()
        .filter(|s| s.retransmission && status(&s.msg) == Some(200))
        .count();
    assert!(retrans >= 7, "200 retransmitted {retrans} times");
    assert_eq!(w.ended(), vec![(200, EndCause::NoAck)]);
    for (leg, _, bye) in byes {
        let resp = match leg {
            Leg::A => w.a.respond(&bye, 200, None),
            Leg::B => w.b.respond(&bye, 200, None),
        };
        w.send(leg, resp);
    }
    assert_eq!(w.call.state(), CallState::Ended);
    w.run_out();
    assert!(w.call.is_finished());
}

#[test]
fn bye_retransmitted_by_caller_gets_the_same_200() {
    let mut w = World::established(Setup::default());
    let bye = w.a.request("BYE", &[], None);
    w.a_sends(bye.clone());
    let r1 = w.recv_a();
    let bye_b = w.recv_b();
    w.a_sends(bye);
    let r2 = w.recv_a();
    assert_eq!(r1.encode(), r2.encode());
    assert!(w.drain(Leg::B).is_empty(), "one BYE toward B");
    let resp = w.b.respond(&bye_b, 200, None);
    w.b_sends(resp);
    w.assert_quiet();
    assert_eq!(w.ended(), vec![(200, EndCause::CallerHangup)]);
}

#[test]
fn redirect_from_the_trunk_becomes_480_without_its_contact() {
    let mut w = World::new(Setup::default());
    let inv = w.route_to_b();
    let moved = w.b.respond_with(
        &inv,
        302,
        &[("Contact", "<sip:elsewhere@203.0.113.99>")],
        None,
    );
    w.b_sends(moved);
    assert!(is_request(&w.recv_b(), Method::Ack));
    let r = w.recv_a();
    assert!(
        is_response(&r, 480, Method::Invite),
        "A got {}",
        summary(&r)
    );
    assert!(!String::from_utf8_lossy(&r.encode()).contains("203.0.113"));
}

#[test]
fn transport_failure_toward_b_gives_503() {
    let mut w = World::new(Setup::default());
    w.route_to_b();
    w.call.handle_transport_error(w.now, Leg::B);
    w.pump();
    let r = w.recv_a();
    assert!(
        is_response(&r, 503, Method::Invite),
        "A got {}",
        summary(&r)
    );
    assert_eq!(w.ended(), vec![(503, EndCause::TransportError)]);
}

#[test]
fn in_dialog_request_with_max_forwards_zero_gets_483() {
    let mut w = World::established(Setup::default());
    let mut req = w.a.request("INFO", &[], None);
    req.headers_mut().set(HeaderName::MaxForwards, "0");
    w.a_sends(req);
    let r = w.recv_a();
    assert!(is_response(&r, 483, Method::Info), "A got {}", summary(&r));
    assert!(w.drain(Leg::B).is_empty());
}

#[test]
fn bye_from_the_caller_while_ringing_cancels_the_attempt() {
    let mut w = World::new(Setup::default());
    let inv = w.route_to_b();
    let ringing = w.b.respond(&inv, 180, None);
    w.b_sends(ringing);
    let r180 = w.recv_a();
    w.a.learn_answer(&r180);
    let bye = w.a.request("BYE", &[], None);
    w.a_sends(bye);
    let got: Vec<_> = w.drain(Leg::A);
    assert!(got.iter().any(|m| is_response(m, 200, Method::Bye)));
    assert!(got.iter().any(|m| is_response(m, 487, Method::Invite)));
    assert!(is_request(&w.recv_b(), Method::Cancel));
}

/// A 2xx the trunk got wrong still made a call on its side: it is ACKed (or it would be
/// retransmitted for 32 s) and released with BYE, and the caller hears 502.
fn broken_2xx_is_acked_and_released(strip: HeaderName) {
    let mut w = World::new(Setup::default());
    let inv = w.route_to_b();
    let mut ok = w.b.respond(&inv, 200, Some(&sdp(50000, "sendrecv")));
    match strip {
        HeaderName::To => {
            let to = hdr(&inv, HeaderName::To);
            ok.headers_mut().set(HeaderName::To, to);
        }
        other => ok.headers_mut().remove(other),
    }
    w.b_sends(ok.clone());
    let got: Vec<_> = w.drain(Leg::B).iter().map(summary).collect();
    assert_eq!(got, vec!["ACK 1", "BYE 2"], "B got {got:?}");
    let r = w.recv_a();
    assert!(
        is_response(&r, 502, Method::Invite),
        "A got {}",
        summary(&r)
    );
    assert_eq!(w.ended(), vec![(502, EndCause::Rejected)]);
    // The trunk retransmits its 2xx: ACKed again, nothing more for A.
    w.b_sends(ok);
    let again: Vec<_> = w.drain(Leg::B).iter().map(summary).collect();
    assert!(again.iter().all(|m| m == "ACK 1"), "B got {again:?}");
    assert!(w.drain(Leg::A).iter().all(|m| status(m) == Some(502)));
}

#[test]
fn trunk_2xx_without_contact_is_acked_and_released() {
    broken_2xx_is_acked_and_released(HeaderName::Contact);
}

#[test]
fn trunk_2xx_without_to_tag_is_acked_and_released() {
    broken_2xx_is_acked_and_released(HeaderName::To);
}

#[test]
fn trunk_503_reaches_the_caller_as_500_without_its_retry_after() {
    let mut w = World::new(Setup::default());
    let inv = w.route_to_b();
    let busy = w.b.respond_with(&inv, 503, &[("Retry-After", "300")], None);
    w.b_sends(busy);
    assert!(is_request(&w.recv_b(), Method::Ack));
    let r = w.recv_a();
    assert!(
        is_response(&r, 500, Method::Invite),
        "A got {}",
        summary(&r)
    );
    assert!(
        hdr(&r, HeaderName::RetryAfter).is_empty(),
        "the trunk's back-off must not make upstream back off from this node"
    );
    assert_eq!(w.ended(), vec![(500, EndCause::Rejected)]);

    // The mapping is the operator's choice.
    let cfg = trunkline_b2bua::CallConfig {
        trunk_503_status: 480,
        ..Default::default()
    };
    let mut w = World::with_config(Setup::default(), cfg);
    let inv = w.route_to_b();
    let busy = w.b.respond(&inv, 503, None);
    w.b_sends(busy);
    w.recv_b();
    assert!(is_response(&w.recv_a(), 480, Method::Invite));
}

#[test]
fn an_answered_call_is_hung_up_at_its_maximum_duration() {
    let cfg = trunkline_b2bua::CallConfig {
        max_duration: Some(std::time::Duration::from_secs(3600)),
        ..Default::default()
    };
    let mut w = World::with_config(Setup::default(), cfg);
    w.establish();
    let answered_at = w.elapsed();
    w.advance(std::time::Duration::from_secs(3599));
    w.assert_quiet();
    w.advance(std::time::Duration::from_secs(1));
    let bye_a = w.recv_a();
    let bye_b = w.recv_b();
    assert!(is_request(&bye_a, Method::Bye) && is_request(&bye_b, Method::Bye));
    assert_eq!(
        w.log_a.last().map(|s| s.at - answered_at),
        Some(std::time::Duration::from_secs(3600))
    );
    assert_eq!(w.ended(), vec![(200, EndCause::MaxDuration)]);
    let ra = w.a.respond(&bye_a, 200, None);
    w.a_sends(ra);
    let rb = w.b.respond(&bye_b, 200, None);
    w.b_sends(rb);
    w.run_out();
    assert!(w.call.is_finished());
}
