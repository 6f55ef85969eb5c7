//! The initial INVITE across both legs: the B-leg INVITE built from scratch, the
//! callee's provisional, 2xx and final error answers relayed to the caller.

use super::{Call, CallState, ClientRole, LegState, Outgoing, PendingAck, ServerRole};
use crate::config::Local;
use crate::event::{EndCause, Event, Leg, MediaOp};
use crate::relay::copy_session_headers;
use bytes::Bytes;
use std::time::Instant;
use trunkline_sip::text::header_bytes;
use trunkline_sip::transaction::ClientState;
use trunkline_sip::{
    Dialog, HeaderName, Host, Method, NameAddr, Peer, Request, Response, SipUri, Uri,
};

/// What the caller hears for the callee's final error. Redirects are not followed
/// across a border (their Contacts name the far network), so they become 480; a 503
/// becomes `trunk_503` (see `CallConfig::trunk_503_status`).
pub(super) fn map_final_status(status: u16, trunk_503: u16) -> u16 {
    match status {
        300..=399 => 480,
        // Authentication toward the trunk is the node's business, not the caller's.
        401 | 407 => 403,
        503 => trunk_503,
        s => s,
    }
}

impl Call {
    pub(super) fn send_b_invite(
        &mut self,
        now: Instant,
        peer: Peer,
        local: Local,
        request_uri: Uri,
        credentials: Option<crate::config::PeerCredentials>,
        presentation: &crate::config::Presentation,
    ) {
        let Some(a_req) = self
            .servers
            .iter()
            .find(|e| e.role == ServerRole::Invite)
            .map(|e| e.request.clone())
        else {
            return;
        };
        let mf = a_req.headers.max_forwards().unwrap_or(70);
        if mf == 0 {
            self.final_to_a(now, 483, EndCause::TooManyHops);
            return;
        }
        let call_id = self.ids.call_id();
        let tag = self.ids.tag();
        let branch = self.ids.branch();
        let mut req = Request::new(Method::Invite, request_uri.clone());
        let h = &mut req.headers;
        h.add(HeaderName::Via, header_bytes(&local.via(branch)));
        h.add(HeaderName::MaxForwards, header_bytes(&(mf - 1)));
        // From keeps the caller's user part and display name; the host becomes ours.
        // The caller's dialog holds A's From and To parsed (without tags); parsed again
        // only if it does not exist.
        let parsed;
        let (a_from, a_to) = match &self.a.dialog {
            Some(d) => (Some(&d.remote_uri), Some(&d.local_uri)),
            None => {
                parsed = (a_req.headers.from_addr(), a_req.headers.to_addr());
                (parsed.0.as_ref(), parsed.1.as_ref())
            }
        };
        let from_user = match &presentation.from_user {
            Some(u) => Some(u.clone()),
            None => a_from.and_then(|f| f.uri.user().map(str::to_string)),
        };
        let mut from = NameAddr::new(Uri::Sip(SipUri::new(from_user, local.host.clone(), None)));
        from.display = a_from.and_then(|f| f.display.clone());
        from.set_param("tag", Some(tag.clone()));
        h.add(HeaderName::From, header_bytes(&from));
        let to_host = match &request_uri {
            Uri::Sip(u) => u.host.clone(),
            Uri::Other { .. } => Host::from(peer.addr.ip()),
        };
        let to_user = presentation
            .to_user
            .clone()
            .or_else(|| request_uri.user().map(str::to_string));
        let mut to = NameAddr::new(Uri::Sip(SipUri::new(to_user, to_host, None)));
        to.display = a_to.and_then(|t| t.display.clone());
        h.add(HeaderName::To, header_bytes(&to));
        h.add(HeaderName::CallId, call_id.clone());
        h.add(HeaderName::CSeq, "1 INVITE");
        h.add(HeaderName::Contact, header_bytes(&local.contact()));
        h.add(HeaderName::Allow, self.cfg.allow);
        copy_session_headers(&a_req.headers, h);
        crate::relay::copy_identity(&a_req.headers, h, presentation);
        req.body = a_req.body.clone();
        if !req.body.is_empty() {
            self.initial_offerer = Some(Leg::A);
        }
        let mut b = LegState::new(peer, local, call_id, tag);
        b.credentials = credentials.map(std::sync::Arc::new);
        self.open_b(now, b, req, ClientRole::Invite);
        self.state = CallState::Calling;
        self.no_answer_at = Some(now + self.cfg.no_answer);
    }

