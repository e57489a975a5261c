//! A bounded worker pool: N workers, a bounded queue, backpressure, and a shutdown that
//! accounts for every job.

use std::collections::VecDeque;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures_channel::oneshot;
use futures_util::FutureExt as _;

use crate::ConfigError;
use crate::rt::{DefaultRuntime, Panic, Runtime, TaskHandle};
use crate::time::FutureExt as _;

/// How a job ended.
#[derive(Debug)]
#[non_exhaustive]
pub enum JobOutcome<T> {
    /// It ran to completion.
    Completed(T),
    /// It panicked (the worker goes on with the next job).
    Panicked(Panic),
    /// It exceeded the per-job timeout and was dropped.
    TimedOut,
    /// The pool was shut down while it ran, past the drain deadline, and it was aborted.
    Aborted,
    /// The pool was shut down before it started: the job itself is in
    /// [`PoolReport::handed_back`].
    HandedBack,
}

/// Why a job was not queued: the job comes back, never lost.
#[derive(Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SubmitError<J> {
    /// The queue is full (only from [`WorkerPool::try_submit`]).
    Full(J),
    /// The pool is shutting down.
    Closed(J),
}

impl<J> SubmitError<J> {
    /// The job, handed back.
    pub fn into_job(self) -> J {
        match self {
            Self::Full(job) | Self::Closed(job) => job,
        }
    }
}

impl<J> std::fmt::Display for SubmitError<J> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Full(_) => "the worker pool's queue is full",
            Self::Closed(_) => "the worker pool is shutting down",
        })
    }
}

impl<J: std::fmt::Debug> std::error::Error for SubmitError<J> {}

/// The result of one job: await it for the [`JobOutcome`].
///
/// Dropping it does not cancel the job (the pool still runs it).
#[derive(Debug)]
pub struct JobHandle<T> {
    rx: oneshot::Receiver<JobOutcome<T>>,
}

impl<T> Future for JobHandle<T> {
    type Output = JobOutcome<T>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<JobOutcome<T>> {
        // A dropped sender means the worker running it was aborted at shutdown.
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(|r| r.unwrap_or(JobOutcome::Aborted))
    }
}

/// What a shutdown found: every job ever submitted is in exactly one of these.
#[derive(Debug)]
#[non_exhaustive]
pub struct PoolReport<J> {
    /// Jobs submitted over the pool's life.
    pub submitted: u64,
    /// Jobs that ran to completion.
    pub completed: u64,
    /// Jobs that panicked, timed out, or were aborted at the deadline.
    pub failed: u64,
    /// Of `failed`, those aborted at the drain deadline.
    pub aborted: u64,
    /// Jobs never started, handed back (dead letters) in submission order.
    pub handed_back: Vec<J>,
}

/// The most workers a pool starts: each is spawned (and its handle kept) up front, so an
/// unbounded count would spawn without end or overflow the handles' allocation.
const MAX_WORKERS: usize = 1 << 16;

type Queued<J, T> = (J, oneshot::Sender<JobOutcome<T>>);

struct Queue<J, T> {
    jobs: VecDeque<Queued<J, T>>,
    closed: bool,
    submitters: Vec<Waker>,
    workers: Vec<Waker>,
}

struct Shared<J, T> {
    queue: Mutex<Queue<J, T>>,
    capacity: usize,
    submitted: AtomicU64,
    completed: AtomicU64,
    failed: AtomicU64,
    running: AtomicUsize,
}

impl<J, T> Shared<J, T> {
    fn queue(&self) -> MutexGuard<'_, Queue<J, T>> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A fixed set of workers running jobs from a bounded queue.
///
/// * [`submit`](Self::submit) waits for room in the queue (backpressure; waiting producers
///   are all woken when room frees, so the order among them is not FIFO);
///   [`try_submit`](Self::try_submit) hands the job back at once when it is full.
/// * Each job runs with an optional timeout; its [`JobHandle`] reports the [`JobOutcome`]. A
///   panicking job is reported as [`JobOutcome::Panicked`] and the worker goes on with the
///   next job (jobs share no state, so a caught panic leaves nothing behind to replace).
/// * [`shutdown`](Self::shutdown) stops accepting, drains the queue within a deadline, aborts
///   what still runs, and hands back every job never started: `submitted = completed +
///   failed + handed back`, always.
///
/// ```
/// use std::time::Duration;
/// use tidewall::rt::Tokio;
/// use tidewall::task::pool::{JobOutcome, WorkerPool};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let pool = WorkerPool::builder()
///     .workers(4)
///     .queue(100)
///     .runtime(Tokio)
///     .start(|n: u64| async move { n * n })?;
/// let job = pool.submit(7).await?;
/// assert!(matches!(job.await, JobOutcome::Completed(49)));
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
}

