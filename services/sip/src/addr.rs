//! Where a message came from or goes to, in terms the pure layers can use without
//! knowing about sockets.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::SocketAddr;

/// Transport protocol of a hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Transport {
    Udp,
    Tcp,
    /// SIP over TLS on TCP (RFC 3261 §26.2, `SIP/2.0/TLS` in Via).
    Tls,
}

impl Transport {
    /// Reliable transports switch off retransmission timers (RFC 3261 §17).
    pub fn is_reliable(self) -> bool {
        matches!(self, Transport::Tcp | Transport::Tls)
    }

    /// The Via transport token.
    pub fn via_token(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
            Transport::Tls => "TLS",
        }
    }

    /// The `transport=` URI parameter value, `None` for UDP (the default).
    pub fn uri_param(self) -> Option<&'static str> {
        match self {
            Transport::Udp => None,
            Transport::Tcp => Some("tcp"),
            Transport::Tls => Some("tls"),
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.via_token())
    }
}

/// A remote hop: transport, address and, for connection-oriented transports, the
/// connection a request arrived on (responses go back over it, RFC 3261 §18.2.2).
///
/// `local` names which of our bound sockets the hop uses, so that on a multi-homed node
/// a dialog keeps leaving from the address (and network) its peer knows us by; `None`
/// leaves the choice to the transport (its first listener of the peer's address family).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Peer {
    pub transport: Transport,
    pub addr: SocketAddr,
    pub connection: Option<u64>,
    /// Which of our bound sockets the hop uses (`None`: the transport's first): on a
    /// multi-homed node a dialog stays on the socket, and the network, it began on.
    /// Absent in state saved before it existed.
    #[serde(default)]
    pub local: Option<SocketAddr>,
}

impl Peer {
    pub fn new(transport: Transport, addr: SocketAddr) -> Self {
        Peer {
            transport,
            addr,
            connection: None,
            local: None,
        }
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.transport, self.addr)
    }
}
