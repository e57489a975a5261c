//! The table of workloads: one [`Descriptor`] per [`Workload`], holding everything the suite
//! knows about it (name, unit, sizes, how it runs, which figures it derives), so that adding
//! a workload is a variant plus one entry here. What depends on a runtime or on the machine
//! is answered where those live: whether a runtime runs it ([`RuntimeKind::runs`]), and the
//! anchor and plausible band its figure is read against (`plan::anchor_for`,
//! `plan::plausibility`).

use std::time::Duration;

use super::channels::{self, Channel};
use super::measurement::{Measurement, repetitions, timed};
use super::patterns::{self, Pattern};
use super::{Workload, binsize, cpu, echo, embassy, idle, latency, memory, spawn, timers};
use crate::runtimes::{Rt, RuntimeKind};
use Method::{SelfMeasured, Timed, TimedThenExtras};

/// What the suite knows about one workload.
pub(super) struct Descriptor {
    pub(super) workload: Workload,
    /// Its name on the command line and in the JSON; clap and serde derive theirs from the
    /// variant, and a test checks that the three agree.
    pub(super) name: &'static str,
    /// The headline figure's unit. `Timed` methods report in it; a `SelfMeasured` one sets
    /// its own, which must be this (the in-process test checks).
    pub(super) unit: &'static str,
    /// The sizes n it runs at with `--quick`, and without (what n counts is on the variant).
    pub(super) quick_sizes: &'static [u64],
    pub(super) full_sizes: &'static [u64],
    /// The sleep a timer workload measures.
    pub(super) timer: Option<Duration>,
    /// How it runs on the runtimes driven through [`Rt`] (all but embassy).
    pub(super) on_runtime: Method<Rt>,
    /// How it runs on embassy's executor, which runs only a few workloads.
    pub(super) on_embassy: Option<Method<embassy::Host>>,
    /// Sets the extra figures computed from the headline; see [`super::derive_extras`].
    pub(super) derive_extras: Option<fn(&mut Measurement)>,
}

/// What a workload's functions are given: the workload itself (for what its descriptor
/// says, e.g. its timer), its size n, and whether the run is `--quick`.
#[derive(Clone, Copy)]
pub(super) struct Params {
    pub(super) workload: Workload,
    pub(super) n: u64,
    pub(super) quick: bool,
}

/// One timed repetition on driver `D`: its figure per operation.
type PerOp<D> = fn(&D, Params) -> anyhow::Result<f64>;
/// Extra figures, as (name, value), measured on driver `D`.
type Extras<D> = fn(&D, Params) -> anyhow::Result<Vec<(String, f64)>>;
/// A whole measurement on driver `D`.
type Whole<D> = fn(&D, Params) -> anyhow::Result<Measurement>;

/// How a workload produces its [`Measurement`] on a driver `D` (a runtime, or embassy's
/// executor).
pub(super) enum Method<D> {
    /// A warm-up, then [`repetitions`] timed repetitions, in the descriptor's unit: one
    /// sample per repetition.
    Timed(PerOp<D>),
    /// As `Timed`, then extra figures measured once after the repetitions (warm, like them).
    TimedThenExtras(PerOp<D>, Extras<D>),
    /// The workload measures itself in one go: one figure per process (a distribution's
    /// percentile, or a one-off state).
    SelfMeasured(Whole<D>),
}

impl<D> Method<D> {
    /// Runs the workload on `driver` as this method says.
    pub(super) fn measure(
        &self,
        driver: &D,
        unit: &str,
        params: Params,
    ) -> anyhow::Result<Measurement> {
        let reps = repetitions(params.quick);
        match self {
            Self::Timed(per_op) => timed(reps, unit, || per_op(driver, params)),
            Self::TimedThenExtras(per_op, extras) => {
                let mut measured = timed(reps, unit, || per_op(driver, params))?;
                measured.extra.extend(extras(driver, params)?);
                Ok(measured)
            }
            Self::SelfMeasured(measure) => measure(driver, params),
        }
    }
}

impl Workload {
    /// This workload's entry in [`DESCRIPTORS`].
    pub(super) fn describe(self) -> &'static Descriptor {
        // The table is in declaration order (checked below, at compile time), so the
        // discriminant is the index.
        &DESCRIPTORS[self as usize]
    }
}

/// `describe` indexes by discriminant: refuse to compile a table out of declaration order.
const _: () = {
    let mut i = 0;
    while i < DESCRIPTORS.len() {
        assert!(
            DESCRIPTORS[i].workload as usize == i,
            "DESCRIPTORS must list the workloads in the order Workload declares them"
        );
        i += 1;
    }
};

