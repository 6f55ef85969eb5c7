//! SIP transports for Trunkline: UDP, TCP and TLS (rustls) sockets on tokio, stream framing, keep-alives and
//! the connection table.
//!
//! # Design
//!
//! * **One set of hop types.** A hop is `trunkline_sip::Peer` (re-exported here with
//!   `Transport`): transport, remote address, TCP connection and `local`, the listener it
//!   goes through. What comes up is a [`Received`] whose `peer` has all four; handing that
//!   `peer` back to [`Transports::send`] answers over the same socket and connection.
//! * **What goes up.** Every framed message is handed to [`Inbound::on_message`], with the
//!   *true* source address. The dispatcher above has the parsed message and does the Via
//!   `received`/`rport` rewriting (RFC 3581) from it; this crate parses no SIP beyond framing.
//! * **Multi-homed nodes.** Each listener has its own advertised host ([`Listener`]); a send
//!   leaves from the listener `Peer::local` names (else the first of the transport and
//!   address family), outbound TCP connections are bound to that listener's IP, and
//!   [`Transports::listener_for`] tells the call layer which host and port to put in Via
//!   and Contact for a peer, so headers always describe the socket that really sends.
//! * **Framing** ([`framing`]) is a pure function over a buffer. UDP: one datagram is one
//!   message, delivered whole (the parser applies the datagram Content-Length rules);
//!   datagrams of only CRLF/whitespace are keep-alives and dropped. TCP: a message ends after
//!   the first CRLFCRLF plus `Content-Length` (or compact `l`) bytes, and a stream message without
//!   it closes the connection (RFC 3261 §18.3). CRLFs between messages are skipped; a CRLFCRLF
//!   ping is answered with a CRLF pong (RFC 5626 §4.4.1).
//! * **Bounded before parsed.** `max_message_bytes` is enforced on the raw bytes (datagram
//!   size, or announced/accumulated size on a stream) before anything reaches the parser. A TCP
//!   connection is closed when no traffic passes either way for `tcp_idle_timeout` (unless a
//!   call holds a [`ConnectionPin`] on it), when a started message is not complete within
//!   `tcp_partial_timeout` (slowloris), and when a single write takes longer than
//!   `tcp_partial_timeout`. Accepts beyond `tcp_max_inbound`, or `tcp_max_per_source` from one
//!   IP, are closed at once; connects beyond `tcp_max_outbound` fail the send. Every such drop
//!   is counted under a `reason` label and logged with a `peer` field within a [`LogLimiter`]
//!   budget.
//! * **Connections.** Each TCP connection is a reader task and a writer task fed by a queue
//!   bounded in messages and in bytes, per connection and over all connections (`queue`). A table (one mutex, indexes by id and by peer address and listener) lets
//!   [`Transports::send`] find the connection a request came on (RFC 3261 §18.2.2), else a
//!   connection to the address from the same listener, else open one; outbound connections
//!   are read from like accepted ones. The reader owns the lifetime: when it ends its entry is
//!   removed and memory returns to baseline.
//! * **Sending never blocks**, so actors can send directly: UDP tries a non-blocking send and
//!   falls back to a spawned send; TCP queues with `try_send`. Every message that is not sent,
//!   at once or later (connect refused, connection lost before it was written), is reported
//!   once through [`Inbound::on_send_error`], with the token given to
//!   [`Transports::send_tracked`], so a transaction can turn it into a 503 at once
//!   (RFC 3261 §8.1.3.1).
//! * **Receive congestion** (`congestion`). Each UDP receive loop looks at its queue's
//!   memory (`SO_MEMINFO`) while a backlog lasts; past `udp_congestion_percent` of the
//!   buffer [`Transports::receive_congested`] says so, and the dispatcher refuses new calls
//!   until the queue drains, so calls in progress are not lost to kernel drops.
//! * **Metrics** (on the registry passed to [`Transports::start`]):
//!   `trunkline_transport_connections_active{transport}`,
//!   `trunkline_transport_connections_total{transport,direction}`,
//!   `trunkline_transport_dropped_total{reason}`,
//!   `trunkline_transport_bytes_total{transport,direction}`.

mod activity;
mod config;
mod congestion;
mod connections;
mod error;
pub mod framing;
mod inbound;
mod listeners;
mod log_limiter;
mod message;
mod metrics;
mod queue;
mod tcp;
pub mod tls;
mod transports;
mod udp;

pub use activity::ConnectionPin;
pub use config::{ListenerConfig, TransportConfig};
pub use error::TransportError;
pub use inbound::Inbound;
pub use listeners::Listener;
pub use log_limiter::LogLimiter;
pub use message::Received;
pub use transports::Transports;
pub use trunkline_sip::{Host, Peer, Transport};
