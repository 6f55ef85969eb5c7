//! A peer's digest challenge to one of the call's requests (RFC 3261 §22.2): a trunk
//! that wants the node to authenticate answers the B-leg INVITE, a BYE or a relayed
//! re-INVITE with 401/407; where the leg has credentials, the request goes again with
//! an incremented CSeq, a new branch and the answer, and the caller never sees the
//! challenge.

use super::{Call, ClientRole};
use crate::config::PeerCredentials;
use crate::event::Leg;
use std::time::Instant;
use trunkline_sip::digest::{challenge_headers, Challenge};
use trunkline_sip::text::header_bytes;
use trunkline_sip::{HeaderName, Response};

/// Challenges answered per call at most: a peer that keeps challenging (a wrong
/// password it answers with `stale=true`, say) ends the exchange instead of looping.
const MAX_ANSWERS: u8 = 8;

impl Call {
    /// Sets what the node answers `leg`'s challenges with (`None`: relay them as
    /// failures). For a call adopted from another node, whose credentials are never in
    /// its snapshot.
    pub fn set_credentials(&mut self, leg: Leg, credentials: Option<PeerCredentials>) {
        if let Some(l) = self.leg_mut(leg) {
            l.credentials = credentials.map(std::sync::Arc::new);
        }
    }

    /// Re-sends client transaction `cid`'s request with credentials answering `resp`
    /// (a 401 or 407); false when there is nothing to answer with, the request already
    /// carried an answer the peer refused (a wrong password: the failure goes on as
    /// any other), or the challenge is not one this side can compute.
    pub(super) fn answer_challenge(
        &mut self,
        now: Instant,
        leg: Leg,
        cid: u64,
        resp: &Response,
    ) -> bool {
        let Some((want, answer)) = challenge_headers(resp.status) else {
            return false;
        };
        if self.auth_answers >= MAX_ANSWERS {
            return false;
        }
        let Some(creds) = self.leg(leg).and_then(|l| l.credentials.clone()) else {
            return false;
        };
        let Some(entry) = self.client(cid) else {
            return false;
        };
        // A dialog-forming INVITE counts its CSeq on from its own; a request within the
        // dialog takes the dialog's next number.
        let initial = match entry.role {
            ClientRole::Invite | ClientRole::OriginateA | ClientRole::OriginateB => true,
            ClientRole::Relay { .. } | ClientRole::Bye | ClientRole::AdoptReinvite => false,
            _ => return false,
        };
        // The peer's preferred algorithm first (RFC 8760 §2.4), among those we compute.
        let Some(ch) = resp.headers.get_all(want).find_map(|v| Challenge::parse(v)) else {
            return false;
        };
        let (role, peer) = (entry.role, entry.peer);
        let mut req = entry.tx.request().clone();
        let answered_before = req.headers.get_all(answer).next().is_some();
        if answered_before && !ch.stale {
            tracing::info!(realm = %ch.realm, status = resp.status, "the peer refused our credentials");
            return false;
        }
        let Some(old) = req.headers.cseq() else {
            return false;
        };
        let seq = match self.leg_mut(leg).and_then(|l| l.dialog.as_mut()) {
            Some(d) if !initial => d.next_seq(),
            _ => old.seq.wrapping_add(1),
        };
        let Some(local) = self.leg(leg).map(|l| l.local.clone()) else {
            return false;
        };
        let branch = self.ids.branch();
        let cnonce = self.ids.tag();
        let value = ch.answer(
            &creds.username,
            &creds.password,
            req.method.as_str(),
            &req.uri.to_string(),
            &cnonce,
            1,
        );
        let h = &mut req.headers;
        // Ours is the only Via: replaced in place.
        h.set(HeaderName::Via, header_bytes(&local.via(branch)));
        h.set(
            HeaderName::CSeq,
            header_bytes(&format_args!("{seq} {}", req.method.as_str())),
        );
        h.remove(answer);
        h.add(answer, value);
        self.auth_answers += 1;
        self.send_request(now, leg, peer, req, role);
        true
    }
}
