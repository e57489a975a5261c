//! Medians with their spread, from raw samples that are kept.

use serde::{Deserialize, Serialize};

/// A set of samples and what the report shows of them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct Summary {
    pub(crate) median: f64,
    pub(crate) min: f64,
    pub(crate) max: f64,
    /// Every sample, in measurement order (the raw data).
    pub(crate) samples: Vec<f64>,
}

impl Summary {
    /// Summarizes `samples` (non-finite ones are dropped; none at all gives NaN figures).
    pub(crate) fn of(samples: Vec<f64>) -> Self {
        let mut sorted: Vec<f64> = samples.iter().copied().filter(|s| s.is_finite()).collect();
        sorted.sort_by(f64::total_cmp);
        let median = match sorted.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => sorted[n / 2],
            n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
        };
        Self {
            median,
            min: sorted.first().copied().unwrap_or(f64::NAN),
            max: sorted.last().copied().unwrap_or(f64::NAN),
            samples,
        }
    }

    /// The spread as a fraction of the median: (max − min) / median.
    pub(crate) fn spread(&self) -> f64 {
        if self.max <= self.min {
            // Identical samples (all zero, say): no spread, not 0/0.
            return 0.0;
        }
        (self.max - self.min) / self.median
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_min_max_and_spread() {
        let odd = Summary::of(vec![3.0, 1.0, 2.0]);
        assert_eq!(
            (odd.median.to_bits(), odd.min.to_bits(), odd.max.to_bits()),
            (2.0f64.to_bits(), 1.0f64.to_bits(), 3.0f64.to_bits())
        );
        assert_eq!(odd.samples, [3.0, 1.0, 2.0], "raw samples kept in order");
        let even = Summary::of(vec![4.0, 1.0, 2.0, 3.0]);
        assert_eq!(even.median.to_bits(), 2.5f64.to_bits());
        assert!((even.spread() - 1.2).abs() < 1e-12);
        let with_nan = Summary::of(vec![f64::NAN, 5.0]);
        assert_eq!(with_nan.median.to_bits(), 5.0f64.to_bits());
        assert!(Summary::of(Vec::new()).median.is_nan());
        assert_eq!(
            Summary::of(vec![0.0, 0.0]).spread().to_bits(),
            0.0f64.to_bits()
        );
    }
}
