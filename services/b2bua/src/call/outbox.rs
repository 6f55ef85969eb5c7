//! The call's output queue: messages wait here, in send order, while the media relay
//! rewrites an SDP body ahead of them (`Event::Media` / `Call::handle_media`).

use super::{Call, CallState, ClientRole, MediaFailure, ServerRole};
use crate::event::{EndCause, Event, Leg, MediaOp, Transmit};
use crate::multipart;
use bytes::Bytes;
use std::ops::Range;
use std::time::Instant;
use trunkline_sip::{HeaderName, Method, Peer, Request, Response};

/// A message waiting its turn behind a media rewrite.
pub(super) struct Held {
    /// Media request id; 0 when this message needs no rewrite and only keeps its place.
    media: u64,
    /// Where the SDP sent to the relay sits in a multipart body (its rewrite is spliced
    /// in there); `None` when the whole body is the SDP.
    part: Option<Range<usize>>,
    out: Outgoing,
    done: Option<Result<Bytes, MediaFailure>>,
}

/// A message the call is about to send, in a form that can wait for its body.
// Most outgoing messages are requests or responses of similar size; an ACK waits here
// only for a late offer's answer, so boxing the big variants would cost an allocation per
// message to spare a few bytes on a rare one.
#[allow(clippy::large_enum_variant)]
pub(super) enum Outgoing {
    Request {
        id: u64,
        leg: Leg,
        peer: Peer,
        req: Request,
        role: ClientRole,
    },
    Response {
        sid: u64,
        resp: Response,
    },
    Ack {
        leg: Leg,
        seq: u32,
        body: Bytes,
        content_type: Option<Bytes>,
    },
}

impl Outgoing {
    pub(super) fn body(&self) -> &Bytes {
        match self {
            Outgoing::Request { req, .. } => &req.body,
            Outgoing::Response { resp, .. } => &resp.body,
            Outgoing::Ack { body, .. } => body,
        }
    }

    /// The raw Content-Type value (parameters and their case kept: a multipart
    /// boundary is case-sensitive).
    pub(super) fn content_type(&self) -> Option<&[u8]> {
        match self {
            Outgoing::Request { req, .. } => req.headers.get(HeaderName::ContentType),
            Outgoing::Response { resp, .. } => resp.headers.get(HeaderName::ContentType),
            Outgoing::Ack { content_type, .. } => content_type.as_ref(),
        }
        .map(|c| &c[..])
    }

    /// The SDP the relay must anchor, and where it sits in the body: all of an
    /// `application/sdp` body, or the one SDP part of a `multipart/mixed` body (SIP-I/
    /// SIP-T trunks put ISUP beside it, RFC 3204). `None` for any other body, and for a
    /// multipart body whose SDP cannot be told apart safely: it is sent un-anchored,
    /// exactly as it came, rather than with a part mangled.
    pub(super) fn sdp(&self) -> Option<(Bytes, Option<Range<usize>>)> {
        sdp_in(self.content_type(), self.body())
    }

    pub(super) fn set_body(&mut self, body: Bytes) {
        match self {
            Outgoing::Request { req, .. } => req.body = body,
            Outgoing::Response { resp, .. } => resp.body = body,
            Outgoing::Ack { body: b, .. } => *b = body,
        }
    }

    /// Puts the relay's rewritten SDP in place: the whole body, or only the SDP part's
    /// range of a multipart body (every other byte kept). Content-Length follows, as
    /// the serialiser writes it from the body.
    pub(super) fn set_sdp(&mut self, part: Option<Range<usize>>, sdp: Bytes) {
        let Some(r) = part else {
            self.set_body(sdp);
            return;
        };
        match multipart::splice(self.body(), r, &sdp) {
            Some(body) => self.set_body(body),
            // Cannot happen (the range came from this body); if it did, the body
            // leaves as it came rather than corrupted.
            None => tracing::debug!("multipart SDP range outside the body: not anchored"),
        }
    }
}

