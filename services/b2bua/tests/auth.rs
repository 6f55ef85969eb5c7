//! The node answering a trunk's digest challenges (RFC 3261 §22.2): the B-leg INVITE,
//! the node's BYE and relayed in-dialog requests go again with credentials; the
//! caller never sees the challenge, and a refused answer is not repeated.

mod harness;

use harness::*;
use trunkline_b2bua::{EndCause, Leg, PeerCredentials};
use trunkline_sip::digest::{digest_params, Algorithm};
use trunkline_sip::{HeaderName, Message, Method};

fn creds() -> Option<PeerCredentials> {
    Some(PeerCredentials {
        username: "trunk7".into(),
        password: "s3cret".into(),
    })
}

/// Checks the credentials `value` of a `method` request the way a registrar would
/// (RFC 7616 §3.4.1), from the hash primitive up.
fn proves(value: &str, method: &str, password: &str, nonce: &str) -> bool {
    let p: std::collections::HashMap<String, String> = digest_params(value)
        .expect("Digest credentials")
        .into_iter()
        .collect();
    let alg = Algorithm::from_token(p.get("algorithm").map_or("MD5", String::as_str))
        .expect("an algorithm the node computes");
    let ha1 = alg.hash(&[&p["username"], &p["realm"], password]);
    let ha2 = alg.hash(&[method, &p["uri"]]);
    let want = alg.hash(&[&ha1, nonce, &p["nc"], &p["cnonce"], &p["qop"], &ha2]);
    p["nonce"] == nonce && p["response"] == want && p["username"] == "trunk7"
}

fn challenge(w: &World, req: &Message, status: u16, nonce: &str, alg: &str) -> Message {
    let name = if status == 401 {
        "WWW-Authenticate"
    } else {
        "Proxy-Authenticate"
    };
    let value =
        format!("Digest realm=\"carrier\", nonce=\"{nonce}\", algorithm={alg}, qop=\"auth\"");
    w.b.respond_with(req, status, &[(name, &value)], None)
}

/// B challenges the first INVITE; returns the INVITE that carries the answer (B has
/// learned its dialog).
fn challenged_invite(w: &mut World, status: u16, alg: &str) -> Message {
    assert_eq!(status_of(&w.recv_a()), Some(100));
    w.route();
    let first = w.recv_b();
    assert!(is_request(&first, Method::Invite));
    let ch = challenge(w, &first, status, "n-1", alg);
    w.b_sends(ch);
    let ack = w.recv_b();
    assert!(is_request(&ack, Method::Ack), "B got {}", summary(&ack));
    assert_eq!(
        branch(&ack),
        branch(&first),
        "the challenge is ACKed in its transaction"
    );
    let again = w.recv_b();
    assert!(
        is_request(&again, Method::Invite),
        "B got {}",
        summary(&again)
    );
    assert_eq!(cseq(&again).0, cseq(&first).0 + 1, "CSeq goes up (§22.2)");
    assert_eq!(call_id(&again), call_id(&first));
    assert_eq!(from_tag(&again), from_tag(&first));
    assert_ne!(branch(&again), branch(&first), "a new transaction");
    assert_eq!(body(&again), body(&first), "the same offer");
    w.b.accept_invite(&again);
    again
}

fn status_of(m: &Message) -> Option<u16> {
    status(m)
}

#[test]
fn a_challenged_invite_goes_again_with_proxy_authorization() {
    let mut w = World::new(Setup {
        credentials: creds(),
        ..Setup::default()
    });
    let inv = challenged_invite(&mut w, 407, "MD5");
    let value = hdr(&inv, HeaderName::ProxyAuthorization);
    assert!(proves(&value, "INVITE", "s3cret", "n-1"), "{value}");
    assert!(hdr_named(&inv, "Authorization").is_none());
    let ok = w.b.respond(&inv, 200, Some(&sdp(50000, "sendrecv")));
    w.b_sends(ok);
    let ack = w.recv_b();
    assert!(is_request(&ack, Method::Ack));
    assert_eq!(cseq(&ack).0, 2, "the ACK has the answered INVITE's CSeq");
    let ok_a = w.recv_a();
    assert!(
        is_response(&ok_a, 200, Method::Invite),
        "A got {}",
        summary(&ok_a)
    );
    assert!(w.answered());
}

