//! A finished task's parts dropped as tokio drops them, for the adapters that catch panics
//! themselves (smol, async-std, `Clocked`): its future inside the poll's panic guard once
//! done, and its result, if nobody reads it, with a panic of its `Drop` ignored.

use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::task::{Context, Poll};

use super::JoinError;

/// Polls the future in `slot` and empties the slot once the future is done, so that it is
/// dropped inside the caller's panic guard: a panic in its `Drop` after `Ready` is caught like
/// a panic in `poll`, and after a panic in `poll` it is dropped while that panic unwinds.
/// `Pending` if the slot is empty (only an executor that polls a finished task gets there).
pub(crate) fn poll_then_drop<F: Future>(
    slot: &mut Option<Pin<Box<F>>>,
    cx: &mut Context<'_>,
) -> Poll<F::Output> {
    let guard = DropOnUnwind(slot);
    let Some(future) = guard.0.as_mut() else {
        return Poll::Pending;
    };
    let poll = future.as_mut().poll(cx);
    if poll.is_ready() {
        *guard.0 = None;
    }
    std::mem::forget(guard);
    poll
}

/// Empties the slot when dropped: while a panic in the future's `poll` unwinds.
struct DropOnUnwind<'a, F>(&'a mut Option<Pin<Box<F>>>);

impl<F> Drop for DropOnUnwind<'_, F> {
    fn drop(&mut self) {
        *self.0 = None;
    }
}

/// A task's result as the executor stores it. Dropping it unread (the task was detached, or
/// its handle dropped after it finished) catches and ignores a panic of the value's `Drop`,
/// as tokio does, where async-task would abort the process (detached) or the panic would
/// leave the handle's `drop`.
#[derive(Debug)]
pub(crate) struct Output<T>(Option<Result<T, JoinError>>);

impl<T> Output<T> {
    pub(crate) fn new(result: Result<T, JoinError>) -> Self {
        Self(Some(result))
    }

    /// The result, for the handle that reads it.
    pub(crate) fn into_result(mut self) -> Result<T, JoinError> {
        // Always `Some`: only `Drop` and this take it.
        self.0.take().unwrap_or(Err(JoinError::Cancelled))
    }
}

impl<T> Drop for Output<T> {
    fn drop(&mut self) {
        if let Some(result) = self.0.take() {
            let _ = catch_unwind(AssertUnwindSafe(|| drop(result)));
        }
    }
}
