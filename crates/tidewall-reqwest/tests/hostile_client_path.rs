//! Adversarial black-box tests of the HTTP client path: `tidewall_reqwest::Resilience` over real
//! loopback servers, and `tidewall::http::ClientPolicies::run` in process. They attack the
//! documented contracts with hostile servers and callers: non-idempotent methods and streaming
//! bodies that must be sent once, `Retry-After` in its three date forms, absurd, malformed and
//! repeated, connections closed mid-head and mid-body, redirect loops, statuses above 599,
//! authorities that differ only in spelling, scheme, port or userinfo, a full authority table,
//! and calls dropped at seeded random points that must leave no bulkhead slot held.
//!
//! Written from the public rustdoc alone (no implementation read). Time is real (the servers
//! are real sockets), so bounds are loose: counts and orders, durations only with wide margins.

mod support;

use std::collections::HashMap;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::HeaderName;
use http::{Extensions, Method, StatusCode};
use reqwest::{Request, Response};
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware, Middleware, Next};
use support::fault_server::{Fault, FaultServer, always, first_n};
use tidewall::breaker::{CircuitBreaker, State};
use tidewall::bulkhead::Bulkhead;
use tidewall::classify::{Classify, Verdict};
use tidewall::http::{
    Authority, ClientPoliciesBuilder, HttpClassifier, Idempotency, RetryAfterError,
    parse_retry_after,
};
use tidewall::time::Elapsed;
use tidewall::{Backoff, Jitter, Rejected};
use tidewall_reqwest::{ClientPolicies, Overrides, ReqwestClassifier, Resilience, rejection};

type MwError = reqwest_middleware::Error;
type MwResult = reqwest_middleware::Result<Response>;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn status(code: u16) -> Fault {
    Fault::Status {
        code,
        retry_after: None,
    }
}

/// `attempts` attempts 10 ms apart, no budget, no breaker, a 5 s attempt timeout and a 10 s
/// deadline: every test turns on what it attacks.
fn base(attempts: u32) -> ClientPoliciesBuilder {
    let backoff = Backoff::constant(ms(10))
        .jitter(Jitter::None)
        .max_attempts(attempts)
        .build()
        .unwrap();
    ClientPolicies::builder()
        .retry(backoff)
        .attempt_timeout(Some(secs(5)))
        .deadline(Some(secs(10)))
        .retry_budget(None)
        .breaker(None)
}

/// A bulkhead of `slots` with no queue (`Bulkhead::builder` alone waits for a slot), as the
/// standard stack's "no queue; full, it refuses at once".
fn no_queue(slots: usize) -> tidewall::bulkhead::BulkheadBuilder {
    Bulkhead::builder(slots).max_queue(0)
}

/// A breaker per authority opening on `failures` in a row, for 30 s.
fn breaker(failures: u32) -> Option<tidewall::breaker::CircuitBreakerBuilder> {
    Some(
        CircuitBreaker::builder()
            .no_failure_rate()
            .consecutive_failures(failures)
            .break_duration(secs(30)),
    )
}

/// reqwest without proxies or its own retries, so a server's hit count is our attempt count.
fn reqwest_client() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .no_proxy()
        .retry(reqwest::retry::never())
}

fn resilient(policies: ClientPoliciesBuilder) -> (ClientWithMiddleware, Resilience) {
    client_on(reqwest_client(), policies)
}

fn client_on(
    inner: reqwest::ClientBuilder,
    policies: ClientPoliciesBuilder,
) -> (ClientWithMiddleware, Resilience) {
    let resilience = Resilience::new(policies.build().unwrap());
    let client = ClientBuilder::new(inner.build().unwrap())
        .with(resilience.clone())
        .build();
    (client, resilience)
}

/// The middleware with `Count` below it: `Count` sees every attempt the middleware makes.
fn counted(policies: ClientPoliciesBuilder) -> (ClientWithMiddleware, Count) {
    let count = Count::default();
    let resilience = Resilience::new(policies.build().unwrap());
    let client = ClientBuilder::new(reqwest_client().build().unwrap())
        .with(resilience)
        .with(count.clone())
        .build();
    (client, count)
}

/// Counts the attempts that reach it, and passes them on.
#[derive(Clone, Default)]
struct Count(Arc<AtomicU64>);

impl Count {
    fn take(&self) -> u64 {
        self.0.swap(0, SeqCst)
    }
}

#[async_trait::async_trait]
impl Middleware for Count {
    async fn handle(&self, req: Request, ext: &mut Extensions, next: Next<'_>) -> MwResult {
        self.0.fetch_add(1, SeqCst);
        next.run(req, ext).await
    }
}

fn code(result: MwResult) -> u16 {
    match result {
        Ok(response) => response.status().as_u16(),
        Err(error) => panic!("expected a response, got {error:?}"),
    }
}

/// What the `Error::Middleware` holds, as `downcast_ref` finds it.
fn held<T>(error: &MwError) -> Option<&T>
where
    T: std::fmt::Display + std::fmt::Debug + Send + Sync + 'static,
{
    match error {
        MwError::Middleware(inner) => inner.downcast_ref::<T>(),
        MwError::Reqwest(_) => None,
    }
}

fn reqwest_error(result: MwResult) -> reqwest::Error {
    match result {
        Err(MwError::Reqwest(error)) => error,
        other => panic!("expected Error::Reqwest, got {other:?}"),
    }
}

fn authority(host: &str, port: u16) -> Authority {
    Authority::new("http", host, Some(port)).unwrap()
}

fn breaker_state(resilience: &Resilience, authority: &Authority) -> Option<State> {
    resilience.policies().breakers().unwrap().state(authority)
}

/// Polls `done` every 5 ms for up to 5 s; panics naming `what` if it never holds.
async fn wait_until(what: &str, done: impl Fn() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < secs(5), "timed out waiting for {what}");
        tokio::time::sleep(ms(5)).await;
    }
}

// --- HTTP dates, written out by hand (RFC 9110 §5.6.7's three forms) ---------------------------

const WEEKDAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
const WEEKDAYS_LONG: [&str; 7] = [
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
];
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

