//! The future that waits for a bulkhead permit.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use pin_project_lite::pin_project;

use super::queue::{Place, Status};
use super::{Bulkhead, Permit};
use crate::rt::{Clock, instant_after};
use crate::sync::lock;
use crate::{Deadline, Rejected};

pin_project! {
    /// Waits for a permit: [`Bulkhead::acquire`] and [`Bulkhead::acquire_before`].
    ///
    /// **Cancel safety:** dropping it while queued removes the waiter from the queue; a
    /// permit granted to it in the meantime is passed to the next waiter. Nothing leaks.
    #[must_use = "futures do nothing unless polled"]
    pub struct Acquire<'a, R: Clock> {
        bulkhead: &'a Bulkhead<R>,
        deadline: Deadline,
        place: Option<Place>,
        // Why the timer was set: the deadline (true) or the bulkhead's max wait.
        timer_is_deadline: bool,
        #[pin]
        timer: Option<R::Sleep>,
        done: bool,
    }

    impl<'a, R: Clock> PinnedDrop for Acquire<'a, R> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(place) = this.place.take()
                && this.bulkhead.leave_queue(place)
            {
                // Granted after we stopped caring: pass it on.
                this.bulkhead.shared.release();
            }
        }
    }
}

impl<'a, R: Clock> Acquire<'a, R> {
    pub(super) fn new(bulkhead: &'a Bulkhead<R>, deadline: Deadline) -> Self {
        Self {
            bulkhead,
            deadline,
            place: None,
            timer_is_deadline: false,
            timer: None,
            done: false,
        }
    }
}

impl<'a, R: Clock> Future for Acquire<'a, R> {
    type Output = Result<Permit<'a, R>, Rejected>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let bulkhead: &'a Bulkhead<R> = this.bulkhead;
        let shared = &*bulkhead.shared;
        if *this.done {
            return Poll::Ready(Err(Rejected::BulkheadFull));
        }
        let place = match *this.place {
            Some(place) => place,
            None => {
                if shared.try_acquire() {
                    *this.done = true;
                    return Poll::Ready(Ok(Permit { bulkhead }));
                }
                let now = shared.rt.now();
                let max_wait_end = shared.max_wait.map(|w| instant_after(now, w));
                let refusal = if this.deadline.is_expired(now) {
                    Some(Rejected::DeadlineExceeded)
                } else if max_wait_end.is_some_and(|end| end <= now) {
                    Some(Rejected::BulkheadFull)
                } else {
                    None
                };
                let place = match refusal {
                    Some(reason) => None.ok_or(reason),
                    None => {
                        let mut queue = lock(&shared.queue);
                        if queue.waiting() >= shared.max_queue {
                            Err(Rejected::BulkheadFull)
                        } else {
                            let place = queue.push(cx.waker().clone());
                            shared.note_queued();
                            Ok(place)
                        }
                    }
                };
                let place = match place {
                    Ok(place) => place,
                    Err(reason) => {
                        *this.done = true;
                        return Poll::Ready(Err(shared.reject(reason)));
                    }
                };
                *this.place = Some(place);
                // A permit released between the fast-path check and enqueueing is handed out
                // here (possibly to this very waiter).
                shared.dispatch();
                let (end, is_deadline) = earliest(max_wait_end, this.deadline.instant());
                if let Some(end) = end {
                    *this.timer_is_deadline = is_deadline;
                    this.timer.set(Some(shared.rt.sleep_until(end)));
                }
                place
            }
        };
        if lock(&shared.queue).poll(place, cx.waker()) == Status::Granted {
            *this.place = None;
            *this.done = true;
            return Poll::Ready(Ok(Permit { bulkhead }));
        }
        let timed_out = this
            .timer
            .as_pin_mut()
            .is_some_and(|timer| timer.poll(cx).is_ready());
        if !timed_out {
            return Poll::Pending;
        }
        *this.place = None;
        *this.done = true;
        if bulkhead.leave_queue(place) {
            // Granted just as the wait ran out: take it.
            return Poll::Ready(Ok(Permit { bulkhead }));
        }
        let reason = if *this.timer_is_deadline {
            Rejected::DeadlineExceeded
        } else {
            Rejected::BulkheadFull
        };
        Poll::Ready(Err(shared.reject(reason)))
    }
}

fn earliest(max_wait_end: Option<Instant>, deadline: Option<Instant>) -> (Option<Instant>, bool) {
    match (max_wait_end, deadline) {
        (Some(w), Some(d)) if d <= w => (Some(d), true),
        (Some(w), _) => (Some(w), false),
        (None, Some(d)) => (Some(d), true),
        (None, None) => (None, false),
    }
}
