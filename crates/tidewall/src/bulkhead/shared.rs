//! Permit accounting shared by every clone of a bulkhead.
//!
//! Fast path: `available` is a counter taken with a compare-and-swap when nobody is queued,
//! and given back with one `fetch_add`. The queue is a mutex-protected FIFO entered only when
//! no permit is free. A release and an arriving waiter race like Dekker's algorithm: the
//! releaser increments `available` then reads `queued`, the waiter increments `queued` then
//! reads `available`. Both cross-reads are read-modify-writes (`fetch_add(0)`), which read
//! the latest value and synchronize through each location's modification order, so at least
//! one side sees the other and the permit reaches the waiter — without relying on `SeqCst`
//! store-load ordering, which loom cannot model. `tests/loom.rs` checks every interleaving.

use std::time::Duration;

use super::queue::WaitQueue;
use crate::sync::{AtomicU64, AtomicUsize, Mutex, Ordering::*, lock};

pub(crate) struct Shared<R> {
    pub(super) capacity: usize,
    available: AtomicUsize,
    queued: AtomicUsize,
    pub(super) queue: Mutex<WaitQueue>,
    pub(super) max_queue: usize,
    pub(super) max_wait: Option<Duration>,
    rejected: AtomicU64,
    pub(super) rt: R,
    pub(super) name: crate::Name,
    rejections: std::sync::Arc<crate::telemetry::Rejections>,
}

impl<R> Shared<R> {
    pub(super) fn new(
        capacity: usize,
        max_queue: usize,
        max_wait: Option<Duration>,
        rt: R,
        name: crate::Name,
        rejections: std::sync::Arc<crate::telemetry::Rejections>,
    ) -> Self {
        Self {
            capacity,
            available: AtomicUsize::new(capacity),
            queued: AtomicUsize::new(0),
            queue: Mutex::new(WaitQueue::default()),
            max_queue,
            max_wait,
            rejected: AtomicU64::new(0),
            rt,
            name,
            rejections,
        }
    }

    /// Takes a free permit if there is one.
    #[inline]
    pub(super) fn try_take(&self) -> bool {
        let mut free = self.available.load(SeqCst);
        while free > 0 {
            match self
                .available
                .compare_exchange_weak(free, free - 1, SeqCst, SeqCst)
            {
                Ok(_) => return true,
                Err(seen) => free = seen,
            }
        }
        false
    }

    /// The fast path: a free permit, unless waiters are queued (they come first).
    #[inline]
    pub(super) fn try_acquire(&self) -> bool {
        self.queued.load(SeqCst) == 0 && self.try_take()
    }

    /// Takes a free permit, reading `available` with a read-modify-write (see the module docs).
    fn try_take_fresh(&self) -> bool {
        let mut free = self.available.fetch_add(0, SeqCst);
        while free > 0 {
            match self
                .available
                .compare_exchange_weak(free, free - 1, SeqCst, SeqCst)
            {
                Ok(_) => return true,
                Err(seen) => free = seen,
            }
        }
        false
    }

    /// Gives a permit back and hands it to the longest waiter, if any.
    #[inline]
    pub(super) fn release(&self) {
        let before = self.available.fetch_add(1, SeqCst);
        debug_assert!(
            before < self.capacity,
            "bulkhead {:?}: a slot was released that was never taken ({before} of {} already free)",
            self.name,
            self.capacity
        );
        if self.queued.fetch_add(0, SeqCst) > 0 {
            self.dispatch();
        }
    }

    /// Grants free permits to queued waiters, in arrival order, waking each outside the lock.
    pub(super) fn dispatch(&self) {
        loop {
            let waker = {
                let mut queue = lock(&self.queue);
                if queue.waiting() == 0 || !self.try_take_fresh() {
                    return;
                }
                match queue.grant_first() {
                    Some(waker) => {
                        self.queued.fetch_sub(1, SeqCst);
                        waker
                    }
                    None => {
                        self.available.fetch_add(1, SeqCst);
                        return;
                    }
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

    pub(super) fn reject(&self, reason: crate::Rejected) -> crate::Rejected {
        self.rejected.fetch_add(1, Relaxed);
        self.rejections.record(&reason);
        reason
    }

    pub(super) fn in_flight(&self) -> usize {
        self.capacity - self.available.load(Relaxed).min(self.capacity)
    }

    pub(super) fn available(&self) -> usize {
        self.available.load(Relaxed)
    }

    pub(super) fn queued(&self) -> usize {
        self.queued.load(Relaxed)
    }

    pub(super) fn rejected(&self) -> u64 {
        self.rejected.load(Relaxed)
    }
}
