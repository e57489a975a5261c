//! The tower front (features `chaos` and `tower`): each request a call through the handle.

use std::task::{Context, Poll};

use tower_layer::Layer;
use tower_service::Service;

use super::{Call, Chaos, InjectedFault};
use crate::rt::{Clock, DefaultRuntime};

/// Injects [`Chaos`]'s faults into every request of the service it wraps.
///
/// Put it innermost (right around the service) for the layers above it to see its faults as
/// the service's: a retry retries its errors, a breaker counts them, a timeout ends its hangs
/// and delays. Clones of the layer, and every service it makes, share the handle: its
/// settings, its switch and its call numbers.
///
/// ```
/// use std::time::Duration;
/// use tidewall::chaos::{Chaos, ChaosLayer, InjectedFault};
/// use tower::{BoxError, ServiceExt as _};
/// use tower_layer::Layer;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), BoxError> {
/// let chaos = Chaos::builder().seed(3).error(1.0).build()?;
/// let echo = tower::service_fn(|x: u32| async move { Ok::<_, BoxError>(x) });
/// let service = ChaosLayer::new(chaos.clone()).layer(echo);
/// let err = service.clone().oneshot(7).await.unwrap_err();
/// assert_eq!(err.downcast_ref::<InjectedFault>(), Some(&InjectedFault::Error));
/// chaos.set_enabled(false);
/// assert_eq!(service.oneshot(7).await?, 7);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct ChaosLayer<R = DefaultRuntime> {
    chaos: Chaos<R>,
}

impl<R> ChaosLayer<R> {
    /// Injects `chaos`'s faults (on `chaos`'s runtime).
    ///
    /// ```
    /// use tidewall::chaos::{Chaos, ChaosLayer};
    ///
    /// let layer = ChaosLayer::new(Chaos::builder().error(0.01).build()?);
    /// assert_eq!(layer.chaos().settings().error_rate, 0.01);
    /// # Ok::<(), tidewall::ConfigError>(())
    /// ```
    pub fn new(chaos: Chaos<R>) -> Self {
        Self { chaos }
    }

    /// The handle: change its settings here and every service of this layer follows.
    ///
    /// ```
    /// use tidewall::chaos::{Chaos, ChaosLayer};
    ///
    /// let layer = ChaosLayer::new(Chaos::builder().build()?);
    /// layer.chaos().set_error_rate(0.2)?;
    /// # Ok::<(), tidewall::ConfigError>(())
    /// ```
    pub fn chaos(&self) -> &Chaos<R> {
        &self.chaos
    }
}

impl<S, R> Layer<S> for ChaosLayer<R> {
    type Service = ChaosService<S, R>;

    fn layer(&self, inner: S) -> Self::Service {
        ChaosService {
            inner,
            chaos: self.chaos.clone(),
        }
    }
}

/// The service of a [`ChaosLayer`].
///
/// ```
/// use tidewall::chaos::{Chaos, ChaosLayer};
/// use tower::{BoxError, ServiceExt as _};
/// use tower_layer::Layer;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), BoxError> {
/// let chaos = Chaos::builder().alter(1.0).build()?;
/// let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
/// let counted = calls.clone();
/// let service = ChaosLayer::new(chaos).layer(tower::service_fn(move |x: u32| {
///     counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
///     async move { Ok::<_, BoxError>(x) }
/// }));
/// assert!(service.oneshot(1).await.is_err(), "its answer was altered");
/// assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1, "but it was called");
/// # Ok(()) }
/// ```
///
/// `poll_ready` is the inner service's. A request given an error or a hang is not passed to
/// the inner service (the readiness it reserved stays with it, for the next request); one
/// given latency is passed at once and its response future first polled after the delay.
///
/// **Cancel safety:** dropping the response future drops the delay's timer and the inner
/// response future; nothing else is held.
#[derive(Debug, Clone)]
pub struct ChaosService<S, R = DefaultRuntime> {
    inner: S,
    chaos: Chaos<R>,
}

impl<S, R> ChaosService<S, R> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// The handle.
    ///
    /// ```
    /// use tidewall::chaos::{Chaos, ChaosLayer};
    /// use tower_layer::Layer;
    ///
    /// let service = ChaosLayer::new(Chaos::builder().build()?).layer(tower::service_fn(|x: u32| async move {
    ///     Ok::<_, tower::BoxError>(x)
    /// }));
    /// service.chaos().set_enabled(false);
    /// # Ok::<(), tidewall::ConfigError>(())
    /// ```
    pub fn chaos(&self) -> &Chaos<R> {
        &self.chaos
    }
}

impl<S, Req, R> Service<Req> for ChaosService<S, R>
where
    S: Service<Req>,
    S::Error: From<InjectedFault>,
    R: Clock,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Call<S::Future, R>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    // Always: as the other services' `call` (a future returned through memory stalls on
    // store forwarding when read back).
    #[inline(always)]
    fn call(&mut self, req: Req) -> Self::Future {
        let inner = &mut self.inner;
        self.chaos.call(|| inner.call(req))
    }
}
