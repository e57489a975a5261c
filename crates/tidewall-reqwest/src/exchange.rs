//! reqwest's request, response and errors, as the client loop reads them.

use http::{HeaderMap, Method, StatusCode};
use tidewall::Rejected;
use tidewall::http::{Authority, FailureKind, HttpFailure, Inbound, Outbound};
use tidewall::time::{DeadlineExceeded, Elapsed};

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
        match &self.0 {
            reqwest_middleware::Error::Reqwest(error) => reqwest_kind(error),
            reqwest_middleware::Error::Middleware(error) => chain_kind(error.as_ref()),
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
        chain_kind(error)
    }
}

/// The first refusal, timeout, I/O error or broken HTTP exchange in `error`'s source chain
/// (itself included).
pub(crate) fn chain_kind(error: &(dyn std::error::Error + 'static)) -> FailureKind {
    let mut current = Some(error);
    while let Some(error) = current {
        if let Some(rejected) = error.downcast_ref::<Rejected>() {
            return FailureKind::Refused(*rejected);
        }
        if error.is::<Elapsed>() || error.is::<DeadlineExceeded>() {
            return FailureKind::Timeout;
        }
        if let Some(io) = error.downcast_ref::<std::io::Error>() {
            return io.failure_kind();
        }
        // The server closed the connection before a whole response (hyper's "incomplete
        // message"), or the connection went away under the request ("canceled").
        if let Some(hyper) = error.downcast_ref::<hyper::Error>()
            && (hyper.is_incomplete_message() || hyper.is_canceled())
        {
            return FailureKind::Interrupted;
        }
        current = error.source();
    }
    FailureKind::Other
}
