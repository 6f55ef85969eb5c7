//! The node's wiring: transports, the call dispatcher and everything else that handles SIP.
//!
//! `main` owns the process concerns (CLI, config, logging, signals, the metrics endpoint) and
//! hands this module a validated [`Config`], the metrics [`Registry`] and the [`Shutdown`]
//! phases. Start-up is split in two so that metrics are registered before the registry is
//! frozen behind an `Arc` for the scrape endpoint, and so that bind errors surface before the
//! node logs "started":
//! 1. [`App::build`]: register metrics, bind sockets, build actors. Fail here, not later.
//! 2. [`App::run`]: serve until shutdown; return once drained.
//!
//! ======================================================================================
//! LEAD: wire transports and the call dispatcher here (build: bind, run: serve + drain).
//! Transport settings: `config.sip.transport_config()`; header host: `config.sip.advertise_ip()`.
//! ======================================================================================

use prometheus_client::registry::Registry;
use trunkline_call::metrics::CallMetrics;

use crate::config::Config;
use crate::shutdown::Shutdown;

/// Everything the node runs, built and bound but not yet serving.
#[derive(Debug)]
pub struct App {
    #[allow(dead_code)] // read by the lead's wiring (routing, timers, trunks)
    config: Config,
    #[allow(dead_code)] // handed to the dispatcher and call actors by the lead's wiring
    call_metrics: CallMetrics,
}

impl App {
    /// Registers the node's metrics on `registry` and prepares every component.
    ///
    /// Anything that can fail because of the environment (ports in use, unreachable trunks
    /// that must resolve) should fail here, so that a node that logged "started" is serving.
    pub async fn build(config: Config, registry: &mut Registry) -> anyhow::Result<Self> {
        let call_metrics = CallMetrics::register(registry);
        // LEAD: bind transports from `config.sip` and build the dispatcher here.
        Ok(Self {
            config,
            call_metrics,
        })
    }

    /// Serves until shutdown. On drain: stop accepting new calls and return once the last
    /// call has ended. On terminate: return promptly (the caller gives a short grace period
    /// and then abandons the task).
    pub async fn run(self, shutdown: Shutdown) -> anyhow::Result<()> {
        // LEAD: start transports and the call dispatcher here. Until then the node only waits.
        shutdown.drain_requested().await;
        Ok(())
    }
}
