//! `trunkline`, the SBC node binary.
//!
//! Kept thin on purpose: parse the CLI, load the configuration, install logging and signal
//! handlers, serve metrics and the admin API, and run [`app::App`] until a drain completes. The SIP machinery
//! lives in the library crates and is wired together in `app.rs`.

mod admin;
mod alloc;
mod app;
mod cli;
mod cluster_metrics;
mod cluster_server;
mod config;
mod metrics_http;
mod shared_config;
mod shutdown;
mod telemetry;

use std::process::ExitCode;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use clap::Parser as _;
use prometheus_client::registry::Registry;
use tokio::task::{JoinError, JoinHandle};
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::cli::Cli;
use crate::config::Config;
use crate::metrics_http::MetricsServer;
use crate::shutdown::Shutdown;

/// After terminate (drain deadline or second signal), how long the app gets to return before
/// the process exits regardless.
const TERMINATE_GRACE: Duration = Duration::from_secs(5);
/// Longest a drain waits for the buddies to take its calls before it lets them go anyway.
const HANDOVER_LIMIT: Duration = Duration::from_secs(3);

fn main() -> ExitCode {
    alloc::tune();
    let cli = Cli::parse();
    // Logging is configured by the config, so errors up to here go straight to stderr.
    let config = match Config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("trunkline: {err:#}");
            return ExitCode::FAILURE;
        }
    };
    if cli.check_config {
        return match config.to_toml() {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("trunkline: {err:#}");
                ExitCode::FAILURE
            }
        };
    }
    // The runtime is sized by the configuration, so it is read first. Unset, tokio's
    // own default stands: TOKIO_WORKER_THREADS, else one thread per CPU.
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = config.worker_threads() {
        builder.worker_threads(n);
    }
    // Each runtime thread sets its own scheduling policy as it starts (Linux keeps it per
    // thread). Logging is not up yet when the first threads start, so a refusal is kept
    // and reported once it is.
    let refused: Arc<OnceLock<String>> = Arc::default();
    if let Ok(policy) = config.runtime_thread_policy() {
        let refused = refused.clone();
        builder.on_thread_start(move || {
            if let Err(e) = policy.apply_to_current_thread() {
                let _ = refused.set(format!("{policy}: {e}"));
            }
        });
    }
    // Each runtime thread gives back the memory its heap holds free as it goes idle.
    builder.on_thread_park(alloc::on_thread_park);
    match builder.enable_all().build() {
        Ok(rt) => rt.block_on(async_main(config, refused)),
        Err(err) => {
            eprintln!("trunkline: cannot start the runtime: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn async_main(config: Config, refused_policy: Arc<OnceLock<String>>) -> ExitCode {
    if let Err(err) = telemetry::init(&config.log, config::rust_log_override()) {
        eprintln!("trunkline: {err:#}");
        return ExitCode::FAILURE;
    }
    if let Some(why) = refused_policy.get() {
        tracing::warn!(policy = %why, "cannot apply node.scheduling to the runtime's threads; they run with the default");
    }
    // Every TCP connection and every media socket is a descriptor: take what the hard
    // limit allows instead of the 1024 most shells start with.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::debug!(nofile = n, "descriptor limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the descriptor limit"),
    }
    match start_and_run(config).await {
        Ok(()) => {
            tracing::info!("trunkline stopped");
            ExitCode::SUCCESS
        }
        Err(err) => {
            tracing::error!(error = format!("{err:#}"), "trunkline failed");
            ExitCode::FAILURE
        }
    }
}

async fn start_and_run(config: Config) -> anyhow::Result<()> {
    let shutdown = Shutdown::new();
    let _signals = shutdown::listen_for_signals(shutdown.clone())
        .context("cannot install SIGTERM/SIGINT handlers")?;
    run_node(config, shutdown).await
}

/// Builds the app, serves metrics, runs until a drain completes (or the deadline passes).
async fn run_node(config: Config, shutdown: Shutdown) -> anyhow::Result<()> {
    let mut registry = Registry::default();
    let app = App::build(config.clone(), &mut registry).await?;
    let cluster_gauges = (!config.cluster.etcd_endpoints.is_empty())
        .then(|| cluster_metrics::ClusterGauges::register(&mut registry));
    let registry = Arc::new(registry);

    // The endpoint outlives the app so Prometheus can watch the drain.
    let metrics_stop = CancellationToken::new();
    let metrics = match config.metrics.listen {
        Some(addr) => Some(MetricsServer::start(addr, registry, metrics_stop.clone()).await?),
        None => None,
    };
    let cluster_stop = CancellationToken::new();
    let etcd = cluster_server::load_etcd(&config.cluster)?;
    // The node-to-node listener first: its bound address is part of the registration.
    let replicas = trunkline_cluster::ReplicaStore::new(config.cluster.secret.as_deref());
    replicas.set_me(&config.node.id);
    let cluster_addr = match (
        config.cluster.etcd_endpoints.is_empty(),
        config.cluster.listen,
    ) {
        (false, Some(listen)) => {
            let tls = cluster_server::load_tls(&config.cluster)?;
            if let Some(t) = &tls {
                trunkline_cluster::link::use_tls(t);
            }
            let bound =
                cluster_server::start(listen, replicas.clone(), tls.as_ref(), cluster_stop.clone())
                    .await?;
            Some(
                config
                    .cluster
                    .advertise
                    .clone()
                    .unwrap_or_else(|| bound.to_string()),
            )
        }
        _ => None,
    };
    let membership = start_membership(&config, &etcd, cluster_addr, cluster_stop.clone());
    let replicator = membership.clone().map(|m| {
        let r = trunkline_cluster::Replicator::start(
            m,
            config.node.id.clone(),
            config.cluster.replication_factor,
            config.cluster.secret.clone(),
            cluster_stop.clone(),
        );
        app.dispatcher()
            .set_replicator(Arc::new(cluster_server::ToBuddies(r.clone())));
        r
    });
    if let Some(m) = membership.clone() {
        // A SIGTERM drain is published whether or not the admin API runs.
        let shutdown = shutdown.clone();
        let stop = cluster_stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = shutdown.drain_requested() => m.set_state(trunkline_cluster::NodeState::Draining),
                () = stop.cancelled() => {}
            }
        });
    }
    // Trunks and routes in force: the file's, then (in a cluster) etcd's.
    let routing = Arc::new(admin::trunks::RoutingState::new(
        config.clone(),
        app.dispatcher(),
    ));
    let shared = (!config.cluster.etcd_endpoints.is_empty()).then(|| {
        shared_config::SharedConfig::start(
            &config,
            etcd.clone(),
            routing.clone(),
            cluster_stop.clone(),
        )
    });
    // Messages of other nodes' dialogs go to them; theirs for ours come here.
    if let Some(m) = membership.clone() {
        let forwarder = trunkline_cluster::Forwarder::start(
            m,
            config.node.id.clone(),
            config.cluster.secret.clone(),
            cluster_stop.clone(),
        );
        let dispatcher = app.dispatcher();
        dispatcher.set_strays(Arc::new(cluster_server::ToOwners(forwarder.clone())));
        replicas.set_forwarded(Arc::new(move |m: trunkline_cluster::Forwarded| {
            // The peer is reached through the node it talks to, from the socket it sent
            // to (and over a stream, on its connection there).
            let transport = cluster_server::sip_transport(m.hop.transport);
            let via = m
                .hop
                .local
                .and_then(|_| forwarder.via_index(&m.from_node))
                .and_then(|i| trunkline_call::via_node(i, m.hop.connection));
            if via.is_none() && transport.is_reliable() {
                // Answers could not go back on the peer's connection.
                tracing::debug!(node = %m.from_node, "forwarded stream message dropped");
                return;
            }
            let peer = trunkline_sip::Peer {
                transport,
                addr: m.source,
                connection: via,
                local: via.and(m.hop.local),
            };
            dispatcher.on_forwarded(peer, m.data);
        }));
        let dispatcher = app.dispatcher();
        replicas.set_emit(Arc::new(move |e: trunkline_cluster::Emit| {
            let transport = cluster_server::sip_transport(e.hop.transport);
            let peer = trunkline_sip::Peer {
                transport,
                addr: e.dest,
                connection: transport.is_reliable().then_some(e.hop.connection),
                local: e.hop.local,
            };
            dispatcher.send_for_other(peer, e.data);
        }));
    }
    // A dead node's calls this node holds are adopted here.
    let takeover = membership.clone().map(|m| {
        let (orphans, stats) = trunkline_cluster::takeover::start(
            m,
            replicas.clone(),
            config.node.id.clone(),
            config.cluster.secret.clone(),
            std::time::Duration::from_secs(config.cluster.lease_ttl_secs),
            cluster_stop.clone(),
        );
        tokio::spawn(adopt_orphans(orphans, app.dispatcher()));
        // Calls of this node another one adopted while this one was cut off are let go.
        let dispatcher = app.dispatcher();
        replicas.set_adopted(Arc::new(move |ids: &[String]| dispatcher.let_go(ids)));
        stats
    });
    if let (Some(gauges), Some(m)) = (cluster_gauges, membership.clone()) {
        gauges.follow(
            m,
            cluster_metrics::Sources {
                shared: shared.clone(),
                replicator: replicator.clone(),
                replicas: replicas.clone(),
                takeover,
                dispatcher: app.dispatcher(),
            },
            cluster_stop.clone(),
        );
    }
    let admin_stop = CancellationToken::new();
    let admin = match config.admin.listen {
        Some(addr) => Some(
            admin::AdminServer::start(
                addr,
                admin::NodeFacts {
                    id: config.node.id.clone(),
                    started_at: std::time::SystemTime::now(),
                    started: std::time::Instant::now(),
                    sip_listeners: admin::sip_listeners(&config.sip),
                    metrics_address: metrics.as_ref().map(MetricsServer::local_addr),
                    limits: admin::limits(&config),
                    max_watchers: config.admin.max_watchers,
                    tokens: admin_tokens(&config)?,
                    tls: admin::tls::load(&config.admin)?,
                    connections: admin::incoming::Limits {
                        max_connections: config.admin.max_connections,
                        first_bytes_timeout: std::time::Duration::from_secs(
                            config.admin.first_bytes_timeout_secs,
                        ),
                    },
                    membership: membership.clone(),
                },
                routing.clone(),
                shared.clone(),
                app.dispatcher(),
                shutdown.clone(),
                admin_stop.clone(),
            )
            .await?,
        ),
        None => None,
    };
    tracing::info!(
        node_id = %config.node.id,
        sip_udp = ?config.sip.udp,
        sip_tcp = ?config.sip.tcp,
        advertise = %config.sip.advertise_ip().map_or_else(|| "none".to_owned(), |ip| ip.to_string()),
        metrics = %metrics.as_ref().map_or_else(|| "disabled".to_owned(), |m| m.local_addr().to_string()),
        admin = %admin.as_ref().map_or_else(|| "disabled".to_owned(), |a| a.local_addr().to_string()),
        trunks = config.trunks.len(),
        "trunkline started"
    );

    let app_dispatcher = app.dispatcher();
    let mut app_task = tokio::spawn(app.run(shutdown.clone()));
    let result = tokio::select! {
        joined = &mut app_task => app_result(joined),
        () = shutdown.drain_requested() => {
            let handover = replicator.clone().map(|r| (r, app_dispatcher.clone()));
            drain(&config, &shutdown, app_task, handover).await
        }
    };

    // Leave the cluster first (the lease is revoked: the others see this node go now).
    if let Some(m) = &membership {
        m.leave().await;
    }
    cluster_stop.cancel();
    metrics_stop.cancel();
    admin_stop.cancel();
    if let Some(metrics) = metrics {
        metrics.join().await;
    }
    if let Some(admin) = admin {
        admin.join().await;
    }
    result
}

