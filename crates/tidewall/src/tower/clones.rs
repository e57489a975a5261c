//! How a retrying or hedging layer gets the request for an attempt that another could
//! follow.

/// Copies a request for an attempt that a retry could follow (tower's
/// `Policy::clone_request`), for [`RetryLayer`](super::RetryLayer),
/// [`PipelineLayer`](super::PipelineLayer) and [`HedgeLayer`](super::HedgeLayer)
/// (`clone_requests` on each).
///
/// A `RetryLayer` or `PipelineLayer` asks before each attempt after which it could still
/// retry (its schedule has an attempt left and its budget a retry): `Some(copy)` is sent
/// and the request kept for a later attempt; `None` sends the request itself, and that
/// attempt is the call's last. Its result is the answer, as when the attempts run out, but for the
/// layer's deadline rule: when the deadline leaves no time for a retry either, a response
/// an earlier attempt got and retried (a 503, say) comes back in place of a later error, as
/// the deadline would have ended the call. The last possible attempt sends the request
/// itself without asking. The deadline is not consulted before asking: an attempt it leaves
/// no time to retry may still send a copy. The copy is made before the attempt's service is
/// polled ready, so it is held through that wait. A request handed to an attempt is that
/// attempt's to send: if the service's readiness fails, or the attempt timeout or deadline
/// ends the wait for it, the request is dropped unsent. So a request that is never copied
/// is sent at most once, and a readiness failure on its attempt ends the call with that
/// failure.
///
/// A [`HedgeLayer`](super::HedgeLayer) asks as it sends each attempt, the first included,
/// even when no hedge can follow (its attempts run at once, so it does not tell the last):
/// `None` sends the request itself, and no hedge is launched after it.
///
/// In a `PipelineLayer`, an attempt the pipeline's own breaker refuses sends nothing and
/// asks nothing; it still counts against the schedule, and is retried as the pipeline
/// retries a refusal. So a request that is never copied is still sent once after the
/// refusals before it. (Under a `RetryLayer`, a `BreakerLayer` below is part of the service:
/// its refusal is an attempt that took the request.)
///
/// [`ByClone`] (the default) clones; [`NoClone`] never copies, so a request that is not
/// `Clone` is sent once; a closure `Fn(&Req) -> Option<Req>` decides per request, e.g.
/// copies an `http::Request` whose body is already in memory and lets a streaming one go
/// once. Write the closure's argument type (`|request: &Req| ..`): `clone_requests` takes
/// any copier, so the compiler cannot infer it.
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
/// /// A request whose body is a one-shot stream, or bytes that can be sent again.
/// enum Body {
///     Bytes(Vec<u8>),
///     Stream(std::sync::mpsc::Receiver<Vec<u8>>),
/// }
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let pipeline = Pipeline::builder()
///     .retry(Backoff::constant(Duration::from_millis(10)).max_attempts(3).build()?)
///     .build()?;
/// let layer = PipelineLayer::new(pipeline).clone_requests(|body: &Body| match body {
///     Body::Bytes(bytes) => Some(Body::Bytes(bytes.clone())),
///     Body::Stream(_) => None,
/// });
/// let sent = Arc::new(AtomicU32::new(0));
/// let seen = Arc::clone(&sent);
/// let down = tower::service_fn(move |_: Body| {
///     seen.fetch_add(1, Ordering::SeqCst);
///     async { Err::<(), _>(Error::Inner("down")) }
/// });
///
/// // Bytes are sent three times, a stream once: the same error either way.
/// let bytes = layer.layer(down.clone()).oneshot(Body::Bytes(b"ping".to_vec())).await;
/// assert_eq!((bytes, sent.swap(0, Ordering::SeqCst)), (Err(Error::Inner("down")), 3));
/// let (_tx, rx) = std::sync::mpsc::channel();
/// let stream = layer.layer(down).oneshot(Body::Stream(rx)).await;
/// assert_eq!((stream, sent.swap(0, Ordering::SeqCst)), (Err(Error::Inner("down")), 1));
/// # Ok(()) }
/// ```
pub trait CloneRequest<Req> {
    /// A copy of `request` to send, or `None` to send `request` itself as the last attempt.
    fn clone_request(&self, request: &Req) -> Option<Req>;
}

