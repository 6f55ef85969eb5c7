//! TCP: the accept loop, outbound connects, and each connection's reader and writer.
//!
//! Every connection is a reader task (framing, timeouts, upcalls) and a writer task (draining the
//! connection's bounded queue). The reader owns the connection's lifetime: when it ends, the
//! table entry goes, the queue's senders are dropped, the writer drains and exits, and the socket
//! closes once both halves are dropped.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::error::TransportError;
use crate::framing::{message_started, Frame, StreamFramer, PONG};
use crate::message::{ConnectionId, Received, Target};
use crate::metrics::{Direction, DropReason};
use crate::transport::Transport;
use crate::transports::Shared;

/// Space reserved before each read. Small enough that idle connections stay cheap.
const READ_CHUNK: usize = 4096;
/// Listen backlog.
const BACKLOG: i32 = 1024;
/// Pause after a failed accept (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Binds a listener; IPv6 listeners are IPv6-only, and SO_REUSEADDR lets a restarted node bind
/// while old connections sit in TIME_WAIT.
pub(crate) fn bind(addr: SocketAddr) -> Result<TcpListener, TransportError> {
    let bind_err = |source| TransportError::Bind { addr, source };
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .map_err(bind_err)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true).map_err(bind_err)?;
    }
    socket.set_reuse_address(true).map_err(bind_err)?;
    socket.set_nonblocking(true).map_err(bind_err)?;
    socket.bind(&addr.into()).map_err(bind_err)?;
    socket.listen(BACKLOG).map_err(bind_err)?;
    TcpListener::from_std(socket.into()).map_err(bind_err)
}

/// Accepts connections until shutdown; beyond `tcp_max_connections` a new connection is closed
/// at once, before any buffer or task is spent on it.
pub(crate) async fn accept_loop(shared: Arc<Shared>, listener: TcpListener, local: SocketAddr) {
    let mut shutdown = shared.shutdown.subscribe();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.wait_for(|s| *s) => break,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, peer)) => {
                // A wildcard listener's connections have a concrete local address.
                let local = stream.local_addr().unwrap_or(local);
                let (tx, rx) = mpsc::channel(crate::connections::SEND_QUEUE);
                match shared.table.insert(peer, tx.clone()) {
                    Ok(id) => {
                        shared
                            .metrics
                            .connection_opened(Transport::Tcp, Direction::Inbound);
                        tracing::debug!(%peer, %local, connection = id.0, "TCP connection accepted");
                        tokio::spawn(run_connection(
                            shared.clone(),
                            stream,
                            id,
                            peer,
                            local,
                            tx,
                            rx,
                        ));
                    }
                    Err(e) => {
                        drop(stream);
                        shared.metrics.dropped(
                            DropReason::ConnectionLimit,
                            Transport::Tcp,
                            peer,
                            &e,
                        );
                    }
                }
            }
            Err(e) => {
                tracing::warn!(%local, error = %e, "TCP accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// Opens an outbound connection reserved by `send`, then runs it like an accepted one (the
/// trunk's responses come back on it). On failure every queued message is reported.
pub(crate) async fn connect_and_run(
    shared: Arc<Shared>,
    id: ConnectionId,
    addr: SocketAddr,
    tx: mpsc::Sender<Bytes>,
    mut rx: mpsc::Receiver<Bytes>,
) {
    let mut shutdown = shared.shutdown.subscribe();
    let timeout = shared.config.tcp_connect_timeout;
    let outcome = tokio::select! {
        _ = shutdown.wait_for(|s| *s) => Err(TransportError::Shutdown),
        r = tokio::time::timeout(timeout, TcpStream::connect(addr)) => match r {
            Ok(Ok(stream)) => stream.local_addr().map(|local| (stream, local)).map_err(TransportError::Io),
            Ok(Err(source)) => Err(TransportError::Connect { addr, source }),
            Err(_) => Err(TransportError::ConnectTimeout { addr }),
        },
    };
    match outcome {
        Ok((stream, local)) => {
            shared
                .metrics
                .connection_opened(Transport::Tcp, Direction::Outbound);
            tracing::debug!(peer = %addr, %local, connection = id.0, "TCP connection opened");
            run_connection(shared, stream, id, addr, local, tx, rx).await;
        }
        Err(error) => {
            shared.table.remove(id);
            drop(tx);
            rx.close();
            let target = Target::new(Transport::Tcp, addr);
            while let Ok(_unsent) = rx.try_recv() {
                shared.send_failed(target.clone(), &error);
            }
        }
    }
}

/// Why a connection ended, for the close log line.
#[derive(Debug, Clone, Copy)]
enum CloseCause {
    /// The peer closed or reset it.
    PeerClosed,
    /// Reading failed.
    ReadError,
    /// The writer ended after a failed write.
    WriterGone,
    /// The transports are shutting down.
    Shutdown,
    /// We closed it for a limit or framing error (already logged and counted).
    Dropped(DropReason),
}

impl CloseCause {
    /// For the log line.
    fn as_str(self) -> &'static str {
        match self {
            CloseCause::PeerClosed => "peer_closed",
            CloseCause::ReadError => "read_error",
            CloseCause::WriterGone => "write_failed",
            CloseCause::Shutdown => "shutdown",
            CloseCause::Dropped(reason) => reason.as_str(),
        }
    }
}

/// Runs one connection to its end and cleans up after it.
async fn run_connection(
    shared: Arc<Shared>,
    stream: TcpStream,
    id: ConnectionId,
    peer: SocketAddr,
    local: SocketAddr,
    tx: mpsc::Sender<Bytes>,
    rx: mpsc::Receiver<Bytes>,
) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(%peer, error = %e, "cannot set TCP_NODELAY");
    }
    let (read, write) = stream.into_split();
    tokio::spawn(write_loop(shared.clone(), write, rx, id, peer));
    let closed = read_loop(&shared, read, id, peer, local, &tx).await;
    shared.table.remove(id);
    drop(tx);
    shared.metrics.connection_closed(Transport::Tcp);
    tracing::debug!(%peer, connection = id.0, reason = closed.as_str(), "TCP connection closed");
}

