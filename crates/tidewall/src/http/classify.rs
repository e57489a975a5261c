//! The standard classification of HTTP responses and errors.

use std::convert::Infallible;
use std::time::{Duration, SystemTime};

use http::StatusCode;

use super::Inbound;
use crate::classify::{Classify, Verdict};
use crate::{Error, Rejected, RetryAfter};

/// What kind of failure an error is, as the [standard table](HttpClassifier) reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailureKind {
    /// The connection could not be made (refused, unreachable): nothing was sent.
    Connect,
    /// The attempt ran out of time.
    Timeout,
    /// The connection broke mid-call (reset, aborted, broken pipe, unexpected end).
    Interrupted,
    /// A policy refused the call before it was sent.
    Refused(Rejected),
    /// The request itself is wrong (a builder error, an invalid URL): sending it again
    /// cannot help, and it says nothing about the server.
    Local,
    /// Anything else (a redirect loop, a body that does not decode, an unknown error).
    Other,
}

/// How the [standard table](HttpClassifier) reads an error. Implemented for
/// [`std::io::Error`] (by its kind), for Tidewall's [`Error<E>`](crate::Error), tower's
/// `BoxError` and any `dyn Error + Send + Sync` (the first refusal, timeout or I/O error in
/// the source chain; a timeout is Tidewall's [`Elapsed`](crate::time::Elapsed) or
/// [`DeadlineExceeded`](crate::time::DeadlineExceeded): tower's own timeout error is not
/// known here, and reads as `Other`; with the `hyper` feature, a `hyper::Error` for a
/// connection closed before the whole response or a request canceled with its connection is
/// `Interrupted`), and for `Infallible`; implement it for your client's error type (the
/// orphan rule allows it for your own types).
///
/// `Error<E>` reads `E` through that chain, never through `E`'s own `HttpFailure`, which it
/// cannot know of (Rust has no specialization). So under a Tidewall layer (a tower retry above
/// a breaker, say, whose errors are `Error<E>`), your error type is read by what its
/// [`source`](std::error::Error::source) chain holds. To have your own reading there, classify
/// with a [`Classify`] of your own that calls [`HttpClassifier::failure_verdict`] with the kind
/// you choose.
///
/// ```
/// use tidewall::Error;
/// use tidewall::http::{FailureKind, HttpFailure};
///
/// #[derive(Debug)]
/// struct Unreachable;
///
/// impl std::fmt::Display for Unreachable {
///     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
///         f.write_str("host unreachable")
///     }
/// }
///
/// impl std::error::Error for Unreachable {}
///
/// impl HttpFailure for Unreachable {
///     fn failure_kind(&self) -> FailureKind {
///         FailureKind::Connect
///     }
/// }
///
/// assert_eq!(Unreachable.failure_kind(), FailureKind::Connect);
/// // Inside `Error<E>`, it is read by its source chain, which holds nothing known.
/// assert_eq!(Error::Inner(Unreachable).failure_kind(), FailureKind::Other);
/// ```
///
/// ```
/// use tidewall::http::{FailureKind, HttpFailure};
///
/// let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
/// assert_eq!(refused.failure_kind(), FailureKind::Connect);
/// let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
/// assert_eq!(reset.failure_kind(), FailureKind::Interrupted);
/// ```
pub trait HttpFailure {
    /// The kind of failure this error is.
    fn failure_kind(&self) -> FailureKind;
}

impl HttpFailure for std::io::Error {
    fn failure_kind(&self) -> FailureKind {
        io_kind(self.kind())
    }
}

impl HttpFailure for Infallible {
    fn failure_kind(&self) -> FailureKind {
        match *self {}
    }
}

impl<E: std::error::Error + 'static> HttpFailure for Error<E> {
    fn failure_kind(&self) -> FailureKind {
        match self {
            Self::Rejected(rejected) => FailureKind::Refused(*rejected),
            Self::TimedOut => FailureKind::Timeout,
            Self::Inner(error) => chain_kind(error),
        }
    }
}

impl HttpFailure for Box<dyn std::error::Error + Send + Sync> {
    fn failure_kind(&self) -> FailureKind {
        chain_kind(&**self)
    }
}

