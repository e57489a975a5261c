//! Adversarial black-box tests of a user's own `Clock` (and a bare `FakeClock`) at the edges:
//! never taken for real time, `Duration::MAX` sleeps and deadlines, `instant_after` and every
//! clocked policy on a clock near the end of representable time, five centuries of age, and
//! (observations) a clock that breaks its contract by going backwards. Written from the
//! public docs only; the clocks themselves are in `seam_support`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;
mod seam_support;
mod support;

use std::pin::pin;
use std::time::{Duration, Instant};

use common::ms;
use futures_util::StreamExt as _;
use seam_support::{NS, UserClock, Virtual as _, Wrapped, YEAR, elapsed_since, limited, run, secs};
use support::{DAY, HOUR};
use tidewall::breaker::CircuitBreaker;
use tidewall::bulkhead::Bulkhead;
use tidewall::rate::RateLimiter;
use tidewall::retry::{RetryError, RetryExt as _};
use tidewall::rt::{Clock, instant_after};
use tidewall::stream::{MissedTicks, interval_on};
use tidewall::testing::FakeClock;
use tidewall::time::FutureExt as _;
use tidewall::{Backoff, Deadline, Jitter, Rejected};

// ---------------------------------------------------------------------------------------------
// A user's clock is a plain clock
// ---------------------------------------------------------------------------------------------

#[test]
fn a_users_clock_and_a_bare_fakeclock_are_never_taken_for_real_time() {
    assert!(!UserClock::new().is_real_time());
    assert!(!Clock::is_real_time(&FakeClock::new()));
    assert!(!Wrapped(FakeClock::new()).is_real_time());
}

#[test]
fn a_users_sleep_of_duration_max_asks_for_about_thirty_years_and_a_century_exactly() {
    let clock = UserClock::new();
    let now = clock.now();
    drop(clock.sleep(Duration::MAX));
    let asked = clock.last_asked().unwrap();
    assert!(
        asked > now + 29 * YEAR,
        "Duration::MAX sleeps about 30 years, asked {:?}",
        asked - now
    );
    assert!(
        asked < now + 31 * YEAR,
        "Duration::MAX sleeps about 30 years, asked {:?}",
        asked - now
    );
    drop(clock.sleep(100 * YEAR));
    assert_eq!(
        clock.last_asked().unwrap(),
        now + 100 * YEAR,
        "a wait that fits is not cut"
    );
    drop(clock.sleep(Duration::ZERO));
    assert_eq!(clock.last_asked().unwrap(), now);
}

// ---------------------------------------------------------------------------------------------
// Extreme values
// ---------------------------------------------------------------------------------------------

