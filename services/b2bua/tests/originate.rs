//! Calls the node places itself (RFC 3725 flow I): A is called without an offer, its
//! offer goes to B, B's answer comes back to A in the ACK. Either party failing, the
//! ring limit, A hanging up early and an operator's hang-up each end the call cleanly,
//! with nothing left up on the other side.

mod harness;

use harness::*;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};
use trunkline_b2bua::{Call, CallConfig, CallState, EndCause, Event, Leg, MediaOp, Party};
use trunkline_sip::{parse_message, HeaderName, Message, Method, Transport, Uri};

/// The call, its clock, both parties and what the call sent each of them.
struct Placed {
    call: Call,
    cfg: Arc<CallConfig>,
    now: Instant,
    a: Ua,
    b: Ua,
    to_a: VecDeque<Message>,
    to_b: VecDeque<Message>,
    events: Vec<Event>,
    media_ops: Vec<MediaOp>,
}

fn party(addr: &str, user: &str, port: u16) -> Party {
    Party {
        peer: trunkline_sip::Peer::new(Transport::Udp, addr.parse().expect("addr")),
        local: local(Transport::Udp, port),
        request_uri: Uri::parse(&format!("sip:{user}@{addr}")).expect("uri"),
    }
}

impl Placed {
    fn new(anchor: bool) -> Placed {
        let cfg = Arc::new(CallConfig::default());
        let now = Instant::now();
        let call = Call::originate(
            now,
            cfg.clone(),
            7,
            party(A_ADDR, "1001", A_LOCAL_PORT),
            party(B_ADDR, "+15550100", B_LOCAL_PORT),
            anchor,
        );
        let mut a = Ua::callee(Transport::Udp);
        a.user = "alice";
        a.addr = A_ADDR.parse().expect("addr");
        a.contact = format!("<sip:alice@{A_ADDR}>");
        a.tag = "atag-0r1g".into();
        let mut p = Placed {
            call,
            cfg,
            now,
            a,
            b: Ua::callee(Transport::Udp),
            to_a: VecDeque::new(),
            to_b: VecDeque::new(),
            events: Vec::new(),
            media_ops: Vec::new(),
        };
        p.pump();
        p
    }

    fn pump(&mut self) {
        loop {
            let mut progressed = false;
            while let Some(t) = self.call.poll_transmit() {
                progressed = true;
                let msg = parse_message(t.data.clone()).expect("the call sends valid SIP");
                match t.leg {
                    Leg::A => self.to_a.push_back(msg),
                    Leg::B => self.to_b.push_back(msg),
                }
            }
            let mut media = Vec::new();
            while let Some(e) = self.call.poll_event() {
                progressed = true;
                if let Event::Media { id, op, sdp } = &e {
                    media.push((*id, *op, sdp.clone()));
                }
                self.events.push(e);
            }
            for (id, op, sdp) in media {
                self.media_ops.push(op);
                self.call
                    .handle_media(self.now, id, Ok(relay_rewrite(&sdp)));
            }
            if !progressed {
                break;
            }
        }
    }

    fn from(&mut self, leg: Leg, msg: Message) {
        let peer = match leg {
            Leg::A => self.a.peer(),
            Leg::B => self.b.peer(),
        };
        self.call.handle_message(self.now, leg, msg, peer);
        self.pump();
    }

    fn recv(&mut self, leg: Leg) -> Message {
        let q = match leg {
            Leg::A => &mut self.to_a,
            Leg::B => &mut self.to_b,
        };
        q.pop_front()
            .unwrap_or_else(|| panic!("{leg:?} expected a message"))
    }

    /// Every message waiting for `leg`, provisional answers and retransmissions aside.
    fn drain(&mut self, leg: Leg) -> Vec<Message> {
        let q = match leg {
            Leg::A => &mut self.to_a,
            Leg::B => &mut self.to_b,
        };
        q.drain(..).collect()
    }

    fn advance(&mut self, d: Duration) {
        let until = self.now + d;
        while let Some(t) = self.call.poll_timeout() {
            if t > until {
                break;
            }
            self.now = self.now.max(t);
            self.call.handle_timeout(self.now);
            self.pump();
        }
        self.now = until;
    }

