//! Bounded fan-out / fan-in: run a function over many inputs with at most N in flight.
//!
//! [`FanOut`] spawns each call as a task on the [runtime](crate::rt), so in-flight work keeps
//! running while the consumer of the results is busy: the failure mode of futures'
//! `buffer_unordered` (work only advances while the stream is polled, futures-rs #2387, which
//! deadlocks with semaphores held inside the buffered futures) cannot happen here.
//!
//! * **Bounded**: at most `limit` inputs are taken and not yet delivered (running, or finished
//!   and waiting for the consumer). The input stream is pulled only when a slot is free, so a
//!   slow consumer pauses the producer: backpressure, with memory bounded by `limit`. A
//!   result counts as delivered once the poll that returns it has taken it: that poll refills
//!   its slot before handing it over, so the next input runs while the consumer handles this
//!   result (at that moment `limit` inputs are taken, plus the result in hand).
//! * **Ordered or not**: [`FanOut::ordered`] delivers in input order (a slow head holds later
//!   results, within the bound); the default delivers in completion order.
//! * **Collect-all or fail-fast**: [`FanOut::run`] delivers every outcome, panics included as
//!   values (a task whose future returned and then panicked in its `Drop` reads
//!   `Err(JoinError::Panicked)` with that payload, its value dropped, as the same future
//!   spawned on the runtime does); [`FanOut::try_run`] stops at the first error or panic,
//!   aborts the tasks still running, takes no further input and ends after yielding that
//!   error. It takes no input once an error or panic has been reported by its task (checked
//!   before each input it takes), and aborts as soon as the stream is polled after that
//!   report, without waiting for the consumer to reach the error: every task still running,
//!   or for an [ordered](FanOut::ordered) fan-out, the tasks of later inputs (the earlier
//!   ones run on, and their results are yielded before the error).
//! * **!Send work**: [`FanOut::run_local`] runs the futures inside the consuming task instead
//!   (no spawning). Caveat: like `buffer_unordered`, that work advances *only while the stream
//!   is polled*; do not hold locks or permits across a slow consumer with it.
//!
//! **Cancel safety**: dropping the stream aborts every task still running (no orphaned work:
//! each is dropped at its next await point, as aborts take effect) and drops the inputs not
//! yet taken.
//!
//! ```
//! use futures_util::StreamExt;
//! use tidewall::fan_out::FanOut;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tidewall::ConfigError> {
//! let squares: Vec<u64> = FanOut::new(8)?
//!     .ordered()
//!     .run_iter(1..=100u64, |n| async move { n * n })
//!     .map(|result| result.expect("no task panicked"))
//!     .collect()
//!     .await;
//! assert_eq!(squares[..3], [1, 4, 9]);
//!
//! // Fail-fast: the first error ends the stream.
//! let mut results = FanOut::new(4)?.try_run_iter(0..1000, |n| async move {
//!     if n == 3 { Err("bad input") } else { Ok(n) }
//! });
//! let mut seen_error = false;
//! while let Some(result) = results.next().await {
//!     seen_error |= result.is_err();
//! }
//! assert!(seen_error);
//! # Ok(()) }
//! ```

mod completion;
mod error;
mod stream;

use std::future::Future;

use futures_core::Stream;
use tidewall_core::ConfigError;

pub use error::FanOutError;
pub use stream::{FanOutStream, LocalFanOut, TryFanOutStream};

use crate::rt::Runtime;

/// Whether results are delivered in input order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Order {
    Completion,
    Input,
}

/// Configuration of a bounded fan-out; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct FanOut<R = crate::rt::DefaultRuntime> {
    rt: R,
    limit: usize,
    order: Order,
}

impl FanOut {
    /// At most `limit` inputs in flight, on the default runtime (choose another with
    /// [`runtime`](Self::runtime)).
    ///
    /// # Errors
    ///
    /// [`ConfigError::Zero`] when `limit` is 0 (which could never make progress).
    pub fn new(limit: usize) -> Result<Self, ConfigError> {
        if limit == 0 {
            return Err(ConfigError::Zero { field: "limit" });
        }
        Ok(Self {
            rt: crate::rt::DefaultRuntime::default(),
            limit,
            order: Order::Completion,
        })
    }
}

