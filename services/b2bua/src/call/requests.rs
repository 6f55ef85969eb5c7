//! Requests from either leg: dialog and CSeq checks, BYE, and in-dialog requests relayed
//! to the other leg; the answers the call gives itself.

use super::{Call, CallState, ClientRole, Outgoing, ServerEntry, ServerRole};
use crate::event::{EndCause, Event, Leg, MediaOp, Transmit};
use crate::relay::copy_session_headers;
use bytes::Bytes;
use std::time::Instant;
use trunkline_sip::transaction::{ServerTransaction, TxKey};
use trunkline_sip::{HeaderName, Method, Peer, Request, Response};

/// Requests relayed inside an established dialog.
pub(super) fn is_relayed_in_dialog(m: &Method) -> bool {
    matches!(
        m,
        Method::Invite
            | Method::Update
            | Method::Info
            | Method::Message
            | Method::Notify
            | Method::Options
    )
}

impl Call {
    pub(super) fn on_request(&mut self, now: Instant, leg: Leg, req: Request, source: Peer) {
        if self.transfer.as_ref().is_some_and(|t| {
            t.leg() == leg
                && req
                    .headers
                    .call_id()
                    .is_some_and(|c| c[..] == *t.call_id().as_bytes())
        }) {
            self.on_transfer_request(now, req, source);
            return;
        }
        if req.method == Method::Ack {
            self.on_ack(now, leg, req);
            return;
        }
        // Retransmission of a request we already have a transaction for (the full key
        // only when a transaction has its branch: most requests are new).
        let branch = req.headers.top_branch().unwrap_or_default();
        let known = self
            .servers
            .iter()
            .any(|e| e.leg == leg && e.tx.key().branch().is_none_or(|b| b.as_bytes() == branch));
        if let Some(key) = known.then(|| TxKey::server(&req)).flatten() {
            if let Some(e) = self
                .servers
                .iter_mut()
                .find(|e| e.leg == leg && e.tx.key() == &key)
            {
                e.tx.handle_request(now, &req);
                self.events.push_back(Event::RetransmissionReceived { leg });
                return;
            }
        }
        if req.method == Method::Cancel {
            self.on_cancel(now, leg, req, source);
            return;
        }
        let Some(to_tag) = req.headers.to_tag() else {
            // A second dialog-forming request under this Call-ID that is not a
            // retransmission: a merged or looped request (RFC 3261 §8.2.2.2).
            let status = if req.method == Method::Invite {
                482
            } else {
                481
            };
            self.respond_local(leg, req, source, status);
            return;
        };
        let matches_dialog = self.leg(leg).is_some_and(|l| {
            l.tag.as_bytes() == to_tag
                && l.dialog.as_ref().is_some_and(|d| {
                    req.headers.from_tag().unwrap_or_default() == d.remote_tag.as_bytes()
                })
        });
        if !matches_dialog || self.state == CallState::Ended {
            self.respond_local(leg, req, source, 481);
            return;
        }
        let seq_ok = match (
            req.headers.cseq(),
            self.leg_mut(leg).and_then(|l| l.dialog.as_mut()),
        ) {
            (Some(c), Some(d)) => d.accept_remote_cseq(c.seq, &req.method),
            _ => false,
        };
        if !seq_ok {
            self.respond_local(leg, req, source, 500);
            return;
        }
        match req.method {
            Method::Bye => self.on_bye(now, leg, req, source),
            ref m if is_relayed_in_dialog(m) => self.relay_in_dialog(now, leg, req, source),
            Method::Prack => self.respond_local(leg, req, source, 481),
            Method::Extension(_) => self.respond_local(leg, req, source, 501),
            _ => self.respond_local(leg, req, source, 501),
        }
    }

