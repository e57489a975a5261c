//! Hostile black-box tests of one sentence of `PipelineLayer`'s rustdoc (the "Results"
//! bullet), written from the public docs only: a refusal from a policy below the layer (an
//! inner error whose `PolicyError::rejection` is `Some`, a deadline below included) "is
//! treated as the pipeline's own breaker's refusal: not shown to the classifier, recorded as
//! `Ignored` by its breaker (nothing in its window), teaching its admission stages (bulkhead,
//! adaptive limiter) nothing (a call it ends teaches them what its last attempt that was not
//! refused taught, if one was), retried after the refusal's `retry_after` ..., and counted
//! `outcome="rejected"` when it ends the call"; a timeout from below stays an error like any
//! other.
//!
//! Attacked as users compose it: an open `BreakerLayer` and a rate limiter (`AdmitLayer`)
//! below, with and without time left for their hints, `max_retry_after` cutting them; user
//! classifiers that would stop retries (`ErrorsWhere`, closures, every `Verdict`); error types
//! of one's own with and without `rejection`, and a refusal deep in a `BoxError`'s source
//! chain; the pipeline's breaker half-open under refusals (its probe given back), its adaptive
//! limiter under storms of them; a seeded model mixing refusals, failures and successes;
//! nested pipelines (bulkhead, breaker, deadline below); a `LivePipeline` across a reload;
//! `RetryLayer` and `HedgeLayer` below; metrics (`tidewall_calls_total{policy="pipeline"}`)
//! and events with a thread-local `DebuggingRecorder`; seeded random cancellation with every
//! slot, permit and probe back; idle gaps of days. Virtual time only, on every runtime.

#![cfg(all(feature = "tower", feature = "toml", feature = "metrics"))]

mod common;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use common::rng::Rng;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use tidewall::adaptive::{AdaptiveLimiter, Aimd};
use tidewall::breaker::{CircuitBreaker, State};
use tidewall::bulkhead::Bulkhead;
use tidewall::classify::{ErrorsWhere, Verdict};
use tidewall::config::{Config, Registry};
use tidewall::hedge::Hedge;
use tidewall::pipeline::Pipeline;
use tidewall::rate::RateLimiter;
use tidewall::rt::{Clock, Runtime};
use tidewall::telemetry::{Event, EventKind};
use tidewall::testing::Clocked;
use tidewall::tower::{
    AdmitLayer, AdmitMode, BreakerLayer, HedgeLayer, PipelineLayer, PolicyError, RetryLayer,
    TimeoutLayer,
};
use tidewall::{Backoff, Error, Jitter, Rejected};
use tower::{BoxError, ServiceBuilder, ServiceExt as _};
use tower_layer::Layer;
use tower_service::Service;

const MS: Duration = Duration::from_millis(1);
const SEC: Duration = Duration::from_secs(1);
const DAY: Duration = Duration::from_secs(86_400);

type E = Error<&'static str>;
type BoxFut<T> = Pin<Box<dyn Future<Output = T> + Send>>;

fn constant(delay: Duration, attempts: u32) -> Backoff {
    Backoff::constant(delay)
        .jitter(Jitter::None)
        .max_attempts(attempts)
        .build()
        .unwrap()
}

fn config(text: &str) -> Config {
    Config::from_toml(text).expect("a valid configuration")
}

/// A breaker that opens only on `n` real failures in a row (no failure rate), for a `DAY`.
fn strict_breaker<R: Clock>(rt: &R, n: u32) -> CircuitBreaker<R> {
    CircuitBreaker::builder()
        .runtime(rt.clone())
        .no_failure_rate()
        .consecutive_failures(n)
        .break_duration(DAY)
        .build()
        .unwrap()
}

fn full_bulkhead<R: Clock>(rt: &R) -> Bulkhead<R> {
    Bulkhead::builder(1)
        .runtime(rt.clone())
        .max_queue(0)
        .build()
        .unwrap()
}

fn aimd<R: Clock>(rt: &R, initial: u32, max: u32) -> AdaptiveLimiter<Aimd, R> {
    let aimd = Aimd::builder()
        .min_limit(1)
        .initial_limit(initial)
        .max_limit(max)
        .build()
        .unwrap();
    AdaptiveLimiter::builder(aimd)
        .runtime(rt.clone())
        .max_queue(1_000)
        .build()
        .unwrap()
}

// --- a scripted service: the `n`th call (from 1) waits and answers as told -------------------

type Answer<Er> = Arc<dyn Fn(u32) -> (u64, Result<u32, Er>) + Send + Sync>;

struct Script<R, Er> {
    rt: R,
    origin: Instant,
    calls: Arc<AtomicU32>,
    live: Arc<AtomicUsize>,
    at: Arc<Mutex<Vec<Duration>>>,
    answer: Answer<Er>,
}

impl<R: Clock, Er> Script<R, Er> {
    fn new(rt: &R, answer: impl Fn(u32) -> (u64, Result<u32, Er>) + Send + Sync + 'static) -> Self {
        Self {
            rt: rt.clone(),
            origin: rt.now(),
            calls: Arc::default(),
            live: Arc::default(),
            at: Arc::default(),
            answer: Arc::new(answer),
        }
    }
    fn watch(&self) -> Watch {
        Watch {
            calls: Arc::clone(&self.calls),
            live: Arc::clone(&self.live),
            at: Arc::clone(&self.at),
        }
    }
}

/// What a script's clones did, kept after the script moved into a stack.
#[derive(Clone)]
struct Watch {
    calls: Arc<AtomicU32>,
    live: Arc<AtomicUsize>,
    at: Arc<Mutex<Vec<Duration>>>,
}

impl Watch {
    fn calls(&self) -> u32 {
        self.calls.load(SeqCst)
    }
    fn live(&self) -> usize {
        self.live.load(SeqCst)
    }
    fn at(&self) -> Vec<Duration> {
        self.at.lock().unwrap().clone()
    }
}

impl<R: Clock, Er> Clone for Script<R, Er> {
    fn clone(&self) -> Self {
        Self {
            rt: self.rt.clone(),
            origin: self.origin,
            calls: Arc::clone(&self.calls),
            live: Arc::clone(&self.live),
            at: Arc::clone(&self.at),
            answer: Arc::clone(&self.answer),
        }
    }
}

struct Live(Arc<AtomicUsize>);

impl Drop for Live {
    fn drop(&mut self) {
        self.0.fetch_sub(1, SeqCst);
    }
}

impl<R: Clock, Er: Send + 'static> Service<u32> for Script<R, Er> {
    type Response = u32;
    type Error = Er;
    type Future = BoxFut<Result<u32, Er>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Er>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: u32) -> Self::Future {
        let n = self.calls.fetch_add(1, SeqCst) + 1;
        self.at.lock().unwrap().push(self.rt.now() - self.origin);
        self.live.fetch_add(1, SeqCst);
        let live = Live(Arc::clone(&self.live));
        let (took, answer) = (self.answer)(n);
        let wait = (took > 0).then(|| self.rt.sleep(MS * u32::try_from(took).unwrap()));
        Box::pin(async move {
            let _live = live;
            if let Some(wait) = wait {
                wait.await;
            }
            answer
        })
    }
}

fn ok_after(ms: u64) -> impl Fn(u32) -> (u64, Result<u32, E>) + Send + Sync + 'static {
    move |n| (ms, Ok(n))
}

// --- what a pipeline's listener heard --------------------------------------------------------

#[derive(Clone, Default)]
struct Ear(Arc<Mutex<Vec<String>>>, Arc<Mutex<Vec<Duration>>>);

