//! Hostile black-box tests, written from the public docs alone (`/work/bb-docs/retry-core.txt`):
//!
//! 1. the rule the three retry fronts (the retry future, the pipeline — static and boxed — and
//!    the tower `RetryLayer`) now share: what the deadline's end answers with (the latest
//!    retried value, such as a 503, past later errors and timeouts), attacked with values,
//!    errors, timeouts, cuts, hints, budgets, `min_attempt_time`, breaker refusals, exhaustion
//!    and non-retryable verdicts;
//! 2. `tidewall-core`'s math (backoff, GCRA, retry budget, quantile) over the whole input range.
//!
//! Every scenario runs on every runtime adapter under virtual time; proptests use fixed seeds.
//! Every assertion carries, in a comment, the doc sentence it checks.

#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::float_cmp
)]

mod common;

use common::ms;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::RngSeed;

use tidewall::breaker::CircuitBreaker;
use tidewall::budget::{RetryBudget, RetryBudgetPolicy};
use tidewall::classify::Verdict;
use tidewall::pipeline::{BoxPipeline, Pipeline};
use tidewall::retry::{RetryError, RetryEvent};
use tidewall::rt::{Clock, Runtime};
use tidewall::testing::{Clocked, Scripted};
use tidewall::tower::{RetryLayer, TimeoutLayer};
use tidewall::{Backoff, Deadline, Error, Jitter, Rejected, RetryAfter, RetryExt};
use tower_layer::Layer;
use tower_service::Service;

use tidewall_core::ConfigError;
use tidewall_core::gcra::{Denied, Gcra, Resolution, emission_interval};
use tidewall_core::quantile::{BUCKETS, bucket_of, bucket_upper, quantile};

// =============================================================================================
// Part 1: the retry fronts
// =============================================================================================

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ApiError {
    /// Retryable, no hint.
    Busy,
    /// Retryable, with a server hint.
    Throttled(Duration),
    /// Judged `Failure`: retrying cannot help.
    Invalid,
    /// Judged `Ignored`.
    Cancelled,
    /// An `Err` judged a `Success`.
    Benign,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?}")
    }
}

impl std::error::Error for ApiError {}

impl RetryAfter for ApiError {
    fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Throttled(hint) => Some(*hint),
            _ => None,
        }
    }
}

/// A response: 503 is judged retryable (its `hint_ms`, if nonzero, is its `Retry-After`), 400 a
/// failure, 499 ignored, anything else a success. `id` tells values apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Resp {
    status: u16,
    id: u8,
    hint_ms: u64,
}

const fn r503(id: u8) -> Resp {
    Resp {
        status: 503,
        id,
        hint_ms: 0,
    }
}

const fn r503_hint(id: u8, hint_ms: u64) -> Resp {
    Resp {
        status: 503,
        id,
        hint_ms,
    }
}

const fn resp(status: u16, id: u8) -> Resp {
    Resp {
        status,
        id,
        hint_ms: 0,
    }
}

fn classify(result: Result<&Resp, &ApiError>) -> Verdict {
    match result {
        Ok(r) if r.status == 503 => Verdict::RetryableFailure,
        Ok(r) if r.status == 400 => Verdict::Failure,
        Ok(r) if r.status == 499 => Verdict::Ignored,
        Ok(_) => Verdict::Success,
        Err(ApiError::Busy | ApiError::Throttled(_)) => Verdict::RetryableFailure,
        Err(ApiError::Invalid) => Verdict::Failure,
        Err(ApiError::Cancelled) => Verdict::Ignored,
        Err(ApiError::Benign) => Verdict::Success,
    }
}

fn hint_of(result: Result<&Resp, &ApiError>) -> Option<Duration> {
    match result {
        Ok(r) => (r.hint_ms > 0).then(|| ms(r.hint_ms)),
        Err(e) => e.retry_after(),
    }
}

/// The tower stack's attempts go through a `TimeoutLayer`, so its error is `Error<ApiError>`; the same verdicts, and a timeout is a retryable failure.
fn tower_classify(result: Result<&Resp, &Error<ApiError>>) -> Verdict {
    match result {
        Ok(r) => classify(Ok(r)),
        Err(Error::Inner(e)) => classify(Err(e)),
        Err(Error::TimedOut) => Verdict::RetryableFailure,
        Err(_) => Verdict::Failure,
    }
}

fn tower_hint(result: Result<&Resp, &Error<ApiError>>) -> Option<Duration> {
    match result {
        Ok(r) => hint_of(Ok(r)),
        Err(Error::Inner(e)) => hint_of(Err(e)),
        Err(_) => None,
    }
}

/// What a front answered, in one vocabulary.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Got {
    Value(Resp),
    Inner(ApiError),
    /// `RetryError::AttemptTimedOut` / `Error::TimedOut`.
    TimedOut,
    /// The retry future's `RetryError::DeadlineExceeded`.
    Deadline {
        last_error: Option<ApiError>,
        attempts: u32,
    },
    /// The pipeline's `Error::Rejected(Rejected::DeadlineExceeded)`.
    DeadlineRejected,
    /// `Error::Rejected(Rejected::CircuitOpen { .. })`.
    CircuitOpen,
    Other(String),
}

/// What a front other than the retry future must show.
#[derive(Debug, Clone)]
enum Expect {
    /// The retry future's attempts, end and answer (a deadline error in the pipeline's form).
    Like,
    /// Not asserted on this front (the docs leave it open, or the front lacks the setting).
    Skip,
    /// These attempt starts, one of these end times, this answer.
    Is {
        starts: Vec<Duration>,
        ends: Vec<Duration>,
        got: Got,
    },
}

#[derive(Debug, Clone)]
struct Case {
    name: &'static str,
    /// Each attempt's latency and result; the last repeats.
    script: Vec<(Duration, Result<Resp, ApiError>)>,
    backoff: Backoff,
    deadline: Option<Duration>,
    attempt_timeout: Option<Duration>,
    min_attempt_time: Duration,
    max_retry_after: Option<Duration>,
    /// A fresh budget with this ratio and no floor.
    budget_ratio: Option<f64>,
    /// The retry future's attempt starts, end and answer.
    starts: Vec<Duration>,
    ends: Duration,
    got: Got,
    pipeline: Expect,
    tower: Expect,
}

fn constant(delay: Duration, attempts: u32) -> Backoff {
    Backoff::constant(delay)
        .jitter(Jitter::None)
        .max_attempts(attempts)
        .build()
        .unwrap()
}

fn now_(result: Result<Resp, ApiError>) -> (Duration, Result<Resp, ApiError>) {
    (Duration::ZERO, result)
}

const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);

fn case(name: &'static str, script: Vec<(Duration, Result<Resp, ApiError>)>) -> Case {
    Case {
        name,
        script,
        backoff: constant(ms(10), 20),
        deadline: None,
        attempt_timeout: None,
        min_attempt_time: Duration::ZERO,
        max_retry_after: None,
        budget_ratio: None,
        starts: Vec::new(),
        ends: Duration::ZERO,
        got: Got::Other("unset".into()),
        pipeline: Expect::Like,
        tower: Expect::Like,
    }
}

fn fresh_budget<R: Runtime>(rt: &R, ratio: f64) -> RetryBudget {
    let policy = RetryBudgetPolicy::builder()
        .ratio(ratio)
        .min_per_second(0)
        .build()
        .unwrap();
    RetryBudget::new(policy, rt.now())
}

type Seen = (Vec<Duration>, Duration, Got);

async fn via_retry_future<R: Runtime>(rt: &Clocked<R>, c: &Case) -> Seen {
    let op = Scripted::with_latency(rt.clone(), c.script.clone());
    let start = rt.now();
    let mut retry = (|| op.call())
        .retry_on(rt, c.backoff)
        .classify(classify)
        .retry_after_with(hint_of)
        .min_attempt_time(c.min_attempt_time)
        .seed(7);
    if let Some(within) = c.deadline {
        retry = retry.deadline(Deadline::after(rt, within));
    }
    if let Some(timeout) = c.attempt_timeout {
        retry = retry.attempt_timeout(timeout);
    }
    if let Some(cap) = c.max_retry_after {
        retry = retry.max_retry_after(cap);
    }
    if let Some(ratio) = c.budget_ratio {
        retry = retry.budget(fresh_budget(rt, ratio));
    }
    let got = match retry.await {
        Ok(v) => Got::Value(v),
        Err(RetryError::Inner(e)) => Got::Inner(e),
        Err(RetryError::AttemptTimedOut) => Got::TimedOut,
        Err(RetryError::DeadlineExceeded {
            last_error,
            attempts,
        }) => Got::Deadline {
            last_error,
            attempts,
        },
        #[allow(unreachable_patterns)]
        Err(other) => Got::Other(format!("{other:?}")),
    };
    (op.start_offsets(), rt.now() - start, got)
}

fn pipeline_got<T2>(outcome: Result<T2, Error<ApiError>>, wrap: impl Fn(T2) -> Got) -> Got {
    match outcome {
        Ok(v) => wrap(v),
        Err(Error::Inner(e)) => Got::Inner(e),
        Err(Error::TimedOut) => Got::TimedOut,
        Err(Error::Rejected(Rejected::DeadlineExceeded)) => Got::DeadlineRejected,
        Err(Error::Rejected(Rejected::CircuitOpen { .. })) => Got::CircuitOpen,
        Err(other) => Got::Other(format!("{other:?}")),
    }
}

async fn via_pipeline<R: Runtime>(rt: &Clocked<R>, c: &Case, boxed: bool) -> Seen {
    let op = Scripted::with_latency(rt.clone(), c.script.clone());
    let mut builder = Pipeline::builder()
        .runtime(rt.clone())
        .retry(c.backoff)
        .classify(classify)
        .retry_after_with(hint_of)
        .min_attempt_time(c.min_attempt_time)
        .seed(7);
    if let Some(cap) = c.max_retry_after {
        builder = builder.max_retry_after(cap);
    }
    if let Some(ratio) = c.budget_ratio {
        builder = builder.retry_budget(fresh_budget(rt, ratio));
    }
    if let Some(timeout) = c.attempt_timeout {
        builder = builder.attempt_timeout(timeout);
    }
    let pipeline = builder.build().unwrap();
    let deadline = c
        .deadline
        .map_or_else(Deadline::none, |within| Deadline::after(rt, within));
    let start = rt.now();
    let outcome = if boxed {
        let pipeline: BoxPipeline<Resp, ApiError> = pipeline.boxed();
        pipeline.call_before(deadline, || op.call()).await
    } else {
        pipeline.call_before(deadline, || op.call()).await
    };
    (
        op.start_offsets(),
        rt.now() - start,
        pipeline_got(outcome, Got::Value),
    )
}

async fn via_tower<R: Runtime>(rt: &Clocked<R>, c: &Case) -> Seen {
    let op = Scripted::with_latency(rt.clone(), c.script.clone());
    // The attempt timeout, innermost (a day when the case has none): a `TimeoutLayer` over the
    // operation (a tidewall tower stack shares one error type, `Error<E>`).
    let inner = {
        let op = op.clone();
        tower::service_fn(move |(): ()| {
            let op = op.clone();
            async move { op.call().await.map_err(Error::Inner) }
        })
    };
    let timed = TimeoutLayer::new(c.attempt_timeout.unwrap_or(DAY))
        .runtime(rt.clone())
        .layer(inner);
    let mut layer = RetryLayer::new(c.backoff)
        .runtime(rt.clone())
        .classify(tower_classify)
        .retry_after_with(tower_hint)
        .min_attempt_time(c.min_attempt_time)
        .seed(7);
    if let Some(within) = c.deadline {
        layer = layer.deadline(within);
    }
    if let Some(cap) = c.max_retry_after {
        layer = layer.max_retry_after(cap);
    }
    if let Some(ratio) = c.budget_ratio {
        layer = layer.budget(fresh_budget(rt, ratio));
    }
    let mut service = layer.layer(timed);
    let start = rt.now();
    std::future::poll_fn(|cx| service.poll_ready(cx))
        .await
        .unwrap();
    let outcome = service.call(()).await;
    let got = match outcome {
        Ok(v) => Got::Value(v),
        Err(Error::Inner(e)) => Got::Inner(e),
        Err(Error::TimedOut) => Got::TimedOut,
        Err(other) => Got::Other(format!("{other:?}")),
    };
    (op.start_offsets(), rt.now() - start, got)
}

fn as_pipeline(got: &Got) -> Got {
    match got {
        Got::Deadline { .. } => Got::DeadlineRejected,
        other => other.clone(),
    }
}

fn check(front: &str, c: &Case, seen: &Seen, expect: &Expect, doc: &str) {
    let (starts, ends, got) = match expect {
        Expect::Skip => return,
        Expect::Like => (c.starts.clone(), vec![c.ends], as_pipeline(&c.got)),
        Expect::Is { starts, ends, got } => (starts.clone(), ends.clone(), got.clone()),
    };
    assert_eq!(
        seen.2, got,
        "{front}: {}: answer. Doc: {doc}. seen {seen:?}",
        c.name
    );
    assert_eq!(
        seen.0, starts,
        "{front}: {}: attempt starts. Doc: {doc}. seen {seen:?}",
        c.name
    );
    assert!(
        ends.contains(&seen.1),
        "{front}: {}: ended at {:?}, expected one of {ends:?}. Doc: {doc}",
        c.name,
        seen.1
    );
}

/// Runs `c` through the retry future, the pipeline, the boxed pipeline and the tower layer.
async fn all_fronts<R: Runtime>(rt: &Clocked<R>, c: &Case, doc: &str) {
    let rf = via_retry_future(rt, c).await;
    check(
        "retry future",
        c,
        &rf,
        &Expect::Is {
            starts: c.starts.clone(),
            ends: vec![c.ends],
            got: c.got.clone(),
        },
        doc,
    );
    let pipe = via_pipeline(rt, c, false).await;
    check("pipeline", c, &pipe, &c.pipeline, doc);
    let boxed = via_pipeline(rt, c, true).await;
    check("boxed pipeline", c, &boxed, &c.pipeline, doc);
    let tower = via_tower(rt, c).await;
    check("tower RetryLayer", c, &tower, &c.tower, doc);
}

