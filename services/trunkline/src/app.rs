//! The node's wiring: transports, the call dispatcher and everything else that handles SIP.
//!
//! `main` owns the process concerns (CLI, config, logging, signals, the metrics endpoint) and
//! hands this module a validated [`Config`], the metrics [`Registry`] and the [`Shutdown`]
//! phases. Start-up is split in two so that metrics are registered before the registry is
//! frozen behind an `Arc` for the scrape endpoint, and so that bind errors surface before the
//! node logs "started":
//! 1. [`App::build`]: register metrics, bind sockets, build the dispatcher. Fail here, not later.
//! 2. [`App::run`]: serve until shutdown; return once drained.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use prometheus_client::registry::Registry;
use trunkline_b2bua::CallConfig;
use trunkline_call::metrics::CallMetrics;
use trunkline_call::{Dispatcher, DispatcherConfig, Router, Source, Trunk, Trust};
use trunkline_sip::transaction::Timers;
use trunkline_transport::Transports;

use crate::config::{Config, RouteConfig, TrunkTlsConfig, TrunkTransport};
use crate::shutdown::Shutdown;

/// Everything the node runs, built and bound but not yet serving.
pub struct App {
    dispatcher: Dispatcher,
    transports: Transports,
    media: Option<ractor::ActorRef<trunkline_call::media::MediaMsg>>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("transports", &self.transports)
            .finish_non_exhaustive()
    }
}

/// Parses a source list the configuration has already validated.
fn sources(list: &[String], key: &str) -> anyhow::Result<Vec<Source>> {
    list.iter()
        .map(|s| s.parse::<Source>().with_context(|| key.to_string()))
        .collect()
}

/// The static routing table and the trust rules from `[[trunks]]`, `[[routes]]`,
/// `[routing]` and `sip.access_sources`.
pub(crate) fn router_and_trust(config: &Config) -> anyhow::Result<(Router, Trust)> {
    let mut trunks = Vec::with_capacity(config.trunks.len());
    for t in &config.trunks {
        let transport = match t.transport {
            TrunkTransport::Udp => trunkline_sip::Transport::Udp,
            TrunkTransport::Tcp => trunkline_sip::Transport::Tcp,
            TrunkTransport::Tls => trunkline_sip::Transport::Tls,
        };
        // A trunk named by DNS has no address until its first answer (see `dns`).
        let dns = t
            .dns_name()
            .map(|(host, port)| trunkline_call::dns::DnsName {
                host: Arc::from(host.as_str()),
                port,
                transport,
            });
        let addr = match (t.socket_addr(), &dns) {
            (Some(addr), _) => addr,
            (None, Some(_)) => std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
            (None, None) => {
                return Err(anyhow!(
                    "trunks.{}: address {:?} is neither ip:port nor a host name",
                    t.name,
                    t.address
                ))
            }
        };
        let mut own = sources(&t.sources, &format!("trunks.{}.sources", t.name))?;
        if own.is_empty() {
            // A TLS trunk's own connections come from any port of its address, and only
            // what arrives over TLS from there is the trunk's.
            own.push(match t.transport {
                TrunkTransport::Tls => Source::TlsFrom(addr.ip()),
                _ => Source::Exact(addr),
            });
        }
        let tls = match t.transport {
            TrunkTransport::Tls => {
                let c = t.tls.clone().unwrap_or_default();
                // A trunk named by DNS is checked for its name (RFC 5922), unless told.
                let c = match (&dns, &c.server_name) {
                    (Some(n), None) => TrunkTlsConfig {
                        server_name: Some(n.host.to_string()),
                        ..c
                    },
                    _ => c,
                };
                let key = |k: &str| format!("trunks.{}.tls{k}", t.name);
                Some(trunkline_call::tls::TrunkTls {
                    target: trunkline_transport::tls::TlsTarget {
                        name: c
                            .server_name(addr)
                            .map_err(|e| anyhow!("{}: {e}", key(".server_name")))?,
                        config: c
                            .client_config(config.sip.tls_ca_file.as_deref())
                            .map_err(|e| anyhow!("{}: {e}", key("")))?,
                    },
                    require_client_cert: c.require_client_cert,
                })
            }
            _ => None,
        };
        trunks.push(Trunk {
            name: Arc::from(t.name.as_str()),
            addr,
            transport,
            sources: own,
            anchor_media: t.anchor_media,
            media_interface: t.media_interface.as_deref().map(Arc::from),
            fix_nated_contact: t.fix_nated_contact,
            media_address: t.media_address,
            limits: t.limits.call_limits(),
            health: t.health.as_ref().map(|h| h.call_config()),
            credentials: match &t.auth {
                Some(a) => Some(trunkline_call::digest::Credentials::new(
                    &a.username,
                    &a.password()
                        .map_err(|e| anyhow!("trunks.{}.auth: {e}", t.name))?,
                    &config.sip.auth.realm,
                )),
                None => None,
            },
            outbound_credentials: match &t.outbound_auth {
                Some(a) => Some(trunkline_b2bua::PeerCredentials {
                    username: a.username.clone(),
                    password: a
                        .password()
                        .map_err(|e| anyhow!("trunks.{}.outbound_auth: {e}", t.name))?,
                }),
                None => None,
            },
            register: t.register.as_ref().map(|r| r.call_config(t)),
            tls,
            dns,
            targets: Arc::from(Vec::new()),
            rewrites: t
                .rewrites(&format!("trunks.{}", t.name))
                .map_err(|e| anyhow!(e))?,
            trusted_identity: t.trusted_identity,
            local: t.local_address,
        });
    }
    let trust = Trust::new(
        trunks.iter().map(|t| t.sources.clone()).collect(),
        sources(&config.sip.access_sources, "sip.access_sources")?,
    );
    let routes = config.routes.iter().map(RouteConfig::route).collect();
    let router =
        Router::new(trunks, routes, config.routing.default_trunk.as_deref()).context("routing")?;
    Ok((router, trust))
}