    /// Makes `b` the callee side and sends it `invite`, whose body (if any) is A's offer
    /// and goes through the relay as such.
    pub(super) fn open_b(&mut self, now: Instant, b: LegState, invite: Request, role: ClientRole) {
        let peer = b.peer;
        self.b = Some(b);
        let id = self.alloc_id();
        self.emit(
            now,
            Outgoing::Request {
                id,
                leg: Leg::B,
                peer,
                req: invite,
                role,
            },
            Some(MediaOp::Offer { from: Leg::A }),
        );
    }

    pub(super) fn on_b_invite_response(
        &mut self,
        now: Instant,
        cid: u64,
        resp: Response,
        source: Peer,
    ) {
        let status = resp.status;
        // Any answer, 100 included, shows the trunk alive.
        self.provisional_at = None;
        if status < 200 && self.cancel_if_wanted(now, cid) {
            return;
        }
        if status == 100 {
            return;
        }
        let Some(b_req) = self.client(cid).map(|e| e.tx.request().clone()) else {
            return;
        };
        if status < 200 {
            self.learn_early_dialog(&b_req, &resp, source);
            if matches!(self.state, CallState::Calling | CallState::Early) {
                self.state = CallState::Early;
                self.relay_to_a_invite(now, &resp);
                self.events.push_back(Event::Progress {
                    status,
                    early_media: !resp.body.is_empty(),
                });
            }
            return;
        }
        if (200..300).contains(&status) {
            self.on_b_answer(now, &b_req, resp, source);
            return;
        }
        // Non-2xx final: the transaction has ACKed it already.
        if self.try_failover(status) {
            return;
        }
        if matches!(self.state, CallState::Calling | CallState::Early) {
            let mapped = map_final_status(status, self.cfg.trunk_503_status);
            let Some(sid) = self.initial_invite_server() else {
                return;
            };
            let mut out = self
                .server(sid)
                .map(|e| e.request.make_response(mapped, None));
            if let Some(out) = out.as_mut() {
                copy_session_headers(&resp.headers, &mut out.headers);
                out.headers.remove(HeaderName::ContentType);
                if status == 503 && mapped != 503 {
                    // The trunk's back-off is about the trunk, not about this node.
                    out.headers.remove(HeaderName::RetryAfter);
                }
            }
            if let Some(out) = out {
                self.respond(now, sid, out);
            }
            self.finish(mapped, EndCause::Rejected);
        }
    }

    /// The callee's trunk failed the INVITE with `status` (its final answer, 408 for a
    /// timeout, 503 for a transport error) before answering: when the route left
    /// another trunk and `failover_statuses` lists the status, the call asks for the
    /// next route instead of answering the caller, who sees one call throughout.
    pub(super) fn try_failover(&mut self, status: u16) -> bool {
        let listed = match &self.failover_statuses {
            Some(statuses) => statuses.contains(&status),
            None => self.cfg.failover_statuses.contains(&status),
        };
        if !self.failover
            || self.ended
            || !matches!(self.state, CallState::Calling | CallState::Early)
            || !listed
        {
            return false;
        }
        let Some(request_uri) = self
            .servers
            .iter()
            .find(|e| e.role == ServerRole::Invite)
            .map(|e| e.request.uri.clone())
        else {
            return false;
        };
        self.failover = false;
        self.state = CallState::Routing;
        self.b = None;
        self.no_answer_at = None;
        self.provisional_at = None;
        self.events.push_back(Event::RouteFailed { status });
        self.events.push_back(Event::RouteRequired {
            request_uri,
            caller: None,
        });
        true
    }

    /// The callee's trunk has sent nothing for the route's provisional timeout: its
    /// INVITE is given up as if it had timed out (408), and fails over when the route
    /// allows. No CANCEL may go before a response (RFC 3261 §9.1): the INVITE stays to
    /// be cancelled if the trunk wakes up, and a late 2xx is ACKed and hung up.
    pub(super) fn no_provisional(&mut self, now: Instant) {
        if self.ended || self.state != CallState::Calling {
            return;
        }
        let Some(e) = self
            .clients
            .iter_mut()
            .find(|e| e.role == ClientRole::Invite && e.tx.state() == ClientState::Calling)
        else {
            return;
        };
        e.role = ClientRole::Abandoned;
        e.cancel_on_response = true;
        let id = e.id;
        if let Some(b) = self.b.as_ref() {
            self.abandoned.push((id, b.local.clone()));
        }
        self.events.push_back(Event::TransactionTimeout {
            leg: Leg::B,
            timer: 'P',
        });
        if self.try_failover(408) {
            return;
        }
        self.final_to_a(now, 408, EndCause::NoAnswer);
    }

