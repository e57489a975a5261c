//! Tidewall's standard resilience stack for [reqwest], as one [reqwest-middleware] middleware.
//!
//! [`Resilience`] applies, per request: a total deadline → retry on the standard HTTP table
//! (`Retry-After` honoured, a retry budget per host, jitter) → a circuit breaker per host →
//! a bulkhead (or an adaptive limit that learns each host's capacity) and optional rate limit
//! per host → an attempt timeout. The defaults are in [`ClientPolicies`]' docs; every stage is
//! configurable there.
//!
//! ```no_run
//! use reqwest_middleware::ClientBuilder;
//! use tidewall_reqwest::Resilience;
//!
//! # async fn run() -> Result<(), reqwest_middleware::Error> {
//! let client = ClientBuilder::new(reqwest::Client::new())
//!     .with(Resilience::standard())
//!     .build();
//! let response = client.get("http://localhost:8080/items").send().await?;
//! # let _ = response;
//! # Ok(()) }
//! ```
//!
//! ## Per request
//! Put [`Overrides`] in the request's extensions to change one request: its deadline, its
//! attempts, no retry at all, or to mark a POST as safe to send again.
//!
//! ```
//! use std::time::Duration;
//! use reqwest_middleware::ClientBuilder;
//! use tidewall_reqwest::{Overrides, Resilience};
//!
//! let client = ClientBuilder::new(reqwest::Client::new()).with(Resilience::standard()).build();
//! let request = client
//!     .post("http://localhost:8080/orders")
//!     .with_extension(Overrides::new().deadline(Duration::from_secs(2)).idempotent());
//! # let _ = request;
//! ```
//!
//! ## From a configuration file
//! An instance with an `[http]` section in a [`Registry`](tidewall::config::Registry)'s file
//! is this stack: each section a per-host stage (see
//! [`Instance::http_client`](tidewall::config::Instance::http_client) for what becomes what).
//! A [reload](tidewall::config::Registry::reload) reaches the middleware built from it:
//! requests after it run on the new settings, each host's breaker keeps its state and its
//! adaptive limit what it learned (unless the reload changes the breaker's window shape,
//! which resets it to closed, or the limit's algorithm, which learns afresh), and a change
//! of the tables' bounds (`[keys]`) is refused.
//! Upstreams that need different settings are different instances: one `[http]` instance,
//! and one middleware, per upstream service.
//!
//! ```
//! use reqwest_middleware::ClientBuilder;
//! use tidewall_reqwest::Resilience;
//! use tidewall_reqwest::tidewall::config::{Config, Registry};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let registry = Registry::new(Config::from_toml(r#"
//!     [instances.catalog]
//!     deadline = "5s"
//!     attempt_timeout = "1s"
//!     http = { retry_statuses = [521] }
//!     [instances.catalog.retry]
//!     max_attempts = 3
//!     [instances.catalog.breaker]
//!     consecutive_failures = 5
//! "#)?)?;
//! let client = ClientBuilder::new(reqwest::Client::new())
//!     .with(Resilience::new(registry.http_client("catalog")?))
//!     .build();
//! # let _ = client;
//! # Ok(()) }
//! ```
//!
//! ## What is sent again, and what is not
//! Only requests [`Idempotency`](tidewall::http::Idempotency) allows are retried: GET, HEAD,
//! OPTIONS, PUT, DELETE and TRACE, and POST or PATCH only with an `Idempotency-Key` header or
//! [`Overrides::idempotent`]. **A request whose body cannot be cloned (a stream,
//! `reqwest::Body::wrap_stream`) is sent once and never retried**: the breaker, bulkhead,
//! rate limit and timeouts still apply, and its response comes back as it is, a 503
//! included. Other middleware below this one runs on every attempt; what it writes into the
//! extensions stays with that attempt.
//!
//! ## Errors
//! Errors stay reqwest-middleware's: the last attempt's `reqwest::Error` as
//! `Error::Reqwest` (unless an earlier attempt got a response, a 503 say, and the deadline
//! ended the retries: that response is then the answer, as `Ok`); a refusal by a policy (an
//! open breaker, a full bulkhead, the deadline) as `Error::Middleware` holding a
//! [`Rejected`](tidewall::Rejected), and an attempt timeout as `Error::Middleware` holding
//! [`Elapsed`](tidewall::time::Elapsed): find them with [`rejection`] and [`timed_out`].
//!
//! A service that calls upstreams to answer its own callers might map the outcomes so (a
//! suggestion, not something the crate does):
//!
//! | outcome | answer your caller with |
//! |---|---|
//! | `Ok(response)` with a 5xx after the retries (`error_for_status` fails) | 502, or the status passed through |
//! | [`Rejected::CircuitOpen`](tidewall::Rejected::CircuitOpen) | 503 with `Retry-After` from its `retry_after` |
//! | `BulkheadFull`, `KeysFull`, `InsufficientCapacity` (the host's limits are full) | 503 |
//! | `RateLimited` (your own outbound limit) | 503 with `Retry-After`, not 429: your caller did nothing wrong |
//! | `DeadlineExceeded`, or [`timed_out`] | 504 |
//! | `Error::Reqwest` with `is_connect()` | 502 |
//!
//! ```
//! use http::StatusCode;
//! use tidewall_reqwest::{rejection, timed_out};
//! use tidewall_reqwest::tidewall::Rejected;
//!
//! fn status_for(error: &reqwest_middleware::Error) -> StatusCode {
//!     match rejection(error) {
//!         Some(Rejected::DeadlineExceeded) => StatusCode::GATEWAY_TIMEOUT,
//!         Some(_) => StatusCode::SERVICE_UNAVAILABLE,
//!         None if timed_out(error) => StatusCode::GATEWAY_TIMEOUT,
//!         None => StatusCode::BAD_GATEWAY,
//!     }
//! }
//! let open = reqwest_middleware::Error::middleware(Rejected::BulkheadFull);
//! assert_eq!(status_for(&open), StatusCode::SERVICE_UNAVAILABLE);
//! ```
//!
//! ## Testing your code through the stack
//! With this crate's `test-util` feature, end the client your code holds with
//! [`testing::Scripted`] instead of the network: each attempt is answered by your script,
//! and on tokio's paused clock (tokio's `test-util` feature) every backoff, `Retry-After`,
//! break and timeout passes in virtual time. Build the policies after pausing the clock.
//! Over real sockets keep the clock real: a paused clock jumps ahead while a socket is
//! awaited, and timeouts fire early.
//!
//! Without a client, the stack is [`ClientPolicies::run`] over a function that sends one
//! attempt: call `run` with a scripted one (on smol and async-std, with
//! `tidewall::testing::Clocked`, tidewall's feature `test-util`, for virtual time):
//!
//! ```
//! use std::sync::atomic::{AtomicU32, Ordering};
//! use std::time::Duration;
//! use tidewall_reqwest::tidewall::http::{ClientPolicies, Overrides};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let policies = ClientPolicies::standard(); // or the one your code builds
//! let calls = AtomicU32::new(0);
//! let started = tokio::time::Instant::now();
//! let answer = policies
//!     .run(http::Request::get("http://api.test/").body(())?, Overrides::new(), |_request| {
//!         let n = calls.fetch_add(1, Ordering::SeqCst);
//!         let status = if n == 0 { 503 } else { 200 };
//!         async move {
//!             let response = http::Response::builder()
//!                 .status(status)
//!                 .header("retry-after", "2")
//!                 .body(())
//!                 .unwrap();
//!             Ok::<_, std::io::Error>(response)
//!         }
//!     })
//!     .await?;
//! assert_eq!((answer.status().as_u16(), calls.into_inner()), (200, 2));
//! assert_eq!(started.elapsed(), Duration::from_secs(2), "the Retry-After, in virtual time");
//! # Ok(()) }
//! ```
//!
//! ## Metrics and tracing
//! With this crate's `metrics` feature, each request is counted once, however many attempts
//! it made, under `policy="http_client"` and the stack's
//! [name](tidewall::http::ClientPoliciesBuilder::name) (default `http_client`: give each
//! client its own, or their requests add into one series):
//!
//! | series | labels | what it counts |
//! |---|---|---|
//! | `tidewall_calls_total` | `policy="http_client"`, `name`, `outcome` | requests by how they ended, by the classifier's verdict on the answer: `success` (in the standard table a 2xx, 3xx or other 4xx), `failure` (a 5xx, 408 or 429 that ran out of retries, a connection error), `ignored` (what the classifier ignores), `rejected` (a policy refused the last attempt, the client's own or one below it, or the deadline), `timed_out` (the last attempt's timeout), `cancelled` (the request's future dropped) |
//! | `tidewall_retries_total` | `policy="http_client"`, `name` | retries scheduled |
//! | `tidewall_retry_budget_exhausted_total` | `policy="http_client"`, `name` | retries a host's budget refused |
//! | `tidewall_call_duration_seconds` | `policy="http_client"`, `name` | a request's time, retries and waits included (not for cancelled ones) |
//! | `tidewall_rejections_total` | `policy` (`breaker`, `bulkhead`, `adaptive`, `keyed_breaker`, ...), `name`, `reason` | each attempt a host's policy refused |
//! | `tidewall_calls_total` | `policy="breaker"`, `name`, `outcome` | each attempt, as the host's breaker recorded it |
//! | `tidewall_breaker_transitions_total` | `policy="breaker"`, `name`, `to`, `key` (the host) | a host's breaker changing state |
//! | `tidewall_keyed_breaker_keys` | `name`, `state` | gauge: hosts whose breaker is in each state |
//! | `tidewall_keyed_keys`, `tidewall_keyed_max_keys` | `policy`, `name` | gauge: hosts each per-host table tracks, and its bound |
//!
//! Gauges are read when asked: call [`record_gauges`](ClientPolicies::record_gauges) on
//! [`Resilience::policies`] before each scrape (a registry's
//! [`record_gauges`](tidewall::config::Registry::record_gauges) covers the clients it made). **Install the recorder before building the
//! stack**: its counters are registered when it is built, and a stack built first (in a
//! `static`, say) counts into nothing for ever. Without the feature, a listener set with
//! [`on_event`](tidewall::http::ClientPoliciesBuilder::on_event) hears the same endings,
//! retries and refused retries. With the `tracing` feature each request runs in a
//! `tidewall.http` span (fields `client`, `method`, `authority`) with a debug event per
//! attempt, per retry scheduled and at its end. A dashboard built on these series, PromQL
//! included, is in the repository's `docs/OBSERVABILITY.md`.
//!
//! ## Beside reqwest's own settings and other middleware
//! - **reqwest's timeouts** (`reqwest::ClientBuilder::timeout`, `connect_timeout`,
//!   `RequestBuilder::timeout`) bound each *attempt* here, since every attempt is one reqwest
//!   send: one that fires is a timeout like any other, retried if the request may be sent
//!   again and counted as a failure against the host's breaker. Prefer the stack's
//!   `attempt_timeout` (and its `deadline` for the whole request): it is reported as
//!   `timed_out`, and [`Overrides`] can change it per request. If both are set, the shorter
//!   one ends the attempt.
//! - **reqwest's own retry**: reqwest 0.13 retries some protocol-level refusals by itself
//!   (HTTP/2 `REFUSED_STREAM`), per host and within its own budget. It can stay on: those
//!   retries happen inside one attempt here. Turn it off with
//!   `reqwest::ClientBuilder::retry(reqwest::retry::never())`.
//! - **`reqwest-retry`**: do not stack it with this middleware. Above it, each of its
//!   retries runs this whole stack again (attempts multiply, and its waits ignore the
//!   deadline); below it, each of this stack's attempts is retried again out of sight of the
//!   breaker and the retry budget.
//! - **Order**: middleware runs in the order it is added, the first outermost. Added before
//!   this one (`reqwest-tracing`'s `TracingMiddleware`, say), a middleware sees each request
//!   once, with its final answer; added after it, each attempt.
//!
//! ```
//! use reqwest_middleware::ClientBuilder;
//! use tidewall_reqwest::Resilience;
//!
//! let inner = reqwest::Client::builder()
//!     .retry(reqwest::retry::never()) // every retry is the stack's
//!     .build()?;
//! let client = ClientBuilder::new(inner)
//!     // a request-level middleware here (one span per request) ...
//!     .with(Resilience::standard())
//!     // ... and an attempt-level one here (one span per attempt)
//!     .build();
//! # let _ = client;
//! # Ok::<(), reqwest::Error>(())
//! ```
//!
//! ## Features
//! - `toml` (default): `Config::from_toml`, for the configuration file
//!   (`tidewall/toml`).
//! - `serde` (with `toml`): `tidewall::config` alone: without `toml`, read a `Config`
//!   through serde from any format (`tidewall/serde`).
//! - `watch`: `tidewall::config::watch_file_on`, which reloads a registry when its file
//!   changes (`tidewall/watch`).
//! - `metrics`, `tracing`: the telemetry above.
//! - `test-util`: [`testing::Scripted`], a scripted end for a client under test, and
//!   `tidewall::testing::Clocked` and the other test helpers, for virtual time on smol and
//!   async-std (`tidewall/test-util`).
//!
//! Each turns on the `tidewall` feature of the same name, so one dependency line is enough.
//!
//! Versions: reqwest 0.13 and reqwest-middleware 0.5 only.
//!
//! [reqwest]: https://docs.rs/reqwest
//! [reqwest-middleware]: https://docs.rs/reqwest-middleware

