//! The `Transports` handle: binding, sending, shutdown.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use prometheus_client::registry::Registry;
use tokio::net::UdpSocket;
use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::TransportConfig;
use crate::connections::{ConnectionTable, Route};
use crate::error::TransportError;
use crate::inbound::Inbound;
use crate::message::Target;
use crate::metrics::{DropReason, Metrics};
use crate::transport::Transport;
use crate::{tcp, udp};

/// How long `shutdown` waits for connection tasks to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// State shared by the handle and every socket task.
pub(crate) struct Shared {
    pub(crate) config: TransportConfig,
    pub(crate) inbound: Arc<dyn Inbound>,
    pub(crate) metrics: Metrics,
    pub(crate) table: ConnectionTable,
    /// Bound UDP sockets with their real local addresses.
    pub(crate) udp: Vec<(SocketAddr, Arc<UdpSocket>)>,
    /// Real local addresses of the TCP listeners.
    pub(crate) tcp: Vec<SocketAddr>,
    /// `true` once shutdown has begun; every task watches it.
    pub(crate) shutdown: watch::Sender<bool>,
    /// Runtime to spawn on, so `send` works from threads outside it.
    pub(crate) runtime: Handle,
    /// Receive and accept loops, awaited on shutdown.
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Shared {
    /// Whether shutdown has begun.
    pub(crate) fn is_shut_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Logs, counts and reports a send that could not be done.
    pub(crate) fn send_failed(&self, target: Target, error: &TransportError) {
        self.metrics
            .dropped(DropReason::SendError, target.transport, target.addr, error);
        self.inbound.on_send_error(target, error);
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
            .field(
                "udp",
                &self.shared.udp.iter().map(|(a, _)| a).collect::<Vec<_>>(),
            )
            .field("tcp", &self.shared.tcp)
            .field("connections", &self.shared.table.len())
            .finish()
    }
}

impl Transports {
    /// Binds every configured address, registers the metrics and starts receiving.
    ///
    /// Binding happens before anything is spawned, so a bad address fails start-up instead of
    /// leaving half a node running. Must be called inside a tokio runtime.
    pub async fn start(
        config: TransportConfig,
        inbound: Arc<dyn Inbound>,
        registry: &mut Registry,
    ) -> Result<Transports, TransportError> {
        let runtime = Handle::try_current().map_err(|_| TransportError::NoRuntime)?;
        let mut udp_sockets = Vec::with_capacity(config.udp.len());
        for &addr in &config.udp {
            let socket = udp::bind(addr, config.udp_recv_buffer)?;
            let local = socket.local_addr()?;
            udp_sockets.push((local, Arc::new(socket)));
        }
        let mut listeners = Vec::with_capacity(config.tcp.len());
        for &addr in &config.tcp {
            let listener = tcp::bind(addr)?;
            let local = listener.local_addr()?;
            listeners.push((local, listener));
        }

        let metrics = Metrics::register(registry);
        let (shutdown, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            table: ConnectionTable::new(config.tcp_max_connections),
            config,
            inbound,
            metrics,
            udp: udp_sockets,
            tcp: listeners.iter().map(|(a, _)| *a).collect(),
            shutdown,
            runtime,
            tasks: Mutex::new(Vec::new()),
        });

        let mut tasks = Vec::new();
        for (local, socket) in &shared.udp {
            tasks.push(tokio::spawn(udp::receive_loop(
                shared.clone(),
                socket.clone(),
                *local,
            )));
            tracing::info!(local = %local, transport = "UDP", "listening");
        }
        for (local, listener) in listeners {
            tasks.push(tokio::spawn(tcp::accept_loop(
                shared.clone(),
                listener,
                local,
            )));
            tracing::info!(local = %local, transport = "TCP", "listening");
        }
        *shared.tasks.lock().unwrap_or_else(PoisonError::into_inner) = tasks;
        Ok(Transports { shared })
    }

    /// Sends one message, without blocking, from any thread or actor.
    ///
    /// UDP tries the send at once and falls back to a spawned send if the socket buffer is full.
    /// TCP uses the target's connection if it is still open, else an open connection to the
    /// address, else opens one (bounded by `tcp_connect_timeout`); bytes are queued on the
    /// connection's bounded queue. Failures are logged, counted and reported through
    /// [`Inbound::on_send_error`].
    pub fn send(&self, target: Target, data: Bytes) {
        let shared = &self.shared;
        if shared.is_shut_down() {
            shared.send_failed(target, &TransportError::Shutdown);
            return;
        }
        match target.transport {
            Transport::Udp => udp::send(shared, target, data),
            Transport::Tcp => self.send_tcp(target, data),
        }
    }

    fn send_tcp(&self, target: Target, data: Bytes) {
        let shared = &self.shared;
        match shared.table.route(&target) {
            Ok(Route::Existing(tx)) => {
                if let Err(e) = tx.try_send(data) {
                    let error = match e {
                        tokio::sync::mpsc::error::TrySendError::Full(_) => {
                            TransportError::QueueFull { addr: target.addr }
                        }
                        tokio::sync::mpsc::error::TrySendError::Closed(_) => {
                            TransportError::ConnectionClosed { addr: target.addr }
                        }
                    };
                    shared.send_failed(target, &error);
                }
            }
            Ok(Route::Connect { id, tx, rx }) => {
                // A fresh queue has room for at least one message.
                if let Err(e) = tx.try_send(data) {
                    drop(e);
                    shared.send_failed(
                        target.clone(),
                        &TransportError::ConnectionClosed { addr: target.addr },
                    );
                }
                shared.runtime.spawn(tcp::connect_and_run(
                    shared.clone(),
                    id,
                    target.addr,
                    tx,
                    rx,
                ));
            }
            Err(error) => shared.send_failed(target, &error),
        }
    }

    /// The first bound address of a transport, with port 0 resolved to the real port: what the
    /// dispatcher puts in Via and Contact.
    pub fn local_addr(&self, transport: Transport) -> Option<SocketAddr> {
        match transport {
            Transport::Udp => self.shared.udp.first().map(|(a, _)| *a),
            Transport::Tcp => self.shared.tcp.first().copied(),
        }
    }

    /// Every bound address, UDP first.
    pub fn local_addrs(&self) -> Vec<(Transport, SocketAddr)> {
        self.shared
            .udp
            .iter()
            .map(|(a, _)| (Transport::Udp, *a))
            .chain(self.shared.tcp.iter().map(|a| (Transport::Tcp, *a)))
            .collect()
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
