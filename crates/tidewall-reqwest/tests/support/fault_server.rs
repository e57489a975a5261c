//! A scripted HTTP/1.1 server on loopback for fault-injection tests: one server is one host
//! (one authority), and a script picks, per request, the fault to apply.
//!
//! It runs on its own thread with its own tokio runtime, so clients on any runtime (current
//! thread, multi thread, paused clock) talk to the same real-time server, and a paused client
//! clock never stalls it. Beware the converse: a paused client clock auto-advances while it
//! awaits this server, so a client-side timeout can fire before even a fast answer arrives.
#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use http::header::RETRY_AFTER;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{Notify, oneshot};

/// What the server does with one request.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Respond with this status; `retry_after` (seconds) becomes a `Retry-After` header. A
    /// code `http` rejects (outside 100..=999) is answered with 500 instead.
    Status {
        /// The response status.
        code: u16,
        /// Seconds for the `Retry-After` header; `None` sends no header.
        retry_after: Option<u64>,
    },
    /// Wait this long (real time, on the server's runtime), then 200.
    Slow(Duration),
    /// Read the request head, then reset the connection (`SO_LINGER` 0, then close): the
    /// client sees a reset or an incomplete message, never a response.
    Reset,
    /// 200 with body "ok".
    Ok,
}

type Script = dyn Fn(u64, &Method, &str) -> Fault + Send + Sync;

/// State shared between the handle and the server thread.
struct Shared {
    script: Box<Script>,
    hits: AtomicU64,
    in_flight: AtomicU64,
    peak_in_flight: AtomicU64,
    /// Per path, one body per request, in the order the heads arrived.
    bodies: Mutex<HashMap<String, Vec<Bytes>>>,
}

impl Shared {
    fn bodies(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Bytes>>> {
        // A panicking test thread must not turn every later assertion into a poison error.
        self.bodies.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A running fault server; dropping it stops the server and closes every connection.
pub struct FaultServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    /// Dropping the sender stops the server thread; `None` once stopped.
    running: Option<(oneshot::Sender<()>, JoinHandle<()>)>,
}

impl FaultServer {
    /// Starts serving on 127.0.0.1 (OS-assigned port) on a background thread. `script(n,
    /// method, path)` is called for the `n`-th request (0-based, over the whole server) once
    /// its head is read, and returns the fault to apply.
    ///
    /// # Panics
    ///
    /// If the port cannot be bound or the runtime or thread cannot be created: a test cannot
    /// go on without its server, and failing here names the cause.
    pub fn start(script: impl Fn(u64, &Method, &str) -> Fault + Send + Sync + 'static) -> Self {
        // Bound here, not on the thread, so the port accepts connections before we return.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding a loopback port");
        listener.set_nonblocking(true).expect("non-blocking");
        let addr = listener.local_addr().expect("the listener's address");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("the fault server runtime");
        let shared = Arc::new(Shared {
            script: Box::new(script),
            hits: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            peak_in_flight: AtomicU64::new(0),
            bodies: Mutex::new(HashMap::new()),
        });
        let (stop, stopped) = oneshot::channel::<()>();
        let served = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name(format!("fault-server-{}", addr.port()))
            .spawn(move || {
                runtime.block_on(async move {
                    tokio::select! {
                        () = accept_loop(listener, served) => {}
                        _ = stopped => {} // Sent or dropped: either way, stop.
                    }
                });
                // Dropping the runtime here drops every connection task, closing their sockets.
            })
            .expect("the fault server thread");
        let running = Some((stop, thread));
        Self {
            addr,
            shared,
            running,
        }
    }

    /// The loopback address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT{path}`; `path` should start with `/`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Requests whose head was read, counted before the fault applies (resets count too).
    pub fn hits(&self) -> u64 {
        self.shared.hits.load(SeqCst)
    }

    /// Like [`hits`](Self::hits), for one path (the URI path, without the query).
    pub fn hits_on(&self, path: &str) -> u64 {
        self.shared.bodies().get(path).map_or(0, |b| b.len() as u64)
    }

    /// The body of every request on `path`, in the order their heads arrived. The body is
    /// read in full before the fault applies, except for [`Fault::Reset`], which never reads
    /// it: those requests (and any whose body the client abandoned) record an empty body.
    pub fn bodies_on(&self, path: &str) -> Vec<Bytes> {
        self.shared.bodies().get(path).cloned().unwrap_or_default()
    }

    /// The largest number of requests in progress at once (head read, response not yet
    /// handed to hyper).
    pub fn peak_in_flight(&self) -> u64 {
        self.shared.peak_in_flight.load(SeqCst)
    }
}

impl Drop for FaultServer {
    fn drop(&mut self) {
        if let Some((stop, thread)) = self.running.take() {
            drop(stop);
            // A server thread panic is already reported on stderr; re-raising it from Drop
            // could abort a test that is itself unwinding.
            let _ = thread.join();
        }
    }
}

async fn accept_loop(listener: std::net::TcpListener, shared: Arc<Shared>) {
    let Ok(listener) = TcpListener::from_std(listener) else {
        return; // Clients then see refused connections, which the tests report.
    };
    loop {
        // Accept errors (a client that gave up mid-handshake) only concern that client.
        if let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve(stream, Arc::clone(&shared)));
        }
    }
}