impl Ear {
    fn listener(&self) -> impl Fn(&Event<'_>) + Send + Sync + 'static {
        let (log, delays) = (Arc::clone(&self.0), Arc::clone(&self.1));
        move |event: &Event<'_>| {
            if let EventKind::RetryScheduled { delay, .. } = event.kind {
                delays.lock().unwrap().push(delay);
            }
            log.lock()
                .unwrap()
                .push(format!("{}:{:?}", event.policy, event.kind));
        }
    }
    fn delays(&self) -> Vec<Duration> {
        self.1.lock().unwrap().clone()
    }
    fn heard(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
    /// The events that are not retries scheduled.
    fn ends(&self) -> Vec<String> {
        self.heard()
            .into_iter()
            .filter(|e| !e.contains("RetryScheduled"))
            .collect()
    }
    fn clear(&self) {
        self.0.lock().unwrap().clear();
        self.1.lock().unwrap().clear();
    }
}

fn is_circuit_open<T: std::fmt::Debug>(answer: &Result<T, E>) -> bool {
    matches!(answer, Err(Error::Rejected(Rejected::CircuitOpen { .. })))
}

// =============================================================================================
// Retry timing: a refusal with a hint is retried no sooner than the hint, within the deadline
// =============================================================================================

// An open `BreakerLayer` below (2 s break after one failure): the pipeline's retry after its
// refusal waits the refusal's `retry_after`, so the service is called again no sooner than the
// break's end; the pipeline's own breaker (two failures in a row open it) counts the one real
// failure only.
async fn an_open_breaker_below_is_waited_out<R: Runtime>(rt: Clocked<R>) {
    let below = CircuitBreaker::builder()
        .runtime(rt.clone())
        .consecutive_failures(1)
        .break_duration(2 * SEC)
        .build()
        .unwrap();
    let own = strict_breaker(&rt, 2);
    let ear = Ear::default();
    let pipeline = Pipeline::builder()
        .runtime(rt.clone())
        .deadline(10 * SEC)
        .on_event(ear.listener())
        .retry(constant(MS, 5))
        .breaker(own.clone())
        .build()
        .unwrap();
    let script = Script::new(&rt, |n| {
        (
            0,
            if n == 1 {
                Err(Error::Inner("down"))
            } else {
                Ok(n)
            },
        )
    });
    let watch = script.watch();
    let service = ServiceBuilder::new()
        .layer(PipelineLayer::new(pipeline))
        .layer(BreakerLayer::new(below.clone()))
        .service(script);
    let start = rt.now();
    assert_eq!(service.oneshot(1).await, Ok(2));
    let took = rt.now() - start;
    assert_eq!(watch.calls(), 2, "the refused attempt called nothing");
    let at = watch.at();
    assert!(
        at[1] >= 2 * SEC,
        "called again before the break ended: {at:?}"
    );
    assert!(took >= 2 * SEC && took <= 2 * SEC + 5 * MS, "{took:?}");
    assert_eq!(
        ear.delays().len(),
        2,
        "one retry per refusal: {:?}",
        ear.delays()
    );
    assert_eq!(ear.delays()[0], MS, "the failure's own backoff");
    assert!(
        ear.delays()[1] >= 2 * SEC - 2 * MS,
        "the refusal's hint: {:?}",
        ear.delays()
    );
    assert_eq!(own.state(), State::Closed);
    let counts = own.counts();
    assert_eq!(
        (counts.calls, counts.failures),
        (2, 1),
        "the failure and the success only"
    );
    assert_eq!(below.state(), State::Closed, "the probe below closed it");
    assert_eq!(watch.live(), 0);
}

#[test]
fn an_open_breaker_below_is_retried_no_sooner_than_its_hint() {
    on_every_runtime!(an_open_breaker_below_is_waited_out);
}

// `max_retry_after` cuts the sleep ("The cut only shortens the sleep"): retries come every
// 500 ms against a 2 s break below, each refused and nothing in the window of a pipeline breaker
// that two failures in a row would open; the service is still called only once the break ends.
async fn max_retry_after_cuts_hints_from_below<R: Runtime>(rt: Clocked<R>) {
    let below = CircuitBreaker::builder()
        .runtime(rt.clone())
        .consecutive_failures(1)
        .break_duration(2 * SEC)
        .build()
        .unwrap();
    let own = strict_breaker(&rt, 2);
    let ear = Ear::default();
    let pipeline = Pipeline::builder()
        .runtime(rt.clone())
        .deadline(10 * SEC)
        .on_event(ear.listener())
        .retry(constant(MS, 20))
        .max_retry_after(500 * MS)
        .breaker(own.clone())
        .build()
        .unwrap();
    let script = Script::new(&rt, |n| {
        (
            0,
            if n == 1 {
                Err(Error::Inner("down"))
            } else {
                Ok(n)
            },
        )
    });
    let watch = script.watch();
    let service = ServiceBuilder::new()
        .layer(PipelineLayer::new(pipeline))
        .layer(BreakerLayer::new(below))
        .service(script);
    let start = rt.now();
    assert_eq!(service.oneshot(1).await, Ok(2));
    let took = rt.now() - start;
    assert_eq!(watch.calls(), 2);
    assert!(watch.at()[1] >= 2 * SEC, "{:?}", watch.at());
    assert!(took <= 2 * SEC + 501 * MS, "{took:?}");
    let delays = ear.delays();
    assert!(delays.len() >= 5, "refused four times at least: {delays:?}");
    assert!(
        delays.iter().all(|d| *d <= 500 * MS + MS),
        "every sleep cut to 500 ms: {delays:?}"
    );
    assert_eq!(own.state(), State::Closed, "refusals are not failures");
    assert_eq!(own.counts().failures, 1);
}

#[test]
fn max_retry_after_cuts_a_hint_from_below_and_the_refusals_stay_unrecorded() {
    on_every_runtime!(max_retry_after_cuts_hints_from_below);
}

// With no time left for the hint ("a retry whose whole hint ends past the deadline is not
// made (the call ends at once)"): the call ends with the refusal from below as soon as it comes,
// not at the deadline, and the pipeline reports it as a refusal.
async fn no_time_left_for_a_hint_from_below<R: Runtime>(rt: Clocked<R>) {
    let below = CircuitBreaker::builder()
        .runtime(rt.clone())
        .consecutive_failures(1)
        .break_duration(2 * SEC)
        .build()
        .unwrap();
    let own = strict_breaker(&rt, 2);
    let ear = Ear::default();
    let pipeline = Pipeline::builder()
        .runtime(rt.clone())
        .deadline(SEC)
        .on_event(ear.listener())
        .retry(constant(MS, 5))
        .breaker(own.clone())
        .build()
        .unwrap();
    let script = Script::new(&rt, |_| (0, Err(Error::Inner("down"))));
    let watch = script.watch();
    let service = ServiceBuilder::new()
        .layer(PipelineLayer::new(pipeline))
        .layer(BreakerLayer::new(below))
        .service(script);
    let start = rt.now();
    let answer = service.oneshot(1).await;
    let took = rt.now() - start;
    assert!(is_circuit_open(&answer), "{answer:?}");
    assert_eq!(watch.calls(), 1);
    assert!(
        took <= 2 * MS,
        "ended at once, not at the deadline: {took:?}"
    );
    assert_eq!(ear.delays(), [MS], "no retry scheduled for the refusal");
    assert_eq!(own.counts().failures, 1);
    let ends = ear.ends();
    assert_eq!(ends.len(), 1, "{ends:?}");
    assert!(
        ends[0].starts_with("pipeline:Rejected(CircuitOpen"),
        "{ends:?}"
    );
}

#[test]
fn a_hint_from_below_past_the_deadline_ends_the_call_at_once_with_the_refusal() {
    on_every_runtime!(no_time_left_for_a_hint_from_below);
}

// A rate limiter below (`AdmitLayer`, `Reject`): the pipeline retries after the limiter's
// hint, and the retry is admitted; the service is called once, no sooner than the hint. The
// user's classifier, whatever it says of errors, never sees the refusal.
async fn a_rate_limit_below_is_waited_out<R: Runtime>(rt: Clocked<R>) {
    for verdict in [
        Verdict::Failure,
        Verdict::Ignored,
        Verdict::RetryableFailure,
    ] {
        let limiter = RateLimiter::builder(1, SEC)
            .runtime(rt.clone())
            .burst(1)
            .jitter(Duration::ZERO)
            .build()
            .unwrap();
        limiter.check().unwrap();
        let errors_seen = Arc::new(AtomicU32::new(0));
        let seen = Arc::clone(&errors_seen);
        let pipeline = Pipeline::builder()
            .runtime(rt.clone())
            .deadline(5 * SEC)
            .retry(constant(MS, 3))
            .breaker(strict_breaker(&rt, 1))
            .classify(move |r: Result<&u32, &E>| match r {
                Ok(_) => Verdict::Success,
                Err(_) => {
                    seen.fetch_add(1, SeqCst);
                    verdict
                }
            })
            .build()
            .unwrap();
        let script = Script::new(&rt, ok_after(0));
        let watch = script.watch();
        let service = ServiceBuilder::new()
            .layer(PipelineLayer::new(pipeline))
            .layer(AdmitLayer::new(limiter.clone(), AdmitMode::Reject).runtime(rt.clone()))
            .service(script);
        let start = rt.now();
        assert_eq!(service.oneshot(1).await, Ok(1), "{verdict:?}");
        let took = rt.now() - start;
        assert_eq!(watch.calls(), 1, "{verdict:?}");
        assert!(
            took >= SEC - MS && took <= SEC + 5 * MS,
            "{verdict:?}: {took:?}"
        );
        assert_eq!(
            errors_seen.load(SeqCst),
            0,
            "{verdict:?}: the classifier saw a refusal"
        );

        // No time left: a 300 ms deadline against the next cell, a second away.
        let pipeline = Pipeline::builder()
            .runtime(rt.clone())
            .deadline(300 * MS)
            .retry(constant(MS, 3))
            .build()
            .unwrap();
        let script = Script::new(&rt, ok_after(0));
        let watch = script.watch();
        let service = ServiceBuilder::new()
            .layer(PipelineLayer::new(pipeline))
            .layer(AdmitLayer::new(limiter, AdmitMode::Reject).runtime(rt.clone()))
            .service(script);
        let start = rt.now();
        let answer = service.oneshot(2).await;
        assert!(
            matches!(answer, Err(Error::Rejected(Rejected::RateLimited { .. }))),
            "{answer:?}"
        );
        assert_eq!(rt.now() - start, Duration::ZERO, "ended at once");
        assert_eq!(watch.calls(), 0);
        rt.sleep(2 * SEC).await;
    }
}

#[test]
fn a_rate_limit_below_is_retried_after_its_hint_whatever_the_classifier_says() {
    on_every_runtime!(a_rate_limit_below_is_waited_out);
}

// `ErrorsWhere` that retries nothing: a refusal from below is retried anyway (every attempt),
// while the service's own error under the same classifier is not.
async fn errors_where_is_not_consulted<R: Runtime>(rt: Clocked<R>) {
    let below = full_bulkhead(&rt);
    let held = below.try_acquire_owned().unwrap();
    let asked = Arc::new(AtomicU32::new(0));
    let count = Arc::clone(&asked);
    let pipeline = Pipeline::builder()
        .runtime(rt.clone())
        .deadline(SEC)
        .retry(constant(MS, 4))
        .classify(ErrorsWhere(move |_: &E| {
            count.fetch_add(1, SeqCst);
            false
        }))
        .build()
        .unwrap();
    let layer = PipelineLayer::new(pipeline);
    let script = Script::new(&rt, ok_after(0));
    let watch = script.watch();
    let refused = ServiceBuilder::new()
        .layer(layer.clone())
        .layer(AdmitLayer::new(below.clone(), AdmitMode::Reject).runtime(rt.clone()))
        .service(script);
    assert_eq!(
        refused.oneshot(1).await,
        Err(Error::Rejected(Rejected::BulkheadFull))
    );
    assert_eq!((below.rejected(), watch.calls()), (4, 0));
    assert_eq!(
        asked.load(SeqCst),
        0,
        "the predicate was asked about a refusal"
    );
    drop(held);

    let failing = layer.layer(Script::new(&rt, |_| (0, Err(Error::Inner("down")))));
    assert_eq!(failing.oneshot(2).await, Err(Error::Inner("down")));
    assert_eq!(
        asked.load(SeqCst),
        1,
        "the service's own error is judged, once"
    );
}

#[test]
fn an_errors_where_that_retries_nothing_is_not_consulted_for_refusals_from_below() {
    on_every_runtime!(errors_where_is_not_consulted);
}

// =============================================================================================
// Error types of one's own
// =============================================================================================

#[derive(Debug, Clone, PartialEq)]
enum Mine {
    Refused(Rejected),
    Slow,
    Down,
}

impl PolicyError for Mine {
    fn rejected(rejected: Rejected) -> Self {
        Self::Refused(rejected)
    }
    fn timed_out() -> Self {
        Self::Slow
    }
    fn rejection(&self) -> Option<Rejected> {
        match self {
            Self::Refused(r) => Some(*r),
            _ => None,
        }
    }
}

/// The same enum, without `rejection`: its refusals are errors like any other.
#[derive(Debug, Clone, PartialEq)]
enum Theirs {
    Refused(Rejected),
    Slow,
    Down,
}

impl PolicyError for Theirs {
    fn rejected(rejected: Rejected) -> Self {
        Self::Refused(rejected)
    }
    fn timed_out() -> Self {
        Self::Slow
    }
}

async fn own_error_types<R: Runtime>(rt: Clocked<R>) {
    let _ = (Mine::Down, Mine::Slow, Theirs::Down, Theirs::Slow);
    // With `rejection`: retried, unrecorded, unseen.
    let below = full_bulkhead(&rt);
    let held = below.try_acquire_owned().unwrap();
    let own = strict_breaker(&rt, 1);
    let judged = Arc::new(AtomicU32::new(0));
    let count = Arc::clone(&judged);
    let pipeline = Pipeline::builder()
        .runtime(rt.clone())
        .deadline(SEC)
        .retry(constant(MS, 3))
        .breaker(own.clone())
        .classify(move |r: Result<&u32, &Mine>| {
            if r.is_err() {
                count.fetch_add(1, SeqCst);
            }
            if r.is_ok() {
                Verdict::Success
            } else {
                Verdict::Failure
            }
        })
        .build()
        .unwrap();
    let script: Script<_, Mine> = Script::new(&rt, |n| (0, Ok(n)));
    let watch = script.watch();
    let service = ServiceBuilder::new()
        .layer(PipelineLayer::new(pipeline))
        .layer(AdmitLayer::new(below.clone(), AdmitMode::Reject).runtime(rt.clone()))
        .service(script);
    assert_eq!(
        service.oneshot(1).await,
        Err(Mine::Refused(Rejected::BulkheadFull))
    );
    assert_eq!((below.rejected(), watch.calls()), (3, 0));
    assert_eq!(judged.load(SeqCst), 0);
    assert_eq!((own.state(), own.counts().calls), (State::Closed, 0));

    // Without: the refusal is the service's error, judged (here a failure, not retried),
    // recorded by the breaker (one failure opens it).
    let own = strict_breaker(&rt, 1);
    let judged = Arc::new(AtomicU32::new(0));
    let count = Arc::clone(&judged);
    let pipeline = Pipeline::builder()
        .runtime(rt.clone())
        .deadline(SEC)
        .retry(constant(MS, 3))
        .breaker(own.clone())
        .classify(move |r: Result<&u32, &Theirs>| {
            if r.is_err() {
                count.fetch_add(1, SeqCst);
            }
            if r.is_ok() {
                Verdict::Success
            } else {
                Verdict::Failure
            }
        })
        .build()
        .unwrap();
    let script: Script<_, Theirs> = Script::new(&rt, |n| (0, Ok(n)));
    let service = ServiceBuilder::new()
        .layer(PipelineLayer::new(pipeline))
        .layer(AdmitLayer::new(below.clone(), AdmitMode::Reject).runtime(rt.clone()))
        .service(script);
    assert_eq!(
        service.oneshot(1).await,
        Err(Theirs::Refused(Rejected::BulkheadFull))
    );
    assert_eq!(below.rejected(), 4, "judged a failure: not retried");
    assert_eq!(judged.load(SeqCst), 1);
    assert_eq!(
        own.state(),
        State::Open,
        "recorded as the service's failure"
    );

    // Without, under the default classifier: retried as a failure, each attempt recorded.
    let own = strict_breaker(&rt, 100);
    let pipeline = Pipeline::builder()
        .runtime(rt.clone())
        .deadline(SEC)
        .retry(constant(MS, 3))
        .breaker(own.clone())
        .build()
        .unwrap();
    let script: Script<_, Theirs> = Script::new(&rt, |n| (0, Ok(n)));
    let service = ServiceBuilder::new()
        .layer(PipelineLayer::new(pipeline))
        .layer(AdmitLayer::new(below.clone(), AdmitMode::Reject).runtime(rt.clone()))
        .service(script);
    assert_eq!(
        service.oneshot(1).await,
        Err(Theirs::Refused(Rejected::BulkheadFull))
    );
    assert_eq!(below.rejected(), 7);
    assert_eq!(own.counts().failures, 3);
    drop(held);
}

#[test]
fn an_error_type_of_ones_own_is_a_refusal_only_if_it_implements_rejection() {
    on_every_runtime!(own_error_types);
}

/// An error of the service's own that carries a refusal as its `source`.
#[derive(Debug)]
struct Wrapped(Rejected);

impl std::fmt::Display for Wrapped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "wrapped: {}", self.0)
    }
}