    /// A response to an INVITE the call gave up for another trunk: a provisional gets
    /// the CANCEL the INVITE was owed, a 2xx an ACK and a BYE; a final failure is
    /// ACKed by its transaction.
    pub(super) fn on_abandoned_response(&mut self, now: Instant, cid: u64, resp: Response) {
        if resp.status < 200 {
            self.cancel_if_wanted(now, cid);
            return;
        }
        if !resp.is_success() {
            return;
        }
        let Some(e) = self.client(cid) else { return };
        let (peer, req) = (e.peer, e.tx.request().clone());
        let Some(local) = self
            .abandoned
            .iter()
            .find(|(id, _)| *id == cid)
            .map(|(_, l)| l.clone())
        else {
            return;
        };
        let seq = req.headers.cseq().map(|c| c.seq).unwrap_or(1);
        if let Ok(d) = Dialog::uac(&req, &resp) {
            self.ack_and_bye_dialog(now, Leg::B, &local, peer, d, seq);
        }
    }

    /// The caller's INVITE server transaction while it still awaits a final answer.
    pub(super) fn initial_invite_server(&self) -> Option<u64> {
        self.servers
            .iter()
            .find(|e| e.role == ServerRole::Invite && e.tx.last_status().is_none_or(|s| s < 200))
            .map(|e| e.id)
    }

    /// Relays a provisional or 2xx from the callee to the caller's INVITE.
    pub(super) fn relay_to_a_invite(&mut self, now: Instant, resp: &Response) {
        let Some(sid) = self.initial_invite_server() else {
            return;
        };
        let Some(mut out) = self
            .server(sid)
            .map(|e| e.request.make_response(resp.status, None))
        else {
            return;
        };
        copy_session_headers(&resp.headers, &mut out.headers);
        out.body = resp.body.clone();
        let op = match self.initial_offerer {
            Some(offerer) => MediaOp::Answer { offerer },
            None => MediaOp::Offer { from: Leg::B },
        };
        self.emit(now, Outgoing::Response { sid, resp: out }, Some(op));
    }

    /// A provisional with a To-tag makes the callee's early dialog (the latest one when
    /// several forks ring): what an UPDATE or INFO before the answer travels on.
    fn learn_early_dialog(&mut self, b_req: &Request, resp: &Response, source: Peer) {
        let Some(tag) = resp.headers.to_tag() else {
            return;
        };
        let Some(b) = self.b.as_mut() else { return };
        let known = b
            .dialog
            .as_ref()
            .is_some_and(|d| d.remote_tag.as_bytes() == tag);
        if known || (b.dialog.is_some() && !b.early) {
            return;
        }
        if let Ok(d) = Dialog::uac(b_req, resp) {
            b.dialog = Some(d);
            b.early = true;
            self.fix_nated_target(Leg::B, source);
        }
    }

    pub(super) fn on_b_answer(
        &mut self,
        now: Instant,
        b_req: &Request,
        resp: Response,
        source: Peer,
    ) {
        let seq = b_req.headers.cseq().map(|c| c.seq).unwrap_or(1);
        let to_tag = resp.headers.to_tag().unwrap_or_default();
        let confirmed_tag = self
            .b
            .as_ref()
            .filter(|b| !b.early)
            .and_then(|b| b.dialog.as_ref().map(|d| d.remote_tag.clone()));
        match confirmed_tag {
            Some(tag) if tag.as_bytes() == to_tag => {
                // A retransmitted 2xx: repeat our ACK.
                self.resend_ack(Leg::B, seq);
                return;
            }
            Some(_) => {
                // A 2xx from a second fork: accept and hang it up (RFC 3261 §13.2.2.4).
                if let Ok(d) = Dialog::uac(b_req, &resp) {
                    self.ack_and_bye_stray(now, d, seq);
                }
                return;
            }
            None => {}
        }
        // The 2xx of the early dialog a provisional made confirms that dialog (keeping
        // the CSeq numbers its requests used); any other 2xx makes its own.
        let confirmed = self
            .b
            .as_ref()
            .filter(|b| b.early)
            .and_then(|b| b.dialog.as_ref())
            .and_then(|d| d.confirmed(&resp));
        let dialog = match confirmed.unwrap_or_else(|| Dialog::uac(b_req, &resp)) {
            Ok(d) => d,
            Err(e) => {
                // The trunk answered with a 2xx that cannot make a dialog (no To-tag, no
                // Contact, a bad Record-Route). On its side the call is up: ACK it, so
                // it stops retransmitting, and release it with BYE; the caller hears 502.
                tracing::debug!(error = %e, "callee's 2xx makes no usable dialog: ACK and BYE");
                if let Some(d) = lenient_dialog(b_req, &resp) {
                    if let Some(b) = self.b.as_mut() {
                        b.dialog = Some(d);
                        b.early = false;
                    }
                    self.send_ack(Leg::B, seq, Bytes::new(), None);
                    self.bye_leg(now, Leg::B);
                }
                self.final_to_a(now, 502, EndCause::Rejected);
                return;
            }
        };
        if let Some(b) = self.b.as_mut() {
            b.dialog = Some(dialog);
            b.early = false;
        }
        self.fix_nated_target(Leg::B, source);
        let caller_gone = self.initial_invite_server().is_none() || self.ended;
        if caller_gone {
            // The caller cancelled while the callee answered: ACK and hang up.
            self.send_ack(Leg::B, seq, Bytes::new(), None);
            self.bye_leg(now, Leg::B);
            return;
        }
        if b_req.body.is_empty() && !resp.body.is_empty() {
            // Late offer: the caller's ACK will carry the answer.
            self.pending_ack = Some(PendingAck { leg: Leg::B, seq });
        } else {
            self.send_ack(Leg::B, seq, Bytes::new(), None);
        }
        self.relay_to_a_invite(now, &resp);
        self.state = CallState::Established;
        self.no_answer_at = None;
        self.max_duration_at = self.cfg.max_duration.map(|d| now + d);
        self.events.push_back(Event::Answered);
    }
}

