//! Black-box tests of the middleware's documented contracts (from the public docs only),
//! against real loopback servers. Outcomes are server hit counts; time is bounded loosely.

mod support;

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Extensions, Method};
use reqwest::{Request, Response};
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware, Middleware, Next};
use support::fault_server::{Fault, FaultServer, always, first_n};
use tidewall::breaker::{CircuitBreaker, CircuitBreakerBuilder, State};
use tidewall::bulkhead::Bulkhead;
use tidewall::classify::{Classify, Verdict};
use tidewall::http::{Authority, ClientPoliciesBuilder};
use tidewall::time::Elapsed;
use tidewall::{Backoff, Jitter, Rejected, RetryExt};
use tidewall_reqwest::{
    ClientPolicies, Overrides, ReqwestClassifier, Resilience, rejection, timed_out,
};

type MwError = reqwest_middleware::Error;
type MwResult = reqwest_middleware::Result<Response>;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn status(code: u16) -> Fault {
    let retry_after = None;
    Fault::Status { code, retry_after }
}

fn status_after(code: u16, secs: u64) -> Fault {
    let retry_after = Some(secs);
    Fault::Status { code, retry_after }
}

/// A breaker opening on `failures` in a row, for `pause`.
fn breaker(failures: u32, pause: Duration) -> CircuitBreakerBuilder {
    CircuitBreaker::builder()
        .no_failure_rate()
        .consecutive_failures(failures)
        .break_duration(pause)
}

/// Three attempts 10 ms apart, no budget; a breaker per host opening on 3 failures in a row.
fn policies() -> ClientPoliciesBuilder {
    let backoff = Backoff::constant(ms(10))
        .jitter(Jitter::None)
        .max_attempts(3);
    ClientPolicies::builder()
        .retry(backoff.build().unwrap())
        .attempt_timeout(Some(Duration::from_secs(3)))
        .deadline(Some(Duration::from_secs(10)))
        .retry_budget(None)
        .breaker(Some(breaker(3, Duration::from_secs(10))))
}

fn client(policies: ClientPoliciesBuilder) -> (ClientWithMiddleware, Resilience) {
    let resilience = Resilience::new(policies.build().unwrap());
    (with(resilience.clone()), resilience)
}

/// A client with this one middleware.
fn with(middleware: impl Middleware) -> ClientWithMiddleware {
    ClientBuilder::new(reqwest::Client::new())
        .with(middleware)
        .build()
}

/// `above`, then the middleware, then `below`.
fn stack(
    resilience: &Resilience,
    above: impl Middleware,
    below: impl Middleware,
) -> ClientWithMiddleware {
    let builder = ClientBuilder::new(reqwest::Client::new()).with(above);
    builder.with(resilience.clone()).with(below).build()
}

fn host(server: &FaultServer) -> Authority {
    let addr = server.addr();
    Authority::new("http", &addr.ip().to_string(), Some(addr.port())).unwrap()
}

/// The breaker state of `server`'s host.
fn state(resilience: &Resilience, server: &FaultServer) -> Option<State> {
    resilience
        .policies()
        .breakers()
        .unwrap()
        .state(&host(server))
}

fn code(result: MwResult) -> u16 {
    result.unwrap().status().as_u16()
}

fn circuit_open(error: &MwError) -> bool {
    matches!(rejection(error), Some(Rejected::CircuitOpen { .. }))
}

/// A GET of `url` with these overrides.
async fn get(client: &ClientWithMiddleware, url: String, overrides: Overrides) -> MwResult {
    client.get(url).with_extension(overrides).send().await
}

/// What the `Error::Middleware` holds, as `downcast_ref` finds it; panics on another variant.
fn held<T>(error: &MwError) -> Option<&T>
where
    T: std::fmt::Display + std::fmt::Debug + Send + Sync + 'static,
{
    match error {
        MwError::Middleware(inner) => inner.downcast_ref::<T>(),
        other => panic!("expected Error::Middleware, got {other:?}"),
    }
}

/// Counts the calls it sees and passes them on.
#[derive(Clone, Default)]
struct Count(Arc<AtomicU64>);

