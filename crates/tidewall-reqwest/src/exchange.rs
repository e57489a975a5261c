//! reqwest's request, response and errors, as the client loop reads them.

use http::{HeaderMap, Method, StatusCode};
use tidewall::http::{Authority, FailureKind, HttpFailure, Inbound, Outbound};

/// A reqwest request going out.
pub(crate) struct Outgoing(pub(crate) reqwest::Request);

impl Outbound for Outgoing {
    fn method(&self) -> &Method {
        self.0.method()
    }

    fn headers(&self) -> &HeaderMap {
        self.0.headers()
    }

    fn authority(&self) -> Option<Authority> {
        crate::authority(self.0.url())
    }

    fn try_clone(&self) -> Option<Self> {
        self.0.try_clone().map(Self)
    }
}

/// A reqwest response coming back.
pub(crate) struct Incoming(pub(crate) reqwest::Response);

impl Inbound for Incoming {
    fn status(&self) -> StatusCode {
        self.0.status()
    }

    fn headers(&self) -> &HeaderMap {
        self.0.headers()
    }
}

/// An attempt's error, from reqwest or from a middleware below.
pub(crate) struct Failure(pub(crate) reqwest_middleware::Error);

impl HttpFailure for Failure {
    fn failure_kind(&self) -> FailureKind {
        middleware_kind(&self.0)
    }
}

/// How the standard table reads a reqwest-middleware error: reqwest's own by its kinds, a
/// middleware's by its source chain.
pub(crate) fn middleware_kind(error: &reqwest_middleware::Error) -> FailureKind {
    match error {
        reqwest_middleware::Error::Reqwest(error) => reqwest_kind(error),
        reqwest_middleware::Error::Middleware(error) => {
            let chained: &(dyn std::error::Error + Send + Sync) = error.as_ref();
            chained.failure_kind()
        }
    }
}

/// How the standard table reads a reqwest error.
pub(crate) fn reqwest_kind(error: &reqwest::Error) -> FailureKind {
    if error.is_connect() {
        FailureKind::Connect
    } else if error.is_timeout() {
        FailureKind::Timeout
    } else if error.is_builder() {
        FailureKind::Local
    } else if error.is_redirect() || error.is_decode() {
        FailureKind::Other
    } else {
        // Its source chain, as tidewall reads one: hyper's "incomplete message" and
        // "canceled" included (the `hyper` feature).
        let chained: &(dyn std::error::Error + Send + Sync) = error;
        chained.failure_kind()
    }
}
