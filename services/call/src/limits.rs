//! Per-trunk call limits: how many calls a trunk may have up at once and how many it may
//! start per second, inbound (calls from it) and outbound (calls to it) apart, as an
//! operator sets them on a carrier interconnect (an Oracle SBC's session-agent
//! `max-inbound-sessions` / `max-burst-rate`, Kamailio's dispatcher with a `dialog`
//! profile). Past a limit an inbound call gets 503 with Retry-After before any call state
//! exists, and an outbound one is not placed.
//!
//! The counters live by trunk name beside the routing table, not in it: a new table (a
//! trunk changed through the admin API) keeps counting the calls the old one admitted.
//! A call holds a [`TrunkSlot`] for each direction it took one in, and the slot gives its
//! place back when the call ends.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// One direction's limits of a trunk; 0 means no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Calls up at once (ringing or answered).
    pub calls: u32,
    /// Calls started per second, with bursts of at most this many (a token bucket).
    pub cps: u32,
}

/// A trunk's limits both ways.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TrunkLimits {
    /// Calls from the trunk.
    pub inbound: Limits,
    /// Calls to the trunk.
    pub outbound: Limits,
}

/// Which way a call crosses a trunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Way {
    Inbound,
    Outbound,
}

impl Way {
    /// The `direction` label of the limit metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Way::Inbound => "in",
            Way::Outbound => "out",
        }
    }
}

/// Which limit refused a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitHit {
    Calls,
    Cps,
}

impl LimitHit {
    /// The `limit` label of `trunkline_trunk_limited_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            LimitHit::Calls => "calls",
            LimitHit::Cps => "cps",
        }
    }
}

/// Calls up and the rate bucket of one trunk in one direction.
#[derive(Debug)]
struct Counter {
    active: AtomicU32,
    bucket: Mutex<Bucket>,
    /// Calls refused by each limit, for `trunkctl` and tests.
    refused_calls: AtomicU64,
    refused_cps: AtomicU64,
}

/// A token bucket: `cps` tokens at most, `cps` more each second.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
    /// The limit the tokens were counted for: a changed limit starts a full bucket.
    cps: u32,
}

