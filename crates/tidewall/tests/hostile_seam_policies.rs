//! Adversarial black-box tests of the other waiting policies on a user's own clock, on
//! `FakeClock` used directly and on a user's clock wrapping one: retry, timeouts and
//! deadlines, the circuit breaker, the bulkhead, a whole `Pipeline`, the tower layers, and the
//! stream operators that pace or time their items. Written from the public docs only; the
//! clocks are in `seam_support`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;
mod seam_support;
mod support;

use std::convert::Infallible;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::ms;
use futures_util::{StreamExt as _, stream};
use seam_support::{NS, Virtual, YEAR, elapsed_since, run, secs};
use support::DAY;
use tidewall::breaker::{CircuitBreaker, State};
use tidewall::bulkhead::Bulkhead;
use tidewall::pipeline::Pipeline;
use tidewall::rate::RateLimiter;
use tidewall::retry::{RetryError, RetryExt as _};
use tidewall::stream::{MissedTicks, StreamOps as _, interval_on};
use tidewall::time::{DeadlineExceeded, Elapsed, FutureExt as _};
use tidewall::{Backoff, Deadline, Error, Jitter, Rejected};
use tower_layer::Layer as _;
use tower_service::Service as _;

// ---------------------------------------------------------------------------------------------
// Retry, deadlines, breaker, bulkhead on a user's clock and on FakeClock directly
// ---------------------------------------------------------------------------------------------

fn retry_sleeps_its_backoff_exactly<C: Virtual>(clock: C) {
    let start = clock.now();
    let starts = Arc::new(Mutex::new(Vec::new()));
    let op = {
        let (clock, starts) = (clock.clone(), starts.clone());
        move || {
            starts.lock().unwrap().push(clock.now() - start);
            async { Err::<(), _>("down") }
        }
    };
    let backoff = Backoff::constant(secs(1))
        .jitter(Jitter::None)
        .max_attempts(3)
        .build()
        .unwrap();
    let result = run(&clock, op.retry_on(&clock, backoff));
    assert!(
        matches!(result, Err(RetryError::Inner("down"))),
        "{result:?}"
    );
    assert_eq!(*starts.lock().unwrap(), [Duration::ZERO, secs(1), secs(2)]);
}

fn retry_draws_a_fresh_jitter_seed_per_call<C: Virtual>(clock: C) {
    let backoff = Backoff::exponential(secs(1))
        .max_attempts(4)
        .build()
        .unwrap(); // full jitter
    let mut schedules = Vec::new();
    for _ in 0..4 {
        let delays = Arc::new(Mutex::new(Vec::new()));
        let seen = delays.clone();
        let _ = run(
            &clock,
            (|| async { Err::<(), _>("down") })
                .retry_on(&clock, backoff)
                .notify(move |event: &tidewall::retry::RetryEvent<'_, (), &str>| {
                    seen.lock().unwrap().push(event.delay)
                }),
        );
        schedules.push(delays.lock().unwrap().clone());
    }
    schedules.dedup();
    assert!(
        schedules.len() > 1,
        "four calls drew the same jittered schedule: {schedules:?}"
    );
}

#[test]
fn retry_on_a_users_clock_or_fakeclock_draws_a_fresh_jitter_seed_per_call() {
    on_every_plain_clock!(retry_draws_a_fresh_jitter_seed_per_call);
}

#[test]
fn retry_on_a_users_clock_or_fakeclock_sleeps_its_backoff_exactly() {
    on_every_plain_clock!(retry_sleeps_its_backoff_exactly);
}

fn retry_returns_at_once_when_the_next_sleep_would_pass_the_deadline<C: Virtual>(clock: C) {
    let start = clock.now();
    let backoff = Backoff::constant(secs(1))
        .jitter(Jitter::None)
        .max_attempts(5)
        .build()
        .unwrap();
    let result = run(
        &clock,
        (|| async { Err::<(), _>("down") })
            .retry_on(&clock, backoff)
            .deadline(Deadline::after(&clock, ms(1500))),
    );
    assert_eq!(
        result,
        Err(RetryError::DeadlineExceeded {
            last_error: Some("down"),
            attempts: 2
        })
    );
    assert_eq!(
        elapsed_since(&clock, start),
        secs(1),
        "the sleep to 2 s is not slept at all"
    );
}

