//! A per-second budget for log lines about what peers send.

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::time::Instant;

/// Caps how many log lines per second a noisy source of events may write.
///
/// Bad input is logged so an operator can see who sends it, but a flood of it must not turn
/// into a flood of log lines (disk, log shipper, CPU). Every component that logs about peer
/// input shares this one type. The whole state is one atomic word (second and count), so
/// [`LogLimiter::allow`] is a clock read and a load when the budget is spent, and a
/// compare-and-swap when it is not; no lock. The clock is tokio's, so paused-time tests see
/// the budget refill.
#[derive(Debug)]
pub struct LogLimiter {
    /// Lines allowed per second.
    per_second: u32,
    /// Time zero for the window numbers.
    base: Instant,
    /// Upper 32 bits: the current window (seconds since `base`); lower 32: lines in it.
    state: AtomicU64,
    /// Lines refused since the last [`LogLimiter::take_suppressed`].
    suppressed: AtomicU64,
}

impl LogLimiter {
    /// The budget the transport and the dispatcher use: enough to see what is going on,
    /// too few to matter under a flood.
    pub const DEFAULT_PER_SECOND: u32 = 20;

    /// A limiter allowing `per_second` lines in each second.
    pub fn new(per_second: u32) -> Self {
        LogLimiter {
            per_second,
            base: Instant::now(),
            state: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Whether one more line may be written now; counts it if so, and counts it as
    /// suppressed if not.
    pub fn allow(&self) -> bool {
        if self.per_second == 0 {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        // 2^32 seconds is 136 years; the truncation cannot wrap in practice.
        let window = (self.base.elapsed().as_secs() & u64::from(u32::MAX)) << 32;
        let mut current = self.state.load(Ordering::Relaxed);
        loop {
            let next = if current & !u64::from(u32::MAX) != window {
                window | 1
            } else if (current & u64::from(u32::MAX)) < u64::from(self.per_second) {
                current + 1
            } else {
                self.suppressed.fetch_add(1, Ordering::Relaxed);
                return false;
            };
            match self.state.compare_exchange_weak(
                current,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(actual) => current = actual,
            }
        }
    }

    /// Lines refused since the last call, so the next line written can say how many were
    /// left out.
    pub fn take_suppressed(&self) -> u64 {
        self.suppressed.swap(0, Ordering::Relaxed)
    }
}

impl Default for LogLimiter {
    fn default() -> Self {
        LogLimiter::new(Self::DEFAULT_PER_SECOND)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn budget_per_second_refills_and_counts_what_it_refused() {
        let limiter = LogLimiter::new(3);
        let allowed = (0..10).filter(|_| limiter.allow()).count();
        assert_eq!(allowed, 3);
        assert_eq!(limiter.take_suppressed(), 7);
        assert_eq!(limiter.take_suppressed(), 0);

        tokio::time::advance(Duration::from_millis(999)).await;
        assert!(!limiter.allow(), "still the same second");
        tokio::time::advance(Duration::from_millis(1)).await;
        let allowed = (0..10).filter(|_| limiter.allow()).count();
        assert_eq!(allowed, 3, "a new second has a new budget");
        assert_eq!(limiter.take_suppressed(), 8);
    }

    #[tokio::test(start_paused = true)]
    async fn zero_budget_allows_nothing() {
        let limiter = LogLimiter::new(0);
        assert!(!limiter.allow());
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(!limiter.allow());
    }
}
