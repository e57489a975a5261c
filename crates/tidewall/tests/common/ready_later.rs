//! `ReadyLater`: a join handle that reports its result one poll late, for runtimes whose
//! blocking work runs at once: every await point of the caller becomes an exact, repeatable
//! suspension. `None` reports `JoinError::Cancelled`.
#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tidewall::rt::{JoinError, TaskHandle};

pub struct ReadyLater<T> {
    result: Option<T>,
    polled: bool,
}

impl<T> ReadyLater<T> {
    /// The job's result, or `None` for a job dropped unrun.
    pub fn new(result: Option<T>) -> Self {
        Self {
            result,
            polled: false,
        }
    }
}

// `ReadyLater` never pins its value.
impl<T> Unpin for ReadyLater<T> {}

impl<T> Future for ReadyLater<T> {
    type Output = Result<T, JoinError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if !self.polled {
            self.polled = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        Poll::Ready(self.result.take().ok_or(JoinError::Cancelled))
    }
}

impl<T: Send + 'static> TaskHandle<T> for ReadyLater<T> {
    fn abort(&self) {}
}