#[derive(Clone, Copy)]
enum DateForm {
    Imf,
    Rfc850,
    Asctime,
}

/// `t` as an HTTP-date in `form` (UTC, whole seconds).
fn http_date(t: SystemTime, form: DateForm) -> String {
    let unix = t.duration_since(UNIX_EPOCH).unwrap().as_secs();
    let (days, rem) = (unix / 86_400, unix % 86_400);
    let (hh, mm, ss) = (rem / 3600, rem % 3600 / 60, rem % 60);
    // Howard Hinnant's civil_from_days, for days >= 0.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    let weekday = usize::try_from((days + 4) % 7).unwrap(); // 1970-01-01 was a Thursday.
    let mon = MONTHS[usize::try_from(month - 1).unwrap()];
    match form {
        DateForm::Imf => format!(
            "{}, {day:02} {mon} {year} {hh:02}:{mm:02}:{ss:02} GMT",
            WEEKDAYS[weekday]
        ),
        DateForm::Rfc850 => format!(
            "{}, {day:02}-{mon}-{:02} {hh:02}:{mm:02}:{ss:02} GMT",
            WEEKDAYS_LONG[weekday],
            year % 100
        ),
        DateForm::Asctime => format!(
            "{} {mon} {day:>2} {hh:02}:{mm:02}:{ss:02} {year}",
            WEEKDAYS[weekday]
        ),
    }
}

// --- A raw HTTP/1.1 server: answers each request with scripted bytes, then closes -------------

/// Builds a whole response: status line, these headers, `Content-Length: 0`, `Connection: close`.
fn raw_response(status_line: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut text = format!("HTTP/1.1 {status_line}\r\n");
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str("Content-Length: 0\r\nConnection: close\r\n\r\n");
    text.into_bytes()
}

type RawScript = dyn Fn(u64, &str) -> Vec<u8> + Send + Sync;

struct RawShared {
    script: Box<RawScript>,
    hits: AtomicU64,
    per_path: Mutex<HashMap<String, u64>>,
}

