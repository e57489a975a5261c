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

use super::caught::{Caught, Output};
use super::{JoinError, Panic};

/// Wraps `future` so that a panic becomes [`JoinError::Panicked`] and an abort through the
/// returned handle becomes [`JoinError::Cancelled`].
pub(super) fn catching<F: Future>(future: F) -> (Catching<F>, AbortHandle) {
    let (handle, registration) = AbortHandle::new_pair();
    (
        Catching {
            future: Box::pin(Caught::new(Abortable::new(future, registration))),
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
/// Its [`Caught`] drops the inner future inside the poll's panic guard as soon as it is done,
/// as tokio does: a panic while dropping an aborted future, or one that returned, makes the
/// task [`JoinError::Panicked`] with that payload. A future the executor drops unfinished (its
/// executor was dropped) is dropped with a panic of its `Drop` ignored: the handle then reads
/// `Cancelled`, since async-task leaves no way to hand it a result.
pub(super) struct Catching<F: Future> {
    future: Pin<Box<Caught<Abortable<F>>>>,
}

impl<F: Future> Future for Catching<F> {
    type Output = Output<F::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.future.as_mut().poll(cx).map(|caught| {
            Output::new(match caught {
                Ok(Ok(value)) => Ok(value),
                Ok(Err(Aborted)) => Err(JoinError::Cancelled),
                Err(payload) => Err(JoinError::Panicked(Panic::new(payload))),
            })
        })
    }
}
