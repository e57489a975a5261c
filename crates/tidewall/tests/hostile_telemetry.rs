//! Hostile black-box tests of the `telemetry` module's metric table, written from the public
//! docs only: every counter registered when its policy is built, each metric's labels, when a
//! refusal counts ("a wait that ends admitted is not one"), cancelled calls (counted, never
//! timed), histograms in virtual time, `NoWait`, gauges read at any moment through
//! `Registry::record_gauges` (mid-flight, across reloads, after idle hours, at extreme
//! configs), `RateLimiter::available` and `RetryBudget::balance` against seeded random
//! sequences, `tidewall_config_reloads_total` through `reload`, `reload_file` and a watched
//! file, `watch_dir_on`'s "reading a file is not a change", and the `tidewall.call` span.
//!
//! Each test builds its policies under its own `DebuggingRecorder` (no global recorder), so the
//! tests share nothing; time is paused tokio time except for the file watching tests, which
//! poll with a bounded real-time limit. The debugging recorder's counters restart from zero at
//! each snapshot, so each test takes one snapshot per batch of assertions.

#![cfg(all(
    feature = "metrics",
    feature = "tracing",
    feature = "toml",
    feature = "watch",
    feature = "test-util"
))]
// Gauges hold whole counts and histograms whole-millisecond durations: exact in f64, and each
// expected value is computed the same way (`Duration::as_secs_f64`).
#![allow(clippy::float_cmp)]

mod support;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use support::snapshot::{Series as Metric, samples, select, snapshot};
use support::trace::{Seen as Traced, Trace};
use tidewall::admission::NoWait;
use tidewall::breaker::{CircuitBreaker, State};
use tidewall::budget::{RetryBudget, RetryBudgetPolicy};
use tidewall::bulkhead::Bulkhead;
use tidewall::config::{Config, Registry};
use tidewall::pipeline::Pipeline;
use tidewall::rate::RateLimiter;
use tidewall::rt::Tokio;
use tidewall::{Backoff, Deadline, Error, Jitter, Rejected};
use tidewall_core::rng::SplitMix64;
use tokio::time::Instant;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// One snapshot of a recorder.
struct Seen(Vec<Metric>);

impl Seen {
    fn now(snapshotter: &Snapshotter) -> Self {
        Self(snapshot(snapshotter))
    }

    /// Every series of `name` whose labels include all of `labels`.
    fn series(&self, name: &str, labels: &[(&str, &str)]) -> Vec<&Metric> {
        select(&self.0, name, labels).collect()
    }

    /// The one series of `name` with exactly `labels` (no more, no fewer).
    fn exact(&self, name: &str, labels: &[(&str, &str)]) -> Option<&DebugValue> {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        self.0
            .iter()
            .find(|(have, have_labels, _)| have == name && *have_labels == want)
            .map(|(_, _, value)| value)
    }

    /// A counter with exactly these labels; panics when it is not registered.
    fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        match self.exact(name, labels) {
            Some(DebugValue::Counter(n)) => *n,
            other => panic!(
                "{name} {labels:?}: not a registered counter: {other:?}\nall: {:#?}",
                self.names()
            ),
        }
    }

    /// The sum of every counter series of `name` that has `labels` (0 when none exists).
    fn counter_sum(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.series(name, labels)
            .iter()
            .map(|(_, _, value)| match value {
                DebugValue::Counter(n) => *n,
                other => panic!("{name}: not a counter: {other:?}"),
            })
            .sum()
    }

    fn gauge(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        match self.exact(name, labels) {
            Some(DebugValue::Gauge(v)) => v.into_inner(),
            other => panic!(
                "{name} {labels:?}: not a registered gauge: {other:?}\nall: {:#?}",
                self.names()
            ),
        }
    }

    /// The samples of every histogram series of `name` with `labels` (none when absent).
    fn samples(&self, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
        samples(&self.0, name, labels)
    }

    fn calls(&self, policy: &str, name: &str, outcome: &str) -> u64 {
        self.counter(
            "tidewall_calls_total",
            &[("policy", policy), ("name", name), ("outcome", outcome)],
        )
    }

    fn names(&self) -> Vec<String> {
        self.0
            .iter()
            .map(|(name, labels, value)| format!("{name} {labels:?} = {value:?}"))
            .collect()
    }
}

/// Seeded draws from the library's own generator: every run draws the same numbers.
struct Rng(SplitMix64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(SplitMix64::new(seed))
    }
    /// Uniform in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.0.below_or_equal(n - 1)
    }
}

const PIPELINE_OUTCOMES: [&str; 6] = [
    "success",
    "failure",
    "ignored",
    "rejected",
    "timed_out",
    "cancelled",
];

// ---------------------------------------------------------------------------------------------
// Registration: "every counter a policy can touch is registered when it is built"
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn every_counter_a_policy_can_touch_exists_at_zero_right_after_build() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let (_breaker, _bulkhead, _limiter, _pipeline) =
        metrics::with_local_recorder(&recorder, || {
            let breaker = CircuitBreaker::builder()
                .name("b")
                .consecutive_failures(1)
                .build()
                .unwrap();
            let bulkhead = Bulkhead::builder(1).name("h").build().unwrap();
            let limiter = RateLimiter::builder(10, secs(1)).name("r").build().unwrap();
            let budget = RetryBudget::new(
                RetryBudgetPolicy::builder().ratio(0.1).build().unwrap(),
                Instant::now().into_std(),
            );
            let pipeline = Pipeline::builder()
                .name("p")
                .rate_limit(limiter.clone())
                .bulkhead(bulkhead.clone())
                .retry(Backoff::constant(ms(1)).max_attempts(2).build().unwrap())
                .retry_budget(budget)
                .breaker(breaker.clone())
                .build()
                .unwrap();
            (breaker, bulkhead, limiter, pipeline)
        });
    let seen = Seen::now(&snapshotter);
    let mut missing = Vec::new();
    let mut check = |name: &str, labels: &[(&str, &str)]| match seen.exact(name, labels) {
        Some(DebugValue::Counter(0)) => {}
        other => missing.push(format!("{name} {labels:?}: {other:?}")),
    };
    for outcome in ["success", "failure", "ignored"] {
        check(
            "tidewall_calls_total",
            &[("policy", "breaker"), ("name", "b"), ("outcome", outcome)],
        );
    }
    for outcome in PIPELINE_OUTCOMES {
        check(
            "tidewall_calls_total",
            &[("policy", "pipeline"), ("name", "p"), ("outcome", outcome)],
        );
    }
    check(
        "tidewall_retries_total",
        &[("policy", "pipeline"), ("name", "p")],
    );
    check(
        "tidewall_retry_budget_exhausted_total",
        &[("policy", "pipeline"), ("name", "p")],
    );
    check(
        "tidewall_rejections_total",
        &[
            ("policy", "breaker"),
            ("name", "b"),
            ("reason", "circuit_open"),
        ],
    );
    check(
        "tidewall_rejections_total",
        &[
            ("policy", "bulkhead"),
            ("name", "h"),
            ("reason", "bulkhead_full"),
        ],
    );
    check(
        "tidewall_rejections_total",
        &[
            ("policy", "bulkhead"),
            ("name", "h"),
            ("reason", "deadline_exceeded"),
        ],
    );
    for reason in ["rate_limited", "deadline_exceeded", "insufficient_capacity"] {
        check(
            "tidewall_rejections_total",
            &[("policy", "rate"), ("name", "r"), ("reason", reason)],
        );
    }
    assert!(
        missing.is_empty(),
        "not registered at zero after build: {missing:#?}\nall: {:#?}",
        seen.names()
    );
}

/// `tidewall_breaker_transitions_total` is a counter a breaker touches: registered when the
/// breaker is built (so a dashboard sees zeros), and counted in the recorder it was built under
/// however its transitions are made later.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn breaker_transitions_are_registered_at_build_and_counted_in_that_recorder() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let breaker = metrics::with_local_recorder(&recorder, || {
        CircuitBreaker::builder()
            .name("b")
            .consecutive_failures(1)
            .break_duration(secs(1))
            .build()
            .unwrap()
    });
    let seen = Seen::now(&snapshotter);
    let zeros: Vec<_> = [State::Open, State::HalfOpen, State::Closed]
        .iter()
        .map(|to| {
            match seen.exact(
                "tidewall_breaker_transitions_total",
                &[
                    ("policy", "breaker"),
                    ("name", "b"),
                    ("to", &to.to_string()),
                ],
            ) {
                Some(DebugValue::Counter(n)) => Some(*n),
                _ => None,
            }
        })
        .collect();
    // Closed → open → half-open → closed, outside any recorder's scope.
    breaker.try_acquire().unwrap().failure();
    tokio::time::sleep(secs(1)).await;
    breaker.try_acquire().unwrap().success();
    assert_eq!(breaker.state(), State::Closed);
    let after = Seen::now(&snapshotter);
    let counted: Vec<_> = [State::Open, State::HalfOpen, State::Closed]
        .iter()
        .map(|to| {
            after.counter_sum(
                "tidewall_breaker_transitions_total",
                &[
                    ("policy", "breaker"),
                    ("name", "b"),
                    ("to", &to.to_string()),
                ],
            )
        })
        .collect();
    assert_eq!(
        (zeros, counted),
        (vec![Some(0); 3], vec![1, 1, 1]),
        "registered at zero when built, then one transition to each state"
    );
}

