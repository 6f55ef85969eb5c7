//! Adoption: a buddy restores a dead node's call and re-INVITEs both legs from its own
//! address, so both endpoints move their requests and media to it; a leg that refuses
//! ends the call on both.

mod harness;

use harness::*;
use trunkline_b2bua::{
    Adoption, Call, CallConfig, CallSnapshot, EndCause, Event, Leg, Local, MediaOp,
};
use trunkline_sip::{HeaderName, Host, Message, Method, Transport};

const ADOPTER_IP: &str = "192.0.2.99";

fn adopter_local(port: u16) -> Local {
    Local {
        transport: Transport::Udp,
        host: Host::parse(ADOPTER_IP).expect("ip"),
        port,
    }
}

/// Takes the snapshot of `w`'s call and adopts it on "another node".
fn adopt(w: &mut World) -> (String, String) {
    let snap = w
        .call
        .snapshot()
        .expect("an established call has a snapshot");
    let bytes = postcard::to_stdvec(&snap).expect("serialise");
    let mut snap: CallSnapshot = postcard::from_bytes(&bytes).expect("deserialise");
    // The dead node's sockets and connections are in the snapshot; none exists here.
    for leg in [&mut snap.a, &mut snap.b] {
        leg.peer.local = Some("192.0.2.1:5060".parse().expect("addr"));
        leg.peer.connection = Some(7);
    }
    let (a_sdp, b_sdp) = (sdp(41000, "sendrecv"), sdp(51000, "sendrecv"));
    let adoption = Adoption {
        a_local: adopter_local(5070),
        b_local: adopter_local(5071),
        a_sdp: a_sdp.clone().into(),
        b_sdp: b_sdp.clone().into(),
        seed: 7,
    };
    w.take_events();
    w.call = Call::adopt(w.now, w.cfg.clone(), snap, adoption);
    w.strict_peers = false;
    w.pump();
    (a_sdp, b_sdp)
}

fn contact_of(m: &Message) -> String {
    hdr(m, HeaderName::Contact)
}

fn adopted_events(w: &mut World) -> Vec<Event> {
    w.take_events()
        .into_iter()
        .filter(|e| {
            matches!(
                e,
                Event::Adopted { .. } | Event::Settled | Event::Ended { .. }
            )
        })
        .collect()
}

