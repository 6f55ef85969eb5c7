//! Errors of the transport layer.

use std::io;
use std::net::{IpAddr, SocketAddr};

use trunkline_sip::Transport;

/// Everything that can go wrong binding, framing or sending.
///
/// Send errors reach the call through `Inbound::on_send_error`, where each is a reason to
/// treat the request as answered with 503 (RFC 3261 §8.1.3.1); framing errors close the
/// offending TCP connection and are logged with the peer.
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
    /// A listener bound to an unspecified address (`0.0.0.0`, `::`) has no advertised host,
    /// so there is nothing to put in Via and Contact for it.
    #[error("{transport} listener {addr} is bound to an unspecified address and needs an advertised host")]
    NoAdvertise {
        /// The listener's transport.
        transport: Transport,
        /// The address from the configuration.
        addr: SocketAddr,
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
    /// `tcp_max_outbound` connections are already open, so a send needing a new one fails.
    #[error("outbound TCP connection limit of {limit} reached")]
    OutboundLimit {
        /// The configured limit.
        limit: usize,
    },
    /// `tcp_max_inbound` accepted connections are open; a new one is closed at accept.
    #[error("inbound TCP connection limit of {limit} reached")]
    InboundLimit {
        /// The configured limit.
        limit: usize,
    },
    /// One source IP already has `tcp_max_per_source` accepted connections.
    #[error("{ip} already has {limit} TCP connections")]
    SourceLimit {
        /// The source.
        ip: IpAddr,
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
    /// The outbound queue is full: a connection's peer reads slower than we write, or a
    /// UDP socket's buffer and its backlog are full.
    #[error("send queue toward {addr} is full")]
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
    /// Writing to the connection failed (reset, broken pipe).
    #[error("cannot write to {addr}: {source}")]
    Write {
        /// The peer.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
    /// Writing to the connection did not finish within `tcp_partial_timeout`: the peer
    /// stopped reading.
    #[error("write to {addr} timed out")]
    WriteTimeout {
        /// The peer.
        addr: SocketAddr,
    },
    /// No socket of that transport and of the destination's address family is bound.
    #[error("no {transport} socket bound for {addr}")]
    NoSocket {
        /// The transport asked for.
        transport: Transport,
        /// The destination.
        addr: SocketAddr,
    },
    /// The send names a local socket (`Peer::local`) that is not one of ours, e.g. state
    /// saved on a node with other listeners.
    #[error("no {transport} listener on {local}")]
    UnknownLocal {
        /// The transport asked for.
        transport: Transport,
        /// The local address named.
        local: SocketAddr,
    },
    /// The named local socket and the destination are of different address families.
    #[error("cannot send from {local} to {addr}: different address families")]
    FamilyMismatch {
        /// The local socket named.
        local: SocketAddr,
        /// The destination.
        addr: SocketAddr,
    },
    /// The TLS handshake with the peer failed, or the peer's certificate was refused.
    #[error("TLS with {addr} failed: {reason}")]
    Tls {
        /// The peer.
        addr: SocketAddr,
        /// What went wrong (rustls' words, or the check that refused the peer).
        reason: String,
    },
    /// A TLS listener is configured but the node has no certificate to serve.
    #[error("TLS listener {addr} needs the node's certificate and key")]
    NoCertificate {
        /// The listener.
        addr: SocketAddr,
    },
    /// The transports are shutting down.
    #[error("transports are shut down")]
    Shutdown,
    /// No tokio runtime is running where `Transports::start` was called.
    #[error("no tokio runtime available")]
    NoRuntime,
}
