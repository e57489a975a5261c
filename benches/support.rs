//! Shared helpers for Tidewall's criterion benches. Each bench file measures one pattern
//! against its peers in the same run; `docs/BENCHMARKS.md` records the ratios and commands.

use std::time::Duration;

use criterion::Criterion;

/// Criterion settings sized for a 2-vCPU VM: short warm-up, enough samples for a stable median.
pub fn criterion() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30)
        .noise_threshold(0.03)
}
