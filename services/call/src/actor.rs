//! One ractor actor per call, driving a `trunkline_b2bua::Call`.
//!
//! The actor turns each message or timer tick into a `handle_*` call and then pumps
//! the call's outputs: routing requests are answered from the router, messages go
//! straight to the transports, events update metrics and the dispatch index, and
//! the next wake-up is scheduled. No other task ever touches the call's state.

use crate::directory::{CallRecord, CalleeLeg, NewCall};
use crate::limits::{TrunkSlot, Way};
use crate::media::{LegAddressing, LegInterfaces};
use crate::messages::{CallArgs, CallMsg, CallStart, OriginateArgs};
use crate::metrics::Direction;
use crate::registry::{CallHandle, DialogKey, Grave};
use crate::rewrite;
use crate::shared::{send_token, Shared};
use crate::trust::Origin;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::task::JoinHandle;
use trunkline_b2bua::{Call, EndCause, Event, Leg, RouteDecision};
use trunkline_sip::{HeaderName, NameAddr};
use trunkline_transport::ConnectionPin;

mod adopt;
mod transfer;

pub use adopt::AdoptError;

/// The actor's state: the call and what the actor needs to drive it.
pub struct CallActorState {
    /// Boxed: a `Call` is over 3 KiB, and the state (inside the actor's future) is moved
    /// several times while the actor is spawned; unboxed, those copies and the page
    /// faults of a large task allocation cost about 5 % of the node's CPU per call.
    call: Box<Call>,
    shared: Arc<Shared>,
    span: tracing::Span,
    serial: u64,
    origin: Origin,
    queued: Arc<AtomicUsize>,
    /// Index entries this call registered, removed when it stops.
    invite_key: DialogKey,
    a_key: DialogKey,
    b_key: Option<DialogKey>,
    timer: Option<(Instant, JoinHandle<()>)>,
    generation: u64,
    /// Set while the actor starts: its first timer is armed once it runs (`post_start`),
    /// not in `pre_start` (see there).
    starting: bool,
    /// The call has ended and given its live-call slot back.
    counted_end: bool,
    /// Where the caller's INVITE came from (media NAT handling).
    caller_source: std::net::SocketAddr,
    /// Where the trunk's messages come from, once routed.
    callee_source: Option<std::net::SocketAddr>,
    /// How each leg's SDP addresses are read: the caller's as an access caller's (`Auto`)
    /// or as its trunk's, the callee's as its trunk's.
    addressing: LegAddressing,
    /// The relay interface of each leg: A's from the node's configuration, B's from the
    /// trunk once routed (before B's first offer).
    media_interfaces: LegInterfaces,
    /// The call has a relay session to free when it ends.
    media_used: bool,
    /// The TCP connection each leg's peer uses, held open while the call lives.
    pins: [Option<ConnectionPin>; 2],
    media_key: Arc<str>,
    /// The call as the admin API sees it.
    record: Arc<CallRecord>,
    /// The trunks and routes in force when the call arrived.
    routing: Arc<crate::router::Routing>,
    /// The trunk the call was routed to (for the record, once the B-leg exists).
    callee_trunk: Option<(Arc<str>, trunkline_sip::Transport)>,
    /// An operator's transfer while it runs.
    transfer: Option<transfer::Pending>,
    /// Dispatch entries of parties a transfer brought in (removed when the call stops).
    extra_keys: Vec<DialogKey>,
    /// The call's places under its trunks' limits: the caller's trunk inbound, the
    /// callee's outbound; given back when the call ends.
    trunk_slots: [Option<TrunkSlot>; 2],
    /// The trunk of the current routing decision, and those that failed the call.
    routed_to: Option<Arc<str>>,
    tried: Vec<Arc<str>>,
    /// The target of a trunk named by DNS the call was sent to, and those that failed it
    /// (RFC 3263 §4.3: the next target is tried before the next trunk).
    routed_target: Option<std::net::SocketAddr>,
    tried_targets: Vec<std::net::SocketAddr>,
}

/// The call actor (stateless handler; all state is in [`CallActorState`]).
pub struct CallActor;

/// The one clock (ARCHITECTURE.md rule 7): tokio's, so paused-time tests drive RFC timers.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

