//! The futures that wait for a bulkhead permit: one waiting core, borrowed and owned fronts.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use pin_project_lite::pin_project;

use super::queue::{Place, Status};
use super::shared::Shared;
use super::{Bulkhead, OwnedPermit, Permit};
use crate::admission::{Priority, Wait};
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
        #[pin]
        waiter: Waiter<R>,
    }

    impl<'a, R: Clock> PinnedDrop for Acquire<'a, R> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            this.waiter.leave(this.bulkhead);
        }
    }
}

pin_project! {
    /// Waits for a permit that owns a handle to the bulkhead, so it is `'static` (tower
    /// services, spawned tasks): [`Bulkhead::acquire_owned`] and the bulkhead's
    /// [`Admission::admit`](crate::admission::Admission::admit).
    ///
    /// **Cancel safety:** as [`Acquire`]; nothing leaks.
    #[must_use = "futures do nothing unless polled"]
    pub struct AcquireOwned<R: Clock> {
        bulkhead: Bulkhead<R>,
        #[pin]
        waiter: Waiter<R>,
    }

    impl<R: Clock> PinnedDrop for AcquireOwned<R> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            this.waiter.leave(this.bulkhead);
        }
    }
}

impl<'a, R: Clock> Acquire<'a, R> {
    pub(super) fn new(bulkhead: &'a Bulkhead<R>, deadline: Deadline) -> Self {
        Self {
            bulkhead,
            waiter: Waiter::new(Wait::Until(deadline), Priority::Default),
        }
    }
}

impl<R: Clock> AcquireOwned<R> {
    pub(super) fn new(bulkhead: Bulkhead<R>, wait: Wait, priority: Priority) -> Self {
        Self {
            bulkhead,
            waiter: Waiter::new(wait, priority),
        }
    }
}

impl<'a, R: Clock> Future for Acquire<'a, R> {
    type Output = Result<Permit<'a, R>, Rejected>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let bulkhead: &'a Bulkhead<R> = this.bulkhead;
        this.waiter
            .poll_slot(bulkhead, cx)
            .map_ok(|()| Permit { bulkhead })
    }
}

impl<R: Clock> AcquireOwned<R> {
    /// Once it has admitted: the slots held then, its own included (a queued caller's: when
    /// its slot was granted).
    pub(crate) fn held(&self) -> usize {
        self.waiter.held
    }
}

impl<R: Clock> AcquireOwned<R> {
    /// Polls for a slot without building a permit: once `Ok`, the slot is taken and the
    /// caller's guard must give it back with [`Bulkhead::release_slot`].
    pub(crate) fn poll_slot(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), Rejected>> {
        let this = self.project();
        this.waiter.poll_slot(this.bulkhead, cx)
    }
}

impl<R: Clock> Future for AcquireOwned<R> {
    type Output = Result<OwnedPermit<R>, Rejected>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        ready!(self.as_mut().poll_slot(cx))?;
        Poll::Ready(Ok(OwnedPermit {
            bulkhead: self.bulkhead.clone(),
        }))
    }
}

impl<R: Clock> std::fmt::Debug for Acquire<'_, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acquire")
            .field("bulkhead", self.bulkhead)
            .finish_non_exhaustive()
    }
}

impl<R: Clock> std::fmt::Debug for AcquireOwned<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcquireOwned")
            .field("bulkhead", &self.bulkhead)
            .finish_non_exhaustive()
    }
}

pin_project! {
    /// One caller's place in the wait: the queue position and the timer bounding it. It
    /// takes a slot (counted in the bulkhead) when it returns `Ok`; the front builds the
    /// permit that gives it back.
    struct Waiter<R: Clock> {
        wait: Wait,
        priority: Priority,
        place: Option<Place>,
        // Why the timer was set: the deadline (true) or the bulkhead's max wait.
        timer_is_deadline: bool,
        #[pin]
        timer: Option<R::Sleep>,
        done: bool,
        // When it joined the queue, for the wait-time histogram.
        queued_at: Option<Instant>,
        // Once admitted: the slots held then, its own included.
        held: usize,
    }
}

impl<R: Clock> Waiter<R> {
    fn new(wait: Wait, priority: Priority) -> Self {
        Self {
            wait,
            priority,
            place: None,
            timer_is_deadline: false,
            timer: None,
            done: false,
            queued_at: None,
            held: 0,
        }
    }

    /// Leaves the queue when the future is dropped while waiting.
    fn leave(self: Pin<&mut Self>, bulkhead: &Bulkhead<R>) {
        let this = self.project();
        if let Some(place) = this.place.take()
            && bulkhead.leave_queue(place).is_some()
        {
            // Granted after we stopped caring: pass it on.
            bulkhead.shared.release();
        }
    }

