//! How the call layer puts messages on the wire, as a trait: the node implements it with
//! its transports, tests with a recorder — so the dispatcher and the call actors are
//! tested on tokio's paused clock without sockets.

use bytes::Bytes;
use std::net::SocketAddr;
use trunkline_sip::{Host, Peer, Transport};

/// One of the node's SIP sockets, as the call layer needs to know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    pub transport: Transport,
    /// The bound address (port 0 resolved).
    pub local: SocketAddr,
    /// What Via and Contact carry for messages through this socket.
    pub advertise: Host,
}

/// The node's transports, seen from the call layer.
pub trait Outbound: Send + Sync + 'static {
    /// Sends `data` to `peer` from the socket `peer.local` names, without blocking.
    /// A failure of a send with a `token` comes back through the dispatcher's
    /// `on_send_error` with that token (the call's serial).
    fn send(&self, peer: &Peer, data: Bytes, token: Option<u64>);

    /// The listener of `transport` bound at `local` (`None`: that transport's first).
    fn listener(&self, transport: Transport, local: Option<SocketAddr>) -> Option<Listener>;
}

/// The node's transports as the call layer's [`Outbound`].
pub struct TransportOutbound {
    pub transports: trunkline_transport::Transports,
    /// What Via and Contact carry on every listener.
    pub advertise: Host,
}

fn to_transport(t: Transport) -> trunkline_transport::Transport {
    match t {
        Transport::Udp => trunkline_transport::Transport::Udp,
        Transport::Tcp => trunkline_transport::Transport::Tcp,
    }
}

impl Outbound for TransportOutbound {
    fn send(&self, peer: &Peer, data: Bytes, _token: Option<u64>) {
        self.transports.send(
            trunkline_transport::Target {
                transport: to_transport(peer.transport),
                addr: peer.addr,
                connection: peer.connection.map(trunkline_transport::ConnectionId),
            },
            data,
        );
    }

    fn listener(&self, transport: Transport, _local: Option<SocketAddr>) -> Option<Listener> {
        let local = self.transports.local_addr(to_transport(transport))?;
        Some(Listener {
            transport,
            local,
            advertise: self.advertise.clone(),
        })
    }
}
