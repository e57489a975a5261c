#![cfg(all(
    feature = "toml",
    feature = "http",
    feature = "metrics",
    feature = "tokio"
))]
//! Hostile black-box tests of `ClientPolicies::reconfigure` and the registry's HTTP clients
//! (`Registry::http_client`, `[instances.NAME.http]`), written from the rustdoc alone: requests
//! in flight across reloads, per-host tables retuned at once, stages removed and re-added
//! under held permits, refused reloads, listeners that panic, many reloads under load with
//! seeded drop points and idle gaps of hours. Virtual time throughout.

mod common;
mod keyed_support;
mod support;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keyed_support::client::{Answer, FRONTS, Front, Hosts, auth, get, request, send, status};
use support::{HOUR, Rng, assert_conserved, maybe_cancel, ms};
use tidewall::breaker::{CircuitBreaker, State, Window};
use tidewall::bulkhead::Bulkhead;
use tidewall::config::{ClientErrors, Config, HttpConfig, Problem, Registry};
use tidewall::http::{ClientPolicies, Overrides};
use tidewall::rt::{Clock, Runtime, Spawn, Tokio};
use tidewall::telemetry::{Event, EventKind};
use tidewall::testing::Clocked;
use tidewall::{Backoff, ConfigError, Error, Jitter, Rejected};

type Outcome = Result<http::Response<()>, Error<std::io::Error>>;

fn config(text: &str) -> Config {
    Config::from_toml(text).unwrap_or_else(|e| panic!("a valid configuration: {e}\n{text}"))
}

/// Every event heard, as (policy, name, kind).
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<(String, String, String)>>>);

impl Log {
    fn listener(&self) -> impl Fn(&Event<'_>) + Send + Sync + 'static {
        let log = self.clone();
        move |e: &Event<'_>| {
            let kind = format!("{:?}", e.kind);
            log.0
                .lock()
                .unwrap()
                .push((e.policy.to_owned(), e.name.to_owned(), kind));
        }
    }
    fn count(&self, policy: &str, name: &str, kind: &str) -> usize {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, n, k)| p == policy && n == name && k.contains(kind))
            .count()
    }
    fn clear(&self) {
        self.0.lock().unwrap().clear();
    }
    fn dump(&self) -> String {
        format!("{:#?}", self.0.lock().unwrap())
    }
    /// Asserts `count(policy, name, kind) == want`, printing every event heard if not.
    #[track_caller]
    fn assert_count(&self, policy: &str, name: &str, kind: &str, want: usize) {
        assert_eq!(self.count(policy, name, kind), want, "{}", self.dump());
    }
}

/// A registry built from `config` that tells `log` every event.
fn logged_registry(config: Config, log: &Log) -> Registry {
    Registry::builder(config)
        .on_event(log.listener())
        .build()
        .unwrap()
}

/// `registry`'s `outbound` client and a fresh set of hosts on Tokio.
fn outbound_client(registry: Registry) -> (Registry, ClientPolicies, Hosts<Tokio>) {
    let outbound = registry.http_client("outbound").unwrap();
    (registry, outbound, Hosts::new(&Tokio))
}

async fn run_on<R: Clock>(policies: &ClientPolicies<R>, hosts: &Hosts<R>, uri: &str) -> Outcome {
    policies
        .run(get(uri), Overrides::new(), |r| hosts.send(r))
        .await
}

async fn status_on<R: Clock>(
    policies: &ClientPolicies<R>,
    hosts: &Hosts<R>,
    uri: &str,
) -> Option<u16> {
    status(&run_on(policies, hosts, uri).await)
}

/// `run_on` in a task of its own, on clones of `policies` and `hosts`.
fn spawn_run(
    policies: &ClientPolicies,
    hosts: &Hosts<Tokio>,
    uri: &'static str,
) -> tokio::task::JoinHandle<Outcome> {
    let (p, h) = (policies.clone(), hosts.clone());
    tokio::spawn(async move { run_on(&p, &h, uri).await })
}

#[track_caller]
fn assert_bulkhead_full(outcome: &Outcome) {
    assert!(
        matches!(rejected(outcome), Some(Rejected::BulkheadFull)),
        "{outcome:?}"
    );
}

fn rejected(outcome: &Outcome) -> Option<&Rejected> {
    match outcome {
        Err(Error::Rejected(why)) => Some(why),
        _ => None,
    }
}

fn attempts(n: u32, delay: Duration) -> Backoff {
    Backoff::constant(delay)
        .jitter(Jitter::None)
        .max_attempts(n)
        .build()
        .unwrap()
}

fn queue0(n: usize) -> Option<tidewall::bulkhead::BulkheadBuilder> {
    Some(Bulkhead::builder(n).max_queue(0))
}

// ---------------------------------------------------------------------------------------
// A request in flight across a reload, on both fronts and every runtime.
// ---------------------------------------------------------------------------------------

/// The in-flight client: `deadline` and `attempt_timeout`, `max_attempts` 100 ms apart, a
/// breaker of `failures` in a row and a bulkhead of `concurrent` with no queue.
fn in_flight_config(
    deadline: &str,
    attempt_timeout: &str,
    max_attempts: u32,
    failures: u32,
    concurrent: usize,
) -> Config {
    config(&format!(
        r#"
    [instances.outbound]
    deadline = "{deadline}"
    attempt_timeout = "{attempt_timeout}"
    http = {{}}
    retry = {{ backoff = "constant", initial_delay = "100ms", jitter = "none", max_attempts = {max_attempts} }}
    breaker = {{ consecutive_failures = {failures}, failure_rate = "off", window_calls = 50 }}
    bulkhead = {{ max_concurrent = {concurrent}, max_queue = 0 }}
"#
    ))
}

/// "A request that has started keeps the deadline, attempt timeout, retry schedule [...] it
/// started with", while "each per-authority table [...] is retuned in place [...] at once (the
/// next attempt of a request in flight meets it)".
async fn in_flight_across_a_reload<R: Runtime>(rt: Clocked<R>, front: Front) {
    let registry = Registry::builder(in_flight_config("1s", "300ms", 4, 10, 4))
        .runtime(rt.clone())
        .build()
        .unwrap();
    let outbound = registry.http_client("outbound").unwrap();
    let hosts = Hosts::new(&rt);
    hosts.play("slow:80", [Answer::Slow(ms(200))]);
    hosts.play("flaky:80", [Answer::Status(503), Answer::Slow(ms(80))]);
    hosts.play("sick:80", [Answer::Status(503)]);
    hosts.play("fresh:80", [Answer::Slow(ms(60))]);
    let t0 = rt.now();
    let spawn = |uri: &'static str| {
        let (rt2, outbound, hosts) = (rt.clone(), outbound.clone(), hosts.clone());
        rt.spawn(async move {
            let out = send(front, &outbound, &hosts, get(uri)).await;
            (status(&out), rt2.now())
        })
    };
    let a = spawn("http://slow/");
    let b = spawn("http://flaky/");
    let c = spawn("http://sick/");
    rt.sleep(ms(10)).await;
    assert_eq!(
        (
            hosts.seen("slow:80"),
            hosts.seen("flaky:80"),
            hosts.seen("sick:80")
        ),
        (1, 1, 1)
    );

    let reload = registry
        .reload(in_flight_config("100ms", "50ms", 1, 2, 1))
        .unwrap();
    assert!(
        reload.reset.is_empty(),
        "the window kept its shape: {reload:?}"
    );
    assert_eq!(reload.retuned, 1, "an HTTP client counts once: {reload:?}");

    // The per-host bulkhead shrank at once: the held permit of `slow` fills it.
    let refused = send(front, &outbound, &hosts, get("http://slow/")).await;
    assert_bulkhead_full(&refused);
    assert_eq!(hosts.seen("slow:80"), 1);
    // A request after the reload runs on the new attempt timeout.
    let started = rt.now();
    let fresh = send(front, &outbound, &hosts, get("http://fresh/")).await;
    assert!(matches!(fresh, Err(Error::TimedOut)), "{fresh:?}");
    assert_eq!(rt.now() - started, ms(50));

    // `slow`: its 200 ms attempt is not cut by the new 50 ms timeout nor the 100 ms deadline.
    assert_eq!(a.await.unwrap(), (Some(200), t0 + ms(200)));
    // `flaky`: retried (the new schedule has one attempt) 100 ms after its first, and its
    // 80 ms second attempt is cut neither by the new 50 ms timeout nor the 100 ms deadline.
    assert_eq!(b.await.unwrap(), (Some(200), t0 + ms(180)));
    assert_eq!(hosts.seen("flaky:80"), 2);
    // `sick`: its second attempt meets the retuned breaker (two failures in a row open it)
    // and is answered with its own 503, not retried into the refusal.
    let (sick, _) = c.await.unwrap();
    assert_eq!(sick, Some(503));
    assert_eq!(
        outbound.breakers().unwrap().state(&auth("http://sick/")),
        Some(State::Open)
    );
    assert_eq!(
        hosts.seen("sick:80"),
        2,
        "the breaker kept its consecutive failure across the reload"
    );
    // The slot `slow` held came back to the retuned table.
    assert_eq!(
        outbound
            .bulkheads()
            .unwrap()
            .in_flight(&auth("http://slow/")),
        0
    );
    assert_conserved(
        &outbound
            .bulkheads()
            .unwrap()
            .get(&auth("http://slow/"))
            .unwrap(),
    );
}