/// Requests are `Clone`, and each attempt a retry could follow sends a clone: the default of
/// [`RetryLayer`](super::RetryLayer), [`PipelineLayer`](super::PipelineLayer) and
/// [`HedgeLayer`](super::HedgeLayer).
///
/// ```
/// use std::time::Duration;
/// use tidewall::pipeline::Pipeline;
/// use tidewall::tower::PipelineLayer;
/// use tidewall::tower::ByClone;
/// use tidewall::{Backoff, Error};
/// use tower::{Layer, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let pipeline = Pipeline::builder()
///     .retry(Backoff::constant(Duration::from_millis(10)).max_attempts(2).build()?)
///     .build()?;
/// // The same as `PipelineLayer::new(pipeline)`.
/// let layer = PipelineLayer::new(pipeline).clone_requests(ByClone);
/// let echo = tower::service_fn(|name: String| async move { Ok::<_, Error<()>>(name) });
/// assert_eq!(layer.layer(echo).oneshot("ada".to_owned()).await, Ok("ada".to_owned()));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct ByClone;

impl<Req: Clone> CloneRequest<Req> for ByClone {
    fn clone_request(&self, request: &Req) -> Option<Req> {
        Some(request.clone())
    }
}

/// Never copies: each request is sent at most once, whatever the layer's retries, and needs
/// no `Clone` (a streaming body, an axum `Request<Body>`). In a `PipelineLayer` the rest of
/// the pipeline (its deadline, admission stages, breaker and attempt timeout) applies as
/// ever; the breaker's refusals, which send nothing, are retried as the pipeline retries them
/// (see [`CloneRequest`]).
///
/// An axum router behind a configured pipeline (here a deadline and a bulkhead), whose
/// requests carry axum's `Body`, which is not `Clone`:
///
/// ```
/// use std::convert::Infallible;
/// use axum::body::Body;
/// use axum::http::{Request, StatusCode};
/// use tidewall::config::{Config, Registry};
/// use tidewall::tower::PipelineLayer;
/// use tidewall::tower::NoClone;
/// use tidewall::Error;
/// use tower::{Layer, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let text = "[instances.orders]\ndeadline = \"2s\"\n\
///             [instances.orders.bulkhead]\nmax_concurrent = 64\n";
/// let registry = Registry::new(Config::from_toml(text)?)?;
/// let created = |body: String| async move { (StatusCode::CREATED, body) };
/// let router = axum::Router::new().route("/orders", axum::routing::post(created));
/// let app = PipelineLayer::new(registry.pipeline("orders")?)
///     .clone_requests(NoClone)
///     .layer(ServiceExt::<Request<Body>>::map_err(router, Error::<Infallible>::Inner));
///
/// let request = Request::post("/orders").body(Body::from("one order"))?;
/// let response = app.oneshot(request).await?;
/// assert_eq!(response.status(), StatusCode::CREATED);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct NoClone;

impl<Req> CloneRequest<Req> for NoClone {
    fn clone_request(&self, _: &Req) -> Option<Req> {
        None
    }
}

impl<Req, F: Fn(&Req) -> Option<Req>> CloneRequest<Req> for F {
    fn clone_request(&self, request: &Req) -> Option<Req> {
        self(request)
    }
}

/// The request for the next attempt: a copy while `another_could_follow` (asked only while the
/// request is held) and `clones` can make one, else the request itself, taken from `request`.
/// `None` once the request was given away. The one rule of every layer here.
#[inline]
pub(crate) fn next_request<Req, Q: CloneRequest<Req>>(
    clones: &Q,
    request: &mut Option<Req>,
    another_could_follow: impl FnOnce() -> bool,
) -> Option<Req> {
    let copy = match request.as_ref() {
        Some(held) if another_could_follow() => clones.clone_request(held),
        _ => None,
    };
    copy.or_else(|| request.take())
}
