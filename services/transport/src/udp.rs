//! UDP sockets: one datagram is one message.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use trunkline_sip::{Peer, Transport};

use crate::congestion::SocketCongestion;
use crate::connections::Origin;
use crate::error::TransportError;
use crate::framing::is_datagram_keepalive;
use crate::message::Received;
use crate::metrics::DropReason;
use crate::transports::Shared;

/// Sends waiting for room in a socket's buffer; past it a send fails (and is counted)
/// rather than queueing without bound.
const MAX_BACKLOG: usize = 4096;

/// A UDP socket of the node.
///
/// It is registered with the runtime for reading only. Registered for writing too (as
/// `tokio::net::UdpSocket` always is), every datagram sent wakes whichever worker sits
/// in `epoll_wait` when the kernel frees the datagram's buffer space: one needless
/// thread wake-up per message sent. Sends go straight to the socket; only when its
/// buffer is full does a task wait for room, on a duplicate of the socket registered
/// for writing while that lasts.
pub(crate) struct UdpEndpoint {
    io: AsyncFd<std::net::UdpSocket>,
    backlog: Mutex<VecDeque<(Bytes, Origin)>>,
    /// A task is sending the backlog. Changed only with `backlog` locked; read without
    /// the lock so a send need not take it when nothing waits.
    draining: AtomicBool,
}

impl UdpEndpoint {
    pub(crate) fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.io.get_ref().local_addr()
    }
}

/// Binds a UDP socket with a large receive buffer (bursts of INVITEs must not be dropped by the
/// kernel) and IPv6 sockets IPv6-only (so `[::]` and `0.0.0.0` can both be bound).
pub(crate) fn bind(addr: SocketAddr, recv_buffer: usize) -> Result<UdpEndpoint, TransportError> {
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
    let io = register(std::net::UdpSocket::from(socket), Interest::READABLE).map_err(bind_err)?;
    Ok(UdpEndpoint {
        io,
        backlog: Mutex::new(VecDeque::new()),
        draining: AtomicBool::new(false),
    })
}

/// Registers `socket` with the runtime for `interest` only.
#[allow(unsafe_code)]
fn register(
    socket: std::net::UdpSocket,
    interest: Interest,
) -> std::io::Result<AsyncFd<std::net::UdpSocket>> {
    // SAFETY: a `std::net::UdpSocket` owns its file descriptor and returns that same open
    // descriptor from `as_raw_fd` until it is dropped, as `register_with_interest` requires;
    // the `AsyncFd` owns the socket from here on.
    unsafe { AsyncFd::register_with_interest(socket, interest) }.map_err(std::io::Error::from)
}

/// Reads datagrams until shutdown, dropping keep-alives and oversize ones, and hands each other
/// datagram up whole: Content-Length rules for datagrams are the parser's (RFC 3261 §18.3).
/// `local` is the socket's bound address, which received messages carry as `Peer::local`.
/// Each readiness event is read until the socket is empty; how deep the queue stays
/// meanwhile tells the node whether it is congested (see the `congestion` module).
pub(crate) async fn receive_loop(
    shared: Arc<Shared>,
    endpoint: Arc<UdpEndpoint>,
    local: SocketAddr,
) {
    let limit = shared.config.max_message_bytes;
    // One byte more than the limit tells an oversize datagram from one exactly at the limit.
    let mut buf = vec![0u8; limit.saturating_add(1)];
    let mut shutdown = shared.shutdown.subscribe();
    let mut congestion = SocketCongestion::new(&shared.congestion);
    loop {
        let mut ready = tokio::select! {
            _ = shutdown.wait_for(|s| *s) => break,
            r = endpoint.io.readable() => match r {
                Ok(ready) => ready,
                Err(e) => {
                    tracing::error!(local = %local, error = %e, "UDP socket cannot be polled; receiving stops");
                    break;
                }
            },
        };
        loop {
            match ready.try_io(|io| io.get_ref().recv_from(&mut buf)) {
                Ok(Ok((n, peer))) => {
                    congestion.read(endpoint.io.get_ref());
                    deliver(&shared, &buf[..n], limit, peer, local);
                }
                // ICMP errors from earlier sends can surface here; the socket stays usable.
                Ok(Err(e)) => tracing::debug!(local = %local, error = %e, "UDP receive error"),
                // Empty: wait for the next readiness event.
                Err(_) => {
                    congestion.drained();
                    break;
                }
            }
            // A flood keeps the socket from ever being empty: the runtime's budget makes
            // this task give way to the calls it feeds now and then, and shutdown is
            // looked at between datagrams.
            tokio::task::consume_budget().await;
            if *shutdown.borrow() {
                return;
            }
        }
    }
}

