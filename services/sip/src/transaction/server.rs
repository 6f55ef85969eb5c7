//! Server transactions: RFC 3261 §17.2.1 (INVITE, Fig. 7, with the RFC 6026
//! Accepted state and Timer L) and §17.2.2 (non-INVITE, Fig. 8).
//!
//! In Accepted the transaction also does the UAS core's 2xx retransmission
//! (§13.3.1.4), so the TU has one object to drive per INVITE.

use super::outbox::{Due, Outbox};
use super::{Leftover, ServerState, Timers, Transmit, TxEvent, TxKey};
use crate::message::{Request, Response};
use crate::method::Method;
use bytes::Bytes;
use std::time::Instant;

/// One received request and the responses the TU sends to it. Holds only the
/// key, the method and the encoded last response: no parsed copies.
#[derive(Debug)]
pub struct ServerTransaction {
    /// Also gives the method: a server transaction is never created for an ACK,
    /// so the key's method is the request's.
    key: TxKey,
    invite: bool,
    reliable: bool,
    timers: Timers,
    state: ServerState,
    /// The last response sent, as encoded; retransmissions re-send these bytes.
    last_response: Option<Bytes>,
    last_status: Option<u16>,
    /// Accepted only: the ACK for our 2xx has arrived.
    acked: bool,
    /// Retransmit is Timer G (non-2xx final) or the §13.3.1.4 2xx
    /// retransmission; timeout is H (no ACK for our non-2xx final); linger is
    /// I, J or L.
    out: Outbox,
}

impl ServerTransaction {
    /// Created by the TU for a new request (not for ACK). INVITE → Proceeding (the
    /// TU sends 100 itself), others → Trying. The TU validates the request first
    /// (§8.2); for one without Via, Call-ID or CSeq the key degrades to whatever
    /// parts exist.
    pub fn new(_now: Instant, request: &Request, reliable: bool, timers: Timers) -> Self {
        let key = TxKey::server(request).unwrap_or_else(|| TxKey::degraded(request));
        let invite = request.method == Method::Invite;
        ServerTransaction {
            key,
            invite,
            reliable,
            timers,
            state: if invite {
                ServerState::Proceeding
            } else {
                ServerState::Trying
            },
            last_response: None,
            last_status: None,
            acked: false,
            out: Outbox::default(),
        }
    }

    /// The key requests are matched with (see [`TxKey::server`]).
    pub fn key(&self) -> &TxKey {
        &self.key
    }

    /// The method of the request that created the transaction.
    pub fn method(&self) -> &Method {
        self.key.method()
    }

    /// A retransmission of the request (or, for INVITE, an ACK) matched this
    /// transaction. Returns true only when the TU must see it: an ACK arriving in
    /// Accepted (the first ACK for our 2xx; the UAC's re-ACKs of retransmitted
    /// 2xx are absorbed so the B2BUA relays the ACK once).
    /// Retransmitted requests make it re-send the last response (queued,
    /// retransmission=true) — except in Accepted, where the 2xx retransmission
    /// timer already covers it and RFC 6026 absorbs them; an ACK in Completed
    /// moves to Confirmed (Timer I = T4, zero when reliable).
    pub fn handle_request(&mut self, now: Instant, req: &Request) -> bool {
        let is_ack = req.method == Method::Ack;
        if self.invite {
            match self.state {
                ServerState::Proceeding if !is_ack => self.resend_last(),
                ServerState::Completed if is_ack => {
                    self.state = ServerState::Confirmed;
                    self.out.stop_retransmit_and_timeout();
                    if self.reliable {
                        self.terminate();
                    } else {
                        self.out.arm_linger(now, self.timers.t4);
                    }
                }
                ServerState::Completed => self.resend_last(),
                ServerState::Accepted if is_ack => {
                    let first = !self.acked;
                    self.acked = true;
                    self.out.stop_retransmit();
                    return first;
                }
                _ => {}
            }
        } else if !is_ack && matches!(self.state, ServerState::Proceeding | ServerState::Completed)
        {
            self.resend_last();
        }
        false
    }

