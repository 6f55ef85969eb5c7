//! Trunk health by OPTIONS pings, as Kamailio's dispatcher (`ds_ping_interval`,
//! `ds_probing_threshold`, `ds_inactive_threshold`, `ds_ping_reply_codes`) and an Oracle
//! SBC's session-agent pings: each trunk with `[trunks.health]` is sent an OPTIONS every
//! interval; `down_after` pings in a row without an answer that counts (none before the
//! next ping is due, or one whose status is not listed as up) mark it down, `up_after`
//! counted answers in a row bring it back. Routing skips a trunk that is down.
//!
//! The pings are stateless requests of the node: their branch names them (`BRANCH`), so
//! the dispatcher hands their responses here before any dialog lookup, and only an
//! answer from the address the ping went to counts.

use crate::router::Trunk;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Prefix of the Via branch of every health ping (RFC 3261 magic cookie first).
pub const BRANCH: &str = "z9hG4bK-tlhc-";

/// One trunk's ping settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthConfig {
    pub interval: Duration,
    /// Misses in a row that mark the trunk down.
    pub down_after: u32,
    /// Counted answers in a row that bring it back up.
    pub up_after: u32,
    /// Final statuses that count as up: a code, or a class (`2` for any 2xx).
    pub up_statuses: Vec<StatusMatch>,
}

/// A status a health answer may have to count as up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusMatch {
    Code(u16),
    Class(u16),
}

impl StatusMatch {
    fn matches(self, status: u16) -> bool {
        match self {
            StatusMatch::Code(c) => c == status,
            StatusMatch::Class(c) => status / 100 == c,
        }
    }
}

/// What a trunk's pings have shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrunkStatus {
    pub up: bool,
    /// When it last went up or down (ms since the epoch; 0: never changed).
    pub changed_ms: u64,
}

#[derive(Debug)]
struct State {
    up: bool,
    misses: u32,
    answers: u32,
    changed_ms: u64,
    next_ping: Instant,
    /// The ping waiting for its answer.
    pending: Option<u64>,
}

#[derive(Debug)]
struct Pending {
    trunk: Arc<str>,
    to: SocketAddr,
}

/// A state change, for the metrics and the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub trunk: Arc<str>,
    pub up: bool,
    pub at_ms: u64,
}

/// The health of every pinged trunk, by name.
#[derive(Debug, Default)]
pub struct TrunkHealth {
    states: Mutex<HashMap<Arc<str>, State>>,
    pending: Mutex<HashMap<u64, Pending>>,
    seq: AtomicU64,
}

/// A ping to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ping {
    pub trunk: Arc<str>,
    pub branch: String,
    pub seq: u64,
}

impl TrunkHealth {
    /// Whether routing may use `trunk` (a trunk never pinged is up).
    pub fn is_up(&self, trunk: &str) -> bool {
        let states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        states.get(trunk).is_none_or(|s| s.up)
    }

    /// What the pings of `trunk` have shown, if it is pinged.
    pub fn status(&self, trunk: &str) -> Option<TrunkStatus> {
        let states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        states.get(trunk).map(|s| TrunkStatus {
            up: s.up,
            changed_ms: s.changed_ms,
        })
    }

    /// The pings due at `now` among `trunks`, with the changes that unanswered pings
    /// made; trunks no longer configured are forgotten.
    pub fn due(&self, trunks: &[Trunk], now: Instant) -> (Vec<Ping>, Vec<Change>) {
        let mut states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        states.retain(|name, _| trunks.iter().any(|t| &t.name == name && t.health.is_some()));
        let (mut pings, mut changes) = (Vec::new(), Vec::new());
        for t in trunks {
            let Some(cfg) = &t.health else { continue };
            if t.addr.port() == 0 {
                // Named by DNS and not resolved yet: routing skips it anyway.
                continue;
            }
            let s = states.entry(t.name.clone()).or_insert(State {
                up: true,
                misses: 0,
                answers: 0,
                changed_ms: 0,
                next_ping: now,
                pending: None,
            });
            if s.next_ping > now {
                continue;
            }
            if let Some(seq) = s.pending.take() {
                // Not answered before the next ping was due: a miss.
                pending.remove(&seq);
                if let Some(c) = miss(&t.name, s, cfg) {
                    changes.push(c);
                }
            }
            let seq = self.seq.fetch_add(1, Ordering::Relaxed);
            s.pending = Some(seq);
            s.next_ping = now + cfg.interval;
            pending.insert(
                seq,
                Pending {
                    trunk: t.name.clone(),
                    to: t.addr,
                },
            );
            pings.push(Ping {
                trunk: t.name.clone(),
                branch: format!("{BRANCH}{seq}"),
                seq,
            });
        }
        // Pings of trunks that went away.
        pending.retain(|_, p| states.contains_key(&p.trunk));
        (pings, changes)
    }

