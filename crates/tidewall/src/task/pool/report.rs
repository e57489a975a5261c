//! What a pool tells its callers: how each job ended, why a job was refused, and what a
//! shutdown found.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_channel::oneshot;

use crate::rt::Panic;

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

/// The result of one job: await it for the [`JobOutcome`].
///
/// Dropping it does not cancel the job (the pool still runs it).
#[derive(Debug)]
pub struct JobHandle<T> {
    pub(super) rx: oneshot::Receiver<JobOutcome<T>>,
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
