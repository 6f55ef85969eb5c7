//! The transaction table of both legs: starting client and server transactions, draining
//! what they send and what happened to them, and forgetting the finished ones.

use super::{Call, CallState, ClientEntry, ClientRole, Outgoing, ServerEntry, ServerRole};
use crate::event::{EndCause, Event, Leg, Transmit};
use std::time::Instant;
use trunkline_sip::transaction::{
    ClientState, ClientTransaction, ServerState, ServerTransaction, TxEvent,
};
use trunkline_sip::{Method, Peer, Request};

/// The status code of an encoded response, for metrics.
pub(super) fn status_of(data: &[u8]) -> Option<u16> {
    if data.len() < 12 || !data.starts_with(b"SIP/2.0 ") {
        return None;
    }
    std::str::from_utf8(&data[8..11]).ok()?.parse().ok()
}

/// What a server transaction's transmit looks like on the call's wire queue.
fn server_transmit(e: &ServerEntry, t: trunkline_sip::transaction::Transmit) -> Transmit {
    Transmit {
        leg: e.leg,
        peer: e.peer,
        method: e.tx.method().clone(),
        status: status_of(&t.data),
        data: t.data,
        retransmission: t.retransmission,
    }
}

impl Call {
    pub(super) fn alloc_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    pub(super) fn add_server(
        &mut self,
        leg: Leg,
        peer: Peer,
        tx: ServerTransaction,
        role: ServerRole,
        request: Request,
    ) -> u64 {
        let id = self.alloc_id();
        self.servers.push(ServerEntry {
            id,
            leg,
            peer,
            tx,
            role,
            request,
        });
        id
    }

    pub(super) fn server(&self, id: u64) -> Option<&ServerEntry> {
        self.servers.iter().find(|e| e.id == id)
    }

    pub(super) fn client(&self, id: u64) -> Option<&ClientEntry> {
        self.clients.iter().find(|e| e.id == id)
    }

    /// Starts a client transaction on `leg` for `req`, sent to `peer` — behind any
    /// message still waiting in the outbox, so a request never overtakes a response
    /// the relay is rewriting (the callee's BYE after the 200 it crosses).
    pub(super) fn send_request(
        &mut self,
        now: Instant,
        leg: Leg,
        peer: Peer,
        req: Request,
        role: ClientRole,
    ) -> u64 {
        let id = self.alloc_id();
        self.emit(
            now,
            Outgoing::Request {
                id,
                leg,
                peer,
                req,
                role,
            },
            None,
        );
        id
    }

    pub(super) fn start_client(
        &mut self,
        now: Instant,
        id: u64,
        leg: Leg,
        peer: Peer,
        req: Request,
        role: ClientRole,
    ) {
        let tx = ClientTransaction::new(now, req, peer.transport.is_reliable(), self.cfg.timers);
        self.clients.push(ClientEntry {
            id,
            leg,
            peer,
            tx,
            role,
            cancel_on_response: false,
            give_up_at: None,
        });
    }

    /// Puts what server transaction `sid` has to send on the wire queue now, ahead of
    /// what other transactions queue in the same step (a CANCEL's 200 before the
    /// INVITE's 487, RFC 3261 §9.2).
    pub(super) fn flush_server(&mut self, sid: u64) {
        let Some(e) = self.servers.iter_mut().find(|e| e.id == sid) else {
            return;
        };
        while let Some(t) = e.tx.poll_transmit() {
            self.transmits.push_back(server_transmit(e, t));
        }
    }

