//! The layer: an admission stage, a mode, an optional bound on the wait.

use std::time::Duration;

use tower_layer::Layer;

use super::{AdmitMode, AdmitService};
use crate::admission::Admission;
use crate::rt::DefaultRuntime;

/// Admits each call through an [`Admission`] stage before the inner service sees it, in one
/// of three [modes](AdmitMode). Clones of the layer, and of the services it makes, share the
/// stage (the stage types are handles: clones of a limiter or bulkhead share its state).
///
/// The stage's guard (a bulkhead slot) is held until the response future completes, or is
/// dropped with it. A refusal is the inner service's own error type, made with
/// [`PolicyError::rejected`](crate::tower::PolicyError::rejected). The inner service is
/// `Clone`, in every mode: a call not admitted at once takes the service `poll_ready` made
/// ready into its future, to call it once admitted, and leaves a clone in its place
/// (tower's clone-and-swap).
///
/// A stage that learns (an [`AdaptiveLimiter`](crate::adaptive::AdaptiveLimiter)) is told
/// how the call ended ([`Admission::finish`]): a response is a success, an error a failure
/// (a timeout from a layer inside included), and a refusal from a layer inside (an error
/// whose [`PolicyError::rejection`](crate::tower::PolicyError::rejection) is `Some`, a
/// `DeadlineExceeded` included) is ignored, as a [`BreakerLayer`](crate::tower::BreakerLayer)
/// and a [`PipelineLayer`](crate::tower::PipelineLayer) ignore it: the layer cannot tell a
/// wait inside that ran out from a call that reached the service. To teach it slow calls,
/// bound them with a timeout (a [`TimeoutLayer`](crate::tower::TimeoutLayer) inside).
///
/// ```
/// use std::time::Duration;
/// use tidewall::bulkhead::Bulkhead;
/// use tidewall::rate::RateLimiter;
/// use tidewall::tower::{AdmitLayer, AdmitMode};
/// use tidewall::{Error, Rejected};
/// use tower::ServiceExt as _;
/// use tower_service::Service as _;
/// use tower_layer::Layer;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let echo = tower::service_fn(|x: u32| async move { Ok::<_, std::convert::Infallible>(x) })
///     .map_err(Error::Inner);
///
/// // Load shedding: a burst of 1, the second call is refused with the limiter's hint.
/// let limiter = RateLimiter::builder(1, Duration::from_secs(1)).burst(1).build()?;
/// let mut shed = AdmitLayer::new(limiter, AdmitMode::Reject).layer(echo.clone());
/// assert_eq!(shed.ready().await?.call(7).await?, 7);
/// assert!(matches!(
///     shed.ready().await?.call(8).await,
///     Err(Error::Rejected(Rejected::RateLimited { .. }))
/// ));
///
/// // Backpressure: `poll_ready` waits for a bulkhead slot, held until the call completes.
/// let bulkhead = Bulkhead::builder(4).build()?;
/// let mut limited = AdmitLayer::new(bulkhead.clone(), AdmitMode::WaitReady).layer(echo);
/// assert_eq!(limited.ready().await?.call(9).await?, 9);
/// assert_eq!(bulkhead.available(), 4);
/// # Ok(()) }
/// ```
///
/// **A priority per request.** An [adaptive limiter](crate::adaptive)'s priority belongs to
/// its handle ([`with_priority`](crate::adaptive::AdaptiveLimiter::with_priority)), so give
/// each priority its own layer over the same limiter and pick one per request with
/// `tower::steer::Steer`. Use [`AdmitMode::Reject`] or [`AdmitMode::WaitCall`] there, not
/// [`AdmitMode::WaitReady`]: `Steer` readies every service before it calls one, and in
/// `WaitReady` that takes a slot under every priority while nothing runs (and a sheddable
/// layer waiting for its share keeps the whole service from being ready).
///
/// ```
/// use std::convert::Infallible;
/// use tidewall::adaptive::{AdaptiveLimiter, Aimd, Priority};
/// use tidewall::tower::{AdmitLayer, AdmitMode};
/// use tidewall::{Error, Rejected};
/// use tower::ServiceExt as _;
/// use tower::steer::Steer;
/// use tower_layer::Layer;
/// use tower_service::Service as _;
///
/// fn priority_of(path: &str) -> Priority {
///     match path {
///         p if p.starts_with("/checkout") => Priority::Critical,
///         p if p.starts_with("/prefetch") => Priority::Sheddable,
///         _ => Priority::Default,
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let aimd = Aimd::builder().min_limit(1).initial_limit(5).build()?;
/// let limiter = AdaptiveLimiter::builder(aimd).build()?;
/// let backend = tower::service_fn(|path: &'static str| async move { Ok::<_, Infallible>(path) })
///     .map_err(Error::Inner);
/// // One layer per priority, in `Priority::ALL`'s order, so a priority's place picks it.
/// let layers = Priority::ALL.map(|priority| {
///     AdmitLayer::new(limiter.with_priority(priority), AdmitMode::Reject).layer(backend.clone())
/// });
/// let mut service = Steer::new(layers, |path: &&'static str, _: &[_]| {
///     let priority = priority_of(path);
///     Priority::ALL.iter().position(|p| *p == priority).unwrap_or(1)
/// });
///
/// // Four of five in flight: the sheddable share (0.8 of the limit) is used up.
/// let held: Vec<_> = (0..4).map(|_| limiter.try_acquire()).collect::<Result<_, _>>()?;
/// assert!(matches!(
///     service.ready().await?.call("/prefetch/next").await,
///     Err(Error::Rejected(Rejected::BulkheadFull))
/// ));
/// assert_eq!(service.ready().await?.call("/checkout").await?, "/checkout");
/// # drop(held);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct AdmitLayer<A, R = DefaultRuntime> {
    admission: A,
    mode: AdmitMode,
    max_wait: Option<Duration>,
    rt: R,
}

