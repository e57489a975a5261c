//! Adversarial black-box tests of the split runtime seam (`Clock`, `Spawn`, `Runtime`,
//! `Signals`) and of the rate limiter's default clock, written from the public docs only.
//!
//! Three virtual clocks drive the waiting policies here without any runtime at all:
//! * `UserClock`: a user's own clock (an `AtomicU64` of nanoseconds past a base instant, with
//!   timers that complete once the clock passes their deadline);
//! * `FakeClock` used directly as a `Clock` (no `Clocked` wrapper);
//! * `Wrapped`: a user's clock that merely delegates to a `FakeClock`.
//!
//! `run(&clock, future)` polls the future and, whenever it is pending, moves the clock to the
//! earliest registered timer: the same rule as paused tokio time, on one thread.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::convert::Infallible;
use std::future::{Future, IntoFuture};
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use futures_util::{StreamExt as _, stream};
use tidewall::breaker::{CircuitBreaker, State};
use tidewall::bulkhead::Bulkhead;
use tidewall::pipeline::Pipeline;
use tidewall::rate::{KeyedRateLimiter, RateLimiter};
use tidewall::retry::{RetryError, RetryExt as _};
use tidewall::rt::{Clock, Runtime, Spawn, Tokio, instant_after};
use tidewall::stream::{MissedTicks, StreamOps as _, interval_on};
use tidewall::testing::{Clocked, FakeClock, FakeSleep};
use tidewall::time::{DeadlineExceeded, Elapsed, FutureExt as _};
use tidewall::{Backoff, Deadline, Error, Jitter, Rejected};
use tower_layer::Layer as _;
use tower_service::Service as _;

// ---------------------------------------------------------------------------------------------
// Vocabulary
// ---------------------------------------------------------------------------------------------

const NS: Duration = Duration::from_nanos(1);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);
const YEAR: Duration = Duration::from_secs(365 * 86_400);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn limited(retry_after: Duration) -> Result<(), Rejected> {
    Err(Rejected::RateLimited { retry_after })
}

/// A tiny seeded generator (SplitMix64) for arrival patterns.
struct Seeded(u64);

impl Seeded {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

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

// ---------------------------------------------------------------------------------------------
// A user's own clock
// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
struct UserState {
    base: Instant,
    /// Whole seconds past `base`, for ages beyond what `offset` holds.
    epoch: AtomicU64,
    /// Nanoseconds past `base + epoch`: the clock's reading.
    offset: AtomicU64,
    next_id: AtomicU64,
    /// Pending timers: (id, deadline, waker).
    timers: Mutex<Vec<(u64, Instant, Waker)>>,
    /// Every deadline ever passed to `sleep_until`.
    asked: Mutex<Vec<Instant>>,
}

/// A user's clock: virtual time in an atomic, timers that complete once it passes them.
/// It does not override `is_real_time`.
#[derive(Debug, Clone)]
struct UserClock(Arc<UserState>);

impl UserClock {
    fn new() -> Self {
        Self::starting_at(Instant::now())
    }

    fn starting_at(base: Instant) -> Self {
        Self(Arc::new(UserState {
            base,
            epoch: AtomicU64::new(0),
            offset: AtomicU64::new(0),
            next_id: AtomicU64::new(0),
            timers: Mutex::new(Vec::new()),
            asked: Mutex::new(Vec::new()),
        }))
    }

    fn wake_due(&self) {
        let now = self.now();
        let due: Vec<Waker> = self
            .0
            .timers
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, at, _)| *at <= now)
            .map(|(_, _, w)| w.clone())
            .collect();
        for waker in due {
            waker.wake();
        }
    }

    /// Moves the clock to `offset` nanoseconds past its base: forwards or (breaking the
    /// contract on purpose) backwards.
    fn set_offset(&self, offset: Duration) {
        self.0
            .offset
            .store(u64::try_from(offset.as_nanos()).unwrap(), SeqCst);
        self.wake_due();
    }

    fn offset(&self) -> Duration {
        Duration::from_nanos(self.0.offset.load(SeqCst))
    }

    /// Ages the clock by whole seconds (beyond what `advance_by` holds).
    fn age_by_secs(&self, secs: u64) {
        self.0.epoch.fetch_add(secs, SeqCst);
        self.wake_due();
    }

    fn last_asked(&self) -> Option<Instant> {
        self.0.asked.lock().unwrap().last().copied()
    }
}

