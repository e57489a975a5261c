//! One classifier, every policy: the circuit breaker counts, and hedging re-hedges, exactly
//! what the classifier says — through the direct API, the pipeline and the tower layers — and
//! a call shed by an open breaker is retried after the breaker's hint, or returns at once
//! when that is past the deadline.

mod common;

use common::ms;

use std::time::Duration;

use tidewall::breaker::{CircuitBreaker, State};
use tidewall::classify::Verdict;
use tidewall::hedge::{Hedge, Idempotent};
use tidewall::pipeline::Pipeline;
use tidewall::rt::{Clock, Runtime};
use tidewall::testing::{Clocked, Scripted};
use tidewall::tower::{BreakerLayer, HedgeLayer, RetryLayer};
use tidewall::{Backoff, Deadline, Error, Jitter, Rejected, RetryAfter};
use tower_layer::Layer;
use tower_service::Service;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ApiError {
    Busy,
    Invalid,
    Cancelled,
}

impl RetryAfter for ApiError {
    fn retry_after(&self) -> Option<Duration> {
        None
    }
}

const PENDING: u32 = 0;

type Outcome = Result<u32, ApiError>;

fn classify(result: Result<&u32, &ApiError>) -> Verdict {
    match result {
        Ok(&PENDING) | Err(ApiError::Busy) => Verdict::RetryableFailure,
        Ok(_) => Verdict::Success,
        Err(ApiError::Invalid) => Verdict::Failure,
        Err(ApiError::Cancelled) => Verdict::Ignored,
    }
}

/// `classify` for a breaker layer, which judges the stack's one error type `Error<ApiError>`:
/// the service's own error (`Error::Inner`) as `classify` says, anything else (nothing beneath
/// these breakers refuses or times out) a retryable failure.
fn classify_typed(result: Result<&u32, &Error<ApiError>>) -> Verdict {
    match result {
        Ok(v) => classify(Ok(v)),
        Err(Error::Inner(e)) => classify(Err(e)),
        Err(_) => Verdict::RetryableFailure,
    }
}

fn breaker<R: Runtime>(rt: &R) -> CircuitBreaker<R> {
    CircuitBreaker::builder()
        .consecutive_failures(2)
        .break_duration(Duration::from_secs(1))
        .runtime(rt.clone())
        .build()
        .unwrap()
}

#[derive(Debug, Clone, Copy)]
enum BreakerFront {
    Direct,
    Pipeline,
    Tower,
}

/// Makes one call returning `result` through `front`, guarded by `breaker`.
async fn call_through<R: Runtime>(
    rt: &Clocked<R>,
    front: BreakerFront,
    breaker: &CircuitBreaker<Clocked<R>>,
    result: Result<u32, ApiError>,
) {
    match front {
        BreakerFront::Direct => {
            let _ = breaker
                .call_classified(|| async move { result }, classify)
                .await;
        }
        BreakerFront::Pipeline => {
            let pipeline = Pipeline::builder()
                .runtime(rt.clone())
                .breaker(breaker.clone())
                .classify(classify)
                .build()
                .unwrap();
            let _ = pipeline.call(|| async move { result }).await;
        }
        BreakerFront::Tower => {
            let mut service = BreakerLayer::new(breaker.clone())
                .classify(classify_typed)
                .layer(tower::service_fn(move |(): ()| async move {
                    result.map_err(Error::Inner)
                }));
            std::future::poll_fn(|cx| service.poll_ready(cx))
                .await
                .unwrap();
            let _ = service.call(()).await;
        }
    }
}

async fn the_breaker_counts_what_the_classifier_says<R: Runtime>(rt: Clocked<R>) {
    for front in [
        BreakerFront::Direct,
        BreakerFront::Pipeline,
        BreakerFront::Tower,
    ] {
        let cases: [(&str, &[Outcome], State); 5] = [
            (
                "ignored results record nothing",
                &[Err(ApiError::Cancelled); 6],
                State::Closed,
            ),
            (
                "an Ok judged a failure counts as one",
                &[Ok(PENDING), Ok(PENDING)],
                State::Open,
            ),
            (
                "a failure not to retry counts as one",
                &[Err(ApiError::Invalid), Err(ApiError::Invalid)],
                State::Open,
            ),
            (
                "a success between failures resets the run",
                &[Err(ApiError::Busy), Ok(1), Err(ApiError::Busy)],
                State::Closed,
            ),
            (
                "an ignored result does not break a run of failures",
                &[
                    Err(ApiError::Busy),
                    Err(ApiError::Cancelled),
                    Err(ApiError::Busy),
                ],
                State::Open,
            ),
        ];
        for (name, results, state) in cases {
            let breaker = breaker(&rt);
            for result in results {
                call_through(&rt, front, &breaker, *result).await;
            }
            assert_eq!(breaker.state(), state, "{front:?}: {name}");
        }
    }
}