impl Count {
    fn get(&self) -> u64 {
        self.0.load(SeqCst)
    }
}

#[async_trait::async_trait]
impl Middleware for Count {
    async fn handle(&self, req: Request, ext: &mut Extensions, next: Next<'_>) -> MwResult {
        self.0.fetch_add(1, SeqCst);
        next.run(req, ext).await
    }
}

#[derive(Clone, Debug, PartialEq)]
struct Tag(&'static str);
#[derive(Clone, Debug, PartialEq)]
struct Mark(usize);

/// Below the middleware: records what each attempt finds in the extensions, then writes its
/// own mark into them.
#[derive(Clone, Default)]
struct Probe(Arc<Mutex<Vec<Seen>>>);

/// What one attempt found in the extensions.
type Seen = (Option<Tag>, Option<Mark>);

#[async_trait::async_trait]
impl Middleware for Probe {
    async fn handle(&self, req: Request, ext: &mut Extensions, next: Next<'_>) -> MwResult {
        let n = {
            let mut seen = self.0.lock().unwrap();
            seen.push((ext.get::<Tag>().cloned(), ext.get::<Mark>().cloned()));
            seen.len()
        };
        ext.insert(Mark(n));
        next.run(req, ext).await
    }
}

/// Below the middleware: fails its first `.0` calls with a connection reset, never sending.
struct ResetBelow(u64, Count);

#[async_trait::async_trait]
impl Middleware for ResetBelow {
    async fn handle(&self, req: Request, ext: &mut Extensions, next: Next<'_>) -> MwResult {
        if self.1.0.fetch_add(1, SeqCst) < self.0 {
            let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
            return Err(MwError::middleware(reset));
        }
        next.run(req, ext).await
    }
}

/// Below the middleware: holds every attempt until the test opens it, so the bulkhead slots
/// of the attempts it holds stay taken for exactly as long as the test wants, and counts per
/// port how many attempts are inside at once (held, or passed on and not yet answered).
#[derive(Clone)]
struct Gate(Arc<GateState>);

struct GateState {
    open: tokio::sync::watch::Sender<bool>,
    /// Attempts that reached the gate so far.
    arrived: tokio::sync::watch::Sender<u64>,
    /// Per port: attempts inside now, and the most at once.
    load: Mutex<HashMap<u16, (u64, u64)>>,
}

impl Default for Gate {
    fn default() -> Self {
        Self(Arc::new(GateState {
            open: tokio::sync::watch::Sender::new(false),
            arrived: tokio::sync::watch::Sender::new(0),
            load: Mutex::default(),
        }))
    }
}

impl Gate {
    /// Lets every attempt held, and every later one, through.
    fn open(&self) {
        self.0.open.send_replace(true);
    }

    /// Waits until `n` attempts reached the gate.
    async fn arrived(&self, n: u64) {
        let mut arrived = self.0.arrived.subscribe();
        arrived
            .wait_for(|&seen| seen >= n)
            .await
            .expect("the gate lives");
    }

    /// The most attempts to `server` inside the gate at once.
    fn peak(&self, server: &FaultServer) -> u64 {
        let load = self.0.load.lock().unwrap();
        load.get(&server.addr().port()).map_or(0, |&(_, peak)| peak)
    }
}

/// One attempt inside the gate, counted out when it ends (or is dropped).
struct Inside<'a>(&'a GateState, u16);

impl Drop for Inside<'_> {
    fn drop(&mut self) {
        let mut load = self
            .0
            .load
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        load.entry(self.1).or_default().0 -= 1;
    }
}

#[async_trait::async_trait]
impl Middleware for Gate {
    async fn handle(&self, req: Request, ext: &mut Extensions, next: Next<'_>) -> MwResult {
        let port = req.url().port().expect("a loopback URL names its port");
        let _inside = {
            let mut load = self.0.load.lock().unwrap();
            let (now, peak) = load.entry(port).or_default();
            *now += 1;
            *peak = (*peak).max(*now);
            Inside(&self.0, port)
        };
        self.0.arrived.send_modify(|n| *n += 1);
        let mut open = self.0.open.subscribe();
        open.wait_for(|&open| open).await.expect("the gate lives");
        next.run(req, ext).await
    }
}