/// Loopback server on plain threads: reads one request head (and its body), writes what
/// `script(n, path)` returns, byte for byte, and closes the connection. Stopped on drop.
struct RawServer {
    addr: SocketAddr,
    shared: Arc<RawShared>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl RawServer {
    fn start(script: impl Fn(u64, &str) -> Vec<u8> + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(RawShared {
            script: Box::new(script),
            hits: AtomicU64::new(0),
            per_path: Mutex::new(HashMap::new()),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let (served, stopping) = (Arc::clone(&shared), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopping.load(SeqCst) {
                    break;
                }
                if let Ok(stream) = stream {
                    let shared = Arc::clone(&served);
                    std::thread::spawn(move || raw_serve(stream, &shared));
                }
            }
        });
        Self {
            addr,
            shared,
            stop,
            thread: Some(thread),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn hits(&self) -> u64 {
        self.shared.hits.load(SeqCst)
    }

    fn hits_on(&self, path: &str) -> u64 {
        let map = self
            .shared
            .per_path
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        map.get(path).copied().unwrap_or(0)
    }
}

impl Drop for RawServer {
    fn drop(&mut self) {
        self.stop.store(true, SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn raw_serve(mut stream: TcpStream, shared: &RawShared) {
    let _ = stream.set_read_timeout(Some(secs(5)));
    let mut buf = Vec::new();
    let mut chunk = [0_u8; 4096];
    let head_end = loop {
        let Ok(n) = stream.read(&mut chunk) else {
            return;
        };
        if n == 0 {
            return; // The wake-up connection, or a client that gave up.
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            break end + 4;
        }
        if buf.len() > 65_536 {
            return;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let path = head
        .lines()
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .unwrap_or("/")
        .to_owned();
    let length = head.lines().find_map(|line| {
        line.strip_prefix("content-length:")
            .and_then(|v| v.trim().parse::<usize>().ok())
    });
    let chunked = head.contains("transfer-encoding: chunked");
    // Read the body so closing never resets a request the client is still writing.
    loop {
        let body = &buf[head_end..];
        let complete = match length {
            Some(len) => body.len() >= len,
            None => !chunked || body.ends_with(b"0\r\n\r\n"),
        };
        if complete {
            break;
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let n = shared.hits.fetch_add(1, SeqCst);
    *shared
        .per_path
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .entry(path.clone())
        .or_default() += 1;
    let reply = (shared.script)(n, &path);
    let _ = stream.write_all(&reply);
    let _ = stream.flush();
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

// ---------------------------------------------------------------------------------------------
// Methods that must be sent once
// ---------------------------------------------------------------------------------------------

/// Crate docs: "Only requests Idempotency allows are retried: GET, HEAD, OPTIONS, PUT, DELETE
/// and TRACE, and POST or PATCH only with an `Idempotency-Key` header". A refused connection
/// (nothing was sent) is retryable by the table, but the method rule still decides.
#[tokio::test]
async fn a_refused_connection_is_retried_for_get_but_a_post_is_attempted_once() {
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/orders", closed.local_addr().unwrap());
    drop(closed);
    let (client, count) = counted(base(3));

    let error = reqwest_error(client.get(&url).send().await);
    assert!(error.is_connect(), "{error:?}");
    assert_eq!(count.take(), 3, "a GET meeting a refused port is retried");

    let error = reqwest_error(client.post(&url).body("pay").send().await);
    assert!(error.is_connect(), "{error:?}");
    assert_eq!(count.take(), 1, "a POST without a key is attempted once");
}

/// ClientPolicies docs: "A request whose method is not idempotent (POST, PATCH, without an
/// Idempotency-Key) ... is never retried: it is sent once ... and its response (a 503
/// included) comes back as it is"; Idempotency: "POST, PATCH and any other method only when
/// the request carries an Idempotency-Key header".
#[tokio::test]
async fn patch_and_extension_methods_are_sent_once_while_rfc_idempotent_ones_are_retried() {
    let server = FaultServer::start(always(status(503)));
    let (client, _) = resilient(base(3));
    let purge = Method::from_bytes(b"PURGE").unwrap();
    let lowercase_get = Method::from_bytes(b"get").unwrap();
    let cases = [
        (Method::PATCH, "/patch", 1),
        (purge, "/purge", 1),
        (Method::PUT, "/put", 3),
        (Method::DELETE, "/delete", 3),
        (Method::OPTIONS, "/options", 3),
        (Method::HEAD, "/head", 3),
        (Method::TRACE, "/trace", 3),
        // Methods are case-sensitive (RFC 9110 §9.1): "get" is not GET.
        (lowercase_get, "/lowercase-get", 1),
    ];
    for (method, path, hits) in cases {
        let result = client
            .request(method.clone(), server.url(path))
            .send()
            .await;
        assert_eq!(code(result), 503, "{method}");
        assert_eq!(server.hits_on(path), hits, "{method} {path}");
    }
}

/// Builder: "Which requests may be sent again (default Idempotency::standard)"; Idempotency:
/// `key_header` is "The header whose presence makes any request replayable (default
/// Idempotency-Key; None: no header does)", and `allow` "Also replays every request with this
/// method".
#[tokio::test]
async fn a_configured_idempotency_replaces_the_key_header_and_allows_methods() {
    let server = FaultServer::start(always(status(503)));
    let request_id = HeaderName::from_static("x-request-id");
    let custom = Idempotency::standard().key_header(Some(request_id.clone()));
    let (client, _) = resilient(base(3).idempotency(custom));
    let by_id = client.post(server.url("/by-id")).header(&request_id, "r1");
    assert_eq!(code(by_id.send().await), 503);
    assert_eq!(
        server.hits_on("/by-id"),
        3,
        "the configured header makes a POST replayable"
    );
    let by_key = client
        .post(server.url("/by-key"))
        .header("idempotency-key", "k1");
    assert_eq!(code(by_key.send().await), 503);
    assert_eq!(
        server.hits_on("/by-key"),
        1,
        "the default header no longer does"
    );

    let none = Idempotency::standard().key_header(None);
    let (client, _) = resilient(base(3).idempotency(none));
    let keyed = client
        .post(server.url("/no-header"))
        .header("idempotency-key", "k2");
    assert_eq!(code(keyed.send().await), 503);
    assert_eq!(
        server.hits_on("/no-header"),
        1,
        "key_header(None): no header replays"
    );

    let patch = Idempotency::standard().allow(Method::PATCH);
    let (client, _) = resilient(base(3).idempotency(patch));
    assert_eq!(code(client.patch(server.url("/patch")).send().await), 503);
    assert_eq!(server.hits_on("/patch"), 3, "an allowed PATCH is replayed");
    assert_eq!(code(client.post(server.url("/post")).send().await), 503);
    assert_eq!(
        server.hits_on("/post"),
        1,
        "allowing PATCH does not allow POST"
    );
}

/// Overrides: `no_retry` "Sends the request once: no retry", whatever makes the request
/// replayable; `idempotent` with `max_attempts` replays a POST, the same body each time.
#[tokio::test]
async fn no_retry_beats_an_idempotency_key_and_idempotent_replays_the_same_body() {
    let server = FaultServer::start(always(status(503)));
    let (client, _) = resilient(base(3));
    let once = client
        .post(server.url("/once"))
        .header("idempotency-key", "k")
        .body("one")
        .with_extension(Overrides::new().no_retry().idempotent());
    assert_eq!(code(once.send().await), 503);
    assert_eq!(server.hits_on("/once"), 1);

    let two = NonZeroU32::new(2).unwrap();
    let twice = client
        .post(server.url("/twice"))
        .body("same body")
        .with_extension(Overrides::new().idempotent().max_attempts(two));
    assert_eq!(code(twice.send().await), 503);
    let bodies = server.bodies_on("/twice");
    assert_eq!(bodies.len(), 2, "{bodies:?}");
    assert!(
        bodies
            .iter()
            .all(|b| b == &Bytes::from_static(b"same body")),
        "{bodies:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Streaming bodies
// ---------------------------------------------------------------------------------------------

fn failing_stream() -> reqwest::Body {
    let items: Vec<Result<Bytes, std::io::Error>> = vec![
        Ok(Bytes::from_static(b"first chunk")),
        Err(std::io::Error::other("the producer failed")),
    ];
    reqwest::Body::wrap_stream(futures_util::stream::iter(items))
}

fn good_stream() -> reqwest::Body {
    let items: Vec<Result<Bytes, std::io::Error>> =
        vec![Ok(Bytes::from_static(b"a")), Ok(Bytes::from_static(b"b"))];
    reqwest::Body::wrap_stream(futures_util::stream::iter(items))
}

/// Crate docs: "A request whose body cannot be cloned (a stream, reqwest::Body::wrap_stream)
/// is sent once and never retried"; a failure mid-body must not leave its bulkhead slot held.
#[tokio::test]
async fn a_stream_that_fails_mid_body_is_attempted_once_and_frees_its_slot() {
    let server = FaultServer::start(always(Fault::Ok));
    let (client, count) = counted(base(3).bulkhead(Some(no_queue(1))));
    for round in 0..3 {
        let call = client
            .put(server.url("/upload"))
            .header("idempotency-key", "k")
            .with_extension(Overrides::new().idempotent())
            .body(failing_stream());
        let result = call.send().await;
        assert!(result.is_err(), "round {round}: {result:?}");
        assert_eq!(count.take(), 1, "round {round}: a stream is attempted once");
        // One slot: a leaked permit would refuse this GET with BulkheadFull.
        assert_eq!(code(client.get(server.url("/after")).send().await), 200);
        count.take();
    }
}

/// Crate docs: a stream's request is sent once, but "the breaker, bulkhead, rate limit and
/// timeouts still apply".
#[tokio::test]
async fn a_stream_meets_an_open_breaker_and_its_attempt_timeout() {
    let failing = FaultServer::start(always(status(500)));
    let (client, _) = resilient(base(3).breaker(breaker(2)));
    assert_eq!(code(client.get(failing.url("/a")).send().await), 500);
    assert_eq!(
        failing.hits(),
        2,
        "the failure that opened the breaker is the answer"
    );
    let refused = client
        .post(failing.url("/stream"))
        .body(good_stream())
        .send()
        .await;
    let error = refused.unwrap_err();
    assert!(
        matches!(rejection(&error), Some(Rejected::CircuitOpen { .. })),
        "{error:?}"
    );
    assert_eq!(
        failing.hits_on("/stream"),
        0,
        "an open breaker refuses before sending"
    );

    let slow = FaultServer::start(always(Fault::Slow(secs(3))));
    let start = Instant::now();
    let timed = client
        .put(slow.url("/stream"))
        .body(good_stream())
        .with_extension(Overrides::new().attempt_timeout(ms(200)))
        .send()
        .await;
    let error = timed.unwrap_err();
    assert!(held::<Elapsed>(&error).is_some(), "{error:?}");
    assert_eq!(slow.hits(), 1);
    assert!(start.elapsed() < ms(2500), "{:?}", start.elapsed());
}

// ---------------------------------------------------------------------------------------------
// Retry-After
// ---------------------------------------------------------------------------------------------

/// ClientPolicies docs: "a Retry-After that ends past the deadline ends the call at once";
/// module docs: "two forms: delay-seconds ... and an HTTP-date (..., plus the obsolete RFC 850
/// and asctime forms, which recipients must accept)". A 503 asking for an hour, in any form,
/// under a 3 s deadline, is the answer (one hit), not retried as if it had no hint.
#[tokio::test]
async fn an_hour_long_retry_after_date_in_each_form_answers_a_3s_call_at_once() {
    let server = RawServer::start(|_, path| {
        let form = match path {
            "/imf" => DateForm::Imf,
            "/rfc850" => DateForm::Rfc850,
            _ => DateForm::Asctime,
        };
        let date = http_date(SystemTime::now() + secs(3600), form);
        raw_response("503 Service Unavailable", &[("Retry-After", &date)])
    });
    let (client, _) = resilient(base(3).deadline(Some(secs(3))));
    for path in ["/imf", "/rfc850", "/asctime"] {
        let start = Instant::now();
        assert_eq!(
            code(client.get(server.url(path)).send().await),
            503,
            "{path}"
        );
        assert_eq!(server.hits_on(path), 1, "{path}: the date was not honoured");
        assert!(start.elapsed() < ms(2500), "{path}: {:?}", start.elapsed());
    }
}

/// A date in the past "is zero": the retry goes at once, and the call ends well within its
/// deadline with the retry's answer.
#[tokio::test]
async fn a_retry_after_date_in_the_past_retries_without_waiting() {
    let server = RawServer::start(|n, _| {
        if n == 0 {
            let stale = "Wed, 21 Oct 2015 07:28:00 GMT";
            raw_response("429 Too Many Requests", &[("Retry-After", stale)])
        } else {
            raw_response("200 OK", &[])
        }
    });
    let (client, _) = resilient(base(3).deadline(Some(secs(10))));
    let start = Instant::now();
    assert_eq!(code(client.get(server.url("/")).send().await), 200);
    assert_eq!(server.hits(), 2);
    assert!(start.elapsed() < secs(3), "{:?}", start.elapsed());
}

/// `parse_retry_after` caps both forms at 2^31 s, and "a request whose deadline ends before
/// the server's time is answered at once with the response". Absurd values must neither
/// overflow nor be read as small numbers.
#[tokio::test]
async fn absurd_retry_after_values_on_429_and_503_answer_at_once() {
    let values = [
        "99999999999999999999999",
        "18446744073709551616",
        "4294967296",
        "Fri, 31 Dec 9999 23:59:59 GMT",
    ];
    let server = RawServer::start(move |_, path| {
        let (line, index) = match path.strip_prefix("/429/") {
            Some(i) => ("429 Too Many Requests", i),
            None => ("503 Service Unavailable", path.trim_start_matches("/503/")),
        };
        let value = values[index.parse::<usize>().unwrap_or(0)];
        raw_response(line, &[("Retry-After", value)])
    });
    let (client, _) = resilient(base(3).deadline(Some(secs(3))));
    for code_prefix in ["429", "503"] {
        for (index, value) in values.iter().enumerate() {
            let path = format!("/{code_prefix}/{index}");
            let start = Instant::now();
            let got = code(client.get(server.url(&path)).send().await);
            assert_eq!(got.to_string(), code_prefix, "{path}");
            assert_eq!(server.hits_on(&path), 1, "{path} ({value})");
            assert!(start.elapsed() < ms(2500), "{path}: {:?}", start.elapsed());
        }
    }
}

/// Builder: `max_retry_after` "a longer one is cut to this. The cut only shortens the sleep".
/// With no deadline an absurd Retry-After sleeps only the cap; a zero cap does not wait.
#[tokio::test]
async fn max_retry_after_cuts_an_absurd_or_a_whole_second_wait() {
    let throttle_once = |value: &'static str| {
        RawServer::start(move |n, _| {
            if n == 0 {
                raw_response("429 Too Many Requests", &[("Retry-After", value)])
            } else {
                raw_response("200 OK", &[])
            }
        })
    };
    let absurd = throttle_once("99999999999999999999");
    let (client, _) = resilient(base(3).deadline(None).max_retry_after(ms(300)));
    let start = Instant::now();
    assert_eq!(code(client.get(absurd.url("/")).send().await), 200);
    let waited = start.elapsed();
    assert_eq!(absurd.hits(), 2);
    assert!(waited >= ms(290), "at least the capped wait: {waited:?}");
    assert!(waited < secs(5), "only the capped wait: {waited:?}");

    let one_second = throttle_once("1");
    let zero_cap = base(3)
        .deadline(Some(secs(5)))
        .max_retry_after(Duration::ZERO);
    let (client, _) = resilient(zero_cap);
    let start = Instant::now();
    assert_eq!(code(client.get(one_second.url("/")).send().await), 200);
    assert_eq!(one_second.hits(), 2);
    assert!(
        start.elapsed() < ms(900),
        "a zero cap waits nothing: {:?}",
        start.elapsed()
    );
}

/// HttpClassifier: the hint is "the Retry-After of a 429 or 503 response (none when malformed
/// or repeated)"; `status_hint`: "none for other statuses". None of these may end a 3 s call
/// at once with an hour's wait: each is retried like a hint-less failure.
#[tokio::test]
async fn malformed_repeated_joined_or_misplaced_retry_after_gives_no_hint() {
    let hour = "3600";
    let server = RawServer::start(move |n, _| match n {
        0 => raw_response("503 Service Unavailable", &[("Retry-After", "soon")]),
        1 => raw_response(
            "503 Service Unavailable",
            &[("Retry-After", hour), ("Retry-After", hour)],
        ),
        2 => raw_response("429 Too Many Requests", &[("Retry-After", "3600, 3600")]),
        3 => raw_response("500 Internal Server Error", &[("Retry-After", hour)]),
        4 => raw_response("503 Service Unavailable", &[("Retry-After", "-3600")]),
        _ => raw_response("200 OK", &[]),
    });
    let (client, _) = resilient(base(6).deadline(Some(secs(3))));
    let start = Instant::now();
    assert_eq!(code(client.get(server.url("/")).send().await), 200);
    assert_eq!(server.hits(), 6);
    assert!(start.elapsed() < ms(2500), "{:?}", start.elapsed());
}

// ---------------------------------------------------------------------------------------------
// Connections that break, redirects, odd statuses
// ---------------------------------------------------------------------------------------------

/// FailureKind::Interrupted: "The connection broke mid-call (reset, aborted, broken pipe,
/// unexpected end)", retryable by the table; but a POST is still sent once.
#[tokio::test]
async fn a_connection_closed_mid_head_is_retried_for_get_and_not_for_post() {
    let server = RawServer::start(|_, _| b"HTTP/1.1 200 OK\r\nContent-Len".to_vec());
    let (client, _) = resilient(base(3));
    let error = reqwest_error(client.get(server.url("/get")).send().await);
    assert!(!error.is_builder(), "{error:?}");
    assert_eq!(server.hits_on("/get"), 3, "an unexpected end is retried");
    let _ = reqwest_error(client.post(server.url("/post")).body("x").send().await);
    assert_eq!(server.hits_on("/post"), 1, "a POST is sent once");
}

/// A body cut short reaches the caller as a body error (the middleware answers once the head
/// is in); the call ends and holds no bulkhead slot afterwards.
#[tokio::test]
async fn a_connection_closed_mid_body_leaves_the_error_to_the_reader_and_frees_the_slot() {
    let server = RawServer::start(|_, _| {
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nConnection: close\r\n\r\nabc".to_vec()
    });
    let (client, _) = resilient(base(3).bulkhead(Some(no_queue(1))));
    for round in 0..3 {
        let response = client.get(server.url("/cut")).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert!(response.bytes().await.is_err(), "round {round}");
    }
    assert_eq!(server.hits(), 3, "never retried: the middleware saw a 200");
}

/// FailureKind::Other covers "a redirect loop": `Failure`, not retried, counted by the
/// breaker. The loop is one attempt: the server sees what one plain reqwest call makes it see.
#[tokio::test]
async fn a_redirect_loop_is_one_failed_attempt_that_the_breaker_counts() {
    let server = RawServer::start(|_, _| raw_response("302 Found", &[("Location", "/loop")]));
    let plain = reqwest_client().build().unwrap();
    let error = plain.get(server.url("/loop")).send().await.unwrap_err();
    assert!(error.is_redirect(), "{error:?}");
    let one_call = server.hits();
    assert!(one_call > 1, "{one_call}");

    let (client, resilience) = resilient(base(3).breaker(breaker(1)));
    let error = reqwest_error(client.get(server.url("/loop")).send().await);
    assert!(error.is_redirect(), "{error:?}");
    assert_eq!(server.hits() - one_call, one_call, "not retried");
    let host = authority("127.0.0.1", server.addr.port());
    assert_eq!(breaker_state(&resilience, &host), Some(State::Open));
}

/// The table: "other 5xx and above (501, 505, ...) | Failure | no | failure". A status in
/// 600..=999 is "above": answered with one hit and held against the host.
#[tokio::test]
async fn statuses_above_599_and_other_5xx_are_failures_answered_at_once() {
    for status_code in [501, 505, 599, 600, 999] {
        let server = FaultServer::start(always(status(status_code)));
        let (client, resilience) = resilient(base(3).breaker(breaker(1)));
        assert_eq!(code(client.get(server.url("/")).send().await), status_code);
        assert_eq!(server.hits(), 1, "{status_code} is not retried");
        let host = authority("127.0.0.1", server.addr().port());
        let state = breaker_state(&resilience, &host);
        assert_eq!(
            state,
            Some(State::Open),
            "{status_code} counts as a failure"
        );
    }
}

/// The table: 408, 500, 502, 504 and a hint-less 429 or 503 are retried; other 4xx are
/// successes, neither retried nor held against the host.
#[tokio::test]
async fn retryable_statuses_are_retried_and_other_client_errors_are_answers() {
    for status_code in [408, 429, 500, 502, 503, 504] {
        let server = FaultServer::start(first_n(2, status(status_code)));
        let (client, _) = resilient(base(3));
        assert_eq!(code(client.get(server.url("/")).send().await), 200);
        assert_eq!(server.hits(), 3, "{status_code} is retried");
    }
    for status_code in [400, 401, 404, 409, 418, 451, 499] {
        let server = FaultServer::start(always(status(status_code)));
        let (client, resilience) = resilient(base(3).breaker(breaker(1)));
        assert_eq!(code(client.get(server.url("/")).send().await), status_code);
        assert_eq!(server.hits(), 1, "{status_code} is not retried");
        let host = authority("127.0.0.1", server.addr().port());
        let state = breaker_state(&resilience, &host);
        assert_ne!(state, Some(State::Open), "{status_code} is a success");
    }
}

/// HttpClassifier settings through the builder: `retry_status` "Also retries these statuses",
/// `fail_status` "Counts these statuses as failures not to retry", `client_errors(Ignored)`
/// "counts them as nothing".
#[tokio::test]
async fn a_configured_classifier_retries_522_fails_409_and_ignores_404() {
    let cdn = StatusCode::from_u16(522).unwrap();
    let table = HttpClassifier::standard()
        .retry_status([cdn])
        .fail_status([StatusCode::CONFLICT]);
    let retried = FaultServer::start(first_n(2, status(522)));
    let (client, _) = resilient(base(3).classifier(table));
    assert_eq!(code(client.get(retried.url("/")).send().await), 200);
    assert_eq!(retried.hits(), 3, "522 is retried");

    let conflict = FaultServer::start(always(status(409)));
    let (client, resilience) = resilient(base(3).classifier(table).breaker(breaker(1)));
    assert_eq!(code(client.get(conflict.url("/")).send().await), 409);
    assert_eq!(conflict.hits(), 1, "409 is not retried");
    let host = authority("127.0.0.1", conflict.addr().port());
    assert_eq!(breaker_state(&resilience, &host), Some(State::Open));

    let ignoring = HttpClassifier::standard().client_errors(Verdict::Ignored);
    let missing = FaultServer::start(always(status(404)));
    let (client, resilience) = resilient(base(3).classifier(ignoring).breaker(breaker(1)));
    for _ in 0..3 {
        assert_eq!(code(client.get(missing.url("/")).send().await), 404);
    }
    assert_eq!(
        missing.hits(),
        3,
        "an ignored 404 is not retried, nor refused"
    );
    let host = authority("127.0.0.1", missing.addr().port());
    assert_ne!(breaker_state(&resilience, &host), Some(State::Open));
}

/// The reqwest reading: "The first refusal, timeout, I/O error or broken HTTP exchange in
/// error's source chain" — reqwest's own timeout is a `Timeout`, retryable.
#[tokio::test]
async fn reqwests_own_timeout_is_a_timeout_and_is_retried() {
    let server = FaultServer::start(first_n(1, Fault::Slow(secs(3))));
    let inner = reqwest_client().timeout(ms(300));
    let (client, _) = client_on(inner, base(3));
    assert_eq!(code(client.get(server.url("/")).send().await), 200);
    assert_eq!(server.hits(), 2);
}

// ---------------------------------------------------------------------------------------------
// Authorities
// ---------------------------------------------------------------------------------------------

/// Authority: "the host lowercased"; "An authority is scheme, host and port". `LOCALHOST` and
/// `localhost` share a breaker; `127.0.0.1` is another host, even on the same socket.
#[tokio::test]
async fn host_case_is_one_authority_but_a_name_and_its_address_are_two() {
    let server = FaultServer::start(|_: u64, _: &Method, path: &str| {
        if path == "/bad" {
            status(500)
        } else {
            Fault::Ok
        }
    });
    let port = server.addr().port();
    let (client, resilience) = resilient(base(3).breaker(breaker(1)));
    let by_name = format!("http://localhost:{port}/bad");
    assert_eq!(code(client.get(by_name).send().await), 500);
    assert_eq!(server.hits(), 1);
    let named = authority("localhost", port);
    assert_eq!(breaker_state(&resilience, &named), Some(State::Open));

    let shouted = format!("http://LOCALHOST:{port}/ok");
    let error = client.get(shouted).send().await.unwrap_err();
    assert!(
        matches!(rejection(&error), Some(Rejected::CircuitOpen { .. })),
        "{error:?}"
    );
    assert_eq!(server.hits(), 1, "refused before sending");
    assert_eq!(code(client.get(server.url("/ok")).send().await), 200);
    let numeric = authority("127.0.0.1", port);
    assert_ne!(breaker_state(&resilience, &numeric), Some(State::Open));
}

/// Authority: "scheme, host and port, the host lowercased and the port filled in from the
/// scheme"; `as_str` is "scheme://host:port, as it labels telemetry" — so userinfo (which may
/// be a password) is no part of it, and does not split one host into many.
#[test]
fn authorities_ignore_userinfo_and_fill_default_ports_for_every_host_form() {
    let parse = |uri: &str| Authority::from_uri(&uri.parse().unwrap()).unwrap();
    let plain = Authority::new("http", "api.example", None).unwrap();
    let alice = parse("http://alice:s3cret@API.Example/x");
    assert_eq!(alice, plain);
    assert!(!alice.as_str().contains("s3cret"), "{}", alice.as_str());
    assert_eq!(parse("http://bob@api.example:80/"), plain);
    assert_eq!(alice.as_str(), "http://api.example:80");
    assert_eq!(
        parse("HTTPS://api.example/"),
        parse("https://api.example:443/")
    );
    assert_ne!(
        parse("http://api.example:443/"),
        parse("https://api.example/")
    );
    assert_ne!(parse("https://api.example:80/"), plain);
    assert_eq!(parse("http://[::1]/"), parse("http://[::1]:80/"));
    assert_ne!(parse("http://[::1]:8080/"), parse("http://[::1]/"));
    assert!(Authority::new("gopher", "files.example", None).is_none());
    assert_eq!(
        Authority::new("ftp", "files.example", None).map(|a| a.as_str().to_owned()),
        Some("ftp://files.example:21".to_owned())
    );
    assert!(Authority::new("http", "", Some(80)).is_none());
}

/// ClientPolicies: "at most max_authorities ... are tracked at once, idle ones forgotten, never
/// one whose ... permits are out"; builder: "A new one meeting a full table is refused with
/// Rejected::KeysFull". The refusal is final (not retried) and sends nothing; once the calls
/// in flight end, the new host gets in.
#[tokio::test]
async fn a_third_host_is_refused_keys_full_while_two_have_calls_in_flight_then_admitted() {
    let a = FaultServer::start(always(Fault::Slow(ms(800))));
    let b = FaultServer::start(always(Fault::Slow(ms(800))));
    let c = FaultServer::start(always(Fault::Ok));
    let policies = base(3).max_authorities(2).bulkhead(Some(no_queue(4)));
    let (client, _) = resilient(policies);
    let first = tokio::spawn(client.get(a.url("/")).send());
    let second = tokio::spawn(client.get(b.url("/")).send());
    wait_until("both slow calls to arrive", || {
        a.hits() == 1 && b.hits() == 1
    })
    .await;

    let start = Instant::now();
    let error = client.get(c.url("/")).send().await.unwrap_err();
    assert!(
        matches!(rejection(&error), Some(Rejected::KeysFull { .. })),
        "{error:?}"
    );
    assert!(
        start.elapsed() < ms(500),
        "refused at once: {:?}",
        start.elapsed()
    );
    assert_eq!(c.hits(), 0);
    assert!(!first.is_finished() && !second.is_finished());

    assert_eq!(code(first.await.unwrap()), 200);
    assert_eq!(code(second.await.unwrap()), 200);
    assert_eq!(code(client.get(c.url("/")).send().await), 200);
    assert_eq!(c.hits(), 1);
}

/// `run` in process: the bulkhead is per authority, and an authority is scheme, host and
/// port. While `http://api.example` holds the only slot, its spellings are refused and
/// another scheme or port is not.
#[tokio::test]
async fn a_full_bulkhead_is_per_scheme_host_and_port() {
    let policies = base(1).bulkhead(Some(no_queue(1))).build().unwrap();
    let gate = tokio::sync::Notify::new();
    let respond = || http::Response::builder().status(200).body(()).unwrap();
    let call = |uri: &str| {
        let request = http::Request::get(uri).body(()).unwrap();
        policies.run(request, Overrides::new(), move |_| async move {
            Ok::<_, std::io::Error>(respond())
        })
    };
    let holder = policies.run(
        http::Request::get("http://api.example/held")
            .body(())
            .unwrap(),
        Overrides::new(),
        |_| async {
            gate.notified().await;
            Ok::<_, std::io::Error>(respond())
        },
    );
    let others = async {
        tokio::time::sleep(ms(50)).await;
        let mut verdicts = Vec::new();
        for uri in [
            "http://API.EXAMPLE/x",
            "http://api.example:80/x",
            "https://api.example:80/x",
            "http://api.example:8080/x",
            "https://api.example/x",
        ] {
            let refused = matches!(
                call(uri).await,
                Err(tidewall::Error::Rejected(Rejected::BulkheadFull))
            );
            verdicts.push((uri, refused));
        }
        gate.notify_one();
        verdicts
    };
    let (held, verdicts) = tokio::join!(holder, others);
    assert_eq!(held.unwrap().status(), 200);
    let expected = [
        ("http://API.EXAMPLE/x", true),
        ("http://api.example:80/x", true),
        ("https://api.example:80/x", false),
        ("http://api.example:8080/x", false),
        ("https://api.example/x", false),
    ];
    assert_eq!(verdicts, expected);
    assert!(
        call("http://api.example/again").await.is_ok(),
        "the slot came back"
    );
}

// ---------------------------------------------------------------------------------------------
// Cancellation
// ---------------------------------------------------------------------------------------------

/// `run`: "Cancel safety: dropping the future drops the attempt in flight and every permit it
/// holds". Calls dropped at seeded random points (before sending, mid-attempt, in a
/// Retry-After sleep) leave both bulkhead slots free, and the bulkhead no wider than 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_dropped_at_seeded_points_leave_every_bulkhead_slot_free() {
    let server = FaultServer::start(|_: u64, _: &Method, path: &str| match path {
        "/retry" => Fault::Status {
            code: 503,
            retry_after: Some(1),
        },
        "/slow" => Fault::Slow(ms(150)),
        _ => Fault::Slow(ms(600)),
    });
    let (client, _) = resilient(base(3).bulkhead(Some(no_queue(2))));
    let mut rng = tidewall_core::rng::SplitMix64::new(0x71DE_3A11);
    for _wave in 0..6 {
        let mut calls = Vec::new();
        for _ in 0..4 {
            let path = if rng.below_or_equal(1) == 0 {
                "/retry"
            } else {
                "/slow"
            };
            let drop_at = ms(rng.below_or_equal(299));
            let call = client.get(server.url(path)).send();
            calls.push(tokio::spawn(tokio::time::timeout(drop_at, call)));
        }
        for call in calls {
            // Either dropped (Err(Elapsed)), or ended: Ok, BulkheadFull, or a 503 response.
            let _ = call.await.unwrap();
        }
    }

    let before = server.hits_on("/hold");
    let first = tokio::spawn(client.get(server.url("/hold")).send());
    let second = tokio::spawn(client.get(server.url("/hold")).send());
    wait_until("two held calls to be sent", || {
        server.hits_on("/hold") == before + 2
    })
    .await;
    let third = client.get(server.url("/hold")).send().await.unwrap_err();
    assert_eq!(rejection(&third), Some(Rejected::BulkheadFull), "{third:?}");
    assert_eq!(code(first.await.unwrap()), 200);
    assert_eq!(code(second.await.unwrap()), 200);
}

// ---------------------------------------------------------------------------------------------
// Parsing and the classifier, no network
// ---------------------------------------------------------------------------------------------

fn oct_21_2015_0728() -> SystemTime {
    UNIX_EPOCH + secs(1_445_412_480)
}

/// Module docs: "plus the obsolete RFC 850 and asctime forms, which recipients must accept";
/// `parse_retry_after`: "an HTTP-date (any of RFC 9110's three formats) is the time from now
/// until it". Whitespace around either is ignored, and asctime pads a one-digit day.
#[test]
fn obsolete_date_forms_are_read_with_their_padding_and_whitespace() {
    let now = oct_21_2015_0728();
    let two_minutes = Ok(secs(120));
    let rfc850 = parse_retry_after(b"Wednesday, 21-Oct-15 07:30:00 GMT", now);
    assert_eq!(rfc850, two_minutes);
    assert_eq!(
        parse_retry_after(b"Wed Oct 21 07:30:00 2015", now),
        two_minutes
    );
    let padded = parse_retry_after(b"  Wed Oct 21 07:30:00 2015\t", now);
    assert_eq!(padded, two_minutes);
    // 1 Nov 2015 (a Sunday), asctime pads the day with a space.
    let eleven_days = secs(11 * 86_400 - 7 * 3600 - 28 * 60);
    let asctime = parse_retry_after(b"Sun Nov  1 00:00:00 2015", now);
    assert_eq!(asctime, Ok(eleven_days));
}

/// RFC 9110 §5.6.7, whose rfc850-date the docs accept: a two-digit year is the nearest one,
/// read as the past century only when it "appears to be more than 50 years in the future".
/// Seen from 1 Jan 2045, "01-Jan-80" is 2080 (a Monday), 35 years ahead, not 1980.
#[test]
fn an_rfc850_two_digit_year_is_read_relative_to_now_as_rfc_9110_says() {
    let jan_1_2045 = UNIX_EPOCH + secs(2_366_841_600);
    let wait = parse_retry_after(b"Monday, 01-Jan-80 00:00:00 GMT", jan_1_2045);
    let thirty_five_years = secs(35 * 365 * 86_400);
    assert!(
        wait.is_ok_and(|w| w > thirty_five_years),
        "2080-01-01 seen from 2045: {wait:?}"
    );
    // From 2015, "01-Jan-60" is 2060 (a Thursday), 44 years ahead.
    let near = parse_retry_after(b"Thursday, 01-Jan-60 00:00:00 GMT", oct_21_2015_0728());
    assert!(near.is_ok_and(|w| w > secs(44 * 365 * 86_400)), "{near:?}");
}

/// Module docs: "Both become a Duration from now; a date in the past is zero". A well-formed
/// date before 1970 is in the past: zero, not malformed.
#[test]
fn a_well_formed_date_before_1970_is_in_the_past_so_zero() {
    let now = oct_21_2015_0728();
    for value in [
        "Wed, 31 Dec 1969 23:59:59 GMT",
        "Mon, 01 Jan 1968 00:00:00 GMT",
        "Mon Jan  1 00:00:00 1968",
    ] {
        let got = parse_retry_after(value.as_bytes(), now);
        assert_eq!(got, Ok(Duration::ZERO), "{value}");
    }
    let epoch = parse_retry_after(b"Thu, 01 Jan 1970 00:00:00 GMT", now);
    assert_eq!(epoch, Ok(Duration::ZERO), "the epoch itself is read");
}

/// "Malformed input is a typed RetryAfterError, never a panic": delay-seconds are digits only,
/// and a date that does not exist is not a date.
#[test]
fn impossible_dates_and_non_digit_delays_are_malformed_not_guessed() {
    let now = oct_21_2015_0728();
    for value in ["", "   ", "\t"] {
        let got = parse_retry_after(value.as_bytes(), now);
        assert_eq!(got, Err(RetryAfterError::Empty), "{value:?}");
    }
    let malformed = [
        "+120",
        "-1",
        "1.5",
        "120s",
        "12 0",
        "0x10",
        "120, 130",
        "Wed, 30 Feb 2016 07:30:00 GMT",
        "Wed, 21 Oct 2015 25:30:00 GMT",
        "Wed, 21 Oct 2015 07:61:00 GMT",
        "Wed, 21 Foo 2015 07:30:00 GMT",
        "Wed, 21 Oct 2015 07:30:00",
        "Wed, 21 Oct 2015 07:30:00 GMT trailing",
        "\u{ff11}\u{ff12}\u{ff10}",
    ];
    for value in malformed {
        let got = parse_retry_after(value.as_bytes(), now);
        assert_eq!(got, Err(RetryAfterError::Malformed), "{value:?}");
    }
    assert_eq!(parse_retry_after(b"000120", now), Ok(secs(120)));
    let not_utf8 = parse_retry_after(&[0xff, 0xfe, b'1'], now);
    assert_eq!(not_utf8, Err(RetryAfterError::Malformed));
}

fn response(code: u16, headers: &[(&str, &str)]) -> Response {
    let mut builder = http::Response::builder().status(code);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    Response::from(builder.body(String::new()).unwrap())
}

#[derive(Debug)]
struct Opaque;

impl std::fmt::Display for Opaque {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an opaque failure")
    }
}

impl std::error::Error for Opaque {}

/// ReqwestClassifier is "The standard table for reqwest's results", for reqwest-middleware's
/// Error too: an HTTP-date hint read against the wall clock, none when repeated or on a 200,
/// and refusals read by the table (`DeadlineExceeded` ignored, `CircuitOpen` with its wait).
#[test]
fn the_reqwest_classifier_reads_dates_repeats_and_refusals_by_the_table() {
    let table = ReqwestClassifier::standard();
    let verdict = |r: &Response| table.classify(Ok::<_, &MwError>(r));
    let hint = |r: &Response| table.retry_after(Ok::<_, &MwError>(r));

    let date = http_date(SystemTime::now() + secs(120), DateForm::Imf);
    let dated = response(429, &[("retry-after", &date)]);
    assert_eq!(verdict(&dated), Verdict::RetryableFailure);
    let wait = hint(&dated).unwrap();
    assert!(wait > secs(110) && wait <= secs(121), "{wait:?}");

    let repeated = response(503, &[("retry-after", "5"), ("retry-after", "5")]);
    assert_eq!(verdict(&repeated), Verdict::RetryableFailure);
    assert_eq!(hint(&repeated), None);
    let ok = response(200, &[("retry-after", "5")]);
    assert_eq!((verdict(&ok), hint(&ok)), (Verdict::Success, None));
    let past = response(503, &[("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT")]);
    assert_eq!(hint(&past).unwrap_or_default(), Duration::ZERO);

    let error_verdict = |e: &MwError| table.classify(Err::<&Response, _>(e));
    let error_hint = |e: &MwError| table.retry_after(Err::<&Response, _>(e));
    let deadline = MwError::middleware(Rejected::DeadlineExceeded);
    assert_eq!(error_verdict(&deadline), Verdict::Ignored);
    let open = MwError::middleware(Rejected::CircuitOpen {
        retry_after: secs(3),
    });
    assert_eq!(error_verdict(&open), Verdict::RetryableFailure);
    assert_eq!(error_hint(&open), Some(secs(3)));
    let reset = MwError::middleware(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
    assert_eq!(error_verdict(&reset), Verdict::RetryableFailure);
    let opaque = MwError::middleware(Opaque);
    assert_eq!(error_verdict(&opaque), Verdict::Failure);
}
