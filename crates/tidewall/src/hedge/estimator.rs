//! A streaming latency quantile: log-linear buckets of atomic counters that decay by halving.

use std::time::Duration;

use tidewall_core::quantile::{BUCKETS, bucket_of, quantile};

use crate::sync::{
    AtomicBool, AtomicU64,
    Ordering::{Acquire, Relaxed, Release},
};

/// Halve every counter once this many samples are held, so old latencies fade.
const DECAY_AT: u64 = 4096;
/// Recompute the cached quantile every this many samples.
const REFRESH_EVERY: u64 = 64;

pub(super) struct LatencyEstimator {
    counts: Box<[AtomicU64]>,
    total: AtomicU64,
    decaying: AtomicBool,
    recorded: AtomicU64,
    /// The last computed quantile in nanoseconds (`u64::MAX`: not enough samples yet).
    cached: AtomicU64,
    quantile: f64,
    min_samples: u64,
}

impl LatencyEstimator {
    pub(super) fn new(quantile: f64, min_samples: u64) -> Self {
        Self {
            counts: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            total: AtomicU64::new(0),
            decaying: AtomicBool::new(false),
            recorded: AtomicU64::new(0),
            cached: AtomicU64::new(u64::MAX),
            quantile,
            min_samples,
        }
    }

    /// Whether it estimates this quantile once this many latencies were recorded.
    pub(super) fn measures(&self, quantile: f64, min_samples: u64) -> bool {
        self.quantile.to_bits() == quantile.to_bits() && self.min_samples == min_samples
    }

    /// Records one latency. Lock-free. One recorder at a time decays the histogram (halving
    /// each counter with a compare-and-swap, so concurrent increments are kept and nothing
    /// underflows); the refresh may race, which only blurs an estimate that is approximate
    /// (within 12.5 %) by design.
    pub(super) fn record(&self, latency: Duration) {
        let nanos = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        self.counts[bucket_of(nanos)].fetch_add(1, Relaxed);
        let total = self.total.fetch_add(1, Relaxed) + 1;
        if total >= DECAY_AT
            && self
                .decaying
                .compare_exchange(false, true, Acquire, Relaxed)
                .is_ok()
        {
            // Rounded down: a bucket of one latency empties, so no latency, however rare,
            // holds a high quantile for good.
            let mut kept = 0;
            for count in self.counts.iter() {
                let before = count
                    .fetch_update(Relaxed, Relaxed, |v| Some(v / 2))
                    .unwrap_or(0);
                kept += before / 2;
            }
            self.total.store(kept, Relaxed);
            self.decaying.store(false, Release);
        }
        let recorded = self.recorded.fetch_add(1, Relaxed) + 1;
        if recorded >= self.min_samples
            && (recorded.is_multiple_of(REFRESH_EVERY) || recorded == self.min_samples)
        {
            let total = self.counts.iter().map(|c| c.load(Relaxed)).sum();
            if let Some(q) = quantile(|i| self.counts[i].load(Relaxed), total, self.quantile) {
                self.cached.store(q, Relaxed);
            }
        }
    }

    /// The estimate, once `min_samples` were recorded.
    pub(super) fn estimate(&self) -> Option<Duration> {
        match self.cached.load(Relaxed) {
            u64::MAX => None,
            nanos => Some(Duration::from_nanos(nanos)),
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::time::Duration;

    use super::LatencyEstimator;

    /// Many recorders crossing the decay threshold at once: no counter wraps, and the estimate
    /// still follows the samples.
    #[test]
    fn concurrent_decay_never_underflows() {
        let estimator = LatencyEstimator::new(0.5, 10);
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let estimator = &estimator;
                s.spawn(move || {
                    for i in 0..20_000u64 {
                        estimator.record(Duration::from_micros(1_000 + (i + t) % 10));
                    }
                });
            }
        });
        let held: u64 = estimator
            .counts
            .iter()
            .map(|c| c.load(std::sync::atomic::Ordering::Relaxed))
            .sum();
        assert!(held > 0 && held < 80_000, "decayed, never wrapped: {held}");
        let median = estimator.estimate().unwrap();
        assert!(
            median >= Duration::from_micros(1_000) && median <= Duration::from_micros(1_150),
            "{median:?}"
        );
    }
}