    fn ended(&self) -> Vec<(u16, EndCause)> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::Ended { status, cause } => Some((*status, *cause)),
                _ => None,
            })
            .collect()
    }

    /// A is called and answers with its offer; returns B's INVITE.
    fn a_answers(&mut self) -> Message {
        let inv = self.recv(Leg::A);
        assert!(is_request(&inv, Method::Invite), "A got {}", summary(&inv));
        assert!(body(&inv).is_empty(), "A is called without an offer");
        assert!(
            hdr(&inv, HeaderName::From).contains("+15550100"),
            "A sees B's number as the caller"
        );
        self.a.accept_invite(&inv);
        let ringing = self.a.respond(&inv, 180, None);
        self.from(Leg::A, ringing);
        let ok = self.a.respond(&inv, 200, Some(&sdp(40000, "sendrecv")));
        self.from(Leg::A, ok);
        let b_inv = self.recv(Leg::B);
        assert!(
            is_request(&b_inv, Method::Invite),
            "B got {}",
            summary(&b_inv)
        );
        assert!(body(&b_inv).contains("m=audio 40000 "), "B gets A's offer");
        assert!(
            hdr(&b_inv, HeaderName::From).contains("1001"),
            "B sees A's number as the caller"
        );
        self.b.accept_invite(&b_inv);
        b_inv
    }
}

#[test]
fn both_parties_answer_and_are_bridged_with_media_anchored() {
    let mut p = Placed::new(true);
    let b_inv = p.a_answers();
    assert!(body(&b_inv).contains(&format!("c=IN IP4 {RELAY_IP}")));
    assert!(p.to_a.is_empty(), "A's ACK waits for B's answer");
    let ringing = p.b.respond(&b_inv, 180, None);
    p.from(Leg::B, ringing);
    let ok = p.b.respond(&b_inv, 200, Some(&sdp(50000, "sendrecv")));
    p.from(Leg::B, ok);
    let ack_b = p.recv(Leg::B);
    assert!(is_request(&ack_b, Method::Ack));
    let ack_a = p.recv(Leg::A);
    assert!(is_request(&ack_a, Method::Ack), "A got {}", summary(&ack_a));
    assert!(
        body(&ack_a).contains("m=audio 50000 "),
        "A's ACK carries B's answer"
    );
    assert!(body(&ack_a).contains(&format!("c=IN IP4 {RELAY_IP}")));
    assert_eq!(
        p.media_ops,
        vec![
            MediaOp::Offer { from: Leg::A },
            MediaOp::Answer { offerer: Leg::A }
        ]
    );
    assert_eq!(p.call.state(), CallState::Established);
    assert!(p.events.iter().any(|e| matches!(e, Event::Answered)));
    // An ordinary call from here: A's BYE reaches B.
    p.a.remote_target = format!("sip:{OUR_IP}:{A_LOCAL_PORT}");
    let bye = p.a.request("BYE", &[], None);
    p.from(Leg::A, bye);
    assert_eq!(status(&p.recv(Leg::A)), Some(200));
    let bye_b = p.recv(Leg::B);
    assert!(is_request(&bye_b, Method::Bye));
    let ok = p.b.respond(&bye_b, 200, None);
    p.from(Leg::B, ok);
    assert_eq!(p.ended(), vec![(200, EndCause::CallerHangup)]);
    p.advance(Duration::from_secs(64));
    assert!(p.call.is_finished());
}

#[test]
fn a_first_party_that_refuses_ends_the_call_and_b_is_never_called() {
    let mut p = Placed::new(false);
    let inv = p.recv(Leg::A);
    p.a.accept_invite(&inv);
    let busy = p.a.respond(&inv, 486, None);
    p.from(Leg::A, busy);
    assert!(is_request(&p.recv(Leg::A), Method::Ack));
    assert!(p.to_b.is_empty());
    assert_eq!(p.ended(), vec![(486, EndCause::Rejected)]);
    p.advance(Duration::from_secs(64));
    assert!(p.call.is_finished());
}

