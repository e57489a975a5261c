//! Hostile black-box tests, from the public docs only, of `testing::Scripted` (a scripted end
//! for a client under test, on tokio's paused clock) and `authority(&Url)` (the key the
//! middleware files a request under), composed as users would: a registry's client wrapped in
//! `Resilience`, reloads mid-traffic, cancellations at seeded random points, long idle gaps.
#![cfg(feature = "test-util")]

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::Extensions;
use reqwest::{Request, Response, Url};
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware, Middleware, Next};
use tidewall::breaker::{CircuitBreaker, State};
use tidewall::bulkhead::Bulkhead;
use tidewall::http::{Authority, ClientPolicies, ClientPoliciesBuilder};
use tidewall::rate::RateLimiter;
use tidewall::telemetry::{Event, EventKind};
use tidewall::{Backoff, Jitter, Rejected};
use tidewall_core::rng::SplitMix64;
use tidewall_reqwest::testing::{Answer, Scripted};
use tidewall_reqwest::{Overrides, Resilience, authority, rejection};
use tokio::time::Instant;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn status(code: u16) -> Answer {
    Ok(http::Response::builder()
        .status(code)
        .body(Vec::new())
        .unwrap())
}

fn status_after(code: u16, retry_after: &str) -> Answer {
    Ok(http::Response::builder()
        .status(code)
        .header("retry-after", retry_after)
        .body(Vec::new())
        .unwrap())
}

fn url(text: &str) -> Url {
    Url::parse(text).unwrap()
}

fn key(text: &str) -> Authority {
    authority(&url(text)).unwrap_or_else(|| panic!("{text} has a host"))
}

/// `attempts` attempts `backoff` apart without jitter.
fn retry(attempts: u32, backoff: Duration) -> Backoff {
    Backoff::constant(backoff)
        .jitter(Jitter::None)
        .max_attempts(attempts)
        .build()
        .unwrap()
}

fn resilient(policies: ClientPoliciesBuilder) -> Resilience {
    Resilience::new(policies.build().unwrap())
}

fn scripted(resilience: &Resilience, server: &Scripted) -> ClientWithMiddleware {
    ClientBuilder::new(reqwest::Client::new())
        .with(resilience.clone())
        .with(server.clone())
        .build()
}

/// A GET of `url` through `client`.
async fn get(client: &ClientWithMiddleware, url: &str) -> reqwest_middleware::Result<Response> {
    client.get(url).send().await
}

/// Hosts that answer every request 503, through a client that sends each once and opens a
/// host's breaker at its first failure.
fn failing_hosts() -> (Scripted, Resilience, ClientWithMiddleware) {
    let server = Scripted::new(|_request| async { status(503) });
    let resilience = resilient(
        ClientPolicies::builder()
            .no_retry()
            .breaker(Some(CircuitBreaker::builder().consecutive_failures(1))),
    );
    let client = scripted(&resilience, &server);
    (server, resilience, client)
}

/// Counts futures alive: one made per exchange, dropped when the exchange ends or is cut.
#[derive(Clone, Default)]
struct Live(Arc<AtomicUsize>, Arc<AtomicUsize>);

struct Guard(Arc<AtomicUsize>);

impl Live {
    fn guard(&self) -> Guard {
        let now = self.0.fetch_add(1, SeqCst) + 1;
        self.1.fetch_max(now, SeqCst);
        Guard(Arc::clone(&self.0))
    }
    fn now(&self) -> usize {
        self.0.load(SeqCst)
    }
    fn peak(&self) -> usize {
        self.1.load(SeqCst)
    }
    /// A script answering as `script` does, each exchange counted alive until it ends or is
    /// dropped.
    fn script<F, Fut>(&self, script: F) -> Scripted
    where
        F: Fn(&Request) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Answer> + Send + 'static,
    {
        let tracker = self.clone();
        Scripted::new(move |request| {
            let guard = tracker.guard();
            let answer = script(request);
            async move {
                let _guard = guard;
                answer.await
            }
        })
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, SeqCst);
    }
}

/// One event as heard: policy, name, key, kind.
type Heard = (String, String, Option<String>, String);

/// What a listener heard.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<Heard>>>);

impl Log {
    fn listener(&self) -> impl Fn(&Event<'_>) + Send + Sync + 'static {
        let log = Arc::clone(&self.0);
        move |event: &Event<'_>| {
            let kind = match event.kind {
                EventKind::Rejected(why) => format!("rejected {}", why.kind()),
                EventKind::StateChanged(change) => format!("{} -> {}", change.from, change.to),
                EventKind::RetryScheduled { .. } => "retry".to_owned(),
                other => format!("{other:?}"),
            };
            log.lock().unwrap().push((
                event.policy.to_owned(),
                event.name.to_owned(),
                event.key.map(str::to_owned),
                kind,
            ));
        }
    }
    fn take(&self) -> Vec<Heard> {
        std::mem::take(&mut self.0.lock().unwrap())
    }
}

/// A middleware that counts the requests passing it.
#[derive(Clone, Default)]
struct Count(Arc<AtomicUsize>);

#[async_trait::async_trait]
impl Middleware for Count {
    async fn handle(
        &self,
        req: Request,
        ext: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        self.0.fetch_add(1, SeqCst);
        next.run(req, ext).await
    }
}

/// Whether `error` is, or its source chain holds, an I/O error of `kind`.
fn has_io(error: &reqwest_middleware::Error, kind: std::io::ErrorKind) -> bool {
    if let reqwest_middleware::Error::Middleware(inner) = error
        && inner
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == kind)
    {
        return true;
    }
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = next {
        if e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == kind)
        {
            return true;
        }
        next = e.source();
    }
    false
}