#[test]
fn retry_on_a_users_clock_or_fakeclock_returns_at_once_when_the_next_sleep_would_pass_the_deadline()
{
    on_every_plain_clock!(retry_returns_at_once_when_the_next_sleep_would_pass_the_deadline);
}

fn retry_cuts_each_attempt_at_its_timeout<C: Virtual>(clock: C) {
    let start = clock.now();
    let op = {
        let clock = clock.clone();
        move || {
            let clock = clock.clone();
            async move {
                clock.sleep(secs(10)).await;
                Ok::<_, &str>(())
            }
        }
    };
    let backoff = Backoff::constant(ms(500))
        .jitter(Jitter::None)
        .max_attempts(2)
        .build()
        .unwrap();
    let result = run(
        &clock,
        op.retry_on(&clock, backoff).attempt_timeout(secs(1)),
    );
    assert_eq!(result, Err(RetryError::AttemptTimedOut));
    assert_eq!(elapsed_since(&clock, start), ms(2500));
}

#[test]
fn retry_on_a_users_clock_or_fakeclock_cuts_each_attempt_at_its_timeout() {
    on_every_plain_clock!(retry_cuts_each_attempt_at_its_timeout);
}

fn timeout_and_deadline_fire_at_their_instant<C: Virtual>(clock: C) {
    let start = clock.now();
    let slow = clock.sleep(secs(5));
    assert_eq!(run(&clock, slow.timeout_on(&clock, secs(1))), Err(Elapsed));
    assert_eq!(elapsed_since(&clock, start), secs(1));
    let deadline = Deadline::after(&clock, ms(250));
    assert_eq!(deadline.instant(), Some(start + secs(1) + ms(250)));
    assert_eq!(
        run(&clock, clock.sleep(secs(5)).deadline_on(&clock, deadline)),
        Err(DeadlineExceeded)
    );
    assert_eq!(elapsed_since(&clock, start), ms(1250));
    assert_eq!(
        run(&clock, async { 7 }.deadline_on(&clock, Deadline::at(start))),
        Ok(7),
        "output wins"
    );
}

#[test]
fn timeouts_and_deadlines_on_a_users_clock_or_fakeclock_fire_at_their_instant() {
    on_every_plain_clock!(timeout_and_deadline_fire_at_their_instant);
}

fn breaker_opens_for_exactly_its_break_even_when_old<C: Virtual>(clock: C) {
    let breaker = CircuitBreaker::builder()
        .consecutive_failures(1)
        .break_duration(secs(10))
        .half_open_probes(1)
        .runtime(clock.clone())
        .build()
        .unwrap();
    // An old breaker: the break is measured from the trip, not from the build.
    clock.advance_by(DAY);
    let failed = run(&clock, breaker.call(|| async { Err::<(), _>("boom") }));
    assert_eq!(failed, Err(Error::Inner("boom")));
    assert_eq!(breaker.state(), State::Open);
    assert!(
        matches!(breaker.try_acquire(), Err(Rejected::CircuitOpen { retry_after }) if retry_after == secs(10))
    );
    clock.advance_by(secs(10) - NS);
    match breaker.try_acquire().map(drop) {
        Err(Rejected::CircuitOpen { retry_after }) => assert_eq!(retry_after, NS),
        other => panic!("one nanosecond before the break ends: {other:?}"),
    }
    clock.advance_by(NS);
    let probe = breaker
        .try_acquire()
        .expect("the break is over: a probe passes");
    assert!(probe.is_probe());
    assert!(
        matches!(breaker.try_acquire(), Err(Rejected::CircuitOpen { .. })),
        "one probe slot"
    );
    probe.success();
    assert_eq!(breaker.state(), State::Closed);
}