impl<A> AdmitLayer<A> {
    /// Admits through `admission` in `mode`; a wait lasts as long as the stage allows (a
    /// bulkhead's own `max_wait`, or until the limiter admits) unless bounded with
    /// [`max_wait`](Self::max_wait).
    pub fn new(admission: A, mode: AdmitMode) -> Self {
        Self {
            admission,
            mode,
            max_wait: None,
            rt: DefaultRuntime::default(),
        }
    }
}

impl<A, R> AdmitLayer<A, R> {
    /// Times [`max_wait`](Self::max_wait) on `rt`'s clock (use the stage's runtime).
    pub fn runtime<R2>(self, rt: R2) -> AdmitLayer<A, R2> {
        AdmitLayer {
            admission: self.admission,
            mode: self.mode,
            max_wait: self.max_wait,
            rt,
        }
    }

    /// Bounds each wait (in `poll_ready` or in the call) by `max_wait`: a stage that cannot
    /// admit in time refuses with
    /// [`Rejected::DeadlineExceeded`](crate::Rejected::DeadlineExceeded), at once when the
    /// wait is known to end later (a rate limiter's). No effect in [`AdmitMode::Reject`].
    #[must_use]
    pub fn max_wait(mut self, max_wait: Duration) -> Self {
        self.max_wait = Some(max_wait);
        self
    }

    /// The stage.
    pub fn admission(&self) -> &A {
        &self.admission
    }

    /// The mode.
    pub fn mode(&self) -> AdmitMode {
        self.mode
    }
}

impl<S, A: Admission + Clone, R: Clone> Layer<S> for AdmitLayer<A, R> {
    type Service = AdmitService<S, A, R>;

    fn layer(&self, inner: S) -> Self::Service {
        AdmitService::new(
            inner,
            self.admission.clone(),
            self.mode,
            self.max_wait,
            self.rt.clone(),
        )
    }
}
