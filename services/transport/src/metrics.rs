//! Transport metrics and the drop events that both log and count.

use std::net::SocketAddr;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use trunkline_sip::Transport;

use crate::log_limiter::LogLimiter;

/// The lower-case transport name used as a label value.
pub(crate) fn label(transport: Transport) -> &'static str {
    match transport {
        Transport::Udp => "udp",
        Transport::Tcp => "tcp",
        Transport::Tls => "tls",
    }
}

/// Directions of `trunkline_transport_bytes`, indexed by `IN` and `OUT`.
const BYTE_DIRECTIONS: [&str; 2] = ["in", "out"];
const IN: usize = 0;
const OUT: usize = 1;

/// Label set `transport`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransportLabel {
    transport: &'static str,
}

/// Label set `transport`, `direction`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabels {
    transport: &'static str,
    direction: &'static str,
}

/// Label set `reason`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

/// Why a message or connection was dropped; the value of the `reason` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DropReason {
    /// Larger than `max_message_bytes`.
    Oversize,
    /// Stream message without Content-Length.
    NoContentLength,
    /// Unparseable Content-Length.
    BadContentLength,
    /// Slowloris: a message not completed in `tcp_partial_timeout`.
    PartialTimeout,
    /// No traffic either way for `tcp_idle_timeout`, and no call pinned the connection.
    IdleTimeout,
    /// Accept beyond `tcp_max_inbound`.
    InboundLimit,
    /// Accept beyond `tcp_max_per_source` from one IP.
    SourceLimit,
    /// A send that needed a new connection beyond `tcp_max_outbound`.
    OutboundLimit,
    /// Any other send that could not be done.
    SendError,
    /// A TLS handshake failed or timed out, or the peer's certificate was refused.
    TlsHandshake,
    /// A peer that answered our keep-alive pings stopped answering them.
    KeepaliveTimeout,
}

impl DropReason {
    /// The label value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            DropReason::Oversize => "oversize",
            DropReason::NoContentLength => "no_content_length",
            DropReason::BadContentLength => "bad_content_length",
            DropReason::PartialTimeout => "partial_timeout",
            DropReason::IdleTimeout => "idle_timeout",
            DropReason::InboundLimit => "inbound_limit",
            DropReason::SourceLimit => "source_limit",
            DropReason::OutboundLimit => "outbound_limit",
            DropReason::SendError => "send_error",
            DropReason::TlsHandshake => "tls_handshake",
            DropReason::KeepaliveTimeout => "keepalive_timeout",
        }
    }
}

/// Whether a connection was accepted or opened by us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direction {
    /// Accepted from a peer.
    Inbound,
    /// Opened by us to send.
    Outbound,
}

impl Direction {
    /// The label value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

/// The transport's metric handles, registered once on the registry passed to `start`, and
/// the log budget of its drop events.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    connections_active: Family<TransportLabel, Gauge>,
    connections_total: Family<DirectionLabels, Counter>,
    dropped: Family<ReasonLabel, Counter>,
    bytes: Family<DirectionLabels, Counter>,
    /// `bytes`' series by transport and direction (in, out), looked up in the family once:
    /// every message sent or received counts its bytes, and a family lookup hashes the
    /// labels and takes a lock each time.
    byte_series: [[std::sync::OnceLock<Counter>; 2]; 3],
    /// Drop events are counted always and logged within this budget: a peer that makes us
    /// drop thousands of messages must not make us write thousands of lines.
    log: LogLimiter,
}

impl Metrics {
    /// Creates the metrics and registers them under their fixed names (prometheus-client adds
    /// `_total` to counters itself).
    pub(crate) fn register(registry: &mut Registry) -> Self {
        let m = Metrics::default();
        registry.register(
            "trunkline_transport_connections_active",
            "Open connections",
            m.connections_active.clone(),
        );
        registry.register(
            "trunkline_transport_connections",
            "Connections accepted (inbound) or opened (outbound)",
            m.connections_total.clone(),
        );
        registry.register(
            "trunkline_transport_dropped",
            "Messages or connections dropped, by reason",
            m.dropped.clone(),
        );
        registry.register(
            "trunkline_transport_bytes",
            "Bytes received (in) and sent (out)",
            m.bytes.clone(),
        );
        m
    }

