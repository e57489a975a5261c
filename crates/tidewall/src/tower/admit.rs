//! Any [`Admission`] stage as a tower layer: the in-process limiter and bulkhead, or one kept
//! elsewhere (a distributed limiter) that can only decide after a round trip.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tower_layer::Layer;
use tower_service::Service;

use super::BoxFuture;
use crate::pipeline::Admission;
use crate::rt::{Clock, DefaultRuntime};
use crate::{Deadline, Error};

/// Admits each call through `stage` before it reaches the inner service, holding the stage's
/// guard (a bulkhead slot) until the call's future completes. The decision is made inside the
/// response future, so it may wait (a Redis round trip, a rate-limit delay) up to `max_wait`;
/// the inner service (which must be `Clone`) is called only once admitted.
///
/// **Cancel safety:** dropping the response future drops the admission wait or the guard,
/// releasing whatever it held.
///
/// ```
/// use std::time::Duration;
/// use tidewall::rate::RateLimiter;
/// use tidewall::tower::AdmitLayer;
/// use tower_layer::Layer;
/// use tower_service::Service;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let limiter = RateLimiter::builder(1, Duration::from_secs(1)).burst(1).build()?;
/// let service = tower::service_fn(|x: u32| async move { Ok::<_, std::convert::Infallible>(x) });
/// let mut service = AdmitLayer::new(limiter).max_wait(Duration::ZERO).layer(service);
/// assert_eq!(service.call(7).await?, 7);
/// assert!(service.call(8).await.is_err(), "a burst of 1, no wait: refused");
/// # Ok(()) }
/// ```
pub struct AdmitLayer<A, R = DefaultRuntime> {
    stage: Arc<A>,
    max_wait: Option<Duration>,
    rt: R,
}

impl<A, R: Clone> Clone for AdmitLayer<A, R> {
    fn clone(&self) -> Self {
        Self {
            stage: Arc::clone(&self.stage),
            max_wait: self.max_wait,
            rt: self.rt.clone(),
        }
    }
}

impl<A, R> std::fmt::Debug for AdmitLayer<A, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdmitLayer")
            .field("max_wait", &self.max_wait)
            .finish_non_exhaustive()
    }
}

impl<A: Admission> AdmitLayer<A> {
    /// Admits through `stage`, waiting as long as it takes (set a bound with
    /// [`max_wait`](Self::max_wait)); the wait is timed on the default runtime's clock.
    pub fn new(stage: A) -> Self {
        Self {
            stage: Arc::new(stage),
            max_wait: None,
            rt: DefaultRuntime::default(),
        }
    }
}

impl<A: Admission, R: Clock> AdmitLayer<A, R> {
    /// Times the wait on `rt`'s clock (the stage's runtime).
    pub fn runtime<R2: Clock>(self, rt: R2) -> AdmitLayer<A, R2> {
        AdmitLayer {
            stage: self.stage,
            max_wait: self.max_wait,
            rt,
        }
    }

    /// Refuses a call whose admission would take longer than `max_wait`
    /// ([`Rejected::DeadlineExceeded`](crate::Rejected::DeadlineExceeded): the stages give up
    /// at once when the wait would pass it); `Duration::ZERO` refuses whatever cannot pass
    /// now.
    #[must_use]
    pub fn max_wait(mut self, max_wait: Duration) -> Self {
        self.max_wait = Some(max_wait);
        self
    }
}

impl<S, A, R: Clone> Layer<S> for AdmitLayer<A, R> {
    type Service = AdmitService<S, A, R>;

    fn layer(&self, inner: S) -> Self::Service {
        AdmitService {
            inner,
            stage: Arc::clone(&self.stage),
            max_wait: self.max_wait,
            rt: self.rt.clone(),
        }
    }
}

/// The service of an [`AdmitLayer`]; clones share the stage.
pub struct AdmitService<S, A, R = DefaultRuntime> {
    inner: S,
    stage: Arc<A>,
    max_wait: Option<Duration>,
    rt: R,
}

impl<S: Clone, A, R: Clone> Clone for AdmitService<S, A, R> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            stage: Arc::clone(&self.stage),
            max_wait: self.max_wait,
            rt: self.rt.clone(),
        }
    }
}

impl<S, A, R> std::fmt::Debug for AdmitService<S, A, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdmitService")
            .field("max_wait", &self.max_wait)
            .finish_non_exhaustive()
    }
}

impl<S, A, R, Req> Service<Req> for AdmitService<S, A, R>
where
    R: Clock,
    S: Service<Req> + Clone + Send + 'static,
    Req: Send + 'static,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    S::Error: Send + 'static,
    A: Admission + 'static,
{
    type Response = S::Response;
    type Error = Error<S::Error>;
    type Future = BoxFuture<Result<S::Response, Error<S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Error::Inner)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let stage = Arc::clone(&self.stage);
        let deadline = match self.max_wait {
            Some(wait) => Deadline::after(&self.rt, wait),
            None => Deadline::none(),
        };
        // The inner service is called only once admitted: some services act inside `call`
        // (a buffer enqueues, a client sends). The clone that was made ready goes into the
        // future and a fresh clone stays (tower's clone-and-swap), so readiness is honoured.
        let clone = self.inner.clone();
        let mut ready = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let _guard = match stage.try_admit().map_err(Error::Rejected)? {
                Some(guard) => guard,
                None => stage.admit(deadline).await.map_err(Error::Rejected)?,
            };
            ready.call(req).await.map_err(Error::Inner)
        })
    }
}