/// One `#[test]` per case: the case on every front, on every runtime adapter.
macro_rules! fronts_test {
    ($(#[$meta:meta])* $name:ident, $doc:expr, $case:expr) => {
        $(#[$meta])*
        #[test]
        fn $name() {
            async fn scenario<R: Runtime>(rt: Clocked<R>) {
                all_fronts(&rt, &$case, $doc).await;
            }
            on_every_runtime!(scenario);
        }
    };
}

const RULE_RF: &str = "retry/mod.rs: \"When the deadline cuts a running attempt, or leaves no time \
to start the next, the answer is the latest value an earlier attempt got (a retryable `Ok`, such \
as a 503 response), even if later attempts failed or timed out\"";
const RULE_PIPE: &str = "Pipeline::call: \"When the deadline ends a call (cuts its attempt, or \
leaves no time for the next) after an attempt got a value that was retried ..., the answer is \
`Ok` with the latest such value, past any later errors and timeouts\"";
const RULE_TOWER: &str = "RetryLayer: \"when the deadline leaves no time for a retry after an \
error, a response an earlier attempt got (an `Ok` judged a retryable failure, such as a 503) is \
returned instead\"; RetryLayer::deadline: \"a running attempt is not cut off\"";

// --- values, then errors, then timeouts, then a cut -----------------------------------------

// Docs: RULE_RF, RULE_PIPE, RULE_TOWER (quoted in the constants above). Timeline: 503 at 0,
// sleep 10, Busy 10..15, sleep 10, attempt at 25 times out at 65, sleep 10, attempt at 75
// (its timeout at 115) cut by the deadline at 100. Tower: not cut, times out at 115, then no
// time for a retry: the earlier response.
fronts_test!(
    value_then_error_then_timeout_then_cut_answers_with_the_value,
    &format!("{RULE_RF} / {RULE_PIPE} / {RULE_TOWER}"),
    Case {
        deadline: Some(ms(100)),
        attempt_timeout: Some(ms(40)),
        starts: vec![ms(0), ms(10), ms(25), ms(75)],
        ends: ms(100),
        got: Got::Value(r503(1)),
        tower: Expect::Is {
            starts: vec![ms(0), ms(10), ms(25), ms(75)],
            ends: vec![ms(115)],
            got: Got::Value(r503(1)),
        },
        ..case(
            "503, Busy, timeout, cut",
            vec![
                now_(Ok(r503(1))),
                (ms(5), Err(ApiError::Busy)),
                (HOUR, Ok(resp(200, 9))),
            ],
        )
    }
);

// Docs: "the answer is the latest value an earlier attempt got" (retry/mod.rs); "`Ok` with the
// latest such value" (Pipeline::call). Two values (ids 1 then 2), a timeout, then a cut.
fronts_test!(
    the_latest_value_not_the_first_survives_a_timeout_and_a_cut,
    &format!("{RULE_RF} / {RULE_PIPE} / {RULE_TOWER}"),
    Case {
        deadline: Some(ms(100)),
        attempt_timeout: Some(ms(40)),
        starts: vec![ms(0), ms(10), ms(20), ms(70)],
        ends: ms(100),
        got: Got::Value(r503(2)),
        tower: Expect::Is {
            starts: vec![ms(0), ms(10), ms(20), ms(70)],
            ends: vec![ms(110)],
            got: Got::Value(r503(2)),
        },
        ..case(
            "503#1, 503#2, timeout, cut",
            vec![
                now_(Ok(r503(1))),
                now_(Ok(r503(2))),
                (HOUR, Ok(resp(200, 9))),
            ],
        )
    }
);

// Docs: retry/mod.rs "`Ok(value)` ... or the deadline leaves no time for one (a value is never
// thrown away)"; RetryError::AttemptTimedOut is only for "no retry was left"; Retry::
// min_attempt_time: "Starts an attempt only if more than `budget` remains before the deadline".
// 503 at 0; attempt at 10 times out at 60; a retry would start at 70 with 30 ms < 35 left.
fronts_test!(
    value_then_timeout_with_no_time_left_answers_with_the_value,
    &format!("{RULE_RF} / {RULE_PIPE} / {RULE_TOWER}"),
    Case {
        deadline: Some(ms(100)),
        attempt_timeout: Some(ms(50)),
        min_attempt_time: ms(35),
        starts: vec![ms(0), ms(10)],
        ends: ms(60),
        got: Got::Value(r503(1)),
        ..case(
            "503 then a timeout, min_attempt_time leaves no room",
            vec![now_(Ok(r503(1))), (HOUR, Ok(resp(200, 9)))],
        )
    }
);

// Docs: "When the deadline cuts a running attempt ... the answer is the latest value" — the
// error lands exactly as the deadline arrives: whether the attempt wins or is cut, no retry
// fits, so the answer is the value. Tower: "the last result is returned at once (or, when that
// is an error, the latest response an earlier attempt got and was retried)".
fronts_test!(
    an_error_landing_exactly_at_the_deadline_after_a_value_answers_with_the_value,
    &format!("{RULE_RF} / {RULE_PIPE} / {RULE_TOWER}"),
    Case {
        deadline: Some(ms(100)),
        starts: vec![ms(0), ms(10)],
        ends: ms(100),
        got: Got::Value(r503(1)),
        ..case(
            "503 then Busy ending at the deadline",
            vec![now_(Ok(r503(1))), (ms(90), Err(ApiError::Busy))],
        )
    }
);

// Docs: Retry::attempt_timeout "an attempt ready when the timer is wins"; the attempt timer and
// the deadline fire together at 100: a timeout or a cut, either way the value is the answer.
fronts_test!(
    an_attempt_timeout_coinciding_with_the_deadline_answers_with_the_value,
    &format!("{RULE_RF} / {RULE_PIPE} / {RULE_TOWER}"),
    Case {
        deadline: Some(ms(100)),
        attempt_timeout: Some(ms(90)),
        starts: vec![ms(0), ms(10)],
        ends: ms(100),
        got: Got::Value(r503(1)),
        ..case(
            "503 then a timeout at the deadline",
            vec![now_(Ok(r503(1))), (HOUR, Ok(resp(200, 9)))],
        )
    }
);

// Docs: RULE_RF / RULE_PIPE (the latest value) — values that took time (no first-poll fast
// path), then a cut. 503#1 at 0..5, 503#2 at 15..20, the third attempt from 30 is cut at 100.
// Tower: the third attempt is not cut; it times out at 30 + 1 day, then no time is left.
fronts_test!(
    slow_values_then_a_cut_answer_with_the_latest_value,
    &format!("{RULE_RF} / {RULE_PIPE} / {RULE_TOWER}"),
    Case {
        deadline: Some(ms(100)),
        starts: vec![ms(0), ms(15), ms(30)],
        ends: ms(100),
        got: Got::Value(r503(2)),
        tower: Expect::Is {
            starts: vec![ms(0), ms(15), ms(30)],
            ends: vec![ms(30) + DAY],
            got: Got::Value(r503(2)),
        },
        ..case(
            "slow 503#1, slow 503#2, cut",
            vec![
                (ms(5), Ok(r503(1))),
                (ms(5), Ok(r503(2))),
                (HOUR * 48, Ok(resp(200, 9))),
            ],
        )
    }
);

// Docs: retry/mod.rs "Ok(value) ... when the last attempt's Ok value was marked retryable but
// ... the deadline leaves no time for one"; "the answer is the latest value". The newest value
// is itself the one whose hint ends the call: it, not the older kept one, is the answer.
fronts_test!(
    the_newest_value_that_ends_the_call_by_its_hint_is_the_answer,
    &format!(
        "{RULE_RF} / {RULE_PIPE} / RetryLayer: \"when no retry follows, the last attempt's result is returned as it was\""
    ),
    Case {
        deadline: Some(ms(100)),
        starts: vec![ms(0), ms(10), ms(20)],
        ends: ms(20),
        got: Got::Value(r503_hint(3, 500)),
        ..case(
            "503#1, Busy, 503#3 with a hint past the deadline",
            vec![
                now_(Ok(r503(1))),
                now_(Err(ApiError::Busy)),
                now_(Ok(r503_hint(3, 500))),
            ],
        )
    }
);

// Docs: retry/mod.rs "A zero delay ... starts the next attempt at the next poll ... The pipeline
// and the tower RetryLayer do the same"; RetryError::DeadlineExceeded "the backoff sleep ..., plus
// min_attempt_time, would end at it or past it"; the value rule. Zero delays, 25 ms errors: the
// fifth attempt ends at 100, exactly the deadline; nothing starts at 100.
fronts_test!(
    zero_delays_after_a_value_end_at_the_deadline_with_the_value,
    &format!("{RULE_RF} / {RULE_PIPE} / {RULE_TOWER}"),
    Case {
        backoff: constant(Duration::ZERO, 50),
        deadline: Some(ms(100)),
        starts: vec![ms(0), ms(0), ms(25), ms(50), ms(75)],
        ends: ms(100),
        got: Got::Value(r503(1)),
        ..case(
            "503 then 25 ms errors with zero delays",
            vec![now_(Ok(r503(1))), (ms(25), Err(ApiError::Busy))],
        )
    }
);

// Docs: Retry::budget "when the budget is spent the last failure is returned as if the attempts
// had run out"; RetryError::AttemptTimedOut "The last attempt exceeded the per-attempt timeout and
// no retry was left"; Pipeline::call "Error::TimedOut for a last attempt that its own
// attempt_timeout cut off". A far deadline: the budget, not the deadline, ends it.
fronts_test!(
    a_spent_budget_after_a_value_then_a_timeout_returns_the_timeout,
    "Retry::budget: \"when the budget is spent the last failure is returned as if the attempts \
     had run out\"; RetryError::AttemptTimedOut: \"no retry was left\"",
    Case {
        deadline: Some(Duration::from_secs(10)),
        attempt_timeout: Some(ms(20)),
        budget_ratio: Some(1.0),
        starts: vec![ms(0), ms(10)],
        ends: ms(30),
        got: Got::TimedOut,
        ..case(
            "503 then a timeout, budget spent",
            vec![now_(Ok(r503(1))), (HOUR, Ok(resp(200, 9)))],
        )
    }
);

// Docs (engine, RetryRules::after): "a retry whose sleep — or whose whole hint, cap or not —
// plus minimum attempt time would pass the deadline is not taken". A 60 ms hint at 10, capped to
// 20: the sleep would fit, but the whole hint plus the 35 ms minimum (10 + 60 + 35 = 105) passes
// the 100 ms deadline: the call ends at 10 with the value.
fronts_test!(
    a_whole_hint_plus_the_minimum_past_the_deadline_ends_at_once_with_the_value,
    &format!(
        "engine: \"a retry whose sleep — or whose whole hint, cap or not — plus minimum attempt time would pass the deadline is not taken\" / {RULE_RF} / {RULE_PIPE} / {RULE_TOWER}"
    ),
    Case {
        deadline: Some(ms(100)),
        min_attempt_time: ms(35),
        max_retry_after: Some(ms(20)),
        starts: vec![ms(0), ms(10)],
        ends: ms(10),
        got: Got::Value(r503(1)),
        ..case(
            "503 then Throttled(60 ms), cap 20, min 35",
            vec![
                now_(Ok(r503(1))),
                now_(Err(ApiError::Throttled(ms(60)))),
                now_(Ok(resp(200, 9))),
            ],
        )
    }
);

// The control: a 50 ms hint (10 + 50 + 35 = 95 < 100) is taken, and "The cut only shortens the
// sleep": the capped sleep is 20 ms, so the third attempt starts at 30.
fronts_test!(
    a_whole_hint_plus_the_minimum_within_the_deadline_is_taken_with_the_capped_sleep,
    "max_retry_after: \"The cut only shortens the sleep\"; engine: \"The delay is the schedule's, \
     raised to the hint (capped at max_retry_after)\"",
    Case {
        deadline: Some(ms(100)),
        min_attempt_time: ms(35),
        max_retry_after: Some(ms(20)),
        starts: vec![ms(0), ms(10), ms(30)],
        ends: ms(30),
        got: Got::Value(resp(200, 9)),
        ..case(
            "503 then Throttled(50 ms), cap 20, min 35",
            vec![
                now_(Ok(r503(1))),
                now_(Err(ApiError::Throttled(ms(50)))),
                now_(Ok(resp(200, 9))),
            ],
        )
    }
);

// Docs (engine): "Whether the schedule allows an attempt beyond those started. (A schedule with a
// cap on its total delay may end sooner; after finds that out when it draws the delay.)";
// retry/mod.rs "RetryError::Inner: ... when ... the schedule is exhausted". max_elapsed 25 ms
// ends the schedule after two 10 ms delays: exhaustion, not the deadline (10 s away), so the
// last error answers, not the 503.
fronts_test!(
    max_elapsed_exhaustion_after_a_value_returns_the_last_error,
    "retry/mod.rs: \"RetryError::Inner: the operation's own error, when it is not retryable or \
     the schedule is exhausted\"; BackoffBuilder::max_elapsed: \"Ends the schedule before the sum \
     of delays would exceed budget\"",
    Case {
        backoff: Backoff::constant(ms(10))
            .jitter(Jitter::None)
            .max_attempts(20)
            .max_elapsed(ms(25))
            .build()
            .unwrap(),
        deadline: Some(Duration::from_secs(10)),
        starts: vec![ms(0), ms(10), ms(20)],
        ends: ms(20),
        got: Got::Inner(ApiError::Busy),
        ..case(
            "503, Busy, Busy: max_elapsed spent",
            vec![now_(Ok(r503(1))), now_(Err(ApiError::Busy))],
        )
    }
);

// --- exhaustion (not the deadline) after a value --------------------------------------------

// Docs: retry/mod.rs "`RetryError::Inner`: the operation's own error, when it is not retryable
// or the schedule is exhausted"; Pipeline::call "`Error::Inner` with the last attempt's own
// error"; RetryLayer "when no retry follows, the last attempt's result is returned as it was".
// The deadline (10 s) is far: the schedule ends the call, so the value rule must not apply.
fronts_test!(
    exhaustion_after_a_value_returns_the_last_error_not_the_value,
    "retry/mod.rs: \"RetryError::Inner: the operation's own error, when it is not retryable or \
     the schedule is exhausted\"; Pipeline::call: \"Error::Inner with the last attempt's own \
     error\"; RetryLayer: \"when no retry follows, the last attempt's result is returned as it was\"",
    Case {
        backoff: constant(ms(10), 3),
        deadline: Some(Duration::from_secs(10)),
        starts: vec![ms(0), ms(10), ms(20)],
        ends: ms(20),
        got: Got::Inner(ApiError::Busy),
        ..case(
            "503 then Busy until the schedule ends",
            vec![now_(Ok(r503(1))), now_(Err(ApiError::Busy))],
        )
    }
);

// Docs: RetryError::AttemptTimedOut "The last attempt exceeded the per-attempt timeout and no
// retry was left"; Pipeline::call "`Error::TimedOut` for a last attempt that its own
// `attempt_timeout` cut off"; RetryLayer "the last attempt's result is returned as it was".
fronts_test!(
    exhaustion_after_a_value_ending_in_a_timeout_returns_the_timeout,
    "RetryError::AttemptTimedOut: \"The last attempt exceeded the per-attempt timeout and no \
     retry was left\"; Pipeline::call: \"Error::TimedOut for a last attempt that its own \
     attempt_timeout cut off\"",
    Case {
        backoff: constant(ms(10), 3),
        attempt_timeout: Some(ms(20)),
        starts: vec![ms(0), ms(10), ms(20)],
        ends: ms(40),
        got: Got::TimedOut,
        ..case(
            "503, Busy, timeout: schedule ends",
            vec![
                now_(Ok(r503(1))),
                now_(Err(ApiError::Busy)),
                (HOUR, Ok(resp(200, 9))),
            ],
        )
    }
);

// --- a value, then a result not to retry -----------------------------------------------------

// Docs: Retry::classify "only a RetryableFailure is retried; any other verdict returns the
// result at once"; classify.rs "an `Ok` value judged a failure is still returned as `Ok` when
// no retry follows it, and an `Err` judged a success is returned as `Err`"; the table:
// "Failure | returns the result at once", "Ignored | returns the result at once".
#[test]
fn a_value_then_any_verdict_but_retryable_returns_that_result_at_once() {
    async fn scenario<R: Runtime>(rt: Clocked<R>) {
        let doc = "Retry::classify: \"any other verdict returns the result at once\"; \
                   classify.rs: \"an Ok value judged a failure is still returned as Ok when no \
                   retry follows it, and an Err judged a success is returned as Err\"";
        let followers = [
            (Err(ApiError::Invalid), Got::Inner(ApiError::Invalid)),
            (Err(ApiError::Cancelled), Got::Inner(ApiError::Cancelled)),
            (Err(ApiError::Benign), Got::Inner(ApiError::Benign)),
            (Ok(resp(400, 2)), Got::Value(resp(400, 2))),
            (Ok(resp(499, 2)), Got::Value(resp(499, 2))),
            (Ok(resp(200, 2)), Got::Value(resp(200, 2))),
        ];
        for (second, expected) in followers {
            let c = Case {
                deadline: Some(ms(100)),
                starts: vec![ms(0), ms(10)],
                ends: ms(10),
                got: expected,
                ..case(
                    "503 then a verdict not to retry",
                    vec![now_(Ok(r503(1))), now_(second)],
                )
            };
            all_fronts(&rt, &c, doc).await;
        }
    }
    on_every_runtime!(scenario);
}

// --- hints ---------------------------------------------------------------------------------

// Docs: Retry::max_retry_after "a retry whose whole hint ends past the deadline is not made
// (the call ends at once)"; plus the value rule. 503 at 0; Throttled(200 ms) at 10; deadline
// 100: the call ends at 10 with the 503.
fronts_test!(
    an_error_hint_past_the_deadline_after_a_value_ends_at_once_with_the_value,
    &format!(
        "max_retry_after: \"a retry whose whole hint ends past the deadline is not made (the call ends at once)\" / {RULE_RF} / {RULE_PIPE} / {RULE_TOWER}"
    ),
    Case {
        deadline: Some(ms(100)),
        starts: vec![ms(0), ms(10)],
        ends: ms(10),
        got: Got::Value(r503(1)),
        ..case(
            "503 then a hint past the deadline",
            vec![now_(Ok(r503(1))), now_(Err(ApiError::Throttled(ms(200))))],
        )
    }
);

// Docs: "The cut only shortens the sleep: a retry whose whole hint ends past the deadline is
// not made (the call ends at once)" — even with max_retry_after 20 ms the 1 s hint ends the call.
fronts_test!(
    a_capped_hint_whose_whole_wait_passes_the_deadline_ends_at_once_with_the_value,
    &format!(
        "max_retry_after: \"The cut only shortens the sleep: a retry whose whole hint ends past the deadline is not made (the call ends at once)\" / {RULE_RF}"
    ),
    Case {
        deadline: Some(ms(100)),
        max_retry_after: Some(ms(20)),
        starts: vec![ms(0), ms(10)],
        ends: ms(10),
        got: Got::Value(r503(1)),
        ..case(
            "503 then a capped hint past the deadline",
            vec![
                now_(Ok(r503(1))),
                now_(Err(ApiError::Throttled(Duration::from_secs(1))))
            ],
        )
    }
);

// Docs: retry/mod.rs "`Ok(value)` ... when the last attempt's `Ok` value was marked retryable
// but ... the deadline leaves no time for one"; the value's own hint (500 ms) is past the
// deadline (100 ms): the call ends at 0 with it.
fronts_test!(
    a_value_whose_own_hint_passes_the_deadline_is_returned_at_once,
    "retry/mod.rs: \"Ok(value) ... when the last attempt's Ok value was marked retryable but no \
     retry is left, or the deadline leaves no time for one\"",
    Case {
        deadline: Some(ms(100)),
        starts: vec![ms(0)],
        ends: ms(0),
        got: Got::Value(r503_hint(1, 500)),
        ..case("503 with a long hint", vec![now_(Ok(r503_hint(1, 500)))])
    }
);

// Docs: Retry::honor_retry_after "the next delay is at least the hint"; the value rule. A value
// with a 30 ms hint, a second value, then errors until a sleep would end at the deadline (90 +
// 10 = 100: RetryError "would end at it or past it"). The latest value, id 2, answers. Tower:
// "a retry whose sleep ... would end past it is not taken" / "Starts a retry only if more than
// `budget` remains": the sleep may or may not be slept, but no attempt starts at 100.
fronts_test!(
    a_hinted_value_then_a_later_value_then_errors_answers_with_the_later_value,
    &format!(
        "RetryError::DeadlineExceeded: \"the backoff sleep ..., plus min_attempt_time, would end at it or past it\" / {RULE_RF} / {RULE_PIPE} / {RULE_TOWER}"
    ),
    Case {
        deadline: Some(ms(100)),
        starts: vec![
            ms(0),
            ms(30),
            ms(40),
            ms(50),
            ms(60),
            ms(70),
            ms(80),
            ms(90)
        ],
        ends: ms(90),
        got: Got::Value(r503(2)),
        tower: Expect::Is {
            starts: vec![
                ms(0),
                ms(30),
                ms(40),
                ms(50),
                ms(60),
                ms(70),
                ms(80),
                ms(90)
            ],
            ends: vec![ms(90), ms(100)],
            got: Got::Value(r503(2)),
        },
        ..case(
            "503(hint 30), 503, Busy...",
            vec![
                now_(Ok(r503_hint(1, 30))),
                now_(Ok(r503(2))),
                now_(Err(ApiError::Busy)),
            ],
        )
    }
);

// Docs: RetryError::DeadlineExceeded "the backoff sleep (or a hint's whole wait), plus
// min_attempt_time, would end at it or past it"; retry/mod.rs "a backoff sleep that would end
// past it is not slept at all". A sleep ending exactly at the deadline is not slept.
fronts_test!(
    a_sleep_ending_exactly_at_the_deadline_is_not_slept_and_the_value_answers,
    &format!(
        "RetryError::DeadlineExceeded: \"would end at it or past it\" / {RULE_RF} / {RULE_TOWER}"
    ),
    Case {
        backoff: constant(ms(50), 10),
        deadline: Some(ms(100)),
        starts: vec![ms(0), ms(50)],
        ends: ms(50),
        got: Got::Value(r503(1)),
        tower: Expect::Is {
            starts: vec![ms(0), ms(50)],
            ends: vec![ms(50), ms(100)],
            got: Got::Value(r503(1)),
        },
        ..case(
            "503 then Busy, the next sleep ends at the deadline",
            vec![now_(Ok(r503(1))), now_(Err(ApiError::Busy))],
        )
    }
);

// --- budgets ---------------------------------------------------------------------------------

// Docs: Retry::budget "when the budget is spent the last failure is returned as if the attempts
// had run out"; with a far deadline this is exhaustion, not the deadline's end: Busy, not the
// 503. (Ratio 1: the call deposits one retry.)
fronts_test!(
    a_spent_budget_after_a_value_then_an_error_returns_the_error,
    "Retry::budget: \"when the budget is spent the last failure is returned as if the attempts \
     had run out\"",
    Case {
        deadline: Some(Duration::from_secs(10)),
        budget_ratio: Some(1.0),
        starts: vec![ms(0), ms(10)],
        ends: ms(10),
        got: Got::Inner(ApiError::Busy),
        ..case(
            "503 then Busy, budget spent",
            vec![now_(Ok(r503(1))), now_(Err(ApiError::Busy))],
        )
    }
);

// Docs: Retry::classify "an `Ok` judged retryable that no retry follows is still returned as
// `Ok`"; Retry::budget "the last failure is returned as if the attempts had run out".
fronts_test!(
    a_spent_budget_right_after_a_value_returns_the_value,
    "Retry::classify: \"an Ok judged retryable that no retry follows is still returned as Ok\"",
    Case {
        deadline: Some(Duration::from_secs(10)),
        budget_ratio: Some(1.0),
        starts: vec![ms(0), ms(10)],
        ends: ms(10),
        got: Got::Value(r503(1)),
        ..case(
            "Busy then 503, budget spent",
            vec![now_(Err(ApiError::Busy)), now_(Ok(r503(1)))],
        )
    }
);

// FINDING candidate. Docs: RetryLayer "when no retry follows, the last attempt's result is
// returned as it was (...), except that when the deadline leaves no time for a retry after an
// error, a response an earlier attempt got (an Ok judged a retryable failure, such as a 503) is
// returned instead, as the retry future and the pipeline do"; engine.rs (RetryRules::after) "a
// retry whose sleep — or whose whole hint, cap or not — plus minimum attempt time would pass the
// deadline is not taken, and only a retry that is taken withdraws from the budget"; engine.rs
// "decided here, once, so the fronts cannot drift". The budget (ratio 1: one retry) is spent by
// the retry after the 503, and then the deadline leaves no time after the error — by a hint, by
// a sleep ending at the deadline, by min_attempt_time. The retry future and the pipelines answer
// with the 503; every front must.
#[test]
fn a_spent_budget_with_no_time_left_after_a_value_answers_with_the_value_on_every_front() {
    async fn scenario<R: Runtime>(rt: Clocked<R>) {
        let doc = "RetryLayer: \"except that when the deadline leaves no time for a retry after an \
                   error, a response an earlier attempt got ... is returned instead, as the retry \
                   future and the pipeline do\"; engine: \"only a retry that is taken withdraws \
                   from the budget\"";
        for c in [
            Case {
                deadline: Some(ms(100)),
                budget_ratio: Some(1.0),
                starts: vec![ms(0), ms(10)],
                ends: ms(10),
                got: Got::Value(r503(1)),
                ..case(
                    "budget spent, then a hint past the deadline",
                    vec![
                        now_(Ok(r503(1))),
                        now_(Err(ApiError::Throttled(Duration::from_secs(1)))),
                    ],
                )
            },
            Case {
                backoff: constant(ms(50), 10),
                deadline: Some(ms(100)),
                budget_ratio: Some(1.0),
                starts: vec![ms(0), ms(50)],
                ends: ms(50),
                got: Got::Value(r503(1)),
                ..case(
                    "budget spent, then a sleep ending at the deadline",
                    vec![now_(Ok(r503(1))), now_(Err(ApiError::Busy))],
                )
            },
            Case {
                deadline: Some(ms(100)),
                min_attempt_time: ms(85),
                budget_ratio: Some(1.0),
                starts: vec![ms(0), ms(10)],
                ends: ms(10),
                got: Got::Value(r503(1)),
                ..case(
                    "budget spent, then min_attempt_time leaves no room",
                    vec![now_(Ok(r503(1))), now_(Err(ApiError::Busy))],
                )
            },
        ] {
            all_fronts(&rt, &c, doc).await;
        }
    }
    on_every_runtime!(scenario);
}

// --- without a value: the deadline's own answer ---------------------------------------------

// Docs: retry/mod.rs "without one, `DeadlineExceeded` with the latest error";
// RetryError::DeadlineExceeded "Attempts started". Pipeline::call "`Rejected::DeadlineExceeded`
// when the deadline ended the call, an attempt still running included". RetryLayer::deadline
// "a running attempt is not cut off": it runs its hour and succeeds.
fronts_test!(
    errors_only_then_a_cut_is_deadline_exceeded_with_the_latest_error,
    "retry/mod.rs: \"without one, DeadlineExceeded with the latest error\"; Pipeline::call: \
     \"Rejected::DeadlineExceeded when the deadline ended the call, an attempt still running \
     included\"; RetryLayer::deadline: \"a running attempt is not cut off\"",
    Case {
        deadline: Some(ms(100)),
        starts: vec![ms(0), ms(10), ms(25)],
        ends: ms(100),
        got: Got::Deadline {
            last_error: Some(ApiError::Throttled(ms(1))),
            attempts: 3,
        },
        tower: Expect::Is {
            starts: vec![ms(0), ms(10), ms(25)],
            ends: vec![ms(25) + HOUR],
            got: Got::Value(resp(200, 9)),
        },
        ..case(
            "Busy, Throttled(1 ms), cut",
            vec![
                now_(Err(ApiError::Busy)),
                (ms(5), Err(ApiError::Throttled(ms(1)))),
                (HOUR, Ok(resp(200, 9))),
            ],
        )
    }
);

// Docs: RetryError::DeadlineExceeded.last_error "The last error seen before the deadline (`None`
// if no attempt had failed with an error: none had finished, or the last one timed out)".
// Busy, then a timeout at 60, no time for another (min_attempt_time 35): `last_error: None`.
// The pipeline's form (DeadlineExceeded or TimedOut) is not pinned by its docs: skipped.
fronts_test!(
    an_error_then_a_timeout_then_no_time_reports_no_last_error,
    "RetryError::DeadlineExceeded.last_error: \"None if no attempt had failed with an error: \
     none had finished, or the last one timed out\"; pipeline/mod.rs: \"a retry that cannot start \
     before it is not started — the call returns the last failure instead\"; RetryLayer: \"the \
     last attempt's result is returned as it was\"",
    Case {
        deadline: Some(ms(100)),
        attempt_timeout: Some(ms(50)),
        min_attempt_time: ms(35),
        starts: vec![ms(0), ms(10)],
        ends: ms(60),
        got: Got::Deadline {
            last_error: None,
            attempts: 2,
        },
        // pipeline/mod.rs: "a retry that cannot start before it is not started — the call
        // returns the last failure instead": the timeout.
        pipeline: Expect::Is {
            starts: vec![ms(0), ms(10)],
            ends: vec![ms(60)],
            got: Got::TimedOut,
        },
        tower: Expect::Is {
            starts: vec![ms(0), ms(10)],
            ends: vec![ms(60)],
            got: Got::TimedOut,
        },
        ..case(
            "Busy then a timeout, no time left",
            vec![now_(Err(ApiError::Busy)), (HOUR, Ok(resp(200, 9)))],
        )
    }
);

// --- retry-future-only angles ----------------------------------------------------------------

// Docs: Retry::attempt_timeout "a zero timeout lets through only an attempt that is ready at
// its first poll" and "a timed-out attempt counts as a retryable failure"; the value rule: the
// 503 (ready at once) answers after nine zero-time timeouts, when the next sleep would end at
// the deadline.
#[test]
fn zero_attempt_timeout_after_a_value_answers_with_the_value() {
    async fn scenario<R: Runtime>(rt: Clocked<R>) {
        let c = Case {
            deadline: Some(ms(100)),
            attempt_timeout: Some(Duration::ZERO),
            starts: (0..10).map(|k| ms(10 * k)).collect(),
            ends: ms(90),
            got: Got::Value(r503(1)),
            ..case(
                "503 ready at first poll, then pending attempts under a zero timeout",
                vec![now_(Ok(r503(1))), (ms(1), Err(ApiError::Busy))],
            )
        };
        // Docs: "a zero timeout lets through only an attempt that is ready at its first poll"
        // + RULE_RF.
        let seen = via_retry_future(&rt, &c).await;
        assert_eq!(seen, (c.starts.clone(), c.ends, c.got.clone()), "{RULE_RF}");
    }
    on_every_runtime!(scenario);
}

// Docs: Retry::deadline "Combined with any deadline already set, the earlier wins" — in either
// order; with the value rule at the earlier one.
#[test]
fn the_earlier_of_two_deadlines_ends_the_retry_future_with_the_value() {
    async fn scenario<R: Runtime>(rt: Clocked<R>) {
        for earlier_first in [true, false] {
            let op = Scripted::with_latency(
                rt.clone(),
                vec![now_(Ok(r503(1))), (HOUR, Err(ApiError::Busy))],
            );
            let start = rt.now();
            let (a, b) = if earlier_first {
                (ms(100), Duration::from_secs(5))
            } else {
                (Duration::from_secs(5), ms(100))
            };
            let result = (|| op.call())
                .retry_on(&rt, constant(ms(10), 10))
                .classify(classify)
                .deadline(Deadline::after(&rt, a))
                .deadline(Deadline::after(&rt, b))
                .await;
            // Docs: "Combined with any deadline already set, the earlier wins." + RULE_RF.
            assert_eq!(result, Ok(r503(1)), "{RULE_RF}");
            assert_eq!(rt.now() - start, ms(100), "the earlier deadline wins");
        }
    }
    on_every_runtime!(scenario);
}

// Docs: RetryEvent.delay "The sleep before the next attempt (after jitter, cap and hints)";
// RetryEvent.hint "The hint the failed result carried, if any (before capping)"; Notify "Called
// once per retry, before the backoff sleep" — so no event for the retry the deadline refused.
#[test]
fn notify_reports_hinted_value_delays_and_no_event_for_the_refused_retry() {
    async fn scenario<R: Runtime>(rt: Clocked<R>) {
        type Seen = Vec<(u32, Duration, Option<Duration>)>;
        let events: Arc<Mutex<Seen>> = Arc::default();
        let seen = Arc::clone(&events);
        let op = Scripted::with_latency(
            rt.clone(),
            vec![
                now_(Ok(r503_hint(1, 30))),
                now_(Err(ApiError::Throttled(Duration::from_secs(7)))),
                now_(Err(ApiError::Busy)),
            ],
        );
        let start = rt.now();
        let result = (|| op.call())
            .retry_on(&rt, constant(ms(10), 10))
            .classify(classify)
            .retry_after_with(hint_of)
            .max_retry_after(ms(25))
            .deadline(Deadline::after(&rt, ms(70)))
            .notify(move |e: &RetryEvent<'_, Resp, ApiError>| {
                seen.lock().unwrap().push((e.attempt, e.delay, e.hint));
            })
            .await;
        // 503(hint 30, capped to 25) at 0, sleep 25; Throttled(7 s) at 25 whose whole hint ends
        // past the deadline: "a retry whose whole hint ends past the deadline is not made (the
        // call ends at once)" — and the value answers (RULE_RF).
        assert_eq!(result, Ok(r503_hint(1, 30)), "{RULE_RF}");
        assert_eq!(rt.now() - start, ms(25), "the call ends at once");
        // "Called once per retry, before the backoff sleep"; "delay: ... after jitter, cap and
        // hints"; "hint: ... (before capping)".
        assert_eq!(
            *events.lock().unwrap(),
            vec![(1, ms(25), Some(ms(30)))],
            "one event, with the capped delay and the uncapped hint"
        );
    }
    on_every_runtime!(scenario);
}

// --- pipeline-only angles: its own deadline, a breaker -------------------------------------

/// The first case's script through a pipeline whose *builder* deadline bounds the call
/// (optionally with a later caller deadline too).
async fn pipeline_own_deadline<R: Runtime>(rt: Clocked<R>) {
    for (boxed, caller) in [
        (false, None),
        (true, None),
        (false, Some(5_000u64)),
        (true, Some(5_000)),
        (false, Some(100)),
        (true, Some(100)),
    ] {
        let op = Scripted::with_latency(
            rt.clone(),
            vec![
                now_(Ok(r503(1))),
                (ms(5), Err(ApiError::Busy)),
                (HOUR, Ok(resp(200, 9))),
            ],
        );
        let pipeline = Pipeline::builder()
            .runtime(rt.clone())
            .deadline(ms(100))
            .retry(constant(ms(10), 20))
            .classify(classify)
            .retry_after_with(hint_of)
            .attempt_timeout(ms(40))
            .seed(7)
            .build()
            .unwrap();
        let start = rt.now();
        // A caller deadline of 5 s (the pipeline's 100 ms wins) or 100 ms (a tie).
        let deadline = caller.map_or_else(Deadline::none, |m| Deadline::after(&rt, ms(m)));
        let outcome = if boxed {
            let p: BoxPipeline<Resp, ApiError> = pipeline.boxed();
            p.call_before(deadline, || op.call()).await
        } else {
            pipeline.call_before(deadline, || op.call()).await
        };
        // Docs: PipelineBuilder::deadline "Every call gets at most `budget`, shared by all
        // stages"; "Calls made with call_before keep the earlier of the two"; + RULE_PIPE.
        assert_eq!(
            pipeline_got(outcome, Got::Value),
            Got::Value(r503(1)),
            "boxed {boxed}, caller {caller:?}: {RULE_PIPE}"
        );
        assert_eq!(op.start_offsets(), vec![ms(0), ms(10), ms(25), ms(75)]);
        assert_eq!(rt.now() - start, ms(100), "the pipeline's own deadline cut");
    }
}

#[test]
fn the_pipelines_own_deadline_answers_with_the_value_past_errors_and_timeouts() {
    on_every_runtime!(pipeline_own_deadline);
}

fn breaker<R: Runtime>(rt: &Clocked<R>, failures: u32) -> CircuitBreaker<Clocked<R>> {
    CircuitBreaker::builder()
        .no_failure_rate()
        .consecutive_failures(failures)
        .break_duration(Duration::from_secs(1))
        .runtime(rt.clone())
        .build()
        .unwrap()
}

/// A pipeline with a breaker; returns (starts, end, answer, calls).
async fn through_breaker<R: Runtime>(
    rt: &Clocked<R>,
    failures: u32,
    script: Vec<(Duration, Result<Resp, ApiError>)>,
    deadline: Option<Duration>,
    backoff: Backoff,
    cap: Option<Duration>,
    boxed: bool,
) -> (Vec<Duration>, Duration, Got, usize) {
    let op = Scripted::with_latency(rt.clone(), script);
    let mut builder = Pipeline::builder()
        .runtime(rt.clone())
        .retry(backoff)
        .classify(classify)
        .retry_after_with(hint_of)
        .seed(7);
    if let Some(cap) = cap {
        builder = builder.max_retry_after(cap);
    }
    let pipeline = builder.breaker(breaker(rt, failures)).build().unwrap();
    let deadline = deadline.map_or_else(Deadline::none, |within| Deadline::after(rt, within));
    let start = rt.now();
    let outcome = if boxed {
        let p: BoxPipeline<Resp, ApiError> = pipeline.boxed();
        p.call_before(deadline, || op.call()).await
    } else {
        pipeline.call_before(deadline, || op.call()).await
    };
    (
        op.start_offsets(),
        rt.now() - start,
        pipeline_got(outcome, Got::Value),
        op.calls(),
    )
}

// Docs: PipelineBuilder::classify "the breaker counts its verdict" (a 503 judged retryable is a
// breaker failure: it opens); pipeline/mod.rs "It retries ... `Rejected::CircuitOpen`
// rejections, sleeping at least the rejection's `retry_after`"; max_retry_after "a retry whose
// whole hint ends past the deadline is not made (the call ends at once)"; RULE_PIPE "past any
// later errors". The 1 s break is past the 100 ms deadline: Ok(503), one call to the operation.
async fn breaker_refusal_after_value<R: Runtime>(rt: Clocked<R>) {
    for boxed in [false, true] {
        for (failures, script) in [
            (1, vec![now_(Ok(r503(1))), now_(Ok(resp(200, 9)))]),
            (
                2,
                vec![
                    now_(Ok(r503(1))),
                    now_(Err(ApiError::Busy)),
                    now_(Ok(resp(200, 9))),
                ],
            ),
        ] {
            let calls = failures as usize;
            let (starts, ends, got, n) = through_breaker(
                &rt,
                failures,
                script,
                Some(ms(100)),
                constant(ms(10), 10),
                None,
                boxed,
            )
            .await;
            // RULE_PIPE: "the answer is Ok with the latest such value, past any later errors".
            assert_eq!(
                got,
                Got::Value(r503(1)),
                "boxed {boxed}, breaker after {failures}: {RULE_PIPE} (starts {starts:?})"
            );
            assert_eq!(n, calls, "the open breaker refused the rest");
            // "a retry whose whole hint ends past the deadline is not made (the call ends at
            // once)": no sleeping towards a deadline the break outlasts.
            assert!(
                ends <= ms(10) * failures,
                "boxed {boxed}: ended at {ends:?}, after the refusal it should end at once"
            );
        }
    }
}

#[test]
fn a_breaker_refusal_after_a_value_answers_with_the_value() {
    on_every_runtime!(breaker_refusal_after_value);
}

// Docs: Pipeline::call "`Error::Rejected` when a stage refused (and retries, if any, ran out
// ...)"; max_retry_after "with no deadline a retry may come before a long hint ends — the
// breaker then refuses it again". No deadline: the schedule runs out on refusals, so the last
// result — the refusal — is the answer, not the earlier 503 (the value rule is the deadline's).
async fn breaker_refusals_exhaust<R: Runtime>(rt: Clocked<R>) {
    for boxed in [false, true] {
        let (starts, ends, got, n) = through_breaker(
            &rt,
            1,
            vec![now_(Ok(r503(1))), now_(Ok(resp(200, 9)))],
            None,
            constant(ms(10), 3),
            Some(ms(5)),
            boxed,
        )
        .await;
        assert_eq!(
            got,
            Got::CircuitOpen,
            "boxed {boxed}: Pipeline::call \"Error::Rejected when a stage refused (and retries, \
             if any, ran out ...)\" (starts {starts:?}, ends {ends:?})"
        );
        assert_eq!(n, 1, "the breaker refused both retries");
        assert_eq!(
            ends,
            ms(20),
            "two retries 10 ms apart (the 5 ms cap under the delay)"
        );
    }
}

#[test]
fn breaker_refusals_exhausting_the_schedule_return_the_refusal() {
    on_every_runtime!(breaker_refusals_exhaust);
}

// --- tower-only: the first attempt always starts ---------------------------------------------

// Docs: RetryLayer::deadline "The first attempt always starts, and a running attempt is not cut
// off"; "the last result is returned at once". A zero deadline: one attempt, its result.
#[test]
fn tower_zero_deadline_makes_exactly_one_attempt_and_keeps_its_result() {
    async fn scenario<R: Runtime>(rt: Clocked<R>) {
        for (script, expected) in [
            (vec![(ms(20), Ok(r503(1)))], Got::Value(r503(1))),
            (
                vec![(ms(20), Err(ApiError::Busy))],
                Got::Inner(ApiError::Busy),
            ),
        ] {
            let c = Case {
                deadline: Some(Duration::ZERO),
                ..case("zero deadline", script)
            };
            let seen = via_tower(&rt, &c).await;
            // "The first attempt always starts, and a running attempt is not cut off".
            assert_eq!(seen, (vec![ms(0)], ms(20), expected), "{RULE_TOWER}");
        }
    }
    on_every_runtime!(scenario);
}

// --- extreme durations on every front -------------------------------------------------------

// Docs: Retry::max_retry_after "a retry whose whole hint ends past the deadline is not made (the
// call ends at once)" — for a hint of Duration::MAX and a cap of Duration::MAX or zero; and
// RULE_RF / RULE_PIPE / RULE_TOWER for the answer. Nothing may overflow.
#[test]
fn hints_and_caps_at_the_ends_of_duration_after_a_value() {
    async fn scenario<R: Runtime>(rt: Clocked<R>) {
        for cap in [Duration::MAX, Duration::ZERO, nanos(u64::MAX)] {
            let c = Case {
                deadline: Some(ms(100)),
                max_retry_after: Some(cap),
                starts: vec![ms(0), ms(10)],
                ends: ms(10),
                got: Got::Value(r503(1)),
                ..case(
                    "503 then a Duration::MAX hint",
                    vec![
                        now_(Ok(r503(1))),
                        now_(Err(ApiError::Throttled(Duration::MAX))),
                    ],
                )
            };
            all_fronts(&rt, &c, "max_retry_after: \"a retry whose whole hint ends past the deadline is not made (the call ends at once)\"").await;
        }
    }
    on_every_runtime!(scenario);
}

// Docs: Retry::deadline "Bounds the whole operation"; a deadline of Duration::MAX from now is no
// bound at all: the schedule ends the call with the last error (retry/mod.rs "RetryError::Inner:
// ... the schedule is exhausted"); RetryLayer::deadline(Duration::MAX) likewise.
#[test]
fn a_duration_max_deadline_is_no_bound_and_does_not_overflow() {
    async fn scenario<R: Runtime>(rt: Clocked<R>) {
        let c = Case {
            backoff: constant(ms(10), 3),
            deadline: Some(Duration::MAX),
            // The pipeline's builder refuses Duration::MAX here (checked below).
            attempt_timeout: Some(nanos(u64::MAX)),
            starts: vec![ms(0), ms(10), ms(20)],
            ends: ms(20),
            got: Got::Inner(ApiError::Busy),
            ..case(
                "503 then Busy, deadline Duration::MAX",
                vec![now_(Ok(r503(1))), now_(Err(ApiError::Busy))],
            )
        };
        all_fronts(&rt, &c, "retry/mod.rs: \"RetryError::Inner: the operation's own error, when it is not retryable or the schedule is exhausted\"").await;
        // The retry future takes Duration::MAX itself, for the attempt timeout and the minimum.
        let c = Case {
            attempt_timeout: Some(Duration::MAX),
            ..c
        };
        let seen = via_retry_future(&rt, &c).await;
        assert_eq!(
            seen,
            (c.starts.clone(), c.ends, c.got.clone()),
            "retry future, Duration::MAX timeout"
        );
        // PipelineBuilder::build: "ConfigError::DurationOverflow for durations beyond u64
        // nanoseconds".
        let built = Pipeline::builder()
            .runtime(rt.clone())
            .attempt_timeout(Duration::MAX)
            .build();
        assert!(
            matches!(built, Err(ConfigError::DurationOverflow { .. })),
            "{:?}",
            built.err()
        );
    }
    on_every_runtime!(scenario);
}

// Docs: retry/mod.rs "no attempt starts once it has passed (or with no more than
// Retry::min_attempt_time left)"; RetryError::DeadlineExceeded.last_error "None if no attempt
// had failed with an error: none had finished"; attempts: "Attempts started". Pipeline::
// min_attempt_time: "Starts an attempt ... only if more than this much time would be left ...:
// ... the first attempt once the call ... brought its own deadline (call_before)". RetryLayer::
// deadline: "The first attempt always starts"; min_attempt_time "Starts a retry only if more than
// budget remains".
#[test]
fn min_attempt_time_longer_than_the_deadline() {
    async fn scenario<R: Runtime>(rt: Clocked<R>) {
        // (Duration::MAX itself is refused by the pipeline's builder: "DurationOverflow for
        // durations beyond u64 nanoseconds".)
        for min in [nanos(u64::MAX), Duration::from_secs(1)] {
            let c = Case {
                deadline: Some(Duration::from_secs(1)),
                min_attempt_time: min,
                starts: vec![],
                ends: ms(0),
                got: Got::Deadline {
                    last_error: None,
                    attempts: 0,
                },
                pipeline: Expect::Is {
                    starts: vec![],
                    ends: vec![ms(0)],
                    got: Got::DeadlineRejected,
                },
                tower: Expect::Is {
                    starts: vec![ms(0)],
                    ends: vec![ms(0)],
                    got: Got::Value(r503(1)),
                },
                ..case("min_attempt_time ≥ the deadline", vec![now_(Ok(r503(1)))])
            };
            all_fronts(&rt, &c, "retry/mod.rs: \"no attempt starts once it has passed (or with no more than Retry::min_attempt_time left)\"; RetryLayer::deadline: \"The first attempt always starts\"").await;
        }
    }
    on_every_runtime!(scenario);
}

// Docs: retry/mod.rs "no attempt starts once it has passed"; Pipeline::call "Rejected::
// DeadlineExceeded when the deadline ended the call". A caller deadline already over.
#[test]
fn an_expired_deadline_starts_nothing() {
    async fn scenario<R: Runtime>(rt: Clocked<R>) {
        let c = Case {
            deadline: Some(Duration::ZERO),
            starts: vec![],
            ends: ms(0),
            got: Got::Deadline {
                last_error: None,
                attempts: 0,
            },
            tower: Expect::Skip,
            ..case("expired deadline", vec![now_(Ok(r503(1)))])
        };
        all_fronts(
            &rt,
            &c,
            "retry/mod.rs: \"no attempt starts once it has passed\"",
        )
        .await;
    }
    on_every_runtime!(scenario);
}

// Docs: PipelineBuilder::min_attempt_time "A first attempt that waited for nothing starts at
// once, with the pipeline's whole deadline before it (its budget starts then), whatever this
// minimum"; "Starts an attempt (or a retry's sleep) only if more than this much time would be
// left for it before the deadline: every retry"; pipeline/mod.rs "a retry that cannot start
// before it is not started — the call returns the last failure instead"; RULE_PIPE for a value.
#[test]
fn pipeline_first_attempt_ignores_a_minimum_longer_than_its_own_deadline() {
    async fn scenario<R: Runtime>(rt: Clocked<R>) {
        for (script, expected) in [
            (vec![now_(Ok(r503(1)))], Got::Value(r503(1))),
            (vec![now_(Err(ApiError::Busy))], Got::Inner(ApiError::Busy)),
        ] {
            for boxed in [false, true] {
                let op = Scripted::with_latency(rt.clone(), script.clone());
                let pipeline = Pipeline::builder()
                    .runtime(rt.clone())
                    .deadline(ms(100))
                    .retry(constant(ms(10), 5))
                    .classify(classify)
                    .min_attempt_time(ms(200))
                    .build()
                    .unwrap();
                let start = rt.now();
                let outcome = if boxed {
                    let p: BoxPipeline<Resp, ApiError> = pipeline.boxed();
                    p.call(|| op.call()).await
                } else {
                    pipeline.call(|| op.call()).await
                };
                assert_eq!(
                    pipeline_got(outcome, Got::Value),
                    expected,
                    "boxed {boxed}: \"A first attempt that waited for nothing starts at once ... \
                     whatever this minimum\"; then no retry fits"
                );
                assert_eq!(op.start_offsets(), vec![ms(0)], "one attempt, no retry");
                assert_eq!(
                    rt.now() - start,
                    ms(0),
                    "\"the call returns the last failure instead\", at once"
                );
            }
        }
    }
    on_every_runtime!(scenario);
}

// Docs: PipelineBuilder::on_event "Calls listener with each call's end ..., each retry scheduled
// with its delay"; the docs' example reads `EventKind::RetryScheduled { delay, .. }`. Three retries
// are scheduled (10 ms each) before the cut; the retry the deadline refuses is not scheduled.
#[test]
fn pipeline_events_schedule_only_the_retries_taken_before_the_deadline() {
    async fn scenario<R: Runtime>(rt: Clocked<R>) {
        let delays: Arc<Mutex<Vec<Duration>>> = Arc::default();
        let seen = Arc::clone(&delays);
        let op = Scripted::with_latency(
            rt.clone(),
            vec![now_(Ok(r503(1))), now_(Err(ApiError::Busy))],
        );
        let pipeline = Pipeline::builder()
            .runtime(rt.clone())
            .retry(constant(ms(30), 20))
            .classify(classify)
            .on_event(move |event| {
                if let tidewall::telemetry::EventKind::RetryScheduled { delay, .. } = event.kind {
                    seen.lock().unwrap().push(delay);
                }
            })
            .build()
            .unwrap();
        let result = pipeline
            .call_before(Deadline::after(&rt, ms(100)), || op.call())
            .await;
        // RULE_PIPE: Ok with the latest value; 503 at 0, Busy at 30, 60, 90; a sleep to 120 is
        // not taken.
        assert_eq!(
            pipeline_got(result, Got::Value),
            Got::Value(r503(1)),
            "{RULE_PIPE}"
        );
        assert_eq!(op.start_offsets(), vec![ms(0), ms(30), ms(60), ms(90)]);
        // "each retry scheduled with its delay"
        assert_eq!(*delays.lock().unwrap(), vec![ms(30); 3]);
    }
    on_every_runtime!(scenario);
}

// --- budgets shared across calls ---------------------------------------------------------------

/// One call through `front` (0 retry future, 1 pipeline, 2 boxed pipeline, 3 tower) with a shared
/// budget, always failing with Busy; returns the attempts it made.
async fn busy_call_with_budget<R: Runtime>(
    rt: &Clocked<R>,
    front: u8,
    budget: &RetryBudget,
) -> usize {
    call_with_budget(rt, front, budget, Err(ApiError::Busy)).await
}

/// One call through `front` whose every attempt answers `answer` at once; returns the attempts.
async fn call_with_budget<R: Runtime>(
    rt: &Clocked<R>,
    front: u8,
    budget: &RetryBudget,
    answer: Result<Resp, ApiError>,
) -> usize {
    let op = Scripted::with_latency(rt.clone(), vec![now_(answer)]);
    let backoff = constant(ms(10), 10);
    match front {
        0 => {
            let r = (|| op.call())
                .retry_on(rt, backoff)
                .classify(classify)
                .budget(budget.clone())
                .await;
            assert_eq!(r.map_err(|e| e.into_inner()), answer.map_err(Some));
        }
        1 | 2 => {
            let pipeline = Pipeline::builder()
                .runtime(rt.clone())
                .retry(backoff)
                .retry_budget(budget.clone())
                .classify(classify)
                .build()
                .unwrap();
            let r = if front == 2 {
                let p: BoxPipeline<Resp, ApiError> = pipeline.boxed();
                p.call(|| op.call()).await
            } else {
                pipeline.call(|| op.call()).await
            };
            assert_eq!(r.map_err(|e| e.into_inner()), answer.map_err(Some));
        }
        _ => {
            let inner = {
                let op = op.clone();
                tower::service_fn(move |(): ()| {
                    let op = op.clone();
                    async move { op.call().await }
                })
            };
            let mut service = RetryLayer::new(backoff)
                .runtime(rt.clone())
                .classify(classify)
                .budget(budget.clone())
                .layer(inner);
            std::future::poll_fn(|cx| service.poll_ready(cx))
                .await
                .unwrap();
            assert_eq!(service.call(()).await, answer);
        }
    }
    op.calls()
}

// Docs: Retry::budget "the first attempt deposits, each retry withdraws, and when the budget is
// spent the last failure is returned as if the attempts had run out"; budget.rs "Every call
// deposits ratio of a retry; every retry withdraws one whole retry". Ratio 0.5: the first call
// has half a retry (none), the second brings it to one.
#[test]
fn a_shared_budget_pays_half_a_retry_per_call_on_every_front() {
    async fn scenario<R: Runtime>(rt: Clocked<R>) {
        for front in 0..4u8 {
            let budget = fresh_budget(&rt, 0.5);
            let first = busy_call_with_budget(&rt, front, &budget).await;
            let second = busy_call_with_budget(&rt, front, &budget).await;
            let third = busy_call_with_budget(&rt, front, &budget).await;
            // 0.5 → no retry; 1.0 → one retry (then 0); 0.5 → none.
            assert_eq!(
                (first, second, third),
                (1, 2, 1),
                "front {front}: \"Every call deposits ratio of a retry; every retry withdraws one whole retry\""
            );
        }
    }
    on_every_runtime!(scenario);
}

// Docs: Retry::budget "the first attempt deposits"; budget.rs "Every call deposits ratio of a
// retry"; retry/mod.rs "Cost: the success path allocates nothing and reads no clock unless a
// timeout, a deadline or a budget is set" — a call that succeeds at once still deposits. Ratio
// 0.5: a success and a failure together pay for one retry of the failure, on every front.
#[test]
fn a_call_that_succeeds_at_once_still_deposits_on_every_front() {
    async fn scenario<R: Runtime>(rt: Clocked<R>) {
        for front in 0..4u8 {
            let budget = fresh_budget(&rt, 0.5);
            assert_eq!(
                call_with_budget(&rt, front, &budget, Ok(resp(200, 1))).await,
                1
            );
            assert_eq!(
                busy_call_with_budget(&rt, front, &budget).await,
                2,
                "front {front}: \"Every call deposits ratio of a retry\" — the success's half included"
            );
        }
    }
    on_every_runtime!(scenario);
}

// Docs: budget.rs "the balance of the last window (plus min_per_second × window retries)
// decides"; RetryBudgetBuilder::min_per_second "Retries allowed per second whatever the traffic
// (so a quiet service can still retry)". Ratio 0, 1 per second over 10 s: ten retries in all, on
// every front (the first call takes all ten, the next none).
#[test]
fn the_budget_floor_grants_exactly_min_per_second_times_window() {
    async fn scenario<R: Runtime>(rt: Clocked<R>) {
        for front in 0..4u8 {
            let policy = RetryBudgetPolicy::builder()
                .ratio(0.0)
                .min_per_second(1)
                .window(Duration::from_secs(10))
                .build()
                .unwrap();
            let budget = RetryBudget::new(policy, rt.now());
            let op = Scripted::with_latency(rt.clone(), vec![now_(Err::<Resp, _>(ApiError::Busy))]);
            let backoff = constant(ms(1), 30);
            let calls = match front {
                0 => {
                    let _ = (|| op.call())
                        .retry_on(&rt, backoff)
                        .classify(classify)
                        .budget(budget.clone())
                        .await;
                    op.calls()
                }
                1 | 2 => {
                    let pipeline = Pipeline::builder()
                        .runtime(rt.clone())
                        .retry(backoff)
                        .retry_budget(budget.clone())
                        .classify(classify)
                        .build()
                        .unwrap();
                    if front == 2 {
                        let p: BoxPipeline<Resp, ApiError> = pipeline.boxed();
                        let _ = p.call(|| op.call()).await;
                    } else {
                        let _ = pipeline.call(|| op.call()).await;
                    }
                    op.calls()
                }
                _ => {
                    let inner = {
                        let op = op.clone();
                        tower::service_fn(move |(): ()| {
                            let op = op.clone();
                            async move { op.call().await }
                        })
                    };
                    let mut service = RetryLayer::new(backoff)
                        .runtime(rt.clone())
                        .classify(classify)
                        .budget(budget.clone())
                        .layer(inner);
                    std::future::poll_fn(|cx| service.poll_ready(cx))
                        .await
                        .unwrap();
                    let _ = service.call(()).await;
                    op.calls()
                }
            };
            assert_eq!(
                calls, 11,
                "front {front}: \"plus min_per_second × window retries\" = 10 retries"
            );
            assert_eq!(
                busy_call_with_budget(&rt, front, &budget).await,
                1,
                "front {front}: the floor is spent"
            );
        }
    }
    on_every_runtime!(scenario);
}

// Docs: RetryBudgetBuilder::window "a deposit counts until window after the start of its bucket
// (window / buckets long), so for between window − window / buckets and window after it was
// made". Ratio 1, 10 s in 10 buckets: a call at 0 deposits one retry; at 8.9 s it still counts
// (a Busy call then gets 2 retries); past 10 s it does not (1 retry).
#[test]
fn budget_deposits_expire_within_the_documented_window() {
    async fn scenario<R: Runtime>(rt: Clocked<R>) {
        for (front, later, retries) in [
            (0u8, ms(8_900), 2usize),
            (0, ms(10_050), 1),
            (1, ms(8_900), 2),
            (1, ms(10_050), 1),
            (3, ms(8_900), 2),
            (3, ms(10_050), 1),
        ] {
            let policy = RetryBudgetPolicy::builder()
                .ratio(1.0)
                .min_per_second(0)
                .window(Duration::from_secs(10))
                .buckets(10)
                .build()
                .unwrap();
            let budget = RetryBudget::new(policy, rt.now());
            // A successful call deposits.
            let ok = Scripted::new(rt.clone(), [Ok::<Resp, ApiError>(resp(200, 1))]);
            let r = (|| ok.call())
                .retry_on(&rt, constant(ms(10), 10))
                .budget(budget.clone())
                .await;
            assert!(r.is_ok());
            rt.sleep(later).await;
            let attempts = busy_call_with_budget(&rt, front, &budget).await;
            assert_eq!(
                attempts,
                retries + 1,
                "front {front} at {later:?}: \"a deposit counts ... for between window − window / buckets and window after it was made\""
            );
        }
    }
    on_every_runtime!(scenario);
}

// --- tower: cloning, and a BreakerLayer's refusals -----------------------------------------

#[derive(Debug)]
struct Counted(Arc<std::sync::atomic::AtomicUsize>);

impl Clone for Counted {
    fn clone(&self) -> Self {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Self(Arc::clone(&self.0))
    }
}

// Docs: RetryLayer "The request is cloned before an attempt only if a retry could follow it —
// the backoff has a delay left and the budget has a retry in it; otherwise the original is sent.
// With max_attempts(1) or a spent budget, nothing is ever cloned."
#[test]
fn tower_clones_only_when_a_retry_could_follow() {
    async fn scenario<R: Runtime>(rt: Clocked<R>) {
        for (attempts, ratio, max_clones, calls) in [
            (1u32, None, 0usize, 1usize),
            (5, Some(0.0), 0, 1),
            (3, None, 2, 3),
            (5, Some(1.0), 1, 2),
        ] {
            let op = Scripted::new(rt.clone(), [Err::<Resp, _>(ApiError::Busy)]);
            let inner = {
                let op = op.clone();
                tower::service_fn(move |_req: Counted| {
                    let op = op.clone();
                    async move { op.call().await }
                })
            };
            let mut layer = RetryLayer::new(constant(ms(10), attempts))
                .runtime(rt.clone())
                .classify(classify);
            if let Some(ratio) = ratio {
                layer = layer.budget(fresh_budget(&rt, ratio));
            }
            let mut service = layer.layer(inner);
            let clones = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            std::future::poll_fn(|cx| service.poll_ready(cx))
                .await
                .unwrap();
            let r = service.call(Counted(Arc::clone(&clones))).await;
            assert_eq!(r, Err(ApiError::Busy));
            assert_eq!(op.calls(), calls, "attempts {attempts} budget {ratio:?}");
            let made = clones.load(std::sync::atomic::Ordering::SeqCst);
            // "cloned before an attempt only if a retry could follow it"; "With max_attempts(1)
            // or a spent budget, nothing is ever cloned."
            assert!(
                made <= max_clones,
                "attempts {attempts} budget {ratio:?}: {made} clones, at most {max_clones}"
            );
        }
    }
    on_every_runtime!(scenario);
}

// Docs: RetryLayer "Over a BreakerLayer, set honor_retry_after and a deadline: a call shed with
// Rejected::CircuitOpen is then retried no sooner than the breaker's retry_after, and returns at
// once when that is past the deadline"; and "when the deadline leaves no time for a retry after
// an error, a response an earlier attempt got (an Ok judged a retryable failure, such as a 503)
// is returned instead". 503 at 0, Busy at 10 opens the breaker (1 s), the refusal at 20 asks for
// ~990 ms, past the 100 ms deadline: Ok(503) at 20.
#[test]
fn tower_over_a_breaker_layer_answers_with_the_value_after_a_refusal() {
    async fn scenario<R: Runtime>(rt: Clocked<R>) {
        let op = Scripted::with_latency(
            rt.clone(),
            vec![
                now_(Ok(r503(1))),
                now_(Err(ApiError::Busy)),
                now_(Ok(resp(200, 9))),
            ],
        );
        // A tidewall tower stack shares one error type, `Error<E>`.
        let inner = {
            let op = op.clone();
            tower::service_fn(move |(): ()| {
                let op = op.clone();
                async move { op.call().await.map_err(Error::Inner) }
            })
        };
        let guarded = tidewall::tower::BreakerLayer::new(breaker(&rt, 1)).layer(inner);
        let judge = |r: Result<&Resp, &Error<ApiError>>| match r {
            Ok(v) => classify(Ok(v)),
            Err(Error::Inner(e)) => classify(Err(e)),
            Err(Error::Rejected(Rejected::CircuitOpen { .. })) => Verdict::RetryableFailure,
            Err(_) => Verdict::Failure,
        };
        let mut service = RetryLayer::new(constant(ms(10), 10))
            .runtime(rt.clone())
            .classify(judge)
            .honor_retry_after()
            .deadline(ms(100))
            .layer(guarded);
        let start = rt.now();
        std::future::poll_fn(|cx| service.poll_ready(cx))
            .await
            .unwrap();
        let r = service.call(()).await;
        assert_eq!(r.as_ref().ok(), Some(&r503(1)), "{RULE_TOWER}: got {r:?}");
        assert_eq!(op.calls(), 2, "the breaker refused the third attempt");
        // "returns at once when that is past the deadline"
        assert_eq!(rt.now() - start, ms(20));
    }
    on_every_runtime!(scenario);
}

// Docs: Retry::attempt_timeout "an attempt ready when the timer is wins": a value (judged
// retryable) landing exactly at the attempt timeout is a value, returned as the last attempt's
// `Ok` ("an Ok judged retryable that no retry follows is still returned as Ok").
#[test]
fn a_value_ready_exactly_at_the_attempt_timeout_wins() {
    async fn scenario<R: Runtime>(rt: Clocked<R>) {
        let c = Case {
            backoff: constant(ms(10), 2),
            attempt_timeout: Some(ms(40)),
            starts: vec![ms(0), ms(10)],
            ends: ms(50),
            got: Got::Value(r503(2)),
            ..case(
                "Busy, then a 503 ready as its timer fires",
                vec![now_(Err(ApiError::Busy)), (ms(40), Ok(r503(2)))],
            )
        };
        let seen = via_retry_future(&rt, &c).await;
        assert_eq!(
            seen,
            (c.starts.clone(), c.ends, c.got.clone()),
            "\"an attempt ready when the timer is wins\""
        );
    }
    on_every_runtime!(scenario);
}

// Docs: retry/mod.rs "Cancel safety: dropping the future drops the running attempt (or the
// backoff sleep); the operation is not called again"; Pipeline::call "drops the running
// attempt"; RetryLayer "dropping the response future drops the running attempt or the backoff
// sleep; no further attempt is made". Dropped mid-sleep after a value and an error.
#[test]
fn dropping_a_call_that_holds_a_value_makes_no_further_attempt() {
    async fn scenario<R: Runtime>(rt: Clocked<R>) {
        for front in 0..4u8 {
            let c = Case {
                backoff: constant(ms(10), 20),
                deadline: Some(ms(500)),
                ..case(
                    "dropped",
                    vec![now_(Ok(r503(1))), now_(Err(ApiError::Busy))],
                )
            };
            let op = Scripted::with_latency(rt.clone(), c.script.clone());
            let stop = rt.sleep(ms(15));
            {
                let call: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + '_>> =
                    match front {
                        0 => Box::pin(async {
                            let _ = (|| op.call())
                                .retry_on(&rt, c.backoff)
                                .classify(classify)
                                .deadline(Deadline::after(&rt, ms(500)))
                                .await;
                        }),
                        1 | 2 => Box::pin(async {
                            let pipeline = Pipeline::builder()
                                .runtime(rt.clone())
                                .retry(c.backoff)
                                .classify(classify)
                                .build()
                                .unwrap();
                            if front == 2 {
                                let p: BoxPipeline<Resp, ApiError> = pipeline.boxed();
                                let _ = p
                                    .call_before(Deadline::after(&rt, ms(500)), || op.call())
                                    .await;
                            } else {
                                let _ = pipeline
                                    .call_before(Deadline::after(&rt, ms(500)), || op.call())
                                    .await;
                            }
                        }),
                        _ => Box::pin(async {
                            let inner = {
                                let op = op.clone();
                                tower::service_fn(move |(): ()| {
                                    let op = op.clone();
                                    async move { op.call().await }
                                })
                            };
                            let mut service = RetryLayer::new(c.backoff)
                                .runtime(rt.clone())
                                .classify(classify)
                                .deadline(ms(500))
                                .layer(inner);
                            std::future::poll_fn(|cx| service.poll_ready(cx))
                                .await
                                .unwrap();
                            let _ = service.call(()).await;
                        }),
                    };
                let stop = std::pin::pin!(stop);
                match futures_util::future::select(call, stop).await {
                    futures_util::future::Either::Left(_) => {
                        panic!("front {front}: the call ended early")
                    }
                    futures_util::future::Either::Right(_) => {}
                }
            }
            // 503 at 0, Busy at 10; at 15 the call is dropped during its sleep.
            assert_eq!(op.calls(), 2, "front {front}");
            rt.sleep(Duration::from_secs(1)).await;
            assert_eq!(
                op.calls(),
                2,
                "front {front}: \"the operation is not called again\""
            );
        }
    }
    on_every_runtime!(scenario);
}

// Docs: RULE_PIPE "the answer is Ok with the latest such value, past any later errors and
// timeouts"; pipeline/mod.rs "It retries ... Rejected::CircuitOpen rejections, sleeping at least
// the rejection's retry_after". A short break (50 ms) that the deadline (300 ms) can outwait: the
// pipeline waits out refusals, probes, meets errors, and when no time is left answers with the
// 503 it got first.
async fn breaker_cycles_after_value<R: Runtime>(rt: Clocked<R>) {
    for boxed in [false, true] {
        let op = Scripted::with_latency(
            rt.clone(),
            vec![now_(Ok(r503(1))), now_(Err(ApiError::Busy))],
        );
        let breaker = CircuitBreaker::builder()
            .no_failure_rate()
            .consecutive_failures(1)
            .break_duration(ms(50))
            .runtime(rt.clone())
            .build()
            .unwrap();
        let pipeline = Pipeline::builder()
            .runtime(rt.clone())
            .retry(constant(ms(10), 50))
            .classify(classify)
            .seed(7)
            .breaker(breaker)
            .build()
            .unwrap();
        let start = rt.now();
        let outcome = if boxed {
            let p: BoxPipeline<Resp, ApiError> = pipeline.boxed();
            p.call_before(Deadline::after(&rt, ms(300)), || op.call())
                .await
        } else {
            pipeline
                .call_before(Deadline::after(&rt, ms(300)), || op.call())
                .await
        };
        assert_eq!(
            pipeline_got(outcome, Got::Value),
            Got::Value(r503(1)),
            "boxed {boxed}: {RULE_PIPE} (attempts at {:?})",
            op.start_offsets()
        );
        assert!(op.calls() >= 2, "the break was waited out and a probe made");
        assert!(rt.now() - start <= ms(300));
    }
}

#[test]
fn pipeline_breaker_cycles_after_a_value_answer_with_the_value() {
    on_every_runtime!(breaker_cycles_after_value);
}

// Docs (engine, RetryRules::after): "only a retry that is taken withdraws from the budget".
// Ratio 2: call A deposits 2 and its only retry is refused by the deadline (a 1 s hint past
// 100 ms) — nothing withdrawn; call B deposits 2 more and so gets 4 retries (5 attempts).
#[test]
fn a_retry_the_deadline_refuses_withdraws_nothing_from_the_budget() {
    async fn scenario<R: Runtime>(rt: Clocked<R>) {
        for front in 0..4u8 {
            let budget = fresh_budget(&rt, 2.0);
            let c = Case {
                deadline: Some(ms(100)),
                ..case(
                    "A: a hint past the deadline",
                    vec![
                        now_(Ok(r503(1))),
                        now_(Err(ApiError::Throttled(Duration::from_secs(1)))),
                    ],
                )
            };
            // Call A through `front`: 503 at 0 (retry 1 taken: withdraws 1), Throttled(1 s) at
            // 10 (retry refused by the deadline: withdraws nothing).
            let op = Scripted::with_latency(rt.clone(), c.script.clone());
            let a = match front {
                0 => {
                    let r = (|| op.call())
                        .retry_on(&rt, constant(ms(10), 10))
                        .classify(classify)
                        .honor_retry_after()
                        .deadline(Deadline::after(&rt, ms(100)))
                        .budget(budget.clone())
                        .await;
                    r.ok()
                }
                1 | 2 => {
                    let pipeline = Pipeline::builder()
                        .runtime(rt.clone())
                        .retry(constant(ms(10), 10))
                        .retry_budget(budget.clone())
                        .classify(classify)
                        .honor_retry_after()
                        .build()
                        .unwrap();
                    let d = Deadline::after(&rt, ms(100));
                    if front == 2 {
                        let p: BoxPipeline<Resp, ApiError> = pipeline.boxed();
                        p.call_before(d, || op.call()).await.ok()
                    } else {
                        pipeline.call_before(d, || op.call()).await.ok()
                    }
                }
                _ => {
                    let inner = {
                        let op = op.clone();
                        tower::service_fn(move |(): ()| {
                            let op = op.clone();
                            async move { op.call().await }
                        })
                    };
                    let mut service = RetryLayer::new(constant(ms(10), 10))
                        .runtime(rt.clone())
                        .classify(classify)
                        .honor_retry_after()
                        .deadline(ms(100))
                        .budget(budget.clone())
                        .layer(inner);
                    std::future::poll_fn(|cx| service.poll_ready(cx))
                        .await
                        .unwrap();
                    service.call(()).await.ok()
                }
            };
            assert_eq!(a, Some(r503(1)), "front {front}: {RULE_RF}");
            assert_eq!(op.calls(), 2);
            // Call B: deposits 2; balance 2 + 2 − 1 = 3 retries.
            let attempts = busy_call_with_budget(&rt, front, &budget).await;
            assert_eq!(
                attempts, 4,
                "front {front}: engine \"only a retry that is taken withdraws from the budget\""
            );
        }
    }
    on_every_runtime!(scenario);
}

// Docs: RetryLayer "The deadline runs from the call, and the first attempt is made in call on the
// service that was polled ready". Ready at 0, called at 80: the 100 ms run from 80, so retries go
// on until 170 (the sleep to 180 is not taken), and the 503 answers.
#[test]
fn tower_deadline_runs_from_the_call_not_from_readiness() {
    async fn scenario<R: Runtime>(rt: Clocked<R>) {
        let op = Scripted::with_latency(
            rt.clone(),
            vec![now_(Ok(r503(1))), now_(Err(ApiError::Busy))],
        );
        let inner = {
            let op = op.clone();
            tower::service_fn(move |(): ()| {
                let op = op.clone();
                async move { op.call().await }
            })
        };
        let mut service = RetryLayer::new(constant(ms(10), 50))
            .runtime(rt.clone())
            .classify(classify)
            .deadline(ms(100))
            .layer(inner);
        let start = rt.now();
        std::future::poll_fn(|cx| service.poll_ready(cx))
            .await
            .unwrap();
        rt.sleep(ms(80)).await;
        let r = service.call(()).await;
        assert_eq!(r, Ok(r503(1)), "{RULE_TOWER}");
        // "The deadline runs from the call"
        assert_eq!(
            op.start_offsets(),
            (8..=17).map(|k| ms(10 * k)).collect::<Vec<_>>()
        );
        assert_eq!(rt.now() - start, ms(170));
    }
    on_every_runtime!(scenario);
}

/// A service whose readiness fails on the `fail_at`-th check (0-based), sharing the counter
/// across clones.
#[derive(Clone)]
struct FlakyReady<R: Runtime> {
    op: Scripted<Clocked<R>, Resp, ApiError>,
    checks: Arc<std::sync::atomic::AtomicUsize>,
    fail_at: usize,
}

impl<R: Runtime> Service<()> for FlakyReady<R> {
    type Response = Resp;
    type Error = ApiError;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<Resp, ApiError>> + Send>>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), ApiError>> {
        let n = self
            .checks
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        std::task::Poll::Ready(if n == self.fail_at {
            Err(ApiError::Invalid)
        } else {
            Ok(())
        })
    }

    fn call(&mut self, (): ()) -> Self::Future {
        let op = self.op.clone();
        Box::pin(async move { op.call().await })
    }
}

