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
    /// The authority of `scheme://host[:port]`; `None` without a port for a scheme with no
    /// default (the URL standard's: `http` and `ws` 80, `https` and `wss` 443, `ftp` 21, as
    /// the `url` crate fills them in), or for an empty host (`""` or `[]`). An IPv6
    /// address is written in brackets and in the URL standard's form, as the `url` crate
    /// (and so reqwest) writes it, however it is given: with brackets or without (`::1`, as
    /// `Ipv6Addr` prints), in full (`0:0:0:0:0:0:0:1`) or an IPv4-mapped one in dotted form
    /// (`::ffff:192.0.2.1` is `[::ffff:c000:201]`). So a host has one authority whichever
    /// front files its requests and however a URL spells it, and one made from a socket
    /// address is the one a request to it is filed under. Any other host is kept as given
    /// (lowercased).
    ///
    /// ```
    /// use std::net::{Ipv6Addr, SocketAddr};
    /// use tidewall::http::Authority;
    ///
    /// let addr = SocketAddr::from((Ipv6Addr::LOCALHOST, 8080));
    /// let made = Authority::new("http", &addr.ip().to_string(), Some(addr.port())).unwrap();
    /// let from_uri = Authority::from_uri(&"http://[::1]:8080/x".parse().unwrap()).unwrap();
    /// let in_full = Authority::from_uri(&"http://[0:0:0:0:0:0:0:1]:8080/".parse().unwrap());
    /// assert_eq!((made.as_str(), &made), ("http://[::1]:8080", &from_uri));
    /// assert_eq!(in_full.as_ref(), Some(&made));
    /// ```
    pub fn new(scheme: &str, host: &str, port: Option<u16>) -> Option<Self> {
        let port = port.or_else(|| default_port(scheme))?;
        let inside = host
            .strip_prefix('[')
            .and_then(|bracketed| bracketed.strip_suffix(']'))
            .unwrap_or(host);
        if inside.is_empty() {
            return None;
        }
        // Any host with a colon that is no address is kept as given.
        let ipv6 = inside
            .contains(':')
            .then(|| inside.parse::<std::net::Ipv6Addr>().ok())
            .flatten();
        let mut digits = [0u8; 5];
        let port = port_digits(port, &mut digits);
        // One allocation: this runs for every request. The longest IPv6 form is 41 bytes.
        let host_len = if ipv6.is_some() { 41 } else { host.len() };
        let mut key = String::with_capacity(scheme.len() + 3 + host_len + 1 + port.len());
        key.push_str(scheme);
        key.push_str("://");
        match ipv6 {
            Some(address) => {
                key.push('[');
                push_ipv6(address, &mut key);
                key.push(']');
            }
            None => key.push_str(host),
        }
        key.push(':');
        key.push_str(port);
        key.make_ascii_lowercase();
        Some(Self(key.into_boxed_str()))
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

/// The port a URL of `scheme` means when it names none: the WHATWG URL standard's special
/// schemes, as the `url` crate (and so reqwest) fills them in, so every front files a request
/// under one authority.
fn default_port(scheme: &str) -> Option<u16> {
    const DEFAULTS: [(&str, u16); 5] = [
        ("http", 80),
        ("https", 443),
        ("ws", 80),
        ("wss", 443),
        ("ftp", 21),
    ];
    DEFAULTS
        .iter()
        .find(|(known, _)| scheme.eq_ignore_ascii_case(known))
        .map(|&(_, port)| port)
}

/// Appends `address` as the URL standard serializes an IPv6 host (without its brackets):
/// RFC 5952's form, as `Ipv6Addr` prints it, but for an IPv4-mapped address, whose last two
/// pieces the standard writes in hex where `Ipv6Addr` writes them dotted.
fn push_ipv6(address: std::net::Ipv6Addr, out: &mut String) {
    use std::fmt::Write as _;
    let [.., high, low] = address.segments();
    // Writing to a `String` cannot fail.
    let _ = match address.to_ipv4_mapped() {
        Some(_) => write!(out, "::ffff:{high:x}:{low:x}"),
        None => write!(out, "{address}"),
    };
}

/// `port` in decimal, written into `buffer`.
fn port_digits(mut port: u16, buffer: &mut [u8; 5]) -> &str {
    let mut start = buffer.len();
    loop {
        start -= 1;
        buffer[start] = b'0' + (port % 10) as u8;
        port /= 10;
        if port == 0 {
            break;
        }
    }
    // Only ASCII digits were written.
    std::str::from_utf8(&buffer[start..]).unwrap_or_default()
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

#[cfg(test)]
mod tests {
    use super::Authority;

    #[test]
    fn an_authority_is_lowercase_with_its_port_filled_in() {
        let key = |scheme, host, port| Authority::new(scheme, host, port).map(|a| a.to_string());
        assert_eq!(
            key("HTTPS", "Api.Example", None).as_deref(),
            Some("https://api.example:443")
        );
        assert_eq!(key("http", "h", None).as_deref(), Some("http://h:80"));
        assert_eq!(key("http", "h", Some(0)).as_deref(), Some("http://h:0"));
        assert_eq!(
            key("http", "h", Some(65535)).as_deref(),
            Some("http://h:65535")
        );
        assert_eq!(key("ws", "h", Some(9)).as_deref(), Some("ws://h:9"));
        assert_eq!(key("ws", "h", None).as_deref(), Some("ws://h:80"));
        assert_eq!(
            key("gopher", "h", None),
            None,
            "no default port for schemes the URL standard gives none"
        );
        assert_eq!(key("http", "", Some(80)), None, "no host");
        let uri = "http://[::1]:8080/x".parse().unwrap();
        assert_eq!(
            Authority::from_uri(&uri).map(|a| a.to_string()).as_deref(),
            Some("http://[::1]:8080")
        );
        assert_eq!(Authority::from_uri(&"/relative".parse().unwrap()), None);
    }

    #[test]
    fn brackets_hold_an_ipv6_address_and_nothing_else_is_rewritten() {
        let key = |host| Authority::new("http", host, Some(1)).map(|a| a.to_string());
        let written = [
            ("::1", "http://[::1]:1"),
            ("[::1]", "http://[::1]:1"),
            ("[0:0::1]", "http://[::1]:1"),
            ("0:0:0:0:0:0:0:1", "http://[::1]:1"),
            ("[::FFFF:192.0.2.1]", "http://[::ffff:c000:201]:1"),
            ("[1:0:0:2:0:0:0:3]", "http://[1:0:0:2::3]:1"),
            ("[1:0:0:2:0:0:3:4]", "http://[1::2:0:0:3:4]:1"),
            ("[1:0:2:0:3:0:4:0]", "http://[1:0:2:0:3:0:4:0]:1"),
            ("[1::]", "http://[1::]:1"),
            ("[::]", "http://[::]:1"),
            ("[ABCD:0:0:0:0:0:0:0]", "http://[abcd::]:1"),
            // Unbalanced, or no address (a zone is not part of `Ipv6Addr`): as given.
            ("[::1", "http://[::1:1"),
            ("::1]", "http://::1]:1"),
            ("fe80::1%eth0", "http://fe80::1%eth0:1"),
        ];
        for (host, expected) in written {
            assert_eq!(key(host).as_deref(), Some(expected), "{host}");
        }
        assert_eq!(key("[]"), None, "brackets around nothing are no host");
        assert_eq!(
            key("[[]]").as_deref(),
            Some("http://[[]]:1"),
            "not an address"
        );
        assert_eq!(
            key("[host]").as_deref(),
            Some("http://[host]:1"),
            "not an address"
        );
        assert_eq!(key("host:8080").as_deref(), Some("http://host:8080:1"));
    }
}