#[test]
fn the_breaker_counts_what_the_classifier_says_on_every_runtime() {
    on_every_runtime!(the_breaker_counts_what_the_classifier_says);
}

/// Trips `breaker` open (two failures) at the current instant.
async fn trip<R: Runtime>(breaker: &CircuitBreaker<R>) {
    for _ in 0..2 {
        let _ = breaker
            .call(|| async { Err::<(), _>(ApiError::Busy) })
            .await;
    }
    assert_eq!(breaker.state(), State::Open);
}

fn backoff() -> Backoff {
    Backoff::exponential(ms(10))
        .jitter(Jitter::None)
        .max_attempts(4)
        .build()
        .unwrap()
}

/// A call shed by the open breaker, through the pipeline and through tower's retry over the
/// breaker layer: with a deadline shorter than the breaker's hint it returns at once, without
/// the operation running; without one it waits out the hint and the probe succeeds.
async fn a_shed_call_waits_for_the_breaker_or_returns_at_once<R: Runtime>(rt: Clocked<R>) {
    for deadline in [Some(ms(200)), None] {
        let (starts, ends) = if deadline.is_some() {
            (vec![], Duration::ZERO)
        } else {
            (vec![Duration::from_secs(1)], Duration::from_secs(1))
        };

        let breaker = breaker(&rt);
        trip(&breaker).await;
        let op = Scripted::new(rt.clone(), [Ok::<u32, ApiError>(1)]);
        let pipeline = Pipeline::builder()
            .runtime(rt.clone())
            .retry(backoff())
            .breaker(breaker)
            .build()
            .unwrap();
        let within = deadline.map_or_else(Deadline::none, |d| Deadline::after(&rt, d));
        let start = rt.now();
        let result = pipeline.call_before(within, || op.call()).await;
        assert_eq!(rt.now() - start, ends, "pipeline, deadline {deadline:?}");
        assert_eq!(
            op.start_offsets(),
            starts,
            "pipeline, deadline {deadline:?}"
        );
        match deadline {
            Some(_) => assert!(
                matches!(result, Err(Error::Rejected(Rejected::CircuitOpen { .. }))),
                "pipeline: {result:?}"
            ),
            None => assert_eq!(result, Ok(1)),
        }

        let breaker = self::breaker(&rt);
        trip(&breaker).await;
        let op = Scripted::new(rt.clone(), [Ok::<u32, ApiError>(1)]);
        let inner = {
            let op = op.clone();
            tower::service_fn(move |(): ()| {
                let op = op.clone();
                async move { op.call().await.map_err(Error::Inner) }
            })
        };
        let mut layer = RetryLayer::new(backoff())
            .runtime(rt.clone())
            .honor_retry_after();
        if let Some(within) = deadline {
            layer = layer.deadline(within);
        }
        let mut service = layer.layer(BreakerLayer::new(breaker).layer(inner));
        let start = rt.now();
        std::future::poll_fn(|cx| service.poll_ready(cx))
            .await
            .unwrap();
        let result = service.call(()).await;
        assert_eq!(rt.now() - start, ends, "tower, deadline {deadline:?}");
        assert_eq!(op.start_offsets(), starts, "tower, deadline {deadline:?}");
        match deadline {
            Some(_) => assert!(
                matches!(result, Err(Error::Rejected(Rejected::CircuitOpen { .. }))),
                "tower: {result:?}"
            ),
            None => assert_eq!(result, Ok(1)),
        }
    }
}