impl CallActorState {
    /// Holds `connection` open for `leg` while the call is up (moving the pin when the
    /// leg's peer moved to another connection).
    fn pin(&mut self, leg: Leg, connection: u64) {
        if self.counted_end {
            return;
        }
        let slot = &mut self.pins[leg_index(leg)];
        if slot.as_ref().map(ConnectionPin::connection) != Some(connection) {
            *slot = self.shared.pin(connection);
        }
    }
}

impl CallActorState {
    /// Routes what names dialog `key` to this call, as a message of `leg`.
    fn register_dialog(&self, myself: &ActorRef<CallMsg>, key: DialogKey, leg: Leg) {
        let handle = CallHandle {
            actor: myself.clone(),
            queued: self.queued.clone(),
            serial: self.serial,
        };
        self.shared.registry.register_dialog(key, handle, leg);
    }
}

fn leg_index(leg: Leg) -> usize {
    match leg {
        Leg::A => 0,
        Leg::B => 1,
    }
}

impl CallActor {
    fn handle_msg(myself: &ActorRef<CallMsg>, msg: CallMsg, state: &mut CallActorState) {
        let t = now();
        match msg {
            CallMsg::Sip { leg, msg, source } => {
                state.queued.fetch_sub(1, Ordering::AcqRel);
                if let Some(c) = source.connection {
                    state.pin(leg, c);
                }
                state.call.handle_message(t, leg, msg, source)
            }
            CallMsg::Tick { generation } => {
                if generation != state.generation {
                    return;
                }
                state.timer = None;
                state.call.handle_timeout(t);
            }
            CallMsg::SendFailed { leg } => state.call.handle_transport_error(t, leg),
            CallMsg::MediaTimeout { .. } => state.call.hangup(t, EndCause::MediaTimeout),
            CallMsg::Hangup { reason } => {
                tracing::info!(call = %state.record.id(), "hung up by an operator");
                state.call.hangup_with_reason(t, EndCause::Local, reason);
            }
            CallMsg::Transfer {
                leg,
                number,
                trunk,
                reply,
            } => transfer::start(myself, state, leg, number, trunk, reply),
            CallMsg::LetGo => {
                tracing::warn!(call = %state.record.id(), "call adopted by another node: let go");
                if let Some(r) = state.shared.replicator.get() {
                    r.remove(Arc::from(state.record.id()));
                }
                myself.stop(Some("adopted elsewhere".into()));
                return;
            }
        }
        pump(myself, state);
    }
}

impl Actor for CallActor {
    type Msg = CallMsg;
    type State = CallActorState;
    type Arguments = (Arc<Shared>, CallStart);

