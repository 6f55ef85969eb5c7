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

/// Marks a peer reached through another node of the cluster: `Peer::connection` is this
/// bit, the node's via index, and over a stream that node's id of the peer's connection
/// (see `via_node`); `Peer::local` is that node's socket. Sends to such a peer go
/// through that node. A node's own connection ids count up from 1 and never come near
/// this bit.
pub const VIA_NODE: u64 = 1 << 63;
/// Bits of `Peer::connection` below the via index: the other node's connection id.
const VIA_CONNECTION_BITS: u32 = 40;
/// Largest via index that fits between the connection id and `VIA_NODE`.
const VIA_INDEX_MAX: u32 = (1 << (63 - VIA_CONNECTION_BITS)) - 1;

/// `Peer::connection` for a peer reached through the node at via index `via`, on that
/// node's connection `connection` (0 over UDP); `None` when either does not fit (the
/// message is then dropped rather than sent to a wrong peer).
pub fn via_node(via: u32, connection: u64) -> Option<u64> {
    (via <= VIA_INDEX_MAX && connection < 1 << VIA_CONNECTION_BITS)
        .then(|| VIA_NODE | u64::from(via) << VIA_CONNECTION_BITS | connection)
}

/// The via index and the other node's connection id of a peer reached through another
/// node (see `via_node`); `None` for a peer of this node.
pub fn via_parts(connection: u64) -> Option<(u32, u64)> {
    if connection & VIA_NODE == 0 {
        return None;
    }
    let via = (connection & !VIA_NODE) >> VIA_CONNECTION_BITS;
    let id = connection & ((1 << VIA_CONNECTION_BITS) - 1);
    Some((u32::try_from(via).ok()?, id))
}

/// Where messages of other nodes' dialogs go in a cluster (the node-to-node service,
/// behind this trait like `Replicate`). Implementations must not block.
pub trait Strays: Send + Sync {
    /// Whether `node` is a live member other than this node.
    fn is_live(&self, node: &str) -> bool;
    /// Queues `data`, received from `source`, for `owner`; false when it cannot go.
    fn forward(&self, owner: &str, data: bytes::Bytes, source: trunkline_sip::Peer) -> bool;
    /// Queues `data` for `peer`, a peer reached through the node at via index `via` on
    /// that node's connection `connection` (0 over UDP; see `via_node`).
    fn emit(&self, via: u32, connection: u64, peer: &trunkline_sip::Peer, data: bytes::Bytes);
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

/// First byte of every encoded record: the layout below. A node that reads another
/// byte there refuses the record ("unknown replica format") instead of misreading it,
/// which is what a rolling update across a layout change needs.
const RECORD_FORMAT: u8 = 1;

/// What a call sends its buddies, as written (see `Record` for the read side).
///
/// Encoded with postcard, not JSON: a snapshot is sent each time a call settles, and
/// JSON's field names and string escaping were the largest part of what replication
/// costs the owner per call (about 2.4 KB and a tenth of its CPU per call at load).
/// The layout is positional, so `Record` must keep the same fields in the same order.
#[derive(Debug, Serialize)]
enum RecordRef<'a> {
    /// A call still ringing: its id only. Nothing can be adopted from it, but if the
    /// owner dies meanwhile the buddy names it as lost.
    Ringing { id: &'a str },
    /// A settled call's whole state.
    Settled(&'a ReplicaState<'a>),
}

/// A record as the adopter reads it back.
#[derive(Debug, Deserialize)]
pub enum Record {
    Ringing { id: String },
    Settled(Box<Replica>),
}

/// Why a record cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("empty replica")]
    Empty,
    #[error("unknown replica format {0} (this node reads format {RECORD_FORMAT})")]
    Format(u8),
    #[error("replica does not decode: {0}")]
    Decode(#[from] postcard::Error),
}

/// Encodes a settled call's state for its buddies.
pub fn encode_settled(state: &ReplicaState<'_>) -> Result<Vec<u8>, postcard::Error> {
    encode(&RecordRef::Settled(state))
}

/// Encodes the record of a call still ringing.
pub fn encode_ringing(id: &str) -> Result<Vec<u8>, postcard::Error> {
    encode(&RecordRef::Ringing { id })
}

fn encode(record: &RecordRef<'_>) -> Result<Vec<u8>, postcard::Error> {
    let mut out = Vec::with_capacity(1024);
    out.push(RECORD_FORMAT);
    postcard::to_extend(record, out)
}

/// Reads back what `encode_settled` or `encode_ringing` wrote.
pub fn decode(bytes: &[u8]) -> Result<Record, RecordError> {
    let (&format, rest) = bytes.split_first().ok_or(RecordError::Empty)?;
    if format != RECORD_FORMAT {
        return Err(RecordError::Format(format));
    }
    Ok(postcard::from_bytes(rest)?)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ringing_record_reads_back_as_ringing() {
        let bytes = encode_ringing("node-a-1f").unwrap();
        assert_eq!(bytes[0], RECORD_FORMAT);
        match decode(&bytes) {
            Ok(Record::Ringing { id }) => assert_eq!(id, "node-a-1f"),
            other => panic!("not a ringing record: {other:?}"),
        }
    }

    #[test]
    fn records_of_another_format_or_cut_short_are_refused() {
        let mut bytes = encode_ringing("node-a-1f").unwrap();
        assert!(matches!(decode(&[]), Err(RecordError::Empty)));
        assert!(matches!(
            decode(&bytes[..bytes.len() - 3]),
            Err(RecordError::Decode(_))
        ));
        bytes[0] = RECORD_FORMAT + 1;
        let err = decode(&bytes).unwrap_err();
        assert!(matches!(err, RecordError::Format(f) if f == RECORD_FORMAT + 1));
        assert!(err.to_string().contains("unknown replica format"), "{err}");
        // A JSON record (what nodes wrote before) is not misread either.
        assert!(decode(br#"{"id":"node-a-1f","ringing":true}"#).is_err());
    }

    #[test]
    fn a_peer_through_another_node_keeps_its_via_index_and_connection() {
        for (via, conn) in [(0, 0), (3, 17), (1023, (1 << 40) - 1), (VIA_INDEX_MAX, 1)] {
            let c = via_node(via, conn).unwrap();
            assert_ne!(c & VIA_NODE, 0);
            assert_eq!(via_parts(c), Some((via, conn)));
        }
    }

    #[test]
    fn own_connections_and_what_does_not_fit_are_not_through_another_node() {
        // This node's own connection ids never carry the bit.
        for own in [1, 42, (1 << 62) + 5] {
            assert_eq!(via_parts(own), None);
        }
        assert_eq!(via_node(VIA_INDEX_MAX + 1, 0), None);
        assert_eq!(via_node(0, 1 << 40), None);
    }
}