type Worker = Box<dyn TaskHandle<()>>;

impl WorkerPool<(), ()> {
    /// Configures a pool: by default as many workers as the machine runs threads in parallel
    /// (`std::thread::available_parallelism`, 1 if unknown), a queue of 100 jobs and no job
    /// timeout, on the default runtime.
    pub fn builder() -> WorkerPoolBuilder {
        WorkerPoolBuilder {
            rt: DefaultRuntime::default(),
            workers: std::thread::available_parallelism().map_or(1, usize::from),
            queue: 100,
            job_timeout: None,
        }
    }
}

/// Configures a [`WorkerPool`]; see [`WorkerPool::builder`].
#[must_use]
#[derive(Debug, Clone)]
pub struct WorkerPoolBuilder<R = DefaultRuntime> {
    rt: R,
    workers: usize,
    queue: usize,
    job_timeout: Option<Duration>,
}

impl<R> WorkerPoolBuilder<R> {
    /// How many workers run jobs at once (at most 65,536: each is a task spawned at start).
    pub fn workers(mut self, workers: usize) -> Self {
        self.workers = workers;
        self
    }

    /// How many jobs may wait for a worker (default 100).
    pub fn queue(mut self, queue: usize) -> Self {
        self.queue = queue;
        self
    }

    /// Bounds each job (default: none); a job that runs longer ends as
    /// [`JobOutcome::TimedOut`].
    pub fn job_timeout(mut self, timeout: Duration) -> Self {
        self.job_timeout = Some(timeout);
        self
    }

    /// Spawns the workers on `rt`.
    pub fn runtime<R2: Runtime>(self, rt: R2) -> WorkerPoolBuilder<R2> {
        WorkerPoolBuilder {
            rt,
            workers: self.workers,
            queue: self.queue,
            job_timeout: self.job_timeout,
        }
    }
}

impl<R: Runtime> WorkerPoolBuilder<R> {
    /// Starts the workers, each running `handler(job)` for the jobs it takes from the
    /// queue, each bounded by the job timeout if one is set.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Zero`] for zero workers, a zero queue or a zero timeout;
    /// [`ConfigError::OutOfRange`] for more than 65,536 workers;
    /// [`ConfigError::DurationOverflow`] for a timeout beyond `u64::MAX` nanoseconds.
    pub fn start<J, T, F, Fut>(self, handler: F) -> Result<WorkerPool<J, T, R>, ConfigError>
    where
        J: Send + 'static,
        T: Send + 'static,
        F: Fn(J) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = T> + Send + 'static,
    {
        let Self {
            rt,
            workers,
            queue,
            job_timeout,
        } = self;
        if workers == 0 {
            return Err(ConfigError::Zero { field: "workers" });
        }
        if workers > MAX_WORKERS {
            return Err(ConfigError::OutOfRange {
                field: "workers",
                value: workers as f64,
                allowed: "<= 65536",
            });
        }
        if queue == 0 {
            return Err(ConfigError::Zero { field: "queue" });
        }
        if let Some(limit) = job_timeout {
            crate::time::positive_duration("job_timeout", limit)?;
        }
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                jobs: VecDeque::with_capacity(queue.min(4096)),
                closed: false,
                submitters: Vec::new(),
                workers: Vec::new(),
            }),
            capacity: queue,
            submitted: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            running: AtomicUsize::new(0),
        });
        let handler = Arc::new(handler);
        let workers = (0..workers)
            .map(|_| {
                let (shared, handler, rt2) =
                    (Arc::clone(&shared), Arc::clone(&handler), rt.clone());
                let worker: Worker = Box::new(
                    rt.spawn(async move { work(shared, handler, rt2, job_timeout).await }),
                );
                worker
            })
            .collect();
        Ok(WorkerPool {
            shared,
            workers: Mutex::new(workers),
            rt,
        })
    }
}

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
    /// **Cancel safety:** dropping the future before it resolves drops `job` unqueued.
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
    /// **Cancel safety:** dropping the future mid-way leaves the pool closed and its workers
    /// running until the queue is empty (they are detached, not aborted).
    pub async fn shutdown(self, drain: Duration) -> PoolReport<J> {
        let (submitters, workers) = {
            let mut queue = self.shared.queue();
            queue.closed = true;
            (
                std::mem::take(&mut queue.submitters),
                std::mem::take(&mut queue.workers),
            )
        };
        for waker in submitters.into_iter().chain(workers) {
            waker.wake();
        }
        let Self {
            shared,
            workers,
            rt,
        } = self;
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
        let mut aborted = 0;
        if drained.is_err() {
            for worker in workers.iter().flatten() {
                worker.abort();
            }
            for worker in workers.into_iter().flatten() {
                let _ = worker.await;
            }
            // Every worker has stopped: what is still counted as running was aborted.
            aborted = shared.running.swap(0, Relaxed) as u64;
            shared.failed.fetch_add(aborted, Relaxed);
        }
        let never_run: Vec<_> = shared.queue().jobs.drain(..).collect();
        let handed_back = never_run
            .into_iter()
            .map(|(job, result)| {
                let _ = result.send(JobOutcome::HandedBack);
                job
            })
            .collect();
        PoolReport {
            submitted: shared.submitted.load(Relaxed),
            completed: shared.completed.load(Relaxed),
            failed: shared.failed.load(Relaxed),
            aborted,
            handed_back,
        }
    }
}

