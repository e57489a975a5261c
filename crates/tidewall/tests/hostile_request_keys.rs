//! Hostile black-box tests, from the public docs only, of one contract: every event an HTTP
//! client tells of a request (policy `http_client`: how it ended, each `RetryScheduled`, each
//! `BudgetExhausted`) carries that request's authority in `Event::key`, as
//! `Authority::from_uri` spells it (`scheme://host:port`, lowercased, IPv6 bracketed, default
//! ports filled in), and `None` for a request without one; and each request is told of once.
//!
//! Attacks: many hosts interleaved on every runtime (both fronts) so that requests' events
//! interleave; spellings of one host; cancellation at seeded random points, mid-attempt,
//! mid-backoff, in a bulkhead queue and a rate-limit wait; a send that panics; listeners that
//! panic or call back into the client; per-request `Overrides`; budget, bulkhead, adaptive,
//! breaker, full-table and deadline refusals; a registry's `[http]` client across reloads.
//! Everything in virtual time (tokio's paused clock or `Clocked`), randomness seeded.
#![cfg(all(
    feature = "http",
    feature = "tokio",
    feature = "smol",
    feature = "async-std",
    feature = "test-util",
    feature = "tower",
    feature = "toml"
))]

mod common;
mod keyed_support;
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::io;
use std::num::NonZeroU32;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use futures_util::FutureExt as _;
use http::{Method, Request, Response};
use keyed_support::client::{
    Answer, FRONTS, Hosts, Outcome, Policies, Streaming, attempts, builder, get, request, send,
};
use keyed_support::{poll_once, secs};
use support::{Rng, maybe_cancel, ms};
use tidewall::adaptive::{AdaptiveLimiter, AnyAlgorithm, FixedLimit};
use tidewall::breaker::CircuitBreaker;
use tidewall::budget::RetryBudgetPolicy;
use tidewall::bulkhead::Bulkhead;
use tidewall::classify::Verdict;
use tidewall::config::{Config, Registry};
use tidewall::http::{
    Authority, ClientPolicies, ClientPoliciesBuilder, HttpClassifier, Outbound, Overrides,
};
use tidewall::rate::RateLimiter;
use tidewall::rt::{Clock, Runtime, Spawn, Tokio};
use tidewall::telemetry::{Event, EventKind};
use tidewall::testing::Clocked;
use tidewall::{Error, Rejected};

// ---------------------------------------------------------------------------------------------
// Support
// ---------------------------------------------------------------------------------------------

/// One event as heard, its key copied out of the borrow.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Heard {
    policy: &'static str,
    name: String,
    key: Option<String>,
    kind: String,
}

fn short(kind: EventKind<'_>) -> String {
    match kind {
        EventKind::RetryScheduled { attempt, delay } => format!("retry {attempt} {delay:?}"),
        EventKind::Rejected(why) => format!("rejected {}", why.kind()),
        EventKind::StateChanged(change) => format!("{} -> {}", change.from, change.to),
        EventKind::Waited(_) => "waited".to_owned(),
        EventKind::HedgeLaunched { .. } => "hedge".to_owned(),
        other => format!("{other:?}"),
    }
}

fn heard(event: &Event<'_>) -> Heard {
    Heard {
        policy: event.policy,
        name: event.name.to_owned(),
        key: event.key.map(str::to_owned),
        kind: short(event.kind),
    }
}

#[derive(Default, Clone)]
struct Log(Arc<Mutex<Vec<Heard>>>);

impl Log {
    fn listener(&self) -> impl Fn(&Event<'_>) + Send + Sync + 'static {
        let log = self.clone();
        move |event: &Event<'_>| log.push(event)
    }

    fn push(&self, event: &Event<'_>) {
        let line = heard(event);
        self.0.lock().unwrap().push(line);
    }

    fn take(&self) -> Vec<Heard> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

/// A listener that logs every event in `log`, and panics with `message` the first time `at`
/// holds for one.
fn panicking_once(
    log: &Log,
    at: impl Fn(&Event<'_>) -> bool + Send + Sync + 'static,
    message: &'static str,
) -> impl Fn(&Event<'_>) + Send + Sync + 'static {
    let (log, fired) = (log.clone(), AtomicBool::new(false));
    move |event: &Event<'_>| {
        log.push(event);
        if at(event) && !fired.swap(true, Ordering::SeqCst) {
            panic!("{message}");
        }
    }
}

/// The key a request to `uri` must be told of with: `Authority::from_uri`'s spelling.
fn key(uri: &str) -> Option<String> {
    let uri: http::Uri = uri.parse().unwrap();
    Authority::from_uri(&uri).map(|a| a.as_str().to_owned())
}

fn some(key: &str) -> Option<String> {
    Some(key.to_owned())
}

/// The `http_client` events heard, by key, each key's kinds in order.
fn by_key(heard: &[Heard]) -> BTreeMap<Option<String>, Vec<String>> {
    let mut map: BTreeMap<Option<String>, Vec<String>> = BTreeMap::new();
    for h in heard.iter().filter(|h| h.policy == "http_client") {
        map.entry(h.key.clone()).or_default().push(h.kind.clone());
    }
    map
}

/// The kinds told of the requests to `uri`'s authority.
fn of(heard: &[Heard], uri: &str) -> Vec<String> {
    by_key(heard).remove(&key(uri)).unwrap_or_default()
}

fn is_ending(kind: &str) -> bool {
    matches!(
        kind,
        "Succeeded" | "Failed" | "Ignored" | "TimedOut" | "Cancelled"
    ) || kind.starts_with("rejected ")
}

/// One request's events: retries numbered 1, 2, ... and budget refusals, then exactly one
/// ending, last.
fn assert_one_request(kinds: &[String], what: &str) {
    let endings = kinds.iter().filter(|k| is_ending(k)).count();
    assert_eq!(endings, 1, "{what}: exactly one ending: {kinds:?}");
    assert!(
        is_ending(kinds.last().unwrap()),
        "{what}: the ending is last: {kinds:?}"
    );
    let mut next = 1;
    for kind in &kinds[..kinds.len() - 1] {
        if let Some(rest) = kind.strip_prefix("retry ") {
            let attempt: u32 = rest.split(' ').next().unwrap().parse().unwrap();
            assert_eq!(attempt, next, "{what}: retries in order: {kinds:?}");
            next += 1;
        } else {
            assert_eq!(kind, "BudgetExhausted", "{what}: {kinds:?}");
        }
    }
}

fn reply(code: u16) -> Result<Response<()>, io::Error> {
    Ok(Response::builder().status(code).body(()).unwrap())
}

type Boxed<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;
type Reply = Result<Response<()>, io::Error>;

/// A host's answers: a 503, then a 200.
const FAILS_ONCE: [Answer; 2] = [Answer::Status(503), Answer::Status(200)];

/// Three attempts 10 ms apart, 100 ms attempts, 5 s deadline, no budget, no breaker, the
/// standard bulkhead: on the default runtime (tokio, paused in these tests).
fn base(name: &str) -> ClientPoliciesBuilder {
    ClientPolicies::builder()
        .name(name.to_owned())
        .retry(attempts(3))
        .attempt_timeout(Some(ms(100)))
        .deadline(Some(secs(5)))
        .retry_budget(None)
        .breaker(None)
}

/// `base(name)` with one slot per host and no queue: a second request to a busy host is
/// refused.
fn one_slot_per_host(name: &str) -> ClientPoliciesBuilder {
    base(name).bulkhead(Some(Bulkhead::builder(1).reject_when_full()))
}

async fn go(
    policies: &ClientPolicies,
    hosts: &Hosts<Tokio>,
    request: Request<String>,
    overrides: Overrides,
) -> Outcome {
    policies
        .run(request, overrides, |request| hosts.send(request))
        .await
}

/// `go` with a GET of `uri` and no overrides: the request is built now, sent once polled.
fn fetch<'a>(
    policies: &'a ClientPolicies,
    hosts: &'a Hosts<Tokio>,
    uri: &str,
) -> impl Future<Output = Outcome> + use<'a> {
    go(policies, hosts, get(uri), Overrides::new())
}

/// `fetch` on a task of its own.
fn spawn_fetch(
    policies: &ClientPolicies,
    hosts: &Hosts<Tokio>,
    uri: &'static str,
) -> tokio::task::JoinHandle<Outcome> {
    let (policies, hosts) = (policies.clone(), hosts.clone());
    tokio::spawn(async move { fetch(&policies, &hosts, uri).await })
}

/// Runs `fut` once the task has given the others a turn (a request started beside another
/// one meets it already in flight).
async fn after_a_turn<F: Future>(fut: F) -> F::Output {
    tokio::task::yield_now().await;
    fut.await
}

/// A request to `first` and, once it is in flight, one to `second` (the same host, spelled
/// another way or not): with one slot for the host, the second is refused.
async fn one_then_another(
    policies: &ClientPolicies,
    hosts: &Hosts<Tokio>,
    first: &str,
    second: &str,
) -> (Outcome, Outcome) {
    tokio::join!(
        fetch(policies, hosts, first),
        after_a_turn(fetch(policies, hosts, second))
    )
}

/// `request` sent through `policies` to a send that answers 200 at once.
fn answered<'a>(
    policies: &'a ClientPolicies,
    request: Request<String>,
) -> impl Future<Output = Outcome> + use<'a> {
    policies.run(request, Overrides::new(), |_request| async { reply(200) })
}