/// Any error, by its source chain (itself included), as a boxed one is read: for a client
/// crate's own `HttpFailure`, once it has read its error's own kinds.
///
/// ```
/// use tidewall::http::{FailureKind, HttpFailure};
///
/// #[derive(Debug)]
/// struct Wrapped(std::io::Error);
///
/// impl std::fmt::Display for Wrapped {
///     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
///         f.write_str("request failed")
///     }
/// }
///
/// impl std::error::Error for Wrapped {
///     fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
///         Some(&self.0)
///     }
/// }
///
/// let error = Wrapped(std::io::ErrorKind::ConnectionReset.into());
/// let read: &(dyn std::error::Error + Send + Sync) = &error;
/// assert_eq!(read.failure_kind(), FailureKind::Interrupted);
/// ```
impl HttpFailure for dyn std::error::Error + Send + Sync {
    fn failure_kind(&self) -> FailureKind {
        chain_kind(self)
    }
}

fn io_kind(kind: std::io::ErrorKind) -> FailureKind {
    use std::io::ErrorKind as K;
    match kind {
        K::ConnectionRefused | K::AddrNotAvailable | K::HostUnreachable | K::NetworkUnreachable => {
            FailureKind::Connect
        }
        K::TimedOut => FailureKind::Timeout,
        K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe | K::UnexpectedEof => {
            FailureKind::Interrupted
        }
        K::InvalidInput => FailureKind::Local,
        _ => FailureKind::Other,
    }
}

/// The first refusal, timeout, I/O error or (with the `hyper` feature) broken HTTP exchange in
/// `error`'s source chain (itself included).
fn chain_kind(error: &(dyn std::error::Error + 'static)) -> FailureKind {
    let mut current = Some(error);
    while let Some(error) = current {
        if let Some(rejected) = error.downcast_ref::<Rejected>() {
            return FailureKind::Refused(*rejected);
        }
        if error.is::<crate::time::Elapsed>() || error.is::<crate::time::DeadlineExceeded>() {
            return FailureKind::Timeout;
        }
        if let Some(io) = error.downcast_ref::<std::io::Error>() {
            return io_kind(io.kind());
        }
        // The server closed the connection before a whole response (hyper's "incomplete
        // message": most often a keep-alive connection it closed as the request went out),
        // or the connection went away under the request ("canceled").
        #[cfg(feature = "hyper")]
        if let Some(hyper) = error.downcast_ref::<hyper::Error>()
            && (hyper.is_incomplete_message() || hyper.is_canceled())
        {
            return FailureKind::Interrupted;
        }
        current = error.source();
    }
    FailureKind::Other
}

/// Status codes 100 to 999, one bit each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct StatusSet([u64; 15]);

impl StatusSet {
    const EMPTY: Self = Self([0; 15]);

    const fn with(mut self, code: u16) -> Self {
        let bit = (code - 100) as usize;
        self.0[bit / 64] |= 1 << (bit % 64);
        self
    }

    const fn without(mut self, code: u16) -> Self {
        let bit = (code - 100) as usize;
        self.0[bit / 64] &= !(1 << (bit % 64));
        self
    }

    const fn contains(&self, code: u16) -> bool {
        let bit = (code - 100) as usize;
        self.0[bit / 64] & (1 << (bit % 64)) != 0
    }
}

/// The standard classification of HTTP results, a [`Classify`] for `Result<T, E>` with `T:`
/// [`Inbound`] (an `http::Response<B>`, say) and `E:` [`HttpFailure`]:
///
/// | result | verdict | retried | breaker | hint |
/// |---|---|---|---|---|
/// | 1xx, 2xx, 3xx | `Success` | no | success | – |
/// | 408, 500, 502, 504 | `RetryableFailure` | yes | failure | – |
/// | 429, 503 | `RetryableFailure` | yes | failure | `Retry-After` |
/// | other 4xx | `Success` ([`client_errors`](Self::client_errors)) | no | success | – |
/// | other 5xx and above (501, 505, ...) | `Failure` | no | failure | – |
/// | `Connect`, `Timeout`, `Interrupted` | `RetryableFailure` | yes | failure | – |
/// | `Refused`: `CircuitOpen`, `RateLimited`, `BulkheadFull`, `KeysFull` | `RetryableFailure` | yes | not counted by a `BreakerLayer` over the refusing layer, nor by [`ClientPolicies`](crate::http::ClientPolicies)' per-host breaker and adaptive limit | the refusal's `retry_after` |
/// | `Refused` otherwise (`DeadlineExceeded`, ...), `Local` | `Ignored` | no | not counted | – |
/// | `Other` | `Failure` | no | failure | – |
///
/// A 404 is the server's deliberate answer, so other 4xx count as successes: counted as
/// nothing, a host that mostly answers 404 would keep a half-open breaker from ever closing
/// (tower-http's `ServerErrorsAsFailures` reads 4xx the same way). Other 5xx are failures not
/// retried: a 501 or 505 answers the same every time. The hint is the `Retry-After` of a 429 or
/// 503 response (none when malformed or repeated), uncapped: the retry engine caps it with
/// `max_retry_after` and the breaker with `max_open_hint`.
///
/// ```
/// use http::StatusCode;
/// use tidewall::classify::{Classify, Verdict};
/// use tidewall::http::HttpClassifier;
///
/// let standard = HttpClassifier::standard();
/// assert_eq!(standard.status_verdict(StatusCode::SERVICE_UNAVAILABLE), Verdict::RetryableFailure);
/// assert_eq!(standard.status_verdict(StatusCode::NOT_FOUND), Verdict::Success);
/// assert_eq!(standard.status_verdict(StatusCode::NOT_IMPLEMENTED), Verdict::Failure);
///
/// let throttled = http::Response::builder().status(429).header("retry-after", "2").body(()).unwrap();
/// let result: Result<&_, &std::io::Error> = Ok(&throttled);
/// assert_eq!(standard.classify(result), Verdict::RetryableFailure);
/// assert_eq!(standard.retry_after(result), Some(std::time::Duration::from_secs(2)));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpClassifier {
    retry: StatusSet,
    fail: StatusSet,
    client_errors: Verdict,
}