#[test]
fn a_breaker_on_a_users_clock_or_fakeclock_opens_for_exactly_its_break_even_a_day_after_build() {
    on_every_plain_clock!(breaker_opens_for_exactly_its_break_even_when_old);
}

fn breaker_reopens_when_a_probe_hangs_past_max_half_open_wait<C: Virtual>(clock: C) {
    let breaker = CircuitBreaker::builder()
        .consecutive_failures(1)
        .break_duration(secs(10))
        .half_open_probes(1)
        .max_half_open_wait(Some(secs(5)))
        .runtime(clock.clone())
        .build()
        .unwrap();
    breaker.try_acquire().unwrap().failure();
    assert_eq!(breaker.state(), State::Open);
    clock.advance_by(secs(10));
    let hung = breaker.try_acquire().expect("a probe");
    // A half-open breaker with its probe in flight stays half-open until the wait is over...
    clock.advance_by(secs(5) - NS);
    assert!(breaker.try_acquire().is_err());
    assert_eq!(breaker.state(), State::HalfOpen);
    // ... and reopens after it.
    clock.advance_by(NS + NS);
    assert!(matches!(
        breaker.try_acquire(),
        Err(Rejected::CircuitOpen { .. })
    ));
    assert_eq!(breaker.state(), State::Open);
    drop(hung);
}

#[test]
fn a_breaker_on_a_users_clock_or_fakeclock_reopens_when_a_probe_hangs_past_max_half_open_wait() {
    on_every_plain_clock!(breaker_reopens_when_a_probe_hangs_past_max_half_open_wait);
}

fn breaker_a_century_old_opens_for_its_whole_break<C: Virtual>(clock: C) {
    let breaker = CircuitBreaker::builder()
        .consecutive_failures(1)
        .break_duration(secs(10))
        .runtime(clock.clone())
        .build()
        .unwrap();
    clock.advance_by(100 * YEAR);
    breaker.try_acquire().unwrap().failure();
    assert_eq!(breaker.state(), State::Open);
    clock.advance_by(secs(10) - NS);
    assert!(
        breaker.try_acquire().is_err(),
        "still open 1 ns before the break ends"
    );
    clock.advance_by(NS);
    assert!(
        breaker.try_acquire().is_ok(),
        "half-open at the end of the break"
    );
}

#[test]
fn a_breaker_on_a_users_clock_or_fakeclock_a_century_after_build_opens_for_its_whole_break() {
    on_every_plain_clock!(breaker_a_century_old_opens_for_its_whole_break);
}

fn bulkhead_waits_exactly_its_max_wait_and_deadline<C: Virtual>(clock: C) {
    let bulkhead = Bulkhead::builder(1)
        .max_queue(1)
        .max_wait(ms(100))
        .runtime(clock.clone())
        .build()
        .unwrap();
    let held = bulkhead.try_acquire().unwrap();
    let start = clock.now();
    assert!(matches!(
        run(&clock, bulkhead.acquire()),
        Err(Rejected::BulkheadFull)
    ));
    assert_eq!(
        elapsed_since(&clock, start),
        ms(100),
        "gave up at exactly max_wait"
    );
    let start = clock.now();
    let result = run(
        &clock,
        bulkhead.acquire_before(Deadline::at(start + ms(40))),
    );
    assert!(
        matches!(result, Err(Rejected::DeadlineExceeded)),
        "{result:?}"
    );
    assert_eq!(
        elapsed_since(&clock, start),
        ms(40),
        "gave up at exactly the deadline"
    );
    assert_eq!(bulkhead.queued(), 0);
    drop(held);
    assert_eq!(bulkhead.available(), bulkhead.capacity());
}

#[test]
fn a_bulkhead_on_a_users_clock_or_fakeclock_waits_exactly_its_max_wait_and_deadline() {
    on_every_plain_clock!(bulkhead_waits_exactly_its_max_wait_and_deadline);
}

