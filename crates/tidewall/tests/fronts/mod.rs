//! The shared vocabulary of the `hostile_fronts_*` tests: an API error with hints, one
//! classifier, and the four retry fronts driven with one configuration.
#![allow(dead_code, unreachable_pub, unused_imports)]

use std::future::{Future, IntoFuture};
use std::pin::pin;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tidewall::breaker::{CircuitBreaker, State};
use tidewall::budget::{RetryBudget, RetryBudgetPolicy};
use tidewall::bulkhead::Bulkhead;
use tidewall::classify::{Classify, DefaultClassifier, ErrorsWhere, Verdict};
use tidewall::hedge::{Hedge, Idempotent};
use tidewall::pipeline::Pipeline;
use tidewall::retry::{Outcome, RetryError, RetryEvent};
use tidewall::rt::{Clock, Runtime};
use tidewall::testing::{Clocked, Scripted};
use tidewall::tower::{BreakerLayer, HedgeLayer, PipelineLayer, RetryLayer};
use tidewall::{Backoff, ConfigError, Deadline, Error, Jitter, Rejected, RetryAfter, RetryExt};
use tidewall_core::rng::SplitMix64;
use tower::ServiceExt as _;
use tower_layer::Layer;
use tower_service::Service;
// ---------------------------------------------------------------------------------------------
// Shared vocabulary
// ---------------------------------------------------------------------------------------------

pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

pub fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

pub const DAY: Duration = Duration::from_secs(86_400);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiError {
    /// Overloaded: worth retrying.
    Busy,
    /// Throttled with a server hint.
    Throttled(Duration),
    /// The request is wrong: retrying cannot help.
    Invalid,
    /// The caller gave up: says nothing about the service.
    Cancelled,
    /// An error the classifier calls a success (e.g. "already exists" on an idempotent PUT).
    AlreadyDone,
}

impl RetryAfter for ApiError {
    fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Throttled(hint) => Some(*hint),
            _ => None,
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?}")
    }
}

impl std::error::Error for ApiError {}

/// An `Ok` value that means "not ready yet" (retryable).
pub const PENDING: u32 = 0;
/// An `Ok` value that means "the server answered with a permanent failure".
pub const GONE: u32 = 410;
/// An `Ok` value the classifier ignores.
pub const SHRUG: u32 = 999;

/// The one classifier every policy is given.
pub fn classify(result: Result<&u32, &ApiError>) -> Verdict {
    match result {
        Ok(&PENDING) | Err(ApiError::Busy | ApiError::Throttled(_)) => Verdict::RetryableFailure,
        Ok(&GONE) | Err(ApiError::Invalid) => Verdict::Failure,
        Ok(&SHRUG) | Err(ApiError::Cancelled) => Verdict::Ignored,
        Ok(_) | Err(ApiError::AlreadyDone) => Verdict::Success,
    }
}

/// The one classifier for a breaker in a typed tower stack, whose error type is
/// `Error<ApiError>` (the layers return their inner service's error type): the service's own
/// errors (`Error::Inner`) are judged by [`classify`]; a timeout beneath is a retryable failure,
/// a refusal beneath (a bulkhead, a limiter) says nothing about the service.
pub fn classify_typed(result: Result<&u32, &Error<ApiError>>) -> Verdict {
    match result {
        Ok(v) => classify(Ok(v)),
        Err(Error::Inner(e)) => classify(Err(e)),
        Err(Error::TimedOut) => Verdict::RetryableFailure,
        Err(_) => Verdict::Ignored,
    }
}

pub fn constant(delay: Duration, attempts: u32) -> Backoff {
    Backoff::constant(delay)
        .jitter(Jitter::None)
        .max_attempts(attempts)
        .build()
        .unwrap()
}

pub fn exponential(first: Duration, attempts: u32) -> Backoff {
    Backoff::exponential(first)
        .jitter(Jitter::None)
        .max_attempts(attempts)
        .build()
        .unwrap()
}

pub fn instant(result: Result<u32, ApiError>) -> (Duration, Result<u32, ApiError>) {
    (Duration::ZERO, result)
}

/// Seeded draws from the library's own generator: every run draws the same numbers.
pub struct Rng(SplitMix64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(SplitMix64::new(seed))
    }
    /// Uniform in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.0.below_or_equal(n - 1)
    }
}

/// Polls `fut` once with a no-op waker.
pub fn poll_once<F: Future + ?Sized>(fut: std::pin::Pin<&mut F>) -> Poll<F::Output> {
    let mut cx = Context::from_waker(Waker::noop());
    fut.poll(&mut cx)
}

