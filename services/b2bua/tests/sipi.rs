//! SIP-I/SIP-T bodies (ITU-T Q.1912.5, RFC 3204): `multipart/mixed` with an SDP part
//! and a binary ISUP part. The SDP part alone goes through the relay and its rewrite is
//! spliced back; the ISUP part, the part headers and everything else arrive byte for
//! byte, and Content-Length follows the new body.

mod harness;

use bytes::Bytes;
use harness::*;
use trunkline_b2bua::{EndCause, Event, Leg, MediaOp};
use trunkline_sip::{HeaderName, Message, Method};

const BOUNDARY: &str = "unique-boundary-1";
const MULTIPART: &str = "multipart/mixed;boundary=unique-boundary-1";

/// An IAM-like ISUP payload: not UTF-8, with CRLFs and a `\r\n--` that is no delimiter.
const ISUP: &[u8] = b"\x01\x00\x49\x00\x00\x03\x02\x00\x07\x04\x10\x00\x33\x63\x21\x43\x00\
\xff\xfe\x80\r\n\r\n\r\n--unique\x0a\xc3\x28\x0a\x03\x06\x0d\x03\x80\x90\xa2\x00";

fn isup_part() -> Vec<u8> {
    [
        format!(
            "--{BOUNDARY}\r\nContent-Type: application/ISUP;version=itu-t92+\r\n\
             Content-Disposition: signal;handling=optional\r\n\r\n"
        )
        .as_bytes(),
        ISUP,
    ]
    .concat()
}

/// A SIP-I body: the SDP part first (as Q.1912.5 shows it) or after the ISUP part.
fn sip_i(sdp_text: &str, sdp_first: bool) -> Vec<u8> {
    let sdp_part = format!("--{BOUNDARY}\r\nContent-Type: application/sdp\r\n\r\n{sdp_text}");
    let (first, second) = if sdp_first {
        (sdp_part.into_bytes(), isup_part())
    } else {
        (isup_part(), sdp_part.into_bytes())
    };
    [
        &first[..],
        b"\r\n",
        &second,
        format!("\r\n--{BOUNDARY}--\r\n").as_bytes(),
    ]
    .concat()
}

fn relay_line() -> String {
    format!("c=IN IP4 {RELAY_IP}")
}

/// The SDP part's content of a SIP-I body, found the simple way for these fixed bodies.
fn sdp_of(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let start = text.find("v=0").expect("an SDP part");
    let end = text[start..]
        .find(&format!("\r\n--{BOUNDARY}"))
        .expect("a delimiter after the SDP");
    text[start..start + end].to_string()
}

/// Checks what a leg received: the same Content-Type, the ISUP part byte for byte,
/// an anchored SDP part that is otherwise `original_sdp` rewritten, and a
/// Content-Length that matches the body on the wire.
fn assert_sip_i_anchored(raw: &Bytes, m: &Message, original: &[u8], original_sdp: &str) {
    assert_eq!(
        hdr(m, HeaderName::ContentType),
        MULTIPART,
        "Content-Type with its boundary crosses unchanged"
    );
    let got = body_bytes(m);
    let isup = isup_part();
    assert!(
        got.windows(isup.len()).any(|w| w == isup.as_slice()),
        "the ISUP part arrives byte for byte:\n{:?}",
        got
    );
    let sdp = sdp_of(&got);
    assert!(sdp.contains(&relay_line()), "SDP part anchored:\n{sdp}");
    assert_eq!(
        sdp,
        String::from_utf8_lossy(&relay_rewrite(&Bytes::from(original_sdp.to_string()))),
        "the SDP part is exactly the relay's rewrite"
    );
    // Everything but the SDP part's content is as the sender wrote it.
    let expected = String::from_utf8_lossy(original).replacen(original_sdp, &sdp, 1);
    assert_eq!(String::from_utf8_lossy(&got), expected);
    assert_eq!(got.len(), original.len() - original_sdp.len() + sdp.len());
    // Content-Length on the wire is the new body's length, and the body ends the datagram.
    let text = String::from_utf8_lossy(raw);
    let cl = text
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .expect("Content-Length");
    assert_eq!(cl.trim(), got.len().to_string());
    assert!(raw.ends_with(&got));
}