// ---------------------------------------------------------------------------------------------
// Pipeline and tower layers on a user's clock and on FakeClock directly
// ---------------------------------------------------------------------------------------------

fn pipeline_waits_for_its_limiter_exactly<C: Virtual>(clock: C) {
    let limiter = RateLimiter::builder(1, secs(1))
        .burst(1)
        .jitter(Duration::ZERO)
        .runtime(clock.clone())
        .build()
        .unwrap();
    let pipeline = Pipeline::builder()
        .runtime(clock.clone())
        .deadline(secs(5))
        .rate_limit(limiter)
        .build()
        .unwrap();
    let start = clock.now();
    assert_eq!(
        run(&clock, pipeline.call(|| async { Ok::<_, &str>(1) })),
        Ok(1)
    );
    assert_eq!(elapsed_since(&clock, start), Duration::ZERO);
    assert_eq!(
        run(&clock, pipeline.call(|| async { Ok::<_, &str>(2) })),
        Ok(2)
    );
    assert_eq!(
        elapsed_since(&clock, start),
        secs(1),
        "the second call waited exactly one interval"
    );
}

#[test]
fn a_pipeline_on_a_users_clock_or_fakeclock_waits_for_its_limiter_exactly() {
    on_every_plain_clock!(pipeline_waits_for_its_limiter_exactly);
}

fn pipeline_refuses_at_once_a_wait_that_leaves_less_than_min_attempt_time<C: Virtual>(clock: C) {
    let limiter = RateLimiter::builder(1, ms(1600))
        .burst(1)
        .jitter(Duration::ZERO)
        .runtime(clock.clone())
        .build()
        .unwrap();
    let pipeline = Pipeline::builder()
        .runtime(clock.clone())
        .deadline(secs(2))
        .min_attempt_time(ms(500))
        .rate_limit(limiter)
        .build()
        .unwrap();
    assert_eq!(
        run(&clock, pipeline.call(|| async { Ok::<_, &str>(1) })),
        Ok(1)
    );
    let start = clock.now();
    let calls = AtomicUsize::new(0);
    let result = run(
        &clock,
        pipeline.call(|| {
            calls.fetch_add(1, SeqCst);
            async { Ok::<_, &str>(2) }
        }),
    );
    assert_eq!(result, Err(Error::Rejected(Rejected::DeadlineExceeded)));
    assert_eq!(
        elapsed_since(&clock, start),
        Duration::ZERO,
        "refused at once"
    );
    assert_eq!(calls.load(SeqCst), 0);
}

#[test]
fn a_pipeline_on_a_users_clock_or_fakeclock_refuses_at_once_a_wait_leaving_less_than_min_attempt_time()
 {
    on_every_plain_clock!(pipeline_refuses_at_once_a_wait_that_leaves_less_than_min_attempt_time);
}

fn pipeline_retries_timed_out_attempts_on_schedule<C: Virtual>(clock: C) {
    let breaker = CircuitBreaker::builder()
        .consecutive_failures(10)
        .runtime(clock.clone())
        .build()
        .unwrap();
    let bulkhead = Bulkhead::builder(2).runtime(clock.clone()).build().unwrap();
    let pipeline = Pipeline::builder()
        .runtime(clock.clone())
        .deadline(secs(60))
        .bulkhead(bulkhead)
        .retry(
            Backoff::constant(secs(1))
                .jitter(Jitter::None)
                .max_attempts(3)
                .build()
                .unwrap(),
        )
        .breaker(breaker.clone())
        .attempt_timeout(ms(300))
        .build()
        .unwrap();
    let start = clock.now();
    let starts = Mutex::new(Vec::new());
    let result = run(
        &clock,
        pipeline.call(|| {
            starts.lock().unwrap().push(clock.now() - start);
            let clock = clock.clone();
            async move {
                clock.sleep(secs(10)).await;
                Ok::<_, &str>(())
            }
        }),
    );
    assert_eq!(result, Err(Error::TimedOut));
    assert_eq!(
        *starts.lock().unwrap(),
        [Duration::ZERO, ms(1300), ms(2600)]
    );
    assert_eq!(elapsed_since(&clock, start), ms(2900));
    assert_eq!(
        breaker.counts().failures,
        3,
        "each timed-out attempt is a breaker failure"
    );
}

