//! State shared by the dispatcher and every call actor of a node.

use crate::directory::CallDirectory;
use crate::media::MediaControl;
use crate::metrics::CallMetrics;
use crate::outbound::{Listener, Outbound};
use crate::registry::CallRegistry;
use crate::router::{Router, Routing};
use crate::trust::Trust;
use arc_swap::ArcSwap;
use bytes::Bytes;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use trunkline_b2bua::{CallConfig, Leg, Local};
use trunkline_sip::validate::Policy;
use trunkline_sip::{Peer, Transport};
use trunkline_transport::{ConnectionPin, LogLimiter};

/// Node-wide settings of the dispatcher.
#[derive(Debug, Clone)]
pub struct DispatcherConfig {
    pub call: Arc<CallConfig>,
    /// Calls beyond this get 503 (admission control before any per-call allocation).
    pub max_calls: usize,
    /// Answer over UDP to the packet's source port even without `rport`
    /// (RFC 3581 behaviour for every client): what keeps NATed callers reachable.
    pub force_rport: bool,
    /// Answer requests from sources no rule names with 403; `false`: say nothing at
    /// all, so a scanner cannot even tell a SIP service is there.
    pub reply_to_unknown: bool,
    /// The relay interface callers' media (the A leg) is anchored on, by name; `None`: the
    /// relay's default.
    pub access_interface: Option<Arc<str>>,
    /// The per-source request limit (see `pike`).
    pub source_limit: crate::pike::SourceLimitConfig,
    /// Digest authentication of callers no source rule names (`None`: none).
    pub digest: Option<crate::digest::DigestConfig>,
    /// How trunks named by DNS are resolved.
    pub dns: crate::dns::DnsConfig,
}

/// State shared by the dispatcher and every call actor.
pub struct Shared {
    pub(crate) cfg: DispatcherConfig,
    pub(crate) metrics: CallMetrics,
    /// Trunks, routes and trust rules; replaced whole by `Dispatcher::set_routing`.
    pub(crate) routing: ArcSwap<Routing>,
    /// The node's media relay as call actors drive it; `None` when media anchoring is off.
    pub(crate) media: Option<Arc<MediaControl>>,
    pub(crate) registry: CallRegistry,
    /// Every call as the admin API sees it.
    pub(crate) directory: Arc<CallDirectory>,
    outbound: OnceLock<Arc<dyn Outbound>>,
    pub(crate) draining: AtomicBool,
    pub(crate) policy: Policy,
    seed: AtomicU64,
    next_serial: AtomicU64,
    /// Calls taken over from nodes that are gone.
    pub(crate) adoptions: AdoptionCounters,
    /// Bounds the warn/info logs about bad input and strangers, so a flood cannot
    /// flood the log (the transport's limiter, one for the whole node's SIP path).
    pub(crate) log_budget: LogLimiter,
    /// Calls admitted and not yet ended (ended calls may linger to absorb
    /// retransmissions; they no longer count).
    live_calls: AtomicU64,
    /// Where settled calls send their state (cluster mode only).
    pub(crate) replicator: OnceLock<Arc<dyn crate::replicate::Replicate>>,
    /// Where other nodes' strays go (cluster mode).
    pub(crate) strays: OnceLock<Arc<dyn crate::replicate::Strays>>,
    /// Calls up and started per trunk, against the trunks' limits.
    pub(crate) trunk_counters: crate::limits::TrunkCounters,
    /// Requests per source address, and the sources blocked.
    pub(crate) source_limit: crate::pike::SourceLimit,
    /// Challenges and checks credentials (see `digest`).
    pub(crate) digest: Option<crate::digest::DigestAuth>,
    /// What the trunks' OPTIONS pings have shown.
    pub(crate) health: crate::health::TrunkHealth,
    /// The node's registrations to trunks that require one.
    pub(crate) registrations: crate::registration::Registrations,
    /// The answers of the trunks named by DNS.
    pub(crate) dns: crate::dns::DnsTable,
}

impl Shared {
    pub(crate) fn new(
        cfg: DispatcherConfig,
        router: Router,
        trust: Trust,
        metrics: CallMetrics,
        media: Option<Arc<MediaControl>>,
    ) -> Shared {
        let directory = Arc::new(CallDirectory::new(&cfg.call.node_id));
        let source_limit = cfg.source_limit;
        let digest = cfg.digest.clone().map(crate::digest::DigestAuth::new);
        Shared {
            directory,
            cfg,
            metrics,
            routing: ArcSwap::from_pointee(Routing { router, trust }),
            media,
            registry: CallRegistry::default(),
            outbound: OnceLock::new(),
            draining: AtomicBool::new(false),
            policy: Policy::default(),
            seed: AtomicU64::new(rand::random()),
            next_serial: AtomicU64::new(first_serial()),
            adoptions: AdoptionCounters::default(),
            log_budget: LogLimiter::default(),
            live_calls: AtomicU64::new(0),
            replicator: OnceLock::new(),
            strays: OnceLock::new(),
            trunk_counters: crate::limits::TrunkCounters::default(),
            source_limit: crate::pike::SourceLimit::new(source_limit),
            digest,
            health: crate::health::TrunkHealth::default(),
            registrations: crate::registration::Registrations::default(),
            dns: crate::dns::DnsTable::default(),
        }
    }

