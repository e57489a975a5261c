//! A task's future with every panic of its own caught, as tokio catches a task's: in `poll`,
//! and in its `Drop` once it is done. The adapters that catch panics themselves (smol,
//! async-std, `Clocked`), scopes and fan-outs run work this way, so that a future that returns
//! and then panics while it is dropped reads `Panicked` with that payload everywhere, instead
//! of unwinding through an executor (async-task aborts the process then) or a pattern's own
//! bookkeeping (where it would be taken for an abort).

use std::any::Any;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;

/// A caught panic's payload.
pub(crate) type Payload = Box<dyn Any + Send + 'static>;

pin_project! {
    /// Resolves to the future's output, or the payload of its panic: in a poll, or in its
    /// `Drop` right after the poll that finished it (the output is then dropped, a panic of
    /// its own `Drop` ignored). After a panic in a poll, the future is dropped while that panic
    /// unwinds, as tokio drops it (a second panic there aborts the process, as on tokio).
    /// Pending for ever once it has resolved.
    /// Dropped unfinished, it drops the future with a panic of its `Drop` ignored (take it
    /// first with [`drop_future`](Self::drop_future) to see it).
    pub(crate) struct Caught<F> {
        // `None` once done or dropped early.
        #[pin]
        future: Option<F>,
    }

    impl<F> PinnedDrop for Caught<F> {
        fn drop(this: Pin<&mut Self>) {
            let _ = this.drop_future();
        }
    }
}

impl<F> Caught<F> {
    pub(crate) fn new(future: F) -> Self {
        Self {
            future: Some(future),
        }
    }

    /// Drops the future now, if it is still there, returning the payload of a panic in its
    /// `Drop` (assigning `None` leaves the slot empty even when that drop unwinds).
    pub(crate) fn drop_future(self: Pin<&mut Self>) -> Result<(), Payload> {
        let mut slot = self.project().future;
        if slot.is_none() {
            return Ok(());
        }
        catch_unwind(AssertUnwindSafe(|| slot.set(None)))
    }
}

impl<F: Future> Future for Caught<F> {
    type Output = Result<F::Output, Payload>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let slot = self.as_mut().project().future;
        if slot.is_none() {
            return Poll::Pending;
        }
        let polled = catch_unwind(AssertUnwindSafe(move || {
            // Dropped while a panic of its poll unwinds, as tokio drops a task's future: what
            // it holds sees the panic (a `MutexGuard` poisons its lock).
            let mut guard = EmptyOnUnwind(slot);
            let polled = guard.0.as_mut().as_pin_mut().map(|future| future.poll(cx));
            std::mem::forget(guard);
            polled.unwrap_or(Poll::Pending)
        }));
        let output = match polled {
            Ok(Poll::Pending) => return Poll::Pending,
            Ok(Poll::Ready(output)) => output,
            Err(payload) => return Poll::Ready(Err(payload)),
        };
        Poll::Ready(match self.drop_future() {
            Ok(()) => Ok(output),
            Err(payload) => {
                let _ = catch_unwind(AssertUnwindSafe(|| drop(output)));
                Err(payload)
            }
        })
    }
}

/// Empties the slot when dropped: while a panic of the future's poll unwinds.
struct EmptyOnUnwind<'a, F>(Pin<&'a mut Option<F>>);

impl<F> Drop for EmptyOnUnwind<'_, F> {
    fn drop(&mut self) {
        self.0.set(None);
    }
}

/// A task's result as the executor stores it. Dropping it unread (the task was detached, or
/// its handle dropped after it finished) catches and ignores a panic of the value's `Drop`,
/// as tokio does, where async-task would abort the process (detached) or the panic would
/// leave the handle's `drop`.
#[cfg(any(feature = "smol", feature = "async-std", feature = "test-util"))]
#[derive(Debug)]
pub(crate) struct Output<T>(Option<Result<T, super::JoinError>>);

#[cfg(any(feature = "smol", feature = "async-std", feature = "test-util"))]
impl<T> Output<T> {
    pub(crate) fn new(result: Result<T, super::JoinError>) -> Self {
        Self(Some(result))
    }

    /// The result, for the handle that reads it.
    pub(crate) fn into_result(mut self) -> Result<T, super::JoinError> {
        // Always `Some`: only `Drop` and this take it.
        self.0.take().unwrap_or(Err(super::JoinError::Cancelled))
    }
}

#[cfg(any(feature = "smol", feature = "async-std", feature = "test-util"))]
impl<T> Drop for Output<T> {
    fn drop(&mut self) {
        if let Some(result) = self.0.take() {
            let _ = catch_unwind(AssertUnwindSafe(|| drop(result)));
        }
    }
}
