#![cfg(all(
    feature = "http",
    feature = "metrics",
    feature = "tokio",
    feature = "test-util",
    feature = "tower"
))]
//! Hostile black-box tests of the HTTP client stack's request telemetry (`on_event`, the
//! `http_client` counters and histogram, `record_gauges`), `KeyedCircuitBreaker::not_closed`
//! and `retry::Notify::budget_spent`, written from the public docs only. Every scenario runs
//! in tokio's paused time with seeded randomness, and compares the counts with what was sent.

mod keyed_support;
mod support;

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Method, Request, Response};
use keyed_support::client::{Answer as Reply, Hosts, Streaming, attempts, auth, get, request};
use keyed_support::secs;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use support::{HOUR, Rng, ms};
use tidewall::adaptive::{AdaptiveLimiter, Aimd, AnyAlgorithm};
use tidewall::breaker::{CircuitBreaker, CircuitBreakerBuilder, State};
use tidewall::budget::{RetryBudget, RetryBudgetPolicy};
use tidewall::bulkhead::Bulkhead;
use tidewall::classify::Verdict;
use tidewall::http::{
    ClientPolicies, ClientPoliciesBuilder, FailureKind, HttpClassifier, HttpFailure, Outbound,
    Overrides,
};
use tidewall::rate::RateLimiter;
use tidewall::retry::{Notify, Retry, RetryError, RetryEvent};
use tidewall::telemetry::{Event, EventKind};
use tidewall::{Backoff, Error, Jitter, Rejected};

// ---------------------------------------------------------------------------------------------
// Support: scripted attempts, an event log, a metrics snapshot. (The seeded generator, the
// request builders and the scripted hosts of the tower front are the shared test modules'.)
// ---------------------------------------------------------------------------------------------

/// One of `from`, drawn by `rng`.
fn pick<T: Copy>(rng: &mut Rng, from: &[T]) -> T {
    from[usize::try_from(rng.below(from.len() as u64)).unwrap()]
}

/// An error of a chosen kind, as the standard table reads it.
#[derive(Debug)]
struct Fault(FailureKind);

impl HttpFailure for Fault {
    fn failure_kind(&self) -> FailureKind {
        self.0
    }
}

/// What a scripted attempt does. (The shared hosts' `Answer` has no failure of a chosen
/// kind, no hang and no slow answer but a 200, and scripts hosts rather than requests.)
#[derive(Debug, Clone, Copy)]
enum Answer {
    Status(u16),
    /// A status with `Retry-After: secs`.
    After(u16, u64),
    Fails(FailureKind),
    /// Never answers (until the attempt timeout or deadline cuts it).
    Hang,
    /// Answers with a status after a while.
    Slow(u64, u16),
}

type Outcome = Result<Response<()>, Error<Fault>>;

fn response(status: u16) -> Response<()> {
    Response::builder().status(status).body(()).unwrap()
}

async fn answer(a: Answer) -> Result<Response<()>, Fault> {
    match a {
        Answer::Status(s) => Ok(response(s)),
        Answer::After(s, secs) => Ok(Response::builder()
            .status(s)
            .header("retry-after", secs.to_string())
            .body(())
            .unwrap()),
        Answer::Fails(kind) => Err(Fault(kind)),
        Answer::Hang => {
            tokio::time::sleep(HOUR * 100).await;
            Ok(response(200))
        }
        Answer::Slow(delay, s) => {
            tokio::time::sleep(ms(delay)).await;
            Ok(response(s))
        }
    }
}

/// One attempt's future, as `sender` makes it.
type Sending = std::pin::Pin<Box<dyn Future<Output = Result<Response<()>, Fault>> + Send>>;

/// The `n`-th attempt's answer: `script[n]`, the last one again past its end.
fn nth(script: &[Answer], n: usize) -> Sending {
    Box::pin(answer(script.get(n).or(script.last()).copied().unwrap()))
}

/// A `send` for `run`: the n-th attempt gets `script[n]`, and `sends` counts the attempts the
/// stack made.
fn sender<Q>(script: Vec<Answer>, sends: Arc<AtomicU32>) -> impl Fn(Q) -> Sending {
    move |_request: Q| nth(&script, sends.fetch_add(1, Ordering::SeqCst) as usize)
}

/// A `send` that notes the virtual instant of each attempt.
fn timed_sender<Q>(
    script: Vec<Answer>,
    at: Arc<Mutex<Vec<tokio::time::Instant>>>,
) -> impl Fn(Q) -> Sending {
    move |_request: Q| {
        let mut at = at.lock().unwrap();
        at.push(tokio::time::Instant::now());
        nth(&script, at.len() - 1)
    }
}

/// One request with its own script, not yet polled, and the count of the attempts it sends.
fn start<Q: Outbound>(
    policies: &ClientPolicies,
    request: Q,
    overrides: Overrides,
    script: Vec<Answer>,
) -> (impl Future<Output = Outcome>, Arc<AtomicU32>) {
    let sends = Arc::new(AtomicU32::new(0));
    let sending = policies.run(request, overrides, sender(script, Arc::clone(&sends)));
    (sending, sends)
}

/// Sends one request with its own script: the outcome and the attempts the host saw.
async fn call<Q: Outbound>(
    policies: &ClientPolicies,
    request: Q,
    overrides: Overrides,
    script: &[Answer],
) -> (Outcome, u32) {
    let (sending, sends) = start(policies, request, overrides, script.to_vec());
    let outcome = sending.await;
    (outcome, sends.load(Ordering::SeqCst))
}

/// `call` of a GET with no overrides.
async fn fetch(policies: &ClientPolicies, uri: &str, script: &[Answer]) -> (Outcome, u32) {
    call(policies, get(uri), Overrides::new(), script).await
}

/// `call` of a GET on a task of its own.
fn spawn_call(
    policies: &ClientPolicies,
    uri: &'static str,
    overrides: Overrides,
    script: Vec<Answer>,
) -> tokio::task::JoinHandle<(Outcome, u32)> {
    let policies = policies.clone();
    tokio::spawn(async move { call(&policies, get(uri), overrides, &script).await })
}

/// Runs `fut` to its end, or drops it once `after` has passed (`None`).
async fn drop_after<F: Future>(after: Option<Duration>, fut: F) -> Option<F::Output> {
    match after {
        None => Some(fut.await),
        Some(after) => tokio::time::timeout(after, fut).await.ok(),
    }
}

/// What one request (sent alone) returned, and the events it caused.
async fn logged(
    log: &Log,
    sending: impl Future<Output = (Outcome, u32)>,
) -> (Outcome, u32, Vec<Ev>) {
    let from = log.len();
    let (outcome, sends) = sending.await;
    (outcome, sends, log.since(from))
}

/// `logged`, its events checked (`check_request`) against the ending the standard classifier
/// gives its outcome.
async fn checked(
    log: &Log,
    strict: bool,
    sending: impl Future<Output = (Outcome, u32)>,
) -> (Outcome, u32) {
    let (outcome, sends, events) = logged(log, sending).await;
    let ending = expected_ending(HttpClassifier::standard(), &outcome);
    check_request(&events, &ending, sends, strict);
    (outcome, sends)
}
/// An event as the stack's listener heard it.
#[derive(Debug, Clone, PartialEq)]
enum Ev {
    Succeeded,
    Failed,
    Ignored,
    TimedOut,
    Cancelled,
    Rejected(Rejected),
    Retry { attempt: u32, delay: Duration },
    Budget,
    Other(String),
}

impl Ev {
    fn retry(attempt: u32, delay: Duration) -> Self {
        Ev::Retry { attempt, delay }
    }

    fn is_ending(&self) -> bool {
        matches!(
            self,
            Ev::Succeeded
                | Ev::Failed
                | Ev::Ignored
                | Ev::TimedOut
                | Ev::Cancelled
                | Ev::Rejected(_)
        )
    }

    /// The `outcome` label of an ending.
    fn outcome(&self) -> &'static str {
        match self {
            Ev::Succeeded => "success",
            Ev::Failed => "failure",
            Ev::Ignored => "ignored",
            Ev::TimedOut => "timed_out",
            Ev::Cancelled => "cancelled",
            Ev::Rejected(_) => "rejected",
            other => panic!("{other:?} is not an ending"),
        }
    }
}

const OUTCOMES: [&str; 6] = [
    "success",
    "failure",
    "ignored",
    "rejected",
    "timed_out",
    "cancelled",
];

/// Every event a stack's listener heard, and any event that did not come as
/// `policy` `http_client` with the stack's name.
#[derive(Clone, Default)]
struct Log {
    events: Arc<Mutex<Vec<Ev>>>,
    strangers: Arc<Mutex<Vec<String>>>,
}

impl Log {
    fn listener(&self, name: &'static str) -> impl Fn(&Event<'_>) + Send + Sync + 'static {
        let log = self.clone();
        move |event: &Event<'_>| {
            if event.policy != "http_client" || event.name != name {
                log.strangers
                    .lock()
                    .unwrap()
                    .push(format!("{} {} {:?}", event.policy, event.name, event.kind));
            }
            let ev = match event.kind {
                EventKind::Succeeded => Ev::Succeeded,
                EventKind::Failed => Ev::Failed,
                EventKind::Ignored => Ev::Ignored,
                EventKind::TimedOut => Ev::TimedOut,
                EventKind::Cancelled => Ev::Cancelled,
                EventKind::Rejected(r) => Ev::Rejected(*r),
                EventKind::RetryScheduled { attempt, delay } => Ev::Retry { attempt, delay },
                EventKind::BudgetExhausted => Ev::Budget,
                other => Ev::Other(format!("{other:?}")),
            };
            log.events.lock().unwrap().push(ev);
        }
    }

    fn len(&self) -> usize {
        self.events.lock().unwrap().len()
    }

    fn since(&self, from: usize) -> Vec<Ev> {
        self.events.lock().unwrap()[from..].to_vec()
    }

    fn all(&self) -> Vec<Ev> {
        self.since(0)
    }

    fn assert_no_strangers(&self) {
        let strangers = self.strangers.lock().unwrap();
        assert!(
            strangers.is_empty(),
            "events not as policy http_client with the stack's name: {strangers:?}"
        );
    }

    fn endings(&self, outcome: &str) -> u64 {
        self.all()
            .iter()
            .filter(|e| e.is_ending() && e.outcome() == outcome)
            .count() as u64
    }

    fn retries(&self) -> u64 {
        self.all()
            .iter()
            .filter(|e| matches!(e, Ev::Retry { .. }))
            .count() as u64
    }

    fn refused(&self) -> u64 {
        self.all().iter().filter(|e| **e == Ev::Budget).count() as u64
    }

    /// The `outcome` labels of the endings heard, in order.
    fn ending_names(&self) -> Vec<&'static str> {
        self.all()
            .iter()
            .filter(|e| e.is_ending())
            .map(Ev::outcome)
            .collect()
    }
}

