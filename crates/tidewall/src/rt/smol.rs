//! The smol adapter: an explicit executor with a stated number of threads.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::thread;
use std::time::Instant;

use futures_util::future::AbortHandle;
use tidewall_core::ConfigError;

use super::catching::{catching, catching_blocking};
use super::caught::Output;
use super::{Clock, JoinError, Signals, Spawn, TaskHandle};

/// Spawns onto an explicit [`smol::Executor`]; timers come from `async-io`.
///
/// `Smol` is a cheap, cloneable handle. Get one from a [`SmolRuntime`], which owns the
/// executor threads, or wrap an executor you drive yourself with [`Smol::new`].
///
/// ```
/// use tidewall::rt::{SmolRuntime, Spawn};
///
/// let runtime = SmolRuntime::multi_threaded(2)?; // two worker threads
/// let rt = runtime.handle();
/// let value = runtime.block_on(async move { rt.spawn(async { 40 + 2 }).await });
/// assert_eq!(value.unwrap(), 42);
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Smol {
    executor: Arc<smol::Executor<'static>>,
}

impl Smol {
    /// Spawns onto `executor`; something must drive it (`executor.run(..)`) for tasks to run.
    pub fn new(executor: Arc<smol::Executor<'static>>) -> Self {
        Self { executor }
    }

    /// The executor tasks are spawned onto.
    pub fn executor(&self) -> &Arc<smol::Executor<'static>> {
        &self.executor
    }
}

impl Clock for Smol {
    type Sleep = SmolSleep;

    fn now(&self) -> Instant {
        Instant::now()
    }

    fn sleep_until(&self, deadline: Instant) -> SmolSleep {
        SmolSleep(smol::Timer::at(deadline))
    }

    fn is_real_time(&self) -> bool {
        true
    }
}

impl Spawn for Smol {
    type JoinHandle<T: Send + 'static> = SmolJoinHandle<T>;

    fn spawn<F>(&self, future: F) -> SmolJoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let (task, abort) = catching(future);
        SmolJoinHandle {
            task: Some(self.executor.spawn(task).fallible()),
            abort: Some(abort),
        }
    }

    fn spawn_blocking<W, T>(&self, work: W) -> SmolJoinHandle<T>
    where
        W: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let task = smol::unblock(move || catching_blocking(work));
        SmolJoinHandle {
            task: Some(task.fallible()),
            abort: None,
        }
    }
}

impl Signals for Smol {
    fn shutdown_signals(&self) -> std::io::Result<super::ShutdownSignals> {
        super::signal::portable_signals()
    }
}

/// An `async-io` timer; completes at its deadline.
#[derive(Debug)]
pub struct SmolSleep(smol::Timer);

impl Future for SmolSleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.0).poll(cx).map(drop)
    }
}

/// A smol task's handle. Unlike a raw `smol::Task`, dropping it detaches instead of cancelling,
/// so it behaves like every other adapter's handle.
#[derive(Debug)]
pub struct SmolJoinHandle<T> {
    task: Option<async_task::FallibleTask<Output<T>>>,
    abort: Option<AbortHandle>,
}

impl<T> Future for SmolJoinHandle<T> {
    type Output = Result<T, JoinError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(task) = self.task.as_mut() else {
            return Poll::Ready(Err(JoinError::Cancelled));
        };
        let output = std::task::ready!(Pin::new(task).poll(cx));
        self.task = None;
        // `None` means the executor dropped the task (it was shut down).
        Poll::Ready(output.map_or(Err(JoinError::Cancelled), Output::into_result))
    }
}

impl<T> Drop for SmolJoinHandle<T> {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.detach();
        }
    }
}

impl<T: Send + 'static> TaskHandle<T> for SmolJoinHandle<T> {
    fn abort(&self) {
        if let Some(abort) = &self.abort {
            abort.abort();
        }
    }

    /// A running task is read without a poll: an earlier poll's waker stays registered (but
    /// for a task its executor is dropping, which async-task reads as finished before its
    /// future is dropped).
    fn try_join(&mut self) -> Option<Result<T, JoinError>> {
        if self.task.as_ref().is_some_and(|task| !task.is_finished()) {
            return None;
        }
        super::join::poll_now(self)
    }
}

