//! What a node publishes about itself under `/trunkline/nodes/<id>`.

use serde::{Deserialize, Serialize};

/// Whether a node takes new calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    Active,
    /// Takes no new calls; its calls go on (and, later, move to their buddies).
    Draining,
}

/// A node as the cluster sees it: its addresses, version and state. JSON in etcd, so an
/// operator reads it with `etcdctl get --prefix /trunkline/nodes/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub id: String,
    pub version: String,
    pub state: NodeState,
    /// SIP listeners, as `transport/address` (`udp/127.0.0.11:5060`).
    pub sip: Vec<String>,
    /// The admin API's address, if it listens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<String>,
    /// Where other nodes reach this one (`trunkline.cluster.v1`), as host:port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// Milliseconds since the Unix epoch when the node started.
    pub started_ms: u64,
}

/// The etcd prefix of the membership.
pub const NODES_PREFIX: &str = "/trunkline/nodes/";

/// The key of node `id`.
pub fn node_key(id: &str) -> String {
    format!("{NODES_PREFIX}{id}")
}