/// A recorder the stack is built under, and what it has recorded so far. The debugging
/// recorder's snapshots drain it (counters and gauges swapped to zero, histograms cleared), so
/// each pull adds into a running total here: counters summed, histogram samples kept, gauges
/// as the last `record_gauges` set them.
struct Metrics {
    recorder: DebuggingRecorder,
    snapshotter: Snapshotter,
    seen: Mutex<Vec<Series>>,
}

#[derive(Debug, Clone)]
enum Value {
    Counter(u64),
    Gauge(f64),
    Histogram(Vec<f64>),
}

type Series = (String, Vec<(String, String)>, Value);

impl Metrics {
    fn new() -> Self {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        Self {
            recorder,
            snapshotter,
            seen: Mutex::new(Vec::new()),
        }
    }

    fn build(&self, builder: ClientPoliciesBuilder) -> ClientPolicies {
        metrics::with_local_recorder(&self.recorder, || builder.build().unwrap())
    }
    /// Records the stack's gauges, then everything recorded so far.
    fn gauges(&self, policies: &ClientPolicies) -> Snap {
        metrics::with_local_recorder(&self.recorder, || policies.record_gauges());
        self.pull(true);
        self.snapshot()
    }

    fn pull(&self, gauges: bool) {
        let mut seen = self.seen.lock().unwrap();
        for (key, _, _, value) in self.snapshotter.snapshot().into_vec() {
            let key = key.key();
            let name = key.name().to_owned();
            let mut labels: Vec<(String, String)> = key
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            labels.sort();
            let value = match value {
                DebugValue::Counter(n) => Value::Counter(n),
                DebugValue::Gauge(g) => Value::Gauge(g.0),
                DebugValue::Histogram(h) => Value::Histogram(h.iter().map(|f| f.0).collect()),
            };
            let at = seen.iter().position(|(n, l, _)| *n == name && *l == labels);
            let Some(at) = at else {
                seen.push((name, labels, value));
                continue;
            };
            match (&mut seen[at].2, value) {
                (Value::Counter(total), Value::Counter(n)) => *total += n,
                (Value::Histogram(all), Value::Histogram(more)) => all.extend(more),
                (Value::Gauge(last), Value::Gauge(g)) => {
                    if gauges {
                        *last = g;
                    }
                }
                (old, new) => panic!("{name}: {old:?} then {new:?}"),
            }
        }
    }

    /// Everything recorded so far.
    fn snapshot(&self) -> Snap {
        self.pull(false);
        Snap(self.seen.lock().unwrap().clone())
    }
}

struct Snap(Vec<Series>);

impl Snap {
    fn find(&self, name: &str, labels: &[(&str, &str)]) -> Vec<&Value> {
        self.0
            .iter()
            .filter(|(n, have, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| have.iter().any(|(hk, hv)| hk == k && hv == v))
            })
            .map(|(_, _, value)| value)
            .collect()
    }

    /// The one series so named and labelled; `None` when no such series is registered.
    fn one(&self, name: &str, labels: &[(&str, &str)]) -> Option<&Value> {
        let found = self.find(name, labels);
        assert!(
            found.len() <= 1,
            "{name} {labels:?}: {} series",
            found.len()
        );
        found.first().copied()
    }

    fn counter(&self, name: &str, labels: &[(&str, &str)]) -> Option<u64> {
        self.one(name, labels).map(|v| match v {
            Value::Counter(n) => *n,
            other => panic!("{name} is not a counter: {other:?}"),
        })
    }

    fn gauge(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.one(name, labels).map(|v| match v {
            Value::Gauge(g) => *g,
            other => panic!("{name} is not a gauge: {other:?}"),
        })
    }

    fn histogram(&self, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
        self.find(name, labels)
            .into_iter()
            .flat_map(|v| match v {
                Value::Histogram(values) => values.clone(),
                other => panic!("{name} is not a histogram: {other:?}"),
            })
            .collect()
    }

    /// The stack's `tidewall_calls_total` by outcome (0 for an unregistered one).
    fn calls(&self, name: &str) -> HashMap<&'static str, u64> {
        OUTCOMES
            .iter()
            .map(|o| {
                let labels = [("policy", "http_client"), ("name", name), ("outcome", *o)];
                (
                    *o,
                    self.counter("tidewall_calls_total", &labels).unwrap_or(0),
                )
            })
            .collect()
    }

    fn client_counter(&self, metric: &str, name: &str) -> u64 {
        self.counter(metric, &[("policy", "http_client"), ("name", name)])
            .unwrap_or(0)
    }

    fn durations(&self, name: &str) -> Vec<f64> {
        self.histogram(
            "tidewall_call_duration_seconds",
            &[("policy", "http_client"), ("name", name)],
        )
    }

    fn breaker_keys(&self, name: &str, state: &str) -> Option<f64> {
        self.gauge(
            "tidewall_keyed_breaker_keys",
            &[("name", name), ("state", state)],
        )
    }

    fn table(&self, metric: &str, name: &str, policy: &str) -> Option<f64> {
        self.gauge(metric, &[("name", name), ("policy", policy)])
    }
}

/// The ending the docs promise for a final answer: the classifier's verdict on it, the
/// refusal, or the timeout.
fn expected_ending(classifier: HttpClassifier, outcome: &Outcome) -> Ev {
    let verdict = |v: Verdict| match v {
        Verdict::Success => Ev::Succeeded,
        Verdict::Failure | Verdict::RetryableFailure => Ev::Failed,
        Verdict::Ignored => Ev::Ignored,
    };
    match outcome {
        Ok(r) => verdict(classifier.status_verdict(r.status())),
        Err(Error::Inner(f)) => verdict(classifier.failure_verdict(f.0)),
        Err(Error::TimedOut) => Ev::TimedOut,
        Err(Error::Rejected(r)) => Ev::Rejected(*r),
        Err(other) => panic!("unexpected error {other:?}"),
    }
}

/// Checks one request's events (sequential requests only): retries numbered 1, 2, ... with
/// nothing else before them, at most one refused retry, then exactly one ending, last.
/// Returns the retries scheduled.
fn check_request(events: &[Ev], ending: &Ev, sends: u32, strict: bool) -> u32 {
    let (last, before) = events
        .split_last()
        .unwrap_or_else(|| panic!("no event at all (sends {sends})"));
    assert_eq!(last, ending, "the ending, in {events:?} (sends {sends})");
    let mut retries = 0;
    let mut refused = 0;
    for e in before {
        match e {
            Ev::Retry { attempt, .. } => {
                assert_eq!(refused, 0, "a retry after a refused one: {events:?}");
                retries += 1;
                assert_eq!(*attempt, retries, "retries numbered in order: {events:?}");
            }
            Ev::Budget => refused += 1,
            other => panic!("{other:?} before the ending: {events:?} (sends {sends})"),
        }
    }
    assert!(refused <= 1, "more than one refused retry: {events:?}");
    if *ending == Ev::Cancelled || matches!(ending, Ev::Rejected(_)) || !strict {
        assert!(
            retries + 1 >= sends && retries <= sends,
            "{retries} retries for {sends} sends: {events:?}"
        );
    } else {
        assert_eq!(retries + 1, sends, "retries = sends - 1: {events:?}");
    }
    retries
}

/// Retries `delay` apart (no jitter), `attempts` in all.
fn backoff(delay: Duration, attempts: u32) -> Backoff {
    Backoff::constant(delay)
        .jitter(Jitter::None)
        .max_attempts(attempts)
        .build()
        .unwrap()
}

/// A stack with no budget and no breaker (nothing refuses), 3 attempts 10 ms apart, a 100 ms
/// attempt timeout and a 5 s deadline.
fn quiet(name: &'static str, log: &Log) -> ClientPoliciesBuilder {
    ClientPolicies::builder()
        .name(name)
        .retry(attempts(3))
        .attempt_timeout(Some(ms(100)))
        .deadline(Some(secs(5)))
        .retry_budget(None)
        .breaker(None)
        .on_event(log.listener(name))
}

/// A recorder, a log, and the stack `make` sets up with that log, built under the recorder.
fn stack(make: impl FnOnce(&Log) -> ClientPoliciesBuilder) -> (Metrics, Log, ClientPolicies) {
    let (metrics, log) = (Metrics::new(), Log::default());
    let policies = metrics.build(make(&log));
    (metrics, log, policies)
}

/// `stack` of the `quiet` stack `name` as `tune` changes it.
fn quiet_stack(
    name: &'static str,
    tune: impl FnOnce(ClientPoliciesBuilder) -> ClientPoliciesBuilder,
) -> (Metrics, Log, ClientPolicies) {
    stack(|log| tune(quiet(name, log)))
}

/// A breaker per host opening on `failures` in a row, for 5 s.
fn opens_after(failures: u32) -> CircuitBreakerBuilder {
    CircuitBreaker::builder()
        .no_failure_rate()
        .consecutive_failures(failures)
        .break_duration(secs(5))
}

fn budget_policy(ratio: f64, min_per_second: u32) -> RetryBudgetPolicy {
    RetryBudgetPolicy::builder()
        .ratio(ratio)
        .min_per_second(min_per_second)
        .build()
        .unwrap()
}

/// How the requests of a scenario that drops some of them ended.
#[derive(Default)]
struct Ends {
    ended: u64,
    cancelled: u64,
}

impl Ends {
    /// The ending due for a request's `result` (`None`: it was dropped, so cancelled),
    /// counted.
    fn of(&mut self, result: Option<&Outcome>) -> Ev {
        match result {
            Some(outcome) => {
                self.ended += 1;
                expected_ending(HttpClassifier::standard(), outcome)
            }
            None => {
                self.cancelled += 1;
                Ev::Cancelled
            }
        }
    }
}

