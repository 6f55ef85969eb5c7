//! Calls the node places itself: third-party call control as RFC 3725 §4.1 (flow I)
//! describes it. The node calls the first party (A) without an offer; A's 2xx carries
//! its offer, which goes (through the relay, as A's offer) to the second party (B) in
//! a new INVITE; B's answer goes back to A in the ACK. Once both are up the call is an
//! ordinary two-leg call, except that both legs are dialogs the node opened.
//!
//! Flow I keeps A's 2xx un-ACKed while B rings, and A gives up after 64*T1 (RFC 3261
//! §13.3.1.4), so B gets at most that long to answer, whatever the ring limit. Either
//! party failing ends the other cleanly: a ringing B is cancelled, an answered A is
//! ACKed and released with BYE.

use super::invite::fresh_invite;
use super::targets::leg_peer;
use super::{Call, CallState, ClientRole, LegState, Outgoing};
use crate::config::{CallConfig, Local};
use crate::event::{EndCause, Event, Leg, MediaOp};
use crate::ids::Ids;
use crate::relay::copy_session_headers;
use bytes::Bytes;
use std::sync::Arc;
use std::time::Instant;
use trunkline_sip::transaction::ClientState;
use trunkline_sip::{Dialog, HeaderName, Peer, Request, Response, Uri};

/// One party of a call the node places: where its INVITE goes, from which of our
/// addresses, and its Request-URI.
#[derive(Debug, Clone)]
pub struct Party {
    pub peer: Peer,
    pub local: Local,
    pub request_uri: Uri,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Our INVITE is out to A.
    CallingA,
    /// A answered (CSeq `a_seq`) with its offer, which is out to B.
    CallingB { a_seq: u32 },
}

/// A call being placed, until both parties are up.
pub(super) struct Originate {
    b: Party,
    phase: Phase,
}

impl Call {
    /// Places a call between `a` and `b`: A is called first, and B once A has answered.
    /// `anchor`: media goes through the relay (`Event::Media`). The outcome comes as for
    /// any call: `Event::Answered` when both are up, or `Event::Ended`.
    pub fn originate(
        now: Instant,
        cfg: Arc<CallConfig>,
        seed: u64,
        a: Party,
        b: Party,
        anchor: bool,
    ) -> Call {
        let mut ids = Ids::new(&cfg.node_id, seed);
        let call_id = ids.call_id();
        let tag = ids.tag();
        let branch = ids.branch();
        // Each party sees the other's number as the caller.
        let shown_to_a = b.request_uri.user().map(str::to_string);
        let req = fresh_invite(
            &cfg,
            &a.local,
            &a.request_uri,
            a.peer,
            (shown_to_a, None),
            &call_id,
            &tag,
            branch,
        );
        let mut call = Call::blank(
            cfg,
            ids,
            LegState::new(a.peer, a.local.clone(), call_id, tag),
        );
        call.anchor = anchor;
        call.initial_offerer = Some(Leg::A);
        call.send_request(now, Leg::A, a.peer, req, ClientRole::OriginateA);
        call.state = CallState::Calling;
        call.no_answer_at = Some(now + call.cfg.no_answer);
        call.originate = Some(Originate {
            b,
            phase: Phase::CallingA,
        });
        call.drain(now);
        call
    }

    /// True while the node is still bringing up the parties of a call it places.
    pub(super) fn originating(&self) -> bool {
        self.originate.is_some()
    }

