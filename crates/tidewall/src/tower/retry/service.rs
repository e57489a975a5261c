//! The service: each call becomes a [`ResponseFuture`] that drives the retry engine.

use std::sync::Arc;
use std::task::{Context, Poll};

use tower_service::Service;

use super::{ResponseFuture, RetryLayer};
use crate::Deadline;
use crate::classify::{Classify, DefaultClassifier};
use crate::retry::engine::Attempts;
use crate::rt::{Clock, DefaultRuntime, instant_after};
use crate::tower::clones::next_request;
use crate::tower::{ByClone, CloneRequest};

/// The service of a [`RetryLayer`].
#[derive(Clone)]
pub struct RetryService<S, R = DefaultRuntime, C = DefaultClassifier, Q = ByClone> {
    inner: S,
    // Shared with every call's future: copying the rules into each would cost more than the
    // reference count.
    layer: Arc<RetryLayer<R, C, Q>>,
}

impl<S: std::fmt::Debug, R: std::fmt::Debug, C: std::fmt::Debug, Q> std::fmt::Debug
    for RetryService<S, R, C, Q>
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetryService")
            .field("inner", &self.inner)
            .field("layer", &self.layer)
            .finish()
    }
}

impl<S, R, C, Q> RetryService<S, R, C, Q> {
    pub(super) fn new(inner: S, layer: RetryLayer<R, C, Q>) -> Self {
        Self {
            inner,
            layer: Arc::new(layer),
        }
    }

    inner_service_accessors!("");
}

impl<S, Req, R, C, Q> Service<Req> for RetryService<S, R, C, Q>
where
    S: Service<Req> + Clone,
    Q: CloneRequest<Req>,
    R: Clock,
    C: Classify<S::Response, S::Error> + Clone,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S, Req, R, C, Q>;

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
        // The request is copied only when a retry could follow the first attempt; else (or
        // when it cannot be copied) the original goes out and nothing is kept. The service
        // polled ready makes the first attempt, and a clone of it (polled ready again) each
        // retry.
        let mut request = Some(req);
        let Some(first) = next_request(&layer.clones, &mut request, || {
            layer.rules.retry_possible(&mut attempts, || layer.rt.now())
        }) else {
            unreachable!("a request was just given")
        };
        let retries = request.map(|req| (self.inner.clone(), req));
        let call = self.inner.call(first);
        ResponseFuture::first_attempt(call, retries, layer, deadline, attempts)
    }
}
