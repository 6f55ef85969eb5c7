//! How a call actor starts for a call taken over from a node that is gone: the
//! replica's snapshot becomes a `Call` that re-INVITEs both legs from this node.

use super::{now, Opening};
use crate::directory::{AdoptedFrom, NewCall};
use crate::media::{LegAddressing, LegInterfaces};
use crate::messages::AdoptArgs;
use crate::registry::DialogKey;
use crate::shared::Shared;
use crate::trust::Origin;
use bytes::Bytes;
use std::sync::Arc;
use trunkline_b2bua::{Adoption, Call};

/// An SDP with its origin version raised by one: each party last received the other's
/// session from the dead node with the version it had then, and an offer with the same
/// version may be taken as "no change" (RFC 3264 §8), which would keep the party's
/// media pointed at the dead node. A body that does not parse goes as it is.
fn raised(sdp: Option<&str>) -> Bytes {
    let Some(sdp) = sdp else {
        return Bytes::new();
    };
    match trunkline_sdp::parse(sdp.as_bytes()) {
        Ok(mut parsed) => {
            parsed.bump_version();
            Bytes::from(parsed.to_bytes())
        }
        Err(_) => Bytes::from(sdp.to_string()),
    }
}

/// Why a replica cannot be adopted here.
#[derive(Debug, thiserror::Error)]
pub enum AdoptError {
    #[error("the replica's id {0:?} is not a call id")]
    BadId(String),
    #[error("no listener for the {0} transport of the call's legs")]
    NoTransport(trunkline_sip::Transport),
    #[error("the replica has no SDP for one of the parties")]
    NoSdp,
}

pub(super) fn open_adopted(shared: &Arc<Shared>, args: AdoptArgs) -> Result<Opening, AdoptError> {
    let r = args.replica;
    let (node, id_serial) = r.origin().ok_or_else(|| AdoptError::BadId(r.id.clone()))?;
    let node: Arc<str> = Arc::from(node);
    let snap = r.snapshot;
    let routing = args.routing;
    let trunks = routing.router.trunks();
    let from_trunk = r
        .from_trunk
        .as_deref()
        .and_then(|n| trunks.iter().position(|t| &*t.name == n));
    let callee_trunk = r
        .callee_trunk
        .as_deref()
        .and_then(|n| trunks.iter().find(|t| &*t.name == n));
    let a_local = shared
        .local_for(snap.a.local.transport, None, None)
        .ok_or(AdoptError::NoTransport(snap.a.local.transport))?;
    let b_local = shared
        .local_for(
            snap.b.local.transport,
            callee_trunk.and_then(|t| t.local),
            callee_trunk.map(|t| t.addr),
        )
        .ok_or(AdoptError::NoTransport(snap.b.local.transport))?;
    if snap.a_sdp.is_none() || snap.b_sdp.is_none() {
        return Err(AdoptError::NoSdp);
    }
    let adoption = Adoption {
        a_local,
        b_local,
        a_sdp: raised(snap.a_sdp.as_deref()),
        b_sdp: raised(snap.b_sdp.as_deref()),
        seed: args.seed,
    };
    let (a_peer, a_transport, b_peer) = (snap.a.peer, snap.a.local.transport, snap.b.peer);
    let span = tracing::debug_span!(
        "call",
        a_call_id = %snap.a.call_id,
        b_call_id = %snap.b.call_id
    );
    tracing::info!(parent: &span, call = %r.id, "adopting a call");
    let mut call = Call::adopt(now(), shared.cfg.call.clone(), snap, adoption);
    let invite_key = DialogKey::new(call.a_call_id().as_bytes(), call.a_tag().as_bytes());
    let origin = from_trunk.map_or(Origin::Access, Origin::Trunk);
    let origin_trunk = from_trunk.and_then(|i| trunks.get(i));
    // Credentials are never replicated: they come from this node's own trunk table.
    call.set_credentials(
        trunkline_b2bua::Leg::A,
        origin_trunk.and_then(|t| t.outbound_credentials.clone()),
    );
    call.set_credentials(
        trunkline_b2bua::Leg::B,
        callee_trunk.and_then(|t| t.outbound_credentials.clone()),
    );
    Ok(Opening {
        call: Box::new(call),
        span,
        new_call: NewCall {
            serial: args.serial,
            caller: r.caller,
            callee: r.callee,
            a_peer: a_peer.addr,
            a_transport,
            from_trunk: origin_trunk.map(|t| t.name.clone()),
            media_key: Arc::from(r.media_key.as_str()),
            adopted: Some(AdoptedFrom {
                node,
                serial: id_serial,
                created_ms: r.created_ms,
            }),
        },
        invite_key,
        origin,
        serial: args.serial,
        queued: args.queued,
        caller_source: a_peer.addr,
        callee_source: Some(b_peer.addr),
        callee_trunk: callee_trunk.map(|t| (t.name.clone(), t.transport)),
        addressing: LegAddressing {
            a: origin_trunk.map_or(LegAddressing::default().a, |t| t.media_address),
            b: callee_trunk.map_or(LegAddressing::default().b, |t| t.media_address),
        },
        media_interfaces: LegInterfaces {
            a: shared.cfg.access_interface.clone(),
            b: callee_trunk.and_then(|t| t.media_interface.clone()),
        },
        a_connection: None,
        placed: true,
        answered_ms: r.answered_ms,
        trunk_slot: None,
        routing: routing.clone(),
    })
}