    /// A's answer to our INVITE.
    pub(super) fn on_originate_a_response(&mut self, now: Instant, cid: u64, resp: Response) {
        if self.provisional(now, cid, resp.status) {
            return;
        }
        let Some(req) = self.client(cid).map(|e| e.tx.request().clone()) else {
            return;
        };
        let seq = req.headers.cseq().map(|c| c.seq).unwrap_or(1);
        let calling_a = self
            .originate
            .as_ref()
            .is_some_and(|o| o.phase == Phase::CallingA);
        if !resp.is_success() {
            if calling_a {
                self.originate = None;
                self.finish(resp.status, EndCause::Rejected);
            }
            return;
        }
        if !calling_a {
            if self.originate.is_none() && self.a.dialog.is_none() {
                // A answered after we gave up on it: ACK and release.
                self.release_answer(now, Leg::A, &req, &resp);
            }
            // Otherwise a retransmitted 2xx: our ACK comes with B's answer.
            return;
        }
        let dialog = match Dialog::uac(&req, &resp) {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!(error = %e, "first party's 2xx makes no usable dialog");
                self.release_answer(now, Leg::A, &req, &resp);
                self.originate = None;
                self.finish(502, EndCause::Rejected);
                return;
            }
        };
        self.a.dialog = Some(dialog);
        if resp.body.is_empty() {
            // We made no offer, so the 2xx must carry one (RFC 3264 §4).
            self.send_ack(Leg::A, seq, Bytes::new(), None);
            self.bye_leg(now, Leg::A);
            self.originate = None;
            self.state = CallState::Ending;
            self.finish_keep_state(488, EndCause::Rejected);
            return;
        }
        self.call_b(now, seq, &resp);
    }

    /// Sends B the INVITE with A's offer.
    fn call_b(&mut self, now: Instant, a_seq: u32, a_answer: &Response) {
        let Some(o) = self.originate.as_mut() else {
            return;
        };
        o.phase = Phase::CallingB { a_seq };
        let b = o.b.clone();
        let call_id = self.ids.call_id();
        let tag = self.ids.tag();
        let branch = self.ids.branch();
        let shown_to_b = self
            .a
            .dialog
            .as_ref()
            .and_then(|d| d.remote_uri.uri.user().map(str::to_string));
        let mut req = fresh_invite(
            &self.cfg,
            &b.local,
            &b.request_uri,
            b.peer,
            (shown_to_b, None),
            &call_id,
            &tag,
            branch,
        );
        copy_session_headers(&a_answer.headers, &mut req.headers);
        req.body = a_answer.body.clone();
        self.open_b(
            now,
            LegState::new(b.peer, b.local, call_id, tag),
            req,
            ClientRole::OriginateB,
        );
        // A retransmits its 2xx for 64*T1 at most while it waits for our ACK.
        let limit = self.cfg.no_answer.min(self.cfg.timers.t1x64());
        self.no_answer_at = Some(now + limit);
    }

    /// B's answer to our INVITE.
    pub(super) fn on_originate_b_response(&mut self, now: Instant, cid: u64, resp: Response) {
        if self.provisional(now, cid, resp.status) {
            return;
        }
        let Some(req) = self.client(cid).map(|e| e.tx.request().clone()) else {
            return;
        };
        let seq = req.headers.cseq().map(|c| c.seq).unwrap_or(1);
        let a_seq = match self.originate.as_ref().map(|o| o.phase) {
            Some(Phase::CallingB { a_seq }) => a_seq,
            _ => {
                let confirmed = self
                    .b
                    .as_ref()
                    .and_then(|b| b.dialog.as_ref())
                    .is_some_and(|d| resp.headers.to_tag() == Some(d.remote_tag.as_bytes()));
                if resp.is_success() && confirmed {
                    self.resend_ack(Leg::B, seq);
                } else if resp.is_success() {
                    // Answered after we gave up on it: ACK and release.
                    self.release_answer(now, Leg::B, &req, &resp);
                }
                return;
            }
        };
        if !resp.is_success() {
            let status = super::invite::map_final_status(resp.status, self.cfg.trunk_503_status);
            self.release_a(now, a_seq);
            self.originate = None;
            self.finish_keep_state(status, EndCause::Rejected);
            return;
        }
        let dialog = match Dialog::uac(&req, &resp) {
            Ok(d) if !resp.body.is_empty() => d,
            other => {
                tracing::debug!(
                    ok = other.is_ok(),
                    "second party's 2xx has no answer or makes no dialog"
                );
                self.release_answer(now, Leg::B, &req, &resp);
                self.release_a(now, a_seq);
                self.originate = None;
                self.finish_keep_state(502, EndCause::Rejected);
                return;
            }
        };
        if let Some(b) = self.b.as_mut() {
            b.dialog = Some(dialog);
        }
        self.send_ack(Leg::B, seq, Bytes::new(), None);
        self.emit(
            now,
            Outgoing::Ack {
                leg: Leg::A,
                seq: a_seq,
                body: resp.body.clone(),
                content_type: resp.headers.get(HeaderName::ContentType).cloned(),
            },
            Some(MediaOp::Answer { offerer: Leg::A }),
        );
        self.originate = None;
        self.state = CallState::Established;
        self.no_answer_at = None;
        self.max_duration_at = self.cfg.max_duration.map(|d| now + d);
        self.events.push_back(Event::Answered);
        self.events.push_back(Event::Settled);
    }

    /// An INVITE of the call being placed ended without a final response (timeout,
    /// transport error), or B's could not be anchored.
    pub(super) fn originate_failed(
        &mut self,
        now: Instant,
        leg: Leg,
        status: u16,
        cause: EndCause,
    ) {
        match (self.originate.as_ref().map(|o| o.phase), leg) {
            (Some(Phase::CallingA), Leg::A) => {
                self.originate = None;
                self.finish(status, cause);
            }
            (Some(Phase::CallingB { a_seq }), Leg::B) => {
                self.release_a(now, a_seq);
                self.originate = None;
                self.finish_keep_state(status, cause);
            }
            _ => {}
        }
    }

    /// Gives up placing the call (ring limit, an operator's hang-up, A hung up): the
    /// INVITE still out is cancelled and an answered A released.
    pub(super) fn originate_abort(&mut self, now: Instant, status: u16, cause: EndCause) {
        let Some(o) = self.originate.take() else {
            return;
        };
        let pending = self
            .clients
            .iter()
            .find(|e| {
                matches!(e.role, ClientRole::OriginateA | ClientRole::OriginateB)
                    && matches!(e.tx.state(), ClientState::Calling | ClientState::Proceeding)
            })
            .map(|e| e.id);
        if let Some(cid) = pending {
            self.cancel_client(now, cid);
        }
        if let Phase::CallingB { a_seq } = o.phase {
            if self.a.dialog.is_some() {
                self.release_a(now, a_seq);
            }
        }
        self.finish_keep_state(status, cause);
        if self.state != CallState::Ending {
            self.state = CallState::Ended;
        }
    }

    /// A hung up (BYE) while B was being called: B is cancelled, nothing more owed to A.
    pub(super) fn originate_a_left(&mut self, now: Instant) {
        self.a.dialog = None;
        self.originate_abort(now, 487, EndCause::CallerHangup);
    }

    /// ACK for A's 2xx (without an answer: none will come) and BYE.
    fn release_a(&mut self, now: Instant, a_seq: u32) {
        self.send_ack(Leg::A, a_seq, Bytes::new(), None);
        self.bye_leg(now, Leg::A);
        self.state = CallState::Ending;
    }

    /// ACK and BYE for a 2xx on `leg` whose dialog the call does not keep.
    fn release_answer(&mut self, now: Instant, leg: Leg, req: &Request, resp: &Response) {
        let Some(l) = self.leg(leg) else { return };
        let (local, peer) = (l.local.clone(), leg_peer(l));
        let seq = req.headers.cseq().map(|c| c.seq).unwrap_or(1);
        let d = Dialog::uac(req, resp)
            .ok()
            .or_else(|| super::invite::lenient_dialog(req, resp));
        if let Some(d) = d {
            self.ack_and_bye_dialog(now, leg, &local, peer, d, seq);
        }
    }

    /// A provisional answer to one of our INVITEs: the moment to CANCEL it if we want to,
    /// else progress to report. False for a final answer.
    fn provisional(&mut self, now: Instant, cid: u64, status: u16) -> bool {
        if status >= 200 {
            return false;
        }
        if !self.cancel_if_wanted(now, cid) && status > 100 {
            self.progress(status);
        }
        true
    }

    fn progress(&mut self, status: u16) {
        if self.state == CallState::Calling {
            self.state = CallState::Early;
        }
        self.events.push_back(Event::Progress {
            status,
            early_media: false,
        });
    }
}
