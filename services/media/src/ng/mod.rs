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
//! The ng layer speaks the engine's own types ([`Flags`], [`CallStats`], [`Totals`],
//! [`MediaError`]): ng vocabulary is turned into them while parsing and out of them while
//! shaping a reply, with no mirror types in between to keep in step. The engine is still
//! reached through the small [`NgEngine`] trait rather than `Relay` directly, so the protocol
//! layer is tested and fuzzed against a stub engine, without sockets or threads.

pub mod bencode;
pub mod commands;
pub mod message;
pub mod server;

#[cfg(test)]
mod tests;

use std::time::{Duration, Instant};

use crate::{CallStats, Flags, MediaError, Relay, Totals};

pub use commands::{Dispatcher, ReplyCache};
pub use message::{NgError, Request};
pub use server::{NgServer, ServerLimits};

/// What the ng layer needs from a relay engine: [`Relay`]'s control methods, so tests and
/// fuzzing can put a stub in its place.
///
/// Methods are synchronous and quick (a control lock, maybe a socket bind; never a network
/// wait), so the servers call them inline rather than via `spawn_blocking`. `now` is the
/// dispatcher's clock, passed on as [`Relay`] takes it.
pub trait NgEngine: Send + Sync + 'static {
    /// Anchors the offer's media; returns the rewritten SDP.
    fn offer(
        &self,
        call_id: &str,
        from_tag: &str,
        sdp: &[u8],
        flags: &Flags,
        now: Instant,
    ) -> Result<Vec<u8>, MediaError>;
    /// Anchors the answer's media; returns the rewritten SDP.
    fn answer(
        &self,
        call_id: &str,
        from_tag: &str,
        to_tag: &str,
        sdp: &[u8],
        flags: &Flags,
        now: Instant,
    ) -> Result<Vec<u8>, MediaError>;
    /// The call is established: its inactivity timeouts start (the dispatcher calls it on
    /// every successful `answer`, as rtpengine starts its timeouts with the answer).
    fn established(&self, call_id: &str, now: Instant) -> Result<(), MediaError>;
    /// Ends a call and returns its final stats.
    fn delete(
        &self,
        call_id: &str,
        from_tag: Option<&str>,
        to_tag: Option<&str>,
        now: Instant,
    ) -> Result<CallStats, MediaError>;
    /// Current stats of a call.
    fn query(&self, call_id: &str, now: Instant) -> Option<CallStats>;
    /// Up to `limit` active Call-IDs.
    fn list(&self, limit: usize) -> Vec<String>;
    /// Relay-wide counters.
    fn totals(&self) -> Totals;
    /// Whether `name` is a configured logical interface. The dispatcher asks before an
    /// offer so that an unknown `direction` name falls back to the default the way
    /// rtpengine does, instead of failing the call.
    fn has_interface(&self, name: &str) -> bool;
}

impl NgEngine for Relay {
    fn offer(
        &self,
        call_id: &str,
        from_tag: &str,
        sdp: &[u8],
        flags: &Flags,
        now: Instant,
    ) -> Result<Vec<u8>, MediaError> {
        Relay::offer(self, call_id, from_tag, sdp, flags, now)
    }

    fn answer(
        &self,
        call_id: &str,
        from_tag: &str,
        to_tag: &str,
        sdp: &[u8],
        flags: &Flags,
        now: Instant,
    ) -> Result<Vec<u8>, MediaError> {
        Relay::answer(self, call_id, from_tag, to_tag, sdp, flags, now)
    }

    fn established(&self, call_id: &str, now: Instant) -> Result<(), MediaError> {
        Relay::established(self, call_id, now)
    }

    fn delete(
        &self,
        call_id: &str,
        from_tag: Option<&str>,
        to_tag: Option<&str>,
        now: Instant,
    ) -> Result<CallStats, MediaError> {
        Relay::delete(self, call_id, from_tag, to_tag, now)
    }

    fn query(&self, call_id: &str, now: Instant) -> Option<CallStats> {
        Relay::query(self, call_id, now)
    }

    fn list(&self, limit: usize) -> Vec<String> {
        Relay::list(self, limit)
    }

    fn totals(&self) -> Totals {
        Relay::totals(self)
    }

    fn has_interface(&self, name: &str) -> bool {
        Relay::has_interface(self, name)
    }
}

/// Timeouts the protocol layer uses; exposed so the binary can log them.
pub const REPLY_CACHE_TTL: Duration = Duration::from_secs(30);