// Docs: RetryLayer "An error from the inner service's poll_ready is returned at once, unretried";
// "each retry goes to a clone of it, polled ready first". The retry's readiness check fails
// after a 503: that error is the answer, at once (no deadline is involved).
#[test]
fn tower_readiness_error_on_a_retry_is_returned_at_once() {
    async fn scenario<R: Runtime>(rt: Clocked<R>) {
        let op =
            Scripted::with_latency(rt.clone(), vec![now_(Ok(r503(1))), now_(Ok(resp(200, 9)))]);
        let checks = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let inner = FlakyReady {
            op: op.clone(),
            checks: Arc::clone(&checks),
            fail_at: 1,
        };
        let mut service = RetryLayer::new(constant(ms(10), 5))
            .runtime(rt.clone())
            .classify(classify)
            .deadline(ms(100))
            .layer(inner);
        let start = rt.now();
        std::future::poll_fn(|cx| service.poll_ready(cx))
            .await
            .unwrap();
        let r = service.call(()).await;
        assert_eq!(
            r,
            Err(ApiError::Invalid),
            "\"An error from the inner service's poll_ready is returned at once, unretried\""
        );
        assert_eq!(op.calls(), 1);
        assert_eq!(
            rt.now() - start,
            ms(10),
            "after the first sleep, at the retry's readiness"
        );
    }
    on_every_runtime!(scenario);
}