/// The counters are registered when the policy is built: a recorder installed only around the
/// build still gets every later count, even from calls made outside its scope.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn counts_reach_the_recorder_in_force_at_build_not_at_call() {
    let at_build = DebuggingRecorder::new();
    let built = at_build.snapshotter();
    let at_call = DebuggingRecorder::new();
    let called = at_call.snapshotter();
    let breaker = metrics::with_local_recorder(&at_build, || {
        CircuitBreaker::builder()
            .name("late")
            .consecutive_failures(1)
            .build()
            .unwrap()
    });
    metrics::with_local_recorder(&at_call, || {
        breaker.try_acquire().unwrap().failure();
        assert!(breaker.try_acquire().is_err());
    });
    let seen = Seen::now(&built);
    assert_eq!(seen.calls("breaker", "late", "failure"), 1);
    assert_eq!(
        seen.counter(
            "tidewall_rejections_total",
            &[
                ("policy", "breaker"),
                ("name", "late"),
                ("reason", "circuit_open")
            ]
        ),
        1
    );
    let stray = Seen::now(&called);
    assert!(
        stray.series("tidewall_calls_total", &[]).is_empty(),
        "counted in the recorder of the call, not of the build: {:#?}",
        stray.names()
    );
}

// ---------------------------------------------------------------------------------------------
// Rejections: "as the caller was finally refused (a wait that ends admitted is not one)"
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn waits_that_end_admitted_count_no_rejection_in_any_stage() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let (limiter, bulkhead, pipeline) = metrics::with_local_recorder(&recorder, || {
        let limiter = RateLimiter::builder(10, secs(1))
            .burst(1)
            .jitter(Duration::ZERO)
            .name("r")
            .build()
            .unwrap();
        let bulkhead = Bulkhead::builder(1)
            .max_queue(8)
            .max_wait(None)
            .name("h")
            .build()
            .unwrap();
        let pipeline = Pipeline::builder()
            .name("p")
            .deadline(secs(60))
            .rate_limit(limiter.clone())
            .bulkhead(bulkhead.clone())
            .build()
            .unwrap();
        (limiter, bulkhead, pipeline)
    });
    // Five calls at once: each waits for the limiter (one cell per 100 ms) and then for the
    // bulkhead (each holds it 250 ms). Every one of them ends admitted.
    let calls = (0..5).map(|i| {
        pipeline.call(move || async move {
            tokio::time::sleep(ms(250)).await;
            Ok::<_, ()>(i)
        })
    });
    let results = futures_util::future::join_all(calls).await;
    assert_eq!(results, (0..5).map(Ok).collect::<Vec<_>>());
    assert_eq!(bulkhead.rejected(), 0);

    let seen = Seen::now(&snapshotter);
    assert_eq!(seen.calls("pipeline", "p", "success"), 5);
    assert_eq!(seen.calls("pipeline", "p", "rejected"), 0);
    assert_eq!(
        seen.counter_sum("tidewall_rejections_total", &[]),
        0,
        "a wait that ends admitted is not a rejection: {:#?}",
        seen.names()
    );
    let waits = seen.samples(
        "tidewall_wait_duration_seconds",
        &[("policy", "bulkhead"), ("name", "h")],
    );
    assert!(
        !waits.is_empty(),
        "calls queued in the bulkhead and were admitted"
    );
    assert_eq!(
        seen.samples(
            "tidewall_call_duration_seconds",
            &[("policy", "pipeline"), ("name", "p")]
        )
        .len(),
        5
    );
    let _ = limiter;
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_limiter_wait_known_to_end_past_the_deadline_counts_once_and_at_once() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let pipeline = metrics::with_local_recorder(&recorder, || {
        let limiter = RateLimiter::builder(1, secs(60))
            .jitter(Duration::ZERO)
            .name("r")
            .build()
            .unwrap();
        Pipeline::builder()
            .name("p")
            .deadline(secs(1))
            .rate_limit(limiter)
            .build()
            .unwrap()
    });
    assert_eq!(pipeline.call(|| async { Ok::<_, ()>(1) }).await, Ok(1));
    let start = Instant::now();
    let refused = pipeline.call(|| async { Ok::<_, ()>(2) }).await;
    assert_eq!(
        start.elapsed(),
        Duration::ZERO,
        "refused at once: the wait is known to end past the deadline"
    );
    let Err(Error::Rejected(why)) = refused else {
        panic!("not refused: {refused:?}")
    };
    let seen = Seen::now(&snapshotter);
    assert_eq!(
        seen.counter_sum(
            "tidewall_rejections_total",
            &[("policy", "rate"), ("name", "r")]
        ),
        1,
        "{:#?}",
        seen.names()
    );
    assert_eq!(
        seen.counter(
            "tidewall_rejections_total",
            &[("policy", "rate"), ("name", "r"), ("reason", why.kind())]
        ),
        1,
        "counted with the reason the caller got"
    );
    assert_eq!(seen.calls("pipeline", "p", "rejected"), 1);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_bulkhead_wait_that_ends_refused_counts_once_with_its_reason_and_is_not_timed() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let (bulkhead, patient, hurried) = metrics::with_local_recorder(&recorder, || {
        let bulkhead = Bulkhead::builder(1)
            .max_queue(4)
            .max_wait(ms(100))
            .name("h")
            .build()
            .unwrap();
        let patient = Pipeline::builder()
            .name("patient")
            .bulkhead(bulkhead.clone())
            .build()
            .unwrap();
        let hurried = Pipeline::builder()
            .name("hurried")
            .deadline(ms(30))
            .bulkhead(bulkhead.clone())
            .build()
            .unwrap();
        (bulkhead, patient, hurried)
    });
    let held = bulkhead.try_acquire_owned().unwrap();
    let start = Instant::now();
    let waited_out = patient.call(|| async { Ok::<_, ()>(()) }).await;
    assert_eq!(start.elapsed(), ms(100), "waited its max_wait");
    let Err(Error::Rejected(first)) = waited_out else {
        panic!("{waited_out:?}")
    };
    let start = Instant::now();
    let late = hurried.call(|| async { Ok::<_, ()>(()) }).await;
    assert!(
        start.elapsed() <= ms(30),
        "never waits past the caller's deadline"
    );
    assert_eq!(late, Err(Error::Rejected(Rejected::DeadlineExceeded)));
    drop(held);

    let seen = Seen::now(&snapshotter);
    let h = [("policy", "bulkhead"), ("name", "h")];
    assert_eq!(
        seen.counter_sum("tidewall_rejections_total", &h),
        2,
        "{:#?}",
        seen.names()
    );
    let mut by_reason = HashMap::new();
    *by_reason.entry(first.kind()).or_insert(0) += 1;
    *by_reason
        .entry(Rejected::DeadlineExceeded.kind())
        .or_insert(0) += 1;
    for (reason, n) in by_reason {
        assert_eq!(
            seen.counter(
                "tidewall_rejections_total",
                &[h[0], h[1], ("reason", reason)]
            ),
            n,
            "{reason}"
        );
    }
    assert_eq!(bulkhead.rejected(), 2);
    assert!(
        seen.samples("tidewall_wait_duration_seconds", &h)
            .is_empty(),
        "only waits that ended admitted are timed"
    );
    assert_eq!(seen.calls("pipeline", "patient", "rejected"), 1);
    assert_eq!(seen.calls("pipeline", "hurried", "rejected"), 1);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn nowait_stages_refuse_at_once_and_count_exactly_one_rejection() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let (bulkhead, limited, crowded) = metrics::with_local_recorder(&recorder, || {
        let limiter = RateLimiter::builder(1, secs(60)).name("r").build().unwrap();
        // A bulkhead that would queue: NoWait must not.
        let bulkhead = Bulkhead::builder(1)
            .max_queue(8)
            .max_wait(secs(30))
            .name("h")
            .build()
            .unwrap();
        let limited = Pipeline::builder()
            .name("limited")
            .deadline(secs(120))
            .rate_limit(NoWait(limiter))
            .build()
            .unwrap();
        let crowded = Pipeline::builder()
            .name("crowded")
            .deadline(secs(120))
            .bulkhead(NoWait(bulkhead.clone()))
            .build()
            .unwrap();
        (bulkhead, limited, crowded)
    });
    let start = Instant::now();
    assert_eq!(limited.call(|| async { Ok::<_, ()>(1) }).await, Ok(1));
    let refused = limited.call(|| async { Ok::<_, ()>(2) }).await;
    assert!(
        matches!(refused, Err(Error::Rejected(Rejected::RateLimited { .. }))),
        "{refused:?}"
    );
    let held = bulkhead.try_acquire_owned().unwrap();
    let full = crowded.call(|| async { Ok::<_, ()>(3) }).await;
    assert_eq!(full, Err(Error::Rejected(Rejected::BulkheadFull)));
    assert_eq!(start.elapsed(), Duration::ZERO, "NoWait never waits");
    assert_eq!(bulkhead.queued(), 0);
    assert_eq!(bulkhead.rejected(), 1);
    drop(held);

    let seen = Seen::now(&snapshotter);
    assert_eq!(
        seen.counter_sum("tidewall_rejections_total", &[("policy", "rate")]),
        1,
        "{:#?}",
        seen.names()
    );
    assert_eq!(
        seen.counter(
            "tidewall_rejections_total",
            &[
                ("policy", "rate"),
                ("name", "r"),
                ("reason", "rate_limited")
            ]
        ),
        1
    );
    assert_eq!(
        seen.counter_sum("tidewall_rejections_total", &[("policy", "bulkhead")]),
        1
    );
    assert_eq!(
        seen.counter(
            "tidewall_rejections_total",
            &[
                ("policy", "bulkhead"),
                ("name", "h"),
                ("reason", "bulkhead_full")
            ]
        ),
        1
    );
    assert_eq!(seen.calls("pipeline", "limited", "rejected"), 1);
    assert_eq!(seen.calls("pipeline", "crowded", "rejected"), 1);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn direct_limiter_calls_count_only_final_refusals_and_exact_boundaries_wait() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let limiter = metrics::with_local_recorder(&recorder, || {
        RateLimiter::builder(10, secs(1))
            .burst(1)
            .jitter(Duration::ZERO)
            .name("r")
            .build()
            .unwrap()
    });
    limiter.check().unwrap();
    // A wait that ends admitted, however long: not a refusal.
    assert_eq!(limiter.until_ready().await, Ok(()));
    // One that ends exactly at the deadline is waited out (the next cell is 100 ms away).
    let start = Instant::now();
    assert_eq!(
        limiter
            .until_ready_before(Deadline::after(&Tokio, ms(100)))
            .await,
        Ok(())
    );
    assert_eq!(start.elapsed(), ms(100));
    // One that would end past it is refused at once.
    let start = Instant::now();
    assert_eq!(
        limiter
            .until_ready_before(Deadline::after(&Tokio, ms(99)))
            .await,
        Err(Rejected::DeadlineExceeded)
    );
    assert_eq!(start.elapsed(), Duration::ZERO);
    // `check` is a final decision; so is asking for more than the burst.
    assert!(matches!(limiter.check(), Err(Rejected::RateLimited { .. })));
    assert!(matches!(
        limiter.check_n(2),
        Err(Rejected::InsufficientCapacity { .. })
    ));

    let seen = Seen::now(&snapshotter);
    let r = [("policy", "rate"), ("name", "r")];
    assert_eq!(
        seen.counter(
            "tidewall_rejections_total",
            &[r[0], r[1], ("reason", "deadline_exceeded")]
        ),
        1
    );
    assert_eq!(
        seen.counter(
            "tidewall_rejections_total",
            &[r[0], r[1], ("reason", "rate_limited")]
        ),
        1
    );
    assert_eq!(
        seen.counter(
            "tidewall_rejections_total",
            &[r[0], r[1], ("reason", "insufficient_capacity")]
        ),
        1
    );
    assert_eq!(
        seen.counter_sum("tidewall_rejections_total", &r),
        3,
        "{:#?}",
        seen.names()
    );
}

