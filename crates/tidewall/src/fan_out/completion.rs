//! How spawned tasks hand their results back: a shared queue plus one waker.
//!
//! Each task pushes `(sequence, slot, outcome)` when it finishes. A guard pushes
//! `Err(Cancelled)` if the runtime drops the task before it finishes, so the consumer can never
//! wait for a result that will not come.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use futures_util::task::AtomicWaker;

use crate::rt::caught::Caught;
use crate::rt::{JoinError, Panic};

/// One finished task.
pub(super) struct Completed<O> {
    pub(super) sequence: u64,
    pub(super) slot: usize,
    pub(super) outcome: Result<O, JoinError>,
}

pub(super) struct Completions<O> {
    queue: Mutex<VecDeque<Completed<O>>>,
    consumer: AtomicWaker,
    /// Whether an outcome ends the stream (fail-fast: an error or a panic).
    ends: fn(&Result<O, JoinError>) -> bool,
    /// Set by the task that reports an outcome that `ends` the stream, before the stream
    /// absorbs it: the stream reads it before each input it takes.
    ending: AtomicBool,
}

impl<O> Completions<O> {
    pub(super) fn with_capacity(
        capacity: usize,
        ends: fn(&Result<O, JoinError>) -> bool,
    ) -> Arc<Self> {
        Arc::new(Self {
            queue: Mutex::new(VecDeque::with_capacity(capacity)),
            consumer: AtomicWaker::new(),
            ends,
            ending: AtomicBool::new(false),
        })
    }

    /// Whether `outcome` ends the stream.
    pub(super) fn ends(&self, outcome: &Result<O, JoinError>) -> bool {
        (self.ends)(outcome)
    }

    /// Whether an outcome that ends the stream has been reported.
    pub(super) fn ending(&self) -> bool {
        self.ending.load(Ordering::Acquire)
    }

    fn queue(&self) -> MutexGuard<'_, VecDeque<Completed<O>>> {
        // Pushing and popping cannot panic halfway, so a poisoned queue is still consistent.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn push(&self, completed: Completed<O>) {
        if self.ends(&completed.outcome) {
            self.ending.store(true, Ordering::Release);
        }
        self.queue().push_back(completed);
        self.consumer.wake();
    }

    /// Hands every queued completion to `deliver`, taking the lock once for the whole batch.
    pub(super) fn drain(&self, mut deliver: impl FnMut(Completed<O>)) {
        self.queue().drain(..).for_each(&mut deliver);
    }

    pub(super) fn is_empty(&self) -> bool {
        self.queue().is_empty()
    }

    pub(super) fn register(&self, waker: &std::task::Waker) {
        self.consumer.register(waker);
    }
}

/// Reports `Err(Cancelled)` unless disarmed by a finished task.
struct Reporter<O> {
    completions: Arc<Completions<O>>,
    sequence: u64,
    slot: usize,
    armed: bool,
}

impl<O> Reporter<O> {
    fn report(mut self, outcome: Result<O, JoinError>) {
        self.armed = false;
        let Self { sequence, slot, .. } = self;
        self.completions.push(Completed {
            sequence,
            slot,
            outcome,
        });
    }
}

impl<O> Drop for Reporter<O> {
    fn drop(&mut self) {
        if self.armed {
            let (sequence, slot) = (self.sequence, self.slot);
            self.completions.push(Completed {
                sequence,
                slot,
                outcome: Err(JoinError::Cancelled),
            });
        }
    }
}

/// The task body: runs `work`, catching a panic, and reports exactly once. `work` is dropped
/// inside the poll that finishes it, under the same panic guard: one that returns and then
/// panics in its `Drop` reports `Panicked` with that payload, as on every runtime, not an
/// unwind through the guard (which would read `Cancelled`). The guard is made here, before
/// the task is spawned, and moves into the body: a runtime that drops the task before it
/// finishes drops the guard with it, which reports `Err(Cancelled)`.
pub(super) fn report_to<F: Future>(
    completions: Arc<Completions<F::Output>>,
    sequence: u64,
    slot: usize,
    work: F,
) -> impl Future<Output = ()> {
    let reporter = Reporter {
        completions,
        sequence,
        slot,
        armed: true,
    };
    async move {
        let outcome = Caught::new(work).await;
        reporter.report(outcome.map_err(|payload| JoinError::Panicked(Panic::new(payload))));
    }
}