/// `answered` for a GET of `uri`, boxed, its request built once polled: a request a
/// listener may start on the client it is told of.
fn answered_later(policies: ClientPolicies, uri: &'static str) -> Boxed<Outcome> {
    Box::pin(async move { answered(&policies, get(uri)).await })
}

/// `base("paced")` with a deadline of `deadline` and one request per host every 10 s, with no
/// jitter.
fn paced(deadline: Duration) -> ClientPoliciesBuilder {
    let one_per_ten_secs = RateLimiter::builder(1, secs(10)).jitter(Duration::ZERO);
    base("paced")
        .deadline(Some(deadline))
        .rate_limit(Some(one_per_ten_secs.keyed()))
}

/// Asserts that `log` heard, since it was last taken, of requests under one key only, `key`,
/// told of as `kinds`.
#[track_caller]
fn assert_only_heard(log: &Log, key: Option<&str>, kinds: &[&str]) {
    let kinds = kinds.iter().map(|&kind| kind.to_owned()).collect();
    assert_eq!(
        by_key(&log.take()),
        BTreeMap::from([(key.map(str::to_owned), kinds)])
    );
}

/// `settings` built with a listener that logs what it hears: the log and the client.
fn logged<R: Clock>(settings: ClientPoliciesBuilder<R>) -> (Log, ClientPolicies<R>) {
    let log = Log::default();
    let policies = settings.on_event(log.listener()).build().unwrap();
    (log, policies)
}

/// `builder`'s client on `rt`, named `name`, that ignores 4xx answers; logged.
fn ignoring_4xx<R: Runtime>(rt: &Clocked<R>, name: &'static str) -> (Log, Policies<R>) {
    let classifier = HttpClassifier::standard().client_errors(Verdict::Ignored);
    logged(builder(rt, 1_000).name(name).classifier(classifier))
}

fn code(outcome: &Outcome) -> Option<u16> {
    outcome.as_ref().ok().map(|r| r.status().as_u16())
}

// ---------------------------------------------------------------------------------------------
// 1. Interleaved hosts on every runtime, both fronts: each event names its own request's host.
// ---------------------------------------------------------------------------------------------

/// The kinds a request meeting `answers` in turn must be told of (3 attempts 10 ms apart,
/// 100 ms attempt timeout, 4xx ignored), and the status it gets (`None`: an error).
fn model(answers: &[Answer; 3]) -> (Vec<String>, Option<u16>) {
    let mut kinds = Vec::new();
    for (n, answer) in answers.iter().enumerate() {
        let last = n == 2;
        let (ending, status) = match *answer {
            Answer::Status(200) => return (push(kinds, "Succeeded"), Some(200)),
            Answer::Slow(wait) if wait < ms(100) => return (push(kinds, "Succeeded"), Some(200)),
            Answer::Status(404) => return (push(kinds, "Ignored"), Some(404)),
            Answer::Status(501) => return (push(kinds, "Failed"), Some(501)),
            Answer::Status(503) => ("Failed", Some(503)),
            Answer::Refused => ("Failed", None),
            Answer::Slow(_) => ("TimedOut", None),
            other => unreachable!("{other:?}"),
        };
        if last {
            return (push(kinds, ending), status);
        }
        kinds.push(format!("retry {} 10ms", n + 1));
    }
    unreachable!()
}

fn push(mut kinds: Vec<String>, kind: &str) -> Vec<String> {
    kinds.push(kind.to_owned());
    kinds
}

const MENU: [Answer; 8] = [
    Answer::Status(200),
    Answer::Status(404),
    Answer::Status(501),
    Answer::Status(503),
    Answer::Status(503),
    Answer::Refused,
    Answer::Slow(Duration::from_millis(150)),
    Answer::Slow(Duration::from_millis(40)),
];

/// Three answers drawn from `MENU`.
fn from_the_menu(rng: &mut Rng) -> [Answer; 3] {
    [0; 3].map(|_| MENU[usize::try_from(rng.below(MENU.len() as u64)).unwrap()])
}

async fn interleaved_hosts_name_their_own_requests<R: Runtime>(rt: Clocked<R>) {
    let mut rng = Rng::new(0x5eed_0001);
    for front in FRONTS {
        let (log, policies) = ignoring_4xx(&rt, "mesh");
        let hosts = Hosts::new(&rt);
        let mut expected = BTreeMap::new();
        let mut tasks = Vec::new();
        for i in 0..24u16 {
            let port = 8_000 + i;
            let host = format!("h{i}.example");
            // Every other request spells its host in capitals: the key is lowercased.
            let spelled = if i % 2 == 0 {
                host.to_uppercase()
            } else {
                host.clone()
            };
            let uri = format!("http://{spelled}:{port}/p/{i}?q={i}");
            let answers = from_the_menu(&mut rng);
            hosts.play(&format!("{host}:{port}"), answers);
            let want = format!("http://{host}:{port}");
            assert_eq!(key(&uri).as_deref(), Some(want.as_str()));
            expected.insert(want.clone(), (uri.clone(), answers, model(&answers)));
            tasks.push((
                want,
                keyed_support::client::spawn_send(&rt, front, &policies, &hosts, get(&uri)),
            ));
        }
        // One request with no authority among them, retried once.
        hosts.play("relative", [Answer::Refused, Answer::Slow(ms(60))]);
        let relative =
            keyed_support::client::spawn_send(&rt, front, &policies, &hosts, get("/no/authority"));
        let mut outcomes = BTreeMap::new();
        for (want, task) in tasks {
            outcomes.insert(want, task.await.unwrap());
        }
        assert_eq!(code(&relative.await.unwrap()), Some(200), "{front:?}");
        let heard = log.take();
        assert!(
            heard
                .iter()
                .all(|h| h.policy == "http_client" && h.name == "mesh"),
            "{front:?}: {heard:#?}"
        );
        let mut told = by_key(&heard);
        assert_eq!(
            told.remove(&None).unwrap_or_default(),
            ["retry 1 10ms", "Succeeded"],
            "{front:?}: only the relative request names no key: {heard:#?}"
        );
        for (want, (uri, answers, (kinds, status))) in &expected {
            let outcome = &outcomes[want];
            let got = told.remove(&some(want)).unwrap_or_default();
            assert_eq!(
                &got, kinds,
                "{front:?}: {uri} answering {answers:?} is told of under its own key"
            );
            assert_eq!(code(outcome), *status, "{front:?}: {uri}: {outcome:?}");
        }
        assert!(told.is_empty(), "{front:?}: keys no request had: {told:#?}");
    }
}

#[test]
fn interleaved_hosts_name_their_own_requests_on_every_runtime() {
    on_every_runtime!(interleaved_hosts_name_their_own_requests);
}

// ---------------------------------------------------------------------------------------------
// 2. Seeded random drops on every runtime, both fronts.
// ---------------------------------------------------------------------------------------------