// ---------------------------------------------------------------------------------------------
// authority(&Url): the key the tables hold after real requests
// ---------------------------------------------------------------------------------------------

/// Every URL shape a user might send: the key `authority` gives is the one the per-host
/// breakers and bulkheads hold after a request there.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn authority_is_the_key_every_table_files_the_request_under() {
    let urls = [
        ("http://[::1]:8080/a", "http://[::1]:8080"),
        ("http://[FE80::A:B]/", "http://[fe80::a:b]:80"),
        ("http://[::ffff:1.2.3.4]:81/", ""),
        (
            "https://API.Example.COM/v1?q=1#frag",
            "https://api.example.com:443",
        ),
        ("http://user:secret@creds.test/x", "http://creds.test:80"),
        ("http://host.test:80/", "http://host.test:80"),
        ("https://host.test:443/", "https://host.test:443"),
        ("https://host.test:8443/", "https://host.test:8443"),
        ("http://trailing.test./", ""),
        ("http://bücher.example/", "http://xn--bcher-kva.example:80"),
        ("http://0x7f.1:8080/", "http://127.0.0.1:8080"),
        ("http://ex%41mple.test/", ""),
        ("HTTP://UPPER.TEST/", "http://upper.test:80"),
    ];
    let (server, resilience, client) = failing_hosts();
    let breakers = resilience.policies().breakers().unwrap();
    let mut expected = BTreeSet::new();
    for (text, written) in urls {
        let host = key(text);
        if !written.is_empty() {
            assert_eq!(host.as_str(), written, "{text}");
        }
        assert_eq!(breakers.state(&host), None, "{text}: fresh");
        let answer = get(&client, text).await.unwrap();
        assert_eq!(answer.status(), 503);
        assert_eq!(
            breakers.state(&host),
            Some(State::Open),
            "{text}: filed under {host}"
        );
        expected.insert(host.as_str().to_owned());
    }
    let held: BTreeSet<String> = breakers
        .not_closed()
        .into_iter()
        .map(|(k, _)| k.as_str().to_owned())
        .collect();
    assert_eq!(held, expected, "no request was filed under another key");
    assert_eq!(server.attempts(), urls.len());
}

/// The bulkheads' table too: a request in flight is counted under `authority(url)`.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_request_in_flight_is_held_under_its_authority() {
    let server = Scripted::new(|_request| async {
        tokio::time::sleep(secs(5)).await;
        status(200)
    });
    let resilience = resilient(ClientPolicies::builder().no_retry());
    let client = scripted(&resilience, &server);
    let bulkheads = resilience.policies().bulkheads().unwrap();
    for text in [
        "http://[::1]:9000/",
        "https://User@Mixed.Case.test/",
        "http://dot.test./x",
    ] {
        let host = key(text);
        let send = client.get(text).send();
        let watch = async {
            tokio::time::sleep(secs(1)).await;
            bulkheads.in_flight(&host)
        };
        let (answer, in_flight) = tokio::join!(send, watch);
        assert_eq!(answer.unwrap().status(), 200);
        assert_eq!(in_flight, 1, "{text}: held under {host}");
        assert_eq!(bulkheads.in_flight(&host), 0);
    }
}