impl Default for HttpClassifier {
    fn default() -> Self {
        Self::standard()
    }
}

impl HttpClassifier {
    /// The standard table.
    #[must_use]
    pub const fn standard() -> Self {
        let retry = StatusSet::EMPTY
            .with(408)
            .with(429)
            .with(500)
            .with(502)
            .with(503)
            .with(504);
        Self {
            retry,
            fail: StatusSet::EMPTY,
            client_errors: Verdict::Success,
        }
    }

    /// Also retries these statuses (e.g. a CDN's 521–524).
    #[must_use]
    pub fn retry_status(mut self, codes: impl IntoIterator<Item = StatusCode>) -> Self {
        for code in codes {
            self.retry = self.retry.with(code.as_u16());
            self.fail = self.fail.without(code.as_u16());
        }
        self
    }

    /// Counts these statuses as failures not to retry (e.g. a 409 that means overload here).
    #[must_use]
    pub fn fail_status(mut self, codes: impl IntoIterator<Item = StatusCode>) -> Self {
        for code in codes {
            self.fail = self.fail.with(code.as_u16());
            self.retry = self.retry.without(code.as_u16());
        }
        self
    }

    /// The verdict on the 4xx statuses not named otherwise (default `Success`; `Ignored`
    /// leaves them out of the breaker's window and the adaptive limiter's samples).
    #[must_use]
    pub fn client_errors(mut self, verdict: Verdict) -> Self {
        self.client_errors = verdict;
        self
    }

    /// The verdict on a response's status.
    #[must_use]
    pub fn status_verdict(&self, status: StatusCode) -> Verdict {
        let code = status.as_u16();
        if self.retry.contains(code) {
            return Verdict::RetryableFailure;
        }
        if self.fail.contains(code) {
            return Verdict::Failure;
        }
        match code {
            100..=399 => Verdict::Success,
            400..=499 => self.client_errors,
            _ => Verdict::Failure,
        }
    }

    /// The verdict on a failure of `kind`.
    #[must_use]
    pub fn failure_verdict(&self, kind: FailureKind) -> Verdict {
        match kind {
            FailureKind::Connect | FailureKind::Timeout | FailureKind::Interrupted => {
                Verdict::RetryableFailure
            }
            FailureKind::Refused(
                Rejected::CircuitOpen { .. }
                | Rejected::RateLimited { .. }
                | Rejected::BulkheadFull
                | Rejected::KeysFull { .. },
            ) => Verdict::RetryableFailure,
            FailureKind::Refused(_) | FailureKind::Local => Verdict::Ignored,
            FailureKind::Other => Verdict::Failure,
        }
    }

    /// The wait a response asks for: the `Retry-After` of a 429 or 503, read against the
    /// wall clock (an HTTP-date is absolute); none for other statuses, or when the header is
    /// missing, malformed or repeated.
    #[must_use]
    pub fn status_hint(&self, status: StatusCode, headers: &http::HeaderMap) -> Option<Duration> {
        match status {
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => {
                super::retry_after(headers, SystemTime::now())
                    .ok()
                    .flatten()
            }
            _ => None,
        }
    }
}

