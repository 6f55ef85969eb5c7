//! Loss simulation: a client and a server transaction joined by a lossy pipe on a
//! virtual clock, with minimal TUs on both ends, run until both terminate. Checks
//! the end-to-end promise of §17: the client's TU sees exactly one final response
//! and the server's TU exactly one request, whatever the network drops.

use super::tests::{request, response, INVITE_BRANCH};
use super::*;
use crate::message::{Message, Request};
use crate::method::Method;
use crate::parse::parse_message;
use std::time::{Duration, Instant};

const LATENCY: Duration = Duration::from_millis(40);
const SERVER_TAG: &str = "srv-1";

/// Which packets the pipe drops; deterministic so failures replay exactly.
#[derive(Debug, Clone, Copy)]
enum Loss {
    /// Drops packet number n, 2n, 3n, ... (counting both directions, from 1).
    EveryNth(u64),
    /// Drops the first n packets.
    FirstN(u64),
    /// Drops each packet with probability percent/100 from a seeded LCG.
    Seeded { seed: u64, percent: u64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    ToServer,
    ToClient,
}

struct Pipe {
    loss: Loss,
    sent: u64,
    rng: u64,
    in_flight: Vec<(Instant, Dir, Bytes)>,
    dropped: u64,
}

impl Pipe {
    fn new(loss: Loss) -> Pipe {
        let rng = match loss {
            Loss::Seeded { seed, .. } => seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1,
            _ => 1,
        };
        Pipe {
            loss,
            sent: 0,
            rng,
            in_flight: Vec::new(),
            dropped: 0,
        }
    }

    fn lose(&mut self) -> bool {
        self.sent += 1;
        match self.loss {
            Loss::EveryNth(n) => self.sent.checked_rem(n) == Some(0),
            Loss::FirstN(n) => self.sent <= n,
            Loss::Seeded { percent, .. } => {
                self.rng = self
                    .rng
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                (self.rng >> 33) % 100 < percent
            }
        }
    }

    fn send(&mut self, now: Instant, dir: Dir, data: Bytes) {
        if self.lose() {
            self.dropped += 1;
        } else {
            self.in_flight.push((now + LATENCY, dir, data));
        }
    }

    fn next_delivery(&self) -> Option<Instant> {
        self.in_flight.iter().map(|(at, _, _)| *at).min()
    }

