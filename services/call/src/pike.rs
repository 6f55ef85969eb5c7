//! Per-source request rate limit with a temporary block, as Kamailio's `pike` module:
//! a source address that sends more than `max_requests` requests within one window is
//! blocked for `block`, and while blocked everything it sends is dropped before it is
//! parsed, so a flood or a scanner costs a hash lookup and no call state, and gets no
//! answer to learn from.
//!
//! Trunks are never counted here (their own limits bound them, see `limits`); which
//! other sources are is the node's choice (`SourceLimitConfig::include_access`).
//!
//! The table is bounded: when it holds `max_sources` addresses, those idle for a whole
//! window are forgotten, and if none is, a new address goes uncounted (a flood of
//! spoofed sources cannot grow memory or evict a blocked one).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Settings of the per-source limit; `max_requests == 0` switches it off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceLimitConfig {
    /// Requests one source may send per window.
    pub max_requests: u32,
    pub window: Duration,
    /// How long a source that went past the limit stays blocked.
    pub block: Duration,
    /// Addresses tracked at most.
    pub max_sources: usize,
    /// Count the access networks' phones too, not only sources no rule trusts.
    pub include_access: bool,
    /// Failed digest authentications that block a source (0: never); a success
    /// starts the count again.
    pub max_auth_failures: u32,
}

impl Default for SourceLimitConfig {
    fn default() -> Self {
        SourceLimitConfig {
            max_requests: 0,
            window: Duration::from_secs(2),
            block: Duration::from_secs(60),
            max_sources: 65_536,
            include_access: false,
            max_auth_failures: 5,
        }
    }
}

/// What to do with a message from a source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Handle it.
    Pass,
    /// The source went past the limit with this message: it is blocked from now on.
    Blocked,
    /// The source is blocked: drop the message unread.
    Dropped,
}

#[derive(Debug)]
struct Entry {
    window_start: Instant,
    count: u32,
    blocked_until: Option<Instant>,
    /// Failed authentications since the last success or block.
    failures: u32,
    /// The source proved a trunk's credentials: not counted until then.
    vouched_until: Option<Instant>,
}

impl Entry {
    fn new(now: Instant) -> Entry {
        Entry {
            window_start: now,
            count: 0,
            blocked_until: None,
            failures: 0,
            vouched_until: None,
        }
    }
}

/// The per-source counts.
#[derive(Debug)]
pub struct SourceLimit {
    cfg: SourceLimitConfig,
    table: Mutex<HashMap<IpAddr, Entry>>,
}

impl SourceLimit {
    pub fn new(cfg: SourceLimitConfig) -> SourceLimit {
        SourceLimit {
            cfg,
            table: Mutex::new(HashMap::new()),
        }
    }

    pub fn config(&self) -> &SourceLimitConfig {
        &self.cfg
    }

    /// Counts one request from `ip` at `now`.
    pub fn check(&self, ip: IpAddr, now: Instant) -> Verdict {
        if self.cfg.max_requests == 0 && self.cfg.max_auth_failures == 0 {
            return Verdict::Pass;
        }
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        if self.cfg.max_requests == 0 {
            // Only blocks for failed authentications: nothing to count.
            return match table.get(&ip).and_then(|e| e.blocked_until) {
                Some(until) if until > now => Verdict::Dropped,
                _ => Verdict::Pass,
            };
        }
        let Some(entry) = self.entry(&mut table, ip, now) else {
            return Verdict::Pass;
        };
        if entry.vouched_until.is_some_and(|u| u > now) {
            return Verdict::Pass;
        }
        if let Some(until) = entry.blocked_until {
            if until > now {
                return Verdict::Dropped;
            }
            // The block is over: count afresh.
            entry.blocked_until = None;
            entry.window_start = now;
            entry.count = 0;
        }
        if now.saturating_duration_since(entry.window_start) >= self.cfg.window {
            entry.window_start = now;
            entry.count = 0;
        }
        entry.count += 1;
        if entry.count > self.cfg.max_requests {
            entry.blocked_until = Some(now + self.cfg.block);
            return Verdict::Blocked;
        }
        Verdict::Pass
    }

    /// A failed digest authentication from `ip`; true when it blocks the source.
    pub fn auth_failed(&self, ip: IpAddr, now: Instant) -> bool {
        if self.cfg.max_auth_failures == 0 {
            return false;
        }
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let Some(entry) = self.entry(&mut table, ip, now) else {
            return false;
        };
        entry.vouched_until = None;
        entry.failures += 1;
        if entry.failures >= self.cfg.max_auth_failures {
            entry.failures = 0;
            entry.blocked_until = Some(now + self.cfg.block);
            return true;
        }
        false
    }

