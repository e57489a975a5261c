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
//! adaptive limit what it learned, and a change of the tables' bounds (`[keys]`) is refused.
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
//! ended the retries: that response is then the answer, as `Ok`); a refusal by a policy (an open breaker, a full bulkhead, the deadline)
//! as `Error::Middleware` holding a [`Rejected`](tidewall::Rejected), and an attempt timeout
//! as `Error::Middleware` holding [`Elapsed`](tidewall::time::Elapsed): find them with
//! [`rejection`] or `downcast_ref`.
//!
//! ## Metrics and tracing
//! With this crate's `metrics` feature, each request is counted once, however many attempts
//! it made, under `policy="http_client"` and the stack's
//! [name](tidewall::http::ClientPoliciesBuilder::name) (default `http_client`: give each
//! client its own, or their requests add into one series):
//!
//! | series | labels | what it counts |
//! |---|---|---|
//! | `tidewall_calls_total` | `policy="http_client"`, `name`, `outcome` | requests by how they ended, by the classifier's verdict on the answer: `success` (in the standard table a 2xx, 3xx or other 4xx), `failure` (a 5xx, 408 or 429 that ran out of retries, a connection error), `ignored` (what the classifier ignores), `rejected` (a policy refused the last attempt, or the deadline), `timed_out` (the last attempt's timeout), `cancelled` (the request's future dropped) |
//! | `tidewall_retries_total` | `policy="http_client"`, `name` | retries scheduled |
//! | `tidewall_retry_budget_exhausted_total` | `policy="http_client"`, `name` | retries a host's budget refused |
//! | `tidewall_call_duration_seconds` | `policy="http_client"`, `name` | a request's time, retries and waits included (not for cancelled ones) |
//! | `tidewall_rejections_total` | `policy` (`breaker`, `bulkhead`, `keyed_breaker`, ...), `name`, `reason` | each attempt a host's policy refused |
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
//! ## Beside reqwest's own retry
//! reqwest 0.13 retries some protocol-level refusals by itself (HTTP/2 `REFUSED_STREAM`),
//! per host and within its own budget. It can stay on: those retries happen inside one
//! attempt here. Turn it off with `reqwest::ClientBuilder::retry(reqwest::retry::never())`.
//!
//! Versions: reqwest 0.13 and reqwest-middleware 0.5 only.
//!
//! [reqwest]: https://docs.rs/reqwest
//! [reqwest-middleware]: https://docs.rs/reqwest-middleware

mod classify;
mod exchange;
mod middleware;

pub use classify::ReqwestClassifier;
pub use middleware::{Resilience, rejection, timed_out};
/// The policies' crate, at the version this one is built with: configure the stack through
/// it (`tidewall_reqwest::tidewall::breaker::CircuitBreaker`, ...) to be sure the types match.
pub use tidewall;
pub use tidewall::http::{ClientPolicies, Overrides};

/// The workspace README's examples, compiled as doc tests (and run unless they need a server).
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;

/// The observability guide's examples, compiled as doc tests (the service is not run).
#[cfg(all(doctest, feature = "metrics"))]
#[doc = include_str!("../../../docs/OBSERVABILITY.md")]
pub struct ObservabilityDoctests;
