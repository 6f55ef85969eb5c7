//! Where settled calls send their state in a cluster (`trunkline-cluster`'s replicator,
//! behind this trait so the call layer does not depend on the layer above it). A call
//! sends its state when it settles (answered and ACKed, a re-INVITE or a transfer done)
//! and says when it ends; neither waits for anything.

use crate::directory::CallRecord;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use trunkline_b2bua::CallSnapshot;

/// Takes calls' state for replication. Implementations must not block.
pub trait Replicate: Send + Sync {
    /// The call's whole replicable state, as it is now.
    fn upsert(&self, call_id: Arc<str>, state: Vec<u8>);
    /// The call is ringing: `state` names it only (see `Ringing`); nothing can be
    /// adopted from it.
    fn ringing(&self, call_id: Arc<str>, state: Vec<u8>);
    /// The call ended.
    fn remove(&self, call_id: Arc<str>);
}

/// Marks a UDP peer reached through another node of the cluster: `Peer::connection`
/// (which UDP peers otherwise never carry) is this bit with the node's via index, and
/// `Peer::local` is that node's socket. Sends to such a peer go through that node.
pub const VIA_NODE: u64 = 1 << 63;

/// Where messages of other nodes' dialogs go in a cluster (the node-to-node service,
/// behind this trait like `Replicate`). Implementations must not block.
pub trait Strays: Send + Sync {
    /// Whether `node` is a live member other than this node.
    fn is_live(&self, node: &str) -> bool;
    /// Queues `data`, received from `source`, for `owner`; false when it cannot go.
    fn forward(&self, owner: &str, data: bytes::Bytes, source: trunkline_sip::Peer) -> bool;
    /// Queues `data` for `peer`, a peer reached through the node at via index `via`
    /// (see `VIA_NODE`).
    fn emit(&self, via: u32, peer: &trunkline_sip::Peer, data: bytes::Bytes);
}

/// What a buddy keeps of a call: the B2BUA's snapshot (both dialogs, peers, our
/// addresses, the identifier source) and what the call directory shows, so an adopted
/// call keeps its id, numbers and times.
#[derive(Debug, Serialize)]
pub struct ReplicaState<'a> {
    pub id: String,
    pub caller: &'a str,
    pub callee: &'a str,
    pub created_ms: u64,
    pub answered_ms: Option<u64>,
    pub from_trunk: Option<&'a str>,
    pub callee_trunk: Option<String>,
    pub media_key: &'a str,
    pub snapshot: &'a CallSnapshot,
}

impl<'a> ReplicaState<'a> {
    pub fn new(record: &'a CallRecord, snapshot: &'a CallSnapshot) -> ReplicaState<'a> {
        ReplicaState {
            id: record.id(),
            caller: &record.caller,
            callee: &record.callee,
            created_ms: record.created_ms,
            answered_ms: record.answered_ms(),
            from_trunk: record.from_trunk.as_deref(),
            callee_trunk: record.callee_leg().map(|b| b.trunk.to_string()),
            media_key: &record.media_key,
            snapshot,
        }
    }
}

/// What a buddy holds of a call that is still ringing: its id only.
#[derive(Debug, Serialize, Deserialize)]
pub struct Ringing<'a> {
    pub id: &'a str,
    pub ringing: bool,
}

/// The first look an adopter takes at a replica: a ringing call cannot be adopted.
#[derive(Debug, Deserialize)]
pub struct Head {
    pub id: String,
    #[serde(default)]
    pub ringing: bool,
}

/// A replica as the adopter reads it back (the owned form of `ReplicaState`).
#[derive(Debug, Clone, Deserialize)]
pub struct Replica {
    pub id: String,
    pub caller: String,
    pub callee: String,
    pub created_ms: u64,
    pub answered_ms: Option<u64>,
    pub from_trunk: Option<String>,
    pub callee_trunk: Option<String>,
    pub media_key: String,
    pub snapshot: CallSnapshot,
}

impl Replica {
    /// The node that took the call first and its serial there, from the call's id
    /// (`<node>-<hex serial>`).
    pub fn origin(&self) -> Option<(&str, u64)> {
        let (node, serial) = self.id.rsplit_once('-')?;
        let serial = u64::from_str_radix(serial, 16).ok()?;
        (!node.is_empty()).then_some((node, serial))
    }
}
