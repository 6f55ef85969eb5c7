//! Socket addresses and the limits that protect the node from its peers.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

/// What to bind and how much to trust peers.
///
/// The defaults bind UDP and TCP on `127.0.0.1:5060`, so a node with no config at all starts and
/// serves locally; production configs list their public addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportConfig {
    /// UDP addresses to bind (port 0 picks a free port).
    pub udp: Vec<SocketAddr>,
    /// TCP addresses to listen on (port 0 picks a free port).
    pub tcp: Vec<SocketAddr>,
    /// Largest message accepted. Larger datagrams are dropped; a TCP peer announcing or sending
    /// a larger message is disconnected. Bounds memory before anything is parsed.
    pub max_message_bytes: usize,
    /// A TCP connection on which nothing at all is received for this long is closed, so idle
    /// peers cannot hold sockets and memory for ever.
    pub tcp_idle_timeout: Duration,
    /// A TCP message that was started but not completed within this time gets the connection
    /// closed (slowloris defence). Also bounds how long one write to a peer may take.
    pub tcp_partial_timeout: Duration,
    /// Most TCP connections (inbound and outbound together); beyond it accepts are closed at
    /// once and outbound connects fail.
    pub tcp_max_connections: usize,
    /// How long an outbound TCP connect may take before the send is reported failed.
    pub tcp_connect_timeout: Duration,
    /// Requested SO_RCVBUF of UDP sockets, so bursts are not dropped by the kernel. The kernel
    /// may clamp it (net.core.rmem_max).
    pub udp_recv_buffer: usize,
}

impl Default for TransportConfig {
    fn default() -> Self {
        let local = SocketAddr::from((Ipv4Addr::LOCALHOST, 5060));
        TransportConfig {
            udp: vec![local],
            tcp: vec![local],
            max_message_bytes: 16 * 1024,
            tcp_idle_timeout: Duration::from_secs(300),
            tcp_partial_timeout: Duration::from_secs(10),
            tcp_max_connections: 4096,
            tcp_connect_timeout: Duration::from_secs(5),
            udp_recv_buffer: 4 * 1024 * 1024,
        }
    }
}