impl<T: Inbound, E: HttpFailure> Classify<T, E> for HttpClassifier {
    fn classify(&self, result: Result<&T, &E>) -> Verdict {
        match result {
            Ok(response) => self.status_verdict(response.status()),
            Err(error) => self.failure_verdict(error.failure_kind()),
        }
    }

    fn retry_after(&self, result: Result<&T, &E>) -> Option<Duration> {
        match result {
            Ok(response) => self.status_hint(response.status(), response.headers()),
            Err(error) => match error.failure_kind() {
                FailureKind::Refused(rejected) => rejected.retry_after(),
                _ => None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// The table in the docs, written out once more, independently.
    fn documented(code: u16) -> Verdict {
        match code {
            408 | 429 | 500 | 502 | 503 | 504 => Verdict::RetryableFailure,
            100..=399 => Verdict::Success,
            400..=499 => Verdict::Success,
            _ => Verdict::Failure,
        }
    }

    proptest! {
        #[test]
        fn every_status_reads_as_the_documented_table(code in 100u16..=999) {
            let status = StatusCode::from_u16(code).unwrap();
            prop_assert_eq!(HttpClassifier::standard().status_verdict(status), documented(code));
        }

        #[test]
        fn named_statuses_override_the_classes_and_each_other(code in 100u16..=999) {
            let status = StatusCode::from_u16(code).unwrap();
            let retried = HttpClassifier::standard().retry_status([status]);
            prop_assert_eq!(retried.status_verdict(status), Verdict::RetryableFailure);
            let failed = retried.fail_status([status]);
            prop_assert_eq!(failed.status_verdict(status), Verdict::Failure);
            prop_assert_eq!(failed.retry_status([status]).status_verdict(status), Verdict::RetryableFailure);
        }
    }

    #[test]
    fn client_errors_can_be_ignored_without_touching_named_4xx() {
        let strict = HttpClassifier::standard().client_errors(Verdict::Ignored);
        assert_eq!(
            strict.status_verdict(StatusCode::NOT_FOUND),
            Verdict::Ignored
        );
        assert_eq!(
            strict.status_verdict(StatusCode::TOO_MANY_REQUESTS),
            Verdict::RetryableFailure
        );
    }

    #[test]
    fn errors_read_through_their_chain() {
        let io = |kind| std::io::Error::from(kind);
        let standard = HttpClassifier::standard();
        let typed: Error<std::io::Error> = Error::Inner(io(std::io::ErrorKind::ConnectionRefused));
        assert_eq!(typed.failure_kind(), FailureKind::Connect);
        assert_eq!(
            Error::<std::io::Error>::TimedOut.failure_kind(),
            FailureKind::Timeout
        );
        let boxed: Box<dyn std::error::Error + Send + Sync> =
            Box::new(Error::<std::io::Error>::Rejected(Rejected::BulkheadFull));
        assert_eq!(
            boxed.failure_kind(),
            FailureKind::Refused(Rejected::BulkheadFull)
        );
        let wrapped = io(std::io::ErrorKind::Other);
        let other: Error<std::io::Error> = Error::Inner(std::io::Error::other(wrapped));
        assert_eq!(other.failure_kind(), FailureKind::Other);
        assert_eq!(
            standard.failure_verdict(FailureKind::Local),
            Verdict::Ignored
        );
        assert_eq!(
            standard.failure_verdict(FailureKind::Refused(Rejected::DeadlineExceeded)),
            Verdict::Ignored
        );
        let shed = FailureKind::Refused(Rejected::CircuitOpen {
            retry_after: Duration::from_secs(1),
        });
        assert_eq!(standard.failure_verdict(shed), Verdict::RetryableFailure);
    }

    #[test]
    fn only_429_and_503_give_a_hint_and_a_malformed_one_gives_none() {
        let standard = HttpClassifier::standard();
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::RETRY_AFTER, "7".parse().unwrap());
        let seven = Some(Duration::from_secs(7));
        assert_eq!(
            standard.status_hint(StatusCode::SERVICE_UNAVAILABLE, &headers),
            seven
        );
        assert_eq!(
            standard.status_hint(StatusCode::TOO_MANY_REQUESTS, &headers),
            seven
        );
        assert_eq!(
            standard.status_hint(StatusCode::BAD_GATEWAY, &headers),
            None
        );
        headers.insert(http::header::RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(
            standard.status_hint(StatusCode::SERVICE_UNAVAILABLE, &headers),
            None
        );
    }
}