// ---------------------------------------------------------------------------------------------
// Cancellation: counted `cancelled`, never timed, never a rejection, nothing leaked
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn calls_dropped_at_every_stage_count_cancelled_and_nothing_else() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let (limiter, bulkhead, breaker, pipeline) = metrics::with_local_recorder(&recorder, || {
        let limiter = RateLimiter::builder(10, secs(1))
            .burst(1)
            .jitter(Duration::ZERO)
            .name("r")
            .build()
            .unwrap();
        let bulkhead = Bulkhead::builder(1)
            .max_queue(2)
            .max_wait(None)
            .name("h")
            .build()
            .unwrap();
        let breaker = CircuitBreaker::builder()
            .name("b")
            .consecutive_failures(100)
            .build()
            .unwrap();
        let pipeline = Pipeline::builder()
            .name("c")
            .rate_limit(limiter.clone())
            .bulkhead(bulkhead.clone())
            .retry(
                Backoff::constant(ms(50))
                    .jitter(Jitter::None)
                    .max_attempts(3)
                    .build()
                    .unwrap(),
            )
            .breaker(breaker.clone())
            .build()
            .unwrap();
        (limiter, bulkhead, breaker, pipeline)
    });
    // One call that ends well, taking the limiter's only cell.
    assert_eq!(pipeline.call(|| async { Ok::<_, &str>(0) }).await, Ok(0));

    // (a) Dropped while waiting for the limiter's next cell (100 ms away).
    let dropped = tokio::time::timeout(ms(10), pipeline.call(|| async { Ok::<_, &str>(1) })).await;
    assert!(dropped.is_err());
    tokio::time::sleep(ms(200)).await;
    assert_eq!(limiter.available(), 1, "a dropped wait takes no capacity");

    // (b) Dropped while queued in the bulkhead.
    let held = bulkhead.try_acquire_owned().unwrap();
    let dropped = tokio::time::timeout(ms(10), pipeline.call(|| async { Ok::<_, &str>(2) })).await;
    assert!(dropped.is_err());
    assert_eq!(bulkhead.queued(), 0, "a dropped waiter leaves the queue");
    drop(held);
    tokio::time::sleep(ms(200)).await;

    // (c) Dropped during the backoff sleep after a failed attempt.
    let dropped =
        tokio::time::timeout(ms(20), pipeline.call(|| async { Err::<u32, _>("down") })).await;
    assert!(dropped.is_err());
    tokio::time::sleep(ms(200)).await;

    // (d) Dropped while its attempt runs.
    let dropped = tokio::time::timeout(
        ms(20),
        pipeline.call(|| async {
            tokio::time::sleep(secs(1)).await;
            Ok::<_, &str>(4)
        }),
    )
    .await;
    assert!(dropped.is_err());

    assert_eq!(bulkhead.available(), bulkhead.capacity());
    assert_eq!(bulkhead.queued(), 0);
    assert_eq!(breaker.state(), State::Closed);

    let seen = Seen::now(&snapshotter);
    assert_eq!(
        seen.calls("pipeline", "c", "cancelled"),
        4,
        "{:#?}",
        seen.names()
    );
    assert_eq!(seen.calls("pipeline", "c", "success"), 1);
    for outcome in ["failure", "ignored", "rejected", "timed_out"] {
        assert_eq!(seen.calls("pipeline", "c", outcome), 0, "{outcome}");
    }
    assert_eq!(
        seen.counter_sum("tidewall_rejections_total", &[]),
        0,
        "a cancelled wait is not a refusal"
    );
    assert_eq!(
        seen.counter(
            "tidewall_retries_total",
            &[("policy", "pipeline"), ("name", "c")]
        ),
        1,
        "(c)'s retry was scheduled"
    );
    assert_eq!(
        seen.samples(
            "tidewall_call_duration_seconds",
            &[("policy", "pipeline"), ("name", "c")]
        )
        .len(),
        1,
        "not for cancelled calls"
    );
    assert!(
        seen.samples("tidewall_wait_duration_seconds", &[("name", "h")])
            .is_empty()
    );
    // The breaker saw (c)'s failure and the first call's success; (d)'s permit was dropped.
    assert_eq!(seen.calls("breaker", "b", "success"), 1);
    assert_eq!(seen.calls("breaker", "b", "failure"), 1);
    assert_eq!(seen.calls("breaker", "b", "ignored"), 0);
}

// ---------------------------------------------------------------------------------------------
// Retries and the budget
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_spent_budget_counts_each_refused_retry_and_no_retry() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let budget = RetryBudget::new(
        RetryBudgetPolicy::builder()
            .ratio(0.0)
            .min_per_second(0)
            .build()
            .unwrap(),
        Instant::now().into_std(),
    );
    let pipeline = metrics::with_local_recorder(&recorder, || {
        Pipeline::builder()
            .name("stingy")
            .retry(Backoff::constant(ms(5)).max_attempts(5).build().unwrap())
            .retry_budget(budget.clone())
            .build()
            .unwrap()
    });
    let mut attempts = 0;
    for _ in 0..4 {
        let failed: Result<(), _> = pipeline
            .call(|| {
                attempts += 1;
                async { Err("down") }
            })
            .await;
        assert_eq!(failed, Err(Error::Inner("down")));
    }
    assert_eq!(attempts, 4, "no retry was granted");
    let seen = Seen::now(&snapshotter);
    let p = [("policy", "pipeline"), ("name", "stingy")];
    assert_eq!(seen.counter("tidewall_retries_total", &p), 0);
    assert_eq!(seen.counter("tidewall_retry_budget_exhausted_total", &p), 4);
    assert_eq!(seen.calls("pipeline", "stingy", "failure"), 4);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn durations_include_the_limiter_wait_the_queue_and_every_backoff() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let (bulkhead, pipeline) = metrics::with_local_recorder(&recorder, || {
        let limiter = RateLimiter::builder(10, secs(1))
            .burst(1)
            .jitter(Duration::ZERO)
            .build()
            .unwrap();
        let bulkhead = Bulkhead::builder(1)
            .name("h")
            .max_wait(None)
            .build()
            .unwrap();
        let pipeline = Pipeline::builder()
            .name("t")
            .rate_limit(limiter)
            .bulkhead(bulkhead.clone())
            .retry(
                Backoff::constant(ms(10))
                    .jitter(Jitter::None)
                    .max_attempts(3)
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        (bulkhead, pipeline)
    });
    assert_eq!(pipeline.call(|| async { Ok::<_, &str>(()) }).await, Ok(()));
    // The next cell is 100 ms away; then the bulkhead is held for 40 ms more; then two
    // failures and two 10 ms backoffs.
    let held = bulkhead.try_acquire_owned().unwrap();
    let releaser = async {
        tokio::time::sleep(ms(140)).await;
        drop(held);
    };
    let mut failures = 2;
    let call = pipeline.call(|| {
        let fail = failures > 0;
        failures -= 1;
        async move { if fail { Err("flaky") } else { Ok(()) } }
    });
    let (result, ()) = tokio::join!(call, releaser);
    assert_eq!(result, Ok(()));
    let seen = Seen::now(&snapshotter);
    let durations = seen.samples(
        "tidewall_call_duration_seconds",
        &[("policy", "pipeline"), ("name", "t")],
    );
    assert_eq!(durations, vec![0.0, ms(160).as_secs_f64()]);
    assert_eq!(
        seen.samples(
            "tidewall_wait_duration_seconds",
            &[("policy", "bulkhead"), ("name", "h")]
        ),
        vec![ms(40).as_secs_f64()],
        "queued from 100 ms to 140 ms"
    );
}