/// Serves one connection until the client closes it or a request asks for a reset.
async fn serve(stream: TcpStream, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    // hyper owns the stream, so keep a second descriptor of the same socket: setting
    // SO_LINGER 0 through it makes the socket's final close send RST instead of FIN.
    let Ok((stream, twin)) = split_twin(stream) else {
        return;
    };
    let reset = Arc::new(Notify::new());
    let on_reset = Arc::clone(&reset);
    let service = service_fn(move |req| handle(req, shared.clone(), on_reset.clone()));
    let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        _ = conn => {}
        () = reset.notified() => {
            // If this fails the client sees a clean close instead: still no response.
            let _ = twin.set_zero_linger();
        }
    }
    // Returning drops the connection and the twin, closing the socket's last descriptor.
}

fn split_twin(stream: TcpStream) -> std::io::Result<(TcpStream, TcpSocket)> {
    let stream = stream.into_std()?;
    let twin = TcpSocket::from_std_stream(stream.try_clone()?);
    Ok((TcpStream::from_std(stream)?, twin))
}

async fn handle(
    req: Request<Incoming>,
    shared: Arc<Shared>,
    reset: Arc<Notify>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    // In flight before the hit is counted, so a test that sees `hits() == k` knows those k
    // requests were all counted as in flight.
    let now = shared.in_flight.fetch_add(1, SeqCst) + 1;
    shared.peak_in_flight.fetch_max(now, SeqCst);
    // hyper drops this future when the client leaves (or on reset): the guard still counts down.
    let _in_flight = InFlight(&shared.in_flight);
    let n = shared.hits.fetch_add(1, SeqCst);
    let path = req.uri().path().to_owned();
    // Reserve the body's slot now so bodies stay in head order even when reads interleave.
    let slot = {
        let mut bodies = shared.bodies();
        let list = bodies.entry(path.clone()).or_default();
        list.push(Bytes::new());
        list.len() - 1
    };
    let fault = (shared.script)(n, req.method(), &path);
    if let Fault::Reset = fault {
        reset.notify_one();
        // Never answer: the connection task drops this future along with the connection.
        return std::future::pending().await;
    }
    let body = req.into_body().collect().await?.to_bytes();
    if let Some(recorded) = shared.bodies().get_mut(&path).and_then(|l| l.get_mut(slot)) {
        *recorded = body;
    }
    Ok(match fault {
        Fault::Status { code, retry_after } => status(code, retry_after),
        Fault::Slow(delay) => {
            tokio::time::sleep(delay).await;
            ok()
        }
        Fault::Ok | Fault::Reset => ok(),
    })
}

struct InFlight<'a>(&'a AtomicU64);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, SeqCst);
    }
}

fn ok() -> Response<Full<Bytes>> {
    Response::new(Full::new(Bytes::from_static(b"ok")))
}

fn status(code: u16, retry_after: Option<u64>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::default());
    *response.status_mut() =
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if let Some(secs) = retry_after {
        response.headers_mut().insert(RETRY_AFTER, secs.into());
    }
    response
}

/// Every request gets `f`.
pub fn always(f: Fault) -> impl Fn(u64, &Method, &str) -> Fault + Send + Sync + Clone + 'static {
    move |_: u64, _: &Method, _: &str| f.clone()
}

/// Request `n` gets status `code` when `n % of < fail`, else 200: `fail` out of every `of`
/// requests fail, at fixed positions, so runs are reproducible.
///
/// # Panics
///
/// If `of` is 0 (there is no share of zero requests).
pub fn fail_every(
    of: u64,
    fail: u64,
    code: u16,
) -> impl Fn(u64, &Method, &str) -> Fault + Send + Sync + Clone + 'static {
    assert!(of > 0, "fail_every: `of` must be at least 1");
    let failure = Fault::Status {
        code,
        retry_after: None,
    };
    move |n: u64, _: &Method, _: &str| {
        if n % of < fail {
            failure.clone()
        } else {
            Fault::Ok
        }
    }
}

/// The first `n` requests get `f`, the rest 200.
pub fn first_n(
    n: u64,
    f: Fault,
) -> impl Fn(u64, &Method, &str) -> Fault + Send + Sync + Clone + 'static {
    move |i: u64, _: &Method, _: &str| if i < n { f.clone() } else { Fault::Ok }
}