fn media_sdps(w: &World) -> Vec<(MediaOp, Bytes)> {
    w.events
        .iter()
        .filter_map(|e| match e {
            Event::Media { op, sdp, .. } => Some((*op, sdp.clone())),
            _ => None,
        })
        .collect()
}

fn sip_i_call(sdp_first: bool) -> (World, Vec<u8>) {
    let offer = sip_i(&sdp(40000, "sendrecv"), sdp_first);
    let w = World::new(Setup {
        anchor: true,
        typed_offer: Some((MULTIPART.into(), offer.clone())),
        ..Setup::default()
    });
    (w, offer)
}

#[test]
fn sip_i_invite_has_its_sdp_part_anchored_and_isup_untouched() {
    for sdp_first in [true, false] {
        let (mut w, offer) = sip_i_call(sdp_first);
        let inv = w.route_to_b();
        let raw = w.log_b.last().expect("INVITE sent to B").raw.clone();
        assert_sip_i_anchored(&raw, &inv, &offer, &sdp(40000, "sendrecv"));
        // Only the SDP went to the relay, not the ISUP.
        assert_eq!(
            media_sdps(&w),
            vec![(
                MediaOp::Offer { from: Leg::A },
                Bytes::from(sdp(40000, "sendrecv"))
            )]
        );
    }
}

#[test]
fn sip_i_answers_are_anchored_toward_the_caller() {
    let (mut w, _) = sip_i_call(true);
    let inv = w.route_to_b();
    let early = sip_i(&sdp(50000, "sendrecv"), false);
    let r =
        w.b.respond_typed(&inv, 183, &[], Some((MULTIPART, early.as_slice())));
    w.b_sends(r);
    let early_a = w.recv_a();
    assert_eq!(status(&early_a), Some(183));
    let raw = w.log_a.last().expect("183 sent to A").raw.clone();
    assert_sip_i_anchored(&raw, &early_a, &early, &sdp(50000, "sendrecv"));

    let answer = sip_i(&sdp(50000, "sendrecv"), true);
    let ok =
        w.b.respond_typed(&inv, 200, &[], Some((MULTIPART, answer.as_slice())));
    w.b_sends(ok);
    assert!(is_request(&w.recv_b(), Method::Ack));
    let ok_a = w.recv_a();
    assert!(is_response(&ok_a, 200, Method::Invite));
    let raw = w
        .log_a
        .iter()
        .rev()
        .find(|s| status(&s.msg) == Some(200))
        .expect("200 sent to A")
        .raw
        .clone();
    assert_sip_i_anchored(&raw, &ok_a, &answer, &sdp(50000, "sendrecv"));
    assert_eq!(
        w.media_ops,
        vec![
            MediaOp::Offer { from: Leg::A },
            MediaOp::Answer { offerer: Leg::A },
            MediaOp::Answer { offerer: Leg::A },
        ]
    );
    assert!(media_sdps(&w).iter().all(|(_, s)| s.starts_with(b"v=0")));
}