// ---------------------------------------------------------------------------------------------
// The three retry fronts, driven with one configuration
// ---------------------------------------------------------------------------------------------

#[derive(Clone)]
pub struct Cfg {
    pub script: Vec<(Duration, Result<u32, ApiError>)>,
    pub backoff: Backoff,
    pub deadline: Option<Duration>,
    pub min_attempt_time: Duration,
    pub max_retry_after: Option<Duration>,
    /// (ratio, min_per_second), fresh for each front.
    pub budget: Option<(f64, u32)>,
    pub hints: bool,
}

pub fn cfg(script: Vec<(Duration, Result<u32, ApiError>)>) -> Cfg {
    Cfg {
        script,
        backoff: constant(ms(10), 4),
        deadline: None,
        min_attempt_time: Duration::ZERO,
        max_retry_after: None,
        budget: None,
        hints: true,
    }
}

/// What a front returned, in one vocabulary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    Ok(u32),
    Err(ApiError),
    /// The retry future's `DeadlineExceeded` carrying the last error.
    DeadlineErr(ApiError),
    /// The retry future's `DeadlineExceeded` without an error, with the attempts started.
    DeadlineNoError(u32),
    /// Anything else (a policy rejection, a timeout), as text.
    Other(String),
}

/// (attempt start offsets, when the call returned, what it returned)
pub type Run = (Vec<Duration>, Duration, Seen);

pub fn budget_of<R: Runtime>(rt: &R, spec: Option<(f64, u32)>) -> Option<RetryBudget> {
    spec.map(|(ratio, floor)| {
        let policy = RetryBudgetPolicy::builder()
            .ratio(ratio)
            .min_per_second(floor)
            .build()
            .unwrap();
        RetryBudget::new(policy, rt.now())
    })
}

/// The hint of a failed result when the scenario honours hints: an error's `retry_after`.
fn hinted(hints: bool, result: Result<&u32, &ApiError>) -> Option<Duration> {
    if hints {
        result.err()?.retry_after()
    } else {
        None
    }
}

pub async fn via_retry_future<R: Runtime>(rt: &Clocked<R>, c: &Cfg) -> Run {
    let op = Scripted::with_latency(rt.clone(), c.script.clone());
    let hints = c.hints;
    let start = rt.now();
    let mut retry = (|| op.call())
        .retry_on(rt, c.backoff)
        .classify(classify)
        .retry_after_with(move |r: Result<&u32, &ApiError>| hinted(hints, r))
        .min_attempt_time(c.min_attempt_time)
        .seed(7);
    if let Some(d) = c.deadline {
        retry = retry.deadline(Deadline::after(rt, d));
    }
    if let Some(cap) = c.max_retry_after {
        retry = retry.max_retry_after(cap);
    }
    if let Some(b) = budget_of(rt, c.budget) {
        retry = retry.budget(b);
    }
    let seen = match retry.await {
        Ok(v) => Seen::Ok(v),
        Err(RetryError::Inner(e)) => Seen::Err(e),
        Err(RetryError::DeadlineExceeded {
            last_error: Some(e),
            ..
        }) => Seen::DeadlineErr(e),
        Err(RetryError::DeadlineExceeded {
            last_error: None,
            attempts,
        }) => Seen::DeadlineNoError(attempts),
        Err(other) => Seen::Other(format!("{other:?}")),
    };
    (op.start_offsets(), rt.now() - start, seen)
}

pub async fn via_pipeline<R: Runtime>(rt: &Clocked<R>, c: &Cfg) -> Run {
    let op = Scripted::with_latency(rt.clone(), c.script.clone());
    let hints = c.hints;
    let mut builder = Pipeline::builder()
        .runtime(rt.clone())
        .retry(c.backoff)
        .classify(classify)
        .retry_after_with(move |r: Result<&u32, &ApiError>| hinted(hints, r))
        .min_attempt_time(c.min_attempt_time)
        .seed(7);
    if let Some(cap) = c.max_retry_after {
        builder = builder.max_retry_after(cap);
    }
    if let Some(b) = budget_of(rt, c.budget) {
        builder = builder.retry_budget(b);
    }
    let pipeline = builder.build().unwrap();
    let start = rt.now();
    let deadline = c
        .deadline
        .map_or_else(Deadline::none, |d| Deadline::after(rt, d));
    let result = pipeline.call_before(deadline, || op.call()).await;
    let seen = match result {
        Ok(v) => Seen::Ok(v),
        Err(Error::Inner(e)) => Seen::Err(e),
        Err(other) => Seen::Other(format!("{other:?}")),
    };
    (op.start_offsets(), rt.now() - start, seen)
}

