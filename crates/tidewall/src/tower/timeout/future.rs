//! The response future: the call, raced against what is left of the budget.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use pin_project_lite::pin_project;

use crate::rt::Clock;
use crate::tower::PolicyError;

pin_project! {
    /// The response future of a [`TimeoutService`](super::TimeoutService): the inner call,
    /// or [`PolicyError::timed_out`] when the budget runs out first, the inner call then dropped at
    /// once (with whatever it held: a bulkhead slot, a connection). The budget's end is fixed
    /// at the call; the timer is armed only if the call is still running when first polled.
    ///
    /// **Cancel safety:** dropping it drops the inner call and the timer.
    #[must_use = "futures do nothing unless polled"]
    pub struct ResponseFuture<F, R: Clock> {
        #[pin]
        call: Option<F>,
        rt: R,
        end: Instant,
        #[pin]
        timer: Option<R::Sleep>,
    }
}

impl<F, R: Clock> ResponseFuture<F, R> {
    #[inline]
    pub(super) fn new(call: F, rt: R, end: Instant) -> Self {
        Self {
            call: Some(call),
            rt,
            end,
            timer: None,
        }
    }
}

impl<F, R: Clock> ResponseFuture<F, R> {
    /// A call whose budget ran out while `poll_ready` waited: it times out at once, the inner
    /// service never called.
    #[cold]
    pub(super) fn expired(rt: R) -> Self {
        let end = rt.now();
        Self {
            call: None,
            rt,
            end,
            timer: None,
        }
    }
}

impl<F, R, V, E> Future for ResponseFuture<F, R>
where
    F: Future<Output = Result<V, E>>,
    E: PolicyError,
    R: Clock,
{
    type Output = Result<V, E>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let Some(call) = this.call.as_mut().as_pin_mut() else {
            return Poll::Ready(Err(E::timed_out()));
        };
        if let Poll::Ready(result) = call.poll(cx) {
            return Poll::Ready(result);
        }
        if this.timer.is_none() {
            this.timer.set(Some(this.rt.sleep_until(*this.end)));
        }
        let expired = this
            .timer
            .as_pin_mut()
            .is_some_and(|timer| timer.poll(cx).is_ready());
        if !expired {
            return Poll::Pending;
        }
        this.call.set(None);
        Poll::Ready(Err(E::timed_out()))
    }
}

impl<F, R: Clock> std::fmt::Debug for ResponseFuture<F, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("end", &self.end)
            .finish_non_exhaustive()
    }
}