/// Every workload, in declaration order (the order of [`Workload::ALL`] and of reports). A
/// static, not a const, so there is one table and `describe` points into it.
pub(super) static DESCRIPTORS: &[Descriptor] = &[
    Descriptor {
        workload: Workload::SpawnLocal,
        name: "spawn-local",
        unit: "ns/task",
        quick_sizes: &[10_000],
        full_sizes: &[100_000],
        timer: None,
        on_runtime: Timed(|rt, p| spawn::local(rt, p.n)),
        on_embassy: None,
        derive_extras: None,
    },
    Descriptor {
        workload: Workload::SpawnRemote,
        name: "spawn-remote",
        unit: "ns/task",
        quick_sizes: &[10_000],
        full_sizes: &[100_000],
        timer: None,
        on_runtime: Timed(|rt, p| spawn::remote(rt, p.n)),
        on_embassy: None,
        derive_extras: None,
    },
    Descriptor {
        workload: Workload::FanOut,
        name: "fan-out",
        unit: "ns/child",
        quick_sizes: &[10_000],
        full_sizes: &[100_000],
        timer: None,
        on_runtime: Timed(|rt, p| spawn::fan_out(rt, p.n)),
        on_embassy: None,
        derive_extras: None,
    },
    Descriptor {
        workload: Workload::CpuBound,
        name: "cpu-bound",
        unit: "ns/task",
        quick_sizes: &[1_000],
        full_sizes: &[10_000],
        timer: None,
        on_runtime: TimedThenExtras(
            |rt, p| cpu::makespan(rt, p.n),
            // The same work alone on this thread: what the speed-up is measured against.
            |_, _| Ok(vec![(NS_PER_TASK_ALONE.to_owned(), cpu::one_task_ns())]),
        ),
        on_embassy: None,
        derive_extras: Some(speed_up),
    },
    Descriptor {
        workload: Workload::Yield,
        name: "yield",
        unit: "ns/yield",
        quick_sizes: &[100_000],
        full_sizes: &[1_000_000],
        timer: None,
        on_runtime: Timed(|rt, p| latency::yields(rt, p.n)),
        on_embassy: Some(Timed(|host, p| host.yields(p.n))),
        derive_extras: None,
    },
    Descriptor {
        workload: Workload::PingPong,
        name: "ping-pong",
        unit: "µs/round trip",
        quick_sizes: &[2_000],
        full_sizes: &[20_000],
        timer: None,
        on_runtime: TimedThenExtras(
            |rt, p| latency::ping_pong(rt, p.n),
            |rt, p| latency::ping_pong_distribution(rt, p.n),
        ),
        on_embassy: Some(TimedThenExtras(
            |host, p| host.ping_pong(p.n),
            |host, p| host.ping_pong_distribution(p.n),
        )),
        derive_extras: None,
    },
    Descriptor {
        workload: Workload::PingPongRemote,
        name: "ping-pong-remote",
        unit: "µs/round trip",
        quick_sizes: &[2_000],
        full_sizes: &[20_000],
        timer: None,
        on_runtime: Timed(|rt, p| latency::ping_pong_remote(rt, p.n)),
        on_embassy: None,
        derive_extras: None,
    },
    Descriptor {
        workload: Workload::ParkedMemory,
        name: "parked-memory",
        unit: "heap B/task",
        quick_sizes: &[10_000],
        full_sizes: &[10_000, 100_000, 1_000_000],
        timer: None,
        on_runtime: SelfMeasured(|rt, p| memory::parked(rt, p.n)),
        on_embassy: None,
        derive_extras: None,
    },
    Descriptor {
        workload: Workload::ChannelSpscNative,
        name: "channel-spsc-native",
        unit: "ns/message",
        quick_sizes: &[100_000],
        full_sizes: &[1_000_000],
        timer: None,
        on_runtime: Timed(|rt, p| channels::throughput(rt, Channel::Native, 1, p.n)),
        on_embassy: Some(Timed(|host, p| host.channel(true, p.n))),
        derive_extras: None,
    },
    Descriptor {
        workload: Workload::ChannelSpscAsyncChannel,
        name: "channel-spsc-async-channel",
        unit: "ns/message",
        quick_sizes: &[100_000],
        full_sizes: &[1_000_000],
        timer: None,
        on_runtime: Timed(|rt, p| channels::throughput(rt, Channel::AsyncChannel, 1, p.n)),
        on_embassy: Some(Timed(|host, p| host.channel(false, p.n))),
        derive_extras: None,
    },
    Descriptor {
        workload: Workload::ChannelMpscNative,
        name: "channel-mpsc-native",
        unit: "ns/message",
        quick_sizes: &[100_000],
        full_sizes: &[1_000_000],
        timer: None,
        on_runtime: Timed(|rt, p| channels::throughput(rt, Channel::Native, 4, p.n)),
        on_embassy: None,
        derive_extras: None,
    },
    Descriptor {
        workload: Workload::ChannelMpscAsyncChannel,
        name: "channel-mpsc-async-channel",
        unit: "ns/message",
        quick_sizes: &[100_000],
        full_sizes: &[1_000_000],
        timer: None,
        on_runtime: Timed(|rt, p| channels::throughput(rt, Channel::AsyncChannel, 4, p.n)),
        on_embassy: None,
        derive_extras: None,
    },
    // Timers: n = 1 (sequential sleeps give the distribution) or 10k at once.
    Descriptor {
        workload: Workload::Timer100us,
        name: "timer-100us",
        unit: "µs late (p50)",
        quick_sizes: &[1, 10_000],
        full_sizes: &[1, 10_000],
        timer: Some(Duration::from_micros(100)),
        on_runtime: SelfMeasured(sleeps_late),
        on_embassy: Some(SelfMeasured(sleeps_late_on_embassy)),
        derive_extras: None,
    },
    Descriptor {
        workload: Workload::Timer1ms,
        name: "timer-1ms",
        unit: "µs late (p50)",
        quick_sizes: &[1, 10_000],
        full_sizes: &[1, 10_000],
        timer: Some(Duration::from_millis(1)),
        on_runtime: SelfMeasured(sleeps_late),
        on_embassy: Some(SelfMeasured(sleeps_late_on_embassy)),
        derive_extras: None,
    },
    Descriptor {
        workload: Workload::Timer10ms,
        name: "timer-10ms",
        unit: "µs late (p50)",
        quick_sizes: &[1, 10_000],
        full_sizes: &[1, 10_000],
        timer: Some(Duration::from_millis(10)),
        on_runtime: SelfMeasured(sleeps_late),
        on_embassy: Some(SelfMeasured(sleeps_late_on_embassy)),
        derive_extras: None,
    },
    // n: milliseconds left idle.
    Descriptor {
        workload: Workload::Idle,
        name: "idle",
        unit: "wake-ups/s",
        quick_sizes: &[500],
        full_sizes: &[2_000],
        timer: None,
        on_runtime: SelfMeasured(|rt, p| idle::footprint(rt, Duration::from_millis(p.n))),
        on_embassy: None,
        derive_extras: None,
    },
    // Reads the runtime's prebuilt minimal binary: nothing runs on the runtime itself, so
    // embassy's is measured like the rest.
    Descriptor {
        workload: Workload::BinarySize,
        name: "binary-size",
        unit: "KiB loaded",
        quick_sizes: &[1],
        full_sizes: &[1],
        timer: None,
        on_runtime: SelfMeasured(|rt, _| binsize::minimal_binary(rt.kind())),
        on_embassy: Some(SelfMeasured(|_, _| {
            binsize::minimal_binary(RuntimeKind::Embassy)
        })),
        derive_extras: None,
    },
    Descriptor {
        workload: Workload::TidewallFanOut,
        name: "tidewall-fan-out",
        unit: "ns/item",
        quick_sizes: &[10_000],
        full_sizes: &[100_000],
        timer: None,
        on_runtime: Timed(|rt, p| patterns::run(rt, Pattern::FanOut, p.n)),
        on_embassy: None,
        derive_extras: None,
    },
    Descriptor {
        workload: Workload::TidewallWorkerPool,
        name: "tidewall-worker-pool",
        unit: "ns/job",
        quick_sizes: &[10_000],
        full_sizes: &[100_000],
        timer: None,
        on_runtime: Timed(|rt, p| patterns::run(rt, Pattern::WorkerPool, p.n)),
        on_embassy: None,
        derive_extras: None,
    },
    Descriptor {
        workload: Workload::TidewallPipeline,
        name: "tidewall-pipeline",
        unit: "ns/call",
        quick_sizes: &[10_000],
        full_sizes: &[100_000],
        timer: None,
        on_runtime: Timed(|rt, p| patterns::run(rt, Pattern::Pipeline, p.n)),
        on_embassy: None,
        derive_extras: None,
    },
    // n: connections.
    Descriptor {
        workload: Workload::TcpEchoThroughput,
        name: "tcp-echo-throughput",
        unit: "µs/request",
        quick_sizes: &[1, 16, 256],
        full_sizes: &[1, 16, 256],
        timer: None,
        on_runtime: Timed(|rt, p| {
            let requests = if p.quick { 5_000 } else { 100_000 };
            echo::throughput(rt, usize::try_from(p.n)?, requests)
        }),
        on_embassy: None,
        derive_extras: Some(requests_per_second),
    },
    // n: requests a second; a light load, and five times that.
    Descriptor {
        workload: Workload::TcpEchoLatency,
        name: "tcp-echo-latency",
        unit: "µs (p50)",
        quick_sizes: &[2_000],
        full_sizes: &[2_000, 10_000],
        timer: None,
        on_runtime: SelfMeasured(|rt, p| {
            let seconds = if p.quick { 1 } else { 5 };
            echo::latency(rt, p.n, Duration::from_secs(seconds))
        }),
        on_embassy: None,
        derive_extras: None,
    },
];

