//! UDP sockets: one datagram is one message.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;

use trunkline_sip::{Peer, Transport};

use crate::connections::Origin;
use crate::error::TransportError;
use crate::framing::is_datagram_keepalive;
use crate::message::Received;
use crate::metrics::DropReason;
use crate::transports::Shared;

/// Receive buffers are carved out of blocks this big, so small datagrams share one allocation
/// and the buffer is not reallocated per datagram.
const UDP_BLOCK: usize = 64 * 1024;

/// Binds a UDP socket with a large receive buffer (bursts of INVITEs must not be dropped by the
/// kernel) and IPv6 sockets IPv6-only (so `[::]` and `0.0.0.0` can both be bound).
pub(crate) fn bind(addr: SocketAddr, recv_buffer: usize) -> Result<UdpSocket, TransportError> {
    let bind_err = |source| TransportError::Bind { addr, source };
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
        .map_err(bind_err)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true).map_err(bind_err)?;
    }
    if let Err(e) = socket.set_recv_buffer_size(recv_buffer) {
        tracing::warn!(local = %addr, error = %e, "cannot set UDP receive buffer size");
    }
    socket.set_nonblocking(true).map_err(bind_err)?;
    socket.bind(&addr.into()).map_err(bind_err)?;
    UdpSocket::from_std(socket.into()).map_err(bind_err)
}

/// Reads datagrams until shutdown, dropping keep-alives and oversize ones, and hands each other
/// datagram up whole: Content-Length rules for datagrams are the parser's (RFC 3261 §18.3).
/// `local` is the socket's bound address, which received messages carry as `Peer::local`.
pub(crate) async fn receive_loop(shared: Arc<Shared>, socket: Arc<UdpSocket>, local: SocketAddr) {
    let limit = shared.config.max_message_bytes;
    // One byte more than the limit tells an oversize datagram from one exactly at the limit.
    let want = limit.saturating_add(1);
    let mut buf = BytesMut::new();
    let mut shutdown = shared.shutdown.subscribe();
    loop {
        if buf.capacity() < want {
            buf.reserve(want.max(UDP_BLOCK));
        }
        let received = tokio::select! {
            _ = shutdown.wait_for(|s| *s) => break,
            r = async {
                let mut limited = (&mut buf).limit(want);
                socket.recv_buf_from(&mut limited).await
            } => r,
        };
        let (n, peer) = match received {
            Ok(r) => r,
            Err(e) => {
                // ICMP errors from earlier sends can surface here; the socket stays usable.
                tracing::debug!(local = %local, error = %e, "UDP receive error");
                continue;
            }
        };
        shared.metrics.bytes_in(Transport::Udp, n);
        if n > limit {
            buf.clear();
            shared.metrics.dropped(
                DropReason::Oversize,
                Transport::Udp,
                peer,
                &TransportError::MessageTooLarge { size: n, limit },
            );
            continue;
        }
        if is_datagram_keepalive(&buf[..n]) {
            buf.clear();
            tracing::trace!(%peer, "UDP keep-alive");
            continue;
        }
        // Copied out at its exact size: a slice of the shared receive block would pin the
        // whole block for as long as any call keeps a header of this message.
        let data = Bytes::copy_from_slice(&buf[..n]);
        buf.clear();
        let peer = Peer {
            local: Some(local),
            ..Peer::new(Transport::Udp, peer)
        };
        shared.inbound.on_message(Received { peer, data });
    }
}

/// Sends a datagram from `socket` without blocking: a full socket buffer hands the send to a
/// task instead of waiting.
pub(crate) fn send(shared: &Arc<Shared>, socket: &Arc<UdpSocket>, origin: Origin, data: Bytes) {
    let to = origin.peer.addr;
    match socket.try_send_to(&data, to) {
        Ok(n) => shared.metrics.bytes_out(Transport::Udp, n),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
            let shared = shared.clone();
            let socket = socket.clone();
            shared.clone().runtime.spawn(async move {
                match socket.send_to(&data, to).await {
                    Ok(n) => shared.metrics.bytes_out(Transport::Udp, n),
                    Err(e) => shared.send_failed(&origin, &TransportError::Io(e)),
                }
            });
        }
        Err(e) => shared.send_failed(&origin, &TransportError::Io(e)),
    }
}