/// The latest `Instant` this platform can represent (to the second).
fn latest_instant() -> Instant {
    let now = Instant::now();
    let (mut lo, mut hi) = (0u64, u64::MAX);
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if now.checked_add(Duration::from_secs(mid)).is_some() {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    now + Duration::from_secs(lo)
}

#[test]
fn instant_after_does_not_panic_when_even_thirty_years_do_not_fit_the_clock() {
    let near_end = latest_instant() - YEAR;
    let result = std::panic::catch_unwind(|| instant_after(near_end, Duration::MAX));
    let at = result.expect("instant_after promises 'instead of panicking'");
    assert!(
        at > near_end,
        "'forever' must not be now: got now + {:?}",
        at - near_end
    );
    let result = std::panic::catch_unwind(|| instant_after(near_end, 2 * YEAR));
    let at = result.expect("instant_after promises 'instead of panicking'");
    assert!(
        at > near_end,
        "two years past the clock's end must not be now: got now + {:?}",
        at - near_end
    );
}

#[test]
fn instant_after_is_exact_when_it_fits_and_thirty_years_otherwise() {
    let near_end = latest_instant() - 100 * YEAR;
    assert_eq!(instant_after(near_end, 50 * YEAR), near_end + 50 * YEAR);
    let far = instant_after(near_end, Duration::MAX);
    assert!(far > near_end + 29 * YEAR && far < near_end + 31 * YEAR);
}

#[test]
fn deadline_after_duration_max_saturates_on_a_clock_at_the_end_of_time() {
    let clock = UserClock::starting_at(latest_instant() - YEAR);
    let deadline = std::panic::catch_unwind(|| Deadline::after(&clock, Duration::MAX))
        .expect("Deadline::after saturates instead of overflowing");
    let at = deadline.instant().unwrap();
    assert!(
        at > clock.now(),
        "saturated to now + {:?}: the deadline is already expired",
        at - clock.now()
    );
    assert!(!deadline.is_expired(clock.now()));
}

#[test]
fn sleeping_duration_max_on_a_clock_at_the_end_of_time_does_not_panic() {
    let clock = UserClock::starting_at(latest_instant() - YEAR);
    let sleep = std::panic::catch_unwind(|| clock.sleep(Duration::MAX))
        .expect("a duration too large to add sleeps 'forever' instead of overflowing");
    drop(sleep);
    let asked = clock.last_asked().unwrap();
    assert!(
        asked > clock.now(),
        "'forever' became now + {:?}: the sleep ends at once",
        asked - clock.now()
    );
}

#[test]
fn a_limiter_on_a_clock_at_the_end_of_time_still_decides_exactly() {
    let clock = UserClock::starting_at(latest_instant() - YEAR);
    let limiter = RateLimiter::builder(1, HOUR)
        .burst(2)
        .runtime(clock.clone())
        .build()
        .unwrap();
    assert_eq!(limiter.check(), Ok(()));
    assert_eq!(limiter.check(), Ok(()));
    assert_eq!(limiter.check(), limited(HOUR));
    let start = clock.now();
    assert_eq!(run(&clock, limiter.until_ready()), Ok(()));
    let waited = elapsed_since(&clock, start);
    assert!(waited >= HOUR && waited <= 2 * HOUR, "{waited:?}");
    assert_eq!(
        run(
            &clock,
            limiter.until_ready_before(Deadline::after(&clock, Duration::MAX))
        ),
        Ok(()),
        "a far deadline on a clock near its end"
    );
}

#[test]
fn a_retry_with_an_unbounded_deadline_on_a_clock_at_the_end_of_time_runs_its_schedule() {
    let clock = UserClock::starting_at(latest_instant() - YEAR);
    let backoff = Backoff::constant(secs(1))
        .jitter(Jitter::None)
        .max_attempts(3)
        .build()
        .unwrap();
    let start = clock.now();
    let result = run(
        &clock,
        (|| async { Err::<(), _>("down") })
            .retry_on(&clock, backoff)
            .deadline(Deadline::after(&clock, Duration::MAX))
            .attempt_timeout(Duration::MAX),
    );
    assert_eq!(result, Err(RetryError::Inner("down")));
    assert_eq!(elapsed_since(&clock, start), secs(2));
}

#[test]
fn a_breaker_and_a_bulkhead_on_a_clock_at_the_end_of_time_keep_their_durations() {
    let clock = UserClock::starting_at(latest_instant() - YEAR);
    let breaker = CircuitBreaker::builder()
        .consecutive_failures(1)
        .break_duration(secs(10))
        .runtime(clock.clone())
        .build()
        .unwrap();
    breaker.try_acquire().unwrap().failure();
    clock.advance_by(secs(10) - NS);
    assert!(breaker.try_acquire().is_err());
    clock.advance_by(NS);
    assert!(breaker.try_acquire().is_ok());

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
    assert_eq!(elapsed_since(&clock, start), ms(100));
    let waiting = run(&clock, async {
        let mut acquire = pin!(bulkhead.acquire_before(Deadline::after(&clock, Duration::MAX)));
        // One poll queues it; then the slot frees.
        let pending = futures_util::poll!(acquire.as_mut()).is_pending();
        drop(held);
        (pending, acquire.await.is_ok())
    });
    assert_eq!(waiting, (true, true));
}

#[test]
fn an_interval_and_a_timeout_on_a_clock_at_the_end_of_time_keep_their_schedule() {
    let clock = UserClock::starting_at(latest_instant() - YEAR);
    let start = clock.now();
    let mut ticks = pin!(interval_on(&clock, DAY, MissedTicks::Skip).unwrap());
    assert_eq!(run(&clock, ticks.next()), Some(start + DAY));
    assert_eq!(run(&clock, ticks.next()), Some(start + 2 * DAY));
    assert_eq!(
        run(
            &clock,
            clock.sleep(secs(5)).timeout_on(&clock, Duration::MAX)
        ),
        Ok(())
    );
}

#[test]
fn waits_longer_than_the_builders_accept_are_typed_errors_not_panics() {
    let clock = UserClock::new();
    assert!(
        RateLimiter::builder(1, secs(1))
            .jitter(Duration::MAX)
            .runtime(clock.clone())
            .build()
            .is_err()
    );
    assert!(
        Bulkhead::builder(1)
            .max_wait(Duration::MAX)
            .runtime(clock.clone())
            .build()
            .is_err()
    );
    assert!(
        RateLimiter::builder(1, Duration::MAX)
            .runtime(clock)
            .build()
            .is_err()
    );
}

// Observations: a clock that breaks its contract, or ages past what u64 nanoseconds hold.

/// rate module: "decisions are exact for 584 years of its life" (u64 nanoseconds).
#[test]
fn a_limiter_five_centuries_old_admits_its_burst_and_no_more() {
    let clock = UserClock::new();
    let limiter = RateLimiter::builder(1, HOUR)
        .burst(2)
        .runtime(clock.clone())
        .build()
        .unwrap();
    assert_eq!(limiter.check(), Ok(()));
    assert_eq!(limiter.check(), Ok(()));
    clock.age_by_secs(500 * YEAR.as_secs());
    let admitted = (0..1000).filter(|_| limiter.check().is_ok()).count();
    assert_eq!(
        admitted, 2,
        "five centuries after its build, a burst of 2 admitted {admitted} of 1000 calls at one instant"
    );
}

#[test]
fn observation_a_limiter_whose_clock_goes_backwards_neither_panics_nor_admits_past_its_burst() {
    let clock = UserClock::new();
    clock.set_offset(secs(100));
    let limiter = RateLimiter::builder(1, secs(1))
        .burst(2)
        .runtime(clock.clone())
        .build()
        .unwrap();
    assert_eq!(limiter.check(), Ok(()));
    assert_eq!(limiter.check(), Ok(()));
    clock.set_offset(secs(50)); // before the limiter was built
    let decided = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| limiter.check()))
        .expect("a clock that steps back does not make the limiter panic");
    assert!(
        decided.is_err(),
        "no time has passed forwards: nothing refilled"
    );
    clock.set_offset(secs(100));
    assert!(limiter.check().is_err());
    clock.set_offset(secs(101));
    assert_eq!(limiter.check(), Ok(()));
}

