//! Per-receiver counters and exact 1 µs latency histograms (merged at the end).

/// Latencies up to this many µs are kept in 1 µs buckets; above, only counted and max.
const HIST_US: usize = 100_000;

/// An exact histogram of latencies in 1 µs buckets up to `HIST_US`.
pub struct Hist {
    pub samples: u64,
    pub max_ns: u64,
    buckets: Vec<u64>,
    overflow: u64,
}

impl Hist {
    pub fn new() -> Self {
        Self {
            samples: 0,
            max_ns: 0,
            buckets: vec![0; HIST_US],
            overflow: 0,
        }
    }

    pub fn record(&mut self, ns: u64) {
        self.samples += 1;
        self.max_ns = self.max_ns.max(ns);
        match self.buckets.get_mut((ns / 1000) as usize) {
            Some(b) => *b += 1,
            None => self.overflow += 1,
        }
    }

    pub fn merge(&mut self, o: &Hist) {
        self.samples += o.samples;
        self.max_ns = self.max_ns.max(o.max_ns);
        for (a, b) in self.buckets.iter_mut().zip(o.buckets.iter()) {
            *a += *b;
        }
        self.overflow += o.overflow;
    }

    /// Nearest-rank percentile in µs (upper edge of the 1 µs bucket); `None` with no samples.
    pub fn percentile_us(&self, p: f64) -> Option<u64> {
        if self.samples == 0 {
            return None;
        }
        let rank = ((p / 100.0) * self.samples as f64).ceil().max(1.0) as u64;
        let mut seen = 0u64;
        for (us, &c) in self.buckets.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(us as u64 + 1);
            }
        }
        Some(self.max_ns.div_ceil(1000)) // in the overflow
    }

    /// p50/p90/p99/p99.9/max as JSON.
    pub fn summary(&self) -> serde_json::Value {
        let p = |q| self.percentile_us(q);
        serde_json::json!({
            "samples": self.samples,
            "p50": p(50.0), "p90": p(90.0), "p99": p(99.0), "p999": p(99.9),
            "max": (self.samples > 0).then(|| self.max_ns.div_ceil(1000)),
        })
    }
}

pub struct Stats {
    pub received: u64,
    pub primed: u64,
    pub misrouted: u64,
    pub asymmetric: u64,
    pub reordered: u64,
    pub corrupt: u64,
    /// Send → the receiver thread holding the packet (includes the receiver's own wake-up).
    pub user: Hist,
    /// Send → the kernel queuing the packet on the receiving socket (SO_TIMESTAMPNS): what
    /// the path in between added, without the receiving thread's scheduling.
    pub arrival: Hist,
}

impl Stats {
    pub fn new() -> Self {
        Self {
            received: 0,
            primed: 0,
            misrouted: 0,
            asymmetric: 0,
            reordered: 0,
            corrupt: 0,
            user: Hist::new(),
            arrival: Hist::new(),
        }
    }

    /// One measured packet: its user-space latency and, when the kernel stamped it, the
    /// latency to its arrival on the socket.
    pub fn record_latency(&mut self, user_ns: u64, arrival_ns: Option<u64>) {
        self.received += 1;
        self.user.record(user_ns);
        if let Some(a) = arrival_ns {
            self.arrival.record(a);
        }
    }

    pub fn merge(&mut self, o: &Stats) {
        self.received += o.received;
        self.primed += o.primed;
        self.misrouted += o.misrouted;
        self.asymmetric += o.asymmetric;
        self.reordered += o.reordered;
        self.corrupt += o.corrupt;
        self.user.merge(&o.user);
        self.arrival.merge(&o.arrival);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_nearest_rank() {
        let mut s = Hist::new();
        for us in 0..100u64 {
            s.record(us * 1000 + 500);
        }
        assert_eq!(s.percentile_us(50.0), Some(50));
        assert_eq!(s.percentile_us(99.0), Some(99));
        assert_eq!(s.percentile_us(100.0), Some(100));
        s.record(5_000_000_000);
        assert_eq!(s.percentile_us(100.0), Some(5_000_000));
    }

    #[test]
    fn arrival_only_when_stamped() {
        let mut s = Stats::new();
        s.record_latency(10_000, Some(4_000));
        s.record_latency(20_000, None);
        assert_eq!(s.received, 2);
        assert_eq!(s.user.samples, 2);
        assert_eq!(s.arrival.samples, 1);
        assert_eq!(s.arrival.percentile_us(99.0), Some(5));
        let mut t = Stats::new();
        t.merge(&s);
        assert_eq!(t.arrival.samples, 1);
        assert_eq!(t.user.max_ns, 20_000);
    }
}