impl std::error::Error for Wrapped {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

// `BoxError`'s `rejection` finds a `Rejected` "in a `BoxError`'s source chain": one wrapped
// in an error of the service's own is a refusal too: retried after its hint, unrecorded.
async fn a_boxed_refusal_behind_a_source<R: Runtime>(rt: Clocked<R>) {
    let own = strict_breaker(&rt, 1);
    let pipeline = Pipeline::builder()
        .runtime(rt.clone())
        .deadline(SEC)
        .retry(constant(MS, 3))
        .breaker(own.clone())
        .build()
        .unwrap();
    let script: Script<_, BoxError> = Script::new(&rt, |n| {
        if n < 3 {
            let refusal = Rejected::RateLimited {
                retry_after: 100 * MS,
            };
            (0, Err(Box::new(Wrapped(refusal)) as BoxError))
        } else {
            (0, Ok(n))
        }
    });
    let watch = script.watch();
    let service = PipelineLayer::new(pipeline).layer(script);
    let answer = service.oneshot(1).await;
    assert_eq!(answer.map_err(|e| e.to_string()), Ok(3));
    assert_eq!(
        watch.at(),
        [Duration::ZERO, 100 * MS, 200 * MS],
        "each retry after the 100 ms hint"
    );
    assert_eq!((own.state(), own.counts().calls), (State::Closed, 1));
}

#[test]
fn a_refusal_behind_a_boxed_errors_source_is_a_refusal() {
    on_every_runtime!(a_boxed_refusal_behind_a_source);
}

// =============================================================================================
// The pipeline's breaker and adaptive limiter under refusals from below
// =============================================================================================

// A half-open breaker's one probe, refused below, is given back: the retry gets it again (the
// bulkhead below refuses every attempt), and after a day's idle gap the next call is its
// probe and closes it.
async fn half_open_probes_are_given_back<R: Runtime>(rt: Clocked<R>) {
    let own = CircuitBreaker::builder()
        .runtime(rt.clone())
        .no_failure_rate()
        .consecutive_failures(1)
        .break_duration(SEC)
        .half_open_probes(1)
        .build()
        .unwrap();
    let pipeline = Pipeline::builder()
        .runtime(rt.clone())
        .deadline(10 * SEC)
        .retry(constant(MS, 3))
        .breaker(own.clone())
        .build()
        .unwrap();
    let layer = PipelineLayer::new(pipeline);
    let below = full_bulkhead(&rt);
    own.try_acquire().unwrap().failure();
    assert_eq!(own.state(), State::Open);
    rt.sleep(DAY).await;
    let before = own.counts();

    let held = below.try_acquire_owned().unwrap();
    let script = Script::new(&rt, ok_after(5));
    let watch = script.watch();
    let service = ServiceBuilder::new()
        .layer(layer.clone())
        .layer(AdmitLayer::new(below.clone(), AdmitMode::Reject).runtime(rt.clone()))
        .service(script.clone());
    assert_eq!(
        service.clone().oneshot(1).await,
        Err(Error::Rejected(Rejected::BulkheadFull)),
        "each attempt was the probe, refused below (not CircuitOpen: the probe came back)"
    );
    assert_eq!(below.rejected(), 3);
    assert_ne!(
        own.state(),
        State::Open,
        "a refusal below is no failed probe"
    );
    assert_eq!(own.counts(), before, "nothing recorded");

    // A whole day later, the probe is still to be had.
    rt.sleep(DAY).await;
    drop(held);
    assert_eq!(service.oneshot(2).await, Ok(1));
    assert_eq!(watch.calls(), 1);
    assert_eq!(own.state(), State::Closed, "the probe succeeded");
    assert_eq!(below.in_flight(), 0);
}

#[test]
fn a_half_open_probe_refused_below_is_given_back_across_retries_and_idle_days() {
    on_every_runtime!(half_open_probes_are_given_back);
}

/// How an attempt of the seeded model ends.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Refused,
    Failed,
    Succeeded,
}

