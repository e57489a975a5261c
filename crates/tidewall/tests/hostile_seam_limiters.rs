//! Adversarial black-box tests of the rate limiters (`RateLimiter`, `KeyedRateLimiter`) on a
//! user's own clock, on `FakeClock` used directly and on a user's clock wrapping one: exact
//! refills to the nanosecond, `retry_after`, greedy callers, `until_ready` with and without
//! jitter, and waits against a deadline. Written from the public docs only; the clocks are in
//! `seam_support`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;
mod seam_support;
mod support;

use std::future::Future as _;
use std::task::Context;
use std::time::{Duration, Instant};

use common::ms;
use seam_support::{NS, UserClock, Virtual, elapsed_since, limited, run, secs};
use support::{DAY, HOUR, Rng as Seeded};
use tidewall::rate::{KeyedRateLimiter, RateLimiter};
use tidewall::rt::Clock as _;
use tidewall::{Deadline, Rejected};

// ---------------------------------------------------------------------------------------------
// Rate limiter on a user's clock and on FakeClock directly
// ---------------------------------------------------------------------------------------------

fn limiter_admits_its_burst_then_refills_at_exactly_the_interval<C: Virtual>(clock: C) {
    let interval = Duration::from_nanos(333_333_333);
    let limiter = RateLimiter::builder(3, secs(1))
        .burst(2)
        .runtime(clock.clone())
        .build()
        .unwrap();
    assert_eq!(limiter.gcra().interval_nanos(), 333_333_333);
    assert_eq!(limiter.check(), Ok(()));
    assert_eq!(limiter.check(), Ok(()));
    assert_eq!(limiter.check(), limited(interval));
    clock.advance_by(interval - NS);
    assert_eq!(
        limiter.check(),
        limited(NS),
        "one nanosecond before the refill"
    );
    clock.advance_by(NS);
    assert_eq!(limiter.check(), Ok(()), "exactly at the refill");
    assert_eq!(limiter.check(), limited(interval));
    // A long rest gives back exactly the burst, no more.
    clock.advance_by(HOUR);
    assert_eq!(limiter.check(), Ok(()));
    assert_eq!(limiter.check(), Ok(()));
    assert_eq!(limiter.check(), limited(interval));
    // Cells at once: all or nothing; more than the burst never passes.
    clock.advance_by(2 * interval);
    assert!(matches!(
        limiter.check_n(3),
        Err(Rejected::InsufficientCapacity { .. })
    ));
    assert_eq!(limiter.check_n(2), Ok(()));
    assert_eq!(limiter.check_n(1), limited(interval));
}

#[test]
fn a_limiter_on_a_users_clock_or_fakeclock_admits_its_burst_then_refills_at_exactly_the_interval() {
    on_every_plain_clock!(limiter_admits_its_burst_then_refills_at_exactly_the_interval);
}

fn every_denial_names_the_exact_nanosecond_of_admission<C: Virtual>(clock: C) {
    let mut rng = Seeded::new(0x5EED);
    for (count, period, burst) in [
        (3, secs(1), 2),
        (7, ms(10), 1),
        (1, HOUR, 4),
        (1000, secs(1), 50),
    ] {
        let limiter = RateLimiter::builder(count, period)
            .burst(burst)
            .runtime(clock.clone())
            .build()
            .unwrap();
        let interval = Duration::from_nanos(limiter.gcra().interval_nanos());
        for _ in 0..300 {
            // Arrive after a random gap of up to two intervals.
            let gap = Duration::from_nanos(rng.below(2 * limiter.gcra().interval_nanos()));
            clock.advance_by(gap);
            match limiter.check() {
                Ok(()) => {}
                Err(Rejected::RateLimited { retry_after }) => {
                    assert!(
                        retry_after > Duration::ZERO && retry_after <= interval,
                        "{retry_after:?}"
                    );
                    clock.advance_by(retry_after - NS);
                    assert_eq!(limiter.check(), limited(NS), "one nanosecond early");
                    clock.advance_by(NS);
                    assert_eq!(limiter.check(), Ok(()), "a retry_after waited is admitted");
                }
                Err(other) => panic!("unexpected {other:?}"),
            }
        }
    }
}

