//! A small pooled HTTP/1.1 client (hyper) whose connections and tasks live on the chosen
//! runtime: tokio's TCP for tokio, async-io / async-std sockets for the others.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::{SendRequest, handshake};
use tidewall::RetryAfter;
use tidewall::rt::{AsyncStd, Runtime, Signals, Smol, Tokio};

use super::bounded::{secs, within};

/// How long a request may take before the client gives up on it. The tour's slowest
/// requests need under a second (a 500 ms endpoint) or a few (a dependency's queue, given up
/// on after 2 s by the overload runs): a request left unanswered fails its call, and so its
/// check, instead of keeping the tour from its report.
pub(crate) const REQUEST_LIMIT: Duration = Duration::from_secs(30);

/// A runtime the tour can open TCP connections on.
pub(crate) trait Net: Runtime + Signals {
    /// The connection type, adapted to hyper's I/O traits.
    type Io: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static;

    fn connect(&self, addr: SocketAddr) -> impl Future<Output = io::Result<Self::Io>> + Send;
}

/// Time passed on `rt`'s clock since `start`.
pub(crate) fn since<R: Net>(rt: &R, start: std::time::Instant) -> Duration {
    rt.now().saturating_duration_since(start)
}

impl Net for Tokio {
    type Io = hyper_util::rt::TokioIo<tokio::net::TcpStream>;

    async fn connect(&self, addr: SocketAddr) -> io::Result<Self::Io> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(hyper_util::rt::TokioIo::new(stream))
    }
}

impl Net for Smol {
    type Io = smol_hyper::rt::FuturesIo<async_io::Async<std::net::TcpStream>>;

    async fn connect(&self, addr: SocketAddr) -> io::Result<Self::Io> {
        let stream = async_io::Async::<std::net::TcpStream>::connect(addr).await?;
        stream.get_ref().set_nodelay(true)?;
        Ok(smol_hyper::rt::FuturesIo::new(stream))
    }
}

impl Net for AsyncStd {
    type Io = smol_hyper::rt::FuturesIo<async_std::net::TcpStream>;

    async fn connect(&self, addr: SocketAddr) -> io::Result<Self::Io> {
        let stream = async_std::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(smol_hyper::rt::FuturesIo::new(stream))
    }
}

/// Why a request failed.
#[derive(Debug)]
pub(crate) enum HttpError {
    Connect(io::Error),
    Protocol(hyper::Error),
    /// A non-2xx status, with the server's `Retry-After` hint if it sent a valid one.
    Status {
        code: u16,
        retry_after: Option<Duration>,
    },
    /// No answer within [`REQUEST_LIMIT`].
    TimedOut,
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Connect(e) => write!(f, "connect failed: {e}"),
            Self::Protocol(e) => write!(f, "http error: {e}"),
            Self::Status { code, .. } => write!(f, "status {code}"),
            Self::TimedOut => write!(f, "no answer within {}", secs(REQUEST_LIMIT)),
        }
    }
}

impl std::error::Error for HttpError {}

impl RetryAfter for HttpError {
    fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// Keeps idle connections for reuse; cloning shares the pool.
#[derive(Clone)]
pub(crate) struct Client<R> {
    rt: R,
    addr: SocketAddr,
    idle: Arc<Mutex<Vec<SendRequest<Empty<Bytes>>>>>,
}

impl<R: Net> Client<R> {
    pub(crate) fn new(rt: R, addr: SocketAddr) -> Self {
        Self {
            rt,
            addr,
            idle: Arc::default(),
        }
    }

    fn checkout(&self) -> Option<SendRequest<Empty<Bytes>>> {
        let mut idle = self
            .idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        while let Some(sender) = idle.pop() {
            if !sender.is_closed() {
                return Some(sender);
            }
        }
        None
    }

    async fn connection(&self) -> Result<SendRequest<Empty<Bytes>>, HttpError> {
        if let Some(sender) = self.checkout() {
            return Ok(sender);
        }
        let io = self
            .rt
            .connect(self.addr)
            .await
            .map_err(HttpError::Connect)?;
        let (sender, connection) = handshake(io).await.map_err(HttpError::Protocol)?;
        // The connection task ends when the sender is dropped or the server closes.
        drop(self.rt.spawn(connection));
        Ok(sender)
    }

    /// GETs `path`; a non-2xx status is an error carrying the `Retry-After` hint, and no
    /// answer within [`REQUEST_LIMIT`] is [`HttpError::TimedOut`] (the connection is closed).
    pub(crate) async fn get(&self, path: &str) -> Result<Bytes, HttpError> {
        within(&self.rt, REQUEST_LIMIT, self.exchange(path))
            .await
            .unwrap_or(Err(HttpError::TimedOut))
    }

    async fn exchange(&self, path: &str) -> Result<Bytes, HttpError> {
        let mut sender = self.connection().await?;
        sender.ready().await.map_err(HttpError::Protocol)?;
        let request = http::Request::builder()
            .uri(path)
            .header(http::header::HOST, self.addr.to_string())
            .body(Empty::new())
            .expect("a static request is valid");
        let response = sender
            .send_request(request)
            .await
            .map_err(HttpError::Protocol)?;
        let status = response.status();
        let retry_after = tidewall::http::retry_after(response.headers(), SystemTime::now())
            .ok()
            .flatten();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(HttpError::Protocol)?
            .to_bytes();
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(sender);
        if status.is_success() {
            Ok(body)
        } else {
            Err(HttpError::Status {
                code: status.as_u16(),
                retry_after,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use tidewall::rt::{Clock, Tokio};

    use super::{Client, HttpError, REQUEST_LIMIT};

    /// A server that takes the connection and never answers: the request fails at the limit
    /// instead of hanging (virtual time, so the 30 s cost nothing).
    #[test]
    fn a_request_never_answered_fails_at_the_limit() {
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = silent.local_addr().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(async {
            let start = Tokio.now();
            let answer = Client::new(Tokio, addr).get("/delay/0").await;
            assert!(matches!(answer, Err(HttpError::TimedOut)), "{answer:?}");
            assert_eq!(Tokio.now() - start, REQUEST_LIMIT);
            assert_eq!(answer.unwrap_err().to_string(), "no answer within 30 s");
        });
        drop(silent);
    }
}
