//! The `Transports` handle: binding, sending, pinning, shutdown.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use prometheus_client::registry::Registry;
use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use trunkline_sip::{Peer, Transport};

use crate::activity::ConnectionPin;
use crate::config::TransportConfig;
use crate::congestion::Congestion;
use crate::connections::{ConnectionTable, Limits, Origin, Outgoing, Route};
use crate::error::TransportError;
use crate::inbound::Inbound;
use crate::listeners::{self, Listener};
use crate::metrics::{DropReason, Metrics};
use crate::queue::{SendQueue, Unsent};
use crate::tls::TlsContext;
use crate::{tcp, udp};

/// How long `shutdown` waits for connection tasks to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// State shared by the handle and every socket task.
pub(crate) struct Shared {
    pub(crate) config: TransportConfig,
    pub(crate) inbound: Arc<dyn Inbound>,
    pub(crate) metrics: Metrics,
    pub(crate) table: ConnectionTable,
    /// The node's TLS settings (`None`: no TLS at all).
    pub(crate) tls: Option<Arc<TlsContext>>,
    /// Every bound socket, UDP first, each transport in configuration order.
    listeners: Vec<Listener>,
    /// The UDP socket of each entry of `listeners` (`None` for TCP listeners).
    udp_sockets: Vec<Option<Arc<udp::UdpEndpoint>>>,
    /// `true` once shutdown has begun; every task watches it.
    pub(crate) shutdown: watch::Sender<bool>,
    /// Runtime to spawn on, so `send` works from threads outside it.
    pub(crate) runtime: Handle,
    /// Which UDP sockets' receive queues are deep now.
    pub(crate) congestion: Congestion,
    /// Receive and accept loops, awaited on shutdown.
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Shared {
    /// Whether shutdown has begun.
    pub(crate) fn is_shut_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Counts, logs (within the log budget) and reports a message that could not be sent.
    pub(crate) fn send_failed(&self, origin: &Origin, error: &TransportError) {
        let reason = match error {
            TransportError::OutboundLimit { .. } => DropReason::OutboundLimit,
            _ => DropReason::SendError,
        };
        let peer = &origin.peer;
        self.metrics
            .dropped(reason, peer.transport, peer.addr, error);
        self.inbound.on_send_error(peer, origin.token, error);
    }
}

/// The node's SIP sockets: every bound UDP socket and TCP listener, and the TCP connections.
///
/// Cheap to clone (an `Arc` inside) so every actor can hold one and send without a hop through
/// a transport actor.
#[derive(Clone)]
pub struct Transports {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Transports {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transports")
            .field("listeners", &self.shared.listeners)
            .field("connections", &self.shared.table.len())
            .finish()
    }
}

impl Transports {
    /// Binds every configured address, registers the metrics and starts receiving.
    ///
    /// Binding happens before anything is spawned, so a bad address (or a wildcard one with
    /// no advertised host) fails start-up instead of leaving half a node running. Must be
    /// called inside a tokio runtime.
    pub async fn start(
        config: TransportConfig,
        inbound: Arc<dyn Inbound>,
        registry: &mut Registry,
    ) -> Result<Transports, TransportError> {
        Self::start_with_tls(config, None, inbound, registry).await
    }

