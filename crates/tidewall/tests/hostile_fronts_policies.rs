//! Adversarial black-box tests of the retry engine and the outcome classifier, written
//! from the public documentation only: one classifier through the breaker, tower stacks and hedging. Every test name is the behaviour
//! sentence it checks; every assertion message quotes (or paraphrases) the doc sentence
//! that promises it. Shared vocabulary in `fronts/`.
//!
//! Virtual time only (`Clocked` through `common`), no real sleeps.

mod common;
mod fronts;

use fronts::*;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tidewall::breaker::State;

use tidewall::classify::Verdict;
use tidewall::hedge::{Hedge, Idempotent};
use tidewall::pipeline::Pipeline;

use tidewall::rt::{Clock, Runtime};
use tidewall::testing::{Clocked, Scripted};
use tidewall::tower::{BreakerLayer, HedgeLayer, RetryLayer};
use tidewall::{Error, Rejected};
use tower::ServiceExt as _;
use tower_layer::Layer;
use tower_service::Service;

// ---------------------------------------------------------------------------------------------
// Circuit breaker: one classifier, three fronts
// ---------------------------------------------------------------------------------------------

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
    let pipeline = Pipeline::builder()
        .runtime(rt.clone())
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
        .classify(classify_typed)
        .layer(scripted_service(&op).map_err(Error::Inner));
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
        .classify(classify_typed)
        .layer(scripted_service(&op).map_err(Error::Inner));
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
    let pipeline = Pipeline::builder()
        .runtime(rt.clone())
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
    let pipeline = Pipeline::builder()
        .runtime(rt.clone())
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
    let pipeline = Pipeline::builder()
        .runtime(rt.clone())
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
                .classify(classify_typed)
                .layer(scripted_service(&op).map_err(Error::Inner)),
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
                .classify(classify_typed)
                .layer(scripted_service(&op).map_err(Error::Inner)),
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
/// The hedge passes its service's `ApiError` through (and judges it with `classify`); the
/// breaker, which can refuse, needs the typed `Error<ApiError>`: `map_err(Error::Inner)` goes
/// between the two, and the breaker judges with `classify` lifted to that type.
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
            BreakerLayer::new(b.clone()).classify(classify_typed).layer(
                HedgeLayer::new(hedge.clone())
                    .layer(scripted_service(&op))
                    .map_err(Error::Inner),
            ),
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
            BreakerLayer::new(b.clone()).classify(classify_typed).layer(
                HedgeLayer::new(hedge.clone())
                    .layer(scripted_service(&op))
                    .map_err(Error::Inner),
            ),
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
            let pipeline = Pipeline::builder()
                .runtime(rt.clone())
                .retry(constant(ms(10), 3))
                .breaker(b.clone())
                .classify(classify)
                .build()
                .unwrap();
            let service = BreakerLayer::new(b.clone())
                .classify(classify_typed)
                .layer(scripted_service(&op).map_err(Error::Inner));
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