async fn random_drops_keep_every_event_keyed<R: Runtime>(rt: Clocked<R>) {
    let mut rng = Rng::new(0xdead_beef_0002);
    for front in FRONTS {
        // What the seeds covered: never polled (if ever), cancelled in the first attempt,
        // cancelled after a retry, ended.
        let mut covered = [0u32; 4];
        for round in 0..3u16 {
            let (log, policies) = ignoring_4xx(&rt, "dropped");
            let hosts = Hosts::new(&rt);
            let mut tasks = Vec::new();
            for i in 0..16u16 {
                let host = format!("r{round}-{i}.example");
                let port = 9_000 + i;
                let answers = from_the_menu(&mut rng);
                hosts.play(&format!("{host}:{port}"), answers);
                let uri = format!("http://{host}:{port}/");
                let draw = rng.next();
                let (rt2, policies, hosts) = (rt.clone(), policies.clone(), hosts.clone());
                let request = get(&uri);
                tasks.push((
                    uri,
                    format!("{host}:{port}"),
                    rt.spawn(async move {
                        maybe_cancel(&rt2, draw, send(front, &policies, &hosts, request)).await
                    }),
                ));
            }
            let mut results = Vec::new();
            for (uri, host, task) in tasks {
                results.push((uri, host, task.await.unwrap()));
            }
            let heard = log.take();
            let mut told = by_key(&heard);
            assert!(!told.contains_key(&None), "{front:?}: {told:#?}");
            for (uri, host, result) in results {
                let what = format!("{front:?} round {round} {uri} -> {result:?}");
                let kinds = told.remove(&key(&uri)).unwrap_or_default();
                let seen = hosts.seen(&host);
                if kinds.is_empty() {
                    // Dropped before its first poll: it never started.
                    assert!(result.is_none(), "{what}: an ended request was told of");
                    covered[0] += 1;
                    assert_eq!(seen, 0, "{what}: sent, yet told of nothing");
                    continue;
                }
                assert_one_request(&kinds, &what);
                let retries =
                    u32::try_from(kinds.iter().filter(|k| k.starts_with("retry ")).count())
                        .unwrap();
                let ending = kinds.last().unwrap().as_str();
                match &result {
                    None => {
                        covered[if retries == 0 { 1 } else { 2 }] += 1;
                        assert_eq!(ending, "Cancelled", "{what}: {kinds:?}");
                        assert!(
                            seen == retries || seen == retries + 1,
                            "{what}: {seen} sends"
                        );
                    }
                    Some(outcome) => {
                        let want = match outcome {
                            Ok(r) if r.status().as_u16() == 200 => "Succeeded".to_owned(),
                            Ok(r) if r.status().as_u16() == 404 => "Ignored".to_owned(),
                            Ok(_) => "Failed".to_owned(),
                            Err(Error::TimedOut) => "TimedOut".to_owned(),
                            Err(Error::Rejected(why)) => format!("rejected {}", why.kind()),
                            Err(_) => "Failed".to_owned(),
                        };
                        covered[3] += 1;
                        assert_eq!(ending, want, "{what}: {kinds:?}");
                        assert_eq!(seen, retries + 1, "{what}: {kinds:?}");
                    }
                }
            }
            assert!(told.is_empty(), "{front:?}: keys no request had: {told:#?}");
        }
        assert!(
            covered[1..].iter().all(|&n| n > 0),
            "{front:?}: the seeds cover every case: {covered:?}"
        );
    }
}

#[test]
fn random_drops_keep_every_event_keyed_on_every_runtime() {
    on_every_runtime!(random_drops_keep_every_event_keyed);
}

/// Many requests share a few hosts (their events share keys), each dropped at a seeded time
/// after its first poll or not at all: per host, as many endings as requests, each of the
/// kind its request's result says.
async fn shared_hosts_tell_one_ending_per_request<R: Runtime>(rt: Clocked<R>) {
    let mut rng = Rng::new(0x0005_4a2e_d003);
    for front in FRONTS {
        let (log, policies) = ignoring_4xx(&rt, "shared");
        let hosts = Hosts::new(&rt);
        let names = ["alpha.example:80", "beta.example:8080", "[::1]:80"];
        let scripts: [[Answer; 5]; 3] = [
            [
                Answer::Slow(ms(40)),
                Answer::Status(503),
                Answer::Slow(ms(150)),
                Answer::Status(200),
                Answer::Refused,
            ],
            [
                Answer::Status(503),
                Answer::Slow(ms(150)),
                Answer::Status(404),
                Answer::Slow(ms(40)),
                Answer::Status(501),
            ],
            [
                Answer::Slow(ms(150)),
                Answer::Slow(ms(150)),
                Answer::Status(200),
                Answer::Status(503),
                Answer::Slow(ms(40)),
            ],
        ];
        for (name, script) in names.into_iter().zip(scripts) {
            hosts.script(name, move |n| script[n as usize % script.len()]);
        }
        let mut tasks = Vec::new();
        for i in 0..60u64 {
            let name = names[(i % 3) as usize];
            let uri = format!("http://{name}/{i}");
            let after = ms(1 + rng.below(250));
            let keep = rng.chance(3);
            let (rt2, policies, hosts) = (rt.clone(), policies.clone(), hosts.clone());
            let request = get(&uri);
            tasks.push((
                key(&uri).unwrap(),
                rt.spawn(async move {
                    let sent = send(front, &policies, &hosts, request);
                    if keep {
                        Some(sent.await)
                    } else {
                        keyed_support::client::drop_after(&rt2, after, sent).await
                    }
                }),
            ));
        }
        let mut want: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (k, task) in tasks {
            let ending = match task.await.unwrap() {
                None => "Cancelled".to_owned(),
                Some(Ok(r)) if r.status().as_u16() == 200 => "Succeeded".to_owned(),
                Some(Ok(r)) if r.status().as_u16() == 404 => "Ignored".to_owned(),
                Some(Ok(_)) | Some(Err(Error::Inner(_))) => "Failed".to_owned(),
                Some(Err(Error::TimedOut)) => "TimedOut".to_owned(),
                Some(Err(Error::Rejected(why))) => format!("rejected {}", why.kind()),
                Some(Err(other)) => panic!("{other:?}"),
            };
            want.entry(k).or_default().push(ending);
        }
        let cancelled = want
            .values()
            .flatten()
            .filter(|e| *e == "Cancelled")
            .count();
        assert!(
            cancelled > 0 && cancelled < 60,
            "{front:?}: the seed drops some: {want:?}"
        );
        let heard = log.take();
        let told = by_key(&heard);
        assert_eq!(told.len(), 3, "{front:?}: {told:#?}");
        for (k, mut endings) in want {
            let mut got: Vec<String> = told[&Some(k.clone())]
                .iter()
                .filter(|kind| is_ending(kind))
                .cloned()
                .collect();
            got.sort();
            endings.sort();
            assert_eq!(
                got, endings,
                "{front:?} {k}: one ending per request, as it ended"
            );
        }
    }
}

#[test]
fn shared_hosts_tell_one_ending_per_request_on_every_runtime() {
    on_every_runtime!(shared_hosts_tell_one_ending_per_request);
}