/// The node's TLS settings: its certificate for `sip.tls` listeners (checked for a
/// change every `tls_reload_secs`), the client certificates it asks for, and the trunks'
/// outbound settings read from the routing table in force. `None` when nothing speaks TLS.
fn tls_context(
    config: &Config,
    dispatcher: &Dispatcher,
) -> anyhow::Result<Option<Arc<trunkline_transport::tls::TlsContext>>> {
    use trunkline_transport::tls;
    let sip = &config.sip;
    let tls_trunks = config
        .trunks
        .iter()
        .any(|t| t.transport == TrunkTransport::Tls);
    if sip.tls.is_empty() && !tls_trunks {
        return Ok(None);
    }
    let (cert, server) = match (&sip.tls_cert_file, &sip.tls_key_file) {
        (Some(cert), Some(key)) => {
            let cert = Arc::new(tls::ReloadingCert::load(cert, key).context("sip.tls_cert_file")?);
            let server = tls::server_config(
                cert.clone(),
                sip.tls_client_ca_file.as_deref(),
                sip.tls_require_client_cert,
            )
            .context("sip.tls_client_ca_file")?;
            (Some(cert), Some(server))
        }
        _ => (None, None),
    };
    // Destinations no trunk names (a TLS Contact) are checked against sip.tls_ca_file,
    // else the system's CAs when the system has a bundle.
    let default_client = match &sip.tls_ca_file {
        Some(ca) => Some(tls::client_config(Some(ca), None).context("sip.tls_ca_file")?),
        None => tls::client_config(None, None).ok(),
    };
    if let Some(cert) = &cert {
        let cert = cert.clone();
        let every = Duration::from_secs(sip.tls_reload_secs.max(1));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match cert.reload_if_changed() {
                    Ok(true) => tracing::info!("TLS certificate reloaded (sip.tls_cert_file)"),
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "TLS certificate not reloaded; the old one stays in use")
                    }
                }
            }
        });
    }
    Ok(Some(Arc::new(tls::TlsContext {
        server,
        cert,
        targets: Some(Arc::new(dispatcher.clone())),
        default_client,
        peer_check: Some(Arc::new(dispatcher.clone())),
        handshake_timeout: Duration::from_secs(sip.tls_handshake_timeout_secs),
    })))
}