// ---------------------------------------------------------------------------------------------
// Composition: shared policies, classifier verdicts, timeouts
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn two_pipelines_sharing_a_breaker_and_a_bulkhead_count_apart_and_together() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let (breaker, bulkhead, left, right) = metrics::with_local_recorder(&recorder, || {
        let breaker = CircuitBreaker::builder()
            .name("shared-b")
            .consecutive_failures(3)
            .break_duration(secs(10))
            .build()
            .unwrap();
        let bulkhead = Bulkhead::builder(1)
            .name("shared-h")
            .max_wait(None)
            .build()
            .unwrap();
        let backoff = Backoff::constant(ms(1))
            .jitter(Jitter::None)
            .max_attempts(2)
            .build()
            .unwrap();
        let left = Pipeline::builder()
            .name("left")
            .bulkhead(bulkhead.clone())
            .retry(backoff)
            .breaker(breaker.clone())
            .build()
            .unwrap();
        let right = Pipeline::builder()
            .name("right")
            .deadline(secs(1))
            .bulkhead(bulkhead.clone())
            .retry(backoff)
            .breaker(breaker.clone())
            .build()
            .unwrap();
        (breaker, bulkhead, left, right)
    });
    // left succeeds; right fails twice (two breaker failures); left fails once and then the
    // third failure in a row opens the shared breaker, so its retry is refused.
    let slow_ok = || async {
        tokio::time::sleep(ms(100)).await;
        Ok::<_, &str>(())
    };
    let (a, b) = tokio::join!(
        left.call(slow_ok),
        right.call(|| async { Err::<(), _>("r") })
    );
    assert_eq!(a, Ok(()));
    assert_eq!(b, Err(Error::Inner("r")));
    let c = left.call(|| async { Err::<(), _>("l") }).await;
    assert!(
        matches!(c, Err(Error::Rejected(Rejected::CircuitOpen { .. }))),
        "{c:?}"
    );
    assert_eq!(breaker.state(), State::Open);
    let d = right.call(|| async { Ok::<(), &str>(()) }).await;
    assert!(
        matches!(d, Err(Error::Rejected(Rejected::CircuitOpen { .. }))),
        "{d:?}"
    );

    let seen = Seen::now(&snapshotter);
    assert_eq!(seen.calls("pipeline", "left", "success"), 1);
    assert_eq!(seen.calls("pipeline", "left", "rejected"), 1);
    assert_eq!(seen.calls("pipeline", "right", "failure"), 1);
    assert_eq!(seen.calls("pipeline", "right", "rejected"), 1);
    assert_eq!(seen.calls("breaker", "shared-b", "success"), 1);
    assert_eq!(seen.calls("breaker", "shared-b", "failure"), 3);
    // Two pipelines, one bulkhead of one: one of the first two calls queued 100 ms.
    assert_eq!(
        seen.samples(
            "tidewall_wait_duration_seconds",
            &[("policy", "bulkhead"), ("name", "shared-h")]
        ),
        vec![ms(100).as_secs_f64()]
    );
    assert_eq!(bulkhead.available(), 1);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn outcomes_follow_the_classifier_not_the_result_and_timeouts_fail_the_breaker() {
    use tidewall::classify::Verdict;
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let (judged, slow) = metrics::with_local_recorder(&recorder, || {
        let judged = Pipeline::builder()
            .name("judged")
            .retry(Backoff::constant(ms(1)).max_attempts(2).build().unwrap())
            .classify(|r: Result<&u16, &u16>| match r {
                Ok(500) => Verdict::RetryableFailure,
                Ok(409) => Verdict::Failure,
                Ok(_) => Verdict::Success,
                Err(404) => Verdict::Ignored,
                Err(_) => Verdict::Success,
            })
            .build()
            .unwrap();
        let breaker = CircuitBreaker::builder()
            .name("tb")
            .consecutive_failures(100)
            .build()
            .unwrap();
        let slow = Pipeline::builder()
            .name("slow")
            .retry(Backoff::constant(ms(1)).max_attempts(3).build().unwrap())
            .breaker(breaker)
            .attempt_timeout(ms(10))
            .build()
            .unwrap();
        (judged, slow)
    });
    // A result is never thrown away, whatever its verdict.
    assert_eq!(
        judged.call(|| async { Ok::<u16, u16>(500) }).await,
        Ok(500),
        "retries ran out: returned as Ok"
    );
    assert_eq!(judged.call(|| async { Ok::<u16, u16>(409) }).await, Ok(409));
    assert_eq!(
        judged.call(|| async { Err::<u16, u16>(404) }).await,
        Err(Error::Inner(404))
    );
    assert_eq!(
        judged.call(|| async { Err::<u16, u16>(418) }).await,
        Err(Error::Inner(418))
    );
    let timed_out: Result<(), Error<()>> = slow
        .call(|| async {
            tokio::time::sleep(secs(1)).await;
            Ok(())
        })
        .await;
    assert_eq!(timed_out, Err(Error::TimedOut));

    let seen = Seen::now(&snapshotter);
    assert_eq!(
        seen.calls("pipeline", "judged", "failure"),
        2,
        "500 twice, then 409"
    );
    assert_eq!(seen.calls("pipeline", "judged", "ignored"), 1);
    assert_eq!(
        seen.calls("pipeline", "judged", "success"),
        1,
        "an Err judged a success"
    );
    assert_eq!(
        seen.counter(
            "tidewall_retries_total",
            &[("policy", "pipeline"), ("name", "judged")]
        ),
        1
    );
    assert_eq!(seen.calls("pipeline", "slow", "timed_out"), 1);
    assert_eq!(
        seen.calls("breaker", "tb", "failure"),
        3,
        "a timed-out attempt is a breaker failure"
    );
}

// ---------------------------------------------------------------------------------------------
// Gauges through Registry::record_gauges
// ---------------------------------------------------------------------------------------------