/// Owns a smol executor and the threads that run it.
///
/// * [`SmolRuntime::multi_threaded(n)`](SmolRuntime::multi_threaded): `n` worker threads run
///   spawned tasks; [`SmolRuntime::block_on`] drives only the main future on the calling
///   thread. This is the same shape as a tokio multi-thread runtime with `n` workers.
/// * [`SmolRuntime::single_threaded`]: no worker threads; `block_on` runs the executor on the
///   calling thread, like tokio's current-thread runtime.
///
/// Dropping it stops the worker threads and joins them. Its tasks belong to the executor,
/// which every [`Smol`] handle shares: they are cancelled (their join handles report
/// [`JoinError::Cancelled`](crate::rt::JoinError::Cancelled)) only when the last handle is
/// dropped, and until then no thread runs them. A task that holds a handle (a clone to sleep
/// or spawn with) keeps the executor alive itself: abort such tasks, or let them end, before
/// dropping the runtime, or they stay pending for ever.
#[derive(Debug)]
pub struct SmolRuntime {
    handle: Smol,
    workers: Vec<thread::JoinHandle<()>>,
    stop: Option<smol::channel::Sender<()>>,
}

impl SmolRuntime {
    /// The most worker threads [`multi_threaded`](Self::multi_threaded) starts: beyond it a
    /// count is a mistake, and starting threads until the OS refuses would take the machine's
    /// memory first.
    pub const MAX_THREADS: usize = 4096;

    /// `threads` worker threads (at least 1, at most [`MAX_THREADS`](Self::MAX_THREADS)) run
    /// the executor.
    ///
    /// # Errors
    ///
    /// An error of kind `InvalidInput` wrapping [`ConfigError::Zero`] when `threads` is 0 or
    /// [`ConfigError::OutOfRange`] when it is above `MAX_THREADS`, or the OS error when a
    /// thread cannot be started (threads already started are stopped).
    ///
    /// ```
    /// use tidewall::rt::SmolRuntime;
    ///
    /// assert_eq!(SmolRuntime::multi_threaded(2)?.worker_threads(), 2);
    /// let too_many = SmolRuntime::multi_threaded(usize::MAX).unwrap_err();
    /// assert_eq!(too_many.kind(), std::io::ErrorKind::InvalidInput);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn multi_threaded(threads: usize) -> std::io::Result<Self> {
        let refused = if threads == 0 {
            Some(ConfigError::Zero { field: "threads" })
        } else if threads > Self::MAX_THREADS {
            #[allow(clippy::cast_precision_loss)] // only to print it
            let value = threads as f64;
            Some(ConfigError::OutOfRange {
                field: "threads",
                value,
                allowed: "at most 4096",
            })
        } else {
            None
        };
        if let Some(refused) = refused {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                refused,
            ));
        }
        let handle = Smol::new(Arc::new(smol::Executor::new()));
        let (stop, stopped) = smol::channel::bounded::<()>(1);
        let mut runtime = Self {
            handle,
            workers: Vec::with_capacity(threads),
            stop: Some(stop),
        };
        for i in 0..threads {
            let executor = Arc::clone(&runtime.handle.executor);
            let stopped = stopped.clone();
            let worker = thread::Builder::new()
                .name(format!("tidewall-smol-{i}"))
                .spawn(move || {
                    let _ = smol::block_on(executor.run(stopped.recv()));
                })?; // on error, dropping `runtime` stops and joins the threads already started
            runtime.workers.push(worker);
        }
        Ok(runtime)
    }

    /// No worker threads: [`SmolRuntime::block_on`] runs the executor on the calling thread.
    pub fn single_threaded() -> Self {
        let handle = Smol::new(Arc::new(smol::Executor::new()));
        Self {
            handle,
            workers: Vec::new(),
            stop: None,
        }
    }

    /// The number of worker threads (0 when single-threaded).
    pub fn worker_threads(&self) -> usize {
        self.workers.len()
    }

    /// A handle to spawn with.
    pub fn handle(&self) -> Smol {
        self.handle.clone()
    }

    /// Runs `future` to completion on the calling thread (which also runs the executor when
    /// there are no worker threads).
    pub fn block_on<F: Future>(&self, future: F) -> F::Output {
        if self.workers.is_empty() {
            smol::block_on(self.handle.executor.run(future))
        } else {
            smol::block_on(future)
        }
    }
}

impl Drop for SmolRuntime {
    fn drop(&mut self) {
        // Closing the channel ends every worker's `run`.
        drop(self.stop.take());
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}
