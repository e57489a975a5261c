//! The workloads. Each runs on one runtime in its own process, times a number of operations
//! per repetition after a warm-up repetition, and checks its own result (every task joined,
//! every message received); a failed check fails the run instead of reporting a number.

mod latency;
mod memory;
mod spawn;

use serde::{Deserialize, Serialize};

use crate::runtimes::Rt;
use crate::stats::Summary;

/// What is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Workload {
    /// Spawn N trivial tasks from inside the runtime, then join them all.
    SpawnLocal,
    /// Spawn N trivial tasks from a thread outside the runtime, then join them from there.
    SpawnRemote,
    /// N children each send one value to a channel the parent drains (fan-out/fan-in).
    FanOut,
    /// One task yields to the scheduler N times.
    Yield,
    /// Two tasks pass a message back and forth N times over bounded channels.
    PingPong,
    /// N tasks parked for ever: heap and resident bytes per task.
    ParkedMemory,
}

impl Workload {
    pub(crate) const ALL: [Self; 6] = [
        Self::SpawnLocal,
        Self::SpawnRemote,
        Self::FanOut,
        Self::Yield,
        Self::PingPong,
        Self::ParkedMemory,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::SpawnLocal => "spawn-local",
            Self::SpawnRemote => "spawn-remote",
            Self::FanOut => "fan-out",
            Self::Yield => "yield",
            Self::PingPong => "ping-pong",
            Self::ParkedMemory => "parked-memory",
        }
    }

    /// The operation count per repetition (and, for memory, the number of parked tasks).
    pub(crate) fn sizes(self, quick: bool) -> Vec<u64> {
        match (self, quick) {
            (Self::SpawnLocal | Self::SpawnRemote | Self::FanOut, true) => vec![10_000],
            (Self::SpawnLocal | Self::SpawnRemote | Self::FanOut, false) => vec![100_000],
            (Self::Yield, true) => vec![100_000],
            (Self::Yield, false) => vec![1_000_000],
            (Self::PingPong, true) => vec![2_000],
            (Self::PingPong, false) => vec![20_000],
            (Self::ParkedMemory, true) => vec![10_000],
            (Self::ParkedMemory, false) => vec![10_000, 100_000, 1_000_000],
        }
    }
}

/// One workload's figures on one runtime.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct Measurement {
    /// The headline figure's unit, e.g. "ns/task".
    pub(crate) unit: String,
    /// The headline figure over the repetitions.
    pub(crate) summary: Summary,
    /// Further figures (e.g. resident bytes per task next to heap bytes).
    pub(crate) extra: Vec<(String, f64)>,
}

/// How many timed repetitions (after one warm-up).
pub(crate) fn repetitions(quick: bool) -> usize {
    if quick { 5 } else { 15 }
}

pub(crate) fn run(rt: &Rt, workload: Workload, n: u64, quick: bool) -> anyhow::Result<Measurement> {
    let reps = repetitions(quick);
    match workload {
        Workload::SpawnLocal => timed(reps, "ns/task", || spawn::local(rt, n)),
        Workload::SpawnRemote => timed(reps, "ns/task", || spawn::remote(rt, n)),
        Workload::FanOut => timed(reps, "ns/child", || spawn::fan_out(rt, n)),
        Workload::Yield => timed(reps, "ns/yield", || latency::yields(rt, n)),
        Workload::PingPong => timed(reps, "µs/round trip", || latency::ping_pong(rt, n)),
        Workload::ParkedMemory => memory::parked(rt, n),
    }
}

/// A warm-up, then `reps` timed repetitions of `once` (which returns its per-op figure).
fn timed(
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
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtimes::RuntimeKind;

    /// Every workload passes its own check on every runtime (small sizes, in process: the
    /// counting allocator is not installed here, so heap figures read 0).
    #[test]
    fn every_workload_checks_out_on_every_runtime() {
        for kind in RuntimeKind::ALL {
            let rt = Rt::start(kind, 2).unwrap();
            for workload in Workload::ALL {
                let n = match workload {
                    Workload::PingPong => 50,
                    Workload::ParkedMemory => 100,
                    _ => 500,
                };
                let measured = run(&rt, workload, n, true)
                    .unwrap_or_else(|e| panic!("{} on {}: {e:#}", workload.name(), kind.name()));
                assert_eq!(
                    measured.summary.samples.len(),
                    match workload {
                        Workload::ParkedMemory => 1,
                        _ => repetitions(true),
                    }
                );
                assert!(
                    measured.summary.median.is_finite(),
                    "{} on {}",
                    workload.name(),
                    kind.name()
                );
            }
        }
    }
}