/// The listener and the counters agree, and the histogram holds one sample per ending
/// that is not a cancellation.
fn assert_metrics_match_log(snap: &Snap, name: &str, log: &Log) {
    let calls = snap.calls(name);
    for o in OUTCOMES {
        assert_eq!(calls[o], log.endings(o), "outcome {o}: counter vs listener");
    }
    assert_eq!(
        snap.client_counter("tidewall_retries_total", name),
        log.retries(),
        "retries: counter vs listener"
    );
    assert_eq!(
        snap.client_counter("tidewall_retry_budget_exhausted_total", name),
        log.refused(),
        "refused retries: counter vs listener"
    );
    let ended = OUTCOMES
        .iter()
        .filter(|o| **o != "cancelled")
        .map(|o| calls[o])
        .sum::<u64>();
    assert_eq!(
        snap.durations(name).len() as u64,
        ended,
        "one duration per request not cancelled"
    );
}

// ---------------------------------------------------------------------------------------------
// Registration and the plain endings.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn every_counter_is_registered_when_built_and_counts_outside_the_recorder() {
    let (metrics, log, policies) = quiet_stack("reg", |b| b);

    let snap = metrics.snapshot();
    for o in OUTCOMES {
        let labels = [("policy", "http_client"), ("name", "reg"), ("outcome", o)];
        assert_eq!(
            snap.counter("tidewall_calls_total", &labels),
            Some(0),
            "outcome {o} registered at build"
        );
    }
    for metric in [
        "tidewall_retries_total",
        "tidewall_retry_budget_exhausted_total",
    ] {
        assert_eq!(
            snap.counter(metric, &[("policy", "http_client"), ("name", "reg")]),
            Some(0),
            "{metric} registered at build"
        );
    }

    // No recorder is in scope from here on: the handles taken at build count.
    let (outcome, sends) = fetch(
        &policies,
        "http://a.example/",
        &[Answer::Status(503), Answer::Status(200)],
    )
    .await;
    assert_eq!(outcome.unwrap().status(), 200);
    assert_eq!(sends, 2);
    let snap = metrics.snapshot();
    assert_eq!(snap.calls("reg")["success"], 1);
    assert_eq!(snap.client_counter("tidewall_retries_total", "reg"), 1);
    assert_eq!(snap.durations("reg").len(), 1);
    assert_metrics_match_log(&snap, "reg", &log);
    log.assert_no_strangers();
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn each_request_ends_once_by_the_verdict_on_its_final_answer() {
    let (metrics, log, policies) = quiet_stack("plain", |b| b);
    use Answer::*;
    let cases: Vec<(&str, Vec<Answer>, u32)> = vec![
        ("http://a.example/", vec![Status(200)], 1),
        ("http://a.example/", vec![Status(503), Status(200)], 2),
        ("http://b.example/", vec![Status(404)], 1),
        ("http://b.example/", vec![Status(501)], 1),
        ("http://c.example/", vec![Status(503)], 3),
        (
            "http://c.example/",
            vec![Status(429), Status(500), Status(302)],
            3,
        ),
        ("http://d.example/", vec![Fails(FailureKind::Connect)], 3),
        ("http://d.example/", vec![Fails(FailureKind::Local)], 1),
        ("http://d.example/", vec![Fails(FailureKind::Other)], 1),
        ("http://e.example/", vec![Hang], 3),
        ("http://e.example/", vec![Hang, Status(503)], 3),
        ("http://e.example/", vec![Status(503), Hang], 3),
        ("http://e.example:8080/", vec![Slow(50, 200)], 1),
        ("/relative/only", vec![Status(503), Status(201)], 2),
    ];
    for (uri, script, want_sends) in cases {
        let (_, sends) = checked(&log, true, fetch(&policies, uri, &script)).await;
        assert_eq!(sends, want_sends, "{uri} {script:?}");
    }
    assert_eq!(log.endings("success"), 6, "{:?}", log.all());
    assert_metrics_match_log(&metrics.snapshot(), "plain", &log);
    log.assert_no_strangers();
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_classifier_that_ignores_client_errors_reports_ignored() {
    let classifier = HttpClassifier::standard().client_errors(Verdict::Ignored);
    let (metrics, log, policies) = quiet_stack("ign", |b| b.classifier(classifier));
    let (outcome, sends) = fetch(&policies, "http://a.example/", &[Answer::Status(404)]).await;
    assert_eq!(outcome.unwrap().status(), 404);
    assert_eq!(sends, 1);
    assert_eq!(log.all(), vec![Ev::Ignored]);
    let snap = metrics.snapshot();
    assert_eq!(snap.calls("ign")["ignored"], 1);
    assert_metrics_match_log(&snap, "ign", &log);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn two_stacks_count_in_their_own_series_and_the_default_name_is_http_client() {
    let (metrics, la, a) = quiet_stack("alpha", |b| b);
    let lb = Log::default();
    let b = metrics.build(
        ClientPolicies::builder()
            .retry_budget(None)
            .on_event(lb.listener("http_client")),
    );
    assert_eq!(b.name(), "http_client");
    for _ in 0..3 {
        let _ = fetch(&a, "http://x.example/", &[Answer::Status(200)]).await;
    }
    let _ = fetch(&b, "http://x.example/", &[Answer::Status(501)]).await;
    let snap = metrics.snapshot();
    assert_eq!(snap.calls("alpha")["success"], 3);
    assert_eq!(snap.calls("alpha")["failure"], 0);
    assert_eq!(snap.calls("http_client")["failure"], 1);
    assert_eq!(snap.calls("http_client")["success"], 0);
    la.assert_no_strangers();
    lb.assert_no_strangers();
}

// ---------------------------------------------------------------------------------------------
// Retry-After, deadlines, attempt timeouts.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn retry_after_is_the_scheduled_delay_and_the_duration_is_virtual_time() {
    let (metrics, log, policies) = quiet_stack("ra", |b| b);
    let start = tokio::time::Instant::now();
    let (outcome, sends) = fetch(
        &policies,
        "http://a.example/",
        &[Answer::After(503, 2), Answer::Status(200)],
    )
    .await;
    assert_eq!(outcome.unwrap().status(), 200);
    assert_eq!(sends, 2);
    assert_eq!(start.elapsed(), secs(2));
    assert_eq!(log.all(), vec![Ev::retry(1, secs(2)), Ev::Succeeded]);
    let durations = metrics.snapshot().durations("ra");
    assert_eq!(durations.len(), 1);
    assert!(
        (2.0..2.01).contains(&durations[0]),
        "the request took 2 s of virtual time: {durations:?}"
    );
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_retry_after_past_the_deadline_answers_at_once_and_schedules_no_retry() {
    let (metrics, log, policies) = quiet_stack("ra_deadline", |b| b.deadline(Some(secs(1))));
    let start = tokio::time::Instant::now();
    let (outcome, sends) = fetch(
        &policies,
        "http://a.example/",
        &[Answer::After(503, 5), Answer::Status(200)],
    )
    .await;
    assert_eq!(outcome.unwrap().status(), 503, "the 503 is the answer");
    assert_eq!(sends, 1);
    assert_eq!(start.elapsed(), Duration::ZERO, "answered at once");
    assert_eq!(log.all(), vec![Ev::Failed], "no retry was scheduled");
    let snap = metrics.snapshot();
    assert_eq!(
        snap.client_counter("tidewall_retries_total", "ra_deadline"),
        0
    );
    assert_eq!(snap.calls("ra_deadline")["failure"], 1);
    let durations = snap.durations("ra_deadline");
    assert_eq!(durations.len(), 1);
    assert!(durations[0] < 0.001, "{durations:?}");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn the_deadline_cutting_waits_and_attempts_ends_each_request_once() {
    let (metrics, log, policies) = quiet_stack("cut", |b| {
        b.retry(backoff(ms(100), 5))
            .deadline(Some(ms(250)))
            .attempt_timeout(Some(ms(120)))
    });
    use Answer::*;
    let scripts: Vec<Vec<Answer>> = vec![
        vec![Status(503)],
        vec![Status(503), Hang],
        vec![Hang],
        vec![Fails(FailureKind::Connect)],
        vec![Status(503), Slow(200, 200)],
        vec![Slow(240, 503), Status(200)],
        vec![Status(503), After(503, 1)],
    ];
    for script in scripts {
        let start = tokio::time::Instant::now();
        let _ = checked(&log, false, fetch(&policies, "http://a.example/", &script)).await;
        assert!(start.elapsed() <= ms(250), "{script:?}: past the deadline");
    }
    let snap = metrics.snapshot();
    let durations = snap.durations("cut");
    assert!(durations.iter().all(|d| *d <= 0.251), "{durations:?}");
    assert_metrics_match_log(&snap, "cut", &log);
    log.assert_no_strangers();
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn attempts_that_all_time_out_end_timed_out_after_every_retry() {
    let (metrics, log, policies) = quiet_stack("slow", |b| b);
    let (outcome, sends) = fetch(&policies, "http://a.example/", &[Answer::Hang]).await;
    assert!(matches!(outcome, Err(Error::TimedOut)), "{outcome:?}");
    assert_eq!(sends, 3);
    assert_eq!(
        log.all(),
        vec![Ev::retry(1, ms(10)), Ev::retry(2, ms(10)), Ev::TimedOut]
    );
    let snap = metrics.snapshot();
    assert_eq!(snap.calls("slow")["timed_out"], 1);
    assert_eq!(snap.client_counter("tidewall_retries_total", "slow"), 2);
    let durations = snap.durations("slow");
    assert_eq!(durations.len(), 1);
    assert!((0.32..0.33).contains(&durations[0]), "{durations:?}");
}

// ---------------------------------------------------------------------------------------------
// Requests sent once, overrides, budgets.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn requests_sent_once_neither_schedule_nor_refuse_a_retry() {
    // An empty budget too: a request sent once never asks it for a retry.
    let (metrics, log, policies) =
        quiet_stack("once", |b| b.retry_budget(Some(budget_policy(0.0, 0))));
    let five03 = [Answer::Status(503), Answer::Status(200)];
    let uri = "http://a.example/";
    for (req, overrides) in [
        (request(Method::POST, uri), Overrides::new()),
        (get(uri), Overrides::new().no_retry()),
        (get(uri), Overrides::new().max_attempts(NonZeroU32::MIN)),
    ] {
        let (outcome, sends) = call(&policies, req, overrides, &five03).await;
        assert_eq!((outcome.unwrap().status().as_u16(), sends), (503, 1));
    }
    let (outcome, sends) = call(&policies, Streaming(get(uri)), Overrides::new(), &five03).await;
    assert_eq!(outcome.unwrap().status(), 503);
    assert_eq!(sends, 1);

    assert_eq!(log.all(), vec![Ev::Failed; 4]);
    let snap = metrics.snapshot();
    assert_eq!(
        snap.client_counter("tidewall_retry_budget_exhausted_total", "once"),
        0
    );
    assert_eq!(snap.client_counter("tidewall_retries_total", "once"), 0);
    assert_eq!(snap.calls("once")["failure"], 4);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn the_last_attempt_and_answers_not_retried_never_report_a_refused_retry() {
    let (metrics, log, policies) =
        quiet_stack("budget0", |b| b.retry_budget(Some(budget_policy(0.0, 0))));
    use Answer::*;
    // Retryable: the budget refuses the first retry, once.
    for (uri, a) in [
        ("http://a.example/", Status(503)),
        ("http://b.example/", Fails(FailureKind::Connect)),
        ("http://c.example/", Hang),
    ] {
        let (outcome, sends, events) = logged(&log, fetch(&policies, uri, &[a])).await;
        assert_eq!(sends, 1, "{a:?}: the budget is empty");
        let ending = expected_ending(HttpClassifier::standard(), &outcome);
        assert_eq!(events, vec![Ev::Budget, ending], "{a:?}");
    }
    // Not retryable: nothing asks the budget.
    for a in [
        Status(200),
        Status(404),
        Status(501),
        Fails(FailureKind::Local),
    ] {
        let (_, sends, events) = logged(&log, fetch(&policies, "http://a.example/", &[a])).await;
        assert_eq!(sends, 1);
        assert!(!events.contains(&Ev::Budget), "{a:?}: {events:?}");
    }
    let snap = metrics.snapshot();
    assert_eq!(
        snap.client_counter("tidewall_retry_budget_exhausted_total", "budget0"),
        3
    );
    assert_metrics_match_log(&snap, "budget0", &log);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_partial_budget_shows_as_retries_then_one_refusal_per_request() {
    let (metrics, log, policies) = quiet_stack("budget_half", |b| {
        b.retry(attempts(4))
            .retry_budget(Some(budget_policy(0.5, 0)))
    });
    let hosts = ["a.example", "b.example", "c.example"];
    let mut rng = Rng::new(7);
    let (mut total_refused, mut total_retries) = (0, 0);
    for _ in 0..90 {
        let uri = format!("http://{}/", pick(&mut rng, &hosts));
        let (outcome, sends, events) =
            logged(&log, fetch(&policies, &uri, &[Answer::Status(503)])).await;
        assert_eq!(outcome.unwrap().status(), 503);
        let retries = check_request(&events, &Ev::Failed, sends, true);
        total_retries += u64::from(retries);
        let refused = events.contains(&Ev::Budget);
        assert_eq!(
            refused,
            sends < 4,
            "refused iff attempts were left: {events:?}"
        );
        total_refused += u64::from(refused);
        // Some idle time now and then, so budgets refill or are forgotten.
        if rng.below(10) == 0 {
            tokio::time::sleep(secs(rng.below(3 * 3600))).await;
        }
    }
    assert!(
        total_refused > 0 && total_retries > 0,
        "{total_refused} {total_retries}"
    );
    let snap = metrics.snapshot();
    assert_eq!(
        snap.client_counter("tidewall_retry_budget_exhausted_total", "budget_half"),
        total_refused
    );
    assert_eq!(
        snap.client_counter("tidewall_retries_total", "budget_half"),
        total_retries
    );
    assert_metrics_match_log(&snap, "budget_half", &log);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn overrides_cap_the_attempts_and_the_retries_follow() {
    let (metrics, log, policies) = quiet_stack("ovr", |b| b.retry(attempts(6)));
    for (cap, want) in [(2, 2), (4, 4), (9, 6)] {
        let (outcome, sends, events) = logged(
            &log,
            call(
                &policies,
                get("http://a.example/"),
                Overrides::new().max_attempts(NonZeroU32::new(cap).unwrap()),
                &[Answer::Status(503)],
            ),
        )
        .await;
        assert_eq!(outcome.unwrap().status(), 503);
        assert_eq!(sends, want, "max_attempts({cap})");
        assert_eq!(check_request(&events, &Ev::Failed, sends, true), want - 1);
    }
    // An idempotent POST with an override is retried like a GET.
    let (outcome, sends, events) = logged(
        &log,
        call(
            &policies,
            request(Method::POST, "http://a.example/"),
            Overrides::new()
                .idempotent()
                .max_attempts(NonZeroU32::new(3).unwrap()),
            &[Answer::Status(503), Answer::Status(201)],
        ),
    )
    .await;
    assert_eq!(outcome.unwrap().status(), 201);
    assert_eq!(check_request(&events, &Ev::Succeeded, sends, true), 1);
    let snap = metrics.snapshot();
    assert_eq!(
        snap.client_counter("tidewall_retries_total", "ovr"),
        1 + 3 + 5 + 1
    );
}

// ---------------------------------------------------------------------------------------------
// Breakers, refusals, gauges, not_closed.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn the_failure_that_opens_the_breaker_is_the_answer_and_the_rest_are_refused() {
    let breaker_events = Arc::new(Mutex::new(Vec::<(String, String)>::new()));
    let seen = Arc::clone(&breaker_events);
    let (metrics, log, policies) = quiet_stack("brk", |b| {
        b.breaker(Some(opens_after(1).on_event(move |e: &Event<'_>| {
            seen.lock()
                .unwrap()
                .push((e.policy.to_owned(), format!("{:?}", e.kind)));
        })))
    });
    let down = "http://down.example/";
    let (outcome, sends) = fetch(&policies, down, &[Answer::Status(503)]).await;
    assert_eq!(outcome.unwrap().status(), 503);
    assert_eq!(sends, 1, "not retried into the refusal");
    assert_eq!(
        log.all(),
        vec![Ev::Failed],
        "no retry scheduled for a refusal to come"
    );

    let (outcome, sends) = fetch(&policies, down, &[Answer::Status(200)]).await;
    assert_eq!(sends, 0);
    let refusal = match outcome {
        Err(Error::Rejected(r @ Rejected::CircuitOpen { .. })) => r,
        other => panic!("{other:?}"),
    };
    assert_eq!(log.since(1), vec![Ev::Rejected(refusal)]);

    // Another host is not concerned.
    let (outcome, _) = fetch(&policies, "http://up.example/", &[Answer::Status(200)]).await;
    assert_eq!(outcome.unwrap().status(), 200);

    // The breaker's own listener heard each attempt (as `breaker`); the stack's heard only
    // the requests.
    let heard = breaker_events.lock().unwrap().clone();
    assert!(
        heard.iter().all(|(policy, _)| policy != "http_client"),
        "{heard:?}"
    );
    let attempts = heard
        .iter()
        .filter(|(_, k)| k == "Succeeded" || k == "Failed")
        .count();
    assert_eq!(attempts, 2, "{heard:?}");
    log.assert_no_strangers();

    let breakers = policies.breakers().unwrap();
    assert_eq!(breakers.not_closed(), vec![(auth(down), State::Open)]);
    let snap = metrics.gauges(&policies);
    assert_eq!(snap.breaker_keys("brk", "open"), Some(1.0));
    assert_eq!(snap.calls("brk")["rejected"], 1);
    assert_eq!(snap.calls("brk")["failure"], 1);
    assert_eq!(snap.calls("brk")["success"], 1);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn gauges_have_one_series_per_state_and_zero_for_an_empty_state() {
    let metrics = Metrics::new();
    let policies = metrics.build(ClientPolicies::builder().name("fresh").max_authorities(300));
    let snap = metrics.gauges(&policies);
    for state in State::ALL {
        assert_eq!(
            snap.breaker_keys("fresh", state.as_str()),
            Some(0.0),
            "state {} of a stack with no authority yet",
            state.as_str()
        );
    }
    for table in ["keyed_breaker", "keyed_bulkhead"] {
        assert_eq!(
            snap.table("tidewall_keyed_keys", "fresh", table),
            Some(0.0),
            "{table}"
        );
        assert_eq!(
            snap.table("tidewall_keyed_max_keys", "fresh", table),
            Some(300.0),
            "{table}"
        );
    }

    // The other two tables, when the stack has them.
    let aimd = Aimd::builder().build().unwrap();
    let other = metrics.build(
        ClientPolicies::builder()
            .name("others")
            .max_authorities(7)
            .bulkhead(None)
            .adaptive(Some(AdaptiveLimiter::builder(AnyAlgorithm::from(aimd))))
            .rate_limit(Some(RateLimiter::builder(100, secs(1)).keyed())),
    );
    for host in ["a.example", "b.example"] {
        let _ = fetch(&other, &format!("http://{host}/"), &[Answer::Status(200)]).await;
    }
    let snap = metrics.gauges(&other);
    for table in [
        "keyed_breaker",
        "keyed_adaptive",
        "keyed_rate",
        "keyed_budget",
    ] {
        assert_eq!(
            snap.table("tidewall_keyed_max_keys", "others", table),
            Some(7.0),
            "{table}"
        );
        let keys = snap.table("tidewall_keyed_keys", "others", table);
        assert!(matches!(keys, Some(k) if k <= 2.0), "{table}: {keys:?}");
    }
    let states: f64 = State::ALL
        .iter()
        .map(|s| snap.breaker_keys("others", s.as_str()).unwrap())
        .sum();
    assert_eq!(
        Some(states),
        snap.table("tidewall_keyed_keys", "others", "keyed_breaker"),
        "the states add up to the breakers' keys"
    );
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn an_authority_whose_breaker_closes_again_brings_open_back_to_zero() {
    let (metrics, _log, policies) = quiet_stack("heal", |b| b.breaker(Some(opens_after(2))));
    let uris: Vec<String> = (0..12).map(|i| format!("http://h{i}.example/")).collect();
    // Open half the hosts' breakers (a 503 twice: two attempts, the second opens it).
    for uri in &uris[..6] {
        let (outcome, sends) = fetch(&policies, uri, &[Answer::Status(503)]).await;
        assert_eq!(outcome.unwrap().status(), 503);
        assert_eq!(sends, 2, "the failure that opens it is the answer");
    }
    for uri in &uris[6..] {
        let _ = fetch(&policies, uri, &[Answer::Status(200)]).await;
    }
    let breakers = policies.breakers().unwrap();
    let mut open: Vec<_> = breakers.not_closed();
    open.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
    let mut want: Vec<_> = uris[..6].iter().map(|u| (auth(u), State::Open)).collect();
    want.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
    assert_eq!(open, want);
    assert_eq!(
        metrics.gauges(&policies).breaker_keys("heal", "open"),
        Some(6.0)
    );

    // Hours later, each host answers again: each probe closes its breaker.
    tokio::time::sleep(HOUR * 5).await;
    for uri in &uris {
        let (outcome, _) = fetch(&policies, uri, &[Answer::Status(200)]).await;
        assert_eq!(outcome.unwrap().status(), 200, "{uri}");
    }
    assert_eq!(breakers.not_closed(), vec![]);
    let snap = metrics.gauges(&policies);
    for state in ["open", "half_open", "forced_open", "forced_closed"] {
        assert_eq!(
            snap.breaker_keys("heal", state),
            Some(0.0),
            "{state} after every breaker closed"
        );
    }
    assert_eq!(
        snap.breaker_keys("heal", "closed"),
        snap.table("tidewall_keyed_keys", "heal", "keyed_breaker"),
    );

    // Forced by hand: its own state, and back to zero when reset.
    let key = auth("http://h0.example/");
    let handle = breakers.get(&key).expect("h0 is held: it was just used");
    handle.force_open();
    assert_eq!(
        breakers.not_closed(),
        vec![(key.clone(), State::ForcedOpen)]
    );
    let snap = metrics.gauges(&policies);
    assert_eq!(snap.breaker_keys("heal", "forced_open"), Some(1.0));
    let (outcome, sends) = fetch(&policies, "http://h0.example/", &[Answer::Status(200)]).await;
    assert_eq!(sends, 0);
    assert!(
        matches!(outcome, Err(Error::Rejected(Rejected::CircuitOpen { .. }))),
        "{outcome:?}"
    );
    handle.reset();
    drop(handle);
    let snap = metrics.gauges(&policies);
    assert_eq!(snap.breaker_keys("heal", "forced_open"), Some(0.0));
    assert_eq!(snap.breaker_keys("heal", "open"), Some(0.0));
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn one_authority_at_most_refuses_the_others_while_one_is_open() {
    let (metrics, log, policies) = quiet_stack("tiny", |b| {
        b.max_authorities(1)
            .retry_budget(Some(RetryBudgetPolicy::builder().build().unwrap()))
            .breaker(Some(opens_after(1)))
    });
    assert_eq!(policies.max_authorities(), 1);
    let (outcome, _) = fetch(&policies, "http://a.example/", &[Answer::Status(503)]).await;
    assert_eq!(outcome.unwrap().status(), 503);
    let (outcome, sends, events) = logged(
        &log,
        fetch(&policies, "http://b.example/", &[Answer::Status(200)]),
    )
    .await;
    assert_eq!(sends, 0);
    let refusal = match outcome {
        Err(Error::Rejected(r @ Rejected::KeysFull { .. })) => r,
        other => panic!("{other:?}"),
    };
    assert_eq!(events, vec![Ev::Rejected(refusal)]);
    let snap = metrics.gauges(&policies);
    for table in ["keyed_breaker", "keyed_bulkhead"] {
        assert_eq!(
            snap.table("tidewall_keyed_max_keys", "tiny", table),
            Some(1.0),
            "{table}"
        );
        let keys = snap.table("tidewall_keyed_keys", "tiny", table).unwrap();
        assert!(keys <= 1.0, "{table}: {keys}");
    }
    assert_eq!(snap.breaker_keys("tiny", "open"), Some(1.0));

    // Hours later: a's breaker probes and closes; then b and c come in turn.
    tokio::time::sleep(HOUR * 3).await;
    for host in ["a.example", "b.example", "c.example", "a.example"] {
        let uri = format!("http://{host}/");
        let _ = checked(&log, false, fetch(&policies, &uri, &[Answer::Status(200)])).await;
    }
    let snap = metrics.gauges(&policies);
    assert_eq!(snap.breaker_keys("tiny", "open"), Some(0.0));
    assert_metrics_match_log(&snap, "tiny", &log);
    log.assert_no_strangers();
}

// ---------------------------------------------------------------------------------------------
// Cancellation.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_request_never_polled_is_not_reported_and_one_polled_once_is_cancelled() {
    let (metrics, log, policies) = quiet_stack("drop", |b| b);
    let uri = "http://a.example/";
    let (never, _) = start(
        &policies,
        get(uri),
        Overrides::new(),
        vec![Answer::Status(200)],
    );
    drop(never);
    assert_eq!(log.all(), vec![]);

    let (once, _) = start(&policies, get(uri), Overrides::new(), vec![Answer::Hang]);
    let dropped = tokio::time::timeout(Duration::ZERO, once).await;
    assert!(dropped.is_err());
    assert_eq!(log.all(), vec![Ev::Cancelled]);

    // Dropped in a backoff sleep after a retry was scheduled.
    let from = log.len();
    let (retrying, _) = start(
        &policies,
        get(uri),
        Overrides::new(),
        vec![Answer::After(503, 3)],
    );
    assert!(tokio::time::timeout(secs(1), retrying).await.is_err());
    assert_eq!(log.since(from), vec![Ev::retry(1, secs(3)), Ev::Cancelled]);
    let snap = metrics.snapshot();
    assert_eq!(snap.calls("drop")["cancelled"], 2);
    assert!(
        snap.durations("drop").is_empty(),
        "no duration for cancelled requests"
    );
    assert_metrics_match_log(&snap, "drop", &log);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn requests_dropped_at_random_points_each_end_once() {
    let (metrics, log, policies) = quiet_stack("rand_drop", |b| b.deadline(Some(secs(4))));
    let mut rng = Rng::new(0xD15EA5E);
    let hosts = ["a.example", "b.example:81", "c.example", "d.example"];
    let menu = [
        Answer::Status(200),
        Answer::Status(503),
        Answer::After(503, 1),
        Answer::Status(404),
        Answer::Status(500),
        Answer::Status(501),
        Answer::Fails(FailureKind::Connect),
        Answer::Fails(FailureKind::Local),
        Answer::Hang,
        Answer::Slow(30, 200),
        Answer::Slow(70, 503),
    ];
    let drops = [
        None,
        None,
        Some(0),
        Some(1),
        Some(15),
        Some(60),
        Some(150),
        Some(1100),
    ];
    let mut ends = Ends::default();
    for i in 0..400 {
        let script: Vec<Answer> = (0..3).map(|_| pick(&mut rng, &menu)).collect();
        let uri = format!("http://{}/{i}", pick(&mut rng, &hosts));
        let after = pick(&mut rng, &drops).map(ms);
        let (fut, sends) = start(&policies, get(&uri), Overrides::new(), script);
        let from = log.len();
        let result = drop_after(after, fut).await;
        let ending = ends.of(result.as_ref());
        check_request(
            &log.since(from),
            &ending,
            sends.load(Ordering::SeqCst),
            true,
        );
        if rng.below(50) == 0 {
            tokio::time::sleep(secs(rng.below(6 * 3600))).await;
            let _ = metrics.snapshot();
        }
    }
    let snap = metrics.snapshot();
    assert_eq!(snap.calls("rand_drop")["cancelled"], ends.cancelled);
    assert_eq!(snap.calls("rand_drop").values().sum::<u64>(), 400);
    assert_eq!(snap.durations("rand_drop").len() as u64, ends.ended);
    assert_metrics_match_log(&snap, "rand_drop", &log);
    log.assert_no_strangers();
}

// ---------------------------------------------------------------------------------------------
// Many requests at once, across authorities, with breakers and budgets.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn concurrent_traffic_across_authorities_is_counted_exactly() {
    let (metrics, log, policies) = stack(|log| {
        ClientPolicies::builder()
            .name("mesh")
            .retry(backoff(ms(20), 4))
            .attempt_timeout(Some(ms(200)))
            .deadline(Some(secs(3)))
            .breaker(Some(
                CircuitBreaker::builder()
                    .failure_rate(0.5)
                    .minimum_calls(10)
                    .break_duration(secs(2)),
            ))
            .bulkhead(Some(Bulkhead::builder(8).max_queue(0)))
            .on_event(log.listener("mesh"))
    });
    let mut rng = Rng::new(42);
    // Each host has a character: mostly fine, flaky, down, slow, throttling.
    let hosts: [(&str, &[Answer]); 5] = [
        (
            "a.example",
            &[
                Answer::Status(200),
                Answer::Status(200),
                Answer::Status(404),
            ],
        ),
        (
            "b.example",
            &[
                Answer::Status(200),
                Answer::Status(503),
                Answer::Fails(FailureKind::Connect),
            ],
        ),
        (
            "c.example",
            &[Answer::Status(503), Answer::Status(500), Answer::Hang],
        ),
        (
            "d.example",
            &[Answer::Slow(150, 200), Answer::Slow(250, 200), Answer::Hang],
        ),
        (
            "e.example",
            &[
                Answer::After(429, 1),
                Answer::Status(200),
                Answer::Status(501),
            ],
        ),
    ];
    let drops = [None, None, None, Some(0), Some(30), Some(400), Some(2500)];
    let mut ends = Ends::default();
    let (mut min_retries, mut max_retries) = (0u64, 0u64);
    for wave in 0..3 {
        let mut tasks = Vec::new();
        for i in 0..150 {
            let (host, menu) = pick(&mut rng, &hosts);
            let script: Vec<Answer> = (0..4).map(|_| pick(&mut rng, menu)).collect();
            let uri = format!("http://{host}/{wave}/{i}");
            let after = pick(&mut rng, &drops).map(ms);
            let stagger = ms(rng.below(500));
            let policies = policies.clone();
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep(stagger).await;
                let (fut, sends) = start(&policies, get(&uri), Overrides::new(), script);
                let result = drop_after(after, fut).await;
                (result, sends.load(Ordering::SeqCst))
            }));
        }
        let mut endings: HashMap<&'static str, u64> = HashMap::new();
        for task in tasks {
            let (result, sends) = task.await.unwrap();
            let ending = ends.of(result.as_ref());
            *endings.entry(ending.outcome()).or_default() += 1;
            let sends = u64::from(sends);
            min_retries += sends.saturating_sub(1);
            max_retries += sends;
        }
        assert_eq!(endings.values().sum::<u64>(), 150, "wave {wave}");
        let snap = metrics.snapshot();
        let calls = snap.calls("mesh");
        assert_eq!(calls.values().sum::<u64>(), 150 * (wave + 1), "wave {wave}");
        assert_eq!(calls["cancelled"], ends.cancelled);
        assert_eq!(snap.durations("mesh").len() as u64, ends.ended);
        assert_metrics_match_log(&snap, "mesh", &log);
        let retries = snap.client_counter("tidewall_retries_total", "mesh");
        assert!(
            (min_retries..=max_retries).contains(&retries),
            "{retries} retries for between {min_retries} and {max_retries}"
        );

        let snap = metrics.gauges(&policies);
        let breakers = policies.breakers().unwrap();
        let not_closed = breakers.not_closed();
        for state in State::ALL {
            let held = not_closed.iter().filter(|(_, s)| *s == state).count() as f64;
            if state != State::Closed {
                assert_eq!(
                    snap.breaker_keys("mesh", state.as_str()),
                    Some(held),
                    "wave {wave}: {} vs not_closed {not_closed:?}",
                    state.as_str()
                );
            }
        }
        let states: f64 = State::ALL
            .iter()
            .map(|s| snap.breaker_keys("mesh", s.as_str()).unwrap())
            .sum();
        assert_eq!(
            Some(states),
            snap.table("tidewall_keyed_keys", "mesh", "keyed_breaker")
        );
        // A long quiet spell between waves.
        tokio::time::sleep(HOUR * 4).await;
    }
    log.assert_no_strangers();
    // Everything healed after the quiet spell and one good request per host.
    for (host, _) in hosts {
        let _ = fetch(
            &policies,
            &format!("http://{host}/"),
            &[Answer::Status(200)],
        )
        .await;
    }
    let snap = metrics.gauges(&policies);
    assert_eq!(snap.breaker_keys("mesh", "open"), Some(0.0));
    assert_eq!(snap.breaker_keys("mesh", "half_open"), Some(0.0));
}

// ---------------------------------------------------------------------------------------------
// Extreme settings.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn huge_attempts_under_a_short_deadline_number_every_retry() {
    let (metrics, log, policies) = quiet_stack("huge", |b| {
        b.retry(backoff(ms(1), u32::MAX)).deadline(Some(secs(1)))
    });
    for script in [
        vec![Answer::Status(503)],
        vec![Answer::Fails(FailureKind::Connect)],
        vec![Answer::Slow(7, 502)],
    ] {
        let (_, sends) = checked(&log, false, fetch(&policies, "http://a.example/", &script)).await;
        assert!(sends > 100, "{sends}");
    }
    assert_metrics_match_log(&metrics.snapshot(), "huge", &log);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn zero_ish_durations_still_end_each_request_once() {
    let (metrics, log, policies) = quiet_stack("tiny_time", |b| {
        b.retry(backoff(Duration::ZERO, 5))
            .attempt_timeout(Some(Duration::from_nanos(1)))
            .deadline(Some(Duration::from_nanos(1)))
            .max_retry_after(Duration::ZERO)
    });
    let menu = [
        Answer::Status(200),
        Answer::Status(503),
        Answer::After(503, 3),
        Answer::Hang,
        Answer::Slow(1, 200),
        Answer::Fails(FailureKind::Connect),
    ];
    let mut rng = Rng::new(99);
    for i in 0..60 {
        let script: Vec<Answer> = (0..5).map(|_| pick(&mut rng, &menu)).collect();
        let overrides = if i % 3 == 0 {
            Overrides::new()
                .deadline(Duration::MAX)
                .attempt_timeout(Duration::ZERO)
        } else {
            Overrides::new()
        };
        let request = get("http://z.example/");
        let _ = checked(&log, false, call(&policies, request, overrides, &script)).await;
    }
    let snap = metrics.snapshot();
    assert_eq!(snap.calls("tiny_time").values().sum::<u64>(), 60);
    assert_metrics_match_log(&snap, "tiny_time", &log);
}

// ---------------------------------------------------------------------------------------------
// The plain retry's `Notify::budget_spent`.
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Default)]
struct Tally {
    retries: Arc<Mutex<Vec<u32>>>,
    refused: Arc<Mutex<Vec<u32>>>,
}

impl Tally {
    /// The attempts whose retry was scheduled.
    fn retries(&self) -> Vec<u32> {
        self.retries.lock().unwrap().clone()
    }

    /// The attempts whose retry the budget refused.
    fn refused(&self) -> Vec<u32> {
        self.refused.lock().unwrap().clone()
    }
}

impl<T, E> Notify<T, E> for Tally {
    fn notify(&mut self, event: &RetryEvent<'_, T, E>) {
        self.retries.lock().unwrap().push(event.attempt);
    }
    fn budget_spent(&mut self, attempt: u32) {
        self.refused.lock().unwrap().push(attempt);
    }
}

fn budget(ratio: f64) -> RetryBudget {
    RetryBudget::new(
        budget_policy(ratio, 0),
        tokio::time::Instant::now().into_std(),
    )
}

/// A plain retry, `most` attempts 10 ms apart under `budget` and told to `tally`, of an
/// operation that always fails with "down": the result and the calls made.
async fn always_down(
    most: u32,
    budget: RetryBudget,
    tally: &Tally,
) -> (Result<(), RetryError<&'static str>>, u32) {
    let calls = AtomicU32::new(0);
    let result = Retry::new(attempts(most), || {
        calls.fetch_add(1, Ordering::SeqCst);
        async { Err::<(), _>("down") }
    })
    .budget(budget)
    .notify(tally.clone())
    .await;
    (result, calls.load(Ordering::SeqCst))
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn budget_spent_is_told_the_attempt_whose_retry_was_refused() {
    // An empty budget: the retry after attempt 1 is refused.
    let tally = Tally::default();
    let (result, calls) = always_down(5, budget(0.0), &tally).await;
    assert!(
        matches!(result, Err(RetryError::Inner("down"))),
        "{result:?}"
    );
    assert_eq!(calls, 1);
    assert_eq!(tally.retries(), Vec::<u32>::new());
    assert_eq!(tally.refused(), vec![1]);

    // One retry per call: the first retry is granted, the second refused.
    let tally = Tally::default();
    let (result, calls) = always_down(5, budget(1.0), &tally).await;
    assert!(
        matches!(result, Err(RetryError::Inner("down"))),
        "{result:?}"
    );
    assert_eq!(calls, 2);
    assert_eq!(tally.retries(), vec![1]);
    assert_eq!(tally.refused(), vec![2]);

    // Success after a granted retry: nothing refused.
    let tally = Tally::default();
    let calls = AtomicU32::new(0);
    let result = Retry::new(attempts(5), || {
        let n = calls.fetch_add(1, Ordering::SeqCst);
        async move { if n == 0 { Err("once") } else { Ok(n) } }
    })
    .budget(budget(1.0))
    .notify(tally.clone())
    .await;
    assert_eq!(result, Ok(1));
    assert_eq!(tally.refused(), Vec::<u32>::new());
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn budget_spent_is_not_told_when_no_retry_would_have_followed() {
    // The last attempt failing: the attempts ran out, not the budget.
    let tally = Tally::default();
    let (result, _) = always_down(1, budget(0.0), &tally).await;
    assert!(
        matches!(result, Err(RetryError::Inner("down"))),
        "{result:?}"
    );
    assert_eq!(tally.refused(), Vec::<u32>::new(), "max_attempts 1");

    // An error the classifier does not retry.
    let tally = Tally::default();
    let result = Retry::new(attempts(4), || async { Err::<(), _>("fatal") })
        .when(|e: &&str| *e != "fatal")
        .budget(budget(0.0))
        .notify(tally.clone())
        .await;
    assert!(
        matches!(result, Err(RetryError::Inner("fatal"))),
        "{result:?}"
    );
    assert_eq!(tally.refused(), Vec::<u32>::new(), "not retryable");

    // A success.
    let tally = Tally::default();
    let result = Retry::new(attempts(4), || async { Ok::<_, &str>(3) })
        .budget(budget(0.0))
        .notify(tally.clone())
        .await;
    assert_eq!(result, Ok(3));
    assert_eq!(tally.refused(), Vec::<u32>::new());

    // A shared budget: a granted retry on one call, and the other call's refusal counted once.
    let shared = budget(1.0);
    let tally = Tally::default();
    for _ in 0..3 {
        let _ = always_down(2, shared.clone(), &tally).await;
    }
    let (retries, refused) = (tally.retries().len(), tally.refused().len());
    assert_eq!(
        retries + refused,
        3,
        "each call retried or refused once: {retries} {refused}"
    );

    // A closure hook still compiles and hears only the retries scheduled.
    let heard = Arc::new(Mutex::new(0));
    let seen = Arc::clone(&heard);
    let _ = Retry::new(attempts(3), || async { Err::<(), _>("down") })
        .budget(budget(0.0))
        .notify(move |_: &RetryEvent<'_, (), &str>| *seen.lock().unwrap() += 1)
        .await;
    assert_eq!(*heard.lock().unwrap(), 0);
}

// ---------------------------------------------------------------------------------------------
// Half-open probes, bulkheads, rate limits, tables full.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_probe_in_flight_is_half_open_and_a_failed_probe_leaves_no_stale_half_open() {
    let (metrics, log, policies) = quiet_stack("probe", |b| {
        b.attempt_timeout(Some(secs(2)))
            .breaker(Some(opens_after(1)))
    });
    let uri = "http://p.example/";
    let (outcome, _) = fetch(&policies, uri, &[Answer::Status(500)]).await;
    assert_eq!(outcome.unwrap().status(), 500);
    tokio::time::sleep(secs(6)).await;

    // The probe hangs until its attempt timeout.
    let probing = spawn_call(
        &policies,
        uri,
        Overrides::new().no_retry(),
        vec![Answer::Hang],
    );
    tokio::time::sleep(secs(1)).await;
    let key = auth(uri);
    assert_eq!(
        policies.breakers().unwrap().not_closed(),
        vec![(key.clone(), State::HalfOpen)]
    );
    let snap = metrics.gauges(&policies);
    assert_eq!(snap.breaker_keys("probe", "half_open"), Some(1.0));
    assert_eq!(snap.breaker_keys("probe", "open"), Some(0.0));

    // Another request meanwhile is refused: the one probe slot is taken.
    let (outcome, sends) = fetch(&policies, uri, &[Answer::Status(200)]).await;
    assert_eq!(sends, 0);
    assert!(matches!(outcome, Err(Error::Rejected(_))), "{outcome:?}");

    let (outcome, sends) = probing.await.unwrap();
    assert!(matches!(outcome, Err(Error::TimedOut)), "{outcome:?}");
    assert_eq!(sends, 1);
    assert_eq!(
        policies.breakers().unwrap().not_closed(),
        vec![(key, State::Open)]
    );
    let snap = metrics.gauges(&policies);
    assert_eq!(snap.breaker_keys("probe", "half_open"), Some(0.0));
    assert_eq!(snap.breaker_keys("probe", "open"), Some(1.0));
    assert_eq!(log.ending_names(), ["failure", "rejected", "timed_out"]);
    assert_metrics_match_log(&snap, "probe", &log);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_full_bulkhead_refuses_and_a_request_dropped_in_its_queue_is_cancelled() {
    let uri = "http://q.example/";
    let (metrics, log, refusing) = quiet_stack("bh", |b| {
        b.attempt_timeout(Some(secs(2)))
            .bulkhead(Some(Bulkhead::builder(1).max_queue(0)))
    });
    let holder = spawn_call(
        &refusing,
        uri,
        Overrides::new(),
        vec![Answer::Slow(500, 200)],
    );
    tokio::time::sleep(ms(10)).await;
    let (outcome, sends) = fetch(&refusing, uri, &[Answer::Status(200)]).await;
    assert_eq!(sends, 0);
    assert!(
        matches!(outcome, Err(Error::Rejected(Rejected::BulkheadFull))),
        "{outcome:?}"
    );
    let (outcome, sends) = holder.await.unwrap();
    assert_eq!((outcome.unwrap().status().as_u16(), sends), (200, 1));
    assert_eq!(
        log.all(),
        vec![Ev::Rejected(Rejected::BulkheadFull), Ev::Succeeded]
    );

    // A queue: a waiter dropped while queued is a cancelled request, reported once.
    let qlog = Log::default();
    let queued = metrics.build(
        quiet("bhq", &qlog)
            .attempt_timeout(Some(secs(2)))
            .bulkhead(Some(Bulkhead::builder(1).max_queue(4))),
    );
    let holder = spawn_call(&queued, uri, Overrides::new(), vec![Answer::Slow(500, 200)]);
    tokio::time::sleep(ms(10)).await;
    let (waiting, sends) = start(
        &queued,
        get(uri),
        Overrides::new(),
        vec![Answer::Status(200)],
    );
    assert!(tokio::time::timeout(ms(100), waiting).await.is_err());
    assert_eq!(sends.load(Ordering::SeqCst), 0);
    let _ = holder.await.unwrap();
    // The queued one that waits its turn is served.
    let (outcome, _) = fetch(&queued, uri, &[Answer::Status(200)]).await;
    assert_eq!(outcome.unwrap().status(), 200);
    assert_eq!(
        qlog.all(),
        vec![Ev::Cancelled, Ev::Succeeded, Ev::Succeeded]
    );
    let snap = metrics.snapshot();
    assert_metrics_match_log(&snap, "bh", &log);
    assert_metrics_match_log(&snap, "bhq", &qlog);
    assert_eq!(snap.calls("bhq")["cancelled"], 1);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_rate_limit_wait_past_the_deadline_is_rejected_and_counted_once() {
    let (metrics, log, policies) = quiet_stack("rl", |b| {
        b.deadline(Some(secs(1))).rate_limit(Some(
            RateLimiter::builder(1, secs(10))
                .jitter(Duration::ZERO)
                .keyed(),
        ))
    });
    let uri = "http://r.example/";
    let (outcome, _) = fetch(&policies, uri, &[Answer::Status(200)]).await;
    assert_eq!(outcome.unwrap().status(), 200);
    let start = tokio::time::Instant::now();
    let (outcome, sends) = fetch(&policies, uri, &[Answer::Status(200)]).await;
    assert_eq!(sends, 0);
    assert!(
        matches!(outcome, Err(Error::Rejected(Rejected::DeadlineExceeded))),
        "{outcome:?}"
    );
    assert_eq!(start.elapsed(), Duration::ZERO, "refused at once");
    // A 503 whose retry would wait past the deadline for the limit.
    tokio::time::sleep(HOUR).await;
    let five03 = [Answer::Status(503), Answer::Status(200)];
    let (_, sends) = checked(&log, false, fetch(&policies, uri, &five03)).await;
    assert_eq!(sends, 1);
    assert_eq!(
        log.all()[..2],
        [Ev::Succeeded, Ev::Rejected(Rejected::DeadlineExceeded)]
    );
    let snap = metrics.snapshot();
    assert_metrics_match_log(&snap, "rl", &log);
    let keys = metrics
        .gauges(&policies)
        .table("tidewall_keyed_keys", "rl", "keyed_rate");
    assert!(matches!(keys, Some(k) if k <= 1.0), "{keys:?}");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_full_budget_table_gives_no_budget_and_the_request_is_sent_once() {
    let (metrics, log, policies) = quiet_stack("budget_full", |b| {
        b.max_authorities(1)
            .bulkhead(None)
            .retry_budget(Some(RetryBudgetPolicy::builder().build().unwrap()))
    });
    let five03 = [Answer::Status(503), Answer::Status(200)];
    // a draws on its budget: its table holds it for the budget's window.
    let (outcome, sends) = fetch(&policies, "http://a.example/", &five03).await;
    assert_eq!((outcome.unwrap().status().as_u16(), sends), (200, 2));
    let (outcome, sends, events) =
        logged(&log, fetch(&policies, "http://b.example/", &five03)).await;
    assert_eq!(
        (outcome.unwrap().status().as_u16(), sends),
        (503, 1),
        "no budget: sent once"
    );
    assert_eq!(events.last(), Some(&Ev::Failed));
    assert!(
        !events.iter().any(|e| matches!(e, Ev::Retry { .. })),
        "{events:?}"
    );
    // Once a's budget has rested, b has one of its own.
    tokio::time::sleep(HOUR * 2).await;
    let (outcome, sends, events) =
        logged(&log, fetch(&policies, "http://b.example/", &five03)).await;
    assert_eq!((outcome.unwrap().status().as_u16(), sends), (200, 2));
    check_request(&events, &Ev::Succeeded, sends, true);
    assert_metrics_match_log(&metrics.snapshot(), "budget_full", &log);
}

// ---------------------------------------------------------------------------------------------
// The tower front, and a race of aborts on a multi-thread runtime.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn the_tower_front_reports_as_run_does() {
    use tower::{Layer, ServiceExt};
    let (metrics, log, policies) = quiet_stack("layer", |b| b);
    // Hosts scripted by name, in tokio's time: a flaky one failing every other request, a
    // missing page, and one that answers after an hour.
    let hosts = Hosts::new(&tidewall::rt::Tokio);
    hosts.script("flaky.example:80", |n| {
        Reply::Status(if n.is_multiple_of(2) { 503 } else { 200 })
    });
    hosts.play("missing.example:80", [Reply::Status(404)]);
    hosts.play("hang.example:80", [Reply::Slow(HOUR)]);
    let client = tower::service_fn(move |request: Request<String>| hosts.send(request));
    let service = tidewall::tower::http::ClientLayer::new(policies.clone()).layer(client);
    let answer = service
        .clone()
        .oneshot(get("http://flaky.example/"))
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let mut once = get("http://flaky.example/");
    once.extensions_mut().insert(Overrides::new().no_retry());
    let answer = service.clone().oneshot(once).await.unwrap();
    assert_eq!(answer.status(), 503);
    let answer = service
        .clone()
        .oneshot(get("http://missing.example/"))
        .await
        .unwrap();
    assert_eq!(answer.status(), 404);
    let answer = service.clone().oneshot(get("http://hang.example/")).await;
    assert!(matches!(answer, Err(Error::TimedOut)), "{answer:?}");
    let dropped =
        tokio::time::timeout(ms(50), service.clone().oneshot(get("http://hang.example/"))).await;
    assert!(dropped.is_err());
    assert_eq!(
        log.ending_names(),
        ["success", "failure", "success", "timed_out", "cancelled"]
    );
    assert_eq!(log.retries(), 3, "{:?}", log.all());
    assert_metrics_match_log(&metrics.snapshot(), "layer", &log);
    log.assert_no_strangers();
}

pin_project_lite::pin_project! {
    /// Marks its first poll.
    struct FirstPoll<F> {
        #[pin]
        inner: F,
        polled: Arc<std::sync::atomic::AtomicBool>,
    }
}

impl<F: Future> Future for FirstPoll<F> {
    type Output = F::Output;
    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        let this = self.project();
        this.polled.store(true, Ordering::SeqCst);
        this.inner.poll(cx)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborts_racing_endings_on_two_threads_count_each_request_once() {
    let (metrics, log, policies) = stack(|log| {
        ClientPolicies::builder()
            .name("race")
            .retry(backoff(Duration::ZERO, 4))
            .retry_budget(None)
            .breaker(None)
            .on_event(log.listener("race"))
    });
    let mut rng = Rng::new(2024);
    let n = 2000;
    let mut tasks = Vec::new();
    for i in 0..n {
        let policies = policies.clone();
        let polled = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let yields: Vec<u64> = (0..4).map(|_| rng.below(6)).collect();
        let statuses: Vec<u16> = (0..4)
            .map(|_| pick(&mut rng, &[200, 503, 404, 500]))
            .collect();
        let abort_after = (rng.below(3) != 0).then(|| rng.below(8));
        let sends = Arc::new(AtomicU32::new(0));
        let send = {
            let sends = Arc::clone(&sends);
            move |_: Request<String>| {
                let k = sends.fetch_add(1, Ordering::SeqCst) as usize;
                let (y, s) = (yields[k.min(3)], statuses[k.min(3)]);
                async move {
                    for _ in 0..y {
                        tokio::task::yield_now().await;
                    }
                    Ok::<_, Fault>(response(s))
                }
            }
        };
        let fut = FirstPoll {
            inner: async move {
                policies
                    .run(
                        get(&format!("http://h{}.example/{i}", i % 7)),
                        Overrides::new(),
                        send,
                    )
                    .await
            },
            polled: Arc::clone(&polled),
        };
        let handle = tokio::spawn(fut);
        if let Some(after) = abort_after {
            for _ in 0..after {
                tokio::task::yield_now().await;
            }
            handle.abort();
        }
        tasks.push((handle, polled, sends));
    }
    let (mut reported, mut cancelled, mut ended) = (0u64, 0u64, 0u64);
    let (mut min_retries, mut max_retries) = (0u64, 0u64);
    for (handle, polled, sends) in tasks {
        let joined = handle.await;
        let sends = u64::from(sends.load(Ordering::SeqCst));
        match joined {
            Ok(outcome) => {
                assert!(outcome.is_ok(), "{outcome:?}");
                ended += 1;
                reported += 1;
                min_retries += sends - 1;
                max_retries += sends - 1;
            }
            Err(e) => {
                assert!(e.is_cancelled());
                if polled.load(Ordering::SeqCst) {
                    cancelled += 1;
                    reported += 1;
                }
                min_retries += sends.saturating_sub(1);
                max_retries += sends;
            }
        }
    }
    let snap = metrics.snapshot();
    let calls = snap.calls("race");
    assert_eq!(calls.values().sum::<u64>(), reported);
    assert_eq!(calls["cancelled"], cancelled);
    assert_eq!(snap.durations("race").len() as u64, ended);
    assert_metrics_match_log(&snap, "race", &log);
    let retries = log.retries();
    assert!(
        (min_retries..=max_retries).contains(&retries),
        "{retries} not in {min_retries}..={max_retries}"
    );
    log.assert_no_strangers();
}

// ---------------------------------------------------------------------------------------------
// Delays and durations as they really were, panicking listeners.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn each_scheduled_delay_is_the_sleep_that_followed_and_each_duration_the_time_taken() {
    // Full jitter (the default) and a cap on Retry-After; no deadline to cut anything.
    let (metrics, log, policies) = stack(|log| {
        ClientPolicies::builder()
            .name("delays")
            .retry(
                Backoff::exponential(ms(100))
                    .max_attempts(5)
                    .build()
                    .unwrap(),
            )
            .deadline(None)
            .attempt_timeout(Some(ms(300)))
            .max_retry_after(secs(60))
            .retry_budget(None)
            .breaker(None)
            .on_event(log.listener("delays"))
    });
    let standard = HttpClassifier::standard();
    let mut rng = Rng::new(31337);
    let menu = [
        Answer::Status(503),
        Answer::After(503, 1),
        Answer::After(429, 120),
        Answer::Hang,
        Answer::Slow(40, 502),
        Answer::Fails(FailureKind::Connect),
        Answer::Status(200),
    ];
    for i in 0..60 {
        let script: Vec<Answer> = (0..5).map(|_| pick(&mut rng, &menu)).collect();
        let at = Arc::new(Mutex::new(Vec::new()));
        let from = log.len();
        let start = tokio::time::Instant::now();
        let outcome = policies
            .run(
                get(&format!("http://d{}.example/", i % 3)),
                Overrides::new(),
                timed_sender(script.clone(), Arc::clone(&at)),
            )
            .await;
        let took = start.elapsed();
        let at = at.lock().unwrap().clone();
        let events = log.since(from);
        let ending = expected_ending(standard, &outcome);
        check_request(&events, &ending, u32::try_from(at.len()).unwrap(), true);
        // Each retry's delay is the time from the end of the failed attempt to the next
        // send: the attempts answer at once (0), after 40 ms, or at their 300 ms timeout.
        let delays: Vec<Duration> = events
            .iter()
            .filter_map(|e| match e {
                Ev::Retry { delay, .. } => Some(*delay),
                _ => None,
            })
            .collect();
        for (k, delay) in delays.iter().enumerate() {
            let took_attempt = match script[k] {
                Answer::Hang => ms(300),
                Answer::Slow(d, _) => ms(d),
                _ => Duration::ZERO,
            };
            let slept = at[k + 1] - at[k] - took_attempt;
            // tokio's timers fire on whole milliseconds: a sleep ends up to 1 ms late.
            assert!(
                slept >= *delay && slept - *delay <= ms(1),
                "request {i} retry {k}: slept {slept:?} for {delay:?}: {script:?} {events:?}"
            );
            if let Answer::After(_, n) = script[k] {
                assert!(
                    *delay >= secs(n.min(60)),
                    "at least the Retry-After (capped): {delay:?} {script:?}"
                );
            }
            assert!(*delay <= secs(60), "{delay:?}");
        }
        let snap = metrics.snapshot();
        let durations = snap.durations("delays");
        assert_eq!(durations.len(), i + 1);
        let recorded = durations[durations.len() - 1];
        assert!(
            (recorded - took.as_secs_f64()).abs() < 0.002,
            "request {i}: recorded {recorded} s, took {took:?}"
        );
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_retry_that_would_sleep_past_the_deadline_is_not_reported_scheduled() {
    let log = Log::default();
    let policies = quiet("past", &log)
        .retry(backoff(ms(100), 5))
        .deadline(Some(ms(250)))
        .build()
        .unwrap();
    let at = Arc::new(Mutex::new(Vec::new()));
    let start = tokio::time::Instant::now();
    let outcome = policies
        .run(
            get("http://a.example/"),
            Overrides::new(),
            timed_sender(vec![Answer::Status(503)], Arc::clone(&at)),
        )
        .await;
    let took = start.elapsed();
    let sends = at.lock().unwrap().len();
    assert_eq!(outcome.unwrap().status(), 503);
    assert_eq!(sends, 3, "at 0, 100 and 200 ms");
    // A retry "scheduled" is one whose sleep is slept: the third would end at 300 ms, past
    // the deadline, so the request ends without it.
    let retries = log.retries();
    assert!(
        retries == 2 || took > ms(200),
        "{retries} retries reported for {sends} sends, yet answered at {took:?}: {:?}",
        log.all()
    );
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_listener_that_panics_at_the_ending_does_not_make_it_two() {
    let panicked = Arc::new(AtomicU32::new(0));
    let (metrics, log, policies) = stack(|log| {
        let record = log.listener("panicky");
        let panicked = Arc::clone(&panicked);
        quiet("panicky", log).on_event(move |event: &Event<'_>| {
            record(event);
            if matches!(event.kind, EventKind::Succeeded)
                && panicked.fetch_add(1, Ordering::SeqCst) == 0
            {
                panic!("listener panics once");
            }
        })
    });
    let five03 = vec![Answer::Status(503), Answer::Status(200)];
    let task = spawn_call(&policies, "http://a.example/", Overrides::new(), five03);
    let joined = task.await;
    assert!(joined.unwrap_err().is_panic());
    // The next request is reported as usual.
    let (outcome, _) = fetch(&policies, "http://a.example/", &[Answer::Status(200)]).await;
    assert_eq!(outcome.unwrap().status(), 200);
    let endings: Vec<Ev> = log.all().into_iter().filter(Ev::is_ending).collect();
    assert_eq!(
        endings,
        vec![Ev::Succeeded, Ev::Succeeded],
        "the first request ended once, not also as cancelled: {:?}",
        log.all()
    );
    let snap = metrics.snapshot();
    let calls = snap.calls("panicky");
    assert_eq!(calls["cancelled"], 0, "{calls:?}");
    assert_eq!(calls.values().sum::<u64>(), 2, "{calls:?}");
}

// ---------------------------------------------------------------------------------------------
// Builder order, per-authority budgets.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn the_listener_and_counters_carry_the_name_set_after_them_and_survive_runtime() {
    let (metrics, log, policies) = stack(|log| {
        ClientPolicies::builder()
            .on_event(log.listener("renamed"))
            .retry_budget(None)
            .name("first")
            .runtime(tidewall::rt::Tokio)
            .name("renamed")
    });
    assert_eq!(policies.name(), "renamed");
    let (outcome, _) = fetch(
        &policies,
        "http://a.example/",
        &[Answer::Status(503), Answer::Status(200)],
    )
    .await;
    assert_eq!(outcome.unwrap().status(), 200);
    assert_eq!(log.len(), 2, "{:?}", log.all());
    log.assert_no_strangers();
    let snap = metrics.snapshot();
    assert_eq!(snap.calls("renamed")["success"], 1);
    assert_eq!(snap.calls("first").values().sum::<u64>(), 0);
    assert_eq!(snap.client_counter("tidewall_retries_total", "renamed"), 1);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn one_authority_spending_its_budget_leaves_the_others_theirs() {
    let (metrics, log, policies) = quiet_stack("per_host", |b| {
        b.retry(backoff(ms(1), 2))
            .retry_budget(Some(budget_policy(0.0, 1)))
    });
    let mut refused_a = 0;
    for _ in 0..40 {
        let (_, sends, events) = logged(
            &log,
            fetch(&policies, "http://a.example/", &[Answer::Status(503)]),
        )
        .await;
        check_request(&events, &Ev::Failed, sends, true);
        refused_a += u32::from(events.contains(&Ev::Budget));
    }
    assert!(refused_a > 0, "a's floor ran out");
    // b has a budget of its own.
    let (outcome, sends, events) = logged(
        &log,
        fetch(
            &policies,
            "http://b.example/",
            &[Answer::Status(503), Answer::Status(200)],
        ),
    )
    .await;
    assert_eq!((outcome.unwrap().status().as_u16(), sends), (200, 2));
    check_request(&events, &Ev::Succeeded, sends, true);
    let snap = metrics.snapshot();
    assert_eq!(
        snap.client_counter("tidewall_retry_budget_exhausted_total", "per_host"),
        u64::from(refused_a)
    );
    assert_metrics_match_log(&snap, "per_host", &log);
}