impl Clock for UserClock {
    type Sleep = UserSleep;

    fn now(&self) -> Instant {
        self.0.base
            + Duration::from_secs(self.0.epoch.load(SeqCst))
            + Duration::from_nanos(self.0.offset.load(SeqCst))
    }

    fn sleep_until(&self, deadline: Instant) -> UserSleep {
        self.0.asked.lock().unwrap().push(deadline);
        UserSleep {
            clock: self.clone(),
            deadline,
            id: self.0.next_id.fetch_add(1, SeqCst),
        }
    }
}

#[derive(Debug)]
struct UserSleep {
    clock: UserClock,
    deadline: Instant,
    id: u64,
}

impl Future for UserSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut timers = self.clock.0.timers.lock().unwrap();
        timers.retain(|(id, _, _)| *id != self.id);
        if self.clock.now() >= self.deadline {
            return Poll::Ready(());
        }
        timers.push((self.id, self.deadline, cx.waker().clone()));
        Poll::Pending
    }
}

impl Drop for UserSleep {
    fn drop(&mut self) {
        if let Ok(mut timers) = self.clock.0.timers.lock() {
            timers.retain(|(id, _, _)| *id != self.id);
        }
    }
}

/// A user's clock that only delegates to a `FakeClock`.
#[derive(Debug, Clone)]
struct Wrapped(FakeClock);

impl Clock for Wrapped {
    type Sleep = FakeSleep;

    fn now(&self) -> Instant {
        self.0.now()
    }

    fn sleep_until(&self, deadline: Instant) -> FakeSleep {
        self.0.sleep_until(deadline)
    }
}

/// A clock the test can move by hand and step to its next timer.
trait Virtual: Clock {
    fn advance_by(&self, by: Duration);
    /// Moves to the earliest pending timer (firing it); `false` when none is pending.
    fn to_next_timer(&self) -> bool;
}

impl Virtual for UserClock {
    fn advance_by(&self, by: Duration) {
        self.set_offset(self.offset() + by);
    }

    fn to_next_timer(&self) -> bool {
        let next = self
            .0
            .timers
            .lock()
            .unwrap()
            .iter()
            .map(|(_, at, _)| *at)
            .min();
        match next {
            None => false,
            Some(at) => {
                if at > self.now() {
                    self.set_offset(
                        at - self.0.base - Duration::from_secs(self.0.epoch.load(SeqCst)),
                    );
                } else {
                    self.wake_due();
                }
                true
            }
        }
    }
}

impl Virtual for FakeClock {
    fn advance_by(&self, by: Duration) {
        self.advance(by);
    }

    fn to_next_timer(&self) -> bool {
        self.advance_to_next_timer()
    }
}

impl Virtual for Wrapped {
    fn advance_by(&self, by: Duration) {
        self.0.advance(by);
    }

    fn to_next_timer(&self) -> bool {
        self.0.advance_to_next_timer()
    }
}

/// Runs `future` on this thread, moving `clock` to its next timer whenever the future is
/// pending (virtual time: the future observes exact instants).
fn run<C: Virtual, F: IntoFuture>(clock: &C, future: F) -> F::Output {
    let mut future = pin!(future.into_future());
    let waker = futures_util::task::noop_waker();
    let mut cx = Context::from_waker(&waker);
    for _ in 0..1_000_000 {
        if let Poll::Ready(value) = future.as_mut().poll(&mut cx) {
            return value;
        }
        assert!(
            clock.to_next_timer(),
            "the future is pending and no timer is registered: stuck"
        );
    }
    panic!("no result after a million polls");
}