/// The state gauges of breaker `name`: the one label at 1, checking every other is 0.
fn the_one_state(seen: &Seen, name: &str) -> String {
    let series = seen.series("tidewall_breaker_state", &[("name", name)]);
    assert!(
        !series.is_empty(),
        "no state gauge for {name}: {:#?}",
        seen.names()
    );
    let mut ones = Vec::new();
    for (_, labels, value) in &series {
        match value {
            DebugValue::Gauge(v) if v.into_inner() == 1.0 => ones.push(labels["state"].clone()),
            DebugValue::Gauge(v) if v.into_inner() == 0.0 => {}
            other => panic!("state gauge {labels:?} is neither 0 nor 1: {other:?}"),
        }
    }
    assert_eq!(ones.len(), 1, "exactly one state at 1: {:#?}", seen.names());
    ones.remove(0)
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn the_breaker_state_gauge_marks_exactly_the_state_it_is_in_through_every_state() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let config = "[instances.api.breaker]\nconsecutive_failures = 1\nbreak_duration = \"1s\"\n";
    let registry = metrics::with_local_recorder(&recorder, || {
        Registry::new(Config::from_toml(config).unwrap()).unwrap()
    });
    let breaker = registry.breaker("api").unwrap();
    let read = || {
        metrics::with_local_recorder(&recorder, || registry.record_gauges());
        the_one_state(&Seen::now(&snapshotter), "api")
    };
    let mut visited = Vec::new();
    let mut step = |expected: State| {
        assert_eq!(breaker.state(), expected);
        assert_eq!(read(), expected.to_string(), "the gauge marks {expected:?}");
        visited.push(expected);
    };
    step(State::Closed);
    breaker.try_acquire().unwrap().failure();
    step(State::Open);
    tokio::time::sleep(secs(1)).await;
    let probe = breaker.try_acquire().unwrap();
    assert!(probe.is_probe());
    step(State::HalfOpen);
    probe.success();
    step(State::Closed);
    breaker.force_open();
    step(State::ForcedOpen);
    breaker.force_closed();
    step(State::ForcedClosed);
    breaker.reset();
    step(State::Closed);
    breaker.try_acquire().unwrap().failure();
    step(State::Open);
    assert_eq!(visited.len(), 8);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn bulkhead_gauges_read_mid_flight_follow_a_reload_that_shrinks_it() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let config = "[instances.db.bulkhead]\nmax_concurrent = 3\nmax_queue = 5\nmax_wait = \"off\"\n";
    let registry = metrics::with_local_recorder(&recorder, || {
        Registry::new(Config::from_toml(config).unwrap()).unwrap()
    });
    let bulkhead = registry.bulkhead("db").unwrap();
    let pipeline = Pipeline::builder()
        .name("p")
        .bulkhead(bulkhead.clone())
        .build()
        .unwrap();
    let tasks: Vec<_> = (0..5)
        .map(|_| {
            let pipeline = pipeline.clone();
            tokio::spawn(async move {
                pipeline
                    .call(|| async {
                        tokio::time::sleep(secs(1)).await;
                        Ok::<_, ()>(())
                    })
                    .await
            })
        })
        .collect();
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    let gauges = || {
        metrics::with_local_recorder(&recorder, || registry.record_gauges());
        let seen = Seen::now(&snapshotter);
        let db = [("name", "db")];
        let read = (
            seen.gauge("tidewall_bulkhead_in_flight", &db),
            seen.gauge("tidewall_bulkhead_queued", &db),
            seen.gauge("tidewall_bulkhead_capacity", &db),
        );
        #[allow(clippy::cast_precision_loss)]
        let accessors = (
            bulkhead.in_flight() as f64,
            bulkhead.queued() as f64,
            bulkhead.capacity() as f64,
        );
        assert_eq!(
            read, accessors,
            "the gauges are the bulkhead's own readings"
        );
        read
    };
    assert_eq!(gauges(), (3.0, 2.0, 3.0));
    registry
        .reload(
            Config::from_toml(
                "[instances.db.bulkhead]\nmax_concurrent = 1\nmax_queue = 5\nmax_wait = \"off\"\n",
            )
            .unwrap(),
        )
        .unwrap();
    assert_eq!(
        gauges(),
        (3.0, 2.0, 1.0),
        "nothing revoked, queued callers stay"
    );
    tokio::time::sleep(ms(1001)).await;
    assert_eq!(gauges(), (1.0, 1.0, 1.0));
    tokio::time::sleep(secs(1)).await;
    assert_eq!(gauges(), (1.0, 0.0, 1.0));
    tokio::time::sleep(secs(1)).await;
    assert_eq!(gauges(), (0.0, 0.0, 1.0));
    for task in tasks {
        assert_eq!(task.await.unwrap(), Ok(()));
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn rate_gauge_and_available_at_the_extremes_and_after_idle_hours() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let config = r#"
        [instances.wide.rate_limit]
        count = 1000000
        period = "1s"
        burst = 4294967295
        [instances.narrow.rate_limit]
        count = 10
        period = "1s"
        burst = 1
    "#;
    let registry = metrics::with_local_recorder(&recorder, || {
        Registry::new(Config::from_toml(config).unwrap()).unwrap()
    });
    let wide = registry.rate_limiter("wide").unwrap();
    let narrow = registry.rate_limiter("narrow").unwrap();
    let gauges = || {
        metrics::with_local_recorder(&recorder, || registry.record_gauges());
        let seen = Seen::now(&snapshotter);
        (
            seen.gauge("tidewall_rate_limit_available", &[("name", "wide")]),
            seen.gauge("tidewall_rate_limit_available", &[("name", "narrow")]),
        )
    };
    assert_eq!((wide.available(), narrow.available()), (u32::MAX, 1));
    assert_eq!(gauges(), (f64::from(u32::MAX), 1.0));
    wide.check_n(u32::MAX).unwrap();
    narrow.check().unwrap();
    assert_eq!((wide.available(), narrow.available()), (0, 0));
    assert_eq!(gauges(), (0.0, 0.0));
    tokio::time::advance(ms(99)).await;
    assert_eq!(
        (wide.available(), narrow.available()),
        (99_000, 0),
        "1 µs a cell; 100 ms a cell"
    );
    tokio::time::advance(ms(1)).await;
    assert_eq!((wide.available(), narrow.available()), (100_000, 1));
    assert_eq!(gauges(), (100_000.0, 1.0));
    // Hours idle: rested, and never above the burst.
    tokio::time::advance(secs(6 * 3600)).await;
    assert_eq!((wide.available(), narrow.available()), (u32::MAX, 1));
    assert_eq!(gauges(), (f64::from(u32::MAX), 1.0));
    wide.check_n(u32::MAX).unwrap();
    assert!(wide.check().is_err(), "the whole burst, once");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn available_is_what_one_request_could_take_now_under_seeded_random_load() {
    let mut rng = Rng::new(0x7E1E_0001);
    for round in 0..12 {
        const BURSTS: [u32; 6] = [1, 2, 3, 5, 17, 64];
        let mut burst = BURSTS[usize::try_from(rng.below(6)).unwrap()];
        let limiter = RateLimiter::builder(10, secs(1))
            .burst(burst)
            .jitter(Duration::ZERO)
            .build()
            .unwrap();
        for step in 0..60 {
            match rng.below(5) {
                0 => tokio::time::advance(ms(rng.below(250))).await,
                1 if rng.below(8) == 0 => {
                    tokio::time::advance(secs(3600 * (1 + rng.below(48)))).await
                }
                // A reconfiguration: the cells admitted stay admitted under the new limit.
                2 if rng.below(3) == 0 => {
                    burst = BURSTS[usize::try_from(rng.below(6)).unwrap()];
                    let count = [5_u32, 10, 20][usize::try_from(rng.below(3)).unwrap()];
                    limiter
                        .reconfigure(
                            RateLimiter::builder(count, secs(1))
                                .burst(burst)
                                .jitter(Duration::ZERO),
                        )
                        .unwrap();
                }
                _ => {}
            }
            let available = limiter.available();
            assert!(
                available <= burst,
                "round {round} step {step}: {available} > burst {burst}"
            );
            if available < burst {
                assert!(
                    matches!(
                        limiter.check_n(available + 1),
                        Err(Rejected::RateLimited { .. })
                    ),
                    "round {round} step {step}: {} cells passed with {available} available",
                    available + 1
                );
            }
            assert_eq!(limiter.available(), available, "a refusal takes nothing");
            let take = u32::try_from(rng.below(u64::from(available) + 1)).unwrap();
            if take > 0 {
                assert_eq!(
                    limiter.check_n(take),
                    Ok(()),
                    "round {round} step {step}: {take} of {available}"
                );
            }
            assert_eq!(
                limiter.available(),
                available - take,
                "round {round} step {step}"
            );
        }
    }
}

#[test]
fn budget_balance_is_what_withdrawals_grant_one_after_another_under_random_sequences() {
    let mut rng = Rng::new(0x00B0_D6E7);
    let origin = std::time::Instant::now();
    for round in 0..40 {
        let ratio = [0.0, 0.1, 0.5, 1.0, 2.5][usize::try_from(rng.below(5)).unwrap()];
        let floor = u32::try_from(rng.below(4)).unwrap();
        let window = secs([1, 2, 10][usize::try_from(rng.below(3)).unwrap()]);
        let policy = RetryBudgetPolicy::builder()
            .ratio(ratio)
            .min_per_second(floor)
            .window(window)
            .build()
            .unwrap();
        let budget = RetryBudget::new(policy, origin);
        let mut offset = Duration::ZERO;
        for step in 0..120 {
            match rng.below(10) {
                0..=3 => (0..rng.below(30)).for_each(|_| budget.deposit(origin + offset)),
                4..=5 => offset += ms(rng.below(1500)),
                6 => offset += secs(3600 * rng.below(100)),
                7 => {
                    let _ = budget.try_withdraw(origin + offset);
                }
                // The same window with a new ratio or floor keeps what was counted.
                8 if rng.below(4) == 0 => {
                    let ratio = [0.0, 0.1, 0.5, 1.0, 2.5][usize::try_from(rng.below(5)).unwrap()];
                    let floor = u32::try_from(rng.below(4)).unwrap();
                    budget.reconfigure(
                        RetryBudgetPolicy::builder()
                            .ratio(ratio)
                            .min_per_second(floor)
                            .window(window)
                            .build()
                            .unwrap(),
                    );
                }
                _ => {
                    let now = origin + offset;
                    let balance = budget.balance(now);
                    assert_eq!(budget.balance(now), balance, "a reading takes nothing");
                    assert_eq!(
                        budget.has_balance(now),
                        balance > 0,
                        "round {round} step {step}"
                    );
                    assert!(
                        balance < 100_000,
                        "round {round}: implausible balance {balance}"
                    );
                    for i in 0..balance {
                        assert!(
                            budget.try_withdraw(now),
                            "round {round} step {step}: withdrawal {i} of {balance} refused"
                        );
                    }
                    assert!(
                        !budget.try_withdraw(now),
                        "round {round} step {step}: more than the balance of {balance} granted"
                    );
                    assert_eq!(budget.balance(now), 0);
                }
            }
        }
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn the_budget_gauge_is_the_balance_at_any_moment_even_after_idle_hours() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let config = "[instances.api.budget]\nratio = 0.5\nmin_per_second = 1\nwindow = \"10s\"\n";
    let registry = metrics::with_local_recorder(&recorder, || {
        Registry::new(Config::from_toml(config).unwrap()).unwrap()
    });
    let budget = registry.retry_budget("api").unwrap();
    let gauge = || {
        metrics::with_local_recorder(&recorder, || registry.record_gauges());
        Seen::now(&snapshotter).gauge("tidewall_retry_budget_balance", &[("name", "api")])
    };
    let now = || Instant::now().into_std();
    #[allow(clippy::cast_precision_loss)]
    let balance = |b: &RetryBudget| b.balance(now()) as f64;
    let rested = gauge();
    assert_eq!(rested, balance(&budget));
    (0..40).for_each(|_| budget.deposit(now()));
    assert_eq!(gauge(), balance(&budget));
    assert!(gauge() > rested, "40 calls add to the balance");
    while budget.try_withdraw(now()) {}
    assert_eq!(gauge(), 0.0);
    tokio::time::advance(secs(5 * 3600)).await;
    assert_eq!(gauge(), balance(&budget));
    assert_eq!(
        gauge(),
        rested,
        "after hours idle only the floor is left, as at the start"
    );
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn registry_policies_carry_their_instance_name_in_every_series() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let config = r#"
        [configs.critical.breaker]
        consecutive_failures = 1
        [configs.critical.bulkhead]
        max_concurrent = 1
        max_queue = 0
        [instances.payments]
        base = "critical"
    "#;
    let registry = metrics::with_local_recorder(&recorder, || {
        Registry::new(Config::from_toml(config).unwrap()).unwrap()
    });
    let breaker = registry.breaker("payments").unwrap();
    let bulkhead = registry.bulkhead("payments").unwrap();
    assert_eq!((breaker.name(), bulkhead.name()), ("payments", "payments"));
    breaker.try_acquire().unwrap().failure();
    assert!(breaker.try_acquire().is_err());
    let _held = bulkhead.try_acquire().unwrap();
    assert!(bulkhead.try_acquire().is_err());
    let seen = Seen::now(&snapshotter);
    assert_eq!(
        seen.calls("breaker", "payments", "failure"),
        1,
        "{:#?}",
        seen.names()
    );
    assert_eq!(
        seen.counter(
            "tidewall_rejections_total",
            &[
                ("policy", "breaker"),
                ("name", "payments"),
                ("reason", "circuit_open")
            ]
        ),
        1
    );
    assert_eq!(
        seen.counter(
            "tidewall_rejections_total",
            &[
                ("policy", "bulkhead"),
                ("name", "payments"),
                ("reason", "bulkhead_full")
            ]
        ),
        1
    );
}

/// The registry "names each policy after its instance": the `[defaults]` and `[configs.*]`
/// layers are not instances, and checking a configuration builds nothing for use, so neither
/// may leave series of its own (a dashboard would list a policy that does not exist).
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn only_instances_get_series_never_the_layers_a_configuration_is_checked_through() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let text = r#"
        [defaults.breaker]
        failure_rate = 0.5
        [defaults.rate_limit]
        count = 10
        period = "1s"
        [configs.critical.breaker]
        consecutive_failures = 1
        [configs.critical.bulkhead]
        max_concurrent = 1
        [instances.payments]
        base = "critical"
    "#;
    let config = metrics::with_local_recorder(&recorder, || {
        let config = Config::from_toml(text).unwrap();
        config.validate().unwrap();
        config
    });
    let checked = Seen::now(&snapshotter);
    assert!(
        checked.0.is_empty(),
        "checking a configuration registered series: {:#?}",
        checked.names()
    );
    let registry =
        metrics::with_local_recorder(&recorder, || Registry::new(config.clone()).unwrap());
    metrics::with_local_recorder(&recorder, || registry.reload(config).unwrap());
    let seen = Seen::now(&snapshotter);
    let strays: Vec<_> = seen
        .0
        .iter()
        .filter(|(_, labels, _)| {
            labels
                .get("name")
                .or_else(|| labels.get("breaker"))
                .is_some_and(|n| n != "payments")
        })
        .map(|(name, labels, _)| format!("{name} {labels:?}"))
        .collect();
    assert!(
        strays.is_empty(),
        "series of a policy no instance has: {strays:#?}"
    );
    assert_eq!(registry.breakers().len(), 1);
    assert_eq!(registry.bulkheads().len(), 1);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_reload_that_resets_an_open_breaker_counts_the_transition_and_moves_the_gauge() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let before = "[instances.api.breaker]\nconsecutive_failures = 1\nwindow_calls = 100\nbreak_duration = \"1h\"\n";
    let after = "[instances.api.breaker]\nconsecutive_failures = 1\nwindow_calls = 50\nbreak_duration = \"1h\"\n";
    let registry = metrics::with_local_recorder(&recorder, || {
        Registry::new(Config::from_toml(before).unwrap()).unwrap()
    });
    let breaker = registry.breaker("api").unwrap();
    // Inside the recorder's scope, so the counts land whenever the counters are resolved.
    metrics::with_local_recorder(&recorder, || {
        breaker.try_acquire().unwrap().failure();
        assert_eq!(breaker.state(), State::Open);
        let reload = registry.reload(Config::from_toml(after).unwrap()).unwrap();
        assert_eq!(reload.reset, ["api"]);
        assert_eq!(breaker.state(), State::Closed);
        registry.record_gauges();
    });
    let seen = Seen::now(&snapshotter);
    let to = |s: State| {
        seen.counter(
            "tidewall_breaker_transitions_total",
            &[
                ("policy", "breaker"),
                ("name", "api"),
                ("to", &s.to_string()),
            ],
        )
    };
    assert_eq!(
        (to(State::Open), to(State::Closed)),
        (1, 1),
        "{:#?}",
        seen.names()
    );
    assert_eq!(the_one_state(&seen, "api"), State::Closed.to_string());
    assert_eq!(
        seen.counter(
            "tidewall_config_reloads_total",
            &[("registry", "registry"), ("outcome", "applied")]
        ),
        1
    );
}

/// "Gauges cost the calls nothing: they are read from the policies when you ask."
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn gauges_are_read_when_asked_never_set_by_the_calls() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let config = "[instances.db.bulkhead]\nmax_concurrent = 4\n[instances.db.breaker]\nconsecutive_failures = 1\n";
    let registry = metrics::with_local_recorder(&recorder, || {
        Registry::new(Config::from_toml(config).unwrap()).unwrap()
    });
    let bulkhead = registry.bulkhead("db").unwrap();
    let breaker = registry.breaker("db").unwrap();
    let (held, seen) = metrics::with_local_recorder(&recorder, || {
        let held = bulkhead.try_acquire_owned().unwrap();
        breaker.try_acquire().unwrap().failure();
        (held, Seen::now(&snapshotter))
    });
    let stale = |name: &str, labels: &[(&str, &str)]| match seen.exact(name, labels) {
        None | Some(DebugValue::Gauge(_)) => seen.exact(name, labels).map(|v| match v {
            DebugValue::Gauge(g) => g.into_inner(),
            _ => unreachable!(),
        }),
        Some(other) => panic!("{name}: {other:?}"),
    };
    assert!(
        matches!(
            stale("tidewall_bulkhead_in_flight", &[("name", "db")]),
            None | Some(0.0)
        ),
        "a call set a gauge: {:#?}",
        seen.names()
    );
    assert!(
        matches!(
            stale(
                "tidewall_breaker_state",
                &[("name", "db"), ("state", "open")]
            ),
            None | Some(0.0)
        ),
        "a transition set a gauge: {:#?}",
        seen.names()
    );
    metrics::with_local_recorder(&recorder, || registry.record_gauges());
    let seen = Seen::now(&snapshotter);
    assert_eq!(
        seen.gauge("tidewall_bulkhead_in_flight", &[("name", "db")]),
        1.0
    );
    assert_eq!(the_one_state(&seen, "db"), State::Open.to_string());
    drop(held);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn limiter_and_budget_gauges_follow_reloads_without_readmitting_what_was_spent() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let config = |count: u32, ratio: f64, window: &str| {
        Config::from_toml(&format!(
            "[instances.api.rate_limit]\ncount = {count}\nperiod = \"1s\"\n\
             [instances.api.budget]\nratio = {ratio}\nmin_per_second = 0\nwindow = \"{window}\"\n"
        ))
        .unwrap()
    };
    let registry =
        metrics::with_local_recorder(&recorder, || Registry::new(config(10, 0.1, "10s")).unwrap());
    let limiter = registry.rate_limiter("api").unwrap();
    let budget = registry.retry_budget("api").unwrap();
    let gauges = || {
        metrics::with_local_recorder(&recorder, || registry.record_gauges());
        let seen = Seen::now(&snapshotter);
        (
            seen.gauge("tidewall_rate_limit_available", &[("name", "api")]),
            seen.gauge("tidewall_retry_budget_balance", &[("name", "api")]),
        )
    };
    let now = || Instant::now().into_std();
    limiter.check_n(4).unwrap();
    (0..100).for_each(|_| budget.deposit(now()));
    assert_eq!(gauges(), (6.0, 10.0));
    // Twice the rate (and burst): the 4 cells admitted stay admitted, as 4 cells.
    registry.reload(config(20, 0.2, "10s")).unwrap();
    assert_eq!(
        gauges(),
        (16.0, 20.0),
        "a ratio judges the calls kept in a window of the same shape"
    );
    assert!((0..5).all(|_| budget.try_withdraw(now())));
    assert_eq!(gauges(), (16.0, 15.0));
    // Another window shape starts empty: only the floor (zero) is left.
    registry.reload(config(20, 0.2, "20s")).unwrap();
    assert_eq!(gauges(), (16.0, 0.0));
    assert_eq!(
        (f64::from(limiter.available()), budget.balance(now())),
        (16.0, 0)
    );
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn policies_keep_counting_in_their_build_recorder_after_reloads_and_reconfigures() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let before = "[instances.db.bulkhead]\nmax_concurrent = 2\nmax_queue = 0\n[instances.db.rate_limit]\ncount = 1\nperiod = \"1m\"\n";
    let after = "[instances.db.bulkhead]\nmax_concurrent = 1\nmax_queue = 0\n[instances.db.rate_limit]\ncount = 2\nperiod = \"1m\"\n";
    let registry = metrics::with_local_recorder(&recorder, || {
        Registry::new(Config::from_toml(before).unwrap()).unwrap()
    });
    let bulkhead = registry.bulkhead("db").unwrap();
    let limiter = registry.rate_limiter("db").unwrap();
    registry.reload(Config::from_toml(after).unwrap()).unwrap();
    let direct = metrics::with_local_recorder(&recorder, || {
        Bulkhead::builder(3)
            .reject_when_full()
            .name("direct")
            .build()
            .unwrap()
    });
    direct
        .reconfigure(Bulkhead::builder(1).reject_when_full())
        .unwrap();

    let _a = bulkhead.try_acquire().unwrap();
    assert!(
        bulkhead.try_acquire().is_err(),
        "the reloaded capacity of 1"
    );
    limiter.check_n(2).unwrap();
    assert!(limiter.check().is_err());
    let _b = direct.try_acquire().unwrap();
    assert!(direct.try_acquire().is_err());

    let seen = Seen::now(&snapshotter);
    let refused = |policy: &str, name: &str, reason: &str| {
        seen.counter(
            "tidewall_rejections_total",
            &[("policy", policy), ("name", name), ("reason", reason)],
        )
    };
    assert_eq!(
        refused("bulkhead", "db", "bulkhead_full"),
        1,
        "{:#?}",
        seen.names()
    );
    assert_eq!(refused("rate", "db", "rate_limited"), 1);
    assert_eq!(refused("bulkhead", "direct", "bulkhead_full"), 1);
    assert_eq!(
        seen.counter(
            "tidewall_config_reloads_total",
            &[("registry", "registry"), ("outcome", "applied")]
        ),
        1
    );
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn extreme_capacities_and_budgets_read_as_gauges_without_wrapping() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let config = "[instances.huge.bulkhead]\nmax_concurrent = 9223372036854775807\nmax_queue = 0\n";
    let registry = metrics::with_local_recorder(&recorder, || {
        Registry::new(Config::from_toml(config).unwrap()).unwrap()
    });
    let bulkhead = registry.bulkhead("huge").unwrap();
    let _held = bulkhead.try_acquire_owned().unwrap();
    metrics::with_local_recorder(&recorder, || registry.record_gauges());
    let seen = Seen::now(&snapshotter);
    #[allow(clippy::cast_precision_loss)]
    let max = usize::MAX as f64 / 2.0;
    assert_eq!(
        seen.gauge("tidewall_bulkhead_capacity", &[("name", "huge")]),
        max
    );
    assert_eq!(
        seen.gauge("tidewall_bulkhead_in_flight", &[("name", "huge")]),
        1.0
    );
    assert_eq!(bulkhead.available(), usize::MAX / 2 - 1);

    // The largest floor and window the builder takes (it refuses those whose counts would
    // overflow): the balance is at least a second's floor, and one withdrawal takes exactly one.
    let origin = std::time::Instant::now();
    let year = 86_400 * 365;
    let (floor, policy) = [u32::MAX, 1 << 24, 1 << 16, 1000]
        .into_iter()
        .flat_map(|floor| {
            [100 * year, year, 86_400, 60, 1]
                .into_iter()
                .map(move |window| (floor, window))
        })
        .find_map(|(floor, window)| {
            let policy = RetryBudgetPolicy::builder()
                .ratio(1000.0)
                .min_per_second(floor)
                .window(secs(window))
                .build()
                .ok()?;
            Some((floor, policy))
        })
        .expect("some extreme policy is accepted");
    let budget = RetryBudget::new(policy, origin);
    (0..1000).for_each(|_| budget.deposit(origin));
    let balance = budget.balance(origin);
    assert!(
        balance >= u64::from(floor),
        "a floor of {floor} a second gives at least that: {balance}"
    );
    assert!(budget.try_withdraw(origin));
    let after = budget.balance(origin);
    assert!(
        after == u64::MAX || after == balance - 1,
        "{balance} then {after}"
    );
}

// ---------------------------------------------------------------------------------------------
// tidewall_config_reloads_total
// ---------------------------------------------------------------------------------------------

#[test]
fn both_reload_series_exist_from_the_start_and_every_reload_path_counts() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tidewall.toml");
    std::fs::write(&path, "[instances.a.bulkhead]\nmax_concurrent = 2\n").unwrap();
    let registry = metrics::with_local_recorder(&recorder, || {
        Registry::builder(Config::from_toml(&std::fs::read_to_string(&path).unwrap()).unwrap())
            .runtime(tidewall::testing::FakeClock::new())
            .build()
            .unwrap()
    });
    let seen = Seen::now(&snapshotter);
    assert_eq!(
        seen.counter(
            "tidewall_config_reloads_total",
            &[("registry", "registry"), ("outcome", "applied")]
        ),
        0
    );
    assert_eq!(
        seen.counter(
            "tidewall_config_reloads_total",
            &[("registry", "registry"), ("outcome", "refused")]
        ),
        0
    );

    metrics::with_local_recorder(&recorder, || {
        // Applied: in memory and from a file.
        registry
            .reload(Config::from_toml("[instances.a.bulkhead]\nmax_concurrent = 3\n").unwrap())
            .unwrap();
        std::fs::write(&path, "[instances.a.bulkhead]\nmax_concurrent = 4\n").unwrap();
        registry.reload_file(&path).unwrap();
        // Refused: a file that is missing, one that is not TOML, one with a bad value, one
        // that removes the only section setting a held bulkhead's max_concurrent.
        assert!(
            registry
                .reload_file(dir.path().join("missing.toml"))
                .is_err()
        );
        std::fs::write(&path, "[instances.a.bulkhead\n").unwrap();
        assert!(registry.reload_file(&path).is_err());
        std::fs::write(&path, "[instances.a.bulkhead]\nmax_concurrent = 0\n").unwrap();
        assert!(registry.reload_file(&path).is_err());
        assert!(
            registry.reload(Config::default()).is_err(),
            "the held bulkhead could not be built"
        );
    });
    assert_eq!(
        registry.bulkhead("a").unwrap().capacity(),
        4,
        "the old configuration stays"
    );
    let seen = Seen::now(&snapshotter);
    assert_eq!(
        seen.counter(
            "tidewall_config_reloads_total",
            &[("registry", "registry"), ("outcome", "applied")]
        ),
        2
    );
    assert_eq!(
        seen.counter(
            "tidewall_config_reloads_total",
            &[("registry", "registry"), ("outcome", "refused")]
        ),
        4
    );
}

