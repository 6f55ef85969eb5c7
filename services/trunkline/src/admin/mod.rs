//! The gRPC admin API (`proto/trunkline/admin/v1`): `NodeService`, `CallService`
//! (`calls`), the standard `grpc.health.v1` health service and server reflection, on
//! `[admin] listen`.
//!
//! Authentication is by bearer token with a viewer and an operator role (`auth`); without
//! any token configured the configuration accepts only a loopback address for the API
//! (see `Config::validate_admin`), since whoever reaches it can drain the node and end its
//! calls. Every state-changing call is logged with who made it (the token's name, or the
//! peer's address when authentication is off).
//!
//! Health: the overall service ("") and `trunkline.admin.v1.NodeService` report SERVING
//! while the node takes calls and NOT_SERVING while it drains (through this API or on
//! SIGTERM), which is what a Kubernetes gRPC readiness probe wants to see.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use anyhow::Context as _;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status};
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;
use trunkline_call::Dispatcher;
use trunkline_proto::admin::v1::call_service_server::CallServiceServer;
use trunkline_proto::admin::v1::node_service_server::{NodeService, NodeServiceServer};
use trunkline_proto::admin::v1::trunk_service_server::TrunkServiceServer;
use trunkline_proto::admin::v1::{
    ClusterNode, DrainRequest, GetNodeRequest, Limits, ListNodesRequest, ListNodesResponse, Node,
    NodeState, SipListener, UndrainRequest,
};

use crate::config::{Config, ListenEntry, SipConfig};

pub mod auth;
pub mod calls;
pub mod incoming;
pub mod tls;
pub mod trunks;
use crate::shutdown::Shutdown;

/// The largest request the API decodes (tonic's default is 4 MiB). No admin request
/// needs more than a few KiB: a trunk, a routing table of a few thousand prefixes. A
/// bigger one is refused (OUT_OF_RANGE, tonic's status for it) before it is decoded.
const MAX_REQUEST_BYTES: usize = 256 * 1024;

/// What `GetNode` reports that does not change while the node runs.
#[derive(Debug, Clone)]
pub struct NodeFacts {
    pub id: String,
    pub started_at: SystemTime,
    pub started: Instant,
    pub sip_listeners: Vec<SipListener>,
    pub metrics_address: Option<SocketAddr>,
    pub limits: Limits,
    /// `[admin] max_watchers`.
    pub max_watchers: usize,
    /// Who may call the API (empty: anyone who reaches it).
    pub tokens: auth::Tokens,
    /// TLS of the listener, and whether clients must present certificates.
    pub tls: Option<tls::ApiTls>,
    /// `[admin] max_connections` and `first_bytes_timeout_secs`.
    pub connections: incoming::Limits,
    /// The cluster membership (`[cluster]`); `None` standalone.
    pub membership: Option<Arc<trunkline_cluster::Membership>>,
}

/// The SIP sockets as `GetNode` lists them, with the advertised host each one writes.
pub fn sip_listeners(sip: &SipConfig) -> Vec<SipListener> {
    let list = |transport: &str, entries: &[ListenEntry]| {
        entries
            .iter()
            .map(|e| SipListener {
                transport: transport.to_string(),
                address: e.listen.to_string(),
                advertise: e
                    .advertise
                    .clone()
                    .or(sip.advertise.map(|ip| ip.to_string()))
                    .unwrap_or_else(|| e.listen.ip().to_string()),
            })
            .collect::<Vec<_>>()
    };
    let mut out = list("udp", &sip.udp);
    out.extend(list("tcp", &sip.tcp));
    out.extend(list("tls", &sip.tls));
    out
}

/// The limits `GetNode` reports.
pub fn limits(config: &Config) -> Limits {
    let (media_port_min, media_port_max) = if config.media.enabled {
        (
            u32::from(config.media.port_min),
            u32::from(config.media.port_max),
        )
    } else {
        (0, 0)
    };
    Limits {
        max_calls: config.sip.max_calls as u64,
        media_port_min,
        media_port_max,
    }
}

/// The running admin endpoint.
#[derive(Debug)]
pub struct AdminServer {
    local: SocketAddr,
    task: JoinHandle<()>,
}