    /// The TU's response. INVITE: 1xx → stay Proceeding; 2xx → Accepted (RFC 6026,
    /// Timer L = 64*T1); in Accepted the transaction ALSO performs the UAS core's
    /// 2xx retransmission of §13.3.1.4 (retransmit the 2xx at T1, 2T1, ... capped
    /// at T2, on reliable transports too: §13.3.1.4 makes no exception) until an
    /// ACK arrives via handle_request (then stop retransmitting, terminate when
    /// Timer L fires) or 64*T1 passes without ACK → TxEvent::NoAck then
    /// Terminated. 3xx-6xx → Completed with Timer G (retransmit the final, T1
    /// doubling to T2, unreliable only) and Timer H = 64*T1 → Timeout{timer:'H'}
    /// and Terminated. Non-INVITE: 1xx → Proceeding, final → Completed with
    /// Timer J = 64*T1 (zero when reliable) → Terminated. Responses after a final
    /// (other than INVITE 2xx in Accepted, which are sent and become the one
    /// retransmitted) are ignored.
    pub fn send_response(&mut self, now: Instant, resp: &Response) {
        let status = resp.status;
        if self.invite {
            match self.state {
                ServerState::Proceeding => {
                    self.send(resp);
                    if (200..300).contains(&status) {
                        self.state = ServerState::Accepted;
                        self.out.arm_linger(now, self.timers.t1x64());
                        // §13.3.1.4 applies on every transport (unlike Timer G).
                        self.out.arm_retransmit(now, self.timers.t1);
                    } else if status >= 300 {
                        self.state = ServerState::Completed;
                        self.out.arm_timeout(now, self.timers.t1x64());
                        self.arm_retransmit(now);
                    }
                }
                ServerState::Accepted if (200..300).contains(&status) => self.send(resp),
                _ => {}
            }
        } else {
            match self.state {
                ServerState::Trying | ServerState::Proceeding => {
                    self.send(resp);
                    if status < 200 {
                        self.state = ServerState::Proceeding;
                    } else {
                        self.state = ServerState::Completed;
                        if self.reliable {
                            self.terminate();
                        } else {
                            self.out.arm_linger(now, self.timers.t1x64());
                        }
                    }
                }
                _ => {}
            }
        }
    }

    /// Fires every timer that is due at `now` (call it at `poll_timeout`; calling
    /// it early or twice is harmless).
    pub fn handle_timeout(&mut self, now: Instant) {
        while self.state != ServerState::Terminated {
            let Some(fired) = self.out.due(now) else {
                break;
            };
            match fired {
                Due::Timeout => {
                    // H: the ACK for our non-2xx never came.
                    self.out.event(TxEvent::Timeout { timer: 'H' });
                    self.terminate();
                }
                Due::Linger => {
                    // I, J or L. L without an ACK means the 2xx was never acknowledged.
                    if self.state == ServerState::Accepted && !self.acked {
                        self.out.event(TxEvent::NoAck);
                    }
                    self.terminate();
                }
                Due::Retransmit => {
                    // G, or the §13.3.1.4 2xx retransmission.
                    self.resend_last();
                    let next = self.timers.backoff(self.out.interval());
                    self.out.arm_retransmit(now, next);
                }
            }
        }
    }

    /// The transport could not send our response: inform the TU and end
    /// (§17.2.4). In Accepted the state is kept (RFC 6026 §7.1) so the ACK is
    /// still matched and the 2xx retried; Timer L ends it.
    pub fn handle_transport_error(&mut self, _now: Instant) {
        match self.state {
            ServerState::Trying
            | ServerState::Proceeding
            | ServerState::Completed
            | ServerState::Confirmed => {
                self.out.event(TxEvent::TransportError);
                self.terminate();
            }
            ServerState::Accepted | ServerState::Terminated => {}
        }
    }

    /// The next message to send, oldest first.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.out.poll_transmit()
    }

    /// When `handle_timeout` must next be called; `None` once nothing is pending
    /// (or while waiting for the TU's response).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.out.poll_timeout()
    }

    /// The next event for the TU, oldest first.
    pub fn poll_event(&mut self) -> Option<TxEvent> {
        self.out.poll_event()
    }

    /// The current state (for the TU's decisions and for logs).
    pub fn state(&self) -> ServerState {
        self.state
    }

    /// True once the transaction is over; the TU may drop it after draining
    /// `poll_transmit`.
    pub fn is_terminated(&self) -> bool {
        self.state == ServerState::Terminated
    }

    /// The last response sent (for CANCEL handling and for logs).
    pub fn last_status(&self) -> Option<u16> {
        self.last_status
    }

    /// What is left to do (see [`Leftover`]): a non-INVITE transaction in Completed
    /// only re-sends its final response to retransmitted requests until Timer J; an
    /// INVITE transaction in Confirmed, or in Accepted once ACKed, only absorbs.
    pub fn leftover(&self) -> Leftover {
        match self.state {
            ServerState::Terminated | ServerState::Confirmed => Leftover::Nothing,
            ServerState::Accepted if self.acked => Leftover::Nothing,
            ServerState::Completed if !self.invite => {
                match (&self.last_response, self.out.linger_at()) {
                    (Some(data), Some(until)) => Leftover::Replay {
                        data: data.clone(),
                        until,
                    },
                    _ => Leftover::Nothing,
                }
            }
            _ => Leftover::Busy,
        }
    }

    fn send(&mut self, resp: &Response) {
        let data = resp.encode();
        self.out.send(data.clone());
        self.last_response = Some(data);
        self.last_status = Some(resp.status);
    }

    fn resend_last(&mut self) {
        if let Some(data) = &self.last_response {
            self.out.resend(data.clone());
        }
    }

    /// Starts Timer G at T1, on unreliable transports only.
    fn arm_retransmit(&mut self, now: Instant) {
        if !self.reliable {
            self.out.arm_retransmit(now, self.timers.t1);
        }
    }

    fn terminate(&mut self) {
        self.state = ServerState::Terminated;
        self.out.terminate();
    }
}
