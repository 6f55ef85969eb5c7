//! Per-receiver counters and an exact 1 µs latency histogram (merged at the end).

/// Latencies up to this many µs are kept in 1 µs buckets; above, only counted and max.
const HIST_US: usize = 100_000;

pub struct Stats {
    pub received: u64,
    pub primed: u64,
    pub misrouted: u64,
    pub asymmetric: u64,
    pub reordered: u64,
    pub corrupt: u64,
    pub max_ns: u64,
    hist: Vec<u64>,
    overflow: u64,
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
            max_ns: 0,
            hist: vec![0; HIST_US],
            overflow: 0,
        }
    }

    pub fn record_latency(&mut self, ns: u64) {
        self.received += 1;
        self.max_ns = self.max_ns.max(ns);
        let us = (ns / 1000) as usize;
        match self.hist.get_mut(us) {
            Some(b) => *b += 1,
            None => self.overflow += 1,
        }
    }

    pub fn merge(&mut self, o: &Stats) {
        self.received += o.received;
        self.primed += o.primed;
        self.misrouted += o.misrouted;
        self.asymmetric += o.asymmetric;
        self.reordered += o.reordered;
        self.corrupt += o.corrupt;
        self.max_ns = self.max_ns.max(o.max_ns);
        for (a, b) in self.hist.iter_mut().zip(o.hist.iter()) {
            *a += *b;
        }
        self.overflow += o.overflow;
    }

    /// Nearest-rank percentile in µs (upper edge of the 1 µs bucket); `None` with no samples.
    pub fn percentile_us(&self, p: f64) -> Option<u64> {
        let total = self.received;
        if total == 0 {
            return None;
        }
        let rank = ((p / 100.0) * total as f64).ceil().max(1.0) as u64;
        let mut seen = 0u64;
        for (us, &c) in self.hist.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(us as u64 + 1);
            }
        }
        Some(self.max_ns.div_ceil(1000)) // in the overflow
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_nearest_rank() {
        let mut s = Stats::new();
        for us in 0..100u64 {
            s.record_latency(us * 1000 + 500);
        }
        assert_eq!(s.percentile_us(50.0), Some(50));
        assert_eq!(s.percentile_us(99.0), Some(99));
        assert_eq!(s.percentile_us(100.0), Some(100));
        s.record_latency(5_000_000_000);
        assert_eq!(s.percentile_us(100.0), Some(5_000_000));
    }
}
