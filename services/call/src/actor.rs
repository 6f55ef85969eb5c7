//! One ractor actor per call, driving a `trunkline_b2bua::Call`.
//!
//! The actor turns each message or timer tick into a `handle_*` call and then pumps
//! the call's outputs: routing requests are answered from the router, messages go
//! straight to the transports, events update metrics and the dispatcher's map, and
//! the next wake-up is scheduled. No other task ever touches the call's state.

use crate::dispatcher::Shared;
use crate::media::{LegAddressing, LegInterfaces, MediaMsg};
use crate::metrics::Direction;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use std::sync::Arc;
use std::time::Instant;
use tokio::task::JoinHandle;
use trunkline_b2bua::{Call, EndCause, Event, Leg, Local, RouteDecision};
use trunkline_sip::{Message, Peer, Request};

/// What a call actor receives.
// Nearly every message is `Sip`; boxing it would add an allocation per packet to spare
// a few bytes on the rare ticks.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum CallMsg {
    /// A parsed SIP message for this call.
    Sip {
        leg: Leg,
        msg: Message,
        source: Peer,
    },
    /// A timer set by the actor itself; stale generations are ignored.
    Tick { generation: u64 },
    /// Sending toward a leg failed at the transport.
    SendFailed { leg: Leg },
    /// The media actor's answer to a rewrite request.
    MediaDone {
        id: u64,
        result: Result<bytes::Bytes, trunkline_b2bua::MediaFailure>,
    },
    /// One of the relay's timeouts caught the call's media session.
    MediaTimeout {
        reason: trunkline_media::TimeoutReason,
    },
}

/// Start-up arguments: the INVITE that creates the call.
pub struct CallArgs {
    pub shared: Arc<Shared>,
    pub invite: Request,
    pub source: Peer,
    pub local: Local,
    pub seed: u64,
    /// The map key of the A-leg Call-ID, to unregister on exit.
    pub a_key: bytes::Bytes,
}

/// The actor's state: the call and what the actor needs to drive it.
pub struct CallActorState {
    call: Call,
    shared: Arc<Shared>,
    span: tracing::Span,
    a_key: bytes::Bytes,
    b_key: Option<bytes::Bytes>,
    timer: Option<(Instant, JoinHandle<()>)>,
    generation: u64,
    counted_end: bool,
    /// Where the caller's INVITE came from (media NAT handling).
    caller_source: std::net::SocketAddr,
    /// The relay interface of each leg: A's from the node's configuration, B's from the
    /// trunk once routed (before B's first offer).
    media_interfaces: LegInterfaces,
    /// The call has a relay session to free when it ends.
    media_used: bool,
    media_key: std::sync::Arc<str>,
}

/// The call actor (stateless handler; all state is in [`CallActorState`]).
pub struct CallActor;

/// The one clock (ARCHITECTURE.md rule 7): tokio's, so paused-time tests drive RFC timers.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

impl Actor for CallActor {
    type Msg = CallMsg;
    type State = CallActorState;
    type Arguments = CallArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<CallMsg>,
        args: CallArgs,
    ) -> Result<CallActorState, ActorProcessingErr> {
        let span = tracing::debug_span!(
            "call",
            a_call_id = %String::from_utf8_lossy(&args.a_key),
            b_call_id = tracing::field::Empty
        );
        let call = {
            let _e = span.enter();
            tracing::debug!(peer = %args.source, uri = %args.invite.uri, "new call");
            Call::new(
                now(),
                args.shared.call_config.clone(),
                args.seed,
                args.invite,
                args.source,
                args.local,
            )
        };
        let caller_source = args.source.addr;
        args.shared.metrics.call_started();
        args.shared
            .live_calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let a_key_for_media = args.a_key.clone();
        let media_interfaces = LegInterfaces {
            a: args.shared.access_interface.clone(),
            b: None,
        };
        let mut state = CallActorState {
            call,
            shared: args.shared,
            span,
            a_key: args.a_key,
            b_key: None,
            timer: None,
            generation: 0,
            counted_end: false,
            caller_source,
            media_interfaces,
            media_used: false,
            media_key: std::sync::Arc::from(String::from_utf8_lossy(&a_key_for_media).as_ref()),
        };
        pump(&myself, &mut state);
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<CallMsg>,
        msg: CallMsg,
        state: &mut CallActorState,
    ) -> Result<(), ActorProcessingErr> {
        let t = now();
        match msg {
            CallMsg::Sip { leg, msg, source } => state.call.handle_message(t, leg, msg, source),
            CallMsg::Tick { generation } => {
                if generation != state.generation {
                    return Ok(());
                }
                state.timer = None;
                state.call.handle_timeout(t);
            }
            CallMsg::SendFailed { leg } => state.call.handle_transport_error(t, leg),
            CallMsg::MediaDone { id, result } => state.call.handle_media(t, id, result),
            CallMsg::MediaTimeout { .. } => state.call.hangup(t, EndCause::MediaTimeout),
        }
        pump(&myself, state);
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
        state.shared.unregister(&state.a_key);
        if let Some(b) = &state.b_key {
            state.shared.unregister(b);
        }
        if !state.counted_end {
            // Stopped before it ended (node shutdown): still balance the gauge.
            state.shared.metrics.call_ended(500);
            state
                .shared
                .live_calls
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
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
            if let Some(b) = state.call.b_call_id() {
                let key = bytes::Bytes::copy_from_slice(b.as_bytes());
                state.span.record("b_call_id", b);
                state.shared.register(key.clone(), myself.clone(), Leg::B);
                state.b_key = Some(key);
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
            state.shared.send(t.peer, t.data);
        }
        if !progressed {
            break;
        }
    }
    if state.call.is_finished() {
        myself.stop(None);
        return;
    }
    if state.call.poll_timeout().is_none() {
        // Idle (answered, nothing in flight): give back what the set-up needed.
        state.call.compact();
    }
    schedule(myself, state);
}