// ---------------------------------------------------------------------------------------------
// 3. Spellings of a host, and requests without an authority.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn every_spelling_is_keyed_as_authority_from_uri_spells_it() {
    let breaker_log = Log::default();
    let (log, policies) = logged(
        base("spelt").breaker(Some(
            CircuitBreaker::builder()
                .consecutive_failures(1_000)
                .on_event(breaker_log.listener()),
        )),
    );
    let long_v6 = key("http://[0:0:0:0:0:0:0:1]/");
    let mapped_v4 = key("http://[::ffff:192.0.2.1]/");
    let upper_scheme = key("GOPHER://Old.example:70/");
    let padded_port = key("http://Zero.example:0080/");
    // (uri, the key the docs spell for it)
    let cases: &[(&str, Option<&str>)] = &[
        ("http://Example.COM/", Some("http://example.com:80")),
        ("http://example.com:80/x", Some("http://example.com:80")),
        ("HTTP://EXAMPLE.COM:80", Some("http://example.com:80")),
        ("http://example.com", Some("http://example.com:80")),
        ("https://Example.com/", Some("https://example.com:443")),
        (
            "https://example.com:443/a?b=c",
            Some("https://example.com:443"),
        ),
        ("https://example.com:80/", Some("https://example.com:80")),
        ("ws://Sock.example/", Some("ws://sock.example:80")),
        ("wss://sock.example/", Some("wss://sock.example:443")),
        ("ftp://files.example/pub", Some("ftp://files.example:21")),
        ("http://[::1]/", Some("http://[::1]:80")),
        ("http://[::1]:80/", Some("http://[::1]:80")),
        ("http://[FE80::AbC]:8080/", Some("http://[fe80::abc]:8080")),
        ("http://127.0.0.1/", Some("http://127.0.0.1:80")),
        ("http://host.example./", Some("http://host.example.:80")),
        (
            "http://user:secret@creds.example:8080/",
            Some("http://creds.example:8080"),
        ),
        ("gopher://old.example:70/", Some("gopher://old.example:70")),
        ("GOPHER://Old.example:70/", upper_scheme.as_deref()),
        ("http://Zero.example:0080/", padded_port.as_deref()),
        // No default port for the scheme: no authority, as `Authority::new` documents.
        ("gopher://old.example/", None),
        ("/relative/path", None),
        // Spellings whose key the docs leave to `Authority::from_uri`.
        ("http://[0:0:0:0:0:0:0:1]/", long_v6.as_deref()),
        ("http://[::ffff:192.0.2.1]/", mapped_v4.as_deref()),
    ];
    for &(uri, want) in cases {
        assert_eq!(key(uri).as_deref(), want, "Authority::from_uri({uri})");
        let response = answered(&policies, get(uri)).await;
        assert_eq!(code(&response), Some(200), "{uri}");
        let heard = log.take();
        assert_eq!(
            heard,
            [Heard {
                policy: "http_client",
                name: "spelt".to_owned(),
                key: want.map(str::to_owned),
                kind: "Succeeded".to_owned(),
            }],
            "{uri}"
        );
        if let Some(k) = want {
            assert!(!k.contains("secret") && !k.contains('@'), "{k}");
            // The host's breaker heard the same key.
            let breaker: Vec<Option<String>> =
                breaker_log.take().into_iter().map(|h| h.key).collect();
            assert_eq!(breaker, [some(k)], "{uri}: the breaker's key");
        } else {
            assert!(breaker_log.take().is_empty(), "{uri}: no per-host stage");
        }
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn requests_without_an_authority_name_no_key_beside_ones_that_have_one() {
    let (log, policies) = logged(base("mixed"));
    let hosts = Hosts::new(&Tokio);
    hosts.play("relative", [Answer::Status(503), Answer::Slow(ms(30))]);
    hosts.play("a.example:80", [Answer::Status(503), Answer::Slow(ms(5))]);
    hosts.play("b.example:80", [Answer::Status(503)]);
    let (relative, asterisk, a, b, no_port) = tokio::join!(
        fetch(&policies, &hosts, "/items"),
        // Asterisk-form: no authority either.
        answered(&policies, request(Method::OPTIONS, "*")),
        fetch(&policies, &hosts, "http://A.example/"),
        fetch(&policies, &hosts, "http://b.example:80/"),
        answered(&policies, get("gopher://b.example/")),
    );
    assert_eq!(code(&relative), Some(200));
    assert_eq!(code(&asterisk), Some(200));
    assert_eq!(code(&a), Some(200));
    assert_eq!(code(&b), Some(503));
    assert_eq!(code(&no_port), Some(200));
    assert_eq!(key("*"), None);
    let heard = log.take();
    let told = by_key(&heard);
    // The three requests without an authority: one retried, two not. Their events interleave
    // with the others', so only their multiset is fixed.
    let mut none = told.get(&None).cloned().unwrap_or_default();
    none.sort();
    assert_eq!(
        none,
        ["Succeeded", "Succeeded", "Succeeded", "retry 1 10ms"],
        "{heard:#?}"
    );
    assert_eq!(
        told.get(&some("http://a.example:80"))
            .cloned()
            .unwrap_or_default(),
        ["retry 1 10ms", "Succeeded"]
    );
    assert_eq!(
        told.get(&some("http://b.example:80"))
            .cloned()
            .unwrap_or_default(),
        ["retry 1 10ms", "retry 2 10ms", "Failed"]
    );
    assert_eq!(told.len(), 3, "{told:#?}");
}

// ---------------------------------------------------------------------------------------------
// 4. A request type of one's own: the key is its `Outbound::authority`.
// ---------------------------------------------------------------------------------------------

/// A request whose authority is whatever it says, whatever its URI.
struct Routed {
    inner: Request<String>,
    authority: Option<Authority>,
}

impl Outbound for Routed {
    fn method(&self) -> &Method {
        self.inner.method()
    }
    fn headers(&self) -> &http::HeaderMap {
        self.inner.headers()
    }
    fn authority(&self) -> Option<Authority> {
        self.authority.clone()
    }
    fn try_clone(&self) -> Option<Self> {
        Some(Self {
            inner: self.inner.clone(),
            authority: self.authority.clone(),
        })
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_request_of_ones_own_is_keyed_by_its_outbound_authority() {
    let (log, policies) = logged(base("own"));
    let routed = Authority::new("HTTPS", "Other.Example", Some(8443));
    let routed_key = routed.as_ref().map(|a| a.as_str().to_owned());
    assert!(routed_key.is_some());
    let sends = Mutex::new(Vec::new());
    let outcome = policies
        .run(
            Routed {
                inner: get("http://uri.example/"),
                authority: routed.clone(),
            },
            Overrides::new(),
            |r: Routed| {
                let n = {
                    let mut sends = sends.lock().unwrap();
                    sends.push(r.inner.uri().to_string());
                    sends.len()
                };
                async move { reply(if n < 2 { 503 } else { 200 }) }
            },
        )
        .await;
    assert_eq!(code(&outcome), Some(200));
    let heard = log.take();
    let told = by_key(&heard);
    assert_eq!(
        told.get(&routed_key).cloned().unwrap_or_default(),
        ["retry 1 10ms", "Succeeded"],
        "keyed by Outbound::authority, not the URI: {heard:#?}"
    );
    assert_eq!(told.len(), 1, "{told:#?}");

    // An absolute URI whose request says it has no authority: no key.
    let outcome = policies
        .run(
            Routed {
                inner: get("http://uri.example/"),
                authority: None,
            },
            Overrides::new(),
            |_r: Routed| async { reply(200) },
        )
        .await;
    assert_eq!(code(&outcome), Some(200));
    assert_only_heard(&log, None, &["Succeeded"]);

    // A body that cannot be copied: sent once, its failure keyed.
    let outcome = policies
        .run(
            Streaming(get("http://Stream.example:81/")),
            Overrides::new(),
            |_r: Streaming| async { reply(503) },
        )
        .await;
    assert_eq!(code(&outcome), Some(503));
    assert_only_heard(&log, Some("http://stream.example:81"), &["Failed"]);
}

// ---------------------------------------------------------------------------------------------
// 5. Drops at known points: mid-attempt, mid-backoff, queued, waiting for the rate limit.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_request_dropped_anywhere_is_cancelled_under_its_key() {
    let (log, policies) =
        logged(base("drops").bulkhead(Some(Bulkhead::builder(1).max_queue(4).max_wait(secs(10)))));
    let hosts = Hosts::new(&Tokio);

    // Mid-backoff: its first attempt failed; it is dropped while it sleeps 10 ms.
    hosts.play("backoff.example:80", FAILS_ONCE);
    let cut =
        tokio::time::timeout(ms(5), fetch(&policies, &hosts, "http://backoff.example/")).await;
    assert!(cut.is_err());
    // Mid-attempt.
    hosts.play("slow.example:80", [Answer::Slow(secs(1))]);
    let cut = tokio::time::timeout(ms(50), fetch(&policies, &hosts, "http://slow.example/")).await;
    assert!(cut.is_err());
    // Never polled: never started, told of nothing.
    drop(fetch(&policies, &hosts, "http://never.example/"));
    // Queued behind another request to its host, dropped while it waits for the slot.
    hosts.play("queue.example:80", [Answer::Slow(ms(80))]);
    let holder = fetch(&policies, &hosts, "http://queue.example/");
    let waiter = async {
        tokio::task::yield_now().await;
        tokio::time::timeout(ms(20), fetch(&policies, &hosts, "http://queue.example/")).await
    };
    let (held, waited) = tokio::join!(holder, waiter);
    assert_eq!(code(&held), Some(200));
    assert!(waited.is_err());
    assert_eq!(hosts.seen("queue.example:80"), 1);
    assert_eq!(hosts.seen("never.example:80"), 0);

    let heard = log.take();
    assert_eq!(
        of(&heard, "http://backoff.example/"),
        ["retry 1 10ms", "Cancelled"]
    );
    assert_eq!(of(&heard, "http://slow.example/"), ["Cancelled"]);
    assert_eq!(of(&heard, "http://never.example/"), Vec::<String>::new());
    assert_eq!(
        of(&heard, "http://queue.example/"),
        ["Cancelled", "Succeeded"]
    );
    assert_eq!(by_key(&heard).len(), 3, "{heard:#?}");

    // Waiting for a rate limit's token.
    let (log, limited) = logged(paced(secs(30)));
    assert_eq!(
        code(&fetch(&limited, &hosts, "http://paced.example/").await),
        Some(200)
    );
    let cut =
        tokio::time::timeout(secs(1), fetch(&limited, &hosts, "http://PACED.example:80/")).await;
    assert!(cut.is_err(), "{cut:?}");
    assert_eq!(hosts.seen("paced.example:80"), 1);
    assert_only_heard(
        &log,
        Some("http://paced.example:80"),
        &["Succeeded", "Cancelled"],
    );
}

// ---------------------------------------------------------------------------------------------
// 6. A send that panics.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_send_that_panics_is_cancelled_under_its_key() {
    let (log, policies) = logged(
        base("panicky").breaker(Some(
            CircuitBreaker::builder()
                .no_failure_rate()
                .consecutive_failures(3),
        )),
    );

    // The send panics as it is called.
    let sync = AssertUnwindSafe(policies.run(
        get("http://Sync.example/"),
        Overrides::new(),
        |_r: Request<String>| -> Boxed<Reply> { panic!("send panicked as called") },
    ))
    .catch_unwind()
    .await;
    assert!(sync.is_err());
    // The send's future panics when polled.
    let polled = AssertUnwindSafe(policies.run(
        get("http://polled.example:8080/"),
        Overrides::new(),
        |_r: Request<String>| -> Boxed<Reply> {
            Box::pin(async {
                if true {
                    panic!("send panicked when polled");
                }
                reply(200)
            })
        },
    ))
    .catch_unwind()
    .await;
    assert!(polled.is_err());
    // The first attempt fails; the retry's send panics after a slow start.
    let calls = Mutex::new(0);
    let second = AssertUnwindSafe(policies.run(
        get("https://second.example/"),
        Overrides::new(),
        |_r: Request<String>| -> Boxed<Reply> {
            let n = {
                let mut calls = calls.lock().unwrap();
                *calls += 1;
                *calls
            };
            Box::pin(async move {
                if n == 2 {
                    tokio::time::sleep(ms(5)).await;
                    panic!("the retry's send panicked");
                }
                reply(503)
            })
        },
    ))
    .catch_unwind()
    .await;
    assert!(second.is_err());

    let heard = log.take();
    assert_eq!(
        of(&heard, "http://sync.example/"),
        ["Cancelled"],
        "{heard:#?}"
    );
    assert_eq!(
        of(&heard, "http://polled.example:8080/"),
        ["Cancelled"],
        "{heard:#?}"
    );
    assert_eq!(
        of(&heard, "https://second.example/"),
        ["retry 1 10ms", "Cancelled"],
        "{heard:#?}"
    );
    assert_eq!(by_key(&heard).len(), 3, "{heard:#?}");

    // The hosts serve again, their events keyed.
    for uri in [
        "http://sync.example/",
        "http://polled.example:8080/",
        "https://second.example/",
    ] {
        let outcome = answered(&policies, get(uri)).await;
        assert_eq!(code(&outcome), Some(200), "{uri}");
        assert_eq!(of(&log.take(), uri), ["Succeeded"], "{uri}");
    }
}

// ---------------------------------------------------------------------------------------------
// 7. Listeners that panic.
// ---------------------------------------------------------------------------------------------

/// The listener panics once at a `RetryScheduled` of `boom`: that request is unwound and then
/// dropped, so it is told of as cancelled (it never ended otherwise); a neighbour in flight
/// meanwhile, and later requests, are keyed as ever.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_listener_panicking_at_a_retry_leaves_every_request_keyed() {
    let log = Log::default();
    let listener = panicking_once(
        &log,
        |event: &Event<'_>| {
            matches!(event.kind, EventKind::RetryScheduled { .. })
                && event.key == Some("http://boom.example:80")
        },
        "listener panicked at a retry",
    );
    let policies = base("boom").on_event(listener).build().unwrap();
    let hosts = Hosts::new(&Tokio);
    hosts.play("boom.example:80", FAILS_ONCE);
    hosts.play(
        "calm.example:80",
        [Answer::Status(503), Answer::Slow(ms(30))],
    );
    let calm = spawn_fetch(&policies, &hosts, "http://calm.example/");
    tokio::task::yield_now().await;
    let boom = AssertUnwindSafe(fetch(&policies, &hosts, "http://boom.example/"))
        .catch_unwind()
        .await;
    assert!(boom.is_err(), "the listener's panic unwinds into the call");
    assert_eq!(code(&calm.await.unwrap()), Some(200));
    let heard = log.take();
    assert_eq!(
        of(&heard, "http://calm.example/"),
        ["retry 1 10ms", "Succeeded"],
        "{heard:#?}"
    );
    assert_eq!(
        of(&heard, "http://boom.example/"),
        ["retry 1 10ms", "Cancelled"],
        "unwound at its retry and dropped: told of once, as cancelled: {heard:#?}"
    );
    assert_eq!(by_key(&heard).len(), 2, "{heard:#?}");

    // The same host again: served, keyed.
    let again = fetch(&policies, &hosts, "http://BOOM.example/").await;
    assert_eq!(code(&again), Some(200));
    assert_only_heard(&log, Some("http://boom.example:80"), &["Succeeded"]);
}

