//! TCP and TLS: the accept loop, outbound connects (with the TLS handshake for TLS), and each
//! connection's reader and writer, the same for both.
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
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::time::Instant;
use trunkline_sip::{Peer, Transport};

use crate::activity::{idle_deadline, Activity};
use crate::connections::{NewConnection, Outgoing};
use crate::error::TransportError;
use crate::framing::{message_started, Frame, StreamFramer, PING, PONG};
use crate::message::Received;
use crate::metrics::{Direction, DropReason};
use crate::queue::{SendQueue, SendQueueRx};
use crate::transports::Shared;

/// How long a peer that has answered our keep-alive pings may take to answer the next one
/// (RFC 5626 §4.4.1: 10 s).
pub(crate) const KEEPALIVE_PONG_WAIT: Duration = Duration::from_secs(10);

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

/// Accepts connections until shutdown; beyond `tcp_max_inbound`, or `tcp_max_per_source`
/// from one IP, a new connection is closed at once, before any buffer or task is spent on it.
/// `local` is the listener's bound address, which received messages carry as `Peer::local`.
/// On a TLS listener (`tls` set) each connection does its handshake first, within the
/// handshake timeout, holding its place in the table meanwhile.
pub(crate) async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    local: SocketAddr,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let transport = if tls.is_some() {
        Transport::Tls
    } else {
        Transport::Tcp
    };
    let mut shutdown = shared.shutdown.subscribe();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.wait_for(|s| *s) => break,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, peer)) => match shared.table.accept(peer, local) {
                Ok(conn) => {
                    shared
                        .metrics
                        .connection_opened(transport, Direction::Inbound);
                    tracing::debug!(%peer, %local, connection = conn.id, %transport, "connection accepted");
                    match &tls {
                        None => {
                            tokio::spawn(run_connection(
                                shared.clone(),
                                stream,
                                Transport::Tcp,
                                conn,
                                peer,
                                Some(local),
                                false,
                            ));
                        }
                        Some(acceptor) => {
                            tokio::spawn(accept_tls(
                                shared.clone(),
                                acceptor.clone(),
                                stream,
                                conn,
                                peer,
                                local,
                            ));
                        }
                    }
                }
                Err(e) => {
                    drop(stream);
                    let reason = match e {
                        TransportError::SourceLimit { .. } => DropReason::SourceLimit,
                        _ => DropReason::InboundLimit,
                    };
                    shared.metrics.dropped(reason, transport, peer, &e);
                }
            },
            Err(e) => {
                if shared.metrics.log_allowed() {
                    tracing::warn!(%local, error = %e, "TCP accept failed");
                }
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// The server side of a TLS handshake on an accepted connection, then the connection; a
/// handshake that fails, takes too long or shows a certificate the peer check refuses
/// closes it, counted as `tls_handshake`.
async fn accept_tls(
    shared: Arc<Shared>,
    acceptor: tokio_rustls::TlsAcceptor,
    stream: TcpStream,
    conn: NewConnection,
    peer: SocketAddr,
    local: SocketAddr,
) {
    let Some(tls) = shared.tls.clone() else {
        return;
    };
    let _ = stream.set_nodelay(true);
    let mut shutdown = shared.shutdown.subscribe();
    let outcome = tokio::select! {
        _ = shutdown.wait_for(|s| *s) => Err("shutdown".to_string()),
        r = tokio::time::timeout(tls.handshake_timeout, acceptor.accept(stream)) => match r {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("handshake timed out".to_string()),
        },
    };
    let checked = outcome.and_then(|s| {
        let cert = s.get_ref().1.peer_certificates().and_then(|c| c.first());
        match &tls.peer_check {
            Some(check) => check.check(peer, cert).map(|()| s),
            None => Ok(s),
        }
    });
    match checked {
        Ok(s) => run_connection(shared, s, Transport::Tls, conn, peer, Some(local), false).await,
        Err(reason) => {
            let error = TransportError::Tls { addr: peer, reason };
            shared
                .metrics
                .dropped(DropReason::TlsHandshake, Transport::Tls, peer, &error);
            shared.table.remove(conn.id);
            shared.metrics.connection_closed(Transport::Tls);
        }
    }
}

/// Opens an outbound connection reserved by `send`, then runs it like an accepted one (the
/// trunk's responses come back on it). `bind` is the local IP (port 0) of the listener the
/// send named. On failure every queued message is reported, each with its own token.
pub(crate) async fn connect_and_run(
    shared: Arc<Shared>,
    conn: NewConnection,
    addr: SocketAddr,
    transport: Transport,
    listener: Option<SocketAddr>,
    bind: Option<SocketAddr>,
) {
    let mut shutdown = shared.shutdown.subscribe();
    let timeout = shared.config.tcp_connect_timeout;
    let connect = async {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if let Some(bind) = bind {
            socket.bind(bind)?;
        }
        socket.connect(addr).await
    };
    let outcome = tokio::select! {
        _ = shutdown.wait_for(|s| *s) => Err(TransportError::Shutdown),
        r = tokio::time::timeout(timeout, connect) => match r {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(source)) => Err(TransportError::Connect { addr, source }),
            Err(_) => Err(TransportError::ConnectTimeout { addr }),
        },
    };
    let outcome = match (outcome, transport) {
        (Ok(stream), Transport::Tls) => {
            let _ = stream.set_nodelay(true);
            connect_tls(&shared, stream, addr).await.map(Stream::Tls)
        }
        (Ok(stream), _) => Ok(Stream::Tcp(stream)),
        (Err(e), _) => Err(e),
    };
    match outcome {
        Ok(stream) => {
            shared
                .metrics
                .connection_opened(transport, Direction::Outbound);
            tracing::debug!(
                peer = %addr,
                connection = conn.id,
                %transport,
                "connection opened"
            );
            match stream {
                Stream::Tcp(s) => {
                    run_connection(shared, s, transport, conn, addr, listener, true).await
                }
                Stream::Tls(s) => {
                    run_connection(shared, s, transport, conn, addr, listener, true).await
                }
            }
        }
        Err(error) => {
            if matches!(error, TransportError::Tls { .. }) {
                shared
                    .metrics
                    .dropped(DropReason::TlsHandshake, Transport::Tls, addr, &error);
            }
            let NewConnection { id, tx, mut rx, .. } = conn;
            shared.table.remove(id);
            drop(tx);
            // Sends racing with the removal find the queue closed and report themselves.
            rx.close();
            while let Ok(unsent) = rx.try_recv() {
                report(&shared, unsent, &error);
            }
        }
    }
}

