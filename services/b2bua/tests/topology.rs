//! Topology hiding: nothing that names one side's hosts, transactions or dialog
//! reaches the other side, over a whole call with every kind of message.

mod harness;

use harness::*;
use trunkline_b2bua::Leg;
use trunkline_sip::{HeaderName, Method};

/// Runs a full call with Record-Route and Contact hosts on both sides: ringing,
/// early media, answer, re-INVITEs both ways, INFO both ways, BYE from B.
fn full_call() -> World {
    let mut w = World::new(Setup {
        topology: true,
        ..Setup::default()
    });
    let inv = w.route_to_b();
    let r180 = w.b.respond(&inv, 180, None);
    w.b_sends(r180);
    let r183 = w.b.respond(&inv, 183, Some(&sdp(50000, "sendrecv")));
    w.b_sends(r183);
    let ok = w.b.respond(&inv, 200, Some(&sdp(50000, "sendrecv")));
    w.b_sends(ok);
    let got = w.drain(Leg::A);
    let ok_a = got.last().expect("A got the 200").clone();
    assert_eq!(status(&ok_a), Some(200));
    w.a.learn_answer(&ok_a);
    let ack = w.a.ack(&ok_a, None);
    w.a_sends(ack);
    for from in [Leg::A, Leg::B] {
        let to = from.other();
        for (meth, ct, text) in [
            ("INVITE", "application/sdp", sdp(40000, "sendonly")),
            ("INFO", "application/dtmf-relay", "Signal=1\r\n".to_string()),
        ] {
            let req = match from {
                Leg::A => w.a.request(meth, &[], Some((ct, &text))),
                Leg::B => w.b.request(meth, &[], Some((ct, &text))),
            };
            w.send(from, req);
            let relayed = w
                .drain(to)
                .into_iter()
                .find(|m| method(m).is_some_and(|m| m.as_str() == meth))
                .unwrap_or_else(|| panic!("{meth} not relayed to {to:?}"));
            let body = (meth == "INVITE").then(|| sdp(50000, "recvonly"));
            let resp = match to {
                Leg::A => w.a.respond(&relayed, 200, body.as_deref()),
                Leg::B => w.b.respond(&relayed, 200, body.as_deref()),
            };
            w.send(to, resp);
            if let Some(back) = w.drain(from).into_iter().find(|m| status(m) == Some(200)) {
                if meth == "INVITE" {
                    let ack = match from {
                        Leg::A => w.a.ack(&back, None),
                        Leg::B => w.b.ack(&back, None),
                    };
                    w.send(from, ack);
                }
            } else {
                panic!("{meth} 200 not relayed back to {from:?}");
            }
        }
    }
    let bye = w.b.request("BYE", &[], None);
    w.b_sends(bye);
    let bye_a = w
        .drain(Leg::A)
        .into_iter()
        .find(|m| is_request(m, Method::Bye))
        .expect("BYE to A");
    let resp = w.a.respond(&bye_a, 200, None);
    w.a_sends(resp);
    w.run_out();
    assert!(w.call.is_finished());
    w
}

fn assert_absent(log: &[Sent], toward: &str, secrets: &[String]) {
    assert!(
        log.len() >= 8,
        "too few messages toward {toward} to be meaningful"
    );
    for s in log {
        let text = String::from_utf8_lossy(&s.raw);
        for secret in secrets {
            assert!(
                !text.contains(secret.as_str()),
                "{secret:?} leaked toward {toward} in:\n{text}"
            );
        }
    }
}

#[test]
fn nothing_of_the_caller_reaches_the_callee() {
    let w = full_call();
    let secrets = vec![
        w.a.call_id.clone(),
        w.a.tag.clone(),
        "z9hG4bKalice".to_string(), // every Via branch A used
        A_IP.to_string(),
        "a.example".to_string(), // From host
        "edge-a.example".to_string(),
        "AlicePhone".to_string(),
        "timer".to_string(), // Supported option tag the node does not run
        format!("{OUR_IP}:{A_LOCAL_PORT}"), // our A-side Via and Contact
    ];
    assert_absent(&w.log_b, "B", &secrets);
}

#[test]
fn nothing_of_the_callee_reaches_the_caller() {
    let w = full_call();
    let secrets = vec![
        w.b.call_id.clone(),
        w.b.tag.clone(),
        "z9hG4bKbob".to_string(),
        B_IP.to_string(),
        "203.0.113.77".to_string(), // B's Contact host
        "edge-b.example".to_string(),
        "bob-box".to_string(), // Server header
        format!(":{B_LOCAL_PORT}"),
    ];
    assert_absent(&w.log_a, "A", &secrets);
}

#[test]
fn each_side_sees_the_node_as_its_peer() {
    let mut w = World::new(Setup {
        topology: true,
        ..Setup::default()
    });
    let inv = w.route_to_b();
    assert_eq!(all_hdrs(&inv, HeaderName::Via).len(), 1, "one Via: ours");
    assert!(all_hdrs(&inv, HeaderName::RecordRoute).is_empty());
    let ok = w.b.respond(&inv, 200, Some(&sdp(50000, "sendrecv")));
    w.b_sends(ok);
    let ack = w.recv_b();
    // The B-leg dialog follows B's Record-Route and Contact.
    assert_eq!(request_uri(&ack), "sip:bob@203.0.113.77:5060");
    assert_eq!(
        all_hdrs(&ack, HeaderName::Route),
        vec!["<sip:edge-b.example;lr>"]
    );
    let ok_a = w.drain(Leg::A).pop().expect("200 to A");
    assert_eq!(
        hdr(&ok_a, HeaderName::Contact),
        format!("<sip:{OUR_IP}:{A_LOCAL_PORT}>")
    );
    // RFC 3261 §12.1.1: the UAS copies the request's Record-Route into its 2xx, so
    // the caller's route set matches ours.
    assert_eq!(
        all_hdrs(&ok_a, HeaderName::RecordRoute),
        vec!["<sip:edge-a.example;lr>"]
    );
    w.a.learn_answer(&ok_a);
    let ack = w.a.ack(&ok_a, None);
    w.a_sends(ack);
    let bye = w.b.request("BYE", &[], None);
    w.b_sends(bye);
    let bye_a = w.drain(Leg::A).pop().expect("BYE to A");
    assert!(is_request(&bye_a, Method::Bye));
    assert_eq!(request_uri(&bye_a), format!("sip:alice@{A_ADDR}"));
    assert_eq!(
        all_hdrs(&bye_a, HeaderName::Route),
        vec!["<sip:edge-a.example;lr>"]
    );
}
