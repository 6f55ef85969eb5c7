//! The two-leg call: one caller-side dialog (A), one callee-side dialog (B), and
//! every transaction of both, driven by `handle_*` inputs and drained with `poll_*`.

use crate::config::{CallConfig, Local, PeerCredentials};
use crate::event::{EndCause, Event, Leg, Transmit};
use crate::ids::Ids;
use crate::snapshot::{CallSnapshot, LegSnapshot};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;
use trunkline_sip::transaction::{ClientState, ClientTransaction, ServerTransaction};
use trunkline_sip::{Dialog, HeaderName, Message, Peer, Request, Uri};

mod ack_cancel;
mod adopt;
mod challenge;
mod invite;
mod leftovers;
mod originate;
mod outbox;
mod requests;
mod responses;
mod targets;
mod transactions;
mod transfer;

pub use adopt::Adoption;
pub use leftovers::{Leftovers, Replay};
pub use originate::Party;
use outbox::{Held, Outgoing};
pub use transfer::{TransferError, TransferTarget};

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
        /// Where the trunk's Contact is a private address but its messages come from a
        /// public one (a PBX behind NAT), send in-dialog requests to where they come
        /// from (as Kamailio's nathelper `fix_nated_contact`).
        fix_nated_contact: bool,
        /// The route has another trunk: a failure of this one that
        /// `CallConfig::failover_statuses` lists asks for the next route
        /// (`Event::RouteFailed`, then `Event::RouteRequired` again) instead of
        /// answering the caller.
        failover: bool,
        /// What the node answers the trunk's 401/407 with, if it authenticates the node.
        credentials: Option<PeerCredentials>,
        /// The caller's numbers and identity as the callee's side sees them.
        presentation: crate::config::Presentation,
        /// Give the trunk up (as a 408) when it has sent no response at all, not even
        /// 100, within this long: a dead carrier is passed over in seconds, not after
        /// Timer B. `None`: Timer B.
        provisional_timeout: Option<std::time::Duration>,
        /// The final statuses that fail over for this route, instead of
        /// `CallConfig::failover_statuses`.
        failover_statuses: Option<Arc<[u16]>>,
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
    /// `dialog` is the callee's early dialog (from a provisional with a To-tag), not yet
    /// confirmed by a 2xx: UPDATE and INFO may use it (RFC 3311, RFC 6086).
    early: bool,
    /// The last ACK we sent on this leg for a 2xx: re-sent when the 2xx is retransmitted.
    last_ack: Option<SentAck>,
    /// What the node answers this side's digest challenges with (a carrier that
    /// authenticates the node); never in a snapshot.
    credentials: Option<Arc<PeerCredentials>>,
}