    pub(crate) fn attach(&self, outbound: Arc<dyn Outbound>) {
        let _ = self.outbound.set(outbound);
    }

    pub(crate) fn node(&self) -> &str {
        &self.cfg.call.node_id
    }

    /// Our address toward a hop `to` over `transport` through the socket `local`
    /// (`None`: that transport's first listener of `to`'s address family, as the send
    /// picks it): what Via and Contact carry.
    pub(crate) fn local_for(
        &self,
        transport: Transport,
        local: Option<SocketAddr>,
        to: Option<SocketAddr>,
    ) -> Option<Local> {
        let Listener {
            transport,
            local,
            advertise,
        } = self.outbound.get()?.listener(transport, local, to)?;
        Some(Local {
            transport,
            host: advertise,
            port: local.port(),
        })
    }

    /// Hands bytes to the transports; never blocks. `token` makes a failure come back
    /// to the call (see `send_token`).
    pub(crate) fn send(&self, peer: &Peer, data: Bytes, token: Option<u64>) {
        if let Some((via, connection)) = peer.connection.and_then(crate::replicate::via_parts) {
            // A peer that talks to another node: what we send leaves from there.
            if let Some(s) = self.strays.get() {
                s.emit(via, connection, peer, data);
            }
            return;
        }
        if let Some(o) = self.outbound.get() {
            o.send(peer, data, token);
        }
    }

    /// Keeps TCP connection `connection` open while a call uses it (see `Outbound::pin`).
    pub(crate) fn pin(&self, connection: u64) -> Option<ConnectionPin> {
        self.outbound.get()?.pin(connection)
    }

    /// Lets requests to `addr` reuse connection `connection` (RFC 5923 `alias`).
    pub(crate) fn alias(&self, connection: u64, addr: std::net::SocketAddr) {
        if let Some(o) = self.outbound.get() {
            o.alias(connection, addr);
        }
    }

    /// A fresh per-call seed for identifiers (`Ids`).
    pub(crate) fn next_seed(&self) -> u64 {
        let base = self
            .seed
            .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed);
        base ^ rand::random::<u64>()
    }

    pub(crate) fn next_serial(&self) -> u64 {
        self.next_serial.fetch_add(1, Ordering::Relaxed)
    }

    /// Takes a live-call slot if fewer than `max_calls` calls are live: exact under
    /// concurrency, so the limit holds however many receive tasks admit at once.
    pub(crate) fn admit(&self) -> bool {
        let max = self.cfg.max_calls as u64;
        self.live_calls
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
    }

    /// Whether the transports say the node is behind its input (see
    /// `Outbound::receive_congested`).
    pub(crate) fn receive_congested(&self) -> bool {
        self.outbound.get().is_some_and(|o| o.receive_congested())
    }

    /// Takes a live-call slot whatever the limit (a call that is already up elsewhere).
    pub(crate) fn take_slot(&self) {
        self.live_calls.fetch_add(1, Ordering::AcqRel);
    }

    /// Gives a live-call slot back (the call ended, or never started).
    pub(crate) fn release(&self) {
        self.live_calls.fetch_sub(1, Ordering::AcqRel);
    }

    pub(crate) fn live_calls(&self) -> u64 {
        self.live_calls.load(Ordering::Acquire)
    }
}

/// Calls taken over from nodes that are gone: adopted (both legs moved here), and
/// failed (the replica could not be used, or a leg refused its re-INVITE).
#[derive(Debug, Default)]
pub struct AdoptionCounters {
    pub adopted: AtomicU64,
    pub failed: AtomicU64,
}

/// Where this run's call serials start: the seconds since the epoch, shifted so that a
/// node restarted under the same id does not give a call an id an earlier run used (a
/// run would need 16 million calls per second of the gap between the two starts to
/// catch up). Serials stay below 2^62, so a send token (`send_token`) still fits.
fn first_serial() -> u64 {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    ((secs & ((1 << 37) - 1)) << 24) | 1
}

/// The token of a send by call `serial` toward `leg`: what the transport hands back
/// when that send fails.
pub(crate) fn send_token(serial: u64, leg: Leg) -> u64 {
    serial << 1
        | match leg {
            Leg::A => 0,
            Leg::B => 1,
        }
}

/// The call and leg a send-failure token names.
pub(crate) fn token_target(token: u64) -> (u64, Leg) {
    (token >> 1, if token & 1 == 0 { Leg::A } else { Leg::B })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip() {
        for leg in [Leg::A, Leg::B] {
            assert_eq!(token_target(send_token(77, leg)), (77, leg));
        }
    }
}
