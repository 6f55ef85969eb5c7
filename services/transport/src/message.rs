//! What the transport hands up (a received message) and what it is asked to send to.

use std::net::SocketAddr;

use bytes::Bytes;

use crate::transport::Transport;

/// Identifies one TCP connection for its whole life.
///
/// Responses must go back over the connection the request came on (RFC 3261 §18.2.2), so the
/// dispatcher keeps this id from [`Received`] and hands it back in [`Target`]. Ids are never
/// reused within a process, so a stale id can only miss, never hit another peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId(pub u64);

/// Exactly one framed SIP message, never a keep-alive.
///
/// `peer` is the address the bytes really came from; the dispatcher uses it for the Via
/// `received`/`rport` parameters (RFC 3581), which is why the transport does not touch Via.
#[derive(Debug, Clone)]
pub struct Received {
    /// Transport the message arrived on.
    pub transport: Transport,
    /// Our address the message arrived at.
    pub local: SocketAddr,
    /// The true source address of the message.
    pub peer: SocketAddr,
    /// The connection it arrived on (`Some` for TCP) so a response can use the same one.
    pub connection: Option<ConnectionId>,
    /// The whole message, headers and body.
    pub data: Bytes,
}

/// Where to send a message.
///
/// `connection` is a preference, not a requirement: if that connection has closed, the send
/// falls back to any open connection to `addr`, and then to a new one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Transport to send over.
    pub transport: Transport,
    /// Destination address.
    pub addr: SocketAddr,
    /// Preferred connection (TCP only), usually the one the request came in on.
    pub connection: Option<ConnectionId>,
}

impl Target {
    /// A target with no preferred connection.
    pub fn new(transport: Transport, addr: SocketAddr) -> Self {
        Target {
            transport,
            addr,
            connection: None,
        }
    }

    /// The target that answers `msg` over the same transport, peer and connection.
    pub fn reply_to(msg: &Received) -> Self {
        Target {
            transport: msg.transport,
            addr: msg.peer,
            connection: msg.connection,
        }
    }
}
