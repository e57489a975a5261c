//! The service: each request is one pipeline call whose attempts are requests to clones of
//! the inner service.

use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower_service::Service;

use crate::Error;
use crate::admission::Admission;
use crate::classify::Classify;
use crate::pipeline::{BoxCall, Gate, Pipeline, Retries};
use crate::rt::Clock;
use crate::tower::PolicyError;

/// The service of a [`PipelineLayer`](super::PipelineLayer).
pub struct PipelineService<S, P> {
    inner: S,
    pipeline: Arc<P>,
}

impl<S, P> PipelineService<S, P> {
    pub(super) fn new(inner: S, pipeline: Arc<P>) -> Self {
        Self { inner, pipeline }
    }

    inner_service_accessors!("");
}

impl<S: Clone, P> Clone for PipelineService<S, P> {
    fn clone(&self) -> Self {
        Self::new(self.inner.clone(), Arc::clone(&self.pipeline))
    }
}

impl<S, P: std::fmt::Debug> std::fmt::Debug for PipelineService<S, P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PipelineService")
            .field("pipeline", &self.pipeline)
            .finish_non_exhaustive()
    }
}

impl<S, Req, R, L, B, T, C, K> Service<Req> for PipelineService<S, Pipeline<R, L, B, T, C, K>>
where
    S: Service<Req, Future: Send, Error: PolicyError + Send, Response: Send>
        + Clone
        + Send
        + 'static,
    Req: Clone + Send + 'static,
    R: Clock,
    L: Admission + 'static,
    B: Admission + 'static,
    T: Retries + 'static,
    C: Gate + 'static,
    K: Classify<S::Response, S::Error> + Send + Sync + 'static,
    Pipeline<R, L, B, T, C, K>: Send + Sync,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxCall<'static, Result<S::Response, S::Error>>;

    /// Always ready: each attempt waits for its own clone of the service.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let pipeline = Arc::clone(&self.pipeline);
        let service = self.inner.clone();
        let op = move || attempt(&service, &request);
        Box::pin(async move { flatten(pipeline.call(op).await) })
    }
}

#[cfg(feature = "serde")]
impl<S, Req, R, K> Service<Req> for PipelineService<S, crate::config::LivePipeline<R, K>>
where
    S: Service<Req, Future: Send, Error: PolicyError + Send, Response: Send>
        + Clone
        + Send
        + 'static,
    Req: Clone + Send + 'static,
    R: Clock,
    K: Classify<S::Response, S::Error> + Send + Sync + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxCall<'static, Result<S::Response, S::Error>>;

    /// Always ready: each attempt waits for its own clone of the service.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let pipeline = Arc::clone(&self.pipeline);
        let service = self.inner.clone();
        let op = move || attempt(&service, &request);
        // The pipeline in force when the call starts serves it to the end (see
        // `LivePipeline::call`).
        Box::pin(async move { flatten(pipeline.call(op).await) })
    }
}

/// One attempt: a clone of `request` to a clone of `service`, polled ready first.
fn attempt<S, Req>(
    service: &S,
    request: &Req,
) -> impl Future<Output = Result<S::Response, S::Error>> + Send + use<S, Req>
where
    S: Service<Req, Future: Send> + Clone + Send,
    Req: Clone + Send,
{
    let mut service = service.clone();
    let request = request.clone();
    async move {
        std::future::poll_fn(|cx| service.poll_ready(cx)).await?;
        service.call(request).await
    }
}

/// The pipeline's answer in the service's error type.
fn flatten<T, E: PolicyError>(result: Result<T, Error<E>>) -> Result<T, E> {
    result.map_err(|error| match error {
        Error::Rejected(rejected) => E::rejected(rejected),
        Error::TimedOut => E::timed_out(),
        Error::Inner(error) => error,
    })
}
