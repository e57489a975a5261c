//! The async-std adapter. LEGACY: async-std is discontinued upstream (its authors recommend
//! smol); this adapter exists for code bases that still run on it.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use futures_util::future::AbortHandle;

use super::catching::{catching, catching_blocking};
use super::caught::Output;
use super::{Clock, JoinError, Signals, Spawn, TaskHandle};

/// Spawns onto async-std's global executor. **Legacy**: async-std is discontinued upstream;
/// prefer [`Smol`](super::Smol) for new code.
///
/// Timers are `async-io` timers, which is what async-std itself uses underneath. The global
/// executor sizes its thread pool from `ASYNC_STD_THREAD_COUNT` (default: the number of CPUs).
///
/// ```
/// use tidewall::rt::{AsyncStd, Spawn};
///
/// let value = async_std::task::block_on(AsyncStd.spawn(async { 2 * 21 }));
/// assert_eq!(value.unwrap(), 42);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AsyncStd;

impl Clock for AsyncStd {
    type Sleep = AsyncStdSleep;

    fn now(&self) -> Instant {
        Instant::now()
    }

    fn sleep_until(&self, deadline: Instant) -> AsyncStdSleep {
        AsyncStdSleep(async_io::Timer::at(deadline))
    }

    fn is_real_time(&self) -> bool {
        true
    }
}

impl Spawn for AsyncStd {
    type JoinHandle<T: Send + 'static> = AsyncStdJoinHandle<T>;

    fn spawn<F>(&self, future: F) -> AsyncStdJoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let (task, abort) = catching(future);
        AsyncStdJoinHandle {
            task: async_std::task::spawn(task),
            abort: Some(abort),
        }
    }

    fn spawn_blocking<W, T>(&self, work: W) -> AsyncStdJoinHandle<T>
    where
        W: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let task = async_std::task::spawn_blocking(move || catching_blocking(work));
        AsyncStdJoinHandle { task, abort: None }
    }
}

impl Signals for AsyncStd {
    fn shutdown_signals(&self) -> std::io::Result<super::ShutdownSignals> {
        super::signal::portable_signals()
    }
}

/// An `async-io` timer.
#[derive(Debug)]
pub struct AsyncStdSleep(async_io::Timer);

impl Future for AsyncStdSleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.0).poll(cx).map(drop)
    }
}

/// An async-std task's handle; dropping it detaches the task.
#[derive(Debug)]
pub struct AsyncStdJoinHandle<T> {
    task: async_std::task::JoinHandle<Output<T>>,
    abort: Option<AbortHandle>,
}

impl<T> Future for AsyncStdJoinHandle<T> {
    type Output = Result<T, JoinError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.task).poll(cx).map(Output::into_result)
    }
}

impl<T: Send + 'static> TaskHandle<T> for AsyncStdJoinHandle<T> {
    fn abort(&self) {
        if let Some(abort) = &self.abort {
            abort.abort();
        }
    }
}
