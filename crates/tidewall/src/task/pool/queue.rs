//! The bounded queue the submitters and the workers share, and the ways into it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Poll, Waker};

use futures_channel::oneshot;

use super::report::JobExit;
use super::{JobHandle, SubmitError};
use crate::task::wakers::{HeldSlot, WakerSlots};

type Queued<J, T> = (J, oneshot::Sender<JobExit<T>>);

pub(super) struct Queue<J, T> {
    pub(super) jobs: VecDeque<Queued<J, T>>,
    pub(super) closed: bool,
    /// Producers waiting for room, one slot per `submit` future.
    pub(super) submitters: WakerSlots,
    pub(super) workers: Vec<Waker>,
}

pub(super) struct Shared<J, T> {
    pub(super) queue: Mutex<Queue<J, T>>,
    pub(super) capacity: usize,
    pub(super) submitted: AtomicU64,
    pub(super) completed: AtomicU64,
    pub(super) failed: AtomicU64,
    pub(super) running: AtomicUsize,
    /// Of `failed`, the jobs that never ended: aborted at the drain deadline, or lost with
    /// their worker's task (its runtime shut down).
    pub(super) aborted: AtomicU64,
}

impl<J, T> Shared<J, T> {
    pub(super) fn queue(&self) -> MutexGuard<'_, Queue<J, T>> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Stops accepting jobs and wakes everyone waiting: submitters (refused) and idle
    /// workers (which run what is queued, then stop). Idempotent.
    pub(super) fn close(&self) {
        let (submitters, workers) = {
            let mut queue = self.queue();
            queue.closed = true;
            (
                queue.submitters.take_all(),
                std::mem::take(&mut queue.workers),
            )
        };
        for waker in submitters.into_iter().chain(workers) {
            waker.wake();
        }
    }
}

/// Closes the pool when its owner goes, with or without `shutdown`: workers never outlive
/// it waiting for jobs nobody can submit through the pool.
pub(super) struct CloseOnDrop<J, T>(pub(super) Arc<Shared<J, T>>);

impl<J, T> Drop for CloseOnDrop<J, T> {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// Submits to a [`WorkerPool`](super::WorkerPool) from anywhere; cheap to clone.
pub struct Submitter<J, T> {
    pub(super) shared: Arc<Shared<J, T>>,
}

impl<J, T> Clone for Submitter<J, T> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<J, T> std::fmt::Debug for Submitter<J, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Submitter").finish_non_exhaustive()
    }
}

impl<J, T> Submitter<J, T> {
    /// Queues `job`, waiting while the queue is full (backpressure).
    ///
    /// **Cancel safety:** dropping the future before it resolves drops `job` unqueued, and
    /// its waker with it: the pool holds one waker per producer waiting now, however many
    /// gave up.
    ///
    /// # Errors
    ///
    /// [`SubmitError::Closed`] with the job once the pool is shutting down (also when it
    /// closes while this waits for room).
    pub async fn submit(&self, job: J) -> Result<JobHandle<T>, SubmitError<J>> {
        submit(&self.shared, job).await
    }

    /// Queues `job` if there is room now.
    ///
    /// # Errors
    ///
    /// [`SubmitError::Full`] or [`SubmitError::Closed`], with the job.
    pub fn try_submit(&self, job: J) -> Result<JobHandle<T>, SubmitError<J>> {
        try_submit(&self.shared, job)
    }
}

pub(super) async fn submit<J, T>(
    shared: &Shared<J, T>,
    job: J,
) -> Result<JobHandle<T>, SubmitError<J>> {
    let mut job = Some(job);
    // Freed when this future resolves or is dropped, so a producer that gives up leaves no
    // waker behind.
    let mut slot = HeldSlot::new(|key: &mut Option<usize>| shared.queue().submitters.free(key));
    std::future::poll_fn(|cx| {
        let mut queue = shared.queue();
        let Some(j) = job.take() else {
            return Poll::Pending;
        };
        if queue.closed {
            queue.submitters.free(&mut slot.key);
            return Poll::Ready(Err(SubmitError::Closed(j)));
        }
        if queue.jobs.len() < shared.capacity {
            queue.submitters.free(&mut slot.key);
            let (handle, worker) = enqueue(shared, &mut queue, j);
            drop(queue);
            if let Some(worker) = worker {
                worker.wake();
            }
            return Poll::Ready(Ok(handle));
        }
        job = Some(j);
        queue.submitters.register(&mut slot.key, cx.waker());
        Poll::Pending
    })
    .await
}

pub(super) fn try_submit<J, T>(
    shared: &Shared<J, T>,
    job: J,
) -> Result<JobHandle<T>, SubmitError<J>> {
    let mut queue = shared.queue();
    if queue.closed {
        return Err(SubmitError::Closed(job));
    }
    if queue.jobs.len() >= shared.capacity {
        return Err(SubmitError::Full(job));
    }
    let (handle, worker) = enqueue(shared, &mut queue, job);
    drop(queue);
    if let Some(worker) = worker {
        worker.wake();
    }
    Ok(handle)
}

/// Queues a job; returns its handle and an idle worker to wake once the lock is released.
fn enqueue<J, T>(
    shared: &Shared<J, T>,
    queue: &mut Queue<J, T>,
    job: J,
) -> (JobHandle<T>, Option<Waker>) {
    let (tx, rx) = oneshot::channel();
    queue.jobs.push_back((job, tx));
    shared.submitted.fetch_add(1, Relaxed);
    (JobHandle { rx }, queue.workers.pop())
}