fn on_event(myself: &ActorRef<CallMsg>, state: &mut CallActorState, ev: Event) {
    match ev {
        Event::RouteRequired {
            request_uri,
            caller,
        } => {
            let decision = match state.shared.router.route(&request_uri) {
                Some(trunk) => match state.shared.local_for(trunk.transport) {
                    Some(local) => {
                        state.media_interfaces.b = trunk.media_interface.clone();
                        RouteDecision::Trunk {
                            peer: trunk.peer(),
                            local,
                            request_uri: trunk.request_uri(request_uri.user()),
                            anchor_media: trunk.anchor_media && state.shared.media.is_some(),
                        }
                    }
                    None => RouteDecision::Reject {
                        status: 503,
                        cause: EndCause::TransportError,
                    },
                },
                None => RouteDecision::Reject {
                    status: 404,
                    cause: EndCause::NoRoute,
                },
            };
            tracing::debug!(caller = caller.as_deref().unwrap_or(""), uri = %request_uri, ?decision, "routed");
            state.call.handle_route(now(), decision);
        }
        Event::Answered => {
            tracing::debug!("answered");
            // The relay's inactivity timeouts run from here on, not while the callee rings.
            if let (true, Some(media)) = (state.media_used, &state.shared.media) {
                let _ = media.send_message(MediaMsg::Established {
                    key: state.media_key.clone(),
                });
            }
        }
        Event::Ended { status, cause } => {
            tracing::debug!(status, ?cause, "call ended");
            release_media(state);
            if !state.counted_end {
                state.counted_end = true;
                state.shared.metrics.call_ended(status);
                state
                    .shared
                    .live_calls
                    .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
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
        Event::Settled => {}
        Event::Media { id, op, sdp } => match &state.shared.media {
            Some(media) => {
                state.media_used = true;
                let msg = MediaMsg::Rewrite {
                    key: state.media_key.clone(),
                    id,
                    op,
                    sdp,
                    caller_source: state.caller_source,
                    callee_source: None,
                    interfaces: state.media_interfaces.clone(),
                    addressing: LegAddressing::default(),
                    reply: myself.clone(),
                };
                if media.send_message(msg).is_err() {
                    state.call.handle_media(
                        now(),
                        id,
                        Err(trunkline_b2bua::MediaFailure { status: 503 }),
                    );
                }
            }
            // No relay on this node: the body passes as it is.
            None => state.call.handle_media(now(), id, Ok(sdp)),
        },
    }
}

/// Frees the call's relay ports (once).
fn release_media(state: &mut CallActorState) {
    if !state.media_used {
        return;
    }
    state.media_used = false;
    if let Some(media) = &state.shared.media {
        let _ = media.send_message(MediaMsg::Delete {
            key: state.media_key.clone(),
        });
    }
}

/// Keeps exactly one pending wake-up, at the call's next deadline.
fn schedule(myself: &ActorRef<CallMsg>, state: &mut CallActorState) {
    let next = state.call.poll_timeout();
    if let (Some(next), Some((at, _))) = (next, state.timer.as_ref()) {
        if *at == next {
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
pub fn spawn(args: CallArgs) -> Result<ActorRef<CallMsg>, ractor::SpawnErr> {
    let (actor, _join) = ractor::ActorRuntime::spawn_instant(None, CallActor, args)?;
    Ok(actor)
}