mod classify;
mod exchange;
mod middleware;
#[cfg(feature = "test-util")]
pub mod testing;

pub use classify::ReqwestClassifier;
pub use middleware::{Resilience, rejection, timed_out};
/// The policies' crate, at the version this one is built with: configure the stack through
/// it (`tidewall_reqwest::tidewall::breaker::CircuitBreaker`, ...) to be sure the types match.
pub use tidewall;
pub use tidewall::http::{ClientPolicies, Overrides};

/// The authority a request to `url` is filed under by the per-host policies (its scheme,
/// host and port, the port filled in from the scheme): the key to look a host up with in
/// [`ClientPolicies::breakers`] and the other tables. `None` for a URL without a host, or
/// without a port when its scheme has no default (`url`'s: http, https, ws, wss, ftp).
///
/// ```
/// use tidewall_reqwest::tidewall::breaker::State;
/// use tidewall_reqwest::{Resilience, authority};
///
/// let resilience = Resilience::standard();
/// let url = reqwest::Url::parse("https://API.example/v1/items")?;
/// let host = authority(&url).expect("the URL has a host");
/// assert_eq!(host.as_str(), "https://api.example:443");
/// let breakers = resilience.policies().breakers().expect("the standard stack has breakers");
/// assert_eq!(breakers.state(&host), None, "no request has gone there yet");
///
/// // Out of rotation before its first request, until reset (a reload keeps it so).
/// breakers.get_or_make(&host).expect("room for a host").force_open();
/// assert_eq!(breakers.state(&host), Some(State::ForcedOpen));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn authority(url: &reqwest::Url) -> Option<tidewall::http::Authority> {
    tidewall::http::Authority::new(url.scheme(), url.host_str()?, url.port_or_known_default())
}

/// The workspace README's examples, compiled as doc tests (and run unless they need a server).
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;

/// The observability guide's examples, compiled as doc tests (the service is not run).
#[cfg(all(doctest, feature = "metrics"))]
#[doc = include_str!("../../../docs/OBSERVABILITY.md")]
pub struct ObservabilityDoctests;
