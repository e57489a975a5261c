//! Permit accounting shared by every clone of a bulkhead.
//!
//! Fast path: `available` is a counter taken with a compare-and-swap when nobody is queued,
//! and given back with one `fetch_add`. The queue (`queue.rs`) is behind a mutex, entered
//! only when no permit is free (or none within the caller's priority's share: a call of a
//! less important priority leaves a reserve of free permits). A release and an arriving waiter race like Dekker's algorithm: the
//! releaser increments `available` then reads `queued`, the waiter increments `queued` then
//! reads `available`. Both cross-reads are read-modify-writes (`fetch_add(0)`), which read
//! the latest value and synchronize through each location's modification order, so at least
//! one side sees the other and the permit reaches the waiter — without relying on `SeqCst`
//! store-load ordering, which loom cannot model. `tests/loom.rs` checks every interleaving.
//!
//! Resizing never revokes a permit: `available` is signed, so shrinking below what is held
//! leaves it negative, and the permits still out pay the difference back as they are released
//! before anyone new is admitted. Resizes and the queue's hand-offs take the queue lock.

use std::time::Duration;

use super::queue::WaitQueue;
use crate::admission::Priority;
use crate::sync::{AtomicIsize, AtomicU64, AtomicUsize, Mutex, Ordering::*, lock};

pub(crate) struct Shared<R> {
    capacity: AtomicUsize,
    /// The largest capacity ever set, for the over-release check of debug builds.
    #[cfg(debug_assertions)]
    largest: AtomicUsize,
    /// Free permits; negative after a shrink while more are held than the new capacity.
    available: AtomicIsize,
    queued: AtomicUsize,
    pub(super) queue: Mutex<WaitQueue>,
    max_queue: AtomicUsize,
    /// In nanoseconds; `u64::MAX` for none (a wait that long, 584 years, is the same thing).
    max_wait: AtomicU64,
    rejected: AtomicU64,
    pub(super) rt: R,
    pub(super) name: crate::Name,
    telemetry: std::sync::Arc<crate::telemetry::PolicyTelemetry>,
    /// Per priority, the share of the capacity its calls may fill (an adaptive limiter's
    /// shedding), as `f64` bits: a reconfiguration changes them in place. Boxed, since a
    /// bulkhead per key pays for every byte; `None` for a plain bulkhead.
    shares: Option<Box<[AtomicU64; Priority::ALL.len()]>>,
}

/// Per priority (most important first), the share of the capacity its calls may fill: each
/// within `(0, 1]`.
pub(crate) type Shares = [f64; Priority::ALL.len()];

impl<R> Shared<R> {
    pub(super) fn new(
        capacity: usize,
        max_queue: usize,
        max_wait: Option<Duration>,
        rt: R,
        name: crate::Name,
        telemetry: std::sync::Arc<crate::telemetry::PolicyTelemetry>,
        shares: Option<Shares>,
    ) -> Self {
        Self {
            capacity: AtomicUsize::new(capacity),
            #[cfg(debug_assertions)]
            largest: AtomicUsize::new(capacity),
            available: AtomicIsize::new(signed(capacity)),
            queued: AtomicUsize::new(0),
            queue: Mutex::new(WaitQueue::default()),
            max_queue: AtomicUsize::new(max_queue),
            max_wait: AtomicU64::new(wait_nanos(max_wait)),
            rejected: AtomicU64::new(0),
            rt,
            name,
            telemetry,
            shares: shares
                .map(|shares| Box::new(shares.map(|share| AtomicU64::new(share.to_bits())))),
        }
    }

    /// Takes a free permit if more than `reserve` are free; returns how many were free.
    #[inline]
    fn try_take_keeping(&self, reserve: isize) -> Option<isize> {
        let mut free = self.available.load(SeqCst);
        while free > reserve {
            match self
                .available
                .compare_exchange_weak(free, free - 1, SeqCst, SeqCst)
            {
                Ok(_) => return Some(free),
                Err(seen) => free = seen,
            }
        }
        None
    }

    /// The fast path: a free permit, unless waiters are queued (they come first).
    #[inline]
    pub(super) fn try_acquire(&self) -> bool {
        self.queued.load(SeqCst) == 0 && self.try_take_keeping(0).is_some()
    }

    /// Admits a call of `priority` now if it can, without queueing: the fast path, else (when
    /// waiters are queued) a free slot within its share past waiters that could not use it.
    /// Returns the permits held, its own included.
    #[inline]
    pub(super) fn try_admit_as(&self, priority: Priority) -> Option<usize> {
        self.try_acquire_as(priority).or_else(|| {
            (self.queued() > 0)
                .then(|| self.take_past_queue(priority))
                .flatten()
        })
    }

