//! ACK and CANCEL: the ACK of each 2xx (held for a late offer's answer, re-sent for
//! retransmitted 2xx), the caller's CANCEL and our CANCEL toward the callee.

use super::{Call, CallState, ClientRole, Outgoing, SentAck, ServerRole};
use crate::event::{EndCause, Event, Leg, MediaOp};
use bytes::Bytes;
use std::time::Instant;
use trunkline_sip::transaction::{ClientState, ServerState, ServerTransaction, TxKey};
use trunkline_sip::{Dialog, HeaderName, Method, Peer, Request};

/// The CANCEL for a request we sent (RFC 3261 §9.1): same Request-URI, top Via,
/// From, To, Call-ID and Route; CSeq number with method CANCEL.
pub(super) fn cancel_for(invite: &Request) -> Request {
    let mut c = Request::new(Method::Cancel, invite.uri.clone());
    let h = &invite.headers;
    if let Some(v) = h.get(HeaderName::Via) {
        if let Some(first) = trunkline_sip::scan::first_comma_part(v) {
            c.headers.add(HeaderName::Via, v.slice_ref(first));
        }
    }
    c.headers.add(HeaderName::MaxForwards, "70");
    for kind in [HeaderName::From, HeaderName::To, HeaderName::CallId] {
        if let Some(v) = h.get(kind) {
            c.headers.add(kind, v.clone());
        }
    }
    if let Some(cs) = h.cseq() {
        c.headers
            .add(HeaderName::CSeq, format!("{} CANCEL", cs.seq));
    }
    for r in h.get_all(HeaderName::Route) {
        c.headers.add(HeaderName::Route, r.clone());
    }
    c
}

impl Call {
    pub(super) fn on_ack(&mut self, now: Instant, leg: Leg, ack: Request) {
        // ACK for a non-2xx final: same branch as the INVITE (hop-by-hop).
        if let Some(key) = TxKey::server(&ack) {
            if let Some(e) = self.servers.iter_mut().find(|e| {
                e.leg == leg && e.tx.key() == &key && e.tx.state() == ServerState::Completed
            }) {
                e.tx.handle_request(now, &ack);
                return;
            }
        }
        // ACK for a 2xx: a transaction of its own, matched by dialog and CSeq.
        let Some(seq) = ack.headers.cseq().map(|c| c.seq) else {
            return;
        };
        let Some(e) = self.servers.iter_mut().find(|e| {
            e.leg == leg
                && *e.tx.method() == Method::Invite
                && e.tx.state() == ServerState::Accepted
                && e.request.headers.cseq().is_some_and(|c| c.seq == seq)
        }) else {
            return;
        };
        let first = e.tx.handle_request(now, &ack);
        if !first {
            return;
        }
        // The caller has our 2xx, so it never retransmits this INVITE again: the
        // transaction would only wait out Timer L holding the request and the 2xx.
        // Dropping it now keeps an established call small (a stray copy of the
        // INVITE would be answered 482).
        let acked = e.id;
        self.servers.retain(|x| x.id != acked);
        if let Some(p) = self.pending_ack.take() {
            if p.leg == leg.other() {
                self.emit(
                    now,
                    Outgoing::Ack {
                        leg: p.leg,
                        seq: p.seq,
                        body: ack.body.clone(),
                        content_type: ack.headers.get(HeaderName::ContentType).cloned(),
                    },
                    Some(MediaOp::Answer { offerer: p.leg }),
                );
            } else {
                self.pending_ack = Some(p);
            }
        }
        if self.state == CallState::Established && !self.offer_in_progress {
            self.events.push_back(Event::Settled);
        }
    }

    /// Builds and sends the ACK for a 2xx on `leg`, remembering it for retransmitted 2xx.
    pub(super) fn send_ack(
        &mut self,
        leg: Leg,
        seq: u32,
        body: Bytes,
        content_type: Option<Bytes>,
    ) {
        let sent = SentAck {
            seq,
            branch: self.ids.branch(),
            body,
            content_type,
        };
        self.transmit_ack(leg, &sent, false);
        if let Some(l) = self.leg_mut(leg) {
            l.last_ack = Some(sent);
        }
        // The 2xx is ACKed: from here its retransmissions are the dialog's business
        // (RFC 3261 §13.2.2.4, `on_unmatched_response`), so the INVITE client
        // transaction need not wait out Timer M holding the request.
        self.clients.retain(|e| {
            !(e.leg == leg
                && e.tx.request().method == Method::Invite
                && e.tx.state() == ClientState::Accepted
                && e.tx.request().headers.cseq().is_some_and(|c| c.seq == seq))
        });
    }

    /// (Re)builds the ACK described by `sent` and puts it on the wire.
    pub(super) fn transmit_ack(&mut self, leg: Leg, sent: &SentAck, retransmission: bool) {
        let Some(l) = self.leg(leg) else { return };
        let Some(d) = l.dialog.as_ref() else { return };
        let via = l.local.via(sent.branch.clone());
        let mut ack = d.request(Method::Ack, sent.seq, &via, None);
        if let Some(ct) = &sent.content_type {
            if !sent.body.is_empty() {
                ack.headers.add(HeaderName::ContentType, ct.clone());
            }
        }
        ack.body = sent.body.clone();
        let peer = self.request_peer(leg);
        self.send_raw(leg, peer, ack.encode(), Method::Ack, retransmission);
    }