// A seeded model: each attempt below is refused, fails or succeeds; the pipeline's breaker
// (three real failures in a row, refusals in between not breaking the run) must open exactly
// when the model says, and each call must end as the model says.
async fn a_seeded_model_of_refusals_and_failures<R: Runtime>(rt: Clocked<R>) {
    let mut rng = Rng::new(0x5EED_0001);
    let kinds: Vec<Kind> = (0..2_000)
        .map(|_| match rng.below(10) {
            0..=4 => Kind::Refused,
            5..=7 => Kind::Failed,
            _ => Kind::Succeeded,
        })
        .collect();
    let own = strict_breaker(&rt, 3);
    let pipeline = Pipeline::builder()
        .runtime(rt.clone())
        .deadline(10 * SEC)
        .retry(constant(MS, 4))
        .breaker(own.clone())
        .build()
        .unwrap();
    let script_kinds = kinds.clone();
    let script = Script::new(&rt, move |n| {
        let answer = match script_kinds[n as usize - 1] {
            Kind::Refused => Err(Error::Rejected(Rejected::BulkheadFull)),
            Kind::Failed => Err(Error::Inner("down")),
            Kind::Succeeded => Ok(n),
        };
        (1, answer)
    });
    let watch = script.watch();
    let service = PipelineLayer::new(pipeline).layer(script);
    let (mut next, mut run, mut opened) = (0usize, 0u32, 0u32);
    let mut recorded = (0u32, 0u32);
    for call in 0..300 {
        let mut expected = None;
        let mut open = false;
        for _attempt in 0..4 {
            if open {
                expected = Some(Err("open"));
                break;
            }
            let kind = kinds[next];
            next += 1;
            match kind {
                Kind::Succeeded => {
                    run = 0;
                    recorded.0 += 1;
                    expected = Some(Ok(u32::try_from(next).unwrap()));
                    break;
                }
                Kind::Failed => {
                    run += 1;
                    recorded.0 += 1;
                    recorded.1 += 1;
                    open = run == 3;
                    expected = Some(Err("down"));
                }
                Kind::Refused => expected = Some(Err("refused")),
            }
        }
        let answer = service.clone().oneshot(call).await;
        let got = match &answer {
            Ok(n) => Ok(*n),
            Err(Error::Inner("down")) => Err("down"),
            Err(Error::Rejected(Rejected::BulkheadFull)) => Err("refused"),
            Err(Error::Rejected(Rejected::CircuitOpen { .. })) => Err("open"),
            other => panic!("call {call}: {other:?}"),
        };
        assert_eq!(Some(got), expected, "call {call}: {answer:?}");
        assert_eq!(watch.calls() as usize, next, "call {call}: attempts made");
        let counts = own.counts();
        assert_eq!(
            (counts.calls, counts.failures),
            recorded,
            "call {call}: the window holds the real outcomes only"
        );
        if open {
            assert_eq!(own.state(), State::Open, "call {call}");
            own.reset();
            run = 0;
            recorded = (0, 0);
            opened += 1;
        } else {
            assert_eq!(own.state(), State::Closed, "call {call}");
        }
    }
    assert!(opened >= 3, "the model opened the breaker {opened} times");
    assert_eq!(watch.live(), 0);
}