impl Bucket {
    fn take(&mut self, cps: u32, now: Instant) -> bool {
        if cps != self.cps {
            *self = Bucket {
                tokens: f64::from(cps),
                at: now,
                cps,
            };
        }
        let refill = now.saturating_duration_since(self.at).as_secs_f64() * f64::from(cps);
        self.tokens = (self.tokens + refill).min(f64::from(cps));
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

impl Counter {
    fn new() -> Counter {
        Counter {
            active: AtomicU32::new(0),
            bucket: Mutex::new(Bucket {
                tokens: 0.0,
                at: Instant::now(),
                cps: 0,
            }),
            refused_calls: AtomicU64::new(0),
            refused_cps: AtomicU64::new(0),
        }
    }
}

/// A call's place under a trunk's limit; given back on drop.
#[derive(Debug)]
pub struct TrunkSlot {
    counter: Arc<Counter>,
}

impl Drop for TrunkSlot {
    fn drop(&mut self) {
        self.counter.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What one trunk has up and has refused in one direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LimitState {
    pub active: u32,
    pub refused_calls: u64,
    pub refused_cps: u64,
}

/// A trunk's name and a direction: what a counter counts.
type CounterKey = (Arc<str>, Way);

/// The counters of every trunk a call has crossed, by name and direction.
#[derive(Debug, Default)]
pub struct TrunkCounters {
    map: Mutex<HashMap<CounterKey, Arc<Counter>>>,
}

impl TrunkCounters {
    fn counter(&self, trunk: &Arc<str>, way: Way) -> Arc<Counter> {
        // A panic elsewhere while the lock was held leaves the map intact: use it.
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.entry((trunk.clone(), way))
            .or_insert_with(|| Arc::new(Counter::new()))
            .clone()
    }

    /// Takes a place for a new call over `trunk` in direction `way`, or says which
    /// limit refuses it. Exact under concurrency: however many calls arrive at once, no
    /// more than `limits.calls` are ever up.
    pub fn admit(
        &self,
        trunk: &Arc<str>,
        way: Way,
        limits: Limits,
        now: Instant,
    ) -> Result<TrunkSlot, LimitHit> {
        let counter = self.counter(trunk, way);
        let max = if limits.calls == 0 {
            u32::MAX
        } else {
            limits.calls
        };
        let taken = counter
            .active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            });
        if taken.is_err() {
            counter.refused_calls.fetch_add(1, Ordering::Relaxed);
            return Err(LimitHit::Calls);
        }
        let slot = TrunkSlot { counter };
        if limits.cps > 0 {
            let allowed = slot
                .counter
                .bucket
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take(limits.cps, now);
            if !allowed {
                slot.counter.refused_cps.fetch_add(1, Ordering::Relaxed);
                // Dropping the slot gives the place back.
                return Err(LimitHit::Cps);
            }
        }
        Ok(slot)
    }

    /// What `trunk` has up and has refused in direction `way`.
    pub fn state(&self, trunk: &str, way: Way) -> LimitState {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.iter()
            .find(|((name, w), _)| &**name == trunk && *w == way)
            .map(|(_, c)| LimitState {
                active: c.active.load(Ordering::Acquire),
                refused_calls: c.refused_calls.load(Ordering::Relaxed),
                refused_cps: c.refused_cps.load(Ordering::Relaxed),
            })
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn name(s: &str) -> Arc<str> {
        Arc::from(s)
    }

    #[test]
    fn calls_up_at_once_stop_at_the_limit_and_come_back_when_calls_end() {
        let c = TrunkCounters::default();
        let t = name("carrier");
        let limits = Limits { calls: 3, cps: 0 };
        let now = Instant::now();
        let mut slots: Vec<_> = (0..3)
            .map(|_| c.admit(&t, Way::Inbound, limits, now).unwrap())
            .collect();
        assert_eq!(
            c.admit(&t, Way::Inbound, limits, now).unwrap_err(),
            LimitHit::Calls
        );
        // The other direction counts apart.
        assert!(c.admit(&t, Way::Outbound, limits, now).is_ok());
        slots.pop();
        assert!(c.admit(&t, Way::Inbound, limits, now).is_ok());
        let s = c.state("carrier", Way::Inbound);
        assert_eq!((s.active, s.refused_calls), (2, 1));
    }

    #[test]
    fn calls_per_second_allow_a_burst_of_the_limit_then_refill() {
        let c = TrunkCounters::default();
        let t = name("carrier");
        let limits = Limits { calls: 0, cps: 5 };
        let t0 = Instant::now();
        let mut kept = Vec::new();
        let mut refused = 0;
        for _ in 0..8 {
            match c.admit(&t, Way::Outbound, limits, t0) {
                Ok(s) => kept.push(s),
                Err(hit) => {
                    assert_eq!(hit, LimitHit::Cps);
                    refused += 1;
                }
            }
        }
        assert_eq!((kept.len(), refused), (5, 3));
        // A refused call holds no place.
        assert_eq!(c.state("carrier", Way::Outbound).active, 5);
        // 400 ms later two more tokens have come back.
        let later = t0 + Duration::from_millis(400);
        assert!(c.admit(&t, Way::Outbound, limits, later).is_ok());
        assert!(c.admit(&t, Way::Outbound, limits, later).is_ok());
        assert!(c.admit(&t, Way::Outbound, limits, later).is_err());
    }

    #[test]
    fn no_limit_admits_everything() {
        let c = TrunkCounters::default();
        let t = name("open");
        let now = Instant::now();
        let slots: Vec<_> = (0..1000)
            .map(|_| c.admit(&t, Way::Inbound, Limits::default(), now))
            .collect();
        assert!(slots.iter().all(Result::is_ok));
    }
}
