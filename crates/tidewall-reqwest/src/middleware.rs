//! The middleware: reqwest requests through the client loop.

use http::Extensions;
use reqwest_middleware::{Middleware, Next};
use tidewall::http::{ClientPolicies, Overrides};
use tidewall::rt::{Clock, Tokio};
use tidewall::{Error, Rejected};

use crate::exchange::{Failure, Incoming, Outgoing};

/// The standard resilience stack as a reqwest-middleware [`Middleware`]: see the
/// [crate docs](crate) and [`ClientPolicies`] for what it does, per host, and its defaults.
///
/// Clones share their policies (breakers, bulkheads, budgets): build one per upstream
/// service, not per request.
///
/// ```
/// use std::time::Duration;
/// use reqwest_middleware::ClientBuilder;
/// use tidewall::breaker::CircuitBreaker;
/// use tidewall_reqwest::{ClientPolicies, Resilience};
///
/// let policies = ClientPolicies::builder()
///     .deadline(Some(Duration::from_secs(5)))
///     .breaker(Some(CircuitBreaker::builder().consecutive_failures(5)))
///     .build()?;
/// let client = ClientBuilder::new(reqwest::Client::new())
///     .with(Resilience::new(policies))
///     .build();
/// # let _ = client;
/// # Ok::<(), tidewall::ConfigError>(())
/// ```
#[derive(Debug, Clone)]
pub struct Resilience<R = Tokio> {
    policies: ClientPolicies<R>,
}

impl Resilience {
    /// The standard stack ([`ClientPolicies::standard`]).
    pub fn standard() -> Self {
        Self::new(ClientPolicies::standard())
    }
}

impl<R> Resilience<R> {
    /// A middleware applying `policies`.
    pub fn new(policies: ClientPolicies<R>) -> Self {
        Self { policies }
    }

    /// The policies: to watch a host's breaker, say.
    pub fn policies(&self) -> &ClientPolicies<R> {
        &self.policies
    }
}

#[async_trait::async_trait]
impl<R: Clock> Middleware for Resilience<R> {
    async fn handle(
        &self,
        request: reqwest::Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        let overrides = extensions.get::<Overrides>().copied().unwrap_or_default();
        // Each attempt runs the middleware below with its own copy of the extensions.
        let base = extensions.clone();
        let outcome = self
            .policies
            .run(Outgoing(request), overrides, |Outgoing(request)| {
                let next = next.clone();
                let mut extensions = base.clone();
                async move {
                    next.run(request, &mut extensions)
                        .await
                        .map(Incoming)
                        .map_err(Failure)
                }
            })
            .await;
        match outcome {
            Ok(Incoming(response)) => Ok(response),
            Err(Error::Inner(Failure(error))) => Err(error),
            // A refusal, or else the attempt timeout.
            Err(other) => Err(match other.rejection() {
                Some(rejected) => reqwest_middleware::Error::middleware(rejected),
                None => reqwest_middleware::Error::middleware(tidewall::time::Elapsed),
            }),
        }
    }
}

/// The policy refusal inside a middleware error, if that is what it is (an open breaker, a
/// full bulkhead, a spent deadline).
///
/// ```
/// use tidewall::Rejected;
///
/// let error = reqwest_middleware::Error::middleware(Rejected::BulkheadFull);
/// assert_eq!(tidewall_reqwest::rejection(&error), Some(Rejected::BulkheadFull));
/// ```
pub fn rejection(error: &reqwest_middleware::Error) -> Option<Rejected> {
    match error {
        reqwest_middleware::Error::Middleware(error) => error.downcast_ref::<Rejected>().copied(),
        reqwest_middleware::Error::Reqwest(_) => None,
    }
}

/// Whether the request's last attempt ran out of its attempt timeout (with no earlier
/// response to return instead): neither a [`rejection`] nor reqwest's own error.
///
/// ```
/// use tidewall::time::Elapsed;
///
/// let error = reqwest_middleware::Error::middleware(Elapsed);
/// assert!(tidewall_reqwest::timed_out(&error));
/// assert_eq!(tidewall_reqwest::rejection(&error), None);
/// ```
pub fn timed_out(error: &reqwest_middleware::Error) -> bool {
    match error {
        reqwest_middleware::Error::Middleware(error) => error.is::<tidewall::time::Elapsed>(),
        reqwest_middleware::Error::Reqwest(_) => false,
    }
}