/// How late the workload's `timer` sleeps wake: alone, one after another, when n = 1; n at
/// once otherwise.
fn sleeps_late(rt: &Rt, p: Params) -> anyhow::Result<Measurement> {
    let sleep = p.workload.timer().unwrap_or_default();
    timers::lateness(rt, sleep, p.n, sequential_sleeps(sleep, p.quick))
}

/// [`sleeps_late`] on embassy, which runs single timers only.
fn sleeps_late_on_embassy(host: &embassy::Host, p: Params) -> anyhow::Result<Measurement> {
    let sleep = p.workload.timer().unwrap_or_default();
    host.sleeps(sleep, sequential_sleeps(sleep, p.quick))
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

/// The extra figure that states TCP echo throughput as a rate.
const REQUESTS_PER_SECOND: &str = "requests/s";
/// The CPU-bound task's work timed alone on one thread.
const NS_PER_TASK_ALONE: &str = "ns per task alone";
/// The CPU-bound makespan against running every task on one thread.
const SPEED_UP: &str = "speed-up over one thread";

/// TCP echo throughput (µs per request) as requests a second.
fn requests_per_second(measured: &mut Measurement) {
    let median = measured.summary.median;
    measured.set_extra(REQUESTS_PER_SECOND, 1e6 / median);
}

/// How much faster the CPU-bound tasks ran on the runtime than one after another alone.
fn speed_up(measured: &mut Measurement) {
    let median = measured.summary.median;
    let alone = measured
        .extra
        .iter()
        .find(|(name, _)| name == NS_PER_TASK_ALONE)
        .map(|(_, v)| *v);
    if let Some(alone) = alone {
        measured.set_extra(SPEED_UP, alone / median);
    }
}

#[cfg(test)]
mod tests {
    use clap::ValueEnum as _;

    use super::*;
    use crate::stats::Summary;

    /// The table's names are the CLI's and the JSON's: a child is started with `name()`,
    /// and saved results are read back through serde.
    #[test]
    fn every_name_is_the_one_clap_and_serde_use() {
        for workload in Workload::ALL {
            let name = workload.name();
            let clap = workload.to_possible_value().expect("no hidden workloads");
            assert_eq!(clap.get_name(), name);
            assert_eq!(Workload::from_str(name, false), Ok(workload));
            let json = serde_json::to_value(workload).unwrap();
            assert_eq!(json, serde_json::Value::from(name));
            assert_eq!(serde_json::from_value::<Workload>(json).unwrap(), workload);
        }
    }

    /// One entry per variant, none twice, in declaration order (`value_variants` lists the
    /// enum as declared, independently of the table).
    #[test]
    fn the_table_lists_every_variant_once_in_order() {
        let declared = Workload::value_variants();
        assert_eq!(DESCRIPTORS.len(), declared.len());
        assert_eq!(Workload::ALL.as_slice(), declared);
        for (descriptor, &workload) in DESCRIPTORS.iter().zip(declared) {
            assert_eq!(descriptor.workload, workload);
            assert!(std::ptr::eq(workload.describe(), descriptor));
        }
    }

    #[test]
    fn derived_figures_follow_the_pooled_headline() {
        let mut pooled = Measurement {
            unit: "ns/task".to_owned(),
            summary: Summary::of(vec![20_000.0, 30_000.0, 10_000.0]),
            extra: vec![(NS_PER_TASK_ALONE.to_owned(), 40_000.0)],
            extra_rounds: Vec::new(),
        };
        super::super::derive_extras(Workload::CpuBound, &mut pooled);
        assert!(pooled.extra.contains(&(SPEED_UP.to_owned(), 2.0)));
        let mut echo = Measurement {
            unit: "µs/request".to_owned(),
            summary: Summary::of(vec![8.0, 10.0, 12.0]),
            extra: Vec::new(),
            extra_rounds: Vec::new(),
        };
        super::super::derive_extras(Workload::TcpEchoThroughput, &mut echo);
        assert_eq!(echo.extra, [(REQUESTS_PER_SECOND.to_owned(), 100_000.0)]);
    }
}
