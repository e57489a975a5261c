//! A timeout that covers readiness and the call with one budget.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tower_layer::Layer;
use tower_service::Service;

use super::{BoxFuture, SyncSlot};
use crate::rt::{Clock, DefaultRuntime, instant_after};
use crate::time::FutureExt as _;
use crate::{Deadline, Error};

/// Bounds each request — waiting for the service to be ready *and* the call — by `timeout`.
///
/// The clock starts when `poll_ready` first has to wait for a request (or at the call, if
/// the service was ready at once); if readiness takes too long, `poll_ready` fails with
/// [`Error::TimedOut`], and the call gets only what is left.
///
/// ```
/// use std::time::Duration;
/// use tidewall::Error;
/// use tidewall::tower::TimeoutLayer;
/// use tower_layer::Layer;
/// use tower_service::Service;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let slow = tower::service_fn(|(): ()| async {
///     tokio::time::sleep(Duration::from_secs(5)).await;
///     Ok::<_, std::convert::Infallible>("late")
/// });
/// let mut service = TimeoutLayer::new(Duration::from_millis(300)).layer(slow);
/// assert!(matches!(service.call(()).await, Err(Error::TimedOut)));
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct TimeoutLayer<R = DefaultRuntime> {
    rt: R,
    timeout: Duration,
}

impl TimeoutLayer {
    /// `timeout` per request, on the default runtime's clock.
    pub fn new(timeout: Duration) -> Self {
        Self {
            rt: DefaultRuntime::default(),
            timeout,
        }
    }
}

impl<R> TimeoutLayer<R> {
    /// Times requests on `rt`'s clock.
    pub fn runtime<R2: Clock>(self, rt: R2) -> TimeoutLayer<R2> {
        TimeoutLayer {
            rt,
            timeout: self.timeout,
        }
    }
}

impl<S, R: Clock> Layer<S> for TimeoutLayer<R> {
    type Service = TimeoutService<S, R>;

    fn layer(&self, inner: S) -> Self::Service {
        TimeoutService {
            inner,
            rt: self.rt.clone(),
            timeout: self.timeout,
            started: None,
            sleep: SyncSlot::empty(),
        }
    }
}

/// The service of a [`TimeoutLayer`].
pub struct TimeoutService<S, R: Clock> {
    inner: S,
    rt: R,
    timeout: Duration,
    started: Option<Instant>,
    sleep: SyncSlot<Pin<Box<R::Sleep>>>,
}

impl<S: Clone, R: Clock> Clone for TimeoutService<S, R> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            rt: self.rt.clone(),
            timeout: self.timeout,
            started: None,
            sleep: SyncSlot::empty(),
        }
    }
}

impl<S, R: Clock> std::fmt::Debug for TimeoutService<S, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TimeoutService")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl<S, Req, R> Service<Req> for TimeoutService<S, R>
where
    S: Service<Req>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    S::Error: Send + 'static,
    R: Clock,
{
    type Response = S::Response;
    type Error = Error<S::Error>;
    type Future = BoxFuture<Result<S::Response, Error<S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let slot = self.sleep.get_mut();
        match self.inner.poll_ready(cx) {
            // Ready at once: no wait to count (a service polled ready long before the call
            // must not have spent the call's budget).
            Poll::Ready(result) => {
                *slot = None;
                Poll::Ready(result.map_err(Error::Inner))
            }
            Poll::Pending => {
                let started = *self.started.get_or_insert_with(|| self.rt.now());
                let (rt, end) = (&self.rt, instant_after(started, self.timeout));
                let sleep = slot.get_or_insert_with(|| Box::pin(rt.sleep_until(end)));
                if sleep.as_mut().poll(cx).is_ready() {
                    *slot = None;
                    self.started = None;
                    return Poll::Ready(Err(Error::TimedOut));
                }
                Poll::Pending
            }
        }
    }

    fn call(&mut self, req: Req) -> Self::Future {
        *self.sleep.get_mut() = None;
        let started = self.started.take().unwrap_or_else(|| self.rt.now());
        let deadline = Deadline::at(instant_after(started, self.timeout));
        let future = self.inner.call(req);
        let rt = self.rt.clone();
        Box::pin(async move {
            match future.deadline_on(&rt, deadline).await {
                Ok(result) => result.map_err(Error::Inner),
                Err(_) => Err(Error::TimedOut),
            }
        })
    }
}