/// A URL whose scheme the per-host tables have no default port for (`ws`, `ftp`: the URL
/// crate knows theirs): if `authority` names a key, a request is filed under it; if the
/// request is filed under none, `authority` must not name one.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn authority_never_names_a_key_the_middleware_does_not_file_under() {
    let (_, resilience, client) = failing_hosts();
    let breakers = resilience.policies().breakers().unwrap();
    for text in [
        "ws://sock.test/",
        "wss://sock.test/",
        "ftp://files.test/",
        "ws://sock.test:9000/",
        "custom://thing.test:7000/",
        "custom://thing.test/",
        "file://server/share/x",
        "file:///tmp/x",
        "data:text/plain,hello",
        "mailto:someone@mail.test",
    ] {
        let before = breakers.not_closed().len();
        let answered = get(&client, text).await;
        let filed = breakers.not_closed().len() - before;
        match authority(&url(text)) {
            Some(host) => {
                assert!(answered.is_ok(), "{text}: {answered:?}");
                assert_eq!(
                    breakers.state(&host),
                    Some(State::Open),
                    "{text}: authority() says {host}, the tables hold {:?}",
                    breakers.not_closed()
                );
            }
            None => assert_eq!(filed, 0, "{text}: filed under a key authority() denies"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Scripted: attempts, clones, order
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn attempts_count_only_what_reaches_the_script_and_clones_share_them() {
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&calls);
    let server = Scripted::new(move |_request| {
        seen.fetch_add(1, SeqCst);
        async { status(500) }
    });
    let twin = server.clone();
    let (above, below) = (Count::default(), Count::default());
    let resilience = resilient(
        ClientPolicies::builder()
            .retry(retry(3, ms(10)))
            .retry_budget(None)
            .breaker(Some(CircuitBreaker::builder().consecutive_failures(4))),
    );
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(above.clone())
        .with(resilience.clone())
        .with(below.clone())
        .with(twin.clone())
        .build();
    let answer = get(&client, "http://down.test/").await.unwrap();
    assert_eq!(answer.status(), 500);
    assert_eq!((server.attempts(), twin.attempts()), (3, 3));
    assert_eq!(
        calls.load(SeqCst),
        3,
        "the script is called once per attempt"
    );
    assert_eq!(above.0.load(SeqCst), 1, "above: once per request");
    assert_eq!(below.0.load(SeqCst), 3, "below: once per attempt");
    // The fourth failure opens the breaker, and is answered with its own response; the
    // next request is refused, unsent.
    let answer = get(&client, "http://down.test/").await.unwrap();
    assert_eq!((answer.status().as_u16(), server.attempts()), (500, 4));
    let error = get(&client, "http://down.test/").await;
    let error = error.expect_err("the breaker is open");
    assert!(
        matches!(rejection(&error), Some(Rejected::CircuitOpen { .. })),
        "{error:?}"
    );
    assert_eq!(calls.load(SeqCst), 4);
    // Another client with another clone of the same script: one count.
    let other = client_without_policies(&server);
    get(&other, "http://down.test/").await.unwrap();
    assert_eq!((server.attempts(), twin.attempts()), (5, 5));
}

fn client_without_policies(server: &Scripted) -> ClientWithMiddleware {
    ClientBuilder::new(reqwest::Client::new())
        .with(server.clone())
        .build()
}

/// Each retry sends the same request again: method, URL, headers, body.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn every_attempt_sees_the_same_request() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    let server = Scripted::new(move |request| {
        let body = request
            .body()
            .and_then(reqwest::Body::as_bytes)
            .map(<[u8]>::to_vec);
        let trace = request
            .headers()
            .get("x-trace")
            .map(|v| v.to_str().unwrap().to_owned());
        let n = {
            let mut log = log.lock().unwrap();
            log.push((
                request.method().clone(),
                request.url().to_string(),
                trace,
                body,
            ));
            log.len()
        };
        async move { status(if n < 3 { 502 } else { 204 }) }
    });
    let resilience = resilient(ClientPolicies::builder().retry(retry(4, ms(50))));
    let started = Instant::now();
    let answer = scripted(&resilience, &server)
        .put("http://store.test/items/7?v=2")
        .header("x-trace", "abc")
        .body("payload")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 204);
    assert_eq!(started.elapsed(), ms(100), "two backoffs of 50 ms, virtual");
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 3);
    for attempt in seen.iter() {
        assert_eq!(
            attempt,
            &(
                http::Method::PUT,
                "http://store.test/items/7?v=2".to_owned(),
                Some("abc".to_owned()),
                Some(b"payload".to_vec())
            )
        );
    }
}

/// The answer reaches the caller whole: status, headers, body bytes.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn the_scripts_answer_reaches_the_caller_whole() {
    let body: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    let expected = body.clone();
    let server = Scripted::new(move |_request| {
        let body = body.clone();
        async move {
            Ok(http::Response::builder()
                .status(207)
                .header("x-answer", "yes")
                .header("content-type", "application/octet-stream")
                .body(body)
                .unwrap())
        }
    });
    let answer = get(
        &scripted(&Resilience::standard(), &server),
        "http://whole.test/blob",
    )
    .await
    .unwrap();
    assert_eq!(answer.status(), 207);
    assert_eq!(answer.headers()["x-answer"], "yes");
    assert_eq!(answer.bytes().await.unwrap().as_ref(), expected.as_slice());
}

/// "So the client your code holds runs whole": code that reads the response's URL (a log
/// line, `error_for_status`'s error) sees the URL it asked for, as over the network.
// Found by this file: the URL was reqwest's placeholder, `http://no.url.provided.local/`.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn the_answer_carries_the_requests_url() {
    let server = Scripted::new(|_request| async { status(502) });
    let client = scripted(&resilient(ClientPolicies::builder().no_retry()), &server);
    let answer = get(&client, "http://named.test/items?page=2")
        .await
        .unwrap();
    assert_eq!(answer.url().as_str(), "http://named.test/items?page=2");
    let error = answer.error_for_status().unwrap_err();
    assert_eq!(
        error.url().map(Url::as_str),
        Some("http://named.test/items?page=2")
    );
}

// ---------------------------------------------------------------------------------------------
// Scripted: time
// ---------------------------------------------------------------------------------------------

/// A host slower than the deadline: cut at the deadline, in virtual time, its exchange
/// dropped, the refusal the deadline's.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_slow_host_is_cut_by_the_deadline_and_its_exchange_dropped() {
    let live = Live::default();
    let server = live.script(move |_request| async move {
        tokio::time::sleep(secs(86_400)).await;
        status(200)
    });
    let resilience = resilient(
        ClientPolicies::builder()
            .deadline(Some(secs(2)))
            .attempt_timeout(None),
    );
    let started = Instant::now();
    let error = get(&scripted(&resilience, &server), "http://slow.test/")
        .await
        .unwrap_err();
    assert_eq!(started.elapsed(), secs(2));
    assert_eq!(
        rejection(&error),
        Some(Rejected::DeadlineExceeded),
        "{error:?}"
    );
    assert_eq!(server.attempts(), 1);
    assert_eq!(live.now(), 0, "the cut exchange was dropped");
}

