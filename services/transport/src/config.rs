//! Socket addresses and the limits that protect the node from its peers.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use trunkline_sip::Host;

/// One socket to bind, and the name peers reach it by.
///
/// A node on several networks (access and carrier, or public and private) is reached at a
/// different address on each, and behind 1:1 NAT at an address it does not own; the Via and
/// Contact of a message must carry the address of the socket it leaves from, so each socket
/// carries its own advertised host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerConfig {
    /// Address to bind (port 0 picks a free port).
    pub addr: SocketAddr,
    /// Host written into Via and Contact for this socket; `None`: the bound IP, which must
    /// then not be unspecified (`0.0.0.0`, `::`).
    pub advertise: Option<Host>,
}

impl ListenerConfig {
    /// A socket advertised by its own IP.
    pub fn new(addr: SocketAddr) -> Self {
        ListenerConfig {
            addr,
            advertise: None,
        }
    }

    /// A socket advertised under another host (NAT, DNS name, wildcard bind).
    pub fn advertised(addr: SocketAddr, advertise: Host) -> Self {
        ListenerConfig {
            addr,
            advertise: Some(advertise),
        }
    }
}

impl From<SocketAddr> for ListenerConfig {
    fn from(addr: SocketAddr) -> Self {
        ListenerConfig::new(addr)
    }
}

/// What to bind and how much to trust peers.
///
/// The defaults bind UDP and TCP on `127.0.0.1:5060`, so a node with no config at all starts and
/// serves locally; production configs list their public addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportConfig {
    /// UDP sockets to bind. The first of each address family is the default for sends that
    /// name no socket.
    pub udp: Vec<ListenerConfig>,
    /// TCP listeners. Outbound connections that name a listener are bound to its IP.
    pub tcp: Vec<ListenerConfig>,
    /// TLS listeners (SIP over TLS on TCP); they need the node's certificate (the
    /// `TlsContext` given to `Transports::start_with_tls`). TLS connections share the TCP
    /// limits and timeouts.
    pub tls: Vec<ListenerConfig>,
    /// Largest message accepted. Larger datagrams are dropped; a TCP peer announcing or sending
    /// a larger message is disconnected. Bounds memory before anything is parsed.
    pub max_message_bytes: usize,
    /// A TCP connection with no traffic either way (messages or CRLF keep-alives) for this
    /// long is closed, unless a call has pinned it, so idle peers cannot hold sockets and
    /// memory for ever.
    pub tcp_idle_timeout: Duration,
    /// A TCP message that was started but not completed within this time gets the connection
    /// closed (slowloris defence). Also bounds how long one write to a peer may take.
    pub tcp_partial_timeout: Duration,
    /// Most accepted TCP connections; beyond it accepts are closed at once. Kept apart from
    /// the outbound limit so a flood of inbound connections cannot stop us reaching trunks.
    pub tcp_max_inbound: usize,
    /// Most TCP connections we open; beyond it sends that need a new connection fail.
    pub tcp_max_outbound: usize,
    /// Most accepted TCP connections from one source IP, so one host cannot take the whole
    /// inbound budget.
    pub tcp_max_per_source: usize,
    /// Bytes one TCP connection may have queued for its writer (a peer that stops reading
    /// fills it; further sends to it then fail at once). All connections together hold at
    /// most 256 MiB whatever this says.
    pub tcp_send_queue_bytes: usize,
    /// How long an outbound TCP connect may take before the send is reported failed.
    pub tcp_connect_timeout: Duration,
    /// On connections the node opened (to trunks, over TCP or TLS), a CRLFCRLF keep-alive
    /// ping this often (RFC 5626 §4.4.1): it keeps NAT and firewall state between the node
    /// and a carrier alive through quiet calls, and a peer that has answered a ping with
    /// a pong and then stops answering for `KEEPALIVE_PONG_WAIT` is taken for dead and
    /// the connection closed, so the next request reconnects instead of waiting on a
    /// dead flow. Our pings and the pongs do not count as activity for
    /// `tcp_idle_timeout`. `None`: no pings.
    pub tcp_keepalive: Option<Duration>,
    /// Requested SO_RCVBUF of UDP sockets, so bursts are not dropped by the kernel. The kernel
    /// may clamp it (net.core.rmem_max).
    pub udp_recv_buffer: usize,
    /// Percentage of a UDP socket's receive buffer in use past which the node is
    /// congested and new calls are refused ([`crate::Transports::receive_congested`]);
    /// 0 turns the check off.
    pub udp_congestion_percent: u8,
}

impl Default for TransportConfig {
    fn default() -> Self {
        let local = SocketAddr::from((Ipv4Addr::LOCALHOST, 5060));
        TransportConfig {
            udp: vec![ListenerConfig::new(local)],
            tcp: vec![ListenerConfig::new(local)],
            tls: Vec::new(),
            max_message_bytes: 16 * 1024,
            tcp_idle_timeout: Duration::from_secs(300),
            tcp_partial_timeout: Duration::from_secs(10),
            tcp_max_inbound: 4096,
            tcp_max_outbound: 1024,
            tcp_max_per_source: 64,
            tcp_send_queue_bytes: 512 * 1024,
            tcp_connect_timeout: Duration::from_secs(5),
            tcp_keepalive: Some(Duration::from_secs(30)),
            udp_recv_buffer: 4 * 1024 * 1024,
            udp_congestion_percent: 75,
        }
    }
}