    /// `ip` proved a trunk's credentials: its messages are not counted for `trust`
    /// (the trunk's own limits bound it), and its failures are forgotten.
    pub fn vouch(&self, ip: IpAddr, now: Instant, trust: Duration) {
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let Some(entry) = self.entry(&mut table, ip, now) else {
            return;
        };
        entry.failures = 0;
        entry.vouched_until = Some(now + trust);
    }

    /// `ip`'s entry, made if new. When the table is full, the addresses idle for a whole
    /// window make room; `None` if none is (the new address goes uncounted).
    fn entry<'t>(
        &self,
        table: &'t mut HashMap<IpAddr, Entry>,
        ip: IpAddr,
        now: Instant,
    ) -> Option<&'t mut Entry> {
        if !table.contains_key(&ip) && table.len() >= self.cfg.max_sources {
            let window = self.cfg.window;
            table.retain(|_, e| {
                e.blocked_until.is_some_and(|u| u > now)
                    || e.vouched_until.is_some_and(|u| u > now)
                    || now.saturating_duration_since(e.window_start) < window
            });
            if table.len() >= self.cfg.max_sources {
                return None;
            }
        }
        Some(table.entry(ip).or_insert_with(|| Entry::new(now)))
    }

    /// Sources blocked at `now`.
    pub fn blocked(&self, now: Instant) -> usize {
        let table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        table
            .values()
            .filter(|e| e.blocked_until.is_some_and(|u| u > now))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(max_requests: u32, max_sources: usize) -> SourceLimit {
        SourceLimit::new(SourceLimitConfig {
            max_requests,
            window: Duration::from_secs(2),
            block: Duration::from_secs(10),
            max_sources,
            include_access: false,
            max_auth_failures: 3,
        })
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, last])
    }

    #[test]
    fn a_source_past_the_limit_is_blocked_for_the_block_time_and_others_are_not() {
        let l = limit(3, 100);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(l.check(ip(1), t0), Verdict::Pass);
        }
        assert_eq!(l.check(ip(1), t0), Verdict::Blocked);
        assert_eq!(
            l.check(ip(1), t0 + Duration::from_secs(5)),
            Verdict::Dropped
        );
        assert_eq!(l.check(ip(2), t0), Verdict::Pass);
        assert_eq!(l.blocked(t0), 1);
        // After the block it starts again from nothing.
        let after = t0 + Duration::from_secs(11);
        assert_eq!(l.check(ip(1), after), Verdict::Pass);
        assert_eq!(l.blocked(after), 0);
    }

    #[test]
    fn a_steady_source_under_the_limit_is_never_blocked() {
        let l = limit(3, 100);
        let t0 = Instant::now();
        for i in 0..100u64 {
            // One request per second: one or two per 2 s window.
            let v = l.check(ip(1), t0 + Duration::from_secs(i));
            assert_eq!(v, Verdict::Pass, "request {i}");
        }
    }

    #[test]
    fn the_table_never_grows_past_its_bound_and_keeps_blocked_sources() {
        let l = limit(1, 4);
        let t0 = Instant::now();
        assert_eq!(l.check(ip(1), t0), Verdict::Pass);
        assert_eq!(l.check(ip(1), t0), Verdict::Blocked);
        for last in 2..=4 {
            assert_eq!(l.check(ip(last), t0), Verdict::Pass);
        }
        // Full: a new source is not counted.
        assert_eq!(l.check(ip(9), t0), Verdict::Pass);
        assert_eq!(l.check(ip(9), t0), Verdict::Pass);
        // A window later the idle ones make room; the blocked one stays blocked.
        let later = t0 + Duration::from_secs(3);
        assert_eq!(l.check(ip(9), later), Verdict::Pass);
        assert_eq!(l.check(ip(1), later), Verdict::Dropped);
        assert!(l.table.lock().unwrap().len() <= 4);
    }

    #[test]
    fn repeated_failed_authentications_block_and_a_success_vouches() {
        let l = limit(100, 100);
        let t0 = Instant::now();
        assert!(!l.auth_failed(ip(1), t0));
        assert!(!l.auth_failed(ip(1), t0));
        assert!(l.auth_failed(ip(1), t0), "the third failure blocks");
        assert_eq!(l.check(ip(1), t0), Verdict::Dropped);
        // A source that proves its credentials is not counted for a while.
        let strict = limit(2, 100);
        strict.vouch(ip(2), t0, Duration::from_secs(300));
        assert!((0..50).all(|_| strict.check(ip(2), t0) == Verdict::Pass));
        assert_eq!(
            strict.check(ip(2), t0 + Duration::from_secs(301)),
            Verdict::Pass
        );
    }

    #[test]
    fn switched_off_passes_everything() {
        let l = limit(0, 4);
        let t0 = Instant::now();
        assert!((0..1000).all(|_| l.check(ip(1), t0) == Verdict::Pass));
    }
}
