//! Policies that have lived a while: every policy with a clock is exercised after living for
//! seconds, an hour, a month and a century of virtual time, and after idle gaps around the
//! lengths where 16-bit bucket stamps alias (2^15, 2^16, 2^17 buckets and their multiples).
//! Tests elsewhere mostly use fresh policies; in a real service every policy is old.

mod common;

use common::ms;

use std::time::{Duration, Instant};

use proptest::prelude::*;
use tidewall::Rejected;
use tidewall::breaker::{CircuitBreaker, Outcome, State, TripReason, Window};
use tidewall::budget::{RetryBudget, RetryBudgetPolicy};
use tidewall::bulkhead::Bulkhead;
use tidewall::hedge::{Hedge, Idempotent};
use tidewall::rate::RateLimiter;
use tidewall::rt::{Clock, Runtime};
use tidewall::testing::{Clocked, FakeClock};

const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);

/// Ages a policy lives before the scenario starts.
const AGES: [Duration; 5] = [
    Duration::ZERO,
    Duration::from_millis(2_500),
    HOUR,
    Duration::from_secs(30 * 86_400),
    Duration::from_secs(100 * 365 * 86_400),
];

#[derive(Debug, Clone, Copy)]
enum Trigger {
    Consecutive,
    FailureRate,
}

fn aged_breaker<R: Runtime>(rt: &Clocked<R>, trigger: Trigger) -> CircuitBreaker<Clocked<R>> {
    let builder = CircuitBreaker::builder()
        .runtime(rt.clone())
        .break_duration(Duration::from_secs(2));
    match trigger {
        Trigger::Consecutive => builder.consecutive_failures(3),
        Trigger::FailureRate => builder.failure_rate(0.5).minimum_calls(4),
    }
    .build()
    .unwrap()
}

/// A breaker of any age opens for its whole break: the default count window, tripped by
/// consecutive failures or by the failure rate, sheds every call until the break is over.
async fn breaker_opens_for_its_whole_break_at_any_age<R: Runtime>(rt: Clocked<R>) {
    for age in AGES {
        for trigger in [Trigger::Consecutive, Trigger::FailureRate] {
            let breaker = aged_breaker(&rt, trigger);
            rt.clock().advance(age);
            for _ in 0..4 {
                if let Ok(permit) = breaker.try_acquire() {
                    permit.failure();
                }
            }
            assert_eq!(breaker.state(), State::Open, "{trigger:?} at age {age:?}");
            assert_eq!(
                breaker.try_acquire().map(drop),
                Err(Rejected::CircuitOpen {
                    retry_after: Duration::from_secs(2)
                }),
                "{trigger:?} at age {age:?}"
            );
            rt.sleep(ms(1_999)).await;
            assert!(
                breaker.try_acquire().is_err(),
                "{trigger:?} at age {age:?}: the break ended early"
            );
            rt.sleep(ms(1)).await;
            let probe = breaker.try_acquire().expect("the break is over");
            assert!(probe.is_probe());
            probe.success();
            assert_eq!(breaker.state(), State::Closed);
        }
    }
}

#[test]
fn a_breaker_opens_for_its_whole_break_at_any_age_on_every_runtime() {
    on_every_runtime!(breaker_opens_for_its_whole_break_at_any_age);
}

/// A breaker that has tripped again and again for a month still opens for its schedule's
/// last break, and each trip costs one backoff step (not one per earlier trip).
#[test]
fn a_breaker_that_tripped_for_a_month_keeps_its_break() {
    let rt = Clocked::new(tidewall::rt::Tokio);
    let breaker = CircuitBreaker::builder()
        .runtime(rt.clone())
        .consecutive_failures(1)
        .break_duration(Duration::from_secs(5))
        .build()
        .unwrap();
    // 30 days of a dependency that stays down: a failed probe every 5 s.
    for _ in 0..(30 * 86_400 / 5) {
        breaker.try_acquire().expect("the break is over").failure();
        rt.clock().advance(Duration::from_secs(5));
    }
    breaker.try_acquire().unwrap().failure();
    assert_eq!(
        breaker.try_acquire().map(drop),
        Err(Rejected::CircuitOpen {
            retry_after: Duration::from_secs(5)
        })
    );
}

