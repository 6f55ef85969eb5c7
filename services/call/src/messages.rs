//! What call actors receive, and what starts one.

use crate::registry::DialogKey;
use crate::trust::Origin;
use bytes::Bytes;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use trunkline_b2bua::{Leg, Local};
use trunkline_sip::{Message, Peer, Request};

/// What a call actor receives.
// Nearly every message is `Sip`; boxing it would add an allocation per packet to spare
// a few bytes on the rare ticks.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum CallMsg {
    /// A parsed SIP message for this call (counted in the mailbox bound).
    Sip {
        leg: Leg,
        msg: Message,
        source: Peer,
    },
    /// A timer set by the actor itself; stale generations are ignored.
    Tick { generation: u64 },
    /// Sending toward a leg failed at the transport.
    SendFailed { leg: Leg },
    /// One of the relay's timeouts caught the call's media session.
    MediaTimeout {
        reason: trunkline_media::TimeoutReason,
    },
    /// An operator ends the call (admin API): BYE on both legs, or CANCEL and a final
    /// answer while it rings, each carrying `reason` (an RFC 3326 `Reason` value).
    Hangup { reason: Option<Bytes> },
    /// Another node took the call over while this one looked dead: stop without
    /// sending anything for it, and stop replicating it.
    LetGo,
    /// An operator moves `leg` of the answered call to `number`, through `trunk` or
    /// wherever the routing table sends that number; `reply` hears the outcome.
    Transfer {
        leg: Leg,
        number: String,
        trunk: Option<String>,
        reply: tokio::sync::oneshot::Sender<Result<(), TransferFailure>>,
    },
}

/// Why an operator's transfer did not happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransferFailure {
    #[error("no such call on this node")]
    NotFound,
    #[error("the call has already ended")]
    Ended,
    #[error("the call is not answered yet")]
    NotEstablished,
    #[error("another transfer or an offer/answer exchange is in progress on the call")]
    Busy,
    #[error("no trunk named {0:?}")]
    UnknownTrunk(String),
    #[error("no route for {0:?}")]
    NoRoute(String),
    #[error("no listener for the trunk's transport")]
    NoTransport,
    /// The target refused (its final status), never answered (408), or the remaining
    /// leg refused the target's session; the call goes on with its old parties unless
    /// it ended meanwhile.
    #[error("the transfer failed with SIP status {0}")]
    Failed(u16),
}

/// Start-up arguments of a call the node places itself (admin API `OriginateCall`): the
/// two parties, already routed to their trunks.
pub struct OriginateArgs {
    pub a: trunkline_b2bua::Party,
    pub b: trunkline_b2bua::Party,
    pub a_number: String,
    pub b_number: String,
    pub a_trunk: crate::router::Trunk,
    pub b_trunk: crate::router::Trunk,
    pub anchor_media: bool,
    pub seed: u64,
    pub serial: u64,
    pub queued: Arc<AtomicUsize>,
    pub routing: Arc<crate::router::Routing>,
}

/// How a call actor starts: from a caller's INVITE, or placing a call itself.
///
/// Each variant is boxed: ractor moves the arguments several times while it spawns
/// the actor, and unboxed they were 1.8 KiB (an adopted call's replica).
pub enum CallStart {
    Invite(Box<CallArgs>),
    Originate(Box<OriginateArgs>),
    Adopt(Box<AdoptArgs>),
}

/// Start-up arguments of a call taken over from a node that is gone.
pub struct AdoptArgs {
    pub replica: crate::replicate::Replica,
    pub seed: u64,
    pub serial: u64,
    pub queued: Arc<AtomicUsize>,
    pub routing: Arc<crate::router::Routing>,
}

/// Start-up arguments: the INVITE that creates the call.
pub struct CallArgs {
    pub invite: Request,
    pub source: Peer,
    /// Who the caller is (routing never sends a trunk's call back to it).
    pub origin: Origin,
    /// Our address toward the caller: the listener the INVITE arrived on.
    pub local: Local,
    pub seed: u64,
    /// The call's number: the token of its sends, its index in the registry.
    pub serial: u64,
    /// Where the caller's INVITE is registered (Call-ID and its From-tag).
    pub invite_key: DialogKey,
    /// The mailbox counter the dispatcher counts up.
    pub queued: Arc<AtomicUsize>,
    /// The trunks and routes in force when the call arrived (`origin` indexes its
    /// trunks); the call keeps them for its whole life.
    pub routing: Arc<crate::router::Routing>,
    /// The caller's trunk's place under its inbound limit, held while the call lives.
    pub trunk_slot: Option<crate::limits::TrunkSlot>,
}