/// Attempt timeouts cut each slow attempt; a late fast answer wins; the breaker counts the
/// timeouts as failures.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn attempt_timeouts_cut_slow_answers_and_count_against_the_host() {
    let live = Live::default();
    let n = Arc::new(AtomicUsize::new(0));
    let server = live.script(move |_request| {
        let nth = n.fetch_add(1, SeqCst);
        async move {
            if nth < 2 {
                tokio::time::sleep(secs(3600)).await;
            }
            status(200)
        }
    });
    let resilience = resilient(
        ClientPolicies::builder()
            .retry(retry(3, ms(100)))
            .attempt_timeout(Some(ms(300)))
            .breaker(Some(CircuitBreaker::builder().consecutive_failures(10))),
    );
    let started = Instant::now();
    let answer = get(&scripted(&resilience, &server), "http://flaky.test/")
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(started.elapsed(), ms(300 + 100 + 300 + 100));
    assert_eq!(server.attempts(), 3);
    assert_eq!(live.now(), 0);
    let counts = resilience
        .policies()
        .breakers()
        .unwrap()
        .counts(&key("http://flaky.test/"))
        .unwrap();
    assert_eq!((counts.calls, counts.failures), (3, 2));
}

/// `Retry-After` paces retries in virtual time: at least the server's wait, capped by
/// `max_retry_after`; one that ends past the deadline returns the answer at once.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn retry_after_paces_retries_and_is_held_against_the_deadline() {
    /// One GET: `first` answered first, 200 after, 3 attempts 10 ms apart under `deadline`.
    /// The final status, the attempts made and the time taken.
    async fn paced(first: Answer, deadline: Option<Duration>) -> (u16, usize, Duration) {
        let first = Mutex::new(Some(first));
        let server = Scripted::new(move |_request| {
            let answer = first.lock().unwrap().take().unwrap_or_else(|| status(200));
            async move { answer }
        });
        let resilience = resilient(
            ClientPolicies::builder()
                .retry(retry(3, ms(10)))
                .deadline(deadline),
        );
        let started = Instant::now();
        let answer = get(&scripted(&resilience, &server), "http://paced.test/")
            .await
            .unwrap();
        (
            answer.status().as_u16(),
            server.attempts(),
            started.elapsed(),
        )
    }

    // 503, come back in 7 s.
    let got = paced(status_after(503, "7"), Some(secs(30))).await;
    assert_eq!(got, (200, 2, secs(7)));

    // 429 asking for 40 s under a 30 s deadline: the 429 at once, not retried.
    let got = paced(status_after(429, "40"), Some(secs(30))).await;
    assert_eq!(got, (429, 1, Duration::ZERO));

    // No deadline, 10 minutes asked: the sleep is capped at the default 60 s.
    let got = paced(status_after(503, "600"), None).await;
    assert_eq!(got, (200, 2, secs(60)));
}

/// An HTTP-date `Retry-After` is read against the wall clock and waited out in virtual time.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn an_http_date_retry_after_is_waited_in_virtual_time() {
    let first = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let server = Scripted::new(move |_request| {
        let is_first = first.swap(false, SeqCst);
        async move {
            if is_first {
                let at = std::time::SystemTime::now() + secs(20);
                status_after(503, &http_date(at))
            } else {
                status(200)
            }
        }
    });
    let resilience = resilient(ClientPolicies::builder().retry(retry(2, ms(10))));
    let started = Instant::now();
    let answer = get(&scripted(&resilience, &server), "http://dated.test/")
        .await
        .unwrap();
    assert_eq!((answer.status().as_u16(), server.attempts()), (200, 2));
    let waited = started.elapsed();
    assert!(waited >= secs(18) && waited <= secs(20), "{waited:?}");
}

/// IMF-fixdate, e.g. `Sun, 06 Nov 1994 08:49:37 GMT`.
fn http_date(at: std::time::SystemTime) -> String {
    let secs = at.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let weekday =
        ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][usize::try_from(days % 7).unwrap()];
    // Howard Hinnant's civil_from_days.
    let z = i64::try_from(days).unwrap() + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let months = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{weekday}, {day:02} {} {year} {:02}:{:02}:{:02} GMT",
        months[usize::try_from(month - 1).unwrap()],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// A failure's `Retry-After` keeps the host's breaker open that long (its break is shorter).
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_retry_after_holds_the_hosts_breaker_open() {
    let server = Scripted::new(|_request| async { status_after(503, "20") });
    let resilience = resilient(
        ClientPolicies::builder().no_retry().breaker(Some(
            CircuitBreaker::builder()
                .consecutive_failures(1)
                .break_duration(secs(2)),
        )),
    );
    let client = scripted(&resilience, &server);
    assert_eq!(
        get(&client, "http://busy.test/").await.unwrap().status(),
        503
    );
    tokio::time::advance(secs(10)).await;
    let refused = get(&client, "http://busy.test/").await.unwrap_err();
    let Some(Rejected::CircuitOpen { retry_after }) = rejection(&refused) else {
        panic!("{refused:?}");
    };
    assert!(
        retry_after <= secs(10) && retry_after > secs(5),
        "{retry_after:?}"
    );
    tokio::time::advance(secs(11)).await;
    assert!(get(&client, "http://busy.test/").await.is_ok());
    assert_eq!(server.attempts(), 2);
}

// ---------------------------------------------------------------------------------------------
// Scripted: the network's errors
// ---------------------------------------------------------------------------------------------

