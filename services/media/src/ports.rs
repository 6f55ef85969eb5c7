//! Even-port pair allocator over the configured range. A freed pair goes to the back of the
//! free queue and pairs are handed out from the front, least recently freed first: every
//! pair rests as long as the range allows before it serves another call, and a busy range
//! never blocks on rest — when the queue holds only recently freed pairs, the one that rested
//! longest is taken (and counted as reused early). Late packets of the old call that still
//! reach a reused port are kept out of the new one by latching: they do not come from where
//! the new parties signalled.
//!
//! Sans-IO: `now` is passed in; the caller binds the sockets.

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

use crate::MediaError;

/// Hands out RTP ports (even; RTCP is RTP + 1) from `[min, max]`.
#[derive(Debug)]
pub struct PortAllocator {
    /// Free pairs with when they were freed (`None`: never used), least recently freed
    /// first.
    free: VecDeque<(u16, Option<Instant>)>,
    /// Keyed by our own port numbers, so the fast hasher is safe: a peer cannot choose
    /// the keys.
    in_use: HashSet<u16, foldhash::fast::RandomState>,
    rest: Duration,
    reused_early: u64,
}

impl PortAllocator {
    /// Every even port `p` with `min <= p` and `p + 1 <= max` is a candidate; a pair should
    /// rest `rest` after it was freed, and does whenever the range allows.
    pub fn new(min: u16, max: u16, rest: Duration) -> Self {
        let start = min.saturating_add(min % 2);
        let mut free = VecDeque::new();
        let mut p = u32::from(start);
        while p < u32::from(max) {
            // p + 1 <= max <= u16::MAX, so p fits.
            free.push_back((p as u16, None));
            p += 2;
        }
        Self {
            free,
            in_use: HashSet::default(),
            rest,
            reused_early: 0,
        }
    }

    /// Total number of pairs the range holds.
    pub fn capacity(&self) -> usize {
        self.free.len() + self.in_use.len()
    }

    /// Takes the pair freed longest ago (a never-used one first); its RTP port is
    /// returned. Fails only when every pair is in use.
    pub fn alloc(&mut self, now: Instant) -> Result<u16, MediaError> {
        let (port, freed) = self.free.pop_front().ok_or(MediaError::NoPorts)?;
        if freed.is_some_and(|t| now.saturating_duration_since(t) < self.rest) {
            self.reused_early += 1;
        }
        self.in_use.insert(port);
        Ok(port)
    }

    /// The pair [`PortAllocator::alloc`] would take next, if any.
    pub fn next(&self) -> Option<u16> {
        self.free.front().map(|&(port, _)| port)
    }

    /// Returns a pair to the back of the queue. Freeing a port that is not in use is
    /// ignored (double free after a failed bind).
    pub fn free(&mut self, port: u16, now: Instant) {
        if self.in_use.remove(&port) {
            self.free.push_back((port, Some(now)));
        }
    }

    /// Pairs currently allocated.
    pub fn in_use(&self) -> usize {
        self.in_use.len()
    }

    /// Free pairs freed less than the rest period before `now`. The queue is in freeing
    /// order (never-used pairs first), so this is a binary search: it runs on every
    /// delete's metrics refresh, with thousands of pairs resting on a busy node.
    pub fn resting_at(&self, now: Instant) -> usize {
        let rested = |(_, freed): &(u16, Option<Instant>)| {
            freed.is_none_or(|t| now.saturating_duration_since(t) >= self.rest)
        };
        self.free.len() - self.free.partition_point(rested)
    }

    /// Pairs handed out before they had rested the rest period, since start: a range too
    /// small for the call rate shows here first.
    pub fn reused_early(&self) -> u64 {
        self.reused_early
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hands_out_even_ports_within_range() {
        let now = Instant::now();
        let mut a = PortAllocator::new(30001, 30006, Duration::from_secs(1));
        assert_eq!(a.capacity(), 2);
        assert_eq!(a.alloc(now).unwrap(), 30002);
        assert_eq!(a.alloc(now).unwrap(), 30004);
        assert!(matches!(a.alloc(now), Err(MediaError::NoPorts)));
    }

    #[test]
    fn odd_top_is_excluded_and_u16_max_is_safe() {
        let a = PortAllocator::new(65530, 65535, Duration::ZERO);
        assert_eq!(a.capacity(), 3);
        let a = PortAllocator::new(10, 10, Duration::ZERO);
        assert_eq!(a.capacity(), 0);
    }

    #[test]
    fn least_recently_freed_first_and_never_blocked_by_rest() {
        let t0 = Instant::now();
        let rest = Duration::from_secs(30);
        let mut a = PortAllocator::new(40000, 40005, rest);
        let (p, q, r) = (
            a.alloc(t0).unwrap(),
            a.alloc(t0).unwrap(),
            a.alloc(t0).unwrap(),
        );
        a.free(q, t0);
        a.free(p, t0 + Duration::from_secs(1));
        a.free(p, t0 + Duration::from_secs(1)); // double free ignored
        assert_eq!(a.in_use(), 1);
        assert_eq!(a.resting_at(t0 + Duration::from_secs(2)), 2);
        // Nothing has rested 30 s, yet nothing blocks: the longest-rested comes first.
        let t = t0 + Duration::from_secs(5);
        assert_eq!(a.alloc(t).unwrap(), q);
        assert_eq!(a.alloc(t).unwrap(), p);
        assert_eq!(a.reused_early(), 2);
        assert!(matches!(a.alloc(t), Err(MediaError::NoPorts)), "all in use");
        a.free(r, t);
        assert_eq!(a.resting_at(t + rest), 0, "rested");
        assert_eq!(a.alloc(t + rest).unwrap(), r);
        assert_eq!(a.reused_early(), 2, "a rested pair is not reused early");
    }

    #[test]
    fn reuse_prefers_never_used_ports() {
        let t0 = Instant::now();
        let mut a = PortAllocator::new(40000, 40005, Duration::ZERO);
        let p = a.alloc(t0).unwrap();
        a.free(p, t0);
        assert_ne!(a.alloc(t0).unwrap(), p);
    }

    /// The example node's load: 500 short calls/s, two pairs each, for 10 s, on the default
    /// range. With a hard 30 s rest the range ran dry after 2 500 calls; reused least
    /// recently freed first, every call gets ports.
    #[test]
    fn a_high_call_rate_never_runs_dry() {
        let t0 = Instant::now();
        let mut a = PortAllocator::new(30000, 39999, Duration::from_secs(30));
        let mut live: VecDeque<(Instant, [u16; 2])> = VecDeque::new();
        for i in 0..5000u64 {
            let now = t0 + Duration::from_millis(i * 2);
            // Calls last 1 s.
            while live.front().is_some_and(|(end, _)| *end <= now) {
                if let Some((end, pair)) = live.pop_front() {
                    pair.into_iter().for_each(|p| a.free(p, end));
                }
            }
            let pair = [a.alloc(now).unwrap(), a.alloc(now).unwrap()];
            live.push_back((now + Duration::from_secs(1), pair));
        }
        assert!(
            a.reused_early() > 0,
            "the range is too small for 30 s of rest"
        );
    }
}
