//! The layer: a breaker, a classifier, and whether callers wait for it.

use std::time::Duration;

use tower_layer::Layer;

use super::BreakerService;
use crate::breaker::CircuitBreaker;
use crate::classify::DefaultClassifier;
use crate::rt::{Clock, DefaultRuntime};

/// Wraps a service in a [`CircuitBreaker`]. By default an open breaker rejects at once with
/// [`Rejected::CircuitOpen`](crate::Rejected::CircuitOpen) and its `retry_after`, without
/// calling the service; with [`wait_in_ready`](Self::wait_in_ready), `poll_ready` holds the
/// caller until the breaker admits it instead (what load balancers and buffers expect from a
/// service that cannot take calls now).
///
/// Each result is counted as its [classifier](crate::classify) judges it (by default `Ok` a
/// success, `Err` a failure); an [`Ignored`](crate::classify::Verdict::Ignored) result
/// records nothing in the window (its metrics and events count it `ignored`), and a call
/// whose response future is dropped records nothing at all.
/// A refusal is the inner service's own error type, made with
/// [`PolicyError::rejected`](crate::tower::PolicyError::rejected); the classifier judges that
/// same type (in a typed stack, `Error<E>`: the service's own error is `Error::Inner`). A
/// refusal from a layer below (an error whose
/// [`PolicyError::rejection`](crate::tower::PolicyError::rejection) is `Some`: a full
/// bulkhead, a rate limit, another breaker) is recorded as `Ignored` (nothing in the
/// window) and is not shown to the classifier: it says nothing about the service's health,
/// so admission may sit on either side of the breaker.
///
/// ```
/// use std::time::Duration;
/// use tidewall::breaker::CircuitBreaker;
/// use tidewall::classify::Verdict;
/// use tidewall::tower::BreakerLayer;
/// use tidewall::{Error, Rejected};
/// use tower_layer::Layer;
/// use tower_service::Service;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let breaker = CircuitBreaker::builder().consecutive_failures(2).build()?;
/// // A status of 500 or more is a failure even though it is an `Ok` response.
/// let server_errors = |result: Result<&u16, &Error<std::io::Error>>| match result {
///     Ok(status) if *status >= 500 => Verdict::Failure,
///     Ok(_) => Verdict::Success,
///     Err(_) => Verdict::Failure,
/// };
/// let mut service = BreakerLayer::new(breaker)
///     .classify(server_errors)
///     .layer(tower::service_fn(|status: u16| async move { Ok::<_, Error<std::io::Error>>(status) }));
/// assert_eq!(service.call(503).await.ok(), Some(503));
/// assert_eq!(service.call(503).await.ok(), Some(503));
/// assert!(matches!(
///     service.call(200).await,
///     Err(Error::Rejected(Rejected::CircuitOpen { .. }))
/// ));
/// # Ok(()) }
/// ```
pub struct BreakerLayer<R = DefaultRuntime, C = DefaultClassifier> {
    breaker: CircuitBreaker<R>,
    classify: C,
    wait: Option<Option<Duration>>,
}

impl<R> BreakerLayer<R> {
    /// A layer sharing `breaker` (clones of the breaker share its state), rejecting while
    /// the breaker refuses.
    pub fn new(breaker: CircuitBreaker<R>) -> Self {
        Self {
            breaker,
            classify: DefaultClassifier,
            wait: None,
        }
    }
}

impl<R, C> BreakerLayer<R, C> {
    /// Counts results as `classify` judges them instead of `Ok`/`Err`.
    pub fn classify<C2>(self, classify: C2) -> BreakerLayer<R, C2> {
        BreakerLayer {
            breaker: self.breaker,
            classify,
            wait: self.wait,
        }
    }

    /// While the breaker refuses, `poll_ready` waits: it sleeps for the breaker's
    /// `retry_after` and asks again, and holds the permit it gets until the call. A wait
    /// longer than `max_wait` (`None`: no bound) gives up with the breaker's
    /// [`Rejected::CircuitOpen`](crate::Rejected::CircuitOpen), at once when the breaker's
    /// hint already ends past it; the rejection is counted once, then. Giving up is never a
    /// `poll_ready` error, which tower takes to mean the service is broken for good (a
    /// `Buffer` would fail every later request): `poll_ready` reports ready and the next
    /// call fails at once with the refusal, the inner service not called.
    ///
    /// **Cancel safety:** a caller that stops polling holds nothing but, once admitted, the
    /// permit (a half-open probe slot), given back when the service is dropped or called. It
    /// does not end the wait either: the next `poll_ready`, however much later, continues it,
    /// `max_wait` counted from the first, so it gives up at once if that has passed.
    #[must_use]
    pub fn wait_in_ready(mut self, max_wait: impl Into<Option<Duration>>) -> Self {
        self.wait = Some(max_wait.into());
        self
    }

    /// The breaker.
    pub fn breaker(&self) -> &CircuitBreaker<R> {
        &self.breaker
    }
}

impl<R: Clock, C: Clone> Clone for BreakerLayer<R, C> {
    fn clone(&self) -> Self {
        Self {
            breaker: self.breaker.clone(),
            classify: self.classify.clone(),
            wait: self.wait,
        }
    }
}

impl<R: Clock, C> std::fmt::Debug for BreakerLayer<R, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BreakerLayer")
            .field("breaker", &self.breaker)
            .field("wait", &self.wait)
            .finish_non_exhaustive()
    }
}

impl<S, R: Clock, C: Clone> Layer<S> for BreakerLayer<R, C> {
    type Service = BreakerService<S, R, C>;

    fn layer(&self, inner: S) -> Self::Service {
        BreakerService::new(
            inner,
            self.breaker.clone(),
            self.classify.clone(),
            self.wait,
        )
    }
}