/// Above the middleware: puts these overrides into the extensions.
struct Inject(Overrides);

#[async_trait::async_trait]
impl Middleware for Inject {
    async fn handle(&self, req: Request, ext: &mut Extensions, next: Next<'_>) -> MwResult {
        ext.insert(self.0);
        next.run(req, ext).await
    }
}

#[tokio::test]
async fn a_middleware_below_runs_per_attempt_and_one_above_once_per_call() {
    let server = FaultServer::start(first_n(2, status(503)));
    let resilience = Resilience::new(policies().build().unwrap());
    let (above, below) = (Count::default(), Count::default());
    let client = stack(&resilience, above.clone(), below.clone());
    assert_eq!(code(client.get(server.url("/")).send().await), 200);
    assert_eq!((above.get(), below.get(), server.hits()), (1, 3, 3));

    // A call refused by an open breaker never reaches the middleware below.
    let down = FaultServer::start(always(status(503)));
    let _ = client.get(down.url("/")).send().await;
    let error = client.get(down.url("/")).send().await.unwrap_err();
    assert!(circuit_open(&error), "{error:?}");
    assert_eq!((above.get(), below.get(), down.hits()), (3, 6, 3));
}

#[tokio::test]
async fn what_a_middleware_below_writes_stays_with_its_attempt() {
    let server = FaultServer::start(first_n(2, Fault::Reset));
    let resilience = Resilience::new(policies().build().unwrap());
    let probe = Probe::default();
    let client = stack(&resilience, Count::default(), probe.clone());
    let request = client.get(server.url("/")).with_extension(Tag("caller"));
    assert_eq!(code(request.send().await), 200);
    assert_eq!(server.hits(), 3);
    let seen = probe.0.lock().unwrap().clone();
    let expected = vec![(Some(Tag("caller")), None); 3];
    assert_eq!(seen, expected, "the caller's tag, no earlier mark");
}

#[tokio::test]
async fn an_io_failure_from_a_middleware_below_is_retried_and_the_last_one_kept() {
    let server = FaultServer::start(always(Fault::Ok));
    let resilience = Resilience::new(policies().breaker(None).build().unwrap());
    let below = Count::default();
    let client = stack(&resilience, Count::default(), ResetBelow(2, below.clone()));
    assert_eq!(code(client.get(server.url("/")).send().await), 200);
    assert_eq!((below.get(), server.hits()), (3, 1));

    let below = Count::default();
    let client = stack(&resilience, Count::default(), ResetBelow(99, below.clone()));
    let error = client.get(server.url("/")).send().await.unwrap_err();
    assert_eq!(below.get(), 3, "retried like any reset");
    let kind = held::<std::io::Error>(&error).map(std::io::Error::kind);
    assert_eq!(kind, Some(std::io::ErrorKind::ConnectionReset));
}

#[tokio::test]
async fn overrides_put_into_the_extensions_by_a_middleware_above_apply() {
    let server = FaultServer::start(always(status(503)));
    let resilience = Resilience::new(policies().breaker(None).build().unwrap());
    let no_retry = Inject(Overrides::new().no_retry());
    let client = stack(&resilience, no_retry, Count::default());
    assert_eq!(code(client.get(server.url("/a")).send().await), 503);
    assert_eq!(server.hits_on("/a"), 1);

    let idempotent = Inject(Overrides::new().idempotent());
    let client = stack(&resilience, idempotent, Count::default());
    let post = client.post(server.url("/b")).body("x");
    assert_eq!(code(post.send().await), 503);
    assert_eq!(server.hits_on("/b"), 3);
}