pub fn scripted_service<R: Runtime>(
    op: &Scripted<Clocked<R>, u32, ApiError>,
) -> impl Service<(), Response = u32, Error = ApiError, Future: Send + 'static> + Clone + Send + 'static
{
    let op = op.clone();
    tower::service_fn(move |(): ()| {
        let op = op.clone();
        async move { op.call().await }
    })
}

pub async fn via_tower<R: Runtime>(rt: &Clocked<R>, c: &Cfg) -> Run {
    let op = Scripted::with_latency(rt.clone(), c.script.clone());
    let hints = c.hints;
    let mut layer = RetryLayer::new(c.backoff)
        .runtime(rt.clone())
        .classify(classify)
        .retry_after_with(move |r: Result<&u32, &ApiError>| hinted(hints, r))
        .min_attempt_time(c.min_attempt_time)
        .seed(7);
    if let Some(d) = c.deadline {
        layer = layer.deadline(d);
    }
    if let Some(cap) = c.max_retry_after {
        layer = layer.max_retry_after(cap);
    }
    if let Some(b) = budget_of(rt, c.budget) {
        layer = layer.budget(b);
    }
    let service = layer.layer(scripted_service(&op));
    let start = rt.now();
    let seen = match service.oneshot(()).await {
        Ok(v) => Seen::Ok(v),
        Err(e) => Seen::Err(e),
    };
    (op.start_offsets(), rt.now() - start, seen)
}

/// The pipeline as a tower layer: the service's error is the typed `Error<ApiError>`, its own
/// errors `Error::Inner`, and the deadline the pipeline's own (from the call's start, as
/// `Deadline::after` at the start is for the pipeline front). The builder refuses a deadline
/// past `u64` nanoseconds (`DurationOverflow`), where `Deadline::after` saturates to "never":
/// such a deadline is given as none.
pub async fn via_tower_pipeline<R: Runtime>(rt: &Clocked<R>, c: &Cfg) -> Run {
    let op = Scripted::with_latency(rt.clone(), c.script.clone());
    let hints = c.hints;
    let mut builder = Pipeline::builder().runtime(rt.clone());
    let representable = |d: &Duration| u64::try_from(d.as_nanos()).is_ok();
    if let Some(d) = c.deadline.filter(representable) {
        builder = builder.deadline(d);
    }
    let mut builder = builder
        .retry(c.backoff)
        .classify(classify_typed)
        .retry_after_with(move |r: Result<&u32, &Error<ApiError>>| match r {
            Ok(v) => hinted(hints, Ok(v)),
            Err(e) => hinted(hints, Err(e.inner()?)),
        })
        .min_attempt_time(c.min_attempt_time)
        .seed(7);
    if let Some(cap) = c.max_retry_after {
        builder = builder.max_retry_after(cap);
    }
    if let Some(b) = budget_of(rt, c.budget) {
        builder = builder.retry_budget(b);
    }
    let layer = PipelineLayer::new(builder.build().unwrap());
    let service = layer.layer(scripted_service(&op).map_err(Error::Inner));
    let start = rt.now();
    let seen = match service.oneshot(()).await {
        Ok(v) => Seen::Ok(v),
        Err(Error::Inner(e)) => Seen::Err(e),
        Err(other) => Seen::Other(format!("{other:?}")),
    };
    (op.start_offsets(), rt.now() - start, seen)
}

pub async fn all_fronts<R: Runtime>(rt: &Clocked<R>, c: &Cfg) -> [(&'static str, Run); 4] {
    [
        ("retry future", via_retry_future(rt, c).await),
        ("pipeline", via_pipeline(rt, c).await),
        ("tower RetryLayer", via_tower(rt, c).await),
        ("tower PipelineLayer", via_tower_pipeline(rt, c).await),
    ]
}

/// A breaker that opens after `failures` in a row and closes after `probes` successes.
pub fn breaker<R: Runtime>(
    rt: &Clocked<R>,
    failures: u32,
    probes: u32,
) -> CircuitBreaker<Clocked<R>> {
    CircuitBreaker::builder()
        .runtime(rt.clone())
        .consecutive_failures(failures)
        .break_duration(secs(1))
        .half_open_probes(probes)
        .build()
        .unwrap()
}

pub async fn trip<R: Runtime>(b: &CircuitBreaker<Clocked<R>>, rt: &Clocked<R>) {
    while b.state() != State::Open {
        let _ = b.call(|| async { Err::<(), _>(ApiError::Busy) }).await;
    }
    rt.clock().advance(secs(1));
}