// Docs: Retry::seed "Fixes the jitter seed, making the delays reproducible"; PipelineBuilder::
// seed and RetryLayer::seed likewise; engine.rs "whether an attempt may start, whether a failure
// is retried, ... and for how long to wait are decided here, once, so the fronts cannot drift".
// Full jitter, a fixed seed: each front twice gives the same instants, the fronts agree with one
// another, and every pause is within [0, 10 ms × 2^n] (Jitter::Full "Uniform in [0, d]").
#[test]
fn a_fixed_seed_gives_the_same_jittered_pauses_on_every_front() {
    async fn scenario<R: Runtime>(rt: Clocked<R>) {
        for seed in [0u64, 7, u64::MAX] {
            let backoff = Backoff::exponential(ms(10))
                .max_attempts(6)
                .build()
                .unwrap();
            let mut seen = Vec::new();
            for front in 0..4u8 {
                for _ in 0..2 {
                    let op = Scripted::with_latency(
                        rt.clone(),
                        vec![now_(Err::<Resp, _>(ApiError::Busy))],
                    );
                    match front {
                        0 => {
                            let _ = (|| op.call())
                                .retry_on(&rt, backoff)
                                .classify(classify)
                                .seed(seed)
                                .await;
                        }
                        1 | 2 => {
                            let pipeline = Pipeline::builder()
                                .runtime(rt.clone())
                                .retry(backoff)
                                .classify(classify)
                                .seed(seed)
                                .build()
                                .unwrap();
                            if front == 2 {
                                let p: BoxPipeline<Resp, ApiError> = pipeline.boxed();
                                let _ = p.call(|| op.call()).await;
                            } else {
                                let _ = pipeline.call(|| op.call()).await;
                            }
                        }
                        _ => {
                            let inner = {
                                let op = op.clone();
                                tower::service_fn(move |(): ()| {
                                    let op = op.clone();
                                    async move { op.call().await }
                                })
                            };
                            let mut service = RetryLayer::new(backoff)
                                .runtime(rt.clone())
                                .classify(classify)
                                .seed(seed)
                                .layer(inner);
                            std::future::poll_fn(|cx| service.poll_ready(cx))
                                .await
                                .unwrap();
                            let _ = service.call(()).await;
                        }
                    }
                    let starts = op.start_offsets();
                    assert_eq!(starts.len(), 6);
                    for (n, pair) in starts.windows(2).enumerate() {
                        // "Uniform in [0, d]"
                        assert!(
                            pair[1] - pair[0] <= ms(10) * (1 << n),
                            "front {front}: {starts:?}"
                        );
                    }
                    seen.push((front, starts));
                }
            }
            for (front, starts) in &seen {
                // "making the delays reproducible" / "so the fronts cannot drift"
                assert_eq!(
                    starts, &seen[0].1,
                    "seed {seed}: front {front} drifted from the retry future"
                );
            }
        }
    }
    on_every_runtime!(scenario);
}

