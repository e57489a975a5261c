//! Hedging as a tower layer, for idempotent requests.

use std::task::{Context, Poll};

use tower_layer::Layer;
use tower_service::Service;

use super::BoxFuture;
use crate::classify::{Classify, DefaultClassifier};
use crate::hedge::{Hedge, Idempotent};
use crate::rt::Clock;

/// Hedges every request with a [`Hedge`] policy. Apply it only to routes whose requests are
/// idempotent: a hedge sends a clone of the request to a clone of the service. Responses are
/// judged by the hedge's [classifier](crate::hedge::HedgeBuilder::classify).
#[derive(Debug, Clone)]
pub struct HedgeLayer<R: Clock, K = DefaultClassifier> {
    hedge: Hedge<R, K>,
}

impl<R: Clock, K> HedgeLayer<R, K> {
    /// A layer sharing `hedge` (its latency estimate, budget and classifier).
    pub fn new(hedge: Hedge<R, K>) -> Self {
        Self { hedge }
    }
}

impl<S, R: Clock, K: Clone> Layer<S> for HedgeLayer<R, K> {
    type Service = HedgeService<S, R, K>;

    fn layer(&self, inner: S) -> Self::Service {
        HedgeService {
            inner,
            hedge: self.hedge.clone(),
        }
    }
}

/// The service of a [`HedgeLayer`].
#[derive(Debug, Clone)]
pub struct HedgeService<S, R: Clock, K = DefaultClassifier> {
    inner: S,
    hedge: Hedge<R, K>,
}

impl<S, Req, R, K> Service<Req> for HedgeService<S, R, K>
where
    S: Service<Req> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    S::Error: Send + 'static,
    Req: Clone + Send + Sync + 'static,
    R: Clock,
    K: Classify<S::Response, S::Error> + Clone + Send + Sync + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        // The service polled ready makes the primary attempt (its readiness — a rate-limit
        // cell, a bulkhead slot — is used, not wasted); hedges use fresh clones, each polled
        // ready first.
        let template = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, template.clone());
        let hedge = self.hedge.clone();
        Box::pin(async move {
            let mut ready = Some(ready);
            let attempt = move || {
                let req = req.clone();
                let (mut service, is_ready) = match ready.take() {
                    Some(service) => (service, true),
                    None => (template.clone(), false),
                };
                async move {
                    if !is_ready {
                        std::future::poll_fn(|cx| service.poll_ready(cx)).await?;
                    }
                    service.call(req).await
                }
            };
            hedge.call(Idempotent(attempt)).await
        })
    }
}
