//! Circuit breaker as a tower layer.

use std::task::{Context, Poll};

use tower_layer::Layer;
use tower_service::Service;

use super::BoxFuture;
use crate::Error;
use crate::breaker::CircuitBreaker;
use crate::classify::{Classify, DefaultClassifier};
use crate::rt::Clock;

/// Wraps a service in a [`CircuitBreaker`]: an open breaker rejects at once with
/// [`Rejected::CircuitOpen`](crate::Rejected::CircuitOpen), without calling the service.
///
/// Each result is counted as its [classifier](crate::classify) judges it (by default `Ok` a
/// success, `Err` a failure); an [`Ignored`](crate::classify::Verdict::Ignored) result
/// records nothing, and a call whose response future is dropped records nothing either.
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
/// let server_errors = |result: Result<&u16, &std::io::Error>| match result {
///     Ok(status) if *status >= 500 => Verdict::Failure,
///     Ok(_) => Verdict::Success,
///     Err(_) => Verdict::Failure,
/// };
/// let mut service = BreakerLayer::new(breaker)
///     .classify(server_errors)
///     .layer(tower::service_fn(|status: u16| async move { Ok::<_, std::io::Error>(status) }));
/// assert_eq!(service.call(503).await.ok(), Some(503));
/// assert_eq!(service.call(503).await.ok(), Some(503));
/// assert!(matches!(
///     service.call(200).await,
///     Err(Error::Rejected(Rejected::CircuitOpen { .. }))
/// ));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct BreakerLayer<R: Clock, C = DefaultClassifier> {
    breaker: CircuitBreaker<R>,
    classify: C,
}

impl<R: Clock> BreakerLayer<R> {
    /// A layer sharing `breaker` (clones of the breaker share its state).
    pub fn new(breaker: CircuitBreaker<R>) -> Self {
        Self {
            breaker,
            classify: DefaultClassifier,
        }
    }

    /// Counts results as `classify` judges them instead of `Ok`/`Err`.
    pub fn classify<C>(self, classify: C) -> BreakerLayer<R, C> {
        BreakerLayer {
            breaker: self.breaker,
            classify,
        }
    }
}

impl<S, R: Clock, C: Clone> Layer<S> for BreakerLayer<R, C> {
    type Service = BreakerService<S, R, C>;

    fn layer(&self, inner: S) -> Self::Service {
        BreakerService {
            inner,
            breaker: self.breaker.clone(),
            classify: self.classify.clone(),
        }
    }
}

/// The service of a [`BreakerLayer`].
#[derive(Debug, Clone)]
pub struct BreakerService<S, R: Clock, C = DefaultClassifier> {
    inner: S,
    breaker: CircuitBreaker<R>,
    classify: C,
}

impl<S, Req, R, C> Service<Req> for BreakerService<S, R, C>
where
    S: Service<Req>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    S::Error: Send + 'static,
    R: Clock,
    C: Classify<S::Response, S::Error> + Clone + Send + 'static,
{
    type Response = S::Response;
    type Error = Error<S::Error>;
    type Future = BoxFuture<Result<S::Response, Error<S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Error::Inner)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        match self.breaker.try_acquire_owned() {
            Err(rejected) => Box::pin(std::future::ready(Err(Error::Rejected(rejected)))),
            Ok(permit) => {
                let future = self.inner.call(req);
                let classify = self.classify.clone();
                Box::pin(async move {
                    let result = future.await;
                    // Dropping this future mid-call drops the permit: nothing is recorded.
                    permit.record(classify.classify(result.as_ref()).breaker_outcome());
                    result.map_err(Error::Inner)
                })
            }
        }
    }
}
