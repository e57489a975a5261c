//! One behaviour suite for the three retry fronts — the retry future, the pipeline's retry
//! stage and the tower `RetryLayer` — which share one engine: every scenario must give the
//! same attempts, at the same instants, and end with the same result on each.

mod common;

use common::ms;

use std::time::Duration;

use tidewall::budget::{RetryBudget, RetryBudgetPolicy};
use tidewall::classify::Verdict;
use tidewall::pipeline::{BoxPipeline, Pipeline};
use tidewall::retry::RetryError;
use tidewall::rt::{Clock, Runtime};
use tidewall::testing::{Clocked, Scripted};
use tidewall::tower::RetryLayer;
use tidewall::{Backoff, Deadline, Error, Jitter, RetryAfter, RetryExt};
use tower_layer::Layer;
use tower_service::Service;

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
}

impl RetryAfter for ApiError {
    fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Throttled(hint) => Some(*hint),
            _ => None,
        }
    }
}

/// An `Ok` value that means "not ready yet".
const PENDING: u32 = 0;

/// An `Ok` value from this one up means "throttled": retry after `value - THROTTLED` ms (an
/// HTTP 503 response with `Retry-After`, which is not an error).
const THROTTLED: u32 = 1_000;

/// The one classifier every front is given.
fn classify(result: Result<&u32, &ApiError>) -> Verdict {
    match result {
        Ok(&PENDING) | Err(ApiError::Busy | ApiError::Throttled(_)) => Verdict::RetryableFailure,
        Ok(value) if *value >= THROTTLED => Verdict::RetryableFailure,
        Ok(_) => Verdict::Success,
        Err(ApiError::Invalid) => Verdict::Failure,
        Err(ApiError::Cancelled) => Verdict::Ignored,
    }
}

/// The hints every front is given: an error's `retry_after`, or a throttled value's wait.
fn hint_of(result: Result<&u32, &ApiError>) -> Option<Duration> {
    match result {
        Err(error) => error.retry_after(),
        Ok(value) => Some(ms(u64::from(value.checked_sub(THROTTLED)?))),
    }
}