#[test]
fn a_pipeline_on_a_users_clock_or_fakeclock_retries_timed_out_attempts_on_schedule() {
    on_every_plain_clock!(pipeline_retries_timed_out_attempts_on_schedule);
}

fn tower_layers_wait_exactly<C: Virtual>(clock: C) {
    // AdmitMode::WaitReady over a limiter: poll_ready sleeps until the limiter admits.
    let limiter = RateLimiter::builder(2, secs(1))
        .burst(1)
        .jitter(Duration::ZERO)
        .runtime(clock.clone())
        .build()
        .unwrap();
    let mut service =
        tidewall::tower::AdmitLayer::new(limiter, tidewall::tower::AdmitMode::WaitReady).layer(
            tower::service_fn(|x: u32| async move { Ok::<_, Error<Infallible>>(x) }),
        );
    let start = clock.now();
    for (x, at) in [(1, Duration::ZERO), (2, ms(500)), (3, ms(1000))] {
        run(&clock, std::future::poll_fn(|cx| service.poll_ready(cx))).unwrap();
        assert_eq!(run(&clock, service.call(x)), Ok(x));
        assert_eq!(elapsed_since(&clock, start), at, "call {x}");
    }

    // TimeoutLayer on the clock.
    let slow = {
        let clock = clock.clone();
        tower::service_fn(move |()| {
            let clock = clock.clone();
            async move {
                clock.sleep(secs(5)).await;
                Ok::<_, Error<Infallible>>("late")
            }
        })
    };
    let mut service = tidewall::tower::TimeoutLayer::new(ms(300))
        .runtime(clock.clone())
        .layer(slow);
    let start = clock.now();
    run(&clock, std::future::poll_fn(|cx| service.poll_ready(cx))).unwrap();
    assert!(matches!(
        run(&clock, service.call(())),
        Err(Error::TimedOut)
    ));
    assert_eq!(elapsed_since(&clock, start), ms(300));

    // RetryLayer on the clock.
    let calls = Arc::new(Mutex::new(Vec::new()));
    let begin = clock.now();
    let flaky = {
        let (clock, calls) = (clock.clone(), calls.clone());
        tower::service_fn(move |x: u32| {
            let mut calls = calls.lock().unwrap();
            calls.push(clock.now() - begin);
            let n = calls.len();
            async move {
                if n < 3 {
                    Err("unavailable")
                } else {
                    Ok::<_, &str>(x)
                }
            }
        })
    };
    let backoff = Backoff::constant(ms(10))
        .jitter(Jitter::None)
        .max_attempts(4)
        .build()
        .unwrap();
    let mut service = tidewall::tower::RetryLayer::new(backoff)
        .runtime(clock.clone())
        .layer(flaky);
    run(&clock, std::future::poll_fn(|cx| service.poll_ready(cx))).unwrap();
    assert_eq!(run(&clock, service.call(7)), Ok(7));
    assert_eq!(*calls.lock().unwrap(), [Duration::ZERO, ms(10), ms(20)]);
}

#[test]
fn tower_layers_on_a_users_clock_or_fakeclock_wait_exactly() {
    on_every_plain_clock!(tower_layers_wait_exactly);
}

// ---------------------------------------------------------------------------------------------
// Stream operators on a user's clock and on FakeClock directly
// ---------------------------------------------------------------------------------------------