    /// The fast path for a call of `priority`: a free permit that leaves the more important
    /// priorities their part of the capacity, unless waiters are queued. Returns the permits
    /// held once it is taken, itself included (read without the queue lock: exact unless a
    /// resize races it).
    #[inline]
    fn try_acquire_as(&self, priority: Priority) -> Option<usize> {
        if self.queued.load(SeqCst) != 0 {
            return None;
        }
        let free = self.try_take_keeping(self.reserve(priority))?;
        Some(self.held_after(free))
    }

    /// The slow path for a call of `priority` that waiters are queued ahead of: a free permit
    /// within its share, if nobody as important or more is waiting (those waiting could not
    /// use it: they are less important, or wait for their share). Returns the permits held.
    fn take_past_queue(&self, priority: Priority) -> Option<usize> {
        let queue = lock(&self.queue);
        if queue.waiting_at_or_above(priority) {
            return None;
        }
        let held = self.try_take_fresh_keeping(self.reserve(priority));
        drop(queue);
        held
    }

    /// The permits held once one is taken from `free` (itself included; read without the
    /// queue lock, exact unless a resize races it).
    fn held_after(&self, free: isize) -> usize {
        let held = signed(self.capacity()).saturating_sub(free - 1);
        usize::try_from(held).unwrap_or(0)
    }

    /// The free permits a call of `priority` must leave: `capacity − ⌈capacity × share⌉`, so
    /// it is admitted while fewer than `capacity × share` are in flight (always when none
    /// are, the share being above zero).
    fn reserve(&self, priority: Priority) -> isize {
        let Some(shares) = &self.shares else {
            return 0;
        };
        let share = f64::from_bits(shares[priority.index()].load(Relaxed));
        if share >= 1.0 {
            return 0;
        }
        let capacity = self.capacity();
        signed(capacity.saturating_sub(share_of(capacity, share)))
    }

    /// Takes a free permit if more than `reserve` are free, reading `available` with a
    /// read-modify-write (see the module docs); returns the permits then held.
    fn try_take_fresh_keeping(&self, reserve: isize) -> Option<usize> {
        let mut free = self.available.fetch_add(0, SeqCst);
        while free > reserve {
            match self
                .available
                .compare_exchange_weak(free, free - 1, SeqCst, SeqCst)
            {
                Ok(_) => return Some(self.held_after(free)),
                Err(seen) => free = seen,
            }
        }
        None
    }

    /// Gives a permit back and hands it to the longest waiter, if any.
    #[inline]
    pub(super) fn release(&self) {
        let before = self.available.fetch_add(1, SeqCst);
        // Checked against the largest capacity ever set, not the current one: a resize racing
        // this release may have moved the capacity and not yet `available`, but never lifts
        // `available` above the largest capacity. (The loom models and the conservation
        // tests check the exact sums.)
        #[cfg(debug_assertions)]
        debug_assert!(
            before < signed(self.largest.load(SeqCst)),
            "bulkhead {:?}: a slot was released that was never taken ({before} of {} already free)",
            self.name,
            self.capacity()
        );
        #[cfg(not(debug_assertions))]
        let _ = before;
        if self.queued.fetch_add(0, SeqCst) > 0 {
            self.dispatch();
        }
    }

    /// Grants free permits to queued waiters (the most important priority first, in the
    /// queue's order within it), waking each outside the lock.
    pub(super) fn dispatch(&self) {
        loop {
            let waker = {
                let mut queue = lock(&self.queue);
                let granted = queue
                    .grant_next(|priority| self.try_take_fresh_keeping(self.reserve(priority)));
                match granted {
                    Some(waker) => {
                        self.queued.fetch_sub(1, SeqCst);
                        waker
                    }
                    None => return,
                }
            };
            if let Some(waker) = waker {
                waker.wake();
            }
        }
    }

    pub(super) fn note_queued(&self) {
        self.queued.fetch_add(1, SeqCst);
    }

    pub(super) fn note_unqueued(&self) {
        self.queued.fetch_sub(1, SeqCst);
    }

    /// A waiter queued at `since` was admitted (only queued waiters are timed, and only for
    /// metrics or a listener).
    pub(super) fn waited(&self, since: Option<std::time::Instant>)
    where
        R: crate::rt::Clock,
    {
        if let Some(since) = since
            && self.telemetry.times_waits()
        {
            self.telemetry
                .waited(self.rt.now().saturating_duration_since(since));
        }
    }

    /// Counts a refusal (cold and out of line, as [`PolicyTelemetry::refused`] says why).
    ///
    /// [`PolicyTelemetry::refused`]: crate::telemetry::PolicyTelemetry::refused
    #[cold]
    #[inline(never)]
    pub(super) fn reject(&self, reason: crate::Rejected) -> crate::Rejected {
        self.rejected.fetch_add(1, Relaxed);
        self.telemetry.refused(&reason, None);
        reason
    }