// Docs: Pipeline::call "Rejected::DeadlineExceeded when the deadline ended the call, an attempt
// still running included (the deadline cut it, not the service: the breaker records nothing for
// it)"; RULE_PIPE. Breaker opening after 2 consecutive failures: the 503 is one, the cut attempt
// must not be the second — so the next call still reaches the operation.
async fn cut_attempt_is_not_a_breaker_failure<R: Runtime>(rt: Clocked<R>) {
    for boxed in [false, true] {
        let op = Scripted::with_latency(
            rt.clone(),
            vec![
                now_(Ok(r503(1))),
                (HOUR, Err(ApiError::Busy)),
                now_(Ok(resp(200, 2))),
            ],
        );
        let pipeline = Pipeline::builder()
            .runtime(rt.clone())
            .retry(constant(ms(10), 5))
            .classify(classify)
            .breaker(breaker(&rt, 2))
            .build()
            .unwrap();
        let p: BoxPipeline<Resp, ApiError> = pipeline.clone().boxed();
        let call = |d: Deadline| {
            let op = &op;
            let pipeline = &pipeline;
            let p = &p;
            async move {
                if boxed {
                    p.call_before(d, || op.call()).await
                } else {
                    pipeline.call_before(d, || op.call()).await
                }
            }
        };
        let first = call(Deadline::after(&rt, ms(100))).await;
        assert_eq!(
            pipeline_got(first, Got::Value),
            Got::Value(r503(1)),
            "boxed {boxed}: {RULE_PIPE}"
        );
        let second = call(Deadline::after(&rt, ms(100))).await;
        assert_eq!(
            pipeline_got(second, Got::Value),
            Got::Value(resp(200, 2)),
            "boxed {boxed}: \"the deadline cut it, not the service: the breaker records nothing for it\""
        );
        assert_eq!(op.calls(), 3);
    }
}

#[test]
fn a_cut_attempt_after_a_value_is_not_counted_by_the_breaker() {
    on_every_runtime!(cut_attempt_is_not_a_breaker_failure);
}

// Docs: RetryError::into_inner / inner "The operation's own error, if this carries one";
// DeadlineExceeded.last_error "The last error seen before the deadline". Verdict::is_retryable
// "Whether another attempt is worth making" (classify.rs table: only RetryableFailure retries).
#[test]
fn retry_error_accessors_and_verdict_helpers() {
    let inner: RetryError<ApiError> = RetryError::Inner(ApiError::Busy);
    assert_eq!(inner.inner(), Some(&ApiError::Busy));
    assert_eq!(inner.into_inner(), Some(ApiError::Busy));
    let timed: RetryError<ApiError> = RetryError::AttemptTimedOut;
    assert_eq!(timed.inner(), None);
    let none: RetryError<ApiError> = RetryError::DeadlineExceeded {
        last_error: None,
        attempts: 0,
    };
    assert_eq!(none.into_inner(), None);
    let carried: RetryError<ApiError> = RetryError::DeadlineExceeded {
        last_error: Some(ApiError::Throttled(ms(5))),
        attempts: 2,
    };
    assert_eq!(
        carried.inner(),
        Some(&ApiError::Throttled(ms(5))),
        "\"The operation's own error, if this carries one\""
    );
    for (verdict, retryable) in [
        (Verdict::Success, false),
        (Verdict::RetryableFailure, true),
        (Verdict::Failure, false),
        (Verdict::Ignored, false),
    ] {
        assert_eq!(verdict.is_retryable(), retryable, "{verdict:?}");
    }
}

// =============================================================================================
// Part 2: tidewall-core's math
// =============================================================================================

fn config(cases: u32, seed: u64) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        rng_seed: RngSeed::Fixed(seed),
        max_global_rejects: 100_000,
        ..ProptestConfig::default()
    }
}

/// Nanosecond counts biased to the edges of `u64`.
fn edge_u64() -> impl Strategy<Value = u64> {
    prop_oneof![
        0..=16u64,
        any::<u64>(),
        (0..=4096u64).prop_map(|k| u64::MAX - k),
        (0..64u32).prop_map(|s| 1u64 << s),
        (0..64u32, 0..3u64).prop_map(|(s, d)| (1u64 << s).saturating_sub(d)),
    ]
}

fn nanos(n: u64) -> Duration {
    Duration::from_nanos(n)
}

fn as_nanos(d: Duration) -> u128 {
    d.as_nanos()
}

// --- backoff -------------------------------------------------------------------------------

/// A random backoff configuration: (kind, initial, step, factor, jitter, cap, attempts,
/// max_elapsed).
#[derive(Debug, Clone, Copy)]
struct Cfg {
    kind: u8,
    initial: u64,
    step: u64,
    factor: f64,
    jitter: u8,
    cap: u64,
    attempts: u32,
    elapsed: Option<u64>,
}

