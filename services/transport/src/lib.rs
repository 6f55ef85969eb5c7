//! SIP transports for Trunkline: UDP and TCP sockets on tokio, stream framing, keep-alives and
//! the connection table.
//!
//! # Design
//!
//! * **What goes up.** Every framed message is handed to [`Inbound::on_message`] as a
//!   [`Received`]: the whole message as [`bytes::Bytes`], the transport, our local address, the
//!   *true* peer address and, on TCP, the [`ConnectionId`]. The dispatcher above has the parsed
//!   message and does the Via `received`/`rport` rewriting (RFC 3581) from `peer`; this crate
//!   parses no SIP beyond framing.
//! * **Framing** ([`framing`]) is a pure function over a buffer. UDP: one datagram is one
//!   message, delivered whole (the parser applies the datagram Content-Length rules);
//!   datagrams of only CRLF/whitespace are keep-alives and dropped. TCP: a message ends after
//!   the first CRLFCRLF plus `Content-Length` (or compact `l`) bytes, and a stream message without
//!   it closes the connection (RFC 3261 §18.3). CRLFs between messages are skipped; a CRLFCRLF
//!   ping is answered with a CRLF pong (RFC 5626 §4.4.1).
//! * **Bounded before parsed.** `max_message_bytes` is enforced on the raw bytes (datagram
//!   size, or announced/accumulated size on a stream) before anything reaches the parser. A TCP
//!   connection is closed when nothing arrives for `tcp_idle_timeout`, when a started message is
//!   not complete within `tcp_partial_timeout` (slowloris), and when a single write takes longer
//!   than `tcp_partial_timeout`. Connections beyond `tcp_max_connections` are closed on accept.
//!   Every such drop is logged with a `peer` field and counted under a `reason` label.
//! * **Connections.** Each TCP connection is a reader task and a writer task fed by a bounded
//!   queue. A table (one mutex, indexes by id and by peer address) lets [`Transports::send`]
//!   find the connection a request came on (RFC 3261 §18.2.2), else any connection to the
//!   address, else open one; outbound connections are read from like accepted ones. The reader
//!   owns the lifetime: when it ends its entry is removed and memory returns to baseline.
//! * **Sending never blocks**, so actors can send directly: UDP tries a non-blocking send and
//!   falls back to a spawned send; TCP queues with `try_send`. Failures are logged, counted and
//!   reported through [`Inbound::on_send_error`] so a transaction can turn them into a 503.
//! * **Metrics** (on the registry passed to [`Transports::start`]):
//!   `trunkline_transport_connections_active{transport}`,
//!   `trunkline_transport_connections_total{transport,direction}`,
//!   `trunkline_transport_dropped_total{reason}`,
//!   `trunkline_transport_bytes_total{transport,direction}`.

mod config;
mod connections;
mod error;
pub mod framing;
mod inbound;
mod message;
mod metrics;
mod tcp;
mod transport;
mod transports;
mod udp;

pub use config::TransportConfig;
pub use error::TransportError;
pub use inbound::Inbound;
pub use message::{ConnectionId, Received, Target};
pub use transport::Transport;
pub use transports::Transports;