/// An outbound connection once it is up.
enum Stream {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// The client side of a TLS handshake to `addr`: its certificate must chain to the
/// destination's CAs and carry the destination's name (see `TlsContext::target`).
async fn connect_tls(
    shared: &Shared,
    stream: TcpStream,
    addr: SocketAddr,
) -> Result<Box<tokio_rustls::client::TlsStream<TcpStream>>, TransportError> {
    let fail = |reason: String| TransportError::Tls { addr, reason };
    let tls = shared
        .tls
        .as_ref()
        .ok_or_else(|| fail("the node has no TLS settings".into()))?;
    let target = tls
        .target(addr)
        .ok_or_else(|| fail("no TLS settings for this destination".into()))?;
    let connector = tokio_rustls::TlsConnector::from(target.config);
    match tokio::time::timeout(
        tls.handshake_timeout,
        connector.connect(target.name, stream),
    )
    .await
    {
        Ok(Ok(s)) => Ok(Box::new(s)),
        Ok(Err(e)) => Err(fail(e.to_string())),
        Err(_) => Err(fail("handshake timed out".into())),
    }
}

/// Reports a message that will never be written.
fn report(shared: &Shared, unsent: Outgoing, error: &TransportError) {
    if let Some(origin) = unsent.origin {
        shared.send_failed(&origin, error);
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

/// Nagle's algorithm off: a SIP message is written whole and should leave at once.
trait NoDelay {
    fn no_delay(&self, peer: SocketAddr);
}

impl NoDelay for TcpStream {
    fn no_delay(&self, peer: SocketAddr) {
        if let Err(e) = self.set_nodelay(true) {
            tracing::debug!(%peer, error = %e, "cannot set TCP_NODELAY");
        }
    }
}

// Set on the TCP stream before the handshake.
impl<S> NoDelay for tokio_rustls::server::TlsStream<S> {
    fn no_delay(&self, _peer: SocketAddr) {}
}

impl<S> NoDelay for Box<tokio_rustls::client::TlsStream<S>> {
    fn no_delay(&self, _peer: SocketAddr) {}
}

/// Runs one connection (plain TCP or TLS after its handshake) to its end and cleans up
/// after it.
async fn run_connection<S>(
    shared: Arc<Shared>,
    stream: S,
    transport: Transport,
    conn: NewConnection,
    peer: SocketAddr,
    listener: Option<SocketAddr>,
    outbound: bool,
) where
    S: AsyncRead + AsyncWrite + NoDelay + Send + 'static,
{
    stream.no_delay(peer);
    let NewConnection {
        id,
        tx,
        rx,
        activity,
    } = conn;
    // The connection is active from the moment it is up, not from when it was reserved.
    activity.touch();
    let (read, write) = tokio::io::split(stream);
    tokio::spawn(write_loop(
        shared.clone(),
        write,
        transport,
        rx,
        activity.clone(),
        peer,
    ));
    let hop = Peer {
        local: listener,
        connection: Some(id),
        ..Peer::new(transport, peer)
    };
    // Only the node's own connections are kept alive from this side: a peer that
    // connected to us keeps its flow alive itself (and gets our pongs).
    let keepalive = if outbound {
        shared.config.tcp_keepalive
    } else {
        None
    };
    let closed = read_loop(&shared, read, hop, &activity, &tx, keepalive).await;
    shared.table.remove(id);
    drop(tx);
    shared.metrics.connection_closed(transport);
    tracing::debug!(%peer, connection = id, %transport, reason = closed.as_str(), "connection closed");
}

/// What ended a wait in the read loop.
enum Wake {
    Read(std::io::Result<usize>),
    Timer,
    Closed(CloseCause),
}

/// Reads and frames until the connection must end, enforcing the idle and partial-message
/// timeouts and the size limit. Idle means no traffic either way (the writer touches
/// `activity` too) and no pin.
async fn read_loop(
    shared: &Shared,
    mut read: impl AsyncRead + Unpin,
    hop: Peer,
    activity: &Activity,
    tx: &SendQueue,
    keepalive: Option<Duration>,
) -> CloseCause {
    let config = &shared.config;
    let peer = hop.addr;
    let limit = config.max_message_bytes;
    let idle = config.tcp_idle_timeout;
    let mut shutdown = shared.shutdown.subscribe();
    let mut buf = BytesMut::new();
    let mut framer = StreamFramer::new();
    let mut idle_at = activity.last() + idle;
    let mut partial_since: Option<Instant> = None;
    // Keep-alive (outbound connections): the next ping, the pong awaited, and whether
    // the peer has ever answered one (a peer that never pongs is never judged by it).
    let mut ping_at = keepalive.map(|k| Instant::now() + k);
    let mut pong_by: Option<Instant> = None;
    let mut pongs = false;
    let timer = tokio::time::sleep_until(idle_at);
    tokio::pin!(timer);

    loop {
        let deadline = match partial_since {
            Some(start) => idle_at.min(start + config.tcp_partial_timeout),
            None => idle_at,
        };
        let deadline = [ping_at, pong_by]
            .into_iter()
            .flatten()
            .fold(deadline, Instant::min);
        timer.as_mut().reset(deadline);
        buf.reserve(READ_CHUNK);

        let wake = tokio::select! {
            _ = shutdown.wait_for(|s| *s) => Wake::Closed(CloseCause::Shutdown),
            _ = tx.closed() => Wake::Closed(CloseCause::WriterGone),
            _ = &mut timer => Wake::Timer,
            r = read.read_buf(&mut buf) => Wake::Read(r),
        };
        let n = match wake {
            Wake::Closed(cause) => return cause,
            Wake::Timer => {
                let now = Instant::now();
                if pong_by.is_some_and(|t| t <= now) {
                    pong_by = None;
                    if pongs {
                        let reason = DropReason::KeepaliveTimeout;
                        let detail = "keep-alive ping not answered";
                        shared.metrics.dropped(reason, hop.transport, peer, &detail);
                        return CloseCause::Dropped(reason);
                    }
                }
                if let (Some(at), Some(every)) = (ping_at, keepalive) {
                    if at <= now {
                        ping_at = Some(now + every);
                        let ping = Outgoing {
                            data: Bytes::from_static(PING),
                            origin: None,
                        };
                        if tx.try_send(ping).is_ok() && pong_by.is_none() {
                            pong_by = Some(now + KEEPALIVE_PONG_WAIT);
                        }
                    }
                }
                if partial_since.is_some_and(|start| start + config.tcp_partial_timeout <= now) {
                    let reason = DropReason::PartialTimeout;
                    let detail = "message not completed in time";
                    shared.metrics.dropped(reason, hop.transport, peer, &detail);
                    return CloseCause::Dropped(reason);
                }
                if idle_at <= now {
                    match idle_deadline(activity.last(), activity.is_pinned(), now, idle) {
                        Some(next) => idle_at = next,
                        None => {
                            let reason = DropReason::IdleTimeout;
                            let detail = "connection idle";
                            shared.metrics.dropped(reason, hop.transport, peer, &detail);
                            return CloseCause::Dropped(reason);
                        }
                    }
                }
                continue;
            }
            Wake::Read(Ok(0)) => return CloseCause::PeerClosed,
            Wake::Read(Ok(n)) => n,
            Wake::Read(Err(e)) => {
                tracing::debug!(%peer, error = %e, "TCP read error");
                return CloseCause::ReadError;
            }
        };
        shared.metrics.bytes_in(hop.transport, n);
        let now = Instant::now();
        // On a connection we keep alive, a pong (CRLFs alone) answers our ping and is not
        // traffic; anything else is, and shows the peer alive just as well.
        let only_crlf = buf[buf.len() - n..]
            .iter()
            .all(|b| matches!(b, b'\r' | b'\n'));
        if pong_by.take().is_some() && only_crlf {
            pongs = true;
        }
        if keepalive.is_some() && buf.iter().all(|b| matches!(b, b'\r' | b'\n')) {
            // Pongs between messages: two of them must not read as a ping from the peer.
            buf.clear();
            framer = StreamFramer::new();
        }
        if keepalive.is_none() || !only_crlf {
            activity.touch();
            idle_at = now + idle;
        }

        let mut completed = false;
        loop {
            match framer.decode(&mut buf, limit) {
                Ok(Some(Frame::Message(data))) => {
                    completed = true;
                    shared.inbound.on_message(Received { peer: hop, data });
                }
                Ok(Some(Frame::Ping)) => {
                    // A full queue means the peer is not reading; dropping a pong is harmless.
                    let pong = Outgoing {
                        data: Bytes::from_static(PONG),
                        origin: None,
                    };
                    if tx.try_send(pong).is_err() {
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
                    shared.metrics.dropped(reason, hop.transport, peer, &error);
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

/// Bytes of queued messages written with one write at most: when several messages wait
/// (a busy trunk connection), they go out together, one syscall and, over TLS, one record
/// instead of one per message.
const WRITE_BATCH: usize = 64 * 1024;

/// Writes queued messages in order until every sender is gone or a write fails; each write is
/// bounded by `tcp_partial_timeout` so a peer that stops reading cannot pin the task. A failed
/// write is reported for every message of its batch (the connection closes: whether the peer
/// got part of it cannot be known), and so is every message still queued behind it.
async fn write_loop(
    shared: Arc<Shared>,
    mut write: impl AsyncWrite + Unpin,
    transport: Transport,
    mut rx: SendQueueRx,
    activity: Arc<Activity>,
    peer: SocketAddr,
) {
    let timeout = shared.config.tcp_partial_timeout;
    let mut batch: Vec<Outgoing> = Vec::new();
    let mut joined = BytesMut::new();
    while let Some(first) = rx.recv().await {
        let mut len = first.data.len();
        batch.push(first);
        while len < WRITE_BATCH {
            let Ok(more) = rx.try_recv() else { break };
            len += more.data.len();
            batch.push(more);
        }
        let data: &[u8] = match batch.as_slice() {
            [one] => &one.data,
            many => {
                joined.clear();
                for m in many {
                    joined.extend_from_slice(&m.data);
                }
                &joined
            }
        };
        // The flush pushes out what a TLS stream still holds once the socket takes it.
        let written = async {
            write.write_all(data).await?;
            write.flush().await
        };
        let error = match tokio::time::timeout(timeout, written).await {
            Ok(Ok(())) => {
                let mut busy = false;
                for m in batch.drain(..) {
                    shared.metrics.bytes_out(transport, m.data.len());
                    busy |= m.origin.is_some();
                }
                // Our keep-alive pings and pongs do not make a connection busy.
                if busy {
                    activity.touch();
                }
                continue;
            }
            Ok(Err(source)) => TransportError::Write { addr: peer, source },
            Err(_) => TransportError::WriteTimeout { addr: peer },
        };
        // Closing the queue makes the reader end the connection.
        rx.close();
        for m in batch.drain(..) {
            report(&shared, m, &error);
        }
        while let Ok(unsent) = rx.try_recv() {
            report(&shared, unsent, &error);
        }
        return;
    }
    // The shutdown result does not matter: the socket closes when this half is dropped.
    let _ = tokio::time::timeout(timeout, write.shutdown()).await;
}
