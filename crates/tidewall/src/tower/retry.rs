//! Retry as a tower layer, cloning the request only when a retry can follow.

use std::task::{Context, Poll};

use tidewall_core::backoff::Backoff;
use tower_layer::Layer;
use tower_service::Service;

use super::BoxFuture;
use crate::budget::RetryBudget;
use crate::rt::Runtime;

/// Which errors to retry.
pub trait RetryPredicate<E>: Clone + Send + Sync + 'static {
    /// Whether `error` is worth another attempt.
    fn should_retry(&self, error: &E) -> bool;
}

/// Retry every error (the default).
#[derive(Debug, Clone, Copy, Default)]
pub struct RetryAll;

impl<E> RetryPredicate<E> for RetryAll {
    fn should_retry(&self, _: &E) -> bool {
        true
    }
}

impl<E, F: Fn(&E) -> bool + Clone + Send + Sync + 'static> RetryPredicate<E> for F {
    fn should_retry(&self, error: &E) -> bool {
        self(error)
    }
}

/// Retries failed calls after a [`Backoff`], optionally within a shared [`RetryBudget`].
///
/// The request is cloned before an attempt only if a retry could follow it — the backoff has
/// a delay left and the budget has a retry in it; otherwise the original is sent. With
/// `max_attempts(1)` or a spent budget, nothing is ever cloned. (tower's `Retry` clones
/// before every attempt.)
#[derive(Debug, Clone)]
pub struct RetryLayer<R, P = RetryAll> {
    rt: R,
    backoff: Backoff,
    budget: Option<RetryBudget>,
    seed: Option<u64>,
    predicate: P,
}

impl<R> RetryLayer<R> {
    /// Retries on `rt` after `backoff`'s delays.
    pub fn new(rt: R, backoff: Backoff) -> Self {
        Self {
            rt,
            backoff,
            budget: None,
            seed: None,
            predicate: RetryAll,
        }
    }
}

impl<R, P> RetryLayer<R, P> {
    /// Draws retries from `budget` (each call deposits, each retry withdraws).
    #[must_use]
    pub fn budget(mut self, budget: RetryBudget) -> Self {
        self.budget = Some(budget);
        self
    }

    /// Fixes the jitter seed (by default every request draws a fresh one).
    #[must_use]
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Retries only the errors `predicate` accepts.
    pub fn when<P2>(self, predicate: P2) -> RetryLayer<R, P2> {
        RetryLayer {
            rt: self.rt,
            backoff: self.backoff,
            budget: self.budget,
            seed: self.seed,
            predicate,
        }
    }
}

impl<S, R: Clone, P: Clone> Layer<S> for RetryLayer<R, P> {
    type Service = RetryService<S, R, P>;

    fn layer(&self, inner: S) -> Self::Service {
        RetryService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service of a [`RetryLayer`].
#[derive(Debug, Clone)]
pub struct RetryService<S, R, P = RetryAll> {
    inner: S,
    layer: RetryLayer<R, P>,
}

impl<S, Req, R, P> Service<Req> for RetryService<S, R, P>
where
    S: Service<Req> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    S::Error: Send + 'static,
    Req: Clone + Send + 'static,
    R: Runtime,
    P: RetryPredicate<S::Error>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        // The ready service makes the first attempt; a fresh clone takes its place.
        let clone = self.inner.clone();
        let mut service = std::mem::replace(&mut self.inner, clone);
        let layer = self.layer.clone();
        Box::pin(async move {
            let RetryLayer {
                rt,
                backoff,
                budget,
                seed,
                predicate,
            } = layer;
            if let Some(budget) = &budget {
                budget.deposit(rt.now());
            }
            let mut delays = backoff.start(seed.unwrap_or_else(crate::seed::fresh_seed));
            let mut next = backoff.next_delay(&mut delays);
            let mut request = Some(req);
            loop {
                let retry_possible =
                    next.is_some() && budget.as_ref().is_none_or(|b| b.has_balance(rt.now()));
                let Some(this_attempt) = (if retry_possible {
                    request.clone()
                } else {
                    request.take()
                }) else {
                    unreachable_request()
                };
                std::future::poll_fn(|cx| service.poll_ready(cx)).await?;
                let error = match service.call(this_attempt).await {
                    Ok(response) => return Ok(response),
                    Err(error) => error,
                };
                let Some(delay) =
                    next.filter(|_| request.is_some() && predicate.should_retry(&error))
                else {
                    return Err(error);
                };
                if budget.as_ref().is_some_and(|b| !b.try_withdraw(rt.now())) {
                    return Err(error);
                }
                rt.sleep(delay).await;
                next = backoff.next_delay(&mut delays);
            }
        })
    }
}

#[cold]
fn unreachable_request<T>() -> T {
    // The original is only taken when no retry can follow, and the loop then ends.
    unreachable!("the request is kept while a retry is possible")
}