/// The listener panics at a request's ending: the request was told of; the unwound future's
/// drop must not tell of it a second time (as `Cancelled`).
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_listener_panicking_at_the_ending_is_not_told_a_second_ending() {
    let log = Log::default();
    let panicked = Arc::new(Mutex::new(BTreeSet::<String>::new()));
    let listener = {
        let (log, panicked) = (log.clone(), Arc::clone(&panicked));
        move |event: &Event<'_>| {
            log.push(event);
            let Some(key) = event.key else { return };
            if key.contains("panic") && is_ending(&short(event.kind)) {
                let first = panicked.lock().unwrap().insert(key.to_owned());
                if first {
                    panic!("listener panicked at {key}'s ending");
                }
            }
        }
    };
    let classifier = HttpClassifier::standard().client_errors(Verdict::Ignored);
    let policies = base("ending")
        .classifier(classifier)
        .on_event(listener)
        .build()
        .unwrap();
    let hosts = Hosts::new(&Tokio);
    hosts.play("ok-panic.example:80", [Answer::Status(200)]);
    hosts.play("fail-panic.example:80", [Answer::Status(503)]);
    hosts.play("ignored-panic.example:80", [Answer::Status(404)]);
    hosts.play("slow-panic.example:80", [Answer::Slow(secs(1))]);
    hosts.play("retried-panic.example:80", FAILS_ONCE);
    let cases = [
        ("http://ok-panic.example/", vec!["Succeeded"]),
        ("http://fail-panic.example/", vec!["Failed"]),
        ("http://ignored-panic.example/", vec!["Ignored"]),
        ("http://slow-panic.example/", vec!["TimedOut"]),
        (
            "http://retried-panic.example/",
            vec!["retry 1 10ms", "Succeeded"],
        ),
    ];
    for (uri, want) in &cases {
        let overrides = if uri.contains("retried") {
            Overrides::new()
        } else {
            Overrides::new().no_retry()
        };
        let outcome = AssertUnwindSafe(go(&policies, &hosts, get(uri), overrides))
            .catch_unwind()
            .await;
        assert!(outcome.is_err(), "{uri}: the listener's panic unwinds");
        let heard = log.take();
        assert_eq!(&of(&heard, uri), want, "{uri}: told of once: {heard:#?}");
        assert_eq!(by_key(&heard).len(), 1, "{heard:#?}");
    }
    assert_eq!(panicked.lock().unwrap().len(), cases.len());
}

/// The listener panics when told a request was cancelled (dropped mid-attempt, outside any
/// unwinding): the panic comes out of the drop, into the code that dropped it. The host is
/// left serving (its only bulkhead slot given back), and nothing else is told of that
/// request.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_listener_panicking_at_a_cancellation_leaves_the_host_serving() {
    let log = Log::default();
    let listener = panicking_once(
        &log,
        |event: &Event<'_>| matches!(event.kind, EventKind::Cancelled),
        "listener panicked at a cancellation",
    );
    let policies = one_slot_per_host("dropcancel")
        .on_event(listener)
        .build()
        .unwrap();
    let hosts = Hosts::new(&Tokio);
    hosts.play(
        "gone.example:80",
        [Answer::Slow(secs(1)), Answer::Status(200)],
    );
    let mut pending = Box::pin(fetch(&policies, &hosts, "http://gone.example/"));
    assert!(poll_once(pending.as_mut()).is_pending());
    let dropped = std::panic::catch_unwind(AssertUnwindSafe(move || drop(pending)));
    assert!(
        dropped.is_err(),
        "the listener's panic comes out of the drop"
    );
    let again = fetch(&policies, &hosts, "http://gone.example/").await;
    assert_eq!(code(&again), Some(200), "{again:?}");
    let heard = log.take();
    assert_eq!(
        of(&heard, "http://gone.example/"),
        ["Cancelled", "Succeeded"],
        "{heard:#?}"
    );
    assert_eq!(by_key(&heard).len(), 1, "{heard:#?}");
}

// ---------------------------------------------------------------------------------------------
// 8. Listeners that call back into the same client.
// ---------------------------------------------------------------------------------------------

type Slot = Arc<Mutex<Option<ClientPolicies>>>;

fn policies_in(slot: &Slot) -> ClientPolicies {
    slot.lock().unwrap().clone().expect("set after build")
}