/// `ConnectionRefused` reads as a connection failure: retried, held against the host, and the
/// caller can still find the I/O error; `TimedOut` as a timeout: retried and held against it.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn io_errors_read_as_the_networks() {
    for kind in [
        std::io::ErrorKind::ConnectionRefused,
        std::io::ErrorKind::TimedOut,
    ] {
        let server = Scripted::new(move |_request| async move { Err(std::io::Error::from(kind)) });
        let resilience = resilient(
            ClientPolicies::builder()
                .retry(retry(3, ms(10)))
                .retry_budget(None)
                .breaker(Some(CircuitBreaker::builder().consecutive_failures(100))),
        );
        let error = get(&scripted(&resilience, &server), "http://gone.test/")
            .await
            .unwrap_err();
        assert_eq!(server.attempts(), 3, "{kind:?}: retried");
        assert_eq!(rejection(&error), None, "{kind:?}: {error:?}");
        assert!(
            has_io(&error, kind),
            "{kind:?}: the I/O error is in {error:?}"
        );
        let counts = resilience
            .policies()
            .breakers()
            .unwrap()
            .counts(&key("http://gone.test/"))
            .unwrap();
        assert_eq!((counts.calls, counts.failures), (3, 3), "{kind:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Scripted: what is sent again
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn only_what_may_be_sent_again_is_retried() {
    let server = Scripted::new(|_request| async { status(503) });
    let resilience = resilient(
        ClientPolicies::builder()
            .retry(retry(3, ms(10)))
            .retry_budget(None)
            .breaker(None),
    );
    let client = scripted(&resilience, &server);
    let sent = |before: usize| server.attempts() - before;
    let cases: Vec<(&str, reqwest_middleware::RequestBuilder, usize)> = vec![
        ("POST", client.post("http://svc.test/").body("x"), 1),
        ("PATCH", client.patch("http://svc.test/").body("x"), 1),
        (
            "POST with Idempotency-Key",
            client
                .post("http://svc.test/")
                .header("Idempotency-Key", "k-1")
                .body("x"),
            3,
        ),
        (
            "POST marked idempotent",
            client
                .post("http://svc.test/")
                .with_extension(Overrides::new().idempotent())
                .body("x"),
            3,
        ),
        ("PUT", client.put("http://svc.test/").body("x"), 3),
        ("DELETE", client.delete("http://svc.test/"), 3),
        ("GET", client.get("http://svc.test/"), 3),
        (
            "GET with no_retry",
            client
                .get("http://svc.test/")
                .with_extension(Overrides::new().no_retry()),
            1,
        ),
    ];
    for (what, request, attempts) in cases {
        let before = server.attempts();
        let answer = request.send().await.unwrap();
        assert_eq!(answer.status(), 503, "{what}: the response as it is");
        assert_eq!(sent(before), attempts, "{what}");
    }
}

/// A streaming body cannot be copied: sent once, even marked idempotent on a PUT, and its
/// answer comes back as it is.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_streaming_body_is_sent_once() {
    let streamed = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&streamed);
    let server = Scripted::new(move |request| {
        if request.body().is_some_and(|b| b.as_bytes().is_none()) {
            seen.fetch_add(1, SeqCst);
        }
        async { status(503) }
    });
    let resilience = resilient(
        ClientPolicies::builder()
            .retry(retry(5, ms(10)))
            .retry_budget(None),
    );
    let chunks: Vec<Result<bytes::Bytes, std::io::Error>> = vec![
        Ok(bytes::Bytes::from_static(b"a")),
        Ok(bytes::Bytes::from_static(b"b")),
    ];
    let answer = scripted(&resilience, &server)
        .put("http://upload.test/")
        .with_extension(Overrides::new().idempotent())
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 503);
    assert_eq!(server.attempts(), 1);
    assert_eq!(streamed.load(SeqCst), 1, "the script saw the stream");
}

// ---------------------------------------------------------------------------------------------
// Scripted: cancellation, concurrency, leaks
// ---------------------------------------------------------------------------------------------

/// A request dropped mid-attempt drops its exchange and gives its slot back; a half-open
/// probe dropped so gives the probe back (the next request is admitted).
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_cancelled_request_leaks_neither_slot_nor_probe() {
    let live = Live::default();
    let slow = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let slow_now = Arc::clone(&slow);
    let fail = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let fail_now = Arc::clone(&fail);
    let server = live.script(move |_request| {
        let (slow, fail) = (slow_now.load(SeqCst), fail_now.load(SeqCst));
        async move {
            if slow {
                tokio::time::sleep(secs(10)).await;
            }
            status(if fail { 503 } else { 200 })
        }
    });
    let log = Log::default();
    let resilience = resilient(
        ClientPolicies::builder()
            .name("cancelling")
            .no_retry()
            .bulkhead(Some(Bulkhead::builder(1).reject_when_full()))
            .breaker(Some(
                CircuitBreaker::builder()
                    .consecutive_failures(1)
                    .break_duration(secs(1))
                    .half_open_probes(1),
            ))
            .on_event(log.listener()),
    );
    let client = scripted(&resilience, &server);
    let host = key("http://cancel.test/");
    let bulkheads = resilience.policies().bulkheads().unwrap();

    let cut = tokio::time::timeout(secs(1), client.get("http://cancel.test/").send()).await;
    assert!(cut.is_err(), "dropped mid-attempt");
    assert_eq!(live.now(), 0, "the script's future was dropped");
    assert_eq!(bulkheads.in_flight(&host), 0, "the slot came back");
    assert_eq!(server.attempts(), 1);
    assert!(
        log.take()
            .iter()
            .any(|(policy, _, key, kind)| policy == "http_client"
                && key.as_deref() == Some(host.as_str())
                && kind == "Cancelled")
    );

    // Open the host, let the break pass, then cancel the probe.
    slow.store(false, SeqCst);
    fail.store(true, SeqCst);
    get(&client, "http://cancel.test/").await.unwrap();
    let breakers = resilience.policies().breakers().unwrap();
    assert_eq!(breakers.state(&host), Some(State::Open));
    tokio::time::advance(secs(2)).await;
    slow.store(true, SeqCst);
    fail.store(false, SeqCst);
    let cut = tokio::time::timeout(secs(1), client.get("http://cancel.test/").send()).await;
    assert!(cut.is_err());
    assert_eq!(live.now(), 0);
    assert_eq!(bulkheads.in_flight(&host), 0);
    // The probe slot is free again: the next request is admitted and closes the breaker.
    slow.store(false, SeqCst);
    let answer = get(&client, "http://cancel.test/").await;
    assert_eq!(
        answer.map(|r| r.status().as_u16()).ok(),
        Some(200),
        "probe admitted"
    );
    assert_eq!(breakers.state(&host), Some(State::Closed));
}

