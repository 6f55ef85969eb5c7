//! Prometheus metrics of the relay, on a registry passed in (never a global one).
//! Refreshed from [`crate::Totals`] by the control side about once a second, so the
//! forwarding plane never touches them.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::{TimeoutReason, Totals};

type Labels = Vec<(String, String)>;

/// The timeout reasons, in the order of [`Metrics::timeouts_by_reason`].
const REASONS: [TimeoutReason; 4] = [
    TimeoutReason::NoMedia,
    TimeoutReason::Silent,
    TimeoutReason::Offer,
    TimeoutReason::Final,
];

/// Handles to the registered metrics plus the totals they last reflected.
///
/// The labelled counters are looked up once, here: a refresh runs at every call's end,
/// and looking each up by freshly built `String` labels cost a dozen allocations and
/// hashes per call.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    packets: Family<Labels, Counter>,
    relayed: Counter,
    dropped: Counter,
    timeouts_by_reason: [Counter; 4],
    bytes: Counter,
    kernel_packets: Counter,
    sessions_active: Gauge,
    ports_in_use: Gauge,
    ports_reused_early: Counter,
    spare_sockets: Gauge,
    worker_wakeups: Counter,
    timeouts: Family<Labels, Counter>,
    last: std::sync::Mutex<Totals>,
}

impl Metrics {
    pub(crate) fn register(registry: &mut Registry) -> Metrics {
        let mut m = Metrics::default();
        let label = |k: &str, v: &str| vec![(k.to_string(), v.to_string())];
        m.relayed = m.packets.get_or_create(&label("result", "relayed")).clone();
        m.dropped = m.packets.get_or_create(&label("result", "dropped")).clone();
        m.timeouts_by_reason = REASONS.map(|reason| {
            m.timeouts
                .get_or_create(&label("reason", reason.as_str()))
                .clone()
        });
        registry.register(
            "trunkline_media_packets",
            "Media packets by result (relayed or dropped)",
            m.packets.clone(),
        );
        registry.register(
            "trunkline_media_bytes",
            "Media bytes relayed",
            m.bytes.clone(),
        );
        registry.register(
            "trunkline_media_kernel_packets",
            "Of the media packets relayed, those the kernel fast path relayed",
            m.kernel_packets.clone(),
        );
        registry.register(
            "trunkline_media_sessions_active",
            "Relay sessions (calls) now anchored",
            m.sessions_active.clone(),
        );
        registry.register(
            "trunkline_media_ports_in_use",
            "Media ports (RTP and RTCP) bound for calls",
            m.ports_in_use.clone(),
        );
        registry.register(
            "trunkline_media_ports_reused_early",
            "Media ports handed to a call before they had rested the configured rest period \
             (the port range is small for the call rate)",
            m.ports_reused_early.clone(),
        );
        registry.register(
            "trunkline_media_spare_sockets",
            "Sockets of ended calls kept bound for reuse by the next call on their ports",
            m.spare_sockets.clone(),
        );
        registry.register(
            "trunkline_media_worker_wakeups",
            "Times the control side woke a forwarding thread to apply its commands (batched: \
             a few per hundred calls)",
            m.worker_wakeups.clone(),
        );
        registry.register(
            "trunkline_media_timeouts",
            "Sessions a media timeout caught, by rtpengine's reason: timeout (no media on an \
             active stream), silent_timeout (on hold), offer_timeout (never answered), \
             final_timeout (too old)",
            m.timeouts.clone(),
        );
        m
    }

    /// Moves the metrics to `now` (counters by the difference since the last refresh).
    pub(crate) fn refresh(&self, now: &Totals) {
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.relayed
            .inc_by(now.packets_relayed.saturating_sub(last.packets_relayed));
        self.dropped
            .inc_by(now.packets_dropped.saturating_sub(last.packets_dropped));
        self.bytes
            .inc_by(now.bytes_relayed.saturating_sub(last.bytes_relayed));
        self.kernel_packets
            .inc_by(now.packets_kernel.saturating_sub(last.packets_kernel));
        for (reason, counter) in REASONS.iter().zip(&self.timeouts_by_reason) {
            counter.inc_by(
                now.timeouts
                    .of(*reason)
                    .saturating_sub(last.timeouts.of(*reason)),
            );
        }
        self.ports_reused_early.inc_by(
            now.ports_reused_early
                .saturating_sub(last.ports_reused_early),
        );
        self.sessions_active
            .set(i64::try_from(now.current_sessions).unwrap_or(i64::MAX));
        self.ports_in_use
            .set(i64::try_from(now.ports_in_use).unwrap_or(i64::MAX));
        self.worker_wakeups
            .inc_by(now.worker_wakeups.saturating_sub(last.worker_wakeups));
        self.spare_sockets
            .set(i64::try_from(now.spare_sockets).unwrap_or(i64::MAX));
        *last = now.clone();
    }
}