#[test]
fn both_legs_are_reinvited_from_the_adopter_and_later_requests_work() {
    let mut w = World::established(Setup::default());
    let seq_a = w.a.cseq;
    let (a_sdp, b_sdp) = adopt(&mut w);
    assert!(w.call.adopting());
    assert!(w.call.snapshot().is_none(), "no snapshot while adopting");

    let re_b = w.recv_b();
    assert!(
        is_request(&re_b, Method::Invite),
        "B got {}",
        summary(&re_b)
    );
    assert_eq!(call_id(&re_b), w.b.call_id, "the same B dialog");
    assert_eq!(to_tag(&re_b), Some(w.b.tag.clone()));
    assert!(contact_of(&re_b).contains(&format!("{ADOPTER_IP}:5071")));
    assert!(hdr(&re_b, HeaderName::Via).contains(ADOPTER_IP));
    assert_eq!(body(&re_b), a_sdp, "B is offered A's session");

    let re_a = w.recv_a();
    assert!(
        is_request(&re_a, Method::Invite),
        "A got {}",
        summary(&re_a)
    );
    assert_eq!(call_id(&re_a), w.a.call_id);
    assert_eq!(from_tag(&re_a), w.a.remote_tag.clone().expect("tag"));
    assert!(contact_of(&re_a).contains(&format!("{ADOPTER_IP}:5070")));
    assert_eq!(body(&re_a), b_sdp, "A is offered B's session");
    assert!(cseq(&re_a).0 >= 1);

    // A re-INVITE from an endpoint meanwhile crosses ours: 491.
    let glare = w.a.request(
        "INVITE",
        &[],
        Some(("application/sdp", &sdp(40002, "sendrecv"))),
    );
    w.a_sends(glare.clone());
    let r = w.recv_a();
    assert!(
        is_response(&r, 491, Method::Invite),
        "A got {}",
        summary(&r)
    );
    let ack = w.a.ack_non2xx(&glare, &r);
    w.a_sends(ack);

    let ok_b = w.b.respond(&re_b, 200, Some(&sdp(50000, "sendrecv")));
    w.b_sends(ok_b);
    let ack_b = w.recv_b();
    assert!(is_request(&ack_b, Method::Ack));
    assert!(
        adopted_events(&mut w).is_empty(),
        "not adopted until both legs accept"
    );
    let ok_a = w.a.respond(&re_a, 200, Some(&sdp(40000, "sendrecv")));
    w.a_sends(ok_a);
    let ack_a = w.recv_a();
    assert!(is_request(&ack_a, Method::Ack));
    let ev = adopted_events(&mut w);
    assert!(
        matches!(ev[..], [Event::Adopted { ok: true }, Event::Settled]),
        "{ev:?}"
    );
    assert!(!w.call.adopting());
    assert!(w.call.snapshot().is_some(), "replicated again from here");

    // The caller's BYE reaches the callee on the same dialog, with a higher CSeq.
    let bye = w.a.request("BYE", &[], None);
    w.a_sends(bye);
    assert!(is_response(&w.recv_a(), 200, Method::Bye));
    let bye_b = w.recv_b();
    assert!(is_request(&bye_b, Method::Bye));
    assert!(cseq(&bye_b).0 > cseq(&re_b).0);
    assert!(
        branch(&bye_b).contains("n1-"),
        "new branches carry this node's id: {}",
        branch(&bye_b)
    );
    let ok = w.b.respond(&bye_b, 200, None);
    w.b_sends(ok);
    assert!(w.ended().contains(&(200, EndCause::CallerHangup)));
    assert!(seq_a <= w.a.cseq);
}

#[test]
fn with_media_anchored_the_relay_makes_both_offers() {
    let mut w = World::established(Setup {
        anchor: true,
        ..Setup::default()
    });
    w.media_ops.clear();
    adopt(&mut w);
    assert_eq!(
        w.media_ops,
        vec![
            MediaOp::Offer { from: Leg::A },
            MediaOp::Answer { offerer: Leg::A }
        ],
        "A's SDP opens the adopter's relay session, B's answers it"
    );
    let re_b = w.recv_b();
    let re_a = w.recv_a();
    for m in [&re_b, &re_a] {
        assert!(
            body(m).contains(&format!("c=IN IP4 {RELAY_IP}")),
            "offer through the relay: {}",
            body(m)
        );
    }
}

#[test]
fn a_leg_that_refuses_ends_the_call_on_both() {
    let mut w = World::established(Setup::default());
    adopt(&mut w);
    let re_b = w.recv_b();
    let re_a = w.recv_a();
    let no = w.a.respond(&re_a, 488, None);
    w.a_sends(no);
    // The 488 is ACKed, and the call is hung up: A keeps sending to the dead node.
    let mut got_bye_a = false;
    while let Some(m) = w.try_recv(Leg::A) {
        got_bye_a |= is_request(&m, Method::Bye);
    }
    assert!(got_bye_a, "A gets BYE");
    let ev = adopted_events(&mut w);
    assert!(
        ev.iter().any(|e| matches!(e, Event::Adopted { ok: false })),
        "{ev:?}"
    );
    assert!(ev.iter().any(|e| matches!(
        e,
        Event::Ended {
            cause: EndCause::MediaUnavailable,
            ..
        }
    )));
    // B's 200 to the re-INVITE still comes: it is ACKed, and B gets its BYE.
    let ok_b = w.b.respond(&re_b, 200, Some(&sdp(50000, "sendrecv")));
    w.b_sends(ok_b);
    let mut methods = Vec::new();
    while let Some(m) = w.try_recv(Leg::B) {
        methods.extend(method(&m));
    }
    assert!(methods.contains(&Method::Bye), "B got {methods:?}");
    assert!(methods.contains(&Method::Ack), "B got {methods:?}");
}

