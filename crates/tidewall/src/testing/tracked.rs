//! Busy/idle accounting for tasks spawned through [`Clocked`](super::Clocked).
//!
//! A task is *active* from spawn until its poll returns `Pending` without having been woken
//! during that poll, and again from its next wake until the poll after it. The driver may move
//! virtual time only while no task is active: that is what makes virtual time deterministic on
//! multi-threaded executors, where "every task is blocked on a timer" cannot be observed any
//! other way.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

use futures_channel::oneshot;

use crate::rt::caught::{Caught, Output};
use crate::rt::{JoinError, Panic};

const IDLE: u8 = 0;
const ACTIVE: u8 = 1;
const NOTIFIED: u8 = 2;
const DONE: u8 = 3;

const NO_ABORT: u8 = 0;
const ABORT_COUNTED: u8 = 1;
const ABORT_SETTLED: u8 = 2;

/// Counts active tasks; shared by a `Clocked` runtime and its tasks.
#[derive(Debug, Default)]
pub(super) struct Activity {
    active: AtomicUsize,
    /// The executor's waker of the last driver polled: woken when the last active task goes
    /// idle, since that task (woken from outside, say) may have just set a timer that only
    /// the driver can reach by moving time.
    driver: Mutex<Option<Waker>>,
}

impl Activity {
    pub(super) fn is_quiet(&self) -> bool {
        self.active.load(SeqCst) == 0
    }

    pub(super) fn enter(&self) {
        self.active.fetch_add(1, SeqCst);
    }

    pub(super) fn leave(&self) {
        if self.active.fetch_sub(1, SeqCst) == 1
            && let Some(driver) = self
                .driver
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .as_ref()
        {
            driver.wake_by_ref();
        }
    }

    /// Makes `waker` the one [`leave`](Self::leave) wakes when every task is idle.
    pub(super) fn watch(&self, waker: &Waker) {
        let mut driver = self
            .driver
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !driver.as_ref().is_some_and(|w| w.will_wake(waker)) {
            *driver = Some(waker.clone());
        }
    }
}

/// The waker handed to a tracked task: marks it active, then wakes the executor's waker.
struct TaskWaker {
    state: AtomicU8,
    /// `NO_ABORT`, `ABORT_COUNTED` (an abort holds one unit of activity until the task is
    /// gone) or `ABORT_SETTLED` (the task is gone: a later abort counts nothing).
    abort: AtomicU8,
    activity: Arc<Activity>,
    inner: Mutex<Option<Waker>>,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.mark_active();
        if let Some(waker) = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
        {
            waker.wake_by_ref();
        }
    }
}

impl TaskWaker {
    /// Counts the task as active until its next poll returns `Pending` (or it is dropped).
    fn mark_active(&self) {
        let mut current = self.state.load(SeqCst);
        loop {
            let next = match current {
                IDLE => ACTIVE,
                ACTIVE => NOTIFIED,
                _ => break,
            };
            match self.state.compare_exchange(current, next, SeqCst, SeqCst) {
                Ok(_) => {
                    if current == IDLE {
                        self.activity.enter();
                    }
                    break;
                }
                Err(actual) => current = actual,
            }
        }
    }
}

/// Kept by a task's handle: an abort marks the task active until its executor has dropped
/// it, so virtual time cannot jump past the abort while the executor has yet to act on it.
#[derive(Clone)]
pub(super) struct AbortMark(Arc<TaskWaker>);

impl AbortMark {
    /// Holds the task active until it is dropped. Not a wake: a poll that starts before the
    /// executor sees the abort would consume a wake and report the task idle while the abort
    /// is still pending.
    pub(super) fn mark(&self) {
        let task = &self.0;
        task.activity.enter();
        let counted = task
            .abort
            .compare_exchange(NO_ABORT, ABORT_COUNTED, SeqCst, SeqCst)
            .is_ok();
        if !counted {
            // Already counted, or the task is gone.
            task.activity.leave();
        }
    }
}

impl std::fmt::Debug for AbortMark {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AbortMark")
    }
}

