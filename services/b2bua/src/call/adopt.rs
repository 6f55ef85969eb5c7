//! Taking over a settled call from a node that died (or handed it over while draining).
//!
//! The adopter restores both dialogs from the owner's snapshot and sends each leg a
//! re-INVITE from its own address: the Contact moves both endpoints' later requests to
//! this node, and the SDP offer (the other party's last SDP, through this node's relay
//! when media is anchored) moves their RTP here. Both are sent at once; the call is
//! adopted when both legs have accepted. A leg that refuses or never answers keeps
//! sending its audio to the dead node, so the call is hung up rather than left half
//! silent.

use super::{Call, CallState, ClientRole, Outgoing};
use crate::config::{CallConfig, Local};
use crate::event::{EndCause, Event, Leg, MediaOp};
use crate::ids::Ids;
use crate::snapshot::CallSnapshot;
use bytes::Bytes;
use std::sync::Arc;
use std::time::Instant;
use trunkline_sip::{HeaderName, Method, Peer, Response};

/// What the adopter needs besides the snapshot.
#[derive(Debug, Clone)]
pub struct Adoption {
    /// This node's address toward the caller and toward the callee.
    pub a_local: Local,
    pub b_local: Local,
    /// The last SDP each party sent, with its origin version already raised above
    /// what that party last received, so each endpoint sees a changed session.
    pub a_sdp: Bytes,
    pub b_sdp: Bytes,
    /// Seeds this node's identifier source for the call's new branches.
    pub seed: u64,
}

/// Where an adoption stands.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Adopting {
    /// Legs that accepted their re-INVITE (A, B).
    accepted: [bool; 2],
}

fn index(leg: Leg) -> usize {
    match leg {
        Leg::A => 0,
        Leg::B => 1,
    }
}

impl Call {
    /// Restores `snap` on this node and re-INVITEs both legs toward it. The outcome
    /// comes as `Event::Adopted`: with `ok`, the call goes on here (and `Event::Settled`
    /// follows, so it is replicated again); without, it is being hung up.
    pub fn adopt(
        now: Instant,
        cfg: Arc<CallConfig>,
        snap: CallSnapshot,
        adoption: Adoption,
    ) -> Call {
        let mut call = Call::restore(cfg, snap);
        // New branches carry this node's id: the dead node will not answer for them.
        call.ids = Ids::new(&call.cfg.node_id, adoption.seed);
        // Our side of each leg is this node's: its address in Via and Contact, and its
        // sockets (the owner's socket and connections died with it).
        call.a.local = adoption.a_local;
        call.a.peer.local = None;
        call.a.peer.connection = None;
        if let Some(b) = call.b.as_mut() {
            b.local = adoption.b_local;
            b.peer.local = None;
            b.peer.connection = None;
        }
        call.offer_in_progress = true;
        call.adopting = Some(Adopting::default());
        // Order matters with media anchored: A's SDP, as an offer from A, creates the
        // relay session and becomes B's offer; B's SDP, as the answer, becomes A's.
        call.adoption_reinvite(now, Leg::B, adoption.a_sdp, MediaOp::Offer { from: Leg::A });
        call.adoption_reinvite(
            now,
            Leg::A,
            adoption.b_sdp,
            MediaOp::Answer { offerer: Leg::A },
        );
        call.drain(now);
        call
    }

    /// The call is being adopted and not both legs have accepted yet.
    pub fn adopting(&self) -> bool {
        self.adopting.is_some()
    }

    fn adoption_reinvite(&mut self, now: Instant, leg: Leg, sdp: Bytes, op: MediaOp) {
        let Some((peer, mut req)) = self.dialog_request(leg, Method::Invite, true) else {
            return;
        };
        req.headers.add(
            HeaderName::ContentType,
            Bytes::from_static(b"application/sdp"),
        );
        req.body = sdp;
        let id = self.alloc_id();
        self.emit(
            now,
            Outgoing::Request {
                id,
                leg,
                peer,
                req,
                role: ClientRole::AdoptReinvite,
            },
            Some(op),
        );
    }

    /// A leg's answer to the adopter's re-INVITE.
    pub(super) fn on_adoption_response(
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
        let Some(seq) = self
            .client(cid)
            .and_then(|e| e.tx.request().headers.cseq())
            .map(|c| c.seq)
        else {
            return;
        };
        if resp.is_success() {
            if self.resend_ack(leg, seq) {
                return;
            }
            self.refresh_target(leg, resp.headers.contact(), source);
            self.send_ack(leg, seq, Bytes::new(), None);
            self.take_adoption_answer(leg, &resp);
            let Some(a) = self.adopting.as_mut() else {
                return;
            };
            a.accepted[index(leg)] = true;
            if a.accepted == [true, true] {
                self.adopting = None;
                self.offer_in_progress = false;
                self.events.push_back(Event::Adopted { ok: true });
                self.events.push_back(Event::Settled);
            }
            return;
        }
        self.adoption_failed(now, leg, resp.status);
    }

    /// A leg's SDP answer to the adopter's re-INVITE: the party's media as it is now,
    /// which may differ from the SDP the dead node last saw (another port or codec
    /// after a re-INVITE). The relay learns it as that party's answer (its address
    /// becomes the one expected, as after any answer), and it becomes the party's latest
    /// SDP, what a later adopter offers. Nothing is sent on: the other party already
    /// has this node's relay address, which does not change, so the relay's rewritten
    /// body is dropped (`media_done` files no answer for an id nothing waits on). The
    /// origin versions the parties see are untouched: the rewrite keeps the party's
    /// own, and nothing of it reaches the other party.
    fn take_adoption_answer(&mut self, leg: Leg, resp: &Response) {
        let ct = resp.headers.get(HeaderName::ContentType).map(|c| &c[..]);
        let Some((sdp, _)) = super::outbox::sdp_in(ct, &resp.body) else {
            return;
        };
        if sdp.is_empty() {
            return;
        }
        if self.cfg.keep_sdp {
            self.remember_sdp(leg, &sdp);
        }
        if self.anchor {
            let id = self.alloc_id();
            self.events.push_back(Event::Media {
                id,
                op: MediaOp::Answer {
                    offerer: leg.other(),
                },
                sdp,
            });
        }
    }

    /// A leg refused the re-INVITE, never answered it, or its SDP could not be anchored.
    pub(super) fn adoption_failed(&mut self, now: Instant, leg: Leg, status: u16) {
        if self.adopting.take().is_none() {
            return;
        }
        tracing::info!(?leg, status, "adoption refused by a leg: hanging up");
        self.offer_in_progress = false;
        self.events.push_back(Event::Adopted { ok: false });
        if self.state == CallState::Established {
            self.hangup(now, EndCause::MediaUnavailable);
        }
    }
}