fn factor_strategy() -> impl Strategy<Value = f64> {
    prop_oneof![
        Just(1.0),
        Just(2.0),
        Just(1.5),
        Just(1.15),
        1.0f64..16.0,
        (1u64..=u64::MAX).prop_map(|w| w as f64),
        Just(4_503_599_627_370_497.0), // 2^52 + 1
        Just(9_007_199_254_740_992.0), // 2^53
        Just(1e300),
        Just(f64::MAX),
        Just(f64::INFINITY),
        Just(f64::NAN),
        Just(0.999_999_999),
        Just(0.0),
        Just(f64::MIN_POSITIVE / 2.0), // subnormal
    ]
}

fn cfg_strategy() -> impl Strategy<Value = Cfg> {
    (
        0..4u8,
        edge_u64(),
        edge_u64(),
        factor_strategy(),
        0..3u8,
        edge_u64(),
        prop_oneof![0..=12u32, Just(u32::MAX)],
        proptest::option::of(edge_u64()),
    )
        .prop_map(
            |(kind, initial, step, factor, jitter, cap, attempts, elapsed)| Cfg {
                kind,
                initial,
                step,
                factor,
                jitter,
                cap,
                attempts,
                elapsed,
            },
        )
}

fn jitter_of(j: u8) -> tidewall_core::backoff::Jitter {
    match j {
        0 => tidewall_core::backoff::Jitter::None,
        1 => tidewall_core::backoff::Jitter::Full,
        _ => tidewall_core::backoff::Jitter::Equal,
    }
}

fn build_cfg(c: &Cfg) -> Result<tidewall_core::backoff::Backoff, ConfigError> {
    use tidewall_core::backoff::Backoff as B;
    let mut b = match c.kind {
        0 => B::constant(nanos(c.initial)),
        1 => B::linear(nanos(c.initial), nanos(c.step)),
        2 => B::exponential(nanos(c.initial)).factor(c.factor),
        _ => B::decorrelated_jitter(nanos(c.initial)),
    };
    if c.kind != 3 {
        b = b.jitter(jitter_of(c.jitter));
    }
    b = b.max_delay(nanos(c.cap)).max_attempts(c.attempts);
    if let Some(e) = c.elapsed {
        b = b.max_elapsed(nanos(e));
    }
    b.build()
}

proptest! {
    #![proptest_config(config(3000, 0x5eed_0001))]

    // Docs (BackoffBuilder::build): "ConfigError for zero attempts, a zero cap, a factor below 1
    // or not finite, a duration above u64::MAX nanoseconds, an initial delay above the cap, or,
    // for decorrelated jitter, a zero initial delay". Docs (Delays): "Every yielded delay is ≤
    // the cap, the iterator yields at most max_attempts − 1 items, and the sum of yielded delays
    // never exceeds max_elapsed. It is fused ... Extreme settings cannot overflow". Docs
    // (Backoff::next_delay): "Advances state and returns the next delay, exactly as Delays
    // would". Docs (module): "the same seed gives the same delays".
    #[test]
    fn backoff_validates_and_keeps_every_delays_promise(c in cfg_strategy(), seed in any::<u64>()) {
        let valid = c.attempts >= 1
            && c.cap > 0
            && c.initial <= c.cap
            && (c.kind != 2 || (c.factor.is_finite() && c.factor >= 1.0))
            && (c.kind != 3 || c.initial > 0);
        let built = build_cfg(&c);
        // "ConfigError for zero attempts, a zero cap, a factor below 1 or not finite, ..., an
        // initial delay above the cap, or, for decorrelated jitter, a zero initial delay"
        prop_assert_eq!(built.is_ok(), valid, "{:?} -> {:?}", c, built);
        let Ok(b) = built else { return Ok(()) };
        let limit = 300usize;
        let mut it = b.delays(seed);
        let mut got = Vec::new();
        let mut ended = false;
        for _ in 0..limit {
            match it.next() {
                Some(d) => got.push(d),
                None => { ended = true; break; }
            }
        }
        // Delays::retries_yielded: "How many delays have been yielded so far."
        prop_assert_eq!(it.retries_yielded() as usize, got.len());
        // The getters give back what was built.
        prop_assert_eq!(b.max_attempts_total(), c.attempts);
        prop_assert_eq!(b.max_delay_cap(), nanos(c.cap));
        prop_assert_eq!(b.max_elapsed_budget(), c.elapsed.map(nanos));
        // "the iterator yields at most max_attempts − 1 items"
        prop_assert!((got.len() as u64) < u64::from(c.attempts));
        // "Every yielded delay is ≤ the cap"
        prop_assert!(got.iter().all(|d| as_nanos(*d) <= u128::from(c.cap)), "{:?}", got);
        // "the sum of yielded delays never exceeds max_elapsed"
        if let Some(e) = c.elapsed {
            let sum: u128 = got.iter().map(|d| as_nanos(*d)).sum();
            prop_assert!(sum <= u128::from(e), "sum {} > max_elapsed {}", sum, e);
        }
        // "It is fused: once it returns None it always does."
        if ended {
            for _ in 0..3 { prop_assert!(it.next().is_none()); }
        }
        // "the same seed gives the same delays"
        let again: Vec<_> = b.delays(seed).take(got.len()).collect();
        prop_assert_eq!(&again, &got);
        // "returns the next delay, exactly as Delays would (None once the schedule is exhausted)"
        let mut state = b.start(seed);
        for (k, d) in got.iter().enumerate() {
            prop_assert_eq!(b.next_delay(&mut state), Some(*d), "step {}", k);
        }
        if ended { prop_assert_eq!(b.next_delay(&mut state), None); }
    }

    // Docs (module): "The schedule's raw delay is computed with saturating arithmetic (never
    // overflows), in integer nanoseconds, so it is exact; only an exponential schedule with a
    // factor that is not a whole number steps in f64". Whole factors past 2^52 (and past 2^53,
    // where f64 cannot hold initial × factor): delay n == min(cap, initial × factor^n), exactly.
    #[test]
    fn whole_factors_past_2_pow_52_are_exact(
        initial in prop_oneof![1..=16u64, any::<u64>(), 1u64..(1 << 20)],
        raw_factor in prop_oneof![1u64..=64, (1u64 << 52)..=(1u64 << 54), any::<u64>()],
        cap in prop_oneof![Just(u64::MAX), any::<u64>()],
        attempts in 1u32..=6,
    ) {
        // The whole number nearest to raw_factor that f64 holds exactly.
        let factor = raw_factor as f64;
        prop_assume!(factor < 18_446_744_073_709_551_616.0);
        let whole = factor as u64;
        prop_assume!(initial <= cap);
        let b = tidewall_core::backoff::Backoff::exponential(nanos(initial))
            .factor(factor)
            .jitter(tidewall_core::backoff::Jitter::None)
            .max_delay(nanos(cap))
            .max_attempts(attempts)
            .build()
            .unwrap();
        let got: Vec<u128> = b.delays(1).map(as_nanos).collect();
        let mut raw: u128 = u128::from(initial);
        let mut want = Vec::new();
        for _ in 1..attempts {
            want.push(raw.min(u128::from(cap)));
            raw = raw.saturating_mul(u128::from(whole)).min(u128::from(u64::MAX));
        }
        // "saturating arithmetic ... in integer nanoseconds, so it is exact"
        prop_assert_eq!(got, want, "initial {} factor {}", initial, whole);
    }

    // Docs (module): "The schedule's raw delay is computed with saturating arithmetic (never
    // overflows), in integer nanoseconds, so it is exact"; (Schedule::Linear) "initial + n ×
    // step". Jitter::None: delay n == min(cap, initial + n × step), saturating.
    #[test]
    fn linear_schedules_are_exact_and_saturate(
        initial in edge_u64(), step in edge_u64(), cap in edge_u64(), attempts in 1u32..=40,
    ) {
        let (initial, cap) = (initial.min(cap), initial.max(cap));
        prop_assume!(cap > 0);
        let b = tidewall_core::backoff::Backoff::linear(nanos(initial), nanos(step))
            .jitter(tidewall_core::backoff::Jitter::None)
            .max_delay(nanos(cap))
            .max_attempts(attempts)
            .build()
            .unwrap();
        let got: Vec<u128> = b.delays(0).map(as_nanos).collect();
        let want: Vec<u128> = (0..u128::from(attempts) - 1)
            .map(|n| (u128::from(initial) + n * u128::from(step)).min(u128::from(u64::MAX)).min(u128::from(cap)))
            .collect();
        prop_assert_eq!(got, want);
    }

    // Docs (module): "delay n is within a relative n × 2^-53 (about n × 10^-16) of initial ×
    // factor^n, then rounded to the nearest nanosecond". Fractional factors m / 1024 (exact in
    // f64), the bound checked in exact integer arithmetic.
    #[test]
    fn fractional_factors_round_to_the_nearest_nanosecond_within_the_bound(
        m in 1025u64..=4096,
        initial in prop_oneof![1u64..=1000, 1u64..(1 << 40)],
    ) {
        prop_assume!(m % 1024 != 0);
        let factor = m as f64 / 1024.0;
        let attempts = 8u32; // delays n = 0..=6
        let b = tidewall_core::backoff::Backoff::exponential(nanos(initial))
            .factor(factor)
            .jitter(tidewall_core::backoff::Jitter::None)
            .max_delay(nanos(u64::MAX))
            .max_attempts(attempts)
            .build()
            .unwrap();
        let got: Vec<u128> = b.delays(3).map(as_nanos).collect();
        prop_assert_eq!(got.len(), 7);
        for (n, delay) in got.iter().enumerate() {
            // exact = num / den
            let num = u128::from(initial) * u128::from(m).pow(n as u32);
            let den = 1u128 << (10 * n);
            let scaled = delay * den;
            let diff = scaled.abs_diff(num);
            // |delay − exact| ≤ 1/2 + n·2^-53·exact, i.e. diff·2^53 ≤ den·2^52 + n·num
            let scaled_diff = diff.checked_mul(1u128 << 53);
            prop_assert!(
                scaled_diff.is_some_and(|sd| sd <= den * (1u128 << 52) + n as u128 * num),
                "n {}: delay {} vs exact {}/{} (factor {}/1024, initial {})", n, delay, num, den, m, initial
            );
        }
    }

    // Docs (Jitter): "Full: Uniform in [0, d]", "Equal: Uniform in [d/2, d]: keeps at least half
    // the delay", d being "the schedule's raw delay, capped at max_delay"; (module) "max_delay
    // caps the jittered value too". Schedule::DecorrelatedJitter: "random(initial ..= 3 ×
    // previous), capped"; DelayState: "The last delay yielded ... (the initial delay before the
    // first): what decorrelated jitter grows from".
    #[test]
    fn jitter_stays_within_its_documented_interval(
        kind in 0..3u8,
        initial in prop_oneof![1u64..=10_000, edge_u64()],
        step in edge_u64(),
        cap in edge_u64(),
        seed in any::<u64>(),
    ) {
        use tidewall_core::backoff::{Backoff as B, Jitter as J};
        let (initial, cap) = (initial.min(cap), initial.max(cap));
        prop_assume!(cap > 0);
        let make = |j: J| {
            let b = match kind {
                0 => B::constant(nanos(initial)),
                1 => B::linear(nanos(initial), nanos(step)),
                _ => B::exponential(nanos(initial)).factor(1.75),
            };
            b.jitter(j).max_delay(nanos(cap)).max_attempts(12).build().unwrap()
        };
        let raw: Vec<u128> = make(J::None).delays(seed).map(as_nanos).collect();
        let full: Vec<u128> = make(J::Full).delays(seed).map(as_nanos).collect();
        let equal: Vec<u128> = make(J::Equal).delays(seed).map(as_nanos).collect();
        prop_assert_eq!(full.len(), raw.len());
        prop_assert_eq!(equal.len(), raw.len());
        for k in 0..raw.len() {
            // "Uniform in [0, d]"
            prop_assert!(full[k] <= raw[k], "full {} > d {}", full[k], raw[k]);
            // "Uniform in [d/2, d]: keeps at least half the delay"
            prop_assert!(equal[k] <= raw[k] && 2 * equal[k] >= raw[k], "equal {} vs d {}", equal[k], raw[k]);
        }
        // Decorrelated jitter ("a zero initial delay" is refused: none to check).
        if initial == 0 { return Ok(()); }
        let dj = B::decorrelated_jitter(nanos(initial))
            .max_delay(nanos(cap)).max_attempts(12).build().unwrap();
        let mut previous = u128::from(initial);
        for d in dj.delays(seed).map(as_nanos) {
            // "random(initial ..= 3 × previous), capped"
            let hi = (3 * previous).min(u128::from(cap));
            prop_assert!(d >= u128::from(initial).min(u128::from(cap)) && d <= hi,
                "decorrelated {} outside [{}, {}]", d, initial, hi);
            previous = d;
        }
    }

    // Docs (Backoff::next_delay_held): "once its max_attempts or max_elapsed are spent, every
    // later call returns the last delay it gave (the cap, max_delay, if it gave none)".
    // Docs (cap_attempts): "it lowers the count, never raises it".
    #[test]
    fn held_schedules_repeat_their_last_delay_and_cap_attempts_only_lowers(
        c in cfg_strategy(), seed in any::<u64>(), lower in 1u32..=u32::MAX,
    ) {
        let Ok(b) = build_cfg(&Cfg { attempts: c.attempts.clamp(1, 12), ..c }) else { return Ok(()) };
        let plain: Vec<Duration> = b.delays(seed).collect();
        let mut state = b.start(seed);
        let held: Vec<Duration> = (0..plain.len() + 4).map(|_| b.next_delay_held(&mut state)).collect();
        let last = plain.last().copied().unwrap_or_else(|| b.max_delay_cap());
        prop_assert_eq!(&held[..plain.len()], &plain[..]);
        prop_assert!(held[plain.len()..].iter().all(|d| *d == last), "held {:?} plain {:?}", held, plain);
        let capped = b.cap_attempts(core::num::NonZeroU32::new(lower).unwrap());
        prop_assert_eq!(capped.max_attempts_total(), b.max_attempts_total().min(lower));
    }

    // Docs (BackoffBuilder::max_elapsed): "Ends the schedule before the sum of delays would
    // exceed budget"; (module) "a sum of delays that would pass it is past any max_elapsed".
    // Constant delay d, no jitter: exactly min(attempts − 1, floor(E / d)) delays.
    #[test]
    fn max_elapsed_ends_exactly_before_the_sum_would_exceed_it(
        d in prop_oneof![1u64..=1000, edge_u64()],
        e in edge_u64(),
        attempts in prop_oneof![1u32..=50, Just(u32::MAX)],
    ) {
        prop_assume!(d > 0);
        let b = tidewall_core::backoff::Backoff::constant(nanos(d))
            .jitter(tidewall_core::backoff::Jitter::None)
            .max_delay(nanos(u64::MAX))
            .max_attempts(attempts)
            .max_elapsed(nanos(e))
            .build()
            .unwrap();
        let expected = (u64::from(attempts) - 1).min(e / d);
        let n = b.delays(0).take(2001).count() as u64;
        prop_assert_eq!(n, expected.min(2001), "d {} e {} attempts {}", d, e, attempts);
    }
}

// Docs (BackoffBuilder::build): "a duration above u64::MAX nanoseconds" is a ConfigError; "for
// decorrelated jitter, a zero initial delay (every delay would be zero) or a jitter mode set on
// it". Docs (BackoffBuilder::factor): "must be finite and ≥ 1".
#[test]
fn backoff_builder_refuses_the_documented_extremes() {
    use tidewall_core::backoff::{Backoff as B, Jitter as J};
    let max_ns = nanos(u64::MAX);
    // "a duration above u64::MAX nanoseconds"
    assert!(
        B::constant(Duration::MAX)
            .max_delay(Duration::MAX)
            .build()
            .is_err()
    );
    assert!(
        B::constant(max_ns + nanos(1))
            .max_delay(Duration::MAX)
            .build()
            .is_err()
    );
    assert!(B::constant(ms(1)).max_delay(Duration::MAX).build().is_err());
    assert!(
        B::constant(ms(1))
            .max_elapsed(Duration::MAX)
            .build()
            .is_err()
    );
    assert!(
        B::constant(max_ns).max_delay(max_ns).build().is_ok(),
        "u64::MAX ns itself fits"
    );
    // "a factor below 1 or not finite"
    for factor in [
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
        0.0,
        -1.0,
        1.0 - f64::EPSILON,
        5e-324,
    ] {
        assert!(
            B::exponential(ms(1)).factor(factor).build().is_err(),
            "factor {factor} must be refused"
        );
    }
    assert!(
        B::exponential(ms(1)).factor(f64::MAX).build().is_ok(),
        "finite and ≥ 1"
    );
    // "for decorrelated jitter, a zero initial delay ... or a jitter mode set on it"
    assert!(B::decorrelated_jitter(Duration::ZERO).build().is_err());
    assert!(
        B::decorrelated_jitter(ms(1))
            .jitter(J::Full)
            .build()
            .is_err()
    );
    assert!(
        B::decorrelated_jitter(ms(1))
            .jitter(J::None)
            .build()
            .is_err()
    );
    // "zero attempts, a zero cap, ... an initial delay above the cap"
    assert!(B::constant(ms(1)).max_attempts(0).build().is_err());
    assert!(
        B::constant(Duration::ZERO)
            .max_delay(Duration::ZERO)
            .build()
            .is_err()
    );
    assert!(B::constant(ms(2)).max_delay(ms(1)).build().is_err());
}

// Docs (delays.rs): "The nearest whole nanosecond ... 100 ms × 1.15 is 115 ms, not the
// 114.999999 ms its f64 product truncates to"; (Delays) "delays saturate at u64::MAX
// nanoseconds, and a sum of delays that would pass it is past any max_elapsed".
#[test]
fn decimal_factors_round_and_extremes_saturate() {
    use tidewall_core::backoff::{Backoff as B, Jitter as J};
    let b = B::exponential(ms(100))
        .factor(1.15)
        .jitter(J::None)
        .max_delay(Duration::from_secs(3600))
        .max_attempts(6)
        .build()
        .unwrap();
    let got: Vec<u128> = b.delays(0).map(as_nanos).collect();
    // 100 × 1.15^n ms, to the nearest nanosecond.
    assert_eq!(
        got,
        vec![
            100_000_000,
            115_000_000,
            132_250_000,
            152_087_500,
            174_900_625
        ],
        "\"100 ms × 1.15 is 115 ms, not the 114.999999 ms its f64 product truncates to\""
    );
    let max_ns = nanos(u64::MAX);
    let b = B::constant(max_ns)
        .jitter(J::None)
        .max_delay(max_ns)
        .max_attempts(5)
        .max_elapsed(max_ns)
        .build()
        .unwrap();
    // "a sum of delays that would pass it is past any max_elapsed"
    assert_eq!(b.delays(0).collect::<Vec<_>>(), vec![max_ns]);
    let b = B::linear(nanos(1), max_ns)
        .jitter(J::None)
        .max_delay(max_ns)
        .max_attempts(4)
        .build()
        .unwrap();
    // "delays saturate at u64::MAX nanoseconds"
    assert_eq!(
        b.delays(0).collect::<Vec<_>>(),
        vec![nanos(1), max_ns, max_ns]
    );
}

