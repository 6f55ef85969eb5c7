//! The transport protocol a message travelled over.

use std::fmt;
use std::str::FromStr;

use crate::error::TransportError;

/// The transport protocol of a socket or connection.
///
/// Kept as a small `Copy` enum because it is carried on every received message and every send
/// target, and the dispatcher writes it into Via headers (`SIP/2.0/UDP`, `SIP/2.0/TCP`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// Datagrams: one datagram is one message, retransmissions are the transaction layer's job.
    Udp,
    /// A byte stream framed by Content-Length (RFC 3261 §18.3).
    Tcp,
}

impl Transport {
    /// Whether the transport delivers reliably, so the transaction layer must not retransmit
    /// (RFC 3261 §17.1.1.2: timer A is not started on reliable transports).
    pub fn is_reliable(self) -> bool {
        matches!(self, Transport::Tcp)
    }

    /// The upper-case token used in Via headers and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
        }
    }

    /// The lower-case form used as a Prometheus label value.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Transport {
    type Err = TransportError;

    /// Accepts `udp` / `tcp` in any case, as found in Via headers and `transport=` URI parameters.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("udp") {
            Ok(Transport::Udp)
        } else if s.eq_ignore_ascii_case("tcp") {
            Ok(Transport::Tcp)
        } else {
            Err(TransportError::UnknownTransport(s.to_owned()))
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    #[test]
    fn parses_and_displays() {
        assert_eq!("udp".parse::<Transport>().unwrap(), Transport::Udp);
        assert_eq!("TcP".parse::<Transport>().unwrap(), Transport::Tcp);
        assert!("sctp".parse::<Transport>().is_err());
        assert_eq!(Transport::Udp.to_string(), "UDP");
        assert_eq!(Transport::Tcp.to_string(), "TCP");
        assert!(Transport::Tcp.is_reliable());
        assert!(!Transport::Udp.is_reliable());
    }
}