/// Runs a scenario on a user's clock, on `FakeClock` used directly, and on a user's clock that
/// wraps a `FakeClock`.
macro_rules! on_every_plain_clock {
    ($scenario:ident) => {{
        $scenario(UserClock::new());
        $scenario(FakeClock::new());
        $scenario(Wrapped(FakeClock::new()));
    }};
}

fn elapsed_since<C: Clock>(clock: &C, start: Instant) -> Duration {
    clock.now() - start
}

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
    let mut rng = Seeded(0x5EED);
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
    // RateLimitLayer::wait: poll_ready sleeps until the limiter admits.
    let limiter = RateLimiter::builder(2, secs(1))
        .burst(1)
        .jitter(Duration::ZERO)
        .runtime(clock.clone())
        .build()
        .unwrap();
    let mut service =
        tidewall::tower::AdmitLayer::new(limiter, tidewall::tower::AdmitMode::WaitReady).layer(
            tower::service_fn(|x: u32| async move { Ok::<_, Infallible>(x) }),
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
                Ok::<_, Infallible>("late")
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

// ---------------------------------------------------------------------------------------------
// Extreme values
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// Paused tokio time: the default runtime
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_default_limiter_built_under_paused_tokio_time_follows_it_to_the_nanosecond() {
    assert!(!Tokio.is_real_time());
    let limiter = RateLimiter::builder(10, secs(1)).burst(2).build().unwrap();
    assert_eq!(limiter.check(), Ok(()));
    assert_eq!(limiter.check(), Ok(()));
    assert_eq!(limiter.check(), limited(ms(100)));
    tokio::time::advance(ms(100) - NS).await;
    assert_eq!(limiter.check(), limited(NS));
    tokio::time::advance(NS).await;
    assert_eq!(limiter.check(), Ok(()));
    assert_eq!(limiter.check(), limited(ms(100)));
    // Exactly the burst after any rest.
    tokio::time::advance(HOUR).await;
    assert_eq!(limiter.check(), Ok(()));
    assert_eq!(limiter.check(), Ok(()));
    assert_eq!(limiter.check(), limited(ms(100)));
}

#[tokio::test(start_paused = true)]
async fn a_default_limiter_under_paused_tokio_time_stays_exact_after_days_and_months_of_advance() {
    let limiter = RateLimiter::builder(1, HOUR).burst(3).build().unwrap();
    for advance in [3 * DAY, 100 * DAY, 10 * YEAR] {
        tokio::time::advance(advance).await;
        for _ in 0..3 {
            assert_eq!(limiter.check(), Ok(()), "after {advance:?}");
        }
        assert_eq!(limiter.check(), limited(HOUR), "after {advance:?}");
        tokio::time::advance(HOUR - NS).await;
        assert_eq!(limiter.check(), limited(NS));
        tokio::time::advance(NS).await;
        assert_eq!(limiter.check(), Ok(()));
    }
}

#[tokio::test(start_paused = true)]
async fn until_ready_on_a_default_limiter_under_paused_tokio_time_wakes_at_the_refill() {
    let limiter = RateLimiter::builder(10, secs(1))
        .burst(1)
        .jitter(Duration::ZERO)
        .build()
        .unwrap();
    assert_eq!(limiter.check(), Ok(()));
    for _ in 0..5 {
        let start = tokio::time::Instant::now();
        assert_eq!(limiter.until_ready().await, Ok(()));
        assert_eq!(start.elapsed(), ms(100));
    }
    let start = tokio::time::Instant::now();
    assert_eq!(
        limiter
            .until_ready_before(Deadline::after(&Tokio, ms(99)))
            .await,
        Err(Rejected::DeadlineExceeded)
    );
    assert_eq!(start.elapsed(), Duration::ZERO, "gives up at once");
}

#[tokio::test(start_paused = true)]
async fn a_default_keyed_limiter_under_paused_tokio_time_follows_it_to_the_nanosecond() {
    let limiter = KeyedRateLimiter::builder(1, HOUR)
        .burst(2)
        .max_keys(16)
        .build::<&str>()
        .unwrap();
    assert_eq!(limiter.check_key(&"a"), Ok(()));
    assert_eq!(limiter.check_key(&"a"), Ok(()));
    assert_eq!(limiter.check_key(&"a"), limited(HOUR));
    tokio::time::advance(HOUR - NS).await;
    assert_eq!(limiter.check_key(&"a"), limited(NS));
    tokio::time::advance(NS).await;
    assert_eq!(limiter.check_key(&"a"), Ok(()));
    tokio::time::advance(30 * DAY).await;
    assert_eq!(limiter.retain_recent(), 1);
    assert_eq!(limiter.check_key(&"a"), Ok(()));
    assert_eq!(limiter.check_key(&"a"), Ok(()));
    assert_eq!(limiter.check_key(&"a"), limited(HOUR));
}

#[tokio::test(start_paused = true)]
async fn a_default_pipeline_and_rate_limit_layer_under_paused_tokio_time_wait_exactly_one_interval()
{
    let limiter = RateLimiter::builder(10, secs(1))
        .burst(1)
        .jitter(Duration::ZERO)
        .build()
        .unwrap();
    let pipeline = Pipeline::builder()
        .deadline(secs(5))
        .rate_limit(limiter)
        .build()
        .unwrap();
    let start = tokio::time::Instant::now();
    assert_eq!(pipeline.call(|| async { Ok::<_, &str>(1) }).await, Ok(1));
    assert_eq!(pipeline.call(|| async { Ok::<_, &str>(2) }).await, Ok(2));
    assert_eq!(start.elapsed(), ms(100));

    let limiter = RateLimiter::builder(10, secs(1))
        .burst(1)
        .jitter(Duration::ZERO)
        .build()
        .unwrap();
    let mut service =
        tidewall::tower::AdmitLayer::new(limiter, tidewall::tower::AdmitMode::WaitReady).layer(
            tower::service_fn(|x: u32| async move { Ok::<_, Infallible>(x) }),
        );
    let start = tokio::time::Instant::now();
    for x in 0..3 {
        std::future::poll_fn(|cx| service.poll_ready(cx))
            .await
            .unwrap();
        assert_eq!(service.call(x).await, Ok(x));
    }
    assert_eq!(start.elapsed(), ms(200));
}

#[test]
fn a_limiter_built_on_a_blocking_thread_of_a_paused_runtime_follows_virtual_time() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    runtime.block_on(async {
        let limiter =
            tokio::task::spawn_blocking(|| RateLimiter::builder(1, HOUR).burst(1).build().unwrap())
                .await
                .unwrap();
        assert_eq!(limiter.check(), Ok(()));
        assert!(matches!(limiter.check(), Err(Rejected::RateLimited { .. })));
        tokio::time::advance(HOUR).await;
        assert_eq!(
            limiter.check(),
            Ok(()),
            "an hour of virtual time refilled the limiter"
        );
    });
}