    async fn pre_start(
        &self,
        myself: ActorRef<CallMsg>,
        (shared, start): (Arc<Shared>, CallStart),
    ) -> Result<CallActorState, ActorProcessingErr> {
        let opening = match start {
            CallStart::Invite(args) => open_answering(&shared, *args),
            CallStart::Originate(args) => open_placing(&shared, *args),
            CallStart::Adopt(args) => adopt::open_adopted(&shared, *args).map_err(|e| {
                shared.release();
                shared.adoptions.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "call not adopted");
                Box::new(e) as ActorProcessingErr
            })?,
        };
        let Opening {
            call,
            span,
            new_call,
            invite_key,
            origin,
            serial,
            queued,
            routing,
            caller_source,
            callee_source,
            callee_trunk,
            addressing,
            media_interfaces,
            a_connection,
            placed,
            answered_ms,
            trunk_slot,
        } = opening;
        let media_key = new_call.media_key.clone();
        // Registered before the call's first message leaves, so the caller's requests in
        // the dialog find it.
        let a_key = DialogKey::new(call.a_call_id().as_bytes(), call.a_tag().as_bytes());
        let handle = CallHandle {
            actor: myself.clone(),
            queued: queued.clone(),
            serial,
        };
        if placed {
            // No caller's INVITE registered this call: the API finds it by serial.
            shared.registry.register_serial(handle.clone());
        }
        shared
            .registry
            .register_dialog(a_key.clone(), handle, Leg::A);
        shared.metrics.call_started();
        let record = shared.directory.open(new_call);
        if let Some(ms) = answered_ms {
            shared.directory.answered_at(&record, ms);
        }
        let mut state = CallActorState {
            call,
            span,
            serial,
            origin,
            queued,
            invite_key,
            a_key,
            b_key: None,
            timer: None,
            generation: 0,
            starting: true,
            counted_end: false,
            caller_source,
            callee_source,
            addressing,
            media_interfaces,
            media_used: false,
            pins: [None, None],
            media_key,
            record,
            callee_trunk,
            transfer: None,
            extra_keys: Vec::new(),
            routing,
            trunk_slots: [trunk_slot, None],
            routed_to: None,
            tried: Vec::new(),
            routed_target: None,
            tried_targets: Vec::new(),
            shared,
        };
        if let Some(c) = a_connection {
            state.pin(Leg::A, c);
        }
        pump(&myself, &mut state);
        Ok(state)
    }

    /// Arms the call's first timer. `pre_start` runs in a task of its own that spawns the
    /// actor's task as it ends; a timer task spawned before that would be pushed out of
    /// the worker's next-task slot by the actor's, and the runtime would wake an idle
    /// worker to take it (a third of a thread wake-up per call at low rates).
    async fn post_start(
        &self,
        myself: ActorRef<CallMsg>,
        state: &mut CallActorState,
    ) -> Result<(), ActorProcessingErr> {
        if std::mem::take(&mut state.starting) {
            schedule(&myself, state);
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<CallMsg>,
        msg: CallMsg,
        state: &mut CallActorState,
    ) -> Result<(), ActorProcessingErr> {
        Self::handle_msg(&myself, msg, state);
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<CallMsg>,
        state: &mut CallActorState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some((_, h)) = state.timer.take() {
            h.abort();
        }
        release_media(state);
        let registry = &state.shared.registry;
        registry.unregister_dialog(&state.a_key, state.serial);
        if let Some(b) = &state.b_key {
            registry.unregister_dialog(b, state.serial);
        }
        for k in &state.extra_keys {
            registry.unregister_dialog(k, state.serial);
        }
        registry.unregister_invite(&state.invite_key, state.serial);
        registry.unregister_serial(state.serial);
        state.shared.directory.closed(&state.record);
        if !state.counted_end {
            // Stopped before it ended (node shutdown): still balance the gauges.
            state.counted_end = true;
            state.shared.metrics.call_ended(500);
            state.shared.release();
        }
        Ok(())
    }
}

/// Drains everything the call wants done, until it wants nothing more.
fn pump(myself: &ActorRef<CallMsg>, state: &mut CallActorState) {
    let _e = state.span.clone().entered();
    loop {
        let mut progressed = false;
        while let Some(ev) = state.call.poll_event() {
            progressed = true;
            on_event(myself, state, ev);
        }
        if state.b_key.is_none() {
            if let (Some(call_id), Some(tag)) = (state.call.b_call_id(), state.call.b_tag()) {
                let key = DialogKey::new(call_id.as_bytes(), tag.as_bytes());
                state.span.record("b_call_id", call_id);
                state.register_dialog(myself, key.clone(), Leg::B);
                state.b_key = Some(key);
                if let (Some((trunk, transport)), Some(peer)) =
                    (state.callee_trunk.take(), state.callee_source)
                {
                    state.shared.directory.routed(
                        &state.record,
                        CalleeLeg {
                            trunk,
                            call_id: call_id.to_string(),
                            peer,
                            transport,
                        },
                    );
                }
            }
        }
        while let Some(t) = state.call.poll_transmit() {
            progressed = true;
            let m = &state.shared.metrics;
            if t.retransmission {
                m.retransmission(Direction::Out);
            } else {
                match t.status {
                    Some(s) => m.response(Direction::Out, &t.method, s),
                    None => m.request(Direction::Out, &t.method),
                }
            }
            let token = send_token(state.serial, t.leg);
            state.shared.send(&t.peer, t.data, Some(token));
        }
        if !progressed {
            break;
        }
    }
    if state.call.is_finished() {
        myself.stop(None);
        return;
    }
    if let Some(left) = state.call.take_leftovers() {
        // Ended, and only retransmissions are left to answer: the registry answers
        // them from here on, and the call goes now rather than in 32 s.
        if let (Some(until), false) = (left.until, left.replays.is_empty()) {
            let mut keys = vec![&state.a_key, &state.invite_key];
            keys.extend(state.b_key.as_ref());
            keys.extend(state.extra_keys.iter());
            state.shared.registry.bury(
                &keys,
                Grave {
                    replays: left.replays,
                    until,
                    invite: state
                        .shared
                        .registry
                        .invite_of(&state.invite_key, state.serial),
                },
            );
        }
        myself.stop(None);
        return;
    }
    if state.call.poll_timeout().is_none() {
        // Idle (answered, nothing in flight): give back what the set-up needed.
        state.call.compact();
    }
    schedule(myself, state);
}

