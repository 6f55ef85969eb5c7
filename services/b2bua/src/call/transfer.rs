//! Blind transfer done by the node itself: one leg of an established call is replaced
//! by a new party, and neither endpoint needs to support REFER.
//!
//! The node calls the target with an INVITE without SDP (late offer), so the target's
//! 2xx carries its own offer. That offer goes to the remaining leg in a re-INVITE (through
//! the relay as an offer of the moved leg, so the relay's side for it now expects the
//! target); the remaining leg's answer goes back to the target in the ACK. Only then is
//! the old party released with BYE. This is RFC 3725's flow I, run on one leg of a call
//! that is already up; until the remaining leg has accepted, the call goes on as it was.

use super::invite::fresh_invite;
use super::targets::leg_peer;
use super::{Call, CallState, ClientRole, LegState, Outgoing};
use crate::config::Local;
use crate::event::{Event, Leg, MediaOp};
use crate::relay::copy_session_headers;
use bytes::Bytes;
use std::time::Instant;
use trunkline_sip::transaction::ClientState;
use trunkline_sip::{Dialog, HeaderName, Method, Peer, Request, Response, Uri};

/// Where a transferred leg goes: the first hop and the Request-URI of the new INVITE.
#[derive(Debug, Clone)]
pub struct TransferTarget {
    pub peer: Peer,
    /// Our address toward the target.
    pub local: Local,
    pub request_uri: Uri,
}

/// Why a transfer cannot start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TransferError {
    #[error("the call is not established")]
    NotEstablished,
    #[error("another transfer or an offer/answer exchange is in progress")]
    Busy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Our INVITE is out to the target (client transaction `cid`).
    Calling { cid: u64 },
    /// The target answered our INVITE (CSeq `seq`) with its offer; the re-INVITE that
    /// carries it is out to the remaining leg.
    Answered { seq: u32 },
    /// Given up before the target answered (CANCEL sent): a 2xx that still comes is
    /// ACKed and released.
    Abandoned { cid: u64 },
}

/// A transfer in progress.
pub(super) struct Transfer {
    /// The leg being replaced.
    leg: Leg,
    /// The target's side, which becomes `leg` once the remaining leg accepts.
    new: LegState,
    phase: Phase,
    /// When a target that has not answered is given up (the call's ring limit).
    deadline: Option<Instant>,
}

impl Transfer {
    pub(super) fn deadline(&self) -> Option<Instant> {
        match self.phase {
            Phase::Calling { .. } => self.deadline,
            _ => None,
        }
    }

    /// The Call-ID of the target's side: requests that name it belong to the transfer.
    pub(super) fn call_id(&self) -> &str {
        &self.new.call_id
    }

    pub(super) fn leg(&self) -> Leg {
        self.leg
    }
}

impl Call {
    /// Starts a blind transfer of `leg` to `target`: the target is called, and on its
    /// answer the other leg is re-INVITEd toward it and the old party gets BYE.
    /// The outcome comes as `Event::Transferred` or `Event::TransferFailed`.
    pub fn transfer(
        &mut self,
        now: Instant,
        leg: Leg,
        target: TransferTarget,
    ) -> Result<(), TransferError> {
        if self.state != CallState::Established || self.ended {
            return Err(TransferError::NotEstablished);
        }
        if self.transfer.is_some() || self.offer_in_progress || self.pending_ack.is_some() {
            return Err(TransferError::Busy);
        }
        // The target sees the party it is being connected to.
        let Some(party) = self
            .leg(leg.other())
            .and_then(|l| l.dialog.as_ref())
            .map(|d| d.remote_uri.clone())
        else {
            return Err(TransferError::NotEstablished);
        };
        let call_id = self.ids.call_id();
        let tag = self.ids.tag();
        let branch = self.ids.branch();
        let local = target.local;
        let req = fresh_invite(
            &self.cfg,
            &local,
            &target.request_uri,
            target.peer,
            (party.uri.user().map(str::to_string), party.display),
            &call_id,
            &tag,
            branch,
        );
        let cid = self.send_request(now, leg, target.peer, req, ClientRole::TransferInvite);
        self.transfer = Some(Transfer {
            leg,
            new: LegState::new(target.peer, local, call_id, tag),
            phase: Phase::Calling { cid },
            deadline: Some(now + self.cfg.no_answer),
        });
        // Neither side may start an offer of its own while the legs are being swapped.
        self.offer_in_progress = true;
        self.drain(now);
        Ok(())
    }