impl AdminServer {
    /// Binds `addr` now (so a taken port fails start-up, not a later request) and serves
    /// until `stop` is cancelled.
    pub async fn start(
        addr: SocketAddr,
        facts: NodeFacts,
        routing: Arc<trunks::RoutingState>,
        shared: Option<Arc<crate::shared_config::SharedConfig>>,
        dispatcher: Dispatcher,
        shutdown: Shutdown,
        stop: CancellationToken,
    ) -> anyhow::Result<AdminServer> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot bind admin.listen {addr}"))?;
        let local = listener.local_addr().context("admin.listen")?;
        let (health, health_service) = tonic_health::server::health_reporter();
        let reflection = |b: tonic_reflection::server::Builder<'static>| {
            b.register_encoded_file_descriptor_set(trunkline_proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let reflection_v1 = reflection(tonic_reflection::server::Builder::configure())
            .build_v1()
            .context("cannot build the reflection service")?;
        let reflection_v1alpha = reflection(tonic_reflection::server::Builder::configure())
            .build_v1alpha()
            .context("cannot build the reflection service")?;
        let calls = calls::Calls::new(&facts.id, dispatcher.clone(), facts.max_watchers);
        let trunks = trunks::Trunks::new(&facts.id, routing, shared);
        let tokens = facts.tokens.clone();
        let connections = facts.connections;
        if tokens.enabled() {
            tracing::info!(tokens = tokens.len(), "admin API: bearer tokens required");
        }
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = &facts.tls {
            builder = builder.tls_config(tls.config.clone()).context(
                "admin API TLS (admin.tls_cert_file, admin.tls_key_file, admin.tls_client_ca_file)",
            )?;
            tracing::info!(
                client_certificates = tls.client_certificates,
                "admin API: TLS"
            );
        }
        let admin = Admin {
            facts: Arc::new(facts),
            admin_address: local,
            dispatcher,
            shutdown: shutdown.clone(),
            health: health.clone(),
        };
        admin.publish_health().await;
        // SIGTERM drains without this API: the probe must see it all the same.
        {
            let admin = admin.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                tokio::select! {
                    () = shutdown.drain_requested() => admin.publish_health().await,
                    () = stop.cancelled() => {}
                }
            });
        }
        let incoming = incoming::incoming(listener, connections, stop.clone());
        let task = tokio::spawn(async move {
            // Half-open and idle peers are found by HTTP/2 pings and TCP keep-alives; one
            // connection cannot open streams without bound.
            let served = builder
                .max_concurrent_streams(Some(128))
                .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
                .http2_keepalive_timeout(Some(std::time::Duration::from_secs(10)))
                .add_service(health_service)
                .add_service(reflection_v1)
                .add_service(reflection_v1alpha)
                .add_service(InterceptedService::new(
                    NodeServiceServer::new(admin).max_decoding_message_size(MAX_REQUEST_BYTES),
                    {
                        let tokens = tokens.clone();
                        move |req| tokens.check(req)
                    },
                ))
                .add_service(InterceptedService::new(
                    CallServiceServer::new(calls).max_decoding_message_size(MAX_REQUEST_BYTES),
                    {
                        let tokens = tokens.clone();
                        move |req| tokens.check(req)
                    },
                ))
                .add_service(InterceptedService::new(
                    TrunkServiceServer::new(trunks).max_decoding_message_size(MAX_REQUEST_BYTES),
                    move |req| tokens.check(req),
                ))
                .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "admin API stopped");
            }
        });
        tracing::info!(%local, "admin API listening");
        Ok(AdminServer { local, task })
    }

    /// The bound address (the configured one, with the port filled in if it was 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Waits for the server to finish after its stop token was cancelled: open streams
    /// get a moment to end, then the rest is dropped. A graceful shutdown alone waits for
    /// every connection to close, so one client that connected and never spoke (or a
    /// watcher that never reads) would hold the node's exit forever.
    pub async fn join(mut self) {
        if tokio::time::timeout(std::time::Duration::from_secs(2), &mut self.task)
            .await
            .is_err()
        {
            tracing::info!("admin API: closing connections still open at shutdown");
            self.task.abort();
            let _ = self.task.await;
        }
    }
}

#[derive(Clone)]
struct Admin {
    facts: Arc<NodeFacts>,
    admin_address: SocketAddr,
    dispatcher: Dispatcher,
    shutdown: Shutdown,
    health: HealthReporter,
}

impl Admin {
    fn draining(&self) -> bool {
        self.dispatcher.is_draining() || self.shutdown.is_draining()
    }

    async fn publish_health(&self) {
        let status = if self.draining() {
            ServingStatus::NotServing
        } else {
            ServingStatus::Serving
        };
        if let Some(m) = &self.facts.membership {
            m.set_state(if self.draining() {
                trunkline_cluster::NodeState::Draining
            } else {
                trunkline_cluster::NodeState::Active
            });
        }
        self.health.set_service_status("", status).await;
        self.health
            .set_service_status(
                <NodeServiceServer<Admin> as tonic::server::NamedService>::NAME,
                status,
            )
            .await;
    }

    fn check_node(&self, node_id: &str) -> Result<(), Status> {
        require_local_node(&self.facts.id, node_id)
    }

    fn node(&self) -> Node {
        let f = &self.facts;
        let uptime = f.started.elapsed();
        Node {
            id: f.id.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            started_at: Some(prost_types::Timestamp::from(f.started_at)),
            uptime: prost_types::Duration::try_from(uptime).ok(),
            state: if self.draining() {
                NodeState::Draining
            } else {
                NodeState::Active
            } as i32,
            active_calls: self.dispatcher.active_calls(),
            sip_listeners: f.sip_listeners.clone(),
            admin_address: self.admin_address.to_string(),
            metrics_address: f.metrics_address.map(|a| a.to_string()).unwrap_or_default(),
            limits: Some(f.limits),
        }
    }
}

