//! The tokio adapter.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use super::{Clock, JoinError, Panic, Signals, Spawn, TaskHandle};

/// Runs on the tokio runtime that is current where it is used: multi-thread or current-thread.
///
/// `Tokio` is a zero-sized handle. Its clock is tokio's, so paused time
/// (`#[tokio::test(start_paused = true)]`) makes every Tidewall policy deterministic.
///
/// # Panics
///
/// Like `tokio::spawn` and `tokio::time::sleep`, spawning and sleeping panic when called
/// outside a tokio runtime, and sleeping on a runtime built without its time driver
/// (`enable_time`, or `enable_all`) (programming errors, not input errors). `now` and
/// `is_real_time` work anywhere: outside a runtime they read the machine's clock. tokio's
/// timer also panics on a deadline within a millisecond of the latest `Instant` the
/// machine can hold (hundreds of billions of years away; [`instant_after`](super::instant_after)
/// gives thirty years for a duration too long to add).
///
/// ```
/// use tidewall::rt::{Spawn, Tokio};
///
/// let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
/// let value = runtime.block_on(async { Tokio.spawn(async { 1 + 1 }).await });
/// assert_eq!(value.unwrap(), 2);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tokio;

impl Clock for Tokio {
    type Sleep = TokioSleep;

    fn now(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }

    fn sleep_until(&self, deadline: Instant) -> TokioSleep {
        TokioSleep {
            inner: tokio::time::sleep_until(deadline.into()),
        }
    }

    /// `true` unless the time of the tokio runtime this thread runs in (or blocks for) is
    /// paused: a paused clock stands still while real time moves. Answered anew on each call
    /// (it changes after `tokio::time::pause`); finding out spins for about a microsecond, so
    /// callers ask once.
    fn is_real_time(&self) -> bool {
        let paused_at = tokio::time::Instant::now();
        let real_start = Instant::now();
        while real_start.elapsed() < Duration::from_micros(1) {
            std::hint::spin_loop();
        }
        tokio::time::Instant::now() != paused_at
    }
}

impl Spawn for Tokio {
    type JoinHandle<T: Send + 'static> = TokioJoinHandle<T>;

    fn spawn<F>(&self, future: F) -> TokioJoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        TokioJoinHandle(tokio::spawn(future))
    }

    fn spawn_blocking<W, T>(&self, work: W) -> TokioJoinHandle<T>
    where
        W: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        TokioJoinHandle(tokio::task::spawn_blocking(work))
    }
}

impl Signals for Tokio {
    fn shutdown_signals(&self) -> std::io::Result<super::ShutdownSignals> {
        super::signal::tokio_signals()
    }
}

pin_project_lite::pin_project! {
    /// tokio's sleep, unboxed: creating one allocates nothing.
    #[derive(Debug)]
    pub struct TokioSleep {
        #[pin]
        inner: tokio::time::Sleep,
    }
}

impl Future for TokioSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.project().inner.poll(cx)
    }
}

/// A tokio task's handle with Tidewall's uniform [`JoinError`].
#[derive(Debug)]
pub struct TokioJoinHandle<T>(tokio::task::JoinHandle<T>);

impl<T> Future for TokioJoinHandle<T> {
    type Output = Result<T, JoinError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx).map(joined)
    }
}

impl<T: Send + 'static> TaskHandle<T> for TokioJoinHandle<T> {
    fn abort(&self) {
        self.0.abort();
    }

    /// A running task is read without a poll (an earlier poll's waker stays registered); a
    /// finished one is polled outside tokio's cooperative budget, within which its handle,
    /// polled after the budget ran out, would read as pending.
    fn try_join(&mut self) -> Option<Result<T, JoinError>> {
        if !self.0.is_finished() {
            return None;
        }
        super::join::poll_now(&mut tokio::task::unconstrained(&mut self.0)).map(joined)
    }
}

/// tokio's join result with Tidewall's uniform [`JoinError`].
fn joined<T>(result: Result<T, tokio::task::JoinError>) -> Result<T, JoinError> {
    result.map_err(|err| match err.try_into_panic() {
        Ok(payload) => JoinError::Panicked(Panic::new(payload)),
        Err(_) => JoinError::Cancelled,
    })
}