    pub(super) fn on_bye(&mut self, now: Instant, leg: Leg, bye: Request, source: Peer) {
        let tx = ServerTransaction::new(now, &bye, source.transport.is_reliable(), self.cfg.timers);
        let sid = self.add_server(leg, source, tx, ServerRole::Bye, bye);
        self.respond_status(now, sid, 200);
        if leg == Leg::A && self.originating() {
            // The first party of a call the node places hung up while the second rings.
            self.flush_server(sid);
            self.originate_a_left(now);
            return;
        }
        if leg == Leg::A && self.initial_invite_server().is_some() {
            // BYE on the caller's early dialog, its INVITE still unanswered — even if the
            // callee's 2xx is in and waiting at the relay: 200 for the BYE, 487 for the
            // INVITE (RFC 3261 §15.1.2), and the callee leg goes.
            self.flush_server(sid);
            self.caller_gave_up(now);
            return;
        }
        if self.state == CallState::Established {
            self.bye_leg(now, leg.other());
            self.state = CallState::Ending;
            let cause = match leg {
                Leg::A => EndCause::CallerHangup,
                Leg::B => EndCause::CalleeHangup,
            };
            self.finish_keep_state(200, cause);
        }
    }

    /// A new request on `leg`'s dialog (the next CSeq, our Via; our Contact when
    /// `contact`, for a target refresh), and where it goes; `None` while the leg has no
    /// dialog.
    pub(super) fn dialog_request(
        &mut self,
        leg: Leg,
        method: Method,
        contact: bool,
    ) -> Option<(Peer, Request)> {
        let branch = self.ids.branch();
        let peer = self.request_peer(leg);
        let l = self.leg_mut(leg)?;
        let via = l.local.via(branch);
        let contact = contact.then(|| l.local.contact());
        let d = l.dialog.as_mut()?;
        let seq = d.next_seq();
        Some((peer, d.request(method, seq, &via, contact.as_ref())))
    }

    pub(super) fn bye_leg(&mut self, now: Instant, leg: Leg) {
        let Some((peer, mut bye)) = self.dialog_request(leg, Method::Bye, false) else {
            return;
        };
        if let Some(reason) = &self.reason {
            bye.headers.add(HeaderName::Reason, reason.clone());
        }
        self.send_request(now, leg, peer, bye, ClientRole::Bye);
    }

    /// Relays an in-dialog request (re-INVITE, UPDATE, INFO, MESSAGE, NOTIFY, OPTIONS)
    /// to the other leg.
    pub(super) fn relay_in_dialog(&mut self, now: Instant, leg: Leg, req: Request, source: Peer) {
        let offer = matches!(req.method, Method::Invite | Method::Update);
        if matches!(self.state, CallState::Ending | CallState::Ended) {
            self.respond_local(leg, req, source, 481);
            return;
        }
        // Before the answer, UPDATE (RFC 3311) and INFO (RFC 6086) may use the early
        // dialog once the callee has one; a re-INVITE may not.
        let early_ok = self.state == CallState::Early
            && matches!(req.method, Method::Update | Method::Info)
            && self.b.as_ref().is_some_and(|b| b.dialog.is_some());
        if self.state != CallState::Established && !early_ok {
            self.respond_local(leg, req, source, if offer { 491 } else { 481 });
            return;
        }
        if offer && self.offer_in_progress {
            self.respond_local(leg, req, source, 491);
            return;
        }
        let mf = req.headers.max_forwards().unwrap_or(70);
        if mf == 0 {
            self.respond_local(leg, req, source, 483);
            return;
        }
        if offer {
            self.refresh_target(leg, req.headers.contact(), source);
        }
        let other = leg.other();
        let Some((peer, mut out)) = self.dialog_request(other, req.method.clone(), offer) else {
            return;
        };
        let offer_is_invite = req.method == Method::Invite;
        out.headers
            .set(HeaderName::MaxForwards, (mf - 1).to_string());
        copy_session_headers(&req.headers, &mut out.headers);
        out.body = req.body.clone();
        let tx = ServerTransaction::new(now, &req, source.transport.is_reliable(), self.cfg.timers);
        let sid = self.alloc_id();
        let cid = self.alloc_id();
        self.servers.push(ServerEntry {
            id: sid,
            leg,
            peer: source,
            tx,
            role: ServerRole::Relay { client: cid },
            request: req,
        });
        if offer_is_invite {
            // The far side may take a while (a person picks up a re-INVITE's hold
            // prompt): stop the sender's retransmissions now (RFC 3261 §17.2.1).
            self.respond_status(now, sid, 100);
        }
        self.emit(
            now,
            Outgoing::Request {
                id: cid,
                leg: other,
                peer,
                req: out,
                role: ClientRole::Relay { server: sid },
            },
            offer.then_some(MediaOp::Offer { from: leg }),
        );
        if offer {
            self.offer_in_progress = true;
        }
    }

