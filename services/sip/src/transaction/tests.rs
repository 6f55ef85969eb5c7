//! Unit tests of the state machines and keys on a virtual clock, with real
//! messages parsed from SIP text.

use super::*;
use crate::header::HeaderName;
use crate::message::{Message, Request, Response};
use crate::method::Method;
use crate::parse::parse_message;
use std::time::{Duration, Instant};

pub(super) const INVITE_BRANCH: &str = "z9hG4bK74bf9";

fn parse(text: &str) -> Message {
    let wire = text.replace('\n', "\r\n");
    parse_message(Bytes::from(wire)).expect("test message parses")
}

/// A request as a UAC would send it: one Via with `branch`, a Route, CSeq 314159.
pub(super) fn request(method: &str, branch: &str, to_tag: Option<&str>) -> Request {
    let to_tag = to_tag.map(|t| format!(";tag={t}")).unwrap_or_default();
    let text = format!(
        "{method} sip:bob@biloxi.example.com SIP/2.0
Via: SIP/2.0/UDP pc33.atlanta.example.com:5060;branch={branch};rport
Max-Forwards: 70
Route: <sip:p1.example.com;lr>
Route: <sip:p2.example.com;lr>
To: Bob <sip:bob@biloxi.example.com>{to_tag}
From: Alice <sip:alice@atlanta.example.com>;tag=1928301774
Call-ID: a84b4c76e66710@pc33.atlanta.example.com
CSeq: 314159 {method}
Contact: <sip:alice@pc33.atlanta.example.com>
Content-Length: 0

"
    );
    match parse(&text) {
        Message::Request(r) => r,
        Message::Response(_) => panic!("expected a request"),
    }
}

/// A response to `request(method, branch, ..)`.
pub(super) fn response(status: u16, method: &str, branch: &str, to_tag: Option<&str>) -> Response {
    let to_tag = to_tag.map(|t| format!(";tag={t}")).unwrap_or_default();
    let text = format!(
        "SIP/2.0 {status} {reason}
Via: SIP/2.0/UDP pc33.atlanta.example.com:5060;branch={branch};rport=5060;received=192.0.2.1
To: Bob <sip:bob@biloxi.example.com>{to_tag}
From: Alice <sip:alice@atlanta.example.com>;tag=1928301774
Call-ID: a84b4c76e66710@pc33.atlanta.example.com
CSeq: 314159 {method}
Content-Length: 0

",
        reason = crate::message::reason_phrase(status)
    );
    match parse(&text) {
        Message::Response(r) => r,
        Message::Request(_) => panic!("expected a response"),
    }
}

fn invite() -> Request {
    request("INVITE", INVITE_BRANCH, None)
}