    /// As [`Transports::start`], with the TLS settings that `config.tls` listeners serve
    /// and outbound TLS connections use.
    pub async fn start_with_tls(
        config: TransportConfig,
        tls: Option<Arc<TlsContext>>,
        inbound: Arc<dyn Inbound>,
        registry: &mut Registry,
    ) -> Result<Transports, TransportError> {
        let runtime = Handle::try_current().map_err(|_| TransportError::NoRuntime)?;
        let mut listeners =
            Vec::with_capacity(config.udp.len() + config.tcp.len() + config.tls.len());
        let mut udp_sockets = Vec::with_capacity(listeners.capacity());
        for entry in &config.udp {
            let socket = udp::bind(entry.addr, config.udp_recv_buffer)?;
            let local = socket.local_addr()?;
            listeners.push(Listener::new(Transport::Udp, entry, local)?);
            udp_sockets.push(Some(Arc::new(socket)));
        }
        let mut tcp_listeners = Vec::with_capacity(config.tcp.len());
        for entry in &config.tcp {
            let listener = tcp::bind(entry.addr)?;
            let local = listener.local_addr()?;
            listeners.push(Listener::new(Transport::Tcp, entry, local)?);
            udp_sockets.push(None);
            tcp_listeners.push((local, listener, None));
        }
        for entry in &config.tls {
            let server = tls
                .as_ref()
                .and_then(|t| t.server.clone())
                .ok_or(TransportError::NoCertificate { addr: entry.addr })?;
            let listener = tcp::bind(entry.addr)?;
            let local = listener.local_addr()?;
            listeners.push(Listener::new(Transport::Tls, entry, local)?);
            udp_sockets.push(None);
            tcp_listeners.push((
                local,
                listener,
                Some(tokio_rustls::TlsAcceptor::from(server)),
            ));
        }

        let metrics = Metrics::register(registry);
        let (shutdown, _) = watch::channel(false);
        let congestion = Congestion::new(config.udp_congestion_percent);
        let shared = Arc::new(Shared {
            congestion,
            table: ConnectionTable::new(Limits {
                inbound: config.tcp_max_inbound,
                outbound: config.tcp_max_outbound,
                per_source: config.tcp_max_per_source,
                queue_bytes: config.tcp_send_queue_bytes,
            }),
            config,
            inbound,
            metrics,
            tls,
            listeners,
            udp_sockets,
            shutdown,
            runtime,
            tasks: Mutex::new(Vec::new()),
        });

        let mut tasks = Vec::new();
        for (listener, socket) in shared.listeners.iter().zip(&shared.udp_sockets) {
            if let Some(socket) = socket {
                tasks.push(tokio::spawn(udp::receive_loop(
                    shared.clone(),
                    socket.clone(),
                    listener.local,
                )));
            }
        }
        for (local, listener, acceptor) in tcp_listeners {
            tasks.push(tokio::spawn(tcp::accept_loop(
                shared.clone(),
                listener,
                local,
                acceptor,
            )));
        }
        for l in &shared.listeners {
            tracing::info!(local = %l.local, advertise = %l.advertise, transport = %l.transport, "listening");
        }
        *shared.tasks.lock().unwrap_or_else(PoisonError::into_inner) = tasks;
        Ok(Transports { shared })
    }

    /// Sends one message to `peer`, without blocking, from any thread or actor.
    ///
    /// It leaves from the socket `peer.local` names, else from the first listener of the
    /// peer's transport and address family. UDP tries the send at once and falls back to a
    /// spawned send if the socket buffer is full. TCP uses `peer.connection` if it is still
    /// open, else the latest open connection to the address from that listener, else opens
    /// one (bound to the listener's IP when `peer.local` is given, bounded by
    /// `tcp_connect_timeout`); bytes are queued on the connection's bounded queue.
    /// Failures are counted, logged and reported through [`Inbound::on_send_error`] with no
    /// token.
    pub fn send(&self, peer: &Peer, data: Bytes) {
        self.dispatch(
            Origin {
                peer: *peer,
                token: None,
            },
            data,
        );
    }

    /// As [`Transports::send`], and every failure of this message, at once or after a
    /// connect that failed or a connection that closed before writing it, is reported
    /// exactly once through [`Inbound::on_send_error`] with `token`, so the transaction
    /// that sent it can fail over at once instead of waiting for its timer.
    pub fn send_tracked(&self, peer: &Peer, data: Bytes, token: u64) {
        self.dispatch(
            Origin {
                peer: *peer,
                token: Some(token),
            },
            data,
        );
    }

    fn dispatch(&self, origin: Origin, data: Bytes) {
        let shared = &self.shared;
        if shared.is_shut_down() {
            shared.send_failed(&origin, &TransportError::Shutdown);
            return;
        }
        match origin.peer.transport {
            Transport::Udp => self.send_udp(origin, data),
            Transport::Tcp | Transport::Tls => self.send_tcp(origin, data),
        }
    }

    fn send_udp(&self, origin: Origin, data: Bytes) {
        let shared = &self.shared;
        let socket = listeners::resolve(&shared.listeners, &origin.peer)
            .map(|index| shared.udp_sockets.get(index).and_then(Option::as_ref));
        match socket {
            Ok(Some(socket)) => udp::send(shared, socket, origin, data),
            // A UDP listener always has its socket; answer like a missing one if not.
            Ok(None) => shared.send_failed(
                &origin,
                &TransportError::NoSocket {
                    transport: Transport::Udp,
                    addr: origin.peer.addr,
                },
            ),
            Err(error) => shared.send_failed(&origin, &error),
        }
    }