    /// A connection opened: counts it and raises the active gauge.
    pub(crate) fn connection_opened(&self, transport: Transport, direction: Direction) {
        self.connections_total
            .get_or_create(&DirectionLabels {
                transport: label(transport),
                direction: direction.as_str(),
            })
            .inc();
        self.connections_active
            .get_or_create(&TransportLabel {
                transport: label(transport),
            })
            .inc();
    }

    /// A connection closed: lowers the active gauge.
    pub(crate) fn connection_closed(&self, transport: Transport) {
        self.connections_active
            .get_or_create(&TransportLabel {
                transport: label(transport),
            })
            .dec();
    }

    /// Bytes received.
    pub(crate) fn bytes_in(&self, transport: Transport, n: usize) {
        self.bytes(transport, IN, n);
    }

    /// Bytes sent.
    pub(crate) fn bytes_out(&self, transport: Transport, n: usize) {
        self.bytes(transport, OUT, n);
    }

    /// Counts `n` bytes in direction `d` (`IN` or `OUT`).
    fn bytes(&self, transport: Transport, d: usize, n: usize) {
        let t = match transport {
            Transport::Udp => 0,
            Transport::Tcp => 1,
            Transport::Tls => 2,
        };
        self.byte_series[t][d]
            .get_or_init(|| {
                self.bytes
                    .get_or_create(&DirectionLabels {
                        transport: label(transport),
                        direction: BYTE_DIRECTIONS[d],
                    })
                    .clone()
            })
            .inc_by(u64::try_from(n).unwrap_or(u64::MAX));
    }

    /// The shared log budget, for other warnings about peers (accept errors).
    pub(crate) fn log_allowed(&self) -> bool {
        self.log.allow()
    }

    /// Something was dropped: counts it under one reason and logs it with the peer, within
    /// the log budget (`suppressed` says how many lines the budget left out before this one).
    pub(crate) fn dropped(
        &self,
        reason: DropReason,
        transport: Transport,
        peer: SocketAddr,
        detail: &dyn std::fmt::Display,
    ) {
        if self.log.allow() {
            let suppressed = self.log.take_suppressed();
            // An idle peer being closed is routine; everything else is worth a warning.
            if reason == DropReason::IdleTimeout {
                tracing::info!(
                    %peer,
                    %transport,
                    reason = reason.as_str(),
                    detail = %detail,
                    suppressed,
                    "transport closed an idle connection"
                );
            } else {
                tracing::warn!(
                    %peer,
                    %transport,
                    reason = reason.as_str(),
                    detail = %detail,
                    suppressed,
                    "transport dropped a message or connection"
                );
            }
        }
        self.dropped
            .get_or_create(&ReasonLabel {
                reason: reason.as_str(),
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The series looked up once are the registered family's, per transport and direction.
    #[test]
    fn bytes_land_in_the_registered_series() {
        let mut registry = Registry::default();
        let m = Metrics::register(&mut registry);
        m.bytes_in(Transport::Udp, 100);
        m.bytes_in(Transport::Udp, 20);
        m.bytes_out(Transport::Tls, 7);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encodes");
        assert!(
            text.contains(r#"trunkline_transport_bytes_total{transport="udp",direction="in"} 120"#),
            "{text}"
        );
        assert!(
            text.contains(r#"trunkline_transport_bytes_total{transport="tls",direction="out"} 7"#),
            "{text}"
        );
        assert!(
            !text.contains(r#"transport="tcp""#),
            "no series before a byte: {text}"
        );
    }
}