/// The routing decision for the call: the first trunk of its route (longest prefix,
/// then shorter ones, then the default) that is up, not tried yet and under its outbound
/// limits. A trunk at its limit is passed over for the next; `failover` tells the call
/// whether another trunk would remain if this one fails.
fn route(state: &mut CallActorState, request_uri: &trunkline_sip::Uri) -> RouteDecision {
    let shared = state.shared.clone();
    let routing = state.routing.clone();
    let router = &routing.router;
    // The caller's trunk's inbound rules first: the route sees the rewritten number.
    let origin_trunk = match state.origin {
        Origin::Trunk(i) => router.trunks().get(i),
        _ => None,
    };
    let dialled_raw = request_uri.user().unwrap_or_default().to_string();
    let inbound = origin_trunk
        .map(|t| t.rewrites.inbound.as_slice())
        .unwrap_or_default();
    let dialled =
        rewrite::apply(inbound, rewrite::Field::RequestUri, &dialled_raw).unwrap_or(dialled_raw);
    let mut rewritten_uri = request_uri.clone();
    if let trunkline_sip::Uri::Sip(u) = &mut rewritten_uri {
        if u.user.is_some() {
            u.user = Some(dialled.clone());
        }
    }
    let request_uri = &rewritten_uri;
    let number = request_uri.user().unwrap_or_default();
    let mut skipped: Vec<Arc<str>> = Vec::new();
    let mut limited = false;
    let roll = rand::random::<u32>();
    // Where a trunk is sent to: its address, or for a trunk named by DNS a target not
    // tried by this call, preferring those no call saw fail lately.
    let tried_targets = state.tried_targets.clone();
    let target_of = |t: &crate::router::Trunk, not: Option<std::net::SocketAddr>| {
        if t.dns.is_none() {
            return Some(t.addr);
        }
        let at = now();
        let fresh = |a: std::net::SocketAddr| {
            tried_targets.contains(&a) || Some(a) == not || shared.dns.is_avoided(a, at)
        };
        crate::dns::pick(&t.targets, fresh, roll)
            .or_else(|| {
                crate::dns::pick(
                    &t.targets,
                    |a| tried_targets.contains(&a) || Some(a) == not,
                    roll,
                )
            })
            .map(|t| t.addr)
    };
    loop {
        let usable = |t: &crate::router::Trunk| {
            shared.health.is_up(&t.name)
                && !state.tried.contains(&t.name)
                && !skipped.contains(&t.name)
                && target_of(t, None).is_some()
        };
        let picked = match router.pick(number, state.origin.trunk(), usable, roll) {
            Ok(p) => p,
            Err(_) if limited => {
                return RouteDecision::Reject {
                    status: 503,
                    cause: EndCause::TrunkLimit,
                }
            }
            // Every trunk the call could take is down (OPTIONS pings) or failed it.
            Err(true) => {
                return RouteDecision::Reject {
                    status: 503,
                    cause: EndCause::NoRoute,
                }
            }
            Err(false) if !state.tried.is_empty() => {
                return RouteDecision::Reject {
                    status: 503,
                    cause: EndCause::NoRoute,
                }
            }
            Err(false) => {
                return RouteDecision::Reject {
                    status: 404,
                    cause: EndCause::NoRoute,
                }
            }
        };
        let trunk = picked.trunk;
        let Some(target) = target_of(trunk, None) else {
            skipped.push(trunk.name.clone());
            continue;
        };
        let Some(local) = shared.local_for(trunk.transport, trunk.local, Some(target)) else {
            return RouteDecision::Reject {
                status: 503,
                cause: EndCause::TransportError,
            };
        };
        let slot = match shared.trunk_counters.admit(
            &trunk.name,
            Way::Outbound,
            trunk.limits.outbound,
            now(),
        ) {
            Ok(slot) => slot,
            Err(hit) => {
                shared
                    .metrics
                    .trunk_limited(&trunk.name, Way::Outbound.as_str(), hit.as_str());
                tracing::debug!(trunk = %trunk.name, limit = hit.as_str(), "trunk limit: trying the next route");
                skipped.push(trunk.name.clone());
                limited = true;
                continue;
            }
        };
        let failover = target_of(trunk, Some(target)).is_some_and(|_| trunk.dns.is_some())
            || router
                .pick(
                    number,
                    state.origin.trunk(),
                    |t| {
                        t.name != trunk.name
                            && shared.health.is_up(&t.name)
                            && !state.tried.contains(&t.name)
                            && !skipped.contains(&t.name)
                            && target_of(t, None).is_some()
                    },
                    roll,
                )
                .is_ok();
        state.trunk_slots[1] = Some(slot);
        state.media_interfaces.b = trunk.media_interface.clone();
        state.addressing.b = trunk.media_address;
        state.callee_source = Some(target);
        state.callee_trunk = Some((trunk.name.clone(), trunk.transport));
        state.routed_to = Some(trunk.name.clone());
        state.routed_target = trunk.dns.as_ref().map(|_| target);
        // Then the callee's trunk's outbound rules, for the B leg.
        let outbound = trunk.rewrites.outbound.as_slice();
        let b_user = rewrite::apply(outbound, rewrite::Field::RequestUri, &dialled)
            .unwrap_or_else(|| dialled.clone());
        let caller = state.record.caller.clone();
        let from_in = rewrite::apply(inbound, rewrite::Field::From, &caller);
        let from_out = rewrite::apply(
            outbound,
            rewrite::Field::From,
            from_in.as_deref().unwrap_or(&caller),
        );
        let to_in = rewrite::apply(inbound, rewrite::Field::To, &b_user);
        let to_out = rewrite::apply(
            outbound,
            rewrite::Field::To,
            to_in.as_deref().unwrap_or(&b_user),
        );
        let presentation = trunkline_b2bua::Presentation {
            from_user: from_out.or(from_in),
            to_user: to_out.or(to_in),
            assert_identity: origin_trunk.is_some_and(|t| t.trusted_identity),
            callee_trusted: trunk.trusted_identity,
        };
        return RouteDecision::Trunk {
            peer: trunkline_sip::Peer {
                addr: target,
                ..trunk.peer()
            },
            local,
            request_uri: trunk.request_uri(request_uri.user().map(|_| b_user.as_str())),
            presentation,
            anchor_media: trunk.anchor_media && shared.media.is_some(),
            fix_nated_contact: trunk.fix_nated_contact,
            failover,
            credentials: trunk.outbound_credentials.clone(),
            provisional_timeout: picked.route.and_then(|r| r.provisional_timeout),
            failover_statuses: picked.route.and_then(|r| r.failover_statuses.clone()),
        };
    }
}

