//! Errors of the transport layer.

use std::io;
use std::net::SocketAddr;

/// Everything that can go wrong binding, framing or sending.
///
/// Send errors reach the transaction layer through `Inbound::on_send_error`; framing errors
/// close the offending TCP connection and are logged with the peer.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// A configured address could not be bound (in use, not local, no permission).
    #[error("cannot bind {addr}: {source}")]
    Bind {
        /// The address from the configuration.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
    /// A socket operation failed.
    #[error("socket I/O error: {0}")]
    Io(#[from] io::Error),
    /// An outbound TCP connect failed (refused, unreachable).
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The destination.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
    /// An outbound TCP connect did not complete within `tcp_connect_timeout`.
    #[error("connect to {addr} timed out")]
    ConnectTimeout {
        /// The destination.
        addr: SocketAddr,
    },
    /// `tcp_max_connections` connections are already open.
    #[error("TCP connection limit of {limit} reached")]
    ConnectionLimit {
        /// The configured limit.
        limit: usize,
    },
    /// A message is larger than `max_message_bytes`.
    #[error("message of {size} bytes exceeds the limit of {limit}")]
    MessageTooLarge {
        /// Size seen or announced (for truncated datagrams: at least this).
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// A message on a stream has no Content-Length header (required by RFC 3261 §18.3).
    #[error("message on a stream transport has no Content-Length")]
    MissingContentLength,
    /// The Content-Length value is not a non-negative decimal number, or two values disagree.
    #[error("invalid Content-Length value")]
    BadContentLength,
    /// The connection's outbound queue is full: the peer reads slower than we write.
    #[error("send queue of the connection to {addr} is full")]
    QueueFull {
        /// The peer.
        addr: SocketAddr,
    },
    /// The connection closed before the message could be written.
    #[error("connection to {addr} closed")]
    ConnectionClosed {
        /// The peer.
        addr: SocketAddr,
    },
    /// No socket of that transport and address family is bound.
    #[error("no {transport} socket bound for {addr}")]
    NoSocket {
        /// The transport asked for.
        transport: crate::Transport,
        /// The destination.
        addr: SocketAddr,
    },
    /// The transports are shutting down.
    #[error("transports are shut down")]
    Shutdown,
    /// A transport name other than `udp` or `tcp`.
    #[error("unknown transport {0:?}")]
    UnknownTransport(String),
    /// No tokio runtime is running where `Transports::start` was called.
    #[error("no tokio runtime available")]
    NoRuntime,
}
