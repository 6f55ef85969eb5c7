//! Client transactions: RFC 3261 §17.1.1 (INVITE, Fig. 5, with the RFC 6026
//! Accepted state and Timer M) and §17.1.2 (non-INVITE, Fig. 6).

use super::outbox::{Due, Outbox};
use super::{ClientState, Leftover, Timers, Transmit, TxEvent, TxKey};
use crate::header::{Header, HeaderName};
use crate::message::{Request, Response};
use crate::method::Method;
use bytes::Bytes;
use std::time::{Duration, Instant};

/// One outgoing request and the responses to it.
#[derive(Debug)]
pub struct ClientTransaction {
    key: TxKey,
    /// Kept parsed: the ACK for a non-2xx is built from it (§17.1.1.3).
    request: Request,
    /// The request as first encoded; every retransmission sends these bytes.
    encoded: Bytes,
    /// The ACK for our non-2xx final, once built; re-sent on retransmitted finals.
    ack: Option<Bytes>,
    invite: bool,
    reliable: bool,
    timers: Timers,
    state: ClientState,
    /// Retransmit is Timer A (INVITE) or E (non-INVITE), unreliable transports
    /// only; timeout is B or F; linger is D, K or M.
    out: Outbox,
}

impl ClientTransaction {
    /// `request` already carries its top Via with a fresh branch. INVITE requests
    /// get the INVITE machine (Fig. 5 + RFC 6026 Accepted state with Timer M),
    /// others the non-INVITE machine (Fig. 6). The initial transmission is queued
    /// (poll_transmit). `reliable` = TCP: no retransmission timers A/E, and D/K
    /// are zero.
    pub fn new(now: Instant, request: Request, reliable: bool, timers: Timers) -> Self {
        let key = TxKey::client_for_request(&request).unwrap_or_else(|| TxKey::degraded(&request));
        let invite = request.method == Method::Invite;
        let encoded = request.encode();
        let mut out = Outbox::default();
        out.send(encoded.clone());
        if !reliable {
            out.arm_retransmit(now, timers.t1);
        }
        out.arm_timeout(now, timers.t1x64());
        ClientTransaction {
            key,
            request,
            encoded,
            ack: None,
            invite,
            reliable,
            timers,
            state: if invite {
                ClientState::Calling
            } else {
                ClientState::Trying
            },
            out,
        }
    }

    /// The key responses are matched with (top Via branch + method).
    pub fn key(&self) -> &TxKey {
        &self.key
    }

    /// The request this transaction sent (the TU builds CANCEL and 2xx ACKs from it).
    pub fn request(&self) -> &Request {
        &self.request
    }

    /// Returns true when the TU must see this response: every provisional and
    /// final that arrives before a final, and (INVITE) every 2xx including
    /// retransmissions in Accepted (the TU re-ACKs them). Retransmitted non-2xx
    /// finals return false but make the transaction re-send its ACK (queued).
    /// For a non-2xx final to an INVITE the transaction builds the ACK itself per
    /// §17.1.1.3 (same Request-URI, Call-ID, From, CSeq number with method ACK,
    /// To *from the response* (with its tag), the single top Via of the request,
    /// the request's Route headers, Max-Forwards 70, Content-Length 0) and queues it.
    pub fn handle_response(&mut self, now: Instant, resp: &Response) -> bool {
        let status = resp.status;
        if self.invite {
            match self.state {
                ClientState::Calling | ClientState::Proceeding => {
                    if status < 200 {
                        // Provisional: stop retransmitting; Timer B only runs in Calling.
                        self.state = ClientState::Proceeding;
                        self.out.stop_retransmit_and_timeout();
                    } else if status < 300 {
                        self.state = ClientState::Accepted;
                        self.out.stop_retransmit_and_timeout();
                        self.out.arm_linger(now, self.timers.t1x64());
                    } else {
                        let ack = self.build_ack(resp).encode();
                        self.out.send(ack.clone());
                        self.ack = Some(ack);
                        self.complete(now, self.timers.timer_d());
                    }
                    true
                }
                // RFC 6026 §8.4: every 2xx goes up (forks, retransmissions); the
                // rest are stray.
                ClientState::Accepted => (200..300).contains(&status),
                ClientState::Completed => {
                    if status >= 300 {
                        if let Some(ack) = &self.ack {
                            self.out.resend(ack.clone());
                        }
                    }
                    false
                }
                ClientState::Trying | ClientState::Terminated => false,
            }
        } else {
            match self.state {
                ClientState::Trying | ClientState::Proceeding => {
                    if status < 200 {
                        // Timer E keeps running; it switches to T2 when it next fires.
                        self.state = ClientState::Proceeding;
                    } else {
                        self.complete(now, self.timers.t4);
                    }
                    true
                }
                _ => false,
            }
        }
    }