#[test]
fn observation_a_limiter_built_before_tokio_time_is_paused_keeps_reading_real_time() {
    // The docs: "Build the limiter after pausing tokio's time: the choice is made once."
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        assert!(Tokio.is_real_time());
        let limiter = RateLimiter::builder(1, HOUR).burst(1).build().unwrap();
        tokio::time::pause();
        assert!(!Tokio.is_real_time(), "is_real_time answers now, per call");
        assert_eq!(limiter.check(), Ok(()));
        tokio::time::advance(2 * HOUR).await;
        match limiter.check() {
            Err(Rejected::RateLimited { retry_after }) => {
                assert!(retry_after > HOUR - secs(60), "{retry_after:?}");
            }
            other => panic!("a limiter built on real time ignored paused time? {other:?}"),
        }
        // Waiting on it mixes the two clocks: virtual sleeps, real-time decisions.
        let waited = limiter
            .until_ready_before(Deadline::after(&Tokio, 10 * HOUR))
            .await;
        assert_eq!(waited, Err(Rejected::DeadlineExceeded));
    });
}

#[test]
fn observation_a_limiter_built_outside_a_paused_runtime_then_used_inside_keeps_real_time() {
    let limiter = RateLimiter::builder(1, HOUR).burst(1).build().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    runtime.block_on(async {
        assert_eq!(limiter.check(), Ok(()));
        tokio::time::advance(2 * HOUR).await;
        assert!(matches!(limiter.check(), Err(Rejected::RateLimited { .. })));
    });
}