// Docs (backoff module): "Jitter is on by default (Jitter::Full)"; "Jitter randomizes it,
// capped at max_delay first (AWS's "full jitter": a delay past the cap is jittered below the cap,
// so late delays still spread)"; DEFAULT_MAX_ATTEMPTS "The default number of attempts, the first
// call included (so three retries)"; DEFAULT_MAX_DELAY "The default cap on a single delay".
#[test]
fn backoff_defaults_and_late_delays_still_spread() {
    use tidewall_core::backoff::{
        Backoff as B, DEFAULT_MAX_ATTEMPTS, DEFAULT_MAX_DELAY, Jitter as J,
    };
    let b = B::exponential(ms(10)).build().unwrap();
    assert_eq!(
        b.jitter_mode(),
        J::Full,
        "\"Jitter is on by default (Jitter::Full)\""
    );
    assert_eq!(b.max_attempts_total(), DEFAULT_MAX_ATTEMPTS);
    assert_eq!(DEFAULT_MAX_ATTEMPTS, 4);
    assert_eq!(b.max_delay_cap(), DEFAULT_MAX_DELAY);
    assert_eq!(b.delays(1).count(), 3, "\"so three retries\"");
    // Raw delays 1 s, 2 s, 4 s, ... against a 2 s cap: from the second on, past the cap.
    let b = B::exponential(Duration::from_secs(1))
        .max_delay(Duration::from_secs(2))
        .max_attempts(40)
        .build()
        .unwrap();
    let mut at_cap = 0;
    let mut late = 0;
    for seed in 0..16u64 {
        for d in b.delays(seed).skip(2) {
            late += 1;
            assert!(
                d <= Duration::from_secs(2),
                "\"no delay ever exceeds the cap\""
            );
            if d == Duration::from_secs(2) {
                at_cap += 1;
            }
        }
    }
    assert!(
        at_cap * 10 < late,
        "{at_cap} of {late} late delays sit at the cap: \"a delay past the cap is jittered below \
         the cap, so late delays still spread\""
    );
}

// --- GCRA -----------------------------------------------------------------------------------

/// (interval, burst) pairs that `Gcra::new(1, interval, burst)` accepts: `(burst + 1) ×
/// interval` fits in u64.
fn gcra_params() -> impl Strategy<Value = (u64, u32)> {
    (
        prop_oneof![1u32..=8, 1u32..=1000, Just(u32::MAX), any::<u32>()],
        prop_oneof![
            1u64..=1000,
            any::<u64>(),
            (0..4u64).prop_map(|k| u64::MAX - k)
        ],
    )
        .prop_map(|(burst, raw)| {
            let burst = burst.max(1);
            let max_iv = u64::MAX / (u64::from(burst) + 1);
            (1 + raw % max_iv, burst)
        })
}

/// A model of the documented GCRA: the new TAT of `cells` is `max(tat, now) + cells ×
/// interval`, which may run at most `burst × interval` ahead of `now` and may not pass
/// `u64::MAX`.
fn model_decide(iv: u64, burst: u32, tat: u64, now: u64, cells: u32) -> Result<u64, Denied> {
    if cells == 0 {
        return Ok(tat);
    }
    if cells > burst {
        return Err(Denied::InsufficientCapacity { burst });
    }
    let new = u128::from(tat.max(now)) + u128::from(cells) * u128::from(iv);
    let horizon = u128::from(now) + u128::from(burst) * u128::from(iv);
    if new <= horizon && new <= u128::from(u64::MAX) {
        Ok(new as u64)
    } else {
        let needed = new.saturating_sub(horizon).max(1);
        Err(Denied::Wait {
            nanos: needed.min(u128::from(u64::MAX)) as u64,
        })
    }
}

fn point(sel: u8, raw: u64, iv: u64, burst: u32) -> u64 {
    let span = u128::from(iv) * u128::from(burst);
    match sel % 5 {
        0 => raw,
        1 => raw % 4096,
        2 => u64::MAX - raw % 4096,
        // Within `burst` intervals of the end of time.
        3 => {
            (u128::from(u64::MAX) - (u128::from(raw) % (span + 1)).min(u128::from(u64::MAX))) as u64
        }
        _ => {
            (u128::from(u64::MAX) - (u128::from(raw) % (2 * span + 2)).min(u128::from(u64::MAX)))
                as u64
        }
    }
}

proptest! {
    #![proptest_config(config(4000, 0x5eed_0002))]

    // Docs (Gcra::decide): "Denied::Wait with the exact wait, or Denied::InsufficientCapacity when
    // cells > burst (cells == 0 always passes and returns tat itself). A request whose new state
    // would pass u64::MAX nanoseconds is refused with the wait it would need (at least 1 ns;
    // u64::MAX when that does not fit)"; (field) "burst * interval: how far ahead of now the TAT
    // may run"; (Denied::Wait) "the same request is admitted after waiting this long ... except
    // at the end of time, where no wait helps".
    #[test]
    fn gcra_decide_matches_the_documented_rule_up_to_the_end_of_time(
        (iv, burst) in gcra_params(),
        s1 in any::<u8>(), r1 in any::<u64>(), s2 in any::<u8>(), r2 in any::<u64>(),
        cells in prop_oneof![0u32..=3, any::<u32>()],
    ) {
        let gcra = Gcra::new(1, nanos(iv), burst).unwrap();
        let tat = point(s1, r1, iv, burst);
        let now = point(s2, r2, iv, burst);
        let cells = if cells > 3 { cells % burst.saturating_add(2).max(1) } else { cells };
        let got = gcra.decide(tat, now, cells);
        let want = model_decide(iv, burst, tat, now, cells);
        prop_assert_eq!(got, want, "iv {} burst {} tat {} now {} cells {}", iv, burst, tat, now, cells);
        // "the same request is admitted after waiting this long (if nobody else takes the
        // capacity first), except at the end of time"
        if let Err(Denied::Wait { nanos: wait }) = got {
            prop_assert!(wait >= 1);
            if let Some(later) = now.checked_add(wait) {
                let end_of_time = u128::from(tat.max(later)) + u128::from(cells) * u128::from(iv) > u128::from(u64::MAX);
                if !end_of_time {
                    prop_assert!(gcra.decide(tat, later, cells).is_ok(), "waiting {} did not admit", wait);
                    // "the exact wait": one nanosecond less is not enough.
                    prop_assert!(gcra.decide(tat, later - 1, cells).is_err(), "wait {} was not exact", wait);
                }
            }
        }
    }

    // Docs (Gcra::available): "How many cells one request could take at now from the stored
    // tat: the burst when rested, fewer while earlier cells are being paid off"; (module) "Within
    // burst intervals of it a limit admits fewer cells, in the last interval none at all, fresh
    // or not: ... available counts only what fits".
    #[test]
    fn gcra_available_is_the_largest_request_decide_admits(
        (iv, burst) in gcra_params(),
        s1 in any::<u8>(), r1 in any::<u64>(), s2 in any::<u8>(), r2 in any::<u64>(),
    ) {
        let gcra = Gcra::new(1, nanos(iv), burst).unwrap();
        let tat = point(s1, r1, iv, burst);
        let now = point(s2, r2, iv, burst);
        let avail = gcra.available(tat, now);
        prop_assert!(avail <= burst);
        if avail > 0 {
            prop_assert!(gcra.decide(tat, now, avail).is_ok(), "available {} but decide refuses it", avail);
        }
        if avail < burst {
            prop_assert!(gcra.decide(tat, now, avail + 1).is_err(), "available {} but decide admits more", avail);
        }
        // "the burst when rested" — unless within `burst` intervals of the end of time.
        if tat <= now && u128::from(now) + u128::from(burst) * u128::from(iv) <= u128::from(u64::MAX) {
            prop_assert_eq!(avail, burst);
        }
        // "in the last interval none at all, fresh or not"
        if u128::from(now) + u128::from(iv) > u128::from(u64::MAX) {
            prop_assert_eq!(avail, 0);
        }
        // "A TAT at or before now means fully rested"
        prop_assert_eq!(Gcra::is_rested(tat, now), tat <= now);
    }

    // Docs (module): "a limiter that has been idle for at least burst emission intervals admits
    // burst cells at once, and from then on one cell per emission interval (period / count), so
    // over any span d starting from rest it admits at most burst + floor(d / interval) cells".
    // A greedy caller gets exactly that; a random one never more.
    #[test]
    fn gcra_burst_sentence_holds_for_greedy_and_random_callers(
        iv in 1u64..=500, burst in 1u32..=20, span in 0u64..=50_000,
        start in prop_oneof![0u64..=1000, 0u64..(1 << 62)],
        arrivals in proptest::collection::vec((0u64..=50_000, 1u32..=20), 0..200),
    ) {
        let gcra = Gcra::new(1, nanos(iv), burst).unwrap();
        let bound = u64::from(burst) + span / iv;
        // Greedy: ask at every nanosecond the limiter names.
        let (mut tat, mut now, mut admitted) = (0u64, start, 0u64);
        loop {
            match gcra.decide(tat, now, 1) {
                Ok(next) => { tat = next; admitted += 1; }
                Err(Denied::Wait { nanos: wait }) => {
                    now += wait;
                    if now > start + span { break; }
                }
                Err(other) => prop_assert!(false, "{:?}", other),
            }
        }
        prop_assert_eq!(admitted, bound, "greedy: \"admits burst cells at once, and from then on one cell per emission interval\"");
        prop_assert_eq!(gcra.max_admitted(span), bound, "max_admitted: \"burst + floor(elapsed / interval)\"");
        // Random arrivals within the span.
        let mut times: Vec<(u64, u32)> = arrivals.into_iter().map(|(t, c)| (start + t % (span + 1), c.min(burst))).collect();
        times.sort_unstable();
        let (mut tat, mut cells_in) = (0u64, 0u64);
        for (t, c) in times {
            if let Ok(next) = gcra.decide(tat, t, c) { tat = next; cells_in += u64::from(c); }
        }
        prop_assert!(cells_in <= bound, "random: {} > {}: \"at most burst + floor(d / interval)\"", cells_in, bound);
    }

    // Docs (Gcra::new): "ConfigError::Zero for a zero count, period or burst; ConfigError::
    // OutOfRange (field count) when period / count is below one nanosecond or more than 0.1 %
    // above a whole number of them; ConfigError::DurationOverflow when period, two intervals or
    // (burst + 1) × interval does not fit in u64 nanoseconds". Docs (emission_interval): "with
    // interval the result, count / period ≤ 1 / (interval × unit) ≤ 1.001 × count / period".
    #[test]
    fn gcra_new_and_emission_interval_over_the_whole_range(
        count in prop_oneof![0u32..=4, any::<u32>(), Just(u32::MAX)],
        period in prop_oneof![edge_u64().prop_map(u128::from), (0u128..=1 << 70)],
        near in any::<bool>(),
        burst in prop_oneof![0u32..=4, any::<u32>(), Just(u32::MAX)],
    ) {
        // Half the time, a period within a few ns of a multiple of count × 1000.
        let period = if near && count > 0 {
            let unit = u128::from(count) * 1000;
            (period / unit) * unit + period % 3
        } else { period };
        let duration = Duration::new((period / 1_000_000_000) as u64, (period % 1_000_000_000) as u32);
        for resolution in [Resolution::Nanos, Resolution::Micros] {
            let unit = u128::from(resolution.nanos());
            let got = emission_interval(count, duration, resolution);
            if count == 0 || period == 0 {
                prop_assert!(matches!(got, Err(ConfigError::Zero { .. })), "{:?}", got);
                continue;
            }
            if period > u128::from(u64::MAX) {
                prop_assert!(matches!(got, Err(ConfigError::DurationOverflow { .. })), "{:?}", got);
                continue;
            }
            let iv = period / (unit * u128::from(count));
            let ok = iv >= 1 && 1000 * period <= 1001 * iv * unit * u128::from(count);
            match got {
                Ok(v) => {
                    prop_assert!(ok, "accepted {} for count {} period {}", v, count, period);
                    prop_assert_eq!(u128::from(v), iv);
                    // "count / period ≤ 1 / (interval × unit) ≤ 1.001 × count / period"
                    prop_assert!(u128::from(v) * unit * u128::from(count) <= period);
                }
                Err(e) => {
                    prop_assert!(!ok, "refused {:?} for count {} period {}", e, count, period);
                    prop_assert!(matches!(e, ConfigError::OutOfRange { field: "count", .. }), "{:?}", e);
                }
            }
        }
        let got = Gcra::new(count, duration, burst);
        let valid = count > 0 && period > 0 && burst > 0 && period <= u128::from(u64::MAX) && {
            let iv = period / u128::from(count);
            iv >= 1
                && 1000 * period <= 1001 * iv * u128::from(count)
                && 2 * iv <= u128::from(u64::MAX)
                && (u128::from(burst) + 1) * iv <= u128::from(u64::MAX)
        };
        prop_assert_eq!(got.is_ok(), valid, "count {} period {} burst {}: {:?}", count, period, burst, got);
        if let Ok(g) = got {
            prop_assert_eq!(u128::from(g.interval_nanos()), period / u128::from(count));
            prop_assert_eq!(g.burst(), burst);
            // to_words / from_words round trip.
            prop_assert_eq!(Gcra::from_words(g.to_words()), g);
        }
    }

    // Docs (Gcra::from_words): "Total: words that no validated limit has are brought into range
    // (an interval of at least 1 ns, a burst of 1 ..= u32::MAX, the horizon saturated) rather than
    // refused, so reading them never fails". Docs (max_admitted): "burst + floor(elapsed /
    // interval), saturating at u64::MAX".
    #[test]
    fn gcra_from_words_is_total_and_max_admitted_saturates(
        w0 in edge_u64(), w1 in edge_u64(), elapsed in edge_u64(), tat in edge_u64(), now in edge_u64(),
    ) {
        let g = Gcra::from_words([w0, w1]);
        prop_assert!(g.interval_nanos() >= 1);
        prop_assert!(g.burst() >= 1);
        // Reading never fails, and the limit answers anywhere — by the same rule as a validated
        // limit ("burst * interval: how far ahead of now the TAT may run").
        for cells in [0, 1, 2, g.burst(), g.burst().saturating_add(1)] {
            let want = model_decide(g.interval_nanos(), g.burst(), tat, now, cells);
            let got = g.decide(tat, now, cells);
            prop_assert_eq!(got.is_ok(), want.is_ok(), "{:?} cells {} tat {} now {}: {:?} vs {:?}", g, cells, tat, now, got, want);
            if got.is_ok() { prop_assert_eq!(got, want); }
        }
        let _ = g.available(tat, now);
        let want = (u128::from(g.burst()) + u128::from(elapsed / g.interval_nanos())).min(u128::from(u64::MAX));
        prop_assert_eq!(u128::from(g.max_admitted(elapsed)), want);
    }
}

// Docs (module): "The end of time: the TAT cannot pass u64::MAX nanoseconds ... in the last
// interval none at all, fresh or not: decide then answers Denied::Wait with a wait that no
// later call can end, and available counts only what fits." Docs (max_admitted example):
// "fastest.max_admitted(u64::MAX) == u64::MAX".
#[test]
fn gcra_at_the_end_of_time() {
    let gcra = Gcra::new(10, Duration::from_secs(1), 5).unwrap(); // 100 ms a cell
    let iv = gcra.interval_nanos();
    // "in the last interval none at all, fresh or not"
    assert_eq!(gcra.available(0, u64::MAX), 0);
    assert_eq!(gcra.available(0, u64::MAX - iv + 1), 0);
    assert_eq!(
        gcra.available(0, u64::MAX - iv),
        1,
        "exactly one interval left"
    );
    assert_eq!(gcra.available(0, u64::MAX - 5 * iv), 5);
    assert_eq!(gcra.available(0, u64::MAX - 3 * iv - 1), 3);
    // "Denied::Wait with a wait that no later call can end"
    let at_end = gcra.decide(0, u64::MAX, 1);
    assert!(
        matches!(at_end, Err(Denied::Wait { nanos }) if nanos >= 1),
        "{at_end:?}"
    );
    assert!(gcra.decide(0, u64::MAX - iv, 1).is_ok());
    // A stored TAT of u64::MAX itself: nothing more fits, ever.
    assert!(gcra.decide(u64::MAX, u64::MAX, 1).is_err());
    assert_eq!(gcra.available(u64::MAX, 0), 0);
    assert_eq!(
        gcra.decide(u64::MAX, u64::MAX, 0),
        Ok(u64::MAX),
        "cells == 0 always passes"
    );
    let fastest = Gcra::new(1, nanos(1), u32::MAX).unwrap();
    assert_eq!(fastest.max_admitted(u64::MAX), u64::MAX);
    // Gcra::new: "DurationOverflow when period, two intervals or (burst + 1) × interval does not
    // fit in u64 nanoseconds".
    assert!(matches!(
        Gcra::new(1, Duration::MAX, 1),
        Err(ConfigError::DurationOverflow { .. })
    ));
    assert!(matches!(
        Gcra::new(1, nanos(u64::MAX / 2 + 1), 1),
        Err(ConfigError::DurationOverflow { .. })
    ));
    assert!(matches!(
        Gcra::new(1, nanos(u64::MAX / 3 + 1), 2),
        Err(ConfigError::DurationOverflow { .. })
    ));
    assert!(Gcra::new(1, nanos(u64::MAX / 3), 2).is_ok());
    // "700,000,000 per second (1.43 ns, which 1 ns would make 43 % faster) is refused"
    assert!(matches!(
        Gcra::new(700_000_000, Duration::from_secs(1), 1),
        Err(ConfigError::OutOfRange { field: "count", .. })
    ));
}

// --- retry budget -----------------------------------------------------------------------------

/// The floor's limit from the docs: "18,446,744,073,709" retries a window.
const FLOOR_LIMIT: u128 = 18_446_744_073_709;

fn budget_policy(
    ratio: f64,
    per_second: u32,
    window: Duration,
    buckets: u32,
) -> Result<RetryBudgetPolicy, ConfigError> {
    RetryBudgetPolicy::builder()
        .ratio(ratio)
        .min_per_second(per_second)
        .window(window)
        .buckets(buckets)
        .build()
}