/// At `outer`'s retry the listener starts a request to another host and polls it to its end,
/// inside the listener, and reads the client's tables; at `outer`'s ending it reconfigures
/// the client. `Event`'s docs ask listeners never to call the same policy; this checks only
/// that doing so anyway does not deadlock, and that every event names its own request's host.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_listener_calling_back_into_the_client_sees_each_request_keyed() {
    let log = Log::default();
    let slot: Slot = Arc::default();
    let nested: Arc<Mutex<Vec<Boxed<Outcome>>>> = Arc::default();
    let nested_done = Arc::new(Mutex::new(Vec::<Outcome>::new()));
    let reconfigured = Arc::new(Mutex::new(None::<bool>));
    let entered = Arc::new(AtomicBool::new(false));
    let listener = {
        let (log, slot, nested, nested_done, reconfigured, entered) = (
            log.clone(),
            Arc::clone(&slot),
            Arc::clone(&nested),
            Arc::clone(&nested_done),
            Arc::clone(&reconfigured),
            Arc::clone(&entered),
        );
        move |event: &Event<'_>| {
            log.push(event);
            if event.key != Some("http://outer.example:80") {
                return;
            }
            match event.kind {
                EventKind::RetryScheduled { .. } if !entered.swap(true, Ordering::SeqCst) => {
                    let policies = policies_in(&slot);
                    let outer =
                        Authority::from_uri(&"http://outer.example/".parse().unwrap()).unwrap();
                    let _ = policies.breakers().unwrap().state(&outer);
                    let _ = policies.breakers().unwrap().not_closed();
                    policies.record_gauges();
                    let mut inner = answered_later(policies, "http://inner.example/");
                    match poll_once(inner.as_mut()) {
                        Poll::Ready(outcome) => nested_done.lock().unwrap().push(outcome),
                        Poll::Pending => nested.lock().unwrap().push(inner),
                    }
                }
                EventKind::Succeeded => {
                    let policies = policies_in(&slot);
                    let stricter = base("ignored").retry(attempts(1));
                    *reconfigured.lock().unwrap() = Some(policies.reconfigure(stricter).is_ok());
                }
                _ => {}
            }
        }
    };
    let policies = base("reentrant")
        .breaker(Some(CircuitBreaker::builder().consecutive_failures(100)))
        .on_event(listener)
        .build()
        .unwrap();
    *slot.lock().unwrap() = Some(policies.clone());
    let hosts = Hosts::new(&Tokio);
    hosts.play("outer.example:80", FAILS_ONCE);
    hosts.play("after.example:80", FAILS_ONCE);

    let outer = fetch(&policies, &hosts, "http://outer.example/").await;
    assert_eq!(code(&outer), Some(200));
    let pending: Vec<_> = std::mem::take(&mut *nested.lock().unwrap());
    for inner in pending {
        let outcome = inner.await;
        nested_done.lock().unwrap().push(outcome);
    }
    let done = std::mem::take(&mut *nested_done.lock().unwrap());
    assert_eq!(done.len(), 1);
    assert_eq!(code(&done[0]), Some(200), "{done:?}");
    assert_eq!(
        *reconfigured.lock().unwrap(),
        Some(true),
        "a request's listener is not told of a reconfiguration: reconfigure is allowed"
    );
    let heard = log.take();
    assert_eq!(
        of(&heard, "http://outer.example/"),
        ["retry 1 10ms", "Succeeded"],
        "{heard:#?}"
    );
    assert_eq!(
        of(&heard, "http://inner.example/"),
        ["Succeeded"],
        "{heard:#?}"
    );
    assert_eq!(by_key(&heard).len(), 2, "{heard:#?}");

    // After the reconfiguration from the listener: one attempt, keyed.
    let after = fetch(&policies, &hosts, "http://after.example/").await;
    assert_eq!(code(&after), Some(503));
    assert_only_heard(&log, Some("http://after.example:80"), &["Failed"]);
    slot.lock().unwrap().take();
}

/// A request dropped mid-attempt: the listener told of its cancellation starts, inside the
/// drop, a request to the same host (whose only bulkhead slot the dropped one held). Both
/// are told of under the host's key, once each.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_listener_reentering_from_a_cancellation_keys_both_requests() {
    let log = Log::default();
    let slot: Slot = Arc::default();
    let nested: Arc<Mutex<Vec<Boxed<Outcome>>>> = Arc::default();
    let entered = Arc::new(AtomicBool::new(false));
    let listener = {
        let (log, slot, nested, entered) = (
            log.clone(),
            Arc::clone(&slot),
            Arc::clone(&nested),
            Arc::clone(&entered),
        );
        move |event: &Event<'_>| {
            log.push(event);
            if matches!(event.kind, EventKind::Cancelled)
                && event.key == Some("http://single.example:80")
                && !entered.swap(true, Ordering::SeqCst)
            {
                let policies = policies_in(&slot);
                let mut inner = answered_later(policies, "http://single.example/");
                if poll_once(inner.as_mut()).is_pending() {
                    nested.lock().unwrap().push(inner);
                }
            }
        }
    };
    let policies = one_slot_per_host("single")
        .on_event(listener)
        .build()
        .unwrap();
    *slot.lock().unwrap() = Some(policies.clone());
    let hosts = Hosts::new(&Tokio);
    hosts.play("single.example:80", [Answer::Slow(secs(1))]);
    let cut =
        tokio::time::timeout(ms(50), fetch(&policies, &hosts, "http://single.example/")).await;
    assert!(cut.is_err());
    assert!(
        entered.load(Ordering::SeqCst),
        "the listener heard the cancellation"
    );
    let pending: Vec<_> = std::mem::take(&mut *nested.lock().unwrap());
    for inner in pending {
        let _ = inner.await;
    }
    let heard = log.take();
    let kinds = of(&heard, "http://single.example/");
    assert_eq!(kinds.len(), 2, "{heard:#?}");
    assert_eq!(kinds[0], "Cancelled", "{heard:#?}");
    assert!(
        kinds[1] == "Succeeded" || kinds[1] == "rejected bulkhead_full",
        "the nested request ended under the host's key: {heard:#?}"
    );
    assert_eq!(by_key(&heard).len(), 1, "{heard:#?}");
    slot.lock().unwrap().take();
}

/// At the first retry of `a`, the listener reconfigures the client (one attempt, a bulkhead
/// of one per host): `a` keeps the schedule it started with; every event stays keyed.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_reconfiguration_from_a_request_listener_keeps_every_request_keyed() {
    let log = Log::default();
    let slot: Slot = Arc::default();
    let applied = Arc::new(Mutex::new(Vec::<bool>::new()));
    let listener = {
        let (log, slot, applied) = (log.clone(), Arc::clone(&slot), Arc::clone(&applied));
        move |event: &Event<'_>| {
            log.push(event);
            if event.key == Some("http://a.example:80")
                && matches!(event.kind, EventKind::RetryScheduled { attempt: 1, .. })
            {
                let policies = policies_in(&slot);
                let settings = base("ignored")
                    .retry(attempts(1))
                    .bulkhead(Some(Bulkhead::builder(1).reject_when_full()));
                applied
                    .lock()
                    .unwrap()
                    .push(policies.reconfigure(settings).is_ok());
            }
        }
    };
    let policies = base("retuned").on_event(listener).build().unwrap();
    *slot.lock().unwrap() = Some(policies.clone());
    let hosts = Hosts::new(&Tokio);
    hosts.play(
        "a.example:80",
        [
            Answer::Status(503),
            Answer::Status(503),
            Answer::Status(200),
        ],
    );
    hosts.play("b.example:80", FAILS_ONCE);
    hosts.play("c.example:80", [Answer::Slow(ms(50))]);
    let a = fetch(&policies, &hosts, "http://a.example/").await;
    assert_eq!(code(&a), Some(200));
    assert_eq!(*applied.lock().unwrap(), [true]);
    let b = fetch(&policies, &hosts, "http://b.example/").await;
    assert_eq!(code(&b), Some(503));
    let (c1, c2) =
        one_then_another(&policies, &hosts, "http://c.example/", "http://c.example/").await;
    assert_eq!(code(&c1), Some(200));
    assert_eq!(c2.unwrap_err().rejection(), Some(Rejected::BulkheadFull));
    let heard = log.take();
    assert_eq!(
        of(&heard, "http://a.example/"),
        ["retry 1 10ms", "retry 2 10ms", "Succeeded"],
        "{heard:#?}"
    );
    assert_eq!(of(&heard, "http://b.example/"), ["Failed"], "{heard:#?}");
    assert_eq!(
        of(&heard, "http://c.example/"),
        ["rejected bulkhead_full", "Succeeded"],
        "{heard:#?}"
    );
    assert_eq!(by_key(&heard).len(), 3, "{heard:#?}");
    slot.lock().unwrap().take();
}

