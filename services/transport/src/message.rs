//! What the transport hands up: one received message.

use bytes::Bytes;
use trunkline_sip::Peer;

/// Exactly one framed SIP message, never a keep-alive.
///
/// `peer` is the hop as the rest of the stack needs it to answer: the transport, the address
/// the bytes really came from (the dispatcher uses it for the Via `received`/`rport`
/// parameters, RFC 3581, which is why the transport does not touch Via), the TCP connection
/// they came on (responses go back over it, RFC 3261 §18.2.2) and in `local` the listener
/// they arrived at, so answers and the rest of the dialog leave from the same socket.
/// Passing `&peer` back to [`crate::Transports::send`] answers over the same path.
#[derive(Debug, Clone)]
pub struct Received {
    /// Where it came from and over what. `local` is set, except on an outbound TCP
    /// connection of a node with no TCP listener of the peer's address family.
    pub peer: Peer,
    /// The whole message, headers and body.
    pub data: Bytes,
}