/// The SDP in a body of Content-Type `ct` (see `Outgoing::sdp`).
pub(super) fn sdp_in(ct: Option<&[u8]>, body: &Bytes) -> Option<(Bytes, Option<Range<usize>>)> {
    let ct = ct?;
    if is_sdp_type(ct) {
        return Some((body.clone(), None));
    }
    if !multipart::is_multipart_mixed(ct) {
        return None;
    }
    match multipart::sdp_part(ct, body) {
        Ok(r) if r.start <= r.end && r.end <= body.len() => Some((body.slice(r.clone()), Some(r))),
        Ok(_) => None,
        Err(e) => {
            tracing::debug!(
                reason = %e,
                content_type = %String::from_utf8_lossy(ct),
                body_len = body.len(),
                "multipart body not anchored: sent as it came"
            );
            None
        }
    }
}

/// An `application/sdp` Content-Type value (parameters ignored, case-insensitive).
pub(super) fn is_sdp_type(ct: &[u8]) -> bool {
    ct.trim_ascii_start()
        .get(..15)
        .is_some_and(|t| t.eq_ignore_ascii_case(b"application/sdp"))
}

impl Call {
    /// Files the relay's answer for media request `id` and sends what it unblocks.
    pub(super) fn media_done(
        &mut self,
        now: Instant,
        id: u64,
        result: Result<Bytes, MediaFailure>,
    ) {
        if let Some(h) = self
            .outbox
            .iter_mut()
            .find(|h| h.media == id && h.done.is_none())
        {
            h.done = Some(result);
        }
        self.flush_outbox(now);
    }

    /// Sends `out`, first through the media relay when `op` says its SDP body must be
    /// anchored; keeps the call's output in order while a rewrite is outstanding.
    pub(super) fn emit(&mut self, now: Instant, out: Outgoing, op: Option<MediaOp>) {
        if self.cfg.keep_sdp {
            self.keep_sdp(&out, op);
        }
        let media = match op {
            Some(op) if self.anchor && !out.body().is_empty() => {
                out.sdp().map(|(sdp, part)| (op, sdp, part))
            }
            _ => None,
        };
        match media {
            Some((op, sdp, part)) => {
                let id = self.alloc_id();
                self.events.push_back(Event::Media { id, op, sdp });
                self.outbox.push_back(Held {
                    media: id,
                    part,
                    out,
                    done: None,
                });
            }
            _ if !self.outbox.is_empty() => self.outbox.push_back(Held {
                media: 0,
                part: None,
                out,
                done: None,
            }),
            _ => self.send_outgoing(now, out),
        }
    }

    /// Forgets every response to server transaction `sid` still waiting in the outbox:
    /// the request was answered otherwise in the meantime (a CANCEL won the race).
    pub(super) fn drop_held_responses(&mut self, sid: u64) {
        self.outbox
            .retain(|h| !matches!(h.out, Outgoing::Response { sid: s, .. } if s == sid));
    }

    /// Sends held output whose turn has come.
    pub(super) fn flush_outbox(&mut self, now: Instant) {
        while let Some(front) = self.outbox.front() {
            if front.media != 0 && front.done.is_none() {
                break;
            }
            let Some(h) = self.outbox.pop_front() else {
                break;
            };
            match h.done {
                None => self.send_outgoing(now, h.out),
                Some(Ok(sdp)) => {
                    let mut out = h.out;
                    out.set_sdp(h.part, sdp);
                    self.send_outgoing(now, out);
                }
                Some(Err(f)) => self.media_failed(now, h.out, f),
            }
        }
    }

    /// Remembers the SDP of an offer or answer as its sender's latest (copied: the body
    /// is a slice of the whole received message, which should not live as long as the
    /// call).
    fn keep_sdp(&mut self, out: &Outgoing, op: Option<MediaOp>) {
        let Some(op) = op else { return };
        if out.body().is_empty() {
            return;
        }
        let Some((sdp, _)) = out.sdp() else { return };
        let party = match op {
            MediaOp::Offer { from } => from,
            MediaOp::Answer { offerer } => offerer.other(),
        };
        self.remember_sdp(party, &sdp);
    }

