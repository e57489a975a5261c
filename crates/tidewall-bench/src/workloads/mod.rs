//! The workloads. Each runs on one runtime in its own process, times a number of operations
//! per repetition after a warm-up repetition, and checks its own result (every task joined,
//! every message received); a failed check fails the run instead of reporting a number.
//!
//! What each workload is (name, unit, sizes, how it runs) is one entry of the table in
//! `descriptors`, and what a run reports is a `Measurement` (`measurement`); this module
//! declares the enum and dispatches through the table.

pub(crate) mod binsize;
mod channels;
mod cpu;
mod descriptors;
mod echo;
pub(crate) mod embassy;
mod idle;
mod latency;
mod measurement;
mod memory;
mod patterns;
mod spawn;
mod timers;

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::runtimes::Rt;
use descriptors::{DESCRIPTORS, Params};
pub(crate) use measurement::Measurement;

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
    /// N CPU-bound tasks (tens of µs of arithmetic each) spawned by one task: the time per
    /// task, and the speed-up over running them on one thread.
    CpuBound,
    /// One task yields to the scheduler N times.
    Yield,
    /// Two tasks pass a message back and forth N times over bounded channels.
    PingPong,
    /// A task on the runtime and a thread outside it pass a message back and forth N times:
    /// a cross-thread wake-up in every round trip.
    PingPongRemote,
    /// N tasks parked for ever: heap and resident bytes per task.
    ParkedMemory,
    /// N messages, one producer, the runtime's own channel (tokio mpsc; async-channel is
    /// smol's and async-std's own).
    ChannelSpscNative,
    /// N messages, one producer, async-channel on every runtime.
    ChannelSpscAsyncChannel,
    /// N messages from four producers, the runtime's own channel.
    ChannelMpscNative,
    /// N messages from four producers, async-channel on every runtime.
    ChannelMpscAsyncChannel,
    /// 100 µs sleeps, alone (n = 1) or N at once: lateness.
    #[value(name = "timer-100us")]
    #[serde(rename = "timer-100us")]
    Timer100us,
    /// 1 ms sleeps: lateness.
    #[value(name = "timer-1ms")]
    #[serde(rename = "timer-1ms")]
    Timer1ms,
    /// 10 ms sleeps: lateness.
    #[value(name = "timer-10ms")]
    #[serde(rename = "timer-10ms")]
    Timer10ms,
    /// The runtime left idle for n ms: wake-ups, CPU time, threads, resident memory.
    Idle,
    /// The size of a minimal release binary (one task spawned and joined).
    BinarySize,
    /// Tidewall's `FanOut` (64 in flight) over N inputs, through its runtime seam.
    TidewallFanOut,
    /// Tidewall's `WorkerPool` (2 workers, queue 1024), N jobs, every result awaited.
    TidewallWorkerPool,
    /// Tidewall's five-policy `Pipeline`, N calls one after another.
    TidewallPipeline,
    /// TCP echo on loopback, closed loop over N connections: time per request.
    TcpEchoThroughput,
    /// TCP echo on loopback, open loop at N requests/s over 16 connections: latency
    /// percentiles, coordinated omission corrected.
    TcpEchoLatency,
}

impl Workload {
    /// Every workload, in the table's (and the enum's) order, which reports follow.
    pub(crate) const ALL: [Self; DESCRIPTORS.len()] = {
        // A const initializer has no iterators: copy the table's column by hand.
        let mut all = [Self::SpawnLocal; DESCRIPTORS.len()];
        let mut i = 0;
        while i < all.len() {
            all[i] = DESCRIPTORS[i].workload;
            i += 1;
        }
        all
    };

    /// Its name on the command line and in the JSON.
    pub(crate) fn name(self) -> &'static str {
        self.describe().name
    }

    /// The sleep a timer workload measures.
    fn timer(self) -> Option<Duration> {
        self.describe().timer
    }

    /// The operation count per repetition (and, for memory, the number of parked tasks).
    pub(crate) fn sizes(self, quick: bool) -> Vec<u64> {
        let descriptor = self.describe();
        let sizes = if quick {
            descriptor.quick_sizes
        } else {
            descriptor.full_sizes
        };
        sizes.to_vec()
    }
}

