//! The node's media relay as its Prometheus counters show it: packets relayed and dropped,
//! whether a session is relaying, and waits for the counters to settle or the relay to go idle.
//! Shared by media.rs and sipi.rs, whose verdicts on media come from these counters.

use crate::{Metrics, Node};
use anyhow::{ensure, Result};
use std::time::{Duration, Instant};

/// `trunkline_media_packets_total{result="relayed"}` (0 when absent).
pub fn relayed(m: &Metrics) -> f64 {
    m.get("trunkline_media_packets_total", &[("result", "relayed")])
        .unwrap_or(0.0)
}

/// `trunkline_media_packets_total{result="dropped"}` (0 when absent).
pub fn dropped(m: &Metrics) -> f64 {
    m.get("trunkline_media_packets_total", &[("result", "dropped")])
        .unwrap_or(0.0)
}

/// Exactly one media session is active and the relay has relayed packets.
pub fn one_session_relaying(m: &Metrics) -> bool {
    m.get("trunkline_media_sessions_active", &[]) == Some(1.0) && relayed(m) > 0.0
}

/// Waits (up to 10 s) until the relayed-packet counter stops moving (it is refreshed about once
/// a second) and returns that scrape.
pub fn settled(node: &Node) -> Result<Metrics> {
    let mut last = node.metrics()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        std::thread::sleep(Duration::from_millis(1300));
        let m = node.metrics()?;
        if relayed(&m) == relayed(&last) || Instant::now() >= deadline {
            return Ok(m);
        }
        last = m;
    }
}

/// Waits (up to 10 s) until the relay reports no active session and no port in use; returns
/// the last scrape, idle or not (the caller decides what to assert).
pub fn wait_relay_idle(node: &Node) -> Result<Metrics> {
    node.wait_metrics(Duration::from_secs(10), |m| {
        m.get("trunkline_media_sessions_active", &[]) == Some(0.0)
            && m.get("trunkline_media_ports_in_use", &[]) == Some(0.0)
    })
}

/// Waits (up to 10 s) until the relay holds no session and no port, then returns the scrape;
/// fails if it still holds either.
pub fn media_idle(node: &Node) -> Result<Metrics> {
    let m = wait_relay_idle(node)?;
    let s = m.value("trunkline_media_sessions_active", &[])?;
    let p = m.value("trunkline_media_ports_in_use", &[])?;
    ensure!(
        s == 0.0 && p == 0.0,
        "after the call the relay still holds {s} session(s) and {p} port(s)"
    );
    Ok(m)
}