#[tokio::test]
async fn errors_keep_reqwests_error_or_carry_the_refusal_or_the_timeout() {
    let (client, resilience) = client(policies().attempt_timeout(Some(ms(150))));

    // A port nobody listens on: the last attempt's reqwest::Error comes back as it is.
    let url = {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/", closed.local_addr().unwrap())
    };
    let error = client.get(&url).send().await.unwrap_err();
    let connect = matches!(&error, MwError::Reqwest(e) if e.is_connect());
    assert!(connect, "{error:?}");
    assert_eq!(rejection(&error), None);
    assert!(!timed_out(&error));

    // Every attempt times out: Error::Middleware holding Elapsed, not a rejection.
    let slow = FaultServer::start(always(Fault::Slow(Duration::from_secs(3))));
    let error = client.get(slow.url("/")).send().await.unwrap_err();
    assert!(error.is_middleware(), "{error:?}");
    assert!(held::<Elapsed>(&error).is_some(), "{error:?}");
    assert_eq!(rejection(&error), None);
    assert!(timed_out(&error));
    assert_eq!(slow.hits(), 3, "a timeout is retried");

    // The breaker counted the three timeouts: the next call is refused without a hit.
    assert_eq!(state(&resilience, &slow), Some(State::Open));
    let error = client.get(slow.url("/")).send().await.unwrap_err();
    let refusal = held::<Rejected>(&error).copied();
    assert!(circuit_open(&error), "{error:?}");
    assert_eq!(rejection(&error), refusal);
    assert_eq!(slow.hits(), 3);
}

#[tokio::test]
async fn an_attempt_the_deadline_cuts_is_not_held_against_the_host() {
    let slow = FaultServer::start(always(Fault::Slow(Duration::from_secs(3))));
    let one = breaker(1, Duration::from_secs(10));
    let (client, resilience) = client(policies().breaker(Some(one)));
    let short = Overrides::new().deadline(ms(200));
    let error = get(&client, slow.url("/"), short).await.unwrap_err();
    assert_eq!(rejection(&error), Some(Rejected::DeadlineExceeded));
    assert_ne!(state(&resilience, &slow), Some(State::Open));

    // A per-request attempt timeout, on the other hand, is a timeout.
    let timeout = Overrides::new().attempt_timeout(ms(100)).no_retry();
    let error = get(&client, slow.url("/"), timeout).await.unwrap_err();
    assert!(held::<Elapsed>(&error).is_some(), "{error:?}");
    assert_eq!(slow.hits(), 2);
}

