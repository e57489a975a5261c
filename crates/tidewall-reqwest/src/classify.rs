//! The standard HTTP table over reqwest's types, for Tidewall's other fronts.

use std::time::Duration;

use tidewall::RetryAfter;
use tidewall::classify::{Classify, Verdict};
use tidewall::http::{FailureKind, HttpClassifier};

use crate::exchange::{middleware_kind, reqwest_kind};

/// The [standard table](HttpClassifier) for reqwest's results, so a Tidewall
/// [`Pipeline`](tidewall::pipeline::Pipeline), retry future or breaker can classify a
/// `reqwest::Response` (a 503 is a retryable failure, its `Retry-After` the wait) without a
/// wrapper type: implemented for `Result<reqwest::Response, reqwest::Error>` and for
/// reqwest-middleware's `Error`.
///
/// ```no_run
/// use std::time::Duration;
/// use tidewall::{Backoff, RetryExt};
/// use tidewall_reqwest::ReqwestClassifier;
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let client = reqwest::Client::new();
/// let backoff = Backoff::exponential(Duration::from_millis(100)).max_attempts(3).build()?;
/// let response = (|| client.get("http://localhost:8080/items").send())
///     .retry(backoff)
///     .classify(ReqwestClassifier::standard())
///     .await?;
/// # let _ = response;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct ReqwestClassifier(HttpClassifier);

impl ReqwestClassifier {
    /// The standard table.
    pub const fn standard() -> Self {
        Self(HttpClassifier::standard())
    }

    /// Another table (see [`HttpClassifier`]'s settings).
    pub const fn new(table: HttpClassifier) -> Self {
        Self(table)
    }

    fn judge(&self, result: Result<&reqwest::Response, FailureKind>) -> Verdict {
        match result {
            Ok(response) => self.0.status_verdict(response.status()),
            Err(kind) => self.0.failure_verdict(kind),
        }
    }

    fn hint(&self, result: Result<&reqwest::Response, FailureKind>) -> Option<Duration> {
        match result {
            Ok(response) => self.0.status_hint(response.status(), response.headers()),
            Err(FailureKind::Refused(rejected)) => rejected.retry_after(),
            Err(_) => None,
        }
    }
}

impl Classify<reqwest::Response, reqwest::Error> for ReqwestClassifier {
    fn classify(&self, result: Result<&reqwest::Response, &reqwest::Error>) -> Verdict {
        self.judge(result.map_err(reqwest_kind))
    }

    fn retry_after(&self, result: Result<&reqwest::Response, &reqwest::Error>) -> Option<Duration> {
        self.hint(result.map_err(reqwest_kind))
    }
}

impl Classify<reqwest::Response, reqwest_middleware::Error> for ReqwestClassifier {
    fn classify(&self, result: Result<&reqwest::Response, &reqwest_middleware::Error>) -> Verdict {
        self.judge(result.map_err(middleware_kind))
    }

    fn retry_after(
        &self,
        result: Result<&reqwest::Response, &reqwest_middleware::Error>,
    ) -> Option<Duration> {
        self.hint(result.map_err(middleware_kind))
    }
}
