//! The service: each call becomes a [`ResponseFuture`] that drives the retry engine.

use std::sync::Arc;
use std::task::{Context, Poll};

use tower_service::Service;

use super::{ResponseFuture, RetryLayer};
use crate::Deadline;
use crate::classify::{Classify, DefaultClassifier};
use crate::retry::engine::Attempts;
use crate::rt::{Clock, DefaultRuntime, instant_after};

/// The service of a [`RetryLayer`].
#[derive(Debug, Clone)]
pub struct RetryService<S, R = DefaultRuntime, C = DefaultClassifier> {
    inner: S,
    // Shared with every call's future: copying the rules into each would cost more than the
    // reference count.
    layer: Arc<RetryLayer<R, C>>,
}

impl<S, R, C> RetryService<S, R, C> {
    pub(super) fn new(inner: S, layer: RetryLayer<R, C>) -> Self {
        Self {
            inner,
            layer: Arc::new(layer),
        }
    }

    inner_service_accessors!("");
}

impl<S, Req, R, C> Service<Req> for RetryService<S, R, C>
where
    S: Service<Req> + Clone,
    Req: Clone,
    R: Clock,
    C: Classify<S::Response, S::Error> + Clone,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S, Req, R, C>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline(always)]
    fn call(&mut self, req: Req) -> Self::Future {
        let layer = Arc::clone(&self.layer);
        // The deadline runs from the call, as the timeout layer's budget does.
        let deadline = layer.within.map_or_else(Deadline::none, |within| {
            Deadline::at(instant_after(layer.rt.now(), within))
        });
        let mut attempts = Attempts::default();
        layer.rules.begin(&mut attempts, || layer.rt.now());
        // The request is cloned only when a retry could follow the first attempt; else the
        // original goes out and nothing is kept. The service polled ready makes the first
        // attempt, and a clone of it (polled ready again) each retry.
        let (first, retries) = if layer.rules.retry_possible(&mut attempts, || layer.rt.now()) {
            (req.clone(), Some((self.inner.clone(), req)))
        } else {
            (req, None)
        };
        let call = self.inner.call(first);
        ResponseFuture::first_attempt(call, retries, layer, deadline, attempts)
    }
}
