//! The two-leg call: one caller-side dialog (A), one callee-side dialog (B), and
//! every transaction of both, driven by `handle_*` inputs and drained with `poll_*`.

use crate::config::{CallConfig, Local};
use crate::event::{EndCause, Event, Leg, MediaOp, Transmit};
use crate::ids::Ids;
use crate::multipart;
use crate::relay::copy_session_headers;
use crate::snapshot::{CallSnapshot, LegSnapshot};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;
use trunkline_sip::transaction::{
    ClientState, ClientTransaction, ServerState, ServerTransaction, TxEvent, TxKey,
};
use trunkline_sip::{
    Dialog, HeaderName, Host, Message, Method, NameAddr, Peer, Request, Response, SipUri, Uri,
};

/// Where the call stands, as an operator would describe it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CallState {
    /// Waiting for the routing decision.
    Routing,
    /// INVITE sent to the callee, nothing heard yet but 100.
    Calling,
    /// The callee is ringing or sent early media.
    Early,
    /// Answered and ACKed toward the callee.
    Established,
    /// A BYE is on its way to one leg.
    Ending,
    /// Over; the call only lingers to absorb retransmissions.
    Ended,
}

/// The routing decision for a call's INVITE.
// Made once per call and moved straight in: boxing the big variant buys nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum RouteDecision {
    /// Send the B-leg INVITE to `peer` with `request_uri`, using our address `local`.
    Trunk {
        peer: Peer,
        local: Local,
        request_uri: Uri,
        /// Anchor media on the node's relay (SDP bodies go through `Event::Media`).
        anchor_media: bool,
    },
    /// Answer the caller with this final status.
    Reject { status: u16, cause: EndCause },
}

/// One dialog side of the call.
#[derive(Debug, Clone)]
struct LegState {
    /// Where requests toward this side go (the caller's source address for A: that
    /// keeps callers behind NAT reachable; the trunk for B).
    peer: Peer,
    local: Local,
    call_id: String,
    /// Our tag on this leg (To-tag toward A, From-tag toward B).
    tag: String,
    dialog: Option<Dialog>,
    /// The last ACK we sent on this leg for a 2xx: re-sent when the 2xx is retransmitted.
    last_ack: Option<SentAck>,
}

/// The ACK we sent for a 2xx on a leg, kept as what is needed to build it again (not
/// as bytes: an established call should not carry its ACK for its whole life).
#[derive(Debug, Clone)]
struct SentAck {
    seq: u32,
    /// Kept so a re-sent ACK is the same ACK (RFC 3261 §13.2.2.4).
    branch: String,
    /// The SDP answer of a late offer (empty for most calls: no allocation).
    body: Bytes,
    content_type: Option<Bytes>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ServerRole {
    /// The caller's initial INVITE.
    Invite,
    Cancel,
    Bye,
    /// An in-dialog request relayed to the other leg through client transaction `client`.
    Relay {
        client: u64,
    },
    /// Answered by the call itself.
    Local,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientRole {
    /// Our INVITE toward the callee.
    Invite,
    Cancel,
    Bye,
    Relay {
        server: u64,
    },
}

struct ServerEntry {
    id: u64,
    leg: Leg,
    peer: Peer,
    tx: ServerTransaction,
    role: ServerRole,
    request: Request,
}

struct ClientEntry {
    id: u64,
    leg: Leg,
    peer: Peer,
    tx: ClientTransaction,
    role: ClientRole,
}

/// An ACK we owe one leg for a 2xx, held back until the other leg's ACK brings the
/// SDP answer (late offer: the INVITE had no body, so the answer travels in the ACK).
#[derive(Debug, Clone)]
struct PendingAck {
    leg: Leg,
    seq: u32,
}

/// A call. All state of both legs lives here and changes only through `handle_*`.
pub struct Call {
    cfg: Arc<CallConfig>,
    ids: Ids,
    state: CallState,
    a: LegState,
    b: Option<LegState>,
    servers: Vec<ServerEntry>,
    clients: Vec<ClientEntry>,
    next_id: u64,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    no_answer_at: Option<Instant>,
    ended: bool,
    cancel_b_on_provisional: bool,
    /// An offer/answer exchange (re-INVITE or UPDATE) is being relayed: a second
    /// one gets 491 (RFC 3261 §14.2, RFC 3311 §5.2).
    offer_in_progress: bool,
    pending_ack: Option<PendingAck>,
    /// SDP bodies go through the media relay (set by the routing decision).
    anchor: bool,
    /// Who made the offer of the initial INVITE exchange (None: late offer, the
    /// callee's 2xx carries it).
    initial_offerer: Option<Leg>,
    /// Output held back while the media relay rewrites a body, in send order.
    outbox: VecDeque<Held>,
}

/// Why the media relay could not rewrite a body; `status` is what the sender of the
/// request hears (488 for SDP we cannot anchor, 503 for no capacity).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MediaFailure {
    pub status: u16,
}

/// A message waiting its turn behind a media rewrite.
struct Held {
    /// Media request id; 0 when this message needs no rewrite and only keeps its place.
    media: u64,
    /// Where the SDP sent to the relay sits in a multipart body (its rewrite is spliced
    /// in there); `None` when the whole body is the SDP.
    part: Option<Range<usize>>,
    out: Outgoing,
    done: Option<Result<Bytes, MediaFailure>>,
}

/// A message the call is about to send, in a form that can wait for its body.
// Few are alive at once (only while a body waits for the relay); boxing the request would
// add an allocation to each to save bytes on a handful of values.
#[allow(clippy::large_enum_variant)]
enum Outgoing {
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
    fn body(&self) -> &Bytes {
        match self {
            Outgoing::Request { req, .. } => &req.body,
            Outgoing::Response { resp, .. } => &resp.body,
            Outgoing::Ack { body, .. } => body,
        }
    }