#[test]
fn a_limiter_on_a_users_clock_or_fakeclock_names_the_exact_nanosecond_each_denial_ends() {
    on_every_plain_clock!(every_denial_names_the_exact_nanosecond_of_admission);
}

fn a_greedy_caller_gets_exactly_burst_plus_elapsed_over_interval<C: Virtual>(clock: C) {
    for (count, period, burst, span) in [
        (3, secs(1), 2, secs(10)),
        (10, secs(1), 1, ms(5_432)),
        (1, HOUR, 5, 3 * DAY),
    ] {
        let limiter = RateLimiter::builder(count, period)
            .burst(burst)
            .runtime(clock.clone())
            .build()
            .unwrap();
        let interval = limiter.gcra().interval_nanos();
        let start = clock.now();
        let mut admitted = 0u64;
        loop {
            match limiter.check() {
                Ok(()) => admitted += 1,
                Err(Rejected::RateLimited { retry_after }) => {
                    if clock.now() + retry_after - start > span {
                        break;
                    }
                    clock.advance_by(retry_after);
                }
                Err(other) => panic!("unexpected {other:?}"),
            }
        }
        let expected = u64::from(burst) + u64::try_from(span.as_nanos()).unwrap() / interval;
        assert_eq!(
            admitted, expected,
            "count {count} per {period:?}, burst {burst}, span {span:?}"
        );
    }
}

#[test]
fn a_greedy_caller_on_a_users_clock_or_fakeclock_gets_exactly_burst_plus_span_over_interval() {
    on_every_plain_clock!(a_greedy_caller_gets_exactly_burst_plus_elapsed_over_interval);
}

fn until_ready_without_jitter_wakes_at_the_refill<C: Virtual>(clock: C) {
    let limiter = RateLimiter::builder(3, secs(1))
        .burst(1)
        .jitter(Duration::ZERO)
        .runtime(clock.clone())
        .build()
        .unwrap();
    assert_eq!(limiter.check(), Ok(()));
    for _ in 0..5 {
        let start = clock.now();
        assert_eq!(run(&clock, limiter.until_ready()), Ok(()));
        assert_eq!(
            elapsed_since(&clock, start),
            Duration::from_nanos(333_333_333)
        );
    }
    // A wait that is already over does not sleep.
    clock.advance_by(secs(1));
    let start = clock.now();
    assert_eq!(run(&clock, limiter.until_ready()), Ok(()));
    assert_eq!(elapsed_since(&clock, start), Duration::ZERO);
}

#[test]
fn until_ready_on_a_users_clock_or_fakeclock_without_jitter_wakes_at_exactly_the_refill() {
    on_every_plain_clock!(until_ready_without_jitter_wakes_at_the_refill);
}

fn until_ready_with_default_jitter_waits_within_one_interval_of_the_refill<C: Virtual>(clock: C) {
    let mut waits = Vec::new();
    for _ in 0..64 {
        let limiter = RateLimiter::builder(1, secs(1))
            .burst(1)
            .runtime(clock.clone())
            .build()
            .unwrap();
        assert_eq!(limiter.check(), Ok(()));
        let start = clock.now();
        assert_eq!(run(&clock, limiter.until_ready()), Ok(()));
        let waited = elapsed_since(&clock, start);
        assert!(waited >= secs(1) && waited <= secs(2), "waited {waited:?}");
        waits.push(waited);
        clock.advance_by(secs(10));
    }
    waits.sort();
    waits.dedup();
    assert!(
        waits.len() > 1,
        "64 fresh limiters all waited the same: {waits:?}"
    );
}