/// Registered when the registry starts (the docs' "both series exist from the registry's
/// start"): reloads made outside any recorder's scope still count in the one it started under.
#[test]
fn reloads_count_in_the_recorder_the_registry_started_under() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let registry = metrics::with_local_recorder(&recorder, || {
        Registry::builder(
            Config::from_toml("[instances.a.bulkhead]\nmax_concurrent = 2\n").unwrap(),
        )
        .runtime(tidewall::testing::FakeClock::new())
        .build()
        .unwrap()
    });
    registry
        .reload(Config::from_toml("[instances.a.bulkhead]\nmax_concurrent = 3\n").unwrap())
        .unwrap();
    assert!(registry.reload_file("/nonexistent/tidewall.toml").is_err());
    let seen = Seen::now(&snapshotter);
    assert_eq!(
        seen.counter(
            "tidewall_config_reloads_total",
            &[("registry", "registry"), ("outcome", "applied")]
        ),
        1
    );
    assert_eq!(
        seen.counter(
            "tidewall_config_reloads_total",
            &[("registry", "registry"), ("outcome", "refused")]
        ),
        1
    );
}

// ---------------------------------------------------------------------------------------------
// Watching: a watched file's reloads count, and reading is not a change
// ---------------------------------------------------------------------------------------------

/// The next item of `stream`, or `None` after `limit` of real time.
async fn next_within<S: futures_util::Stream + Unpin>(
    stream: &mut S,
    limit: Duration,
) -> Option<S::Item> {
    tokio::time::timeout(limit, stream.next())
        .await
        .ok()
        .flatten()
}