/// Reads and frames until the connection must end, enforcing the idle and partial-message
/// timeouts and the size limit.
async fn read_loop(
    shared: &Shared,
    mut read: OwnedReadHalf,
    id: ConnectionId,
    peer: SocketAddr,
    local: SocketAddr,
    tx: &mpsc::Sender<Bytes>,
) -> CloseCause {
    let config = &shared.config;
    let limit = config.max_message_bytes;
    let mut shutdown = shared.shutdown.subscribe();
    let mut buf = BytesMut::new();
    let mut framer = StreamFramer::new();
    let mut last_read = Instant::now();
    let mut partial_since: Option<Instant> = None;
    let timer = tokio::time::sleep_until(last_read + config.tcp_idle_timeout);
    tokio::pin!(timer);

    loop {
        let idle_deadline = last_read + config.tcp_idle_timeout;
        let deadline = match partial_since {
            Some(start) => idle_deadline.min(start + config.tcp_partial_timeout),
            None => idle_deadline,
        };
        timer.as_mut().reset(deadline);
        buf.reserve(READ_CHUNK);

        let read_result = tokio::select! {
            _ = shutdown.wait_for(|s| *s) => return CloseCause::Shutdown,
            _ = tx.closed() => return CloseCause::WriterGone,
            _ = &mut timer => {
                let (reason, error) = if partial_since.is_some() {
                    (DropReason::PartialTimeout, "message not completed in time")
                } else {
                    (DropReason::IdleTimeout, "connection idle")
                };
                shared.metrics.dropped(reason, Transport::Tcp, peer, &error);
                return CloseCause::Dropped(reason);
            }
            r = read.read_buf(&mut buf) => r,
        };
        let n = match read_result {
            Ok(0) => return CloseCause::PeerClosed,
            Ok(n) => n,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "TCP read error");
                return CloseCause::ReadError;
            }
        };
        shared.metrics.bytes_in(Transport::Tcp, n);
        let now = Instant::now();
        last_read = now;

        let mut completed = false;
        loop {
            match framer.decode(&mut buf, limit) {
                Ok(Some(Frame::Message(data))) => {
                    completed = true;
                    shared.inbound.on_message(Received {
                        transport: Transport::Tcp,
                        local,
                        peer,
                        connection: Some(id),
                        data,
                    });
                }
                Ok(Some(Frame::Ping)) => {
                    // A full queue means the peer is not reading; dropping a pong is harmless.
                    if tx.try_send(Bytes::from_static(PONG)).is_err() {
                        tracing::debug!(%peer, "keep-alive pong not queued");
                    }
                }
                Ok(None) => break,
                Err(error) => {
                    let reason = match error {
                        TransportError::MessageTooLarge { .. } => DropReason::Oversize,
                        TransportError::MissingContentLength => DropReason::NoContentLength,
                        _ => DropReason::BadContentLength,
                    };
                    shared.metrics.dropped(reason, Transport::Tcp, peer, &error);
                    return CloseCause::Dropped(reason);
                }
            }
        }
        partial_since = match (message_started(&buf), completed) {
            (false, _) => None,
            (true, true) => Some(now),
            (true, false) => partial_since.or(Some(now)),
        };
    }
}

/// Writes queued messages in order until every sender is gone or a write fails; each write is
/// bounded by `tcp_partial_timeout` so a peer that stops reading cannot pin the task.
async fn write_loop(
    shared: Arc<Shared>,
    mut write: OwnedWriteHalf,
    mut rx: mpsc::Receiver<Bytes>,
    id: ConnectionId,
    peer: SocketAddr,
) {
    let timeout = shared.config.tcp_partial_timeout;
    let target = Target {
        transport: Transport::Tcp,
        addr: peer,
        connection: Some(id),
    };
    while let Some(data) = rx.recv().await {
        let error = match tokio::time::timeout(timeout, write.write_all(&data)).await {
            Ok(Ok(())) => {
                shared.metrics.bytes_out(Transport::Tcp, data.len());
                continue;
            }
            Ok(Err(e)) => TransportError::Io(e),
            Err(_) => TransportError::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "write to peer timed out",
            )),
        };
        // Closing the queue makes the reader end the connection.
        rx.close();
        shared.send_failed(target.clone(), &error);
        while let Ok(_unsent) = rx.try_recv() {
            shared.send_failed(target.clone(), &error);
        }
        return;
    }
    // The shutdown result does not matter: the socket closes when this half is dropped.
    let _ = tokio::time::timeout(timeout, write.shutdown()).await;
}
