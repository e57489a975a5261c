//! The virtual clock and its timers.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// A virtual monotonic clock. Clones share the same time and timers.
///
/// Time only moves when [`FakeClock::advance`], [`FakeClock::advance_to`] or
/// [`FakeClock::advance_to_next_timer`] is called (or when [`Clocked::drive`](super::Clocked::drive)
/// does so); moving it wakes every timer that has come due, in deadline order.
///
/// It is a [`Clock`](crate::rt::Clock): a policy that only waits runs on it directly, with
/// `.runtime(clock.clone())` on its builder.
///
/// ```
/// use std::time::Duration;
/// use tidewall::testing::FakeClock;
///
/// let clock = FakeClock::new();
/// let start = clock.now();
/// clock.advance(Duration::from_secs(5));
/// assert_eq!(clock.now() - start, Duration::from_secs(5));
/// assert_eq!(clock.elapsed(), Duration::from_secs(5));
/// ```
#[derive(Debug, Clone, Default)]
pub struct FakeClock {
    shared: Arc<Mutex<ClockState>>,
}

#[derive(Debug)]
struct ClockState {
    origin: Instant,
    now: Instant,
    /// Registered timers by (deadline, id): the id keeps equal deadlines distinct.
    timers: BTreeMap<(Instant, u64), Waker>,
    next_id: u64,
}

impl Default for ClockState {
    fn default() -> Self {
        let origin = Instant::now();
        Self {
            origin,
            now: origin,
            timers: BTreeMap::new(),
            next_id: 0,
        }
    }
}

impl crate::rt::Clock for FakeClock {
    type Sleep = FakeSleep;

    fn now(&self) -> Instant {
        FakeClock::now(self)
    }

    fn sleep_until(&self, deadline: Instant) -> FakeSleep {
        FakeClock::sleep_until(self, deadline)
    }
}

impl FakeClock {
    /// A clock reading a real `Instant` taken now; it never moves on its own.
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, ClockState> {
        // A panic while holding this lock cannot leave the map inconsistent, so poisoning is
        // ignored rather than turned into a second panic.
        self.shared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The current virtual time.
    pub fn now(&self) -> Instant {
        self.state().now
    }

    /// Virtual time elapsed since the clock was created.
    pub fn elapsed(&self) -> Duration {
        let state = self.state();
        state.now - state.origin
    }

    /// Moves time forward by `by` and wakes the timers that came due. Advances made at once
    /// from several threads all count: each adds its `by` to the time it finds. A `by` the
    /// clock cannot add to its now (such as `Duration::MAX`) moves it about thirty years
    /// instead, as [`instant_after`](crate::rt::instant_after) does.
    pub fn advance(&self, by: Duration) {
        self.move_to(|now| crate::rt::instant_after(now, by));
    }

    /// Moves time forward to `target` (never backwards) and wakes the timers that came due.
    pub fn advance_to(&self, target: Instant) {
        self.move_to(|now| now.max(target));
    }

    /// Sets the time to `to(now)`, read and written under one lock, and wakes the timers that
    /// came due.
    fn move_to(&self, to: impl FnOnce(Instant) -> Instant) {
        let due: Vec<Waker> = {
            let mut state = self.state();
            state.now = to(state.now);
            let now = state.now;
            let later = state.timers.split_off(&(now, u64::MAX));
            std::mem::replace(&mut state.timers, later)
                .into_values()
                .collect()
        };
        // Wake outside the lock: a woken task may poll and register a timer at once.
        due.into_iter().for_each(Waker::wake);
    }

    /// The earliest registered timer's deadline, if any.
    pub fn next_timer(&self) -> Option<Instant> {
        self.state()
            .timers
            .keys()
            .next()
            .map(|(deadline, _)| *deadline)
    }

    /// Jumps to the earliest timer and fires it (and any due at the same instant).
    /// Returns `false` when no timer is registered.
    pub fn advance_to_next_timer(&self) -> bool {
        match self.next_timer() {
            Some(deadline) => {
                self.advance_to(deadline);
                true
            }
            None => false,
        }
    }

    /// The number of registered (pending, not dropped) timers.
    pub fn pending_timers(&self) -> usize {
        self.state().timers.len()
    }

    /// The deadlines of the registered timers, earliest first (equal deadlines repeated).
    pub fn timer_deadlines(&self) -> Vec<Instant> {
        self.state().timers.keys().map(|(at, _)| *at).collect()
    }

    /// A future that completes once virtual time reaches `deadline`.
    pub fn sleep_until(&self, deadline: Instant) -> FakeSleep {
        FakeSleep {
            clock: self.clone(),
            deadline,
            id: None,
        }
    }
}

/// A virtual-time sleep; dropping it unregisters its timer.
#[derive(Debug)]
pub struct FakeSleep {
    clock: FakeClock,
    deadline: Instant,
    id: Option<u64>,
}

impl Future for FakeSleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        let mut state = this.clock.state();
        if state.now >= this.deadline {
            if let Some(id) = this.id.take() {
                state.timers.remove(&(this.deadline, id));
            }
            return Poll::Ready(());
        }
        let id = *this.id.get_or_insert_with(|| {
            state.next_id += 1;
            state.next_id
        });
        state.timers.insert((this.deadline, id), cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for FakeSleep {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            self.clock.state().timers.remove(&(self.deadline, id));
        }
    }
}
