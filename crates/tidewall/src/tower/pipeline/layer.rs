//! The layer: one pipeline shared by every service it makes.

use std::sync::Arc;

use tower_layer::Layer;

use super::PipelineService;
use crate::tower::ByClone;

/// Runs every request through a pipeline: a [`Pipeline`](crate::pipeline::Pipeline), or
/// (feature `serde`) an instance's [`LivePipeline`](crate::config::LivePipeline) from a
/// [`Registry`](crate::config::Registry), which follows every reload. It is the pipeline's
/// own engine: one deadline over the admission waits, the attempts and the pauses between
/// them; the same stages, order, classifier and metrics as
/// [`Pipeline::call`](crate::pipeline::Pipeline::call).
///
/// What the service does with a request:
///
/// * **Attempts.** Each attempt sends the request to a clone of the inner service, which is
///   polled ready first, inside the attempt: after the pipeline's admission, under its
///   attempt timeout, and timed by its breaker and adaptive limiter as the service's
///   latency. A readiness error is that attempt's error. Only idempotent requests should go
///   through a pipeline that retries.
/// * **Requests.** An attempt that a retry could follow (the schedule has an attempt left
///   and the budget a retry) sends a clone; the last possible attempt sends the request
///   itself. So requests are `Clone` (with `http::Request`, a `Clone` body such as
///   `Full<Bytes>`), unless the layer is told how to copy them
///   ([`clone_requests`](Self::clone_requests)): [`NoClone`](crate::tower::NoClone) sends each
///   request at most once (a streaming body, an axum `Request<Body>`), and a closure copies
///   those it can. A request that could not be copied is sent itself, and that attempt is
///   the call's last, even if a layer below refuses it (the refusal took the request). An
///   attempt the breaker refuses sends nothing and needs no request.
/// * **Readiness.** The service is always ready: it waits for nothing in `poll_ready`, and
///   backpressure comes from the pipeline's own stages (a bulkhead's queue, a rate limiter's
///   wait, refusals). So a service that queues in `poll_ready` (a `Buffer`, a concurrency
///   limit) counts as a slower service: limit concurrency with the pipeline's bulkhead or
///   adaptive limiter instead, whose waits are not counted. The same holds for a layer
///   below that waits in the call (an [`AdmitLayer`](crate::tower::AdmitLayer) in
///   `WaitCall` or `WaitReady` mode): its wait is part of the attempt, and an attempt timeout
///   or the deadline that ends it ends a slow attempt (a failure), not a refusal.
/// * **Results.** Judged by the pipeline's classifier (for a `LivePipeline`, the one set
///   with [`classify`](crate::config::LivePipeline::classify)) as they come from the inner
///   service: a timeout from a Tidewall layer below is an error like any other to it (by
///   default a failure: retried, recorded by the pipeline's breaker and adaptive limiter,
///   and counted `outcome="failure"` when it ends the call). A refusal from a policy below
///   (an error whose [`PolicyError::rejection`](crate::tower::PolicyError::rejection) is
///   `Some`: a full bulkhead, an open breaker, a rate limit, a deadline below that ran out)
///   is treated as the pipeline's own breaker's refusal: not shown to the classifier,
///   recorded as `Ignored` by its breaker (nothing in its window), teaching its admission
///   stages (bulkhead, adaptive limiter) nothing (a call it ends teaches them what its last
///   attempt that was not refused taught, if one was), retried after the refusal's
///   `retry_after` (but for `InsufficientCapacity`, which can never pass, and but for the
///   call's last request, see *Requests*), and counted
///   `outcome="rejected"` when it ends the call. The layer cannot tell which of them
///   reached the service (a `DeadlineExceeded` may end a wait below, or a slow call a
///   pipeline below cut), so none counts against it. So, as with a
///   [`BreakerLayer`](crate::tower::BreakerLayer), admission that refuses at once may sit
///   on either side of the layer.
/// * **Errors.** The inner service's error type, as every Tidewall layer returns (see
///   [`PolicyError`](super::super::PolicyError)): a stage's refusal is
///   `PolicyError::rejected`, an attempt timeout `PolicyError::timed_out`, and the
///   service's own error comes back as it was.
/// * **Bounds.** The service, its response, error and future, and the request are `Send +
///   'static`: each call runs as a boxed `Send` future of its own.
/// * **Cost.** Each call's future is boxed: one allocation per request. The call keeps a
///   clone of the service (one per call, made in `call`) and the request, and each attempt
///   has a clone of that service: for `n` attempts, `n + 1` clones of the service, and of
///   the request one per attempt a retry could follow (none for a pipeline without retry,
///   `n - 1` for a call that used all `n` its schedule allows).
///
/// **Cancel safety:** dropping the response future drops the running attempt and releases
/// what the pipeline holds, as dropping [`Pipeline::call`](crate::pipeline::Pipeline::call)'s
/// future does.
///
/// ```
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicU32, Ordering};
/// use std::time::Duration;
/// use tidewall::pipeline::Pipeline;
/// use tidewall::tower::PipelineLayer;
/// use tidewall::{Backoff, Error};
/// use tower::{Layer, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let pipeline = Pipeline::builder()
///     .deadline(Duration::from_secs(1))
///     .retry(Backoff::constant(Duration::from_millis(10)).max_attempts(3).build()?)
///     .build()?;
/// let calls = Arc::new(AtomicU32::new(0));
/// let seen = Arc::clone(&calls);
/// // A service that fails its first request.
/// let flaky = tower::service_fn(move |x: u32| {
///     let n = seen.fetch_add(1, Ordering::SeqCst);
///     async move { if n == 0 { Err(Error::Inner("busy")) } else { Ok(x * 2) } }
/// });
/// let service = PipelineLayer::new(pipeline).layer(flaky);
/// assert_eq!(service.oneshot(21).await, Ok(42));
/// assert_eq!(calls.load(Ordering::SeqCst), 2);
/// # Ok(()) }
/// ```
///
/// From a configuration, by name:
///
/// ```
/// use std::time::Duration;
/// use tidewall::config::{Config, Registry};
/// use tidewall::tower::PipelineLayer;
/// use tidewall::{Error, Rejected};
/// use tower::{Layer, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let registry = Registry::new(Config::from_toml("[instances.search]\ndeadline = \"1s\"\n")?)?;
/// let layer = PipelineLayer::new(registry.pipeline("search")?);
/// let slow = tower::service_fn(|x: u32| async move {
///     tokio::time::sleep(Duration::from_millis(200)).await;
///     Ok::<_, Error<&str>>(x)
/// });
/// assert_eq!(layer.layer(slow.clone()).oneshot(1).await, Ok(1));
///
/// // The layer follows the reload: the deadline is now 50 ms.
/// registry.reload(Config::from_toml("[instances.search]\ndeadline = \"50ms\"\n")?)?;
/// let cut = layer.layer(slow).oneshot(2).await;
/// assert_eq!(cut, Err(Error::Rejected(Rejected::DeadlineExceeded)));
/// # Ok(()) }
/// ```
pub struct PipelineLayer<P, Q = ByClone> {
    pipeline: Arc<P>,
    clones: Q,
}