impl<R> FanOut<R> {
    /// Spawns on `rt`.
    pub fn runtime<R2: Runtime>(self, rt: R2) -> FanOut<R2> {
        FanOut {
            rt,
            limit: self.limit,
            order: self.order,
        }
    }
}

impl<R: Runtime> FanOut<R> {
    /// Delivers results in input order (default: completion order).
    pub fn ordered(mut self) -> Self {
        self.order = Order::Input;
        self
    }

    /// The concurrency limit.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Spawns `f(input)` for every input of the stream; yields each outcome, with a panic or
    /// a runtime cancellation as [`JoinError`](crate::rt::JoinError). A panic in the future's
    /// `Drop` after it returned is its panic: `Err(JoinError::Panicked)` with that payload
    /// (the value is dropped), as when the same future is spawned on the runtime.
    pub fn run<S, F, Fut>(self, inputs: S, f: F) -> FanOutStream<R, S, F, Fut::Output>
    where
        S: Stream,
        F: FnMut(S::Item) -> Fut,
        Fut: Future + Send + 'static,
        Fut::Output: Send + 'static,
    {
        let ordered = self.order == Order::Input;
        FanOutStream::new(self.rt, self.limit, ordered, inputs, f, |_| false)
    }

    /// [`FanOut::run`] over an iterator.
    pub fn run_iter<I, F, Fut>(
        self,
        inputs: I,
        f: F,
    ) -> FanOutStream<R, futures_util::stream::Iter<I::IntoIter>, F, Fut::Output>
    where
        I: IntoIterator,
        F: FnMut(I::Item) -> Fut,
        Fut: Future + Send + 'static,
        Fut::Output: Send + 'static,
    {
        self.run(futures_util::stream::iter(inputs), f)
    }

    /// Fail-fast: like [`FanOut::run`] for fallible work, but the first error or panic aborts
    /// the running tasks whose results would come after it (at the first poll that sees it)
    /// and ends the stream after it is yielded. A panic in a future's `Drop` after it returned
    /// `Ok` or `Err` is such a panic: [`FanOutError::Task`] with
    /// [`JoinError::Panicked`](crate::rt::JoinError::Panicked) and that payload.
    pub fn try_run<S, F, Fut, T, E>(self, inputs: S, f: F) -> TryFanOutStream<R, S, F, T, E>
    where
        S: Stream,
        F: FnMut(S::Item) -> Fut,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
        T: Send + 'static,
        E: Send + 'static,
    {
        let ordered = self.order == Order::Input;
        let ends =
            |outcome: &Result<Result<T, E>, crate::rt::JoinError>| !matches!(outcome, Ok(Ok(_)));
        TryFanOutStream::new(FanOutStream::new(
            self.rt, self.limit, ordered, inputs, f, ends,
        ))
    }

    /// [`FanOut::try_run`] over an iterator.
    pub fn try_run_iter<I, F, Fut, T, E>(
        self,
        inputs: I,
        f: F,
    ) -> TryFanOutStream<R, futures_util::stream::Iter<I::IntoIter>, F, T, E>
    where
        I: IntoIterator,
        F: FnMut(I::Item) -> Fut,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
        T: Send + 'static,
        E: Send + 'static,
    {
        self.try_run(futures_util::stream::iter(inputs), f)
    }

    /// Runs `f(input)` inside the consuming task, for `!Send` futures. The limit and ordering
    /// hold, but work advances **only while the stream is polled** (see the module docs).
    pub fn run_local<S, F, Fut>(self, inputs: S, f: F) -> LocalFanOut<S, F, Fut>
    where
        S: Stream,
        F: FnMut(S::Item) -> Fut,
        Fut: Future,
    {
        LocalFanOut::new(self.limit, self.order == Order::Input, inputs, f)
    }
}

#[cfg(test)]
mod tests;
