//! The HTTP client stack as a tower layer (features `tower` and `http`).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tower_layer::Layer;
use tower_service::Service;

use crate::Error;
use crate::http::{ClientPolicies, HttpFailure, Overrides};
use crate::rt::{Clock, DefaultRuntime};

/// Puts [`ClientPolicies`] (deadline, retry, and per-authority breaker, bulkhead, limiter and
/// attempt timeout) in front of a tower `Service` of `http::Request<B>`, such as hyper-util's
/// client. It runs the same loop as the tidewall-reqwest middleware.
///
/// The layer sits directly over the client: its error is [`Error<E>`] of the client's error
/// `E` (which implements [`HttpFailure`]; for hyper-util's client, whose error does not, box
/// it first: `tower::ServiceExt::map_err(client, |e| Box::<dyn std::error::Error + Send +
/// Sync>::from(e))`, a `Box<dyn Error + Send + Sync>` being an `HttpFailure`, and turn on
/// the `hyper` feature, so that a connection the server closed before its response, hyper's
/// "incomplete message", reads as `Interrupted` and is retried, as through tidewall-reqwest;
/// without it that error reads as `Other`, a failure not retried). A request
/// that may be retried is copied before each attempt but the last the schedule allows, so
/// the body type is `Clone` (hyper's `Full` and `Empty` are); per-request [`Overrides`] are
/// read from the request's extensions. Each
/// call's future is boxed: one allocation per request, next to a network call.
///
/// Each attempt waits for the readiness of its own clone of the client after its
/// per-authority admission, as part of the send: under the attempt timeout, and timed as the
/// host's latency by the authority's breaker (slow calls) and adaptive limit. So a client that
/// queues in `poll_ready` (a `Buffer`, a concurrency limit, a pool at its bound) shows as a
/// slower host: limit concurrency with the layer's own bulkhead or adaptive limit instead,
/// whose waits are not counted.
///
/// **Cancel safety:** dropping the response future is dropping
/// [`ClientPolicies::run`]'s future: the attempt in flight and every permit it holds are
/// dropped, no policy records anything for that attempt (what the request drew on the retry
/// budget stays drawn), and with the `metrics` feature the request counts `cancelled` (once
/// polled).
///
/// ```
/// use std::convert::Infallible;
/// use std::time::Duration;
/// use tidewall::http::ClientPolicies;
/// use tidewall::tower::http::ClientLayer;
/// use tidewall::Backoff;
/// use tower::{Layer, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let policies = ClientPolicies::builder()
///     .retry(Backoff::constant(Duration::from_millis(10)).max_attempts(2).build()?)
///     .build()?;
/// let calls = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
/// let seen = calls.clone();
/// // A client whose first answer is a 503.
/// let client = tower::service_fn(move |_: http::Request<()>| {
///     let n = seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
///     let status = if n == 0 { 503 } else { 200 };
///     async move { Ok::<_, std::io::Error>(http::Response::builder().status(status).body(()).unwrap()) }
/// });
/// let service = ClientLayer::new(policies).layer(client);
/// let request = http::Request::get("http://api.example/").body(())?;
/// assert_eq!(service.oneshot(request).await?.status(), 200);
/// assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 2);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct ClientLayer<R = DefaultRuntime> {
    policies: ClientPolicies<R>,
}

impl<R> ClientLayer<R> {
    /// A layer applying `policies`.
    pub fn new(policies: ClientPolicies<R>) -> Self {
        Self { policies }
    }
}

impl<S, R> Layer<S> for ClientLayer<R> {
    type Service = ClientService<S, R>;

    fn layer(&self, inner: S) -> Self::Service {
        ClientService {
            inner,
            policies: self.policies.clone(),
        }
    }
}

/// The service [`ClientLayer`] makes.
#[derive(Debug, Clone)]
pub struct ClientService<S, R = DefaultRuntime> {
    inner: S,
    policies: ClientPolicies<R>,
}

impl<S, R> ClientService<S, R> {
    inner_service_accessors!("");
}

impl<S, B, RB, R> Service<http::Request<B>> for ClientService<S, R>
where
    S: Service<http::Request<B>, Response = http::Response<RB>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: HttpFailure + Send,
    B: Clone + Send + Sync + 'static,
    RB: Send + 'static,
    R: Clock,
{
    type Response = http::Response<RB>;
    type Error = Error<S::Error>;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    /// Always ready: each attempt waits for the readiness of its own clone of the client,
    /// inside the deadline, after its per-authority admission.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let overrides = request
            .extensions()
            .get::<Overrides>()
            .copied()
            .unwrap_or_default();
        let policies = self.policies.clone();
        // Behind a lock only to be shared by the attempts' futures (tower services need not
        // be `Sync`); each attempt clones it once.
        let client = std::sync::Mutex::new(self.inner.clone());
        Box::pin(async move {
            policies
                .run(request, overrides, move |request| {
                    let mut client = client
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .clone();
                    async move {
                        std::future::poll_fn(|cx| client.poll_ready(cx)).await?;
                        client.call(request).await
                    }
                })
                .await
        })
    }
}
