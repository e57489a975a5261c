//! Panic catching and abort for executors whose tasks do not report them uniformly
//! (smol and async-std): the spawned future is wrapped so its output is already a
//! `Result<T, JoinError>`, and so that no panic of the task, in a poll or in a drop, reaches
//! async-task: it aborts the process when dropping a task's future, or the output of a
//! detached task, panics.

use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::future::{AbortHandle, Abortable, Aborted};

use super::drop_when_done::{Output, poll_then_drop};
use super::{JoinError, Panic};

/// Wraps `future` so that a panic becomes [`JoinError::Panicked`] and an abort through the
/// returned handle becomes [`JoinError::Cancelled`].
pub(super) fn catching<F: Future>(future: F) -> (Catching<F>, AbortHandle) {
    let (handle, registration) = AbortHandle::new_pair();
    (
        Catching {
            future: Some(Box::pin(Abortable::new(future, registration))),
        },
        handle,
    )
}

/// Runs blocking work, turning a panic into [`JoinError::Panicked`].
pub(super) fn catching_blocking<T>(work: impl FnOnce() -> T) -> Output<T> {
    Output::new(
        catch_unwind(AssertUnwindSafe(work)).map_err(|p| JoinError::Panicked(Panic::new(p))),
    )
}

/// The wrapped task future. Boxed once at spawn (the executor boxes the task anyway).
///
/// It drops the inner future itself, inside the same panic guard as the poll, as soon as the
/// future is done (ready, aborted, or panicked), as tokio does:
/// * a panic while dropping an aborted future makes the task [`JoinError::Panicked`] with that
///   payload, not `Cancelled`;
/// * a panic while dropping a future that returned `Ready` makes it `Panicked` too (the value
///   is dropped);
/// * a future that panicked in `poll` is dropped while that panic unwinds, and the task is
///   `Panicked` with the poll's payload.
///
/// A future the executor drops unfinished (its executor was dropped) is dropped in
/// [`Drop`], where a panic is caught and ignored: the handle then reads `Cancelled`, since
/// async-task leaves no way to hand it a result.
pub(super) struct Catching<F: Future> {
    /// `None` once the future is done.
    future: Option<Pin<Box<Abortable<F>>>>,
}

impl<F: Future> Future for Catching<F> {
    type Output = Output<F::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let slot = &mut self.future;
        let polled = catch_unwind(AssertUnwindSafe(|| poll_then_drop(slot, cx)));
        Poll::Ready(Output::new(match polled {
            Ok(Poll::Pending) => return Poll::Pending,
            Ok(Poll::Ready(Ok(value))) => Ok(value),
            Ok(Poll::Ready(Err(Aborted))) => Err(JoinError::Cancelled),
            Err(payload) => Err(JoinError::Panicked(Panic::new(payload))),
        }))
    }
}

impl<F: Future> Drop for Catching<F> {
    fn drop(&mut self) {
        if let Some(future) = self.future.take() {
            let _ = catch_unwind(AssertUnwindSafe(|| drop(future)));
        }
    }
}
