//! The embedded service: real HTTP/1.1 (hyper) on loopback, with injectable latency and
//! failures, on its own tokio thread so every client runtime sees the same server.
//!
//! Routes:
//! * `/delay/{ms}`: 200 after `ms` milliseconds.
//! * `/flaky/{key}/{failures}/{retry_after}`: the first `failures` requests for `key` get 503
//!   (with `Retry-After: {retry_after}` seconds unless it is `-`), later ones 200.
//! * `/capacity/{key}/{slots}/{ms}`: 200 from a dependency of limited capacity, one per `key`:
//!   it serves `slots` requests at once, `ms` milliseconds each, and queues the rest FIFO; a
//!   request whose client gave up is served anyway ([`Capacity`]).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use super::capacity::Capacity;

/// What the server observed, shared with the tour.
#[derive(Default)]
pub(crate) struct Stats {
    in_flight: AtomicUsize,
    peak_in_flight: AtomicUsize,
    requests: AtomicUsize,
    flaky_counts: Mutex<HashMap<String, u32>>,
    capacities: Mutex<HashMap<String, Capacity>>,
}

impl Stats {
    /// Resets the peak so a scenario measures only its own concurrency.
    pub(crate) fn reset_peak(&self) {
        self.peak_in_flight.store(0, Ordering::SeqCst);
    }

    pub(crate) fn peak_in_flight(&self) -> usize {
        self.peak_in_flight.load(Ordering::SeqCst)
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    pub(crate) fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// Requests the `/capacity/{key}/{slots}/{ms}` dependency has taken and not yet served
    /// (abandoned ones included); 0 before its first request.
    pub(crate) fn backlog(&self, key: &str, slots: usize, service_ms: u64) -> usize {
        self.capacities()
            .get(&capacity_key(key, slots, service_ms))
            .map_or(0, Capacity::backlog)
    }

    fn capacities(&self) -> std::sync::MutexGuard<'_, HashMap<String, Capacity>> {
        self.capacities
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The dependency of that key and size, made on its first request; `None` for no slots.
    fn capacity(&self, key: &str, slots: usize, service_ms: u64) -> Option<Capacity> {
        let mut capacities = self.capacities();
        let key = capacity_key(key, slots, service_ms);
        if let Some(capacity) = capacities.get(&key) {
            return Some(capacity.clone());
        }
        let capacity = Capacity::new(slots, Duration::from_millis(service_ms))?;
        capacities.insert(key, capacity.clone());
        Some(capacity)
    }
}

/// A dependency per key and size: one asked for with other numbers is another dependency.
fn capacity_key(key: &str, slots: usize, service_ms: u64) -> String {
    format!("{key}/{slots}/{service_ms}")
}

pub(crate) struct Server {
    pub(crate) addr: SocketAddr,
    pub(crate) stats: Arc<Stats>,
    _shutdown: tokio::sync::oneshot::Sender<()>,
}

/// Starts the service on 127.0.0.1 with an OS-assigned port.
pub(crate) fn start() -> anyhow::Result<Server> {
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").context("binding the tour service")?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let stats = Arc::new(Stats::default());
    let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = Arc::clone(&stats);
    std::thread::Builder::new()
        .name("tour-service".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("the tour service runtime");
            runtime.block_on(async move {
                let listener =
                    tokio::net::TcpListener::from_std(listener).expect("a tokio listener");
                tokio::select! {
                    () = accept_loop(listener, served) => {}
                    _ = stopped => {}
                }
            });
        })?;
    Ok(Server {
        addr,
        stats,
        _shutdown: shutdown,
    })
}

/// How long the accept loop pauses after an error that is not one connection's own: long
/// enough not to spin, short enough to take connections again soon after descriptors free.
const ACCEPT_PAUSE: Duration = Duration::from_millis(50);