    /// The Call-ID and our tag of a transfer target's dialog, while one is being called:
    /// the driver routes what names them to this call, on the transferred leg.
    pub fn transfer_key(&self) -> Option<(&str, &str)> {
        self.transfer
            .as_ref()
            .map(|t| (t.new.call_id.as_str(), t.new.tag.as_str()))
    }

    /// A response of the target to our INVITE.
    pub(super) fn on_transfer_invite_response(&mut self, now: Instant, cid: u64, resp: Response) {
        if resp.status < 200 && self.cancel_if_wanted(now, cid) {
            return;
        }
        if resp.status < 200 {
            return;
        }
        let Some(req) = self.client(cid).map(|e| e.tx.request().clone()) else {
            return;
        };
        let Some(t) = self.transfer.as_ref() else {
            // Already over (the call ended and the target was released).
            if resp.is_success() {
                self.release_stray_answer(now, cid, &req, &resp);
            }
            return;
        };
        let (leg, phase) = (t.leg, t.phase);
        match phase {
            Phase::Calling { .. } if resp.is_success() => {
                self.on_target_answer(now, leg, &req, resp)
            }
            Phase::Calling { .. } => self.transfer_failed(now, resp.status, false),
            Phase::Abandoned { .. } => {
                if resp.is_success() {
                    self.release_stray_answer(now, cid, &req, &resp);
                }
                self.transfer = None;
            }
            // A retransmitted 2xx while the remaining leg decides: our ACK comes with
            // its answer.
            Phase::Answered { .. } => {}
        }
    }

    /// The target answered: its offer goes to the remaining leg in a re-INVITE.
    fn on_target_answer(&mut self, now: Instant, leg: Leg, req: &Request, resp: Response) {
        let seq = req.headers.cseq().map(|c| c.seq).unwrap_or(1);
        let dialog = match Dialog::uac(req, &resp) {
            Ok(d) if !resp.body.is_empty() => d,
            Ok(d) => {
                // We made no offer, so the 2xx must carry one (RFC 3264 §4).
                self.ack_and_bye_target(now, d, seq);
                self.transfer_failed(now, 488, false);
                return;
            }
            Err(e) => {
                tracing::debug!(error = %e, "transfer target's 2xx makes no usable dialog");
                if let Some(d) = super::invite::lenient_dialog(req, &resp) {
                    self.ack_and_bye_target(now, d, seq);
                }
                self.transfer_failed(now, 502, false);
                return;
            }
        };
        if let Some(t) = self.transfer.as_mut() {
            // `Dialog::uac` took the 2xx's Contact as the remote target.
            t.new.dialog = Some(dialog);
            t.phase = Phase::Answered { seq };
        }
        self.events.push_back(Event::TransferAnswered { leg });
        let remaining = leg.other();
        let Some((peer, mut out)) = self.dialog_request(remaining, Method::Invite, true) else {
            return;
        };
        copy_session_headers(&resp.headers, &mut out.headers);
        out.body = resp.body.clone();
        let id = self.alloc_id();
        self.emit(
            now,
            Outgoing::Request {
                id,
                leg: remaining,
                peer,
                req: out,
                role: ClientRole::TransferReinvite,
            },
            Some(MediaOp::Offer { from: leg }),
        );
    }