    /// A response to a ping (its top Via branch starts with `BRANCH`) from `from`; the
    /// change it makes, if any. A provisional answer, an unknown ping or one from
    /// elsewhere changes nothing.
    pub fn on_response(
        &self,
        branch: &str,
        status: u16,
        from: SocketAddr,
        trunks: &[Trunk],
    ) -> Option<Change> {
        if status < 200 {
            return None;
        }
        let seq: u64 = branch.strip_prefix(BRANCH)?.parse().ok()?;
        let mut states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let p = pending.get(&seq)?;
        if p.to != from {
            return None;
        }
        let p = pending.remove(&seq)?;
        let cfg = trunks
            .iter()
            .find(|t| t.name == p.trunk)
            .and_then(|t| t.health.as_ref())?;
        let s = states.get_mut(&p.trunk)?;
        if s.pending == Some(seq) {
            s.pending = None;
        }
        if !cfg.up_statuses.iter().any(|m| m.matches(status)) {
            return miss(&p.trunk, s, cfg);
        }
        s.misses = 0;
        s.answers = s.answers.saturating_add(1);
        if !s.up && s.answers >= cfg.up_after {
            s.up = true;
            s.changed_ms = crate::directory::now_ms();
            return Some(Change {
                trunk: p.trunk,
                up: true,
                at_ms: s.changed_ms,
            });
        }
        None
    }
}

fn miss(trunk: &Arc<str>, s: &mut State, cfg: &HealthConfig) -> Option<Change> {
    s.answers = 0;
    s.misses = s.misses.saturating_add(1);
    if s.up && s.misses >= cfg.down_after {
        s.up = false;
        s.changed_ms = crate::directory::now_ms();
        return Some(Change {
            trunk: trunk.clone(),
            up: false,
            at_ms: s.changed_ms,
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trunk(name: &str, addr: &str) -> Trunk {
        Trunk {
            health: Some(HealthConfig {
                interval: Duration::from_secs(1),
                down_after: 2,
                up_after: 2,
                up_statuses: vec![StatusMatch::Class(2), StatusMatch::Code(404)],
            }),
            ..Trunk::plain(name, addr.parse().unwrap())
        }
    }

    #[test]
    fn missed_pings_take_a_trunk_down_and_answers_bring_it_back() {
        let h = TrunkHealth::default();
        let trunks = vec![trunk("uk", "192.0.2.1:5060")];
        let addr: SocketAddr = "192.0.2.1:5060".parse().unwrap();
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let (p, c) = h.due(&trunks, at(0));
        assert_eq!((p.len(), c.len()), (1, 0));
        assert!(h.is_up("uk"));
        // Not due again before the interval.
        assert!(h.due(&trunks, t0 + Duration::from_millis(500)).0.is_empty());
        // Two pings unanswered: down.
        let (_, c) = h.due(&trunks, at(1));
        assert!(c.is_empty());
        let (p, c) = h.due(&trunks, at(2));
        assert_eq!(c.len(), 1);
        assert!(!c[0].up && !h.is_up("uk"));
        // An answer from elsewhere, or a provisional one, does not count.
        assert_eq!(
            h.on_response(
                &p[0].branch,
                200,
                "192.0.2.9:5060".parse().unwrap(),
                &trunks
            ),
            None
        );
        assert_eq!(h.on_response(&p[0].branch, 100, addr, &trunks), None);
        // Two answers that count (a 404 is listed): up again.
        assert_eq!(h.on_response(&p[0].branch, 404, addr, &trunks), None);
        assert!(!h.is_up("uk"));
        let (p, c) = h.due(&trunks, at(3));
        assert!(c.is_empty());
        let change = h.on_response(&p[0].branch, 200, addr, &trunks).unwrap();
        assert!(change.up && h.is_up("uk"));
        assert!(h.status("uk").unwrap().changed_ms > 0);
        // An answer to a ping already answered changes nothing.
        assert_eq!(h.on_response(&p[0].branch, 200, addr, &trunks), None);
    }

    #[test]
    fn an_answer_not_listed_as_up_counts_as_a_miss() {
        let h = TrunkHealth::default();
        let trunks = vec![trunk("uk", "192.0.2.1:5060")];
        let addr: SocketAddr = "192.0.2.1:5060".parse().unwrap();
        let t0 = Instant::now();
        let (p, _) = h.due(&trunks, t0);
        assert_eq!(h.on_response(&p[0].branch, 503, addr, &trunks), None);
        let (p, _) = h.due(&trunks, t0 + Duration::from_secs(1));
        let c = h.on_response(&p[0].branch, 503, addr, &trunks).unwrap();
        assert!(!c.up);
    }

    #[test]
    fn trunks_without_pings_are_up_and_removed_trunks_are_forgotten() {
        let h = TrunkHealth::default();
        let t0 = Instant::now();
        let trunks = vec![trunk("uk", "192.0.2.1:5060")];
        h.due(&trunks, t0);
        assert!(h.status("uk").is_some());
        let (p, _) = h.due(
            &[Trunk::plain("other", "192.0.2.2:5060".parse().unwrap())],
            t0,
        );
        assert!(p.is_empty());
        assert!(h.status("uk").is_none());
        assert!(h.is_up("other") && h.is_up("never-heard-of"));
    }
}