    /// Files `sdp` as `party`'s latest (copied, see `keep_sdp`).
    pub(super) fn remember_sdp(&mut self, party: Leg, sdp: &[u8]) {
        let slot = self.sdps.get_or_insert_with(Box::default);
        slot[match party {
            Leg::A => 0,
            Leg::B => 1,
        }] = Bytes::copy_from_slice(sdp);
    }

    /// A body the relay could not anchor. Nothing leaves with the far side's SDP
    /// un-anchored (that would route one party's media around the node, or to an
    /// address it cannot reach): a request carrying it is refused; a provisional goes
    /// without its body; the callee's 2xx to the caller's INVITE becomes the relay's
    /// status toward the caller and a BYE toward the callee; the other leg's 2xx to a
    /// relayed re-INVITE or UPDATE becomes that status toward its sender; an ACK that
    /// should carry a late offer's answer goes bare, and the call is hung up, since one
    /// side now has no answer.
    pub(super) fn media_failed(&mut self, now: Instant, out: Outgoing, f: MediaFailure) {
        match out {
            Outgoing::Request {
                role: ClientRole::Invite,
                ..
            } => self.final_to_a(now, f.status, EndCause::MediaUnavailable),
            Outgoing::Request {
                role: ClientRole::Relay { server },
                req,
                ..
            } => {
                if matches!(req.method, Method::Invite | Method::Update) {
                    self.offer_in_progress = false;
                }
                self.respond_status(now, server, f.status);
            }
            Outgoing::Request {
                role: ClientRole::TransferReinvite,
                ..
            } => self.transfer_reinvite_failed(now, f.status, false),
            Outgoing::Request {
                role: ClientRole::OriginateB,
                ..
            } => self.originate_failed(now, Leg::B, f.status, EndCause::MediaUnavailable),
            Outgoing::Request {
                role: ClientRole::AdoptReinvite,
                leg,
                ..
            } => self.adoption_failed(now, leg, f.status),
            Outgoing::Request { .. } => self.send_outgoing(now, out),
            Outgoing::Response { sid, mut resp } if resp.status < 200 => {
                resp.body = Bytes::new();
                resp.headers.remove(HeaderName::ContentType);
                self.send_outgoing(now, Outgoing::Response { sid, resp });
            }
            Outgoing::Response { sid, .. } => {
                let initial = self
                    .server(sid)
                    .is_some_and(|e| e.role == ServerRole::Invite);
                self.respond_status(now, sid, f.status);
                if let Some(p) = self.pending_ack.take() {
                    // The late offer's answer will never come: ACK bare, then hang up.
                    self.send_ack(p.leg, p.seq, Bytes::new(), None);
                    self.hangup(now, EndCause::MediaUnavailable);
                } else if initial {
                    self.bye_leg(now, Leg::B);
                    self.state = CallState::Ending;
                    self.finish(f.status, EndCause::MediaUnavailable);
                }
            }
            Outgoing::Ack { leg, seq, .. } => {
                self.send_ack(leg, seq, Bytes::new(), None);
                self.hangup(now, EndCause::MediaUnavailable);
            }
        }
    }

    pub(super) fn send_outgoing(&mut self, now: Instant, out: Outgoing) {
        match out {
            Outgoing::Request {
                role: ClientRole::Invite | ClientRole::OriginateB,
                ..
            } if self.ended => {
                // The caller gave up while the relay was rewriting the offer.
            }
            Outgoing::Request {
                id,
                leg,
                peer,
                req,
                role,
            } => self.start_client(now, id, leg, peer, req, role),
            Outgoing::Response { sid, resp } => self.respond(now, sid, resp),
            Outgoing::Ack {
                leg,
                seq,
                body,
                content_type,
            } => self.send_ack(leg, seq, body, content_type),
        }
    }

    /// Sends a message outside any transaction (ACK for a 2xx).
    pub(super) fn send_raw(
        &mut self,
        leg: Leg,
        peer: Peer,
        data: Bytes,
        method: Method,
        retransmission: bool,
    ) {
        self.transmits.push_back(Transmit {
            leg,
            peer,
            data,
            method,
            status: None,
            retransmission,
        });
    }
}
