//! Even-port pair allocator over the configured range, with a resting queue so a port
//! freed by one call is not handed to the next until stale packets have stopped
//! arriving (a late RTP packet of the old call must never reach the new one).
//!
//! Sans-IO: `now` is passed in; the caller binds the sockets.

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

use crate::MediaError;

/// Hands out RTP ports (even; RTCP is RTP + 1) from `[min, max]`.
#[derive(Debug)]
pub struct PortAllocator {
    free: VecDeque<u16>,
    resting: VecDeque<(u16, Instant)>,
    in_use: HashSet<u16>,
    rest: Duration,
}

impl PortAllocator {
    /// Every even port `p` with `min <= p` and `p + 1 <= max` is a candidate.
    pub fn new(min: u16, max: u16, rest: Duration) -> Self {
        let start = min.saturating_add(min % 2);
        let mut free = VecDeque::new();
        let mut p = u32::from(start);
        while p < u32::from(max) {
            // p + 1 <= max <= u16::MAX, so p fits.
            free.push_back(p as u16);
            p += 2;
        }
        Self {
            free,
            resting: VecDeque::new(),
            in_use: HashSet::new(),
            rest,
        }
    }

    /// Total number of pairs the range holds.
    pub fn capacity(&self) -> usize {
        self.free.len() + self.resting.len() + self.in_use.len()
    }

    fn wake_rested(&mut self, now: Instant) {
        while let Some(&(port, since)) = self.resting.front() {
            if now.saturating_duration_since(since) < self.rest {
                break;
            }
            self.resting.pop_front();
            self.free.push_back(port);
        }
    }

    /// Takes the least recently used free pair; its RTP port is returned.
    pub fn alloc(&mut self, now: Instant) -> Result<u16, MediaError> {
        self.wake_rested(now);
        let port = self.free.pop_front().ok_or(MediaError::NoPorts)?;
        self.in_use.insert(port);
        Ok(port)
    }

    /// Returns a pair; it rests for the configured time before it can be handed out again.
    /// Freeing a port that is not in use is ignored (double free after a failed bind).
    pub fn free(&mut self, port: u16, now: Instant) {
        if self.in_use.remove(&port) {
            self.resting.push_back((port, now));
        }
    }

    /// Pairs currently allocated.
    pub fn in_use(&self) -> usize {
        self.in_use.len()
    }

    /// Pairs freed but still resting (as of the last `alloc`/`resting_at`).
    pub fn resting_at(&mut self, now: Instant) -> usize {
        self.wake_rested(now);
        self.resting.len()
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
    fn freed_ports_rest_before_reuse() {
        let t0 = Instant::now();
        let rest = Duration::from_secs(30);
        let mut a = PortAllocator::new(40000, 40003, rest);
        let p = a.alloc(t0).unwrap();
        let q = a.alloc(t0).unwrap();
        a.free(p, t0);
        assert_eq!(a.in_use(), 1);
        assert_eq!(a.resting_at(t0), 1);
        assert!(matches!(
            a.alloc(t0 + Duration::from_secs(29)),
            Err(MediaError::NoPorts)
        ));
        assert_eq!(a.alloc(t0 + rest).unwrap(), p);
        a.free(q, t0 + rest);
        a.free(q, t0 + rest); // double free ignored
        assert_eq!(a.resting_at(t0 + rest), 1);
    }

    #[test]
    fn reuse_prefers_never_used_ports() {
        let t0 = Instant::now();
        let mut a = PortAllocator::new(40000, 40005, Duration::ZERO);
        let p = a.alloc(t0).unwrap();
        a.free(p, t0);
        assert_ne!(a.alloc(t0).unwrap(), p);
    }
}
