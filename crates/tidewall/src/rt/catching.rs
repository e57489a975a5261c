//! Panic catching and abort for executors whose tasks do not report them uniformly
//! (smol and async-std): the spawned future is wrapped so its output is already a
//! `Result<T, JoinError>`.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::FutureExt;
use futures_util::future::{AbortHandle, Abortable, Aborted};

use super::{JoinError, Panic};

/// Wraps `future` so that a panic becomes [`JoinError::Panicked`] and an abort through the
/// returned handle becomes [`JoinError::Cancelled`].
pub(super) fn catching<F: Future>(future: F) -> (Catching<F>, AbortHandle) {
    let (handle, registration) = AbortHandle::new_pair();
    let inner = AssertUnwindSafe(Abortable::new(future, registration)).catch_unwind();
    (
        Catching {
            inner: Box::pin(inner),
        },
        handle,
    )
}

/// Runs blocking work, turning a panic into [`JoinError::Panicked`].
pub(super) fn catching_blocking<T>(work: impl FnOnce() -> T) -> Result<T, JoinError> {
    std::panic::catch_unwind(AssertUnwindSafe(work)).map_err(|p| JoinError::Panicked(Panic::new(p)))
}

type Inner<F> = futures_util::future::CatchUnwind<AssertUnwindSafe<Abortable<F>>>;

/// The wrapped task future. Boxed once at spawn (the executor boxes the task anyway).
pub(super) struct Catching<F: Future> {
    inner: Pin<Box<Inner<F>>>,
}

impl<F: Future> Future for Catching<F> {
    type Output = Result<F::Output, JoinError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx).map(|caught| match caught {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(Aborted)) => Err(JoinError::Cancelled),
            Err(payload) => Err(JoinError::Panicked(Panic::new(payload))),
        })
    }
}