#[test]
fn a_seeded_mix_of_refusals_failures_and_successes_opens_the_breaker_as_modelled() {
    on_every_runtime!(a_seeded_model_of_refusals_and_failures);
}

// A storm of concurrent calls, every attempt refused below in every way a policy refuses
// (hints of a few ms included): the pipeline's adaptive limiter keeps its limit and gives every
// slot back, its breaker records nothing, and every refusal is retried to the last attempt.
async fn a_storm_of_refusals<R: Runtime>(rt: Clocked<R>) {
    let limiter = aimd(&rt, 5, 100);
    let own = strict_breaker(&rt, 1);
    let pipeline = Pipeline::builder()
        .runtime(rt.clone())
        .deadline(10 * SEC)
        .bulkhead(limiter.clone())
        .retry(constant(MS, 3))
        .breaker(own.clone())
        .build()
        .unwrap();
    let refusals = [
        Rejected::BulkheadFull,
        Rejected::CircuitOpen {
            retry_after: 5 * MS,
        },
        Rejected::RateLimited {
            retry_after: 3 * MS,
        },
        Rejected::KeysFull { retry_after: None },
        Rejected::BackendUnavailable,
        Rejected::BudgetExhausted,
    ];
    let script = Script::<_, E>::new(&rt, move |n| {
        (
            1,
            Err(Error::Rejected(refusals[n as usize % refusals.len()])),
        )
    });
    let watch = script.watch();
    let service = PipelineLayer::new(pipeline).layer(script);
    let calls = (0..60).map(|i| service.clone().oneshot(i));
    let answers = futures_util::future::join_all(calls).await;
    for answer in &answers {
        assert!(matches!(answer, Err(Error::Rejected(_))), "{answer:?}");
    }
    assert_eq!(
        watch.calls(),
        180,
        "every refusal retried to the last attempt"
    );
    assert_eq!(limiter.limit(), 5, "the limit learnt nothing");
    assert_eq!((limiter.in_flight(), limiter.queued()), (0, 0));
    assert_eq!((own.state(), own.counts().calls), (State::Closed, 0));
    assert_eq!(watch.live(), 0);
}

#[test]
fn a_storm_of_refusals_of_every_kind_leaves_the_limit_and_the_breaker_as_they_were() {
    on_every_runtime!(a_storm_of_refusals);
}

// A timeout from below (`TimeoutLayer`) is an error like any other, even next to refusals: the
// breaker counts it, AIMD backs off on it, the classifier sees it.
async fn a_timeout_below_among_refusals<R: Runtime>(rt: Clocked<R>) {
    let limiter = aimd(&rt, 10, 10);
    let own = strict_breaker(&rt, 100);
    let judged = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&judged);
    let pipeline = Pipeline::builder()
        .runtime(rt.clone())
        .deadline(10 * SEC)
        .bulkhead(limiter.clone())
        .retry(constant(MS, 3))
        .breaker(own.clone())
        .classify(move |r: Result<&u32, &E>| {
            log.lock().unwrap().push(format!("{r:?}"));
            if r.is_ok() {
                Verdict::Success
            } else {
                Verdict::RetryableFailure
            }
        })
        .build()
        .unwrap();
    // Attempt 1 refused (by the script: a policy's refusal), 2 too slow, 3 refused.
    let script = Script::new(&rt, |n| match n {
        2 => (100, Ok(n)),
        _ => (0, Err(Error::Rejected(Rejected::BulkheadFull))),
    });
    let service = ServiceBuilder::new()
        .layer(PipelineLayer::new(pipeline))
        .layer(TimeoutLayer::new(20 * MS).runtime(rt.clone()))
        .service(script);
    assert_eq!(
        service.oneshot(1).await,
        Err(Error::Rejected(Rejected::BulkheadFull))
    );
    assert_eq!(*judged.lock().unwrap(), ["Err(TimedOut)"]);
    assert_eq!(own.counts().failures, 1, "the timeout only");
    // "a call it ends teaches them what its last attempt that was not refused taught": the
    // timeout, a failure, so AIMD backs off.
    assert!(
        limiter.limit() < 10,
        "the timeout was learnt: {}",
        limiter.limit()
    );
    assert_eq!((limiter.in_flight(), limiter.queued()), (0, 0));
}

#[test]
fn a_timeout_from_below_is_judged_and_recorded_while_refusals_around_it_are_not() {
    on_every_runtime!(a_timeout_below_among_refusals);
}

// =============================================================================================
// Nested pipelines
// =============================================================================================

async fn nested_pipelines<R: Runtime>(rt: Clocked<R>) {
    let limiter = aimd(&rt, 10, 10);
    let own = strict_breaker(&rt, 1);
    let ear = Ear::default();
    let outer = Pipeline::builder()
        .runtime(rt.clone())
        .deadline(SEC)
        .on_event(ear.listener())
        .bulkhead(limiter.clone())
        .retry(constant(MS, 3))
        .breaker(own.clone())
        .build()
        .unwrap();
    let outer = PipelineLayer::new(outer);

    // 1. The inner pipeline's bulkhead is full: every attempt refused, nothing recorded.
    let inner_bulkhead = full_bulkhead(&rt);
    let held = inner_bulkhead.try_acquire_owned().unwrap();
    let inner = Pipeline::builder()
        .runtime(rt.clone())
        .bulkhead(inner_bulkhead.clone())
        .build()
        .unwrap();
    let script = Script::new(&rt, ok_after(1));
    let watch = script.watch();
    let service = ServiceBuilder::new()
        .layer(outer.clone())
        .layer(PipelineLayer::new(inner))
        .service(script);
    assert_eq!(
        service.oneshot(1).await,
        Err(Error::Rejected(Rejected::BulkheadFull))
    );
    assert_eq!((inner_bulkhead.rejected(), watch.calls()), (3, 0));
    assert_eq!((own.state(), own.counts().calls), (State::Closed, 0));
    assert_eq!((limiter.limit(), limiter.in_flight()), (10, 0));
    drop(held);

    // 2. The inner pipeline's breaker forced open (its refusals hint the first break, 300
    //    ms): the outer retries no sooner, and ends at once when the next hint is past its
    //    deadline.
    let inner_breaker = CircuitBreaker::builder()
        .runtime(rt.clone())
        .break_duration(300 * MS)
        .build()
        .unwrap();
    inner_breaker.force_open();
    let inner = Pipeline::builder()
        .runtime(rt.clone())
        .breaker(inner_breaker.clone())
        .build()
        .unwrap();
    let script = Script::new(&rt, ok_after(1));
    let watch = script.watch();
    let service = ServiceBuilder::new()
        .layer(outer.clone())
        .layer(PipelineLayer::new(inner))
        .service(script);
    ear.clear();
    let start = rt.now();
    let answer = service.oneshot(2).await;
    let took = rt.now() - start;
    assert!(is_circuit_open(&answer), "{answer:?}");
    assert_eq!(watch.calls(), 0);
    assert_eq!(ear.delays().len(), 2, "{:?}", ear.delays());
    assert!(
        ear.delays().iter().all(|d| *d >= 300 * MS),
        "{:?}",
        ear.delays()
    );
    assert!(took >= 600 * MS && took <= 605 * MS, "{took:?}");
    assert_eq!((own.state(), own.counts().calls), (State::Closed, 0));
    assert_eq!((limiter.limit(), limiter.in_flight()), (10, 0));

    // 3. The inner pipeline's deadline (10 ms) cuts a slow first call: retried (a refusal),
    //    unrecorded by the outer breaker; the retry succeeds, so the limiter learns no failure.
    let inner = Pipeline::builder()
        .runtime(rt.clone())
        .deadline(10 * MS)
        .build()
        .unwrap();
    let script = Script::<_, E>::new(&rt, |n| (if n == 1 { 100 } else { 1 }, Ok(n)));
    let watch = script.watch();
    let service = ServiceBuilder::new()
        .layer(outer.clone())
        .layer(PipelineLayer::new(inner.clone()))
        .service(script);
    assert_eq!(service.oneshot(3).await, Ok(2));
    assert_eq!(watch.calls(), 2);
    let counts = own.counts();
    assert_eq!((counts.calls, counts.failures), (1, 0), "the success only");
    assert_eq!((limiter.limit(), limiter.in_flight()), (10, 0));
    assert_eq!(watch.live(), 0, "the cut attempt was dropped");

    // 4. Every attempt cut by the inner deadline: a refusal, "teaching its admission stages
    //    (bulkhead, adaptive limiter) nothing", and nothing to the breaker's window.
    let script = Script::<_, E>::new(&rt, |n| (100, Ok(n)));
    let watch = script.watch();
    let service = ServiceBuilder::new()
        .layer(outer.clone())
        .layer(PipelineLayer::new(inner))
        .service(script);
    ear.clear();
    assert_eq!(
        service.oneshot(4).await,
        Err(Error::Rejected(Rejected::DeadlineExceeded))
    );
    assert_eq!(watch.calls(), 3, "each cut attempt retried");
    assert_eq!(own.state(), State::Closed);
    assert_eq!(own.counts().failures, 0);
    assert_eq!(limiter.limit(), 10, "AIMD taught nothing");
    assert_eq!(limiter.in_flight(), 0);
    assert_eq!(
        ear.ends(),
        ["pipeline:Rejected(DeadlineExceeded)"],
        "the call's end, heard as a refusal"
    );
}