    /// The remaining leg's answer to the re-INVITE that carries the target's offer.
    pub(super) fn on_transfer_reinvite_response(
        &mut self,
        now: Instant,
        leg: Leg,
        cid: u64,
        resp: Response,
        source: Peer,
    ) {
        if resp.status < 200 {
            return;
        }
        let Some(req) = self.client(cid).map(|e| e.tx.request().clone()) else {
            return;
        };
        let rseq = req.headers.cseq().map(|c| c.seq).unwrap_or(0);
        if resp.is_success() {
            if self.resend_ack(leg, rseq) {
                return;
            }
            self.refresh_target(leg, resp.headers.contact(), source);
            self.send_ack(leg, rseq, Bytes::new(), None);
        }
        let Some(t) = self.transfer.as_ref() else {
            return;
        };
        let Phase::Answered { seq } = t.phase else {
            return;
        };
        if !resp.is_success() {
            // The remaining leg keeps its old session. With media anchored, the relay's
            // side of the moved leg already expects the target, so the old party's audio
            // cannot be trusted to flow again: the call ends rather than going on silent.
            let anchored = self.anchor;
            self.transfer_failed(now, resp.status, anchored);
            return;
        }
        let Some(t) = self.transfer.take() else {
            return;
        };
        let moved = t.leg;
        let old = match moved {
            Leg::A => std::mem::replace(&mut self.a, t.new),
            Leg::B => match self.b.replace(t.new) {
                Some(old) => old,
                None => return,
            },
        };
        let content_type = resp.headers.get(HeaderName::ContentType).cloned();
        self.emit(
            now,
            Outgoing::Ack {
                leg: moved,
                seq,
                body: resp.body.clone(),
                content_type,
            },
            Some(MediaOp::Answer { offerer: moved }),
        );
        self.bye_old_party(now, moved, old);
        self.offer_in_progress = false;
        self.events.push_back(Event::Transferred { leg: moved });
        self.events.push_back(Event::Settled);
    }

    /// The re-INVITE toward the remaining leg could not be sent (the relay could not
    /// anchor the target's offer: `sent` false) or got no answer (timeout, transport
    /// error). Unsent, nothing changed anywhere and the call goes on; unanswered, no one
    /// knows which session the remaining party now has, so the call ends rather than
    /// going on with audio that may go nowhere.
    pub(super) fn transfer_reinvite_failed(&mut self, now: Instant, status: u16, sent: bool) {
        if self
            .transfer
            .as_ref()
            .is_some_and(|t| matches!(t.phase, Phase::Answered { .. }))
        {
            self.transfer_failed(now, status, sent);
        }
    }

    /// The target's INVITE transaction ended without a final response.
    pub(super) fn transfer_invite_failed(&mut self, now: Instant, status: u16) {
        match self.transfer.as_ref().map(|t| t.phase) {
            Some(Phase::Calling { .. }) => self.transfer_failed(now, status, false),
            Some(Phase::Abandoned { .. }) => self.transfer = None,
            _ => {}
        }
    }

    /// A request on the transferred leg that names the target's dialog.
    pub(super) fn on_transfer_request(&mut self, now: Instant, req: Request, source: Peer) {
        let Some(t) = self.transfer.as_ref() else {
            return;
        };
        let (leg, tag) = (t.leg, t.new.tag.clone());
        let ours = req.headers.to_tag() == Some(tag.as_bytes());
        if req.method == Method::Bye && ours && matches!(t.phase, Phase::Answered { .. }) {
            // The target hung up before the remaining leg took its session.
            self.respond_local_as(leg, req, source, 200, Some(&tag));
            if let Some(t) = self.transfer.as_mut() {
                // Nothing to release on its side any more.
                t.new.dialog = None;
            }
            // The remaining party may be taking the target's session right now: with the
            // target gone, that session goes nowhere, so the call ends.
            self.transfer_failed(now, 487, true);
            return;
        }
        let status = if req.method == Method::Invite {
            491
        } else {
            481
        };
        if req.method != Method::Ack {
            self.respond_local_as(leg, req, source, status, Some(&tag));
        }
    }

