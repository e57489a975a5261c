//! Hostile black-box tests of Tidewall's telemetry as an SRE reads it off a dashboard, written
//! from the public docs only (the `telemetry` module's table, `Event`/`EventKind`, the
//! builders' `on_event`, `Registry::record_gauges`, `docs/OBSERVABILITY.md`): do the counters
//! add up to what happened, call by call and attempt by attempt, and do the gauges come back
//! to rest?
//!
//! Beyond `hostile_telemetry.rs` and `hostile_listeners.rs`, these attack the accounting where
//! policies are composed the way users compose them and calls end the hard ways:
//!
//! - operations that panic (in the closure or in the future) inside registry pipelines, with
//!   calls dropped at seeded points, against the pipeline's and the breaker's counters, the
//!   bulkhead's gauges and `Bulkhead::rejected`, and the registry listener;
//! - a call the deadline ends with a retried `Ok` value ("counts as a failure in the
//!   pipeline's metrics and for its admission stages"), through `Pipeline::call`, a
//!   `BoxPipeline` and a tower `PipelineLayer`;
//! - hedges (`Hedge` and the tower `HedgeLayer`): `tidewall_hedges_total` and each
//!   `HedgeLaunched { hedge }` against the copies actually started, under cancellation, with
//!   a hedge budget;
//! - an adaptive limiter from a registry: its gauges read mid-storm and at rest, its waits'
//!   histogram against its `Waited` events, after an idle day;
//! - reloads under load (a `LivePipeline` handle and a `PipelineLayer` over it), a reload that
//!   renames an instance, and a breaker's seeded random walk through every way of changing
//!   state (generations, transition counters and the one-hot state gauge);
//! - tower stacks (`AdmitLayer` over a bulkhead and `BreakerLayer`, in either order, in every
//!   `AdmitMode`; an `AdmitLayer`'s own `max_wait`) under cancellation;
//! - fault injection's counter through a retrying pipeline whose calls are dropped mid-fault;
//! - a supervisor's restart and escalation counters against its events and report;
//! - a registry listener that panics once on each kind of event in turn;
//! - refusals and timeouts from tower layers below a `PipelineLayer`;
//! - counters registered at build (hedges, adaptive limiters, keyed tables, chaos) and counted
//!   in the recorder they were built under; policies of one name sharing one series;
//! - every queue discipline (FIFO, LIFO, CoDel; priorities) timing each admitted wait;
//! - an attempt timeout tied with the deadline; a window reshaped by a reload from every
//!   breaker state; calls never polled; a `LivePipeline`'s own classifier across reloads.
//!
//! Each test records into its own `metrics_util` `DebuggingRecorder` set as the thread's
//! default for the test (so no process-global recorder: every test here can share a binary),
//! on a current-thread tokio runtime with paused time; randomness is `common::rng::Rng`, seeded.
//! The debugging recorder drains counters and zeroes gauges at each snapshot: `Books`
//! accumulates counters and histograms across snapshots and keeps the gauges of the last one.
//! Panics made on purpose start with "deliberate"; a panic hook (installed once, process-wide)
//! keeps only their messages out of the output.

#![cfg(all(
    feature = "metrics",
    feature = "toml",
    feature = "tower",
    feature = "test-util",
    feature = "tokio",
    feature = "chaos"
))]
// Gauges hold whole counts here, and durations are whole milliseconds of virtual time: exact in
// f64, and each expected value is computed the same way (`Duration::as_secs_f64`).
#![allow(clippy::float_cmp)]

mod common;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use common::rng::Rng;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use tidewall::adaptive::{AdaptiveLimiter, Aimd};
use tidewall::breaker::State;
use tidewall::bulkhead::Bulkhead;
use tidewall::classify::Verdict;
use tidewall::config::{Config, Registry};
use tidewall::hedge::{Hedge, Idempotent};
use tidewall::pipeline::Pipeline;
use tidewall::telemetry::{Event, EventKind};
use tidewall::tower::{AdmitLayer, AdmitMode, BreakerLayer, HedgeLayer, PipelineLayer};
use tidewall::{Backoff, Error, Jitter, Rejected};
use tower::{Layer as _, ServiceExt as _};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

const HOUR: Duration = Duration::from_secs(3_600);
const DAY: Duration = Duration::from_secs(86_400);

// ---------------------------------------------------------------------------------------------
// The books: what the recorder was told
// ---------------------------------------------------------------------------------------------

type Labels = BTreeMap<String, String>;

/// Everything a `DebuggingRecorder` was told: counters and histogram samples summed over every
/// snapshot, gauges as of the last one.
struct Books {
    snapshotter: Snapshotter,
    counters: BTreeMap<(String, Labels), u64>,
    gauges: BTreeMap<(String, Labels), f64>,
    samples: BTreeMap<(String, Labels), Vec<f64>>,
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn has_all(have: &Labels, want: &[(&str, &str)]) -> bool {
    want.iter()
        .all(|(k, v)| have.get(*k).is_some_and(|h| h == v))
}

impl Books {
    fn new(recorder: &DebuggingRecorder) -> Self {
        Self {
            snapshotter: recorder.snapshotter(),
            counters: BTreeMap::new(),
            gauges: BTreeMap::new(),
            samples: BTreeMap::new(),
        }
    }

    /// Takes a snapshot: counters and samples add up, gauges are replaced.
    fn read(&mut self) {
        self.gauges.clear();
        for (key, _, _, value) in self.snapshotter.snapshot().into_vec() {
            let key = key.key();
            let mut have = Labels::new();
            for label in key.labels() {
                let twice = have.insert(label.key().to_owned(), label.value().to_owned());
                assert!(twice.is_none(), "{key}: label {} twice", label.key());
            }
            let id = (key.name().to_owned(), have);
            match value {
                DebugValue::Counter(n) => *self.counters.entry(id).or_default() += n,
                DebugValue::Gauge(v) => {
                    self.gauges.insert(id, v.into_inner());
                }
                DebugValue::Histogram(values) => self
                    .samples
                    .entry(id)
                    .or_default()
                    .extend(values.iter().map(|v| v.into_inner())),
            }
        }
    }

    /// The sum of every counter series of `name` carrying all of `want` (0 when none).
    fn counter(&self, name: &str, want: &[(&str, &str)]) -> u64 {
        self.counters
            .iter()
            .filter(|((n, have), _)| n == name && has_all(have, want))
            .map(|(_, v)| *v)
            .sum()
    }

    /// Whether a counter series of `name` with exactly these labels was registered.
    fn has_counter(&self, name: &str, exact: &[(&str, &str)]) -> bool {
        self.counters
            .contains_key(&(name.to_owned(), labels(exact)))
    }

    /// Every counter series of `name` carrying `want`, with its labels and total.
    fn counter_series(&self, name: &str, want: &[(&str, &str)]) -> Vec<(Labels, u64)> {
        self.counters
            .iter()
            .filter(|((n, have), _)| n == name && has_all(have, want))
            .map(|((_, have), v)| (have.clone(), *v))
            .collect()
    }

    /// The gauge of `name` with exactly these labels, as of the last snapshot.
    fn gauge(&self, name: &str, exact: &[(&str, &str)]) -> Option<f64> {
        self.gauges.get(&(name.to_owned(), labels(exact))).copied()
    }

    /// Every histogram sample of `name` with series carrying `want`.
    fn samples(&self, name: &str, want: &[(&str, &str)]) -> Vec<f64> {
        self.samples
            .iter()
            .filter(|((n, have), _)| n == name && has_all(have, want))
            .flat_map(|(_, v)| v.iter().copied())
            .collect()
    }

    fn calls(&self, policy: &str, name: &str, outcome: &str) -> u64 {
        self.counter(
            "tidewall_calls_total",
            &[("policy", policy), ("name", name), ("outcome", outcome)],
        )
    }

    /// Rejections counted for `policy`/`name`, by reason (reasons at 0 left out).
    fn refusals(&self, policy: &str, name: &str) -> BTreeMap<String, u64> {
        let mut by_reason = BTreeMap::new();
        for (have, n) in self.counter_series(
            "tidewall_rejections_total",
            &[("policy", policy), ("name", name)],
        ) {
            if n > 0 {
                *by_reason.entry(have["reason"].clone()).or_default() += n;
            }
        }
        by_reason
    }

    /// The state gauges of breaker `name`: the one state at 1 (each other must be 0).
    fn one_state(&self, name: &str) -> String {
        let mut on = Vec::new();
        let mut seen = 0;
        for ((n, have), v) in &self.gauges {
            if n == "tidewall_breaker_state" && have.get("name").is_some_and(|h| h == name) {
                seen += 1;
                if *v == 1.0 {
                    on.push(have["state"].clone());
                } else {
                    assert_eq!(*v, 0.0, "state gauge {have:?} is neither 0 nor 1");
                }
            }
        }
        assert_eq!(
            seen,
            State::ALL.len(),
            "one state series per state of {name}"
        );
        assert_eq!(on.len(), 1, "exactly one state at 1 for {name}: {on:?}");
        on.remove(0)
    }
}

// ---------------------------------------------------------------------------------------------
// The ear: what the listeners were told
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq)]
enum Heard {
    Succeeded,
    Failed,
    Ignored,
    TimedOut,
    Cancelled,
    Rejected(Rejected),
    Changed {
        from: State,
        to: State,
        generation: u32,
    },
    Retry {
        attempt: u32,
        delay: Duration,
    },
    BudgetExhausted,
    Hedge(u32),
    Waited(Duration),
    Other,
}

#[derive(Debug, Clone)]
struct Told {
    policy: &'static str,
    name: String,
    what: Heard,
}

#[derive(Clone, Default)]
struct Ear(Arc<Mutex<Vec<Told>>>);

impl Ear {
    fn listener(&self) -> impl Fn(&Event<'_>) + Send + Sync + 'static {
        let log = Arc::clone(&self.0);
        move |event: &Event<'_>| {
            let what = match event.kind {
                EventKind::Succeeded => Heard::Succeeded,
                EventKind::Failed => Heard::Failed,
                EventKind::Ignored => Heard::Ignored,
                EventKind::TimedOut => Heard::TimedOut,
                EventKind::Cancelled => Heard::Cancelled,
                EventKind::Rejected(why) => Heard::Rejected(*why),
                EventKind::StateChanged(change) => Heard::Changed {
                    from: change.from,
                    to: change.to,
                    generation: change.generation,
                },
                EventKind::RetryScheduled { attempt, delay } => Heard::Retry { attempt, delay },
                EventKind::BudgetExhausted => Heard::BudgetExhausted,
                EventKind::HedgeLaunched { hedge } => Heard::Hedge(hedge),
                EventKind::Waited(wait) => Heard::Waited(wait),
                _ => Heard::Other,
            };
            log.lock().unwrap().push(Told {
                policy: event.policy,
                name: event.name.to_owned(),
                what,
            });
        }
    }

    fn all(&self) -> Vec<Told> {
        self.0.lock().unwrap().clone()
    }

    /// The events of `policy`/`name` matching `pick`.
    fn count(&self, policy: &str, name: &str, pick: impl Fn(&Heard) -> bool) -> u64 {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|t| t.policy == policy && t.name == name && pick(&t.what))
            .count() as u64
    }

    /// Refusals heard from `policy`/`name`, by `Rejected::kind`.
    fn refusals(&self, policy: &str, name: &str) -> BTreeMap<String, u64> {
        let mut by_reason = BTreeMap::new();
        for t in self.0.lock().unwrap().iter() {
            if t.policy == policy
                && t.name == name
                && let Heard::Rejected(why) = t.what
            {
                *by_reason.entry(why.kind().to_owned()).or_default() += 1;
            }
        }
        by_reason
    }

    /// The waits heard from `policy`/`name`, in seconds, sorted.
    fn waits(&self, policy: &str, name: &str) -> Vec<f64> {
        let mut waits: Vec<f64> = self
            .0
            .lock()
            .unwrap()
            .iter()
            .filter(|t| t.policy == policy && t.name == name)
            .filter_map(|t| match t.what {
                Heard::Waited(wait) => Some(wait.as_secs_f64()),
                _ => None,
            })
            .collect();
        waits.sort_by(f64::total_cmp);
        waits
    }
}

fn sorted(mut values: Vec<f64>) -> Vec<f64> {
    values.sort_by(f64::total_cmp);
    values
}

/// Panics this suite makes on purpose start with "deliberate": their messages are not printed
/// (every other panic is, by the hook that was there).
fn quiet_deliberate_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let message = info
                .payload()
                .downcast_ref::<&str>()
                .copied()
                .unwrap_or_default();
            if !message.starts_with("deliberate") {
                previous(info);
            }
        }));
    });
}

fn config(text: &str) -> Config {
    Config::from_toml(text).unwrap()
}

/// Runs `fut`, or drops it after `limit` (it is polled at least once first: tokio's timeout
/// polls the future before its timer). `None` when it was dropped.
async fn within<F: Future>(limit: Option<Duration>, fut: F) -> Option<F::Output> {
    match limit {
        Some(limit) => tokio::time::timeout(limit, fut).await.ok(),
        None => Some(fut.await),
    }
}

/// [`within`], and how long the caller waited for it (virtual time).
async fn timed<F: Future>(limit: Option<Duration>, fut: F) -> (Option<F::Output>, Duration) {
    let start = tokio::time::Instant::now();
    let ended = within(limit, fut).await;
    (ended, start.elapsed())
}

/// How calls ended, as the caller saw them.
#[derive(Debug, Default, Clone)]
struct Endings {
    calls: u64,
    success: u64,
    failure: u64,
    rejected: u64,
    timed_out: u64,
    /// Dropped after their first poll: by the caller, or by a panic unwinding out of them.
    cancelled: u64,
    panicked: u64,
    /// How long each call that ended took, in seconds.
    took: Vec<f64>,
}

impl Endings {
    fn add<T, E: std::fmt::Debug>(
        &mut self,
        (ended, took): (Option<Result<T, Error<E>>>, Duration),
    ) {
        self.calls += 1;
        if ended.is_some() {
            self.took.push(took.as_secs_f64());
        }
        match ended {
            None => self.cancelled += 1,
            Some(Ok(_)) => self.success += 1,
            Some(Err(Error::Inner(_))) => self.failure += 1,
            Some(Err(Error::Rejected(_))) => self.rejected += 1,
            Some(Err(Error::TimedOut)) => self.timed_out += 1,
            Some(Err(other)) => panic!("an ending the docs do not list: {other:?}"),
        }
    }