/// Sets the extra figures computed from the headline (and from other extras), so that they
/// follow the headline: called per run, and again once rounds are pooled (a median of
/// per-round ratios would not be the ratio of the medians).
pub(crate) fn derive_extras(workload: Workload, measured: &mut Measurement) {
    if let Some(derive) = workload.describe().derive_extras {
        derive(measured);
    }
}

/// Runs `workload` at size `n` on `rt`, or says why that runtime does not run it.
pub(crate) fn run(rt: &Rt, workload: Workload, n: u64, quick: bool) -> anyhow::Result<Measurement> {
    if let Err(why) = rt.kind().runs(workload, n) {
        anyhow::bail!(
            "{} at {n} is not run on {}: {why}",
            workload.name(),
            rt.kind().name()
        );
    }
    let descriptor = workload.describe();
    let params = Params { workload, n, quick };
    // embassy runs its workloads on its own executor, not through `Rt`.
    let mut measured = match rt.embassy() {
        Some(host) => match &descriptor.on_embassy {
            Some(method) => method.measure(host, descriptor.unit, params)?,
            None => anyhow::bail!("embassy does not run {}", workload.name()),
        },
        None => descriptor.on_runtime.measure(rt, descriptor.unit, params)?,
    };
    derive_extras(workload, &mut measured);
    Ok(measured)
}

#[cfg(test)]
mod tests {
    use super::measurement::repetitions;
    use super::*;
    use crate::runtimes::RuntimeKind;

    /// Every workload passes its own check on every runtime (small sizes, in process).
    #[test]
    fn every_workload_checks_out_on_every_runtime() {
        for kind in RuntimeKind::ALL {
            let rt = Rt::start(kind, 2).unwrap();
            // The binary-size workload needs the minimal binaries built; CI builds them.
            for workload in Workload::ALL
                .into_iter()
                .filter(|w| *w != Workload::BinarySize)
            {
                let n = match workload {
                    Workload::Timer100us | Workload::Timer1ms | Workload::Timer10ms
                        if kind == RuntimeKind::Embassy =>
                    {
                        1
                    }
                    Workload::PingPong | Workload::PingPongRemote => 50,
                    Workload::ParkedMemory => 100,
                    Workload::Timer100us | Workload::Timer1ms | Workload::Timer10ms => 100,
                    Workload::Idle => 20,
                    Workload::TcpEchoThroughput => 16,
                    Workload::CpuBound => 50,
                    Workload::TcpEchoLatency => 2_000,
                    _ => 500,
                };
                if let Err(why) = kind.runs(workload, n) {
                    // Refused with a reason, never run half-way.
                    let refused = run(&rt, workload, n, true).unwrap_err();
                    assert!(refused.to_string().contains(why), "{refused:#}");
                    continue;
                }
                let measured = run(&rt, workload, n, true)
                    .unwrap_or_else(|e| panic!("{} on {}: {e:#}", workload.name(), kind.name()));
                // Memory, timers and idle report one figure per process (a distribution's
                // percentile, or a one-off state); the rest, one per repetition.
                let single = matches!(
                    workload,
                    Workload::ParkedMemory
                        | Workload::Timer100us
                        | Workload::Timer1ms
                        | Workload::Timer10ms
                        | Workload::Idle
                        | Workload::TcpEchoLatency
                );
                let expected = if single { 1 } else { repetitions(true) };
                assert_eq!(
                    measured.summary.samples.len(),
                    expected,
                    "{}",
                    workload.name()
                );
                // The table's unit is the one reported, also where the workload sets its own.
                assert_eq!(
                    measured.unit,
                    workload.describe().unit,
                    "{}",
                    workload.name()
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
