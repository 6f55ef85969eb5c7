//! Responses to the call's own requests on either leg (other than the initial INVITE's):
//! BYE, relayed in-dialog requests, and responses no transaction claims.

use super::{Call, CallState, ClientRole, Outgoing, PendingAck};
use crate::event::{Event, Leg, MediaOp};
use crate::relay::copy_session_headers;
use bytes::Bytes;
use std::time::Instant;
use trunkline_sip::transaction::{ClientState, TxKey};
use trunkline_sip::{HeaderName, Method, Peer, Response};

impl Call {
    pub(super) fn on_response(&mut self, now: Instant, leg: Leg, resp: Response, source: Peer) {
        let Some(key) = TxKey::client(&resp) else {
            return;
        };
        let Some(idx) = self
            .clients
            .iter()
            .position(|e| e.leg == leg && e.tx.key() == &key)
        else {
            self.on_unmatched_response(now, leg, resp);
            return;
        };
        let entry = &mut self.clients[idx];
        let deliver = entry.tx.handle_response(now, &resp);
        let (id, role) = (entry.id, entry.role);
        if role == ClientRole::Invite {
            // Any answer, a challenge included, shows the callee's trunk alive.
            self.provisional_at = None;
        }
        if !deliver {
            self.events.push_back(Event::RetransmissionReceived { leg });
            return;
        }
        if self.answer_challenge(now, leg, id, &resp) {
            return;
        }
        match role {
            ClientRole::Invite => self.on_b_invite_response(now, id, resp, source),
            ClientRole::Abandoned => self.on_abandoned_response(now, id, resp),
            ClientRole::Relay { server } => {
                self.on_relay_response(now, leg, id, server, resp, source)
            }
            ClientRole::OriginateA => self.on_originate_a_response(now, id, resp),
            ClientRole::OriginateB => self.on_originate_b_response(now, id, resp),
            ClientRole::TransferInvite => self.on_transfer_invite_response(now, id, resp),
            ClientRole::TransferReinvite => {
                self.on_transfer_reinvite_response(now, leg, id, resp, source)
            }
            ClientRole::AdoptReinvite => self.on_adoption_response(now, leg, id, resp, source),
            ClientRole::Bye if resp.status >= 200 => self.bye_done(),
            ClientRole::Cancel | ClientRole::Bye => {}
        }
    }

    /// A BYE of ours got its final answer (or none): once no BYE is outstanding on
    /// either leg, an ending call is over.
    pub(super) fn bye_done(&mut self) {
        let outstanding = self.clients.iter().any(|e| {
            e.role == ClientRole::Bye
                && matches!(e.tx.state(), ClientState::Trying | ClientState::Proceeding)
        });
        if self.state == CallState::Ending && !outstanding {
            self.state = CallState::Ended;
        }
    }

    pub(super) fn on_relay_response(
        &mut self,
        now: Instant,
        leg: Leg,
        cid: u64,
        sid: u64,
        resp: Response,
        source: Peer,
    ) {
        if resp.status < 200 && self.cancel_if_wanted(now, cid) {
            return;
        }
        if resp.status == 100 {
            return;
        }
        let Some(server) = self.server(sid) else {
            return;
        };
        let origin = server.leg;
        let method = server.request.method.clone();
        let mut out = server.request.make_response(resp.status, None);
        copy_session_headers(&resp.headers, &mut out.headers);
        out.body = resp.body.clone();
        let is_offer = matches!(method, Method::Invite | Method::Update);
        let origin_offered = !server.request.body.is_empty();
        let holds = origin_offered && crate::hold::sdp_holds(&server.request.body);
        if method == Method::Invite && resp.is_success() {
            let Some(out_req) = self.client(cid).map(|e| e.tx.request().clone()) else {
                return;
            };
            let seq = out_req.headers.cseq().map(|c| c.seq).unwrap_or(0);
            if self.resend_ack(leg, seq) {
                return;
            }
            self.refresh_target(leg, resp.headers.contact(), source);
            if out_req.body.is_empty() && !resp.body.is_empty() {
                self.pending_ack = Some(PendingAck { leg, seq });
            } else {
                self.send_ack(leg, seq, Bytes::new(), None);
            }
        }
        if method == Method::Update && resp.is_success() {
            // A 2xx to UPDATE is a target refresh too (RFC 3311 §5.1).
            self.refresh_target(leg, resp.headers.contact(), source);
        }
        if resp.status >= 200 && is_offer {
            self.offer_in_progress = false;
        }
        let op = if !is_offer || resp.status >= 300 {
            None
        } else if origin_offered {
            Some(MediaOp::Answer { offerer: origin })
        } else {
            Some(MediaOp::Offer { from: leg })
        };
        self.emit(now, Outgoing::Response { sid, resp: out }, op);
        if resp.status >= 200 && is_offer && self.state == CallState::Established {
            if resp.is_success() && origin_offered {
                self.events.push_back(Event::Hold {
                    by: origin,
                    held: holds,
                });
            }
            self.events.push_back(Event::Settled);
        }
    }

    /// A response no transaction claims. A retransmitted 2xx to an INVITE we already
    /// ACKed gets the same ACK again; a 2xx from another fork of our INVITE is ACKed
    /// and hung up. Anything else is dropped.
    pub(super) fn on_unmatched_response(&mut self, now: Instant, leg: Leg, resp: Response) {
        let Some(cseq) = resp.headers.cseq() else {
            return;
        };
        if cseq.method != Method::Invite || !resp.is_success() {
            return;
        }
        let Some(l) = self.leg(leg) else { return };
        let Some(d) = l.dialog.as_ref() else { return };
        let to_tag = resp.headers.to_tag().unwrap_or_default();
        if to_tag == d.remote_tag.as_bytes() {
            if self.resend_ack(leg, cseq.seq) {
                self.events.push_back(Event::RetransmissionReceived { leg });
            }
            return;
        }
        if leg == Leg::B && cseq.seq == 1 {
            let mut stray = d.clone();
            stray.remote_tag = String::from_utf8_lossy(to_tag).into_owned();
            stray.refresh_target(resp.headers.contact());
            if let Some(mut rr) = resp.headers.name_addrs(HeaderName::RecordRoute) {
                rr.reverse();
                stray.route_set = rr;
            }
            self.ack_and_bye_stray(now, stray, cseq.seq);
        }
    }
}