fn on_event(myself: &ActorRef<CallMsg>, state: &mut CallActorState, ev: Event) {
    match ev {
        Event::RouteRequired {
            request_uri,
            caller,
        } => {
            let decision = route(state, &request_uri);
            tracing::debug!(caller = caller.as_deref().unwrap_or(""), uri = %request_uri, ?decision, "routed");
            state.call.handle_route(now(), decision);
        }
        Event::RouteFailed { status } => {
            // The next RouteRequired picks among the trunks not tried yet.
            if let Some(trunk) = state.routed_to.take() {
                tracing::info!(trunk = %trunk, status, target = ?state.routed_target, "trunk failed the call: trying the next");
                state.shared.metrics.failover(&trunk);
                match state.routed_target.take() {
                    // A named trunk's other targets come first; this one is avoided
                    // by every call for a while.
                    Some(target) => {
                        state.tried_targets.push(target);
                        let at = now();
                        state
                            .shared
                            .dns
                            .avoid(target, at, at + state.shared.cfg.dns.avoid);
                    }
                    None => state.tried.push(trunk),
                }
            }
            state.trunk_slots[1] = None;
            if let Some(key) = state.b_key.take() {
                // Late answers of the failed leg still find the call.
                state.extra_keys.push(key);
            }
        }
        Event::Progress {
            status,
            early_media,
        } => {
            let first = state.record.ringing_ms().is_none();
            state
                .shared
                .directory
                .progress(&state.record, status, early_media);
            if first {
                replicate_ringing(state);
            }
        }
        Event::Hold { by, held } => {
            state.shared.directory.hold(&state.record, by, held);
        }
        Event::Answered => {
            tracing::debug!("answered");
            state.shared.directory.answered(&state.record);
            // The relay's inactivity timeouts run from here on, not while the callee rings.
            if let (true, Some(media)) = (state.media_used, &state.shared.media) {
                media.established(&state.media_key);
            }
        }
        Event::Ended { status, cause } => {
            tracing::debug!(status, ?cause, "call ended");
            if let Some(r) = state.shared.replicator.get() {
                r.remove(Arc::from(state.record.id()));
            }
            state.shared.directory.ended(&state.record, status, cause);
            release_media(state);
            state.pins = [None, None];
            state.trunk_slots = [None, None];
            if !state.counted_end {
                state.counted_end = true;
                state.shared.metrics.call_ended(status);
                state.shared.release();
            }
        }
        Event::TransactionTimeout { leg, timer } => {
            tracing::debug!(?leg, %timer, "transaction timeout");
            let mut buf = [0u8; 4];
            state
                .shared
                .metrics
                .transaction_timeout(timer.encode_utf8(&mut buf));
        }
        Event::RetransmissionReceived { .. } => {
            state.shared.metrics.retransmission(Direction::In);
        }
        Event::Settled => replicate(state),
        Event::Adopted { ok } => {
            let counters = &state.shared.adoptions;
            if ok {
                counters.adopted.fetch_add(1, Ordering::Relaxed);
                tracing::info!(call = %state.record.id(), "call adopted: both legs moved here");
                // The relay's inactivity timeouts run from here on.
                if let (true, Some(media)) = (state.media_used, &state.shared.media) {
                    media.established(&state.media_key);
                }
            } else {
                counters.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(call = %state.record.id(), "adopted call refused by a leg: hung up");
            }
        }
        Event::TransferAnswered { leg } => transfer::answered(state, leg),
        Event::Transferred { leg } => transfer::done(state, leg),
        Event::TransferFailed { leg, status } => transfer::failed(state, leg, status),
        Event::Media { id, op, sdp } => match &state.shared.media {
            Some(media) => {
                if !state.media_used {
                    state.shared.directory.anchored(&state.record);
                }
                state.media_used = true;
                let req = crate::media::Rewrite {
                    op,
                    sdp: &sdp,
                    caller_source: state.caller_source,
                    callee_source: state.callee_source,
                    interfaces: &state.media_interfaces,
                    addressing: state.addressing,
                };
                let result = media.rewrite(&state.media_key, &req, myself);
                state.call.handle_media(now(), id, result);
            }
            // No relay on this node: the body passes as it is.
            None => state.call.handle_media(now(), id, Ok(sdp)),
        },
    }
}