/// One scenario: the operation's script and the retry rules.
#[derive(Clone)]
struct Scenario {
    name: &'static str,
    /// Each attempt's latency and result; the last repeats.
    script: Vec<(Duration, Result<u32, ApiError>)>,
    backoff: Backoff,
    deadline: Option<Duration>,
    min_attempt_time: Duration,
    max_retry_after: Option<Duration>,
    /// A budget with this ratio and no floor, fresh for each front.
    budget_ratio: Option<f64>,
    /// When each attempt starts, from the call.
    starts: Vec<Duration>,
    /// When the call returns, from the call.
    ends: Duration,
    result: Result<u32, ApiError>,
    /// Whether the retry future reports the end as the deadline's.
    by_deadline: bool,
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

fn base(name: &'static str, script: Vec<(Duration, Result<u32, ApiError>)>) -> Scenario {
    Scenario {
        name,
        script,
        backoff: exponential(ms(10), 4),
        deadline: None,
        min_attempt_time: Duration::ZERO,
        max_retry_after: None,
        budget_ratio: None,
        starts: Vec::new(),
        ends: Duration::ZERO,
        result: Ok(1),
        by_deadline: false,
    }
}

fn scenarios() -> Vec<Scenario> {
    let busy = instant(Err(ApiError::Busy));
    vec![
        Scenario {
            starts: vec![ms(0), ms(10), ms(30), ms(70)],
            ends: ms(70),
            result: Err(ApiError::Busy),
            ..base("retryable errors run the schedule out", vec![busy])
        },
        Scenario {
            starts: vec![ms(0), ms(10)],
            ends: ms(10),
            result: Ok(7),
            ..base("a success ends the retries", vec![busy, instant(Ok(7))])
        },
        Scenario {
            starts: vec![ms(0), ms(10)],
            ends: ms(10),
            result: Err(ApiError::Invalid),
            ..base(
                "a failure not to retry returns at once",
                vec![busy, instant(Err(ApiError::Invalid))],
            )
        },
        Scenario {
            starts: vec![ms(0)],
            ends: ms(0),
            result: Err(ApiError::Cancelled),
            ..base(
                "an ignored result returns at once",
                vec![instant(Err(ApiError::Cancelled))],
            )
        },
        Scenario {
            starts: vec![ms(0), ms(10), ms(30)],
            ends: ms(30),
            result: Ok(5),
            ..base(
                "an Ok judged retryable is retried",
                vec![instant(Ok(PENDING)), instant(Ok(PENDING)), instant(Ok(5))],
            )
        },
        Scenario {
            starts: vec![ms(0), ms(10), ms(30), ms(70)],
            ends: ms(70),
            result: Ok(PENDING),
            ..base(
                "an Ok judged retryable is returned, not lost, when retries run out",
                vec![instant(Ok(PENDING))],
            )
        },
        Scenario {
            starts: vec![ms(0), ms(50), ms(70)],
            ends: ms(70),
            result: Ok(1),
            ..base(
                "a hint longer than the delay is the delay",
                vec![
                    instant(Err(ApiError::Throttled(ms(50)))),
                    instant(Err(ApiError::Throttled(ms(1)))),
                    instant(Ok(1)),
                ],
            )
        },
        Scenario {
            // Delays: the hint 40 ms over the schedule's 10, then the schedule's 20 over 10.
            starts: vec![ms(0), ms(40), ms(60)],
            ends: ms(60),
            result: Ok(1),
            ..base(
                "an Ok result's hint drives the retry as an error's does",
                vec![
                    instant(Ok(THROTTLED + 40)),
                    instant(Ok(THROTTLED + 10)),
                    instant(Ok(1)),
                ],
            )
        },
        Scenario {
            max_retry_after: Some(ms(100)),
            starts: vec![ms(0), ms(100)],
            ends: ms(100),
            result: Ok(1),
            ..base(
                "a hint is capped at max_retry_after",
                vec![
                    instant(Err(ApiError::Throttled(Duration::from_secs(3600)))),
                    instant(Ok(1)),
                ],
            )
        },
        Scenario {
            deadline: Some(ms(200)),
            starts: vec![ms(0)],
            ends: ms(0),
            result: Err(ApiError::Throttled(Duration::from_secs(1))),
            by_deadline: true,
            ..base(
                "a hint past the deadline returns at once",
                vec![instant(Err(ApiError::Throttled(Duration::from_secs(1))))],
            )
        },
        Scenario {
            max_retry_after: Some(ms(100)),
            deadline: Some(ms(200)),
            starts: vec![ms(0)],
            ends: ms(0),
            result: Err(ApiError::Throttled(Duration::from_secs(1))),
            by_deadline: true,
            ..base(
                "a capped hint whose whole wait ends past the deadline returns at once",
                vec![instant(Err(ApiError::Throttled(Duration::from_secs(1))))],
            )
        },
        Scenario {
            backoff: exponential(ms(100), 10),
            deadline: Some(ms(350)),
            starts: vec![ms(0), ms(100), ms(300)],
            ends: ms(300),
            result: Err(ApiError::Busy),
            by_deadline: true,
            ..base("no sleep ends past the deadline", vec![busy])
        },
        Scenario {
            backoff: exponential(ms(100), 10),
            deadline: Some(ms(350)),
            // A throttled value at 0, errors at 100 and 300: no retry fits after the third.
            starts: vec![ms(0), ms(100), ms(300)],
            ends: ms(300),
            result: Ok(THROTTLED),
            ..base(
                "the deadline's end answers with a value an attempt got, past later errors",
                vec![instant(Ok(THROTTLED)), busy],
            )
        },
        Scenario {
            backoff: exponential(ms(100), 10),
            deadline: Some(ms(350)),
            starts: vec![ms(0), ms(100), ms(300)],
            ends: ms(300),
            result: Ok(PENDING),
            ..base(
                "the deadline's end answers with the latest value, not the first",
                vec![instant(Ok(THROTTLED)), instant(Ok(PENDING)), busy],
            )
        },
        Scenario {
            backoff: exponential(ms(50), 10),
            deadline: Some(ms(100)),
            min_attempt_time: ms(40),
            // A retry at 50 ms has 50 ms left (> 40); the next would start at 150 ms.
            starts: vec![ms(0), ms(50)],
            ends: ms(50),
            result: Err(ApiError::Busy),
            by_deadline: true,
            ..base(
                "a retry needs its minimum time before the deadline",
                vec![busy],
            )
        },
        Scenario {
            budget_ratio: Some(1.0),
            // One call deposits one retry; the second retry finds the budget spent.
            starts: vec![ms(0), ms(10)],
            ends: ms(10),
            result: Err(ApiError::Busy),
            ..base("a spent budget ends the retries", vec![busy])
        },
        Scenario {
            // 30 ms attempt, 10 ms sleep, 30 ms attempt, 20 ms sleep, 30 ms attempt.
            starts: vec![ms(0), ms(40), ms(90)],
            ends: ms(120),
            result: Ok(3),
            ..base(
                "attempt latency and backoff add up",
                vec![
                    (ms(30), Err(ApiError::Busy)),
                    (ms(30), Err(ApiError::Busy)),
                    (ms(30), Ok(3)),
                ],
            )
        },
    ]
}

fn budget<R: Runtime>(rt: &R, scenario: &Scenario) -> Option<RetryBudget> {
    scenario.budget_ratio.map(|ratio| {
        let policy = RetryBudgetPolicy::builder()
            .ratio(ratio)
            .min_per_second(0)
            .build()
            .unwrap();
        RetryBudget::new(policy, rt.now())
    })
}

fn deadline<R: Runtime>(rt: &R, scenario: &Scenario) -> Deadline {
    scenario
        .deadline
        .map_or_else(Deadline::none, |within| Deadline::after(rt, within))
}

/// What a front saw: attempt starts, return time, result, and whether the deadline ended it.
type Seen = (Vec<Duration>, Duration, Result<u32, ApiError>, bool);

async fn through_retry_future<R: Runtime>(rt: &Clocked<R>, scenario: &Scenario) -> Seen {
    let op = Scripted::with_latency(rt.clone(), scenario.script.clone());
    let start = rt.now();
    let mut retry = (|| op.call())
        .retry_on(rt, scenario.backoff)
        .classify(classify)
        .retry_after_with(hint_of)
        .deadline(deadline(rt, scenario))
        .min_attempt_time(scenario.min_attempt_time)
        .seed(7);
    if let Some(cap) = scenario.max_retry_after {
        retry = retry.max_retry_after(cap);
    }
    if let Some(budget) = budget(rt, scenario) {
        retry = retry.budget(budget);
    }
    let (result, by_deadline) = match retry.await {
        Ok(value) => (Ok(value), false),
        Err(RetryError::Inner(error)) => (Err(error), false),
        Err(RetryError::DeadlineExceeded {
            last_error: Some(error),
            ..
        }) => (Err(error), true),
        Err(other) => panic!("{}: retry future ended with {other:?}", scenario.name),
    };
    let ends = rt.now() - start;
    (op.start_offsets(), ends, result, by_deadline)
}

async fn through_pipeline<R: Runtime>(rt: &Clocked<R>, scenario: &Scenario) -> Seen {
    through_a_pipeline(rt, scenario, false).await
}

/// The same pipeline behind one name (`BoxPipeline`): its stages erased, its answers not.
async fn through_boxed_pipeline<R: Runtime>(rt: &Clocked<R>, scenario: &Scenario) -> Seen {
    through_a_pipeline(rt, scenario, true).await
}

async fn through_a_pipeline<R: Runtime>(rt: &Clocked<R>, scenario: &Scenario, boxed: bool) -> Seen {
    let op = Scripted::with_latency(rt.clone(), scenario.script.clone());
    let mut builder = Pipeline::builder()
        .runtime(rt.clone())
        .retry(scenario.backoff)
        .classify(classify)
        .retry_after_with(hint_of)
        .min_attempt_time(scenario.min_attempt_time)
        .seed(7);
    if let Some(cap) = scenario.max_retry_after {
        builder = builder.max_retry_after(cap);
    }
    if let Some(budget) = budget(rt, scenario) {
        builder = builder.retry_budget(budget);
    }
    let pipeline = builder.build().unwrap();
    let start = rt.now();
    let outcome = if boxed {
        let pipeline: BoxPipeline<u32, ApiError> = pipeline.boxed();
        pipeline
            .call_before(deadline(rt, scenario), || op.call())
            .await
    } else {
        pipeline
            .call_before(deadline(rt, scenario), || op.call())
            .await
    };
    let result = match outcome {
        Ok(value) => Ok(value),
        Err(Error::Inner(error)) => Err(error),
        Err(other) => panic!("{}: pipeline ended with {other:?}", scenario.name),
    };
    let ends = rt.now() - start;
    (op.start_offsets(), ends, result, false)
}

async fn through_tower<R: Runtime>(rt: &Clocked<R>, scenario: &Scenario) -> Seen {
    let op = Scripted::with_latency(rt.clone(), scenario.script.clone());
    let inner = {
        let op = op.clone();
        tower::service_fn(move |(): ()| {
            let op = op.clone();
            async move { op.call().await }
        })
    };
    let mut layer = RetryLayer::new(scenario.backoff)
        .runtime(rt.clone())
        .classify(classify)
        .retry_after_with(hint_of)
        .min_attempt_time(scenario.min_attempt_time)
        .seed(7);
    if let Some(within) = scenario.deadline {
        layer = layer.deadline(within);
    }
    if let Some(cap) = scenario.max_retry_after {
        layer = layer.max_retry_after(cap);
    }
    if let Some(budget) = budget(rt, scenario) {
        layer = layer.budget(budget);
    }
    let mut service = layer.layer(inner);
    let start = rt.now();
    std::future::poll_fn(|cx| service.poll_ready(cx))
        .await
        .unwrap();
    let result = service.call(()).await;
    let ends = rt.now() - start;
    (op.start_offsets(), ends, result, false)
}

async fn every_front_gives_the_same_answer<R: Runtime>(rt: Clocked<R>) {
    for scenario in scenarios() {
        let expected = (
            scenario.starts.clone(),
            scenario.ends,
            scenario.result,
            scenario.by_deadline,
        );
        let seen = through_retry_future(&rt, &scenario).await;
        assert_eq!(seen, expected, "retry future: {}", scenario.name);
        for (front, seen) in [
            ("pipeline", through_pipeline(&rt, &scenario).await),
            (
                "boxed pipeline",
                through_boxed_pipeline(&rt, &scenario).await,
            ),
            ("tower RetryLayer", through_tower(&rt, &scenario).await),
        ] {
            // Only the retry future says, in its error type, that the deadline ended it.
            let expected = (expected.0.clone(), expected.1, expected.2, false);
            assert_eq!(seen, expected, "{front}: {}", scenario.name);
        }
    }
}

#[test]
fn every_front_gives_the_same_answer_on_every_runtime() {
    on_every_runtime!(every_front_gives_the_same_answer);
}

/// A running attempt cut by the deadline: the retry future and the pipelines answer with the
/// value an earlier attempt got (the tower layer's deadline bounds retries, not attempts).
async fn a_cut_attempt_answers_with_an_earlier_value<R: Runtime>(rt: Clocked<R>) {
    let script = vec![
        instant(Ok(PENDING)),
        (ms(60), Err(ApiError::Busy)),
        (Duration::from_secs(3600), Ok(1)),
    ];
    let scenario = Scenario {
        deadline: Some(ms(100)),
        // PENDING at 0, Busy at 70 (after 10 ms asleep), the third starts at 90 and is cut.
        starts: vec![ms(0), ms(10), ms(90)],
        ends: ms(100),
        result: Ok(PENDING),
        ..base("a cut attempt", script)
    };
    let expected = (
        scenario.starts.clone(),
        scenario.ends,
        scenario.result,
        false,
    );
    assert_eq!(
        through_retry_future(&rt, &scenario).await,
        expected,
        "retry future"
    );
    assert_eq!(through_pipeline(&rt, &scenario).await, expected, "pipeline");
    assert_eq!(
        through_boxed_pipeline(&rt, &scenario).await,
        expected,
        "boxed pipeline"
    );
}

#[test]
fn a_cut_attempt_answers_with_an_earlier_value_on_every_runtime() {
    on_every_runtime!(a_cut_attempt_answers_with_an_earlier_value);
}