// ---------------------------------------------------------------------------------------------
// 9. Per-request overrides with retries.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn overrides_change_the_attempts_never_the_key() {
    let (log, policies) = logged(base("overridden"));
    let hosts = Hosts::new(&Tokio);
    for host in ["once", "two", "cap", "short", "plainpost"] {
        hosts.play(&format!("{host}.example:80"), [Answer::Status(503)]);
    }
    hosts.play("quick.example:80", [Answer::Slow(secs(1))]);
    hosts.play("cut.example:80", [Answer::Slow(secs(1))]);
    hosts.play("post.example:80", FAILS_ONCE);
    let two = NonZeroU32::new(2).unwrap();
    let nine = NonZeroU32::new(9).unwrap();
    let run = |request, overrides| go(&policies, &hosts, request, overrides);
    let (once, two, cap, quick, short, post, plainpost, cut) = tokio::join!(
        run(get("http://once.example/"), Overrides::new().no_retry()),
        run(
            get("http://TWO.example/"),
            Overrides::new().max_attempts(two)
        ),
        run(
            get("http://cap.example:80/"),
            Overrides::new().max_attempts(nine)
        ),
        run(
            get("http://quick.example/"),
            Overrides::new().attempt_timeout(ms(5))
        ),
        run(
            get("http://short.example/"),
            Overrides::new().deadline(ms(15))
        ),
        run(
            request(Method::POST, "http://post.example/"),
            Overrides::new().idempotent()
        ),
        run(
            request(Method::POST, "http://plainpost.example/"),
            Overrides::new()
        ),
        run(
            get("http://cut.example/"),
            Overrides::new().deadline(ms(50))
        ),
    );
    assert_eq!(code(&once), Some(503));
    assert_eq!(code(&two), Some(503));
    assert_eq!(code(&cap), Some(503));
    assert!(matches!(quick, Err(Error::TimedOut)), "{quick:?}");
    assert_eq!(code(&short), Some(503), "the deadline keeps the 503 it got");
    assert_eq!(code(&post), Some(200));
    assert_eq!(code(&plainpost), Some(503));
    assert!(cut.is_err(), "{cut:?}");
    let heard = log.take();
    let mut told = by_key(&heard);
    let mut take = |uri: &str| told.remove(&key(uri)).unwrap_or_default();
    assert_eq!(take("http://once.example/"), ["Failed"]);
    assert_eq!(take("http://two.example/"), ["retry 1 10ms", "Failed"]);
    assert_eq!(
        take("http://cap.example/"),
        ["retry 1 10ms", "retry 2 10ms", "Failed"],
        "never more than the client allows"
    );
    assert_eq!(
        take("http://quick.example/"),
        ["retry 1 10ms", "retry 2 10ms", "TimedOut"]
    );
    let short = take("http://short.example/");
    assert_one_request(&short, "short");
    assert_eq!(short.last().unwrap(), "Failed", "{short:?}");
    assert_eq!(take("http://post.example/"), ["retry 1 10ms", "Succeeded"]);
    assert_eq!(
        take("http://plainpost.example/"),
        ["Failed"],
        "a POST is sent once"
    );
    let cut = take("http://cut.example/");
    assert_one_request(&cut, "cut");
    assert!(
        cut.last().unwrap() == "rejected deadline_exceeded" || cut.last().unwrap() == "TimedOut",
        "{cut:?}"
    );
    assert!(told.is_empty(), "{told:#?}");

    // A server's `Retry-After`: one within the deadline is waited out; one past it answers at
    // once. Both keyed, with a 2 s deadline override beside a request on the client's 5 s.
    hosts.play(
        "soon.example:80",
        [Answer::After(503, 1), Answer::Status(200)],
    );
    hosts.play("later.example:80", [Answer::After(503, 60)]);
    hosts.play(
        "edge.example:80",
        [Answer::After(429, 3), Answer::Status(200)],
    );
    let (soon, later, edge) = tokio::join!(
        fetch(&policies, &hosts, "http://soon.example/"),
        fetch(&policies, &hosts, "http://later.example/"),
        run(
            get("http://edge.example/"),
            Overrides::new().deadline(secs(2))
        ),
    );
    assert_eq!(code(&soon), Some(200));
    assert_eq!(code(&later), Some(503));
    assert_eq!(code(&edge), Some(429));
    let heard = log.take();
    assert_eq!(
        of(&heard, "http://soon.example/"),
        ["retry 1 1s", "Succeeded"]
    );
    assert_eq!(
        of(&heard, "http://later.example/"),
        ["Failed"],
        "{heard:#?}"
    );
    assert_eq!(of(&heard, "http://edge.example/"), ["Failed"], "{heard:#?}");
    assert_eq!(by_key(&heard).len(), 3, "{heard:#?}");
}

// ---------------------------------------------------------------------------------------------
// 10. Refusals: budget, bulkhead, adaptive limit, breaker, full table, deadline.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_budget_refusing_retries_names_each_host() {
    let none_left = RetryBudgetPolicy::builder()
        .ratio(0.0)
        .min_per_second(0)
        .build()
        .unwrap();
    let (log, policies) = logged(base("frugal").retry_budget(Some(none_left)));
    let hosts = Hosts::new(&Tokio);
    let uris: Vec<String> = (0..6)
        .map(|i| format!("http://Frugal{i}.example:{}/", 7_000 + i))
        .collect();
    for i in 0..6 {
        let answer = if i == 3 {
            Answer::Status(200)
        } else {
            Answer::Slow(ms(10 + 7 * i))
        };
        hosts.play(
            &format!("frugal{i}.example:{}", 7_000 + i),
            [answer, Answer::Status(503)],
        );
    }
    // Each host's first request succeeds (slowly, so they overlap), its second fails and is
    // refused its retry.
    let results = futures_util::future::join_all(uris.iter().map(|uri| {
        let (policies, hosts) = (&policies, &hosts);
        async move {
            let first = fetch(policies, hosts, uri).await;
            let second = fetch(policies, hosts, uri).await;
            (code(&first), code(&second))
        }
    }))
    .await;
    assert!(
        results.iter().all(|r| *r == (Some(200), Some(503))),
        "{results:?}"
    );
    let heard = log.take();
    let told = by_key(&heard);
    for uri in &uris {
        assert_eq!(
            told.get(&key(uri)).cloned().unwrap_or_default(),
            ["Succeeded", "BudgetExhausted", "Failed"],
            "{uri}: {heard:#?}"
        );
    }
    assert_eq!(told.len(), uris.len());

    // A full budgets' table: the new host gets no budget, is sent once, and is told of with
    // no BudgetExhausted, under its own key.
    let generous = RetryBudgetPolicy::builder()
        .ratio(0.5)
        .min_per_second(10)
        .build()
        .unwrap();
    let (log, crowded) = logged(
        base("crowded")
            .bulkhead(None)
            .max_authorities(1)
            .retry_budget(Some(generous)),
    );
    hosts.play("first.example:80", FAILS_ONCE);
    hosts.play("second.example:80", FAILS_ONCE);
    let first = fetch(&crowded, &hosts, "http://first.example/").await;
    let second = fetch(&crowded, &hosts, "http://second.example/").await;
    assert_eq!((code(&first), code(&second)), (Some(200), Some(503)));
    assert_eq!(hosts.seen("second.example:80"), 1, "sent once");
    let heard = log.take();
    assert_eq!(
        of(&heard, "http://first.example/"),
        ["retry 1 10ms", "Succeeded"]
    );
    assert_eq!(
        of(&heard, "http://second.example/"),
        ["Failed"],
        "{heard:#?}"
    );
    assert_eq!(by_key(&heard).len(), 2);
}