    /// Answers a retransmitted 2xx for CSeq `seq` on `leg` with our ACK again.
    pub(super) fn resend_ack(&mut self, leg: Leg, seq: u32) -> bool {
        let Some(sent) = self.leg(leg).and_then(|l| l.last_ack.clone()) else {
            return false;
        };
        if sent.seq != seq {
            return false;
        }
        self.transmit_ack(leg, &sent, true);
        true
    }

    pub(super) fn ack_and_bye_stray(&mut self, now: Instant, d: Dialog, seq: u32) {
        let Some(b) = self.b.as_ref() else { return };
        let local = b.local.clone();
        let peer = b.peer;
        self.ack_and_bye_dialog(now, Leg::B, &local, peer, d, seq);
    }

    /// ACKs the 2xx (CSeq `seq`) that made dialog `d`, which the call will not keep,
    /// and releases it with BYE (RFC 3261 §13.2.2.4).
    pub(super) fn ack_and_bye_dialog(
        &mut self,
        now: Instant,
        leg: Leg,
        local: &crate::config::Local,
        peer: Peer,
        mut d: Dialog,
        seq: u32,
    ) {
        let ack = d.request(Method::Ack, seq, &local.via(self.ids.branch()), None);
        self.send_raw(leg, peer, ack.encode(), Method::Ack, false);
        let bseq = d.next_seq();
        let bye = d.request(Method::Bye, bseq, &local.via(self.ids.branch()), None);
        self.send_request(now, leg, peer, bye, ClientRole::Bye);
    }

    pub(super) fn on_cancel(&mut self, now: Instant, leg: Leg, cancel: Request, source: Peer) {
        let target = TxKey::cancel_target(&cancel);
        let invite = self.servers.iter().find(|e| {
            e.leg == leg
                && *e.tx.method() == Method::Invite
                && matches!(e.role, ServerRole::Invite | ServerRole::Relay { .. })
                && Some(e.tx.key()) == target.as_ref()
        });
        let Some(invite) = invite else {
            self.respond_local(leg, cancel, source, 481);
            return;
        };
        let answered = invite.tx.last_status().is_some_and(|s| s >= 200);
        let relayed = match invite.role {
            ServerRole::Relay { client } => Some(client),
            _ => None,
        };
        let tx = ServerTransaction::new(
            now,
            &cancel,
            source.transport.is_reliable(),
            self.cfg.timers,
        );
        let sid = self.add_server(leg, source, tx, ServerRole::Cancel, cancel);
        self.respond_status(now, sid, 200);
        self.flush_server(sid);
        if answered {
            return;
        }
        match relayed {
            // A re-INVITE still pending on the other leg: cancel it there; its 487
            // (or the 2xx that crossed the CANCEL) comes back through the relay.
            Some(client) => self.cancel_client(now, client),
            None => self.caller_gave_up(now),
        }
    }

    /// Stops the B-leg INVITE (see `cancel_client`).
    pub(super) fn abandon_b(&mut self, now: Instant) {
        if let Some(cid) = self
            .clients
            .iter()
            .find(|e| e.role == ClientRole::Invite)
            .map(|e| e.id)
        {
            self.cancel_client(now, cid);
        }
    }

    /// Cancels our INVITE client transaction `cid`: at once if the far side has sent
    /// any response, else as soon as it sends one — a CANCEL must not overtake the
    /// INVITE it cancels (RFC 3261 §9.1). After the CANCEL the INVITE gets 64*T1 to
    /// end with a final response before it is given up.
    pub(super) fn cancel_client(&mut self, now: Instant, cid: u64) {
        let Some(e) = self.clients.iter_mut().find(|e| e.id == cid) else {
            return;
        };
        match e.tx.state() {
            ClientState::Proceeding => {
                e.give_up_at = Some(now + self.cfg.timers.t1x64());
                let (leg, peer, mut cancel) = (e.leg, e.peer, cancel_for(e.tx.request()));
                if let Some(reason) = &self.reason {
                    cancel.headers.add(HeaderName::Reason, reason.clone());
                }
                self.send_request(now, leg, peer, cancel, ClientRole::Cancel);
            }
            ClientState::Calling => e.cancel_on_response = true,
            _ => {}
        }
    }

    /// A response arrived for INVITE client `cid`: if we wanted it cancelled, this is
    /// the moment. True when the response was used up that way.
    pub(super) fn cancel_if_wanted(&mut self, now: Instant, cid: u64) -> bool {
        let Some(e) = self.clients.iter_mut().find(|e| e.id == cid) else {
            return false;
        };
        if !e.cancel_on_response {
            return false;
        }
        e.cancel_on_response = false;
        self.cancel_client(now, cid);
        true
    }

    /// The caller gave up (CANCEL, or BYE on its early dialog) before its INVITE had a
    /// final answer: the INVITE gets 487 and the callee leg goes — CANCELled if it has
    /// not answered, ACKed and BYE'd if its 2xx is already in (the 2xx may still be at
    /// the relay for its SDP: it is dropped, never sent after the 487).
    pub(super) fn caller_gave_up(&mut self, now: Instant) {
        if let Some(sid) = self.initial_invite_server() {
            self.drop_held_responses(sid);
        }
        if self.state == CallState::Established {
            if let Some(p) = self.pending_ack.take() {
                // Late offer: the answer would have come in the caller's ACK. The
                // callee still needs its ACK; the BYE follows at once.
                self.send_ack(p.leg, p.seq, Bytes::new(), None);
            }
            self.bye_leg(now, Leg::B);
            self.state = CallState::Ending;
        } else {
            self.abandon_b(now);
        }
        self.final_to_a(now, 487, EndCause::CallerCancel);
        self.flush_outbox(now);
    }
}