/// A time-window breaker built an hour (or a month) before its first call counts its calls.
#[test]
fn a_time_window_breaker_built_long_before_its_first_call_counts_it() {
    for age in AGES {
        let rt = Clocked::new(tidewall::rt::Tokio);
        let breaker = CircuitBreaker::builder()
            .runtime(rt.clone())
            .window(Window::Time {
                span: Duration::from_secs(1),
                buckets: 10,
            })
            .failure_rate(0.5)
            .minimum_calls(4)
            .build()
            .unwrap();
        rt.clock().advance(age);
        for _ in 0..3 {
            breaker.try_acquire().unwrap().failure();
        }
        assert_eq!(breaker.counts().calls, 3, "age {age:?}");
        breaker.try_acquire().unwrap().failure();
        assert_eq!(breaker.state(), State::Open, "age {age:?}");
    }
}

/// Counts that left the window stay gone after any silence, including silences of exactly
/// 2^16 bucket lengths, where a 16-bit stamp comes round again.
#[test]
fn stale_counts_never_come_back_after_a_silence() {
    let bucket = ms(1);
    for silence in [
        1u64 << 15,
        1 << 16,
        (1 << 16) + 1,
        1 << 17,
        3 << 16,
        1000 << 16,
    ] {
        let rt = Clocked::new(tidewall::rt::Tokio);
        let breaker = CircuitBreaker::builder()
            .runtime(rt.clone())
            .window(Window::Time {
                span: ms(16),
                buckets: 16,
            })
            .failure_rate(0.5)
            .minimum_calls(10)
            .build()
            .unwrap();
        for _ in 0..9 {
            breaker.try_acquire().unwrap().failure();
        }
        rt.clock().advance(bucket * u32::try_from(silence).unwrap());
        assert_eq!(breaker.counts().calls, 0, "after {silence} buckets");
        breaker.try_acquire().unwrap().failure();
        assert_eq!(breaker.state(), State::Closed, "after {silence} buckets");
        assert_eq!(breaker.counts().failures, 1, "after {silence} buckets");
    }
}

/// The deciding call of a rate trip may be a success: 5 failures then 5 successes reach the
/// minimum of 10 calls at a 50 % failure rate, and the breaker opens on the 10th.
#[test]
fn a_rate_trip_is_taken_when_the_deciding_call_succeeds() {
    for window in [
        Window::Count { calls: 100 },
        Window::Time {
            span: Duration::from_secs(10),
            buckets: 10,
        },
    ] {
        let rt = Clocked::new(tidewall::rt::Tokio);
        let breaker = CircuitBreaker::builder()
            .runtime(rt.clone())
            .window(window)
            .failure_rate(0.5)
            .minimum_calls(10)
            .build()
            .unwrap();
        rt.clock().advance(HOUR);
        for outcome in [Outcome::Failure; 5]
            .into_iter()
            .chain([Outcome::Success; 5])
        {
            assert_eq!(breaker.state(), State::Closed);
            breaker.try_acquire().unwrap().record(outcome);
        }
        assert_eq!(
            breaker.policy().evaluate(breaker.counts(), 0),
            Some(TripReason::FailureRate)
        );
        assert_eq!(breaker.state(), State::Open, "{window:?}");
    }
}

/// In a time window, older successes expiring can raise the failure rate: the success that
/// arrives after them decides.
#[test]
fn a_success_after_successes_expired_trips_the_rate() {
    let rt = Clocked::new(tidewall::rt::Tokio);
    let breaker = CircuitBreaker::builder()
        .runtime(rt.clone())
        .window(Window::Time {
            span: Duration::from_secs(10),
            buckets: 10,
        })
        .failure_rate(0.5)
        .minimum_calls(4)
        .build()
        .unwrap();
    for _ in 0..6 {
        breaker.try_acquire().unwrap().success();
    }
    rt.clock().advance(Duration::from_secs(5));
    for _ in 0..3 {
        breaker.try_acquire().unwrap().failure();
    }
    assert_eq!(breaker.state(), State::Closed, "3 of 9 failed");
    // The six successes leave the window; one more success makes it 3 of 4.
    rt.clock().advance(Duration::from_secs(5));
    breaker.try_acquire().unwrap().success();
    assert_eq!(breaker.state(), State::Open);
}

fn budget_policy() -> RetryBudgetPolicy {
    RetryBudgetPolicy::builder()
        .ratio(0.1)
        .min_per_second(0)
        .window(Duration::from_secs(1))
        .build()
        .unwrap()
}