/// A spawned future plus its accounting; delivers its output through a oneshot *before* it
/// reports itself idle, so the receiver is marked active first and time cannot slip between.
pub(super) struct Tracked<F: Future> {
    // Dropped before the output is sent (or the sender dropped), so a joined or aborted
    // task's destructors have run by the time its handle resolves, as on tokio. `None` once
    // done.
    future: Option<Pin<Box<Caught<F>>>>,
    waker: Arc<TaskWaker>,
    output: Option<oneshot::Sender<Output<F::Output>>>,
}

impl<F: Future> Tracked<F> {
    pub(super) fn new(
        future: F,
        activity: Arc<Activity>,
    ) -> (Self, oneshot::Receiver<Output<F::Output>>, AbortMark) {
        activity.enter();
        let waker = Arc::new(TaskWaker {
            state: AtomicU8::new(ACTIVE),
            abort: AtomicU8::new(NO_ABORT),
            activity,
            inner: Mutex::new(None),
        });
        let (tx, rx) = oneshot::channel();
        let mark = AbortMark(Arc::clone(&waker));
        (
            Self {
                future: Some(Box::pin(Caught::new(future))),
                waker,
                output: Some(tx),
            },
            rx,
            mark,
        )
    }
}

impl<F: Future> Future for Tracked<F> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        if this.future.is_none() {
            return Poll::Ready(());
        }
        {
            let mut inner = this
                .waker
                .inner
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if !inner.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *inner = Some(cx.waker().clone());
            }
        }
        if this.waker.state.swap(ACTIVE, SeqCst) == IDLE {
            // Polled without a wake of ours (a spurious poll): count it while it runs.
            this.waker.activity.enter();
        }
        let waker = Waker::from(Arc::clone(&this.waker));
        let Some(future) = this.future.as_mut() else {
            return Poll::Ready(());
        };
        let output = match future.as_mut().poll(&mut Context::from_waker(&waker)) {
            Poll::Pending => {
                if this
                    .waker
                    .state
                    .compare_exchange(ACTIVE, IDLE, SeqCst, SeqCst)
                    .is_ok()
                {
                    this.waker.activity.leave();
                }
                // Otherwise it was woken during the poll: it stays active until polled again.
                return Poll::Pending;
            }
            Poll::Ready(Ok(value)) => Ok(value),
            Poll::Ready(Err(payload)) => Err(JoinError::Panicked(Panic::new(payload))),
        };
        this.future = None;
        if let Some(tx) = this.output.take() {
            // Unread (the handle is gone), it is dropped here: `Output` ignores a panic of
            // its `Drop`, as tokio does, so `finish` still runs.
            let _ = tx.send(Output::new(output));
        }
        this.finish();
        Poll::Ready(())
    }
}

impl<F: Future> Tracked<F> {
    fn finish(&self) {
        if !matches!(self.waker.state.swap(DONE, SeqCst), IDLE | DONE) {
            self.waker.activity.leave();
        }
        if self.waker.abort.swap(ABORT_SETTLED, SeqCst) == ABORT_COUNTED {
            self.waker.activity.leave();
        }
    }
}

impl<F: Future> Drop for Tracked<F> {
    fn drop(&mut self) {
        // Aborted or dropped by its executor: drop the future first, then the receiver sees
        // the sender go (Cancelled), or gets `Panicked` if that drop panicked, as on tokio.
        // The panic is caught so that `finish` runs: a task left counted active would stop
        // virtual time for good.
        let dropped = self
            .future
            .take()
            .map(|mut future| future.as_mut().drop_future());
        if let Some(tx) = self.output.take()
            && let Some(Err(payload)) = dropped
        {
            let _ = tx.send(Output::new(Err(JoinError::Panicked(Panic::new(payload)))));
        }
        self.finish();
    }
}

/// The waker the driver gives the main future: records that it was woken.
pub(super) struct MainWaker {
    pub(super) woken: AtomicBool,
    pub(super) inner: Mutex<Option<Waker>>,
}

impl Wake for MainWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, SeqCst);
        if let Some(waker) = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
        {
            waker.wake_by_ref();
        }
    }
}