/// Whether the `node_id` of a request (`field`) names the node `local` that serves it:
/// empty or `local` is this node (true), another well-formed id a node it does not answer
/// for (false; a cluster will forward it), anything else INVALID_ARGUMENT.
#[allow(clippy::result_large_err)] // tonic's Status
fn is_local_node(local: &str, field: &str, node_id: &str) -> Result<bool, Status> {
    if node_id.is_empty() || node_id == local {
        return Ok(true);
    }
    if node_id.len() > 64 || !node_id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Status::invalid_argument(format!("{field}: not a node id")));
    }
    Ok(false)
}

/// `is_local_node` for requests only this node can answer: another node is NOT_FOUND.
#[allow(clippy::result_large_err)]
fn require_local_node(local: &str, node_id: &str) -> Result<(), Status> {
    if is_local_node(local, "node_id", node_id)? {
        Ok(())
    } else {
        Err(Status::not_found(format!("node_id: no node {node_id:?}")))
    }
}

fn peer<T>(req: &Request<T>) -> String {
    req.remote_addr()
        .map_or_else(|| "unknown".to_string(), |a| a.to_string())
}

#[tonic::async_trait]
impl NodeService for Admin {
    async fn get_node(&self, req: Request<GetNodeRequest>) -> Result<Response<Node>, Status> {
        auth::require(&req, auth::Role::Viewer, "GetNode")?;
        self.check_node(&req.get_ref().node_id)?;
        Ok(Response::new(self.node()))
    }

    async fn drain(&self, req: Request<DrainRequest>) -> Result<Response<Node>, Status> {
        let who = auth::require(&req, auth::Role::Operator, "Drain")?;
        self.check_node(&req.get_ref().node_id)?;
        tracing::warn!(caller = %who.name, peer = %peer(&req), action = "drain",
            shutdown = req.get_ref().shutdown, "admin: new calls refused (503)");
        self.dispatcher.begin_drain();
        if req.get_ref().shutdown {
            // The SIGTERM path: hand over at the deadline, then exit.
            self.shutdown.begin_drain();
        }
        self.publish_health().await;
        Ok(Response::new(self.node()))
    }

    async fn undrain(&self, req: Request<UndrainRequest>) -> Result<Response<Node>, Status> {
        let who = auth::require(&req, auth::Role::Operator, "Undrain")?;
        self.check_node(&req.get_ref().node_id)?;
        if self.shutdown.is_draining() {
            return Err(Status::failed_precondition(
                "the node is shutting down (SIGTERM); it cannot take calls again",
            ));
        }
        tracing::warn!(caller = %who.name, peer = %peer(&req), action = "undrain",
            "admin: new calls taken again");
        self.dispatcher.end_drain();
        self.publish_health().await;
        Ok(Response::new(self.node()))
    }

    async fn list_nodes(
        &self,
        req: Request<ListNodesRequest>,
    ) -> Result<Response<ListNodesResponse>, Status> {
        auth::require(&req, auth::Role::Viewer, "ListNodes")?;
        let me = self.node();
        let local = ClusterNode {
            id: me.id.clone(),
            version: me.version.clone(),
            state: me.state,
            sip: me
                .sip_listeners
                .iter()
                .map(|l| format!("{}/{}", l.transport, l.address))
                .collect(),
            admin_address: me.admin_address.clone(),
            started_at: me.started_at,
            local: true,
        };
        let Some(m) = &self.facts.membership else {
            return Ok(Response::new(ListNodesResponse {
                nodes: vec![local],
                clustered: false,
                etcd_connected: false,
                registered: false,
            }));
        };
        let members = m.members();
        let mut nodes: Vec<ClusterNode> = members
            .nodes
            .values()
            .filter(|n| n.id != me.id)
            .map(|n| ClusterNode {
                id: n.id.clone(),
                version: n.version.clone(),
                state: match n.state {
                    trunkline_cluster::NodeState::Active => NodeState::Active,
                    trunkline_cluster::NodeState::Draining => NodeState::Draining,
                } as i32,
                sip: n.sip.clone(),
                admin_address: n.admin.clone().unwrap_or_default(),
                started_at: Some(prost_types::Timestamp::from(
                    std::time::UNIX_EPOCH + std::time::Duration::from_millis(n.started_ms),
                )),
                local: false,
            })
            .collect();
        // This node as it is now (its etcd entry may lag by a put, or be missing while
        // etcd is away).
        nodes.push(local);
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(Response::new(ListNodesResponse {
            nodes,
            clustered: true,
            etcd_connected: m.connected(),
            registered: m.registered(),
        }))
    }
}