/// The dialog a malformed 2xx makes as best it can be read: the request's target where
/// Contact is missing, no route set where Record-Route is unreadable, and an empty remote
/// tag (To without a tag, as the 2xx had it) where the To-tag is missing. Good enough to
/// ACK and BYE the far side, never to keep a call on.
pub(super) fn lenient_dialog(req: &Request, resp: &Response) -> Option<Dialog> {
    let mut fixed = resp.clone();
    let h = &mut fixed.headers;
    if h.contact().is_none() {
        h.set(
            HeaderName::Contact,
            header_bytes(&format_args!("<{}>", req.uri)),
        );
    }
    if h.name_addrs(HeaderName::RecordRoute).is_none() {
        h.remove(HeaderName::RecordRoute);
    }
    let tagless = h.to_addr().is_some_and(|t| t.tag().is_none());
    if tagless {
        let to = h.get(HeaderName::To)?.clone();
        let mut tagged = to.to_vec();
        tagged.extend_from_slice(b";tag=x");
        h.set(HeaderName::To, Bytes::from(tagged));
    }
    let mut d = Dialog::uac(req, &fixed).ok()?;
    if tagless {
        d.remote_tag.clear();
    }
    Some(d)
}

/// The INVITE of a dialog the node opens itself (a transfer target, the parties of a call
/// it places): our Via, From `who` (user part and display name) at our host with `tag`,
/// To the Request-URI's user at its host, `call_id`, CSeq 1, our Contact and Allow, and
/// no body (the far side makes the offer, or gets one set by the caller).
#[allow(clippy::too_many_arguments)]
pub(super) fn fresh_invite(
    cfg: &crate::config::CallConfig,
    local: &Local,
    request_uri: &Uri,
    peer: Peer,
    who: (Option<String>, Option<String>),
    call_id: &str,
    tag: &str,
    branch: String,
) -> Request {
    let mut req = Request::new(Method::Invite, request_uri.clone());
    let h = &mut req.headers;
    h.add(HeaderName::Via, header_bytes(&local.via(branch)));
    h.add(HeaderName::MaxForwards, header_bytes(&cfg.max_forwards));
    let mut from = NameAddr::new(Uri::Sip(SipUri::new(who.0, local.host.clone(), None)));
    from.display = who.1;
    from.set_param("tag", Some(tag.to_string()));
    h.add(HeaderName::From, header_bytes(&from));
    let to_host = match request_uri {
        Uri::Sip(u) => u.host.clone(),
        Uri::Other { .. } => Host::from(peer.addr.ip()),
    };
    let to = NameAddr::new(Uri::Sip(SipUri::new(
        request_uri.user().map(str::to_string),
        to_host,
        None,
    )));
    h.add(HeaderName::To, header_bytes(&to));
    h.add(HeaderName::CallId, header_bytes(&call_id));
    h.add(HeaderName::CSeq, "1 INVITE");
    h.add(HeaderName::Contact, header_bytes(&local.contact()));
    h.add(HeaderName::Allow, cfg.allow);
    req
}
