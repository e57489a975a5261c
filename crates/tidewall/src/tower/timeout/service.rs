//! The service: one budget from the first wait for readiness to the end of the call.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tower_service::Service;

use super::ResponseFuture;
use crate::rt::{Clock, DefaultRuntime, instant_after};
use crate::tower::{PolicyError, SyncSlot};

/// The readiness timer, kept between `poll_ready` calls. Boxed only when readiness has to
/// wait, and type-erased so the service needs no bound on its runtime.
type ReadinessTimer = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The service of a [`TimeoutLayer`](super::TimeoutLayer).
pub struct TimeoutService<S, R = DefaultRuntime> {
    inner: S,
    rt: R,
    timeout: Duration,
    started: Option<Instant>,
    readiness: SyncSlot<Option<ReadinessTimer>>,
    /// The budget ran out in `poll_ready`: it said ready (an error there would tell tower the
    /// service is broken for good), and the next call fails at once.
    expired: bool,
}

impl<S, R> TimeoutService<S, R> {
    #[inline]
    pub(super) fn new(inner: S, rt: R, timeout: Duration) -> Self {
        Self {
            inner,
            rt,
            timeout,
            started: None,
            readiness: SyncSlot::new(None),
            expired: false,
        }
    }

    inner_service_accessors!("");
}

impl<S, Req, R> Service<Req> for TimeoutService<S, R>
where
    S: Service<Req>,
    S::Error: PolicyError,
    R: Clock,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, R>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.expired {
            return Poll::Ready(Ok(()));
        }
        let slot = self.readiness.get_mut();
        match self.inner.poll_ready(cx) {
            // Ready at once: no wait to count (a service polled ready long before the call
            // must not have spent the call's budget).
            Poll::Ready(result) => {
                *slot = None;
                Poll::Ready(result)
            }
            Poll::Pending => {
                let started = *self.started.get_or_insert_with(|| self.rt.now());
                let (rt, end) = (&self.rt, instant_after(started, self.timeout));
                let timer = slot.get_or_insert_with(|| Box::pin(rt.sleep_until(end)));
                if timer.as_mut().poll(cx).is_ready() {
                    *slot = None;
                    self.started = None;
                    self.expired = true;
                    return Poll::Ready(Ok(()));
                }
                Poll::Pending
            }
        }
    }

    // Always: see `AdmitService::call` (a future returned through memory stalls on
    // store forwarding when read back).
    #[inline(always)]
    fn call(&mut self, req: Req) -> Self::Future {
        if std::mem::take(&mut self.expired) {
            return ResponseFuture::expired(self.rt.clone());
        }
        *self.readiness.get_mut() = None;
        let started = self.started.take().unwrap_or_else(|| self.rt.now());
        let end = instant_after(started, self.timeout);
        ResponseFuture::new(self.inner.call(req), self.rt.clone(), end)
    }
}

impl<S: Clone, R: Clone> Clone for TimeoutService<S, R> {
    fn clone(&self) -> Self {
        Self::new(self.inner.clone(), self.rt.clone(), self.timeout)
    }
}

impl<S, R> std::fmt::Debug for TimeoutService<S, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TimeoutService")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}