    /// Sends a response through server transaction `sid`, adding our tag and Contact
    /// where a dialog is being formed.
    pub(super) fn respond(&mut self, now: Instant, sid: u64, mut resp: Response) {
        let Some(e) = self.servers.iter().find(|e| e.id == sid) else {
            return;
        };
        let leg = e.leg;
        let method = e.tx.method().clone();
        // RFC 3261 §12.1.1: a response that creates the dialog carries the request's
        // Record-Route, so the caller's route set matches ours (its own topology).
        let record_route: Vec<Bytes> = if e.role == ServerRole::Invite {
            e.request
                .headers
                .get_all(HeaderName::RecordRoute)
                .cloned()
                .collect()
        } else {
            Vec::new()
        };
        let tag = self.leg(leg).map(|l| l.tag.clone());
        if resp.status > 100 {
            if let Some(tag) = &tag {
                resp.set_to_tag(tag);
            }
        }
        let forms_dialog = matches!(method, Method::Invite | Method::Update)
            && resp.status > 100
            && resp.status < 300;
        if forms_dialog && resp.headers.get(HeaderName::RecordRoute).is_none() {
            for rr in record_route {
                resp.headers.add(HeaderName::RecordRoute, rr);
            }
        }
        if forms_dialog && resp.headers.get(HeaderName::Contact).is_none() {
            if let Some(l) = self.leg(leg) {
                resp.headers
                    .add(HeaderName::Contact, l.local.contact().to_string());
            }
        }
        if method == Method::Invite && resp.status >= 200 && resp.status < 300 {
            resp.headers.add(HeaderName::Allow, self.cfg.allow);
        }
        if let Some(e) = self.servers.iter_mut().find(|e| e.id == sid) {
            e.tx.send_response(now, &resp);
        }
    }

    pub(super) fn respond_status(&mut self, now: Instant, sid: u64, status: u16) {
        if let Some(e) = self.server(sid) {
            let resp = e.request.make_response(status, None);
            self.respond(now, sid, resp);
        }
    }

    /// Answers a request that needs no transaction of ours beyond this response.
    /// Answers a request the call refuses (481, 491, 500, 501...) without a transaction:
    /// a peer, or an attacker, sending strays into a live call costs it no state. A
    /// retransmitted request is simply refused again.
    pub(super) fn respond_local(&mut self, leg: Leg, req: Request, source: Peer, status: u16) {
        let tag = self.leg(leg).map(|l| l.tag.clone());
        self.respond_local_as(leg, req, source, status, tag.as_deref());
    }

    /// `respond_local` for a dialog whose To-tag is `tag` (a transfer target's, which is
    /// not yet the leg's).
    pub(super) fn respond_local_as(
        &mut self,
        leg: Leg,
        req: Request,
        source: Peer,
        status: u16,
        tag: Option<&str>,
    ) {
        let mut resp = req.make_response(status, None);
        if req.headers.to_addr().is_some_and(|t| t.tag().is_none()) {
            if let Some(tag) = tag {
                resp.set_to_tag(tag);
            }
        }
        if status == 405 || status == 501 {
            resp.headers.add(HeaderName::Allow, self.cfg.allow);
        }
        if status == 500 {
            resp.headers.add(HeaderName::RetryAfter, "1");
        }
        self.transmits.push_back(Transmit {
            leg,
            peer: source,
            data: resp.encode(),
            method: req.method,
            status: Some(status),
            retransmission: false,
        });
    }
}
