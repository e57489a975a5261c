//! Adversarial black-box tests of the retry engine and the outcome classifier, written
//! from the public documentation only: results never lost, extreme deadlines, hints and budgets, and the engine contracts, on the three retry fronts. Every test name is the behaviour
//! sentence it checks; every assertion message quotes (or paraphrases) the doc sentence
//! that promises it. Shared vocabulary in `fronts/`.
//!
//! Virtual time only (`Clocked` through `common`), no real sleeps.

mod common;
mod fronts;

use fronts::*;
use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use std::time::Duration;

use tidewall::bulkhead::Bulkhead;
use tidewall::classify::{Classify, DefaultClassifier, ErrorsWhere, Verdict};
use tidewall::hedge::Hedge;
use tidewall::pipeline::Pipeline;
use tidewall::retry::{Outcome, RetryError, RetryEvent};
use tidewall::rt::{Clock, Runtime};
use tidewall::testing::{Clocked, Scripted};
use tidewall::tower::{BreakerLayer, HedgeLayer, RetryLayer};
use tidewall::{ConfigError, Deadline, Error, Rejected, RetryExt};
use tower::ServiceExt as _;
use tower_layer::Layer;
use tower_service::Service;

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

    let built = Pipeline::builder()
        .runtime(rt.clone())
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
    let built = Pipeline::builder()
        .runtime(rt.clone())
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
                        .retry_on(&rt, constant(ms(1), 10))
                        .classify(classify)
                        .budget(budget.clone())
                        .await;
                    assert_eq!(r, Err(RetryError::Inner(ApiError::Busy)));
                }
                1 => {
                    let p = Pipeline::builder()
                        .runtime(rt.clone())
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
    let pipeline = Pipeline::builder()
        .runtime(rt.clone())
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
                    .retry_on(&rt, constant(ms(3), 6))
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
        let pipeline = Pipeline::builder()
            .runtime(rt.clone())
            .retry(constant(ms(1), 5))
            .retry_budget(budget.clone())
            .classify(classify)
            .build()
            .unwrap();
        for _ in 0..20 {
            match front {
                0 => {
                    let _ = (|| op.call())
                        .retry_on(&rt, constant(ms(1), 5))
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
/// `min_attempt_time` left at the retry instant, all four fronts must agree. (The docs say both
/// "only if more than `budget` remains" and "with less than min_attempt_time left" no attempt
/// starts; they disagree on the boundary, so only agreement is asserted here.)
async fn boundary_agreement<R: Runtime>(rt: Clocked<R>) {
    let c = Cfg {
        backoff: constant(ms(60), 5),
        deadline: Some(ms(100)),
        min_attempt_time: ms(40),
        ..cfg(vec![instant(Err(ApiError::Busy)), instant(Ok(1))])
    };
    let [(_, a), (_, b), (_, t), (_, p)] = all_fronts(&rt, &c).await;
    let norm = |s: &Seen| match s {
        Seen::DeadlineErr(e) => Seen::Err(*e),
        other => other.clone(),
    };
    assert_eq!(a.0, b.0, "retry future vs pipeline: attempt starts");
    assert_eq!(a.0, t.0, "retry future vs tower: attempt starts");
    assert_eq!(norm(&a.2), norm(&b.2), "retry future vs pipeline: result");
    assert_eq!(norm(&a.2), norm(&t.2), "retry future vs tower: result");
    assert_eq!(a.0, p.0, "retry future vs tower pipeline: attempt starts");
    assert_eq!(
        norm(&a.2),
        norm(&p.2),
        "retry future vs tower pipeline: result"
    );
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
        .retry_on(&rt, constant(ms(10), 10))
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
        .retry_on(&rt, constant(ms(50), 10))
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
        .retry_on(&rt, constant(ms(10), 3))
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
    let pipeline = Pipeline::builder()
        .runtime(rt.clone())
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
            .retry_on(&rt, constant(ms(30), 100))
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
        let pipeline = Pipeline::builder()
            .runtime(rt.clone())
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
        let pipeline = Pipeline::builder()
            .runtime(rt.clone())
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
                        .retry_on(&rt, constant(ms(1), 10))
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
                    Pipeline::builder()
                        .runtime(rt.clone())
                        .deadline(secs(1))
                        .bulkhead(bulkhead.clone())
                        .retry(constant(ms(10), 3))
                        .min_attempt_time(ms(300))
                        .build()
                        .unwrap()
                        .call(|| op.call())
                        .await
                } else {
                    Pipeline::builder()
                        .runtime(rt.clone())
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
    let pipeline = Pipeline::builder()
        .runtime(rt.clone())
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
        .retry_on(&rt, constant(ms(10), 5))
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
            .classify(classify_typed)
            .layer(scripted_service(&op).map_err(Error::Inner)),
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
            Pipeline::builder()
                .runtime(rt.clone())
                .deadline(ms(1500))
                .rate_limit(limiter.clone())
                .retry(constant(ms(10), 3))
                .min_attempt_time(ms(600))
                .build()
                .unwrap()
                .call(|| op.call())
                .await
        } else {
            Pipeline::builder()
                .runtime(rt.clone())
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
                        .retry_on(&rt, exponential(ms(10), 5))
                        .when(busy_only)
                        .await
                        .map_err(|e| e.into_inner().unwrap()),
                    1 => (|| op.call())
                        .retry_on(&rt, exponential(ms(10), 5))
                        .classify(ErrorsWhere(busy_only))
                        .await
                        .map_err(|e| e.into_inner().unwrap()),
                    2 => Pipeline::builder()
                        .runtime(rt.clone())
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