    fn send_tcp(&self, origin: Origin, data: Bytes) {
        let shared = &self.shared;
        let peer = origin.peer;
        if let Some(tx) = peer.connection.and_then(|id| shared.table.named(id)) {
            queue(shared, &tx, origin, data);
            return;
        }
        // With no listener named and none of the family, connect from wherever the
        // kernel picks (a TCP trunk on a node listening on UDP only).
        let listener = match listeners::resolve(&shared.listeners, &peer) {
            Ok(index) => shared.listeners.get(index).map(|l| l.local),
            Err(TransportError::NoSocket { .. }) if peer.local.is_none() => None,
            Err(error) => {
                shared.send_failed(&origin, &error);
                return;
            }
        };
        match shared.table.route(peer.addr, listener) {
            Ok(Route::Existing(tx)) => queue(shared, &tx, origin, data),
            Ok(Route::Connect(conn)) => {
                // A fresh queue has room: this cannot fail, and if it did it would report.
                queue(shared, &conn.tx, origin, data);
                let bind = peer
                    .local
                    .filter(|l| !l.ip().is_unspecified())
                    .map(|l| SocketAddr::new(l.ip(), 0));
                shared.runtime.spawn(tcp::connect_and_run(
                    shared.clone(),
                    conn,
                    peer.addr,
                    peer.transport,
                    listener,
                    bind,
                ));
            }
            Err(error) => shared.send_failed(&origin, &error),
        }
    }

    /// Every bound socket with its real address and advertised host, UDP first, each
    /// transport in configuration order.
    pub fn listeners(&self) -> &[Listener] {
        &self.shared.listeners
    }

    /// The listener of `transport` bound at `local` (a `Peer::local` value).
    pub fn listener(&self, transport: Transport, local: SocketAddr) -> Option<&Listener> {
        self.shared
            .listeners
            .iter()
            .find(|l| l.transport == transport && l.local == local)
    }

    /// The listener a send to `peer` leaves from, as [`Transports::send`] chooses it
    /// (`peer.local`, else the first of the transport and family): what the call layer
    /// writes into Via and Contact toward that peer. `None` when no listener fits: a UDP
    /// send then fails, a TCP one connects from an address the kernel picks.
    pub fn listener_for(&self, peer: &Peer) -> Option<&Listener> {
        let index = listeners::resolve(&self.shared.listeners, peer).ok()?;
        self.shared.listeners.get(index)
    }

    /// The first bound address of a transport, with port 0 resolved to the real port.
    pub fn local_addr(&self, transport: Transport) -> Option<SocketAddr> {
        self.shared
            .listeners
            .iter()
            .find(|l| l.transport == transport)
            .map(|l| l.local)
    }

    /// Keeps TCP connection `connection` (a `Peer::connection` value) from being closed as
    /// idle for as long as the returned guard lives; `None` if it is no longer open.
    pub fn pin(&self, connection: u64) -> Option<ConnectionPin> {
        self.shared.table.pin(connection)
    }

    /// Lets sends to `addr` use connection `connection`, which the peer opened from
    /// another port (RFC 5923 `alias` in its Via; the caller checks that `addr` is the
    /// connection's own IP). False when the connection is gone.
    pub fn alias(&self, connection: u64, addr: SocketAddr) -> bool {
        self.shared.table.alias(connection, addr)
    }

    /// The node's TLS settings.
    pub fn tls(&self) -> Option<&Arc<TlsContext>> {
        self.shared.tls.as_ref()
    }

    /// Whether a UDP socket's receive queue is deeper than `udp_congestion_percent` of
    /// its buffer: the node reads more slowly than datagrams arrive, and the dispatcher
    /// refuses new calls until the queue drains (see the `congestion` module).
    pub fn receive_congested(&self) -> bool {
        self.shared.congestion.any()
    }

    /// Number of open (or opening) TCP connections; for tests and the admin API.
    pub fn connection_count(&self) -> usize {
        self.shared.table.len()
    }

    /// Stops receiving and accepting, closes every connection and waits (a few seconds at most)
    /// for their tasks to end. Sends after this fail with [`TransportError::Shutdown`].
    ///
    /// Dropping every `Transports` clone does not stop the sockets (their tasks hold the shared
    /// state); call this to release them.
    pub async fn shutdown(&self) {
        self.shared.shutdown.send_replace(true);
        let tasks = std::mem::take(
            &mut *self
                .shared
                .tasks
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for task in tasks {
            if let Err(e) = task.await {
                tracing::warn!(error = %e, "transport task ended abnormally");
            }
        }
        if tokio::time::timeout(SHUTDOWN_GRACE, self.shared.table.wait_empty())
            .await
            .is_err()
        {
            tracing::warn!(
                remaining = self.shared.table.len(),
                "transport connections still closing after shutdown grace"
            );
        }
    }
}

/// Queues a message on a connection, reporting it if the queue is full or closed.
fn queue(shared: &Shared, tx: &SendQueue, origin: Origin, data: Bytes) {
    let msg = Outgoing {
        data,
        origin: Some(origin),
    };
    if let Err(e) = tx.try_send(msg) {
        let addr = origin.peer.addr;
        let error = match e {
            Unsent::Full => TransportError::QueueFull { addr },
            Unsent::Closed => TransportError::ConnectionClosed { addr },
        };
        shared.send_failed(&origin, &error);
    }
}
