//! The workloads. Each runs on one runtime in its own process, times a number of operations
//! per repetition after a warm-up repetition, and checks its own result (every task joined,
//! every message received); a failed check fails the run instead of reporting a number.

pub(crate) mod binsize;
mod channels;
mod cpu;
mod echo;
pub(crate) mod embassy;
mod idle;
mod latency;
mod memory;
mod patterns;
mod spawn;
mod timers;

use std::time::Duration;

use channels::Channel;

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
    pub(crate) const ALL: [Self; 22] = [
        Self::SpawnLocal,
        Self::SpawnRemote,
        Self::FanOut,
        Self::CpuBound,
        Self::Yield,
        Self::PingPong,
        Self::PingPongRemote,
        Self::ParkedMemory,
        Self::ChannelSpscNative,
        Self::ChannelSpscAsyncChannel,
        Self::ChannelMpscNative,
        Self::ChannelMpscAsyncChannel,
        Self::Timer100us,
        Self::Timer1ms,
        Self::Timer10ms,
        Self::Idle,
        Self::BinarySize,
        Self::TidewallFanOut,
        Self::TidewallWorkerPool,
        Self::TidewallPipeline,
        Self::TcpEchoThroughput,
        Self::TcpEchoLatency,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::SpawnLocal => "spawn-local",
            Self::SpawnRemote => "spawn-remote",
            Self::FanOut => "fan-out",
            Self::CpuBound => "cpu-bound",
            Self::Yield => "yield",
            Self::PingPong => "ping-pong",
            Self::PingPongRemote => "ping-pong-remote",
            Self::ParkedMemory => "parked-memory",
            Self::ChannelSpscNative => "channel-spsc-native",
            Self::ChannelSpscAsyncChannel => "channel-spsc-async-channel",
            Self::ChannelMpscNative => "channel-mpsc-native",
            Self::ChannelMpscAsyncChannel => "channel-mpsc-async-channel",
            Self::Timer100us => "timer-100us",
            Self::Timer1ms => "timer-1ms",
            Self::Timer10ms => "timer-10ms",
            Self::Idle => "idle",
            Self::BinarySize => "binary-size",
            Self::TidewallFanOut => "tidewall-fan-out",
            Self::TidewallWorkerPool => "tidewall-worker-pool",
            Self::TidewallPipeline => "tidewall-pipeline",
            Self::TcpEchoThroughput => "tcp-echo-throughput",
            Self::TcpEchoLatency => "tcp-echo-latency",
        }
    }

    /// The sleep a timer workload measures.
    fn timer(self) -> Option<Duration> {
        match self {
            Self::Timer100us => Some(Duration::from_micros(100)),
            Self::Timer1ms => Some(Duration::from_millis(1)),
            Self::Timer10ms => Some(Duration::from_millis(10)),
            _ => None,
        }
    }

    /// The operation count per repetition (and, for memory, the number of parked tasks).
    pub(crate) fn sizes(self, quick: bool) -> Vec<u64> {
        match (self, quick) {
            (Self::SpawnLocal | Self::SpawnRemote | Self::FanOut, true) => vec![10_000],
            (Self::SpawnLocal | Self::SpawnRemote | Self::FanOut, false) => vec![100_000],
            (Self::CpuBound, true) => vec![1_000],
            (Self::CpuBound, false) => vec![10_000],
            (Self::Yield, true) => vec![100_000],
            (Self::Yield, false) => vec![1_000_000],
            (Self::PingPong | Self::PingPongRemote, true) => vec![2_000],
            (Self::PingPong | Self::PingPongRemote, false) => vec![20_000],
            (Self::ParkedMemory, true) => vec![10_000],
            (Self::ParkedMemory, false) => vec![10_000, 100_000, 1_000_000],
            (
                Self::ChannelSpscNative
                | Self::ChannelSpscAsyncChannel
                | Self::ChannelMpscNative
                | Self::ChannelMpscAsyncChannel,
                true,
            ) => vec![100_000],
            (
                Self::ChannelSpscNative
                | Self::ChannelSpscAsyncChannel
                | Self::ChannelMpscNative
                | Self::ChannelMpscAsyncChannel,
                false,
            ) => vec![1_000_000],
            // Timers: 1 (sequential sleeps give the distribution) or 10k at once.
            (Self::Timer100us | Self::Timer1ms | Self::Timer10ms, _) => vec![1, 10_000],
            (Self::Idle, true) => vec![500],
            (Self::Idle, false) => vec![2_000],
            (Self::BinarySize, _) => vec![1],
            (Self::TidewallFanOut | Self::TidewallWorkerPool | Self::TidewallPipeline, true) => {
                vec![10_000]
            }
            (Self::TidewallFanOut | Self::TidewallWorkerPool | Self::TidewallPipeline, false) => {
                vec![100_000]
            }
            // Connections.
            (Self::TcpEchoThroughput, _) => vec![1, 16, 256],
            // Requests a second: a light load, and five times that.
            (Self::TcpEchoLatency, true) => vec![2_000],
            (Self::TcpEchoLatency, false) => vec![2_000, 10_000],
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
    /// Further figures (e.g. resident bytes per task next to heap bytes); over several
    /// rounds, each one's median over them.
    pub(crate) extra: Vec<(String, f64)>,
    /// Every round's extra figures (raw data), once there is more than one round.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) extra_rounds: Vec<(String, Vec<f64>)>,
}

/// The extra figure that states TCP echo throughput as a rate.
const REQUESTS_PER_SECOND: &str = "requests/s";
/// The CPU-bound task's work timed alone on one thread.
const NS_PER_TASK_ALONE: &str = "ns per task alone";
/// The CPU-bound makespan against running every task on one thread.
const SPEED_UP: &str = "speed-up over one thread";

/// Sets the extra figures computed from the headline (and from other extras), so that they
/// follow the headline: called per run, and again once rounds are pooled (a median of
/// per-round ratios would not be the ratio of the medians).
pub(crate) fn derive_extras(workload: Workload, measured: &mut Measurement) {
    let median = measured.summary.median;
    match workload {
        Workload::TcpEchoThroughput => measured.set_extra(REQUESTS_PER_SECOND, 1e6 / median),
        Workload::CpuBound => {
            let alone = measured
                .extra
                .iter()
                .find(|(name, _)| name == NS_PER_TASK_ALONE)
                .map(|(_, v)| *v);
            if let Some(alone) = alone {
                measured.set_extra(SPEED_UP, alone / median);
            }
        }
        _ => {}
    }
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
pub(crate) fn repetitions(quick: bool) -> usize {
    if quick { 5 } else { 10 }
}

pub(crate) fn run(rt: &Rt, workload: Workload, n: u64, quick: bool) -> anyhow::Result<Measurement> {
    if let Err(why) = rt.kind().runs(workload, n) {
        anyhow::bail!(
            "{} at {n} is not run on {}: {why}",
            workload.name(),
            rt.kind().name()
        );
    }
    // embassy runs its workloads on its own executor; its binary is measured like the rest.
    if let Some(host) = rt.embassy()
        && workload != Workload::BinarySize
    {
        return on_embassy(host, workload, n, quick);
    }
    let reps = repetitions(quick);
    match workload {
        Workload::SpawnLocal => timed(reps, "ns/task", || spawn::local(rt, n)),
        Workload::SpawnRemote => timed(reps, "ns/task", || spawn::remote(rt, n)),
        Workload::FanOut => timed(reps, "ns/child", || spawn::fan_out(rt, n)),
        Workload::CpuBound => {
            let mut measured = timed(reps, "ns/task", || cpu::makespan(rt, n))?;
            // Timed after the runs, warm, like them.
            measured.set_extra(NS_PER_TASK_ALONE, cpu::one_task_ns());
            derive_extras(workload, &mut measured);
            Ok(measured)
        }
        Workload::Yield => timed(reps, "ns/yield", || latency::yields(rt, n)),
        Workload::PingPong => {
            let mut measured = timed(reps, "µs/round trip", || latency::ping_pong(rt, n))?;
            measured
                .extra
                .extend(latency::ping_pong_distribution(rt, n)?);
            Ok(measured)
        }
        Workload::PingPongRemote => {
            timed(reps, "µs/round trip", || latency::ping_pong_remote(rt, n))
        }
        Workload::ParkedMemory => memory::parked(rt, n),
        Workload::ChannelSpscNative => timed(reps, "ns/message", || {
            channels::throughput(rt, Channel::Native, 1, n)
        }),
        Workload::ChannelSpscAsyncChannel => timed(reps, "ns/message", || {
            channels::throughput(rt, Channel::AsyncChannel, 1, n)
        }),
        Workload::ChannelMpscNative => timed(reps, "ns/message", || {
            channels::throughput(rt, Channel::Native, 4, n)
        }),
        Workload::ChannelMpscAsyncChannel => timed(reps, "ns/message", || {
            channels::throughput(rt, Channel::AsyncChannel, 4, n)
        }),
        Workload::Timer100us | Workload::Timer1ms | Workload::Timer10ms => {
            let sleep = workload.timer().unwrap_or_default();
            timers::lateness(rt, sleep, n, sequential_sleeps(sleep, quick))
        }
        Workload::Idle => idle::footprint(rt, Duration::from_millis(n)),
        Workload::BinarySize => binsize::minimal_binary(rt.kind()),
        Workload::TidewallFanOut => timed(reps, "ns/item", || {
            patterns::run(rt, patterns::Pattern::FanOut, n)
        }),
        Workload::TidewallWorkerPool => timed(reps, "ns/job", || {
            patterns::run(rt, patterns::Pattern::WorkerPool, n)
        }),
        Workload::TidewallPipeline => timed(reps, "ns/call", || {
            patterns::run(rt, patterns::Pattern::Pipeline, n)
        }),
        Workload::TcpEchoThroughput => {
            let requests = if quick { 5_000 } else { 100_000 };
            let mut measured = timed(reps, "µs/request", || {
                echo::throughput(rt, usize::try_from(n)?, requests)
            })?;
            derive_extras(workload, &mut measured);
            Ok(measured)
        }
        Workload::TcpEchoLatency => {
            let seconds = if quick { 1 } else { 5 };
            echo::latency(rt, n, Duration::from_secs(seconds))
        }
    }
}

/// The workloads embassy runs (see [`RuntimeKind::runs`]), through its executor thread.
fn on_embassy(
    host: &embassy::Host,
    workload: Workload,
    n: u64,
    quick: bool,
) -> anyhow::Result<Measurement> {
    let reps = repetitions(quick);
    match workload {
        Workload::Yield => timed(reps, "ns/yield", || host.yields(n)),
        Workload::PingPong => {
            let mut measured = timed(reps, "µs/round trip", || host.ping_pong(n))?;
            measured.extra.extend(host.ping_pong_distribution(n)?);
            Ok(measured)
        }
        Workload::ChannelSpscNative => timed(reps, "ns/message", || host.channel(true, n)),
        Workload::ChannelSpscAsyncChannel => timed(reps, "ns/message", || host.channel(false, n)),
        Workload::Timer100us | Workload::Timer1ms | Workload::Timer10ms => {
            let sleep = workload.timer().unwrap_or_default();
            host.sleeps(sleep, sequential_sleeps(sleep, quick))
        }
        other => anyhow::bail!("embassy does not run {}", other.name()),
    }
}

/// Sequential sleeps for a single timer's distribution: enough for percentiles, bounded in
/// time.
fn sequential_sleeps(sleep: Duration, quick: bool) -> u64 {
    match (quick, sleep >= Duration::from_millis(10)) {
        (true, true) => 20,
        (true, false) => 50,
        (false, true) => 100,
        (false, false) => 500,
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
        extra_rounds: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
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

#[cfg(test)]
mod absorb_tests {
    use super::*;

    #[test]
    fn derived_figures_follow_the_pooled_headline() {
        let mut pooled = Measurement {
            unit: "ns/task".to_owned(),
            summary: Summary::of(vec![20_000.0, 30_000.0, 10_000.0]),
            extra: vec![(NS_PER_TASK_ALONE.to_owned(), 40_000.0)],
            extra_rounds: Vec::new(),
        };
        derive_extras(Workload::CpuBound, &mut pooled);
        assert!(pooled.extra.contains(&(SPEED_UP.to_owned(), 2.0)));
        let mut echo = Measurement {
            unit: "µs/request".to_owned(),
            summary: Summary::of(vec![8.0, 10.0, 12.0]),
            extra: Vec::new(),
            extra_rounds: Vec::new(),
        };
        derive_extras(Workload::TcpEchoThroughput, &mut echo);
        assert_eq!(echo.extra, [(REQUESTS_PER_SECOND.to_owned(), 100_000.0)]);
    }

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