proptest! {
    #![proptest_config(config(4000, 0x5eed_0003))]

    // Docs (RetryBudgetBuilder::ratio): "zero, or from 0.000001 to 1000. It is kept in whole parts
    // per million (rounded to the nearest), so a ratio under one part per million is refused
    // rather than silently made zero"; (build) "A NaN, negative, larger-than-1000 or
    // nonzero-but-under-0.000001 ratio" is an error.
    #[test]
    fn budget_ratio_is_validated_and_rounded_to_the_nearest_ppm(
        ratio in prop_oneof![
            any::<u64>().prop_map(f64::from_bits),
            0.0f64..=1000.0,
            0.0f64..=0.00001,
            999.9f64..=1000.1,
            Just(1e-6), Just(1000.0), Just(5e-324), Just(f64::MIN_POSITIVE),
        ],
    ) {
        let built = RetryBudgetPolicy::builder().ratio(ratio).min_per_second(0).build();
        let valid = ratio == 0.0 || (1e-6..=1000.0).contains(&ratio);
        prop_assert_eq!(built.is_ok(), valid, "ratio {:e}: {:?}", ratio, built);
        if let Ok(p) = built {
            // "rounded to the nearest"
            let exact = ratio * 1e6;
            prop_assert!((p.ratio_ppm() as f64 - exact).abs() <= 0.5 + exact * 1e-12,
                "ratio {:e}: {} ppm", ratio, p.ratio_ppm());
        }
    }

    // Docs (module): "Every call deposits ratio of a retry; every retry withdraws one whole
    // retry; the balance of the last window (plus min_per_second × window retries) decides. All
    // of it is integer arithmetic in parts per million, so a 10 % budget over 100 calls grants
    // exactly 10 retries, never 11". Docs (balance): "the largest n for which allows holds after
    // n − 1 more withdrawals (zero when none does; u64::MAX when more fit)". Over every count up
    // to u64::MAX.
    #[test]
    fn budget_allows_and_balance_are_exact_over_the_whole_range(
        ppm in prop_oneof![0u64..=10, 1u64..=1_000_000_000, Just(1_000_000_000u64), Just(100_000u64)],
        per_second in prop_oneof![Just(0u32), 1u32..=100, Just(u32::MAX)],
        window_s in 1u64..=100,
        deposits in edge_u64(),
        withdrawals in edge_u64(),
    ) {
        let ratio = ppm as f64 / 1e6;
        let p = budget_policy(ratio, per_second, Duration::from_secs(window_s), 1).unwrap();
        prop_assert_eq!(p.ratio_ppm(), ppm);
        let floor_ppm = u128::from(per_second) * u128::from(window_s) * 1_000_000;
        let grants = (floor_ppm + u128::from(ppm) * u128::from(deposits)) / 1_000_000;
        // allows: one more retry fits iff withdrawals + 1 ≤ floor + ratio × deposits.
        prop_assert_eq!(p.allows(deposits, withdrawals), u128::from(withdrawals) < grants,
            "allows({}, {}) with {} grants", deposits, withdrawals, grants);
        let want = grants.saturating_sub(u128::from(withdrawals)).min(u128::from(u64::MAX)) as u64;
        prop_assert_eq!(p.balance(deposits, withdrawals), want,
            "balance({}, {}) with {} grants", deposits, withdrawals, grants);
    }

    // Docs (build): "OutOfRange on min_per_second when the floor's retries a window
    // (min_per_second × window) pass 18,446,744,073,709 (they are kept in u64 parts per
    // million)". One bucket, so the window itself is always whole nanoseconds per bucket.
    #[test]
    fn budget_floor_bound_is_exact(
        per_second in prop_oneof![any::<u32>(), Just(u32::MAX), 1000u32..=10_000],
        window in prop_oneof![1u64..=u64::MAX, (4_294_967_290_000u64..=4_294_967_300_000)],
    ) {
        let got = budget_policy(0.0, per_second, nanos(window), 1);
        let retries_x1e9 = u128::from(per_second) * u128::from(window);
        let within = retries_x1e9 <= FLOOR_LIMIT * 1_000_000_000;
        prop_assert_eq!(got.is_ok(), within, "{} per second × {} ns: {:?}", per_second, window, got);
        match got {
            Err(e) => prop_assert!(matches!(e, ConfigError::OutOfRange { field: "min_per_second", .. }), "{:?}", e),
            Ok(p) => {
                // "Granted retries never exceed floor + ratio × calls, and reach it to within one":
                // with no calls and ratio 0, the floor alone (min_per_second × window retries).
                let grants = u128::from(p.balance(0, 0));
                prop_assert!(grants * 1_000_000_000 <= retries_x1e9, "{} grants > {} / 1e9", grants, retries_x1e9);
                prop_assert!((grants + 1) * 1_000_000_000 > retries_x1e9, "{} grants: not within one of {} / 1e9", grants, retries_x1e9);
            }
        }
    }
}

proptest! {
    #![proptest_config(config(3000, 0x5eed_0005))]

    // Docs (RetryBudgetBuilder::buckets): "at most MAX_BUCKETS ... Each lasts window / buckets
    // rounded down to whole nanoseconds, which must keep the window within 0.1 % of window";
    // (build) "a zero window or bucket count, more than MAX_BUCKETS buckets, a window shorter
    // than one nanosecond per bucket or not within 0.1 % of a whole number of nanoseconds per
    // bucket, or one that overflows".
    #[test]
    fn budget_window_and_buckets_follow_the_point_one_percent_rule(
        window in prop_oneof![0u64..=20_000, edge_u64()],
        beyond in any::<bool>(),
        buckets in prop_oneof![0u32..=16, 0u32..=(tidewall_core::breaker::MAX_BUCKETS + 2), any::<u32>()],
    ) {
        let duration = if beyond { nanos(window) + Duration::from_secs(u64::MAX / 1_000_000_000) } else { nanos(window) };
        let w = duration.as_nanos();
        let got = budget_policy(0.1, 0, duration, buckets);
        let valid = buckets > 0
            && buckets <= tidewall_core::breaker::MAX_BUCKETS
            && w > 0
            && w <= u128::from(u64::MAX)
            && {
                let each = w / u128::from(buckets);
                each >= 1 && 1000 * w <= 1001 * each * u128::from(buckets)
            };
        prop_assert_eq!(got.is_ok(), valid, "window {} ns, {} buckets: {:?}", w, buckets, got);
        if let Ok(p) = got {
            prop_assert_eq!(p.buckets(), buckets);
        }
    }
}

#[test]
fn budget_floor_boundary_and_ratio_edges() {
    // 18,446,744,073,709 = 6503 × 2,836,651,403: exactly at the bound is within it.
    let at = budget_policy(0.0, 6503, Duration::from_secs(2_836_651_403), 1);
    assert!(
        at.is_ok(),
        "exactly 18,446,744,073,709 does not pass it: {at:?}"
    );
    // "Retries allowed per second whatever the traffic": the whole floor, no deposits.
    assert_eq!(at.unwrap().balance(0, 0), 18_446_744_073_709);
    let past = budget_policy(0.0, 6503, Duration::from_secs(2_836_651_403) + nanos(1), 1);
    assert!(
        matches!(
            past,
            Err(ConfigError::OutOfRange {
                field: "min_per_second",
                ..
            })
        ),
        "one nanosecond more passes it: {past:?}"
    );
    // u32::MAX per second over 4,294,967,297,000 ns: 18,446,744,073,709.551615 retries, which
    // *pass* 18,446,744,073,709 although their ppm (exactly u64::MAX) still fits in u64.
    let sliver = budget_policy(0.0, u32::MAX, nanos(4_294_967_297_000), 1);
    assert!(
        matches!(
            sliver,
            Err(ConfigError::OutOfRange {
                field: "min_per_second",
                ..
            })
        ),
        "\"OutOfRange on min_per_second when the floor's retries a window ... pass \
         18,446,744,073,709\": {sliver:?}"
    );
    assert!(budget_policy(0.0, u32::MAX, nanos(4_294_967_296_999), 1).is_ok());
    // Doc example: "a 10 % budget over 100 calls grants exactly 10 retries, never 11".
    let ten = budget_policy(0.1, 0, Duration::from_secs(10), 10).unwrap();
    assert_eq!(ten.balance(100, 0), 10);
    assert!(ten.allows(100, 9) && !ten.allows(100, 10));
    // "nonzero-but-under-0.000001": the f64 just below 1e-6 rounds to 1 ppm but is under it.
    let below = f64::from_bits(1e-6f64.to_bits() - 1);
    assert!(RetryBudgetPolicy::builder().ratio(below).build().is_err());
    assert!(RetryBudgetPolicy::builder().ratio(1e-6).build().is_ok());
    let above = f64::from_bits(1000f64.to_bits() + 1);
    assert!(RetryBudgetPolicy::builder().ratio(above).build().is_err());
    assert!(
        RetryBudgetPolicy::builder().ratio(-5e-324).build().is_err(),
        "negative"
    );
    // "a zero window or bucket count ... or one that overflows"
    assert!(budget_policy(0.1, 0, Duration::ZERO, 1).is_err());
    assert!(budget_policy(0.1, 0, Duration::from_secs(10), 0).is_err());
    assert!(budget_policy(0.1, 0, Duration::MAX, 1).is_err());
    // "a window shorter than one nanosecond per bucket"
    assert!(budget_policy(0.1, 0, nanos(9), 10).is_err());
}

// --- quantile ---------------------------------------------------------------------------------

/// The rank `ceil(q × total)` clamped into `1..=total`, in exact integer arithmetic.
fn exact_rank(q: f64, total: u64) -> u64 {
    if q == 0.0 {
        return 1;
    }
    let bits = q.to_bits();
    let exp = ((bits >> 52) & 0x7ff) as i64;
    let frac = bits & ((1 << 52) - 1);
    let (m, e) = if exp == 0 {
        (frac, -1074i64)
    } else {
        (frac | (1 << 52), exp - 1075)
    };
    assert!(e <= 0);
    let shift = (-e) as u32;
    let num = u128::from(m) * u128::from(total);
    let rank = if shift >= 128 {
        u128::from(num > 0)
    } else {
        let whole = num >> shift;
        whole + u128::from(num & ((1u128 << shift) - 1) != 0)
    };
    rank.clamp(1, u128::from(total)) as u64
}

fn walk(counts: &[(usize, u64)], rank: u64) -> u64 {
    let mut seen = 0u64;
    for (i, c) in counts {
        seen += c;
        if seen >= rank {
            return bucket_upper(*i);
        }
    }
    unreachable!("rank beyond total")
}

proptest! {
    #![proptest_config(config(4000, 0x5eed_0004))]

    // Docs (module): "A value maps to one of BUCKETS buckets: exact below 8, then eight buckets
    // per power of two, so any estimate is within 12.5 % above the true value". Docs
    // (bucket_upper): "The largest value that lands in bucket index (saturating for out-of-range
    // indices)".
    #[test]
    fn quantile_buckets_cover_u64_within_an_eighth(v in edge_u64()) {
        let i = bucket_of(v);
        prop_assert!(i < BUCKETS);
        let upper = bucket_upper(i);
        // "The largest value that lands in bucket index"
        prop_assert!(upper >= v);
        prop_assert_eq!(bucket_of(upper), i);
        if upper < u64::MAX { prop_assert_eq!(bucket_of(upper + 1), i + 1); }
        // "exact below 8"
        if v < 8 { prop_assert_eq!(upper, v); }
        // "within 12.5 % above the true value"
        prop_assert!(u128::from(upper) * 8 <= u128::from(v) * 9, "v {} upper {}", v, upper);
        if v > 0 { prop_assert!(bucket_of(v - 1) <= i); }
    }

    // Docs (quantile): "The q-quantile (0 ..= 1) of total recorded values ..., as the upper bound
    // of the bucket holding it"; (rank) "ceil(q × total) in 1..=total, exactly: total as f64
    // would round above 2^53, and q = 1.0 could then miss the largest value". Totals past 2^53,
    // q at 0, 1, subnormals and everywhere between.
    #[test]
    fn quantile_rank_is_exact_for_totals_past_2_pow_53(
        picks in proptest::collection::btree_map(0usize..BUCKETS, prop_oneof![1u64..=3, any::<u64>().prop_map(|c| c >> 2), (1u64 << 53)..(1u64 << 60)], 1..5),
        q in prop_oneof![
            Just(0.0), Just(1.0), Just(5e-324), Just(f64::MIN_POSITIVE), Just(0.5),
            Just(1.0 - f64::EPSILON / 2.0),
            0.0f64..=1.0,
            any::<u64>().prop_map(|b| f64::from_bits(b >> 2)).prop_filter("≤ 1", |q| *q <= 1.0),
        ],
    ) {
        // Keep the total within u64.
        let mut picks = picks;
        let mut total = 0u64;
        for c in picks.values_mut() {
            *c = (*c).min(u64::MAX - total);
            total += *c;
        }
        picks.retain(|_, c| *c > 0);
        prop_assume!(total > 0);
        let counts: Vec<(usize, u64)> = picks.into_iter().collect();
        let lookup = |i: usize| counts.iter().find(|(j, _)| *j == i).map_or(0, |(_, c)| *c);
        let rank = exact_rank(q, total);
        let want = walk(&counts, rank);
        prop_assert_eq!(quantile(lookup, total, q), Some(want), "q {:e} total {} rank {} counts {:?}", q, total, rank, counts);
    }
}

// Docs (quantile): "None without values or with a q outside [0, 1]"; (rank) "q = 1.0 could
// then miss the largest value".
#[test]
fn quantile_edges() {
    let a = bucket_of(1_000);
    let b = bucket_of(u64::MAX);
    // 2^60 values in one bucket and 1 in the top one: total 2^60 + 1, not an f64.
    let total = (1u64 << 60) + 1;
    let counts = |i: usize| {
        if i == a {
            1u64 << 60
        } else if i == b {
            1
        } else {
            0
        }
    };
    assert_eq!(
        quantile(counts, total, 1.0),
        Some(u64::MAX),
        "\"q = 1.0 could then miss the largest value\""
    );
    assert_eq!(
        quantile(counts, total, 0.0),
        Some(bucket_upper(a)),
        "q = 0: the smallest"
    );
    assert_eq!(
        quantile(counts, total, 5e-324),
        Some(bucket_upper(a)),
        "subnormal q"
    );
    // "None without values or with a q outside [0, 1]"
    for q in [
        f64::NAN,
        -5e-324,
        -1.0,
        1.0 + f64::EPSILON,
        f64::INFINITY,
        f64::NEG_INFINITY,
    ] {
        assert_eq!(quantile(counts, total, q), None, "q {q}");
    }
    assert_eq!(quantile(|_| 0, 0, 0.5), None, "no values");
    // "saturating for out-of-range indices"
    assert_eq!(bucket_upper(BUCKETS), u64::MAX);
    assert_eq!(bucket_upper(usize::MAX), u64::MAX);
    assert_eq!(bucket_upper(BUCKETS - 1), u64::MAX);
    assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
}

// =============================================================================================
// Part 1b: differential — the fronts on random scenarios
// =============================================================================================

/// One random step of a script: latency index and result.
fn step_strategy(instant: bool) -> impl Strategy<Value = (Duration, Result<Resp, ApiError>)> {
    let latency = if instant {
        Just(Duration::ZERO).boxed()
    } else {
        prop_oneof![Just(Duration::ZERO), Just(ms(5)), Just(ms(30)), Just(HOUR)].boxed()
    };
    let hint = prop_oneof![Just(0u64), Just(5), Just(40), Just(500)];
    let result = prop_oneof![
        3 => (1u8..=9, hint.clone()).prop_map(|(id, h)| Ok(r503_hint(id, h))),
        1 => Just(Ok(resp(200, 100))),
        1 => Just(Ok(resp(400, 101))),
        3 => Just(Err(ApiError::Busy)),
        2 => hint.prop_map(|h| Err(ApiError::Throttled(ms(h)))),
        1 => Just(Err(ApiError::Invalid)),
    ];
    (latency, result)
}

fn random_case(instant: bool) -> impl Strategy<Value = Case> {
    (
        proptest::collection::vec(step_strategy(instant), 1..8),
        prop_oneof![Just(Duration::ZERO), Just(ms(10)), Just(ms(25))],
        1u32..=8,
        proptest::option::of(prop_oneof![Just(ms(50)), Just(ms(100)), Just(ms(120))]),
        proptest::option::of(prop_oneof![Just(ms(20)), Just(ms(40))]),
        prop_oneof![Just(Duration::ZERO), Just(ms(15)), Just(ms(35))],
        proptest::option::of(prop_oneof![Just(Duration::ZERO), Just(ms(20))]),
        proptest::option::of(prop_oneof![Just(0.0), Just(0.5), Just(1.0), Just(2.0)]),
    )
        .prop_map(
            move |(script, delay, attempts, deadline, timeout, min, cap, budget)| Case {
                backoff: constant(delay, attempts),
                deadline,
                attempt_timeout: if instant { None } else { timeout },
                min_attempt_time: min,
                max_retry_after: cap,
                budget_ratio: budget,
                ..case("random", script)
            },
        )
}

/// Whether the pipeline's answer is the retry future's, in the pipeline's vocabulary.
fn pipeline_agrees(rf: &Got, pipe: &Got) -> bool {
    match (rf, pipe) {
        // The deadline's end without a value: the last failure or the deadline's refusal.
        (
            Got::Deadline {
                last_error: Some(e),
                ..
            },
            Got::Inner(p),
        ) => e == p,
        (
            Got::Deadline {
                last_error: None, ..
            },
            Got::TimedOut,
        ) => true,
        (Got::Deadline { .. }, Got::DeadlineRejected) => true,
        (a, b) => a == b,
    }
}

/// Whether the tower layer's answer is the retry future's (scripts whose attempts are instant,
/// so nothing is ever cut and the first attempt always runs).
fn tower_agrees(rf: &Got, tower: &Got) -> bool {
    match (rf, tower) {
        (
            Got::Deadline {
                last_error: Some(e),
                ..
            },
            Got::Inner(t),
        ) => e == t,
        (a, b) => a == b,
    }
}

async fn differential<R: Runtime>(rt: Clocked<R>, c: Case, instant: bool) -> Result<(), String> {
    let rf = via_retry_future(&rt, &c).await;
    let pipe = via_pipeline(&rt, &c, false).await;
    let boxed = via_pipeline(&rt, &c, true).await;
    // Docs: pipeline/stages.rs RetryStage "the retry engine's rules ..., which the pipeline
    // drives exactly as the retry future does"; BoxPipeline "Behaviour is the pipeline's".
    if rf.0 != pipe.0 || rf.1 != pipe.1 || !pipeline_agrees(&rf.2, &pipe.2) {
        return Err(format!(
            "pipeline drifted from the retry future:\n  rf   {rf:?}\n  pipe {pipe:?}"
        ));
    }
    if boxed != pipe {
        return Err(format!(
            "boxed pipeline drifted:\n  pipe  {pipe:?}\n  boxed {boxed:?}"
        ));
    }
    // Docs: RetryLayer "Retries failed calls with the same rules as Retry and the Pipeline";
    // engine.rs "decided here, once, so the fronts cannot drift". Only when nothing can be cut
    // (every attempt is instant, or there is no deadline: the layer does not cut attempts) and
    // the first attempt may start.
    let first_may_start = c.deadline.is_none_or(|d| d > c.min_attempt_time);
    if (instant || c.deadline.is_none()) && first_may_start {
        let tower = via_tower(&rt, &c).await;
        if rf.0 != tower.0 || rf.1 != tower.1 || !tower_agrees(&rf.2, &tower.2) {
            return Err(format!(
                "tower RetryLayer drifted from the retry future:\n  rf    {rf:?}\n  tower {tower:?}"
            ));
        }
    }
    Ok(())
}

fn differential_on_every_runtime(c: &Case, instant: bool) -> Result<(), String> {
    common::on_tokio_multi_thread(|rt| differential(rt, c.clone(), instant))?;
    common::on_tokio_current_thread(|rt| differential(rt, c.clone(), instant))?;
    common::on_smol_multi_thread(|rt| differential(rt, c.clone(), instant))?;
    common::on_smol_single_thread(|rt| differential(rt, c.clone(), instant))?;
    common::on_async_std(|rt| differential(rt, c.clone(), instant))
}

proptest! {
    #![proptest_config(config(3000, 0x5eed_0006))]

    // Docs: engine.rs "The retry future, the pipeline's retry stage, the tower RetryLayer and
    // hedging only run attempts and sleep; whether an attempt may start, whether a failure is
    // retried ... and for how long to wait are decided here, once, so the fronts cannot drift";
    // RetryLayer: "a response an earlier attempt got ... is returned instead, as the retry
    // future and the pipeline do". Random instant scripts: all four fronts agree.
    #[test]
    fn every_front_agrees_on_random_instant_scenarios(c in random_case(true)) {
        let verdict = differential_on_every_runtime(&c, true);
        prop_assert!(verdict.is_ok(), "{}\n  case: script {:?}, backoff {:?}, deadline {:?}, min {:?}, cap {:?}, budget {:?}",
            verdict.unwrap_err(), c.script, c.backoff, c.deadline, c.min_attempt_time, c.max_retry_after, c.budget_ratio);
    }

    // Docs: pipeline/stages.rs RetryStage "which the pipeline drives exactly as the retry future
    // does"; Pipeline::call and retry/mod.rs give the deadline's end the same answer. Random
    // scripts with latencies, timeouts and cuts: the retry future and both pipelines agree.
    #[test]
    fn the_pipelines_agree_with_the_retry_future_on_random_scenarios(c in random_case(false)) {
        let verdict = differential_on_every_runtime(&c, false);
        prop_assert!(verdict.is_ok(), "{}\n  case: script {:?}, backoff {:?}, deadline {:?}, timeout {:?}, min {:?}, cap {:?}, budget {:?}",
            verdict.unwrap_err(), c.script, c.backoff, c.deadline, c.attempt_timeout, c.min_attempt_time, c.max_retry_after, c.budget_ratio);
    }
}
