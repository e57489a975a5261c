//! A runtime adapter that swaps the clock for a [`FakeClock`] and tracks its tasks.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use futures_channel::oneshot;

use super::clock::{FakeClock, FakeSleep};
use super::tracked::{AbortMark, Activity, MainWaker, Tracked};
use crate::rt::caught::Output;
use crate::rt::{Clock, JoinError, Panic, Runtime, Signals, Spawn, TaskHandle};

/// Any runtime `R`, with virtual time. Tasks run on `R`'s executor; time comes from a shared
/// [`FakeClock`] and moves only through [`Clocked::drive`] or the clock's own methods.
///
/// See the [module docs](super) for an example.
///
/// A task that is never idle (it wakes itself on every poll) keeps virtual time from
/// advancing; test such futures on a real-time runtime.
#[derive(Debug, Clone)]
pub struct Clocked<R> {
    inner: R,
    clock: FakeClock,
    activity: Arc<Activity>,
}

impl<R: Runtime> Clocked<R> {
    /// Wraps `inner` with a new clock.
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            clock: FakeClock::new(),
            activity: Arc::default(),
        }
    }

    /// The virtual clock.
    pub fn clock(&self) -> &FakeClock {
        &self.clock
    }

    /// The wrapped runtime.
    pub fn inner(&self) -> &R {
        &self.inner
    }

    /// Runs `future`, advancing virtual time to the next timer whenever the future and every
    /// task spawned through this runtime are idle. Await the result on `R`'s executor.
    ///
    /// Tasks spawned around this runtime (directly on the executor) are invisible to it; if
    /// they wait on this clock's timers, time may move before they run.
    ///
    /// Before each jump the driver gives the executor one turn, so a wake the executor holds
    /// until it is about to park (tokio's `yield_now` and its cooperative budget) is seen when
    /// this future is the one given to a current-thread `block_on`, as in the example. Spawned
    /// as a task instead, or for tasks on a multi-thread runtime's workers, such a held wake
    /// may come after the jump; Tidewall's own policies never hold their wakes. Run one drive
    /// at a time on a `Clocked` runtime (clones included): the tasks going idle wake the
    /// driver polled last.
    pub fn drive<F: Future>(&self, future: F) -> Drive<F> {
        Drive {
            future: Box::pin(future),
            clock: self.clock.clone(),
            activity: Arc::clone(&self.activity),
            waker: Arc::new(MainWaker {
                woken: AtomicBool::new(false),
                inner: Mutex::new(None),
            }),
            yielded: false,
        }
    }
}

impl<R: Clone + Send + Sync + 'static> Clock for Clocked<R> {
    type Sleep = FakeSleep;

    fn now(&self) -> Instant {
        self.clock.now()
    }

    fn sleep_until(&self, deadline: Instant) -> FakeSleep {
        self.clock.sleep_until(deadline)
    }
}

impl<R: Spawn> Spawn for Clocked<R> {
    type JoinHandle<T: Send + 'static> = ClockedJoinHandle<T, R::JoinHandle<()>>;

    fn spawn<F>(&self, future: F) -> Self::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let (tracked, output, mark) = Tracked::new(future, Arc::clone(&self.activity));
        ClockedJoinHandle {
            output,
            task: self.inner.spawn(tracked),
            mark: Some(mark),
        }
    }

    fn spawn_blocking<W, T>(&self, work: W) -> Self::JoinHandle<T>
    where
        W: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let (tx, output) = oneshot::channel();
        self.activity.enter();
        // Leaves when the closure has run, and also when it is dropped unrun (aborted before
        // it started, or its runtime shut down): otherwise virtual time would stop for good.
        let busy = LeaveOnDrop(Arc::clone(&self.activity));
        let task = self.inner.spawn_blocking(move || {
            let result = std::panic::catch_unwind(AssertUnwindSafe(work))
                .map_err(|payload| JoinError::Panicked(Panic::new(payload)));
            let _ = tx.send(Output::new(result));
            drop(busy);
        });
        // A blocking task cannot be stopped by an abort: nothing to mark.
        ClockedJoinHandle {
            output,
            task,
            mark: None,
        }
    }
}

impl<R: Signals> Signals for Clocked<R> {
    fn shutdown_signals(&self) -> std::io::Result<crate::rt::ShutdownSignals> {
        // Signals are real-time events: listen through the wrapped runtime.
        self.inner.shutdown_signals()
    }
}

/// The handle of a task spawned through [`Clocked`].
#[derive(Debug)]
pub struct ClockedJoinHandle<T, H> {
    output: oneshot::Receiver<Output<T>>,
    task: H,
    mark: Option<AbortMark>,
}

impl<T, H: Unpin> Future for ClockedJoinHandle<T, H> {
    type Output = Result<T, JoinError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.output)
            .poll(cx)
            .map(|received| received.map_or(Err(JoinError::Cancelled), Output::into_result))
    }
}

impl<T: Send + 'static, H: TaskHandle<()>> TaskHandle<T> for ClockedJoinHandle<T, H> {
    fn abort(&self) {
        if let Some(mark) = &self.mark {
            mark.mark();
        }
        self.task.abort();
    }

    /// Read from the result's channel without a poll: an earlier poll's waker stays
    /// registered.
    fn try_join(&mut self) -> Option<Result<T, JoinError>> {
        match self.output.try_recv() {
            Ok(received) => received.map(Output::into_result),
            Err(oneshot::Canceled) => Some(Err(JoinError::Cancelled)),
        }
    }
}

/// The future returned by [`Clocked::drive`].
pub struct Drive<F> {
    future: Pin<Box<F>>,
    clock: FakeClock,
    activity: Arc<Activity>,
    waker: Arc<MainWaker>,
    /// Whether the executor had a turn since everything last looked idle.
    yielded: bool,
}

impl<F> std::fmt::Debug for Drive<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Drive")
            .field("clock", &self.clock)
            .finish_non_exhaustive()
    }
}

impl<F: Future> Future for Drive<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        *this
            .waker
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(cx.waker().clone());
        this.activity.watch(cx.waker());
        let waker = Waker::from(Arc::clone(&this.waker));
        loop {
            if this.waker.woken.swap(false, SeqCst) {
                // Woken since the last poll (by a wake the executor held, say): progress.
                this.yielded = false;
            }
            if let Poll::Ready(output) = this.future.as_mut().poll(&mut Context::from_waker(&waker))
            {
                return Poll::Ready(output);
            }
            // Read the activity count *before* the wake flag: a task wakes its consumer before
            // it reports itself idle, so "quiet, then not woken" cannot miss that hand-off.
            if !this.activity.is_quiet() || this.waker.woken.load(SeqCst) {
                // Something can still make progress without time moving: let it run first.
                this.yielded = false;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            if !this.yielded {
                // One turn of the executor before time moves: some wakes are held until it is
                // about to park (tokio's `yield_now` and its cooperative budget), and they
                // would otherwise come only after the jump.
                this.yielded = true;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            this.yielded = false;
            if !this.clock.advance_to_next_timer() {
                // No timer left: only real I/O, or a task woken from outside, can wake us.
                return Poll::Pending;
            }
        }
    }
}

/// Counts one unit of activity until dropped.
struct LeaveOnDrop(Arc<Activity>);

impl Drop for LeaveOnDrop {
    fn drop(&mut self) {
        self.0.leave();
    }
}