impl App {
    /// Registers the node's metrics on `registry`, binds the SIP sockets and builds the
    /// dispatcher, so a node that logged "started" is serving.
    pub async fn build(config: Config, registry: &mut Registry) -> anyhow::Result<Self> {
        let call_metrics = CallMetrics::register(registry);
        let timers = &config.sip.timers;
        let call = CallConfig {
            node_id: config.node.id.clone(),
            timers: Timers {
                t1: timers.t1(),
                t2: timers.t2(),
                t4: timers.t4(),
            },
            max_forwards: u32::from(config.sip.max_forwards),
            no_answer: timers.no_answer(),
            allow: trunkline_call::stateless::ALLOW,
            trunk_503_status: config.sip.trunk_503_status,
            max_duration: (config.sip.max_call_duration_secs > 0)
                .then(|| Duration::from_secs(config.sip.max_call_duration_secs)),
            // In a cluster a call's snapshot carries both parties' SDP for its adopter.
            keep_sdp: !config.cluster.etcd_endpoints.is_empty(),
            failover_statuses: config.sip.failover_codes(),
        };
        let media = if config.media.enabled {
            let m = &config.media;
            let thread_policy = m
                .thread_policy()
                .context("invalid media.scheduling/media.priority")?;
            let relay =
                trunkline_media::Relay::start(m.relay_config(thread_policy), Some(registry))
                    .context("cannot start the media relay ([media])")?;
            let control = trunkline_call::media::MediaControl::new(relay);
            Some((
                trunkline_call::media::spawn(control.clone())
                    .await
                    .context("cannot start the media actor")?,
                control,
            ))
        } else {
            None
        };
        let (media, control) = media.unzip();
        let (router, trust) = router_and_trust(&config)?;
        let dispatcher = Dispatcher::new(
            DispatcherConfig {
                call: Arc::new(call),
                max_calls: config.sip.max_calls,
                force_rport: config.sip.force_rport,
                reply_to_unknown: config.sip.reply_to_unknown,
                access_interface: config.media.access_interface.as_deref().map(Arc::from),
                source_limit: config.sip.source_limit.call_config(),
                digest: Some(config.sip.auth.digest_config()),
                dns: config.dns.call_config(),
            },
            router,
            trust,
            call_metrics,
            control,
        );
        let tls = tls_context(&config, &dispatcher)?;
        let transports = Transports::start_with_tls(
            config.sip.transport_config(),
            tls,
            Arc::new(dispatcher.clone()),
            registry,
        )
        .await
        .context("cannot bind the SIP listeners (sip.udp / sip.tcp / sip.tls)")?;
        dispatcher.attach(Arc::new(transports.clone()));
        Ok(Self {
            dispatcher,
            transports,
            media,
        })
    }

    /// The dispatcher, for the admin API (drain, live calls).
    pub fn dispatcher(&self) -> Dispatcher {
        self.dispatcher.clone()
    }

    /// Serves until shutdown. On drain: new INVITEs get 503, and the node returns once the
    /// last call is gone (or at terminate).
    pub async fn run(self, shutdown: Shutdown) -> anyhow::Result<()> {
        shutdown.drain_requested().await;
        self.dispatcher.begin_drain();
        let calls = self.dispatcher.active_calls();
        tracing::info!(calls, "draining: no new calls accepted");
        loop {
            if self.dispatcher.active_calls() == 0 {
                break;
            }
            tokio::select! {
                () = shutdown.terminate_requested() => {
                    let calls = self.dispatcher.active_calls();
                    if calls > 0 {
                        tracing::warn!(calls, "terminating with calls still up");
                    }
                    break;
                }
                () = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
        // Carriers the node registers to stop sending it calls now, not when the binding
        // would have run out (bounded: the terminate grace is 5 s).
        self.dispatcher.unregister(Duration::from_secs(2)).await;
        self.transports.shutdown().await;
        if let Some(media) = self.media {
            media.stop(None);
        }
        Ok(())
    }
}
