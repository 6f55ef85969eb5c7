//! The upcall interface from the transport to the dispatcher.

use crate::error::TransportError;
use crate::message::{Received, Target};

/// Receives what the transport reads, and learns about sends that failed.
///
/// It is a trait object rather than a channel so the dispatcher can route a message straight to
/// a call actor's mailbox without an extra hop (ARCHITECTURE: "the hot path is a sharded map and a
/// mailbox").
pub trait Inbound: Send + Sync + 'static {
    /// Called once per framed message, directly from the socket's receive task. It must not
    /// block: a slow implementation stalls every message on that socket or connection.
    fn on_message(&self, msg: Received);

    /// Called when a send could not be done (connection refused, connect timeout, queue full…),
    /// so the transaction layer can act on it at once (RFC 3261 §8.1.3.1: treat as a 503)
    /// instead of waiting for timer B/F. The default ignores it.
    fn on_send_error(&self, target: Target, error: &TransportError) {
        let _ = (target, error);
    }
}