// ---------------------------------------------------------------------------------------------
// Real time: the counter
// ---------------------------------------------------------------------------------------------

const SLACK: Duration = Duration::from_secs(120);

fn assert_real_time_gcra(limiter: &RateLimiter<impl Clock>, burst: u32, interval: Duration) {
    for n in 0..burst {
        assert_eq!(limiter.check(), Ok(()), "cell {n} of the burst");
    }
    let mut last = interval;
    for _ in 0..100 {
        match limiter.check() {
            Err(Rejected::RateLimited { retry_after }) => {
                assert!(retry_after <= interval, "{retry_after:?} > {interval:?}");
                assert!(retry_after > interval - SLACK, "{retry_after:?}");
                assert!(
                    retry_after <= last,
                    "retry_after does not grow as time passes"
                );
                last = retry_after;
            }
            other => panic!("past the burst: {other:?}"),
        }
    }
    assert!(matches!(
        limiter.check_n(burst + 1),
        Err(Rejected::InsufficientCapacity { .. })
    ));
}

#[test]
fn a_default_limiter_outside_any_runtime_decides_by_gcra_on_real_time() {
    assert!(
        Tokio.is_real_time(),
        "outside a runtime, tokio's clock is real time"
    );
    let limiter = RateLimiter::builder(1, HOUR).burst(3).build().unwrap();
    assert_real_time_gcra(&limiter, 3, HOUR);
    let keyed = KeyedRateLimiter::builder(1, HOUR)
        .burst(2)
        .build::<u8>()
        .unwrap();
    assert_eq!(keyed.check_key(&1), Ok(()));
    assert_eq!(keyed.check_key(&1), Ok(()));
    match keyed.check_key(&1) {
        Err(Rejected::RateLimited { retry_after }) => {
            assert!(retry_after <= HOUR && retry_after > HOUR - SLACK)
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_default_limiter_on_a_multi_thread_runtime_admits_exactly_its_burst_across_threads() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let limiter = tokio::spawn(async {
            assert!(Tokio.is_real_time());
            RateLimiter::builder(1, HOUR).burst(5).build().unwrap()
        })
        .await
        .unwrap();
        let admitted = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..4)
            .map(|_| {
                let (limiter, admitted) = (limiter.clone(), admitted.clone());
                tokio::spawn(async move {
                    for _ in 0..2_000 {
                        if limiter.check().is_ok() {
                            admitted.fetch_add(1, SeqCst);
                        }
                        tokio::task::yield_now().await;
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(admitted.load(SeqCst), 5, "a burst of 5, then one per hour");
        match limiter.check() {
            Err(Rejected::RateLimited { retry_after }) => {
                assert!(retry_after <= HOUR && retry_after > HOUR - SLACK)
            }
            other => panic!("{other:?}"),
        }
        let start = std::time::Instant::now();
        let refused = limiter
            .until_ready_before(Deadline::after(&Tokio, secs(1)))
            .await;
        assert_eq!(refused, Err(Rejected::DeadlineExceeded));
        assert!(start.elapsed() < SLACK, "gives up at once");
    });
}

#[test]
fn a_users_clock_that_reads_tokio_is_followed_not_replaced_by_the_counter() {
    /// Tokio's time, without saying it is real time.
    #[derive(Clone)]
    struct ViaTokio;
    impl Clock for ViaTokio {
        type Sleep = <Tokio as Clock>::Sleep;
        fn now(&self) -> Instant {
            Tokio.now()
        }
        fn sleep_until(&self, deadline: Instant) -> Self::Sleep {
            Tokio.sleep_until(deadline)
        }
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    runtime.block_on(async {
        let limiter = RateLimiter::builder(1, HOUR)
            .burst(1)
            .runtime(ViaTokio)
            .build()
            .unwrap();
        assert_eq!(limiter.check(), Ok(()));
        assert_eq!(limiter.check(), limited(HOUR));
        tokio::time::advance(HOUR).await;
        assert_eq!(limiter.check(), Ok(()));
    });
}

// ---------------------------------------------------------------------------------------------
// Every adapter (virtual time through Clocked, and the adapter's own real time)
// ---------------------------------------------------------------------------------------------

async fn clocked_limiters_follow_virtual_time_exactly<R: Runtime>(rt: Clocked<R>) {
    assert!(!rt.is_real_time());
    let limiter = RateLimiter::builder(3, secs(1))
        .burst(2)
        .jitter(Duration::ZERO)
        .runtime(rt.clone())
        .build()
        .unwrap();
    let interval = Duration::from_nanos(333_333_333);
    assert_eq!(limiter.check(), Ok(()));
    assert_eq!(limiter.check(), Ok(()));
    assert_eq!(limiter.check(), limited(interval));
    let start = rt.now();
    assert_eq!(limiter.until_ready().await, Ok(()));
    assert_eq!(rt.now() - start, interval);
    rt.clock().advance(interval - NS);
    assert_eq!(limiter.check(), limited(NS));
    rt.clock().advance(NS);
    assert_eq!(limiter.check(), Ok(()));

    // A task on the runtime waits on the same limiter.
    let waiter = rt.spawn({
        let (rt, limiter) = (rt.clone(), limiter.clone());
        async move {
            let start = rt.now();
            limiter.until_ready().await.unwrap();
            rt.now() - start
        }
    });
    assert_eq!(waiter.await.unwrap(), interval);

    let keyed = KeyedRateLimiter::builder(1, HOUR)
        .burst(1)
        .runtime(rt.clone())
        .build::<u8>()
        .unwrap();
    assert_eq!(keyed.check_key(&0), Ok(()));
    assert_eq!(keyed.check_key(&0), limited(HOUR));
    rt.clock().advance(HOUR);
    assert_eq!(keyed.check_key(&0), Ok(()));
}

#[test]
fn limiters_on_clocked_follow_virtual_time_exactly_on_every_adapter() {
    on_every_runtime!(clocked_limiters_follow_virtual_time_exactly);
}

async fn adapters_own_real_time_limiters_decide_by_gcra<R: Runtime>(rt: Clocked<R>) {
    let inner = rt.inner().clone();
    assert!(
        inner.is_real_time(),
        "an adapter's time is real unless tokio's is paused"
    );
    let limiter = RateLimiter::builder(1, HOUR)
        .burst(2)
        .runtime(inner.clone())
        .build()
        .unwrap();
    assert_real_time_gcra(&limiter, 2, HOUR);
    let refused = limiter
        .until_ready_before(Deadline::after(&inner, secs(1)))
        .await;
    assert_eq!(refused, Err(Rejected::DeadlineExceeded));
}

#[test]
fn real_time_limiters_decide_by_gcra_on_every_adapter() {
    on_every_runtime!(adapters_own_real_time_limiters_decide_by_gcra);
}

async fn clocked_streams_and_policies_follow_virtual_time<R: Runtime>(rt: Clocked<R>) {
    let start = rt.now();
    let mut ticks = pin!(interval_on(&rt, secs(1), MissedTicks::Delay).unwrap());
    assert_eq!(ticks.next().await, Some(start + secs(1)));
    rt.sleep(ms(2500)).await;
    assert_eq!(
        ticks.next().await,
        Some(start + secs(2)),
        "one late tick at once"
    );
    assert_eq!(rt.now(), start + ms(3500));
    assert_eq!(
        ticks.next().await,
        Some(start + ms(4500)),
        "Delay restarts the schedule from it"
    );

    let start = rt.now();
    let items: Vec<_> = stream::iter(1..=3)
        .throttle_on(&rt, secs(1))
        .unwrap()
        .map(|x| (x, rt.now() - start))
        .collect()
        .await;
    assert_eq!(items, [(1, Duration::ZERO), (2, secs(1)), (3, secs(2))]);

    let bulkhead = Bulkhead::builder(1)
        .max_queue(1)
        .max_wait(ms(100))
        .runtime(rt.clone())
        .build()
        .unwrap();
    let held = bulkhead.try_acquire().unwrap();
    let start = rt.now();
    assert!(matches!(
        bulkhead.acquire().await,
        Err(Rejected::BulkheadFull)
    ));
    assert_eq!(rt.now() - start, ms(100));
    drop(held);
}

#[test]
fn streams_and_bulkheads_on_clocked_follow_virtual_time_on_every_adapter() {
    on_every_runtime!(clocked_streams_and_policies_follow_virtual_time);
}

// ---------------------------------------------------------------------------------------------
// Runtime = Clock + Spawn; Spawn alone; Signals opt-in
// ---------------------------------------------------------------------------------------------

/// A user's runtime: a `FakeClock` for time, another runtime's executor for spawning.
/// It implements `Clock` and `Spawn` and nothing else.
#[derive(Debug, Clone)]
struct Mixed<S> {
    clock: FakeClock,
    spawner: S,
}

impl<S: Clone + Send + Sync + 'static> Clock for Mixed<S> {
    type Sleep = FakeSleep;
    fn now(&self) -> Instant {
        self.clock.now()
    }
    fn sleep_until(&self, deadline: Instant) -> FakeSleep {
        self.clock.sleep_until(deadline)
    }
}

impl<S: Spawn> Spawn for Mixed<S> {
    type JoinHandle<T: Send + 'static> = tidewall::rt::JoinHandle<S, T>;
    fn spawn<F>(&self, future: F) -> Self::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.spawner.spawn(future)
    }
    fn spawn_blocking<W, T>(&self, work: W) -> Self::JoinHandle<T>
    where
        W: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        self.spawner.spawn_blocking(work)
    }
}

/// Only spawning, counting the blocking work it was given.
#[derive(Debug, Clone)]
struct OnlySpawn<S> {
    spawner: S,
    blocking: Arc<AtomicUsize>,
}

impl<S: Spawn> Spawn for OnlySpawn<S> {
    type JoinHandle<T: Send + 'static> = tidewall::rt::JoinHandle<S, T>;
    fn spawn<F>(&self, future: F) -> Self::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.spawner.spawn(future)
    }
    fn spawn_blocking<W, T>(&self, work: W) -> Self::JoinHandle<T>
    where
        W: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        self.blocking.fetch_add(1, SeqCst);
        self.spawner.spawn_blocking(work)
    }
}