/// Submits to a [`WorkerPool`] from anywhere; cheap to clone.
pub struct Submitter<J, T> {
    shared: Arc<Shared<J, T>>,
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
    /// **Cancel safety:** dropping the future before it resolves drops `job` unqueued.
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

async fn submit<J, T>(shared: &Shared<J, T>, job: J) -> Result<JobHandle<T>, SubmitError<J>> {
    let mut job = Some(job);
    std::future::poll_fn(|cx| {
        let mut queue = shared.queue();
        let Some(j) = job.take() else {
            return Poll::Pending;
        };
        if queue.closed {
            return Poll::Ready(Err(SubmitError::Closed(j)));
        }
        if queue.jobs.len() < shared.capacity {
            let (handle, worker) = enqueue(shared, &mut queue, j);
            drop(queue);
            if let Some(worker) = worker {
                worker.wake();
            }
            return Poll::Ready(Ok(handle));
        }
        job = Some(j);
        if !queue.submitters.iter().any(|w| w.will_wake(cx.waker())) {
            queue.submitters.push(cx.waker().clone());
        }
        Poll::Pending
    })
    .await
}

fn try_submit<J, T>(shared: &Shared<J, T>, job: J) -> Result<JobHandle<T>, SubmitError<J>> {
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

/// One worker: take a job, run it (timed, panics caught), report, repeat until closed and
/// empty.
async fn work<J, T, F, Fut, R>(
    shared: Arc<Shared<J, T>>,
    handler: Arc<F>,
    rt: R,
    timeout: Option<Duration>,
) where
    F: Fn(J) -> Fut,
    Fut: Future<Output = T>,
    R: Runtime,
{
    loop {
        let next = std::future::poll_fn(|cx| {
            let mut queue = shared.queue();
            if let Some(job) = queue.jobs.pop_front() {
                shared.running.fetch_add(1, Relaxed);
                // This worker is busy now: an entry it left earlier must not absorb a wake-up
                // meant for an idle one.
                queue.workers.retain(|w| !w.will_wake(cx.waker()));
                // Room freed: wake every waiting producer (after the lock). Waking all, not
                // one, means a producer that gave up cannot swallow the wake-up of another.
                let producers = std::mem::take(&mut queue.submitters);
                drop(queue);
                for producer in producers {
                    producer.wake();
                }
                return Poll::Ready(Some(job));
            }
            if queue.closed {
                return Poll::Ready(None);
            }
            if !queue.workers.iter().any(|w| w.will_wake(cx.waker())) {
                queue.workers.push(cx.waker().clone());
            }
            Poll::Pending
        })
        .await;
        let Some((job, report)) = next else {
            return;
        };
        // The handler is called inside the caught future: a panic before its first await is
        // caught like any other.
        let run = AssertUnwindSafe(async { handler(job).await }).catch_unwind();
        let outcome = match timeout {
            Some(limit) => match run.timeout_on(&rt, limit).await {
                Ok(done) => done.map_or_else(
                    |p| JobOutcome::Panicked(Panic::new(p)),
                    JobOutcome::Completed,
                ),
                Err(_) => JobOutcome::TimedOut,
            },
            None => run.await.map_or_else(
                |p| JobOutcome::Panicked(Panic::new(p)),
                JobOutcome::Completed,
            ),
        };
        shared.running.fetch_sub(1, Relaxed);
        if matches!(outcome, JobOutcome::Completed(_)) {
            shared.completed.fetch_add(1, Relaxed);
        } else {
            shared.failed.fetch_add(1, Relaxed);
        }
        let _ = report.send(outcome);
    }
}
