//! The shared pieces of the `hostile_seam_*` tests: a few durations (`NS`, `YEAR`, `secs`;
//! `ms` is in `common`, `HOUR` and `DAY` in `support`), `limited`, and three virtual clocks
//! that drive the waiting policies without any runtime at all:
//! * `UserClock`: a user's own clock (an `AtomicU64` of nanoseconds past a base instant, with
//!   timers that complete once the clock passes their deadline);
//! * `FakeClock` used directly as a `Clock` (no `Clocked` wrapper);
//! * `Wrapped`: a user's clock that merely delegates to a `FakeClock`.
//!
//! `run(&clock, future)` polls the future and, whenever it is pending, moves the clock to the
//! earliest registered timer: the same rule as paused tokio time, on one thread.
//! `on_every_plain_clock!(scenario)` runs a scenario on each of the three clocks.
//!
//! Every test file that includes it also declares `mod common;` and `mod support;`.
#![allow(dead_code, unreachable_pub)]

use std::future::{Future, IntoFuture};
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use tidewall::Rejected;
use tidewall::rt::Clock;
use tidewall::testing::{FakeClock, FakeSleep};

pub const NS: Duration = Duration::from_nanos(1);
pub const YEAR: Duration = Duration::from_secs(365 * 86_400);

pub fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

pub fn limited(retry_after: Duration) -> Result<(), Rejected> {
    Err(Rejected::RateLimited { retry_after })
}

// ---------------------------------------------------------------------------------------------
// A user's own clock
// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
pub struct UserState {
    pub base: Instant,
    /// Whole seconds past `base`, for ages beyond what `offset` holds.
    pub epoch: AtomicU64,
    /// Nanoseconds past `base + epoch`: the clock's reading.
    pub offset: AtomicU64,
    pub next_id: AtomicU64,
    /// Pending timers: (id, deadline, waker).
    pub timers: Mutex<Vec<(u64, Instant, Waker)>>,
    /// Every deadline ever passed to `sleep_until`.
    pub asked: Mutex<Vec<Instant>>,
}

/// A user's clock: virtual time in an atomic, timers that complete once it passes them.
/// It does not override `is_real_time`.
#[derive(Debug, Clone)]
pub struct UserClock(pub Arc<UserState>);

impl UserClock {
    pub fn new() -> Self {
        Self::starting_at(Instant::now())
    }

    pub fn starting_at(base: Instant) -> Self {
        Self(Arc::new(UserState {
            base,
            epoch: AtomicU64::new(0),
            offset: AtomicU64::new(0),
            next_id: AtomicU64::new(0),
            timers: Mutex::new(Vec::new()),
            asked: Mutex::new(Vec::new()),
        }))
    }

    pub fn wake_due(&self) {
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
    pub fn set_offset(&self, offset: Duration) {
        self.0
            .offset
            .store(u64::try_from(offset.as_nanos()).unwrap(), SeqCst);
        self.wake_due();
    }

    pub fn offset(&self) -> Duration {
        Duration::from_nanos(self.0.offset.load(SeqCst))
    }

    /// Ages the clock by whole seconds (beyond what `advance_by` holds).
    pub fn age_by_secs(&self, secs: u64) {
        self.0.epoch.fetch_add(secs, SeqCst);
        self.wake_due();
    }

    pub fn last_asked(&self) -> Option<Instant> {
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
pub struct UserSleep {
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
pub struct Wrapped(pub FakeClock);

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
pub trait Virtual: Clock {
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
pub fn run<C: Virtual, F: IntoFuture>(clock: &C, future: F) -> F::Output {
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
#[macro_export]
macro_rules! on_every_plain_clock {
    ($scenario:ident) => {{
        $scenario($crate::seam_support::UserClock::new());
        $scenario(::tidewall::testing::FakeClock::new());
        $scenario($crate::seam_support::Wrapped(
            ::tidewall::testing::FakeClock::new(),
        ));
    }};
}

pub fn elapsed_since<C: Clock>(clock: &C, start: Instant) -> Duration {
    clock.now() - start
}
