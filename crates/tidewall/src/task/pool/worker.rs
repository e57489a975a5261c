//! One worker's loop.

use std::future::poll_fn;
use std::panic::AssertUnwindSafe;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Poll, Waker};
use std::time::Duration;

use futures_util::FutureExt as _;

use super::queue::Shared;
use crate::rt::Runtime;
use crate::task::Exit;
use crate::task::caught;
use crate::time::FutureExt as _;

/// One worker: take a job, run it (timed, panics caught), report, repeat until closed and
/// empty.
pub(super) async fn work<J, T, F, Fut, R>(
    shared: Arc<Shared<J, T>>,
    handler: Arc<F>,
    rt: R,
    timeout: Option<Duration>,
) where
    F: Fn(J) -> Fut,
    Fut: Future<Output = T>,
    R: Runtime,
{
    let mut parked = Parked {
        shared: &shared,
        waker: None,
    };
    loop {
        let next = std::future::poll_fn(|cx| {
            let mut queue = shared.queue();
            if let Some(job) = queue.jobs.pop_front() {
                shared.running.fetch_add(1, Relaxed);
                // This worker is busy now: an entry it left earlier must not absorb a wake-up
                // meant for an idle one.
                parked.unpark(&mut queue.workers, cx.waker());
                // Room freed: wake every waiting producer (after the lock). Waking all, not
                // one, means a producer that gave up cannot swallow the wake-up of another.
                let producers = queue.submitters.take_all();
                drop(queue);
                for producer in producers {
                    producer.wake();
                }
                return Poll::Ready(Some(job));
            }
            if queue.closed {
                parked.waker = None;
                return Poll::Ready(None);
            }
            if !queue.workers.iter().any(|w| w.will_wake(cx.waker())) {
                // Polled with another waker than the one it parked with: that one goes, or a
                // submit could choose it and wake nobody.
                parked.unpark(&mut queue.workers, cx.waker());
                queue.workers.push(cx.waker().clone());
                parked.waker = Some(cx.waker().clone());
            }
            Poll::Pending
        })
        .await;
        let Some((job, report)) = next else {
            return;
        };
        let mut taken = Taken {
            shared: &shared,
            ended: false,
        };
        // The handler is called inside the caught future: a panic before its first await is
        // caught like any other. Kept in place, to be dropped below under a catch too.
        let mut run = pin!(Some(
            AssertUnwindSafe(async { handler(job).await }).catch_unwind()
        ));
        let polled = poll_fn(|cx| {
            run.as_mut()
                .as_pin_mut()
                .map_or(Poll::Pending, |run| run.poll(cx))
        });
        // A job returns its value; its only error is the pool's timeout.
        let ended = match timeout {
            Some(limit) => polled.timeout_on(&rt, limit).await,
            None => Ok(polled.await),
        };
        // A job ended by the timeout is dropped here: neither its destructors nor its unwanted
        // value's below may take the worker with them.
        survive(|| run.set(None));
        let exit = match ended {
            Ok(done) => caught(done.map(Ok)),
            Err(elapsed) => Exit::Err(elapsed),
        };
        taken.end(matches!(exit, Exit::Ok(_)));
        if let Err(unwanted) = report.send(exit) {
            survive(|| drop(unwanted));
        }
    }
}

/// Runs `drop_user_values`, a drop of the job's future or value, and goes on if it panics: the
/// job is already counted and reported, and the worker must live on for the next one.
fn survive(drop_user_values: impl FnOnce()) {
    let _ = std::panic::catch_unwind(AssertUnwindSafe(drop_user_values));
}

/// An idle worker's waker among the parked ones, taken back when its future is dropped (its
/// runtime dropped the task): a submit would otherwise wake it in vain while another worker
/// sits idle. If a submit chose it already, or jobs wait anyway, another idle worker is woken
/// in its place.
struct Parked<'a, J, T> {
    shared: &'a Shared<J, T>,
    waker: Option<Waker>,
}

impl<J, T> Parked<'_, J, T> {
    /// Takes this worker's entries out of the parked `workers`: the waker it parked with, and
    /// any that wakes it through `current`.
    fn unpark(&mut self, workers: &mut Vec<Waker>, current: &Waker) {
        let old = self.waker.take();
        workers
            .retain(|w| !w.will_wake(current) && !old.as_ref().is_some_and(|old| w.will_wake(old)));
    }
}

impl<J, T> Drop for Parked<'_, J, T> {
    fn drop(&mut self) {
        let Some(mine) = self.waker.take() else {
            return;
        };
        let next = {
            let mut queue = self.shared.queue();
            queue.workers.retain(|w| !w.will_wake(&mine));
            if queue.jobs.is_empty() {
                None
            } else {
                queue.workers.pop()
            }
        };
        if let Some(next) = next {
            next.wake();
        }
    }
}

/// A taken job's place in the counts (it is counted running when taken). Ended, it counts as
/// completed or failed; dropped unended (its worker aborted at the drain deadline, or its
/// task lost by its runtime), as failed and aborted: every job is counted once, whatever
/// happens to the worker running it.
struct Taken<'a, J, T> {
    shared: &'a Shared<J, T>,
    ended: bool,
}

impl<J, T> Taken<'_, J, T> {
    fn end(&mut self, completed: bool) {
        self.ended = true;
        self.shared.running.fetch_sub(1, Relaxed);
        let count = if completed {
            &self.shared.completed
        } else {
            &self.shared.failed
        };
        count.fetch_add(1, Relaxed);
    }
}

impl<J, T> Drop for Taken<'_, J, T> {
    fn drop(&mut self) {
        if !self.ended {
            self.end(false);
            self.shared.aborted.fetch_add(1, Relaxed);
        }
    }
}