impl LegState {
    /// A leg whose dialog is still to come.
    fn new(peer: Peer, local: Local, call_id: String, tag: String) -> LegState {
        LegState {
            peer,
            local,
            call_id,
            tag,
            dialog: None,
            early: false,
            last_ack: None,
            credentials: None,
        }
    }
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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientRole {
    /// Our INVITE toward the callee.
    Invite,
    /// An INVITE toward a callee's trunk that the call gave up for another trunk (no
    /// provisional answer in time). It is CANCELled if it wakes up and hung up if it
    /// answers; `Call::abandoned` keeps the address it was sent from.
    Abandoned,
    Cancel,
    Bye,
    Relay {
        server: u64,
    },
    /// Our INVITE to the first party of a call the node places.
    OriginateA,
    /// Our INVITE, with the first party's offer, to the second party.
    OriginateB,
    /// Our INVITE to a transfer target.
    TransferInvite,
    /// The re-INVITE carrying a transfer target's offer to the remaining leg.
    TransferReinvite,
    /// The re-INVITE that moves a leg of an adopted call to this node.
    AdoptReinvite,
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
    /// We want this INVITE cancelled but nothing has come back yet: the CANCEL goes
    /// out with the first response, 100 included (RFC 3261 §9.1).
    cancel_on_response: bool,
    /// We sent a CANCEL for this INVITE: if no final response has come by then, the
    /// transaction is given up (RFC 3261 §9.1: 64*T1), so a callee that never
    /// answers cannot hold the call forever.
    give_up_at: Option<Instant>,
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
    /// When an answered call reaches `CallConfig::max_duration`.
    max_duration_at: Option<Instant>,
    ended: bool,
    /// An offer/answer exchange (re-INVITE or UPDATE) is being relayed: a second
    /// one gets 491 (RFC 3261 §14.2, RFC 3311 §5.2).
    offer_in_progress: bool,
    pending_ack: Option<PendingAck>,
    /// SDP bodies go through the media relay (set by the routing decision).
    anchor: bool,
    /// See `RouteDecision::Trunk::fix_nated_contact`.
    fix_nated_contact: bool,
    /// See `RouteDecision::Trunk::failover`.
    failover: bool,
    /// See `RouteDecision::Trunk::failover_statuses`.
    failover_statuses: Option<Arc<[u16]>>,
    /// When the callee's trunk is given up if it has not answered at all (see
    /// `RouteDecision::Trunk::provisional_timeout`).
    provisional_at: Option<Instant>,
    /// Our address on each INVITE given up by `provisional_at` (client id, local): what
    /// a late 2xx from that trunk is ACKed and hung up from.
    abandoned: Vec<(u64, Local)>,
    /// Who made the offer of the initial INVITE exchange (None: late offer, the
    /// callee's 2xx carries it).
    initial_offerer: Option<Leg>,
    /// Output held back while the media relay rewrites a body, in send order.
    outbox: VecDeque<Held>,
    /// The RFC 3326 `Reason` value the node's own BYEs and CANCELs carry when the node
    /// ends the call (an operator's hang-up).
    reason: Option<Bytes>,
    /// A blind transfer of one leg, while it runs.
    transfer: Option<transfer::Transfer>,
    /// A call the node places itself (third-party call control), until both parties
    /// are up.
    originate: Option<originate::Originate>,
    /// A call taken over from another node, until both legs have accepted.
    adopting: Option<adopt::Adopting>,
    /// The last SDP each party (A, B) sent, with `CallConfig::keep_sdp`.
    sdps: Option<Box<[Bytes; 2]>>,
    /// Digest challenges the call has answered (see `challenge`).
    auth_answers: u8,
}

/// Why the media relay could not rewrite a body; `status` is what the sender of the
/// request hears (488 for SDP we cannot anchor, 503 for no capacity).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MediaFailure {
    pub status: u16,
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
        let mut call = Call::blank(cfg, ids, LegState::new(source, local, call_id, tag));
        let request_uri = invite.uri.clone();
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
                // The dialog has just parsed From: its user is the caller.
                let caller = d.remote_uri.uri.user().map(str::to_string);
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
        let mut call = Call::blank(cfg, snap.ids, snap.a.into_leg());
        call.state = CallState::Established;
        call.b = Some(snap.b.into_leg());
        call.anchor = snap.anchor;
        call.initial_offerer = Some(Leg::A);
        if call.cfg.keep_sdp {
            let sdp = |s: Option<String>| s.map(Bytes::from).unwrap_or_default();
            call.sdps = Some(Box::new([sdp(snap.a_sdp), sdp(snap.b_sdp)]));
        }
        call
    }

    /// A call with leg A only, nothing sent and nothing pending.
    fn blank(cfg: Arc<CallConfig>, ids: Ids, a: LegState) -> Call {
        Call {
            cfg,
            ids,
            state: CallState::Routing,
            a,
            b: None,
            servers: Vec::with_capacity(2),
            clients: Vec::with_capacity(2),
            next_id: 1,
            transmits: VecDeque::with_capacity(4),
            events: VecDeque::with_capacity(2),
            no_answer_at: None,
            max_duration_at: None,
            ended: false,
            offer_in_progress: false,
            pending_ack: None,
            anchor: false,
            fix_nated_contact: false,
            failover: false,
            failover_statuses: None,
            provisional_at: None,
            abandoned: Vec::new(),
            initial_offerer: None,
            outbox: VecDeque::new(),
            reason: None,
            transfer: None,
            originate: None,
            adopting: None,
            sdps: None,
            auth_answers: 0,
        }
    }

    /// The state to replicate, available while the call is established and no
    /// transaction is in flight on either leg.
    pub fn snapshot(&self) -> Option<CallSnapshot> {
        // An ACK still owed to one leg (late offer) would be lost with the snapshot.
        if self.state != CallState::Established
            || self.offer_in_progress
            || self.pending_ack.is_some()
            || self.transfer.is_some()
            || self.adopting.is_some()
        {
            return None;
        }
        let b = self.b.as_ref()?;
        let sdp = |i: usize| {
            self.sdps
                .as_ref()
                .map(|s| &s[i])
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
        };
        Some(CallSnapshot {
            ids: self.ids.clone(),
            anchor: self.anchor,
            a: LegSnapshot::from_leg(&self.a)?,
            b: LegSnapshot::from_leg(b)?,
            a_sdp: sdp(0),
            b_sdp: sdp(1),
        })
    }

    pub fn state(&self) -> CallState {
        self.state
    }

    /// The caller's Call-ID.
    pub fn a_call_id(&self) -> &str {
        &self.a.call_id
    }

    /// Our tag toward the caller (the To-tag of our responses): with the caller's
    /// Call-ID, what the caller's in-dialog requests name.
    pub fn a_tag(&self) -> &str {
        &self.a.tag
    }

    /// The caller's From, as the caller's dialog holds it (without its tag): the driver
    /// reads the caller's number from it rather than parsing the INVITE's From again.
    /// `None` before the caller's dialog exists (an INVITE refused on arrival).
    pub fn a_remote_uri(&self) -> Option<&trunkline_sip::NameAddr> {
        self.a.dialog.as_ref().map(|d| &d.remote_uri)
    }

    /// Our tag toward the callee (the From-tag of the B-leg INVITE), once routed.
    pub fn b_tag(&self) -> Option<&str> {
        self.b.as_ref().map(|b| b.tag.as_str())
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
            .chain(self.clients.iter().filter_map(|e| e.tx.poll_timeout()))
            .chain(self.clients.iter().filter_map(|e| e.give_up_at));
        tx.chain(self.no_answer_at)
            .chain(self.max_duration_at)
            .chain(self.provisional_at)
            .chain(
                self.transfer
                    .as_ref()
                    .and_then(transfer::Transfer::deadline),
            )
            .min()
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
        self.clients
            .retain(|e| e.give_up_at.is_none_or(|t| t > now));
        let clients = &self.clients;
        self.abandoned
            .retain(|(id, _)| clients.iter().any(|e| e.id == *id));
        if self.provisional_at.is_some_and(|t| t <= now) {
            self.provisional_at = None;
            self.no_provisional(now);
        }
        self.transfer_timeout(now);
        if self.max_duration_at.is_some_and(|t| t <= now) {
            self.max_duration_at = None;
            if self.state == CallState::Established {
                self.hangup(now, EndCause::MaxDuration);
            }
        }
        if self.no_answer_at.is_some_and(|t| t <= now) {
            self.no_answer_at = None;
            if self.originating() {
                self.originate_abort(now, 408, EndCause::NoAnswer);
            } else if matches!(self.state, CallState::Calling | CallState::Early) {
                self.abandon_b(now);
                self.final_to_a(now, 408, EndCause::NoAnswer);
            }
        }
        self.drain(now);
    }

    /// The media relay's answer to `Event::Media { id, .. }`: the rewritten body, or why
    /// it could not be anchored. Held output is released in order.
    pub fn handle_media(&mut self, now: Instant, id: u64, result: Result<Bytes, MediaFailure>) {
        self.media_done(now, id, result);
        self.drain(now);
    }

    /// Ends the call from the node's side (media timeout, operator, drain deadline):
    /// BYE on both legs of an answered call, CANCEL/final answer for one still ringing.
    pub fn hangup(&mut self, now: Instant, cause: EndCause) {
        self.hangup_with_reason(now, cause, None);
    }

    /// `hangup`, with an RFC 3326 `Reason` header value (`Q.850;cause=16;text="..."`)
    /// on the BYEs, the CANCEL and the caller's final answer, so both ends can tell why.
    pub fn hangup_with_reason(&mut self, now: Instant, cause: EndCause, reason: Option<Bytes>) {
        if reason.is_some() && !self.ended {
            self.reason = reason;
        }
        match self.state {
            CallState::Established => {
                self.bye_leg(now, Leg::A);
                self.bye_leg(now, Leg::B);
                self.state = CallState::Ending;
                self.finish_keep_state(200, cause);
            }
            CallState::Routing | CallState::Calling | CallState::Early if self.originating() => {
                self.originate_abort(now, 480, cause);
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
                fix_nated_contact,
                failover,
                credentials,
                presentation,
                provisional_timeout,
                failover_statuses,
            } => {
                self.anchor = anchor_media;
                self.fix_nated_contact = fix_nated_contact;
                self.failover = failover;
                self.failover_statuses = failover_statuses;
                self.provisional_at = provisional_timeout.map(|t| now + t);
                self.send_b_invite(now, peer, local, request_uri, credentials, &presentation)
            }
        }
        self.drain(now);
    }

    /// A message received on `leg` from `source`.
    pub fn handle_message(&mut self, now: Instant, leg: Leg, msg: Message, source: Peer) {
        match msg {
            Message::Request(r) => self.on_request(now, leg, r, source),
            Message::Response(r) => self.on_response(now, leg, r, source),
        }
        self.drain(now);
    }

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

    /// Emits `Ended` once and moves to the Ended state.
    fn finish(&mut self, status: u16, cause: EndCause) {
        self.state = CallState::Ended;
        self.no_answer_at = None;
        self.provisional_at = None;
        self.max_duration_at = None;
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
            match self.reason.clone() {
                Some(reason) => {
                    if let Some(mut resp) = self
                        .server(sid)
                        .map(|e| e.request.make_response(status, None))
                    {
                        resp.headers.add(HeaderName::Reason, reason);
                        self.respond(now, sid, resp);
                    }
                }
                None => self.respond_status(now, sid, status),
            }
        }
        self.finish(status, cause);
    }

    /// Like `finish`, but leaves the state as it is (Ending while a BYE is out).
    fn finish_keep_state(&mut self, status: u16, cause: EndCause) {
        self.no_answer_at = None;
        self.provisional_at = None;
        self.max_duration_at = None;
        if !self.ended {
            self.ended = true;
            self.events.push_back(Event::Ended { status, cause });
        }
    }
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
            early: false,
            last_ack: None,
            credentials: None,
        }
    }
}