fn one_limiters_successive_waits_are_jittered<C: Virtual>(clock: C) {
    let limiter = RateLimiter::builder(1, secs(1))
        .burst(1)
        .runtime(clock.clone())
        .build()
        .unwrap();
    let mut extra = Vec::new();
    for _ in 0..64 {
        assert_eq!(limiter.check(), Ok(()));
        let start = clock.now();
        assert_eq!(run(&clock, limiter.until_ready()), Ok(()));
        extra.push(elapsed_since(&clock, start) - secs(1));
        clock.advance_by(secs(10));
    }
    extra.sort();
    extra.dedup();
    assert!(
        extra.len() > 32,
        "successive waits on one limiter draw their jitter anew: {extra:?}"
    );
}

#[test]
fn one_limiters_successive_waits_on_a_users_clock_or_fakeclock_draw_their_jitter_anew() {
    on_every_plain_clock!(one_limiters_successive_waits_are_jittered);
}

fn waiters_released_by_one_refill_do_not_wake_together(clock: UserClock) {
    let limiter = RateLimiter::builder(1, secs(1))
        .burst(1)
        .runtime(clock.clone())
        .build()
        .unwrap();
    assert_eq!(limiter.check(), Ok(()));
    let asked_before = clock.0.asked.lock().unwrap().len();
    let mut waiters: Vec<_> = (0..8).map(|_| Box::pin(limiter.until_ready())).collect();
    let waker = futures_util::task::noop_waker();
    let mut cx = Context::from_waker(&waker);
    for waiter in &mut waiters {
        assert!(waiter.as_mut().poll(&mut cx).is_pending());
    }
    let mut wakes: Vec<Instant> = clock.0.asked.lock().unwrap()[asked_before..].to_vec();
    assert_eq!(wakes.len(), 8);
    wakes.sort();
    wakes.dedup();
    assert!(
        wakes.len() > 4,
        "eight waiters of one refill wake at {} distinct instants",
        wakes.len()
    );
}

#[test]
fn waiters_released_by_one_refill_on_a_users_clock_do_not_wake_together() {
    waiters_released_by_one_refill_do_not_wake_together(UserClock::new());
}

#[test]
fn fresh_limiters_jitter_differently_from_one_another() {
    // Two limiters built apart, each waited on at the same point of its own life.
    let mut extras = Vec::new();
    for clock in [
        UserClock::new(),
        UserClock::starting_at(Instant::now() + DAY),
    ] {
        for lead in [Duration::ZERO, secs(3), ms(1234)] {
            clock.advance_by(lead);
            let limiter = RateLimiter::builder(1, secs(1))
                .burst(1)
                .runtime(clock.clone())
                .build()
                .unwrap();
            assert_eq!(limiter.check(), Ok(()));
            let start = clock.now();
            assert_eq!(run(&clock, limiter.until_ready()), Ok(()));
            extras.push(elapsed_since(&clock, start) - secs(1));
        }
    }
    let mut distinct = extras.clone();
    distinct.sort();
    distinct.dedup();
    assert!(
        distinct.len() > 1,
        "six fresh limiters all drew the same jitter: {extras:?}"
    );
}

#[test]
fn until_ready_on_a_users_clock_or_fakeclock_with_default_jitter_waits_at_most_one_interval_more() {
    on_every_plain_clock!(until_ready_with_default_jitter_waits_within_one_interval_of_the_refill);
}

fn until_ready_before_gives_up_at_once_when_the_wait_passes_the_deadline<C: Virtual>(clock: C) {
    let limiter = RateLimiter::builder(1, secs(1))
        .burst(1)
        .runtime(clock.clone())
        .build()
        .unwrap();
    assert_eq!(limiter.check(), Ok(()));
    let start = clock.now();
    let deadline = Deadline::at(start + secs(1) - NS);
    assert_eq!(
        run(&clock, limiter.until_ready_before(deadline)),
        Err(Rejected::DeadlineExceeded)
    );
    assert_eq!(
        elapsed_since(&clock, start),
        Duration::ZERO,
        "gives up at once"
    );
    assert!(matches!(
        run(&clock, limiter.until_n_ready_before(2, Deadline::none())),
        Err(Rejected::InsufficientCapacity { .. })
    ));
}

