//! An operator's blind transfer, on the actor's side: the target is found in the
//! routing table in force now (an operator may just have added its trunk), the B2BUA
//! runs the SIP flow, and the actor moves the leg's media parameters, dispatch entry and
//! record to the new party as the flow reaches each step.

use super::{now, CallActorState};
use crate::directory::CalleeLeg;
use crate::messages::{CallMsg, TransferFailure};
use crate::registry::DialogKey;
use crate::router::{TargetError, Trunk};
use ractor::ActorRef;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::oneshot;
use trunkline_b2bua::{Leg, TransferError, TransferTarget};
use trunkline_media::AddressPolicy;
use trunkline_sip::Transport;

/// A leg's media parameters: where its signalling comes from, how its SDP addresses
/// are read, and the relay interface it is anchored on.
#[derive(Debug, Clone)]
struct MediaSide {
    source: Option<SocketAddr>,
    addressing: AddressPolicy,
    interface: Option<Arc<str>>,
}

/// A transfer the actor is running.
pub(super) struct Pending {
    leg: Leg,
    trunk: Arc<str>,
    transport: Transport,
    target: MediaSide,
    /// The moved leg's parameters before the target answered, put back if it fails.
    before: Option<MediaSide>,
    reply: Option<oneshot::Sender<Result<(), TransferFailure>>>,
}

/// The trunk a transfer to `number` goes through, from the routing table in force now
/// (an operator may just have added the target's trunk).
fn pick_trunk(
    state: &CallActorState,
    number: &str,
    trunk: Option<&str>,
) -> Result<Trunk, TransferFailure> {
    let routing = state.shared.routing.load();
    match routing.router.target(number, trunk) {
        Ok(t) => Ok(t.clone()),
        Err(TargetError::UnknownTrunk(n)) => Err(TransferFailure::UnknownTrunk(n)),
        Err(TargetError::NoRoute(n)) => Err(TransferFailure::NoRoute(n)),
    }
}

/// Starts the transfer of `leg` to `number`; `reply` hears the outcome.
pub(super) fn start(
    myself: &ActorRef<CallMsg>,
    state: &mut CallActorState,
    leg: Leg,
    number: String,
    trunk: Option<String>,
    reply: oneshot::Sender<Result<(), TransferFailure>>,
) {
    if state.transfer.is_some() {
        let _ = reply.send(Err(TransferFailure::Busy));
        return;
    }
    let trunk = match pick_trunk(state, &number, trunk.as_deref()) {
        Ok(t) => t,
        Err(e) => {
            let _ = reply.send(Err(e));
            return;
        }
    };
    let Some(local) = state
        .shared
        .local_for(trunk.transport, trunk.local, Some(trunk.addr))
    else {
        let _ = reply.send(Err(TransferFailure::NoTransport));
        return;
    };
    let target = TransferTarget {
        peer: trunk.peer(),
        local,
        request_uri: trunk.request_uri(Some(&number)),
    };
    if let Err(e) = state.call.transfer(now(), leg, target) {
        let _ = reply.send(Err(match e {
            TransferError::NotEstablished => TransferFailure::NotEstablished,
            TransferError::Busy => TransferFailure::Busy,
        }));
        return;
    }
    // The target's answers name its dialog: they reach this call, on the moved leg.
    if let Some((call_id, tag)) = state.call.transfer_key() {
        let key = DialogKey::new(call_id.as_bytes(), tag.as_bytes());
        state.register_dialog(myself, key.clone(), leg);
        state.extra_keys.push(key);
    }
    tracing::info!(call = %state.record.id(), ?leg, %number, trunk = %trunk.name, "transfer started by an operator");
    state.transfer = Some(Pending {
        leg,
        trunk: trunk.name.clone(),
        transport: trunk.transport,
        target: MediaSide {
            source: Some(trunk.addr),
            addressing: trunk.media_address,
            interface: trunk.media_interface.clone(),
        },
        before: None,
        reply: Some(reply),
    });
}

fn media_side(state: &CallActorState, leg: Leg) -> MediaSide {
    MediaSide {
        source: match leg {
            Leg::A => Some(state.caller_source),
            Leg::B => state.callee_source,
        },
        addressing: state.addressing.of(leg),
        interface: state.media_interfaces.of(leg).cloned(),
    }
}

fn set_media_side(state: &mut CallActorState, leg: Leg, side: MediaSide) {
    match leg {
        Leg::A => {
            if let Some(s) = side.source {
                state.caller_source = s;
            }
            state.addressing.a = side.addressing;
            state.media_interfaces.a = side.interface;
        }
        Leg::B => {
            state.callee_source = side.source;
            state.addressing.b = side.addressing;
            state.media_interfaces.b = side.interface;
        }
    }
}

/// The target answered: from now on the relay's side of the moved leg is the target's.
pub(super) fn answered(state: &mut CallActorState, leg: Leg) {
    let Some(target) = state
        .transfer
        .as_ref()
        .filter(|p| p.leg == leg)
        .map(|p| p.target.clone())
    else {
        return;
    };
    let before = media_side(state, leg);
    set_media_side(state, leg, target);
    if let Some(p) = state.transfer.as_mut() {
        p.before = Some(before);
    }
}

/// The leg now is the target: the record shows it, and the operator hears so.
pub(super) fn done(state: &mut CallActorState, leg: Leg) {
    let Some(mut p) = state.transfer.take() else {
        return;
    };
    let call_id = match leg {
        Leg::A => Some(state.call.a_call_id().to_string()),
        Leg::B => state.call.b_call_id().map(str::to_string),
    };
    if let (Some(call_id), Some(peer)) = (call_id, p.target.source) {
        state.shared.directory.transferred(
            &state.record,
            leg,
            CalleeLeg {
                trunk: p.trunk.clone(),
                call_id,
                peer,
                transport: p.transport,
            },
        );
    }
    // The old party's connection is no longer the call's.
    state.pins[super::leg_index(leg)] = None;
    tracing::info!(call = %state.record.id(), ?leg, trunk = %p.trunk, "transferred");
    if let Some(reply) = p.reply.take() {
        let _ = reply.send(Ok(()));
    }
}

/// The transfer failed: the leg keeps its old party (and its media parameters).
pub(super) fn failed(state: &mut CallActorState, leg: Leg, status: u16) {
    let Some(mut p) = state.transfer.take() else {
        return;
    };
    if let Some(before) = p.before.take() {
        set_media_side(state, leg, before);
    }
    tracing::info!(call = %state.record.id(), ?leg, status, "transfer failed");
    if let Some(reply) = p.reply.take() {
        let _ = reply.send(Err(TransferFailure::Failed(status)));
    }
}