#[test]
fn a_second_party_that_refuses_releases_the_first() {
    let mut p = Placed::new(false);
    let b_inv = p.a_answers();
    let busy = p.b.respond(&b_inv, 486, None);
    p.from(Leg::B, busy);
    assert!(is_request(&p.recv(Leg::B), Method::Ack));
    let to_a = p.drain(Leg::A);
    assert!(is_request(&to_a[0], Method::Ack), "A's 2xx is ACKed");
    assert!(is_request(&to_a[1], Method::Bye), "and A is released");
    assert_eq!(p.ended(), vec![(486, EndCause::Rejected)]);
    let ok = p.a.respond(&to_a[1], 200, None);
    p.from(Leg::A, ok);
    p.advance(Duration::from_secs(64));
    assert!(p.call.is_finished());
}

#[test]
fn a_second_party_that_never_answers_is_cancelled_before_the_first_gives_up() {
    let mut p = Placed::new(false);
    let b_inv = p.a_answers();
    let ringing = p.b.respond(&b_inv, 180, None);
    p.from(Leg::B, ringing);
    let limit = p.cfg.no_answer.min(p.cfg.timers.t1x64());
    p.advance(limit + Duration::from_millis(1));
    let cancel = p
        .drain(Leg::B)
        .into_iter()
        .find(|m| is_request(m, Method::Cancel))
        .expect("B is cancelled");
    let to_a: Vec<_> = p.drain(Leg::A);
    assert!(to_a.iter().any(|m| is_request(m, Method::Ack)));
    assert!(to_a.iter().any(|m| is_request(m, Method::Bye)));
    assert_eq!(p.ended(), vec![(408, EndCause::NoAnswer)]);
    let ok = p.b.respond(&cancel, 200, None);
    p.from(Leg::B, ok);
    let r487 = p.b.respond(&b_inv, 487, None);
    p.from(Leg::B, r487);
}

#[test]
fn the_first_party_hanging_up_while_the_second_rings_cancels_it() {
    let mut p = Placed::new(false);
    let b_inv = p.a_answers();
    let ringing = p.b.respond(&b_inv, 180, None);
    p.from(Leg::B, ringing);
    p.a.remote_target = format!("sip:{OUR_IP}:{A_LOCAL_PORT}");
    let bye = p.a.request("BYE", &[], None);
    p.from(Leg::A, bye);
    assert_eq!(status(&p.recv(Leg::A)), Some(200));
    assert!(p.to_a.is_empty(), "nothing more for A");
    let cancel = p.recv(Leg::B);
    assert!(is_request(&cancel, Method::Cancel));
    assert_eq!(p.ended(), vec![(487, EndCause::CallerHangup)]);
    // B answers anyway, crossing the CANCEL: ACKed and released.
    let ok = p.b.respond(&b_inv, 200, Some(&sdp(50000, "sendrecv")));
    p.from(Leg::B, ok);
    let msgs = p.drain(Leg::B);
    assert!(msgs.iter().any(|m| is_request(m, Method::Ack)));
    assert!(msgs.iter().any(|m| is_request(m, Method::Bye)));
}

#[test]
fn an_operator_hangup_while_the_first_party_rings_cancels_it() {
    let mut p = Placed::new(false);
    let inv = p.recv(Leg::A);
    p.a.accept_invite(&inv);
    let ringing = p.a.respond(&inv, 180, None);
    p.from(Leg::A, ringing);
    let now = p.now;
    p.call.hangup(now, EndCause::Local);
    p.pump();
    let cancel = p.recv(Leg::A);
    assert!(is_request(&cancel, Method::Cancel));
    assert_eq!(p.ended(), vec![(480, EndCause::Local)]);
    let ok = p.a.respond(&cancel, 200, None);
    p.from(Leg::A, ok);
    let r487 = p.a.respond(&inv, 487, None);
    p.from(Leg::A, r487);
    assert!(is_request(&p.recv(Leg::A), Method::Ack));
    p.advance(Duration::from_secs(64));
    assert!(p.call.is_finished());
}
