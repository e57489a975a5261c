//! The service: one budget for a request's wait for readiness and its call.

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
    /// While `poll_ready` waits: when the wait began.
    started: Option<Instant>,
    /// How long the last readiness wait took, once it ended: charged to the next call (the
    /// time the service then sits ready before it is called is not).
    waited: Duration,
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
            waited: Duration::ZERO,
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
            // The wait (if any) ends here: its length goes to the next call, which is budgeted
            // from when it comes (a service polled ready long before the call must not have
            // spent the call's budget sitting ready).
            Poll::Ready(result) => {
                *slot = None;
                if let Some(started) = self.started.take() {
                    self.waited = self.rt.now().saturating_duration_since(started);
                }
                Poll::Ready(result)
            }
            Poll::Pending => {
                let started = *self.started.get_or_insert_with(|| self.rt.now());
                let (rt, end) = (&self.rt, instant_after(started, self.timeout));
                let timer = slot.get_or_insert_with(|| Box::pin(rt.sleep_until(end)));
                if timer.as_mut().poll(cx).is_ready() {
                    *slot = None;
                    self.started = None;
                    self.waited = Duration::ZERO;
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
        let waited = std::mem::take(&mut self.waited);
        // A call while readiness still waits (against tower's contract) counts from the wait.
        let end = match self.started.take() {
            Some(started) => instant_after(started, self.timeout),
            None => instant_after(self.rt.now(), self.timeout.saturating_sub(waited)),
        };
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