#[test]
fn a_leg_that_never_answers_ends_the_call() {
    let mut w = World::established(Setup::default());
    adopt(&mut w);
    let _re_b = w.recv_b();
    let _re_a = w.recv_a();
    w.run_out();
    let ev = adopted_events(&mut w);
    assert!(
        ev.iter().any(|e| matches!(e, Event::Adopted { ok: false })),
        "{ev:?}"
    );
}

fn keeping(anchor: bool) -> World {
    let mut w = World::with_config(
        Setup {
            anchor,
            ..Setup::default()
        },
        trunkline_b2bua::CallConfig {
            keep_sdp: true,
            ..trunkline_b2bua::CallConfig::default()
        },
    );
    w.establish();
    w
}

#[test]
fn the_snapshot_keeps_each_partys_own_sdp_and_a_relayed_reinvite_updates_it() {
    for anchor in [false, true] {
        let mut w = keeping(anchor);
        let snap = w.call.snapshot().expect("snapshot");
        // What each party sent, not the relay's rewrite of it.
        assert_eq!(snap.a_sdp.as_deref(), Some(sdp(40000, "sendrecv").as_str()));
        assert_eq!(snap.b_sdp.as_deref(), Some(sdp(50000, "sendrecv").as_str()));
        // B puts A on hold: B's offer and A's answer replace both.
        let re = w.b.request(
            "INVITE",
            &[],
            Some(("application/sdp", &sdp(50010, "sendonly"))),
        );
        w.b_sends(re);
        let _trying = w.recv_b();
        let to_a = w.recv_a();
        let ok = w.a.respond(&to_a, 200, Some(&sdp(40010, "recvonly")));
        w.a_sends(ok);
        let _ack_a = w.recv_a();
        let ok_b = w.recv_b();
        let ack = w.b.ack(&ok_b, None);
        w.b_sends(ack);
        let snap = w.call.snapshot().expect("snapshot");
        assert_eq!(snap.a_sdp.as_deref(), Some(sdp(40010, "recvonly").as_str()));
        assert_eq!(snap.b_sdp.as_deref(), Some(sdp(50010, "sendonly").as_str()));
    }
}

#[test]
fn without_keep_sdp_the_snapshot_has_none() {
    let w = World::established(Setup::default());
    let snap = w.call.snapshot().expect("snapshot");
    assert!(snap.a_sdp.is_none() && snap.b_sdp.is_none());
}

#[test]
fn the_parties_answers_reach_the_relay_and_become_their_latest_sdp() {
    let mut w = World::with_config(
        Setup {
            anchor: true,
            ..Setup::default()
        },
        CallConfig {
            keep_sdp: true,
            ..CallConfig::default()
        },
    );
    w.establish();
    adopt(&mut w);
    w.media_ops.clear();
    let re_b = w.recv_b();
    let re_a = w.recv_a();
    // Both parties answer from other ports than the dead node last saw (41000, 51000).
    let (b_now, a_now) = (sdp(52000, "sendrecv"), sdp(42000, "sendrecv"));
    let ok_b = w.b.respond(&re_b, 200, Some(&b_now));
    w.b_sends(ok_b);
    let ok_a = w.a.respond(&re_a, 200, Some(&a_now));
    w.a_sends(ok_a);
    assert!(is_request(&w.recv_b(), Method::Ack));
    assert!(is_request(&w.recv_a(), Method::Ack));
    assert_eq!(
        w.media_ops,
        vec![
            MediaOp::Answer { offerer: Leg::A },
            MediaOp::Answer { offerer: Leg::B }
        ],
        "each answer updates its own party on the relay"
    );
    // Nothing goes on to the other party: its offer already had the relay's address.
    assert!(w.try_recv(Leg::A).is_none());
    assert!(w.try_recv(Leg::B).is_none());
    let snap = w.call.snapshot().expect("settled after the adoption");
    assert_eq!(snap.a_sdp.as_deref(), Some(a_now.as_str()), "A's latest");
    assert_eq!(snap.b_sdp.as_deref(), Some(b_now.as_str()), "B's latest");
}