#[test]
fn a_shed_call_waits_for_the_breaker_or_returns_at_once_on_every_runtime() {
    on_every_runtime!(a_shed_call_waits_for_the_breaker_or_returns_at_once);
}

/// Hedging with the classifier, directly and through the tower layer: a retryable failure
/// starts the next hedge at once, any other failure ends the call with it.
async fn hedging_re_hedges_only_retryable_failures<R: Runtime>(rt: Clocked<R>) {
    let cases: [(&str, Vec<Outcome>, Outcome, usize); 4] = [
        (
            "a failure not to retry ends the call",
            vec![Err(ApiError::Invalid), Ok(1)],
            Err(ApiError::Invalid),
            1,
        ),
        (
            "an ignored result ends the call",
            vec![Err(ApiError::Cancelled), Ok(1)],
            Err(ApiError::Cancelled),
            1,
        ),
        (
            "a retryable error starts the next hedge at once",
            vec![Err(ApiError::Busy), Ok(1)],
            Ok(1),
            2,
        ),
        (
            "an Ok judged retryable starts the next hedge, and is kept if all fail",
            vec![Ok(PENDING)],
            Ok(PENDING),
            3,
        ),
    ];
    for (name, script, expected, calls) in cases {
        let hedge = Hedge::builder()
            .delay(Duration::from_secs(1))
            .max_hedges(2)
            .classify(classify)
            .runtime(rt.clone())
            .build()
            .unwrap();

        let op = Scripted::new(rt.clone(), script.clone());
        let start = rt.now();
        let result = hedge.call(Idempotent(|| op.call())).await;
        assert_eq!((result, op.calls()), (expected, calls), "direct: {name}");
        assert_eq!(
            rt.now(),
            start,
            "direct: {name}: nothing waited for the delay"
        );

        let op = Scripted::new(rt.clone(), script);
        let inner = {
            let op = op.clone();
            tower::service_fn(move |(): ()| {
                let op = op.clone();
                async move { op.call().await }
            })
        };
        let mut service = HedgeLayer::new(hedge).layer(inner);
        std::future::poll_fn(|cx| service.poll_ready(cx))
            .await
            .unwrap();
        let result = service.call(()).await;
        assert_eq!((result, op.calls()), (expected, calls), "tower: {name}");
        assert_eq!(
            rt.now(),
            start,
            "tower: {name}: nothing waited for the delay"
        );
    }
}

#[test]
fn hedging_re_hedges_only_retryable_failures_on_every_runtime() {
    on_every_runtime!(hedging_re_hedges_only_retryable_failures);
}

/// `honor_retry_after()` and `retry_after_with(f)` stack, in either order: an error's own hint
/// first (for `WithRetryAfter`) or the closure's (for `Hinted`), else the wrapped
/// classifier's. (Audit s36: the outer one's `None` dropped the inner one's hint.)
#[test]
fn hint_sources_stack_in_either_order() {
    use tidewall::classify::{Classify, DefaultClassifier, Hinted, WithRetryAfter};
    let busy = Rejected::RateLimited {
        retry_after: ms(20),
    };
    assert_eq!(Rejected::BulkheadFull.retry_after(), None);
    let server_said = |r: Result<&u32, &Rejected>| match r {
        Ok(503) | Err(Rejected::BulkheadFull) => Some(Duration::from_secs(5)),
        _ => None,
    };
    let errors_outside = WithRetryAfter(Hinted(DefaultClassifier, server_said));
    let closure_outside = Hinted(WithRetryAfter(DefaultClassifier), server_said);
    for (name, classifier) in [
        (
            "errors outside",
            &errors_outside as &dyn Classify<u32, Rejected>,
        ),
        ("closure outside", &closure_outside),
    ] {
        let hint = |r| classifier.retry_after(r);
        assert_eq!(
            hint(Err(&Rejected::BulkheadFull)),
            Some(Duration::from_secs(5)),
            "{name}: the closure's hint for an error with none of its own"
        );
        assert_eq!(
            hint(Ok(&503)),
            Some(Duration::from_secs(5)),
            "{name}: the closure's hint for a value"
        );
        assert_eq!(
            hint(Err(&busy)),
            Some(ms(20)),
            "{name}: the error's own hint"
        );
        assert_eq!(hint(Ok(&200)), None, "{name}");
    }
}