#[test]
fn nested_pipeline_layers_a_bulkhead_a_breaker_and_a_deadline_below() {
    on_every_runtime!(nested_pipelines);
}

// =============================================================================================
// A LivePipeline from a Registry, across a reload
// =============================================================================================

async fn a_live_pipeline_across_a_reload<R: Runtime>(rt: Clocked<R>) {
    let text = |attempts: u32| {
        format!(
            "[instances.orders]\ndeadline = \"10s\"\n[instances.orders.retry]\nbackoff = \"constant\"\ninitial_delay = \"1ms\"\njitter = \"none\"\nmax_attempts = {attempts}\n[instances.orders.breaker]\nfailure_rate = \"off\"\nconsecutive_failures = 1\nbreak_duration = \"1h\"\n"
        )
    };
    let registry = Registry::builder(config(&text(3)))
        .runtime(rt.clone())
        .build()
        .unwrap();
    let judged = Arc::new(AtomicU32::new(0));
    let count = Arc::clone(&judged);
    let live = registry
        .pipeline("orders")
        .unwrap()
        .classify(move |r: Result<&u32, &E>| {
            if r.is_err() {
                count.fetch_add(1, SeqCst);
            }
            if r.is_ok() {
                Verdict::Success
            } else {
                Verdict::Failure
            }
        });
    let breaker = registry.breaker("orders").unwrap();
    let layer = PipelineLayer::new(live);
    let below = full_bulkhead(&rt);
    let held = below.try_acquire_owned().unwrap();
    let service = ServiceBuilder::new()
        .layer(layer.clone())
        .layer(AdmitLayer::new(below.clone(), AdmitMode::Reject).runtime(rt.clone()))
        .service(Script::new(&rt, ok_after(1)));
    assert_eq!(
        service.clone().oneshot(1).await,
        Err(Error::Rejected(Rejected::BulkheadFull))
    );
    assert_eq!(below.rejected(), 3);

    registry.reload(config(&text(5))).unwrap();
    rt.sleep(DAY).await;
    assert_eq!(
        service.clone().oneshot(2).await,
        Err(Error::Rejected(Rejected::BulkheadFull))
    );
    assert_eq!(below.rejected(), 8, "the reloaded schedule: five attempts");
    assert_eq!(
        judged.load(SeqCst),
        0,
        "the handle's classifier never saw a refusal"
    );
    assert_eq!(
        (breaker.state(), breaker.counts().calls),
        (State::Closed, 0)
    );

    // The service's own error is still judged (a failure: not retried) and recorded.
    drop(held);
    let failing = layer.layer(Script::new(&rt, |_| (1, Err(Error::Inner("down")))));
    assert_eq!(failing.oneshot(3).await, Err(Error::Inner("down")));
    assert_eq!(judged.load(SeqCst), 1);
    assert_eq!(breaker.state(), State::Open);
}

#[test]
fn a_live_pipelines_classifier_and_breaker_ignore_refusals_below_across_a_reload() {
    on_every_runtime!(a_live_pipeline_across_a_reload);
}

// =============================================================================================
// RetryLayer and HedgeLayer below
// =============================================================================================

async fn retry_and_hedge_layers_below<R: Runtime>(rt: Clocked<R>) {
    let below = full_bulkhead(&rt);
    let held = below.try_acquire_owned().unwrap();
    let own = strict_breaker(&rt, 1);
    let pipeline = Pipeline::builder()
        .runtime(rt.clone())
        .deadline(10 * SEC)
        .retry(constant(MS, 3))
        .breaker(own.clone())
        .build()
        .unwrap();
    let layer = PipelineLayer::new(pipeline);

    // A RetryLayer below gives up on the refusal after two tries: the pipeline gets the
    // refusal, and retries it.
    let service = ServiceBuilder::new()
        .layer(layer.clone())
        .layer(RetryLayer::new(constant(MS, 2)).runtime(rt.clone()))
        .layer(AdmitLayer::new(below.clone(), AdmitMode::Reject).runtime(rt.clone()))
        .service(Script::new(&rt, ok_after(1)));
    assert_eq!(
        service.oneshot(1).await,
        Err(Error::Rejected(Rejected::BulkheadFull))
    );
    assert_eq!(below.rejected(), 6);
    assert_eq!((own.state(), own.counts().calls), (State::Closed, 0));

    // A HedgeLayer below, each copy refused.
    let hedge = Hedge::builder()
        .runtime(rt.clone())
        .delay(5 * MS)
        .build()
        .unwrap();
    let service = ServiceBuilder::new()
        .layer(layer.clone())
        .layer(HedgeLayer::new(hedge))
        .layer(AdmitLayer::new(below.clone(), AdmitMode::Reject).runtime(rt.clone()))
        .service(Script::new(&rt, ok_after(1)));
    assert_eq!(
        service.oneshot(2).await,
        Err(Error::Rejected(Rejected::BulkheadFull))
    );
    assert!(
        below.rejected() >= 9,
        "each pipeline attempt reached the bulkhead"
    );
    assert_eq!((own.state(), own.counts().calls), (State::Closed, 0));
    drop(held);

    // A RetryLayer above the pipeline sees its refusal as the pipeline returns it.
    let outer_tries = Arc::new(AtomicU32::new(0));
    let count = Arc::clone(&outer_tries);
    let held = below.try_acquire_owned().unwrap();
    let service = ServiceBuilder::new()
        .layer(
            RetryLayer::new(constant(MS, 2))
                .runtime(rt.clone())
                .when(move |e: &E| {
                    count.fetch_add(1, SeqCst);
                    matches!(e, Error::Rejected(Rejected::BulkheadFull))
                }),
        )
        .layer(layer)
        .layer(AdmitLayer::new(below.clone(), AdmitMode::Reject).runtime(rt.clone()))
        .service(Script::new(&rt, ok_after(1)));
    let before = below.rejected();
    assert_eq!(
        service.oneshot(3).await,
        Err(Error::Rejected(Rejected::BulkheadFull))
    );
    assert_eq!(
        below.rejected() - before,
        6,
        "two outer tries of three attempts each"
    );
    assert!(outer_tries.load(SeqCst) >= 1);
    drop(held);
    assert_eq!(below.in_flight(), 0);
}