/// Yields to the executor once.
async fn yield_once() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    })
    .await;
}

fn is_runtime<R: Runtime>(_: &R) {}

async fn a_clock_plus_spawn_runs_the_task_patterns<R: Runtime>(rt: Clocked<R>) {
    let mixed = Mixed {
        clock: FakeClock::new(),
        spawner: rt.inner().clone(),
    };
    is_runtime(&mixed);

    // Scope.
    let scope = tidewall::task::scope::Scope::builder()
        .runtime(mixed.clone())
        .build::<u32, &str>()
        .unwrap();
    for n in 0..4u32 {
        scope.spawn(async move { Ok(n * 2) }).await.ok().unwrap();
    }
    let report = scope.join().await;
    assert!(report.is_balanced());
    assert_eq!(report.succeeded, 4);

    // FanOut.
    let mut doubled: Vec<u32> = tidewall::fan_out::FanOut::new(2)
        .unwrap()
        .runtime(mixed.clone())
        .run_iter(1..=5u32, |n| async move { n * 2 })
        .map(|r| r.unwrap())
        .collect()
        .await;
    doubled.sort_unstable();
    assert_eq!(doubled, [2, 4, 6, 8, 10]);

    // WorkerPool, with a job timeout on the user's clock.
    let clock = mixed.clock.clone();
    let pool = tidewall::task::pool::WorkerPool::builder()
        .workers(2)
        .queue(8)
        .job_timeout(secs(1))
        .runtime(mixed.clone())
        .start(move |n: u64| {
            let clock = clock.clone();
            async move {
                if n == 0 {
                    clock.sleep(secs(60)).await;
                }
                n * n
            }
        })
        .unwrap();
    let quick = pool.submit(7).await.ok().unwrap();
    assert!(matches!(quick.await, tidewall::task::Exit::Ok(49)));
    let stuck = pool.submit(0).await.ok().unwrap();
    // Wait (deterministically, on a condition) until the job and its timeout have timers.
    while mixed.clock.pending_timers() < 2 {
        yield_once().await;
    }
    mixed.clock.advance(secs(1));
    assert!(matches!(
        stuck.await,
        tidewall::task::Exit::Err(tidewall::time::Elapsed)
    ));
    let report = pool.shutdown(secs(5)).await;
    assert_eq!((report.submitted, report.completed), (2, 1));

    // Shutdown without Signals: register, trigger, run.
    let mut shutdown = tidewall::task::shutdown::ShutdownBuilder::new()
        .runtime(mixed.clone())
        .build()
        .unwrap();
    shutdown.register("component", |stop| async move {
        stop.cancelled().await;
        Ok::<(), std::io::Error>(())
    });
    shutdown.trigger().cancel("test");
    let report = shutdown.run().await;
    assert!(report.is_clean());
}