#[tokio::test]
async fn a_per_request_deadline_and_attempt_timeout_replace_the_clients() {
    let server = FaultServer::start(always(Fault::Slow(ms(700))));
    let (deadline, timeout) = (Some(ms(300)), Some(ms(200)));
    let (client, _) = client(policies().deadline(deadline).attempt_timeout(timeout));
    let (deadline, timeout) = (Duration::from_secs(5), Duration::from_secs(3));
    let longer = Overrides::new().deadline(deadline).attempt_timeout(timeout);
    let response = get(&client, server.url("/"), longer).await.unwrap();
    assert_eq!((response.status().as_u16(), server.hits()), (200, 1));
    assert_eq!(response.text().await.unwrap(), "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hosts_that_reset_or_503_never_open_another_hosts_breaker() {
    let reset = FaultServer::start(always(Fault::Reset));
    let down = FaultServer::start(always(status(503)));
    let up = FaultServer::start(always(Fault::Ok));
    let (client, resilience) = client(policies());
    let mut tasks = Vec::new();
    for i in 0..60 {
        let (client, url) = (client.clone(), [&reset, &down, &up][i % 3].url("/"));
        let task = async move { client.get(url).send().await.map(|r| r.status().as_u16()) };
        tasks.push((i % 3, tokio::spawn(task)));
    }
    for (host, task) in tasks {
        match (host, task.await.unwrap()) {
            (2, result) => assert_eq!(result.unwrap(), 200),
            (1, Ok(code)) => assert_eq!(code, 503),
            (_, Ok(code)) => panic!("a reset host answered {code}"),
            (_, Err(e)) => assert!(circuit_open(&e) || rejection(&e).is_none(), "{e:?}"),
        }
    }
    assert_eq!(up.hits(), 20);
    assert!((3..=60).contains(&reset.hits()) && (3..=60).contains(&down.hits()));
    assert_eq!(state(&resilience, &reset), Some(State::Open));
    assert_eq!(state(&resilience, &down), Some(State::Open));
    assert_eq!(state(&resilience, &up), Some(State::Closed));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hosts_bulkhead_caps_its_load_and_refuses_the_rest_at_once() {
    let hosts = [
        FaultServer::start(always(Fault::Ok)),
        FaultServer::start(always(Fault::Ok)),
    ];
    // No wait limit: a call that queued instead of being refused would wait for a slot that
    // only the test's gate frees, so it could not come back before the gate opens.
    let bulkhead = Bulkhead::builder(2).max_wait(None).reject_when_full();
    // Far past the test's own 60 s bounds: the held calls must not end by themselves.
    let long = Some(Duration::from_secs(600));
    let policies = policies().bulkhead(Some(bulkhead));
    let resilience = Resilience::new(
        policies
            .attempt_timeout(long)
            .deadline(long)
            .build()
            .unwrap(),
    );
    // The gate, below the middleware, holds the admitted calls in their slots until opened.
    let gate = Gate::default();
    let client = stack(&resilience, Count::default(), gate.clone());
    let (done, mut results) = tokio::sync::mpsc::unbounded_channel();
    for i in 0..12 {
        let (client, url, done) = (client.clone(), hosts[i % 2].url("/"), done.clone());
        tokio::spawn(async move {
            let result = client.get(url).send().await;
            done.send(result.map(|r| r.status().as_u16())).unwrap();
        });
    }
    drop(done);
    // "Refuses the rest at once": with the gate shut no slot frees, so eight refusals come
    // back before it opens, and none of them waited for a slot. The timeouts here and below
    // bound a hang only.
    let hang = Duration::from_secs(60);
    let (mut answered, mut refused) = (0, 0);
    let refusals = async {
        while refused < 8 {
            let result = results.recv().await.expect("a caller's result");
            let e = result.expect_err("an answer with the gate shut");
            assert_eq!(rejection(&e), Some(Rejected::BulkheadFull), "{e:?}");
            refused += 1;
        }
    };
    let refusals = tokio::time::timeout(hang, refusals).await;
    refusals.expect("fewer than 8 refused before any slot freed: the rest waited");
    // Two calls per host hold their slots at the gate, at once, and nothing else ended.
    let held = tokio::time::timeout(hang, gate.arrived(4)).await;
    held.expect("the admitted calls never reached the gate");
    assert!(
        results.try_recv().is_err(),
        "a held call ended with the gate shut"
    );
    gate.open();
    let rest = async {
        while let Some(result) = results.recv().await {
            answered += u32::from(result.expect("an admitted call") == 200);
        }
    };
    tokio::time::timeout(hang, rest)
        .await
        .expect("the held calls never ended");
    assert_eq!((answered, refused), (4, 8), "two per host");
    for host in &hosts {
        let load = (host.hits(), gate.peak(host));
        assert_eq!(load, (2, 2), "refusals are not retried");
        assert!(host.peak_in_flight() <= 2, "over the cap at the host");
        // Four refusals each did not count as failures against the host.
        assert_eq!(state(&resilience, host), Some(State::Closed));
    }
}

#[tokio::test]
async fn retry_after_is_honoured_and_max_retry_after_only_cuts_the_sleep() {
    let server = FaultServer::start(first_n(1, status_after(429, 1)));
    let (plain, _) = client(policies());
    let start = Instant::now();
    assert_eq!(code(plain.put(server.url("/")).body("v").send().await), 200);
    assert_eq!(server.hits(), 2);
    assert!(start.elapsed() >= Duration::from_secs(1), "waited 1 s");

    // A 3 s Retry-After inside a 10 s deadline, cut to 50 ms.
    let (client, _) = client(policies().max_retry_after(ms(50)));
    let server = FaultServer::start(first_n(1, status_after(503, 3)));
    let start = Instant::now();
    assert_eq!(code(client.get(server.url("/")).send().await), 200);
    assert_eq!(server.hits(), 2);
    assert!(start.elapsed() < Duration::from_secs(2));

    // The cut does not shorten what the deadline is held against: 30 s > 10 s, answered now.
    let server = FaultServer::start(always(status_after(503, 30)));
    assert_eq!(code(client.get(server.url("/")).send().await), 503);
    assert_eq!(server.hits(), 1);
}

#[tokio::test]
async fn a_retry_after_past_a_per_request_deadline_answers_at_once() {
    let server = FaultServer::start(always(status_after(503, 2)));
    let (client, _) = client(policies().deadline(Some(Duration::from_secs(30))));
    let start = Instant::now();
    let short = Overrides::new().deadline(Duration::from_secs(1));
    assert_eq!(code(get(&client, server.url("/"), short).await), 503);
    assert_eq!(server.hits(), 1);
    assert!(start.elapsed() < Duration::from_secs(1));

    // A Retry-After on a 500 is no hint (only 429 and 503 give one): backoff as usual.
    let server = FaultServer::start(always(status_after(500, 30)));
    assert_eq!(code(client.get(server.url("/")).send().await), 500);
    assert_eq!(server.hits(), 3);
}

#[tokio::test]
async fn a_breaker_opened_mid_request_ends_it_with_the_last_response() {
    // The first 503 opens the breaker for 10 s, past the 2 s deadline: the wait before a retry
    // ends past the deadline, so the 503 comes back at once.
    let server = FaultServer::start(always(status(503)));
    let one = breaker(1, Duration::from_secs(10));
    let two = Some(Duration::from_secs(2));
    let (client, _) = client(policies().deadline(two).breaker(Some(one)));
    let start = Instant::now();
    let response = client.get(server.url("/")).send().await;
    assert_eq!(server.hits(), 1);
    assert_eq!(code(response), 503, "the last attempt's response");
    assert!(start.elapsed() < Duration::from_secs(1));
}

#[tokio::test]
async fn a_failures_retry_after_keeps_the_breaker_open_past_its_break() {
    let server = FaultServer::start(first_n(1, status_after(503, 3)));
    let (client, resilience) = client(policies().breaker(Some(breaker(1, ms(100)))));
    let once = Overrides::new().no_retry();
    assert_eq!(code(get(&client, server.url("/"), once).await), 503);
    tokio::time::sleep(ms(500)).await;
    let error = get(&client, server.url("/"), once).await.unwrap_err();
    assert!(circuit_open(&error), "{error:?}");
    assert_eq!(server.hits(), 1);
    assert_eq!(state(&resilience, &server), Some(State::Open));
}

#[tokio::test]
async fn only_replayable_requests_are_sent_again_with_the_same_body() {
    let server = FaultServer::start(always(status(503)));
    let (client, _) = client(policies().breaker(None));
    let body: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let idempotent = Overrides::new().idempotent();
    let cases = [
        ("PUT", "", 3),
        ("DELETE", "", 3),
        ("OPTIONS", "", 3),
        ("POST", "", 1),
        ("PATCH", "", 1),
        ("POST", "key", 3),
        ("PATCH", "idempotent", 3),
        ("POST", "idempotent-key-once", 1),
    ];
    for (method, marks, hits) in cases {
        let path = format!("/{method}-{marks}");
        let mut request = client.request(method.parse().unwrap(), server.url(&path));
        if marks.contains("key") {
            request = request.header("idempotency-key", "k-1");
        }
        if marks.contains("idempotent") {
            request = request.with_extension(idempotent);
        }
        if marks.contains("once") {
            request = request.with_extension(idempotent.no_retry());
        }
        assert_eq!(code(request.body(body.clone()).send().await), 503, "{path}");
        assert_eq!(server.hits_on(&path), hits, "{path}");
        let same = server.bodies_on(&path).iter().all(|b| *b == body);
        assert!(same, "{path}: a body arrived changed");
    }
}

#[tokio::test]
async fn max_attempts_only_lowers_the_clients_attempts() {
    let server = FaultServer::start(always(status(503)));
    let (client, _) = client(policies().breaker(None));
    for (path, attempts, hits) in [("/ten", 10, 3), ("/two", 2, 2), ("/one", 1, 1)] {
        let overrides = Overrides::new().max_attempts(NonZeroU32::new(attempts).unwrap());
        let _ = get(&client, server.url(path), overrides).await;
        assert_eq!(server.hits_on(path), hits, "max_attempts({attempts})");
    }
}

/// 64 chunks of 1 KiB as a stream, and the bytes they make.
fn chunks() -> (reqwest::Body, Bytes) {
    let parts: Vec<Bytes> = (0..64u8).map(|i| Bytes::from(vec![i; 1024])).collect();
    let whole = Bytes::from(parts.concat());
    let stream = futures_util::stream::iter(parts.into_iter().map(Ok::<_, std::io::Error>));
    (reqwest::Body::wrap_stream(stream), whole)
}

#[tokio::test]
async fn a_streaming_body_is_sent_once_and_whole_whatever_the_markings() {
    let server = FaultServer::start(always(status(503)));
    let (client, _) = client(policies().breaker(None));
    let (body, whole) = chunks();
    let request = client
        .post(server.url("/"))
        .header("idempotency-key", "k-2")
        .with_extension(Overrides::new().idempotent());
    assert_eq!(code(request.body(body).send().await), 503);
    assert_eq!(server.hits(), 1);
    assert_eq!(server.bodies_on("/"), [whole]);

    // Sent once even when the connection breaks, and the reqwest error kept.
    let reset = FaultServer::start(always(Fault::Reset));
    let request = client.put(reset.url("/")).body(chunks().0);
    let error = request.send().await.unwrap_err();
    assert!(matches!(error, MwError::Reqwest(_)), "{error:?}");
    assert_eq!(reset.hits(), 1);

    // The attempt timeout still applies.
    let slow = FaultServer::start(always(Fault::Slow(Duration::from_secs(3))));
    let timeout = Overrides::new().attempt_timeout(ms(200));
    let request = client.put(slow.url("/")).with_extension(timeout);
    let error = request.body(chunks().0).send().await.unwrap_err();
    assert!(held::<Elapsed>(&error).is_some(), "{error:?}");
    assert_eq!(slow.hits(), 1);
}

/// `/slow` answers after `slow`, `/fail` with a 503, anything else at once.
fn slow_or_ok(slow: Duration) -> impl Fn(u64, &Method, &str) -> Fault + Send + Sync + 'static {
    move |_, _, path| match path {
        "/slow" => Fault::Slow(slow),
        "/fail" => status(503),
        _ => Fault::Ok,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dropped_call_leaks_neither_bulkhead_slots_nor_breaker_failures() {
    let server = FaultServer::start(slow_or_ok(Duration::from_secs(3)));
    let bulkhead = Bulkhead::builder(2).reject_when_full();
    let one = breaker(1, Duration::from_secs(10));
    let (client, resilience) = client(policies().bulkhead(Some(bulkhead)).breaker(Some(one)));
    let slow = || tokio::time::timeout(ms(500), client.get(server.url("/slow")).send());
    let (a, b) = tokio::join!(slow(), slow());
    assert!(a.is_err() && b.is_err(), "both dropped mid-request");
    assert_eq!(server.hits_on("/slow"), 2);

    let bulkheads = resilience.policies().bulkheads().unwrap();
    assert_eq!(bulkheads.in_flight(&host(&server)), 0);
    assert_ne!(state(&resilience, &server), Some(State::Open));
    for _ in 0..3 {
        let fast = || client.get(server.url("/")).send();
        let (a, b) = tokio::join!(fast(), fast());
        assert_eq!((code(a), code(b)), (200, 200));
    }
}

#[tokio::test]
async fn a_dropped_half_open_probe_gives_its_slot_back() {
    let server = FaultServer::start(slow_or_ok(Duration::from_secs(3)));
    let probe = breaker(1, ms(300)).half_open_probes(1);
    let (client, resilience) = client(policies().breaker(Some(probe)));
    let once = Overrides::new().no_retry();
    let _ = get(&client, server.url("/fail"), once).await;
    assert_eq!(state(&resilience, &server), Some(State::Open));
    tokio::time::sleep(ms(600)).await;

    let probe = get(&client, server.url("/slow"), once);
    let dropped = tokio::time::timeout(ms(500), probe).await.is_err();
    assert!(dropped, "dropped mid-request");
    assert_eq!(server.hits_on("/slow"), 1, "the probe was admitted");
    let response = get(&client, server.url("/"), once).await;
    assert_eq!(code(response), 200, "the slot came back for the next probe");
    assert_eq!(state(&resilience, &server), Some(State::Closed));
}

#[tokio::test]
async fn the_classifier_drives_the_retry_future_over_middleware_errors() {
    let client = with(Count::default());
    let backoff = || Backoff::constant(ms(10)).max_attempts(3).build().unwrap();
    let classifier = ReqwestClassifier::standard();

    let server = FaultServer::start(first_n(2, Fault::Reset));
    let send = || client.get(server.url("/")).send();
    let response = send.retry(backoff()).classify(classifier).await.unwrap();
    assert_eq!((response.status().as_u16(), server.hits()), (200, 3));

    for (status_code, hits) in [(404, 1), (501, 1), (502, 3)] {
        let server = FaultServer::start(always(status(status_code)));
        let send = || client.get(server.url("/")).send();
        let _ = send.retry(backoff()).classify(classifier).await;
        assert_eq!(server.hits(), hits, "status {status_code}");
    }

    let throttled = FaultServer::start(always(status_after(429, 2)));
    let response = client.get(throttled.url("/")).send().await;
    let standard: &dyn Classify<Response, MwError> = &classifier;
    let hinted = (Verdict::RetryableFailure, Some(Duration::from_secs(2)));
    let read = standard.classify(response.as_ref());
    assert_eq!((read, standard.retry_after(response.as_ref())), hinted);

    let judge = |e: MwError| (standard.classify(Err(&e)), standard.retry_after(Err(&e)));
    let retry_after = ms(20);
    let limited = MwError::middleware(Rejected::RateLimited { retry_after });
    assert_eq!(judge(limited), (Verdict::RetryableFailure, Some(ms(20))));
    let deadline = MwError::middleware(Rejected::DeadlineExceeded);
    assert_eq!(judge(deadline).0, Verdict::Ignored);
    let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
    let retryable = Verdict::RetryableFailure;
    assert_eq!(judge(MwError::middleware(reset)).0, retryable);

    // The Resilience middleware's own attempt timeout reads as a timeout.
    let (resilient, _) = crate::client(policies().attempt_timeout(Some(ms(100))).no_retry());
    let slow = FaultServer::start(always(Fault::Slow(Duration::from_secs(3))));
    let error = resilient.get(slow.url("/")).send().await.unwrap_err();
    assert_eq!(judge(error).0, retryable);
}

#[tokio::test]
async fn the_standard_stack_and_its_builder_edges() {
    let resilience = Resilience::standard();
    let policies = resilience.policies();
    let (max, name) = (policies.max_authorities(), policies.name());
    assert_eq!((max, name), (10_000, "http_client"));
    assert!(policies.breakers().is_some() && policies.bulkheads().is_some());
    assert!(policies.rate_limiters().is_none());
    let client = with(resilience);
    let server = FaultServer::start(first_n(1, status(503)));
    assert_eq!(code(client.get(server.url("/")).send().await), 200);
    assert_eq!(server.hits(), 2);

    let (builder, zero) = (ClientPolicies::builder, Some(Duration::ZERO));
    assert!(builder().deadline(zero).build().is_err());
    assert!(builder().attempt_timeout(zero).build().is_err());
    assert!(builder().max_authorities(0).build().is_err());
    let no_room = Some(Bulkhead::builder(0));
    assert!(builder().bulkhead(no_room).build().is_err());
    let bare = builder().breaker(None).bulkhead(None).build().unwrap();
    assert!(bare.breakers().is_none() && bare.bulkheads().is_none());
}

#[tokio::test]
async fn clones_of_a_resilience_share_one_breaker_per_host() {
    let down = FaultServer::start(always(status(503)));
    let first = Resilience::new(policies().build().unwrap());
    let second = first.clone();
    let (via_first, via_second) = (with(first), with(second.clone()));
    assert_eq!(code(via_first.get(down.url("/")).send().await), 503);
    assert_eq!(down.hits(), 3);
    let error = via_second.get(down.url("/")).send().await.unwrap_err();
    assert!(circuit_open(&error), "{error:?}");
    assert_eq!(down.hits(), 3);
    assert_eq!(state(&second, &down), Some(State::Open));
}