/// What the accept loop does after `error`: `None` to accept again at once, or how long to
/// pause first. A connection reset or aborted before it was taken fails alone. Anything
/// else (out of descriptors, `EMFILE`/`ENFILE`, or of memory) leaves the connection in the
/// backlog and the listener readable: accepting again at once would spin on the error, on
/// the thread the service needs to answer the requests whose end frees descriptors. axum's
/// `serve` tells the errors apart the same way, and pauses 1 s.
fn pause_after(error: &std::io::Error) -> Option<Duration> {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    match error.kind() {
        ConnectionAborted | ConnectionRefused | ConnectionReset => None,
        _ => Some(ACCEPT_PAUSE),
    }
}

async fn accept_loop(listener: tokio::net::TcpListener, stats: Arc<Stats>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                if let Some(pause) = pause_after(&error) {
                    tokio::time::sleep(pause).await;
                }
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let stats = Arc::clone(&stats);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| handle(req, Arc::clone(&stats)));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn handle(
    req: Request<Incoming>,
    stats: Arc<Stats>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    stats.requests.fetch_add(1, Ordering::SeqCst);
    let now = stats.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    stats.peak_in_flight.fetch_max(now, Ordering::SeqCst);
    // hyper drops this future when the client goes away mid-request (the race's loser, a
    // timed-out call): the guard keeps the in-flight count right in that case too.
    let _in_flight = InFlight(&stats);
    Ok(route(req.uri().path(), &stats).await)
}

struct InFlight<'a>(&'a Stats);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn route(path: &str, stats: &Stats) -> Response<Full<Bytes>> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    match parts.as_slice() {
        ["delay", ms] => match ms.parse::<u64>() {
            Ok(ms) => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                reply(StatusCode::OK, "ok")
            }
            Err(_) => reply(StatusCode::BAD_REQUEST, "bad delay"),
        },
        ["flaky", key, failures, retry_after] => {
            let Ok(failures) = failures.parse::<u32>() else {
                return reply(StatusCode::BAD_REQUEST, "bad failure count");
            };
            let seen = {
                let mut counts = stats
                    .flaky_counts
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let count = counts.entry((*key).to_owned()).or_insert(0);
                *count += 1;
                *count
            };
            if seen > failures {
                return reply(StatusCode::OK, "recovered");
            }
            let mut response = reply(StatusCode::SERVICE_UNAVAILABLE, "unavailable");
            if let Ok(value) = retry_after.parse::<http::HeaderValue>()
                && *retry_after != "-"
            {
                response
                    .headers_mut()
                    .insert(http::header::RETRY_AFTER, value);
            }
            response
        }
        ["capacity", key, slots, ms] => {
            let (Ok(slots), Ok(ms)) = (slots.parse::<usize>(), ms.parse::<u64>()) else {
                return reply(StatusCode::BAD_REQUEST, "bad capacity");
            };
            let Some(capacity) = stats.capacity(key, slots, ms) else {
                return reply(StatusCode::BAD_REQUEST, "bad capacity");
            };
            capacity.serve().await;
            reply(StatusCode::OK, "served")
        }
        _ => reply(StatusCode::NOT_FOUND, "no such route"),
    }
}

fn reply(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response
}

#[cfg(test)]
mod tests {
    use std::io::{Error, ErrorKind};

    use super::{ACCEPT_PAUSE, pause_after};

    /// Running out of descriptors pauses the loop; one connection's failure does not.
    #[test]
    fn the_accept_loop_pauses_on_a_process_wide_error_only() {
        for kind in [
            ErrorKind::ConnectionAborted,
            ErrorKind::ConnectionRefused,
            ErrorKind::ConnectionReset,
        ] {
            assert_eq!(pause_after(&Error::from(kind)), None, "{kind:?}");
        }
        assert_eq!(
            pause_after(&Error::from(ErrorKind::OutOfMemory)),
            Some(ACCEPT_PAUSE)
        );
        assert_eq!(pause_after(&Error::other("unknown")), Some(ACCEPT_PAUSE));
        #[cfg(unix)]
        for errno in [
            rustix::io::Errno::MFILE,
            rustix::io::Errno::NFILE,
            rustix::io::Errno::NOBUFS,
        ] {
            assert_eq!(
                pause_after(&Error::from(errno)),
                Some(ACCEPT_PAUSE),
                "{errno}"
            );
        }
    }
}