#[test]
fn until_ready_before_on_a_users_clock_or_fakeclock_gives_up_at_once_when_the_wait_passes_the_deadline()
 {
    on_every_plain_clock!(until_ready_before_gives_up_at_once_when_the_wait_passes_the_deadline);
}

fn until_ready_before_a_deadline_the_exact_wait_fits_admits<C: Virtual>(clock: C) {
    // The exact wait is 1 s; the deadline is 1.5 s away; the jitter is up to 1 s (default).
    let mut refused = 0;
    let mut late = Vec::new();
    for _ in 0..64 {
        let limiter = RateLimiter::builder(1, secs(1))
            .burst(1)
            .runtime(clock.clone())
            .build()
            .unwrap();
        assert_eq!(limiter.check(), Ok(()));
        let start = clock.now();
        match run(
            &clock,
            limiter.until_ready_before(Deadline::at(start + ms(1500))),
        ) {
            Ok(()) => {
                let waited = elapsed_since(&clock, start);
                if waited > ms(1500) {
                    late.push(waited);
                }
            }
            Err(Rejected::DeadlineExceeded) => refused += 1,
            Err(other) => panic!("unexpected {other:?}"),
        }
        clock.advance_by(secs(10));
    }
    assert!(late.is_empty(), "admitted past the deadline: {late:?}");
    assert_eq!(
        refused, 0,
        "refused {refused} of 64 waits whose exact wait (1 s) fits the deadline (1.5 s)"
    );
}

#[test]
fn until_ready_before_on_a_users_clock_or_fakeclock_admits_when_the_exact_wait_fits_the_deadline() {
    on_every_plain_clock!(until_ready_before_a_deadline_the_exact_wait_fits_admits);
}

fn keyed_limiter_follows_the_clock_exactly<C: Virtual>(clock: C) {
    let limiter = KeyedRateLimiter::builder(1, HOUR)
        .burst(2)
        .jitter(Duration::ZERO)
        .max_keys(8)
        .runtime(clock.clone())
        .build::<u32>()
        .unwrap();
    assert_eq!(limiter.check_key(&1), Ok(()));
    assert_eq!(limiter.check_key(&1), Ok(()));
    assert_eq!(limiter.check_key(&1), limited(HOUR));
    assert_eq!(limiter.check_key(&2), Ok(()), "every key has its own limit");
    clock.advance_by(HOUR - NS);
    assert_eq!(limiter.check_key(&1), limited(NS));
    clock.advance_by(NS);
    assert_eq!(limiter.check_key(&1), Ok(()));
    let start = clock.now();
    assert_eq!(
        run(&clock, limiter.until_key_ready_before(&1, Deadline::none())),
        Ok(())
    );
    assert_eq!(elapsed_since(&clock, start), HOUR);
    assert_eq!(
        run(
            &clock,
            limiter.until_key_ready_before(&1, Deadline::at(clock.now() + HOUR - NS))
        ),
        Err(Rejected::DeadlineExceeded)
    );
    // Days later every key has rested: exactly the burst again, and rested keys are evicted.
    clock.advance_by(3 * DAY);
    assert_eq!(limiter.retain_recent(), 2);
    assert!(limiter.is_empty());
    assert_eq!(limiter.check_key(&1), Ok(()));
    assert_eq!(limiter.check_key(&1), Ok(()));
    assert_eq!(limiter.check_key(&1), limited(HOUR));
}

#[test]
fn a_keyed_limiter_on_a_users_clock_or_fakeclock_follows_it_exactly() {
    on_every_plain_clock!(keyed_limiter_follows_the_clock_exactly);
}
