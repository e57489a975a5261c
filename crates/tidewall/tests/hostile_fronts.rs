//! Adversarial black-box tests of the unified retry engine and the outcome classifier, written
//! from the public documentation only. Every test name is the behaviour sentence it checks;
//! every assertion message quotes (or paraphrases) the doc sentence that promises it.
//!
//! Virtual time only (`Clocked` through `common`), seeded randomness (xorshift), no real sleeps.

mod common;

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
use tidewall::tower::{BreakerLayer, HedgeLayer, RetryLayer};
use tidewall::{Backoff, ConfigError, Deadline, Error, Jitter, Rejected, RetryAfter, RetryExt};
use tower::ServiceExt as _;
use tower_layer::Layer;
use tower_service::Service;

// ---------------------------------------------------------------------------------------------
// Shared vocabulary
// ---------------------------------------------------------------------------------------------

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

const DAY: Duration = Duration::from_secs(86_400);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ApiError {
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
const PENDING: u32 = 0;
/// An `Ok` value that means "the server answered with a permanent failure".
const GONE: u32 = 410;
/// An `Ok` value the classifier ignores.
const SHRUG: u32 = 999;

/// The one classifier every policy is given.
fn classify(result: Result<&u32, &ApiError>) -> Verdict {
    match result {
        Ok(&PENDING) | Err(ApiError::Busy | ApiError::Throttled(_)) => Verdict::RetryableFailure,
        Ok(&GONE) | Err(ApiError::Invalid) => Verdict::Failure,
        Ok(&SHRUG) | Err(ApiError::Cancelled) => Verdict::Ignored,
        Ok(_) | Err(ApiError::AlreadyDone) => Verdict::Success,
    }
}

fn constant(delay: Duration, attempts: u32) -> Backoff {
    Backoff::constant(delay)
        .jitter(Jitter::None)
        .max_attempts(attempts)
        .build()
        .unwrap()
}

fn exponential(first: Duration, attempts: u32) -> Backoff {
    Backoff::exponential(first)
        .jitter(Jitter::None)
        .max_attempts(attempts)
        .build()
        .unwrap()
}

fn instant(result: Result<u32, ApiError>) -> (Duration, Result<u32, ApiError>) {
    (Duration::ZERO, result)
}

/// A tiny seeded xorshift64.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Polls `fut` once with a no-op waker.
fn poll_once<F: Future + ?Sized>(fut: std::pin::Pin<&mut F>) -> Poll<F::Output> {
    let mut cx = Context::from_waker(Waker::noop());
    fut.poll(&mut cx)
}

// ---------------------------------------------------------------------------------------------
// The three retry fronts, driven with one configuration
// ---------------------------------------------------------------------------------------------

#[derive(Clone)]
struct Cfg {
    script: Vec<(Duration, Result<u32, ApiError>)>,
    backoff: Backoff,
    deadline: Option<Duration>,
    min_attempt_time: Duration,
    max_retry_after: Option<Duration>,
    /// (ratio, min_per_second), fresh for each front.
    budget: Option<(f64, u32)>,
    hints: bool,
}

fn cfg(script: Vec<(Duration, Result<u32, ApiError>)>) -> Cfg {
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
enum Seen {
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
type Run = (Vec<Duration>, Duration, Seen);

fn budget_of<R: Runtime>(rt: &R, spec: Option<(f64, u32)>) -> Option<RetryBudget> {
    spec.map(|(ratio, floor)| {
        let policy = RetryBudgetPolicy::builder()
            .ratio(ratio)
            .min_per_second(floor)
            .build()
            .unwrap();
        RetryBudget::new(policy, rt.now())
    })
}

async fn via_retry_future<R: Runtime>(rt: &Clocked<R>, c: &Cfg) -> Run {
    let op = Scripted::with_latency(rt.clone(), c.script.clone());
    let hints = c.hints;
    let start = rt.now();
    let mut retry = (|| op.call())
        .retry_on(rt.clone(), c.backoff)
        .classify(classify)
        .retry_after_with(move |e: &ApiError| if hints { e.retry_after() } else { None })
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

async fn via_pipeline<R: Runtime>(rt: &Clocked<R>, c: &Cfg) -> Run {
    let op = Scripted::with_latency(rt.clone(), c.script.clone());
    let mut builder = Pipeline::builder_on(rt.clone())
        .retry(c.backoff)
        .classify(classify)
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
    let result = if c.hints {
        pipeline.call_with_hints(deadline, || op.call()).await
    } else {
        pipeline.call_before(deadline, || op.call()).await
    };
    let seen = match result {
        Ok(v) => Seen::Ok(v),
        Err(Error::Inner(e)) => Seen::Err(e),
        Err(other) => Seen::Other(format!("{other:?}")),
    };
    (op.start_offsets(), rt.now() - start, seen)
}

fn scripted_service<R: Runtime>(
    op: &Scripted<Clocked<R>, u32, ApiError>,
) -> impl Service<(), Response = u32, Error = ApiError, Future: Send + 'static> + Clone + Send + 'static
{
    let op = op.clone();
    tower::service_fn(move |(): ()| {
        let op = op.clone();
        async move { op.call().await }
    })
}

async fn via_tower<R: Runtime>(rt: &Clocked<R>, c: &Cfg) -> Run {
    let op = Scripted::with_latency(rt.clone(), c.script.clone());
    let hints = c.hints;
    let mut layer = RetryLayer::new(c.backoff)
        .runtime(rt.clone())
        .classify(classify)
        .retry_after_with(move |e: &ApiError| if hints { e.retry_after() } else { None })
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

async fn all_fronts<R: Runtime>(rt: &Clocked<R>, c: &Cfg) -> [(&'static str, Run); 3] {
    [
        ("retry future", via_retry_future(rt, c).await),
        ("pipeline", via_pipeline(rt, c).await),
        ("tower RetryLayer", via_tower(rt, c).await),
    ]
}

// ---------------------------------------------------------------------------------------------
// A result is never thrown away
// ---------------------------------------------------------------------------------------------

/// classify.rs: "A result is never thrown away: an `Ok` value judged a failure is still returned
/// as `Ok` when no retry follows it". retry/mod.rs: "`Ok(value)` ... when the last attempt's
/// `Ok` value was marked retryable but no retry is left (a value is never thrown away)".
async fn ok_judged_retryable_survives_a_deadline<R: Runtime>(rt: Clocked<R>) {
    let c = Cfg {
        backoff: constant(ms(100), 10),
        deadline: Some(ms(150)),
        ..cfg(vec![instant(Ok(PENDING))])
    };
    for (front, (starts, ends, seen)) in all_fronts(&rt, &c).await {
        assert_eq!(starts, vec![ms(0), ms(100)], "{front}: attempts");
        assert_eq!(ends, ms(100), "{front}: no sleep ends past the deadline");
        assert_eq!(
            seen,
            Seen::Ok(PENDING),
            "{front}: the Ok value must not be lost"
        );
    }
}

#[test]
fn an_ok_judged_retryable_is_returned_as_ok_when_the_deadline_stops_the_retries() {
    on_every_runtime!(ok_judged_retryable_survives_a_deadline);
}

async fn ok_judged_retryable_survives_a_spent_budget<R: Runtime>(rt: Clocked<R>) {
    let c = Cfg {
        budget: Some((0.0, 0)),
        ..cfg(vec![instant(Ok(PENDING))])
    };
    for (front, (starts, ends, seen)) in all_fronts(&rt, &c).await {
        assert_eq!(
            starts,
            vec![ms(0)],
            "{front}: a ratio-0 budget grants no retry"
        );
        assert_eq!(ends, ms(0), "{front}");
        assert_eq!(
            seen,
            Seen::Ok(PENDING),
            "{front}: the Ok value must not be lost"
        );
    }
}

#[test]
fn an_ok_judged_retryable_is_returned_as_ok_when_the_budget_is_spent() {
    on_every_runtime!(ok_judged_retryable_survives_a_spent_budget);
}

async fn ok_judged_retryable_with_one_attempt<R: Runtime>(rt: Clocked<R>) {
    let c = Cfg {
        backoff: constant(ms(10), 1),
        ..cfg(vec![instant(Ok(PENDING))])
    };
    for (front, (starts, _, seen)) in all_fronts(&rt, &c).await {
        assert_eq!(
            starts,
            vec![ms(0)],
            "{front}: max_attempts(1) is one attempt"
        );
        assert_eq!(seen, Seen::Ok(PENDING), "{front}");
    }
}

#[test]
fn an_ok_judged_retryable_is_returned_as_ok_with_max_attempts_one() {
    on_every_runtime!(ok_judged_retryable_with_one_attempt);
}

/// classify.rs: "an `Err` judged a success is returned as `Err`", and a success is not retried.
async fn err_judged_success<R: Runtime>(rt: Clocked<R>) {
    let c = cfg(vec![instant(Err(ApiError::AlreadyDone)), instant(Ok(1))]);
    for (front, (starts, _, seen)) in all_fronts(&rt, &c).await {
        assert_eq!(starts, vec![ms(0)], "{front}: a success is not retried");
        assert_eq!(seen, Seen::Err(ApiError::AlreadyDone), "{front}");
    }
}

#[test]
fn an_err_judged_a_success_is_returned_as_err_and_not_retried() {
    on_every_runtime!(err_judged_success);
}

/// classify.rs table: Failure / Ignored → "returns the result at once".
async fn ok_judged_failure_or_ignored<R: Runtime>(rt: Clocked<R>) {
    for value in [GONE, SHRUG] {
        let c = cfg(vec![instant(Ok(value)), instant(Ok(1))]);
        for (front, (starts, _, seen)) in all_fronts(&rt, &c).await {
            assert_eq!(starts, vec![ms(0)], "{front}: {value} returns at once");
            assert_eq!(
                seen,
                Seen::Ok(value),
                "{front}: an Ok judged {value} stays Ok"
            );
        }
    }
}

#[test]
fn an_ok_judged_a_failure_or_ignored_is_returned_as_ok_at_once() {
    on_every_runtime!(ok_judged_failure_or_ignored);
}

/// RetryError::DeadlineExceeded: "The last error seen before the deadline (`None` if no attempt
/// had failed with an error: none had finished, or the last one timed out)." retry/mod.rs: "a
/// running attempt is cut off when the deadline arrives."
async fn cut_off_attempt_keeps_last_error<R: Runtime>(rt: Clocked<R>) {
    let c = Cfg {
        deadline: Some(secs(1)),
        ..cfg(vec![
            instant(Err(ApiError::Busy)),
            (Duration::from_secs(3600), Ok(1)),
        ])
    };
    let (starts, ends, seen) = via_retry_future(&rt, &c).await;
    assert_eq!(starts, vec![ms(0), ms(10)]);
    assert_eq!(
        ends,
        secs(1),
        "the running attempt is cut off at the deadline"
    );
    assert_eq!(seen, Seen::DeadlineErr(ApiError::Busy));
}

#[test]
fn a_running_attempt_cut_off_by_the_deadline_reports_the_last_error_seen() {
    on_every_runtime!(cut_off_attempt_keeps_last_error);
}

/// The same with an `Ok` judged retryable before the cut-off attempt: "A result is never thrown
/// away". (Reading: the earlier `Ok` is the last result seen; dropping it for an error without a
/// value would throw it away.)
async fn cut_off_attempt_keeps_last_value<R: Runtime>(rt: Clocked<R>) {
    let c = Cfg {
        deadline: Some(secs(1)),
        ..cfg(vec![
            instant(Ok(PENDING)),
            (Duration::from_secs(3600), Ok(1)),
        ])
    };
    let (starts, ends, seen) = via_retry_future(&rt, &c).await;
    assert_eq!(starts, vec![ms(0), ms(10)]);
    assert_eq!(ends, secs(1));
    assert_eq!(
        seen,
        Seen::Ok(PENDING),
        "the retryable Ok value must not be lost"
    );
}

#[test]
fn a_retryable_ok_before_an_attempt_cut_off_by_the_deadline_is_not_lost() {
    on_every_runtime!(cut_off_attempt_keeps_last_value);
}

// ---------------------------------------------------------------------------------------------
// Extreme deadlines and minimum attempt times
// ---------------------------------------------------------------------------------------------

/// Retry::min_attempt_time: "Starts an attempt only if more than `budget` remains before the
/// deadline". Pipeline: "Starts an attempt (or a retry's sleep) only if this much time would be
/// left for it." RetryLayer::deadline: "The first attempt always starts".
async fn min_attempt_time_beyond_deadline<R: Runtime>(rt: Clocked<R>) {
    let c = Cfg {
        deadline: Some(ms(100)),
        min_attempt_time: secs(1),
        ..cfg(vec![instant(Err(ApiError::Busy))])
    };
    let (starts, ends, seen) = via_retry_future(&rt, &c).await;
    assert_eq!(
        starts,
        Vec::<Duration>::new(),
        "retry future: no attempt may start"
    );
    assert_eq!(ends, ms(0), "retry future: returns at once");
    assert_eq!(seen, Seen::DeadlineNoError(0), "retry future");

    let (starts, ends, seen) = via_pipeline(&rt, &c).await;
    assert_eq!(
        starts,
        Vec::<Duration>::new(),
        "pipeline: no attempt may start"
    );
    assert_eq!(ends, ms(0), "pipeline: returns at once");
    assert_eq!(
        seen,
        Seen::Other(format!(
            "{:?}",
            Error::<ApiError>::Rejected(Rejected::DeadlineExceeded)
        )),
        "pipeline"
    );

    let (starts, ends, seen) = via_tower(&rt, &c).await;
    assert_eq!(
        starts,
        vec![ms(0)],
        "tower: the first attempt always starts, no retry"
    );
    assert_eq!(ends, ms(0));
    assert_eq!(seen, Seen::Err(ApiError::Busy), "tower");
}

#[test]
fn min_attempt_time_longer_than_the_deadline_starts_no_attempt_except_towers_first() {
    on_every_runtime!(min_attempt_time_beyond_deadline);
}

/// A deadline of zero: "no attempt starts once it has passed" (retry future), and a pipeline
/// retry "that cannot start before it is not started". RetryLayer: "The first attempt always
/// starts". PipelineBuilder::build: "[`ConfigError::Zero`] for a zero deadline".
async fn zero_deadline<R: Runtime>(rt: Clocked<R>) {
    let c = Cfg {
        deadline: Some(Duration::ZERO),
        ..cfg(vec![instant(Err(ApiError::Busy)), instant(Ok(1))])
    };
    let (starts, _, seen) = via_retry_future(&rt, &c).await;
    assert_eq!(
        starts,
        Vec::<Duration>::new(),
        "retry future: the deadline has passed"
    );
    assert_eq!(seen, Seen::DeadlineNoError(0));

    let (starts, _, seen) = via_pipeline(&rt, &c).await;
    assert_eq!(
        starts,
        Vec::<Duration>::new(),
        "pipeline: the deadline has passed"
    );
    assert!(matches!(seen, Seen::Other(_)), "pipeline: {seen:?}");

    let (starts, _, seen) = via_tower(&rt, &c).await;
    assert_eq!(
        starts,
        vec![ms(0)],
        "tower: first attempt always starts, none after"
    );
    assert_eq!(seen, Seen::Err(ApiError::Busy));

    let built = Pipeline::builder_on(rt.clone())
        .deadline(Duration::ZERO)
        .build()
        .err();
    assert!(
        matches!(built, Some(ConfigError::Zero { .. })),
        "a zero pipeline deadline is refused: {built:?}"
    );
}

#[test]
fn a_zero_deadline_starts_nothing_but_towers_first_attempt_and_a_zero_pipeline_deadline_is_refused()
{
    on_every_runtime!(zero_deadline);
}

/// Deadline::after: "saturating far in the future instead of overflowing". A deadline of
/// `Duration::MAX` must behave as no deadline on every front (tower's `deadline(within)` has no
/// validation to refuse it, so it must not overflow either).
async fn max_deadline<R: Runtime>(rt: Clocked<R>) {
    let c = Cfg {
        deadline: Some(Duration::MAX),
        ..cfg(vec![
            instant(Err(ApiError::Busy)),
            instant(Err(ApiError::Busy)),
            instant(Ok(5)),
        ])
    };
    for (front, (starts, ends, seen)) in all_fronts(&rt, &c).await {
        assert_eq!(starts, vec![ms(0), ms(10), ms(20)], "{front}");
        assert_eq!(ends, ms(20), "{front}");
        assert_eq!(seen, Seen::Ok(5), "{front}");
    }
    let built = Pipeline::builder_on(rt.clone())
        .deadline(Duration::MAX)
        .build()
        .err();
    assert!(
        matches!(built, Some(ConfigError::DurationOverflow { .. })),
        "build: DurationOverflow for durations beyond u64 nanoseconds: {built:?}"
    );
}

#[test]
fn a_deadline_of_duration_max_is_the_same_as_no_deadline() {
    on_every_runtime!(max_deadline);
}

// ---------------------------------------------------------------------------------------------
// Extreme hints and hint caps
// ---------------------------------------------------------------------------------------------

/// A hint of `Duration::MAX` under a cap of `Duration::MAX`, with a deadline: "a backoff sleep
/// that would end past it is not slept at all, and the driver returns ... at once with the last
/// error attached".
async fn huge_hint_with_deadline<R: Runtime>(rt: Clocked<R>) {
    let c = Cfg {
        deadline: Some(Duration::from_secs(3600)),
        max_retry_after: Some(Duration::MAX),
        ..cfg(vec![
            instant(Err(ApiError::Throttled(Duration::MAX))),
            instant(Ok(1)),
        ])
    };
    let expected = [
        Seen::DeadlineErr(ApiError::Throttled(Duration::MAX)),
        Seen::Err(ApiError::Throttled(Duration::MAX)),
        Seen::Err(ApiError::Throttled(Duration::MAX)),
    ];
    for ((front, (starts, ends, seen)), expected) in
        all_fronts(&rt, &c).await.into_iter().zip(expected)
    {
        assert_eq!(starts, vec![ms(0)], "{front}");
        assert_eq!(ends, ms(0), "{front}: returns at once");
        assert_eq!(seen, expected, "{front}");
    }
}

#[test]
fn a_hint_of_duration_max_past_the_deadline_returns_at_once_on_every_front() {
    on_every_runtime!(huge_hint_with_deadline);
}

/// Without a deadline, the same hint is honoured: "the next delay is at least the hint, capped
/// at max_retry_after". After a virtual year the call must still be asleep, with one attempt made,
/// and nothing may panic on the instant arithmetic.
async fn huge_hint_without_deadline<R: Runtime>(rt: Clocked<R>) {
    let c = Cfg {
        max_retry_after: Some(Duration::MAX),
        ..cfg(vec![
            instant(Err(ApiError::Throttled(Duration::MAX))),
            instant(Ok(1)),
        ])
    };
    let year = 365 * DAY;
    for front in 0..3 {
        let fut: std::pin::Pin<Box<dyn Future<Output = Run> + '_>> = match front {
            0 => Box::pin(via_retry_future(&rt, &c)),
            1 => Box::pin(via_pipeline(&rt, &c)),
            _ => Box::pin(via_tower(&rt, &c)),
        };
        let sleep = rt.sleep(year);
        match futures_util::future::select(fut, pin!(sleep)).await {
            futures_util::future::Either::Left((run, _)) => {
                panic!("front {front}: a Duration::MAX hint was not honoured: {run:?}")
            }
            futures_util::future::Either::Right(((), _)) => {}
        }
    }
}

#[test]
fn a_hint_of_duration_max_without_a_deadline_sleeps_without_overflowing() {
    on_every_runtime!(huge_hint_without_deadline);
}

/// `max_retry_after(ZERO)`: "The largest hint honoured; a longer hint is cut to this" — so a
/// hint is cut to zero and the schedule's delay stands. A zero hint likewise leaves the
/// schedule's delay: "the next delay is at least the hint".
async fn zero_cap_and_zero_hint<R: Runtime>(rt: Clocked<R>) {
    let c = Cfg {
        max_retry_after: Some(Duration::ZERO),
        ..cfg(vec![
            instant(Err(ApiError::Throttled(Duration::from_secs(3600)))),
            instant(Ok(1)),
        ])
    };
    for (front, (starts, _, seen)) in all_fronts(&rt, &c).await {
        assert_eq!(
            starts,
            vec![ms(0), ms(10)],
            "{front}: cap 0 leaves the schedule"
        );
        assert_eq!(seen, Seen::Ok(1), "{front}");
    }
    let c = cfg(vec![
        instant(Err(ApiError::Throttled(Duration::ZERO))),
        instant(Ok(1)),
    ]);
    for (front, (starts, _, seen)) in all_fronts(&rt, &c).await {
        assert_eq!(
            starts,
            vec![ms(0), ms(10)],
            "{front}: a zero hint leaves the schedule"
        );
        assert_eq!(seen, Seen::Ok(1), "{front}");
    }
}

#[test]
fn a_zero_hint_cap_and_a_zero_hint_both_leave_the_schedules_delay() {
    on_every_runtime!(zero_cap_and_zero_hint);
}

/// Hints are ignored unless asked for: retry future "server hints | ignored until
/// honor_retry_after"; pipeline `call_before` honours only rejection hints.
async fn hints_off<R: Runtime>(rt: Clocked<R>) {
    let c = Cfg {
        hints: false,
        ..cfg(vec![
            instant(Err(ApiError::Throttled(secs(5)))),
            instant(Ok(1)),
        ])
    };
    for (front, (starts, _, seen)) in all_fronts(&rt, &c).await {
        assert_eq!(starts, vec![ms(0), ms(10)], "{front}: hints ignored");
        assert_eq!(seen, Seen::Ok(1), "{front}");
    }
}

#[test]
fn hints_are_ignored_unless_honoured_on_every_front() {
    on_every_runtime!(hints_off);
}

// ---------------------------------------------------------------------------------------------
// Budgets: ratio 0, huge ratios, concurrent callers
// ---------------------------------------------------------------------------------------------

/// Retry::budget: "when the budget is spent the last failure is returned as if the attempts had
/// run out" — `RetryError::Inner`, not a deadline error nor a rejection.
async fn spent_budget_returns_last_failure<R: Runtime>(rt: Clocked<R>) {
    let c = Cfg {
        budget: Some((0.0, 0)),
        ..cfg(vec![instant(Err(ApiError::Busy)), instant(Ok(1))])
    };
    for (front, (starts, _, seen)) in all_fronts(&rt, &c).await {
        assert_eq!(starts, vec![ms(0)], "{front}");
        assert_eq!(seen, Seen::Err(ApiError::Busy), "{front}");
    }
}

#[test]
fn a_spent_budget_returns_the_last_failure_as_if_the_attempts_had_run_out() {
    on_every_runtime!(spent_budget_returns_last_failure);
}

/// A huge ratio (1000 retries per call) leaves the schedule in charge.
async fn huge_ratio<R: Runtime>(rt: Clocked<R>) {
    let c = Cfg {
        budget: Some((1000.0, 0)),
        backoff: constant(ms(1), 50),
        ..cfg(vec![instant(Err(ApiError::Busy))])
    };
    for (front, (starts, _, seen)) in all_fronts(&rt, &c).await {
        assert_eq!(
            starts.len(),
            50,
            "{front}: the schedule, not the budget, ends it"
        );
        assert_eq!(seen, Seen::Err(ApiError::Busy), "{front}");
    }
}

#[test]
fn a_budget_with_a_huge_ratio_leaves_the_schedule_in_charge() {
    on_every_runtime!(huge_ratio);
}

/// budget.rs: retries add "at most `ratio` of the calls of the last `window`", and "concurrent
/// retries can never overdraw the budget". Sequential callers through each front: ratio 0.5, ten
/// always-failing calls get exactly five retries (floor of the exact credit).
async fn budget_shared_by_sequential_callers<R: Runtime>(rt: Clocked<R>) {
    for front in 0..3 {
        let budget = budget_of(&rt, Some((0.5, 0))).unwrap();
        let op = Scripted::new(rt.clone(), [Err::<u32, _>(ApiError::Busy)]);
        for _ in 0..10 {
            match front {
                0 => {
                    let r = (|| op.call())
                        .retry_on(rt.clone(), constant(ms(1), 10))
                        .classify(classify)
                        .budget(budget.clone())
                        .await;
                    assert_eq!(r, Err(RetryError::Inner(ApiError::Busy)));
                }
                1 => {
                    let p = Pipeline::builder_on(rt.clone())
                        .retry(constant(ms(1), 10))
                        .retry_budget(budget.clone())
                        .classify(classify)
                        .build()
                        .unwrap();
                    let r = p.call(|| op.call()).await;
                    assert_eq!(r, Err(Error::Inner(ApiError::Busy)));
                }
                _ => {
                    let s = RetryLayer::new(constant(ms(1), 10))
                        .runtime(rt.clone())
                        .classify(classify)
                        .budget(budget.clone())
                        .layer(scripted_service(&op));
                    assert_eq!(s.oneshot(()).await, Err(ApiError::Busy));
                }
            }
        }
        assert_eq!(
            op.calls(),
            15,
            "front {front}: 10 calls + exactly 5 retries"
        );
    }
}

#[test]
fn a_shared_budget_grants_exactly_its_ratio_of_retries_on_every_front() {
    on_every_runtime!(budget_shared_by_sequential_callers);
}

/// The same with forty concurrent callers mixed across the three fronts: never more than
/// `ratio × calls` retries in all.
async fn budget_shared_by_concurrent_callers<R: Runtime>(rt: Clocked<R>) {
    let budget = budget_of(&rt, Some((0.25, 0))).unwrap();
    let op = Scripted::with_latency(rt.clone(), [(ms(5), Err::<u32, _>(ApiError::Busy))]);
    let pipeline = Pipeline::builder_on(rt.clone())
        .retry(constant(ms(3), 6))
        .retry_budget(budget.clone())
        .classify(classify)
        .build()
        .unwrap();
    let service = RetryLayer::new(constant(ms(3), 6))
        .runtime(rt.clone())
        .classify(classify)
        .budget(budget.clone())
        .layer(scripted_service(&op));
    let mut calls: Vec<std::pin::Pin<Box<dyn Future<Output = ()> + '_>>> = Vec::new();
    for i in 0..40 {
        let (op, rt, budget, pipeline, service) =
            (&op, rt.clone(), budget.clone(), &pipeline, service.clone());
        calls.push(match i % 3 {
            0 => Box::pin(async move {
                let _ = (|| op.call())
                    .retry_on(rt, constant(ms(3), 6))
                    .classify(classify)
                    .budget(budget)
                    .await;
            }),
            1 => Box::pin(async move {
                let _ = pipeline.call(|| op.call()).await;
            }),
            _ => Box::pin(async move {
                let _ = service.oneshot(()).await;
            }),
        });
    }
    futures_util::future::join_all(calls).await;
    let retries = op.calls() - 40;
    assert!(
        retries <= 10,
        "40 calls at 25 % may retry at most 10 times, retried {retries}"
    );
}

#[test]
fn concurrent_callers_on_all_fronts_never_overdraw_a_shared_budget() {
    on_every_runtime!(budget_shared_by_concurrent_callers);
}

/// RetryBudget: "a budget built long before its first use, or idle for any time between uses,
/// counts exactly the calls and retries of its last window". 100 calls, then 100 idle days, then
/// 20 failing calls at 10 %: exactly 2 retries, on every front.
async fn budget_after_an_idle_gap<R: Runtime>(rt: Clocked<R>) {
    for front in 0..3 {
        let budget = budget_of(&rt, Some((0.1, 0))).unwrap();
        for _ in 0..100 {
            budget.deposit(rt.now());
        }
        rt.clock().advance(100 * DAY);
        let op = Scripted::new(rt.clone(), [Err::<u32, _>(ApiError::Busy)]);
        let service = RetryLayer::new(constant(ms(1), 5))
            .runtime(rt.clone())
            .classify(classify)
            .budget(budget.clone())
            .layer(scripted_service(&op));
        let pipeline = Pipeline::builder_on(rt.clone())
            .retry(constant(ms(1), 5))
            .retry_budget(budget.clone())
            .classify(classify)
            .build()
            .unwrap();
        for _ in 0..20 {
            match front {
                0 => {
                    let _ = (|| op.call())
                        .retry_on(rt.clone(), constant(ms(1), 5))
                        .classify(classify)
                        .budget(budget.clone())
                        .await;
                }
                1 => {
                    let _ = pipeline.call(|| op.call()).await;
                }
                _ => {
                    let _ = service.clone().oneshot(()).await;
                }
            }
        }
        assert_eq!(
            op.calls(),
            22,
            "front {front}: 20 calls and exactly 2 retries after the gap"
        );
    }
}

#[test]
fn a_budget_idle_for_a_hundred_days_counts_only_its_last_window_on_every_front() {
    on_every_runtime!(budget_after_an_idle_gap);
}

// ---------------------------------------------------------------------------------------------
// Boundary: exactly `min_attempt_time` left
// ---------------------------------------------------------------------------------------------

/// One engine decides for every front ("so the fronts cannot drift"): with exactly
/// `min_attempt_time` left at the retry instant, all three fronts must agree. (The docs say both
/// "only if more than `budget` remains" and "with less than min_attempt_time left" no attempt
/// starts; they disagree on the boundary, so only agreement is asserted here.)
async fn boundary_agreement<R: Runtime>(rt: Clocked<R>) {
    let c = Cfg {
        backoff: constant(ms(60), 5),
        deadline: Some(ms(100)),
        min_attempt_time: ms(40),
        ..cfg(vec![instant(Err(ApiError::Busy)), instant(Ok(1))])
    };
    let [(_, a), (_, b), (_, t)] = all_fronts(&rt, &c).await;
    let norm = |s: &Seen| match s {
        Seen::DeadlineErr(e) => Seen::Err(*e),
        other => other.clone(),
    };
    assert_eq!(a.0, b.0, "retry future vs pipeline: attempt starts");
    assert_eq!(a.0, t.0, "retry future vs tower: attempt starts");
    assert_eq!(norm(&a.2), norm(&b.2), "retry future vs pipeline: result");
    assert_eq!(norm(&a.2), norm(&t.2), "retry future vs tower: result");
}

#[test]
fn every_front_agrees_when_exactly_min_attempt_time_is_left() {
    on_every_runtime!(boundary_agreement);
}

// ---------------------------------------------------------------------------------------------
// Notify
// ---------------------------------------------------------------------------------------------

/// RetryEvent: "delay: The sleep before the next attempt (after jitter, cap and hints)";
/// "hint: The hint the error carried, if any (before capping)"; "Outcome::Value: An `Ok` value
/// judged a retryable failure"; Notify: "Called once per retry, before the backoff sleep".
async fn notify_contract<R: Runtime>(rt: Clocked<R>) {
    type Seen = (u32, String, Duration, Option<Duration>);
    let events: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let op = Scripted::new(
        rt.clone(),
        [
            Err(ApiError::Throttled(Duration::from_secs(3600))),
            Ok(PENDING),
            Err(ApiError::Busy),
            Ok(7),
        ],
    );
    let seen = events.clone();
    let result = (|| op.call())
        .retry_on(rt.clone(), constant(ms(10), 10))
        .classify(classify)
        .honor_retry_after()
        .max_retry_after(ms(100))
        .notify(move |e: &RetryEvent<'_, u32, ApiError>| {
            let what = match e.outcome {
                Outcome::Error(err) => format!("err {err:?}"),
                Outcome::Value(v) => format!("value {v}"),
                Outcome::TimedOut => "timed out".to_owned(),
                _ => "other".to_owned(),
            };
            seen.lock()
                .unwrap()
                .push((e.attempt, what, e.delay, e.hint));
        })
        .await;
    assert_eq!(result, Ok(7));
    assert_eq!(
        *events.lock().unwrap(),
        vec![
            (
                1,
                "err Throttled(3600s)".to_owned(),
                ms(100),
                Some(secs(3600))
            ),
            (2, "value 0".to_owned(), ms(10), None),
            (3, "err Busy".to_owned(), ms(10), None),
        ]
    );
    assert_eq!(op.start_offsets(), vec![ms(0), ms(100), ms(110), ms(120)]);

    // No retry follows (deadline, budget, Failure verdict, exhausted schedule): no event.
    events.lock().unwrap().clear();
    let op = Scripted::new(rt.clone(), [Err::<u32, _>(ApiError::Busy)]);
    let seen = events.clone();
    let result = (|| op.call())
        .retry_on(rt.clone(), constant(ms(50), 10))
        .classify(classify)
        .deadline(Deadline::after(&rt, ms(40)))
        .notify(move |e: &RetryEvent<'_, u32, ApiError>| {
            seen.lock()
                .unwrap()
                .push((e.attempt, String::new(), e.delay, e.hint));
        })
        .await;
    assert_eq!(
        result,
        Err(RetryError::DeadlineExceeded {
            last_error: Some(ApiError::Busy),
            attempts: 1
        })
    );
    assert!(events.lock().unwrap().is_empty(), "no retry, so no notify");
}

#[test]
fn notify_sees_capped_delays_uncapped_hints_and_only_retries_that_happen() {
    on_every_runtime!(notify_contract);
}

/// Retry::attempt_timeout: "a timed-out attempt counts as a retryable failure" — even under a
/// classifier that would call every result a `Failure`. RetryError::AttemptTimedOut: "The last
/// attempt exceeded the per-attempt timeout and no retry was left."
async fn attempt_timeout_is_retryable<R: Runtime>(rt: Clocked<R>) {
    let op = Scripted::with_latency(rt.clone(), [(secs(10), Ok::<u32, ApiError>(1))]);
    let notified = Arc::new(AtomicU32::new(0));
    let n = notified.clone();
    let result = (|| op.call())
        .retry_on(rt.clone(), constant(ms(10), 3))
        .classify(|_: Result<&u32, &ApiError>| Verdict::Failure)
        .attempt_timeout(ms(100))
        .notify(move |e: &RetryEvent<'_, u32, ApiError>| {
            assert!(matches!(e.outcome, Outcome::TimedOut));
            n.fetch_add(1, Ordering::Relaxed);
        })
        .await;
    assert_eq!(result, Err(RetryError::AttemptTimedOut));
    assert_eq!(op.start_offsets(), vec![ms(0), ms(110), ms(220)]);
    assert_eq!(notified.load(Ordering::Relaxed), 2);

    // Pipeline: "a timed-out attempt counts as a breaker failure and is retryable";
    // "[`Error::TimedOut`] for a last attempt that timed out".
    let op = Scripted::with_latency(rt.clone(), [(secs(10), Ok::<u32, ApiError>(1))]);
    let pipeline = Pipeline::builder_on(rt.clone())
        .retry(constant(ms(10), 3))
        .attempt_timeout(ms(100))
        .classify(|_: Result<&u32, &ApiError>| Verdict::Failure)
        .build()
        .unwrap();
    let result = pipeline.call(|| op.call()).await;
    assert_eq!(result, Err(Error::TimedOut));
    assert_eq!(op.start_offsets(), vec![ms(0), ms(110), ms(220)]);
}

#[test]
fn a_timed_out_attempt_is_retryable_whatever_the_classifier_says() {
    on_every_runtime!(attempt_timeout_is_retryable);
}

// ---------------------------------------------------------------------------------------------
// Circuit breaker: one classifier, three fronts
// ---------------------------------------------------------------------------------------------

fn breaker<R: Runtime>(rt: &Clocked<R>, failures: u32, probes: u32) -> CircuitBreaker<Clocked<R>> {
    CircuitBreaker::builder()
        .runtime(rt.clone())
        .consecutive_failures(failures)
        .break_duration(secs(1))
        .half_open_probes(probes)
        .build()
        .unwrap()
}

async fn trip<R: Runtime>(b: &CircuitBreaker<Clocked<R>>, rt: &Clocked<R>) {
    while b.state() != State::Open {
        let _ = b.call(|| async { Err::<(), _>(ApiError::Busy) }).await;
    }
    rt.clock().advance(secs(1));
}

/// Outcome::Ignored: "An ignored probe gives its half-open slot back." BreakerLayer: "an
/// Ignored result records nothing". call_classified: "an ignored result records nothing".
async fn ignored_probe_direct<R: Runtime>(rt: Clocked<R>) {
    let b = breaker(&rt, 1, 1);
    trip(&b, &rt).await;
    let r = b
        .call_classified(|| async { Ok::<u32, ApiError>(SHRUG) }, classify)
        .await;
    assert_eq!(r, Ok(SHRUG), "an ignored result is returned");
    assert_eq!(b.state(), State::HalfOpen, "an ignored probe moves nothing");
    let r = b
        .call_classified(|| async { Err::<u32, _>(ApiError::Cancelled) }, classify)
        .await;
    assert_eq!(
        r,
        Err(Error::Inner(ApiError::Cancelled)),
        "the slot came back: admitted"
    );
    assert_eq!(b.state(), State::HalfOpen);
    let r = b
        .call_classified(|| async { Ok::<u32, ApiError>(1) }, classify)
        .await;
    assert_eq!(r, Ok(1));
    assert_eq!(b.state(), State::Closed, "one probe success closes it");
}

#[test]
fn an_ignored_half_open_probe_gives_its_slot_back_through_call_classified() {
    on_every_runtime!(ignored_probe_direct);
}

async fn ignored_probe_pipeline<R: Runtime>(rt: Clocked<R>) {
    let b = breaker(&rt, 1, 1);
    let pipeline = Pipeline::builder_on(rt.clone())
        .retry(constant(ms(10), 3))
        .breaker(b.clone())
        .classify(classify)
        .build()
        .unwrap();
    trip(&b, &rt).await;
    let op = Scripted::new(rt.clone(), [Ok::<u32, ApiError>(SHRUG), Ok(1)]);
    assert_eq!(pipeline.call(|| op.call()).await, Ok(SHRUG));
    assert_eq!(op.calls(), 1, "an ignored result is not retried");
    assert_eq!(b.state(), State::HalfOpen, "an ignored probe moves nothing");
    assert_eq!(
        pipeline.call(|| op.call()).await,
        Ok(1),
        "the probe slot came back"
    );
    assert_eq!(b.state(), State::Closed);
}

#[test]
fn an_ignored_half_open_probe_gives_its_slot_back_through_the_pipeline() {
    on_every_runtime!(ignored_probe_pipeline);
}

async fn ignored_probe_tower<R: Runtime>(rt: Clocked<R>) {
    let b = breaker(&rt, 1, 1);
    let op = Scripted::new(
        rt.clone(),
        [Err::<u32, ApiError>(ApiError::Cancelled), Ok(1)],
    );
    let service = BreakerLayer::new(b.clone())
        .classify(classify)
        .layer(scripted_service(&op));
    trip(&b, &rt).await;
    assert_eq!(
        service.clone().oneshot(()).await,
        Err(Error::Inner(ApiError::Cancelled))
    );
    assert_eq!(b.state(), State::HalfOpen, "an ignored probe moves nothing");
    assert_eq!(
        service.clone().oneshot(()).await,
        Ok(1),
        "the probe slot came back"
    );
    assert_eq!(b.state(), State::Closed);
}

#[test]
fn an_ignored_half_open_probe_gives_its_slot_back_through_the_breaker_layer() {
    on_every_runtime!(ignored_probe_tower);
}

/// The classify table: RetryableFailure and Failure count as breaker failures, Success as a
/// success, whatever Ok/Err says; the result itself is returned unchanged.
async fn breaker_counts_the_verdict<R: Runtime>(rt: Clocked<R>) {
    // Direct.
    let b = breaker(&rt, 2, 1);
    let r = b
        .call_classified(|| async { Ok::<u32, ApiError>(PENDING) }, classify)
        .await;
    assert_eq!(r, Ok(PENDING));
    let r = b
        .call_classified(|| async { Err::<u32, _>(ApiError::AlreadyDone) }, classify)
        .await;
    assert_eq!(r, Err(Error::Inner(ApiError::AlreadyDone)));
    let r = b
        .call_classified(|| async { Ok::<u32, ApiError>(GONE) }, classify)
        .await;
    assert_eq!(r, Ok(GONE));
    assert_eq!(
        b.state(),
        State::Closed,
        "an Err judged a success broke the run of failures"
    );
    let _ = b
        .call_classified(|| async { Ok::<u32, ApiError>(PENDING) }, classify)
        .await;
    assert_eq!(
        b.state(),
        State::Open,
        "two Ok values judged failures in a row open it"
    );

    // Tower.
    let b = breaker(&rt, 2, 1);
    let op = Scripted::new(rt.clone(), [Ok::<u32, ApiError>(GONE), Ok(PENDING), Ok(1)]);
    let service = BreakerLayer::new(b.clone())
        .classify(classify)
        .layer(scripted_service(&op));
    assert_eq!(service.clone().oneshot(()).await, Ok(GONE));
    assert_eq!(service.clone().oneshot(()).await, Ok(PENDING));
    assert_eq!(
        b.state(),
        State::Open,
        "tower: Ok values judged failures open it"
    );
    assert!(matches!(
        service.clone().oneshot(()).await,
        Err(Error::Rejected(Rejected::CircuitOpen { .. }))
    ));
    assert_eq!(op.calls(), 2, "an open breaker does not call the service");

    // Pipeline without retry: each Ok judged a failure counts, and is returned as Ok.
    let b = breaker(&rt, 2, 1);
    let pipeline = Pipeline::builder_on(rt.clone())
        .breaker(b.clone())
        .classify(classify)
        .build()
        .unwrap();
    assert_eq!(
        pipeline.call(|| async { Ok::<u32, ApiError>(GONE) }).await,
        Ok(GONE)
    );
    assert_eq!(
        pipeline
            .call(|| async { Ok::<u32, ApiError>(PENDING) })
            .await,
        Ok(PENDING)
    );
    assert_eq!(
        b.state(),
        State::Open,
        "pipeline: Ok values judged failures open it"
    );
}

#[test]
fn every_breaker_front_counts_the_classifiers_verdict_and_returns_the_result_unchanged() {
    on_every_runtime!(breaker_counts_the_verdict);
}

/// Pipeline: retries "`CircuitOpen` rejections, sleeping at least the rejection's
/// `retry_after`". A pipeline whose retries open its own breaker waits out the break, probes,
/// and returns the probe's value; an `Ok` judged retryable is still returned when the retries end.
async fn pipeline_waits_out_its_breaker<R: Runtime>(rt: Clocked<R>) {
    let b = breaker(&rt, 2, 1);
    let pipeline = Pipeline::builder_on(rt.clone())
        .retry(constant(ms(10), 4))
        .breaker(b.clone())
        .classify(classify)
        .build()
        .unwrap();
    let op = Scripted::new(
        rt.clone(),
        [Ok::<u32, ApiError>(PENDING), Ok(PENDING), Ok(5)],
    );
    let start = rt.now();
    assert_eq!(pipeline.call(|| op.call()).await, Ok(5));
    // 0: PENDING, 10: PENDING (opens at 10 for 1 s), 20: CircuitOpen (hint 990 ms) → 1010 probe.
    assert_eq!(op.start_offsets(), vec![ms(0), ms(10), ms(1010)]);
    assert_eq!(rt.now() - start, ms(1010));
    assert_eq!(b.state(), State::Closed);

    // Retries that run out on rejections keep the last *value*, never lost for a rejection?
    // The docs: "Error::Rejected when a stage refused (and retries ... ran out)". Only check that
    // the operation is never called while the breaker is open.
    let b = breaker(&rt, 1, 1);
    let pipeline = Pipeline::builder_on(rt.clone())
        .retry(constant(ms(10), 3))
        .max_retry_after(Duration::ZERO)
        .breaker(b.clone())
        .classify(classify)
        .build()
        .unwrap();
    let op = Scripted::new(rt.clone(), [Err::<u32, ApiError>(ApiError::Busy)]);
    let r = pipeline.call(|| op.call()).await;
    assert!(
        matches!(r, Err(Error::Rejected(Rejected::CircuitOpen { .. }))),
        "the last attempt was refused: {r:?}"
    );
    assert_eq!(op.calls(), 1, "an open breaker never calls the operation");
}

#[test]
fn a_pipeline_waits_out_the_break_its_own_retries_opened() {
    on_every_runtime!(pipeline_waits_out_its_breaker);
}

// ---------------------------------------------------------------------------------------------
// Tower stacks
// ---------------------------------------------------------------------------------------------

/// RetryLayer docs: "Over a BreakerLayer, set honor_retry_after and a deadline: a call shed with
/// CircuitOpen is then retried no sooner than the breaker's retry_after, and returns at once when
/// that is past the deadline." A fresh call made *while the breaker is open*, the way users call
/// services (`ready` then `call`, i.e. `oneshot`).
async fn retry_layer_over_open_breaker<R: Runtime>(rt: Clocked<R>) {
    let b = breaker(&rt, 1, 1);
    let op = Scripted::new(rt.clone(), [Ok::<u32, ApiError>(9)]);
    let service = RetryLayer::new(constant(ms(10), 3))
        .runtime(rt.clone())
        .honor_retry_after()
        .deadline(secs(10))
        .layer(
            BreakerLayer::new(b.clone())
                .classify(classify)
                .layer(scripted_service(&op)),
        );
    let _ = b.call(|| async { Err::<(), _>(ApiError::Busy) }).await;
    assert_eq!(b.state(), State::Open);
    rt.clock().advance(ms(400));
    let start = rt.now();
    let r = service.clone().oneshot(()).await;
    assert_eq!(r, Ok(9), "retried after the breaker's hint");
    assert_eq!(
        rt.now() - start,
        ms(600),
        "no sooner than retry_after, and not later"
    );
    assert_eq!(op.calls(), 1);

    // Past the deadline: returns at once.
    let _ = b.call(|| async { Err::<(), _>(ApiError::Busy) }).await;
    let service = RetryLayer::new(constant(ms(10), 3))
        .runtime(rt.clone())
        .honor_retry_after()
        .deadline(ms(500))
        .layer(
            BreakerLayer::new(b.clone())
                .classify(classify)
                .layer(scripted_service(&op)),
        );
    let start = rt.now();
    let r = service.oneshot(()).await;
    assert!(
        matches!(r, Err(Error::Rejected(Rejected::CircuitOpen { .. }))),
        "{r:?}"
    );
    assert_eq!(rt.now() - start, Duration::ZERO, "returns at once");
}

#[test]
fn a_retry_layer_over_an_open_breaker_waits_for_its_hint_or_returns_at_once() {
    on_every_runtime!(retry_layer_over_open_breaker);
}

/// RetryLayer: "The request is cloned before an attempt only if a retry could follow it ...
/// With max_attempts(1) or a spent budget, nothing is ever cloned"; "the last possible attempt
/// sends the original".
#[derive(Debug)]
struct CountedRequest(Arc<AtomicUsize>);

impl Clone for CountedRequest {
    fn clone(&self) -> Self {
        self.0.fetch_add(1, Ordering::Relaxed);
        Self(self.0.clone())
    }
}

async fn clones<R: Runtime>(rt: Clocked<R>) {
    let failing = tower::service_fn(|_: CountedRequest| async { Err::<u32, _>(ApiError::Busy) });
    let count = |layer: RetryLayer<Clocked<R>>| async move {
        let n = Arc::new(AtomicUsize::new(0));
        let r = layer
            .layer(failing)
            .oneshot(CountedRequest(n.clone()))
            .await;
        assert_eq!(r, Err(ApiError::Busy));
        n.load(Ordering::Relaxed)
    };
    let base = || RetryLayer::new(constant(ms(1), 3)).runtime(rt.clone());
    assert_eq!(
        count(base()).await,
        2,
        "3 attempts: the last sends the original"
    );
    assert_eq!(
        count(RetryLayer::new(constant(ms(1), 1)).runtime(rt.clone())).await,
        0,
        "max_attempts(1): never cloned"
    );
    let spent = budget_of(&rt, Some((0.0, 0))).unwrap();
    assert_eq!(
        count(base().budget(spent)).await,
        0,
        "a spent budget: never cloned"
    );
    // ratio 1.0: this call deposits one retry; the attempt after it cannot be retried.
    let one = budget_of(&rt, Some((1.0, 0))).unwrap();
    assert_eq!(
        count(base().budget(one)).await,
        1,
        "one retry in the budget: one clone"
    );
}

#[test]
fn the_retry_layer_clones_a_request_only_when_a_retry_could_follow() {
    on_every_runtime!(clones);
}

/// RetryLayer: "An error from the inner service's poll_ready is returned at once, unretried."
#[derive(Clone)]
struct NeverReady(Arc<AtomicUsize>);

impl Service<()> for NeverReady {
    type Response = u32;
    type Error = ApiError;
    type Future = std::future::Ready<Result<u32, ApiError>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ApiError>> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Poll::Ready(Err(ApiError::Busy))
    }
    fn call(&mut self, (): ()) -> Self::Future {
        std::future::ready(Ok(1))
    }
}

async fn poll_ready_error<R: Runtime>(rt: Clocked<R>) {
    let polls = Arc::new(AtomicUsize::new(0));
    let service = RetryLayer::new(constant(ms(1), 5))
        .runtime(rt.clone())
        .layer(NeverReady(polls.clone()));
    let start = rt.now();
    assert_eq!(service.oneshot(()).await, Err(ApiError::Busy));
    assert_eq!(rt.now(), start, "at once");
    assert_eq!(polls.load(Ordering::Relaxed), 1, "unretried");
}

#[test]
fn a_poll_ready_error_is_returned_at_once_unretried_by_the_retry_layer() {
    on_every_runtime!(poll_ready_error);
}

/// A stack real users build: RetryLayer over BreakerLayer over HedgeLayer, one classifier.
/// A `Failure` ends the hedge at once, is counted once by the breaker, and is not retried.
async fn retry_breaker_hedge_stack<R: Runtime>(rt: Clocked<R>) {
    let b = breaker(&rt, 3, 1);
    let hedge = Hedge::builder()
        .runtime(rt.clone())
        .delay(ms(50))
        .max_hedges(2)
        .classify(classify)
        .build()
        .unwrap();
    let op = Scripted::with_latency(
        rt.clone(),
        [(ms(100), Ok::<u32, ApiError>(GONE)), (ms(100), Ok(1))],
    );
    let outer = |r: Result<&u32, &Error<ApiError>>| match r {
        Ok(v) => classify(Ok(v)),
        Err(Error::Inner(e)) => classify(Err(e)),
        Err(Error::Rejected(Rejected::CircuitOpen { .. })) => Verdict::RetryableFailure,
        Err(_) => Verdict::Failure,
    };
    let service = RetryLayer::new(constant(ms(10), 4))
        .runtime(rt.clone())
        .classify(outer)
        .honor_retry_after()
        .deadline(secs(5))
        .layer(
            BreakerLayer::new(b.clone())
                .classify(classify)
                .layer(HedgeLayer::new(hedge.clone()).layer(scripted_service(&op))),
        );
    let start = rt.now();
    let r = service.clone().oneshot(()).await;
    // The primary (GONE at 100 ms) and the hedge started at 50 ms (answers at 150 ms): the
    // primary's Failure ends the call at 100 ms.
    assert_eq!(r, Ok(GONE), "a Failure verdict is returned, as Ok");
    assert_eq!(rt.now() - start, ms(100));
    assert_eq!(op.start_offsets(), vec![ms(0), ms(50)]);
    assert_eq!(b.counts().failures, 1, "counted once by the breaker");

    // A retryable Ok through the stack: hedged, counted as a failure, retried, returned.
    let op = Scripted::with_latency(rt.clone(), [(ms(10), Ok::<u32, ApiError>(PENDING))]);
    let b = breaker(&rt, 100, 1);
    let service = RetryLayer::new(constant(ms(10), 2))
        .runtime(rt.clone())
        .classify(outer)
        .layer(
            BreakerLayer::new(b.clone())
                .classify(classify)
                .layer(HedgeLayer::new(hedge.clone()).layer(scripted_service(&op))),
        );
    let r = service.oneshot(()).await;
    assert_eq!(r, Ok(PENDING), "the Ok value survives three layers");
    // Each call: primary fails at 10 ms, so both hedges start at once (3 attempts per call).
    assert_eq!(op.calls(), 6, "2 retry attempts × (1 + 2 hedges)");
    assert_eq!(
        b.counts().failures,
        2,
        "one breaker failure per retry attempt"
    );
}

#[test]
fn retry_over_breaker_over_hedge_reads_one_classifier_consistently() {
    on_every_runtime!(retry_breaker_hedge_stack);
}

// ---------------------------------------------------------------------------------------------
// Hedging with a classifier
// ---------------------------------------------------------------------------------------------

/// HedgeFuture: "resolves with the first success, with the first result judged neither a success
/// nor a retryable failure, or with the last failure once every attempt failed and no hedge is
/// left". HedgeBuilder::max_hedges: "after every running attempt has failed ... the next starts at
/// once".
async fn hedge_verdicts<R: Runtime>(rt: Clocked<R>) {
    let hedge = Hedge::builder()
        .runtime(rt.clone())
        .delay(ms(50))
        .max_hedges(2)
        .classify(classify)
        .build()
        .unwrap();
    // Retryable Ok everywhere: the last one is returned, as Ok.
    let op = Scripted::new(rt.clone(), [Ok::<u32, ApiError>(PENDING)]);
    let start = rt.now();
    assert_eq!(hedge.call(Idempotent(|| op.call())).await, Ok(PENDING));
    assert_eq!(op.calls(), 3);
    assert_eq!(
        rt.now(),
        start,
        "failed attempts start the next hedge at once"
    );

    // Ignored ends the call at once.
    let op = Scripted::new(rt.clone(), [Err::<u32, _>(ApiError::Cancelled), Ok(1)]);
    assert_eq!(
        hedge.call(Idempotent(|| op.call())).await,
        Err(ApiError::Cancelled)
    );
    assert_eq!(op.calls(), 1);

    // An Err judged a success wins (as Err).
    let op = Scripted::new(rt.clone(), [Err::<u32, _>(ApiError::AlreadyDone), Ok(1)]);
    assert_eq!(
        hedge.call(Idempotent(|| op.call())).await,
        Err(ApiError::AlreadyDone)
    );
    assert_eq!(op.calls(), 1);

    // A slow primary, a hedge that fails retryably: the hedge's failure must not end the call,
    // the primary still wins.
    let op = Scripted::with_latency(
        rt.clone(),
        [
            (ms(200), Ok::<u32, ApiError>(1)),
            (ms(1), Err(ApiError::Busy)),
            (ms(500), Ok(3)),
        ],
    );
    let start = rt.now();
    assert_eq!(hedge.call(Idempotent(|| op.call())).await, Ok(1));
    assert_eq!(rt.now() - start, ms(200));
    assert_eq!(
        op.start_offsets().len(),
        3,
        "the failed hedge starts the next at once"
    );
}

#[test]
fn a_hedged_call_ends_on_the_classifiers_verdict_and_never_loses_a_value() {
    on_every_runtime!(hedge_verdicts);
}

/// HedgeBuilder::budget_ratio: "Hedges may add at most `ratio` of the calls" — a ratio of zero
/// admits no hedge at all, neither after the delay nor after a failure.
async fn hedge_budget_zero<R: Runtime>(rt: Clocked<R>) {
    let hedge = Hedge::builder()
        .runtime(rt.clone())
        .delay(ms(50))
        .max_hedges(3)
        .budget_ratio(0.0)
        .classify(classify)
        .build()
        .unwrap();
    for _ in 0..20 {
        let op = Scripted::with_latency(rt.clone(), [(ms(500), Ok::<u32, ApiError>(1))]);
        assert_eq!(hedge.call(Idempotent(|| op.call())).await, Ok(1));
        assert_eq!(
            op.calls(),
            1,
            "a zero budget admits no hedge after the delay"
        );
        let op = Scripted::new(rt.clone(), [Err::<u32, _>(ApiError::Busy), Ok(1)]);
        assert_eq!(
            hedge.call(Idempotent(|| op.call())).await,
            Err(ApiError::Busy)
        );
        assert_eq!(
            op.calls(),
            1,
            "a zero budget admits no hedge after a failure"
        );
    }
}

#[test]
fn a_hedge_budget_of_ratio_zero_admits_no_hedge() {
    on_every_runtime!(hedge_budget_zero);
}

// ---------------------------------------------------------------------------------------------
// Cancellation at seeded random points
// ---------------------------------------------------------------------------------------------

type Call<'a> = std::pin::Pin<Box<dyn Future<Output = ()> + 'a>>;

/// Drives `calls` by hand with a no-op waker: each step either drops a random live call, or polls
/// every live call and then moves virtual time to the next timer. Returns how many were dropped.
fn drive_and_drop<R: Runtime>(
    rt: &Clocked<R>,
    rng: &mut XorShift,
    mut calls: Vec<Option<Call<'_>>>,
) -> usize {
    let mut dropped = 0;
    for _ in 0..10_000 {
        let live: Vec<usize> = (0..calls.len()).filter(|&i| calls[i].is_some()).collect();
        if live.is_empty() {
            return dropped;
        }
        if rng.below(4) == 0 {
            let victim = live[usize::try_from(rng.below(live.len() as u64)).unwrap()];
            calls[victim] = None;
            dropped += 1;
            continue;
        }
        for slot in &mut calls {
            if let Some(call) = slot
                && poll_once(call.as_mut()).is_ready()
            {
                *slot = None;
            }
        }
        if calls.iter().any(Option::is_some) && !rt.clock().advance_to_next_timer() {
            // Nothing can move: poll again (a waker-less hand-off), then give up on stuck calls.
            let mut progressed = false;
            for slot in &mut calls {
                if let Some(call) = slot
                    && poll_once(call.as_mut()).is_ready()
                {
                    *slot = None;
                    progressed = true;
                }
            }
            if !progressed {
                panic!("calls stuck with no timer registered");
            }
        }
    }
    panic!("the calls did not finish in 10 000 steps");
}

fn random_script(rng: &mut XorShift, n: usize) -> Vec<(Duration, Result<u32, ApiError>)> {
    (0..n)
        .map(|_| {
            let latency = ms(rng.below(400));
            let result = match rng.below(6) {
                0 => Ok(1),
                1 => Ok(PENDING),
                2 => Ok(SHRUG),
                3 => Err(ApiError::Cancelled),
                4 => Err(ApiError::Invalid),
                _ => Err(ApiError::Busy),
            };
            (latency, result)
        })
        .collect()
}

/// After every call is gone the breaker is not stuck. Odd seeds check at once ("a probe gives its
/// slot back"): a half-open breaker admits a probe now, an open one once its break is over (the
/// probe then succeeds, so no slot is handed back by the check itself). Even seeds leave the
/// breaker exactly as the calls left it for an idle hour first ("a breaker behaves the same ...
/// after any idle gap"; max_half_open_wait only reopens "a breaker whose probes hang"), then ask.
/// Collects every violation instead of stopping at the first.
fn breaker_not_stuck<R: Runtime>(
    rt: &Clocked<R>,
    b: &CircuitBreaker<Clocked<R>>,
    seed: u64,
    problems: &mut Vec<String>,
) {
    let when = if seed % 2 == 1 {
        if b.state() == State::Open {
            rt.clock().advance(secs(2));
        }
        "right after the calls (probe slot leaked)"
    } else {
        rt.clock().advance(secs(3600));
        "after an idle hour"
    };
    let state = b.state();
    if state != State::Closed {
        match b.try_acquire() {
            Ok(permit) => permit.success(),
            Err(e) => problems.push(format!("seed {seed}: {state:?} {when}: rejected ({e:?})")),
        }
    }
    rt.clock().advance(secs(3600));
}

/// Pipeline::call: "Cancel safety: dropping the future releases everything it holds (bulkhead
/// slot, breaker permit — recorded as nothing) and drops the running attempt." Breaker: "a probe
/// gives its slot back"; budget: "can never be overdrawn".
async fn pipeline_cancellation<R: Runtime>(rt: Clocked<R>) {
    let mut problems = Vec::new();
    for seed in 1..=60u64 {
        let mut rng = XorShift::new(seed);
        let bulkhead = Bulkhead::builder(2)
            .runtime(rt.clone())
            .max_queue(8)
            .build()
            .unwrap();
        let b = breaker(&rt, 2, 1);
        let budget = budget_of(&rt, Some((0.5, 0))).unwrap();
        let pipeline = Pipeline::builder_on(rt.clone())
            .deadline(secs(5))
            .bulkhead(bulkhead.clone())
            .retry(constant(ms(100), 6))
            .retry_budget(budget.clone())
            .breaker(b.clone())
            .attempt_timeout(ms(300))
            .classify(classify)
            .build()
            .unwrap();
        let op = Scripted::with_latency(rt.clone(), random_script(&mut rng, 30));
        let n_calls = 6;
        let calls: Vec<Option<Call<'_>>> = (0..n_calls)
            .map(|_| {
                let (pipeline, op) = (&pipeline, &op);
                Some(Box::pin(async move {
                    let _ = pipeline.call(|| op.call()).await;
                }) as Call<'_>)
            })
            .collect();
        drive_and_drop(&rt, &mut rng, calls);
        let calls_after = op.calls();
        assert_eq!(
            bulkhead.available(),
            2,
            "seed {seed}: every bulkhead slot came back"
        );
        assert_eq!(
            bulkhead.queued(),
            0,
            "seed {seed}: nobody left in the queue"
        );
        assert_eq!(
            rt.clock().pending_timers(),
            0,
            "seed {seed}: no timer left behind"
        );
        assert!(
            calls_after <= n_calls + n_calls / 2,
            "seed {seed}: {calls_after} attempts for {n_calls} calls at ratio 0.5"
        );
        breaker_not_stuck(&rt, &b, seed, &mut problems);
        assert_eq!(
            op.calls(),
            calls_after,
            "seed {seed}: not called again after the drop"
        );
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn dropping_pipeline_calls_at_random_points_releases_slots_probes_and_timers() {
    on_every_runtime!(pipeline_cancellation);
}

/// The same with the tower stack: RetryLayer(budget, deadline, hints) over BreakerLayer over
/// BulkheadLayer::wait. RetryLayer: "dropping the response future drops the running attempt or
/// the backoff sleep; no further attempt is made"; BreakerLayer: "a call whose response future is
/// dropped records nothing".
async fn tower_cancellation<R: Runtime>(rt: Clocked<R>) {
    let mut problems = Vec::new();
    for seed in 1..=60u64 {
        let mut rng = XorShift::new(seed);
        let bulkhead = Bulkhead::builder(2)
            .runtime(rt.clone())
            .max_queue(8)
            .build()
            .unwrap();
        let b = breaker(&rt, 2, 1);
        let budget = budget_of(&rt, Some((0.5, 0))).unwrap();
        let op = Scripted::with_latency(rt.clone(), random_script(&mut rng, 30));
        let outer = |r: Result<&u32, &Error<Error<ApiError>>>| match r {
            Ok(v) => classify(Ok(v)),
            Err(Error::Inner(Error::Inner(e))) => classify(Err(e)),
            Err(Error::Rejected(Rejected::CircuitOpen { .. })) => Verdict::RetryableFailure,
            Err(_) => Verdict::Failure,
        };
        let service = RetryLayer::new(constant(ms(100), 6))
            .runtime(rt.clone())
            .classify(outer)
            .honor_retry_after()
            .deadline(secs(5))
            .budget(budget.clone())
            .layer(
                BreakerLayer::new(b.clone())
                    .classify(|r: Result<&u32, &Error<ApiError>>| match r {
                        Ok(v) => classify(Ok(v)),
                        Err(Error::Inner(e)) => classify(Err(e)),
                        Err(_) => Verdict::Ignored,
                    })
                    .layer(
                        tidewall::tower::BulkheadLayer::wait(bulkhead.clone())
                            .layer(scripted_service(&op)),
                    ),
            );
        let n_calls = 6;
        let calls: Vec<Option<Call<'_>>> = (0..n_calls)
            .map(|_| {
                let service = service.clone();
                Some(Box::pin(async move {
                    let _ = service.oneshot(()).await;
                }) as Call<'_>)
            })
            .collect();
        drive_and_drop(&rt, &mut rng, calls);
        let calls_after = op.calls();
        assert_eq!(
            bulkhead.available(),
            2,
            "seed {seed}: every bulkhead slot came back"
        );
        assert_eq!(
            bulkhead.queued(),
            0,
            "seed {seed}: nobody left in the queue"
        );
        assert_eq!(
            rt.clock().pending_timers(),
            0,
            "seed {seed}: no timer left behind"
        );
        assert!(
            calls_after <= n_calls + n_calls / 2,
            "seed {seed}: {calls_after} attempts for {n_calls} calls at ratio 0.5"
        );
        breaker_not_stuck(&rt, &b, seed, &mut problems);
        assert_eq!(
            op.calls(),
            calls_after,
            "seed {seed}: not called again after the drop"
        );
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn dropping_tower_retry_over_breaker_over_bulkhead_calls_at_random_points_leaks_nothing() {
    on_every_runtime!(tower_cancellation);
}

/// Retry future: "dropping the future drops the running attempt (or the backoff sleep); the
/// operation is not called again. Nothing else is held." Hedge: "dropping it drops every attempt
/// still running." Counted with a guard living inside each attempt.
struct Live(Arc<AtomicUsize>);

impl Drop for Live {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn retry_and_hedge_cancellation<R: Runtime>(rt: Clocked<R>) {
    for seed in 1..=80u64 {
        let mut rng = XorShift::new(seed);
        let live = Arc::new(AtomicUsize::new(0));
        let started = Arc::new(AtomicUsize::new(0));
        let script = random_script(&mut rng, 20);
        let attempt = {
            let (rt, live, started, script) =
                (rt.clone(), live.clone(), started.clone(), script.clone());
            move || {
                let n = started.fetch_add(1, Ordering::Relaxed);
                live.fetch_add(1, Ordering::Relaxed);
                let guard = Live(live.clone());
                let (latency, result) = script[n % script.len()];
                let rt = rt.clone();
                async move {
                    let _guard = guard;
                    rt.sleep(latency).await;
                    result
                }
            }
        };
        let hedge = Hedge::builder()
            .runtime(rt.clone())
            .delay(ms(1 + rng.below(200)))
            .max_hedges(2)
            .classify(classify)
            .build()
            .unwrap();
        let retry = attempt
            .clone()
            .retry_on(rt.clone(), constant(ms(50), 5))
            .classify(classify)
            .attempt_timeout(ms(250))
            .deadline(Deadline::after(&rt, secs(2)));
        let hedged = hedge.call(Idempotent(attempt.clone()));
        let hedge2 = hedge.clone();
        let nested = (move || {
            let hedge = hedge2.clone();
            let attempt = attempt.clone();
            async move { hedge.call(Idempotent(attempt)).await }
        })
        .retry_on(rt.clone(), constant(ms(30), 3))
        .classify(classify);
        let calls: Vec<Option<Call<'_>>> = vec![
            Some(Box::pin(async move {
                let _ = retry.await;
            })),
            Some(Box::pin(async move {
                let _ = hedged.await;
            })),
            Some(Box::pin(async move {
                let _ = nested.await;
            })),
        ];
        drive_and_drop(&rt, &mut rng, calls);
        assert_eq!(
            live.load(Ordering::Relaxed),
            0,
            "seed {seed}: every attempt was dropped"
        );
        assert_eq!(
            rt.clock().pending_timers(),
            0,
            "seed {seed}: no timer left behind"
        );
        let before = started.load(Ordering::Relaxed);
        rt.clock().advance(secs(3600));
        assert_eq!(
            started.load(Ordering::Relaxed),
            before,
            "seed {seed}: no call after the drop"
        );
    }
}

#[test]
fn dropping_retry_and_hedge_futures_at_random_points_drops_every_attempt() {
    on_every_runtime!(retry_and_hedge_cancellation);
}

/// A half-open probe cancelled mid-attempt, through each breaker front: "a permit dropped,
/// cancelled ... records nothing and a probe gives its slot back".
async fn cancelled_probe<R: Runtime>(rt: Clocked<R>) {
    for front in 0..3 {
        let b = breaker(&rt, 1, 1);
        trip(&b, &rt).await;
        assert_eq!(b.state(), State::Open);
        let op = Scripted::with_latency(rt.clone(), [(secs(10), Ok::<u32, ApiError>(1))]);
        let pipeline = Pipeline::builder_on(rt.clone())
            .breaker(b.clone())
            .classify(classify)
            .build()
            .unwrap();
        let service = BreakerLayer::new(b.clone())
            .classify(classify)
            .layer(scripted_service(&op));
        {
            let mut call: Call<'_> = match front {
                0 => Box::pin(async {
                    let _ = b.call_classified(|| op.call(), classify).await;
                }),
                1 => Box::pin(async {
                    let _ = pipeline.call(|| op.call()).await;
                }),
                _ => Box::pin(async {
                    let _ = service.clone().oneshot(()).await;
                }),
            };
            assert!(poll_once(call.as_mut()).is_pending());
            assert_eq!(op.calls(), 1, "front {front}: the probe is running");
            assert!(
                b.try_acquire().is_err(),
                "front {front}: the only probe slot is taken"
            );
        }
        assert_eq!(
            b.state(),
            State::HalfOpen,
            "front {front}: a dropped probe records nothing"
        );
        let permit = b.try_acquire();
        assert!(
            permit.is_ok(),
            "front {front}: the dropped probe gave its slot back"
        );
    }
}

#[test]
fn a_half_open_probe_dropped_mid_call_gives_its_slot_back_on_every_breaker_front() {
    on_every_runtime!(cancelled_probe);
}

// ---------------------------------------------------------------------------------------------
// Long idle gaps
// ---------------------------------------------------------------------------------------------

/// CHANGELOG: "A circuit breaker older than its break duration now opens for its whole break";
/// breaker: "a breaker behaves the same an hour, a month or a century after it was built, and
/// after any idle gap". Seen through the retry fronts, which wait for the breaker's hint.
async fn aged_breaker_through_fronts<R: Runtime>(rt: Clocked<R>) {
    for gap in [secs(2), 30 * DAY, 365 * DAY, 100 * 365 * DAY] {
        // Pipeline.
        let b = breaker(&rt, 1, 1);
        rt.clock().advance(gap);
        let pipeline = Pipeline::builder_on(rt.clone())
            .retry(constant(ms(10), 3))
            .breaker(b.clone())
            .classify(classify)
            .build()
            .unwrap();
        let op = Scripted::new(rt.clone(), [Err::<u32, _>(ApiError::Busy), Ok(4)]);
        let start = rt.now();
        assert_eq!(pipeline.call(|| op.call()).await, Ok(4), "gap {gap:?}");
        assert_eq!(op.start_offsets().len(), 2, "gap {gap:?}");
        assert_eq!(
            rt.now() - start,
            secs(1),
            "gap {gap:?}: the whole 1 s break, then the probe"
        );

        // Tower RetryLayer over BreakerLayer.
        let b = breaker(&rt, 1, 1);
        rt.clock().advance(gap);
        let op = Scripted::new(rt.clone(), [Err::<u32, _>(ApiError::Busy), Ok(4)]);
        let outer = |r: Result<&u32, &Error<ApiError>>| match r {
            Ok(v) => classify(Ok(v)),
            Err(Error::Inner(e)) => classify(Err(e)),
            Err(Error::Rejected(Rejected::CircuitOpen { .. })) => Verdict::RetryableFailure,
            Err(_) => Verdict::Failure,
        };
        let service = RetryLayer::new(constant(ms(10), 3))
            .runtime(rt.clone())
            .classify(outer)
            .honor_retry_after()
            .deadline(secs(60))
            .layer(
                BreakerLayer::new(b.clone())
                    .classify(classify)
                    .layer(scripted_service(&op)),
            );
        let start = rt.now();
        assert_eq!(service.oneshot(()).await, Ok(4), "tower, gap {gap:?}");
        assert_eq!(
            rt.now() - start,
            secs(1),
            "tower, gap {gap:?}: the whole break"
        );
    }
}

#[test]
fn an_old_breaker_opens_for_its_whole_break_through_every_retry_front() {
    on_every_runtime!(aged_breaker_through_fronts);
}

/// CHANGELOG: "retry and hedge budgets stay exact after any age or idle gap: 16-bit bucket stamps
/// no longer drop writes after 2^15 buckets or bring stale counts back after 2^16." Default
/// budget buckets are 1 s, so gaps of exactly 2^15 and 2^16 buckets (and seeded random ones).
async fn budget_at_stamp_wraps<R: Runtime>(rt: Clocked<R>) {
    let mut rng = XorShift::new(99);
    let mut gaps: Vec<Duration> = [
        1u64 << 15,
        (1 << 15) + 1,
        1 << 16,
        (1 << 16) - 1,
        1 << 17,
        1 << 32,
    ]
    .iter()
    .map(|&b| secs(b))
    .collect();
    gaps.extend((0..6).map(|_| secs(rng.below(1 << 20))));
    for gap in gaps {
        let policy = RetryBudgetPolicy::builder()
            .ratio(0.1)
            .min_per_second(0)
            .build()
            .unwrap();
        let budget = RetryBudget::new(policy, rt.now());
        for _ in 0..100 {
            budget.deposit(rt.now());
        }
        rt.clock().advance(gap);
        // Stale deposits must not come back: a failing call deposits 0.1 and may not retry.
        let op = Scripted::new(rt.clone(), [Err::<u32, _>(ApiError::Busy)]);
        let _ = (|| op.call())
            .retry_on(rt.clone(), constant(ms(1), 5))
            .classify(classify)
            .budget(budget.clone())
            .await;
        assert_eq!(op.calls(), 1, "gap {gap:?}: stale deposits counted again");
        // Fresh writes must count: 100 more calls give exactly 10 retries.
        for _ in 0..99 {
            budget.deposit(rt.now());
        }
        let granted = (0..50).filter(|_| budget.try_withdraw(rt.now())).count();
        assert_eq!(
            granted, 10,
            "gap {gap:?}: fresh writes dropped or stale ones kept"
        );
    }
}

#[test]
fn a_budget_stays_exact_across_bucket_stamp_wraps_through_the_retry_future() {
    on_every_runtime!(budget_at_stamp_wraps);
}

// ---------------------------------------------------------------------------------------------
// Deep nesting
// ---------------------------------------------------------------------------------------------

/// Retry inside retry: attempts multiply, and the outer classifier sees the inner error intact.
async fn retry_in_retry<R: Runtime>(rt: Clocked<R>) {
    let op = Scripted::new(rt.clone(), [Err::<u32, _>(ApiError::Busy)]);
    let result = (|| {
        (|| op.call())
            .retry_on(rt.clone(), constant(ms(1), 3))
            .classify(classify)
            .into_future()
    })
    .retry_on(rt.clone(), constant(ms(100), 2))
    .classify(|r: Result<&u32, &RetryError<ApiError>>| match r {
        Ok(v) => classify(Ok(v)),
        Err(e) => e.inner().map_or(Verdict::Failure, |e| classify(Err(e))),
    })
    .await;
    assert_eq!(
        result,
        Err(RetryError::Inner(RetryError::Inner(ApiError::Busy)))
    );
    assert_eq!(
        op.start_offsets(),
        vec![ms(0), ms(1), ms(2), ms(102), ms(103), ms(104)]
    );

    // An inner Ok judged retryable survives both layers.
    let op = Scripted::new(rt.clone(), [Ok::<u32, ApiError>(PENDING)]);
    let result = (|| {
        (|| op.call())
            .retry_on(rt.clone(), constant(ms(1), 3))
            .classify(classify)
            .into_future()
    })
    .retry_on(rt.clone(), constant(ms(100), 2))
    .classify(|r: Result<&u32, &RetryError<ApiError>>| match r {
        Ok(v) => classify(Ok(v)),
        Err(_) => Verdict::Failure,
    })
    .await;
    assert_eq!(result, Ok(PENDING));
    assert_eq!(op.calls(), 6);

    // Inner deadline shorter than the outer: the inner reports DeadlineExceeded with the error.
    let op = Scripted::new(rt.clone(), [Err::<u32, _>(ApiError::Busy)]);
    let result = (|| {
        (|| op.call())
            .retry_on(rt.clone(), constant(ms(40), 10))
            .classify(classify)
            .deadline(Deadline::after(&rt, ms(100)))
            .into_future()
    })
    .retry_on(rt.clone(), constant(ms(10), 2))
    .classify(|_: Result<&u32, &RetryError<ApiError>>| Verdict::RetryableFailure)
    .await;
    assert_eq!(
        result,
        Err(RetryError::Inner(RetryError::DeadlineExceeded {
            last_error: Some(ApiError::Busy),
            attempts: 3
        }))
    );
}

#[test]
fn a_retry_inside_a_retry_multiplies_attempts_and_keeps_results_intact() {
    on_every_runtime!(retry_in_retry);
}

/// A pipeline inside a retry future: the outer retry honours the pipeline's `CircuitOpen` hint
/// (`Error<E>: RetryAfter`) and the inner pipeline keeps its bulkhead slot only per call.
async fn pipeline_in_retry<R: Runtime>(rt: Clocked<R>) {
    let b = breaker(&rt, 1, 1);
    let bulkhead = Bulkhead::builder(1)
        .runtime(rt.clone())
        .reject_when_full()
        .build()
        .unwrap();
    let pipeline = Pipeline::builder_on(rt.clone())
        .bulkhead(bulkhead.clone())
        .breaker(b.clone())
        .classify(classify)
        .build()
        .unwrap();
    let op = Scripted::new(rt.clone(), [Err::<u32, _>(ApiError::Busy), Ok(8)]);
    let start = rt.now();
    let result = (|| pipeline.call(|| op.call()))
        .retry_on(rt.clone(), constant(ms(10), 5))
        .classify(|r: Result<&u32, &Error<ApiError>>| match r {
            Ok(v) => classify(Ok(v)),
            Err(Error::Inner(e)) => classify(Err(e)),
            Err(Error::Rejected(Rejected::CircuitOpen { .. })) => Verdict::RetryableFailure,
            Err(_) => Verdict::Failure,
        })
        .honor_retry_after()
        .await;
    assert_eq!(result, Ok(8));
    // 0: Busy (opens), 10: CircuitOpen (hint 990 ms) → 1000: probe.
    assert_eq!(op.start_offsets(), vec![ms(0), ms(1000)]);
    assert_eq!(rt.now() - start, secs(1));
    assert_eq!(bulkhead.available(), 1);
}

#[test]
fn a_pipeline_inside_a_retry_future_is_retried_on_its_breakers_hint() {
    on_every_runtime!(pipeline_in_retry);
}

// ---------------------------------------------------------------------------------------------
// Deadlines combine
// ---------------------------------------------------------------------------------------------

/// Retry::deadline: "Combined with any deadline already set, the earlier wins." Pipeline
/// `call_before`: "Calls made with call_before keep the earlier of the two."
async fn deadlines_combine<R: Runtime>(rt: Clocked<R>) {
    let after = |d: Option<Duration>| d.map_or_else(Deadline::none, |d| Deadline::after(&rt, d));
    for (a, b) in [
        (Some(ms(100)), Some(secs(10))),
        (Some(secs(10)), Some(ms(100))),
        (Some(ms(100)), None),
        (None, Some(ms(100))),
    ] {
        let (a, b) = (after(a), after(b));
        let op = Scripted::new(rt.clone(), [Err::<u32, _>(ApiError::Busy)]);
        let start = rt.now();
        let r = (|| op.call())
            .retry_on(rt.clone(), constant(ms(30), 100))
            .deadline(a)
            .deadline(b)
            .await;
        assert!(
            matches!(r, Err(RetryError::DeadlineExceeded { .. })),
            "{r:?}"
        );
        assert_eq!(rt.now() - start, ms(90), "the earlier deadline wins");
    }
    for (pipeline_budget, caller) in [(ms(100), secs(10)), (secs(10), ms(100))] {
        let pipeline = Pipeline::builder_on(rt.clone())
            .deadline(pipeline_budget)
            .retry(constant(ms(30), 100))
            .build()
            .unwrap();
        let op = Scripted::new(rt.clone(), [Err::<u32, _>(ApiError::Busy)]);
        let start = rt.now();
        let r = pipeline
            .call_before(Deadline::after(&rt, caller), || op.call())
            .await;
        assert_eq!(
            r,
            Err(Error::Inner(ApiError::Busy)),
            "the last failure is returned"
        );
        assert_eq!(rt.now() - start, ms(90), "the earlier deadline wins");
    }
}

#[test]
fn the_earlier_of_two_deadlines_wins_on_the_retry_future_and_the_pipeline() {
    on_every_runtime!(deadlines_combine);
}

// ---------------------------------------------------------------------------------------------
// A probe slot given back is not a hung probe
// ---------------------------------------------------------------------------------------------

/// breaker/mod.rs: "RAII permits: a permit dropped, cancelled or unwound by a panic records
/// nothing and a probe gives its slot back; max_half_open_wait reopens a breaker whose probes
/// hang"; builder: "Reopen a half-open breaker whose probes have not all finished after `wait`";
/// Outcome::Ignored: "An ignored probe gives its half-open slot back"; "Any age: a breaker behaves
/// the same ... after any idle gap". A probe judged Ignored (or dropped) has finished and given
/// its slot back: a caller arriving a minute or an hour later must get that slot, on every front.
async fn ignored_probe_then_idle<R: Runtime>(rt: Clocked<R>) {
    for idle in [secs(30), secs(61), secs(3600), 30 * DAY] {
        for front in 0..4 {
            let b = breaker(&rt, 1, 1);
            trip(&b, &rt).await;
            let op = Scripted::new(
                rt.clone(),
                [Err::<u32, ApiError>(ApiError::Cancelled), Ok(1)],
            );
            let pipeline = Pipeline::builder_on(rt.clone())
                .retry(constant(ms(10), 3))
                .breaker(b.clone())
                .classify(classify)
                .build()
                .unwrap();
            let service = BreakerLayer::new(b.clone())
                .classify(classify)
                .layer(scripted_service(&op));
            let name = [
                "call_classified",
                "pipeline",
                "BreakerLayer",
                "dropped probe",
            ][front];
            match front {
                0 => {
                    let r = b.call_classified(|| op.call(), classify).await;
                    assert_eq!(r, Err(Error::Inner(ApiError::Cancelled)));
                }
                1 => {
                    let r = pipeline.call(|| op.call()).await;
                    assert_eq!(r, Err(Error::Inner(ApiError::Cancelled)));
                }
                2 => {
                    let r = service.clone().oneshot(()).await;
                    assert_eq!(r, Err(Error::Inner(ApiError::Cancelled)));
                }
                _ => {
                    let slow =
                        Scripted::with_latency(rt.clone(), [(secs(5), Ok::<u32, ApiError>(1))]);
                    let mut call = Box::pin(b.call_classified(|| slow.call(), classify));
                    assert!(poll_once(call.as_mut()).is_pending());
                    drop(call);
                    op.call().await.unwrap_err(); // keep the script aligned with the others
                }
            }
            assert_eq!(b.state(), State::HalfOpen, "{name}: nothing recorded");
            rt.clock().advance(idle);
            let r = b.call_classified(|| op.call(), classify).await;
            assert_eq!(
                r,
                Ok(1),
                "{name}, idle {idle:?}: the returned probe slot must admit the next caller"
            );
            assert_eq!(
                b.state(),
                State::Closed,
                "{name}, idle {idle:?}: the probe closed it"
            );
        }
    }
}

#[test]
fn a_probe_slot_given_back_by_an_ignored_or_dropped_probe_admits_a_caller_after_any_idle_gap() {
    on_every_runtime!(ignored_probe_then_idle);
}

/// "that many successes close it, one failure reopens it": an Ignored probe is not a success, so
/// with two probes, an ignored one and two successes are needed.
async fn ignored_probe_is_not_a_success<R: Runtime>(rt: Clocked<R>) {
    let b = breaker(&rt, 1, 2);
    trip(&b, &rt).await;
    let r = b
        .call_classified(|| async { Ok::<u32, ApiError>(SHRUG) }, classify)
        .await;
    assert_eq!(r, Ok(SHRUG));
    let r = b
        .call_classified(|| async { Ok::<u32, ApiError>(1) }, classify)
        .await;
    assert_eq!(r, Ok(1));
    assert_eq!(
        b.state(),
        State::HalfOpen,
        "one success of two: still half-open"
    );
    let r = b
        .call_classified(|| async { Ok::<u32, ApiError>(1) }, classify)
        .await;
    assert_eq!(r, Ok(1));
    assert_eq!(b.state(), State::Closed, "two successes close it");
}

#[test]
fn an_ignored_probe_is_not_counted_towards_the_successes_that_close_the_breaker() {
    on_every_runtime!(ignored_probe_is_not_a_success);
}

// ---------------------------------------------------------------------------------------------
// More engine contracts
// ---------------------------------------------------------------------------------------------

/// Retry::budget: "the first attempt deposits, each retry withdraws"; RetryLayer::budget: "each
/// call deposits". Nine calls that succeed at once plus one failing call at ratio 0.1 have
/// deposited exactly one retry, on every front.
async fn successful_calls_deposit<R: Runtime>(rt: Clocked<R>) {
    for front in 0..3 {
        let budget = budget_of(&rt, Some((0.1, 0))).unwrap();
        let good = Scripted::new(rt.clone(), [Ok::<u32, ApiError>(1)]);
        let bad = Scripted::new(rt.clone(), [Err::<u32, _>(ApiError::Busy)]);
        let pipeline = Pipeline::builder_on(rt.clone())
            .retry(constant(ms(1), 10))
            .retry_budget(budget.clone())
            .classify(classify)
            .build()
            .unwrap();
        let layer = RetryLayer::new(constant(ms(1), 10))
            .runtime(rt.clone())
            .classify(classify)
            .budget(budget.clone());
        for op in std::iter::repeat_n(&good, 9).chain([&bad]) {
            match front {
                0 => {
                    let _ = (|| op.call())
                        .retry_on(rt.clone(), constant(ms(1), 10))
                        .classify(classify)
                        .budget(budget.clone())
                        .await;
                }
                1 => {
                    let _ = pipeline.call(|| op.call()).await;
                }
                _ => {
                    let _ = layer.layer(scripted_service(op)).oneshot(()).await;
                }
            }
        }
        assert_eq!(good.calls(), 9);
        assert_eq!(
            bad.calls(),
            2,
            "front {front}: 10 deposits at 10 % = exactly one retry"
        );
    }
}

#[test]
fn every_call_deposits_into_the_budget_even_one_that_succeeds_at_once_on_every_front() {
    on_every_runtime!(successful_calls_deposit);
}

/// PipelineBuilder::min_attempt_time: "Starts an attempt (or a retry's sleep) only if this much
/// time would be left for it"; "the bulkhead queue ... count[s] against" the one deadline. A call
/// that waited in the bulkhead queue until less than its minimum time is left must not start the
/// operation — with or without a retry stage.
async fn bulkhead_wait_eats_the_minimum_time<R: Runtime>(rt: Clocked<R>) {
    for with_retry in [false, true] {
        let bulkhead = Bulkhead::builder(1)
            .runtime(rt.clone())
            .max_queue(4)
            .max_wait(None)
            .build()
            .unwrap();
        let op = Scripted::new(rt.clone(), [Ok::<u32, ApiError>(1)]);
        let holder = bulkhead.try_acquire().unwrap();
        let start = rt.now();
        let result = {
            let release = async {
                rt.sleep(ms(800)).await;
                drop(holder);
            };
            let call = async {
                if with_retry {
                    Pipeline::builder_on(rt.clone())
                        .deadline(secs(1))
                        .bulkhead(bulkhead.clone())
                        .retry(constant(ms(10), 3))
                        .min_attempt_time(ms(300))
                        .build()
                        .unwrap()
                        .call(|| op.call())
                        .await
                } else {
                    Pipeline::builder_on(rt.clone())
                        .deadline(secs(1))
                        .bulkhead(bulkhead.clone())
                        .min_attempt_time(ms(300))
                        .build()
                        .unwrap()
                        .call(|| op.call())
                        .await
                }
            };
            futures_util::future::join(release, call).await.1
        };
        assert_eq!(
            op.calls(),
            0,
            "retry stage {with_retry}: 200 ms left of a 300 ms minimum"
        );
        assert_eq!(
            result,
            Err(Error::Rejected(Rejected::DeadlineExceeded)),
            "retry stage {with_retry}"
        );
        assert_eq!(
            rt.now() - start,
            ms(800),
            "retry stage {with_retry}: returns once admitted"
        );
        assert_eq!(bulkhead.available(), 1);
    }
}

#[test]
fn a_pipeline_call_that_waited_in_the_bulkhead_past_its_minimum_time_starts_no_attempt() {
    on_every_runtime!(bulkhead_wait_eats_the_minimum_time);
}

/// Pipeline builder: the bulkhead "Holds a bulkhead slot for the whole call, retries included".
async fn bulkhead_slot_held_across_retries<R: Runtime>(rt: Clocked<R>) {
    let bulkhead = Bulkhead::builder(1)
        .runtime(rt.clone())
        .reject_when_full()
        .build()
        .unwrap();
    let pipeline = Pipeline::builder_on(rt.clone())
        .bulkhead(bulkhead.clone())
        .retry(constant(ms(100), 3))
        .classify(classify)
        .build()
        .unwrap();
    let op = Scripted::new(
        rt.clone(),
        [Ok::<u32, ApiError>(PENDING), Ok(PENDING), Ok(2)],
    );
    let other = Scripted::new(rt.clone(), [Ok::<u32, ApiError>(3)]);
    let first = pipeline.call(|| op.call());
    let second = async {
        rt.sleep(ms(50)).await; // during the first call's backoff sleep
        pipeline.call(|| other.call()).await
    };
    let (a, b) = futures_util::future::join(first, second).await;
    assert_eq!(a, Ok(2));
    assert_eq!(
        b,
        Err(Error::Rejected(Rejected::BulkheadFull)),
        "the slot is held while sleeping"
    );
    assert_eq!(other.calls(), 0);
    assert_eq!(bulkhead.available(), 1);
}

#[test]
fn a_pipeline_holds_its_bulkhead_slot_through_backoff_sleeps() {
    on_every_runtime!(bulkhead_slot_held_across_retries);
}

/// RetryError::DeadlineExceeded.last_error: "`None` if no attempt had failed with an error: none
/// had finished" — an attempt timeout longer than the deadline leaves the deadline to cut it off.
async fn deadline_cuts_before_attempt_timeout<R: Runtime>(rt: Clocked<R>) {
    let op = Scripted::with_latency(rt.clone(), [(secs(10), Ok::<u32, ApiError>(1))]);
    let start = rt.now();
    let r = (|| op.call())
        .retry_on(rt.clone(), constant(ms(10), 5))
        .attempt_timeout(secs(2))
        .deadline(Deadline::after(&rt, secs(1)))
        .await;
    assert_eq!(
        r,
        Err(RetryError::DeadlineExceeded {
            last_error: None,
            attempts: 1
        })
    );
    assert_eq!(rt.now() - start, secs(1));
    assert_eq!(op.calls(), 1);
}

#[test]
fn a_deadline_shorter_than_the_attempt_timeout_cuts_the_attempt_and_reports_no_error() {
    on_every_runtime!(deadline_cuts_before_attempt_timeout);
}

/// BreakerLayer: "a call whose response future is dropped records nothing" — so the hedges that
/// lose a race under a HedgeLayer are not counted by a BreakerLayer inside it.
async fn hedge_losers_record_nothing<R: Runtime>(rt: Clocked<R>) {
    let b = breaker(&rt, 100, 1);
    let hedge = Hedge::builder()
        .runtime(rt.clone())
        .delay(ms(50))
        .max_hedges(2)
        .classify(|r: Result<&u32, &Error<ApiError>>| match r {
            Ok(v) => classify(Ok(v)),
            Err(Error::Inner(e)) => classify(Err(e)),
            Err(_) => Verdict::RetryableFailure,
        })
        .build()
        .unwrap();
    let op = Scripted::with_latency(
        rt.clone(),
        [
            (ms(120), Ok::<u32, ApiError>(1)),
            (ms(500), Ok(2)),
            (ms(500), Ok(3)),
        ],
    );
    let service = HedgeLayer::new(hedge).layer(
        BreakerLayer::new(b.clone())
            .classify(classify)
            .layer(scripted_service(&op)),
    );
    let start = rt.now();
    assert_eq!(service.oneshot(()).await, Ok(1));
    assert_eq!(rt.now() - start, ms(120));
    assert_eq!(op.calls(), 3, "two hedges started at 50 and 100 ms");
    assert_eq!(
        b.counts().calls,
        1,
        "only the winner is recorded; dropped losers record nothing"
    );
}

#[test]
fn hedges_that_lose_the_race_record_nothing_in_a_breaker_layer_beneath() {
    on_every_runtime!(hedge_losers_record_nothing);
}

/// RetryLayer::deadline: "Gives each call's retries `within` from the call". A service made ready
/// long before the call must still give the call its whole `within`.
async fn tower_deadline_from_the_call<R: Runtime>(rt: Clocked<R>) {
    let op = Scripted::new(rt.clone(), [Err::<u32, _>(ApiError::Busy)]);
    let mut service = RetryLayer::new(constant(ms(100), 100))
        .runtime(rt.clone())
        .classify(classify)
        .deadline(ms(350))
        .layer(scripted_service(&op));
    std::future::poll_fn(|cx| service.poll_ready(cx))
        .await
        .unwrap();
    rt.clock().advance(secs(10));
    let start = rt.now();
    assert_eq!(service.call(()).await, Err(ApiError::Busy));
    assert_eq!(
        op.start_offsets().len(),
        4,
        "attempts at 0, 100, 200, 300 ms of the call"
    );
    assert_eq!(rt.now() - start, ms(300));
}

#[test]
fn a_retry_layers_deadline_runs_from_the_call_not_from_readiness() {
    on_every_runtime!(tower_deadline_from_the_call);
}

/// The same through the rate limiter's wait: "the rate limiter's wait ... count[s] against" the
/// deadline, and no attempt starts without `min_attempt_time` left.
async fn rate_limit_wait_eats_the_minimum_time<R: Runtime>(rt: Clocked<R>) {
    for with_retry in [false, true] {
        let limiter = tidewall::rate::RateLimiter::builder(1, secs(1))
            .burst(1)
            .runtime(rt.clone())
            .build()
            .unwrap();
        limiter.check().unwrap(); // the only cell: the next is 1 s away
        let op = Scripted::new(rt.clone(), [Ok::<u32, ApiError>(1)]);
        let start = rt.now();
        let result = if with_retry {
            Pipeline::builder_on(rt.clone())
                .deadline(ms(1500))
                .rate_limit(limiter.clone())
                .retry(constant(ms(10), 3))
                .min_attempt_time(ms(600))
                .build()
                .unwrap()
                .call(|| op.call())
                .await
        } else {
            Pipeline::builder_on(rt.clone())
                .deadline(ms(1500))
                .rate_limit(limiter.clone())
                .min_attempt_time(ms(600))
                .build()
                .unwrap()
                .call(|| op.call())
                .await
        };
        assert_eq!(
            op.calls(),
            0,
            "retry stage {with_retry}: 500 ms left of a 600 ms minimum"
        );
        assert!(result.is_err(), "retry stage {with_retry}: {result:?}");
        assert!(rt.now() - start <= secs(1), "retry stage {with_retry}");
    }
}

#[test]
fn a_pipeline_call_that_waited_for_the_rate_limiter_past_its_minimum_time_starts_no_attempt() {
    on_every_runtime!(rate_limit_wait_eats_the_minimum_time);
}

/// DefaultClassifier: "`Ok` is a success, every `Err` a retryable failure"; ErrorsWhere: "an
/// `Err` is a retryable failure when the predicate accepts it, a failure not to retry otherwise.
/// What Retry::when sets." Same answers from `.when`, `.classify(ErrorsWhere)` and the default.
async fn default_and_errors_where<R: Runtime>(rt: Clocked<R>) {
    let busy_only = |e: &ApiError| *e == ApiError::Busy;
    assert_eq!(
        Classify::<u32, ApiError>::classify(&DefaultClassifier, Ok(&PENDING)),
        Verdict::Success
    );
    assert_eq!(
        Classify::<u32, ApiError>::classify(&DefaultClassifier, Err(&ApiError::Invalid)),
        Verdict::RetryableFailure
    );
    for script in [
        vec![Err(ApiError::Busy), Err(ApiError::Invalid), Ok(1)],
        vec![Err(ApiError::Busy), Ok(PENDING), Ok(1)],
    ] {
        let run = |front: u8| {
            let op = Scripted::new(rt.clone(), script.clone());
            let rt = rt.clone();
            async move {
                let r = match front {
                    0 => (|| op.call())
                        .retry_on(rt.clone(), exponential(ms(10), 5))
                        .when(busy_only)
                        .await
                        .map_err(|e| e.into_inner().unwrap()),
                    1 => (|| op.call())
                        .retry_on(rt.clone(), exponential(ms(10), 5))
                        .classify(ErrorsWhere(busy_only))
                        .await
                        .map_err(|e| e.into_inner().unwrap()),
                    2 => Pipeline::builder_on(rt.clone())
                        .retry(exponential(ms(10), 5))
                        .classify(ErrorsWhere(busy_only))
                        .build()
                        .unwrap()
                        .call(|| op.call())
                        .await
                        .map_err(|e| e.into_inner().unwrap()),
                    _ => {
                        RetryLayer::new(exponential(ms(10), 5))
                            .runtime(rt.clone())
                            .when(busy_only)
                            .layer(scripted_service(&op))
                            .oneshot(())
                            .await
                    }
                };
                (r, op.start_offsets())
            }
        };
        let expected = run(0).await;
        assert_eq!(
            expected.1,
            vec![ms(0), ms(10)],
            "an Invalid or an Ok ends it at once"
        );
        for front in 1..4 {
            assert_eq!(
                run(front).await,
                expected,
                "front {front}, script {script:?}"
            );
        }
    }
}

#[test]
fn when_and_errors_where_give_the_same_answer_on_every_front() {
    on_every_runtime!(default_and_errors_where);
}