/// Sends the settled call's state to its buddies (cluster mode): a snapshot exists only
/// when both dialogs are up and nothing is in flight.
fn replicate(state: &CallActorState) {
    let Some(r) = state.shared.replicator.get() else {
        return;
    };
    let Some(snap) = state.call.snapshot() else {
        return;
    };
    let replica = crate::replicate::ReplicaState::new(&state.record, &snap);
    match crate::replicate::encode_settled(&replica) {
        Ok(bytes) => r.upsert(Arc::from(replica.id.as_str()), bytes),
        Err(e) => tracing::warn!(error = %e, "call state not replicated"),
    }
}

/// Tells the buddies a call is ringing (cluster mode): nothing of it can be adopted,
/// but if this node dies meanwhile its buddy counts and names it as lost. Its answer
/// (`Event::Settled`) or end replaces or removes this record.
fn replicate_ringing(state: &CallActorState) {
    let Some(r) = state.shared.replicator.get() else {
        return;
    };
    let id = state.record.id();
    if let Ok(bytes) = crate::replicate::encode_ringing(&id) {
        r.ringing(Arc::from(id.as_str()), bytes);
    }
}

/// Frees the call's relay ports (once).
fn release_media(state: &mut CallActorState) {
    if !state.media_used {
        return;
    }
    state.media_used = false;
    if let Some(media) = &state.shared.media {
        media.delete(&state.media_key);
    }
}

