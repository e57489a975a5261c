//! A bounded worker pool: N workers, a bounded queue, backpressure, and a shutdown that
//! accounts for every job.

mod builder;
mod queue;
mod report;
mod worker;

use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::Poll;
use std::time::Duration;

use crate::rt::{DefaultRuntime, Runtime, TaskHandle};
use crate::task::Exit;
use crate::time::FutureExt as _;

pub use builder::WorkerPoolBuilder;
pub use queue::Submitter;
use queue::{Shared, submit, try_submit};
pub use report::{JobHandle, PoolReport, SubmitError};

/// A fixed set of workers running jobs from a bounded queue.
///
/// * [`submit`](Self::submit) waits for room in the queue (backpressure; waiting producers
///   are all woken when room frees, so the order among them is not FIFO);
///   [`try_submit`](Self::try_submit) hands the job back at once when it is full.
/// * Each job runs with an optional timeout; its [`JobHandle`] reports its [`Exit`] (a
///   timeout is `Exit::Err`). A panicking job is reported as [`Exit::Panicked`] and the
///   worker goes on with the next job (jobs share no state, so a caught panic leaves nothing
///   behind to replace). So it does when a job's destructors panic: those of a job its
///   timeout drops, or of a value whose handle was dropped (the job keeps the exit it was
///   reported with, and the panic is not reported).
/// * A worker whose task its runtime drops (the runtime shutting down) is not replaced: its
///   job resolves [`Exit::Aborted`] and counts as failed and aborted, the other workers go on
///   with the queue, and whatever is still queued at [`shutdown`](Self::shutdown) is handed
///   back, as always.
/// * [`shutdown`](Self::shutdown) stops accepting, drains the queue within a deadline, aborts
///   what still runs, and hands back every job never started: `submitted = completed +
///   failed + handed back`, always.
/// * Dropped without `shutdown` (an early return, a panic), the pool closes: a
///   [`Submitter`] gets [`SubmitError::Closed`], and the workers run what is queued, then
///   stop (detached, nothing aborted), rather than wait for jobs for ever.
///
/// ```
/// use std::time::Duration;
/// use tidewall::rt::Tokio;
/// use tidewall::task::{Exit, pool::WorkerPool};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let pool = WorkerPool::builder()
///     .workers(4)
///     .queue(100)
///     .runtime(Tokio)
///     .start(|n: u64| async move { n * n })?;
/// let job = pool.submit(7).await?;
/// assert!(matches!(job.await, Exit::Ok(49)));
/// let report = pool.shutdown(Duration::from_secs(5)).await;
/// assert_eq!((report.submitted, report.completed), (1, 1));
/// # Ok(()) }
/// ```
pub struct WorkerPool<J, T, R = DefaultRuntime> {
    shared: Arc<Shared<J, T>>,
    // Boxed (once, at start) so the pool's type needs no bound on its runtime; in a `Mutex`
    // only to keep the pool `Sync` (handles need not be): it is reached by value in
    // `shutdown`, never locked while the pool runs.
    workers: Mutex<Vec<Worker>>,
    rt: R,
    closer: queue::CloseOnDrop<J, T>,
}

type Worker = Box<dyn TaskHandle<()>>;

impl<J, T, R> std::fmt::Debug for WorkerPool<J, T, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerPool")
            .field(
                "workers",
                &self
                    .workers
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .len(),
            )
            .field("capacity", &self.shared.capacity)
            .field("queued", &self.shared.queue().jobs.len())
            .finish_non_exhaustive()
    }
}

impl<J, T, R> WorkerPool<J, T, R>
where
    J: Send + 'static,
    T: Send + 'static,
    R: Runtime,
{
    /// A cloneable handle that submits to this pool, for producers elsewhere; it sees
    /// [`SubmitError::Closed`] once the pool shuts down.
    pub fn submitter(&self) -> Submitter<J, T> {
        Submitter {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Queues `job`, waiting while the queue is full. See [`Submitter::submit`].
    ///
    /// **Cancel safety:** dropping the future before it resolves drops `job` unqueued, and
    /// its waker with it: the pool holds one waker per producer waiting now, however many
    /// gave up.
    ///
    /// # Errors
    ///
    /// [`SubmitError::Closed`] with the job once the pool is shutting down.
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

    /// Jobs waiting in the queue.
    pub fn queued(&self) -> usize {
        self.shared.queue().jobs.len()
    }

    /// Jobs running now.
    pub fn running(&self) -> usize {
        self.shared.running.load(Relaxed)
    }

    /// Stops accepting jobs, lets the workers drain the queue for up to `drain`, then aborts
    /// what still runs and hands back the jobs never started.
    ///
    /// **Cancel safety:** dropped during the drain, the future leaves the pool closed and its
    /// workers running until the queue is empty (detached, not aborted). Dropped after the
    /// drain's end, the workers are already aborted and every job never started already
    /// resolved `Exit::Aborted`; only the report is lost.
    ///
    /// An abort takes effect at a job's next await: a job that never yields keeps its worker,
    /// and this future, until it returns.
    pub async fn shutdown(self, drain: Duration) -> PoolReport<J> {
        let Self {
            shared,
            workers,
            rt,
            closer: _closer,
        } = self;
        shared.close();
        // Each handle is awaited at most once: finished ones are taken out as they finish.
        let workers = workers.into_inner().unwrap_or_else(PoisonError::into_inner);
        let mut workers: Vec<Option<Worker>> = workers.into_iter().map(Some).collect();
        let all_finished = std::future::poll_fn(|cx| {
            for slot in &mut workers {
                if let Some(worker) = slot
                    && Pin::new(worker).poll(cx).is_ready()
                {
                    *slot = None;
                }
            }
            if workers.iter().all(Option::is_none) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        });
        let drained = all_finished.timeout_on(&rt, drain).await;
        if drained.is_err() {
            for worker in workers.iter().flatten() {
                worker.abort();
            }
        }
        // Taken whole, so the handles are told outside the lock; taken before the aborted
        // workers are awaited, so a future dropped during that wait has told them already.
        // (An aborted worker takes no job: the queue is closed, and it stops at its next
        // await.)
        let never_run = std::mem::take(&mut shared.queue().jobs);
        let handed_back = never_run
            .into_iter()
            .map(|(job, result)| {
                let _ = result.send(Exit::Aborted);
                job
            })
            .collect();
        if drained.is_err() {
            // Each aborted worker's job counts itself as aborted when its future is dropped.
            for worker in workers.into_iter().flatten() {
                let _ = worker.await;
            }
        }
        PoolReport {
            submitted: shared.submitted.load(Relaxed),
            completed: shared.completed.load(Relaxed),
            failed: shared.failed.load(Relaxed),
            aborted: shared.aborted.load(Relaxed),
            handed_back,
        }
    }
}