    /// Held permits: more than the capacity for a while after a shrink. Read under the queue
    /// lock, which resizes hold: a resize moves the capacity and the free count one after
    /// the other, and a reading between the two would count permits nobody holds.
    pub(super) fn in_flight(&self) -> usize {
        let _no_resize = lock(&self.queue);
        let held = signed(self.capacity()).saturating_sub(self.available.load(Relaxed));
        usize::try_from(held).unwrap_or(0)
    }

    pub(super) fn available(&self) -> usize {
        usize::try_from(self.available.load(Relaxed)).unwrap_or(0)
    }

    pub(super) fn capacity(&self) -> usize {
        self.capacity.load(Relaxed)
    }

    pub(super) fn max_queue(&self) -> usize {
        self.max_queue.load(Relaxed)
    }

    pub(super) fn max_wait(&self) -> Option<Duration> {
        match self.max_wait.load(Relaxed) {
            u64::MAX => None,
            nanos => Some(Duration::from_nanos(nanos)),
        }
    }

    /// Applies new (validated) limits. Held permits stay held; a larger capacity goes to the
    /// queue first; a smaller one admits nobody new until enough permits come back. Waiters
    /// already queued stay queued when the queue shrinks.
    pub(super) fn resize(&self, capacity: usize, max_queue: usize, max_wait: Option<Duration>) {
        let grew = {
            let _queue = lock(&self.queue);
            self.set_limits(capacity, max_queue, max_wait)
        };
        if grew {
            self.dispatch();
        }
    }

    /// Sets the limits, under the queue lock (which the caller holds); whether the capacity
    /// grew.
    fn set_limits(&self, capacity: usize, max_queue: usize, max_wait: Option<Duration>) -> bool {
        self.max_queue.store(max_queue, Relaxed);
        self.max_wait.store(wait_nanos(max_wait), Relaxed);
        let old = self.capacity();
        // Stores and adds in the order that keeps `available <= capacity` for every reader: a
        // release's check, `in_flight` and `available`.
        if capacity > old {
            #[cfg(debug_assertions)]
            self.largest.fetch_max(capacity, SeqCst);
            self.capacity.store(capacity, SeqCst);
            self.available.fetch_add(signed(capacity - old), SeqCst);
        } else {
            self.available.fetch_sub(signed(old - capacity), SeqCst);
            self.capacity.store(capacity, SeqCst);
        }
        capacity > old
    }

    /// Applies new (validated) limits and shares together, under one hold of the queue
    /// lock, then admits the waiters they let in: a waiter is granted only under both the
    /// new capacity and the new shares, never under one new and one old. For a bulkhead
    /// built with shares (an adaptive limiter's).
    pub(super) fn resize_reshared(
        &self,
        capacity: usize,
        max_queue: usize,
        max_wait: Option<Duration>,
        shares: Shares,
    ) {
        {
            let _queue = lock(&self.queue);
            if let Some(held) = &self.shares {
                for (held, share) in held.iter().zip(shares) {
                    held.store(share.to_bits(), Relaxed);
                }
            } else {
                debug_assert!(false, "bulkhead {:?} was built without shares", self.name);
            }
            self.set_limits(capacity, max_queue, max_wait);
        }
        // A larger share admits waiters as a larger capacity does.
        self.dispatch();
    }

    pub(super) fn queued(&self) -> usize {
        self.queued.load(Relaxed)
    }

    pub(super) fn rejected(&self) -> u64 {
        self.rejected.load(Relaxed)
    }
}

/// `⌈capacity × share⌉` for a share in `(0, 1)`, a product within a trillionth of a whole
/// number counted as that number: `100 × 0.55` is 55, though in binary it is a hair above.
pub(crate) fn share_of(capacity: usize, share: f64) -> usize {
    // Capacities fit in isize (builders check) and the product is below the capacity; the
    // casts only lose precision beyond 2^53 slots.
    #[allow(
        clippy::cast_precision_loss,
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss
    )]
    {
        let exact = capacity as f64 * share;
        let nearest = exact.round();
        let whole = if (exact - nearest).abs() <= exact * 1e-12 {
            nearest
        } else {
            exact.ceil()
        };
        whole as usize
    }
}

/// A capacity as the signed permit count (builders refuse capacities above `isize::MAX`).
fn signed(permits: usize) -> isize {
    isize::try_from(permits).unwrap_or(isize::MAX)
}

fn wait_nanos(wait: Option<Duration>) -> u64 {
    // Builders refuse waits beyond u64::MAX nanoseconds.
    wait.map_or(u64::MAX, |w| {
        u64::try_from(w.as_nanos()).unwrap_or(u64::MAX)
    })
}