/// Turns each orphan the takeover hands over into a call on this node, one after the
/// other (each start is an actor spawn and two re-INVITEs leaving: microseconds).
async fn adopt_orphans(
    mut orphans: tokio::sync::mpsc::UnboundedReceiver<trunkline_cluster::Orphan>,
    dispatcher: trunkline_call::Dispatcher,
) {
    while let Some(o) = orphans.recv().await {
        if let Err(e) = dispatcher.adopt(&o.state).await {
            tracing::warn!(owner = %o.owner, call = %o.call_id, error = %e, "call of a dead node lost");
        }
    }
}

/// Joins the cluster when `[cluster] etcd_endpoints` names etcd: registration and the
/// membership watch run in the background (etcd may be down at start), and a SIGTERM
/// drain is published as this node's state.
fn start_membership(
    config: &Config,
    etcd: &trunkline_cluster::Etcd,
    cluster_addr: Option<String>,
    stop: CancellationToken,
) -> Option<Arc<trunkline_cluster::Membership>> {
    if config.cluster.etcd_endpoints.is_empty() {
        return None;
    }
    let sip = config
        .sip
        .udp
        .iter()
        .map(|e| format!("udp/{}", e.listen))
        .chain(config.sip.tcp.iter().map(|e| format!("tcp/{}", e.listen)))
        .collect();
    let me = trunkline_cluster::NodeInfo {
        id: config.node.id.clone(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        state: trunkline_cluster::NodeState::Active,
        sip,
        admin: config.admin.listen.map(|a| a.to_string()),
        cluster: cluster_addr,
        started_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
    };
    tracing::info!(endpoints = ?config.cluster.etcd_endpoints, ttl = config.cluster.lease_ttl_secs,
        tls = etcd.tls.is_some(), "cluster mode: joining through etcd");
    Some(trunkline_cluster::Membership::start(
        trunkline_cluster::MembershipConfig {
            etcd: etcd.clone(),
            lease_ttl: std::time::Duration::from_secs(config.cluster.lease_ttl_secs),
            me,
        },
        stop,
    ))
}

/// Waits for the app to finish draining, terminating it at the deadline.
/// The admin API's tokens from `[admin] tokens_file` and `TRUNKLINE_ADMIN_TOKENS`. A
/// listener beyond loopback with no usable token (a file of comments only) is refused
/// here, as the configuration refuses one with no token source at all.
fn admin_tokens(config: &Config) -> anyhow::Result<admin::auth::Tokens> {
    let env = std::env::var(admin::auth::TOKENS_ENV).ok();
    let tokens = admin::auth::Tokens::load(config.admin.tokens_file.as_deref(), env.as_deref())
        .map_err(anyhow::Error::msg)?;
    if let Some(listen) = config.admin.listen {
        if !listen.ip().is_loopback()
            && !tokens.enabled()
            && config.admin.tls_client_ca_file.is_none()
        {
            anyhow::bail!(
                "admin.listen {listen} is not loopback and no admin token is configured \
                 (admin.tokens_file and {} hold none)",
                admin::auth::TOKENS_ENV
            );
        }
    }
    Ok(tokens)
}

/// Lets calls end until `drain_secs`; then, in a cluster, hands the rest to their
/// buddies (`handover`) and lets them go, and terminates.
async fn drain(
    config: &Config,
    shutdown: &Shutdown,
    mut app_task: JoinHandle<anyhow::Result<()>>,
    handover: Option<(trunkline_cluster::Replicator, trunkline_call::Dispatcher)>,
) -> anyhow::Result<()> {
    let deadline = config.shutdown.drain();
    tracing::info!(drain_secs = config.shutdown.drain_secs, "draining");
    tokio::select! {
        joined = &mut app_task => return app_result(joined),
        () = tokio::time::sleep(deadline) => {
            match handover {
                Some((r, d)) if d.active_calls() > 0 => {
                    let started = std::time::Instant::now();
                    let outcome = tokio::time::timeout(HANDOVER_LIMIT, r.handover()).await.unwrap_or_default();
                    let released = d.let_go_all();
                    tracing::info!(adopting = outcome.adopting, unreplicated = outcome.unreplicated,
                        released, took_ms = started.elapsed().as_millis() as u64,
                        "drain deadline passed: calls handed over to buddies");
                }
                _ => tracing::warn!(drain_secs = config.shutdown.drain_secs, "drain deadline passed, terminating"),
            }
            shutdown.terminate();
        }
        () = shutdown.terminate_requested() => {}
    }
    match tokio::time::timeout(TERMINATE_GRACE, &mut app_task).await {
        Ok(joined) => app_result(joined),
        Err(_) => {
            app_task.abort();
            Err(anyhow!(
                "the app did not stop within {}s of terminate",
                TERMINATE_GRACE.as_secs()
            ))
        }
    }
}

fn app_result(joined: Result<anyhow::Result<()>, JoinError>) -> anyhow::Result<()> {
    joined.context("the app task panicked")?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MetricsConfig;

    fn test_config() -> Config {
        let mut config = Config {
            metrics: MetricsConfig {
                listen: Some("127.0.0.1:0".parse().unwrap()),
            },
            ..Config::default()
        };
        // Ephemeral SIP ports: tests must not depend on 5060 being free.
        config.sip.udp = vec!["127.0.0.1:0".parse().unwrap()];
        config.sip.tcp = vec!["127.0.0.1:0".parse().unwrap()];
        config.admin.listen = Some("127.0.0.1:0".parse().unwrap());
        config
    }

    #[tokio::test]
    async fn node_starts_and_drains_cleanly() {
        let shutdown = Shutdown::new();
        let node = tokio::spawn(run_node(test_config(), shutdown.clone()));
        tokio::task::yield_now().await;
        shutdown.begin_drain();
        tokio::time::timeout(Duration::from_secs(5), node)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn drain_deadline_terminates_a_lingering_app() {
        let mut config = test_config();
        config.shutdown.drain_secs = 0;
        let shutdown = Shutdown::new();
        let app = {
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                shutdown.terminate_requested().await;
                Ok(())
            })
        };
        shutdown.begin_drain();
        tokio::time::timeout(Duration::from_secs(5), drain(&config, &shutdown, app, None))
            .await
            .unwrap()
            .unwrap();
        assert!(shutdown.terminate_token().is_cancelled());
    }

    #[tokio::test]
    async fn app_error_is_reported() {
        let mut config = test_config();
        config.shutdown.drain_secs = 60;
        let shutdown = Shutdown::new();
        let app = tokio::spawn(async { Err(anyhow!("transport died")) });
        shutdown.begin_drain();
        let err = drain(&config, &shutdown, app, None).await.unwrap_err();
        assert!(format!("{err:#}").contains("transport died"));
    }

    #[tokio::test]
    async fn admin_bind_failure_fails_start() {
        let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut config = test_config();
        config.admin.listen = Some(taken.local_addr().unwrap());
        let err = run_node(config, Shutdown::new()).await.unwrap_err();
        assert!(format!("{err:#}").contains("admin.listen"), "{err:#}");
    }

    #[tokio::test]
    async fn metrics_bind_failure_fails_start() {
        let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut config = test_config();
        config.metrics.listen = Some(taken.local_addr().unwrap());
        let err = run_node(config, Shutdown::new()).await.unwrap_err();
        assert!(format!("{err:#}").contains("metrics.listen"), "{err:#}");
    }
}