#[test]
fn late_offer_sip_i_answer_in_the_ack_is_anchored_toward_the_callee() {
    let mut w = World::new(Setup {
        anchor: true,
        offer: None,
        ..Setup::default()
    });
    let inv = w.route_to_b();
    assert!(body(&inv).is_empty());
    let offer = sip_i(&sdp(50000, "sendrecv"), true);
    let ok =
        w.b.respond_typed(&inv, 200, &[], Some((MULTIPART, offer.as_slice())));
    w.b_sends(ok);
    let ok_a = w.recv_a();
    let raw = w.log_a.last().expect("200 sent to A").raw.clone();
    assert_sip_i_anchored(&raw, &ok_a, &offer, &sdp(50000, "sendrecv"));
    w.a.learn_answer(&ok_a);
    // The harness builds text bodies: a printable stand-in for the ISUP here.
    let answer = format!(
        "--{BOUNDARY}\r\nContent-Type: application/ISUP;version=itu-t92+\r\n\r\nANM 09 01 00\r\n\
         --{BOUNDARY}\r\nContent-Type: application/sdp\r\n\r\n{}\r\n--{BOUNDARY}--\r\n",
        sdp(40000, "sendrecv")
    );
    let ack =
        w.a.request_seq("ACK", 1, &[], Some((MULTIPART, answer.as_str())));
    w.a_sends(ack);
    let ack_b = w.recv_b();
    assert!(is_request(&ack_b, Method::Ack));
    assert_eq!(hdr(&ack_b, HeaderName::ContentType), MULTIPART);
    let got = body(&ack_b);
    assert!(got.contains("\r\n\r\nANM 09 01 00\r\n--unique-boundary-1\r\n"));
    assert_eq!(
        got,
        answer.replace(
            &sdp(40000, "sendrecv"),
            &String::from_utf8_lossy(&relay_rewrite(&Bytes::from(sdp(40000, "sendrecv"))))
        )
    );
    assert_eq!(
        w.media_ops,
        vec![
            MediaOp::Offer { from: Leg::B },
            MediaOp::Answer { offerer: Leg::B }
        ]
    );
}

#[test]
fn multipart_without_a_single_sdp_part_passes_unanchored() {
    let two = [
        format!("--{BOUNDARY}\r\nContent-Type: application/sdp\r\n\r\n").as_bytes(),
        sdp(40000, "sendrecv").as_bytes(),
        format!("\r\n--{BOUNDARY}\r\nContent-Type: application/sdp\r\n\r\n").as_bytes(),
        sdp(40002, "sendrecv").as_bytes(),
        b"\r\n",
        &isup_part(),
        format!("\r\n--{BOUNDARY}--\r\n").as_bytes(),
    ]
    .concat();
    let mut unterminated = sip_i(&sdp(40000, "sendrecv"), true);
    unterminated.truncate(unterminated.len() - format!("\r\n--{BOUNDARY}--\r\n").len());
    let isup_only = [
        &isup_part()[..],
        format!("\r\n--{BOUNDARY}--\r\n").as_bytes(),
    ]
    .concat();
    for (ct, body_in) in [
        (MULTIPART.to_string(), two),
        (MULTIPART.to_string(), unterminated),
        (MULTIPART.to_string(), isup_only),
        (
            "multipart/mixed".to_string(),
            sip_i(&sdp(40000, "sendrecv"), true),
        ),
    ] {
        let mut w = World::new(Setup {
            anchor: true,
            typed_offer: Some((ct.clone(), body_in.clone())),
            ..Setup::default()
        });
        let inv = w.route_to_b();
        assert_eq!(hdr(&inv, HeaderName::ContentType), ct);
        assert_eq!(&body_bytes(&inv)[..], &body_in[..], "body passes untouched");
        assert!(w.media_ops.is_empty(), "nothing went to the relay");
    }
}

#[test]
fn sip_i_bodies_pass_untouched_when_the_trunk_does_not_anchor() {
    let offer = sip_i(&sdp(40000, "sendrecv"), true);
    let mut w = World::new(Setup {
        typed_offer: Some((MULTIPART.into(), offer.clone())),
        ..Setup::default()
    });
    let inv = w.route_to_b();
    assert_eq!(&body_bytes(&inv)[..], &offer[..]);
    assert!(w.media_ops.is_empty());
}

#[test]
fn a_sip_i_offer_the_relay_cannot_anchor_is_refused_as_before() {
    let offer = sip_i(&sdp(40000, "sendrecv"), true);
    let mut w = World::new(Setup {
        anchor: true,
        media_fails: Some(488),
        typed_offer: Some((MULTIPART.into(), offer)),
        ..Setup::default()
    });
    assert_eq!(status(&w.recv_a()), Some(100));
    w.route();
    let r = w.recv_a();
    assert_eq!(status(&r), Some(488), "A got {}", summary(&r));
    assert!(w.drain(Leg::B).is_empty(), "nothing reaches B");
    assert_eq!(w.ended(), vec![(488, EndCause::MediaUnavailable)]);
}
