//! Circuit breaker as a tower layer.

use std::task::{Context, Poll};

use tower_layer::Layer;
use tower_service::Service;

use super::BoxFuture;
use crate::Error;
use crate::breaker::{CircuitBreaker, Outcome};
use crate::rt::Runtime;

/// Decides how a response counts for the breaker (e.g. an HTTP 5xx `Ok` as a failure).
pub trait Classify<Resp, E>: Clone + Send + Sync + 'static {
    /// The outcome of one call.
    fn classify(&self, result: &Result<Resp, E>) -> Outcome;
}

/// The default classifier: `Ok` is a success, `Err` a failure.
#[derive(Debug, Clone, Copy, Default)]
pub struct ErrIsFailure;

impl<Resp, E> Classify<Resp, E> for ErrIsFailure {
    fn classify(&self, result: &Result<Resp, E>) -> Outcome {
        if result.is_ok() {
            Outcome::Success
        } else {
            Outcome::Failure
        }
    }
}

impl<Resp, E, F> Classify<Resp, E> for F
where
    F: Fn(&Result<Resp, E>) -> Outcome + Clone + Send + Sync + 'static,
{
    fn classify(&self, result: &Result<Resp, E>) -> Outcome {
        self(result)
    }
}

/// Wraps a service in a [`CircuitBreaker`]: an open breaker rejects at once with
/// [`Rejected::CircuitOpen`](crate::Rejected::CircuitOpen), without calling the service.
#[derive(Debug, Clone)]
pub struct BreakerLayer<R: Runtime, C = ErrIsFailure> {
    breaker: CircuitBreaker<R>,
    classify: C,
}

impl<R: Runtime> BreakerLayer<R> {
    /// A layer sharing `breaker` (clones of the breaker share its state).
    pub fn new(breaker: CircuitBreaker<R>) -> Self {
        Self {
            breaker,
            classify: ErrIsFailure,
        }
    }

    /// Classifies results with `classify` instead of `Ok`/`Err`.
    pub fn classify<C>(self, classify: C) -> BreakerLayer<R, C> {
        BreakerLayer {
            breaker: self.breaker,
            classify,
        }
    }
}

impl<S, R: Runtime, C: Clone> Layer<S> for BreakerLayer<R, C> {
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
pub struct BreakerService<S, R: Runtime, C = ErrIsFailure> {
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
    R: Runtime,
    C: Classify<S::Response, S::Error>,
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
                    permit.record(classify.classify(&result));
                    result.map_err(Error::Inner)
                })
            }
        }
    }
}