/// Hundreds of concurrent requests through one client, a bulkhead of 4 per host: the script
/// never sees more than 4 at once per host; every request ends admitted (200) or refused by
/// the bulkhead; nothing is left held.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn hundreds_of_concurrent_requests_through_a_small_bulkhead() {
    let hosts = ["http://a.test/", "http://b.test/", "http://[::1]:7000/"];
    let live: Vec<Live> = hosts.iter().map(|_| Live::default()).collect();
    let by_host: HashMap<String, Live> = hosts
        .iter()
        .zip(&live)
        .map(|(h, l)| (url(h).to_string(), l.clone()))
        .collect();
    let server = Scripted::new(move |request| {
        let tracker = by_host[request.url().as_str()].clone();
        let guard = tracker.guard();
        let pause = u64::from(
            request.headers()["x-pause"]
                .to_str()
                .unwrap()
                .parse::<u16>()
                .unwrap(),
        );
        async move {
            let _guard = guard;
            tokio::time::sleep(ms(pause)).await;
            status(200)
        }
    });
    let resilience = resilient(
        ClientPolicies::builder()
            .retry(retry(2, ms(5)))
            .bulkhead(Some(Bulkhead::builder(4).reject_when_full())),
    );
    let client = scripted(&resilience, &server);
    let mut rng = SplitMix64::new(42);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..400u64 {
        let host = hosts[(i % 3) as usize];
        let pause = rng.below_or_equal(50);
        let start = rng.below_or_equal(200);
        let client = client.clone();
        tasks.spawn(async move {
            tokio::time::sleep(ms(start)).await;
            client
                .get(host)
                .header("x-pause", pause.to_string())
                .send()
                .await
        });
    }
    let (mut ok, mut refused) = (0, 0);
    while let Some(done) = tasks.join_next().await {
        match done.unwrap() {
            Ok(answer) => {
                assert_eq!(answer.status(), 200);
                ok += 1;
            }
            Err(error) => {
                assert_eq!(rejection(&error), Some(Rejected::BulkheadFull), "{error:?}");
                refused += 1;
            }
        }
    }
    assert_eq!(ok + refused, 400);
    assert!(refused > 0, "the bulkhead was exercised");
    assert_eq!(
        server.attempts(),
        ok,
        "every attempt that reached the script answered 200"
    );
    let bulkheads = resilience.policies().bulkheads().unwrap();
    for (host, live) in hosts.iter().zip(&live) {
        assert!(live.peak() <= 4, "{host}: {} at once", live.peak());
        assert_eq!(live.peak(), 4, "{host}: the bulkhead filled");
        assert_eq!(live.now(), 0);
        assert_eq!(bulkheads.in_flight(&key(host)), 0, "{host}");
    }
}

