//! The service: each request is one pipeline call whose attempts are requests to clones of
//! the inner service.

use std::sync::Arc;
use std::task::{Context, Poll};

use tower_service::Service;

use super::attempt::Attempts;
use crate::admission::Admission;
use crate::classify::Classify;
use crate::pipeline::{BoxCall, Gate, Pipeline, Retries};
use crate::rt::Clock;
use crate::tower::CloneRequest;
use crate::tower::PolicyError;
use crate::{Deadline, Error};

/// The service of a [`PipelineLayer`](super::PipelineLayer).
pub struct PipelineService<S, P, Q = crate::tower::ByClone> {
    inner: S,
    pipeline: Arc<P>,
    clones: Q,
}

impl<S, P, Q> PipelineService<S, P, Q> {
    pub(super) fn new(inner: S, pipeline: Arc<P>, clones: Q) -> Self {
        Self {
            inner,
            pipeline,
            clones,
        }
    }

    inner_service_accessors!("");
}

impl<S: Clone, P, Q: Clone> Clone for PipelineService<S, P, Q> {
    fn clone(&self) -> Self {
        Self::new(
            self.inner.clone(),
            Arc::clone(&self.pipeline),
            self.clones.clone(),
        )
    }
}

impl<S, P: std::fmt::Debug, Q> std::fmt::Debug for PipelineService<S, P, Q> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PipelineService")
            .field("pipeline", &self.pipeline)
            .finish_non_exhaustive()
    }
}

impl<S, Req, Q, R, L, B, T, C, K> Service<Req> for PipelineService<S, Pipeline<R, L, B, T, C, K>, Q>
where
    S: Service<Req, Future: Send, Error: PolicyError + Send, Response: Send>
        + Clone
        + Send
        + 'static,
    Req: Send + 'static,
    Q: CloneRequest<Req> + Clone + Send + 'static,
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
        let attempts = self.attempts(request);
        Box::pin(async move { flatten(pipeline.call_operation(Deadline::none(), attempts).await) })
    }
}

#[cfg(feature = "serde")]
impl<S, Req, Q, R, K> Service<Req> for PipelineService<S, crate::config::LivePipeline<R, K>, Q>
where
    S: Service<Req, Future: Send, Error: PolicyError + Send, Response: Send>
        + Clone
        + Send
        + 'static,
    Req: Send + 'static,
    Q: CloneRequest<Req> + Clone + Send + 'static,
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
        let attempts = self.attempts(request);
        // The pipeline in force when the call starts serves it to the end (see
        // `LivePipeline::call`).
        Box::pin(async move { flatten(pipeline.call_operation(Deadline::none(), attempts).await) })
    }
}

impl<S: Clone, P, Q: Clone> PipelineService<S, P, Q> {
    /// The call's attempts: a clone of the service, the request and how to copy it.
    fn attempts<Req>(&self, request: Req) -> Attempts<S, Req, Q> {
        Attempts::new(self.inner.clone(), request, self.clones.clone())
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
