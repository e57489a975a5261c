//! The join handle contract shared by every adapter.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

/// A spawned task's handle: a future of the task's result, plus [`TaskHandle::abort`].
///
/// Dropping the handle detaches the task; it keeps running to completion.
pub trait TaskHandle<T>: Future<Output = Result<T, JoinError>> + Send + Unpin + 'static {
    /// Requests cancellation. The task is dropped at its next await point, and awaiting the
    /// handle afterwards yields [`JoinError::Cancelled`] unless the task had already
    /// finished (or its drop panicked: then [`JoinError::Panicked`], see
    /// [`Spawn`](super::Spawn)). A blocking task has no await point: aborting it does not stop it, it runs
    /// to completion and awaiting the handle yields its result (on tokio, one that has not
    /// started yet may never start, and then yields `Cancelled`).
    fn abort(&self);

    /// The task's result if it has finished, `None` while it runs, without waiting. After it
    /// has given the result once, what a handle answers is the adapter's, as for any future
    /// polled after it completed (tokio's panics; smol's and `Clocked`'s answer
    /// [`JoinError::Cancelled`]). The supervisor's and the shutdown's stops use it to tell a
    /// task that ended on its own from one they stop.
    ///
    /// The provided method polls the handle once with a waker that does nothing, so for a
    /// task still running it replaces a waker an earlier poll of the handle registered: poll
    /// the handle again before waiting on it. The tokio, smol and [`Clocked`] handles
    /// override it to read a running task without a poll, and leave an earlier poll's waker
    /// in place (smol's but for a task its executor is dropping, which reads as finished
    /// while its future is dropped: then it is polled, and answers `None`); tokio's also
    /// reads past tokio's cooperative budget (about 128 polls a turn), within which a
    /// finished task's handle polled late in a turn would read as pending.
    /// The async-std handle keeps the provided method.
    ///
    /// [`Clocked`]: crate::testing::Clocked
    ///
    /// ```
    /// use tidewall::rt::{Spawn, TaskHandle, Tokio};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    /// let mut handle = Tokio.spawn(async move { rx.await.is_ok() });
    /// tokio::task::yield_now().await;
    /// assert!(handle.try_join().is_none(), "still waiting");
    /// tx.send(()).unwrap();
    /// tokio::task::yield_now().await;
    /// assert!(handle.try_join().unwrap().unwrap(), "finished");
    /// # }
    /// ```
    fn try_join(&mut self) -> Option<Result<T, JoinError>> {
        poll_now(self)
    }
}

/// `future`'s output if one poll with a waker that does nothing gives it.
pub(crate) fn poll_now<F: Future + Unpin + ?Sized>(future: &mut F) -> Option<F::Output> {
    let mut cx = Context::from_waker(Waker::noop());
    match Pin::new(future).poll(&mut cx) {
        Poll::Ready(output) => Some(output),
        Poll::Pending => None,
    }
}

/// Why a task did not produce its value.
#[derive(Debug)]
#[non_exhaustive]
pub enum JoinError {
    /// The task panicked; the payload is kept so it can be inspected or re-raised.
    Panicked(Panic),
    /// The task was aborted, or its runtime shut down before it finished.
    Cancelled,
}

impl JoinError {
    /// Whether the task panicked.
    pub fn is_panic(&self) -> bool {
        matches!(self, Self::Panicked(_))
    }

    /// Whether the task was cancelled.
    pub fn is_cancelled(&self) -> bool {
        matches!(self, Self::Cancelled)
    }
}

impl fmt::Display for JoinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Panicked(panic) => match panic.message() {
                Some(message) => write!(f, "task panicked: {message}"),
                None => f.write_str("task panicked"),
            },
            Self::Cancelled => f.write_str("task was cancelled"),
        }
    }
}

impl std::error::Error for JoinError {}

/// The payload of a panic that was caught at a task boundary.
pub struct Panic(Box<dyn Any + Send + 'static>);

impl Panic {
    /// Wraps a payload from [`std::panic::catch_unwind`].
    pub fn new(payload: Box<dyn Any + Send + 'static>) -> Self {
        Self(payload)
    }

    /// The panic message, when the payload is a string (as with `panic!("...")`).
    pub fn message(&self) -> Option<&str> {
        self.0
            .downcast_ref::<&'static str>()
            .copied()
            .or_else(|| self.0.downcast_ref::<String>().map(String::as_str))
    }

    /// The raw payload, e.g. for [`std::panic::resume_unwind`].
    pub fn into_payload(self) -> Box<dyn Any + Send + 'static> {
        self.0
    }
}

impl fmt::Debug for Panic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Panic")
            .field(&self.message().unwrap_or("<non-string payload>"))
            .finish()
    }
}
