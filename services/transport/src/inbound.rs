//! The upcall interface from the transport to the dispatcher.

use crate::error::TransportError;
use crate::message::Received;
use trunkline_sip::Peer;

/// Receives what the transport reads, and learns about sends that failed.
///
/// It is a trait object rather than a channel so the dispatcher can route a message straight to
/// a call actor's mailbox without an extra hop (ARCHITECTURE: "the hot path is a sharded map and a
/// mailbox").
pub trait Inbound: Send + Sync + 'static {
    /// Called once per framed message, directly from the socket's receive task. It must not
    /// block: a slow implementation stalls every message on that socket or connection.
    fn on_message(&self, msg: Received);

    /// Called exactly once for every message that could not be sent: at once from inside
    /// `Transports::send`/`send_tracked` (queue full, shut down, no socket, connection
    /// limit), or later from a connection task (connect refused or timed out, connection
    /// closed or write failed before the message was written).
    ///
    /// `peer` is the one the message was sent to and `token` the one given to
    /// `send_tracked` (`None` for `send`), so the transaction that sent it can act at once
    /// (RFC 3261 §8.1.3.1: treat as a 503) instead of waiting for timer B/F. Because it may
    /// run inside `send`, it must not block nor take a lock the sender may hold. The
    /// default ignores it.
    fn on_send_error(&self, peer: &Peer, token: Option<u64>, error: &TransportError) {
        let _ = (peer, token, error);
    }
}