/// Keeps one pending wake-up, no later than the call's next deadline. A wake-up already
/// armed at or before that deadline is kept: firing early only makes the call look at
/// its timers and arm the next one, which is far cheaper than a new timer task each time
/// a deadline moves later (most of a call's deadline changes do).
fn schedule(myself: &ActorRef<CallMsg>, state: &mut CallActorState) {
    if state.starting {
        return;
    }
    let next = state.call.poll_timeout();
    if let Some((at, _)) = state.timer.as_ref() {
        if next.is_none_or(|next| *at <= next) {
            return;
        }
    }
    if let Some((_, h)) = state.timer.take() {
        h.abort();
    }
    let Some(next) = next else { return };
    state.generation += 1;
    let generation = state.generation;
    let delay = next.saturating_duration_since(now());
    let me = myself.clone();
    let handle = tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        let _ = me.send_message(CallMsg::Tick { generation });
    });
    state.timer = Some((next, handle));
}

/// Spawns a call actor without waiting for it to start: messages sent meanwhile queue.
pub fn spawn(shared: Arc<Shared>, args: CallArgs) -> Result<ActorRef<CallMsg>, ractor::SpawnErr> {
    let (actor, _join) = ractor::ActorRuntime::spawn_instant(
        None,
        CallActor,
        (shared, CallStart::Invite(Box::new(args))),
    )?;
    Ok(actor)
}

/// Spawns the actor of a call taken over from a node that is gone and waits until it
/// has started (its re-INVITEs are on their way).
pub async fn spawn_adopted(
    shared: Arc<Shared>,
    args: crate::messages::AdoptArgs,
) -> Result<ActorRef<CallMsg>, ractor::SpawnErr> {
    let (actor, _join) =
        Actor::spawn(None, CallActor, (shared, CallStart::Adopt(Box::new(args)))).await?;
    Ok(actor)
}

/// Spawns the actor of a call the node places itself and waits until it has started
/// (its record is in the directory and its first INVITE is on its way).
pub async fn spawn_originated(
    shared: Arc<Shared>,
    args: OriginateArgs,
) -> Result<ActorRef<CallMsg>, ractor::SpawnErr> {
    let (actor, _join) = Actor::spawn(
        None,
        CallActor,
        (shared, CallStart::Originate(Box::new(args))),
    )
    .await?;
    Ok(actor)
}

/// What differs between a call a caller made and one the node places, as the actor
/// starts.
struct Opening {
    call: Box<Call>,
    span: tracing::Span,
    new_call: NewCall,
    invite_key: DialogKey,
    origin: Origin,
    serial: u64,
    queued: Arc<AtomicUsize>,
    routing: Arc<crate::router::Routing>,
    caller_source: std::net::SocketAddr,
    callee_source: Option<std::net::SocketAddr>,
    callee_trunk: Option<(Arc<str>, trunkline_sip::Transport)>,
    addressing: LegAddressing,
    media_interfaces: LegInterfaces,
    a_connection: Option<u64>,
    /// No caller's INVITE registered the call (the node places it, or adopted it): the
    /// API finds it by serial.
    placed: bool,
    /// An adopted call was answered before it came here (ms since the epoch).
    answered_ms: Option<u64>,
    /// The caller's trunk's place under its inbound limit.
    trunk_slot: Option<TrunkSlot>,
}