    fn poll_slot(
        self: Pin<&mut Self>,
        bulkhead: &Bulkhead<R>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), Rejected>> {
        let mut this = self.project();
        let shared = &*bulkhead.shared;
        if *this.done {
            return Poll::Ready(Err(Rejected::BulkheadFull));
        }
        let place = match *this.place {
            Some(place) => place,
            None => {
                if let Some(held) = shared.try_admit_as(*this.priority) {
                    *this.done = true;
                    *this.held = held;
                    return Poll::Ready(Ok(()));
                }
                let deadline = match *this.wait {
                    Wait::No => {
                        *this.done = true;
                        return Poll::Ready(Err(shared.reject(Rejected::BulkheadFull)));
                    }
                    Wait::Until(deadline) => deadline,
                };
                let now = shared.rt.now();
                let mut max_wait_end = shared.max_wait().map(|w| instant_after(now, w));
                // Without a queue a full bulkhead refuses as full, whatever the deadline.
                let refusal = if shared.max_queue() == 0 {
                    Some(Rejected::BulkheadFull)
                } else if deadline.is_expired(now) {
                    Some(Rejected::DeadlineExceeded)
                } else if max_wait_end.is_some_and(|end| end <= now) {
                    Some(Rejected::BulkheadFull)
                } else {
                    None
                };
                let mut shed = None;
                let place = match refusal {
                    Some(reason) => None.ok_or(reason),
                    None => {
                        let mut queue = lock(&shared.queue);
                        // Full: room only by shedding a less important waiter, and only if
                        // one makes room (a queue shrunk below its waiters by a reconfigure
                        // sheds nobody for a caller it would refuse anyway).
                        if queue.waiting() == shared.max_queue() {
                            shed = queue.shed_for(*this.priority);
                            if shed.is_some() {
                                shared.note_unqueued();
                            }
                        }
                        if queue.waiting() >= shared.max_queue() {
                            Err(Rejected::BulkheadFull)
                        } else {
                            if let Some(bound) = queue.bound(now) {
                                let end = instant_after(now, bound);
                                max_wait_end = Some(max_wait_end.map_or(end, |e| e.min(end)));
                            }
                            let place = queue.push(cx.waker().clone(), *this.priority, now);
                            shared.note_queued();
                            Ok(place)
                        }
                    }
                };
                if let Some(Some(waker)) = shed {
                    waker.wake();
                }
                let place = match place {
                    Ok(place) => place,
                    Err(reason) => {
                        *this.done = true;
                        return Poll::Ready(Err(shared.reject(reason)));
                    }
                };
                *this.place = Some(place);
                *this.queued_at = Some(now);
                // A permit released between the fast-path check and enqueueing is handed out
                // here (possibly to this very waiter).
                shared.dispatch();
                let (end, is_deadline) = earliest(max_wait_end, deadline.instant());
                if let Some(end) = end {
                    *this.timer_is_deadline = is_deadline;
                    this.timer.set(Some(shared.rt.sleep_until(end)));
                }
                place
            }
        };
        // The lock is released before the listener is told, which may look at this bulkhead.
        let status = lock(&shared.queue).poll(place, cx.waker());
        match status {
            Status::Granted(held) => {
                *this.place = None;
                *this.done = true;
                *this.held = held;
                tell_waited(shared, *this.queued_at);
                return Poll::Ready(Ok(()));
            }
            Status::Shed => {
                *this.place = None;
                *this.done = true;
                return Poll::Ready(Err(shared.reject(Rejected::BulkheadFull)));
            }
            Status::Waiting => {}
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
        if let Some(held) = bulkhead.leave_queue(place) {
            // Granted just as the wait ran out: take it.
            *this.held = held;
            tell_waited(shared, *this.queued_at);
            return Poll::Ready(Ok(()));
        }
        let reason = if *this.timer_is_deadline {
            Rejected::DeadlineExceeded
        } else {
            Rejected::BulkheadFull
        };
        Poll::Ready(Err(shared.reject(reason)))
    }
}

/// Tells the listener how long a granted waiter waited. Its slot is taken and no permit holds
/// it yet (the front builds one from the `Ok` this returns to): if the listener panics, the
/// slot is given back as the waiter unwinds, so no capacity is lost to it.
fn tell_waited<R: Clock>(shared: &Shared<R>, since: Option<Instant>) {
    crate::telemetry::tell_or_give_back(|| shared.waited(since), || shared.release());
}

fn earliest(max_wait_end: Option<Instant>, deadline: Option<Instant>) -> (Option<Instant>, bool) {
    match (max_wait_end, deadline) {
        (Some(w), Some(d)) if d <= w => (Some(d), true),
        (Some(w), _) => (Some(w), false),
        (None, Some(d)) => (Some(d), true),
        (None, None) => (None, false),
    }
}