#[test]
fn a_watched_file_counts_its_reloads_and_its_own_reads_never_retrigger_it() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tidewall.toml");
        std::fs::write(&path, "[instances.a.bulkhead]\nmax_concurrent = 2\n").unwrap();
        let registry = Arc::new(metrics::with_local_recorder(&recorder, || {
            Registry::new(Config::from_toml(&std::fs::read_to_string(&path).unwrap()).unwrap())
                .unwrap()
        }));
        let mut reloads =
            tidewall::config::watch_file_on(&Tokio, Arc::clone(&registry), &path, ms(50)).unwrap();

        std::fs::write(&path, "[instances.a.bulkhead]\nmax_concurrent = 5\n").unwrap();
        let applied = next_within(&mut reloads, secs(20))
            .await
            .expect("the change was seen");
        assert!(applied.is_ok(), "{applied:?}");
        assert_eq!(registry.bulkhead("a").unwrap().capacity(), 5);

        std::fs::write(&path, "[instances.a.bulkhead]\nmax_concurrent = \"many\"\n").unwrap();
        let refused = next_within(&mut reloads, secs(20))
            .await
            .expect("the change was seen");
        assert!(refused.is_err(), "{refused:?}");
        assert_eq!(
            registry.bulkhead("a").unwrap().capacity(),
            5,
            "the old one stays"
        );

        // Each item read the file; a read is not a change, so nothing else comes.
        let extra = next_within(&mut reloads, ms(750)).await;
        assert!(extra.is_none(), "an item no write caused: {extra:?}");

        // A deployment that writes a new file and renames it over the old one.
        let staged = dir.path().join("staged.tmp");
        std::fs::write(&staged, "[instances.a.bulkhead]\nmax_concurrent = 7\n").unwrap();
        std::fs::rename(&staged, &path).unwrap();
        let replaced = next_within(&mut reloads, secs(20))
            .await
            .expect("the rename was seen");
        assert!(replaced.is_ok(), "{replaced:?}");
        assert_eq!(registry.bulkhead("a").unwrap().capacity(), 7);
        // The file removed: unreadable, refused, the old configuration stays.
        std::fs::remove_file(&path).unwrap();
        let removed = next_within(&mut reloads, secs(20))
            .await
            .expect("the removal was seen");
        assert!(removed.is_err(), "{removed:?}");
        assert_eq!(registry.bulkhead("a").unwrap().capacity(), 7);

        let seen = Seen::now(&snapshotter);
        assert_eq!(
            seen.counter(
                "tidewall_config_reloads_total",
                &[("registry", "registry"), ("outcome", "applied")]
            ),
            2
        );
        assert_eq!(
            seen.counter(
                "tidewall_config_reloads_total",
                &[("registry", "registry"), ("outcome", "refused")]
            ),
            2
        );
    });
}