    /// Gives up a transfer: the target is cancelled or released, the call goes on with
    /// its old legs (or is hung up when `end_call`), and the driver hears why.
    fn transfer_failed(&mut self, now: Instant, status: u16, end_call: bool) {
        let Some(t) = self.transfer.take() else {
            return;
        };
        match t.phase {
            Phase::Calling { cid } => {
                let pending = self.client(cid).is_some_and(|e| {
                    matches!(e.tx.state(), ClientState::Calling | ClientState::Proceeding)
                });
                if pending {
                    self.cancel_client(now, cid);
                    // Kept until the INVITE ends, to release a 2xx that crosses the CANCEL.
                    self.transfer = Some(Transfer {
                        phase: Phase::Abandoned { cid },
                        ..t
                    });
                }
            }
            Phase::Answered { seq } => {
                if let Some(d) = t.new.dialog.clone() {
                    let peer = leg_peer(&t.new);
                    self.ack_and_bye_dialog(now, t.leg, &t.new.local, peer, d, seq);
                }
            }
            Phase::Abandoned { .. } => {
                self.transfer = Some(t);
                return;
            }
        }
        self.offer_in_progress = false;
        self.events
            .push_back(Event::TransferFailed { leg: t.leg, status });
        if end_call && self.state == CallState::Established {
            self.hangup(now, crate::event::EndCause::MediaUnavailable);
        }
    }

    /// The call is over while a transfer runs: the target goes too.
    pub(super) fn abandon_transfer(&mut self, now: Instant) {
        if self
            .transfer
            .as_ref()
            .is_some_and(|t| !matches!(t.phase, Phase::Abandoned { .. }))
        {
            self.transfer_failed(now, 487, false);
        }
    }

    /// Gives up a target that has not answered within the call's ring limit.
    pub(super) fn transfer_timeout(&mut self, now: Instant) {
        if self
            .transfer
            .as_ref()
            .and_then(Transfer::deadline)
            .is_some_and(|t| t <= now)
        {
            self.transfer_failed(now, 408, false);
        }
    }

    /// ACK and BYE for the target's 2xx on a dialog the call will not keep.
    fn ack_and_bye_target(&mut self, now: Instant, d: Dialog, seq: u32) {
        let Some(t) = self.transfer.as_ref() else {
            return;
        };
        let (leg, local, peer) = (t.leg, t.new.local.clone(), leg_peer(&t.new));
        self.ack_and_bye_dialog(now, leg, &local, peer, d, seq);
    }

    /// A 2xx from a target the transfer no longer wants.
    fn release_stray_answer(&mut self, now: Instant, cid: u64, req: &Request, resp: &Response) {
        let Some((leg, peer)) = self.client(cid).map(|e| (e.leg, e.peer)) else {
            return;
        };
        let seq = req.headers.cseq().map(|c| c.seq).unwrap_or(1);
        let local = self
            .transfer
            .as_ref()
            .map(|t| t.new.local.clone())
            .or_else(|| self.leg(leg).map(|l| l.local.clone()));
        let (Some(local), Some(d)) = (
            local,
            Dialog::uac(req, resp)
                .ok()
                .or_else(|| super::invite::lenient_dialog(req, resp)),
        ) else {
            return;
        };
        self.ack_and_bye_dialog(now, leg, &local, peer, d, seq);
    }

    /// The transferred-away party: BYE on its dialog, which the call no longer holds.
    fn bye_old_party(&mut self, now: Instant, leg: Leg, old: LegState) {
        let peer = match leg {
            Leg::A => old.peer,
            Leg::B => leg_peer(&old),
        };
        let Some(mut d) = old.dialog else { return };
        let seq = d.next_seq();
        let bye = d.request(Method::Bye, seq, &old.local.via(self.ids.branch()), None);
        self.send_request(now, leg, peer, bye, ClientRole::Bye);
    }
}