/// Hands one received datagram up (or drops it, counted). A datagram longer than the
/// receive buffer (`limit` + 1) arrives cut to it, so `n > limit` tells it apart.
fn deliver(shared: &Shared, datagram: &[u8], limit: usize, peer: SocketAddr, local: SocketAddr) {
    let n = datagram.len();
    shared.metrics.bytes_in(Transport::Udp, n);
    if n > limit {
        shared.metrics.dropped(
            DropReason::Oversize,
            Transport::Udp,
            peer,
            &TransportError::MessageTooLarge { size: n, limit },
        );
        return;
    }
    if is_datagram_keepalive(datagram) {
        tracing::trace!(%peer, "UDP keep-alive");
        return;
    }
    // Copied out at its exact size: the receive buffer is reused for the next datagram.
    let data = Bytes::copy_from_slice(datagram);
    let peer = Peer {
        local: Some(local),
        ..Peer::new(Transport::Udp, peer)
    };
    shared.inbound.on_message(Received { peer, data });
}

/// Sends a datagram from `endpoint` without blocking: when the socket's buffer is full the
/// datagram waits in the endpoint's backlog (bounded) for a task to send it.
pub(crate) fn send(shared: &Arc<Shared>, endpoint: &Arc<UdpEndpoint>, origin: Origin, data: Bytes) {
    if !endpoint.draining.load(Ordering::Acquire) {
        match endpoint.io.get_ref().send_to(&data, origin.peer.addr) {
            Ok(n) => {
                shared.metrics.bytes_out(Transport::Udp, n);
                return;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => {
                shared.send_failed(&origin, &TransportError::Io(e));
                return;
            }
        }
    }
    let start = {
        let mut backlog = endpoint
            .backlog
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if backlog.len() >= MAX_BACKLOG {
            drop(backlog);
            let addr = origin.peer.addr;
            shared.send_failed(&origin, &TransportError::QueueFull { addr });
            return;
        }
        backlog.push_back((data, origin));
        !endpoint.draining.swap(true, Ordering::AcqRel)
    };
    if start {
        shared
            .runtime
            .spawn(drain(shared.clone(), endpoint.clone()));
    }
}

/// Sends the endpoint's backlog as the socket makes room, then lets sends go straight to
/// the socket again.
async fn drain(shared: Arc<Shared>, endpoint: Arc<UdpEndpoint>) {
    let writer = endpoint
        .io
        .get_ref()
        .try_clone()
        .and_then(|s| register(s, Interest::WRITABLE));
    loop {
        let next = {
            let mut backlog = endpoint
                .backlog
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let next = backlog.pop_front();
            if next.is_none() {
                endpoint.draining.store(false, Ordering::Release);
            }
            next
        };
        let Some((data, origin)) = next else {
            return;
        };
        let sent = match &writer {
            Ok(writer) => send_when_writable(writer, &data, origin.peer.addr).await,
            Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
        };
        match sent {
            Ok(n) => shared.metrics.bytes_out(Transport::Udp, n),
            Err(e) => shared.send_failed(&origin, &TransportError::Io(e)),
        }
    }
}

async fn send_when_writable(
    writer: &AsyncFd<std::net::UdpSocket>,
    data: &[u8],
    to: SocketAddr,
) -> std::io::Result<usize> {
    loop {
        let mut ready = writer.writable().await?;
        if let Ok(result) = ready.try_io(|io| io.get_ref().send_to(data, to)) {
            return result;
        }
    }
}