/// Requests dropped at seeded random points (queued in a bulkhead, waiting on a rate limit,
/// mid-exchange, between retries): nothing held afterwards, no exchange alive, every host's
/// breaker usable again.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn random_drop_points_leak_nothing() {
    for (seed, adaptive) in [
        (1u64, false),
        (7, false),
        (1234, false),
        (5, true),
        (77, true),
    ] {
        let live = Live::default();
        let server = live.script(move |request| {
            let plan: Vec<u64> = request.headers()["x-plan"]
                .to_str()
                .unwrap()
                .split(',')
                .map(|p| p.parse().unwrap())
                .collect();
            async move {
                tokio::time::sleep(ms(plan[0])).await;
                status(if plan[1] == 0 { 503 } else { 200 })
            }
        });
        let limits = if adaptive {
            let aimd = tidewall::adaptive::Aimd::builder()
                .min_limit(1)
                .initial_limit(2)
                .max_limit(4)
                .build()
                .unwrap();
            ClientPolicies::builder().bulkhead(None).adaptive(Some(
                tidewall::adaptive::AdaptiveLimiter::builder(
                    tidewall::adaptive::AnyAlgorithm::from(aimd),
                )
                .max_queue(3)
                .max_wait(ms(100)),
            ))
        } else {
            ClientPolicies::builder()
                .bulkhead(Some(Bulkhead::builder(2).max_queue(3).max_wait(ms(100))))
        };
        let resilience = resilient(
            limits
                .retry(retry(3, ms(20)))
                .retry_budget(None)
                .attempt_timeout(Some(ms(150)))
                .rate_limit(Some(RateLimiter::builder(20, secs(1)).keyed()))
                .breaker(Some(
                    CircuitBreaker::builder()
                        .consecutive_failures(5)
                        .break_duration(secs(1))
                        .half_open_probes(1),
                )),
        );
        let client = scripted(&resilience, &server);
        let hosts = ["http://x.test/", "http://y.test:81/", "http://[::2]/"];
        let mut rng = SplitMix64::new(seed);
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..240u64 {
            let host = hosts[(i % 3) as usize];
            let plan = format!("{},{}", rng.below_or_equal(200), rng.below_or_equal(2));
            let start = rng.below_or_equal(400);
            let drop_after = rng.below_or_equal(300);
            let client = client.clone();
            tasks.spawn(async move {
                tokio::time::sleep(ms(start)).await;
                let send = client.get(host).header("x-plan", plan).send();
                let _ = tokio::time::timeout(ms(drop_after), send).await;
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.unwrap();
        }
        assert_eq!(
            live.now(),
            0,
            "seed {seed}: exchanges alive after every request ended"
        );
        for host in hosts {
            if let Some(bulkheads) = resilience.policies().bulkheads() {
                assert_eq!(bulkheads.in_flight(&key(host)), 0, "seed {seed} {host}");
                if let Some(bulkhead) = bulkheads.get(&key(host)) {
                    assert_eq!(bulkhead.queued(), 0, "seed {seed} {host}");
                }
            }
            if let Some(limiters) = resilience.policies().adaptive_limiters() {
                assert_eq!(limiters.in_flight(&key(host)), 0, "seed {seed} {host}");
            }
        }
        // Long after: every host answers again, with its full capacity.
        tokio::time::advance(secs(3600)).await;
        let breakers = resilience.policies().breakers().unwrap();
        for host in hosts {
            // The probe first (a leaked probe slot would refuse it), then the full capacity.
            let probe = client.get(host).header("x-plan", "100,1").send().await;
            assert_eq!(
                probe.as_ref().map(|r| r.status().as_u16()).ok(),
                Some(200),
                "seed {seed} {host}: {probe:?}"
            );
            assert_ne!(
                breakers.state(&key(host)),
                Some(State::Open),
                "seed {seed} {host}"
            );
            let sends = (0..2).map(|_| client.get(host).header("x-plan", "100,1").send());
            let answers = futures_util::future::join_all(sends).await;
            for answer in answers {
                assert_eq!(
                    answer.as_ref().map(|r| r.status().as_u16()).ok(),
                    Some(200),
                    "seed {seed} {host}: {answer:?}"
                );
            }
        }
        assert_eq!(live.now(), 0);
    }
}

// ---------------------------------------------------------------------------------------------
// Scripted: long idle gaps
// ---------------------------------------------------------------------------------------------

/// Days of virtual time between requests: an open breaker half-opens and a probe closes it,
/// a spent retry budget has refilled, a rate limit has rested to its burst.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn long_idle_gaps_leave_every_host_fresh() {
    let failing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let now_failing = Arc::clone(&failing);
    let server = Scripted::new(move |_request| {
        let fail = now_failing.load(SeqCst);
        async move { status(if fail { 503 } else { 200 }) }
    });
    let host = key("http://idle.test/");

    // Spend the host's retry budget: many failing requests in one second.
    let budgeted = resilient(
        ClientPolicies::builder()
            .retry(retry(3, ms(10)))
            .breaker(None),
    );
    let budgeted_client = scripted(&budgeted, &server);
    tokio::time::advance(secs(1)).await;
    let mut attempts_per_request = Vec::new();
    for _ in 0..200 {
        let before = server.attempts();
        let _ = get(&budgeted_client, "http://idle.test/").await;
        attempts_per_request.push(server.attempts() - before);
    }
    assert!(
        attempts_per_request.contains(&1),
        "the budget ran out: {attempts_per_request:?}"
    );
    // Two days idle: the budget is back.
    tokio::time::advance(secs(2 * 86_400)).await;
    let before = server.attempts();
    let answer = get(&budgeted_client, "http://idle.test/").await.unwrap();
    assert_eq!(answer.status(), 503);
    assert_eq!(
        server.attempts() - before,
        3,
        "a full budget after two days"
    );

    // A rate limit of 1 a second, burst 2: spent, then rested for a day: a burst at once.
    failing.store(false, SeqCst);
    let limited = resilient(
        ClientPolicies::builder()
            .rate_limit(Some(RateLimiter::builder(1, secs(1)).burst(2).keyed())),
    );
    let limited_client = scripted(&limited, &server);
    let started = Instant::now();
    for _ in 0..4 {
        get(&limited_client, "http://idle.test/").await.unwrap();
    }
    assert!(
        started.elapsed() >= secs(2),
        "paced: {:?}",
        started.elapsed()
    );
    tokio::time::advance(secs(86_400)).await;
    let started = Instant::now();
    for _ in 0..2 {
        get(&limited_client, "http://idle.test/").await.unwrap();
    }
    assert_eq!(
        started.elapsed(),
        Duration::ZERO,
        "a full burst after a day"
    );

    // Another stack: a host's breaker opened, then a week idle: the next request is the
    // probe, and closes it.
    let opening = resilient(
        ClientPolicies::builder().no_retry().breaker(Some(
            CircuitBreaker::builder()
                .consecutive_failures(1)
                .break_duration(secs(30)),
        )),
    );
    let opening_client = scripted(&opening, &server);
    let breakers = opening.policies().breakers().unwrap();
    failing.store(true, SeqCst);
    let _ = get(&opening_client, "http://idle.test/").await;
    assert_eq!(breakers.state(&host), Some(State::Open));
    tokio::time::advance(secs(7 * 86_400)).await;
    failing.store(false, SeqCst);
    let before = server.attempts();
    let answer = get(&opening_client, "http://idle.test/").await.unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(server.attempts() - before, 1);
    assert_eq!(breakers.state(&host), Some(State::Closed));
}