    /// The pipeline outcomes, as `tidewall_calls_total` labels them, with their expected
    /// counts and the event each is heard as.
    fn outcomes(&self) -> [(&'static str, u64, Heard); 4] {
        [
            ("success", self.success, Heard::Succeeded),
            ("failure", self.failure, Heard::Failed),
            ("timed_out", self.timed_out, Heard::TimedOut),
            ("cancelled", self.cancelled, Heard::Cancelled),
        ]
    }
}

/// Checks one front's call accounting (policy `pipeline`, name `name`): each call counted
/// once, in the outcome it ended with, in the counters and in the listener's endings; a
/// duration for each call that was not cancelled.
fn check_pipeline_books(books: &Books, ear: &Ear, name: &str, ended: &Endings, ctx: &str) {
    for (outcome, expected, heard) in ended.outcomes() {
        assert_eq!(
            books.calls("pipeline", name, outcome),
            expected,
            "{ctx}: tidewall_calls_total{{outcome={outcome}}} ({ended:?})"
        );
        assert_eq!(
            ear.count("pipeline", name, |h| *h == heard),
            expected,
            "{ctx}: {heard:?} events ({ended:?})"
        );
    }
    assert_eq!(
        books.calls("pipeline", name, "rejected"),
        ended.rejected,
        "{ctx}: rejected ({ended:?})"
    );
    assert_eq!(
        ear.count("pipeline", name, |h| matches!(h, Heard::Rejected(_))),
        ended.rejected,
        "{ctx}: pipeline Rejected events"
    );
    assert_eq!(books.calls("pipeline", name, "ignored"), 0, "{ctx}");
    assert_eq!(
        books.counter(
            "tidewall_calls_total",
            &[("policy", "pipeline"), ("name", name)]
        ),
        ended.calls,
        "{ctx}: every call counted exactly once"
    );
    assert_eq!(
        sorted(books.samples(
            "tidewall_call_duration_seconds",
            &[("policy", "pipeline"), ("name", name)]
        )),
        sorted(ended.took.clone()),
        "{ctx}: each call that was not cancelled timed as its caller waited for it"
    );
    assert_eq!(
        books.counter(
            "tidewall_retries_total",
            &[("policy", "pipeline"), ("name", name)]
        ),
        ear.count("pipeline", name, |h| matches!(h, Heard::Retry { .. })),
        "{ctx}: retries counted and heard"
    );
    assert_eq!(
        books.counter(
            "tidewall_retry_budget_exhausted_total",
            &[("policy", "pipeline"), ("name", name)]
        ),
        ear.count("pipeline", name, |h| *h == Heard::BudgetExhausted),
        "{ctx}: budget refusals counted and heard"
    );
}

/// A breaker's outcome counters agree with its outcome events.
fn check_breaker_outcomes(books: &Books, ear: &Ear, name: &str, ctx: &str) {
    for (outcome, heard) in [
        ("success", Heard::Succeeded),
        ("failure", Heard::Failed),
        ("ignored", Heard::Ignored),
    ] {
        assert_eq!(
            books.calls("breaker", name, outcome),
            ear.count("breaker", name, |h| *h == heard),
            "{ctx}: breaker {name} {outcome} counted and heard"
        );
    }
    for to in State::ALL {
        assert_eq!(
            books.counter(
                "tidewall_breaker_transitions_total",
                &[("policy", "breaker"), ("name", name), ("to", to.as_str())]
            ),
            ear.count(
                "breaker",
                name,
                |h| matches!(h, Heard::Changed { to: t, .. } if *t == to)
            ),
            "{ctx}: transitions of {name} to {to:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Operations that panic, calls dropped: a registry pipeline's books
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq)]
enum Step {
    Pass,
    Fail,
    /// Slower than the attempt timeout.
    Stall,
    /// Answers after this many ms.
    Late(u64),
    /// The closure panics instead of making the attempt.
    PanicMaking,
    /// The attempt's future panics after this many ms.
    PanicLater(u64),
}

fn step(rng: &mut Rng) -> Step {
    match rng.below(20) {
        0..=6 => Step::Pass,
        7..=11 => Step::Fail,
        12 => Step::Stall,
        13..=15 => Step::Late(rng.below(120)),
        16 => Step::PanicMaking,
        _ => Step::PanicLater(rng.below(60)),
    }
}

/// What the attempts themselves saw: completed with `Ok`, completed with `Err`, or dropped
/// before completing (an attempt timeout, the deadline, the call dropped).
#[derive(Clone, Default)]
struct Attempts {
    ok: Arc<AtomicU64>,
    err: Arc<AtomicU64>,
    dropped: Arc<AtomicU64>,
    panicked: Arc<AtomicU64>,
}

/// Counts an attempt as dropped unless it is disarmed when it completes.
struct DropWatch(Option<Arc<AtomicU64>>);

impl Drop for DropWatch {
    fn drop(&mut self) {
        if let Some(dropped) = self.0.take() {
            dropped.fetch_add(1, SeqCst);
        }
    }
}

impl Attempts {
    /// The operation of a scripted call: attempt `n` does `script[n]` (the last step again
    /// past the end).
    fn op(
        &self,
        script: Vec<Step>,
    ) -> impl FnMut() -> std::pin::Pin<Box<dyn Future<Output = Result<u32, &'static str>> + Send>>
    + Send
    + use<> {
        let seen = self.clone();
        let mut n = 0;
        move || {
            let step = script[n.min(script.len() - 1)];
            n += 1;
            if step == Step::PanicMaking {
                seen.panicked.fetch_add(1, SeqCst);
                panic!("deliberate: the operation panicked making its attempt");
            }
            let seen = seen.clone();
            Box::pin(async move {
                let mut watch = DropWatch(Some(Arc::clone(&seen.dropped)));
                let result = match step {
                    Step::Pass => Ok(1),
                    Step::Fail => Err("down"),
                    Step::Stall => {
                        tokio::time::sleep(secs(10)).await;
                        Ok(2)
                    }
                    Step::Late(n) => {
                        tokio::time::sleep(ms(n)).await;
                        Ok(3)
                    }
                    Step::PanicLater(n) => {
                        tokio::time::sleep(ms(n)).await;
                        watch.0 = None;
                        seen.panicked.fetch_add(1, SeqCst);
                        panic!("deliberate: the attempt panicked");
                    }
                    Step::PanicMaking => unreachable!(),
                };
                watch.0 = None;
                match result {
                    Ok(_) => seen.ok.fetch_add(1, SeqCst),
                    Err(_) => seen.err.fetch_add(1, SeqCst),
                };
                result
            })
        }
    }
}

const PAY: &str = r#"
[instances.pay]
deadline = "2s"
attempt_timeout = "150ms"
[instances.pay.bulkhead]
max_concurrent = 3
max_queue = 4
max_wait = "300ms"
[instances.pay.retry]
backoff = "constant"
initial_delay = "10ms"
jitter = "none"
max_attempts = 3
[instances.pay.breaker]
consecutive_failures = 6
break_duration = "200ms"
"#;

// Docs: `tidewall_calls_total` "`cancelled` (the call's future dropped after its first
// poll)"; `tidewall_call_duration_seconds` "(not for cancelled calls)"; `Event`: "A listener
// told while its thread is already unwinding (a call or a guard dropped by another panic ...
// heard as Cancelled) is heard too"; breaker: "a permit dropped, cancelled or unwound by a
// panic records nothing"; `Pipeline::call`: "dropping the future releases everything it
// holds (bulkhead slot, breaker permit — recorded as nothing) ... the call is counted as
// `cancelled`"; `Bulkhead::rejected`: "Calls rejected so far"; the gauges "permits held,
// callers waiting, permits in all"; `Registry::on_event`: "every event of every policy and
// pipeline the registry makes".
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn panicking_operations_end_their_calls_as_cancelled_once_and_every_gauge_comes_to_rest() {
    quiet_deliberate_panics();
    for seed in [0xACC0_0001_u64, 0xACC0_0002, 0xACC0_0003] {
        let recorder = DebuggingRecorder::new();
        let mut books = Books::new(&recorder);
        let _recording = metrics::set_default_local_recorder(&recorder);
        let ear = Ear::default();
        let registry = Arc::new(
            Registry::builder(config(PAY))
                .on_event(ear.listener())
                .build()
                .unwrap(),
        );
        let pay = registry.pipeline("pay").unwrap();
        let bulkhead = registry.bulkhead("pay").unwrap();
        let breaker = registry.breaker("pay").unwrap();
        let attempts = Attempts::default();
        let mut rng = Rng::new(seed);
        let mut ended = Endings::default();
        for _wave in 0..24 {
            let mut tasks = Vec::new();
            for _ in 0..9 {
                let script: Vec<Step> = (0..3).map(|_| step(&mut rng)).collect();
                let limit = rng.one_in(4).then(|| ms(1 + rng.below(400)));
                let op = attempts.op(script);
                let pay = pay.clone();
                tasks.push(tokio::spawn(
                    async move { timed(limit, pay.call(op)).await },
                ));
            }
            for task in tasks {
                match task.await {
                    Ok(result) => ended.add(result),
                    Err(join) => {
                        assert!(join.is_panic(), "{join:?}");
                        ended.panicked += 1;
                        ended.add::<u32, &str>((None, Duration::ZERO));
                    }
                }
            }
            // Mid-way, the gauges are the bulkhead's own readings.
            registry.record_gauges();
            books.read();
            for (gauge, value) in [
                ("tidewall_bulkhead_in_flight", bulkhead.in_flight()),
                ("tidewall_bulkhead_queued", bulkhead.queued()),
                ("tidewall_bulkhead_capacity", bulkhead.capacity()),
            ] {
                assert_eq!(
                    books.gauge(gauge, &[("name", "pay")]),
                    Some(value as f64),
                    "seed {seed:#x}: {gauge}"
                );
            }
            if rng.one_in(6) {
                tokio::time::sleep(HOUR * (1 + u32::try_from(rng.below(24)).unwrap())).await;
            } else {
                tokio::time::sleep(ms(rng.below(300))).await;
            }
        }
        tokio::time::sleep(DAY).await;
        registry.record_gauges();
        books.read();
        let ctx = format!("seed {seed:#x}");
        assert!(
            ended.panicked > 0 && ended.cancelled > ended.panicked && ended.success > 0,
            "{ctx}: the storm took every path: {ended:?}"
        );
        assert!(
            ended.failure + ended.rejected + ended.timed_out > 0,
            "{ctx}: {ended:?}"
        );

        check_pipeline_books(&books, &ear, "pay", &ended, &ctx);
        check_breaker_outcomes(&books, &ear, "pay", &ctx);
        // The breaker records what the attempts that completed returned, and nothing for an
        // attempt that panicked; a timed-out attempt is a failure.
        assert_eq!(
            books.calls("breaker", "pay", "success"),
            attempts.ok.load(SeqCst),
            "{ctx}: each attempt that returned Ok is one breaker success"
        );
        let failures = books.calls("breaker", "pay", "failure");
        let (err, dropped) = (attempts.err.load(SeqCst), attempts.dropped.load(SeqCst));
        assert!(
            (err..=err + dropped).contains(&failures),
            "{ctx}: breaker failures {failures}: {err} errors and at most {dropped} cut attempts"
        );
        // Every refusal heard is counted under the policy that refused, and the bulkhead's
        // own tally agrees.
        for policy in ["bulkhead", "breaker"] {
            assert_eq!(
                books.refusals(policy, "pay"),
                ear.refusals(policy, "pay"),
                "{ctx}: {policy} refusals counted and heard"
            );
        }
        assert_eq!(
            books.refusals("bulkhead", "pay").values().sum::<u64>(),
            bulkhead.rejected(),
            "{ctx}: Bulkhead::rejected and tidewall_rejections_total"
        );
        assert_eq!(
            sorted(books.samples(
                "tidewall_wait_duration_seconds",
                &[("policy", "bulkhead"), ("name", "pay")]
            )),
            ear.waits("bulkhead", "pay"),
            "{ctx}: every wait heard is timed, and only those"
        );
        // At rest after a day: nothing held, nobody queued, the breaker's state as it reads.
        for (gauge, value) in [
            ("tidewall_bulkhead_in_flight", 0.0),
            ("tidewall_bulkhead_queued", 0.0),
            ("tidewall_bulkhead_capacity", 3.0),
        ] {
            assert_eq!(
                books.gauge(gauge, &[("name", "pay")]),
                Some(value),
                "{ctx}: {gauge} at rest"
            );
        }
        assert_eq!(books.one_state("pay"), breaker.state().as_str(), "{ctx}");
        assert_eq!(bulkhead.available(), bulkhead.capacity(), "{ctx}");
    }
}

// ---------------------------------------------------------------------------------------------
// 2. A retried value the deadline returns: a failure, everywhere
// ---------------------------------------------------------------------------------------------

/// `Ok(200)` succeeds; an `Ok(503)` and every error are retryable failures.
fn judge<E>(result: Result<&u16, &E>) -> Verdict {
    match result {
        Ok(200) => Verdict::Success,
        _ => Verdict::RetryableFailure,
    }
}

// Docs (`Pipeline::call`): "When the deadline ends a call ... after an attempt got a value that
// was retried (an `Ok` judged a retryable failure, such as a 503 response), the answer is `Ok`
// with the latest such value, past any later errors and timeouts ...; the call counts as a
// failure in the pipeline's metrics and for its admission stages." `PipelineLayer`: "the same
// stages, order, classifier and metrics as `Pipeline::call`"; `BoxPipeline`: "Behaviour is the
// pipeline's". AIMD: "a dropped call ...
// multiplies the limit by `backoff_ratio` (truncated)".
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_retried_value_returned_at_the_deadline_counts_one_failure_in_metrics_events_and_admission()
 {
    let recorder = DebuggingRecorder::new();
    let mut books = Books::new(&recorder);
    let _recording = metrics::set_default_local_recorder(&recorder);
    let ear = Ear::default();
    let limiter = |name: &str| {
        let aimd = Aimd::builder()
            .min_limit(1)
            .initial_limit(10)
            .max_limit(100)
            .backoff_ratio(0.5)
            .build()
            .unwrap();
        AdaptiveLimiter::builder(aimd)
            .name(name.to_owned())
            .on_event(ear.listener())
            .build()
            .unwrap()
    };
    let backoff = || {
        Backoff::constant(ms(10))
            .jitter(Jitter::None)
            .max_attempts(10)
            .build()
            .unwrap()
    };
    let direct_limit = limiter("direct_limit");
    let direct = Pipeline::builder()
        .name("kept")
        .deadline(ms(100))
        .bulkhead(direct_limit.clone())
        .retry(backoff())
        .classify(judge::<&str>)
        .on_event(ear.listener())
        .build()
        .unwrap();
    let boxed_limit = limiter("boxed_limit");
    let boxed = Pipeline::builder()
        .name("kept_boxed")
        .deadline(ms(100))
        .bulkhead(boxed_limit.clone())
        .retry(backoff())
        .classify(judge::<&str>)
        .on_event(ear.listener())
        .build()
        .unwrap()
        .boxed::<u16, &'static str>();
    let tower_limit = limiter("tower_limit");
    let layered = Pipeline::builder()
        .name("kept_tower")
        .deadline(ms(100))
        .bulkhead(tower_limit.clone())
        .retry(backoff())
        .classify(judge::<Error<&str>>)
        .on_event(ear.listener())
        .build()
        .unwrap();

    // Attempt 1 answers 503 at once, attempt 2 fails, attempt 3 is still running at the
    // deadline (t = 100 ms).
    let scripted = |sent: &Arc<AtomicU32>| {
        let sent = Arc::clone(sent);
        move || {
            let n = sent.fetch_add(1, SeqCst);
            async move {
                match n {
                    0 => Ok::<u16, &str>(503),
                    1 => Err("reset"),
                    _ => {
                        tokio::time::sleep(secs(1)).await;
                        Ok(200)
                    }
                }
            }
        }
    };
    let sent = Arc::new(AtomicU32::new(0));
    let start = tokio::time::Instant::now();
    let answer = direct.call(scripted(&sent)).await;
    assert_eq!(answer, Ok(503), "the latest retried value, past the error");
    assert_eq!(start.elapsed(), ms(100));
    assert_eq!(sent.load(SeqCst), 3);
    let sent = Arc::new(AtomicU32::new(0));
    let start = tokio::time::Instant::now();
    assert_eq!(boxed.call(scripted(&sent)).await, Ok(503));
    assert_eq!((start.elapsed(), sent.load(SeqCst)), (ms(100), 3));

    let through = Arc::new(AtomicU32::new(0));
    let service = tower::service_fn({
        let through = Arc::clone(&through);
        move |_: ()| {
            let n = through.fetch_add(1, SeqCst);
            async move {
                match n {
                    0 => Ok::<u16, Error<&str>>(503),
                    1 => Err(Error::Inner("reset")),
                    _ => {
                        tokio::time::sleep(secs(1)).await;
                        Ok(200)
                    }
                }
            }
        }
    });
    let start = tokio::time::Instant::now();
    let answer = PipelineLayer::new(layered).layer(service).oneshot(()).await;
    assert_eq!(answer, Ok(503));
    assert_eq!(start.elapsed(), ms(100));

    books.read();
    for (name, limit) in [
        ("kept", &direct_limit),
        ("kept_boxed", &boxed_limit),
        ("kept_tower", &tower_limit),
    ] {
        for outcome in ["success", "ignored", "rejected", "timed_out", "cancelled"] {
            assert_eq!(
                books.calls("pipeline", name, outcome),
                0,
                "{name}: {outcome}"
            );
        }
        assert_eq!(
            books.calls("pipeline", name, "failure"),
            1,
            "{name}: the call counts as a failure in the pipeline's metrics"
        );
        let endings: Vec<Heard> = ear
            .all()
            .into_iter()
            .filter(|t| t.policy == "pipeline" && t.name == name)
            .map(|t| t.what)
            .collect();
        assert_eq!(
            endings,
            [
                Heard::Retry {
                    attempt: 1,
                    delay: ms(10)
                },
                Heard::Retry {
                    attempt: 2,
                    delay: ms(10)
                },
                Heard::Failed
            ],
            "{name}: two retries, then one ending, a failure"
        );
        assert_eq!(
            books.samples(
                "tidewall_call_duration_seconds",
                &[("policy", "pipeline"), ("name", name)]
            ),
            [0.1],
            "{name}: timed to the deadline"
        );
        assert_eq!(
            (limit.limit(), limit.in_flight()),
            (5, 0),
            "{name}: the admission stage learned a failure (10 × 0.5) and holds nothing"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 3. Hedges: counted per copy started beyond the primary
// ---------------------------------------------------------------------------------------------

/// A hedged call's attempts: copy `k` (from 0) answers after `script[k].0` ms, failing if
/// `script[k].1`.
type HedgeScript = Vec<(u64, bool)>;

fn hedge_script(rng: &mut Rng) -> HedgeScript {
    (0..4)
        .map(|_| {
            let latency = match rng.below(4) {
                0 => 0,
                1 => rng.below(15),
                _ => rng.below(150),
            };
            (latency, rng.one_in(3))
        })
        .collect()
}

/// Checks the hedge accounting of `name` against the copies each call started (`started`:
/// one entry per call, the copies it started, the primary included).
fn check_hedge_books(books: &Books, ear: &Ear, name: &str, started: &[u32], ctx: &str) {
    let hedges: u64 = started
        .iter()
        .map(|&n| u64::from(n.saturating_sub(1)))
        .sum();
    assert!(
        started.iter().all(|&n| n >= 1),
        "{ctx}: every call polled starts its primary"
    );
    assert_eq!(
        books.counter(
            "tidewall_hedges_total",
            &[("policy", "hedge"), ("name", name)]
        ),
        hedges,
        "{ctx}: tidewall_hedges_total is the copies started beyond the primaries"
    );
    assert_eq!(
        ear.count("hedge", name, |h| matches!(h, Heard::Hedge(_))),
        hedges,
        "{ctx}: one HedgeLaunched per copy beyond the primary"
    );
    let most = started.iter().copied().max().unwrap_or(1);
    for j in 1..most {
        let calls_with_j = started.iter().filter(|&&n| n > j).count() as u64;
        assert_eq!(
            ear.count("hedge", name, |h| *h == Heard::Hedge(j)),
            calls_with_j,
            "{ctx}: HedgeLaunched {{ hedge: {j} }} once per call that started copy {j}"
        );
    }
    assert_eq!(
        ear.count("hedge", name, |h| matches!(h, Heard::Hedge(0))),
        0,
        "{ctx}: the primary is not a hedge"
    );
    assert_eq!(
        books.counter(
            "tidewall_retry_budget_exhausted_total",
            &[("policy", "hedge"), ("name", name)]
        ),
        ear.count("hedge", name, |h| *h == Heard::BudgetExhausted),
        "{ctx}: budget refusals counted and heard"
    );
}

// Docs: `tidewall_hedges_total` "hedges launched (the primary attempt is not one)";
// `HedgeLaunched { hedge }` "Which hedge: 1 for the first"; `tidewall_retry_budget_exhausted_total`
// "retries (hedges) the budget refused"; `HedgeBuilder::on_event` "each hedge launched
// (numbered from 1) and each refusal by the hedge budget"; `HedgeLayer::new` "A layer sharing
// `hedge`".
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn hedges_counted_are_the_copies_started_beyond_the_primary_even_for_dropped_calls() {
    let recorder = DebuggingRecorder::new();
    let mut books = Books::new(&recorder);
    let _recording = metrics::set_default_local_recorder(&recorder);
    let ear = Ear::default();
    let build = |name: &str| {
        Hedge::builder()
            .name(name.to_owned())
            .delay(ms(20))
            .max_hedges(3)
            .budget_ratio(0.3)
            .on_event(ear.listener())
            .build()
            .unwrap()
    };
    let direct = build("hd");
    let mut rng = Rng::new(0x004E_D6E5);
    let mut started = Vec::new();
    let mut dropped = 0;
    for wave in 0..40 {
        let mut calls = Vec::new();
        let mut counters = Vec::new();
        // Every fourth wave runs its calls one at a time: their events can be told apart.
        let one_by_one = wave % 4 == 0;
        for _ in 0..6 {
            let script = hedge_script(&mut rng);
            let limit = rng.one_in(4).then(|| ms(1 + rng.below(120)));
            let copies = Arc::new(AtomicU32::new(0));
            counters.push(Arc::clone(&copies));
            let direct = &direct;
            calls.push(async move {
                let op = Idempotent(move || {
                    let k = copies.fetch_add(1, SeqCst) as usize;
                    let (latency, fail) = script[k.min(script.len() - 1)];
                    async move {
                        tokio::time::sleep(ms(latency)).await;
                        if fail { Err("slow and wrong") } else { Ok(k) }
                    }
                });
                within(limit, direct.call(op)).await
            });
        }
        if one_by_one {
            for (call, copies) in calls.into_iter().zip(&counters) {
                let before = ear.all().len();
                let ended = call.await;
                dropped += u64::from(ended.is_none());
                let n = copies.load(SeqCst);
                let numbers: Vec<u32> = ear.all()[before..]
                    .iter()
                    .filter_map(|t| match t.what {
                        Heard::Hedge(j) => Some(j),
                        _ => None,
                    })
                    .collect();
                assert_eq!(
                    numbers,
                    (1..n).collect::<Vec<_>>(),
                    "one call's hedges are numbered 1, 2, ... in launch order"
                );
                let refusals = ear.all()[before..]
                    .iter()
                    .filter(|t| t.what == Heard::BudgetExhausted)
                    .count();
                assert!(
                    refusals <= 2,
                    "a call's budget is asked at most twice after a refusal: {:?}",
                    &ear.all()[before..]
                );
            }
        } else {
            for ended in futures_util::future::join_all(calls).await {
                dropped += u64::from(ended.is_none());
            }
        }
        started.extend(counters.iter().map(|c| c.load(SeqCst)));
        tokio::time::sleep(ms(rng.below(2_000))).await;
    }
    books.read();
    assert!(dropped > 0, "some calls were dropped");
    assert!(
        ear.count("hedge", "hd", |h| *h == Heard::BudgetExhausted) > 0,
        "the budget refused some hedges"
    );
    check_hedge_books(&books, &ear, "hd", &started, "Hedge::call");

    // The tower front: each request's copies are calls of the inner service.
    let layer = HedgeLayer::new(build("ht"));
    let copies: Arc<Mutex<HashMap<u64, u32>>> = Arc::default();
    let scripts: Arc<Mutex<HashMap<u64, HedgeScript>>> = Arc::default();
    let service = tower::service_fn({
        let copies = Arc::clone(&copies);
        let scripts = Arc::clone(&scripts);
        move |id: u64| {
            let k = {
                let mut copies = copies.lock().unwrap();
                let k = copies.entry(id).or_default();
                *k += 1;
                *k as usize - 1
            };
            let (latency, fail) = {
                let scripts = scripts.lock().unwrap();
                let script = &scripts[&id];
                script[k.min(script.len() - 1)]
            };
            async move {
                tokio::time::sleep(ms(latency)).await;
                if fail {
                    Err(Error::Inner("slow and wrong"))
                } else {
                    Ok(k)
                }
            }
        }
    });
    let mut id = 0;
    for _wave in 0..30 {
        let mut calls = Vec::new();
        for _ in 0..6 {
            id += 1;
            scripts.lock().unwrap().insert(id, hedge_script(&mut rng));
            let limit = rng.one_in(4).then(|| ms(1 + rng.below(120)));
            let svc = layer.layer(service.clone());
            calls.push(async move { within(limit, svc.oneshot(id)).await });
        }
        futures_util::future::join_all(calls).await;
        tokio::time::sleep(ms(rng.below(2_000))).await;
    }
    books.read();
    let started: Vec<u32> = copies.lock().unwrap().values().copied().collect();
    assert_eq!(started.len() as u64, id, "every request sent its primary");
    check_hedge_books(&books, &ear, "ht", &started, "HedgeLayer");
}

// ---------------------------------------------------------------------------------------------
// 4. An adaptive limiter from a registry: gauges mid-storm and at rest, waits timed
// ---------------------------------------------------------------------------------------------

fn ad_config(initial_limit: u64, max_queue: u64) -> String {
    format!(
        r#"
[instances.ad]
deadline = "1s"
[instances.ad.adaptive]
algorithm = "aimd"
min_limit = 1
initial_limit = {initial_limit}
max_limit = 8
backoff_ratio = 0.5
timeout = "100ms"
max_queue = {max_queue}
max_wait = "200ms"
[instances.ad.retry]
backoff = "constant"
initial_delay = "5ms"
jitter = "none"
max_attempts = 2
"#
    )
}

// Docs: `tidewall_adaptive_limit`, `tidewall_adaptive_in_flight`, `tidewall_adaptive_queued`
// "an adaptive limiter's limit in force, calls in flight (above the limit for a while after
// it falls) and callers waiting"; `Registry::record_gauges` "each adaptive limiter's limit,
// calls in flight and callers queued"; `tidewall_wait_duration_seconds` "`policy` (`bulkhead`,
// `adaptive`) ... time queued for a permit, for waits that ended admitted";
// `AdaptiveLimiterBuilder::on_event` "Tells `listener` of its refusals and waits, as a
// bulkhead's `on_event` does"; `tidewall_rejections_total` "refusals, as the caller was
// finally refused".
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn adaptive_gauges_read_mid_storm_and_at_rest_and_its_waits_are_timed_as_heard() {
    let recorder = DebuggingRecorder::new();
    let mut books = Books::new(&recorder);
    let _recording = metrics::set_default_local_recorder(&recorder);
    let ear = Ear::default();
    let registry = Registry::builder(config(&ad_config(4, 6)))
        .on_event(ear.listener())
        .build()
        .unwrap();
    let ad = registry.pipeline("ad").unwrap();
    let limiter = registry.adaptive_limiter("ad").unwrap();
    let attempts = Attempts::default();
    let mut rng = Rng::new(0xADA9_7001);
    let mut ended = Endings::default();
    let mut read_mid_flight = 0;
    let mut limits_seen = Vec::new();
    let mut reloads = 0;
    for _wave in 0..40 {
        let mut tasks = Vec::new();
        for _ in 0..12 {
            let script: Vec<Step> = (0..2)
                .map(|_| match rng.below(6) {
                    0 => Step::Fail,
                    1 => Step::Stall,
                    _ => Step::Late(rng.below(180)),
                })
                .collect();
            let limit = rng.one_in(4).then(|| ms(1 + rng.below(300)));
            let op = attempts.op(script);
            let ad = ad.clone();
            tasks.push(tokio::spawn(async move { timed(limit, ad.call(op)).await }));
        }
        // Mid-storm: the gauges are the limiter's own readings at that moment, across reloads
        // that retune the queue or restart the learning (a new initial limit).
        for _ in 0..3 {
            tokio::time::sleep(ms(rng.below(90))).await;
            if rng.one_in(5) {
                let (initial, queue) = (1 + rng.below(8), rng.below(7));
                registry.reload(config(&ad_config(initial, queue))).unwrap();
                reloads += 1;
            }
            registry.record_gauges();
            books.read();
            let now = (limiter.limit(), limiter.in_flight(), limiter.queued());
            read_mid_flight += usize::from(now.1 > 0 || now.2 > 0);
            limits_seen.push(now.0);
            for (gauge, value) in [
                ("tidewall_adaptive_limit", f64::from(now.0)),
                ("tidewall_adaptive_in_flight", now.1 as f64),
                ("tidewall_adaptive_queued", now.2 as f64),
            ] {
                assert_eq!(
                    books.gauge(gauge, &[("name", "ad")]),
                    Some(value),
                    "{gauge} read mid-storm"
                );
            }
        }
        for task in tasks {
            ended.add(task.await.unwrap());
        }
        tokio::time::sleep(ms(rng.below(500))).await;
    }
    assert!(
        read_mid_flight > 10,
        "gauges were read with calls in flight"
    );
    assert!(reloads > 5, "{reloads} reloads");
    assert!(
        limits_seen.iter().min() < limits_seen.iter().max(),
        "the limit moved: {limits_seen:?}"
    );
    assert!(
        ended.cancelled > 0 && ended.rejected > 0 && ended.success > 0,
        "{ended:?}"
    );
    books.read();
    check_pipeline_books(&books, &ear, "ad", &ended, "adaptive pipeline");
    assert_eq!(
        books.refusals("adaptive", "ad"),
        ear.refusals("adaptive", "ad"),
        "refusals counted and heard"
    );
    assert!(!ear.refusals("adaptive", "ad").is_empty());
    let waits = ear.waits("adaptive", "ad");
    assert!(
        waits.iter().any(|w| *w > 0.0),
        "some callers waited: {waits:?}"
    );
    assert_eq!(
        sorted(books.samples(
            "tidewall_wait_duration_seconds",
            &[("policy", "adaptive"), ("name", "ad")]
        )),
        waits,
        "each wait that ended admitted is timed once, as heard"
    );
    // At rest, then after an idle day.
    for idle in [Duration::ZERO, DAY] {
        tokio::time::sleep(idle).await;
        registry.record_gauges();
        books.read();
        for (gauge, value) in [
            ("tidewall_adaptive_limit", f64::from(limiter.limit())),
            ("tidewall_adaptive_in_flight", 0.0),
            ("tidewall_adaptive_queued", 0.0),
        ] {
            assert_eq!(
                books.gauge(gauge, &[("name", "ad")]),
                Some(value),
                "{gauge} at rest after {idle:?}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 5. Reloads under load: one series, every call once, gauges on the settings in force
// ---------------------------------------------------------------------------------------------

struct Svc {
    capacity: u64,
    queue: u64,
    attempts: u64,
    window: u64,
    deadline: u64,
}

impl Svc {
    fn draw(rng: &mut Rng) -> Self {
        Self {
            capacity: 1 + rng.below(4),
            queue: rng.below(4),
            attempts: 1 + rng.below(4),
            window: [6, 8][rng.index(2)],
            deadline: 200 + rng.below(600),
        }
    }

    fn toml(&self) -> String {
        format!(
            r#"
[instances.svc]
deadline = "{deadline}ms"
attempt_timeout = "100ms"
[instances.svc.bulkhead]
max_concurrent = {capacity}
max_queue = {queue}
max_wait = "150ms"
[instances.svc.retry]
backoff = "constant"
initial_delay = "10ms"
jitter = "none"
max_attempts = {attempts}
[instances.svc.budget]
ratio = 0.2
min_per_second = 3
[instances.svc.breaker]
failure_rate = 0.5
minimum_calls = 4
window_calls = {window}
break_duration = "150ms"
"#,
            deadline = self.deadline,
            capacity = self.capacity,
            queue = self.queue,
            attempts = self.attempts,
            window = self.window,
        )
    }
}

/// A request through the tower front: its script, and the attempt it is at (shared by the
/// copies the layer makes).
#[derive(Clone)]
struct Scripted(Arc<Vec<Step>>, Arc<AtomicU32>);

// Docs (OBSERVABILITY §6): "For registry pipelines, panels 1 to 4 work with
// `policy="pipeline"` (`name`: the instance), whether the calls go through the handle or a
// tower `PipelineLayer` made from it (the same engine records them)"; `LivePipeline`: "A
// reload makes the pipeline anew ... Every call after the reload runs on the new settings";
// `Registry::reload`: breakers whose window changed shape are "reset to closed with a
// state-change event", bulkheads "shrunk below what is held admit nobody new"; the reload
// series: `tidewall_config_reloads_total{registry, outcome}` and
// `tidewall_config_last_reload_successful` "1 when the registry's last reload was applied
// ..., 0 when it was refused".
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn reloads_under_load_keep_one_series_every_call_counted_once_and_gauges_on_the_new_settings()
{
    let recorder = DebuggingRecorder::new();
    let mut books = Books::new(&recorder);
    let _recording = metrics::set_default_local_recorder(&recorder);
    let ear = Ear::default();
    let mut rng = Rng::new(0x5E1_0AD5);
    let mut settings = Svc::draw(&mut rng);
    let registry = Registry::builder(config(&settings.toml()))
        .name("svc_registry")
        .on_event(ear.listener())
        .build()
        .unwrap();
    let handle = registry.pipeline("svc").unwrap();
    let layer = PipelineLayer::new(handle.clone());
    let service = tower::service_fn(|req: Scripted| {
        let n = req.1.fetch_add(1, SeqCst) as usize;
        let step = req.0[n.min(req.0.len() - 1)];
        async move {
            match step {
                Step::Fail => Err(Error::Inner("down")),
                Step::Stall => {
                    tokio::time::sleep(secs(10)).await;
                    Ok(2_u32)
                }
                Step::Late(n) => {
                    tokio::time::sleep(ms(n)).await;
                    Ok(3)
                }
                _ => Ok(1),
            }
        }
    });
    let bulkhead = registry.bulkhead("svc").unwrap();
    let breaker = registry.breaker("svc").unwrap();
    let attempts = Attempts::default();
    let mut ended = Endings::default();
    let (mut applied, mut refused) = (0, 0);
    for _wave in 0..40 {
        let mut tasks = Vec::new();
        for _ in 0..10 {
            let script: Vec<Step> = (0..4)
                .map(|_| match rng.below(10) {
                    0..=3 => Step::Pass,
                    4..=6 => Step::Fail,
                    7 => Step::Stall,
                    _ => Step::Late(rng.below(120)),
                })
                .collect();
            let limit = rng.one_in(5).then(|| ms(1 + rng.below(300)));
            if rng.one_in(2) {
                let op = attempts.op(script);
                let handle = handle.clone();
                tasks.push(tokio::spawn(
                    async move { timed(limit, handle.call(op)).await },
                ));
            } else {
                let svc = layer.layer(service);
                let req = Scripted(Arc::new(script), Arc::default());
                tasks.push(tokio::spawn(
                    async move { timed(limit, svc.oneshot(req)).await },
                ));
            }
        }
        // A reload while those calls run: applied (new settings) or refused (the pipeline's
        // instance removed).
        tokio::time::sleep(ms(rng.below(120))).await;
        if rng.one_in(3) {
            let good = rng.below(4) != 0;
            let next = Svc::draw(&mut rng);
            let text = if good {
                next.toml()
            } else {
                // Parses and validates, but removes the instance a pipeline is held of.
                next.toml().replace("instances.svc", "instances.elsewhere")
            };
            let result = registry.reload(config(&text));
            assert_eq!(result.is_ok(), good, "{result:?}");
            if good {
                applied += 1;
                settings = next;
            } else {
                refused += 1;
            }
            books.read();
            assert_eq!(
                books.gauge(
                    "tidewall_config_last_reload_successful",
                    &[("registry", "svc_registry")]
                ),
                Some(if good { 1.0 } else { 0.0 }),
                "the last reload's gauge"
            );
            // Right after it, with calls in flight: the gauges read the bulkhead as it is now
            // (in flight above a shrunk capacity included).
            registry.record_gauges();
            books.read();
            for (gauge, value) in [
                ("tidewall_bulkhead_in_flight", bulkhead.in_flight()),
                ("tidewall_bulkhead_queued", bulkhead.queued()),
                ("tidewall_bulkhead_capacity", bulkhead.capacity()),
            ] {
                assert_eq!(
                    books.gauge(gauge, &[("name", "svc")]),
                    Some(value as f64),
                    "{gauge} right after a reload"
                );
            }
            assert_eq!(bulkhead.capacity() as u64, settings.capacity);
        }
        for task in tasks {
            ended.add(task.await.unwrap());
        }
        tokio::time::sleep(ms(rng.below(400))).await;
    }
    assert!(
        applied > 3 && refused > 0,
        "{applied} applied, {refused} refused"
    );
    tokio::time::sleep(HOUR).await;
    registry.record_gauges();
    books.read();
    let ctx = format!("{ended:?}");
    assert!(
        ended.cancelled > 0 && ended.rejected > 0 && ended.failure > 0,
        "{ctx}"
    );
    check_pipeline_books(&books, &ear, "svc", &ended, "handle and layer");
    check_breaker_outcomes(&books, &ear, "svc", "reloaded breaker");
    for policy in ["bulkhead", "breaker"] {
        assert_eq!(
            books.refusals(policy, "svc"),
            ear.refusals(policy, "svc"),
            "{policy} refusals counted and heard"
        );
    }
    assert_eq!(
        books.refusals("bulkhead", "svc").values().sum::<u64>(),
        bulkhead.rejected(),
        "Bulkhead::rejected and the counter"
    );
    for (outcome, expected) in [("applied", applied), ("refused", refused)] {
        assert_eq!(
            books.counter(
                "tidewall_config_reloads_total",
                &[("registry", "svc_registry"), ("outcome", outcome)]
            ),
            expected,
            "reloads {outcome}"
        );
    }
    for (gauge, value) in [
        ("tidewall_bulkhead_in_flight", 0),
        ("tidewall_bulkhead_queued", 0),
        ("tidewall_bulkhead_capacity", settings.capacity),
    ] {
        assert_eq!(
            books.gauge(gauge, &[("name", "svc")]),
            Some(value as f64),
            "{gauge} at rest, on the settings in force"
        );
    }
    assert_eq!(books.one_state("svc"), breaker.state().as_str());
    // One series per label set: the pipeline's counters never split by front or by reload.
    let series = books.counter_series("tidewall_calls_total", &[("policy", "pipeline")]);
    assert!(
        series
            .iter()
            .all(|(l, _)| l["name"] == "svc" && l.len() == 3),
        "{series:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 6. An instance renamed by a reload
// ---------------------------------------------------------------------------------------------

// Docs: `Registry::reload` "Policies of instances new in `config` are built; those of
// instances it no longer declares are kept, on the layers that remain (the defaults, say), and
// named in `Reload::removed`"; `Registry::record_gauges` "Sets the gauges of every policy
// held ... labelled with the instance's name"; `Bulkhead::reconfigure` "its name and runtime
// are not changed"; the telemetry table: every series carries the policy's `name`.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_renamed_instance_reports_under_both_names_each_policy_in_its_own_series() {
    let recorder = DebuggingRecorder::new();
    let mut books = Books::new(&recorder);
    let _recording = metrics::set_default_local_recorder(&recorder);
    let ear = Ear::default();
    let named = |name: &str| {
        format!(
            "[defaults.bulkhead]\nmax_concurrent = 2\nmax_queue = 0\n\
             [instances.{name}.bulkhead]\nmax_concurrent = 5\nmax_queue = 0\n\
             [instances.{name}.breaker]\nconsecutive_failures = 1\nbreak_duration = \"1s\"\n"
        )
    };
    let registry = Registry::builder(config(&named("old")))
        .on_event(ear.listener())
        .build()
        .unwrap();
    let old_bulkhead = registry.bulkhead("old").unwrap();
    let old_breaker = registry.breaker("old").unwrap();
    let held = old_bulkhead.try_acquire_owned().unwrap();
    old_breaker.try_acquire().unwrap().failure(); // old: closed → open

    let reload = registry.reload(config(&named("new"))).unwrap();
    assert_eq!(reload.removed, ["old"]);
    let new_bulkhead = registry.bulkhead("new").unwrap();
    let new_breaker = registry.breaker("new").unwrap();
    assert_eq!((old_bulkhead.capacity(), new_bulkhead.capacity()), (2, 5));
    assert_eq!(old_bulkhead.name(), "old");

    // Both names report, each its own policy's readings.
    registry.record_gauges();
    books.read();
    for (name, bulkhead, breaker) in [
        ("old", &old_bulkhead, &old_breaker),
        ("new", &new_bulkhead, &new_breaker),
    ] {
        for (gauge, value) in [
            ("tidewall_bulkhead_in_flight", bulkhead.in_flight()),
            ("tidewall_bulkhead_queued", bulkhead.queued()),
            ("tidewall_bulkhead_capacity", bulkhead.capacity()),
        ] {
            assert_eq!(
                books.gauge(gauge, &[("name", name)]),
                Some(value as f64),
                "{gauge} of {name}"
            );
        }
        assert_eq!(books.one_state(name), breaker.state().as_str(), "{name}");
    }
    assert_eq!(
        books.gauge("tidewall_bulkhead_in_flight", &[("name", "old")]),
        Some(1.0)
    );

    // Each handle's refusals and transitions land in its own name's series.
    let _second = old_bulkhead.try_acquire_owned().unwrap();
    assert!(
        old_bulkhead.try_acquire().is_err(),
        "2 of 2 held under the defaults"
    );
    new_breaker.try_acquire().unwrap().failure(); // new: closed → open
    assert!(new_breaker.try_acquire().is_err());
    drop(held);
    books.read();
    assert_eq!(
        books.refusals("bulkhead", "old"),
        BTreeMap::from([("bulkhead_full".to_owned(), 1)])
    );
    assert!(books.refusals("bulkhead", "new").is_empty());
    assert_eq!(
        books.refusals("breaker", "new"),
        BTreeMap::from([("circuit_open".to_owned(), 1)])
    );
    for name in ["old", "new"] {
        check_breaker_outcomes(&books, &ear, name, "renamed");
        assert_eq!(
            books.counter(
                "tidewall_breaker_transitions_total",
                &[("name", name), ("to", "open")]
            ),
            1,
            "{name} opened once"
        );
    }

    // And back: `old` declared again takes its own section; `new` falls to the defaults.
    let reload = registry.reload(config(&named("old"))).unwrap();
    assert_eq!(reload.removed, ["new"]);
    registry.record_gauges();
    books.read();
    assert_eq!(
        books.gauge("tidewall_bulkhead_capacity", &[("name", "old")]),
        Some(5.0)
    );
    assert_eq!(
        books.gauge("tidewall_bulkhead_capacity", &[("name", "new")]),
        Some(2.0)
    );
    assert_eq!(
        books.gauge("tidewall_bulkhead_in_flight", &[("name", "old")]),
        Some(1.0),
        "the permit held across both reloads is still counted"
    );
}

// ---------------------------------------------------------------------------------------------
// 7. A breaker's seeded random walk: transitions, generations and the state gauge
// ---------------------------------------------------------------------------------------------

fn walk_config(window: u64, rate: f64) -> String {
    format!(
        "[instances.walk.breaker]\nfailure_rate = {rate}\nminimum_calls = 2\nwindow_calls = {window}\n\
         break_duration = \"1s\"\nhalf_open_probes = 2\nmax_half_open_wait = \"3s\"\n"
    )
}

// Docs: `StateChange::generation` "one more on every transition"; `state_and_generation`
// "The generation is one more on every transition, by hand or not"; `tidewall_breaker_state`
// "1 for the state the breaker is in, 0 for the others"; `tidewall_breaker_transitions_total`
// "state changes" with `to`; `CircuitBreakerBuilder::on_event` "each state change"; a reload
// resets a breaker whose window changed shape "with a state-change event"; the breaker's
// "Any age" guarantee (an hour, a day idle).
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_breakers_random_walk_keeps_transitions_generations_and_the_state_gauge_in_step() {
    for seed in [0xB4EA_0001_u64, 0xB4EA_0002, 0xB4EA_0003, 0xB4EA_0004] {
        let recorder = DebuggingRecorder::new();
        let mut books = Books::new(&recorder);
        let _recording = metrics::set_default_local_recorder(&recorder);
        let ear = Ear::default();
        let mut window = 4;
        let registry = Registry::builder(config(&walk_config(window, 0.5)))
            .on_event(ear.listener())
            .build()
            .unwrap();
        let breaker = registry.breaker("walk").unwrap();
        let (first_state, first_generation) = breaker.state_and_generation();
        assert_eq!(first_state, State::Closed);
        let mut rng = Rng::new(seed);
        let mut held = Vec::new();
        let mut visited = std::collections::HashSet::new();
        for step in 0..400 {
            let what = rng.below(14);
            match what {
                0..=4 => {
                    if let Ok(permit) = breaker.try_acquire() {
                        match rng.below(4) {
                            0 => permit.success(),
                            1 | 2 => permit.failure(),
                            _ => drop(permit),
                        }
                    }
                }
                5 => {
                    if held.len() < 3
                        && let Ok(permit) = breaker.try_acquire_owned()
                    {
                        held.push(permit);
                    }
                }
                6 => {
                    if !held.is_empty() {
                        let permit = held.remove(rng.index(held.len()));
                        match rng.below(3) {
                            0 => permit.success(),
                            1 => permit.failure(),
                            _ => drop(permit),
                        }
                    }
                }
                7 | 8 => {
                    let idle = match rng.below(6) {
                        0 => HOUR,
                        1 => DAY,
                        _ => ms(rng.below(3_500)),
                    };
                    tokio::time::sleep(idle).await;
                }
                9 => breaker.force_open(),
                10 => breaker.force_closed(),
                11 => breaker.reset(),
                _ => {
                    // A reload: sometimes the window changes shape (a reset), sometimes only
                    // the threshold (kept).
                    if rng.one_in(2) {
                        window = if window == 4 { 6 } else { 4 };
                    }
                    let rate = [0.5, 0.75][rng.index(2)];
                    registry.reload(config(&walk_config(window, rate))).unwrap();
                }
            }
            registry.record_gauges();
            books.read();
            let (state, generation) = breaker.state_and_generation();
            visited.insert(state);
            let ctx = format!("seed {seed:#x}, step {step} (action {what})");
            assert_eq!(
                books.one_state("walk"),
                state.as_str(),
                "{ctx}: the gauge marks the state the breaker is in"
            );
            let changes: Vec<(State, State, u32)> = ear
                .all()
                .into_iter()
                .filter(|t| t.policy == "breaker" && t.name == "walk")
                .filter_map(|t| match t.what {
                    Heard::Changed {
                        from,
                        to,
                        generation,
                    } => Some((from, to, generation)),
                    _ => None,
                })
                .collect();
            let mut at = (first_state, first_generation);
            for &(from, to, g) in &changes {
                assert_eq!(from, at.0, "{ctx}: each change starts where the last ended");
                assert_eq!(
                    g,
                    at.1.wrapping_add(1),
                    "{ctx}: one generation more per transition: {changes:?}"
                );
                at = (to, g);
            }
            assert_eq!(
                at,
                (state, generation),
                "{ctx}: the state and generation read are the last change heard"
            );
            for to in State::ALL {
                assert_eq!(
                    books.counter(
                        "tidewall_breaker_transitions_total",
                        &[("name", "walk"), ("to", to.as_str())]
                    ),
                    changes.iter().filter(|c| c.1 == to).count() as u64,
                    "{ctx}: transitions to {to:?} counted as heard"
                );
            }
        }
        drop(held);
        check_breaker_outcomes(&books, &ear, "walk", "walk");
        assert!(visited.len() >= 4, "seed {seed:#x}: visited {visited:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// 8. Tower stacks: an AdmitLayer over a bulkhead and a BreakerLayer, in either order
// ---------------------------------------------------------------------------------------------

// Docs: `BreakerLayer` "Each result is counted as its classifier judges it ...; a call whose
// response future is dropped records nothing either"; `AdmitMode::Reject` "the response future
// fails at once with the stage's own rejection"; `AdmitMode::WaitCall` "each call waits for
// admission on its own"; `tidewall_rejections_total` "refusals, as the caller was finally
// refused (a wait that ends admitted is not one)"; `tidewall_wait_duration_seconds` "for waits
// that ended admitted"; `Bulkhead::rejected` "Calls rejected so far"; `BreakerLayer`: "A
// refusal from a layer below (... a full bulkhead ...) is recorded as `Ignored` (nothing in the
// window) and is not shown to the classifier ..., so admission may sit on either side of the
// breaker"; its `Ignored` results "its metrics and events count ... `ignored`".
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn tower_stacks_count_each_request_once_where_it_ended_whichever_side_admission_is_on() {
    type Stack = tower::util::BoxCloneService<(u64, bool), u64, Error<&'static str>>;
    for (breaker_outside, mode, seed) in [
        (false, AdmitMode::WaitCall, 0x70E4_0001_u64),
        (false, AdmitMode::Reject, 0x70E4_0002),
        (false, AdmitMode::WaitReady, 0x70E4_0003),
        (true, AdmitMode::WaitCall, 0x70E4_0004),
        (true, AdmitMode::Reject, 0x70E4_0005),
        (true, AdmitMode::WaitReady, 0x70E4_0006),
    ] {
        let recorder = DebuggingRecorder::new();
        let mut books = Books::new(&recorder);
        let _recording = metrics::set_default_local_recorder(&recorder);
        let ear = Ear::default();
        let bulkhead = Bulkhead::builder(2)
            .name("tb")
            .max_queue(3)
            .max_wait(ms(80))
            .on_event(ear.listener())
            .build()
            .unwrap();
        let breaker = tidewall::breaker::CircuitBreaker::builder()
            .name("tb")
            .consecutive_failures(3)
            .break_duration(ms(200))
            .on_event(ear.listener())
            .build()
            .unwrap();
        let inner = tower::service_fn(|(latency, fail): (u64, bool)| async move {
            tokio::time::sleep(ms(latency)).await;
            if fail {
                Err(Error::Inner("down"))
            } else {
                Ok(latency)
            }
        });
        let stack: Stack = if breaker_outside {
            Stack::new(
                BreakerLayer::new(breaker.clone())
                    .layer(AdmitLayer::new(bulkhead.clone(), mode).layer(inner)),
            )
        } else {
            Stack::new(
                AdmitLayer::new(bulkhead.clone(), mode)
                    .layer(BreakerLayer::new(breaker.clone()).layer(inner)),
            )
        };
        let mut rng = Rng::new(seed);
        let (mut ok, mut failed, mut dropped) = (0, 0, 0);
        let mut refused: BTreeMap<String, u64> = BTreeMap::new();
        for _wave in 0..40 {
            let mut calls = Vec::new();
            for _ in 0..7 {
                let req = (rng.below(60), rng.one_in(3));
                let limit = rng.one_in(4).then(|| ms(1 + rng.below(100)));
                let svc = stack.clone();
                calls.push(async move { within(limit, svc.oneshot(req)).await });
            }
            for ended in futures_util::future::join_all(calls).await {
                match ended {
                    None => dropped += 1,
                    Some(Ok(_)) => ok += 1,
                    Some(Err(Error::Inner(_))) => failed += 1,
                    Some(Err(Error::Rejected(why))) => {
                        *refused.entry(why.kind().to_owned()).or_default() += 1;
                    }
                    Some(Err(other)) => panic!("{other:?}"),
                }
            }
            tokio::time::sleep(ms(rng.below(300))).await;
        }
        books.read();
        let ctx = format!(
            "{mode:?}, breaker outside: {breaker_outside}: ok {ok}, failed {failed}, \
             dropped {dropped}, {refused:?}"
        );
        assert!(
            ok > 0 && failed > 0 && dropped > 0 && !refused.is_empty(),
            "{ctx}"
        );
        assert_eq!(books.calls("breaker", "tb", "success"), ok, "{ctx}");
        assert_eq!(books.calls("breaker", "tb", "failure"), failed, "{ctx}");
        // A refusal from below is recorded as `Ignored`: counted `ignored`, never a failure.
        let below = if breaker_outside {
            books.refusals("bulkhead", "tb").values().sum::<u64>()
        } else {
            0
        };
        let ignored = books.calls("breaker", "tb", "ignored");
        assert_eq!(
            ignored, below,
            "{ctx}: {ignored} ignored, {below} refusals below"
        );
        check_breaker_outcomes(&books, &ear, "tb", &ctx);
        let mut counted = books.refusals("bulkhead", "tb");
        for (reason, n) in books.refusals("breaker", "tb") {
            *counted.entry(reason).or_default() += n;
        }
        assert_eq!(
            counted, refused,
            "{ctx}: each refusal the callers got counted once, by the policy that refused"
        );
        for policy in ["bulkhead", "breaker"] {
            assert_eq!(
                books.refusals(policy, "tb"),
                ear.refusals(policy, "tb"),
                "{ctx}: {policy} refusals counted and heard"
            );
        }
        assert_eq!(
            books.refusals("bulkhead", "tb").values().sum::<u64>(),
            bulkhead.rejected(),
            "{ctx}"
        );
        assert_eq!(
            sorted(books.samples(
                "tidewall_wait_duration_seconds",
                &[("policy", "bulkhead"), ("name", "tb")]
            )),
            ear.waits("bulkhead", "tb"),
            "{ctx}: waits timed as heard"
        );
        assert_eq!(
            (
                bulkhead.in_flight(),
                bulkhead.queued(),
                bulkhead.available()
            ),
            (0, 0, 2),
            "{ctx}: at rest"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 9. Fault injection through a retrying pipeline, calls dropped mid-fault
// ---------------------------------------------------------------------------------------------

// Docs: `tidewall_chaos_injections_total` "faults a `Chaos` handle injected, counted when
// drawn: a call given latency and an error counts once under each; `alter` counts calls
// chosen for altering, whether or not the operation then succeeded"; `Chaos::wrap` "every
// attempt is a call"; `Chaos` "Call number `n` (counting from 0, in the order calls draw:
// `decided` says how many have)"; `decide_nth` "What call number `n` gets under the settings
// now in force".
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn injections_counted_are_the_faults_drawn_even_for_calls_dropped_mid_fault() {
    use tidewall::chaos::{Chaos, Fault, InjectedFault};

    let recorder = DebuggingRecorder::new();
    let mut books = Books::new(&recorder);
    let _recording = metrics::set_default_local_recorder(&recorder);
    let ear = Ear::default();
    let chaos = Chaos::builder()
        .seed(0xC4A0_5EED)
        .name("faults")
        .latency(0.3, ms(40))
        .error(0.2)
        .hang(0.1)
        .alter(0.2)
        .build()
        .unwrap();
    let pipeline = Pipeline::builder()
        .name("chaotic")
        .deadline(ms(400))
        .retry(
            Backoff::constant(ms(5))
                .jitter(Jitter::None)
                .max_attempts(3)
                .build()
                .unwrap(),
        )
        .attempt_timeout(ms(100))
        .on_event(ear.listener())
        .build()
        .unwrap();
    let mut rng = Rng::new(0xC4A0);
    let mut ended = Endings::default();
    for _wave in 0..30 {
        let mut calls = Vec::new();
        for _ in 0..8 {
            let fail = rng.one_in(3);
            let latency = rng.below(30);
            let limit = rng.one_in(3).then(|| ms(1 + rng.below(150)));
            let op = chaos.wrap(move || async move {
                tokio::time::sleep(ms(latency)).await;
                if fail {
                    Err(InjectedFault::Error)
                } else {
                    Ok(latency)
                }
            });
            let pipeline = &pipeline;
            calls.push(async move { timed(limit, pipeline.call(op)).await });
        }
        for result in futures_util::future::join_all(calls).await {
            ended.add(result);
        }
        tokio::time::sleep(ms(rng.below(200))).await;
    }
    books.read();
    check_pipeline_books(&books, &ear, "chaotic", &ended, "chaotic");
    let mut drawn: BTreeMap<&str, u64> = BTreeMap::new();
    for n in 0..chaos.decided() {
        let injection = chaos.decide_nth(n);
        if injection.latency.is_some() {
            *drawn.entry("latency").or_default() += 1;
        }
        match injection.fault {
            Some(Fault::Error) => *drawn.entry("error").or_default() += 1,
            Some(Fault::Hang) => *drawn.entry("hang").or_default() += 1,
            Some(Fault::Alter) => *drawn.entry("alter").or_default() += 1,
            _ => {}
        }
    }
    assert!(
        drawn.len() == 4 && ended.cancelled > 0,
        "{drawn:?} {ended:?}"
    );
    for fault in ["latency", "error", "hang", "alter"] {
        assert_eq!(
            books.counter(
                "tidewall_chaos_injections_total",
                &[("policy", "chaos"), ("name", "faults"), ("fault", fault)]
            ),
            drawn.get(fault).copied().unwrap_or_default(),
            "{fault}: counted once per call drawn with it ({} calls drawn)",
            chaos.decided()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 10. A supervisor's restart and escalation counters
// ---------------------------------------------------------------------------------------------

// Docs: `tidewall_supervisor_restarts_total`, `tidewall_supervisor_escalations_total` "counter |
// `child` | a supervisor's restarts and escalations"; `SupervisorReport::restarts` "Restarts
// scheduled over its life: one per `SupervisorEvent::Restarting` ... (an exit that restarts
// siblings with it, by the `Strategy`, counts once)"; `Restarting::child` "The child whose
// exit caused the restart"; `Escalating::child` "The child whose exit would have been one
// restart too many".
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn supervisor_counters_are_its_restarting_and_escalating_events_child_by_child() {
    use tidewall::task::CancellationToken;
    use tidewall::task::supervisor::{ChildSpec, Strategy, Supervisor, SupervisorEvent};

    quiet_deliberate_panics();
    let recorder = DebuggingRecorder::new();
    let mut books = Books::new(&recorder);
    let _recording = metrics::set_default_local_recorder(&recorder);
    let mut escalated_runs = 0;
    let mut stopped_runs = 0;
    for (round, strategy) in [
        Strategy::OneForOne,
        Strategy::OneForAll,
        Strategy::RestForOne,
    ]
    .into_iter()
    .cycle()
    .take(12)
    .enumerate()
    {
        let seed = 0x5C9E_0000 + round as u64;
        let events: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
        let names: Vec<String> = (0..3).map(|i| format!("r{round}-c{i}")).collect();
        let mut builder = Supervisor::builder()
            .strategy(strategy)
            // Every other round tolerates a restart storm; the others escalate at the second
            // restart within 10 s.
            .intensity(
                if round % 2 == 0 { 10 } else { 1 },
                if round % 2 == 0 { secs(1) } else { secs(10) },
            )
            .seed(seed)
            .on_event({
                let events = Arc::clone(&events);
                move |event| {
                    let (kind, child) = match event {
                        SupervisorEvent::Restarting { child, .. } => ("restarting", child),
                        SupervisorEvent::Escalating { child } => ("escalating", child),
                        _ => return,
                    };
                    events
                        .lock()
                        .unwrap()
                        .push((kind.to_owned(), child.to_string()));
                }
            });
        for (i, name) in names.iter().enumerate() {
            let rng = Arc::new(Mutex::new(Rng::new(seed * 31 + i as u64)));
            builder = builder.child(ChildSpec::new(
                name.clone(),
                move |stop: CancellationToken| {
                    let (life, how) = {
                        let mut rng = rng.lock().unwrap();
                        (ms(300 + rng.below(2_500)), rng.below(4))
                    };
                    async move {
                        tokio::select! {
                            _ = stop.cancelled() => return Ok(()),
                            () = tokio::time::sleep(life) => {}
                        }
                        match how {
                            0 => Ok(()),
                            1 => panic!("deliberate: a child panicked"),
                            _ => Err("child failed"),
                        }
                    }
                },
            ));
        }
        let supervisor = builder.build().unwrap();
        let stop = CancellationToken::new();
        let stopper = tokio::spawn({
            let stop = stop.clone();
            async move {
                tokio::time::sleep(secs(8)).await;
                stop.cancel("enough");
            }
        });
        let result = supervisor.run(stop).await;
        stopper.abort();
        books.read();
        let events = events.lock().unwrap().clone();
        let heard = |kind: &str, child: &str| {
            events
                .iter()
                .filter(|(k, c)| k == kind && c == child)
                .count() as u64
        };
        let ctx = format!("round {round} ({strategy:?}): {events:?}");
        let restarts: u64 = names
            .iter()
            .map(|n| books.counter("tidewall_supervisor_restarts_total", &[("child", n)]))
            .sum();
        match &result {
            Ok(report) => {
                stopped_runs += 1;
                assert_eq!(restarts, report.restarts, "{ctx}: the report's restarts");
            }
            Err(escalation) => {
                escalated_runs += 1;
                assert_eq!(
                    restarts, escalation.report.restarts,
                    "{ctx}: the escalation report's restarts"
                );
                assert_eq!(
                    heard("escalating", &escalation.child),
                    1,
                    "{ctx}: the escalation names its child"
                );
            }
        }
        for name in &names {
            assert_eq!(
                books.counter("tidewall_supervisor_restarts_total", &[("child", name)]),
                heard("restarting", name),
                "{ctx}: restarts of {name}"
            );
            assert_eq!(
                books.counter("tidewall_supervisor_escalations_total", &[("child", name)]),
                heard("escalating", name),
                "{ctx}: escalations of {name}"
            );
        }
    }
    assert!(
        escalated_runs > 0 && stopped_runs > 0,
        "{escalated_runs} / {stopped_runs}"
    );
}

// ---------------------------------------------------------------------------------------------
// 11. A listener that panics once, on each kind of event in turn
// ---------------------------------------------------------------------------------------------

const ACCT: &str = r#"
[instances.acct]
deadline = "1s"
attempt_timeout = "50ms"
[instances.acct.bulkhead]
max_concurrent = 1
max_queue = 1
max_wait = "100ms"
[instances.acct.retry]
backoff = "constant"
initial_delay = "10ms"
jitter = "none"
max_attempts = 3
[instances.acct.budget]
ratio = 0.2
min_per_second = 1
[instances.acct.breaker]
consecutive_failures = 3
break_duration = "300ms"
"#;

/// Which event a listener panics on: its policy and its kind.
type Target = (&'static str, fn(&Heard) -> bool);

/// Runs the seeded scenario of test 11 through `acct`'s pipeline: 40 calls starting over 3 s,
/// each ending as its caller saw it (`None` for a task that panicked).
async fn acct_scenario(registry: &Registry) -> Vec<Option<Result<u32, Error<&'static str>>>> {
    let pipeline = registry.pipeline("acct").unwrap();
    let attempts = Attempts::default();
    let mut rng = Rng::new(0xACC7);
    let mut tasks = Vec::new();
    for _ in 0..40 {
        let script: Vec<Step> = (0..3)
            .map(|_| match rng.below(8) {
                0..=2 => Step::Pass,
                3..=5 => Step::Fail,
                6 => Step::Stall,
                _ => Step::Late(rng.below(40)),
            })
            .collect();
        let start = ms(rng.below(3_000));
        let op = attempts.op(script);
        let pipeline = pipeline.clone();
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(start).await;
            pipeline.call(op).await
        }));
    }
    let mut ended = Vec::new();
    for task in tasks {
        ended.push(match task.await {
            Ok(result) => Some(result),
            Err(join) => {
                assert!(join.is_panic(), "{join:?}");
                None
            }
        });
    }
    ended
}

/// The `tidewall_calls_total` outcome the caller's result is.
fn outcome_of(result: &Result<u32, Error<&'static str>>) -> &'static str {
    match result {
        Ok(_) => "success",
        Err(Error::Inner(_)) => "failure",
        Err(Error::Rejected(_)) => "rejected",
        Err(Error::TimedOut) => "timed_out",
        Err(_) => "other",
    }
}

/// The outcome a pipeline ending event stands for, if it is one.
fn ending(heard: &Heard) -> Option<&'static str> {
    match heard {
        Heard::Succeeded => Some("success"),
        Heard::Failed => Some("failure"),
        Heard::Ignored => Some("ignored"),
        Heard::Rejected(_) => Some("rejected"),
        Heard::TimedOut => Some("timed_out"),
        Heard::Cancelled => Some("cancelled"),
        _ => None,
    }
}

// Docs (`Event`): "A listener that panics unwinds into the call it was told of, as a panic of
// the caller's own code would, and the policy loses nothing to it: a bulkhead's ... slot
// granted to a queued caller is given back, and a breaker permit whose outcome listener panics
// records nothing and gives a half-open probe's slot back"; "A retry budget is the exception";
// "A listener told while its thread is already unwinding ... is heard too, but its own panic is
// dropped there"; the telemetry table: each call counted once in `tidewall_calls_total`, a
// duration for each call not cancelled.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_listener_panicking_on_any_event_leaves_every_call_counted_once() {
    quiet_deliberate_panics();
    let targets: [(&str, Target); 12] = [
        (
            "pipeline Succeeded",
            ("pipeline", |h| *h == Heard::Succeeded),
        ),
        ("pipeline Failed", ("pipeline", |h| *h == Heard::Failed)),
        ("pipeline TimedOut", ("pipeline", |h| *h == Heard::TimedOut)),
        (
            "pipeline Rejected",
            ("pipeline", |h| matches!(h, Heard::Rejected(_))),
        ),
        (
            "pipeline RetryScheduled",
            ("pipeline", |h| matches!(h, Heard::Retry { .. })),
        ),
        (
            "pipeline BudgetExhausted",
            ("pipeline", |h| *h == Heard::BudgetExhausted),
        ),
        (
            "bulkhead Waited",
            ("bulkhead", |h| matches!(h, Heard::Waited(_))),
        ),
        (
            "bulkhead Rejected",
            ("bulkhead", |h| matches!(h, Heard::Rejected(_))),
        ),
        ("breaker Succeeded", ("breaker", |h| *h == Heard::Succeeded)),
        ("breaker Failed", ("breaker", |h| *h == Heard::Failed)),
        (
            "breaker StateChanged",
            ("breaker", |h| matches!(h, Heard::Changed { .. })),
        ),
        (
            "breaker Rejected",
            ("breaker", |h| matches!(h, Heard::Rejected(_))),
        ),
    ];
    // A dry run: every target happens in the scenario.
    {
        let ear = Ear::default();
        let registry = Registry::builder(config(ACCT))
            .on_event(ear.listener())
            .build()
            .unwrap();
        let ended = acct_scenario(&registry).await;
        assert!(ended.iter().all(Option::is_some));
        for (what, (policy, pick)) in targets {
            assert!(
                ear.count(policy, "acct", pick) > 0,
                "the scenario has no {what}"
            );
        }
        tokio::time::sleep(DAY).await;
    }
    for (what, (policy, pick)) in targets {
        let recorder = DebuggingRecorder::new();
        let mut books = Books::new(&recorder);
        let _recording = metrics::set_default_local_recorder(&recorder);
        let ear = Ear::default();
        let hear = ear.listener();
        let armed = Arc::new(AtomicU32::new(1));
        let registry = Registry::builder(config(ACCT))
            .on_event({
                let armed = Arc::clone(&armed);
                move |event: &Event<'_>| {
                    hear(event);
                    let heard = ear_last_kind(event);
                    if event.policy == policy && pick(&heard) && armed.swap(0, SeqCst) == 1 {
                        panic!("deliberate: the listener panicked on {heard:?}");
                    }
                }
            })
            .build()
            .unwrap();
        let ended = acct_scenario(&registry).await;
        tokio::time::sleep(DAY).await;
        registry.record_gauges();
        books.read();
        let ctx = format!("listener panicking on {what}");
        assert_eq!(armed.load(SeqCst), 0, "{ctx}: it panicked");
        assert_eq!(
            ended.iter().filter(|e| e.is_none()).count(),
            1,
            "{ctx}: the panic unwound into one call"
        );
        let calls = ended.len() as u64;
        let mut by_caller: BTreeMap<&str, u64> = BTreeMap::new();
        for result in ended.iter().flatten() {
            *by_caller.entry(outcome_of(result)).or_default() += 1;
        }
        let mut by_event: BTreeMap<&str, u64> = BTreeMap::new();
        for told in ear.all() {
            if told.policy == "pipeline"
                && let Some(outcome) = ending(&told.what)
            {
                *by_event.entry(outcome).or_default() += 1;
            }
        }
        let mut counted: BTreeMap<&str, u64> = BTreeMap::new();
        for outcome in [
            "success",
            "failure",
            "ignored",
            "rejected",
            "timed_out",
            "cancelled",
        ] {
            let n = books.calls("pipeline", "acct", outcome);
            if n > 0 {
                counted.insert(outcome, n);
            }
        }
        let ctx = format!("{ctx}: counted {counted:?}, heard {by_event:?}, callers {by_caller:?}");
        assert_eq!(
            counted.values().sum::<u64>(),
            calls,
            "{ctx}: every call counted exactly once"
        );
        assert_eq!(
            counted, by_event,
            "{ctx}: the counters are the endings heard"
        );
        // Every call but the one the panic went through ended as its caller saw it.
        let extra: Vec<(&str, u64)> = counted
            .iter()
            .map(|(o, n)| (*o, n - by_caller.get(o).copied().unwrap_or_default()))
            .filter(|(_, n)| *n > 0)
            .collect();
        assert_eq!(
            extra.iter().map(|(_, n)| n).sum::<u64>(),
            1,
            "{ctx}: one call beyond what the callers saw: {extra:?}"
        );
        assert_eq!(
            books
                .samples(
                    "tidewall_call_duration_seconds",
                    &[("policy", "pipeline"), ("name", "acct")]
                )
                .len() as u64,
            calls - counted.get("cancelled").copied().unwrap_or_default(),
            "{ctx}: a duration for each call not cancelled"
        );
        check_breaker_outcomes(&books, &ear, "acct", &ctx);
        for policy in ["bulkhead", "breaker"] {
            assert_eq!(
                books.refusals(policy, "acct"),
                ear.refusals(policy, "acct"),
                "{ctx}: {policy} refusals"
            );
        }
        for (gauge, value) in [
            ("tidewall_bulkhead_in_flight", 0.0),
            ("tidewall_bulkhead_queued", 0.0),
            ("tidewall_bulkhead_capacity", 1.0),
        ] {
            assert_eq!(
                books.gauge(gauge, &[("name", "acct")]),
                Some(value),
                "{ctx}: {gauge} at rest"
            );
        }
        let breaker = registry.breaker("acct").unwrap();
        assert_eq!(books.one_state("acct"), breaker.state().as_str(), "{ctx}");
    }
}

/// The kind of `event`, as the ear records it.
fn ear_last_kind(event: &Event<'_>) -> Heard {
    let ear = Ear::default();
    ear.listener()(event);
    ear.all().remove(0).what
}

// ---------------------------------------------------------------------------------------------
// 12. Refusals and timeouts from tower layers below a pipeline
// ---------------------------------------------------------------------------------------------

/// Two calls through `PipelineLayer`s (each a pipeline retrying twice, 10 ms apart): one over a
/// `BreakerLayer` (`inner_b`, opened by the first attempt's failure, so the second attempt is
/// refused below the pipeline) whose pipeline has a breaker stage of its own (`outer_b`), one
/// over a `TimeoutLayer` of 50 ms around a service that takes 5 s. What the recorder and the
/// listener were told.
async fn calls_over_layers_that_refuse_and_time_out() -> (Books, Ear) {
    use tidewall::breaker::CircuitBreaker;
    use tidewall::tower::TimeoutLayer;

    let recorder = DebuggingRecorder::new();
    let mut books = Books::new(&recorder);
    let _recording = metrics::set_default_local_recorder(&recorder);
    let ear = Ear::default();
    let retry = || {
        Backoff::constant(ms(10))
            .jitter(Jitter::None)
            .max_attempts(2)
            .build()
            .unwrap()
    };
    let outer_breaker = CircuitBreaker::builder()
        .name("outer_b")
        .consecutive_failures(10)
        .on_event(ear.listener())
        .build()
        .unwrap();
    let over_breaker = Pipeline::builder()
        .name("over_breaker")
        .retry(retry())
        .breaker(outer_breaker)
        .on_event(ear.listener())
        .build()
        .unwrap();
    let inner_breaker = CircuitBreaker::builder()
        .name("inner_b")
        .consecutive_failures(1)
        .break_duration(secs(60))
        .on_event(ear.listener())
        .build()
        .unwrap();
    let failing = tower::service_fn(|_: u32| async { Err::<u32, _>(Error::Inner("down")) });
    let refusing =
        PipelineLayer::new(over_breaker).layer(BreakerLayer::new(inner_breaker).layer(failing));
    let refused = refusing.oneshot(1).await;
    assert!(
        matches!(refused, Err(Error::Rejected(Rejected::CircuitOpen { .. }))),
        "the caller gets the refusal of the breaker below: {refused:?}"
    );

    let over_timeout = Pipeline::builder()
        .name("over_timeout")
        .retry(retry())
        .on_event(ear.listener())
        .build()
        .unwrap();
    let slow = tower::service_fn(|_: u32| async {
        tokio::time::sleep(secs(5)).await;
        Ok::<u32, Error<&str>>(1)
    });
    let timing_out = PipelineLayer::new(over_timeout).layer(TimeoutLayer::new(ms(50)).layer(slow));
    assert_eq!(
        timing_out.oneshot(2).await,
        Err(Error::TimedOut),
        "the caller gets the timeout below"
    );
    books.read();
    (books, ear)
}

/// A pipeline's outcomes with a count above 0, as counted.
fn outcomes_counted(books: &Books, name: &str) -> BTreeMap<String, u64> {
    books
        .counter_series(
            "tidewall_calls_total",
            &[("policy", "pipeline"), ("name", name)],
        )
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(l, n)| (l["outcome"].clone(), n))
        .collect()
}

/// A pipeline's ending events.
fn endings_heard(ear: &Ear, name: &str) -> Vec<Heard> {
    ear.all()
        .into_iter()
        .filter(|t| t.policy == "pipeline" && t.name == name && ending(&t.what).is_some())
        .map(|t| t.what)
        .collect()
}

// Docs (telemetry table): a pipeline's `tidewall_calls_total` outcome is "`rejected` (its error
// is `Error::Rejected`, or under a `PipelineLayer` a policy below refused its last attempt),
// `timed_out` (`Error::TimedOut`) — its own: under a `PipelineLayer`, a timeout from a layer below
// is the service's error, judged by the classifier like any other (`failure` by default)";
// `PipelineLayer`: "A refusal from a policy below ... is treated as the pipeline's own breaker's
// refusal: not shown to the classifier, recorded as `Ignored` by its breaker ..., retried after
// the refusal's `retry_after`, and counted `outcome="rejected"` when it ends the call".
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn under_a_pipeline_layer_a_refusal_below_counts_rejected_and_a_timeout_below_failure() {
    let (books, ear) = calls_over_layers_that_refuse_and_time_out().await;
    assert_eq!(
        (
            outcomes_counted(&books, "over_breaker"),
            endings_heard(&ear, "over_breaker").len()
        ),
        (BTreeMap::from([("rejected".to_owned(), 1)]), 1),
        "its last attempt was refused below: {:?}",
        endings_heard(&ear, "over_breaker")
    );
    assert!(
        matches!(
            endings_heard(&ear, "over_breaker")[..],
            [Heard::Rejected(Rejected::CircuitOpen { .. })]
        ),
        "{:?}",
        endings_heard(&ear, "over_breaker")
    );
    assert_eq!(
        outcomes_counted(&books, "over_timeout"),
        BTreeMap::from([("failure".to_owned(), 1)]),
        "a timeout below is the service's error, a failure to the default classifier"
    );
    assert_eq!(endings_heard(&ear, "over_timeout"), [Heard::Failed]);
}

// Docs: `BreakerLayer` "A refusal from a layer below ... is recorded as `Ignored` (nothing in
// the window)"; `PipelineLayer`: a refusal from a policy below is "recorded as `Ignored` by its
// breaker (nothing in its window)", and a timeout below is "an
// error like any other" (the default classifier: every `Err` a retryable failure, which "the
// breaker counts"); each call counted once, as heard.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn breakers_above_and_below_a_pipeline_layer_count_each_attempt_where_it_ended() {
    let (books, ear) = calls_over_layers_that_refuse_and_time_out().await;
    for name in ["over_breaker", "over_timeout"] {
        let counted = outcomes_counted(&books, name);
        assert_eq!(
            counted.values().sum::<u64>(),
            1,
            "{name}: one call, counted once"
        );
        let heard: BTreeMap<String, u64> = endings_heard(&ear, name)
            .iter()
            .filter_map(ending)
            .map(|o| (o.to_owned(), 1))
            .collect();
        assert_eq!(counted, heard, "{name}: counted as heard");
        assert_eq!(
            ear.count("pipeline", name, |h| matches!(
                h,
                Heard::Retry { attempt: 1, .. }
            )),
            1,
            "{name}: one retry"
        );
    }
    // The inner breaker recorded its one failure and refused once; the pipeline's own breaker
    // judged the first attempt's error a failure, recorded the refused second as nothing, and
    // refused nothing.
    assert_eq!(
        books.refusals("breaker", "inner_b"),
        BTreeMap::from([("circuit_open".to_owned(), 1)])
    );
    assert_eq!(books.calls("breaker", "inner_b", "failure"), 1);
    assert_eq!(books.calls("breaker", "outer_b", "failure"), 1);
    assert!(books.refusals("breaker", "outer_b").is_empty());
    check_breaker_outcomes(&books, &ear, "inner_b", "inner");
    check_breaker_outcomes(&books, &ear, "outer_b", "outer");
}

// ---------------------------------------------------------------------------------------------
// 13. Registered when built, counted where built: hedges, adaptive limiters, keyed tables, chaos
// ---------------------------------------------------------------------------------------------

// Docs (telemetry): "with `metrics`, a handle increment per event (every counter a policy can
// touch is registered when it is built, so install the recorder first)"; OBSERVABILITY §2:
// "Every counter and histogram is registered when its policy is built ... A handle registered
// before the recorder is installed is a no-op for ever"; the keyed tables: "a full table's
// refusals as `keyed_adaptive`" (`keyed_breaker`, `keyed_bulkhead`), "A keyed rate limiter's
// refusals count under `keyed_rate`"; their keys "count together in the series of the table's
// name, with the `policy` each key is".
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn hedges_adaptive_limiters_keyed_tables_and_chaos_register_at_build_and_count_there() {
    use tidewall::breaker::CircuitBreaker;
    use tidewall::chaos::Chaos;
    use tidewall::rate::RateLimiter;

    let at_build = DebuggingRecorder::new();
    let mut built = Books::new(&at_build);
    let later = DebuggingRecorder::new();
    let mut elsewhere = Books::new(&later);
    let aimd = || {
        Aimd::builder()
            .min_limit(1)
            .initial_limit(1)
            .max_limit(4)
            .build()
            .unwrap()
    };
    let (
        hedge,
        thrifty,
        adaptive,
        keyed_adaptive,
        keyed_breaker,
        keyed_bulkhead,
        keyed_rate,
        chaos,
    ) = metrics::with_local_recorder(&at_build, || {
        (
            Hedge::builder().name("h13").delay(ms(5)).build().unwrap(),
            Hedge::builder()
                .name("h13x")
                .delay(ms(5))
                .budget_ratio(0.000_001)
                .build()
                .unwrap(),
            AdaptiveLimiter::builder(aimd())
                .name("a13")
                .build()
                .unwrap(),
            AdaptiveLimiter::builder(aimd())
                .name("ka13")
                .keyed()
                .max_keys(1)
                .build::<u32>()
                .unwrap(),
            CircuitBreaker::builder()
                .name("kb13")
                .consecutive_failures(1)
                .keyed::<u32>()
                .max_keys(1)
                .build()
                .unwrap(),
            Bulkhead::builder(1)
                .name("kh13")
                .reject_when_full()
                .keyed()
                .max_keys(1)
                .build::<u32>()
                .unwrap(),
            RateLimiter::builder(1, HOUR)
                .name("kr13")
                .keyed()
                .build::<u32>()
                .unwrap(),
            Chaos::builder()
                .seed(13)
                .name("c13")
                .latency(1.0, ms(1))
                .error(1.0)
                .build()
                .unwrap(),
        )
    });
    built.read();
    let registered: [(&str, &[(&str, &str)]); 16] = [
        (
            "tidewall_hedges_total",
            &[("policy", "hedge"), ("name", "h13")],
        ),
        (
            "tidewall_hedges_total",
            &[("policy", "hedge"), ("name", "h13x")],
        ),
        (
            "tidewall_retry_budget_exhausted_total",
            &[("policy", "hedge"), ("name", "h13x")],
        ),
        (
            "tidewall_rejections_total",
            &[
                ("policy", "adaptive"),
                ("name", "a13"),
                ("reason", "bulkhead_full"),
            ],
        ),
        (
            "tidewall_rejections_total",
            &[
                ("policy", "adaptive"),
                ("name", "ka13"),
                ("reason", "bulkhead_full"),
            ],
        ),
        (
            "tidewall_rejections_total",
            &[
                ("policy", "keyed_adaptive"),
                ("name", "ka13"),
                ("reason", "keys_full"),
            ],
        ),
        (
            "tidewall_rejections_total",
            &[
                ("policy", "breaker"),
                ("name", "kb13"),
                ("reason", "circuit_open"),
            ],
        ),
        (
            "tidewall_calls_total",
            &[
                ("policy", "breaker"),
                ("name", "kb13"),
                ("outcome", "failure"),
            ],
        ),
        (
            "tidewall_rejections_total",
            &[
                ("policy", "keyed_breaker"),
                ("name", "kb13"),
                ("reason", "keys_full"),
            ],
        ),
        (
            "tidewall_rejections_total",
            &[
                ("policy", "bulkhead"),
                ("name", "kh13"),
                ("reason", "bulkhead_full"),
            ],
        ),
        (
            "tidewall_rejections_total",
            &[
                ("policy", "keyed_bulkhead"),
                ("name", "kh13"),
                ("reason", "keys_full"),
            ],
        ),
        (
            "tidewall_rejections_total",
            &[
                ("policy", "keyed_rate"),
                ("name", "kr13"),
                ("reason", "rate_limited"),
            ],
        ),
        (
            "tidewall_chaos_injections_total",
            &[("policy", "chaos"), ("name", "c13"), ("fault", "latency")],
        ),
        (
            "tidewall_chaos_injections_total",
            &[("policy", "chaos"), ("name", "c13"), ("fault", "error")],
        ),
        (
            "tidewall_chaos_injections_total",
            &[("policy", "chaos"), ("name", "c13"), ("fault", "hang")],
        ),
        (
            "tidewall_chaos_injections_total",
            &[("policy", "chaos"), ("name", "c13"), ("fault", "alter")],
        ),
    ];
    let missing: Vec<_> = registered
        .iter()
        .filter(|(name, labels)| !built.has_counter(name, labels))
        .collect();
    assert!(
        missing.is_empty(),
        "not registered at build: {missing:#?}\nregistered: {:#?}",
        built.counters.keys().collect::<Vec<_>>()
    );

    // Used under another recorder: each counts in the one it was built under.
    {
        let _elsewhere = metrics::set_default_local_recorder(&later);
        let slow = |n: u32| async move {
            tokio::time::sleep(ms(50)).await;
            Ok::<u32, ()>(n)
        };
        assert_eq!(hedge.call(Idempotent(|| slow(1))).await, Ok(1));
        assert_eq!(thrifty.call(Idempotent(|| slow(2))).await, Ok(2));
        let held = adaptive.try_acquire().unwrap();
        assert!(adaptive.try_acquire().is_err());
        drop(held);
        let held = keyed_adaptive.try_acquire(&1).unwrap();
        assert!(keyed_adaptive.try_acquire(&1).is_err());
        assert!(matches!(
            keyed_adaptive.try_acquire(&2),
            Err(Rejected::KeysFull { .. })
        ));
        drop(held);
        keyed_breaker.try_acquire(&1).unwrap().failure();
        assert!(keyed_breaker.try_acquire(&1).is_err());
        assert!(matches!(
            keyed_breaker.try_acquire(&2),
            Err(Rejected::KeysFull { .. })
        ));
        let held = keyed_bulkhead.try_acquire(&1).unwrap();
        assert!(keyed_bulkhead.try_acquire(&1).is_err());
        assert!(matches!(
            keyed_bulkhead.try_acquire(&2),
            Err(Rejected::KeysFull { .. })
        ));
        drop(held);
        keyed_rate.check_key(&1).unwrap();
        assert!(keyed_rate.check_key(&1).is_err());
        assert_eq!(chaos.decide().fault, Some(tidewall::chaos::Fault::Error));
    }
    built.read();
    elsewhere.read();
    assert!(
        elsewhere
            .counters
            .keys()
            .all(|(name, _)| !name.starts_with("tidewall_")),
        "counted in the recorder in force at the call: {:#?}",
        elsewhere.counters
    );
    // Each counted once in the recorder it was built under, but the faults not drawn and the
    // hedge the budget refused.
    let miscounted: Vec<_> = registered
        .iter()
        .map(|(name, labels)| {
            let untouched = (name.contains("chaos")
                && (labels[2].1 == "hang" || labels[2].1 == "alter"))
                || (*name == "tidewall_hedges_total" && labels[1].1 == "h13x");
            (
                name,
                labels,
                built.counter(name, labels),
                u64::from(!untouched),
            )
        })
        .filter(|(_, _, counted, expected)| counted != expected)
        .collect();
    assert!(
        miscounted.is_empty(),
        "(name, labels, counted, expected): {miscounted:#?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 14. A registry's hedge around its pipeline: every copy is one pipeline call
// ---------------------------------------------------------------------------------------------

const HP: &str = r#"
[instances.hp]
deadline = "500ms"
[instances.hp.bulkhead]
max_concurrent = 4
max_queue = 4
max_wait = "100ms"
[instances.hp.retry]
backoff = "constant"
initial_delay = "5ms"
jitter = "none"
max_attempts = 2
[instances.hp.hedge]
delay = "30ms"
max_hedges = 2
budget_ratio = 0.5
"#;

// Docs (CONFIG `[hedge]`): "put the instance's pipeline inside it
// (`hedge.call(Idempotent(|| pipeline.call(op)))`)"; hedge module: "the first success wins and
// the losers are dropped (cancelled)"; the telemetry table: a pipeline call is `cancelled` when
// "the call's future [is] dropped after its first poll", and timed unless cancelled;
// `tidewall_hedges_total` "hedges launched (the primary attempt is not one)"; the registry's
// listener hears "every event of every policy and pipeline the registry makes".
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_registry_hedge_around_its_pipeline_counts_every_copy_as_one_pipeline_call() {
    let recorder = DebuggingRecorder::new();
    let mut books = Books::new(&recorder);
    let _recording = metrics::set_default_local_recorder(&recorder);
    let ear = Ear::default();
    let registry = Registry::builder(config(HP))
        .on_event(ear.listener())
        .build()
        .unwrap();
    let hedge = registry.hedge("hp").unwrap();
    let pipeline = registry.pipeline("hp").unwrap();
    let bulkhead = registry.bulkhead("hp").unwrap();
    let attempts = Attempts::default();
    let finished = Arc::new(AtomicU64::new(0));
    let took: Arc<Mutex<Vec<f64>>> = Arc::default();
    let mut rng = Rng::new(0x04ED_6E14);
    let mut started = Vec::new();
    for _wave in 0..30 {
        let mut tasks = Vec::new();
        let mut counters = Vec::new();
        for _ in 0..5 {
            let scripts: Vec<Vec<Step>> = (0..3)
                .map(|_| {
                    (0..2)
                        .map(|_| match rng.below(6) {
                            0 => Step::Fail,
                            1 => Step::Stall,
                            _ => Step::Late(rng.below(80)),
                        })
                        .collect()
                })
                .collect();
            let limit = rng.one_in(4).then(|| ms(1 + rng.below(200)));
            let copies = Arc::new(AtomicU32::new(0));
            counters.push(Arc::clone(&copies));
            let (pipeline, attempts) = (pipeline.clone(), attempts.clone());
            let (finished, took) = (Arc::clone(&finished), Arc::clone(&took));
            let hedged = hedge.call(Idempotent(move || {
                let k = copies.fetch_add(1, SeqCst) as usize;
                let op = attempts.op(scripts[k.min(2)].clone());
                let (pipeline, finished, took) =
                    (pipeline.clone(), Arc::clone(&finished), Arc::clone(&took));
                async move {
                    let start = tokio::time::Instant::now();
                    let result = pipeline.call(op).await;
                    finished.fetch_add(1, SeqCst);
                    took.lock().unwrap().push(start.elapsed().as_secs_f64());
                    result
                }
            }));
            tasks.push(tokio::spawn(within(limit, hedged)));
        }
        for task in tasks {
            task.await.unwrap();
        }
        started.extend(counters.iter().map(|c| c.load(SeqCst)));
        tokio::time::sleep(ms(rng.below(3_000))).await;
    }
    registry.record_gauges();
    books.read();
    let copies: u64 = started.iter().map(|&n| u64::from(n)).sum();
    let finished = finished.load(SeqCst);
    assert!(
        copies > started.len() as u64 && finished < copies,
        "{copies} copies, {finished} finished"
    );
    assert_eq!(
        books.counter(
            "tidewall_calls_total",
            &[("policy", "pipeline"), ("name", "hp")]
        ),
        copies,
        "each copy is one pipeline call"
    );
    assert_eq!(
        books.calls("pipeline", "hp", "cancelled"),
        copies - finished,
        "each copy dropped unfinished (a loser, or the caller gave up) is cancelled"
    );
    assert_eq!(
        ear.count("pipeline", "hp", |h| *h == Heard::Cancelled),
        copies - finished
    );
    assert_eq!(
        sorted(books.samples(
            "tidewall_call_duration_seconds",
            &[("policy", "pipeline"), ("name", "hp")]
        )),
        sorted(took.lock().unwrap().clone()),
        "each copy that finished timed as it ran"
    );
    check_hedge_books(&books, &ear, "hp", &started, "registry hedge");
    for (gauge, value) in [
        ("tidewall_bulkhead_in_flight", 0.0),
        ("tidewall_bulkhead_queued", 0.0),
        ("tidewall_bulkhead_capacity", 4.0),
    ] {
        assert_eq!(
            books.gauge(gauge, &[("name", "hp")]),
            Some(value),
            "{gauge}"
        );
    }
    assert_eq!(
        books.refusals("bulkhead", "hp").values().sum::<u64>(),
        bulkhead.rejected()
    );
}

// ---------------------------------------------------------------------------------------------
// 15. Queue disciplines and priorities: each admitted wait timed, each refusal counted once
// ---------------------------------------------------------------------------------------------

/// How one caller's wait for admission ended.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Admitted {
    /// Admitted after waiting this long (zero: at once).
    After(Duration),
    Refused(Rejected),
    /// Dropped by its caller while it waited.
    Dropped,
}

/// Waits for `stage` as a caller would (`Wait::Until` no deadline), dropped after `limit` if
/// given; holds what it got for `hold`.
async fn wait_for<A: tidewall::admission::Admission>(
    stage: &A,
    limit: Option<Duration>,
    hold: Duration,
) -> Admitted {
    use tidewall::admission::Wait;
    let start = tokio::time::Instant::now();
    match within(limit, stage.admit(Wait::Until(tidewall::Deadline::none()))).await {
        None => Admitted::Dropped,
        Some(Err(why)) => Admitted::Refused(why),
        Some(Ok(guard)) => {
            let waited = start.elapsed();
            tokio::time::sleep(hold).await;
            drop(guard);
            Admitted::After(waited)
        }
    }
}

/// Checks the books of a queue (`policy`/`name`) against what its callers saw.
fn check_queue_books(
    books: &Books,
    ear: &Ear,
    policy: &str,
    name: &str,
    seen: &[Admitted],
    ctx: &str,
) {
    let mut refused: BTreeMap<String, u64> = BTreeMap::new();
    let mut waited = Vec::new();
    for s in seen {
        match s {
            Admitted::Refused(why) => *refused.entry(why.kind().to_owned()).or_default() += 1,
            Admitted::After(wait) if !wait.is_zero() => waited.push(wait.as_secs_f64()),
            _ => {}
        }
    }
    assert!(!refused.is_empty() && !waited.is_empty(), "{ctx}: {seen:?}");
    assert_eq!(
        books.refusals(policy, name),
        refused,
        "{ctx}: refusals counted"
    );
    assert_eq!(ear.refusals(policy, name), refused, "{ctx}: refusals heard");
    let heard = ear.waits(policy, name);
    let admitted = seen
        .iter()
        .filter(|s| matches!(s, Admitted::After(_)))
        .count();
    assert!(
        heard.len() <= admitted,
        "{ctx}: no more waits than callers admitted"
    );
    assert_eq!(
        heard
            .iter()
            .copied()
            .filter(|w| *w > 0.0)
            .collect::<Vec<_>>(),
        sorted(waited),
        "{ctx}: each caller admitted after a wait is heard with that wait, and no other"
    );
    assert_eq!(
        sorted(books.samples(
            "tidewall_wait_duration_seconds",
            &[("policy", policy), ("name", name)]
        )),
        heard,
        "{ctx}: each wait heard timed once"
    );
}

// Docs: `EventKind::Waited` "A bulkhead admitted a caller that had waited in its queue this
// long"; `tidewall_wait_duration_seconds` "time queued for a permit, for waits that ended
// admitted"; `tidewall_rejections_total` "refusals, as the caller was finally refused";
// `Priority`: "its queue serves the most important waiters first, shedding the newest of the
// least important to make room"; `QueueDiscipline::Codel` "a caller who joins it waits at most
// `target`"; `Lifo` "the oldest wait until they give up"; the bulkhead's "Cancel safety: a
// waiter dropped while queued leaves the queue; a permit granted to it at that instant is
// passed on".
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn every_discipline_times_each_admitted_wait_and_counts_each_refusal_once() {
    use tidewall::adaptive::Priority;
    use tidewall::admission::QueueDiscipline;

    let codel = QueueDiscipline::Codel {
        target: ms(5),
        interval: ms(50),
    };
    for (i, discipline) in [QueueDiscipline::Fifo, QueueDiscipline::Lifo, codel]
        .into_iter()
        .enumerate()
    {
        let recorder = DebuggingRecorder::new();
        let mut books = Books::new(&recorder);
        let _recording = metrics::set_default_local_recorder(&recorder);
        let ear = Ear::default();
        let bulkhead = Bulkhead::builder(2)
            .name("qb")
            .max_queue(3)
            .max_wait(ms(200))
            .discipline(discipline)
            .on_event(ear.listener())
            .build()
            .unwrap();
        let fixed = Aimd::builder()
            .min_limit(2)
            .initial_limit(2)
            .max_limit(2)
            .build()
            .unwrap();
        let adaptive = AdaptiveLimiter::builder(fixed)
            .name("qa")
            .max_queue(3)
            .max_wait(ms(200))
            .discipline(discipline)
            .on_event(ear.listener())
            .build()
            .unwrap();
        let mut rng = Rng::new(0x0DE0_0000 + i as u64);
        let (mut at_bulkhead, mut at_adaptive) = (Vec::new(), Vec::new());
        for _wave in 0..40 {
            let mut tasks = Vec::new();
            for _ in 0..8 {
                let limit = rng.one_in(5).then(|| ms(1 + rng.below(150)));
                let hold = ms(rng.below(60));
                let bulkhead = bulkhead.clone();
                let priority = Priority::ALL[rng.index(3)];
                let adaptive = adaptive.with_priority(priority);
                let start = ms(rng.below(40));
                tasks.push(tokio::spawn(async move {
                    tokio::time::sleep(start).await;
                    let (b, a) = futures_util::join!(
                        wait_for(&bulkhead, limit, hold),
                        wait_for(&adaptive, limit, hold)
                    );
                    (b, a)
                }));
            }
            for task in tasks {
                let (b, a) = task.await.unwrap();
                at_bulkhead.push(b);
                at_adaptive.push(a);
            }
            tokio::time::sleep(ms(rng.below(200))).await;
        }
        books.read();
        let ctx = format!("{discipline:?}");
        check_queue_books(
            &books,
            &ear,
            "bulkhead",
            "qb",
            &at_bulkhead,
            &format!("{ctx} bulkhead"),
        );
        check_queue_books(
            &books,
            &ear,
            "adaptive",
            "qa",
            &at_adaptive,
            &format!("{ctx} adaptive"),
        );
        assert_eq!(
            books.refusals("bulkhead", "qb").values().sum::<u64>(),
            bulkhead.rejected(),
            "{ctx}"
        );
        assert_eq!((bulkhead.in_flight(), bulkhead.queued()), (0, 0), "{ctx}");
        assert_eq!((adaptive.in_flight(), adaptive.queued()), (0, 0), "{ctx}");
    }
}

// ---------------------------------------------------------------------------------------------
// 16. An attempt timeout that ends exactly at the deadline
// ---------------------------------------------------------------------------------------------

// Docs (`Pipeline::call`): "[`Rejected::DeadlineExceeded`] when the deadline ended the call, an
// attempt still running included (the deadline cut it, not the service: the breaker records
// nothing for it); [`Error::TimedOut`] for a last attempt that its own `attempt_timeout` cut
// off"; `attempt_timeout`: "a timed-out attempt counts as a breaker failure"; the table:
// `rejected` "(its error is `Error::Rejected`)", `timed_out` "(`Error::TimedOut`)". Whichever
// way a tie between the two ends a call, the books must tell the caller's story.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_tie_between_attempt_timeout_and_deadline_is_counted_as_the_caller_was_answered() {
    use tidewall::breaker::CircuitBreaker;

    // (deadline, attempt timeout, retry delay, attempts): the last attempt's timeout ends at
    // the deadline exactly.
    let ties = [
        (100, 100, 10, 1),
        (110, 50, 10, 2),
        (170, 50, 10, 3),
        (100, 45, 10, 3),
        (55, 25, 5, 2),
    ];
    for (i, (deadline, timeout, delay, attempts)) in ties.into_iter().enumerate() {
        let recorder = DebuggingRecorder::new();
        let mut books = Books::new(&recorder);
        let _recording = metrics::set_default_local_recorder(&recorder);
        let ear = Ear::default();
        let name = format!("tie{i}");
        let breaker = CircuitBreaker::builder()
            .name(name.clone())
            .consecutive_failures(100)
            .on_event(ear.listener())
            .build()
            .unwrap();
        let pipeline = Pipeline::builder()
            .name(name.clone())
            .deadline(ms(deadline))
            .retry(
                Backoff::constant(ms(delay))
                    .jitter(Jitter::None)
                    .max_attempts(attempts)
                    .build()
                    .unwrap(),
            )
            .breaker(breaker)
            .attempt_timeout(ms(timeout))
            .on_event(ear.listener())
            .build()
            .unwrap();
        let sent = Arc::new(AtomicU32::new(0));
        let start = tokio::time::Instant::now();
        let result: Result<(), Error<&str>> = pipeline
            .call({
                let sent = Arc::clone(&sent);
                move || {
                    sent.fetch_add(1, SeqCst);
                    async {
                        tokio::time::sleep(secs(10)).await;
                        Ok(())
                    }
                }
            })
            .await;
        let took = start.elapsed();
        books.read();
        let ctx = format!(
            "deadline {deadline} ms, timeout {timeout} ms, delay {delay} ms, {attempts} attempts: \
             {result:?} after {took:?}, {} sent",
            sent.load(SeqCst)
        );
        let (outcome, heard) = match result {
            Err(Error::TimedOut) => ("timed_out", Heard::TimedOut),
            Err(Error::Rejected(why)) => ("rejected", Heard::Rejected(why)),
            ref other => panic!("{ctx}: {other:?}"),
        };
        assert_eq!(took, ms(deadline), "{ctx}");
        assert_eq!(
            books.calls("pipeline", &name, outcome),
            1,
            "{ctx}: counted as the caller was answered"
        );
        assert_eq!(
            endings_heard(&ear, &name),
            [heard],
            "{ctx}: heard as the caller was answered"
        );
        assert_eq!(
            books.samples(
                "tidewall_call_duration_seconds",
                &[("policy", "pipeline"), ("name", &name)]
            ),
            [ms(deadline).as_secs_f64()],
            "{ctx}"
        );
        // The breaker: a failure per attempt its timeout cut; nothing for one the deadline cut.
        let sent = u64::from(sent.load(SeqCst));
        let last_is_a_failure = u64::from(outcome == "timed_out");
        assert_eq!(
            books.calls("breaker", &name, "failure"),
            sent - 1 + last_is_a_failure,
            "{ctx}: the breaker's failures follow the answer"
        );
        check_breaker_outcomes(&books, &ear, &name, &ctx);
    }
}

// ---------------------------------------------------------------------------------------------
// 17. An AdmitLayer's own bound on the wait: refusals counted by the stage, once
// ---------------------------------------------------------------------------------------------

// Docs: `AdmitLayer::max_wait` "Bounds each wait (in `poll_ready` or in the call) by
// `max_wait`: a stage that cannot admit in time refuses with `Rejected::DeadlineExceeded`, at
// once when the wait is known to end later (a rate limiter's)"; `AdmitMode::WaitReady` "A wait
// the stage refuses (its `max_wait`, the layer's, a full queue) is never a `poll_ready` error
// ...: `poll_ready` then reports ready and the next call fails at once with the refusal";
// `tidewall_rejections_total` "refusals, as the caller was finally refused (a wait that ends
// admitted is not one)", with `reason` `Rejected::kind`; `RateLimiterBuilder::on_event` "each
// refusal, with its reason".
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn an_admit_layers_own_wait_bound_is_one_refusal_counted_by_the_stage() {
    use tidewall::rate::RateLimiter;

    type Svc = tower::util::BoxCloneService<u64, u64, Error<&'static str>>;
    for (mode, seed) in [
        (AdmitMode::WaitCall, 0xAD_0001_u64),
        (AdmitMode::WaitReady, 0xAD_0002),
    ] {
        let recorder = DebuggingRecorder::new();
        let mut books = Books::new(&recorder);
        let _recording = metrics::set_default_local_recorder(&recorder);
        let ear = Ear::default();
        let bulkhead = Bulkhead::builder(2)
            .name("ab")
            .max_queue(8)
            .max_wait(secs(5))
            .on_event(ear.listener())
            .build()
            .unwrap();
        let limiter = RateLimiter::builder(20, secs(1))
            .name("ar")
            .burst(2)
            .seed(seed)
            .on_event(ear.listener())
            .build()
            .unwrap();
        let inner = tower::service_fn(|latency: u64| async move {
            tokio::time::sleep(ms(latency)).await;
            Ok::<u64, Error<&'static str>>(latency)
        });
        let stacks: [(&str, &str, Svc); 2] = [
            (
                "bulkhead",
                "ab",
                Svc::new(
                    AdmitLayer::new(bulkhead.clone(), mode)
                        .max_wait(ms(40))
                        .layer(inner),
                ),
            ),
            (
                "rate",
                "ar",
                Svc::new(
                    AdmitLayer::new(limiter.clone(), mode)
                        .max_wait(ms(60))
                        .layer(inner),
                ),
            ),
        ];
        for (policy, name, stack) in stacks {
            let mut rng = Rng::new(seed);
            let mut refused: BTreeMap<String, u64> = BTreeMap::new();
            let (mut ok, mut dropped) = (0, 0);
            for _wave in 0..30 {
                let mut calls = Vec::new();
                for _ in 0..8 {
                    let latency = rng.below(50);
                    let limit = rng.one_in(6).then(|| ms(1 + rng.below(60)));
                    let svc = stack.clone();
                    calls.push(async move { within(limit, svc.oneshot(latency)).await });
                }
                for ended in futures_util::future::join_all(calls).await {
                    match ended {
                        None => dropped += 1,
                        Some(Ok(_)) => ok += 1,
                        Some(Err(Error::Rejected(why))) => {
                            *refused.entry(why.kind().to_owned()).or_default() += 1;
                        }
                        Some(Err(other)) => panic!("{other:?}"),
                    }
                }
                tokio::time::sleep(ms(rng.below(250))).await;
            }
            books.read();
            let ctx = format!("{mode:?} over {policy}: ok {ok}, dropped {dropped}, {refused:?}");
            assert!(
                ok > 0 && dropped > 0 && refused.contains_key("deadline_exceeded"),
                "{ctx}"
            );
            assert_eq!(
                books.refusals(policy, name),
                refused,
                "{ctx}: each refusal the callers got, counted once by the stage"
            );
            assert_eq!(ear.refusals(policy, name), refused, "{ctx}: and heard once");
        }
        assert_eq!(
            books.refusals("bulkhead", "ab").values().sum::<u64>(),
            bulkhead.rejected()
        );
        assert_eq!(
            sorted(books.samples(
                "tidewall_wait_duration_seconds",
                &[("policy", "bulkhead"), ("name", "ab")]
            )),
            ear.waits("bulkhead", "ab")
        );
        assert_eq!((bulkhead.in_flight(), bulkhead.queued()), (0, 0));
    }
}

// ---------------------------------------------------------------------------------------------
// 18. A reload that changes a breaker's window shape, from every state
// ---------------------------------------------------------------------------------------------

fn shaped(window: u64) -> String {
    format!(
        "[instances.shape.breaker]\nconsecutive_failures = 2\nwindow_calls = {window}\n\
         break_duration = \"1s\"\nhalf_open_probes = 1\n"
    )
}

// Docs (`Reload::reset`): "Breakers whose window changed shape: reset to closed with a
// state-change event ... A breaker forced open or closed by hand stays forced, and is not
// listed"; `Registry::reload`: "a breaker ... is reset with a state-change event when it does
// not [keep its shape] (`Reload::reset`)"; `CircuitBreaker::reconfigure`: "A window of another
// shape ... the breaker is reset, with its state-change event (`Reconfigured::Reset`), unless it
// was forced open or closed by hand"; `tidewall_breaker_transitions_total` "state changes";
// `StateChange::generation` "one more on every transition".
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_reload_reshaping_a_breakers_window_is_one_heard_and_counted_reset_from_any_state() {
    for from in State::ALL {
        let recorder = DebuggingRecorder::new();
        let mut books = Books::new(&recorder);
        let _recording = metrics::set_default_local_recorder(&recorder);
        let ear = Ear::default();
        let registry = Registry::builder(config(&shaped(10)))
            .on_event(ear.listener())
            .build()
            .unwrap();
        let breaker = registry.breaker("shape").unwrap();
        let mut probe = None;
        match from {
            State::Closed => breaker.try_acquire().unwrap().failure(), // one failure in the window
            State::Open => {
                for _ in 0..2 {
                    breaker.try_acquire().unwrap().failure();
                }
            }
            State::HalfOpen => {
                for _ in 0..2 {
                    breaker.try_acquire().unwrap().failure();
                }
                tokio::time::sleep(secs(1)).await;
                probe = Some(breaker.try_acquire_owned().unwrap());
            }
            State::ForcedOpen => breaker.force_open(),
            State::ForcedClosed => breaker.force_closed(),
            other => panic!("a state the docs do not list: {other:?}"),
        }
        assert_eq!(breaker.state(), from);
        let (_, before) = breaker.state_and_generation();
        let heard_before = ear.all().len();
        books.read();
        let to_closed_before = books.counter(
            "tidewall_breaker_transitions_total",
            &[("name", "shape"), ("to", "closed")],
        );

        let reload = registry.reload(config(&shaped(20))).unwrap();
        registry.record_gauges();
        books.read();
        drop(probe);
        let forced = matches!(from, State::ForcedOpen | State::ForcedClosed);
        let changes: Vec<(State, State, u32)> = ear.all()[heard_before..]
            .iter()
            .filter_map(|t| match t.what {
                Heard::Changed {
                    from,
                    to,
                    generation,
                } => Some((from, to, generation)),
                _ => None,
            })
            .collect();
        let (state, after) = breaker.state_and_generation();
        let ctx = format!(
            "from {from:?}: reset {:?}, heard {changes:?}, now {state:?} (generation {before} → {after})",
            reload.reset
        );
        if forced {
            assert!(
                reload.reset.is_empty(),
                "{ctx}: a forced breaker is not listed"
            );
            assert!(changes.is_empty(), "{ctx}: and not reset");
            assert_eq!((state, after), (from, before), "{ctx}: it stays forced");
        } else {
            assert_eq!(reload.reset, ["shape"], "{ctx}: its window changed shape");
            assert_eq!(
                changes,
                [(from, State::Closed, before.wrapping_add(1))],
                "{ctx}: reset to closed with a state-change event"
            );
            assert_eq!(
                (state, after),
                (State::Closed, before.wrapping_add(1)),
                "{ctx}"
            );
        }
        assert_eq!(
            books.counter(
                "tidewall_breaker_transitions_total",
                &[("name", "shape"), ("to", "closed")]
            ) - to_closed_before,
            changes.len() as u64,
            "{ctx}: each change heard is counted"
        );
        assert_eq!(books.one_state("shape"), state.as_str(), "{ctx}");
    }
}

// ---------------------------------------------------------------------------------------------
// 19. Futures never polled, and futures polled once
// ---------------------------------------------------------------------------------------------

/// Polls `fut` once (it must be pending), then drops it.
async fn poll_once<F: Future>(fut: F) {
    let mut fut = std::pin::pin!(fut);
    std::future::poll_fn(|cx| {
        assert!(
            fut.as_mut().poll(cx).is_pending(),
            "pending at its first poll"
        );
        std::task::Poll::Ready(())
    })
    .await;
}

// Docs: `cancelled` is "the call's future dropped after its first poll"; `EventKind::Cancelled`
// "dropped before it ended (after its first poll: a call never polled never started)";
// `PipelineLayer` "the same stages, order, classifier and metrics as `Pipeline::call`";
// `Pipeline::call` "Cancel safety: dropping the future releases everything it holds".
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_call_never_polled_counts_nothing_and_one_polled_once_is_cancelled_through_every_front() {
    use std::task::Poll;
    use tower::Service as _;

    let recorder = DebuggingRecorder::new();
    let mut books = Books::new(&recorder);
    let _recording = metrics::set_default_local_recorder(&recorder);
    let ear = Ear::default();
    let registry = Registry::builder(config(
        "[instances.fronts]\ndeadline = \"1s\"\n\
         [instances.fronts.bulkhead]\nmax_concurrent = 1\nmax_queue = 4\n",
    ))
    .on_event(ear.listener())
    .build()
    .unwrap();
    let handle = registry.pipeline("fronts").unwrap();
    let bulkhead = registry.bulkhead("fronts").unwrap();
    let slow = || async {
        tokio::time::sleep(secs(5)).await;
        Ok::<u32, &str>(1)
    };
    let service = tower::service_fn(|_: u32| async {
        tokio::time::sleep(secs(5)).await;
        Ok::<u32, Error<&str>>(1)
    });
    let mut layered = PipelineLayer::new(handle.clone()).layer(service);

    // Never polled: nothing.
    drop(handle.call(slow));
    std::future::poll_fn(|cx| layered.poll_ready(cx))
        .await
        .unwrap();
    drop(layered.call(1));
    books.read();
    assert_eq!(
        books.counter(
            "tidewall_calls_total",
            &[("policy", "pipeline"), ("name", "fronts")]
        ),
        0,
        "calls never polled never started"
    );
    assert!(ear.all().is_empty(), "{:?}", ear.all());

    // Polled once (holding the bulkhead's one slot, or queued behind it), then dropped.
    let mut holding = Box::pin(handle.call(slow));
    std::future::poll_fn(|cx| {
        assert!(holding.as_mut().poll(cx).is_pending());
        Poll::Ready(())
    })
    .await;
    assert_eq!(bulkhead.in_flight(), 1);
    std::future::poll_fn(|cx| layered.poll_ready(cx))
        .await
        .unwrap();
    let queued = layered.call(2);
    poll_once(queued).await;
    poll_once(handle.call(slow)).await;
    drop(holding);
    registry.record_gauges();
    books.read();
    assert_eq!(
        books.calls("pipeline", "fronts", "cancelled"),
        3,
        "three calls polled, then dropped"
    );
    assert_eq!(
        books.counter(
            "tidewall_calls_total",
            &[("policy", "pipeline"), ("name", "fronts")]
        ),
        3
    );
    assert_eq!(
        ear.count("pipeline", "fronts", |h| *h == Heard::Cancelled),
        3
    );
    assert!(
        books
            .samples(
                "tidewall_call_duration_seconds",
                &[("policy", "pipeline"), ("name", "fronts")]
            )
            .is_empty(),
        "cancelled calls are not timed"
    );
    assert_eq!(
        (
            books.gauge("tidewall_bulkhead_in_flight", &[("name", "fronts")]),
            books.gauge("tidewall_bulkhead_queued", &[("name", "fronts")]),
        ),
        (Some(0.0), Some(0.0)),
        "released"
    );
    assert!(
        ear.count("bulkhead", "fronts", |_| true) == 0,
        "a waiter dropped from the queue is neither a wait nor a refusal: {:?}",
        ear.all()
    );
}

// ---------------------------------------------------------------------------------------------
// 20. Policies of one name: one series, never reset by a later build
// ---------------------------------------------------------------------------------------------

// Docs (telemetry): "Every policy's metric carries the policy's kind (`policy`) and its instance
// name (`name`, set with the builder's `name`; the config `Registry` names each policy after its
// instance)"; "A keyed breaker's, bulkhead's or adaptive limiter's keys count together in the
// series of the table's name ...: the series a plain policy of that name counts in too, if one
// is also used"; OBSERVABILITY §5: "give each client its own [name], or their requests add into
// one series"; "every counter a policy can touch is registered when it is built" (so a dashboard
// sees zeros: not by setting a series that already counts back to zero).
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn policies_of_one_name_add_into_one_series_and_a_later_build_resets_nothing() {
    use tidewall::breaker::CircuitBreaker;

    let recorder = DebuggingRecorder::new();
    let mut books = Books::new(&recorder);
    let _recording = metrics::set_default_local_recorder(&recorder);
    let build = || {
        let breaker = CircuitBreaker::builder()
            .name("dup")
            .consecutive_failures(100)
            .build()
            .unwrap();
        let bulkhead = Bulkhead::builder(1)
            .name("dup")
            .reject_when_full()
            .build()
            .unwrap();
        let pipeline = Pipeline::builder()
            .name("dup")
            .bulkhead(bulkhead.clone())
            .breaker(breaker)
            .build()
            .unwrap();
        (pipeline, bulkhead)
    };
    let fail = || async { Err::<(), &str>("down") };
    let (first, first_bulkhead) = build();
    for _ in 0..3 {
        let _ = first.call(fail).await;
    }
    let held = first_bulkhead.try_acquire_owned().unwrap();
    let _ = first.call(fail).await; // refused by the full bulkhead
    // A second set of the same names, then a registry instance of that name and a keyed
    // bulkhead table of that name: each registers its series, none may reset what counted.
    let (second, second_bulkhead) = build();
    let _ = second.call(fail).await;
    let registry = Registry::new(config(
        "[instances.dup]\n[instances.dup.bulkhead]\nmax_concurrent = 1\nmax_queue = 0\n\
         [instances.dup.breaker]\nconsecutive_failures = 100\n",
    ))
    .unwrap();
    let live = registry.pipeline("dup").unwrap();
    let _ = live.call(fail).await;
    let keyed = Bulkhead::builder(1)
        .name("dup")
        .reject_when_full()
        .keyed()
        .build::<u32>()
        .unwrap();
    let key_held = keyed.try_acquire(&7).unwrap();
    assert!(keyed.try_acquire(&7).is_err());
    assert!(second_bulkhead.try_acquire().is_ok());
    drop((held, key_held));
    books.read();
    assert_eq!(
        books.calls("pipeline", "dup", "failure"),
        3 + 1 + 1,
        "three pipelines of one name, one series"
    );
    assert_eq!(books.calls("pipeline", "dup", "rejected"), 1);
    assert_eq!(
        books.calls("breaker", "dup", "failure"),
        3 + 1 + 1,
        "three breakers of one name"
    );
    assert_eq!(
        books.refusals("bulkhead", "dup"),
        BTreeMap::from([("bulkhead_full".to_owned(), 2)]),
        "the first bulkhead's refusal and the key's"
    );
}

// ---------------------------------------------------------------------------------------------
// 21. A LivePipeline's own classifier decides its outcomes, across reloads and through tower
// ---------------------------------------------------------------------------------------------

// Docs (`LivePipeline`): "Results are judged by the default classifier (`Ok` succeeds, every
// `Err` is a retryable failure) unless `classify` sets another, which the handle keeps across
// reloads"; `LivePipeline::classify` "The handle keeps it across reloads; other handles keep
// theirs"; `PipelineLayer`: "Judged by the pipeline's classifier (for a `LivePipeline`, the one
// set with `classify`)"; the table: `success`, `failure`, `ignored` "(its classifier's verdict on
// the final result)".
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_live_pipelines_own_classifier_decides_its_outcomes_across_reloads_and_through_tower() {
    let recorder = DebuggingRecorder::new();
    let mut books = Books::new(&recorder);
    let _recording = metrics::set_default_local_recorder(&recorder);
    let ear = Ear::default();
    let text = |deadline: u64| format!("[instances.cls]\ndeadline = \"{deadline}ms\"\n");
    let registry = Registry::builder(config(&text(500)))
        .on_event(ear.listener())
        .build()
        .unwrap();
    let judged = registry.pipeline("cls").unwrap().classify(judge::<&str>);
    let plain = registry.pipeline("cls").unwrap();
    let layered_judge = |r: Result<&u16, &Error<&str>>| judge(r);
    let layer = PipelineLayer::new(registry.pipeline("cls").unwrap().classify(layered_judge));
    let busy = tower::service_fn(|_: ()| async { Ok::<u16, Error<&str>>(503) });
    for round in 0..3 {
        assert_eq!(
            judged.call(|| async { Ok::<u16, &str>(503) }).await,
            Ok(503)
        );
        assert_eq!(plain.call(|| async { Ok::<u16, &str>(503) }).await, Ok(503));
        assert_eq!(layer.layer(busy).oneshot(()).await, Ok(503));
        registry.reload(config(&text(400 - 100 * round))).unwrap();
    }
    books.read();
    assert_eq!(
        books.calls("pipeline", "cls", "failure"),
        6,
        "the judging handle's and the layer's 503s, before and after each reload"
    );
    assert_eq!(
        books.calls("pipeline", "cls", "success"),
        3,
        "the plain handle's 503s: Ok succeeds"
    );
    assert_eq!(ear.count("pipeline", "cls", |h| *h == Heard::Failed), 6);
    assert_eq!(ear.count("pipeline", "cls", |h| *h == Heard::Succeeded), 3);
}