#[test]
fn a_type_that_is_only_clock_plus_spawn_runs_scope_fan_out_worker_pool_and_shutdown_on_every_adapter()
 {
    on_every_runtime!(a_clock_plus_spawn_runs_the_task_patterns);
}

#[test]
fn a_type_that_only_spawns_writes_a_file_atomically_on_the_blocking_pool() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    let rt = OnlySpawn {
        spawner: Tokio,
        blocking: Arc::new(AtomicUsize::new(0)),
    };
    runtime.block_on(async {
        tidewall::fs::write_atomic(&rt, &path, b"old".to_vec())
            .await
            .unwrap();
        tidewall::fs::write_atomic(&rt, &path, b"new".to_vec())
            .await
            .unwrap();
    });
    assert_eq!(std::fs::read(&path).unwrap(), b"new");
    assert!(
        rt.blocking.load(SeqCst) >= 2,
        "each step runs on the blocking pool"
    );
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        leftovers.len(),
        1,
        "no temporary file left behind: {leftovers:?}"
    );

    // The same on smol's executor, through a Spawn-only type.
    let smol = tidewall::rt::SmolRuntime::single_threaded();
    let rt = OnlySpawn {
        spawner: smol.handle(),
        blocking: Arc::new(AtomicUsize::new(0)),
    };
    smol.block_on(tidewall::fs::write_atomic(&rt, &path, b"smol".to_vec()))
        .unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"smol");
}

/// `Probe::<T>::SIGNALS` is `true` exactly when `T: Signals` (an inherent constant wins over
/// the trait's fallback only where its bound holds).
struct Probe<T>(std::marker::PhantomData<T>);
trait NoSignals {
    const SIGNALS: bool = false;
}
impl<T> NoSignals for Probe<T> {}
impl<T: tidewall::rt::Signals> Probe<T> {
    const SIGNALS: bool = true;
}

#[test]
fn signals_are_opt_in_every_adapter_has_them_and_plain_clocks_do_not() {
    // Checked when the test compiles; the test only has to exist.
    const {
        assert!(Probe::<Tokio>::SIGNALS);
        assert!(Probe::<tidewall::rt::Smol>::SIGNALS);
        assert!(Probe::<tidewall::rt::AsyncStd>::SIGNALS);
        assert!(
            Probe::<Clocked<Tokio>>::SIGNALS,
            "Clocked<R> has R's signals"
        );
        assert!(!Probe::<FakeClock>::SIGNALS);
        assert!(!Probe::<UserClock>::SIGNALS);
        assert!(
            !Probe::<Mixed<Tokio>>::SIGNALS,
            "a user's Clock + Spawn does not get Signals"
        );
    }
}