#[test]
fn refusals_through_retry_and_hedge_layers_below_are_still_refusals() {
    on_every_runtime!(retry_and_hedge_layers_below);
}

// =============================================================================================
// Metrics and events
// =============================================================================================

/// Counters summed over snapshots, by name and sorted labels.
struct Books {
    snapshotter: metrics_util::debugging::Snapshotter,
    counters: BTreeMap<(String, Vec<(String, String)>), u64>,
}

impl Books {
    fn new(recorder: &DebuggingRecorder) -> Self {
        Self {
            snapshotter: recorder.snapshotter(),
            counters: BTreeMap::new(),
        }
    }
    fn read(&mut self) {
        for (key, _, _, value) in self.snapshotter.snapshot().into_vec() {
            if let DebugValue::Counter(n) = value {
                let key = key.key();
                let mut labels: Vec<_> = key
                    .labels()
                    .map(|l| (l.key().to_owned(), l.value().to_owned()))
                    .collect();
                labels.sort();
                *self
                    .counters
                    .entry((key.name().to_owned(), labels))
                    .or_default() += n;
            }
        }
    }
    fn counter(&self, name: &str, want: &[(&str, &str)]) -> u64 {
        self.counters
            .iter()
            .filter(|((n, have), _)| {
                n == name
                    && want
                        .iter()
                        .all(|(k, v)| have.iter().any(|(hk, hv)| hk == k && hv == v))
            })
            .map(|(_, v)| *v)
            .sum()
    }
    /// The pipeline `name`'s calls by outcome (outcomes at 0 left out).
    fn outcomes(&self, name: &str) -> BTreeMap<String, u64> {
        let mut by = BTreeMap::new();
        for ((n, have), v) in &self.counters {
            let of = |k: &str| have.iter().find(|(hk, _)| hk == k).map(|(_, v)| v.as_str());
            if n == "tidewall_calls_total"
                && of("policy") == Some("pipeline")
                && of("name") == Some(name)
                && *v > 0
            {
                *by.entry(of("outcome").unwrap().to_owned()).or_default() += v;
            }
        }
        by
    }
}

fn outcomes(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
}

async fn metrics_and_events<R: Runtime>(rt: Clocked<R>) {
    let recorder = DebuggingRecorder::new();
    let _recording = metrics::set_default_local_recorder(&recorder);
    let mut books = Books::new(&recorder);
    let own = CircuitBreaker::builder()
        .runtime(rt.clone())
        .name("refusals_own")
        .no_failure_rate()
        .consecutive_failures(100)
        .build()
        .unwrap();
    let ear = Ear::default();
    let pipeline = Pipeline::builder()
        .runtime(rt.clone())
        .deadline(10 * SEC)
        .name("refusals")
        .on_event(ear.listener())
        .retry(constant(MS, 3))
        .breaker(own.clone())
        .build()
        .unwrap();
    let layer = PipelineLayer::new(pipeline);
    let below = full_bulkhead(&rt);

    // 1. A refusal below ends the call after three attempts: rejected, two retries.
    let held = below.try_acquire_owned().unwrap();
    let refused = ServiceBuilder::new()
        .layer(layer.clone())
        .layer(AdmitLayer::new(below.clone(), AdmitMode::Reject).runtime(rt.clone()))
        .service(Script::new(&rt, ok_after(1)));
    assert_eq!(
        refused.clone().oneshot(1).await,
        Err(Error::Rejected(Rejected::BulkheadFull))
    );
    books.read();
    assert_eq!(books.outcomes("refusals"), outcomes(&[("rejected", 1)]));
    assert_eq!(
        books.counter(
            "tidewall_retries_total",
            &[("policy", "pipeline"), ("name", "refusals")]
        ),
        2
    );
    assert_eq!(
        books.counter(
            "tidewall_calls_total",
            &[
                ("policy", "breaker"),
                ("name", "refusals_own"),
                ("outcome", "failure")
            ]
        ),
        0
    );
    assert_eq!(
        books.counter(
            "tidewall_calls_total",
            &[
                ("policy", "breaker"),
                ("name", "refusals_own"),
                ("outcome", "ignored")
            ]
        ),
        3,
        "each refusal recorded as `Ignored` by the pipeline's breaker"
    );
    assert_eq!(ear.ends(), ["pipeline:Rejected(BulkheadFull)"]);
    assert_eq!(ear.delays(), [MS, MS]);
    ear.clear();

    // 2. Refused, then the slot frees: a success, nothing rejected.
    let freed = async {
        rt.sleep(MS / 2).await;
        drop(held);
    };
    let (answer, ()) = futures_util::join!(refused.oneshot(2), freed);
    assert_eq!(answer, Ok(1));
    books.read();
    assert_eq!(
        books.outcomes("refusals"),
        outcomes(&[("rejected", 1), ("success", 1)])
    );
    assert_eq!(ear.ends(), ["pipeline:Succeeded"]);
    ear.clear();

    // 3. A timeout below ends the call: a failure, not timed_out.
    let timing_out = ServiceBuilder::new()
        .layer(layer.clone())
        .layer(TimeoutLayer::new(10 * MS).runtime(rt.clone()))
        .service(Script::new(&rt, ok_after(50)));
    assert_eq!(timing_out.oneshot(3).await, Err(Error::TimedOut));
    books.read();
    assert_eq!(
        books.outcomes("refusals"),
        outcomes(&[("failure", 1), ("rejected", 1), ("success", 1)])
    );
    assert_eq!(ear.ends(), ["pipeline:Failed"]);
    ear.clear();

    // 4. A deadline below (a nested pipeline) ends the call: rejected.
    let inner = Pipeline::builder()
        .runtime(rt.clone())
        .deadline(10 * MS)
        .name("refusals_inner")
        .build()
        .unwrap();
    let late = ServiceBuilder::new()
        .layer(layer.clone())
        .layer(PipelineLayer::new(inner))
        .service(Script::new(&rt, ok_after(50)));
    assert_eq!(
        late.oneshot(4).await,
        Err(Error::Rejected(Rejected::DeadlineExceeded))
    );
    books.read();
    assert_eq!(
        books.outcomes("refusals"),
        outcomes(&[("failure", 1), ("rejected", 2), ("success", 1)])
    );
    assert_eq!(
        books.outcomes("refusals_inner"),
        outcomes(&[("rejected", 3)])
    );
    assert_eq!(ear.ends(), ["pipeline:Rejected(DeadlineExceeded)"]);
    assert_eq!(own.counts().failures, 3, "the three timeouts of 3. only");
    ear.clear();

    // 5. A refusal whose hint is past the deadline ends the call at once: rejected.
    let hinted = PipelineLayer::new(
        Pipeline::builder()
            .runtime(rt.clone())
            .deadline(SEC)
            .name("refusals_hinted")
            .retry(constant(MS, 3))
            .build()
            .unwrap(),
    )
    .layer(Script::<_, E>::new(&rt, |_| {
        (
            0,
            Err(Error::Rejected(Rejected::RateLimited {
                retry_after: 5 * SEC,
            })),
        )
    }));
    let answer = hinted.oneshot(5).await;
    assert!(
        matches!(answer, Err(Error::Rejected(Rejected::RateLimited { .. }))),
        "{answer:?}"
    );
    books.read();
    assert_eq!(
        books.outcomes("refusals_hinted"),
        outcomes(&[("rejected", 1)])
    );
    assert_eq!(
        books.counter(
            "tidewall_retries_total",
            &[("policy", "pipeline"), ("name", "refusals_hinted")]
        ),
        0
    );
}