#[test]
fn observation_a_breaker_whose_clock_goes_backwards_neither_panics_nor_closes_early() {
    let clock = UserClock::new();
    clock.set_offset(secs(100));
    let breaker = CircuitBreaker::builder()
        .consecutive_failures(1)
        .break_duration(secs(10))
        .runtime(clock.clone())
        .build()
        .unwrap();
    breaker.try_acquire().unwrap().failure();
    clock.set_offset(secs(50));
    let decided = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        breaker.try_acquire().map(drop)
    }))
    .expect("a clock that steps back does not make the breaker panic");
    assert!(decided.is_err(), "the break is not over");
    clock.set_offset(secs(110));
    assert!(breaker.try_acquire().is_ok());
}

#[test]
fn observation_retry_deadlines_and_intervals_on_a_clock_that_goes_backwards_do_not_panic() {
    let clock = UserClock::new();
    clock.set_offset(secs(100));
    let deadline = Deadline::after(&clock, secs(1));
    clock.set_offset(secs(10));
    assert_eq!(deadline.remaining(clock.now()), Some(secs(91)));
    let mut ticks = pin!(interval_on(&clock, secs(1), MissedTicks::Skip).unwrap());
    clock.set_offset(secs(0));
    let first =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&clock, ticks.next())))
            .expect("an interval whose clock steps back does not panic");
    assert!(first.is_some());
    let backoff = Backoff::constant(secs(1))
        .jitter(Jitter::None)
        .max_attempts(3)
        .build()
        .unwrap();
    let stepping = clock.clone();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        run(
            &clock,
            (move || {
                // Every attempt steps the clock back by a second.
                stepping.set_offset(stepping.offset().saturating_sub(secs(1)));
                async { Err::<(), _>("down") }
            })
            .retry_on(&clock, backoff)
            .deadline(Deadline::after(&clock, secs(30))),
        )
    }))
    .expect("a retry whose clock steps back does not panic");
    assert!(result.is_err());
}
