//! Prometheus metrics of the call layer.
//!
//! One [`CallMetrics`] is registered per node on the registry `main` builds and passes in
//! (ARCHITECTURE rule 10: no global registry), then cloned into every call actor, the dispatcher
//! and the transaction layer. Clones share the same atomics, so every method is a few atomic
//! operations plus, for labelled metrics, a read-locked map lookup.
//!
//! Metric names are a contract with dashboards and end-to-end tests; do not rename them.
//! Counters are registered without the `_total` suffix because `prometheus-client` appends it
//! when it encodes a counter.
//!
//! Label values that come from the network (SIP methods) are folded into a fixed set so that a
//! peer cannot create unbounded label cardinality (rule 6: untrusted input is bounded).

use std::borrow::Cow;
use std::fmt::Write as _;
use trunkline_sip::Method;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Which way a SIP message travelled relative to this node; the `direction` label.
///
/// Kept as an enum (not a string) so callers cannot invent label values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Received from the network (`"in"`).
    In,
    /// Sent to the network (`"out"`).
    Out,
}

impl Direction {
    /// The label value exposed to Prometheus.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::In => "in",
            Direction::Out => "out",
        }
    }
}

impl EncodeLabelValue for Direction {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct StatusLabels {
    status: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    direction: Direction,
    method: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ResponseLabels {
    direction: Direction,
    method: &'static str,
    status: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DirectionLabels {
    direction: Direction,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct TimerLabels {
    timer: Cow<'static, str>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct TrunkLabels {
    trunk: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct TrunkStateLabels {
    trunk: String,
    state: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

/// A trunk's name comes from the configuration, never from the network, so the label set
/// is bounded by the trunks configured.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct TrunkLimitLabels {
    trunk: String,
    direction: &'static str,
    limit: &'static str,
}

/// Handles to every call-layer metric; cheap to clone (all handles are `Arc`s inside).
///
/// Built once with [`CallMetrics::register`] so that names and help texts live in one place.
#[derive(Debug, Clone)]
pub struct CallMetrics {
    calls_active: Gauge,
    calls: Family<StatusLabels, Counter>,
    sip_requests: Family<RequestLabels, Counter>,
    sip_responses: Family<ResponseLabels, Counter>,
    sip_retransmissions: Family<DirectionLabels, Counter>,
    sip_forwarded: Family<DirectionLabels, Counter>,
    sip_sent_for_others: Counter,
    transaction_timeouts: Family<TimerLabels, Counter>,
    sip_parse_errors: Family<ReasonLabels, Counter>,
    sip_rejected: Family<ReasonLabels, Counter>,
    trunk_limited: Family<TrunkLimitLabels, Counter>,
    sources_blocked: Counter,
    source_dropped: Counter,
    auth: Family<ResultLabels, Counter>,
    trunk_up: Family<TrunkLabels, Gauge>,
    trunk_changed: Family<TrunkLabels, Gauge>,
    trunk_state_changes: Family<TrunkStateLabels, Counter>,
    failovers: Family<TrunkLabels, Counter>,
    trunk_registered: Family<TrunkLabels, Gauge>,
    trunk_registration_expiry: Family<TrunkLabels, Gauge>,
    trunk_registration_status: Family<TrunkLabels, Gauge>,
    registration_changes: Family<TrunkStateLabels, Counter>,
    trunk_targets: Family<TrunkLabels, Gauge>,
}

impl CallMetrics {
    /// Creates the metrics and registers them on `registry`, the node's one registry.
    ///
    /// Call it once per registry: registering twice would expose every metric twice.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            calls_active: Gauge::default(),
            calls: Family::default(),
            sip_requests: Family::default(),
            sip_responses: Family::default(),
            sip_retransmissions: Family::default(),
            sip_forwarded: Family::default(),
            sip_sent_for_others: Counter::default(),
            transaction_timeouts: Family::default(),
            sip_parse_errors: Family::default(),
            sip_rejected: Family::default(),
            trunk_limited: Family::default(),
            sources_blocked: Counter::default(),
            source_dropped: Counter::default(),
            auth: Family::default(),
            trunk_up: Family::default(),
            trunk_changed: Family::default(),
            trunk_state_changes: Family::default(),
            failovers: Family::default(),
            trunk_registered: Family::default(),
            trunk_registration_expiry: Family::default(),
            trunk_registration_status: Family::default(),
            registration_changes: Family::default(),
            trunk_targets: Family::default(),
        };
        registry.register(
            "trunkline_calls_active",
            "Calls currently in progress on this node",
            metrics.calls_active.clone(),
        );
        registry.register(
            "trunkline_calls",
            "Calls ended, by the final status code sent to the caller",
            metrics.calls.clone(),
        );
        registry.register(
            "trunkline_sip_requests",
            "SIP requests received (in) or sent (out), by method",
            metrics.sip_requests.clone(),
        );
        registry.register(
            "trunkline_sip_responses",
            "SIP responses received (in) or sent (out), by CSeq method and status code",
            metrics.sip_responses.clone(),
        );
        registry.register(
            "trunkline_sip_retransmissions",
            "SIP retransmissions: duplicates absorbed (in) or retransmissions sent (out)",
            metrics.sip_retransmissions.clone(),
        );
        registry.register(
            "trunkline_sip_forwarded",
            "SIP messages of dialogs another cluster node made: sent to it (out), or received from another node (in)",
            metrics.sip_forwarded.clone(),
        );
        registry.register(
            "trunkline_sip_sent_for_other_nodes",
            "SIP messages another cluster node had this node send, to a peer that talks to this node",
            metrics.sip_sent_for_others.clone(),
        );
        registry.register(
            "trunkline_transaction_timeouts",
            "SIP transactions that timed out, by RFC 3261 timer",
            metrics.transaction_timeouts.clone(),
        );
        registry.register(
            "trunkline_sip_parse_errors",
            "Received SIP messages rejected by the parser, by reason",
            metrics.sip_parse_errors.clone(),
        );
        registry.register(
            "trunkline_sip_rejected",
            "Requests the node refused before any call handled them, by reason \
             (untrusted_source, overload, draining, mailbox_full, merged, internal, \
             trunk_limit)",
            metrics.sip_rejected.clone(),
        );
        registry.register(
            "trunkline_trunk_limited",
            "Calls a trunk's limit refused, by trunk, direction (in: from the trunk, out: to \
             it) and limit (calls: up at once, cps: started per second)",
            metrics.trunk_limited.clone(),
        );
        registry.register(
            "trunkline_sip_sources_blocked",
            "Times a source address went past the per-source request limit and was blocked",
            metrics.sources_blocked.clone(),
        );
        registry.register(
            "trunkline_sip_source_dropped",
            "Messages dropped unread because their source address was blocked",
            metrics.source_dropped.clone(),
        );
        registry.register(
            "trunkline_sip_auth",
            "Digest authentication of INVITEs from unnamed sources, by result (challenged, \
             stale, valid, invalid)",
            metrics.auth.clone(),
        );
        registry.register(
            "trunkline_trunk_up",
            "Whether a pinged trunk is up (1) or down (0) by its OPTIONS answers; routing \
             skips a trunk that is down",
            metrics.trunk_up.clone(),
        );
        registry.register(
            "trunkline_trunk_last_change_timestamp_seconds",
            "When a pinged trunk last went up or down (Unix time; 0: never)",
            metrics.trunk_changed.clone(),
        );
        registry.register(
            "trunkline_trunk_state_changes",
            "Times a pinged trunk went up or down, by trunk and state",
            metrics.trunk_state_changes.clone(),
        );
        registry.register(
            "trunkline_route_failovers",
            "Calls a trunk failed before they were answered and that went on to the \
             route's next trunk, by the trunk that failed",
            metrics.failovers.clone(),
        );
        registry.register(
            "trunkline_trunk_registered",
            "Whether the node holds a registration at a trunk that requires one (1) or \
             not (0)",
            metrics.trunk_registered.clone(),
        );
        registry.register(
            "trunkline_trunk_registration_expiry_timestamp_seconds",
            "When the node's registration at a trunk ends unless refreshed (Unix time; \
             0: none)",
            metrics.trunk_registration_expiry.clone(),
        );
        registry.register(
            "trunkline_trunk_registration_last_status",
            "The status of the last final answer to the node's REGISTER at a trunk \
             (408: none in time)",
            metrics.trunk_registration_status.clone(),
        );
        registry.register(
            "trunkline_trunk_registration_changes",
            "Times the node's registration at a trunk changed state, by trunk and state \
             (registered, failed)",
            metrics.registration_changes.clone(),
        );
        registry.register(
            "trunkline_trunk_dns_targets",
            "Targets of a trunk named by DNS in its last answer (0: none yet, or none)",
            metrics.trunk_targets.clone(),
        );
        metrics
    }

    /// A call was accepted by the dispatcher and its actor started.
    pub fn call_started(&self) {
        self.calls_active.inc();
    }

    /// A call ended; `status` is the final status code sent to the caller (200 for an answered
    /// call that later hung up). Pair every `call_started` with exactly one `call_ended`.
    pub fn call_ended(&self, status: u16) {
        self.calls_active.dec();
        self.calls.get_or_create(&StatusLabels { status }).inc();
    }

    /// A SIP request was received or sent (not counting retransmissions we send).
    /// Extension methods share one label value (`Method::metric_label`), so a peer
    /// cannot grow the label set without bound.
    pub fn request(&self, direction: Direction, method: &Method) {
        self.sip_requests
            .get_or_create(&RequestLabels {
                direction,
                method: method.metric_label(),
            })
            .inc();
    }

    /// A SIP response was received or sent; `method` is the CSeq method.
    pub fn response(&self, direction: Direction, method: &Method, status: u16) {
        self.sip_responses
            .get_or_create(&ResponseLabels {
                direction,
                method: method.metric_label(),
                status,
            })
            .inc();
    }

    /// A retransmission was absorbed (`In`) or sent (`Out`).
    pub fn retransmission(&self, direction: Direction) {
        self.sip_retransmissions
            .get_or_create(&DirectionLabels { direction })
            .inc();
    }

    /// A message of another node's dialog sent to that node (`Out`), or one another
    /// node sent here (`In`).
    pub fn forwarded(&self, direction: Direction) {
        self.sip_forwarded
            .get_or_create(&DirectionLabels { direction })
            .inc();
    }

    /// A message another node had this one send (`Dispatcher::send_for_other`).
    pub fn sent_for_others(&self) {
        self.sip_sent_for_others.inc();
    }

    /// A trunk's `limit` refused a call crossing it in `direction`.
    pub fn trunk_limited(&self, trunk: &str, direction: &'static str, limit: &'static str) {
        self.trunk_limited
            .get_or_create(&TrunkLimitLabels {
                trunk: trunk.to_string(),
                direction,
                limit,
            })
            .inc();
    }

    /// A source went past the per-source request limit and is blocked.
    pub fn source_blocked(&self) {
        self.sources_blocked.inc();
    }

    /// What a pinged trunk's state is, and since when (ms since the epoch).
    pub fn trunk_health(&self, trunk: &str, up: bool, changed_ms: u64) {
        let labels = TrunkLabels {
            trunk: trunk.to_string(),
        };
        self.trunk_up.get_or_create(&labels).set(i64::from(up));
        self.trunk_changed
            .get_or_create(&labels)
            .set(i64::try_from(changed_ms / 1000).unwrap_or(i64::MAX));
    }

    /// `trunk` failed a call that went on to the next trunk of its route.
    pub fn failover(&self, trunk: &str) {
        self.failovers
            .get_or_create(&TrunkLabels {
                trunk: trunk.to_string(),
            })
            .inc();
    }

    /// Where the node's registration at `trunk` stands.
    pub fn trunk_registration(&self, trunk: &str, s: &crate::registration::RegStatus) {
        let labels = TrunkLabels {
            trunk: trunk.to_string(),
        };
        let registered = s.state == crate::registration::RegState::Registered;
        self.trunk_registered
            .get_or_create(&labels)
            .set(i64::from(registered));
        self.trunk_registration_expiry
            .get_or_create(&labels)
            .set(i64::try_from(s.expires_ms / 1000).unwrap_or(i64::MAX));
        self.trunk_registration_status
            .get_or_create(&labels)
            .set(i64::from(s.last_status));
    }

    /// A trunk named by DNS has `n` targets now.
    pub fn trunk_dns_targets(&self, trunk: &str, n: usize) {
        self.trunk_targets
            .get_or_create(&TrunkLabels {
                trunk: trunk.to_string(),
            })
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// The node's registration at `trunk` went `state`.
    pub fn registration_change(&self, trunk: &str, state: &'static str) {
        self.registration_changes
            .get_or_create(&TrunkStateLabels {
                trunk: trunk.to_string(),
                state,
            })
            .inc();
    }

    /// A pinged trunk went `state` ("up" or "down").
    pub fn trunk_state_change(&self, trunk: &str, state: &'static str) {
        self.trunk_state_changes
            .get_or_create(&TrunkStateLabels {
                trunk: trunk.to_string(),
                state,
            })
            .inc();
    }

    /// A digest authentication ended with `result`.
    pub fn auth(&self, result: &'static str) {
        self.auth.get_or_create(&ResultLabels { result }).inc();
    }

    /// A message from a blocked source was dropped.
    pub fn source_dropped(&self) {
        self.source_dropped.inc();
    }

    /// A transaction timer fired and ended the transaction (`"B"`, `"F"`, `"H"`, `"J"`, ...).
    pub fn transaction_timeout(&self, timer: &str) {
        self.transaction_timeouts
            .get_or_create(&TimerLabels {
                timer: Cow::Owned(timer.to_owned()),
            })
            .inc();
    }

    /// The dispatcher refused a request without giving it to a call; `reason` is one of
    /// a fixed set of constants.
    pub fn rejected(&self, reason: &'static str) {
        self.sip_rejected
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// A received message failed to parse; `reason` is a short snake_case constant, never text
    /// taken from the message.
    pub fn parse_error(&self, reason: &'static str) {
        self.sip_parse_errors
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;

    fn scrape(registry: &Registry) -> String {
        let mut out = String::new();
        encode(&mut out, registry).unwrap();
        out
    }

    #[test]
    fn exposes_fixed_names_and_labels() {
        let mut registry = Registry::default();
        let metrics = CallMetrics::register(&mut registry);

        metrics.call_started();
        metrics.call_started();
        metrics.call_ended(486);
        metrics.request(Direction::In, &Method::Invite);
        metrics.request(Direction::Out, &Method::Invite);
        metrics.response(Direction::Out, &Method::Invite, 180);
        metrics.response(Direction::Out, &Method::Invite, 180);
        metrics.retransmission(Direction::In);
        metrics.retransmission(Direction::Out);
        metrics.transaction_timeout("B");
        metrics.parse_error("bad_start_line");

        let text = scrape(&registry);
        for line in [
            "trunkline_calls_active 1\n",
            "trunkline_calls_total{status=\"486\"} 1\n",
            "trunkline_sip_requests_total{direction=\"in\",method=\"INVITE\"} 1\n",
            "trunkline_sip_requests_total{direction=\"out\",method=\"INVITE\"} 1\n",
            "trunkline_sip_responses_total{direction=\"out\",method=\"INVITE\",status=\"180\"} 2\n",
            "trunkline_sip_retransmissions_total{direction=\"in\"} 1\n",
            "trunkline_sip_retransmissions_total{direction=\"out\"} 1\n",
            "trunkline_transaction_timeouts_total{timer=\"B\"} 1\n",
            "trunkline_sip_parse_errors_total{reason=\"bad_start_line\"} 1\n",
            "# TYPE trunkline_calls_active gauge\n",
            "# TYPE trunkline_calls counter\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in:\n{text}");
        }
    }

    #[test]
    fn unknown_methods_are_folded() {
        let mut registry = Registry::default();
        let metrics = CallMetrics::register(&mut registry);
        metrics.request(Direction::In, &Method::Extension("FOOBAR".into()));
        metrics.request(Direction::In, &Method::Extension("XYZZY".into()));
        metrics.response(Direction::In, &Method::Extension("FOOBAR".into()), 501);

        let text = scrape(&registry);
        assert!(
            text.contains("trunkline_sip_requests_total{direction=\"in\",method=\"OTHER\"} 2\n")
        );
        assert!(text.contains(
            "trunkline_sip_responses_total{direction=\"in\",method=\"OTHER\",status=\"501\"} 1\n"
        ));
        assert!(!text.contains("FOOBAR"));
    }

    #[test]
    fn clones_share_state() {
        let mut registry = Registry::default();
        let metrics = CallMetrics::register(&mut registry);
        let other = metrics.clone();
        metrics.call_started();
        other.call_ended(200);
        let text = scrape(&registry);
        assert!(text.contains("trunkline_calls_active 0\n"));
        assert!(text.contains("trunkline_calls_total{status=\"200\"} 1\n"));
    }
}