impl<P> PipelineLayer<P> {
    /// A layer running requests through `pipeline` (a `Pipeline` or a `LivePipeline`),
    /// shared by every service it makes. Requests are `Clone` ([`ByClone`]); see
    /// [`clone_requests`](Self::clone_requests) for those that are not.
    pub fn new(pipeline: P) -> Self {
        Self {
            pipeline: Arc::new(pipeline),
            clones: ByClone,
        }
    }
}

impl<P, Q> PipelineLayer<P, Q> {
    /// Copies requests for attempts with `clones` instead (see
    /// [`CloneRequest`](crate::tower::CloneRequest)): [`NoClone`](crate::tower::NoClone)
    /// sends each request at most once and needs no `Clone`; a closure
    /// `Fn(&Req) -> Option<Req>` copies the requests it can, and lets each of the others go
    /// once. It is cloned into every call: keep it cheap to clone (a function, or what it
    /// captures behind an `Arc`).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tidewall::pipeline::Pipeline;
    /// use tidewall::tower::PipelineLayer;
    /// use tidewall::tower::NoClone;
    /// use tidewall::{Backoff, Error};
    /// use tower::{Layer, ServiceExt};
    ///
    /// /// Sent once: not `Clone`.
    /// struct Charge(u64);
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let pipeline = Pipeline::builder()
    ///     .deadline(Duration::from_secs(1))
    ///     .retry(Backoff::constant(Duration::from_millis(10)).max_attempts(3).build()?)
    ///     .build()?;
    /// let bank = tower::service_fn(|charge: Charge| async move { Ok::<_, Error<()>>(charge.0) });
    /// let service = PipelineLayer::new(pipeline).clone_requests(NoClone).layer(bank);
    /// assert_eq!(service.oneshot(Charge(250)).await, Ok(250));
    /// # Ok(()) }
    /// ```
    pub fn clone_requests<Q2>(self, clones: Q2) -> PipelineLayer<P, Q2> {
        PipelineLayer {
            pipeline: self.pipeline,
            clones,
        }
    }
}

impl<P, Q: Clone> Clone for PipelineLayer<P, Q> {
    fn clone(&self) -> Self {
        Self {
            pipeline: Arc::clone(&self.pipeline),
            clones: self.clones.clone(),
        }
    }
}

impl<P: std::fmt::Debug, Q> std::fmt::Debug for PipelineLayer<P, Q> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PipelineLayer")
            .field("pipeline", &self.pipeline)
            .finish_non_exhaustive()
    }
}

impl<S, P, Q: Clone> Layer<S> for PipelineLayer<P, Q> {
    type Service = PipelineService<S, P, Q>;

    fn layer(&self, inner: S) -> Self::Service {
        PipelineService::new(inner, Arc::clone(&self.pipeline), self.clones.clone())
    }
}