    fn take_due(&mut self, now: Instant) -> Vec<(Dir, Bytes)> {
        let mut due = Vec::new();
        let mut i = 0;
        while i < self.in_flight.len() {
            if self.in_flight[i].0 <= now {
                let (_, dir, data) = self.in_flight.remove(i);
                due.push((dir, data));
            } else {
                i += 1;
            }
        }
        due
    }
}

#[derive(Debug, Default)]
struct Report {
    /// Finals the client TU saw for the first time (not 2xx retransmissions).
    client_finals: Vec<u16>,
    client_2xx_retransmissions: usize,
    client_events: Vec<TxEvent>,
    /// Requests the server TU saw as new.
    server_deliveries: usize,
    /// ACKs for the 2xx the server TU saw.
    server_acks: usize,
    server_events: Vec<TxEvent>,
    dropped: u64,
    elapsed: Duration,
}

/// Runs one transaction pair: the client sends `method`; the server's TU answers
/// INVITE with 100 and 180 at once and `status` after 1.2 s, other methods with
/// `status` after 1.2 s.
fn run(method: &str, status: u16, loss: Loss) -> Report {
    let t0 = Instant::now();
    let timers = Timers::default();
    let mut now = t0;
    let mut pipe = Pipe::new(loss);
    let mut client =
        ClientTransaction::new(now, request(method, INVITE_BRANCH, None), false, timers);
    let mut server: Option<ServerTransaction> = None;
    let mut answer_at: Option<Instant> = None;
    let mut report = Report::default();
    let ack_2xx: Request = request("ACK", "z9hG4bKack-for-2xx", Some(SERVER_TAG));

    loop {
        while let Some(t) = client.poll_transmit() {
            pipe.send(now, Dir::ToServer, t.data);
        }
        report
            .client_events
            .extend(std::iter::from_fn(|| client.poll_event()));
        if let Some(s) = server.as_mut() {
            while let Some(t) = s.poll_transmit() {
                pipe.send(now, Dir::ToClient, t.data);
            }
            report
                .server_events
                .extend(std::iter::from_fn(|| s.poll_event()));
        }
        if client.is_terminated() && server.as_ref().is_some_and(|s| s.is_terminated()) {
            break;
        }
        let next = [
            client.poll_timeout(),
            server.as_ref().and_then(|s| s.poll_timeout()),
            pipe.next_delivery(),
            answer_at,
        ]
        .into_iter()
        .flatten()
        .min();
        let Some(next) = next else {
            panic!(
                "stuck at {:?}: client {:?}, server {:?}",
                now - t0,
                client.state(),
                server.as_ref().map(|s| s.state())
            );
        };
        assert!(next >= now, "time goes forward");
        now = next;
        assert!(now - t0 < Duration::from_secs(300), "simulation runs away");

        for (dir, data) in pipe.take_due(now) {
            match (dir, parse_message(data).expect("sent messages parse")) {
                (Dir::ToServer, Message::Request(req)) => {
                    let key = TxKey::server(&req).expect("keyable");
                    let matching = server
                        .as_mut()
                        .filter(|s| !s.is_terminated() && *s.key() == key);
                    if let Some(s) = matching {
                        if s.handle_request(now, &req) {
                            report.server_acks += 1;
                        }
                    } else if req.method == Method::Ack {
                        // The ACK for a 2xx: routed by dialog, not by key.
                        if let Some(s) = server.as_mut().filter(|s| !s.is_terminated()) {
                            if s.handle_request(now, &req) {
                                report.server_acks += 1;
                            }
                        }
                    } else {
                        report.server_deliveries += 1;
                        let mut s = ServerTransaction::new(now, &req, false, timers);
                        if req.method == Method::Invite {
                            s.send_response(now, &response(100, method, INVITE_BRANCH, None));
                            s.send_response(
                                now,
                                &response(180, method, INVITE_BRANCH, Some(SERVER_TAG)),
                            );
                        }
                        answer_at = Some(now + Duration::from_millis(1200));
                        server = Some(s);
                    }
                }
                (Dir::ToClient, Message::Response(resp)) => {
                    if TxKey::client(&resp).as_ref() != Some(client.key()) {
                        continue;
                    }
                    let before = client.state();
                    if client.handle_response(now, &resp) && resp.status >= 200 {
                        if before == ClientState::Accepted {
                            report.client_2xx_retransmissions += 1;
                        } else {
                            report.client_finals.push(resp.status);
                        }
                        if method == "INVITE" && resp.is_success() {
                            pipe.send(now, Dir::ToServer, ack_2xx.encode());
                        }
                    }
                }
                (dir, msg) => panic!("unexpected {dir:?} {msg:?}"),
            }
        }
        if answer_at.is_some_and(|a| a <= now) {
            answer_at = None;
            if let Some(s) = server.as_mut() {
                s.send_response(
                    now,
                    &response(status, method, INVITE_BRANCH, Some(SERVER_TAG)),
                );
            }
        }
        client.handle_timeout(now);
        if let Some(s) = server.as_mut() {
            s.handle_timeout(now);
        }
    }
    report.dropped = pipe.dropped;
    report.elapsed = now - t0;
    report
}

fn patterns() -> Vec<Loss> {
    let mut p = vec![
        Loss::EveryNth(1000),
        Loss::EveryNth(3),
        Loss::EveryNth(4),
        Loss::FirstN(1),
        Loss::FirstN(3),
        Loss::FirstN(5),
    ];
    p.extend((1..=30).map(|seed| Loss::Seeded { seed, percent: 30 }));
    p
}

fn check(method: &str, status: u16) {
    for loss in patterns() {
        let r = run(method, status, loss);
        let ctx = format!("{method} {status} {loss:?}: {r:?}");
        assert_eq!(r.client_finals, vec![status], "{ctx}");
        assert_eq!(r.server_deliveries, 1, "{ctx}");
        assert_eq!(r.client_events.last(), Some(&TxEvent::Terminated), "{ctx}");
        assert_eq!(r.server_events.last(), Some(&TxEvent::Terminated), "{ctx}");
        assert!(
            !r.client_events
                .iter()
                .any(|e| matches!(e, TxEvent::Timeout { .. })),
            "{ctx}"
        );
        assert!(
            !r.server_events
                .iter()
                .any(|e| matches!(e, TxEvent::Timeout { .. } | TxEvent::NoAck)),
            "{ctx}"
        );
        if method == "INVITE" && (200..300).contains(&status) {
            assert_eq!(r.server_acks, 1, "{ctx}");
        } else {
            assert_eq!(r.server_acks, 0, "{ctx}");
            assert_eq!(r.client_2xx_retransmissions, 0, "{ctx}");
        }
    }
}

#[test]
fn lossy_invite_rejected_delivers_once() {
    check("INVITE", 486);
}

#[test]
fn lossy_invite_accepted_delivers_once() {
    check("INVITE", 200);
}

#[test]
fn lossy_non_invite_delivers_once() {
    check("OPTIONS", 200);
    check("BYE", 481);
}

/// Strict alternation is adversarial: every response that triggers an ACK gets
/// through and every ACK is dropped. The guarantees still hold (one final, one
/// delivery) and the server reports the missing ACK instead of hanging.
#[test]
fn alternating_loss_drops_every_ack_and_server_gives_up_cleanly() {
    for (status, expect) in [
        (486, TxEvent::Timeout { timer: 'H' }),
        (200, TxEvent::NoAck),
    ] {
        let r = run("INVITE", status, Loss::EveryNth(2));
        let ctx = format!("{status}: {r:?}");
        assert_eq!(r.client_finals, vec![status], "{ctx}");
        assert_eq!(r.server_deliveries, 1, "{ctx}");
        assert_eq!(r.server_acks, 0, "{ctx}");
        assert_eq!(r.server_events, vec![expect, TxEvent::Terminated], "{ctx}");
        assert_eq!(r.client_events, vec![TxEvent::Terminated], "{ctx}");
    }
}

#[test]
fn lossless_run_has_no_retransmissions_of_finals() {
    let r = run("INVITE", 200, Loss::EveryNth(u64::MAX));
    assert_eq!(r.dropped, 0);
    assert_eq!(r.client_finals, vec![200]);
    // The ACK reached the server before its first 2xx retransmission (T1).
    assert_eq!(r.client_2xx_retransmissions, 0);
    assert_eq!(r.server_acks, 1);
}