#[test]
fn metrics_and_events_count_a_refusal_below_as_rejected_and_a_timeout_below_as_failure() {
    on_every_runtime!(metrics_and_events);
}

// A call ended by the service's own error type without `rejection` whose value is a refusal
// counts as that classifier's verdict (`failure`), not `rejected`.
async fn metrics_for_an_error_type_without_rejection<R: Runtime>(rt: Clocked<R>) {
    let recorder = DebuggingRecorder::new();
    let _recording = metrics::set_default_local_recorder(&recorder);
    let mut books = Books::new(&recorder);
    let pipeline = Pipeline::builder()
        .runtime(rt.clone())
        .name("theirs")
        .retry(constant(MS, 2))
        .build()
        .unwrap();
    let script: Script<_, Theirs> =
        Script::new(&rt, |_| (0, Err(Theirs::Refused(Rejected::BulkheadFull))));
    let mine: Script<_, Mine> =
        Script::new(&rt, |_| (0, Err(Mine::Refused(Rejected::BulkheadFull))));
    let layer = PipelineLayer::new(pipeline);
    assert_eq!(
        layer.layer(script).oneshot(1).await,
        Err(Theirs::Refused(Rejected::BulkheadFull))
    );
    books.read();
    assert_eq!(books.outcomes("theirs"), outcomes(&[("failure", 1)]));
    let mine_pipeline = Pipeline::builder()
        .runtime(rt.clone())
        .name("mine")
        .retry(constant(MS, 2))
        .build()
        .unwrap();
    assert_eq!(
        PipelineLayer::new(mine_pipeline)
            .layer(mine)
            .oneshot(2)
            .await,
        Err(Mine::Refused(Rejected::BulkheadFull))
    );
    books.read();
    assert_eq!(books.outcomes("mine"), outcomes(&[("rejected", 1)]));
}

#[test]
fn metrics_count_a_refusal_by_its_error_types_rejection() {
    on_every_runtime!(metrics_for_an_error_type_without_rejection);
}

// =============================================================================================
// Cancellation at seeded random drop points, and idle gaps
// =============================================================================================

async fn seeded_cancellation<R: Runtime>(rt: Clocked<R>) {
    for seed in 0..4u64 {
        let mut rng = Rng::new(0xC0FFEE + seed);
        let limiter = aimd(&rt, 4, 4);
        let own = CircuitBreaker::builder()
            .runtime(rt.clone())
            .no_failure_rate()
            .consecutive_failures(1)
            .break_duration(SEC)
            .half_open_probes(1)
            .build()
            .unwrap();
        let pipeline = Pipeline::builder()
            .runtime(rt.clone())
            .deadline(2 * SEC)
            .bulkhead(limiter.clone())
            .retry(constant(5 * MS, 6))
            .breaker(own.clone())
            .build()
            .unwrap();
        let below_breaker = CircuitBreaker::builder()
            .runtime(rt.clone())
            .consecutive_failures(1)
            .break_duration(30 * MS)
            .build()
            .unwrap();
        let below = Bulkhead::builder(2)
            .runtime(rt.clone())
            .max_queue(0)
            .build()
            .unwrap();
        // Open the pipeline's breaker, and let its break end: the storm starts half-open.
        own.try_acquire().unwrap().failure();
        rt.sleep(DAY).await;
        let script = Script::<_, E>::new(&rt, |n| (5 + u64::from(n % 7), Ok(n)));
        let watch = script.watch();
        let service = ServiceBuilder::new()
            .layer(PipelineLayer::new(pipeline))
            .layer(BreakerLayer::new(below_breaker.clone()))
            .layer(AdmitLayer::new(below.clone(), AdmitMode::Reject).runtime(rt.clone()))
            .service(script);
        let mut calls = Vec::new();
        for i in 0..24u32 {
            let drop_at = MS * u32::try_from(rng.below(60)).unwrap();
            let keep = rng.one_in(3);
            let start_at = MS * u32::try_from(rng.below(40)).unwrap();
            let service = service.clone();
            let rt2 = rt.clone();
            if rng.one_in(6) {
                below_breaker.force_open();
            } else if rng.one_in(6) {
                below_breaker.reset();
            }
            calls.push(async move {
                rt2.sleep(start_at).await;
                let call = service.oneshot(i);
                if keep {
                    Some(call.await)
                } else {
                    let cut = rt2.sleep(drop_at);
                    futures_util::pin_mut!(call);
                    futures_util::pin_mut!(cut);
                    match futures_util::future::select(call, cut).await {
                        futures_util::future::Either::Left((answer, _)) => Some(answer),
                        futures_util::future::Either::Right(_) => None,
                    }
                }
            });
        }
        let answers = futures_util::future::join_all(calls).await;
        for answer in answers.into_iter().flatten() {
            assert!(
                matches!(answer, Ok(_) | Err(Error::Rejected(_))),
                "seed {seed}: {answer:?}"
            );
        }
        below_breaker.reset();
        rt.sleep(DAY).await;
        assert_eq!(watch.live(), 0, "seed {seed}");
        assert_eq!(
            (limiter.in_flight(), limiter.queued()),
            (0, 0),
            "seed {seed}"
        );
        assert_eq!(limiter.limit(), 4, "seed {seed}: no failure was learnt");
        assert_eq!(below.in_flight(), 0, "seed {seed}");
        assert_ne!(own.state(), State::Open, "seed {seed}");
        // The probe is to be had: a call now is admitted and closes the breaker.
        let answer = service.oneshot(99).await;
        assert!(answer.is_ok(), "seed {seed}: {answer:?}");
        assert_eq!(own.state(), State::Closed, "seed {seed}");
    }
}

#[test]
fn calls_dropped_at_seeded_points_among_refusals_give_every_slot_and_probe_back() {
    on_every_runtime!(seeded_cancellation);
}

// Hours and days between calls: the hint of a breaker below that opened a day ago has long
// run out (the next call goes through at once), and a refusal after the gap is waited out as
// before.
async fn idle_gaps<R: Runtime>(rt: Clocked<R>) {
    let below = CircuitBreaker::builder()
        .runtime(rt.clone())
        .consecutive_failures(1)
        .break_duration(3_600 * SEC)
        .build()
        .unwrap();
    let own = strict_breaker(&rt, 1);
    let pipeline = Pipeline::builder()
        .runtime(rt.clone())
        .deadline(2 * 3_600 * SEC)
        .retry(constant(MS, 3))
        .max_retry_after(2 * 3_600 * SEC)
        .breaker(own.clone())
        .build()
        .unwrap();
    let script = Script::new(&rt, ok_after(1));
    let watch = script.watch();
    let service = ServiceBuilder::new()
        .layer(PipelineLayer::new(pipeline))
        .layer(BreakerLayer::new(below.clone()))
        .service(script);
    // Open the breaker below by hand: its refusals hint what is left of the hour.
    below.try_acquire().unwrap().failure();
    rt.sleep(30 * 60 * SEC).await;
    let start = rt.now();
    assert_eq!(service.clone().oneshot(1).await, Ok(1));
    let took = rt.now() - start;
    assert!(
        took >= 30 * 60 * SEC && took <= 30 * 60 * SEC + 10 * MS,
        "waited out the half hour left: {took:?}"
    );
    assert_eq!(watch.calls(), 1);
    let counts = own.counts();
    assert_eq!((counts.calls, counts.failures), (1, 0), "the success only");
    for gap in [DAY, 7 * DAY, 3_600 * SEC] {
        rt.sleep(gap).await;
        let start = rt.now();
        assert!(service.clone().oneshot(2).await.is_ok());
        assert_eq!(below.state(), State::Closed);
        assert!(rt.now() - start <= 5 * MS, "after {gap:?}");
    }
    assert_eq!(own.state(), State::Closed);
}

#[test]
fn idle_gaps_of_hours_and_days_around_refusals_below() {
    on_every_runtime!(idle_gaps);
}