/// The host whose only slot is taken refuses, named; the refusal is not retried; another
/// host and a retry refused by its host's bulkhead are keyed as well. With `adaptive`, the
/// same through an adaptive limit of one.
async fn shedding_names_the_full_host(policies: &ClientPolicies, log: &Log, label: &str) {
    let hosts = Hosts::new(&Tokio);
    hosts.play("busy.example:80", [Answer::Slow(ms(50))]);
    hosts.play("idle.example:80", [Answer::Slow(ms(20))]);
    hosts.play(
        "retry.example:80",
        [Answer::Status(503), Answer::Slow(ms(50))],
    );
    let (held, refused, other) = tokio::join!(
        fetch(policies, &hosts, "http://busy.example/"),
        after_a_turn(fetch(policies, &hosts, "http://Busy.Example:80/")),
        after_a_turn(fetch(policies, &hosts, "http://idle.example/")),
    );
    assert_eq!(code(&held), Some(200), "{label}");
    assert_eq!(
        refused.as_ref().unwrap_err().rejection(),
        Some(Rejected::BulkheadFull),
        "{label}: {refused:?}"
    );
    assert_eq!(code(&other), Some(200), "{label}");
    assert_eq!(
        hosts.seen("busy.example:80"),
        1,
        "{label}: the refusal was not retried"
    );
    // A retry meeting a host's full bulkhead: `x` fails and sleeps 10 ms; `y` takes the slot
    // meanwhile; `x`'s retry is refused and that ends it.
    let (x, y) = tokio::join!(fetch(policies, &hosts, "http://retry.example/"), async {
        tokio::time::sleep(ms(1)).await;
        fetch(policies, &hosts, "http://retry.example/").await
    },);
    assert_eq!(
        x.as_ref().unwrap_err().rejection(),
        Some(Rejected::BulkheadFull),
        "{label}: {x:?}"
    );
    assert_eq!(code(&y), Some(200), "{label}");
    let heard = log.take();
    assert_eq!(
        of(&heard, "http://busy.example/"),
        ["rejected bulkhead_full", "Succeeded"],
        "{label}: {heard:#?}"
    );
    assert_eq!(of(&heard, "http://idle.example/"), ["Succeeded"], "{label}");
    assert_eq!(
        of(&heard, "http://retry.example/"),
        ["retry 1 10ms", "rejected bulkhead_full", "Succeeded"],
        "{label}: {heard:#?}"
    );
    assert_eq!(by_key(&heard).len(), 3, "{label}: {heard:#?}");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_full_bulkhead_names_the_host_it_sheds() {
    let (log, policies) = logged(one_slot_per_host("shed"));
    shedding_names_the_full_host(&policies, &log, "bulkhead").await;
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_full_adaptive_limit_names_the_host_it_sheds() {
    let (log, policies) = logged(base("limited").bulkhead(None).adaptive(Some(
        AdaptiveLimiter::builder(AnyAlgorithm::from(FixedLimit(1))),
    )));
    shedding_names_the_full_host(&policies, &log, "adaptive").await;
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn an_open_breaker_and_a_full_table_refuse_under_the_refused_requests_key() {
    let breaker = || {
        CircuitBreaker::builder()
            .no_failure_rate()
            .consecutive_failures(1)
            .break_duration(secs(10))
    };
    let (log, policies) = logged(base("tripped").breaker(Some(breaker())));
    let hosts = Hosts::new(&Tokio);
    hosts.play("down.example:443", [Answer::Status(503)]);
    hosts.play("up.example:443", [Answer::Slow(ms(20))]);
    let down = fetch(&policies, &hosts, "https://down.example/").await;
    assert_eq!(code(&down), Some(503));
    let (refused, up) = tokio::join!(
        fetch(&policies, &hosts, "https://DOWN.example:443/again"),
        fetch(&policies, &hosts, "https://up.example/"),
    );
    assert!(matches!(
        refused.as_ref().unwrap_err().rejection(),
        Some(Rejected::CircuitOpen { .. })
    ));
    assert_eq!(code(&up), Some(200));
    let heard = log.take();
    assert_eq!(
        of(&heard, "https://down.example/"),
        ["Failed", "rejected circuit_open"],
        "the failure that opened it is not retried; the refusal is keyed: {heard:#?}"
    );
    assert_eq!(of(&heard, "https://up.example/"), ["Succeeded"]);
    assert_eq!(by_key(&heard).len(), 2);

    // A table of one authority, held open: a new host is refused as a full table, and the
    // request's event names that new host (the table's own refusal names none).
    let (log, full) = logged(base("full").max_authorities(1).breaker(Some(breaker())));
    let down = fetch(&full, &hosts, "https://down.example/").await;
    assert_eq!(code(&down), Some(503));
    let newcomer = fetch(&full, &hosts, "http://Newcomer.example:8081/").await;
    assert!(
        matches!(
            newcomer.as_ref().unwrap_err().rejection(),
            Some(Rejected::KeysFull { .. })
        ),
        "{newcomer:?}"
    );
    assert_eq!(hosts.seen("newcomer.example:8081"), 0);
    let heard = log.take();
    assert_eq!(of(&heard, "https://down.example/"), ["Failed"]);
    assert_eq!(
        of(&heard, "http://newcomer.example:8081/"),
        ["rejected keys_full"],
        "{heard:#?}"
    );
    assert_eq!(by_key(&heard).len(), 2, "{heard:#?}");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_rate_limit_wait_past_the_deadline_is_refused_under_the_hosts_key() {
    let (log, policies) = logged(paced(secs(1)));
    let hosts = Hosts::new(&Tokio);
    let first = fetch(&policies, &hosts, "http://paced.example/").await;
    assert_eq!(code(&first), Some(200));
    let (again, other) = tokio::join!(
        fetch(&policies, &hosts, "http://Paced.Example/again"),
        fetch(&policies, &hosts, "http://other.example/"),
    );
    assert_eq!(
        again.as_ref().unwrap_err().rejection(),
        Some(Rejected::DeadlineExceeded),
        "{again:?}"
    );
    assert_eq!(code(&other), Some(200));
    let heard = log.take();
    assert_eq!(
        of(&heard, "http://paced.example/"),
        ["Succeeded", "rejected deadline_exceeded"],
        "{heard:#?}"
    );
    assert_eq!(of(&heard, "http://other.example/"), ["Succeeded"]);
    assert_eq!(by_key(&heard).len(), 2);
}

// ---------------------------------------------------------------------------------------------
// 11. A registry's `[http]` client, across reloads.
// ---------------------------------------------------------------------------------------------

const OUTBOUND: &str = r#"
    [instances.outbound]
    deadline = "5s"
    http = {}
    [instances.outbound.retry]
    backoff = "constant"
    initial_delay = "10ms"
    jitter = "none"
    max_attempts = 3
"#;

/// `OUTBOUND` with one attempt and one slot per host, no queue.
fn one_attempt_one_slot() -> String {
    let bulkhead = "\n    [instances.outbound.bulkhead]\n    max_concurrent = 1\n    max_queue = 0";
    OUTBOUND.replace("max_attempts = 3", &format!("max_attempts = 1{bulkhead}"))
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_registry_client_names_each_requests_host_across_a_reload() {
    let log = Log::default();
    let registry = Registry::builder(Config::from_toml(OUTBOUND).unwrap())
        .on_event(log.listener())
        .build()
        .unwrap();
    let outbound = registry.http_client("outbound").unwrap();
    let hosts = Hosts::new(&Tokio);
    hosts.play("a.example:80", FAILS_ONCE);
    hosts.play(
        "inflight.example:80",
        [
            Answer::Status(503),
            Answer::Status(503),
            Answer::Status(200),
        ],
    );
    hosts.play("b.example:80", [Answer::Status(503)]);
    hosts.play("d.example:80", [Answer::Slow(ms(50))]);
    hosts.play("relative", FAILS_ONCE);

    let a = fetch(&outbound, &hosts, "http://A.example/").await;
    assert_eq!(code(&a), Some(200));
    let relative = fetch(&outbound, &hosts, "/relative").await;
    assert_eq!(code(&relative), Some(200));
    // A request in flight across the reload: it sleeps before its second attempt.
    let in_flight = spawn_fetch(&outbound, &hosts, "http://inflight.example/");
    tokio::time::sleep(ms(5)).await;
    assert_eq!(hosts.seen("inflight.example:80"), 1);
    registry
        .reload(Config::from_toml(&one_attempt_one_slot()).unwrap())
        .unwrap();
    assert_eq!(code(&in_flight.await.unwrap()), Some(200));
    let b = fetch(&outbound, &hosts, "http://b.example/").await;
    assert_eq!(code(&b), Some(503));
    let (d1, d2) = one_then_another(
        &outbound,
        &hosts,
        "http://d.example/",
        "http://D.EXAMPLE:80/",
    )
    .await;
    assert_eq!(code(&d1), Some(200));
    assert_eq!(d2.unwrap_err().rejection(), Some(Rejected::BulkheadFull));

    let heard = log.take();
    let requests: Vec<&Heard> = heard.iter().filter(|h| h.policy == "http_client").collect();
    assert!(
        requests.iter().all(|h| h.name == "outbound"),
        "{requests:#?}"
    );
    let mut told = by_key(&heard);
    let mut take = |k: Option<String>| told.remove(&k).unwrap_or_default();
    assert_eq!(
        take(some("http://a.example:80")),
        ["retry 1 10ms", "Succeeded"]
    );
    assert_eq!(take(None), ["retry 1 10ms", "Succeeded"]);
    assert_eq!(
        take(some("http://inflight.example:80")),
        ["retry 1 10ms", "retry 2 10ms", "Succeeded"],
        "the request in flight keeps its schedule and its key"
    );
    assert_eq!(take(some("http://b.example:80")), ["Failed"]);
    assert_eq!(
        take(some("http://d.example:80")),
        ["rejected bulkhead_full", "Succeeded"]
    );
    assert!(told.is_empty(), "{told:#?}");

    // A reload that removes `[http]`: the client is kept, still reconfigured (three attempts
    // again, no bulkhead), and its requests are still heard by the registry, keyed.
    registry
        .reload(Config::from_toml(&OUTBOUND.replace("http = {}", "")).unwrap())
        .unwrap();
    hosts.play("e.example:80", FAILS_ONCE);
    let (e1, e2) = tokio::join!(
        fetch(&outbound, &hosts, "http://e.example/"),
        fetch(&outbound, &hosts, "http://[::1]:8080/"),
    );
    assert_eq!((code(&e1), code(&e2)), (Some(200), Some(200)));
    let heard = log.take();
    assert_eq!(
        by_key(&heard),
        BTreeMap::from([
            (
                some("http://e.example:80"),
                vec!["retry 1 10ms".to_owned(), "Succeeded".to_owned()]
            ),
            (some("http://[::1]:8080"), vec!["Succeeded".to_owned()]),
        ]),
        "{heard:#?}"
    );
}
