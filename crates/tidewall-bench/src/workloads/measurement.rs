//! What a workload reports: [`Measurement`], and how timed repetitions (in one process) and
//! rounds (over several processes) become one.

use serde::{Deserialize, Serialize};

use crate::stats::Summary;

/// One workload's figures on one runtime.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct Measurement {
    /// The headline figure's unit, e.g. "ns/task".
    pub(crate) unit: String,
    /// The headline figure over the repetitions.
    pub(crate) summary: Summary,
    /// Further figures (e.g. resident bytes per task next to heap bytes); over several
    /// rounds, each one's median over them.
    pub(crate) extra: Vec<(String, f64)>,
    /// Every round's extra figures (raw data), once there is more than one round.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) extra_rounds: Vec<(String, Vec<f64>)>,
}

impl Measurement {
    /// Sets (or adds) the extra figure `name`.
    pub(crate) fn set_extra(&mut self, name: &str, value: f64) {
        match self.extra.iter_mut().find(|(n, _)| n == name) {
            Some((_, v)) => *v = value,
            None => self.extra.push((name.to_owned(), value)),
        }
    }

    /// Joins another round's figures: the samples are pooled, and each extra figure becomes
    /// the median over the rounds (every round's value kept in `extra_rounds`).
    pub(crate) fn absorb(&mut self, other: Self) {
        let mut samples = std::mem::take(&mut self.summary.samples);
        samples.extend(other.summary.samples);
        self.summary = Summary::of(samples);
        if self.extra_rounds.is_empty() {
            self.extra_rounds = self
                .extra
                .iter()
                .map(|(name, value)| (name.clone(), vec![*value]))
                .collect();
        }
        for (name, value) in other.extra {
            match self.extra_rounds.iter_mut().find(|(n, _)| *n == name) {
                Some((_, values)) => values.push(value),
                None => self.extra_rounds.push((name, vec![value])),
            }
        }
        self.extra = self
            .extra_rounds
            .iter()
            .map(|(name, values)| (name.clone(), Summary::of(values.clone()).median))
            .collect();
    }
}

/// How many timed repetitions (after one warm-up).
pub(super) fn repetitions(quick: bool) -> usize {
    if quick { 5 } else { 10 }
}

/// A warm-up, then `reps` timed repetitions of `once` (which returns its per-op figure).
pub(super) fn timed(
    reps: usize,
    unit: &str,
    mut once: impl FnMut() -> anyhow::Result<f64>,
) -> anyhow::Result<Measurement> {
    once()?;
    let samples = (0..reps)
        .map(|_| once())
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Measurement {
        unit: unit.to_owned(),
        summary: Summary::of(samples),
        extra: Vec::new(),
        extra_rounds: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_pool_their_samples_and_take_the_median_of_each_extra() {
        let round = |samples: Vec<f64>, p99: f64| Measurement {
            unit: "µs".to_owned(),
            summary: Summary::of(samples),
            extra: vec![("p99".to_owned(), p99)],
            extra_rounds: Vec::new(),
        };
        let mut first = round(vec![1.0, 2.0], 10.0);
        first.absorb(round(vec![3.0], 30.0));
        first.absorb(round(vec![4.0, 5.0], 20.0));
        assert_eq!(first.summary.samples, [1.0, 2.0, 3.0, 4.0, 5.0]);
        assert_eq!(first.summary.median.to_bits(), 3.0f64.to_bits());
        assert_eq!(first.extra, [("p99".to_owned(), 20.0)]);
        assert_eq!(
            first.extra_rounds,
            [("p99".to_owned(), vec![10.0, 30.0, 20.0])]
        );
    }
}
