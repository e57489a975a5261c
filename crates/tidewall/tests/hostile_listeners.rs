//! Hostile black-box tests of the event listeners (`on_event`, `telemetry::Event`,
//! `EventKind`), written from the public docs only: each variant's documented meaning
//! ("finally" refused, the *last* attempt timed out, a retry *will* happen after `delay`, the
//! budget refused a retry that would have happened), `Event.policy` / `Event.name`, the order
//! of events within a call, listeners shared by many policies, by two pipelines and by the keys
//! of a keyed breaker, the thread a listener runs on, and a seeded random stress of a full
//! pipeline (rate limit, bulkhead, retry with a budget, breaker, attempt timeout) whose calls
//! are dropped at random points, checking that the listener and the metrics tell one story.
//!
//! Time is paused tokio time; randomness is a seeded generator; metrics go to a local
//! `DebuggingRecorder` per test.

#![cfg(all(feature = "metrics", feature = "tracing", feature = "toml"))]
// Histogram samples are whole-millisecond durations, compared after the same conversion.
#![allow(clippy::float_cmp)]

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use support::snapshot::{Series as Metric, samples, select, snapshot};
use tidewall::breaker::{CircuitBreaker, State};
use tidewall::budget::{RetryBudget, RetryBudgetPolicy};
use tidewall::bulkhead::Bulkhead;
use tidewall::classify::Verdict;
use tidewall::pipeline::Pipeline;
use tidewall::rate::RateLimiter;
use tidewall::rt::Tokio;
use tidewall::telemetry::{Event, EventKind};
use tidewall::{Backoff, Deadline, Error, Jitter, Rejected};
use tidewall_core::rng::SplitMix64;
use tokio::time::Instant;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// One event as heard: who, what (as text), when and on which thread.
#[derive(Debug, Clone)]
struct Heard {
    policy: &'static str,
    name: String,
    kind: String,
    /// The `Rejected` carried, if any.
    refusal: Option<Rejected>,
    /// `(from, to)` of a state change.
    change: Option<(State, State)>,
    /// `(attempt, delay)` of a scheduled retry.
    retry: Option<(u32, Duration)>,
    waited: Option<Duration>,
    at: Instant,
    thread: std::thread::ThreadId,
}

impl Heard {
    fn line(&self) -> String {
        format!("{} {}: {}", self.policy, self.name, self.kind)
    }
}

/// A listener that keeps everything it hears.
#[derive(Default, Clone)]
struct Ear(Arc<Mutex<Vec<Heard>>>);

impl Ear {
    fn listener(&self) -> impl Fn(&Event<'_>) + Send + Sync + 'static {
        let heard = Arc::clone(&self.0);
        move |event: &Event<'_>| {
            let mut refusal = None;
            let mut change = None;
            let mut retry = None;
            let mut waited = None;
            let kind = match event.kind {
                EventKind::Rejected(why) => {
                    refusal = Some(*why);
                    format!("Rejected({})", why.kind())
                }
                EventKind::StateChanged(c) => {
                    change = Some((c.from, c.to));
                    format!("StateChanged({} -> {})", c.from, c.to)
                }
                EventKind::RetryScheduled { attempt, delay, .. } => {
                    retry = Some((attempt, delay));
                    format!("RetryScheduled({attempt})")
                }
                EventKind::Waited(d) => {
                    waited = Some(d);
                    "Waited".to_owned()
                }
                other => format!("{other:?}"),
            };
            heard.lock().unwrap().push(Heard {
                policy: event.policy,
                name: event.name.to_owned(),
                kind,
                refusal,
                change,
                retry,
                waited,
                at: Instant::now(),
                thread: std::thread::current().id(),
            });
        }
    }

    fn take(&self) -> Vec<Heard> {
        std::mem::take(&mut self.0.lock().unwrap())
    }

    fn lines(&self) -> Vec<String> {
        self.take().iter().map(Heard::line).collect()
    }
}

struct Seen(Vec<Metric>);

impl Seen {
    fn now(snapshotter: &Snapshotter) -> Self {
        Self(snapshot(snapshotter))
    }

    fn series(&self, name: &str, labels: &[(&str, &str)]) -> impl Iterator<Item = &Metric> {
        select(&self.0, name, labels)
    }

    fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.series(name, labels)
            .map(|(_, _, value)| match value {
                DebugValue::Counter(n) => *n,
                other => panic!("{name}: not a counter: {other:?}"),
            })
            .sum()
    }

    fn samples(&self, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
        samples(&self.0, name, labels)
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

// ---------------------------------------------------------------------------------------------
// Event.policy and Event.name
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn one_listener_on_every_policy_hears_each_under_its_kind_and_name() {
    let ear = Ear::default();
    let limiter = RateLimiter::builder(10, secs(1))
        .burst(1)
        .jitter(Duration::ZERO)
        .name("r")
        .on_event(ear.listener())
        .build()
        .unwrap();
    let bulkhead = Bulkhead::builder(1)
        .max_queue(1)
        .max_wait(ms(50))
        .name("h")
        .on_event(ear.listener())
        .build()
        .unwrap();
    let breaker = CircuitBreaker::builder()
        .name("b")
        .consecutive_failures(1)
        .break_duration(secs(60))
        .on_event(ear.listener())
        .build()
        .unwrap();
    let pipeline = Pipeline::builder()
        .name("p")
        .rate_limit(limiter.clone())
        .bulkhead(bulkhead.clone())
        .retry(
            Backoff::constant(ms(1))
                .jitter(Jitter::None)
                .max_attempts(2)
                .build()
                .unwrap(),
        )
        .max_retry_after(ms(1))
        .breaker(breaker.clone())
        .on_event(ear.listener())
        .build()
        .unwrap();

    assert_eq!(pipeline.call(|| async { Ok::<_, &str>(1) }).await, Ok(1));
    assert_eq!(
        ear.lines(),
        ["breaker b: Succeeded", "pipeline p: Succeeded"]
    );

    // The limiter's next cell is 100 ms away: a wait that ends admitted, not a refusal.
    // The attempt fails and opens the breaker; the retry is refused by it.
    let refused = pipeline.call(|| async { Err::<u32, _>("down") }).await;
    let Err(Error::Rejected(why)) = refused else {
        panic!("{refused:?}")
    };
    assert!(matches!(why, Rejected::CircuitOpen { .. }), "{why:?}");
    let heard = ear.take();
    assert_eq!(
        heard.last().and_then(|h| h.refusal),
        Some(why),
        "the pipeline's refusal is the caller's"
    );
    assert_eq!(
        heard.iter().map(Heard::line).collect::<Vec<_>>(),
        [
            "breaker b: Failed",
            "breaker b: StateChanged(closed -> open)",
            "pipeline p: RetryScheduled(1)",
            "breaker b: Rejected(circuit_open)",
            "pipeline p: Rejected(circuit_open)",
        ]
    );

    // Each policy on its own.
    assert!(limiter.check().is_err());
    let _held = bulkhead.try_acquire().unwrap();
    assert!(bulkhead.try_acquire().is_err());
    assert!(breaker.try_acquire().is_err());
    assert_eq!(
        ear.lines(),
        [
            "rate r: Rejected(rate_limited)",
            "bulkhead h: Rejected(bulkhead_full)",
            "breaker b: Rejected(circuit_open)"
        ]
    );
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn unnamed_policies_report_their_default_names() {
    let ear = Ear::default();
    let limiter = RateLimiter::builder(1, secs(60))
        .on_event(ear.listener())
        .build()
        .unwrap();
    let bulkhead = Bulkhead::builder(1)
        .reject_when_full()
        .on_event(ear.listener())
        .build()
        .unwrap();
    let pipeline = Pipeline::builder()
        .on_event(ear.listener())
        .build()
        .unwrap();
    assert_eq!(
        (limiter.name(), bulkhead.name(), pipeline.name()),
        ("rate", "bulkhead", "pipeline")
    );
    limiter.check().unwrap();
    assert!(limiter.check().is_err());
    let _held = bulkhead.try_acquire().unwrap();
    assert!(bulkhead.try_acquire().is_err());
    assert_eq!(pipeline.call(|| async { Ok::<_, ()>(()) }).await, Ok(()));
    assert_eq!(
        ear.lines(),
        [
            "rate rate: Rejected(rate_limited)",
            "bulkhead bulkhead: Rejected(bulkhead_full)",
            "pipeline pipeline: Succeeded"
        ]
    );
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_breaker_shared_by_two_pipelines_reports_under_its_own_name_and_they_under_theirs() {
    let ear = Ear::default();
    let breaker = CircuitBreaker::builder()
        .name("shared")
        .consecutive_failures(2)
        .break_duration(secs(60))
        .on_event(ear.listener())
        .build()
        .unwrap();
    let build = |name: &'static str| {
        Pipeline::builder()
            .name(name)
            .breaker(breaker.clone())
            .on_event(ear.listener())
            .build()
            .unwrap()
    };
    let (a, b) = (build("a"), build("b"));
    let _ = a.call(|| async { Err::<(), _>("x") }).await;
    let _ = b.call(|| async { Err::<(), _>("y") }).await;
    let _ = a.call(|| async { Ok::<(), &str>(()) }).await;
    assert_eq!(
        ear.lines(),
        [
            "breaker shared: Failed",
            "pipeline a: Failed",
            "breaker shared: Failed",
            "breaker shared: StateChanged(closed -> open)",
            "pipeline b: Failed",
            "breaker shared: Rejected(circuit_open)",
            "pipeline a: Rejected(circuit_open)",
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// RetryScheduled: "will retry after `delay` (jitter, cap and hints applied)"
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn each_retry_event_names_the_failed_attempt_and_the_sleep_actually_taken() {
    for seed in [1_u64, 2, 3, 0xDEAD_BEEF] {
        let ear = Ear::default();
        let pipeline = Pipeline::builder()
            .seed(seed)
            .retry(
                Backoff::exponential(ms(10))
                    .max_delay(ms(25))
                    .jitter(Jitter::Full)
                    .max_attempts(5)
                    .build()
                    .unwrap(),
            )
            .on_event(ear.listener())
            .build()
            .unwrap();
        let starts = Arc::new(Mutex::new(Vec::new()));
        let failed: Result<(), _> = pipeline
            .call(|| {
                starts.lock().unwrap().push(Instant::now());
                async { Err("down") }
            })
            .await;
        assert_eq!(failed, Err(Error::Inner("down")));
        let heard = ear.take();
        let retries: Vec<_> = heard
            .iter()
            .filter_map(|h| h.retry.map(|r| (r, h.at)))
            .collect();
        let starts = starts.lock().unwrap().clone();
        assert_eq!(starts.len(), 5);
        assert_eq!(
            retries
                .iter()
                .map(|((attempt, _), _)| *attempt)
                .collect::<Vec<_>>(),
            [1, 2, 3, 4],
            "seed {seed}"
        );
        for (i, ((_, delay), at)) in retries.iter().enumerate() {
            assert!(*delay <= ms(25), "seed {seed}: capped: {delay:?}");
            // Tokio's timers tick in whole milliseconds: the sleep is the delay, rounded up.
            let slept = starts[i + 1] - *at;
            assert!(
                slept >= *delay && slept < *delay + ms(1),
                "seed {seed}: retry {} announced {delay:?} and slept {slept:?}",
                i + 1
            );
        }
        assert_eq!(heard.last().unwrap().line(), "pipeline pipeline: Failed");
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn retry_delays_honour_hints_cut_by_max_retry_after_and_an_open_breakers_wait() {
    // An Ok 503 carrying a 2 s hint, cut to 500 ms.
    let ear = Ear::default();
    let hinted = Pipeline::builder()
        .retry(
            Backoff::constant(ms(10))
                .jitter(Jitter::None)
                .max_attempts(2)
                .build()
                .unwrap(),
        )
        .max_retry_after(ms(500))
        .classify(|r: Result<&u16, &()>| {
            if r == Ok(&503) {
                Verdict::RetryableFailure
            } else {
                Verdict::Success
            }
        })
        .retry_after_with(|r: Result<&u16, &()>| (r == Ok(&503)).then_some(secs(2)))
        .on_event(ear.listener())
        .build()
        .unwrap();
    let start = Instant::now();
    let mut calls = 0;
    let response = hinted
        .call(|| {
            calls += 1;
            let status = if calls == 1 { 503 } else { 200 };
            async move { Ok::<u16, ()>(status) }
        })
        .await;
    assert_eq!(response, Ok(200));
    assert_eq!(start.elapsed(), ms(500));
    let retries: Vec<_> = ear.take().iter().filter_map(|h| h.retry).collect();
    assert_eq!(retries, [(1, ms(500))]);

    // A breaker opened by attempt 1 refuses attempt 2 with its retry_after: the next sleep is
    // at least that, and the event says how long.
    let ear = Ear::default();
    let breaker = CircuitBreaker::builder()
        .name("b")
        .consecutive_failures(1)
        .break_duration(secs(1))
        .on_event(ear.listener())
        .build()
        .unwrap();
    let pipeline = Pipeline::builder()
        .retry(
            Backoff::constant(ms(10))
                .jitter(Jitter::None)
                .max_attempts(3)
                .build()
                .unwrap(),
        )
        .breaker(breaker)
        .on_event(ear.listener())
        .build()
        .unwrap();
    let mut calls = 0;
    let start = Instant::now();
    let result = pipeline
        .call(|| {
            calls += 1;
            let fail = calls == 1;
            async move { if fail { Err("down") } else { Ok(calls) } }
        })
        .await;
    assert_eq!(result, Ok(2), "the op ran for attempts 1 and 3");
    assert_eq!(start.elapsed(), secs(1));
    let heard = ear.take();
    let refusal = heard.iter().find_map(|h| h.refusal).unwrap();
    let Rejected::CircuitOpen { retry_after, .. } = refusal else {
        panic!("{refusal:?}")
    };
    let retries: Vec<_> = heard.iter().filter_map(|h| h.retry).collect();
    assert_eq!(retries, [(1, ms(10)), (2, retry_after)]);
    assert_eq!(retry_after, ms(990));
    assert_eq!(
        heard.iter().map(Heard::line).collect::<Vec<_>>(),
        [
            "breaker b: Failed",
            "breaker b: StateChanged(closed -> open)",
            "pipeline pipeline: RetryScheduled(1)",
            "breaker b: Rejected(circuit_open)",
            "pipeline pipeline: RetryScheduled(2)",
            "breaker b: StateChanged(open -> half_open)",
            "breaker b: Succeeded",
            "breaker b: StateChanged(half_open -> closed)",
            "pipeline pipeline: Succeeded",
        ]
    );
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_retry_that_cannot_start_before_the_deadline_is_never_announced() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let ear = Ear::default();
    let (slow_backoff, long_hint, tight) = metrics::with_local_recorder(&recorder, || {
        let slow_backoff = Pipeline::builder()
            .name("slow-backoff")
            .deadline(ms(100))
            .retry(
                Backoff::constant(secs(1))
                    .jitter(Jitter::None)
                    .max_attempts(3)
                    .build()
                    .unwrap(),
            )
            .on_event(ear.listener())
            .build()
            .unwrap();
        let long_hint = Pipeline::builder()
            .name("long-hint")
            .deadline(secs(1))
            .retry(
                Backoff::constant(ms(10))
                    .jitter(Jitter::None)
                    .max_attempts(3)
                    .build()
                    .unwrap(),
            )
            .retry_after_with(|r: Result<&(), &&str>| r.is_err().then_some(secs(5)))
            .on_event(ear.listener())
            .build()
            .unwrap();
        let tight = Pipeline::builder()
            .name("tight")
            .deadline(ms(100))
            .min_attempt_time(ms(95))
            .retry(
                Backoff::constant(ms(10))
                    .jitter(Jitter::None)
                    .max_attempts(3)
                    .build()
                    .unwrap(),
            )
            .on_event(ear.listener())
            .build()
            .unwrap();
        (slow_backoff, long_hint, tight)
    });
    let pipelines = [
        ("slow-backoff", slow_backoff.boxed()),
        ("long-hint", long_hint.boxed()),
        ("tight", tight.boxed()),
    ];
    for (name, pipeline) in &pipelines {
        let start = Instant::now();
        let failed: Result<(), _> = pipeline.call(|| async { Err("down") }).await;
        assert_eq!(
            failed,
            Err(Error::Inner("down")),
            "{name}: the last failure is returned"
        );
        assert_eq!(
            start.elapsed(),
            Duration::ZERO,
            "{name}: the call ends at once"
        );
    }
    assert_eq!(
        ear.lines(),
        [
            "pipeline slow-backoff: Failed",
            "pipeline long-hint: Failed",
            "pipeline tight: Failed"
        ],
        "no RetryScheduled for a retry that is not made"
    );
    let seen = Seen::now(&snapshotter);
    for name in ["slow-backoff", "long-hint", "tight"] {
        assert_eq!(
            seen.counter("tidewall_retries_total", &[("name", name)]),
            0,
            "{name}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// BudgetExhausted: "would have retried, but its retry budget was spent"
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn budget_exhausted_only_when_a_retry_would_otherwise_have_been_made() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let ear = Ear::default();
    let spent = || {
        RetryBudget::new(
            RetryBudgetPolicy::builder()
                .ratio(0.0)
                .min_per_second(0)
                .build()
                .unwrap(),
            Instant::now().into_std(),
        )
    };
    let (single, judged, retrying) = metrics::with_local_recorder(&recorder, || {
        // No retries at all: there is nothing the budget could refuse.
        let single = Pipeline::builder()
            .name("single")
            .retry(Backoff::constant(ms(1)).max_attempts(1).build().unwrap())
            .retry_budget(spent())
            .on_event(ear.listener())
            .build()
            .unwrap();
        // A failure not worth retrying: not retried, whatever the budget.
        let judged = Pipeline::builder()
            .name("judged")
            .retry(Backoff::constant(ms(1)).max_attempts(3).build().unwrap())
            .retry_budget(spent())
            .classify(|r: Result<&(), &&str>| {
                if r.is_ok() {
                    Verdict::Success
                } else {
                    Verdict::Failure
                }
            })
            .on_event(ear.listener())
            .build()
            .unwrap();
        let retrying = Pipeline::builder()
            .name("retrying")
            .retry(Backoff::constant(ms(1)).max_attempts(3).build().unwrap())
            .retry_budget(spent())
            .on_event(ear.listener())
            .build()
            .unwrap();
        (single, judged, retrying)
    });
    for pipeline in [single.boxed(), judged.boxed(), retrying.boxed()] {
        let failed: Result<(), _> = pipeline.call(|| async { Err("down") }).await;
        assert_eq!(failed, Err(Error::Inner("down")));
    }
    assert_eq!(
        ear.lines(),
        [
            "pipeline single: Failed",
            "pipeline judged: Failed",
            "pipeline retrying: BudgetExhausted",
            "pipeline retrying: Failed",
        ]
    );
    let seen = Seen::now(&snapshotter);
    let exhausted =
        |name: &str| seen.counter("tidewall_retry_budget_exhausted_total", &[("name", name)]);
    assert_eq!(
        (
            exhausted("single"),
            exhausted("judged"),
            exhausted("retrying")
        ),
        (0, 0, 1)
    );
}

// ---------------------------------------------------------------------------------------------
// TimedOut: "a pipeline call's last attempt timed out"
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn timed_out_is_reported_only_when_the_last_attempt_timed_out() {
    #[derive(Clone, Copy, Debug)]
    enum Step {
        Slow,
        Fail,
        Pass,
    }
    let ear = Ear::default();
    let pipeline = Pipeline::builder()
        .retry(
            Backoff::constant(ms(1))
                .jitter(Jitter::None)
                .max_attempts(2)
                .build()
                .unwrap(),
        )
        .attempt_timeout(ms(10))
        .on_event(ear.listener())
        .build()
        .unwrap();
    let cases = [
        ([Step::Slow, Step::Fail], "Failed"),
        ([Step::Fail, Step::Slow], "TimedOut"),
        ([Step::Slow, Step::Pass], "Succeeded"),
        ([Step::Slow, Step::Slow], "TimedOut"),
    ];
    for (steps, expected) in cases {
        let mut attempt = 0;
        let result = pipeline
            .call(|| {
                let step = steps[attempt];
                attempt += 1;
                async move {
                    match step {
                        Step::Slow => {
                            tokio::time::sleep(secs(1)).await;
                            Ok(())
                        }
                        Step::Fail => Err("down"),
                        Step::Pass => Ok(()),
                    }
                }
            })
            .await;
        let last = ear.take().last().unwrap().line();
        assert_eq!(
            last,
            format!("pipeline pipeline: {expected}"),
            "{steps:?} gave {result:?}"
        );
        assert_eq!(
            result == Err(Error::TimedOut),
            expected == "TimedOut",
            "{steps:?} gave {result:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Rejected: "a caller was refused, finally"; Waited: admitted after this long in the queue
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn refusal_events_carry_exactly_the_refusal_the_caller_got_and_only_final_ones() {
    let ear = Ear::default();
    let limiter = RateLimiter::builder(10, secs(1))
        .burst(1)
        .jitter(Duration::ZERO)
        .name("r")
        .on_event(ear.listener())
        .build()
        .unwrap();
    let bulkhead = Bulkhead::builder(1)
        .max_queue(2)
        .max_wait(ms(100))
        .name("h")
        .on_event(ear.listener())
        .build()
        .unwrap();

    limiter.check().unwrap();
    let got = limiter.check().unwrap_err();
    assert_eq!(
        limiter.until_ready().await,
        Ok(()),
        "a wait that ends admitted"
    );
    let late = limiter
        .until_ready_before(Deadline::after(&Tokio, ms(10)))
        .await
        .unwrap_err();

    let held = bulkhead.try_acquire_owned().unwrap();
    let releaser = async {
        tokio::time::sleep(ms(60)).await;
        drop(held);
    };
    let (admitted, ()) = tokio::join!(bulkhead.acquire(), releaser);
    let permit = admitted.unwrap();
    let start = Instant::now();
    let gave_up = bulkhead.acquire().await.unwrap_err();
    assert_eq!(start.elapsed(), ms(100));
    drop(permit);

    let heard = ear.take();
    assert_eq!(
        heard.iter().map(Heard::line).collect::<Vec<_>>(),
        [
            "rate r: Rejected(rate_limited)".to_owned(),
            "rate r: Rejected(deadline_exceeded)".to_owned(),
            "bulkhead h: Waited".to_owned(),
            format!("bulkhead h: Rejected({})", gave_up.kind()),
        ]
    );
    let refusals: Vec<_> = heard.iter().filter_map(|h| h.refusal).collect();
    assert_eq!(
        refusals,
        [got, late, gave_up],
        "the very refusals the callers got"
    );
    assert_eq!(heard[2].waited, Some(ms(60)));
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn waited_events_and_the_wait_histogram_agree_even_on_zero_length_waits() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let ear = Ear::default();
    let bulkhead = metrics::with_local_recorder(&recorder, || {
        Bulkhead::builder(1)
            .max_queue(4)
            .max_wait(None)
            .name("h")
            .on_event(ear.listener())
            .build()
            .unwrap()
    });
    // Queued, then handed a slot at the same virtual instant it queued.
    let held = bulkhead.try_acquire_owned().unwrap();
    let waiter = tokio::spawn({
        let bulkhead = bulkhead.clone();
        async move { bulkhead.acquire().await.map(drop) }
    });
    tokio::task::yield_now().await;
    assert_eq!(bulkhead.queued(), 1);
    drop(held);
    waiter.await.unwrap().unwrap();
    // Queued for 30 ms.
    let held = bulkhead.try_acquire_owned().unwrap();
    let releaser = async {
        tokio::time::sleep(ms(30)).await;
        drop(held);
    };
    let (admitted, ()) = tokio::join!(bulkhead.acquire(), releaser);
    drop(admitted.unwrap());

    let waits: Vec<f64> = ear
        .take()
        .iter()
        .filter_map(|h| h.waited)
        .map(|d| d.as_secs_f64())
        .collect();
    let samples = Seen::now(&snapshotter).samples(
        "tidewall_wait_duration_seconds",
        &[("policy", "bulkhead"), ("name", "h")],
    );
    assert_eq!(
        waits, samples,
        "one story from the listener and the histogram"
    );
    assert_eq!(waits.last(), Some(&ms(30).as_secs_f64()));
    assert_eq!(waits.len(), 2, "both callers queued and were admitted");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_wait_ended_by_a_reconfiguration_that_grows_the_bulkhead_is_a_wait() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let ear = Ear::default();
    let bulkhead = metrics::with_local_recorder(&recorder, || {
        Bulkhead::builder(1)
            .max_queue(2)
            .max_wait(None)
            .name("h")
            .on_event(ear.listener())
            .build()
            .unwrap()
    });
    let _held = bulkhead.try_acquire_owned().unwrap();
    let grower = async {
        tokio::time::sleep(ms(70)).await;
        bulkhead
            .reconfigure(Bulkhead::builder(2).max_queue(2).max_wait(None))
            .unwrap();
    };
    let (admitted, ()) = tokio::join!(bulkhead.acquire(), grower);
    drop(admitted.unwrap());
    let heard = ear.take();
    assert_eq!(
        heard.iter().filter_map(|h| h.waited).collect::<Vec<_>>(),
        [ms(70)],
        "{heard:?}"
    );
    assert_eq!(
        Seen::now(&snapshotter).samples("tidewall_wait_duration_seconds", &[("name", "h")]),
        vec![ms(70).as_secs_f64()]
    );
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_slot_handed_to_a_waiter_that_is_then_dropped_is_one_wait_of_the_next_not_two() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let ear = Ear::default();
    let (bulkhead, pipeline) = metrics::with_local_recorder(&recorder, || {
        let bulkhead = Bulkhead::builder(1)
            .max_queue(2)
            .max_wait(None)
            .name("h")
            .on_event(ear.listener())
            .build()
            .unwrap();
        let pipeline = Pipeline::builder()
            .name("p")
            .bulkhead(bulkhead.clone())
            .on_event(ear.listener())
            .build()
            .unwrap();
        (bulkhead, pipeline)
    });
    let held = bulkhead.try_acquire_owned().unwrap();
    let mut first = Box::pin(pipeline.call(|| async { Ok::<_, ()>(1) }));
    let mut second = Box::pin(pipeline.call(|| async { Ok::<_, ()>(2) }));
    assert!(futures_util::poll!(first.as_mut()).is_pending());
    assert!(futures_util::poll!(second.as_mut()).is_pending());
    assert_eq!(bulkhead.queued(), 2);
    tokio::time::sleep(ms(20)).await;
    drop(held); // handed to `first`, which is never polled again
    drop(first); // ...and passed on to `second`
    assert_eq!(second.await, Ok(2));
    assert_eq!(bulkhead.available(), 1);
    assert_eq!(bulkhead.queued(), 0);
    let heard: Vec<_> = ear.lines();
    let count = |line: &str| heard.iter().filter(|h| *h == line).count();
    assert_eq!(
        (
            count("pipeline p: Cancelled"),
            count("bulkhead h: Waited"),
            count("pipeline p: Succeeded")
        ),
        (1, 1, 1),
        "{heard:?}"
    );
    let seen = Seen::now(&snapshotter);
    assert_eq!(
        seen.samples("tidewall_wait_duration_seconds", &[("name", "h")]),
        vec![ms(20).as_secs_f64()]
    );
    assert_eq!(
        seen.counter("tidewall_rejections_total", &[("name", "h")]),
        0
    );
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_breakers_outcome_events_and_counters_agree_for_every_way_of_recording() {
    use tidewall::breaker::Outcome;
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let ear = Ear::default();
    let breaker = metrics::with_local_recorder(&recorder, || {
        CircuitBreaker::builder()
            .name("b")
            .consecutive_failures(100)
            .on_event(ear.listener())
            .build()
            .unwrap()
    });
    let judge = |r: Result<&u16, &u16>| match r {
        Ok(_) => Verdict::Success,
        Err(404) => Verdict::Ignored,
        Err(_) => Verdict::Failure,
    };
    let _ = breaker
        .call_classified(|| async { Err::<u16, u16>(404) }, judge)
        .await;
    let _ = breaker
        .call_classified(|| async { Err::<u16, u16>(500) }, judge)
        .await;
    let _ = breaker
        .call_classified(|| async { Ok::<u16, u16>(200) }, judge)
        .await;
    let _ = breaker.call(|| async { Err::<(), ()>(()) }).await;
    breaker.try_acquire().unwrap().record(Outcome::Ignored);
    breaker
        .try_acquire_owned()
        .unwrap()
        .record_hinted(Outcome::Failure, Some(secs(1)));
    drop(breaker.try_acquire().unwrap());
    let heard = ear.lines();
    let seen = Seen::now(&snapshotter);
    for (kind, outcome) in [
        ("Succeeded", "success"),
        ("Failed", "failure"),
        ("Ignored", "ignored"),
    ] {
        let events = heard.iter().filter(|h| h.ends_with(kind)).count() as u64;
        let counted = seen.counter(
            "tidewall_calls_total",
            &[("policy", "breaker"), ("name", "b"), ("outcome", outcome)],
        );
        assert_eq!(events, counted, "{outcome}: heard {heard:?}");
    }
    assert_eq!(
        heard.len(),
        6,
        "the dropped permit recorded nothing: {heard:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Cancellation: one `Cancelled`, nothing from the stages
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_dropped_call_ends_in_one_cancelled_event_and_its_stages_say_nothing() {
    let ear = Ear::default();
    let bulkhead = Bulkhead::builder(1)
        .max_queue(2)
        .max_wait(None)
        .name("h")
        .on_event(ear.listener())
        .build()
        .unwrap();
    let breaker = CircuitBreaker::builder()
        .name("b")
        .consecutive_failures(1)
        .break_duration(secs(1))
        .on_event(ear.listener())
        .build()
        .unwrap();
    let pipeline = Pipeline::builder()
        .name("p")
        .bulkhead(bulkhead.clone())
        .breaker(breaker.clone())
        .on_event(ear.listener())
        .build()
        .unwrap();
    let slow = || async {
        tokio::time::sleep(secs(10)).await;
        Ok::<_, &str>(())
    };
    // Dropped while queued in the bulkhead.
    let held = bulkhead.try_acquire_owned().unwrap();
    assert!(
        tokio::time::timeout(ms(5), pipeline.call(slow))
            .await
            .is_err()
    );
    drop(held);
    assert_eq!(ear.lines(), ["pipeline p: Cancelled"]);

    // Dropped while its probe runs: the probe records nothing and gives its slot back.
    breaker.try_acquire().unwrap().failure();
    tokio::time::sleep(secs(1)).await;
    ear.take();
    assert!(
        tokio::time::timeout(ms(5), pipeline.call(slow))
            .await
            .is_err()
    );
    assert_eq!(
        ear.lines(),
        [
            "breaker b: StateChanged(open -> half_open)",
            "pipeline p: Cancelled"
        ]
    );
    assert_eq!(pipeline.call(|| async { Ok::<_, &str>(()) }).await, Ok(()));
    assert_eq!(
        ear.lines(),
        [
            "breaker b: Succeeded",
            "breaker b: StateChanged(half_open -> closed)",
            "pipeline p: Succeeded"
        ],
        "the next caller got the probe slot back"
    );
    assert_eq!(bulkhead.available(), 1);
}

// ---------------------------------------------------------------------------------------------
// State changes: a chain, heard alike by `on_event` and `on_state_change`
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn state_changes_form_one_chain_heard_alike_by_both_listeners() {
    let ear = Ear::default();
    let changes = Arc::new(Mutex::new(Vec::new()));
    let breaker = CircuitBreaker::builder()
        .name("chain")
        .consecutive_failures(1)
        .break_duration(secs(1))
        .max_half_open_wait(Some(secs(2)))
        .on_event(ear.listener())
        .on_state_change({
            let changes = Arc::clone(&changes);
            move |change| {
                changes
                    .lock()
                    .unwrap()
                    .push((change.name.to_string(), change.from, change.to))
            }
        })
        .build()
        .unwrap();
    breaker.try_acquire().unwrap().failure(); // closed → open
    tokio::time::sleep(secs(1)).await;
    let hung = breaker.try_acquire().unwrap(); // open → half-open: a probe that hangs
    tokio::time::sleep(secs(2)).await;
    assert!(breaker.try_acquire().is_err(), "reopened: its probe hung");
    drop(hung);
    breaker.force_open();
    breaker.force_closed();
    breaker.reset();
    tokio::time::sleep(secs(3600)).await;
    breaker.try_acquire().unwrap().failure();

    let heard: Vec<_> = ear
        .take()
        .into_iter()
        .filter_map(|h| h.change.map(|c| (h.name, c.0, c.1)))
        .collect();
    let changes = changes.lock().unwrap().clone();
    assert_eq!(
        heard, changes,
        "on_event sees the state changes on_state_change sees"
    );
    assert!(heard.len() >= 6, "{heard:?}");
    assert_eq!(heard[0].1, State::Closed);
    for pair in heard.windows(2) {
        assert_eq!(
            pair[0].2, pair[1].1,
            "each change starts where the last ended: {heard:?}"
        );
    }
    assert!(
        heard
            .iter()
            .all(|(name, from, to)| name == "chain" && from != to),
        "{heard:?}"
    );
    assert_eq!(heard.last().unwrap().2, State::Open);
}

// ---------------------------------------------------------------------------------------------
// Threads: "on the caller's thread, in the call"
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_waiter_hears_its_own_wait_on_its_own_thread_not_the_releasers() {
    let ear = Ear::default();
    let bulkhead = Bulkhead::builder(1)
        .max_queue(1)
        .max_wait(None)
        .name("h")
        .on_event(ear.listener())
        .build()
        .unwrap();
    let held = bulkhead.try_acquire_owned().unwrap();
    let mut waiting = Box::pin(bulkhead.acquire());
    assert!(futures_util::poll!(waiting.as_mut()).is_pending());
    assert_eq!(bulkhead.queued(), 1);
    // Another thread frees the slot (it is handed straight to the waiter).
    std::thread::spawn(move || drop(held)).join().unwrap();
    let permit = waiting.await.unwrap();
    drop(permit);
    let heard = ear.take();
    assert_eq!(
        heard.iter().map(Heard::line).collect::<Vec<_>>(),
        ["bulkhead h: Waited"]
    );
    assert_eq!(
        heard[0].thread,
        std::thread::current().id(),
        "the caller's thread, in the call"
    );
}

// ---------------------------------------------------------------------------------------------
// Keyed: one listener for every key
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn the_keys_of_keyed_tables_share_their_listener_under_the_tables_name() {
    let ear = Ear::default();
    let hosts = CircuitBreaker::builder()
        .name("hosts")
        .consecutive_failures(1)
        .break_duration(secs(60))
        .on_event(ear.listener())
        .keyed::<String>()
        .key_label(|host: &String| format!("host-{host}"))
        .build()
        .unwrap();
    let tenants = Bulkhead::builder(1)
        .reject_when_full()
        .name("tenants")
        .on_event(ear.listener())
        .keyed()
        .build::<u8>()
        .unwrap();
    for host in ["a", "b"] {
        hosts.try_acquire(&host.to_owned()).unwrap().failure();
        assert!(hosts.try_acquire(&host.to_owned()).is_err());
    }
    let _held: Vec<_> = (1..=2)
        .map(|key| tenants.try_acquire(&key).unwrap())
        .collect();
    assert!(tenants.try_acquire(&2).is_err());
    assert_eq!(
        ear.lines(),
        [
            "breaker hosts: Failed",
            "breaker hosts: StateChanged(closed -> open)",
            "breaker hosts: Rejected(circuit_open)",
            "breaker hosts: Failed",
            "breaker hosts: StateChanged(closed -> open)",
            "breaker hosts: Rejected(circuit_open)",
            "bulkhead tenants: Rejected(bulkhead_full)",
        ]
    );
}

/// A full key table refuses the caller ("each refusal with its reason"); the metrics count it
/// (under the table's own `policy` label), so the listener, which shares the table, hears it,
/// with `Event::policy` "as the metrics' `policy` label".
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_full_key_table_is_a_refusal_the_tables_listener_hears() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let ear = Ear::default();
    let (hosts, tenants) = metrics::with_local_recorder(&recorder, || {
        let hosts = CircuitBreaker::builder()
            .name("hosts")
            .consecutive_failures(1)
            .break_duration(secs(60))
            .on_event(ear.listener())
            .keyed::<String>()
            .max_keys(2)
            .build()
            .unwrap();
        let tenants = Bulkhead::builder(1)
            .reject_when_full()
            .name("tenants")
            .on_event(ear.listener())
            .keyed()
            .max_keys(2)
            .build::<u8>()
            .unwrap();
        (hosts, tenants)
    });
    for host in ["a", "b"] {
        hosts.try_acquire(&host.to_owned()).unwrap().failure();
    }
    let _held: Vec<_> = (1..=2)
        .map(|key| tenants.try_acquire(&key).unwrap())
        .collect();
    ear.take();
    let refusals = [
        (
            "hosts",
            hosts.try_acquire(&"c".to_owned()).map(drop).unwrap_err(),
        ),
        ("tenants", tenants.try_acquire(&3).map(drop).unwrap_err()),
    ];
    let heard = ear.take();
    let seen = Seen::now(&snapshotter);
    let mut problems = Vec::new();
    for (name, refusal) in refusals.iter() {
        assert!(
            matches!(refusal, Rejected::KeysFull { .. }),
            "{name}: {refusal:?}"
        );
        let counted_as: Vec<String> = seen
            .series(
                "tidewall_rejections_total",
                &[("name", name), ("reason", refusal.kind())],
            )
            .filter(|(_, _, v)| matches!(v, DebugValue::Counter(1)))
            .map(|(_, labels, _)| labels["policy"].clone())
            .collect();
        assert_eq!(counted_as.len(), 1, "{name}: counted once: {counted_as:?}");
        let matching: Vec<_> = heard
            .iter()
            .filter(|h| h.name == *name && h.refusal.as_ref().is_some_and(|r| r == refusal))
            .collect();
        match matching.as_slice() {
            [one] if one.policy == counted_as[0] => {}
            [one] => problems.push(format!(
                "{name}: heard as policy {:?}, counted as {:?}",
                one.policy, counted_as[0]
            )),
            other => problems.push(format!(
                "{name}: {refusal:?} counted as {:?} but heard {} times",
                counted_as[0],
                other.len()
            )),
        }
    }
    assert!(
        problems.is_empty(),
        "{problems:#?}\nheard: {:?}",
        heard.iter().map(Heard::line).collect::<Vec<_>>()
    );
}

// ---------------------------------------------------------------------------------------------
// Deadlines: a call with no time left, and a deadline that ends an attempt
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn deadlines_end_calls_with_one_agreeing_event_and_metric() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let ear = Ear::default();
    let pipeline = metrics::with_local_recorder(&recorder, || {
        Pipeline::builder()
            .name("d")
            .deadline(ms(50))
            .retry(
                Backoff::constant(ms(1))
                    .jitter(Jitter::None)
                    .max_attempts(3)
                    .build()
                    .unwrap(),
            )
            .on_event(ear.listener())
            .build()
            .unwrap()
    });
    // No time left at all: "starts an attempt only if more than this much time would be left
    // for it before the deadline, the first attempt included".
    let mut ran = 0;
    let none_left = pipeline
        .call_before(Deadline::after(&Tokio, Duration::ZERO), || {
            ran += 1;
            async { Ok::<_, &str>(()) }
        })
        .await;
    assert_eq!(ran, 0, "no attempt starts with no time left: {none_left:?}");
    assert_eq!(none_left, Err(Error::Rejected(Rejected::DeadlineExceeded)));
    assert_eq!(ear.lines(), ["pipeline d: Rejected(deadline_exceeded)"]);
    let seen = Seen::now(&snapshotter);
    assert_eq!(
        seen.counter(
            "tidewall_calls_total",
            &[
                ("policy", "pipeline"),
                ("name", "d"),
                ("outcome", "rejected")
            ]
        ),
        1
    );
    assert_eq!(
        seen.samples("tidewall_call_duration_seconds", &[("name", "d")]),
        vec![0.0]
    );
}

/// No stage refuses this call: its one attempt runs and the call's deadline cuts it. The
/// docs of `Pipeline::call` give `Rejected::DeadlineExceeded` when the deadline ends the call,
/// an attempt still running included (`TimedOut` is for an attempt its own
/// `attempt_timeout` cut off); the listener and the counters say the same.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_deadline_that_cuts_a_running_attempt_is_the_deadline_refusing() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let ear = Ear::default();
    let pipeline = metrics::with_local_recorder(&recorder, || {
        Pipeline::builder()
            .name("d")
            .deadline(ms(50))
            .retry(
                Backoff::constant(ms(1))
                    .jitter(Jitter::None)
                    .max_attempts(3)
                    .build()
                    .unwrap(),
            )
            .on_event(ear.listener())
            .build()
            .unwrap()
    });
    let mut ran = 0;
    let start = Instant::now();
    let hung: Result<(), Error<&str>> = pipeline
        .call(|| {
            ran += 1;
            async {
                tokio::time::sleep(secs(10)).await;
                Ok(())
            }
        })
        .await;
    assert_eq!(
        (ran, start.elapsed()),
        (1, ms(50)),
        "one attempt, cut at the deadline"
    );
    let heard = ear.lines();
    let seen = Seen::now(&snapshotter);
    let outcome = |o: &str| {
        seen.counter(
            "tidewall_calls_total",
            &[("policy", "pipeline"), ("name", "d"), ("outcome", o)],
        )
    };
    assert_eq!(
        (hung, heard, outcome("timed_out"), outcome("rejected")),
        (
            Err(Error::Rejected(Rejected::DeadlineExceeded)),
            vec!["pipeline d: Rejected(deadline_exceeded)".to_owned()],
            0,
            1
        )
    );
}

// ---------------------------------------------------------------------------------------------
// Reconfiguration keeps the listener and the name
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn reconfigured_policies_keep_their_listener_and_name() {
    let ear = Ear::default();
    let breaker = CircuitBreaker::builder()
        .name("b")
        .consecutive_failures(5)
        .on_event(ear.listener())
        .build()
        .unwrap();
    let bulkhead = Bulkhead::builder(2)
        .reject_when_full()
        .name("h")
        .on_event(ear.listener())
        .build()
        .unwrap();
    let limiter = RateLimiter::builder(10, secs(1))
        .name("r")
        .on_event(ear.listener())
        .build()
        .unwrap();
    breaker
        .reconfigure(
            CircuitBreaker::builder()
                .name("ignored")
                .consecutive_failures(1),
        )
        .unwrap();
    bulkhead
        .reconfigure(Bulkhead::builder(1).reject_when_full().name("ignored"))
        .unwrap();
    limiter
        .reconfigure(RateLimiter::builder(1, secs(60)).name("ignored"))
        .unwrap();
    assert_eq!(
        (breaker.name(), bulkhead.name(), limiter.name()),
        ("b", "h", "r")
    );
    breaker.try_acquire().unwrap().failure();
    let _held = bulkhead.try_acquire().unwrap();
    assert!(bulkhead.try_acquire().is_err());
    limiter.check().unwrap();
    assert!(limiter.check().is_err());
    assert_eq!(
        ear.lines(),
        [
            "breaker b: Failed",
            "breaker b: StateChanged(closed -> open)",
            "bulkhead h: Rejected(bulkhead_full)",
            "rate r: Rejected(rate_limited)",
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// Seeded random stress: listeners and metrics tell one story
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Step {
    Pass,
    Fail,
    /// Longer than the attempt timeout.
    Hang,
    /// Passes after this many milliseconds (within the attempt timeout).
    Late(u64),
}

#[derive(Debug, Default)]
struct Tally {
    calls: u64,
    ok: u64,
    failed: u64,
    timed_out: u64,
    rejected: u64,
    cancelled: u64,
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn seeded_random_cancellation_keeps_listeners_metrics_and_capacity_in_agreement() {
    // What the seeds exercised, all together: every path must have been taken somewhere.
    let mut coverage: BTreeMap<String, u64> = BTreeMap::new();
    for seed in (1..=8).map(|i| 0x5EED_0000_u64 + i) {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let _guard = metrics::set_default_local_recorder(&recorder);
        let ear = Ear::default();
        let limiter = RateLimiter::builder(50, secs(1))
            .burst(5)
            .seed(seed)
            .name("r")
            .on_event(ear.listener())
            .build()
            .unwrap();
        let bulkhead = Bulkhead::builder(2)
            .max_queue(3)
            .max_wait(ms(200))
            .name("h")
            .on_event(ear.listener())
            .build()
            .unwrap();
        let breaker = CircuitBreaker::builder()
            .name("b")
            .consecutive_failures(4)
            .break_duration(ms(300))
            .on_event(ear.listener())
            .build()
            .unwrap();
        let budget = RetryBudget::new(
            RetryBudgetPolicy::builder()
                .ratio(0.5)
                .min_per_second(5)
                .window(secs(1))
                .build()
                .unwrap(),
            Instant::now().into_std(),
        );
        let pipeline = Pipeline::builder()
            .name("p")
            .seed(seed)
            .rate_limit(limiter.clone())
            .bulkhead(bulkhead.clone())
            .retry(Backoff::exponential(ms(5)).max_attempts(4).build().unwrap())
            .retry_budget(budget)
            .breaker(breaker.clone())
            .attempt_timeout(ms(50))
            .on_event(ear.listener())
            .build()
            .unwrap();

        let mut rng = Rng::new(seed);
        let mut tally = Tally::default();
        for _wave in 0..25 {
            let mut calls = Vec::new();
            for _ in 0..8 {
                let script: Vec<Step> = (0..4)
                    .map(|_| match rng.below(10) {
                        0..=3 => Step::Pass,
                        4..=6 => Step::Fail,
                        7 => Step::Hang,
                        _ => Step::Late(rng.below(40)),
                    })
                    .collect();
                let drop_after = (rng.below(3) == 0).then(|| ms(rng.below(300)));
                let pipeline = &pipeline;
                calls.push(async move {
                    let mut attempt = 0;
                    let call = pipeline.call(move || {
                        let step = script[attempt.min(script.len() - 1)];
                        attempt += 1;
                        async move {
                            match step {
                                Step::Pass => Ok::<u32, &str>(1),
                                Step::Fail => Err("down"),
                                Step::Hang => {
                                    tokio::time::sleep(secs(5)).await;
                                    Ok(2)
                                }
                                Step::Late(n) => {
                                    tokio::time::sleep(ms(n)).await;
                                    Ok(3)
                                }
                            }
                        }
                    });
                    match drop_after {
                        Some(limit) => tokio::time::timeout(limit, call).await.ok(),
                        None => Some(call.await),
                    }
                });
            }
            for outcome in futures_util::future::join_all(calls).await {
                tally.calls += 1;
                match outcome {
                    None => tally.cancelled += 1,
                    Some(Ok(_)) => tally.ok += 1,
                    Some(Err(Error::Inner(_))) => tally.failed += 1,
                    Some(Err(Error::TimedOut)) => tally.timed_out += 1,
                    Some(Err(Error::Rejected(_))) => tally.rejected += 1,
                    Some(Err(other)) => panic!("unexpected {other:?}"),
                }
            }
            match rng.below(10) {
                0 => tokio::time::sleep(secs(3600 * (1 + rng.below(24)))).await,
                _ => tokio::time::sleep(ms(rng.below(400))).await,
            }
        }

        let heard = ear.take();
        let seen = Seen::now(&snapshotter);
        let count = |policy: &str, kind: &str| -> u64 {
            heard
                .iter()
                .filter(|h| h.policy == policy && h.kind == kind)
                .count()
                .try_into()
                .unwrap()
        };
        let ctx = format!("seed {seed:#x}: {tally:?}");
        assert!(
            tally.cancelled > 0
                && tally.ok > 0
                && tally.failed + tally.timed_out + tally.rejected > 0,
            "{ctx}"
        );

        // The pipeline: one ending per call, the same in events, metrics and results.
        let ends = [
            ("Succeeded", "success", tally.ok),
            ("Failed", "failure", tally.failed),
            ("TimedOut", "timed_out", tally.timed_out),
            ("Cancelled", "cancelled", tally.cancelled),
        ];
        for (kind, outcome, expected) in ends {
            assert_eq!(count("pipeline", kind), expected, "{ctx}: {kind} events");
            assert_eq!(
                seen.counter(
                    "tidewall_calls_total",
                    &[("policy", "pipeline"), ("name", "p"), ("outcome", outcome)]
                ),
                expected,
                "{ctx}: {outcome}"
            );
        }
        let rejected_events = heard
            .iter()
            .filter(|h| h.policy == "pipeline" && h.refusal.is_some())
            .count();
        assert_eq!(
            u64::try_from(rejected_events).unwrap(),
            tally.rejected,
            "{ctx}: pipeline Rejected events"
        );
        assert_eq!(
            seen.counter(
                "tidewall_calls_total",
                &[
                    ("policy", "pipeline"),
                    ("name", "p"),
                    ("outcome", "rejected")
                ]
            ),
            tally.rejected
        );
        assert_eq!(
            seen.counter(
                "tidewall_calls_total",
                &[("policy", "pipeline"), ("outcome", "ignored")]
            ),
            0
        );
        assert_eq!(
            seen.samples(
                "tidewall_call_duration_seconds",
                &[("policy", "pipeline"), ("name", "p")]
            )
            .len() as u64,
            tally.calls - tally.cancelled,
            "{ctx}: a duration for every call that ended"
        );
        let retries = heard.iter().filter(|h| h.retry.is_some()).count() as u64;
        assert_eq!(
            seen.counter("tidewall_retries_total", &[("name", "p")]),
            retries,
            "{ctx}: retries"
        );
        assert_eq!(
            seen.counter("tidewall_retry_budget_exhausted_total", &[("name", "p")]),
            count("pipeline", "BudgetExhausted"),
            "{ctx}"
        );

        // The breaker's outcomes and transitions.
        for (kind, outcome) in [
            ("Succeeded", "success"),
            ("Failed", "failure"),
            ("Ignored", "ignored"),
        ] {
            assert_eq!(
                seen.counter(
                    "tidewall_calls_total",
                    &[("policy", "breaker"), ("name", "b"), ("outcome", outcome)]
                ),
                count("breaker", kind),
                "{ctx}: breaker {outcome}"
            );
        }
        for to in [State::Open, State::HalfOpen, State::Closed] {
            let heard_to = heard
                .iter()
                .filter(|h| h.change.is_some_and(|c| c.1 == to))
                .count() as u64;
            assert_eq!(
                seen.counter(
                    "tidewall_breaker_transitions_total",
                    &[("name", "b"), ("to", &to.to_string())]
                ),
                heard_to,
                "{ctx}: transitions to {to}"
            );
        }

        // Refusals, policy by policy and reason by reason.
        let mut heard_refusals: BTreeMap<(String, String), u64> = BTreeMap::new();
        for h in heard.iter().filter(|h| h.policy != "pipeline") {
            if let Some(why) = &h.refusal {
                *heard_refusals
                    .entry((h.policy.to_owned(), why.kind().to_owned()))
                    .or_default() += 1;
            }
        }
        let mut counted: BTreeMap<(String, String), u64> = BTreeMap::new();
        for (_, labels, value) in seen.series("tidewall_rejections_total", &[]) {
            if labels["policy"] != "pipeline"
                && let DebugValue::Counter(n) = value
                && *n > 0
            {
                *counted
                    .entry((labels["policy"].clone(), labels["reason"].clone()))
                    .or_default() += n;
            }
        }
        assert_eq!(heard_refusals, counted, "{ctx}: refusals heard and counted");

        // Waits: each Waited event is a histogram sample.
        let mut waits: Vec<f64> = heard
            .iter()
            .filter_map(|h| h.waited)
            .map(|d| d.as_secs_f64())
            .collect();
        let mut samples = seen.samples(
            "tidewall_wait_duration_seconds",
            &[("policy", "bulkhead"), ("name", "h")],
        );
        waits.sort_by(f64::total_cmp);
        samples.sort_by(f64::total_cmp);
        assert_eq!(waits, samples, "{ctx}: waits");

        // Nothing leaked.
        assert_eq!(
            (bulkhead.available(), bulkhead.queued()),
            (bulkhead.capacity(), 0),
            "{ctx}"
        );
        assert!(limiter.available() <= 5);

        for h in &heard {
            let kind = h.kind.split('(').next().unwrap_or_default();
            *coverage.entry(format!("{} {kind}", h.policy)).or_default() += 1;
            if let Some(why) = &h.refusal {
                *coverage
                    .entry(format!("{} refused {}", h.policy, why.kind()))
                    .or_default() += 1;
            }
        }
    }
    for path in [
        "pipeline Succeeded",
        "pipeline Failed",
        "pipeline TimedOut",
        "pipeline Cancelled",
        "pipeline RetryScheduled",
        "pipeline BudgetExhausted",
        "breaker StateChanged",
        "breaker refused circuit_open",
        "bulkhead Waited",
        "bulkhead refused bulkhead_full",
    ] {
        assert!(
            coverage.get(path).copied().unwrap_or(0) > 0,
            "never exercised: {path}: {coverage:#?}"
        );
    }
}