fn options() -> Request {
    request("OPTIONS", INVITE_BRANCH, None)
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn drain<T>(mut next: impl FnMut() -> Option<T>) -> Vec<T> {
    std::iter::from_fn(&mut next).collect()
}

/// Runs a client's timers until `until`, returning the instants (offsets from
/// `t0`) at which a retransmission was queued.
fn client_retransmissions(
    tx: &mut ClientTransaction,
    t0: Instant,
    until: Duration,
) -> Vec<Duration> {
    let mut at = Vec::new();
    while let Some(next) = tx.poll_timeout() {
        if next > t0 + until {
            break;
        }
        tx.handle_timeout(next);
        for t in drain(|| tx.poll_transmit()) {
            assert!(t.retransmission);
            at.push(next - t0);
        }
    }
    at
}

fn server_retransmissions(
    tx: &mut ServerTransaction,
    t0: Instant,
    until: Duration,
) -> Vec<Duration> {
    let mut at = Vec::new();
    while let Some(next) = tx.poll_timeout() {
        if next > t0 + until {
            break;
        }
        tx.handle_timeout(next);
        for t in drain(|| tx.poll_transmit()) {
            assert!(t.retransmission);
            at.push(next - t0);
        }
    }
    at
}

fn secs(list: &[u64]) -> Vec<Duration> {
    list.iter().map(|m| ms(*m)).collect()
}

// ---------------------------------------------------------------- timers

#[test]
fn default_timers_are_rfc3261_values() {
    let t = Timers::default();
    assert_eq!((t.t1, t.t2, t.t4), (ms(500), ms(4000), ms(5000)));
    assert_eq!(t.t1x64(), Duration::from_secs(32));
    assert_eq!(t.timer_d(), Duration::from_secs(32));
    let slow = Timers {
        t1: Duration::from_secs(1),
        ..t
    };
    assert_eq!(slow.timer_d(), Duration::from_secs(64));
}

// ------------------------------------------------------- INVITE client

#[test]
fn invite_client_starts_calling_and_sends_request() {
    let t0 = Instant::now();
    let mut tx = ClientTransaction::new(t0, invite(), false, Timers::default());
    assert_eq!(tx.state(), ClientState::Calling);
    let first = tx.poll_transmit().expect("initial transmit");
    assert!(!first.retransmission);
    assert_eq!(first.data, invite().encode());
    assert!(tx.poll_transmit().is_none());
    assert_eq!(tx.poll_timeout(), Some(t0 + ms(500)));
    assert_eq!(
        tx.key(),
        &TxKey::client_for_request(&invite()).expect("key")
    );
    assert_eq!(tx.request().method, Method::Invite);
}

#[test]
fn timer_a_doubles_without_cap_then_timer_b_times_out_unreliable() {
    let t0 = Instant::now();
    let mut tx = ClientTransaction::new(t0, invite(), false, Timers::default());
    tx.poll_transmit();
    let sent = client_retransmissions(&mut tx, t0, Duration::from_secs(40));
    // Intervals 0.5, 1, 2, 4, 8, 16 s (Timer A is not capped by T2, §17.1.1.2).
    assert_eq!(sent, secs(&[500, 1500, 3500, 7500, 15500, 31500]));
    assert_eq!(tx.state(), ClientState::Terminated);
    assert_eq!(tx.poll_event(), Some(TxEvent::Timeout { timer: 'B' }));
    assert_eq!(tx.poll_event(), Some(TxEvent::Terminated));
    assert_eq!(tx.poll_event(), None);
    assert_eq!(tx.poll_timeout(), None);
}

#[test]
fn timer_b_times_out_without_timer_a_reliable() {
    let t0 = Instant::now();
    let mut tx = ClientTransaction::new(t0, invite(), true, Timers::default());
    tx.poll_transmit();
    assert_eq!(tx.poll_timeout(), Some(t0 + Duration::from_secs(32)));
    tx.handle_timeout(t0 + Duration::from_secs(31));
    assert_eq!(tx.state(), ClientState::Calling);
    tx.handle_timeout(t0 + Duration::from_secs(32));
    assert!(tx.poll_transmit().is_none());
    assert!(tx.is_terminated());
    assert_eq!(tx.poll_event(), Some(TxEvent::Timeout { timer: 'B' }));
    assert_eq!(tx.poll_event(), Some(TxEvent::Terminated));
}

#[test]
fn invite_client_proceeding_stops_retransmissions_and_timer_b() {
    let t0 = Instant::now();
    let mut tx = ClientTransaction::new(t0, invite(), false, Timers::default());
    tx.poll_transmit();
    tx.handle_timeout(t0 + ms(500));
    assert!(tx.poll_transmit().is_some_and(|t| t.retransmission));
    assert!(tx.handle_response(t0 + ms(600), &response(100, "INVITE", INVITE_BRANCH, None)));
    assert_eq!(tx.state(), ClientState::Proceeding);
    assert_eq!(tx.poll_timeout(), None);
    // Every provisional before the final goes up (forked 180s carry different tags).
    assert!(tx.handle_response(
        t0 + ms(700),
        &response(180, "INVITE", INVITE_BRANCH, Some("a"))
    ));
    assert!(tx.handle_response(
        t0 + ms(800),
        &response(180, "INVITE", INVITE_BRANCH, Some("b"))
    ));
    tx.handle_timeout(t0 + Duration::from_secs(100));
    assert!(tx.poll_transmit().is_none());
    assert_eq!(tx.state(), ClientState::Proceeding);
    assert_eq!(tx.poll_event(), None);
}

fn accepted_client(reliable: bool) {
    let t0 = Instant::now();
    let mut tx = ClientTransaction::new(t0, invite(), reliable, Timers::default());
    tx.poll_transmit();
    assert!(tx.handle_response(
        t0 + ms(100),
        &response(180, "INVITE", INVITE_BRANCH, Some("x"))
    ));
    let ok = response(200, "INVITE", INVITE_BRANCH, Some("x"));
    assert!(tx.handle_response(t0 + ms(200), &ok));
    assert_eq!(tx.state(), ClientState::Accepted);
    // The 2xx ACK is the TU's: nothing queued by the transaction.
    assert!(tx.poll_transmit().is_none());
    assert_eq!(
        tx.poll_timeout(),
        Some(t0 + ms(200) + Duration::from_secs(32))
    );
    // Retransmitted and forked 2xx go up (the TU re-ACKs); others are stray.
    assert!(tx.handle_response(t0 + ms(700), &ok));
    assert!(tx.handle_response(
        t0 + ms(800),
        &response(200, "INVITE", INVITE_BRANCH, Some("y"))
    ));
    assert!(!tx.handle_response(
        t0 + ms(900),
        &response(486, "INVITE", INVITE_BRANCH, Some("z"))
    ));
    assert!(!tx.handle_response(
        t0 + ms(900),
        &response(180, "INVITE", INVITE_BRANCH, Some("z"))
    ));
    assert!(tx.poll_transmit().is_none());
    tx.handle_timeout(t0 + ms(200) + Duration::from_secs(31));
    assert_eq!(tx.state(), ClientState::Accepted);
    // Timer M.
    tx.handle_timeout(t0 + ms(200) + Duration::from_secs(32));
    assert!(tx.is_terminated());
    assert_eq!(drain(|| tx.poll_event()), vec![TxEvent::Terminated]);
    assert!(!tx.handle_response(t0 + Duration::from_secs(40), &ok));
}

#[test]
fn invite_client_accepted_and_timer_m_unreliable() {
    accepted_client(false);
}

#[test]
fn invite_client_accepted_and_timer_m_reliable() {
    accepted_client(true);
}

#[test]
fn invite_client_completed_builds_ack_per_17_1_1_3() {
    let t0 = Instant::now();
    let mut tx = ClientTransaction::new(t0, invite(), false, Timers::default());
    tx.poll_transmit();
    let busy = response(486, "INVITE", INVITE_BRANCH, Some("busy-tag"));
    assert!(tx.handle_response(t0 + ms(300), &busy));
    assert_eq!(tx.state(), ClientState::Completed);
    let ack = tx.poll_transmit().expect("ACK queued");
    assert!(!ack.retransmission);
    let Message::Request(ack) = parse_message(ack.data).expect("ACK parses") else {
        panic!("ACK is a request");
    };
    let inv = invite();
    assert_eq!(ack.method, Method::Ack);
    assert_eq!(ack.uri, inv.uri);
    assert_eq!(ack.headers.count(HeaderName::Via), 1);
    assert_eq!(ack.headers.top_via(), inv.headers.top_via());
    assert_eq!(ack.headers.call_id(), inv.headers.call_id());
    assert_eq!(
        ack.headers.get(HeaderName::From),
        inv.headers.get(HeaderName::From)
    );
    assert_eq!(
        ack.headers
            .to_addr()
            .and_then(|t| t.tag().map(String::from))
            .as_deref(),
        Some("busy-tag")
    );
    let cseq = ack.headers.cseq().expect("CSeq");
    assert_eq!((cseq.seq, cseq.method), (314159, Method::Ack));
    let routes: Vec<_> = ack.headers.get_all(HeaderName::Route).cloned().collect();
    let inv_routes: Vec<_> = inv.headers.get_all(HeaderName::Route).cloned().collect();
    assert_eq!(routes, inv_routes);
    assert_eq!(ack.headers.max_forwards(), Some(70));
    assert_eq!(
        ack.headers.get(HeaderName::ContentLength).map(|v| &v[..]),
        Some(&b"0"[..])
    );
    assert!(ack.body.is_empty());
    assert!(ack.headers.get(HeaderName::Contact).is_none());
    // The ACK is in the INVITE server transaction's key space.
    assert_eq!(TxKey::server(&ack), TxKey::server(&inv));
}

#[test]
fn invite_client_retransmitted_final_resends_ack_and_timer_d_unreliable() {
    let t0 = Instant::now();
    let mut tx = ClientTransaction::new(t0, invite(), false, Timers::default());
    tx.poll_transmit();
    let busy = response(486, "INVITE", INVITE_BRANCH, Some("b"));
    assert!(tx.handle_response(t0 + ms(300), &busy));
    let first_ack = tx.poll_transmit().expect("ACK");
    assert!(!tx.handle_response(t0 + ms(800), &busy));
    let again = tx.poll_transmit().expect("ACK re-sent");
    assert!(again.retransmission);
    assert_eq!(again.data, first_ack.data);
    // A 2xx arriving now is stray.
    assert!(!tx.handle_response(
        t0 + ms(900),
        &response(200, "INVITE", INVITE_BRANCH, Some("c"))
    ));
    assert!(tx.poll_transmit().is_none());
    // Timer D: 32 s, no retransmissions of the INVITE meanwhile.
    assert_eq!(
        tx.poll_timeout(),
        Some(t0 + ms(300) + Duration::from_secs(32))
    );
    tx.handle_timeout(t0 + ms(300) + Duration::from_secs(32));
    assert!(tx.poll_transmit().is_none());
    assert!(tx.is_terminated());
    assert_eq!(drain(|| tx.poll_event()), vec![TxEvent::Terminated]);
}

#[test]
fn invite_client_timer_d_is_zero_reliable() {
    let t0 = Instant::now();
    let mut tx = ClientTransaction::new(t0, invite(), true, Timers::default());
    tx.poll_transmit();
    assert!(tx.handle_response(
        t0 + ms(300),
        &response(603, "INVITE", INVITE_BRANCH, Some("d"))
    ));
    assert!(tx.is_terminated());
    // The ACK is still queued for the TU to send.
    let ack = tx.poll_transmit().expect("ACK");
    assert!(ack
        .data
        .starts_with(b"ACK sip:bob@biloxi.example.com SIP/2.0\r\n"));
    assert_eq!(drain(|| tx.poll_event()), vec![TxEvent::Terminated]);
    assert_eq!(tx.poll_timeout(), None);
}

#[test]
fn client_transport_error_before_final_is_reported() {
    let t0 = Instant::now();
    let mut tx = ClientTransaction::new(t0, invite(), true, Timers::default());
    tx.handle_transport_error(t0);
    assert!(tx.is_terminated());
    assert_eq!(
        drain(|| tx.poll_event()),
        vec![TxEvent::TransportError, TxEvent::Terminated]
    );
    let mut tx = ClientTransaction::new(t0, options(), false, Timers::default());
    tx.handle_response(t0, &response(100, "OPTIONS", INVITE_BRANCH, None));
    tx.handle_transport_error(t0);
    assert_eq!(
        drain(|| tx.poll_event()),
        vec![TxEvent::TransportError, TxEvent::Terminated]
    );
    // After the final the TU already has its answer: no TransportError.
    let mut tx = ClientTransaction::new(t0, invite(), false, Timers::default());
    tx.handle_response(t0, &response(404, "INVITE", INVITE_BRANCH, Some("n")));
    tx.handle_transport_error(t0);
    assert_eq!(drain(|| tx.poll_event()), vec![TxEvent::Terminated]);
    let mut tx = ClientTransaction::new(t0, invite(), false, Timers::default());
    tx.handle_response(t0, &response(200, "INVITE", INVITE_BRANCH, Some("n")));
    tx.handle_transport_error(t0);
    assert_eq!(tx.state(), ClientState::Accepted);
}

// --------------------------------------------------- non-INVITE client

#[test]
fn timer_e_doubles_to_t2_then_timer_f_times_out_unreliable() {
    let t0 = Instant::now();
    let mut tx = ClientTransaction::new(t0, options(), false, Timers::default());
    assert_eq!(tx.state(), ClientState::Trying);
    assert!(tx.poll_transmit().is_some_and(|t| !t.retransmission));
    let sent = client_retransmissions(&mut tx, t0, Duration::from_secs(40));
    // Intervals 0.5, 1, 2, 4, 4, 4 ... (capped at T2).
    assert_eq!(
        sent,
        secs(&[500, 1500, 3500, 7500, 11500, 15500, 19500, 23500, 27500, 31500])
    );
    assert!(tx.is_terminated());
    assert_eq!(
        drain(|| tx.poll_event()),
        vec![TxEvent::Timeout { timer: 'F' }, TxEvent::Terminated]
    );
}

#[test]
fn timer_e_in_proceeding_uses_t2() {
    let t0 = Instant::now();
    let mut tx = ClientTransaction::new(t0, options(), false, Timers::default());
    tx.poll_transmit();
    assert!(tx.handle_response(t0 + ms(200), &response(100, "OPTIONS", INVITE_BRANCH, None)));
    assert_eq!(tx.state(), ClientState::Proceeding);
    let sent = client_retransmissions(&mut tx, t0, Duration::from_secs(13));
    assert_eq!(sent, secs(&[500, 4500, 8500, 12500]));
}

#[test]
fn timer_f_times_out_without_timer_e_reliable() {
    let t0 = Instant::now();
    let mut tx = ClientTransaction::new(t0, options(), true, Timers::default());
    tx.poll_transmit();
    let sent = client_retransmissions(&mut tx, t0, Duration::from_secs(40));
    assert!(sent.is_empty());
    assert_eq!(
        drain(|| tx.poll_event()),
        vec![TxEvent::Timeout { timer: 'F' }, TxEvent::Terminated]
    );
}

#[test]
fn non_invite_client_completed_absorbs_and_timer_k_unreliable() {
    let t0 = Instant::now();
    let mut tx = ClientTransaction::new(t0, options(), false, Timers::default());
    tx.poll_transmit();
    let ok = response(200, "OPTIONS", INVITE_BRANCH, Some("o"));
    assert!(tx.handle_response(t0 + ms(100), &ok));
    assert_eq!(tx.state(), ClientState::Completed);
    assert!(!tx.handle_response(t0 + ms(600), &ok));
    assert!(!tx.handle_response(t0 + ms(600), &response(100, "OPTIONS", INVITE_BRANCH, None)));
    assert!(tx.poll_transmit().is_none());
    assert_eq!(tx.poll_timeout(), Some(t0 + ms(5100)));
    tx.handle_timeout(t0 + ms(5100));
    assert!(tx.poll_transmit().is_none());
    assert!(tx.is_terminated());
    assert_eq!(drain(|| tx.poll_event()), vec![TxEvent::Terminated]);
}

#[test]
fn non_invite_client_timer_k_is_zero_reliable() {
    let t0 = Instant::now();
    let mut tx = ClientTransaction::new(t0, options(), true, Timers::default());
    tx.poll_transmit();
    assert!(tx.handle_response(t0 + ms(100), &response(100, "OPTIONS", INVITE_BRANCH, None)));
    assert!(tx.handle_response(
        t0 + ms(200),
        &response(404, "OPTIONS", INVITE_BRANCH, Some("o"))
    ));
    assert!(tx.is_terminated());
    assert_eq!(drain(|| tx.poll_event()), vec![TxEvent::Terminated]);
}

// ------------------------------------------------------- INVITE server

fn invite_server(reliable: bool) -> (Instant, ServerTransaction) {
    let t0 = Instant::now();
    let tx = ServerTransaction::new(t0, &invite(), reliable, Timers::default());
    (t0, tx)
}

#[test]
fn invite_server_proceeding_resends_last_provisional() {
    let (t0, mut tx) = invite_server(false);
    assert_eq!(tx.state(), ServerState::Proceeding);
    assert_eq!(tx.method(), &Method::Invite);
    assert_eq!(tx.key(), &TxKey::server(&invite()).expect("key"));
    // Nothing sent yet: a retransmitted INVITE is absorbed.
    assert!(!tx.handle_request(t0 + ms(100), &invite()));
    assert!(tx.poll_transmit().is_none());
    let trying = response(100, "INVITE", INVITE_BRANCH, None);
    tx.send_response(t0 + ms(100), &trying);
    assert_eq!(
        tx.poll_transmit().map(|t| (t.data, t.retransmission)),
        Some((trying.encode(), false))
    );
    let ringing = response(180, "INVITE", INVITE_BRANCH, Some("s"));
    tx.send_response(t0 + ms(200), &ringing);
    tx.poll_transmit();
    assert_eq!(tx.last_status(), Some(180));
    assert!(!tx.handle_request(t0 + ms(600), &invite()));
    let again = tx.poll_transmit().expect("re-sent 180");
    assert!(again.retransmission);
    assert_eq!(again.data, ringing.encode());
    // No timers run in Proceeding: the TU owns the pace.
    assert_eq!(tx.poll_timeout(), None);
    assert_eq!(tx.state(), ServerState::Proceeding);
}

#[test]
fn timer_g_doubles_to_t2_and_timer_h_times_out_unreliable() {
    let (t0, mut tx) = invite_server(false);
    let busy = response(486, "INVITE", INVITE_BRANCH, Some("s"));
    tx.send_response(t0, &busy);
    assert_eq!(tx.state(), ServerState::Completed);
    assert!(tx.poll_transmit().is_some_and(|t| !t.retransmission));
    let sent = server_retransmissions(&mut tx, t0, Duration::from_secs(40));
    assert_eq!(
        sent,
        secs(&[500, 1500, 3500, 7500, 11500, 15500, 19500, 23500, 27500, 31500])
    );
    assert!(tx.is_terminated());
    assert_eq!(
        drain(|| tx.poll_event()),
        vec![TxEvent::Timeout { timer: 'H' }, TxEvent::Terminated]
    );
}

#[test]
fn timer_h_times_out_without_timer_g_reliable() {
    let (t0, mut tx) = invite_server(true);
    tx.send_response(t0, &response(486, "INVITE", INVITE_BRANCH, Some("s")));
    tx.poll_transmit();
    assert_eq!(tx.poll_timeout(), Some(t0 + Duration::from_secs(32)));
    let sent = server_retransmissions(&mut tx, t0, Duration::from_secs(40));
    assert!(sent.is_empty());
    assert_eq!(
        drain(|| tx.poll_event()),
        vec![TxEvent::Timeout { timer: 'H' }, TxEvent::Terminated]
    );
}

#[test]
fn invite_server_completed_resends_final_on_retransmitted_invite() {
    let (t0, mut tx) = invite_server(false);
    let busy = response(486, "INVITE", INVITE_BRANCH, Some("s"));
    tx.send_response(t0, &busy);
    tx.poll_transmit();
    assert!(!tx.handle_request(t0 + ms(100), &invite()));
    let again = tx.poll_transmit().expect("re-sent final");
    assert!(again.retransmission);
    assert_eq!(again.data, busy.encode());
    // Later responses from the TU are ignored.
    tx.send_response(
        t0 + ms(200),
        &response(200, "INVITE", INVITE_BRANCH, Some("s")),
    );
    assert!(tx.poll_transmit().is_none());
    assert_eq!(tx.last_status(), Some(486));
    assert_eq!(tx.state(), ServerState::Completed);
}

#[test]
fn ack_moves_to_confirmed_and_timer_i_unreliable() {
    let (t0, mut tx) = invite_server(false);
    tx.send_response(t0, &response(486, "INVITE", INVITE_BRANCH, Some("s")));
    tx.poll_transmit();
    let ack = request("ACK", INVITE_BRANCH, Some("s"));
    assert_eq!(TxKey::server(&ack).as_ref(), Some(tx.key()));
    assert!(!tx.handle_request(t0 + ms(700), &ack));
    assert_eq!(tx.state(), ServerState::Confirmed);
    // Timer G and H stopped; I runs for T4. ACK retransmissions are absorbed.
    assert_eq!(tx.poll_timeout(), Some(t0 + ms(5700)));
    assert!(!tx.handle_request(t0 + ms(900), &ack));
    assert!(!tx.handle_request(t0 + ms(900), &invite()));
    assert!(tx.poll_transmit().is_none());
    tx.handle_timeout(t0 + ms(5700));
    assert!(tx.poll_transmit().is_none());
    assert!(tx.is_terminated());
    assert_eq!(drain(|| tx.poll_event()), vec![TxEvent::Terminated]);
}

#[test]
fn timer_i_is_zero_reliable() {
    let (t0, mut tx) = invite_server(true);
    tx.send_response(t0, &response(486, "INVITE", INVITE_BRANCH, Some("s")));
    tx.poll_transmit();
    assert!(!tx.handle_request(t0 + ms(50), &request("ACK", INVITE_BRANCH, Some("s"))));
    assert!(tx.is_terminated());
    assert_eq!(drain(|| tx.poll_event()), vec![TxEvent::Terminated]);
}

#[test]
fn accepted_retransmits_2xx_until_ack_then_timer_l_unreliable() {
    let (t0, mut tx) = invite_server(false);
    let ok = response(200, "INVITE", INVITE_BRANCH, Some("s"));
    tx.send_response(t0, &ok);
    assert_eq!(tx.state(), ServerState::Accepted);
    assert_eq!(tx.last_status(), Some(200));
    assert!(tx.poll_transmit().is_some_and(|t| !t.retransmission));
    let sent = server_retransmissions(&mut tx, t0, ms(3900));
    assert_eq!(sent, secs(&[500, 1500, 3500]));
    // RFC 6026: INVITE retransmissions are absorbed in Accepted.
    assert!(!tx.handle_request(t0 + ms(3900), &invite()));
    assert!(tx.poll_transmit().is_none());
    // The ACK for a 2xx has its own branch; the TU routes it here by dialog.
    let ack = request("ACK", "z9hG4bKack2xx", Some("s"));
    assert!(tx.handle_request(t0 + ms(4000), &ack));
    assert!(
        !tx.handle_request(t0 + ms(4100), &ack),
        "re-ACKs are absorbed"
    );
    assert_eq!(tx.poll_timeout(), Some(t0 + Duration::from_secs(32)));
    let sent = server_retransmissions(&mut tx, t0, Duration::from_secs(31));
    assert!(sent.is_empty());
    assert_eq!(tx.state(), ServerState::Accepted);
    tx.handle_timeout(t0 + Duration::from_secs(32));
    assert!(tx.is_terminated());
    assert_eq!(drain(|| tx.poll_event()), vec![TxEvent::Terminated]);
}

#[test]
fn timer_l_after_ack_reliable() {
    let (t0, mut tx) = invite_server(true);
    tx.send_response(t0, &response(200, "INVITE", INVITE_BRANCH, Some("s")));
    tx.poll_transmit();
    assert_eq!(tx.poll_timeout(), Some(t0 + ms(500)), "the 2xx is re-sent");
    assert!(tx.handle_request(t0 + ms(100), &request("ACK", "z9hG4bKack", Some("s"))));
    assert_eq!(tx.poll_timeout(), Some(t0 + Duration::from_secs(32)));
    tx.handle_timeout(t0 + Duration::from_secs(32));
    assert!(tx.poll_transmit().is_none());
    assert_eq!(drain(|| tx.poll_event()), vec![TxEvent::Terminated]);
}

#[test]
fn no_ack_after_64_t1_unreliable() {
    let (t0, mut tx) = invite_server(false);
    tx.send_response(t0, &response(200, "INVITE", INVITE_BRANCH, Some("s")));
    tx.poll_transmit();
    let sent = server_retransmissions(&mut tx, t0, Duration::from_secs(40));
    assert_eq!(
        sent,
        secs(&[500, 1500, 3500, 7500, 11500, 15500, 19500, 23500, 27500, 31500])
    );
    assert!(tx.is_terminated());
    assert_eq!(
        drain(|| tx.poll_event()),
        vec![TxEvent::NoAck, TxEvent::Terminated]
    );
}

/// RFC 3261 §13.3.1.4: the UAS core retransmits its 2xx until the ACK comes whatever
/// the transport — a proxy further on may be on UDP, and a TCP connection can drop the
/// 2xx on a reset. Only the transaction layer's own timers (G, A, E) are unreliable-only.
#[test]
fn no_ack_after_64_t1_reliable_retransmits_the_2xx_too() {
    let (t0, mut tx) = invite_server(true);
    tx.send_response(t0, &response(200, "INVITE", INVITE_BRANCH, Some("s")));
    tx.poll_transmit();
    let sent = server_retransmissions(&mut tx, t0, Duration::from_secs(40));
    assert_eq!(
        sent,
        secs(&[500, 1500, 3500, 7500, 11500, 15500, 19500, 23500, 27500, 31500])
    );
    assert_eq!(
        drain(|| tx.poll_event()),
        vec![TxEvent::NoAck, TxEvent::Terminated]
    );
}

#[test]
fn accepted_sends_further_2xx_and_ignores_other_finals() {
    let (t0, mut tx) = invite_server(false);
    tx.send_response(t0, &response(200, "INVITE", INVITE_BRANCH, Some("s")));
    tx.poll_transmit();
    tx.send_response(
        t0 + ms(100),
        &response(486, "INVITE", INVITE_BRANCH, Some("s")),
    );
    tx.send_response(
        t0 + ms(100),
        &response(180, "INVITE", INVITE_BRANCH, Some("s")),
    );
    assert!(tx.poll_transmit().is_none());
    let ok2 = response(202, "INVITE", INVITE_BRANCH, Some("t"));
    tx.send_response(t0 + ms(200), &ok2);
    assert_eq!(tx.poll_transmit().map(|t| t.data), Some(ok2.encode()));
    tx.handle_timeout(t0 + ms(500));
    assert_eq!(tx.poll_transmit().map(|t| t.data), Some(ok2.encode()));
}

#[test]
fn server_transport_error_terminates_except_in_accepted() {
    let (t0, mut tx) = invite_server(false);
    tx.send_response(t0, &response(486, "INVITE", INVITE_BRANCH, Some("s")));
    tx.handle_transport_error(t0);
    assert_eq!(
        drain(|| tx.poll_event()),
        vec![TxEvent::TransportError, TxEvent::Terminated]
    );
    let (t0, mut tx) = invite_server(false);
    tx.send_response(t0, &response(200, "INVITE", INVITE_BRANCH, Some("s")));
    tx.handle_transport_error(t0);
    assert_eq!(tx.state(), ServerState::Accepted);
    assert_eq!(tx.poll_event(), None);
}

// --------------------------------------------------- non-INVITE server

#[test]
fn non_invite_server_trying_proceeding_completed_and_timer_j_unreliable() {
    let t0 = Instant::now();
    let mut tx = ServerTransaction::new(t0, &options(), false, Timers::default());
    assert_eq!(tx.state(), ServerState::Trying);
    assert_eq!(tx.poll_timeout(), None);
    // Trying: retransmissions absorbed.
    assert!(!tx.handle_request(t0 + ms(500), &options()));
    assert!(tx.poll_transmit().is_none());
    let trying = response(100, "OPTIONS", INVITE_BRANCH, None);
    tx.send_response(t0 + ms(600), &trying);
    assert_eq!(tx.state(), ServerState::Proceeding);
    tx.poll_transmit();
    assert!(!tx.handle_request(t0 + ms(1500), &options()));
    assert_eq!(
        tx.poll_transmit().map(|t| (t.data, t.retransmission)),
        Some((trying.encode(), true))
    );
    let ok = response(200, "OPTIONS", INVITE_BRANCH, Some("o"));
    tx.send_response(t0 + ms(2000), &ok);
    assert_eq!(tx.state(), ServerState::Completed);
    assert_eq!(
        tx.poll_transmit().map(|t| (t.data, t.retransmission)),
        Some((ok.encode(), false))
    );
    // Completed: retransmitted request → re-sent final; later responses ignored.
    assert!(!tx.handle_request(t0 + ms(3500), &options()));
    assert_eq!(
        tx.poll_transmit().map(|t| (t.data, t.retransmission)),
        Some((ok.encode(), true))
    );
    tx.send_response(
        t0 + ms(3600),
        &response(500, "OPTIONS", INVITE_BRANCH, Some("o")),
    );
    assert!(tx.poll_transmit().is_none());
    assert_eq!(tx.last_status(), Some(200));
    // Timer J = 64*T1, no retransmissions of its own.
    assert_eq!(
        tx.poll_timeout(),
        Some(t0 + ms(2000) + Duration::from_secs(32))
    );
    tx.handle_timeout(t0 + ms(2000) + Duration::from_secs(32));
    assert!(tx.poll_transmit().is_none());
    assert!(tx.is_terminated());
    assert_eq!(drain(|| tx.poll_event()), vec![TxEvent::Terminated]);
}

#[test]
fn non_invite_server_timer_j_is_zero_reliable() {
    let t0 = Instant::now();
    let mut tx = ServerTransaction::new(t0, &options(), true, Timers::default());
    tx.send_response(t0, &response(200, "OPTIONS", INVITE_BRANCH, Some("o")));
    assert!(tx.poll_transmit().is_some());
    assert!(tx.is_terminated());
    assert_eq!(drain(|| tx.poll_event()), vec![TxEvent::Terminated]);
}

// ----------------------------------------------------------------- keys

#[test]
fn server_key_matches_retransmission_and_ack_for_non_2xx() {
    let inv = invite();
    let key = TxKey::server(&inv).expect("key");
    assert_eq!(key.method(), &Method::Invite);
    assert_eq!(key.branch(), Some(INVITE_BRANCH));
    assert!(!key.is_rfc2543());
    assert_eq!(TxKey::server(&invite()), Some(key.clone()));
    // ACK for a non-2xx: same branch, maps to INVITE.
    let ack = request("ACK", INVITE_BRANCH, Some("s"));
    assert_eq!(TxKey::server(&ack), Some(key.clone()));
    // ACK for a 2xx: new branch, no match.
    let ack2 = request("ACK", "z9hG4bKother", Some("s"));
    assert_ne!(TxKey::server(&ack2), Some(key.clone()));
    // CANCEL: own key, but targets the INVITE.
    let cancel = request("CANCEL", INVITE_BRANCH, None);
    let ck = TxKey::server(&cancel).expect("key");
    assert_ne!(ck, key);
    assert_eq!(ck.method(), &Method::Cancel);
    assert_eq!(TxKey::cancel_target(&cancel), Some(key.clone()));
    // Another method with the same branch is another transaction.
    assert_ne!(TxKey::server(&options()), Some(key));
}

#[test]
fn server_key_includes_sent_by_case_insensitively() {
    let inv = invite();
    let text = String::from_utf8(inv.encode().to_vec()).expect("utf8");
    let other_host = text.replace(
        "pc33.atlanta.example.com:5060;branch",
        "pc34.atlanta.example.com:5060;branch",
    );
    let other_port = text.replace(
        "pc33.atlanta.example.com:5060;branch",
        "pc33.atlanta.example.com:5070;branch",
    );
    let upper = text.replace(
        "pc33.atlanta.example.com:5060;branch",
        "PC33.Atlanta.Example.COM:5060;branch",
    );
    let key = TxKey::server(&inv);
    let parse_req = |t: &str| match parse_message(Bytes::from(t.to_string())) {
        Ok(Message::Request(r)) => r,
        other => panic!("not a request: {other:?}"),
    };
    assert_ne!(TxKey::server(&parse_req(&other_host)), key);
    assert_ne!(TxKey::server(&parse_req(&other_port)), key);
    assert_eq!(TxKey::server(&parse_req(&upper)), key);
}

#[test]
fn rfc2543_fallback_key() {
    for branch in ["1234abcd", "z9hG4bK"] {
        let inv = request("INVITE", branch, None);
        let key = TxKey::server(&inv).expect("key");
        assert!(key.is_rfc2543(), "branch {branch}");
        assert_eq!(key.branch(), None);
        assert_eq!(
            TxKey::server(&request("INVITE", branch, None)),
            Some(key.clone())
        );
        // The ACK for our non-2xx carries our To tag: still the INVITE's.
        assert_eq!(
            TxKey::server(&request("ACK", branch, Some("s"))),
            Some(key.clone())
        );
        let cancel = request("CANCEL", branch, None);
        assert_ne!(TxKey::server(&cancel), Some(key.clone()));
        assert_eq!(TxKey::cancel_target(&cancel), Some(key.clone()));
        // A new CSeq is a new transaction.
        let text = String::from_utf8(inv.encode().to_vec()).expect("utf8");
        let next = text.replace("CSeq: 314159 INVITE", "CSeq: 314160 INVITE");
        let Ok(Message::Request(next)) = parse_message(Bytes::from(next)) else {
            panic!("parses");
        };
        assert_ne!(TxKey::server(&next), Some(key.clone()));
        // So is a different Request-URI.
        let other_uri = text.replace("INVITE sip:bob@biloxi", "INVITE sip:carol@biloxi");
        let Ok(Message::Request(other_uri)) = parse_message(Bytes::from(other_uri)) else {
            panic!("parses");
        };
        assert_ne!(TxKey::server(&other_uri), Some(key));
    }
    // A 2543 key never equals a 3261 key.
    assert_ne!(
        TxKey::server(&request("INVITE", "abc", None)),
        TxKey::server(&invite())
    );
}

#[test]
fn client_key_matches_branch_and_cseq_method() {
    let key = TxKey::client_for_request(&invite()).expect("key");
    assert_eq!(
        TxKey::client(&response(180, "INVITE", INVITE_BRANCH, Some("a"))),
        Some(key.clone())
    );
    assert_eq!(
        TxKey::client(&response(486, "INVITE", INVITE_BRANCH, Some("a"))),
        Some(key.clone())
    );
    // The 200 for our CANCEL shares the branch but not the method.
    let cancel_ok = response(200, "CANCEL", INVITE_BRANCH, Some("a"));
    assert_ne!(TxKey::client(&cancel_ok), Some(key.clone()));
    assert_eq!(
        TxKey::client(&cancel_ok),
        TxKey::client_for_request(&request("CANCEL", INVITE_BRANCH, None))
    );
    assert_ne!(
        TxKey::client(&response(180, "INVITE", "z9hG4bKelse", None)),
        Some(key.clone())
    );
    // Client keys and server keys live in different spaces (spirals).
    assert_ne!(TxKey::server(&invite()), Some(key.clone()));
    assert_eq!(key.to_string(), format!("{INVITE_BRANCH}/INVITE"));
}

#[test]
fn keys_need_their_headers() {
    let text = "INVITE sip:bob@biloxi.example.com SIP/2.0\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";
    let Ok(Message::Request(no_via)) = parse_message(Bytes::from(text)) else {
        panic!("parses");
    };
    assert_eq!(TxKey::server(&no_via), None);
    assert_eq!(TxKey::cancel_target(&no_via), None);
    assert_eq!(TxKey::client_for_request(&no_via), None);
    // An RFC 2543 request without Call-ID cannot be keyed.
    let text = "INVITE sip:bob@biloxi.example.com SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=1\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";
    let Ok(Message::Request(no_callid)) = parse_message(Bytes::from(text)) else {
        panic!("parses");
    };
    assert_eq!(TxKey::server(&no_callid), None);
    let text = "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKx\r\nContent-Length: 0\r\n\r\n";
    let Ok(Message::Response(no_cseq)) = parse_message(Bytes::from(text)) else {
        panic!("parses");
    };
    assert_eq!(TxKey::client(&no_cseq), None);
    // The transaction still builds (degraded key) for such a request.
    let tx = ServerTransaction::new(Instant::now(), &no_via, false, Timers::default());
    assert!(tx.key().is_rfc2543());
}

#[test]
fn transactions_stay_small() {
    // The B2BUA holds several per call; budget < 16 KiB per established call.
    let (server, client) = (
        std::mem::size_of::<ServerTransaction>(),
        std::mem::size_of::<ClientTransaction>(),
    );
    eprintln!("ServerTransaction {server} B, ClientTransaction {client} B");
    assert!(server <= 320, "{server}");
    assert!(client <= 640, "{client}");
}

// ------------------------------------------------------------ leftovers

#[test]
fn leftovers_say_what_a_finished_tu_still_owes() {
    let t0 = Instant::now();
    // Non-INVITE server: busy until final, then it only replays the final until J.
    let mut bye = ServerTransaction::new(
        t0,
        &request("BYE", "z9hG4bKbye", Some("s")),
        false,
        Timers::default(),
    );
    assert_eq!(bye.leftover(), Leftover::Busy);
    let ok = response(200, "BYE", "z9hG4bKbye", Some("s"));
    bye.send_response(t0, &ok);
    assert_eq!(
        bye.leftover(),
        Leftover::Replay {
            data: ok.encode(),
            until: t0 + Duration::from_secs(32)
        }
    );
    // Over TCP the final ends it at once.
    let mut tcp = ServerTransaction::new(
        t0,
        &request("BYE", "z9hG4bKt", Some("s")),
        true,
        Timers::default(),
    );
    tcp.send_response(t0, &response(200, "BYE", "z9hG4bKt", Some("s")));
    assert_eq!(tcp.leftover(), Leftover::Nothing);

    // INVITE server: busy while its non-2xx awaits the ACK, nothing after it.
    let (t0, mut inv) = invite_server(false);
    inv.send_response(t0, &response(486, "INVITE", INVITE_BRANCH, Some("s")));
    assert_eq!(inv.leftover(), Leftover::Busy);
    inv.handle_request(t0 + ms(10), &request("ACK", INVITE_BRANCH, Some("s")));
    assert_eq!(inv.state(), ServerState::Confirmed);
    assert_eq!(inv.leftover(), Leftover::Nothing);

    // INVITE client: after a non-2xx it only re-sends its ACK until D.
    let mut c = ClientTransaction::new(t0, invite(), false, Timers::default());
    assert_eq!(c.leftover(), Leftover::Busy);
    c.poll_transmit();
    c.handle_response(
        t0 + ms(10),
        &response(486, "INVITE", INVITE_BRANCH, Some("c")),
    );
    let ack = c.poll_transmit().expect("the ACK").data;
    assert_eq!(
        c.leftover(),
        Leftover::Replay {
            data: ack,
            until: t0 + ms(10) + Duration::from_secs(32)
        }
    );
    // Non-INVITE client: after its final it only absorbs.
    let mut o = ClientTransaction::new(t0, options(), false, Timers::default());
    o.poll_transmit();
    o.handle_response(
        t0 + ms(5),
        &response(200, "OPTIONS", INVITE_BRANCH, Some("o")),
    );
    assert_eq!(o.leftover(), Leftover::Nothing);
}
