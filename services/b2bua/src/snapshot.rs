//! The replicable state of a settled call.
//!
//! When a node dies, its buddy restores calls from these snapshots and re-INVITEs
//! both legs; so a snapshot holds both dialogs, both peers, our addresses and the
//! identifier source, and nothing transient (transactions, timers).

use crate::config::Local;
use crate::ids::Ids;
use serde::{Deserialize, Serialize};
use trunkline_sip::{Dialog, Peer};

/// One leg of a settled call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LegSnapshot {
    pub peer: Peer,
    pub local: Local,
    pub call_id: String,
    pub tag: String,
    pub dialog: Dialog,
}

/// A settled call.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CallSnapshot {
    pub ids: Ids,
    /// Whether the call's media is anchored on the relay (the adopter re-anchors it).
    #[serde(default)]
    pub anchor: bool,
    pub a: LegSnapshot,
    pub b: LegSnapshot,
    /// The last SDP the caller and the callee sent (with `CallConfig::keep_sdp`): what
    /// an adopter offers the other party. (Always written: replicas are encoded in a
    /// compact format that has no field names, so no field may be left out.)
    #[serde(default)]
    pub a_sdp: Option<String>,
    #[serde(default)]
    pub b_sdp: Option<String>,
}