#[test]
fn a_challenged_bye_goes_again_with_authorization() {
    let mut w = World::new(Setup {
        credentials: creds(),
        ..Setup::default()
    });
    let inv = challenged_invite(&mut w, 401, "SHA-256");
    assert!(proves(
        &hdr(&inv, HeaderName::Authorization),
        "INVITE",
        "s3cret",
        "n-1"
    ));
    let ok = w.b.respond(&inv, 200, Some(&sdp(50000, "sendrecv")));
    w.b_sends(ok);
    assert!(is_request(&w.recv_b(), Method::Ack));
    let ok_a = w.recv_a();
    w.a.learn_answer(&ok_a);
    let ack = w.a.ack(&ok_a, None);
    w.a_sends(ack);

    let bye = w.a.request("BYE", &[], None);
    w.a_sends(bye);
    assert!(is_response(&w.recv_a(), 200, Method::Bye));
    let bye_b = w.recv_b();
    assert_eq!(cseq(&bye_b).0, 3);
    let ch = challenge(&w, &bye_b, 401, "n-2", "SHA-256");
    w.b_sends(ch);
    let again = w.recv_b();
    assert!(is_request(&again, Method::Bye), "B got {}", summary(&again));
    assert_eq!(cseq(&again).0, 4);
    let value = hdr(&again, HeaderName::Authorization);
    assert!(value.contains("algorithm=SHA-256"), "{value}");
    assert!(proves(&value, "BYE", "s3cret", "n-2"), "{value}");
    let ok = w.b.respond(&again, 200, None);
    w.b_sends(ok);
    w.assert_quiet();
    assert_eq!(w.ended(), vec![(200, EndCause::CallerHangup)]);
}

#[test]
fn a_challenged_reinvite_from_the_caller_is_answered_toward_the_callee() {
    let mut w = World::new(Setup {
        credentials: creds(),
        ..Setup::default()
    });
    let inv = challenged_invite(&mut w, 407, "MD5");
    let ok = w.b.respond(&inv, 200, Some(&sdp(50000, "sendrecv")));
    w.b_sends(ok);
    assert!(is_request(&w.recv_b(), Method::Ack));
    let ok_a = w.recv_a();
    w.a.learn_answer(&ok_a);
    let ack = w.a.ack(&ok_a, None);
    w.a_sends(ack);

    let reinvite = w.a.request(
        "INVITE",
        &[],
        Some(("application/sdp", &sdp(40000, "sendonly"))),
    );
    w.a_sends(reinvite);
    let re_b = w.recv_b();
    let ch = challenge(&w, &re_b, 407, "n-3", "MD5");
    w.b_sends(ch);
    assert!(is_request(&w.recv_b(), Method::Ack));
    let again = w.recv_b();
    assert!(
        is_request(&again, Method::Invite),
        "B got {}",
        summary(&again)
    );
    assert_eq!(cseq(&again).0, cseq(&re_b).0 + 1);
    assert!(proves(
        &hdr(&again, HeaderName::ProxyAuthorization),
        "INVITE",
        "s3cret",
        "n-3"
    ));
    assert!(
        w.drain(Leg::A).iter().all(|m| status(m) != Some(407)),
        "the caller never sees the challenge"
    );
    let ok = w.b.respond(&again, 200, Some(&sdp(50000, "recvonly")));
    w.b_sends(ok);
    let ok_a = w.recv_a();
    assert!(
        is_response(&ok_a, 200, Method::Invite),
        "A got {}",
        summary(&ok_a)
    );
}

#[test]
fn a_refused_answer_or_no_credentials_fails_the_call_with_403() {
    // Wrong password: the second challenge (not stale) ends it.
    let mut w = World::new(Setup {
        credentials: creds(),
        ..Setup::default()
    });
    let inv = challenged_invite(&mut w, 407, "MD5");
    let ch = challenge(&w, &inv, 407, "n-2", "MD5");
    w.b_sends(ch);
    assert!(is_request(&w.recv_b(), Method::Ack));
    let r = w.recv_a();
    assert_eq!(status(&r), Some(403), "A got {}", summary(&r));
    assert!(w.try_recv(Leg::B).is_none(), "no third INVITE");

    // A stale nonce is answered again.
    let mut w = World::new(Setup {
        credentials: creds(),
        ..Setup::default()
    });
    let inv = challenged_invite(&mut w, 407, "MD5");
    let stale = w.b.respond_with(
        &inv,
        407,
        &[(
            "Proxy-Authenticate",
            "Digest realm=\"carrier\", nonce=\"n-9\", qop=\"auth\", stale=true",
        )],
        None,
    );
    w.b_sends(stale);
    assert!(is_request(&w.recv_b(), Method::Ack));
    let third = w.recv_b();
    assert_eq!(cseq(&third).0, 3);
    assert!(proves(
        &hdr(&third, HeaderName::ProxyAuthorization),
        "INVITE",
        "s3cret",
        "n-9"
    ));

    // No credentials for the trunk: its challenge is the caller's 403.
    let mut w = World::new(Setup::default());
    let inv = w.route_to_b();
    let ch = challenge(&w, &inv, 401, "n-1", "MD5");
    w.b_sends(ch);
    assert!(is_request(&w.recv_b(), Method::Ack));
    assert_eq!(status(&w.recv_a()), Some(403));
    assert!(w.try_recv(Leg::B).is_none());
}
