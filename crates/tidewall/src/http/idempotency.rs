//! Which requests may be sent more than once.

use http::{HeaderMap, HeaderName, Method};

/// Which requests a retry or a hedge may send again: the methods RFC 9110 §9.2.2 defines as
/// idempotent (GET, HEAD, OPTIONS, PUT, DELETE, TRACE) always; POST, PATCH and any other
/// method only when the request carries an `Idempotency-Key` header (the IETF draft's, which
/// payment APIs honour) or the method is [allowed](Self::allow). A request that may not be
/// replayed is sent once.
///
/// ```
/// use http::{HeaderMap, Method};
/// use tidewall::http::Idempotency;
///
/// let standard = Idempotency::standard();
/// let mut headers = HeaderMap::new();
/// assert!(standard.may_replay(&Method::GET, &headers));
/// assert!(!standard.may_replay(&Method::POST, &headers));
/// headers.insert("idempotency-key", "order-7".parse().unwrap());
/// assert!(standard.may_replay(&Method::POST, &headers));
/// assert!(Idempotency::standard().allow(Method::POST).may_replay(&Method::POST, &HeaderMap::new()));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Idempotency {
    allowed: Vec<Method>,
    key_header: Option<HeaderName>,
}

impl Default for Idempotency {
    fn default() -> Self {
        Self::standard()
    }
}

impl Idempotency {
    /// RFC 9110's idempotent methods, and any request with an `Idempotency-Key` header.
    #[must_use]
    pub fn standard() -> Self {
        Self {
            allowed: vec![
                Method::GET,
                Method::HEAD,
                Method::OPTIONS,
                Method::PUT,
                Method::DELETE,
                Method::TRACE,
            ],
            key_header: Some(HeaderName::from_static("idempotency-key")),
        }
    }

    /// Also replays every request with this method (e.g. a POST that the server
    /// deduplicates by itself).
    #[must_use]
    pub fn allow(mut self, method: Method) -> Self {
        if !self.allowed.contains(&method) {
            self.allowed.push(method);
        }
        self
    }

    /// The header whose presence makes any request replayable (default `Idempotency-Key`;
    /// `None`: no header does).
    #[must_use]
    pub fn key_header(mut self, header: Option<HeaderName>) -> Self {
        self.key_header = header;
        self
    }

    /// Whether a request with `method` and `headers` may be sent again.
    #[must_use]
    pub fn may_replay(&self, method: &Method, headers: &HeaderMap) -> bool {
        self.allowed.contains(method)
            || self
                .key_header
                .as_ref()
                .is_some_and(|key| headers.contains_key(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rfc_methods_replay_and_the_others_need_a_key_or_an_allowance() {
        let standard = Idempotency::standard();
        let none = HeaderMap::new();
        for method in ["GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"] {
            assert!(
                standard.may_replay(&method.parse().unwrap(), &none),
                "{method}"
            );
        }
        for method in ["POST", "PATCH", "CONNECT", "PURGE"] {
            assert!(
                !standard.may_replay(&method.parse().unwrap(), &none),
                "{method}"
            );
        }
        let mut keyed = HeaderMap::new();
        keyed.insert("Idempotency-Key", "k".parse().unwrap());
        assert!(standard.may_replay(&Method::PATCH, &keyed));
        let keyless = standard.clone().key_header(None);
        assert!(!keyless.may_replay(&Method::PATCH, &keyed));
        assert!(
            keyless
                .allow(Method::PATCH)
                .may_replay(&Method::PATCH, &none)
        );
    }
}