#[test]
fn in_flight_requests_keep_their_settings_loop_front() {
    on_every_runtime!(|rt| in_flight_across_a_reload(rt, Front::Loop));
}

#[test]
fn in_flight_requests_keep_their_settings_tower_front() {
    on_every_runtime!(|rt| in_flight_across_a_reload(rt, Front::Tower));
}

// ---------------------------------------------------------------------------------------
// Breakers: kept when the window keeps its shape, reset with events when it does not.
// ---------------------------------------------------------------------------------------

fn breaker_config(failures: u32, window: &str) -> Config {
    config(&format!(
        r#"
        [instances.outbound]
        http = {{}}
        [instances.outbound.breaker]
        consecutive_failures = {failures}
        failure_rate = "off"
        {window}
        break_duration = "10s"
    "#
    ))
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn breakers_kept_on_same_shape_reset_with_events_otherwise() {
    let log = Log::default();
    let (registry, outbound, hosts) = outbound_client(logged_registry(
        breaker_config(2, "window_calls = 50"),
        &log,
    ));
    hosts.play("a:80", [Answer::Status(503)]);
    hosts.play("b:80", [Answer::Status(503)]);
    hosts.play("c:80", [Answer::Status(503), Answer::Status(200)]);
    for uri in [
        "http://a/",
        "http://a/",
        "http://b/",
        "http://b/",
        "http://c/",
    ] {
        let _ = run_on(&outbound, &hosts, uri).await;
    }
    let breakers = outbound.breakers().unwrap();
    let (a, b, c) = (auth("http://a/"), auth("http://b/"), auth("http://c/"));
    assert_eq!(breakers.state(&a), Some(State::Open));
    assert_eq!(breakers.state(&b), Some(State::Open));
    assert_eq!(breakers.counts(&c).unwrap().failures, 1);

    // Thresholds and break change, the count window of 50 stays: nothing reset.
    log.clear();
    let reload = registry
        .reload(breaker_config(3, "window_calls = 50"))
        .unwrap();
    assert!(reload.reset.is_empty(), "{reload:?}");
    assert_eq!(reload.retuned, 1, "{reload:?}");
    assert_eq!(breakers.state(&a), Some(State::Open));
    assert_eq!(breakers.state(&b), Some(State::Open));
    let kept = breakers.counts(&c).unwrap();
    assert_eq!((kept.calls, kept.failures), (1, 1), "the window kept");
    log.assert_count("breaker", "outbound", "StateChanged", 0);
    // The kept window counts towards the new threshold: two more failures in a row open it.
    hosts.play("c:80", [Answer::Status(503)]);
    let _ = run_on(&outbound, &hosts, "http://c/").await;
    let _ = run_on(&outbound, &hosts, "http://c/").await;
    assert_eq!(
        breakers.state(&c),
        Some(State::Open),
        "{:?}",
        breakers.counts(&c)
    );

    // The window changes shape (count 50 -> time 30 s): every host reset, with its event.
    log.clear();
    let reload = registry
        .reload(breaker_config(3, "window = \"30s\"\nwindow_buckets = 10"))
        .unwrap();
    assert_eq!(
        reload.reset,
        vec![tidewall::Name::from("outbound")],
        "{reload:?}"
    );
    assert_eq!(reload.retuned, 1, "{reload:?}");
    for host in [&a, &b, &c] {
        assert_eq!(breakers.state(host), Some(State::Closed), "{host:?}");
        assert_eq!(breakers.counts(host).unwrap().calls, 0, "{host:?}");
    }
    assert_eq!(
        breakers.policy().window(),
        Window::Time {
            span: Duration::from_secs(30),
            buckets: 10
        }
    );
    assert!(
        log.count("breaker", "outbound", "to: Closed") >= 3,
        "each open host's reset is told: {}",
        log.dump()
    );
    // Same time window, other bucket count: a shape change too.
    hosts.play("a:80", [Answer::Status(503)]);
    for _ in 0..3 {
        let _ = run_on(&outbound, &hosts, "http://a/").await;
    }
    assert_eq!(breakers.state(&a), Some(State::Open));
    let reload = registry
        .reload(breaker_config(3, "window = \"30s\"\nwindow_buckets = 5"))
        .unwrap();
    assert_eq!(reload.reset.len(), 1, "{reload:?}");
    assert_eq!(breakers.state(&a), Some(State::Closed));
}

// ---------------------------------------------------------------------------------------
// Bulkheads: shrunk below what is held, removed and re-added under held permits.
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn bulkhead_removed_and_re_added_under_held_permits_leaks_nothing() {
    let base = || {
        ClientPolicies::builder()
            .no_retry()
            .breaker(None)
            .retry_budget(None)
            .attempt_timeout(None)
            .deadline(None)
    };
    let policies = base().bulkhead(queue0(2)).build().unwrap();
    let hosts = Hosts::new(&Tokio);
    // The first two requests hang a second; the rest answer at once.
    hosts.script("h:80", |n| {
        if n < 2 {
            Answer::Slow(Duration::from_secs(1))
        } else {
            Answer::Status(200)
        }
    });
    let h = auth("http://h/");
    let held: Vec<_> = (0..2)
        .map(|_| spawn_run(&policies, &hosts, "http://h/"))
        .collect();
    tokio::time::sleep(ms(10)).await;
    let old = policies.bulkheads().unwrap();
    assert_eq!(old.in_flight(&h), 2);

    // Shrunk to one: nothing revoked, nobody new admitted.
    policies.reconfigure(base().bulkhead(queue0(1))).unwrap();
    assert_eq!(old.in_flight(&h), 2, "the held permits stay held");
    assert_eq!(old.get(&h).unwrap().capacity(), 1);
    let refused = run_on(&policies, &hosts, "http://h/").await;
    assert_bulkhead_full(&refused);

    // Removed: requests after go through with no bulkhead.
    policies.reconfigure(base().bulkhead(None)).unwrap();
    assert!(policies.bulkheads().is_none());
    assert_eq!(status_on(&policies, &hosts, "http://h/").await, Some(200));

    // Re-added with room for three: a new table, empty, though two old calls still run.
    policies.reconfigure(base().bulkhead(queue0(3))).unwrap();
    let new = policies.bulkheads().unwrap();
    assert_eq!(
        new.in_flight(&h),
        0,
        "a stage the settings add starts empty"
    );
    let permits: Vec<_> = (0..3).map(|_| new.try_acquire(&h).unwrap()).collect();
    assert!(new.try_acquire(&h).is_err());
    drop(permits);

    // The old calls end and give their permits back where they took them.
    for call in held {
        assert_eq!(status(&call.await.unwrap()), Some(200));
    }
    assert_eq!(new.in_flight(&h), 0);
    assert_conserved(&new.get(&h).unwrap());
}

// ---------------------------------------------------------------------------------------
// Adaptive limits: kept with the same algorithm, relearned when it changes.
// ---------------------------------------------------------------------------------------

fn adaptive_config(extra: &str) -> Config {
    config(&format!(
        r#"
        [instances.outbound]
        http = {{}}
        [instances.outbound.adaptive]
        algorithm = "aimd"
        min_limit = 1
        initial_limit = 10
        {extra}
    "#
    ))
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn adaptive_limit_kept_or_relearned_as_the_algorithm_says() {
    let registry = Registry::new(adaptive_config("max_limit = 100")).unwrap();
    let outbound = registry.http_client("outbound").unwrap();
    let h = auth("http://h/");
    let limits = outbound.adaptive_limiters().unwrap();
    let teach = || {
        let limit = limits.limit(&h).unwrap_or(10) as usize;
        let held: Vec<_> = (0..limit - 1)
            .map(|_| limits.try_acquire(&h).unwrap())
            .collect();
        limits.try_acquire(&h).unwrap().success();
        drop(held);
    };
    teach();
    teach();
    let learned = limits.limit(&h).unwrap();
    assert!(learned > 10, "{learned}");

    // Other settings than the algorithm's, and a default written out: nothing relearned.
    for extra in [
        "max_limit = 100\nbackoff_ratio = 0.9",
        "max_limit = 100\nmax_queue = 4\nmax_wait = \"50ms\"",
    ] {
        let reload = registry.reload(adaptive_config(extra)).unwrap();
        assert!(reload.relearning.is_empty(), "{extra}: {reload:?}");
        assert_eq!(reload.retuned, 1, "{reload:?}");
        assert_eq!(limits.limit(&h), Some(learned), "{extra}");
    }
    // The algorithm's own setting changes: every host relearns from the initial limit.
    let reload = registry.reload(adaptive_config("max_limit = 50")).unwrap();
    assert_eq!(
        reload.relearning,
        vec![tidewall::Name::from("outbound")],
        "{reload:?}"
    );
    assert_eq!(limits.limit(&h), Some(10));
    // Another kind.
    let vegas = config(
        r#"
        [instances.outbound]
        http = {}
        [instances.outbound.adaptive]
        algorithm = "vegas"
        min_limit = 1
        initial_limit = 7
        max_limit = 50
    "#,
    );
    let reload = registry.reload(vegas).unwrap();
    assert_eq!(reload.relearning.len(), 1, "{reload:?}");
    assert_eq!(limits.limit(&h), Some(7));

    // Swapped for a bulkhead, then back: the limiter re-added starts empty.
    let bulkhead = config(
        "[instances.outbound]\nhttp = {}\n[instances.outbound.bulkhead]\nmax_concurrent = 2\nmax_queue = 0\n",
    );
    registry.reload(bulkhead).unwrap();
    assert!(outbound.adaptive_limiters().is_none() && outbound.bulkheads().is_some());
    registry.reload(adaptive_config("max_limit = 100")).unwrap();
    assert!(outbound.bulkheads().is_none());
    let fresh = outbound.adaptive_limiters().unwrap();
    assert!(
        matches!(fresh.limit(&h), None | Some(10)),
        "{:?}",
        fresh.limit(&h)
    );
    assert_eq!(fresh.in_flight(&h), 0);
}

// ---------------------------------------------------------------------------------------
// Retry budgets: counts kept across a reload that keeps the window's shape.
// ---------------------------------------------------------------------------------------

/// An `[instances.outbound.retry]` table: `max_attempts` at a constant, unjittered delay.
fn retry_table(initial_delay: &str, max_attempts: u32) -> String {
    format!(
        "[instances.outbound.retry]\nbackoff = \"constant\"\ninitial_delay = \"{initial_delay}\"\njitter = \"none\"\nmax_attempts = {max_attempts}\n"
    )
}

fn budget_config(deadline: &str, window: &str) -> Config {
    let retry = retry_table("1ms", 2);
    config(&format!(
        r#"
        [instances.outbound]
        deadline = "{deadline}"
        http = {{}}
        {retry}
        [instances.outbound.budget]
        ratio = 0
        min_per_second = 1
        window = "{window}"
        buckets = 10
    "#
    ))
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn retry_budget_counts_survive_a_same_shape_reload() {
    let log = Log::default();
    let (registry, outbound, hosts) =
        outbound_client(logged_registry(budget_config("5s", "10s"), &log));
    hosts.play("sick:80", [Answer::Status(503)]);
    // Spend the host's budget.
    let mut retries = 0;
    while log.count("http_client", "outbound", "BudgetExhausted") == 0 {
        let before = hosts.seen("sick:80");
        let _ = run_on(&outbound, &hosts, "http://sick/").await;
        retries += hosts.seen("sick:80") - before - 1;
        assert!(retries < 1_000, "the budget never ran out");
    }
    assert!(retries > 0, "the budget allowed no retry at all");
    // Same window shape: the counts are kept, the budget still spent.
    let reload = registry.reload(budget_config("6s", "10s")).unwrap();
    assert_eq!(reload.retuned, 1, "{reload:?}");
    let before = hosts.seen("sick:80");
    let _ = run_on(&outbound, &hosts, "http://sick/").await;
    assert_eq!(
        hosts.seen("sick:80") - before,
        1,
        "still no budget after the reload"
    );
    assert_eq!(log.count("http_client", "outbound", "BudgetExhausted"), 2);
    // Control: another window's shape starts the counts afresh, so a retry is allowed.
    registry.reload(budget_config("6s", "20s")).unwrap();
    let before = hosts.seen("sick:80");
    let _ = run_on(&outbound, &hosts, "http://sick/").await;
    assert_eq!(hosts.seen("sick:80") - before, 2, "a new window's budget");
}

// ---------------------------------------------------------------------------------------
// Reloads refused whole, the old settings in force.
// ---------------------------------------------------------------------------------------

const THREE_ATTEMPTS: &str = r#"
    [instances.outbound]
    deadline = "1s"
    http = {}
    retry = { backoff = "constant", initial_delay = "10ms", jitter = "none", max_attempts = 3 }
    breaker = { consecutive_failures = 50, failure_rate = "off", window_calls = 50 }
"#;

/// The three-attempt client as JSON (which `Deserialize` reads unchecked), with `http` set.
fn unchecked(http: &str) -> Config {
    let mut c = config(THREE_ATTEMPTS);
    let policies = c.instances.get_mut("outbound").unwrap();
    policies.http = Some(serde_json::from_str::<HttpConfig>(http).unwrap());
    // A valid change besides, that must not be applied either.
    policies.retry.as_mut().unwrap().max_attempts = Some(1);
    policies.bulkhead =
        Some(serde_json::from_str(r#"{"max_concurrent": 1, "max_queue": 0}"#).unwrap());
    c
}

async fn attempts_made(outbound: &ClientPolicies, hosts: &Hosts<Tokio>, host: &str) -> u32 {
    hosts.play(&format!("{host}:80"), [Answer::Status(503)]);
    let _ = run_on(outbound, hosts, &format!("http://{host}/")).await;
    hosts.seen(&format!("{host}:80"))
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn bad_http_sections_are_refused_whole() {
    let log = Log::default();
    let (registry, outbound, hosts) =
        outbound_client(logged_registry(config(THREE_ATTEMPTS), &log));
    let malformed = [
        (r#"{"retry_statuses": [99]}"#, "retry_statuses"),
        (r#"{"retry_statuses": [1000]}"#, "retry_statuses"),
        (r#"{"fail_statuses": [0]}"#, "fail_statuses"),
        (r#"{"fail_statuses": [65535]}"#, "fail_statuses"),
        (r#"{"replay_methods": ["PO ST"]}"#, "replay_methods"),
        (r#"{"replay_methods": [""]}"#, "replay_methods"),
        (r#"{"retry_statuses": [200]}"#, "retry_statuses"),
        (r#"{"fail_statuses": [399]}"#, "fail_statuses"),
        (r#"{"replay_methods": ["post"]}"#, "replay_methods"),
    ];
    for (i, (http, key)) in malformed.into_iter().enumerate() {
        let refused = registry.reload(unchecked(http)).unwrap_err();
        assert_eq!(
            refused.path(),
            format!("instances.outbound.http.{key}"),
            "{http}"
        );
        assert!(
            matches!(refused.problem(), Problem::Malformed(_)),
            "{http}: {refused:?}"
        );
        let fresh = unchecked(http);
        assert!(fresh.validate().is_err(), "{http}");
        assert!(Registry::new(fresh).is_err(), "{http}");
        assert_eq!(
            attempts_made(&outbound, &hosts, &format!("m{i}")).await,
            3,
            "{http}"
        );
        assert!(outbound.bulkheads().is_none(), "{http}");
    }
    let both = r#"{"retry_statuses": [409, 521], "fail_statuses": [409]}"#;
    let refused = registry.reload(unchecked(both)).unwrap_err();
    assert!(
        refused.path().starts_with("instances.outbound.http."),
        "{refused}"
    );
    assert_eq!(attempts_made(&outbound, &hosts, "overlap").await, 3);
    assert_eq!(log.count("breaker", "outbound", "StateChanged"), 0);
    // The configuration in force is the old one.
    assert_eq!(*registry.config(), config(THREE_ATTEMPTS));
    // The extremes of the range are error statuses.
    let edges = r#"{"retry_statuses": [999], "fail_statuses": [400]}"#;
    registry.reload(unchecked(edges)).unwrap();
    assert!(outbound.bulkheads().is_some());
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn keys_changes_are_fixed_wherever_they_come_from() {
    let based = THREE_ATTEMPTS.replace(
        "[instances.outbound]\n",
        "[instances.outbound]\nbase = \"shared\"\n",
    );
    let with_base = |keys: &str| {
        config(&format!(
            "{based}\n[configs.shared.keys]\n{keys}\n\n[instances.other]\nhttp = {{}}\n"
        ))
    };
    let registry = Registry::new(with_base("max_keys = 100")).unwrap();
    let outbound = registry.http_client("outbound").unwrap();
    assert_eq!(outbound.max_authorities(), 100, "the base's [keys]");
    let hosts = Hosts::new(&Tokio);
    for (keys, path) in [
        ("max_keys = 101", "instances.outbound.keys.max_keys"),
        (
            "max_keys = 100\nidle_ttl = \"61s\"",
            "instances.outbound.keys.idle_ttl",
        ),
    ] {
        let refused = registry.reload(with_base(keys)).unwrap_err();
        assert_eq!(refused.path(), path, "{keys}");
        assert!(matches!(refused.problem(), Problem::Fixed), "{refused:?}");
    }
    // The same values written out are no change.
    registry
        .reload(with_base("max_keys = 100\nidle_ttl = \"60s\""))
        .unwrap();
    // One client's change refused refuses the other client's too.
    let text = format!(
        "{}\n[configs.shared.keys]\nmax_keys = 100\n[instances.other]\nhttp = {{}}\n[instances.other.keys]\nmax_keys = 5\n",
        based.replace("max_attempts = 3", "max_attempts = 1")
    );
    let refused = registry.reload(config(&text)).unwrap_err();
    assert_eq!(refused.path(), "instances.other.keys.max_keys");
    assert_eq!(attempts_made(&outbound, &hosts, "k").await, 3);
}

// ---------------------------------------------------------------------------------------
// What the registry lists, names not declared, its bound.
// ---------------------------------------------------------------------------------------

const EVERY_STAGE: &str = r#"
    defaults = { deadline = "200ms", breaker = { consecutive_failures = 2 } }
    [instances.outbound]
    http = {}
    breaker = { consecutive_failures = 3 }
    bulkhead = { max_concurrent = 2 }
    rate_limit = { count = 100, period = "1s" }
    budget = { ratio = 0.1 }
    [instances.plain.breaker]
    consecutive_failures = 3
    [instances.bare]
"#;

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn http_instances_have_no_plain_policies_and_undeclared_names_get_no_client() {
    let registry = Registry::new(config(EVERY_STAGE)).unwrap();
    let listed = |r: &Registry| {
        (
            r.breakers()
                .into_iter()
                .map(|(n, _)| n.to_string())
                .collect::<Vec<_>>(),
            r.bulkheads().len(),
            r.rate_limiters().len(),
            r.retry_budgets().len(),
            r.adaptive_limiters().len(),
        )
    };
    assert_eq!(listed(&registry), (vec!["plain".to_owned()], 0, 0, 0, 0));
    assert_eq!(registry.http_clients().len(), 1, "built up front");
    let outbound = registry.http_client("outbound").unwrap();
    assert!(outbound.breakers().is_some() && outbound.bulkheads().is_some());
    assert!(outbound.rate_limiters().is_some());

    // A name not declared: refused, not a client of no stages (a typo would be unprotected).
    let refused = registry.http_client("stranger").unwrap_err();
    assert_eq!(
        (refused.path(), refused.problem()),
        ("instances.stranger", &Problem::Undeclared)
    );
    assert_eq!(registry.http_clients().len(), 1, "nothing held for it");
    // A declared instance with no section: a client of no stages, under the defaults'
    // deadline.
    let bare = registry.http_client("bare").unwrap();
    assert!(bare.breakers().is_none() && bare.bulkheads().is_none());
    assert!(bare.rate_limiters().is_none() && bare.adaptive_limiters().is_none());
    let hosts = Hosts::new(&Tokio);
    hosts.play("slow:80", [Answer::Slow(Duration::from_secs(1))]);
    let t0 = tokio::time::Instant::now();
    let cut = run_on(&bare, &hosts, "http://slow/").await;
    assert!(cut.is_err(), "{cut:?}");
    assert_eq!(t0.elapsed(), ms(200), "the defaults' deadline");
    assert_eq!(registry.http_clients().len(), 2);
    // The bound: undeclared names are refused before any place is counted.
    let bounded = Registry::builder(config(EVERY_STAGE))
        .max_instances(3)
        .build()
        .unwrap();
    for name in ["stranger", "another"] {
        let refused = bounded.http_client(name).unwrap_err();
        assert_eq!(refused.problem(), &Problem::Undeclared, "{refused:?}");
    }
    assert_eq!(bounded.http_clients().len(), 1);
    bounded.http_client("bare").unwrap();

    // A reload reaches the stageless client too, and lists no plain policies for the
    // client, nor for a client the new file declares.
    let next = EVERY_STAGE.replace("deadline = \"200ms\"", "deadline = \"50ms\"")
        + "\n[instances.second]\nhttp = { client_errors = \"ignored\" }\n[instances.second.bulkhead]\nmax_concurrent = 1\n";
    let reload = registry.reload(config(&next)).unwrap();
    assert!(reload.built >= 1, "{reload:?}");
    assert_eq!(listed(&registry), (vec!["plain".to_owned()], 0, 0, 0, 0));
    let names: Vec<_> = registry
        .http_clients()
        .into_iter()
        .map(|(n, _)| n.to_string())
        .collect();
    assert_eq!(names, ["bare", "outbound", "second"]);
    let t0 = tokio::time::Instant::now();
    assert!(run_on(&bare, &hosts, "http://slow/").await.is_err());
    assert_eq!(
        t0.elapsed(),
        ms(50),
        "the stageless client follows the defaults"
    );
}

// ---------------------------------------------------------------------------------------
// The registry's listener and gauges.
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn the_registry_listener_hears_the_client_and_stages_added_by_reload() {
    let log = Log::default();
    let (registry, outbound, hosts) = outbound_client(logged_registry(
        config(
            "[instances.outbound]\nhttp = {}\n[instances.outbound.breaker]\nconsecutive_failures = 1\nfailure_rate = \"off\"\n",
        ),
        &log,
    ));
    hosts.play("down:80", [Answer::Status(503)]);
    let _ = run_on(&outbound, &hosts, "http://ok/").await;
    let _ = run_on(&outbound, &hosts, "http://down/").await;
    log.assert_count("http_client", "outbound", "Succeeded", 1);
    log.assert_count("http_client", "outbound", "Failed", 1);
    log.assert_count("breaker", "outbound", "to: Open", 1);

    // A bulkhead added by reload tells the registry's listener too.
    registry
        .reload(config(
            "[instances.outbound]\nhttp = {}\n[instances.outbound.bulkhead]\nmax_concurrent = 1\nmax_queue = 0\n",
        ))
        .unwrap();
    hosts.play("slow:80", [Answer::Slow(Duration::from_secs(1))]);
    let first = spawn_run(&outbound, &hosts, "http://slow/");
    tokio::time::sleep(ms(1)).await;
    log.clear();
    let refused = run_on(&outbound, &hosts, "http://slow/").await;
    assert_bulkhead_full(&refused);
    log.assert_count("http_client", "outbound", "Rejected", 1);
    log.assert_count("bulkhead", "outbound", "Rejected", 1);
    assert!(first.await.unwrap().is_ok());
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn registry_gauges_cover_the_clients_across_reloads() {
    use support::snapshot::{gauge, gauges_during};
    let registry = Registry::new(config(
        "[instances.outbound]\nhttp = {}\n[instances.outbound.breaker]\nconsecutive_failures = 1\n",
    ))
    .unwrap();
    let outbound = registry.http_client("outbound").unwrap();
    outbound
        .breakers()
        .unwrap()
        .try_acquire(&auth("http://down/"))
        .unwrap()
        .failure();
    let gauges = || gauges_during(|| registry.record_gauges());
    let open = [("name", "outbound"), ("state", "open")];
    assert_eq!(
        gauge(&gauges(), "tidewall_keyed_breaker_keys", &open),
        Some(1.0)
    );
    registry
        .reload(config(
            "[instances.outbound]\nhttp = {}\n[instances.outbound.breaker]\nconsecutive_failures = 1\n[instances.outbound.bulkhead]\nmax_concurrent = 3\n",
        ))
        .unwrap();
    assert_eq!(
        gauge(
            &gauges(),
            "tidewall_keyed_max_keys",
            &[("name", "outbound"), ("policy", "keyed_bulkhead")]
        ),
        Some(10_000.0),
        "the stage the reload added"
    );
    assert_eq!(
        gauge(&gauges(), "tidewall_keyed_breaker_keys", &open),
        Some(1.0),
        "the kept breaker still open"
    );
}

// ---------------------------------------------------------------------------------------
// A listener that panics as a reload resets breakers.
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_listener_panicking_in_a_reset_leaves_nothing_half_done() {
    let armed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let trigger = Arc::clone(&armed);
    let registry = Registry::builder(breaker_config(1, "window_calls = 10"))
        .on_event(move |e: &Event<'_>| {
            if let EventKind::StateChanged(change) = e.kind
                && change.to == State::Closed
                && trigger.load(std::sync::atomic::Ordering::SeqCst)
            {
                panic!("listener panics on reset");
            }
        })
        .build()
        .unwrap();
    let outbound = registry.http_client("outbound").unwrap();
    let breakers = outbound.breakers().unwrap();
    for host in ["http://a/", "http://b/"] {
        breakers.try_acquire(&auth(host)).unwrap().failure();
    }
    armed.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut next = breaker_config(1, "window_calls = 20");
    next.instances.get_mut("outbound").unwrap().bulkhead =
        Some(serde_json::from_str(r#"{"max_concurrent": 1, "max_queue": 0}"#).unwrap());
    next.instances.get_mut("outbound").unwrap().deadline =
        Some(tidewall::config::Toggle::On(ms(250)));
    let panicked = catch_unwind(AssertUnwindSafe(|| registry.reload(next.clone())));
    assert!(
        panicked.is_err(),
        "the listener's panic goes on to the caller"
    );
    armed.store(false, std::sync::atomic::Ordering::SeqCst);
    // Every table took its settings and the client its new stack.
    assert!(
        breakers.not_closed().is_empty(),
        "{:?}",
        breakers.not_closed()
    );
    assert_eq!(breakers.policy().window(), Window::Count { calls: 20 });
    assert!(outbound.bulkheads().is_some(), "the stage added");
    assert_eq!(*registry.config(), next, "the reload counted as applied");
    let hosts = Hosts::new(&Tokio);
    hosts.play("slow:80", [Answer::Slow(Duration::from_secs(1))]);
    let t0 = tokio::time::Instant::now();
    assert!(run_on(&outbound, &hosts, "http://slow/").await.is_err());
    assert_eq!(t0.elapsed(), ms(250), "the new deadline");
    // And the registry still reloads.
    registry
        .reload(breaker_config(1, "window_calls = 20"))
        .unwrap();
    assert!(outbound.bulkheads().is_none());
}

// ---------------------------------------------------------------------------------------
// Reconfigure from code: another runtime type, name kept, checked whole, extremes.
// ---------------------------------------------------------------------------------------

async fn reconfigure_keeps_runtime_and_name<R: Runtime>(rt: Clocked<R>) {
    let log = Log::default();
    let policies = ClientPolicies::builder()
        .runtime(rt.clone())
        .name("mine")
        .on_event(log.listener())
        .no_retry()
        .attempt_timeout(Some(Duration::from_secs(5)))
        .build()
        .unwrap();
    let hosts = Hosts::new(&rt);
    hosts.play("slow:80", [Answer::Slow(Duration::from_secs(10))]);
    // Settings on the default runtime, named otherwise and with their own listener.
    let other = Log::default();
    let settings = ClientPolicies::builder()
        .name("theirs")
        .on_event(other.listener())
        .no_retry()
        .attempt_timeout(Some(ms(50)))
        .bulkhead(queue0(1));
    let retuned = policies.reconfigure(settings).unwrap();
    assert_eq!(retuned, tidewall::http::Retuned::default());
    assert_eq!(policies.name(), "mine");
    assert_eq!(policies.bulkheads().unwrap().name(), "mine");
    let t0 = rt.now();
    let out = run_on(&policies, &hosts, "http://slow/").await;
    assert!(matches!(out, Err(Error::TimedOut)), "{out:?}");
    assert_eq!(
        rt.now() - t0,
        ms(50),
        "the timeout on the stack's own (virtual) clock"
    );
    log.assert_count("http_client", "mine", "TimedOut", 1);
    assert!(
        other.0.lock().unwrap().is_empty(),
        "the settings' listener is not read"
    );
}

#[test]
fn reconfigure_from_code_on_another_runtime_type() {
    common::on_tokio_current_thread(reconfigure_keeps_runtime_and_name);
    common::on_smol_single_thread(reconfigure_keeps_runtime_and_name);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn invalid_reconfigurations_change_nothing() {
    let log = Log::default();
    let breaker = |calls| {
        Some(
            CircuitBreaker::builder()
                .no_failure_rate()
                .consecutive_failures(5)
                .window(Window::Count { calls })
                .on_event(log.listener()),
        )
    };
    let policies = ClientPolicies::builder()
        .retry(attempts(3, ms(10)))
        .breaker(breaker(10))
        .bulkhead(queue0(5))
        .build()
        .unwrap();
    let down = auth("http://down/");
    for _ in 0..5 {
        policies
            .breakers()
            .unwrap()
            .try_acquire(&down)
            .unwrap()
            .failure();
    }
    assert_eq!(policies.breakers().unwrap().state(&down), Some(State::Open));
    log.clear();
    let aimd = || {
        use tidewall::adaptive::{AdaptiveLimiter, Aimd, AnyAlgorithm};
        Some(AdaptiveLimiter::builder(AnyAlgorithm::from(
            Aimd::builder().build().unwrap(),
        )))
    };
    // Each pairs a change that would reset the breakers and add a limiter with something
    // refused.
    let bad = [
        ClientPolicies::builder().deadline(Some(Duration::ZERO)),
        ClientPolicies::builder().attempt_timeout(Some(Duration::ZERO)),
        ClientPolicies::builder().deadline(Some(Duration::MAX)),
        ClientPolicies::builder().attempt_timeout(Some(Duration::MAX)),
        ClientPolicies::builder().max_retry_after(Duration::MAX),
        ClientPolicies::builder().max_authorities(0),
        ClientPolicies::builder().max_authorities(10_001),
        ClientPolicies::builder().idle_ttl(Duration::from_secs(61)),
        ClientPolicies::builder()
            .bulkhead(queue0(1))
            .adaptive(aimd()),
        ClientPolicies::builder().bulkhead(queue0(0)),
    ];
    for (i, settings) in bad.into_iter().enumerate() {
        let settings = settings.breaker(breaker(20)).rate_limit(Some(
            tidewall::rate::KeyedRateLimiter::builder(1, Duration::from_secs(1)),
        ));
        let refused = policies.reconfigure(settings);
        assert!(refused.is_err(), "case {i}: {refused:?}");
        let breakers = policies.breakers().unwrap();
        assert_eq!(breakers.state(&down), Some(State::Open), "case {i}");
        assert_eq!(
            breakers.policy().window(),
            Window::Count { calls: 10 },
            "case {i}"
        );
        assert!(
            policies.rate_limiters().is_none() && policies.adaptive_limiters().is_none(),
            "case {i}"
        );
    }
    log.assert_count("breaker", "http_client", "StateChanged", 0);
    let hosts = Hosts::new(&Tokio);
    hosts.play("x:80", [Answer::Status(503)]);
    let _ = run_on(&policies, &hosts, "http://x/").await;
    assert_eq!(hosts.seen("x:80"), 3, "the old schedule");
    let table = policies.bulkheads().unwrap();
    let x = auth("http://x/");
    let held: Vec<_> = (0..5).map(|_| table.try_acquire(&x).unwrap()).collect();
    assert!(table.try_acquire(&x).is_err(), "the old bulkhead of 5");
    drop(held);

    // idle_ttl may change where either side has no breaker.
    policies
        .reconfigure(ClientPolicies::builder().breaker(None))
        .unwrap();
    policies
        .reconfigure(
            ClientPolicies::builder()
                .breaker(breaker(10))
                .idle_ttl(Duration::from_secs(600)),
        )
        .unwrap();
    assert_eq!(
        policies.breakers().unwrap().idle_ttl(),
        Duration::from_secs(600)
    );
    let back = policies.reconfigure(ClientPolicies::builder().breaker(breaker(10)));
    assert!(
        matches!(back, Err(ConfigError::Conflict { .. })),
        "back to 60 s while both have breakers: {back:?}"
    );
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn extreme_settings() {
    // A huge number of attempts is bounded by the deadline.
    let (registry, outbound, hosts) = outbound_client(
        Registry::new(config(&format!(
            r#"
        [instances.outbound]
        deadline = "1s"
        attempt_timeout = "1ns"
        http = {{ retry_statuses = [999], fail_statuses = [400] }}
        {}
    "#,
            retry_table("10ms", u32::MAX)
        )))
        .unwrap(),
    );
    hosts.play("odd:80", [Answer::Status(999)]);
    let t0 = tokio::time::Instant::now();
    let out = run_on(&outbound, &hosts, "http://odd/").await;
    assert!(t0.elapsed() <= Duration::from_secs(1), "{:?}", t0.elapsed());
    assert!(
        matches!(out, Ok(_) | Err(Error::TimedOut | Error::Rejected(_))),
        "{out:?}"
    );
    // A 1 ns attempt timeout cuts any attempt that waits.
    hosts.play("slow:80", [Answer::Slow(ms(1))]);
    let _ = run_on(&outbound, &hosts, "http://slow/").await;
    assert!(t0.elapsed() <= Duration::from_secs(3));

    // 999 retried, 400 failed and not retried.
    registry
        .reload(config(&format!(
            r#"
            [instances.outbound]
            http = {{ retry_statuses = [999], fail_statuses = [400] }}
            {}
            [instances.outbound.breaker]
            consecutive_failures = 100
            failure_rate = "off"
        "#,
            retry_table("10ms", 3)
        )))
        .unwrap();
    hosts.play("nines:80", [Answer::Status(999)]);
    assert_eq!(
        status_on(&outbound, &hosts, "http://nines/").await,
        Some(999)
    );
    assert_eq!(hosts.seen("nines:80"), 3);
    hosts.play("bad-request:80", [Answer::Status(400)]);
    assert_eq!(
        status_on(&outbound, &hosts, "http://bad-request/").await,
        Some(400)
    );
    assert_eq!(hosts.seen("bad-request:80"), 1);
    let counts = outbound
        .breakers()
        .unwrap()
        .counts(&auth("http://bad-request/"))
        .unwrap();
    assert_eq!(counts.failures, 1, "{counts:?}");
}

// ---------------------------------------------------------------------------------------
// The `[http]` section prints and reads back.
// ---------------------------------------------------------------------------------------

#[test]
fn http_sections_round_trip_through_toml_and_json() {
    let c = config(
        r#"
        [defaults.http]
        client_errors = "success"
        [configs.edge.http]
        replay_methods = ["POST", "PATCH"]
        [instances.empty]
        http = {}
        [instances.full]
        base = "edge"
        [instances.full.http]
        retry_statuses = [400, 521, 999]
        fail_statuses = [409]
        client_errors = "ignored"
        replay_methods = ["POST", "X-CUSTOM"]
    "#,
    );
    let full = c.instances["full"].http.as_ref().unwrap();
    assert_eq!(full.client_errors, Some(ClientErrors::Ignored));
    assert_eq!(c.instances["empty"].http, Some(HttpConfig::default()));
    let printed = toml::to_string(&c).unwrap();
    assert_eq!(
        Config::from_toml(&printed).unwrap(),
        c,
        "printed:\n{printed}"
    );
    let json = serde_json::to_string(&c).unwrap();
    assert_eq!(serde_json::from_str::<Config>(&json).unwrap(), c, "{json}");
    // The instance with an empty section is still a client once read back.
    let back = Config::from_toml(&printed).unwrap();
    let registry = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async { Registry::new(back).map(|r| r.http_clients().len()) });
    assert_eq!(registry.unwrap(), 2);
}

// ---------------------------------------------------------------------------------------
// Many reloads under load: seeded drops, idle gaps of hours.
// ---------------------------------------------------------------------------------------

const VARIANTS: [&str; 6] = [
    r#"bulkhead = { max_concurrent = 3, max_queue = 0 }
    breaker = { consecutive_failures = 3, failure_rate = "off", window_calls = 50, break_duration = "2s" }
    retry = { initial_delay = "50ms", max_attempts = 3 }"#,
    r#"bulkhead = { max_concurrent = 1, max_queue = 0 }
    breaker = { consecutive_failures = 5, failure_rate = "off", window_calls = 50 }
    retry = { max_attempts = 2 }"#,
    r#"adaptive = { algorithm = "aimd", min_limit = 1, initial_limit = 2, max_limit = 8 }
    breaker = { consecutive_failures = 2, window_calls = 20 }"#,
    r#"bulkhead = { max_concurrent = 2, max_queue = 2, max_wait = "200ms" }
    budget = { ratio = 0.5 }
    retry = { max_attempts = 4 }"#,
    r#"retry = { max_attempts = 1 }"#,
    r#"bulkhead = { max_concurrent = 4, max_queue = 0 }
    rate_limit = { count = 5, period = "1s" }
    breaker = { window = "10s", break_duration = "1s" }"#,
];

fn variant(i: usize) -> Config {
    config(&format!(
        "[instances.outbound]\ndeadline = \"2s\"\nattempt_timeout = \"400ms\"\nhttp = {{ retry_statuses = [521] }}\n{}",
        VARIANTS[i]
    ))
}

const HOSTS: [&str; 3] = ["a", "b", "c"];

fn pick(rng: &mut Rng, n: usize) -> usize {
    usize::try_from(rng.below(n as u64)).unwrap()
}

async fn reloads_under_load<R: Runtime>(rt: Clocked<R>) {
    let mut rng = Rng::new(0x5eed_4e10ad);
    let registry = Registry::builder(variant(0))
        .runtime(rt.clone())
        .build()
        .unwrap();
    let outbound = registry.http_client("outbound").unwrap();
    let hosts = Hosts::new(&rt);
    for (k, host) in HOSTS.iter().enumerate() {
        hosts.script(&format!("{host}:80"), move |n| {
            match (n as usize * 7 + k * 3) % 6 {
                0 => Answer::Status(503),
                1 => Answer::Slow(ms(150)),
                2 | 5 => Answer::Status(200),
                3 => Answer::Reset,
                _ => Answer::Slow(ms(700)),
            }
        });
    }
    let mut tasks = Vec::new();
    // Requests that ended with a response, with an error, and that were dropped.
    let tally = Arc::new(Mutex::new([0u32; 3]));
    for round in 0..60 {
        let v = pick(&mut rng, VARIANTS.len());
        registry
            .reload(variant(v))
            .unwrap_or_else(|e| panic!("round {round}, variant {v}: {e}"));
        for _ in 0..rng.below(5) {
            let host = HOSTS[pick(&mut rng, 3)];
            let front = FRONTS[pick(&mut rng, 2)];
            let draw = rng.next();
            let (rt2, p, h) = (rt.clone(), outbound.clone(), hosts.clone());
            let (uri, tally) = (format!("http://{host}/"), Arc::clone(&tally));
            tasks.push(rt.spawn(async move {
                let out = maybe_cancel(&rt2, draw, send(front, &p, &h, get(&uri))).await;
                let i = match out {
                    Some(Ok(_)) => 0,
                    Some(Err(_)) => 1,
                    None => 2,
                };
                tally.lock().unwrap()[i] += 1;
            }));
        }
        match rng.below(4) {
            0 => {
                rt.sleep(HOUR * u32::try_from(1 + rng.below(5)).unwrap())
                    .await
            }
            1 => rt.sleep(ms(rng.below(500))).await,
            _ => {}
        }
    }
    for task in tasks {
        task.await.unwrap();
    }
    rt.sleep(HOUR).await;
    let tally = *tally.lock().unwrap();
    assert!(
        tally.iter().all(|&n| n > 0),
        "answered, failed, dropped: {tally:?}"
    );
    for host in HOSTS {
        let key = auth(&format!("http://{host}/"));
        assert_eq!(hosts.gauge(&format!("{host}:80")).now(), 0, "{host}");
        if let Some(table) = outbound.bulkheads() {
            assert_eq!(table.in_flight(&key), 0, "{host}");
        }
        if let Some(table) = outbound.adaptive_limiters() {
            assert_eq!(table.in_flight(&key), 0, "{host}");
        }
    }
    // Variant 0 again, then variant 1: one slot per host, exactly, for every host.
    registry.reload(variant(0)).unwrap();
    registry.reload(variant(1)).unwrap();
    let table = outbound.bulkheads().unwrap();
    for host in HOSTS {
        let key = auth(&format!("http://{host}/"));
        let one = table.try_acquire(&key).unwrap();
        assert!(table.try_acquire(&key).is_err(), "{host}: one slot only");
        drop(one);
        if let Some(bulkhead) = table.get(&key) {
            assert_conserved(&bulkhead);
        }
    }
    // And a request still runs end to end.
    let out = send(
        Front::Tower,
        &outbound,
        &hosts,
        request(http::Method::GET, "http://fresh/"),
    )
    .await;
    assert_eq!(status(&out), Some(200));
}

#[test]
fn many_reloads_under_load_leak_nothing() {
    on_every_runtime!(reloads_under_load);
}

// ---------------------------------------------------------------------------------------
// More in-flight contracts: Retry-After cap, classifier, idempotency; stages removed and
// re-added under a request that keeps its own; the tower service built before a reload.
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn in_flight_keeps_retry_after_cap_classifier_and_idempotency() {
    let stack = |http: &str, cap: &str| {
        config(&format!(
            "[instances.outbound]\ndeadline = \"30s\"\nhttp = {http}\n{}max_retry_after = \"{cap}\"\n",
            retry_table("10ms", 3)
        ))
    };
    let (registry, outbound, hosts) = outbound_client(
        Registry::new(stack(
            "{ retry_statuses = [521], replay_methods = [\"POST\"] }",
            "5s",
        ))
        .unwrap(),
    );
    // (`Retry-After` is read on a 429 or 503 only.)
    hosts.play("cdn:80", [Answer::Status(521), Answer::Status(201)]);
    hosts.play("busy:80", [Answer::After(503, 3), Answer::Status(200)]);
    let t0 = tokio::time::Instant::now();
    let spawn = |method: http::Method, uri: &'static str| {
        let (p, h) = (outbound.clone(), hosts.clone());
        tokio::spawn(async move {
            let out = p
                .run(request(method, uri), Overrides::new(), |r| h.send(r))
                .await;
            (status(&out), t0.elapsed())
        })
    };
    let post = spawn(http::Method::POST, "http://cdn/");
    let get_busy = spawn(http::Method::GET, "http://busy/");
    tokio::time::sleep(ms(5)).await;
    registry.reload(stack("{}", "1s")).unwrap();
    // The POST and its 521 were judged by the rules it started with.
    assert_eq!(post.await.unwrap(), (Some(201), ms(10)));
    assert_eq!(hosts.seen("cdn:80"), 2);
    // The GET's 3 s `Retry-After` under the 5 s cap it started with.
    assert_eq!(get_busy.await.unwrap(), (Some(200), Duration::from_secs(3)));
    // After the reload: 521 is the standard table's (a 5xx, retried) but a POST is sent once.
    hosts.play("cdn2:80", [Answer::After(521, 3), Answer::Status(201)]);
    let post = request(http::Method::POST, "http://cdn2/");
    let out = outbound
        .run(post, Overrides::new(), |r| hosts.send(r))
        .await;
    assert_eq!((status(&out), hosts.seen("cdn2:80")), (Some(521), 1));
    // And a GET's `Retry-After` is cut to the new 1 s cap.
    hosts.play("cdn3:80", [Answer::After(503, 3), Answer::Status(200)]);
    let t1 = tokio::time::Instant::now();
    assert_eq!(
        status_on(&outbound, &hosts, "http://cdn3/").await,
        Some(200)
    );
    assert_eq!(t1.elapsed(), Duration::from_secs(1));
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_request_keeps_a_removed_bulkhead_not_the_re_added_one() {
    let stack = |bulkhead: bool| {
        let mut text = format!(
            "[instances.outbound]\nhttp = {{}}\n{}",
            retry_table("100ms", 2)
        );
        if bulkhead {
            text.push_str("[instances.outbound.bulkhead]\nmax_concurrent = 1\nmax_queue = 0\n");
        }
        config(&text)
    };
    let (registry, outbound, hosts) = outbound_client(Registry::new(stack(true)).unwrap());
    hosts.script("h:80", |n| match n {
        0 => Answer::Status(503),
        1 => Answer::Slow(Duration::from_secs(1)),
        _ => Answer::Status(200),
    });
    let h = auth("http://h/");
    let old = outbound.bulkheads().unwrap();
    let first = spawn_run(&outbound, &hosts, "http://h/");
    tokio::time::sleep(ms(10)).await;
    registry.reload(stack(false)).unwrap();
    registry.reload(stack(true)).unwrap();
    let new = outbound.bulkheads().unwrap();
    assert_eq!(new.in_flight(&h), 0, "the re-added stage starts empty");
    // The first request's second attempt (at 100 ms) runs through the stack it started on.
    tokio::time::sleep(ms(140)).await;
    assert_eq!(hosts.seen("h:80"), 2);
    assert_eq!(
        (old.in_flight(&h), new.in_flight(&h)),
        (1, 0),
        "its own stage"
    );
    assert_eq!(status_on(&outbound, &hosts, "http://h/").await, Some(200));
    assert_eq!(status(&first.await.unwrap()), Some(200));
    assert_eq!((old.in_flight(&h), new.in_flight(&h)), (0, 0));
    assert_conserved(&new.get(&h).unwrap());
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn adaptive_permits_held_across_relearning_and_removal_come_back() {
    let (registry, outbound, hosts) =
        outbound_client(Registry::new(adaptive_config("max_limit = 100")).unwrap());
    hosts.play("h:80", [Answer::Slow(Duration::from_secs(1))]);
    let h = auth("http://h/");
    let limits = outbound.adaptive_limiters().unwrap();
    let spawn_calls = |n: usize| -> Vec<_> {
        (0..n)
            .map(|_| spawn_run(&outbound, &hosts, "http://h/"))
            .collect()
    };
    let calls = spawn_calls(6);
    tokio::time::sleep(ms(10)).await;
    assert_eq!(limits.in_flight(&h), 6);
    // Relearning from an initial limit of 3, below the 6 held: nothing revoked, no new call.
    let reload = registry
        .reload(config(
            "[instances.outbound]\nhttp = {}\n[instances.outbound.adaptive]\nalgorithm = \"aimd\"\nmin_limit = 1\ninitial_limit = 3\nmax_limit = 100\n",
        ))
        .unwrap();
    assert_eq!(reload.relearning.len(), 1, "{reload:?}");
    assert_eq!(limits.in_flight(&h), 6);
    assert!(
        limits.try_acquire(&h).is_err(),
        "six held fill a limit of three"
    );
    for call in calls {
        assert!(call.await.unwrap().is_ok());
    }
    assert_eq!(limits.in_flight(&h), 0, "every permit came back");
    let limit = limits.limit(&h).unwrap() as usize;
    let held: Vec<_> = (0..limit)
        .map(|_| limits.try_acquire(&h).unwrap())
        .collect();
    assert!(
        limits.try_acquire(&h).is_err(),
        "exactly the limit, {limit}"
    );
    drop(held);
    // Removed with calls in flight, then re-added: the new table starts empty.
    let calls = spawn_calls(2);
    tokio::time::sleep(ms(10)).await;
    let reload = registry
        .reload(config("[instances.outbound]\nhttp = {}\n"))
        .unwrap();
    assert!(
        reload.relearning.is_empty(),
        "a removed stage relearns nothing: {reload:?}"
    );
    let reload = registry.reload(adaptive_config("max_limit = 100")).unwrap();
    assert!(
        reload.relearning.is_empty(),
        "an added stage relearns nothing: {reload:?}"
    );
    let fresh = outbound.adaptive_limiters().unwrap();
    assert_eq!(fresh.in_flight(&h), 0);
    for call in calls {
        assert!(call.await.unwrap().is_ok());
    }
    assert_eq!((limits.in_flight(&h), fresh.in_flight(&h)), (0, 0));
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn rate_limit_cells_are_kept_across_a_reload() {
    let stack = |deadline: &str| {
        config(&format!(
            "[instances.outbound]\ndeadline = \"{deadline}\"\nhttp = {{}}\n[instances.outbound.rate_limit]\ncount = 1\nperiod = \"1h\"\nburst = 1\nmax_wait = \"0s\"\n"
        ))
    };
    let (registry, outbound, hosts) = outbound_client(Registry::new(stack("5s")).unwrap());
    assert_eq!(status_on(&outbound, &hosts, "http://h/").await, Some(200));
    let refused = run_on(&outbound, &hosts, "http://h/").await;
    assert!(
        matches!(rejected(&refused), Some(Rejected::RateLimited { .. })),
        "{refused:?}"
    );
    registry.reload(stack("6s")).unwrap();
    let refused = run_on(&outbound, &hosts, "http://h/").await;
    assert!(
        matches!(rejected(&refused), Some(Rejected::RateLimited { .. })),
        "the cell admitted before the reload still counts: {refused:?}"
    );
    assert_eq!(hosts.seen("h:80"), 1);
    assert_eq!(
        status_on(&outbound, &hosts, "http://other/").await,
        Some(200)
    );
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn reload_names_only_clients_it_reset_or_relearned() {
    // `stranger`: a second client, declared with no stage.
    let with_stranger = |window: &str| {
        let mut c = breaker_config(2, window);
        c.instances.insert("stranger".into(), Default::default());
        c
    };
    let registry = Registry::new(with_stranger("window_calls = 50")).unwrap();
    let outbound = registry.http_client("outbound").unwrap();
    let stranger = registry.http_client("stranger").unwrap();
    // No host seen yet: a shape change resets no breaker.
    let reload = registry.reload(with_stranger("window_calls = 20")).unwrap();
    assert!(
        reload.reset.is_empty(),
        "no authority's breaker was reset: {reload:?}"
    );
    assert_eq!(reload.retuned, 2, "each client once: {reload:?}");
    // A stage removed or added is no reset.
    let hosts = Hosts::new(&Tokio);
    hosts.play("down:80", [Answer::Status(503)]);
    for _ in 0..2 {
        let _ = run_on(&outbound, &hosts, "http://down/").await;
    }
    assert_eq!(outbound.breakers().unwrap().not_closed().len(), 1);
    let reload = registry
        .reload(config(
            "[instances.outbound]\nhttp = {}\n[instances.stranger]\n",
        ))
        .unwrap();
    assert!(
        reload.reset.is_empty() && reload.relearning.is_empty(),
        "{reload:?}"
    );
    let reload = registry.reload(with_stranger("window = \"5s\"")).unwrap();
    assert!(reload.reset.is_empty(), "{reload:?}");
    assert!(
        outbound.breakers().unwrap().not_closed().is_empty(),
        "added empty"
    );
    assert!(stranger.breakers().is_none(), "still no stages");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_tower_service_built_before_a_reload_follows_it() {
    use tower::{Service as _, ServiceExt as _};
    use tower_layer::Layer as _;
    let (registry, outbound, hosts) =
        outbound_client(Registry::new(config(THREE_ATTEMPTS)).unwrap());
    hosts.play("t:80", [Answer::Status(503)]);
    let h = hosts.clone();
    let mut service = tidewall::tower::http::ClientLayer::new(outbound)
        .layer(tower::service_fn(move |r: http::Request<String>| h.send(r)));
    // Made ready before the reload, called after it.
    service.ready().await.unwrap();
    registry
        .reload(config(
            &THREE_ATTEMPTS.replace("max_attempts = 3", "max_attempts = 1"),
        ))
        .unwrap();
    let out = service.call(get("http://t/")).await;
    assert_eq!(status(&out), Some(503));
    assert_eq!(hosts.seen("t:80"), 1, "the new schedule");
}

// ---------------------------------------------------------------------------------------
// Races between reconfigurations; reset breakers free a full table; names declared later.
// ---------------------------------------------------------------------------------------

/// Two threads reconfigure one stack at once. `reconfigure` "Applies `settings` to the stack,
/// for every clone of it", each per-authority table "retuned in place": once both have
/// returned, the stack in force must be one call's settings whole. Found: the breaker table
/// of one call's settings under the other call's stages (a breaker window of 10 with no
/// bulkhead, or of 20 with a bulkhead of 1), within a few hundred rounds.
#[test]
fn racing_reconfigurations_leave_one_whole_stack() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let _entered = runtime.enter();
    // Settings X: count window of 10, bulkhead of 1. Y: count window of 20, no bulkhead, a
    // rate limit.
    let x = || {
        ClientPolicies::builder()
            .breaker(Some(
                CircuitBreaker::builder().window(Window::Count { calls: 10 }),
            ))
            .bulkhead(queue0(1))
            .rate_limit(None)
    };
    let y = || {
        ClientPolicies::builder()
            .breaker(Some(
                CircuitBreaker::builder().window(Window::Count { calls: 20 }),
            ))
            .bulkhead(None)
            .rate_limit(Some(tidewall::rate::KeyedRateLimiter::builder(1, HOUR)))
    };
    let policies = x().build().unwrap();
    let h = auth("http://h/");
    for round in 0..400 {
        std::thread::scope(|scope| {
            for which in [0, 1] {
                let policies = &policies;
                scope.spawn(move || {
                    for _ in 0..20 {
                        let settings = if which == 0 { x() } else { y() };
                        policies.reconfigure(settings).unwrap();
                    }
                });
            }
        });
        let window = policies.breakers().unwrap().policy().window();
        let bulkhead = policies.bulkheads().map(|t| {
            drop(t.try_acquire(&h).unwrap());
            t.get(&h).unwrap().capacity()
        });
        let limited = policies.rate_limiters().is_some();
        assert!(
            matches!(
                (window, bulkhead, limited),
                (Window::Count { calls: 10 }, Some(1), false)
                    | (Window::Count { calls: 20 }, None, true)
            ),
            "round {round}: a stack of both settings: {window:?}, {bulkhead:?}, {limited}"
        );
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_reset_frees_a_full_table() {
    let stack = |window: &str| {
        config(&format!(
            "[instances.outbound]\nhttp = {{}}\n[instances.outbound.keys]\nmax_keys = 1\n[instances.outbound.breaker]\nconsecutive_failures = 1\nfailure_rate = \"off\"\n{window}\n"
        ))
    };
    let registry = Registry::new(stack("window_calls = 10")).unwrap();
    let outbound = registry.http_client("outbound").unwrap();
    assert_eq!(outbound.max_authorities(), 1);
    let hosts = Hosts::new(&Tokio);
    hosts.play("a:80", [Answer::Status(503)]);
    let _ = run_on(&outbound, &hosts, "http://a/").await;
    let full = run_on(&outbound, &hosts, "http://b/").await;
    assert!(
        matches!(rejected(&full), Some(Rejected::KeysFull { .. })),
        "{full:?}"
    );
    // The shape change resets `a` to closed with an empty window: it may be forgotten.
    let reload = registry.reload(stack("window_calls = 20")).unwrap();
    assert_eq!(reload.reset.len(), 1, "{reload:?}");
    let b = run_on(&outbound, &hosts, "http://b/").await;
    assert_eq!(status(&b), Some(200), "{b:?}");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn names_declared_or_dropped_by_a_reload() {
    let registry = Registry::new(config(THREE_ATTEMPTS)).unwrap();
    let outbound = registry.http_client("outbound").unwrap();
    // Not declared yet: no client.
    let undeclared = registry.http_client("later").unwrap_err();
    assert_eq!(undeclared.problem(), &Problem::Undeclared);
    registry
        .reload(config(&format!("{THREE_ATTEMPTS}\n[instances.later]\n")))
        .unwrap();
    let later = registry.http_client("later").unwrap();
    assert!(later.breakers().is_none());
    // `later` given stages: the client already handed out takes them.
    let next = format!(
        "{THREE_ATTEMPTS}\n[instances.later]\nhttp = {{}}\n[instances.later.breaker]\nconsecutive_failures = 1\n[instances.later.bulkhead]\nmax_concurrent = 2\n"
    );
    registry.reload(config(&next)).unwrap();
    assert!(later.breakers().is_some() && later.bulkheads().is_some());
    assert_eq!(later.name(), "later");
    // `outbound` no longer declared: refused, the client keeps every stage.
    let removed = registry
        .reload(config("[instances.later]\nhttp = {}\n"))
        .unwrap_err();
    assert_eq!(
        (removed.path(), removed.problem()),
        ("instances.outbound", &Problem::Removed)
    );
    assert!(outbound.breakers().is_some(), "kept whole");
    assert!(
        later.breakers().is_some(),
        "nothing of the refused reload applied"
    );
    // Declared with no section: the client loses its stages, as the file says.
    registry
        .reload(config(
            "[instances.later]\nhttp = {}\n[instances.outbound]\n",
        ))
        .unwrap();
    assert!(outbound.breakers().is_none());
    let hosts = Hosts::new(&Tokio);
    hosts.play("x:80", [Answer::Status(503)]);
    let _ = run_on(&outbound, &hosts, "http://x/").await;
    assert_eq!(hosts.seen("x:80"), 1, "no [retry], no retry");
    assert_eq!(registry.http_clients().len(), 2, "both still held");
}
