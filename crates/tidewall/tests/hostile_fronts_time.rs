//! Adversarial black-box tests of the retry engine and the outcome classifier, written
//! from the public documentation only: random drop points, long idle gaps and deep nesting. Every test name is the behaviour
//! sentence it checks; every assertion message quotes (or paraphrases) the doc sentence
//! that promises it. Shared vocabulary in `fronts/`.
//!
//! Virtual time only (`Clocked` through `common`), seeded randomness (`SplitMix64`), no real
//! sleeps.

mod common;
mod fronts;

use fronts::*;
use std::future::{Future, IntoFuture};

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use std::time::Duration;
use tidewall::breaker::{CircuitBreaker, State};
use tidewall::budget::{RetryBudget, RetryBudgetPolicy};
use tidewall::bulkhead::Bulkhead;
use tidewall::classify::Verdict;
use tidewall::hedge::{Hedge, Idempotent};
use tidewall::pipeline::Pipeline;
use tidewall::retry::RetryError;
use tidewall::rt::{Clock, Runtime};
use tidewall::testing::{Clocked, Scripted};
use tidewall::tower::{AdmitLayer, AdmitMode, BreakerLayer, RetryLayer};
use tidewall::{Deadline, Error, Rejected, RetryExt};
use tower::ServiceExt as _;
use tower_layer::Layer;

// ---------------------------------------------------------------------------------------------
// Cancellation at seeded random points
// ---------------------------------------------------------------------------------------------

type Call<'a> = std::pin::Pin<Box<dyn Future<Output = ()> + 'a>>;

/// Drives `calls` by hand with a no-op waker: each step either drops a random live call, or polls
/// every live call and then moves virtual time to the next timer. Returns how many were dropped.
fn drive_and_drop<R: Runtime>(
    rt: &Clocked<R>,
    rng: &mut Rng,
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

fn random_script(rng: &mut Rng, n: usize) -> Vec<(Duration, Result<u32, ApiError>)> {
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
/// After calls were dropped at random points: every bulkhead slot came back, nobody is queued,
/// no timer is left, and the budget (ratio 0.5) was never overdrawn.
fn assert_nothing_leaked<R: Runtime>(
    rt: &Clocked<R>,
    bulkhead: &Bulkhead<Clocked<R>>,
    calls_after: usize,
    n_calls: usize,
    seed: u64,
) {
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
}

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
        let mut rng = Rng::new(seed);
        let bulkhead = Bulkhead::builder(2)
            .runtime(rt.clone())
            .max_queue(8)
            .build()
            .unwrap();
        let b = breaker(&rt, 2, 1);
        let budget = budget_of(&rt, Some((0.5, 0))).unwrap();
        let pipeline = Pipeline::builder()
            .runtime(rt.clone())
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
        assert_nothing_leaked(&rt, &bulkhead, calls_after, n_calls, seed);
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
/// an AdmitLayer waiting in poll_ready on a bulkhead. RetryLayer: "dropping the response future drops the running attempt or
/// the backoff sleep; no further attempt is made"; BreakerLayer: "a call whose response future is
/// dropped records nothing".
async fn tower_cancellation<R: Runtime>(rt: Clocked<R>) {
    let mut problems = Vec::new();
    for seed in 1..=60u64 {
        let mut rng = Rng::new(seed);
        let bulkhead = Bulkhead::builder(2)
            .runtime(rt.clone())
            .max_queue(8)
            .build()
            .unwrap();
        let b = breaker(&rt, 2, 1);
        let budget = budget_of(&rt, Some((0.5, 0))).unwrap();
        let op = Scripted::with_latency(rt.clone(), random_script(&mut rng, 30));
        let outer = |r: Result<&u32, &Error<ApiError>>| match r {
            Ok(v) => classify(Ok(v)),
            Err(Error::Inner(e)) => classify(Err(e)),
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
                        AdmitLayer::new(bulkhead.clone(), AdmitMode::WaitReady)
                            .layer(scripted_service(&op).map_err(Error::Inner)),
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
        assert_nothing_leaked(&rt, &bulkhead, calls_after, n_calls, seed);
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
        let mut rng = Rng::new(seed);
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
            .retry_on(&rt, constant(ms(50), 5))
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
        .retry_on(&rt, constant(ms(30), 3))
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
        let pipeline = Pipeline::builder()
            .runtime(rt.clone())
            .breaker(b.clone())
            .classify(classify)
            .build()
            .unwrap();
        let service = BreakerLayer::new(b.clone())
            .classify(classify_typed)
            .layer(scripted_service(&op).map_err(Error::Inner));
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
        let pipeline = Pipeline::builder()
            .runtime(rt.clone())
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
                    .classify(classify_typed)
                    .layer(scripted_service(&op).map_err(Error::Inner)),
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
    let mut rng = Rng::new(99);
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
            .retry_on(&rt, constant(ms(1), 5))
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
            .retry_on(&rt, constant(ms(1), 3))
            .classify(classify)
            .into_future()
    })
    .retry_on(&rt, constant(ms(100), 2))
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
            .retry_on(&rt, constant(ms(1), 3))
            .classify(classify)
            .into_future()
    })
    .retry_on(&rt, constant(ms(100), 2))
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
            .retry_on(&rt, constant(ms(40), 10))
            .classify(classify)
            .deadline(Deadline::after(&rt, ms(100)))
            .into_future()
    })
    .retry_on(&rt, constant(ms(10), 2))
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
    let pipeline = Pipeline::builder()
        .runtime(rt.clone())
        .bulkhead(bulkhead.clone())
        .breaker(b.clone())
        .classify(classify)
        .build()
        .unwrap();
    let op = Scripted::new(rt.clone(), [Err::<u32, _>(ApiError::Busy), Ok(8)]);
    let start = rt.now();
    let result = (|| pipeline.call(|| op.call()))
        .retry_on(&rt, constant(ms(10), 5))
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