/// A caller's INVITE: the call answers it and asks for a route.
fn open_answering(shared: &Arc<Shared>, args: CallArgs) -> Opening {
    let a_call_id = args.invite_key.call_id.clone();
    let span = tracing::debug_span!(
        "call",
        a_call_id = %String::from_utf8_lossy(&a_call_id),
        b_call_id = tracing::field::Empty
    );
    let callee = args.invite.uri.user().unwrap_or_default().to_string();
    // Kept for an INVITE refused on arrival, which has no dialog to read the caller from.
    let from = args.invite.headers.get(HeaderName::From).cloned();
    let call = {
        let _e = span.enter();
        tracing::debug!(peer = %args.source, uri = %args.invite.uri, origin = ?args.origin, "new call");
        Call::new(
            now(),
            shared.cfg.call.clone(),
            args.seed,
            args.invite,
            args.source,
            args.local,
        )
    };
    let media_key: Arc<str> = Arc::from(String::from_utf8_lossy(&a_call_id).as_ref());
    let origin_trunk = match args.origin {
        Origin::Trunk(i) => args.routing.router.trunks().get(i),
        _ => None,
    };
    let caller = match call.a_remote_uri() {
        Some(f) => f.uri.user().map(str::to_string),
        None => from
            .and_then(|f| NameAddr::parse(&f))
            .and_then(|f| f.uri.user().map(str::to_string)),
    }
    .unwrap_or_default();
    let mut call = call;
    call.set_credentials(
        Leg::A,
        origin_trunk.and_then(|t| t.outbound_credentials.clone()),
    );
    Opening {
        call: Box::new(call),
        span,
        new_call: NewCall {
            serial: args.serial,
            caller,
            callee,
            a_peer: args.source.addr,
            a_transport: args.source.transport,
            from_trunk: origin_trunk.map(|t| t.name.clone()),
            media_key,
            adopted: None,
        },
        invite_key: args.invite_key,
        origin: args.origin,
        serial: args.serial,
        queued: args.queued,
        caller_source: args.source.addr,
        callee_source: None,
        callee_trunk: None,
        addressing: LegAddressing {
            a: origin_trunk.map_or(LegAddressing::default().a, |t| t.media_address),
            ..LegAddressing::default()
        },
        media_interfaces: LegInterfaces {
            a: shared.cfg.access_interface.clone(),
            b: None,
        },
        a_connection: args.source.connection,
        placed: false,
        answered_ms: None,
        trunk_slot: args.trunk_slot,
        routing: args.routing,
    }
}

/// A call the node places: both parties' trunks are known from the start.
fn open_placing(shared: &Arc<Shared>, args: OriginateArgs) -> Opening {
    let mut call = Call::originate(
        now(),
        shared.cfg.call.clone(),
        args.seed,
        args.a,
        args.b,
        args.anchor_media,
    );
    call.set_credentials(Leg::A, args.a_trunk.outbound_credentials.clone());
    call.set_credentials(Leg::B, args.b_trunk.outbound_credentials.clone());
    let a_call_id = call.a_call_id().to_string();
    let span = tracing::debug_span!(
        "call",
        a_call_id = %a_call_id,
        b_call_id = tracing::field::Empty
    );
    tracing::info!(parent: &span, a = %args.a_number, b = %args.b_number, "placing a call");
    let invite_key = DialogKey::new(a_call_id.as_bytes(), call.a_tag().as_bytes());
    Opening {
        call: Box::new(call),
        span,
        new_call: NewCall {
            serial: args.serial,
            caller: args.a_number,
            callee: args.b_number,
            a_peer: args.a_trunk.addr,
            a_transport: args.a_trunk.transport,
            from_trunk: Some(args.a_trunk.name.clone()),
            media_key: Arc::from(a_call_id.as_str()),
            adopted: None,
        },
        invite_key,
        origin: Origin::Access,
        serial: args.serial,
        queued: args.queued,
        caller_source: args.a_trunk.addr,
        callee_source: Some(args.b_trunk.addr),
        callee_trunk: Some((args.b_trunk.name.clone(), args.b_trunk.transport)),
        addressing: LegAddressing {
            a: args.a_trunk.media_address,
            b: args.b_trunk.media_address,
        },
        media_interfaces: LegInterfaces {
            a: args.a_trunk.media_interface.clone(),
            b: args.b_trunk.media_interface.clone(),
        },
        a_connection: None,
        placed: true,
        answered_ms: None,
        trunk_slot: None,
        routing: args.routing,
    }
}
