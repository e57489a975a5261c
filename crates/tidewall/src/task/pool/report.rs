//! What a pool tells its callers: how each job ended, why a job was refused, and what a
//! shutdown found.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_channel::oneshot;

use crate::rt::Panic;
use crate::task::Exit;
use crate::time::Elapsed;

/// How a job ended, as its [`JobHandle`] resolves.
pub(super) type JobExit<T> = Exit<T, Elapsed, Panic>;

/// Why a job was not queued: the job comes back, never lost.
#[derive(Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SubmitError<J> {
    /// The queue is full (only from [`WorkerPool::try_submit`](super::WorkerPool::try_submit)).
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

/// The result of one job: await it for an [`Exit<T, Elapsed, Panic>`](Exit).
///
/// * [`Exit::Ok`]: it ran to completion; its value.
/// * [`Exit::Err`]: it exceeded the per-job timeout
///   ([`WorkerPoolBuilder::job_timeout`](super::WorkerPoolBuilder::job_timeout)) and was
///   dropped; the [`Elapsed`].
/// * [`Exit::Panicked`]: it panicked; the payload (the worker goes on with the next job).
/// * [`Exit::Aborted`]: this job did not run to its end: it was still running at the drain
///   deadline and was aborted, or its worker's task was lost by its runtime (both counted in
///   [`PoolReport::aborted`]), or it had not started and was handed back at shutdown (the
///   job itself is in [`PoolReport::handed_back`]). The handle does not say which; the
///   report counts them apart.
///
/// Dropping it does not cancel the job (the pool still runs it).
///
/// ```
/// use std::time::Duration;
/// use tidewall::rt::Tokio;
/// use tidewall::task::{Exit, pool::WorkerPool};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let pool = WorkerPool::builder()
///     .workers(1)
///     .queue(10)
///     .job_timeout(Duration::from_secs(1))
///     .runtime(Tokio)
///     .start(|ms: u64| async move {
///         tokio::time::sleep(Duration::from_millis(ms)).await;
///         ms
///     })?;
/// let quick = pool.submit(10).await?;
/// let slow = pool.submit(5_000).await?;
/// assert!(matches!(quick.await, Exit::Ok(10)));
/// assert!(matches!(slow.await, Exit::Err(tidewall::time::Elapsed)));
/// pool.shutdown(Duration::from_secs(1)).await;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct JobHandle<T> {
    pub(super) rx: oneshot::Receiver<JobExit<T>>,
}

impl<T> Future for JobHandle<T> {
    type Output = Exit<T, Elapsed, Panic>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<JobExit<T>> {
        // A dropped sender means the worker running it was aborted at shutdown.
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(|r| r.unwrap_or(Exit::Aborted))
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
    /// Jobs that panicked, timed out, or were aborted (at the deadline, or lost with their
    /// worker).
    pub failed: u64,
    /// Of `failed`, those that never ended: aborted at the drain deadline, or lost with the
    /// worker running them (its task dropped by its runtime) (their handles read
    /// [`Exit::Aborted`]).
    pub aborted: u64,
    /// Jobs never started, handed back (dead letters) in submission order (their handles
    /// read [`Exit::Aborted`] too).
    pub handed_back: Vec<J>,
}