    /// Fires every timer that is due at `now` (call it at `poll_timeout`; calling
    /// it early or twice is harmless).
    pub fn handle_timeout(&mut self, now: Instant) {
        while self.state != ClientState::Terminated {
            let Some(fired) = self.out.due(now) else {
                break;
            };
            match fired {
                Due::Timeout => {
                    // B or F: no final response in time.
                    let timer = if self.invite { 'B' } else { 'F' };
                    self.out.event(TxEvent::Timeout { timer });
                    self.terminate();
                }
                // D, K or M: nothing more to absorb.
                Due::Linger => self.terminate(),
                Due::Retransmit => {
                    self.out.resend(self.encoded.clone());
                    let interval = self.out.interval();
                    let next = if self.invite {
                        // Timer A doubles without a cap (§17.1.1.2); B ends it.
                        interval.saturating_mul(2)
                    } else if self.state == ClientState::Proceeding {
                        self.timers.t2
                    } else {
                        self.timers.backoff(interval)
                    };
                    self.out.arm_retransmit(now, next);
                }
            }
        }
    }

    /// The transport could not send our request (or ACK). Before a final
    /// response the TU learns it as `TransportError` (it answers 503); after one
    /// the transaction just ends, since the TU already has its answer.
    pub fn handle_transport_error(&mut self, _now: Instant) {
        match self.state {
            ClientState::Calling | ClientState::Trying | ClientState::Proceeding => {
                self.out.event(TxEvent::TransportError);
                self.terminate();
            }
            ClientState::Completed => self.terminate(),
            ClientState::Accepted | ClientState::Terminated => {}
        }
    }

    /// The next message to send, oldest first.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.out.poll_transmit()
    }

    /// When `handle_timeout` must next be called; `None` once nothing is pending.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.out.poll_timeout()
    }

    /// The next event for the TU, oldest first.
    pub fn poll_event(&mut self) -> Option<TxEvent> {
        self.out.poll_event()
    }

    /// The current state (for the TU's decisions and for logs).
    pub fn state(&self) -> ClientState {
        self.state
    }

    /// What is left to do (see [`Leftover`]): an INVITE transaction in Completed only
    /// re-sends its ACK to retransmitted non-2xx finals until Timer D; a non-INVITE
    /// one in Completed only absorbs retransmitted responses.
    pub fn leftover(&self) -> Leftover {
        match self.state {
            ClientState::Terminated => Leftover::Nothing,
            ClientState::Completed if !self.invite => Leftover::Nothing,
            ClientState::Completed => match (&self.ack, self.out.linger_at()) {
                (Some(data), Some(until)) => Leftover::Replay {
                    data: data.clone(),
                    until,
                },
                _ => Leftover::Nothing,
            },
            _ => Leftover::Busy,
        }
    }

    /// True once the transaction is over; the TU may drop it after draining
    /// `poll_transmit` (an ACK may still be queued).
    pub fn is_terminated(&self) -> bool {
        self.state == ClientState::Terminated
    }

    /// A final response arrived: absorb retransmissions of it for `linger`
    /// (Timer D or K), which is zero on reliable transports.
    fn complete(&mut self, now: Instant, linger: Duration) {
        self.state = ClientState::Completed;
        self.out.stop_retransmit_and_timeout();
        if self.reliable {
            self.terminate();
        } else {
            self.out.arm_linger(now, linger);
        }
    }

    fn terminate(&mut self) {
        self.state = ClientState::Terminated;
        self.out.terminate();
    }

    /// §17.1.1.3: the ACK for a non-2xx final belongs to the INVITE transaction
    /// and is built from the request, except To, which carries the response's tag.
    fn build_ack(&self, resp: &Response) -> Request {
        let req = &self.request;
        let mut ack = Request::new(Method::Ack, req.uri.clone());
        if let Some(line) = req.headers.get(HeaderName::Via) {
            if let Some(first) = crate::scan::first_comma_part(line) {
                ack.headers
                    .push(Header::new(HeaderName::Via, line.slice_ref(first)));
            }
        }
        for route in req.headers.iter().filter(|h| h.kind == HeaderName::Route) {
            ack.headers.push(route.clone());
        }
        ack.headers.add(HeaderName::MaxForwards, "70");
        if let Some(from) = req.headers.get(HeaderName::From) {
            ack.headers.add(HeaderName::From, from.clone());
        }
        if let Some(to) = resp.headers.get(HeaderName::To) {
            ack.headers.add(HeaderName::To, to.clone());
        }
        if let Some(call_id) = req.headers.call_id() {
            ack.headers.add(HeaderName::CallId, call_id.clone());
        }
        if let Some(cseq) = req.headers.cseq() {
            ack.headers
                .add(HeaderName::CSeq, format!("{} {}", cseq.seq, Method::Ack));
        }
        ack.headers.add(HeaderName::ContentLength, "0");
        ack
    }
}
