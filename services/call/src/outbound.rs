//! How the call layer puts messages on the wire, as a trait: the node implements it with
//! its transports, tests with a recorder — so the dispatcher and the call actors are
//! tested on tokio's paused clock without sockets.

use bytes::Bytes;
use std::net::SocketAddr;
use trunkline_sip::{Peer, Transport};

use trunkline_transport::ConnectionPin;
/// One of the node's SIP sockets: its bound address and what Via and Contact carry for
/// messages through it.
pub use trunkline_transport::Listener;

/// The node's transports, seen from the call layer.
pub trait Outbound: Send + Sync + 'static {
    /// Sends `data` to `peer` from the socket `peer.local` names, without blocking.
    /// A failure of a send with a `token` comes back through the dispatcher's
    /// `on_send_error` with that token (the call's serial).
    fn send(&self, peer: &Peer, data: Bytes, token: Option<u64>);

    /// The listener of `transport` bound at `local`; `None`: that transport's first of
    /// the address family of `to` (where a send to `to` leaves from), else its first.
    fn listener(
        &self,
        transport: Transport,
        local: Option<SocketAddr>,
        to: Option<SocketAddr>,
    ) -> Option<Listener>;

    /// Keeps TCP connection `connection` from being closed as idle while the guard
    /// lives: a call may be silent for an hour, and a phone behind NAT can only be
    /// reached over the connection it opened.
    fn pin(&self, connection: u64) -> Option<ConnectionPin>;

    /// Lets requests to `addr` reuse connection `connection` (RFC 5923 `alias`).
    fn alias(&self, connection: u64, addr: SocketAddr) -> bool;

    /// Whether the node reads its input more slowly than it arrives (a deep UDP
    /// receive queue): new calls are then refused so the calls in progress finish.
    fn receive_congested(&self) -> bool {
        false
    }
}

impl Outbound for trunkline_transport::Transports {
    fn send(&self, peer: &Peer, data: Bytes, token: Option<u64>) {
        match token {
            Some(token) => self.send_tracked(peer, data, token),
            None => trunkline_transport::Transports::send(self, peer, data),
        }
    }

    fn listener(
        &self,
        transport: Transport,
        local: Option<SocketAddr>,
        to: Option<SocketAddr>,
    ) -> Option<Listener> {
        match local {
            Some(local) => trunkline_transport::Transports::listener(self, transport, local),
            // The send's own choice (first of the transport and family), else the
            // transport's first.
            None => to
                .and_then(|to| self.listener_for(&Peer::new(transport, to)))
                .or_else(|| self.listeners().iter().find(|l| l.transport == transport)),
        }
        .cloned()
    }

    fn pin(&self, connection: u64) -> Option<ConnectionPin> {
        trunkline_transport::Transports::pin(self, connection)
    }

    fn alias(&self, connection: u64, addr: SocketAddr) -> bool {
        trunkline_transport::Transports::alias(self, connection, addr)
    }

    fn receive_congested(&self) -> bool {
        trunkline_transport::Transports::receive_congested(self)
    }
}