// ---------------------------------------------------------------------------------------------
// Composition: a registry's client, its listener, a reload mid-traffic
// ---------------------------------------------------------------------------------------------

#[cfg(feature = "toml")]
mod registry {
    use super::*;
    use tidewall::config::{Config, Registry};

    const CATALOG: &str = r#"
    [instances.catalog]
    deadline = "20s"
    attempt_timeout = "2s"
    http = {}
    [instances.catalog.retry]
    max_attempts = 3
    backoff = "constant"
    initial_delay = "100ms"
    jitter = "none"
    [instances.catalog.breaker]
    consecutive_failures = 3
    window_calls = 50
    break_duration = "5s"
    [instances.catalog.bulkhead]
    max_concurrent = 3
    max_queue = 0
    "#;

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_registry_client_under_traffic_with_a_reload_names_each_host() {
        let log = Log::default();
        let registry = Arc::new(
            Registry::builder(Config::from_toml(CATALOG).unwrap())
                .on_event(log.listener())
                .build()
                .unwrap(),
        );
        let resilience = Resilience::new(registry.http_client("catalog").unwrap());
        let live = Live::default();
        let server = live.script(move |request| {
            let down = request
                .url()
                .host_str()
                .is_some_and(|h| h.starts_with("down"));
            let pause = u64::from(request.url().port_or_known_default().unwrap() % 7) * 30;
            async move {
                tokio::time::sleep(ms(pause)).await;
                status(if down { 503 } else { 200 })
            }
        });
        let client = scripted(&resilience, &server);
        let urls = [
            "http://down.test/",
            "https://Down.Other.test:8443/",
            "http://[::1]:8080/up",
            "http://user:pw@up.test./",
            "https://UP.test/",
        ];
        let keys: BTreeSet<String> = urls.iter().map(|u| key(u).as_str().to_owned()).collect();
        let mut rng = SplitMix64::new(99);
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..120 {
            let target = urls[usize::try_from(rng.below_or_equal(4)).unwrap()];
            let start = rng.below_or_equal(3_000);
            let client = client.clone();
            tasks.spawn(async move {
                tokio::time::sleep(ms(start)).await;
                let _ = get(&client, target).await;
            });
        }
        // Mid-traffic: a reload that reshapes the breakers' window (a reset per host, told with
        // the host) and sends each request once.
        tokio::time::sleep(ms(1_500)).await;
        let reshaped = CATALOG
            .replace("window_calls = 50", "window = \"30s\"")
            .replace("max_attempts = 3", "max_attempts = 1");
        let reload = registry
            .reload(Config::from_toml(&reshaped).unwrap())
            .unwrap();
        assert!(reload.reset.iter().any(|n| n == "catalog"), "{reload:?}");
        while let Some(done) = tasks.join_next().await {
            done.unwrap();
        }
        let heard = log.take();
        let breaker: Vec<_> = heard.iter().filter(|h| h.0 == "breaker").collect();
        assert!(breaker.len() > 20, "{}", breaker.len());
        for (policy, name, key, kind) in &breaker {
            assert_eq!((policy.as_str(), name.as_str()), ("breaker", "catalog"));
            let key = key.as_deref().unwrap_or_else(|| panic!("no key on {kind}"));
            assert!(
                keys.contains(key),
                "{key} is not authority() of any URL sent"
            );
        }
        let opened: BTreeSet<&str> = breaker
            .iter()
            .filter(|h| h.3 == "closed -> open")
            .map(|h| h.2.as_deref().unwrap())
            .collect();
        assert_eq!(
            opened,
            BTreeSet::from(["http://down.test:80", "https://down.other.test:8443"]),
            "only the failing hosts opened"
        );
        let requests: Vec<_> = heard.iter().filter(|h| h.0 == "http_client").collect();
        let sent: BTreeSet<String> = urls.iter().map(|u| key(u).to_string()).collect();
        assert!(
            requests
                .iter()
                .all(|h| h.2.as_ref().is_some_and(|host| sent.contains(host))),
            "each request's events name its host: {requests:?}"
        );
        let endings = requests
            .iter()
            .filter(|h| h.3 != "retry" && h.3 != "BudgetExhausted")
            .count();
        assert_eq!(endings, 120, "one ending per request");
        assert_eq!(live.now(), 0);
        let bulkheads = resilience.policies().bulkheads().unwrap();
        for u in urls {
            assert_eq!(bulkheads.in_flight(&key(u)), 0);
        }

        // After the reload each request is sent once.
        let before = server.attempts();
        tokio::time::advance(secs(3600)).await;
        let _ = get(&client, "http://down.test/").await;
        assert_eq!(server.attempts() - before, 1, "the reloaded retry schedule");
    }
}

/// A script that sets the response's URL itself (a redirect's target) keeps it.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_url_the_script_sets_is_kept() {
    use reqwest::ResponseBuilderExt as _;
    let server = Scripted::new(|_request| async {
        let target = Url::parse("http://moved.test/here").unwrap();
        Ok(http::Response::builder()
            .status(200)
            .url(target)
            .header("x-kept", "1")
            .body(b"body".to_vec())
            .unwrap())
    });
    let client = scripted(&resilient(ClientPolicies::builder().no_retry()), &server);
    let answer = get(&client, "http://asked.test/").await.unwrap();
    assert_eq!(answer.url().as_str(), "http://moved.test/here");
    assert_eq!(answer.headers()["x-kept"], "1");
    assert_eq!(answer.bytes().await.unwrap().as_ref(), b"body");
}