    /// Collects what every transaction wants to send and what happened to them, reacts
    /// to timeouts, and forgets terminated transactions.
    pub(super) fn drain(&mut self, now: Instant) {
        if self.ended {
            self.abandon_transfer(now);
        }
        loop {
            let mut happened: Vec<(bool, u64, TxEvent)> = Vec::new();
            for e in &mut self.servers {
                while let Some(t) = e.tx.poll_transmit() {
                    self.transmits.push_back(server_transmit(e, t));
                }
                while let Some(ev) = e.tx.poll_event() {
                    happened.push((true, e.id, ev));
                }
            }
            for e in &mut self.clients {
                while let Some(t) = e.tx.poll_transmit() {
                    let method = if t.data.starts_with(b"ACK ") {
                        Method::Ack
                    } else {
                        e.tx.request().method.clone()
                    };
                    self.transmits.push_back(Transmit {
                        leg: e.leg,
                        peer: e.peer,
                        method,
                        status: None,
                        data: t.data,
                        retransmission: t.retransmission,
                    });
                }
                while let Some(ev) = e.tx.poll_event() {
                    happened.push((false, e.id, ev));
                }
            }
            if happened.is_empty() {
                break;
            }
            for (server, id, ev) in happened {
                if server {
                    self.on_server_event(now, id, ev);
                } else {
                    self.on_client_event(now, id, ev);
                }
            }
        }
        self.servers.retain(|e| !e.tx.is_terminated());
        self.clients.retain(|e| !e.tx.is_terminated());
        let bye_outstanding = self.clients.iter().any(|e| {
            e.role == ClientRole::Bye
                && matches!(e.tx.state(), ClientState::Trying | ClientState::Proceeding)
        });
        if self.state == CallState::Ended && !bye_outstanding {
            // Once both dialogs are gone, an INVITE transaction in Accepted only waits out
            // Timers L/M to absorb retransmissions of an INVITE or 2xx whose dialog no
            // longer exists; anything that still arrives gets a stateless 481. Dropping
            // them keeps a hung-up call from holding its INVITEs for 64*T1.
            self.servers
                .retain(|e| e.tx.state() != ServerState::Accepted);
            self.clients
                .retain(|e| e.tx.state() != ClientState::Accepted);
        }
    }

    pub(super) fn on_server_event(&mut self, now: Instant, sid: u64, ev: TxEvent) {
        let Some((leg, role)) = self.server(sid).map(|e| (e.leg, e.role)) else {
            return;
        };
        match ev {
            TxEvent::Timeout { timer } => {
                self.events
                    .push_back(Event::TransactionTimeout { leg, timer });
            }
            TxEvent::NoAck => {
                self.events
                    .push_back(Event::TransactionTimeout { leg, timer: 'L' });
                if matches!(role, ServerRole::Invite | ServerRole::Relay { .. })
                    && matches!(self.state, CallState::Established)
                {
                    // RFC 3261 §13.3.1.4: no ACK for our 2xx ends the dialog.
                    self.bye_leg(now, Leg::A);
                    self.bye_leg(now, Leg::B);
                    self.state = CallState::Ending;
                    self.finish_keep_state(200, EndCause::NoAck);
                }
            }
            TxEvent::TransportError | TxEvent::Terminated => {}
        }
    }

    pub(super) fn on_client_event(&mut self, now: Instant, cid: u64, ev: TxEvent) {
        let Some((leg, role)) = self.client(cid).map(|e| (e.leg, e.role)) else {
            return;
        };
        let (status, cause) = match ev {
            TxEvent::Timeout { timer } => {
                self.events
                    .push_back(Event::TransactionTimeout { leg, timer });
                (408, EndCause::NoAnswer)
            }
            TxEvent::TransportError => (503, EndCause::TransportError),
            TxEvent::NoAck | TxEvent::Terminated => return,
        };
        match role {
            ClientRole::Invite => {
                if self.try_failover(status) {
                    return;
                }
                if matches!(self.state, CallState::Calling | CallState::Early) {
                    self.final_to_a(now, status, cause);
                }
            }
            ClientRole::Relay { server } => {
                let is_offer = self
                    .server(server)
                    .is_some_and(|e| matches!(e.request.method, Method::Invite | Method::Update));
                if is_offer {
                    self.offer_in_progress = false;
                }
                self.respond_status(now, server, status);
            }
            ClientRole::OriginateA => self.originate_failed(now, Leg::A, status, cause),
            ClientRole::OriginateB => self.originate_failed(now, Leg::B, status, cause),
            ClientRole::TransferInvite => self.transfer_invite_failed(now, status),
            ClientRole::TransferReinvite => self.transfer_reinvite_failed(now, status, true),
            ClientRole::AdoptReinvite => self.adoption_failed(now, leg, status),
            ClientRole::Bye => self.bye_done(),
            // Given up already: the call has moved on to another trunk.
            ClientRole::Cancel | ClientRole::Abandoned => {}
        }
    }
}