    /// The raw Content-Type value (parameters and their case kept: a multipart
    /// boundary is case-sensitive).
    fn content_type(&self) -> Option<&[u8]> {
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
    fn sdp(&self) -> Option<(Bytes, Option<Range<usize>>)> {
        let ct = self.content_type()?;
        let body = self.body();
        if is_sdp_type(ct) {
            return Some((body.clone(), None));
        }
        if !multipart::is_multipart_mixed(ct) {
            return None;
        }
        match multipart::sdp_part(ct, body) {
            Ok(r) if r.start <= r.end && r.end <= body.len() => {
                Some((body.slice(r.clone()), Some(r)))
            }
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

    fn set_body(&mut self, body: Bytes) {
        match self {
            Outgoing::Request { req, .. } => req.body = body,
            Outgoing::Response { resp, .. } => resp.body = body,
            Outgoing::Ack { body: b, .. } => *b = body,
        }
    }

    /// Puts the relay's rewritten SDP in place: the whole body, or only the SDP part's
    /// range of a multipart body (every other byte kept). Content-Length follows, as
    /// the serialiser writes it from the body.
    fn set_sdp(&mut self, part: Option<Range<usize>>, sdp: Bytes) {
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

/// An `application/sdp` Content-Type value (parameters ignored, case-insensitive).
fn is_sdp_type(ct: &[u8]) -> bool {
    ct.trim_ascii_start()
        .get(..15)
        .is_some_and(|t| t.eq_ignore_ascii_case(b"application/sdp"))
}

/// Requests relayed inside an established dialog.
fn is_relayed_in_dialog(m: &Method) -> bool {
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
    /// Starts a call for a new, already validated INVITE from the caller. Sends 100
    /// Trying at once and asks for a route (`Event::RouteRequired`).
    pub fn new(
        now: Instant,
        cfg: Arc<CallConfig>,
        seed: u64,
        invite: Request,
        source: Peer,
        local: Local,
    ) -> Call {
        let mut ids = Ids::new(&cfg.node_id, seed);
        let tag = ids.tag();
        let call_id = invite
            .headers
            .call_id()
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .unwrap_or_default();
        let tx = ServerTransaction::new(now, &invite, source.transport.is_reliable(), cfg.timers);
        let mut call = Call {
            cfg,
            ids,
            state: CallState::Routing,
            a: LegState {
                peer: source,
                local,
                call_id,
                tag,
                dialog: None,
                last_ack: None,
            },
            b: None,
            servers: Vec::with_capacity(2),
            clients: Vec::with_capacity(2),
            next_id: 1,
            transmits: VecDeque::with_capacity(4),
            events: VecDeque::with_capacity(2),
            no_answer_at: None,
            ended: false,
            cancel_b_on_provisional: false,
            offer_in_progress: false,
            pending_ack: None,
            anchor: false,
            initial_offerer: None,
            outbox: VecDeque::new(),
        };
        let request_uri = invite.uri.clone();
        let caller = invite
            .headers
            .from_addr()
            .and_then(|f| f.uri.user().map(str::to_string));
        let max_forwards = invite.headers.max_forwards();
        let sid = call.add_server(Leg::A, source, tx, ServerRole::Invite, invite);
        match call
            .server(sid)
            .map(|e| Dialog::uas(&e.request, &call.a.tag))
        {
            Some(Ok(_)) if max_forwards == Some(0) => {
                // Nowhere to forward it: answer 483 without asking for a route.
                call.respond_status(now, sid, 483);
                call.finish(483, EndCause::TooManyHops);
            }
            Some(Ok(d)) => {
                call.a.dialog = Some(d);
                call.respond_status(now, sid, 100);
                call.events.push_back(Event::RouteRequired {
                    request_uri,
                    caller,
                });
            }
            _ => {
                call.respond_status(now, sid, 400);
                call.finish(400, EndCause::Rejected);
            }
        }
        call.drain(now);
        call
    }

    /// Restores a settled call from a snapshot taken on another node.
    pub fn restore(cfg: Arc<CallConfig>, snap: CallSnapshot) -> Call {
        Call {
            cfg,
            ids: snap.ids,
            state: CallState::Established,
            a: snap.a.into_leg(),
            b: Some(snap.b.into_leg()),
            servers: Vec::new(),
            clients: Vec::new(),
            next_id: 1,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            no_answer_at: None,
            ended: false,
            cancel_b_on_provisional: false,
            offer_in_progress: false,
            pending_ack: None,
            anchor: snap.anchor,
            initial_offerer: Some(Leg::A),
            outbox: VecDeque::new(),
        }
    }

    /// The state to replicate, available while the call is established and no
    /// transaction is in flight on either leg.
    pub fn snapshot(&self) -> Option<CallSnapshot> {
        // An ACK still owed to one leg (late offer) would be lost with the snapshot.
        if self.state != CallState::Established
            || self.offer_in_progress
            || self.pending_ack.is_some()
        {
            return None;
        }
        let b = self.b.as_ref()?;
        Some(CallSnapshot {
            ids: self.ids.clone(),
            anchor: self.anchor,
            a: LegSnapshot::from_leg(&self.a)?,
            b: LegSnapshot::from_leg(b)?,
        })
    }

    pub fn state(&self) -> CallState {
        self.state
    }

    /// The caller's Call-ID.
    pub fn a_call_id(&self) -> &str {
        &self.a.call_id
    }

    /// The Call-ID we generated for the callee side, once routed.
    pub fn b_call_id(&self) -> Option<&str> {
        self.b.as_ref().map(|b| b.call_id.as_str())
    }

    /// True when the call has ended and no transaction needs it any more: the
    /// driver can drop it.
    pub fn is_finished(&self) -> bool {
        self.ended && self.servers.is_empty() && self.clients.is_empty()
    }

    /// Returns spare capacity of the call's queues to the allocator. Worth calling when
    /// the call goes idle (answered, nothing in flight): tens of thousands of
    /// established calls otherwise each keep buffers sized for their busiest moment.
    pub fn compact(&mut self) {
        if self.servers.is_empty() {
            self.servers = Vec::new();
        }
        if self.clients.is_empty() {
            self.clients = Vec::new();
        }
        if self.transmits.is_empty() {
            self.transmits = VecDeque::new();
        }
        if self.events.is_empty() {
            self.events = VecDeque::new();
        }
        if self.outbox.is_empty() {
            self.outbox = VecDeque::new();
        }
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The earliest instant at which `handle_timeout` has work to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let tx = self
            .servers
            .iter()
            .filter_map(|e| e.tx.poll_timeout())
            .chain(self.clients.iter().filter_map(|e| e.tx.poll_timeout()));
        tx.chain(self.no_answer_at).min()
    }

    /// Runs every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        for e in &mut self.servers {
            if e.tx.poll_timeout().is_some_and(|t| t <= now) {
                e.tx.handle_timeout(now);
            }
        }
        for e in &mut self.clients {
            if e.tx.poll_timeout().is_some_and(|t| t <= now) {
                e.tx.handle_timeout(now);
            }
        }
        if self.no_answer_at.is_some_and(|t| t <= now) {
            self.no_answer_at = None;
            if matches!(self.state, CallState::Calling | CallState::Early) {
                self.abandon_b(now);
                self.final_to_a(now, 408, EndCause::NoAnswer);
            }
        }
        self.drain(now);
    }

    /// The media relay's answer to `Event::Media { id, .. }`: the rewritten body, or why
    /// it could not be anchored. Held output is released in order.
    pub fn handle_media(&mut self, now: Instant, id: u64, result: Result<Bytes, MediaFailure>) {
        if let Some(h) = self
            .outbox
            .iter_mut()
            .find(|h| h.media == id && h.done.is_none())
        {
            h.done = Some(result);
        }
        self.flush_outbox(now);
        self.drain(now);
    }

    /// Ends the call from the node's side (media timeout, operator, drain deadline):
    /// BYE on both legs of an answered call, CANCEL/final answer for one still ringing.
    pub fn hangup(&mut self, now: Instant, cause: EndCause) {
        match self.state {
            CallState::Established => {
                self.bye_leg(now, Leg::A);
                self.bye_leg(now, Leg::B);
                self.state = CallState::Ending;
                self.finish_keep_state(200, cause);
            }
            CallState::Routing | CallState::Calling | CallState::Early => {
                self.abandon_b(now);
                self.final_to_a(now, 480, cause);
            }
            CallState::Ending | CallState::Ended => {}
        }
        self.drain(now);
    }

    /// A message we could not deliver on `leg` (e.g. TCP connect refused): every
    /// transaction still waiting for a first answer on that leg fails (RFC 3261 §8.1.3.1).
    pub fn handle_transport_error(&mut self, now: Instant, leg: Leg) {
        for e in &mut self.clients {
            if e.leg == leg && matches!(e.tx.state(), ClientState::Calling | ClientState::Trying) {
                e.tx.handle_transport_error(now);
            }
        }
        self.drain(now);
    }

    /// The routing decision asked for by `Event::RouteRequired`.
    pub fn handle_route(&mut self, now: Instant, decision: RouteDecision) {
        if self.state != CallState::Routing || self.ended {
            return;
        }
        match decision {
            RouteDecision::Reject { status, cause } => self.final_to_a(now, status, cause),
            RouteDecision::Trunk {
                peer,
                local,
                request_uri,
                anchor_media,
            } => {
                self.anchor = anchor_media;
                self.send_b_invite(now, peer, local, request_uri)
            }
        }
        self.drain(now);
    }

    /// A message received on `leg` from `source`.
    pub fn handle_message(&mut self, now: Instant, leg: Leg, msg: Message, source: Peer) {
        match msg {
            Message::Request(r) => self.on_request(now, leg, r, source),
            Message::Response(r) => self.on_response(now, leg, r),
        }
        self.drain(now);
    }

    // ----- building blocks -------------------------------------------------------

    fn leg(&self, leg: Leg) -> Option<&LegState> {
        match leg {
            Leg::A => Some(&self.a),
            Leg::B => self.b.as_ref(),
        }
    }

    fn leg_mut(&mut self, leg: Leg) -> Option<&mut LegState> {
        match leg {
            Leg::A => Some(&mut self.a),
            Leg::B => self.b.as_mut(),
        }
    }

    fn alloc_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    fn add_server(
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

    fn server(&self, id: u64) -> Option<&ServerEntry> {
        self.servers.iter().find(|e| e.id == id)
    }

    fn client(&self, id: u64) -> Option<&ClientEntry> {
        self.clients.iter().find(|e| e.id == id)
    }

    /// Starts a client transaction on `leg` for `req`, sent to `peer`.
    fn send_request(
        &mut self,
        now: Instant,
        leg: Leg,
        peer: Peer,
        req: Request,
        role: ClientRole,
    ) -> u64 {
        let id = self.alloc_id();
        self.start_client(now, id, leg, peer, req, role);
        id
    }

    fn start_client(
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
        });
    }

    /// Sends `out`, first through the media relay when `op` says its SDP body must be
    /// anchored; keeps the call's output in order while a rewrite is outstanding.
    fn emit(&mut self, now: Instant, out: Outgoing, op: Option<MediaOp>) {
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

    /// Sends held output whose turn has come.
    fn flush_outbox(&mut self, now: Instant) {
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

    /// A body the relay could not anchor: refuse the request that carried it; a
    /// response or ACK still goes out as it was, so no dialog is left half-made.
    fn media_failed(&mut self, now: Instant, out: Outgoing, f: MediaFailure) {
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
                self.servers
                    .retain(|e| e.id != server || e.tx.last_status().is_none());
                self.respond_status(now, server, f.status);
            }
            other => self.send_outgoing(now, other),
        }
    }

    fn send_outgoing(&mut self, now: Instant, out: Outgoing) {
        match out {
            Outgoing::Request {
                role: ClientRole::Invite,
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
    fn send_raw(
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

    /// Sends a response through server transaction `sid`, adding our tag and Contact
    /// where a dialog is being formed.
    fn respond(&mut self, now: Instant, sid: u64, mut resp: Response) {
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

    fn respond_status(&mut self, now: Instant, sid: u64, status: u16) {
        if let Some(e) = self.server(sid) {
            let resp = e.request.make_response(status, None);
            self.respond(now, sid, resp);
        }
    }

    /// Answers a request that needs no transaction of ours beyond this response.
    fn respond_local(&mut self, now: Instant, leg: Leg, req: Request, source: Peer, status: u16) {
        let tx = ServerTransaction::new(now, &req, source.transport.is_reliable(), self.cfg.timers);
        let mut resp = req.make_response(status, None);
        if status == 405 || status == 501 {
            resp.headers.add(HeaderName::Allow, self.cfg.allow);
        }
        if status == 500 {
            resp.headers.add(HeaderName::RetryAfter, "1");
        }
        let sid = self.add_server(leg, source, tx, ServerRole::Local, req);
        self.respond(now, sid, resp);
    }

    /// Emits `Ended` once and moves to the Ended state.
    fn finish(&mut self, status: u16, cause: EndCause) {
        self.state = CallState::Ended;
        self.no_answer_at = None;
        if !self.ended {
            self.ended = true;
            self.events.push_back(Event::Ended { status, cause });
        }
    }

    /// Sends the caller's INVITE its final (non-2xx) answer and ends the call.
    fn final_to_a(&mut self, now: Instant, status: u16, cause: EndCause) {
        let sid = self
            .servers
            .iter()
            .find(|e| e.role == ServerRole::Invite && e.tx.last_status().is_none_or(|s| s < 200))
            .map(|e| e.id);
        if let Some(sid) = sid {
            self.respond_status(now, sid, status);
        }
        self.finish(status, cause);
    }

    // ----- the B-leg INVITE ------------------------------------------------------

    fn send_b_invite(&mut self, now: Instant, peer: Peer, local: Local, request_uri: Uri) {
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
        h.add(HeaderName::Via, local.via(branch).to_string());
        h.add(HeaderName::MaxForwards, (mf - 1).to_string());
        // From keeps the caller's user part and display name; the host becomes ours.
        let a_from = a_req.headers.from_addr();
        let mut from = NameAddr::new(Uri::Sip(SipUri::new(
            a_from
                .as_ref()
                .and_then(|f| f.uri.user().map(str::to_string)),
            local.host.clone(),
            None,
        )));
        from.display = a_from.and_then(|f| f.display);
        from.set_param("tag", Some(tag.clone()));
        h.add(HeaderName::From, from.to_string());
        let to_host = match &request_uri {
            Uri::Sip(u) => u.host.clone(),
            Uri::Other { .. } => Host::from(peer.addr.ip()),
        };
        let mut to = NameAddr::new(Uri::Sip(SipUri::new(
            request_uri.user().map(str::to_string),
            to_host,
            None,
        )));
        to.display = a_req.headers.to_addr().and_then(|t| t.display);
        h.add(HeaderName::To, to.to_string());
        h.add(HeaderName::CallId, call_id.clone());
        h.add(HeaderName::CSeq, "1 INVITE");
        h.add(HeaderName::Contact, local.contact().to_string());
        h.add(HeaderName::Allow, self.cfg.allow);
        copy_session_headers(&a_req.headers, h);
        req.body = a_req.body.clone();
        if !req.body.is_empty() {
            self.initial_offerer = Some(Leg::A);
        }
        self.b = Some(LegState {
            peer,
            local,
            call_id,
            tag,
            dialog: None,
            last_ack: None,
        });
        let id = self.alloc_id();
        self.emit(
            now,
            Outgoing::Request {
                id,
                leg: Leg::B,
                peer,
                req,
                role: ClientRole::Invite,
            },
            Some(MediaOp::Offer { from: Leg::A }),
        );
        self.state = CallState::Calling;
        self.no_answer_at = Some(now + self.cfg.no_answer);
    }

    /// Stops the B-leg INVITE: CANCEL if the callee has answered provisionally,
    /// otherwise remember to CANCEL on the first provisional (RFC 3261 §9.1).
    fn abandon_b(&mut self, now: Instant) {
        let Some(inv) = self
            .clients
            .iter()
            .find(|e| e.role == ClientRole::Invite)
            .map(|e| (e.tx.state(), e.tx.request().clone(), e.peer))
        else {
            return;
        };
        match inv.0 {
            ClientState::Proceeding => {
                let cancel = cancel_for(&inv.1);
                self.send_request(now, Leg::B, inv.2, cancel, ClientRole::Cancel);
            }
            ClientState::Calling => self.cancel_b_on_provisional = true,
            _ => {}
        }
    }

    // ----- requests ---------------------------------------------------------------

    fn on_request(&mut self, now: Instant, leg: Leg, req: Request, source: Peer) {
        if req.method == Method::Ack {
            self.on_ack(now, leg, req);
            return;
        }
        // Retransmission of a request we already have a transaction for.
        if let Some(key) = TxKey::server(&req) {
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
        let to_tag = req
            .headers
            .to_addr()
            .and_then(|t| t.tag().map(str::to_string));
        let Some(to_tag) = to_tag else {
            // A second dialog-forming request under this Call-ID that is not a
            // retransmission: a merged or looped request (RFC 3261 §8.2.2.2).
            let status = if req.method == Method::Invite {
                482
            } else {
                481
            };
            self.respond_local(now, leg, req, source, status);
            return;
        };
        let matches_dialog = self.leg(leg).is_some_and(|l| {
            l.tag == to_tag
                && l.dialog.as_ref().is_some_and(|d| {
                    req.headers
                        .from_addr()
                        .is_some_and(|f| f.tag().unwrap_or_default() == d.remote_tag)
                })
        });
        if !matches_dialog || self.state == CallState::Ended {
            self.respond_local(now, leg, req, source, 481);
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
            self.respond_local(now, leg, req, source, 500);
            return;
        }
        match req.method {
            Method::Bye => self.on_bye(now, leg, req, source),
            ref m if is_relayed_in_dialog(m) => self.relay_in_dialog(now, leg, req, source),
            Method::Prack => self.respond_local(now, leg, req, source, 481),
            Method::Extension(_) => self.respond_local(now, leg, req, source, 501),
            _ => self.respond_local(now, leg, req, source, 501),
        }
    }

    fn on_ack(&mut self, now: Instant, leg: Leg, ack: Request) {
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
    fn send_ack(&mut self, leg: Leg, seq: u32, body: Bytes, content_type: Option<Bytes>) {
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
    fn transmit_ack(&mut self, leg: Leg, sent: &SentAck, retransmission: bool) {
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
    fn resend_ack(&mut self, leg: Leg, seq: u32) -> bool {
        let Some(sent) = self.leg(leg).and_then(|l| l.last_ack.clone()) else {
            return false;
        };
        if sent.seq != seq {
            return false;
        }
        self.transmit_ack(leg, &sent, true);
        true
    }

    /// A response no transaction claims. A retransmitted 2xx to an INVITE we already
    /// ACKed gets the same ACK again; a 2xx from another fork of our INVITE is ACKed
    /// and hung up. Anything else is dropped.
    fn on_unmatched_response(&mut self, now: Instant, leg: Leg, resp: Response) {
        let Some(cseq) = resp.headers.cseq() else {
            return;
        };
        if cseq.method != Method::Invite || !resp.is_success() {
            return;
        }
        let Some(l) = self.leg(leg) else { return };
        let Some(d) = l.dialog.as_ref() else { return };
        let to_tag = resp
            .headers
            .to_addr()
            .and_then(|t| t.tag().map(str::to_string))
            .unwrap_or_default();
        if to_tag == d.remote_tag {
            if self.resend_ack(leg, cseq.seq) {
                self.events.push_back(Event::RetransmissionReceived { leg });
            }
            return;
        }
        if leg == Leg::B && cseq.seq == 1 {
            let mut stray = d.clone();
            stray.remote_tag = to_tag;
            stray.refresh_target(resp.headers.contact());
            if let Some(mut rr) = resp.headers.name_addrs(HeaderName::RecordRoute) {
                rr.reverse();
                stray.route_set = rr;
            }
            self.ack_and_bye_stray(now, stray, cseq.seq);
        }
    }

    /// Where in-dialog requests toward `leg` go. Toward the caller we use the address
    /// its INVITE came from (and that connection): phones behind NAT advertise
    /// unreachable Contacts. Toward the callee we follow the dialog's next hop when
    /// it is an IP literal, else the trunk address (no DNS on this path).
    fn request_peer(&self, leg: Leg) -> Peer {
        let Some(l) = self.leg(leg) else {
            return self.a.peer;
        };
        if leg == Leg::A {
            return l.peer;
        }
        let hop = l.dialog.as_ref().map(|d| d.next_hop());
        match hop.as_ref().and_then(Uri::as_sip) {
            Some(u) => match u.host.ip() {
                Some(ip) => {
                    let port = u.port.unwrap_or(5060);
                    let addr = std::net::SocketAddr::new(ip, port);
                    if addr == l.peer.addr {
                        l.peer
                    } else {
                        Peer::new(l.peer.transport, addr)
                    }
                }
                None => l.peer,
            },
            None => l.peer,
        }
    }

    fn on_cancel(&mut self, now: Instant, leg: Leg, cancel: Request, source: Peer) {
        let target = TxKey::cancel_target(&cancel);
        let invite = self.servers.iter().find(|e| {
            e.leg == leg && e.role == ServerRole::Invite && Some(e.tx.key()) == target.as_ref()
        });
        let Some(invite) = invite else {
            self.respond_local(now, leg, cancel, source, 481);
            return;
        };
        let answered = invite.tx.last_status().is_some_and(|s| s >= 200);
        let tx = ServerTransaction::new(
            now,
            &cancel,
            source.transport.is_reliable(),
            self.cfg.timers,
        );
        let sid = self.add_server(leg, source, tx, ServerRole::Cancel, cancel);
        self.respond_status(now, sid, 200);
        if answered {
            return;
        }
        self.abandon_b(now);
        self.final_to_a(now, 487, EndCause::CallerCancel);
    }

    fn on_bye(&mut self, now: Instant, leg: Leg, bye: Request, source: Peer) {
        let tx = ServerTransaction::new(now, &bye, source.transport.is_reliable(), self.cfg.timers);
        let sid = self.add_server(leg, source, tx, ServerRole::Bye, bye);
        self.respond_status(now, sid, 200);
        match self.state {
            CallState::Established => {
                self.bye_leg(now, leg.other());
                self.state = CallState::Ending;
                let cause = match leg {
                    Leg::A => EndCause::CallerHangup,
                    Leg::B => EndCause::CalleeHangup,
                };
                self.finish_keep_state(200, cause);
            }
            CallState::Calling | CallState::Early if leg == Leg::A => {
                // BYE on an early dialog from the caller: stop the attempt.
                self.abandon_b(now);
                self.final_to_a(now, 487, EndCause::CallerCancel);
            }
            _ => {}
        }
    }

    /// Like `finish`, but leaves the state as it is (Ending while a BYE is out).
    fn finish_keep_state(&mut self, status: u16, cause: EndCause) {
        self.no_answer_at = None;
        if !self.ended {
            self.ended = true;
            self.events.push_back(Event::Ended { status, cause });
        }
    }

    fn bye_leg(&mut self, now: Instant, leg: Leg) {
        let branch = self.ids.branch();
        let peer = self.request_peer(leg);
        let Some(l) = self.leg_mut(leg) else { return };
        let via = l.local.via(branch);
        let Some(d) = l.dialog.as_mut() else { return };
        let seq = d.next_seq();
        let bye = d.request(Method::Bye, seq, &via, None);
        self.send_request(now, leg, peer, bye, ClientRole::Bye);
    }

    /// Relays an in-dialog request (re-INVITE, UPDATE, INFO, MESSAGE, NOTIFY, OPTIONS)
    /// to the other leg.
    fn relay_in_dialog(&mut self, now: Instant, leg: Leg, req: Request, source: Peer) {
        let offer = matches!(req.method, Method::Invite | Method::Update);
        if matches!(self.state, CallState::Ending | CallState::Ended) {
            self.respond_local(now, leg, req, source, 481);
            return;
        }
        if offer && (self.offer_in_progress || self.state != CallState::Established) {
            self.respond_local(now, leg, req, source, 491);
            return;
        }
        if self.state != CallState::Established {
            self.respond_local(now, leg, req, source, 481);
            return;
        }
        let mf = req.headers.max_forwards().unwrap_or(70);
        if mf == 0 {
            self.respond_local(now, leg, req, source, 483);
            return;
        }
        if offer {
            if let Some(d) = self.leg_mut(leg).and_then(|l| l.dialog.as_mut()) {
                d.refresh_target(req.headers.contact());
            }
        }
        let other = leg.other();
        let branch = self.ids.branch();
        let peer = self.request_peer(other);
        let Some(ol) = self.leg_mut(other) else {
            return;
        };
        let via = ol.local.via(branch);
        let contact = ol.local.contact();
        let Some(d) = ol.dialog.as_mut() else { return };
        let seq = d.next_seq();
        let mut out = d.request(req.method.clone(), seq, &via, offer.then_some(&contact));
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

    // ----- responses --------------------------------------------------------------

    fn on_response(&mut self, now: Instant, leg: Leg, resp: Response) {
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
        if !deliver {
            self.events.push_back(Event::RetransmissionReceived { leg });
            return;
        }
        match role {
            ClientRole::Invite => self.on_b_invite_response(now, id, resp),
            ClientRole::Relay { server } => self.on_relay_response(now, leg, id, server, resp),
            ClientRole::Bye if resp.status >= 200 => self.bye_done(),
            ClientRole::Cancel | ClientRole::Bye => {}
        }
    }

    /// A BYE of ours got its final answer (or none): once no BYE is outstanding on
    /// either leg, an ending call is over.
    fn bye_done(&mut self) {
        let outstanding = self.clients.iter().any(|e| {
            e.role == ClientRole::Bye
                && matches!(e.tx.state(), ClientState::Trying | ClientState::Proceeding)
        });
        if self.state == CallState::Ending && !outstanding {
            self.state = CallState::Ended;
        }
    }

    fn on_b_invite_response(&mut self, now: Instant, cid: u64, resp: Response) {
        let status = resp.status;
        if status == 100 {
            return;
        }
        let Some(b_req) = self.client(cid).map(|e| e.tx.request().clone()) else {
            return;
        };
        if status < 200 {
            if self.cancel_b_on_provisional {
                self.cancel_b_on_provisional = false;
                if let Some(peer) = self.client(cid).map(|e| e.peer) {
                    self.send_request(now, Leg::B, peer, cancel_for(&b_req), ClientRole::Cancel);
                }
                return;
            }
            if matches!(self.state, CallState::Calling | CallState::Early) {
                self.state = CallState::Early;
                self.relay_to_a_invite(now, &resp);
            }
            return;
        }
        if (200..300).contains(&status) {
            self.on_b_answer(now, &b_req, resp);
            return;
        }
        // Non-2xx final: the transaction has ACKed it already.
        if matches!(self.state, CallState::Calling | CallState::Early) {
            let mapped = map_final_status(status);
            let Some(sid) = self.initial_invite_server() else {
                return;
            };
            let mut out = self
                .server(sid)
                .map(|e| e.request.make_response(mapped, None));
            if let Some(out) = out.as_mut() {
                copy_session_headers(&resp.headers, &mut out.headers);
                out.headers.remove(HeaderName::ContentType);
            }
            if let Some(out) = out {
                self.respond(now, sid, out);
            }
            self.finish(mapped, EndCause::Rejected);
        }
    }

    /// The caller's INVITE server transaction while it still awaits a final answer.
    fn initial_invite_server(&self) -> Option<u64> {
        self.servers
            .iter()
            .find(|e| e.role == ServerRole::Invite && e.tx.last_status().is_none_or(|s| s < 200))
            .map(|e| e.id)
    }

    /// Relays a provisional or 2xx from the callee to the caller's INVITE.
    fn relay_to_a_invite(&mut self, now: Instant, resp: &Response) {
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

    fn on_b_answer(&mut self, now: Instant, b_req: &Request, resp: Response) {
        let seq = b_req.headers.cseq().map(|c| c.seq).unwrap_or(1);
        let to_tag = resp
            .headers
            .to_addr()
            .and_then(|t| t.tag().map(str::to_string));
        let confirmed_tag = self
            .b
            .as_ref()
            .and_then(|b| b.dialog.as_ref().map(|d| d.remote_tag.clone()));
        match confirmed_tag {
            Some(tag) if Some(&tag) == to_tag.as_ref() => {
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
        let dialog = match Dialog::uac(b_req, &resp) {
            Ok(d) => d,
            Err(_) => {
                self.abandon_b(now);
                self.final_to_a(now, 502, EndCause::Rejected);
                return;
            }
        };
        if let Some(b) = self.b.as_mut() {
            b.dialog = Some(dialog);
        }
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
        self.events.push_back(Event::Answered);
    }

    fn ack_and_bye_stray(&mut self, now: Instant, mut d: Dialog, seq: u32) {
        let Some(b) = self.b.as_ref() else { return };
        let local = b.local.clone();
        let peer = b.peer;
        let ack = d.request(Method::Ack, seq, &local.via(self.ids.branch()), None);
        self.send_raw(Leg::B, peer, ack.encode(), Method::Ack, false);
        let bseq = d.next_seq();
        let bye = d.request(Method::Bye, bseq, &local.via(self.ids.branch()), None);
        self.send_request(now, Leg::B, peer, bye, ClientRole::Bye);
    }

    fn on_relay_response(&mut self, now: Instant, leg: Leg, cid: u64, sid: u64, resp: Response) {
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
        if method == Method::Invite && resp.is_success() {
            let Some(out_req) = self.client(cid).map(|e| e.tx.request().clone()) else {
                return;
            };
            let seq = out_req.headers.cseq().map(|c| c.seq).unwrap_or(0);
            if self.resend_ack(leg, seq) {
                return;
            }
            if let Some(d) = self.leg_mut(leg).and_then(|l| l.dialog.as_mut()) {
                d.refresh_target(resp.headers.contact());
            }
            if out_req.body.is_empty() && !resp.body.is_empty() {
                self.pending_ack = Some(PendingAck { leg, seq });
            } else {
                self.send_ack(leg, seq, Bytes::new(), None);
            }
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
            self.events.push_back(Event::Settled);
        }
    }

    // ----- transaction outputs ------------------------------------------------------

    /// Collects what every transaction wants to send and what happened to them, reacts
    /// to timeouts, and forgets terminated transactions.
    fn drain(&mut self, now: Instant) {
        loop {
            let mut happened: Vec<(bool, u64, TxEvent)> = Vec::new();
            for e in &mut self.servers {
                while let Some(t) = e.tx.poll_transmit() {
                    self.transmits.push_back(Transmit {
                        leg: e.leg,
                        peer: e.peer,
                        method: e.tx.method().clone(),
                        status: status_of(&t.data),
                        data: t.data,
                        retransmission: t.retransmission,
                    });
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

    fn on_server_event(&mut self, now: Instant, sid: u64, ev: TxEvent) {
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

    fn on_client_event(&mut self, now: Instant, cid: u64, ev: TxEvent) {
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
            ClientRole::Bye => self.bye_done(),
            ClientRole::Cancel => {}
        }
    }
}

/// The CANCEL for a request we sent (RFC 3261 §9.1): same Request-URI, top Via,
/// From, To, Call-ID and Route; CSeq number with method CANCEL.
fn cancel_for(invite: &Request) -> Request {
    let mut c = Request::new(Method::Cancel, invite.uri.clone());
    let h = &invite.headers;
    if let Some(v) = h.get(HeaderName::Via) {
        if let Some(first) = trunkline_sip::scan::split_commas(v).and_then(|v| v.into_iter().next())
        {
            c.headers.add(HeaderName::Via, first);
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

/// What the caller hears for the callee's final error. Redirects are not followed
/// across a border (their Contacts name the far network), so they become 480.
fn map_final_status(status: u16) -> u16 {
    match status {
        300..=399 => 480,
        // Authentication toward the trunk is the node's business, not the caller's.
        401 | 407 => 403,
        s => s,
    }
}

/// The status code of an encoded response, for metrics.
fn status_of(data: &[u8]) -> Option<u16> {
    if data.len() < 12 || !data.starts_with(b"SIP/2.0 ") {
        return None;
    }
    std::str::from_utf8(&data[8..11]).ok()?.parse().ok()
}

impl LegSnapshot {
    fn from_leg(l: &LegState) -> Option<LegSnapshot> {
        Some(LegSnapshot {
            peer: l.peer,
            local: l.local.clone(),
            call_id: l.call_id.clone(),
            tag: l.tag.clone(),
            dialog: l.dialog.clone()?,
        })
    }

    fn into_leg(self) -> LegState {
        LegState {
            peer: self.peer,
            local: self.local,
            call_id: self.call_id,
            tag: self.tag,
            dialog: Some(self.dialog),
            last_ack: None,
        }
    }
}
