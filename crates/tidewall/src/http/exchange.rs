//! What the client loop reads from a request and a response, whatever the HTTP library.

use std::fmt;

use http::{HeaderMap, Method, StatusCode, Uri};

/// A request as [`ClientPolicies::run`](super::ClientPolicies::run) sees it: implemented for
/// `http::Request<B>` with a cloneable body; a client library's own request type gets a small
/// wrapper (tidewall-reqwest has one for `reqwest::Request`).
pub trait Outbound: Sized {
    /// The method, for [`Idempotency`](super::Idempotency).
    fn method(&self) -> &Method;
    /// The headers, for [`Idempotency`](super::Idempotency)'s key header.
    fn headers(&self) -> &HeaderMap;
    /// The authority the per-host policies are keyed by; `None` (a relative URI) skips them.
    fn authority(&self) -> Option<Authority>;
    /// A copy to send again, or `None` when the body cannot be copied (a stream): such a
    /// request is sent once.
    fn try_clone(&self) -> Option<Self>;
}

/// A response as the client loop classifies it.
pub trait Inbound {
    /// The status code.
    fn status(&self) -> StatusCode;
    /// The headers (for `Retry-After`).
    fn headers(&self) -> &HeaderMap;
}

impl<B: Clone> Outbound for http::Request<B> {
    fn method(&self) -> &Method {
        self.method()
    }

    fn headers(&self) -> &HeaderMap {
        self.headers()
    }

    fn authority(&self) -> Option<Authority> {
        Authority::from_uri(self.uri())
    }

    fn try_clone(&self) -> Option<Self> {
        let mut copy = http::Request::new(self.body().clone());
        *copy.method_mut() = self.method().clone();
        *copy.uri_mut() = self.uri().clone();
        *copy.version_mut() = self.version();
        *copy.headers_mut() = self.headers().clone();
        *copy.extensions_mut() = self.extensions().clone();
        Some(copy)
    }
}

impl<B> Inbound for http::Response<B> {
    fn status(&self) -> StatusCode {
        self.status()
    }

    fn headers(&self) -> &HeaderMap {
        self.headers()
    }
}

/// Where a request goes, as the per-host policies key it: scheme, host and port, the host
/// lowercased and the port filled in from the scheme (`https://API.example` and
/// `https://api.example:443` are one authority; `http://api.example` is another).
///
/// ```
/// use tidewall::http::Authority;
///
/// let a = Authority::new("https", "API.example", None).unwrap();
/// let b = Authority::from_uri(&"https://api.example:443/v1".parse().unwrap()).unwrap();
/// assert_eq!(a, b);
/// assert_eq!(a.as_str(), "https://api.example:443");
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Authority(Box<str>);

impl Authority {
    /// The authority of `scheme://host[:port]`; `None` without a port for an unknown scheme
    /// (only `http` and `https` have a default), or for an empty host.
    pub fn new(scheme: &str, host: &str, port: Option<u16>) -> Option<Self> {
        let scheme = scheme.to_ascii_lowercase();
        let port = port.or(match scheme.as_str() {
            "http" => Some(80),
            "https" => Some(443),
            _ => None,
        })?;
        if host.is_empty() {
            return None;
        }
        let host = host.to_ascii_lowercase();
        Some(Self(format!("{scheme}://{host}:{port}").into_boxed_str()))
    }

    /// The authority of an absolute URI; `None` for a relative one.
    pub fn from_uri(uri: &Uri) -> Option<Self> {
        Self::new(uri.scheme_str()?, uri.host()?, uri.port_u16())
    }

    /// `scheme://host:port`, as it labels telemetry.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Authority({})", self.0)
    }
}