/// A retry budget grants its share after any idle gap, and when built long before its
/// first use.
#[test]
fn a_retry_budget_grants_its_share_at_any_age() {
    let clock = FakeClock::new();
    let budget = RetryBudget::new(budget_policy(), clock.now());
    let mut idle = vec![Duration::from_secs(1), HOUR, 9 * HOUR, DAY];
    idle.extend(AGES);
    for gap in idle {
        clock.advance(gap);
        for _ in 0..50 {
            budget.deposit(clock.now());
        }
        let granted = (0..10).filter(|_| budget.try_withdraw(clock.now())).count();
        assert_eq!(granted, 5, "after {gap:?} idle");
        // Let this round's calls leave the window.
        clock.advance(Duration::from_secs(1));
    }
}

/// A hedge with a budget, built 30 days before its first call, still hedges.
#[test]
fn a_hedge_budget_built_a_month_before_first_use_still_hedges() {
    common::on_tokio_current_thread(|rt| async move {
        let hedge = Hedge::builder()
            .runtime(rt.clone())
            .delay(ms(50))
            .max_hedges(1)
            .budget_ratio(1.0)
            .build()
            .unwrap();
        rt.clock().advance(30 * DAY);
        let mut launched = 0;
        let answer = hedge
            .call(Idempotent(|| {
                launched += 1;
                let latency = if launched == 1 { 10_000 } else { 10 };
                let rt = rt.clone();
                async move {
                    rt.sleep(ms(latency)).await;
                    Ok::<_, ()>(launched)
                }
            }))
            .await;
        assert_eq!(answer, Ok(2));
    });
}

/// A rate limiter and a bulkhead's wait limit behave the same at any age.
async fn limits_hold_at_any_age<R: Runtime>(rt: Clocked<R>) {
    for age in AGES {
        let limiter = RateLimiter::builder(10, Duration::from_secs(1))
            .burst(2)
            .runtime(rt.clone())
            .build()
            .unwrap();
        let bulkhead = Bulkhead::builder(1)
            .max_queue(1)
            .max_wait(ms(100))
            .runtime(rt.clone())
            .build()
            .unwrap();
        rt.clock().advance(age);
        assert!(limiter.check().is_ok(), "age {age:?}");
        assert!(limiter.check().is_ok(), "age {age:?}");
        assert!(limiter.check().is_err(), "age {age:?}: burst exceeded");
        let held = bulkhead.try_acquire().unwrap();
        let started = rt.now();
        assert_eq!(
            bulkhead.acquire().await.map(drop),
            Err(Rejected::BulkheadFull),
            "age {age:?}"
        );
        assert_eq!(rt.now() - started, ms(100), "age {age:?}");
        drop(held);
        assert_eq!(bulkhead.available(), bulkhead.capacity());
    }
}

#[test]
fn rate_limits_and_bulkhead_waits_hold_at_any_age_on_every_runtime() {
    on_every_runtime!(limits_hold_at_any_age);
}

/// Gaps between uses of a stamped structure, in bucket lengths: ordinary ones and the
/// neighbourhoods of 2^15, 2^16 and 2^17 buckets and their multiples.
fn gap() -> impl Strategy<Value = u64> {
    prop_oneof![
        0..30u64,
        (1u64..=6, 15u32..=17, -12i64..=12)
            .prop_map(|(k, bits, d)| (k << bits).saturating_add_signed(d)),
        0..(1u64 << 36),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Through the public API, after any gaps: a budget with ratio 1 and no floor grants
    /// exactly the calls of its window less the retries already granted in it.
    #[test]
    fn a_budget_grants_exactly_its_window_after_any_gaps(
        start in gap(),
        steps in prop::collection::vec((gap(), 1u64..5), 1..25),
    ) {
        let policy = RetryBudgetPolicy::builder()
            .ratio(1.0)
            .min_per_second(0)
            .window(Duration::from_secs(1))
            .buckets(10)
            .build()
            .unwrap();
        let origin = Instant::now();
        let budget = RetryBudget::new(policy, origin);
        let at = |buckets: u64| origin + Duration::from_millis(buckets.saturating_mul(100));
        let mut now = start;
        let mut events: Vec<(u64, u64, u64)> = Vec::new();
        for (gap, calls) in steps {
            now = now.saturating_add(gap);
            for _ in 0..calls {
                budget.deposit(at(now));
            }
            let granted = (0..60).filter(|_| budget.try_withdraw(at(now))).count() as u64;
            let (deposits, withdrawals) = events
                .iter()
                .filter(|(e, _, _)| now - e < 10)
                .fold((calls, 0), |(d, w), (_, dd, ww)| (d + dd, w + ww));
            prop_assert_eq!(granted, deposits - withdrawals, "at bucket {}", now);
            events.push((now, calls, granted));
        }
    }
}