fn interval_ticks_on_schedule_and_bursts_missed_ticks<C: Virtual>(clock: C) {
    let start = clock.now();
    let ticks = interval_on(&clock, secs(1), MissedTicks::Burst).unwrap();
    let mut ticks = pin!(ticks);
    assert_eq!(run(&clock, ticks.next()), Some(start + secs(1)));
    assert_eq!(clock.now(), start + secs(1));
    assert_eq!(run(&clock, ticks.next()), Some(start + secs(2)));
    clock.advance_by(ms(3500)); // the consumer stalls to 5.5 s
    for k in 3..=5 {
        assert_eq!(
            run(&clock, ticks.next()),
            Some(start + secs(k)),
            "missed tick {k} at once"
        );
        assert_eq!(clock.now(), start + ms(5500));
    }
    assert_eq!(run(&clock, ticks.next()), Some(start + secs(6)));
    assert_eq!(clock.now(), start + secs(6));
}

#[test]
fn interval_on_a_users_clock_or_fakeclock_ticks_on_schedule_and_bursts_missed_ticks() {
    on_every_plain_clock!(interval_ticks_on_schedule_and_bursts_missed_ticks);
}

fn pacing_operators_follow_the_clock<C: Virtual>(clock: C) {
    // throttle_on: fixed spacing, no burst.
    let start = clock.now();
    let mut items = pin!(stream::iter(1..=3).throttle_on(&clock, secs(1)).unwrap());
    let mut at = Vec::new();
    while let Some(item) = run(&clock, items.next()) {
        at.push((item, clock.now() - start));
    }
    assert_eq!(at, [(1, Duration::ZERO), (2, secs(1)), (3, secs(2))]);

    // rate_limit: bursts up to the burst, then one per interval.
    let limiter = RateLimiter::builder(2, secs(1))
        .burst(2)
        .jitter(Duration::ZERO)
        .runtime(clock.clone())
        .build()
        .unwrap();
    let start = clock.now();
    let mut items = pin!(stream::iter(1..=5).rate_limit(limiter));
    let mut at = Vec::new();
    while let Some(item) = run(&clock, items.next()) {
        at.push((item, clock.now() - start));
    }
    assert_eq!(
        at,
        [
            (1, Duration::ZERO),
            (2, Duration::ZERO),
            (3, ms(500)),
            (4, ms(1000)),
            (5, ms(1500))
        ]
    );

    // batch_on: a batch leaves max_wait after its first item.
    let start = clock.now();
    let upstream = {
        let clock = clock.clone();
        stream::iter([0u64, 30, 170]).then(move |delay| {
            let clock = clock.clone();
            async move {
                clock.sleep(ms(delay)).await;
                delay
            }
        })
    };
    let mut batches = pin!(upstream.batch_on(&clock, 10, ms(100)).unwrap());
    assert_eq!(run(&clock, batches.next()), Some(vec![0, 30]));
    assert_eq!(elapsed_since(&clock, start), ms(100));
    assert_eq!(run(&clock, batches.next()), Some(vec![170]));
    assert_eq!(elapsed_since(&clock, start), ms(200));
    assert_eq!(run(&clock, batches.next()), None);

    // timeout_each_on: the upstream's gap is timed from the ask.
    let start = clock.now();
    let upstream = {
        let clock = clock.clone();
        stream::iter([40u64, 80]).then(move |delay| {
            let clock = clock.clone();
            async move {
                clock.sleep(ms(delay)).await;
                delay
            }
        })
    };
    let mut items = pin!(upstream.timeout_each_on(&clock, ms(50)).unwrap());
    assert_eq!(run(&clock, items.next()), Some(Ok(40)));
    assert_eq!(elapsed_since(&clock, start), ms(40));
    clock.advance_by(secs(1)); // a busy consumer is not the upstream's fault
    assert_eq!(run(&clock, items.next()), Some(Err(Elapsed)));
    assert_eq!(elapsed_since(&clock, start), ms(1090));
    assert_eq!(run(&clock, items.next()), Some(Ok(80)));
    assert_eq!(elapsed_since(&clock, start), ms(1120));
    assert_eq!(run(&clock, items.next()), None);
}

#[test]
fn throttle_rate_limit_batch_and_timeout_each_on_a_users_clock_or_fakeclock_follow_it_exactly() {
    on_every_plain_clock!(pacing_operators_follow_the_clock);
}
