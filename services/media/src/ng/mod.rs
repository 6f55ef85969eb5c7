//! rtpengine's "ng" control protocol, so Kamailio's and OpenSIPS' `rtpengine` modules can drive
//! our relay unchanged.
//!
//! A message is `cookie SP bencode-dictionary`; the reply carries the same cookie. Over UDP one
//! datagram holds one message; over TCP messages follow each other on the stream and the
//! self-delimiting bencode value ends each one (as rtpengine's `listen-tcp-ng` does).
//!
//! Layers, bottom up:
//! - [`bencode`]: bounded scan + `serde_bencode` decode/encode,
//! - [`message`]: cookie split, typed request (keys and flags), reply helpers,
//! - [`commands`]: [`commands::Dispatcher`] runs a request against an [`NgEngine`] and keeps the
//!   per-cookie reply cache,
//! - [`server`]: the tokio UDP and TCP listeners.
//!
//! The engine is reached through the small [`NgEngine`] trait rather than `Relay` directly: the
//! protocol layer then compiles, tests and fuzzes on its own, and the mapping between ng
//! vocabulary and the engine's types sits in one adapter.

pub mod bencode;
pub mod commands;
pub mod message;
pub mod server;

mod relay_impl;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::time::Duration;

pub use commands::{Dispatcher, ReplyCache};
pub use message::{NgError, Request};
pub use server::{NgServer, ServerLimits};

/// Per-offer/answer media behaviour requested over ng (mirrors the engine's `Flags`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MediaFlags {
    /// `trust address`: use the SDP's address rather than the SIP source.
    pub trust_address: bool,
    /// `received from`: the SIP message's source, port 0 (ng gives no port).
    pub received_from: Option<SocketAddr>,
    /// `symmetric` (the default; accepted for rtpproxy compatibility).
    pub symmetric: bool,
    /// `asymmetric`: never learn endpoint addresses from received packets.
    pub asymmetric: bool,
    /// `strict source`: drop packets from anywhere but the learned endpoint.
    pub strict_source: bool,
    /// `media handover`: re-learn the endpoint whenever packets arrive from a new address.
    pub media_handover: bool,
    /// `port latching`: keep our local ports when the remote port changes.
    pub port_latching: bool,
    /// `ICE` = `pass`: leave ICE attributes in the SDP (default: remove them).
    pub keep_ice: bool,
    /// `rtcp-mux` contains `offer`.
    pub rtcp_mux_offer: bool,
    /// `rtcp-mux` contains `demux`.
    pub rtcp_mux_demux: bool,
    /// `replace` contains `origin`.
    pub replace_origin: bool,
    /// `replace` contains `session-connection`.
    pub replace_session_connection: bool,
    /// `direction`: the two logical interface names.
    pub direction: Option<(String, String)>,
}

/// One direction of one media stream, as the engine reports it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StreamSummary {
    /// Packets received on this side's port.
    pub packets: u64,
    /// Bytes received on this side's port.
    pub bytes: u64,
    /// Packets dropped or malformed.
    pub errors: u64,
    /// Milliseconds since the last packet, if any arrived.
    pub last_packet_ms_ago: Option<u64>,
    /// The endpoint address learned from received packets.
    pub latched: Option<SocketAddr>,
    /// Our local port for this side.
    pub local_port: u16,
}

/// A call as `query`/`delete` report it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CallSummary {
    /// The call's Call-ID.
    pub call_id: String,
    /// Milliseconds since the first offer.
    pub created_ms_ago: u64,
    /// Milliseconds since the last offer/answer.
    pub last_signal_ms_ago: u64,
    /// Known SIP tags, from-tag first.
    pub tags: Vec<String>,
    /// Per m-line, in SDP order.
    pub media: Vec<MediaSummary>,
}

/// One m-line of a call.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MediaSummary {
    /// Media kind from the m-line (`audio`, `video`…).
    pub kind: String,
    /// The stream of each side, in [`CallSummary::tags`] order.
    pub sides: Vec<StreamSummary>,
}

/// Relay-wide counters for `statistics`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EngineTotals {
    /// Calls created since start.
    pub sessions: u64,
    /// Calls alive now.
    pub current_sessions: u64,
    /// Packets forwarded.
    pub packets_relayed: u64,
    /// Bytes forwarded.
    pub bytes_relayed: u64,
    /// Packets dropped.
    pub packets_dropped: u64,
    /// Local ports allocated now.
    pub ports_in_use: u64,
    /// Ports released but not yet reusable.
    pub ports_resting: u64,
    /// Calls ended by media timeout.
    pub timeouts: u64,
}

/// How an engine call failed, as far as the ng reply needs to know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    /// No call with that Call-ID (and tags). `delete` turns this into a warning.
    #[error("Unknown call-id")]
    UnknownCall,
    /// Anything else; the text becomes the reply's `error-reason`.
    #[error("{0}")]
    Failed(String),
}

/// What the ng layer needs from a relay engine. `trunkline_media::Relay` implements it; tests
/// and fuzzing may use a stub.
///
/// Methods are synchronous and quick (a control lock, maybe a socket bind; never a network
/// wait), so the servers call them inline rather than via `spawn_blocking`.
pub trait NgEngine: Send + Sync + 'static {
    /// Anchors the offer's media; returns the rewritten SDP.
    fn offer(
        &self,
        call_id: &str,
        from_tag: &str,
        sdp: &[u8],
        flags: &MediaFlags,
    ) -> Result<Vec<u8>, EngineError>;
    /// Anchors the answer's media; returns the rewritten SDP.
    fn answer(
        &self,
        call_id: &str,
        from_tag: &str,
        to_tag: &str,
        sdp: &[u8],
        flags: &MediaFlags,
    ) -> Result<Vec<u8>, EngineError>;
    /// Ends a call (or one branch of it) and returns its final stats.
    fn delete(
        &self,
        call_id: &str,
        from_tag: Option<&str>,
        to_tag: Option<&str>,
    ) -> Result<CallSummary, EngineError>;
    /// Current stats of a call.
    fn query(&self, call_id: &str) -> Option<CallSummary>;
    /// Up to `limit` active Call-IDs.
    fn list(&self, limit: usize) -> Vec<String>;
    /// Relay-wide counters.
    fn totals(&self) -> EngineTotals;
}

/// Timeouts the protocol layer uses; exposed so the binary can log them.
pub const REPLY_CACHE_TTL: Duration = Duration::from_secs(30);