/// Collects `watch_dir_on` batches until one names `sentinel`; returns every path reported.
async fn paths_until(
    changes: &mut tidewall::stream::DirWatch<Tokio>,
    sentinel: &Path,
) -> Vec<std::path::PathBuf> {
    let mut all = Vec::new();
    for _ in 0..20 {
        let Some(batch) = next_within(changes, secs(20)).await else {
            panic!("the sentinel's write was never reported; seen {all:?}")
        };
        let batch = batch.unwrap();
        assert!(!batch.overflowed);
        let done = batch
            .paths
            .iter()
            .any(|p| p.file_name() == sentinel.file_name());
        all.extend(batch.paths);
        if done {
            return all;
        }
    }
    panic!("the sentinel's write was never reported; seen {all:?}")
}

#[test]
fn watch_dir_reports_no_kind_of_read() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("tidewall.toml");
        let plain = dir.path().join("plain.txt");
        std::fs::write(&config, "[instances.a.bulkhead]\nmax_concurrent = 2\n").unwrap();
        std::fs::write(&plain, "unchanged").unwrap();
        let registry =
            Registry::new(Config::from_toml(&std::fs::read_to_string(&config).unwrap()).unwrap())
                .unwrap();
        let mut changes = tidewall::stream::watch_dir_on(&Tokio, dir.path(), ms(50)).unwrap();

        // Every way of reading: whole reads, a reload from the file, an open read handle kept
        // and read in pieces, metadata, and listing the directory itself.
        assert_eq!(std::fs::read_to_string(&plain).unwrap(), "unchanged");
        registry.reload_file(&config).unwrap();
        {
            use std::io::Read as _;
            let mut file = std::fs::File::open(&plain).unwrap();
            let mut byte = [0_u8; 1];
            file.read_exact(&mut byte).unwrap();
        }
        let _ = std::fs::metadata(&plain).unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);

        let sentinel = dir.path().join("sentinel");
        std::fs::write(&sentinel, "written").unwrap();
        let reported = paths_until(&mut changes, &sentinel).await;
        let others: Vec<_> = reported
            .iter()
            .filter(|p| p.file_name() != sentinel.file_name())
            .collect();
        assert!(others.is_empty(), "reads reported as changes: {others:?}");
    });
}

#[test]
fn each_batch_names_its_paths_sorted_and_once() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let mut changes = tidewall::stream::watch_dir_on(&Tokio, dir.path(), ms(200)).unwrap();
        for (i, name) in ["b", "a", "c", "a", "b", "a"].iter().enumerate() {
            std::fs::write(dir.path().join(name), format!("{i}")).unwrap();
        }
        let sentinel = dir.path().join("z-sentinel");
        std::fs::write(&sentinel, "last").unwrap();
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..20 {
            let batch = next_within(&mut changes, secs(20))
                .await
                .expect("a batch")
                .unwrap();
            assert!(!batch.paths.is_empty(), "a batch is never empty");
            assert!(
                batch.paths.windows(2).all(|w| w[0] < w[1]),
                "sorted, each once: {:?}",
                batch.paths
            );
            seen.extend(
                batch
                    .paths
                    .iter()
                    .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned())),
            );
            if seen.contains("z-sentinel") {
                break;
            }
        }
        assert_eq!(
            seen.into_iter().collect::<Vec<_>>(),
            ["a", "b", "c", "z-sentinel"]
        );
    });
}

#[test]
/// The OS reports a close after an open for writing without saying whether anything was
/// written, and `DirChanges::paths` documents such a close as a change (a writer that
/// writes nothing is rare; a missed write would not be): it is reported.
fn opening_a_file_for_writing_and_closing_it_is_a_change_even_unwritten() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("opened.txt");
        std::fs::write(&file, "unchanged").unwrap();
        let mut changes = tidewall::stream::watch_dir_on(&Tokio, dir.path(), ms(50)).unwrap();
        // Opened with write access, nothing written, closed: the file did not change.
        drop(
            std::fs::OpenOptions::new()
                .append(true)
                .open(&file)
                .unwrap(),
        );
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "unchanged");
        let sentinel = dir.path().join("sentinel");
        std::fs::write(&sentinel, "written").unwrap();
        let reported = paths_until(&mut changes, &sentinel).await;
        let others: Vec<_> = reported
            .iter()
            .filter(|p| p.file_name() != sentinel.file_name())
            .collect();
        assert_eq!(
            others,
            [&file],
            "a close after an open for writing is a change; the sentinel's own write is there too"
        );
    });
}

// ---------------------------------------------------------------------------------------------
// Tracing: a `tidewall.call` span per pipeline call
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn each_pipeline_call_runs_in_its_own_span_named_after_its_pipeline() {
    let trace = Trace::default();
    let _default = trace.install();
    // Other tests' threads may have registered the same callsites while no subscriber was
    // listening: recompute their interest so this thread's subscriber is asked.
    tracing::callsite::rebuild_interest_cache();

    let breaker = CircuitBreaker::builder()
        .name("tb")
        .consecutive_failures(1)
        .break_duration(secs(60))
        .build()
        .unwrap();
    let name = format!("quotes-{}", 7);
    let pipeline = Pipeline::builder()
        .name(name.clone())
        .retry(
            Backoff::constant(ms(5))
                .jitter(Jitter::None)
                .max_attempts(2)
                .build()
                .unwrap(),
        )
        .max_retry_after(ms(5))
        .breaker(breaker)
        .build()
        .unwrap();
    let other = Pipeline::builder().name("other").build().unwrap();
    // Attempt 1 fails and opens the breaker; the retry is refused by it.
    let refused: Result<(), _> = pipeline.call(|| async { Err("down") }).await;
    assert!(
        matches!(refused, Err(Error::Rejected(Rejected::CircuitOpen { .. }))),
        "{refused:?}"
    );
    assert_eq!(other.call(|| async { Ok::<_, ()>(()) }).await, Ok(()));

    let log = trace.seen();
    let mut calls: Vec<_> = log
        .iter()
        .filter_map(|seen| match seen {
            Traced::Span(span) if span.name == "tidewall.call" => Some(span.to_string()),
            _ => None,
        })
        .collect();
    calls.sort();
    assert_eq!(
        calls,
        vec![
            "tidewall.call pipeline=\"other\"".to_owned(),
            format!("tidewall.call pipeline={name:?}")
        ],
        "one span per call; seen: {log:#?}"
    );
    let in_quotes: Vec<_> = log
        .iter()
        .filter(|seen| match seen {
            Traced::Event {
                span: Some(span), ..
            } => span.to_string().contains(&format!("{name:?}")),
            _ => false,
        })
        .collect();
    let messages: Vec<_> = in_quotes
        .iter()
        .map(|e| e.message().unwrap_or(""))
        .collect();
    assert!(
        messages.contains(&"attempt"),
        "a debug event per attempt: {messages:?}"
    );
    let retry = in_quotes
        .iter()
        .find(|e| e.message() == Some("retry scheduled"))
        .expect("a retry event");
    assert!(
        retry
            .fields()
            .iter()
            .any(|(f, _)| *f != "message" && f.contains("delay")),
        "the retry event carries its delay: {retry:?}"
    );
    // The breaker's transition and its refusal are events too, in the call.
    assert!(
        in_quotes.len() >= 5,
        "attempt, state change, retry, refusal, end: {in_quotes:#?}"
    );
}
