//! A streaming latency quantile: log-linear buckets of atomic counters that decay by halving.

use std::time::Duration;

use tidewall_core::quantile::{BUCKETS, bucket_of, quantile};

use crate::sync::{AtomicU64, Ordering::Relaxed};

/// Halve every counter once this many samples are held, so old latencies fade.
const DECAY_AT: u64 = 4096;
/// Recompute the cached quantile every this many samples.
const REFRESH_EVERY: u64 = 64;

pub(super) struct LatencyEstimator {
    counts: Box<[AtomicU64]>,
    total: AtomicU64,
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
            recorded: AtomicU64::new(0),
            cached: AtomicU64::new(u64::MAX),
            quantile,
            min_samples,
        }
    }

    /// Records one latency. Lock-free; the decay and refresh are approximate under races,
    /// which only blurs an estimate that is approximate (within 12.5 %) by design.
    pub(super) fn record(&self, latency: Duration) {
        let nanos = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        self.counts[bucket_of(nanos)].fetch_add(1, Relaxed);
        let total = self.total.fetch_add(1, Relaxed) + 1;
        if total >= DECAY_AT {
            let mut kept = 0;
            for count in self.counts.iter() {
                let value = count.load(Relaxed);
                count.fetch_sub(value / 2, Relaxed);
                kept += value - value / 2;
            }
            self.total.store(kept, Relaxed);
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
