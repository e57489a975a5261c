//! Hostile black-box tests of the contracts changed by the audit-s36 fixes, written from the
//! public rustdoc only:
//!
//! 1. `config::Registry` with keyed instances (`[keys]`): no plain breaker, bulkhead, rate
//!    limiter or adaptive limiter up front (an instance keyed through its base too, never
//!    through the defaults), the listings, `Reload::built`, `record_gauges` and the series a
//!    keyed table's keys count in;
//! 2. breaker listeners: a panicking `on_state_change` on every path a breaker changes state
//!    by (a call, the passage of time, a probe, by hand, a reconfiguration), keyed tables,
//!    inside a pipeline and a tower layer; a retry or hedge budget keeps a draw whose
//!    listener panicked;
//! 3. `classify::{WithRetryAfter, Hinted}` stacked in either order through the retry future,
//!    the pipeline and the tower `RetryLayer`: precedence, fallback, caps, deadlines, a breaker
//!    held open, hint closures that must not be read (or that panic);
//! 4. `fs::write_atomic`: the temporary file's and the result's permissions at every step
//!    (private targets, odd modes, setuid/setgid/sticky bits, symbolic links), cancellation at
//!    every await point and of every blocking step, long and non-UTF-8 names.
//!
//! Every test quotes the doc sentence it checks. Time is virtual (paused tokio, `Clocked`);
//! nothing asserts on real time.
#![cfg(all(
    feature = "tokio",
    feature = "smol",
    feature = "async-std",
    feature = "tower",
    feature = "test-util",
    feature = "toml",
    feature = "metrics"
))]
#![allow(
    clippy::too_many_lines,
    clippy::cast_possible_truncation,
    clippy::float_cmp
)]

mod common;
#[path = "common/ready_later.rs"]
mod ready_later;
mod support;

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::ms;
use common::tally::Counters;
use futures_util::FutureExt as _;
use support::snapshot::{Series, gauges_during};
use tidewall::breaker::{CircuitBreaker, Reconfigured, State, Window};
use tidewall::config::{Config, Problem, Registry};
use tidewall::telemetry::{Event, EventKind};
use tidewall::{Error, Rejected};

const SEC: Duration = Duration::from_secs(1);

fn config(text: &str) -> Config {
    Config::from_toml(text).unwrap_or_else(|e| panic!("a valid configuration: {e}\n{text}"))
}

/// Runs `f`, which must panic (a listener's panic on purpose); its message.
fn panics<T>(what: &str, f: impl FnOnce() -> T) -> String {
    match std::panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(_) => panic!("{what}: expected the listener's panic to reach the caller"),
        Err(payload) => payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_default(),
    }
}

// === 1. Registry: keyed instances ============================================================

/// Every gauge `record_gauges` sets.
fn gauges<R: tidewall::rt::Clock>(registry: &Registry<R>) -> Vec<Series> {
    gauges_during(|| registry.record_gauges())
}

/// The gauges carrying `name=<instance>`.
fn gauges_of<R: tidewall::rt::Clock>(registry: &Registry<R>, instance: &str) -> Vec<Series> {
    let mut of = gauges(registry);
    of.retain(|(_, labels, _)| labels.get("name").is_some_and(|n| n == instance));
    of
}

fn gauge<R: tidewall::rt::Clock>(
    registry: &Registry<R>,
    metric: &str,
    labels: &[(&str, &str)],
) -> Option<f64> {
    support::snapshot::gauge(&gauges(registry), metric, labels)
}

fn names<T>(listed: Vec<(tidewall::Name, T)>) -> Vec<String> {
    listed
        .into_iter()
        .map(|(name, _)| name.to_string())
        .collect()
}

/// A base with a key table and every keyed kind, and instances over it: keyed through their
/// base (its `[keys]`), with their own sections or none. `plain` has the same sections and no
/// keys anywhere.
const KEYED_BY_BASE: &str = r#"
    [configs.per_tenant.keys]
    max_keys = 3
    [configs.per_tenant.breaker]
    consecutive_failures = 1
    break_duration = "10s"

    [instances.tenants]
    base = "per_tenant"
    [instances.tenants.bulkhead]
    max_concurrent = 1
    max_queue = 0
    [instances.tenants.rate_limit]
    count = 1
    period = "1h"

    [instances.peers]
    base = "per_tenant"
    [instances.peers.adaptive]
    algorithm = "aimd"
    min_limit = 1
    initial_limit = 2
    max_limit = 10

    [instances.plain.breaker]
    consecutive_failures = 1
    [instances.plain.bulkhead]
    max_concurrent = 1
"#;

/// Registry docs: "An instance with a `[keys]` table is keyed [...] none of them is built up
/// front nor listed by `breakers` and the like until something asks for the plain policy of
/// that name"; module docs: "An instance *has* a policy when it or its base has that section".
/// Instances whose `[keys]` (and breaker) come from their base are keyed too: nothing of theirs
/// is listed, while the plain instance is. Their tables work, bounded by the base's
/// `max_keys`, and still list nothing plain.
#[tokio::test(start_paused = true)]
async fn instances_keyed_through_their_base_build_and_list_no_plain_policy() {
    let registry = Registry::new(config(KEYED_BY_BASE)).unwrap();
    assert_eq!(names(registry.breakers()), ["plain"]);
    assert_eq!(names(registry.bulkheads()), ["plain"]);
    assert!(names(registry.rate_limiters()).is_empty());
    assert!(names(registry.adaptive_limiters()).is_empty());

    let tenants = registry.keyed_breaker::<u32>("tenants").unwrap();
    assert_eq!(tenants.max_keys(), 3, "the base's [keys]");
    for tenant in 0..3 {
        let _ = tenants
            .call(&tenant, || async { Err::<(), _>("down") })
            .await;
        assert_eq!(tenants.state(&tenant), Some(State::Open));
    }
    let slots = registry.keyed_bulkhead::<u32>("tenants").unwrap();
    let _held = slots.try_acquire(&1).unwrap();
    assert_eq!(slots.try_acquire(&1).map(drop), Err(Rejected::BulkheadFull));
    let limits = registry.keyed_rate_limiter::<u32>("tenants").unwrap();
    assert!(limits.check_key(&1).is_ok());
    assert!(limits.check_key(&1).is_err());
    let peers = registry.keyed_adaptive_limiter::<u32>("peers").unwrap();
    let _p = peers.try_acquire(&7).unwrap();
    assert_eq!(peers.limit(&7), Some(2));

    assert_eq!(
        names(registry.breakers()),
        ["plain"],
        "no `tenants: closed`"
    );
    assert_eq!(names(registry.bulkheads()), ["plain"]);
    assert!(names(registry.rate_limiters()).is_empty());
    assert!(names(registry.adaptive_limiters()).is_empty());
    assert_eq!(registry.keyed_tables().len(), 4);
}

/// Module docs: "the defaults only fill sections in". A `[defaults.keys]` gives no instance a
/// key table, so it makes no instance keyed: an instance with its own breaker and bulkhead
/// and no `[keys]` of its own (or its base's) is plain, built and listed from the start.
#[tokio::test(start_paused = true)]
async fn keys_in_the_defaults_make_no_instance_keyed() {
    let registry = Registry::new(config(
        r#"
        [defaults.keys]
        max_keys = 5
        [instances.db.breaker]
        consecutive_failures = 1
        [instances.db.bulkhead]
        max_concurrent = 2
        [instances.cache.rate_limit]
        count = 10
        period = "1s"
        "#,
    ))
    .unwrap();
    assert_eq!(names(registry.breakers()), ["db"]);
    assert_eq!(names(registry.bulkheads()), ["db"]);
    assert_eq!(names(registry.rate_limiters()), ["cache"]);
    let reload = registry
        .reload(config(
            r#"
            [defaults.keys]
            max_keys = 5
            [instances.db.breaker]
            consecutive_failures = 1
            [instances.db.bulkhead]
            max_concurrent = 2
            [instances.cache.rate_limit]
            count = 10
            period = "1s"
            [instances.queue.bulkhead]
            max_concurrent = 3
            "#,
        ))
        .unwrap();
    assert_eq!(reload.built, 1, "the new plain instance's bulkhead");
    assert_eq!(names(registry.bulkheads()), ["db", "queue"]);
}

/// Registry docs: "its breaker, bulkhead, rate limit and adaptive sections are made per key"
/// (not its retry budget: "Building the registry [...] builds every policy an instance
/// has"). `Reload::built`: "Policies of instances the new configuration declares that the
/// registry did not hold (a keyed instance's tables are made on first use, and not counted
/// here)". A keyed instance's budget is listed from the start; a reload adding a keyed
/// instance with a breaker, a bulkhead, a rate limit and a budget builds (and counts) its
/// budget alone and lists nothing plain of it.
#[tokio::test(start_paused = true)]
async fn a_keyed_instances_budget_is_built_and_counted_its_tables_are_not() {
    const ONE: &str = r#"
        [instances.hosts.breaker]
        consecutive_failures = 2
        [instances.hosts.budget]
        ratio = 0.2
        [instances.hosts.keys]
        max_keys = 8
    "#;
    let registry = Registry::new(config(ONE)).unwrap();
    assert_eq!(names(registry.retry_budgets()), ["hosts"]);
    assert!(registry.breakers().is_empty());
    let two = format!(
        "{ONE}\n{}",
        r#"
        [instances.routes.breaker]
        consecutive_failures = 2
        [instances.routes.bulkhead]
        max_concurrent = 4
        [instances.routes.rate_limit]
        count = 5
        period = "1s"
        [instances.routes.budget]
        ratio = 0.1
        [instances.routes.keys]
        max_keys = 8
        "#
    );
    let reload = registry.reload(config(&two)).unwrap();
    assert_eq!(
        reload.built, 1,
        "the new keyed instance's retry budget, nothing else"
    );
    assert_eq!(names(registry.retry_budgets()), ["hosts", "routes"]);
    assert!(registry.breakers().is_empty());
    assert!(registry.bulkheads().is_empty());
    assert!(registry.rate_limiters().is_empty());
    // The same configuration again: nothing new.
    let again = registry.reload(config(&two)).unwrap();
    assert_eq!(again.built, 0);
    assert!(registry.breakers().is_empty());
}

/// A reload that takes `[keys]` away makes the instance plain: its policies are "Policies of
/// instances the new configuration declares that the registry did not hold", built by the
/// reload (registry docs: "Policies of instances new in `config` are built"), counted in
/// `built` and listed. One that gives a plain instance `[keys]` keeps the plain policies it
/// held ("Handles got before the reload are the same policies").
#[tokio::test(start_paused = true)]
async fn a_reload_that_removes_keys_builds_and_counts_the_plain_policies() {
    const SECTIONS: &str = r#"
        [instances.hosts.breaker]
        consecutive_failures = 1
        [instances.hosts.bulkhead]
        max_concurrent = 2
        [instances.hosts.rate_limit]
        count = 5
        period = "1s"
        [instances.peers.adaptive]
        algorithm = "aimd"
        min_limit = 1
        initial_limit = 3
        max_limit = 9
    "#;
    let keyed = format!(
        "{SECTIONS}\n[instances.hosts.keys]\nmax_keys = 4\n[instances.peers.keys]\nmax_keys = 4\n"
    );
    let registry = Registry::new(config(&keyed)).unwrap();
    assert!(registry.breakers().is_empty() && registry.adaptive_limiters().is_empty());
    let reload = registry.reload(config(SECTIONS)).unwrap();
    assert_eq!(
        reload.built, 4,
        "hosts' breaker, bulkhead and rate limiter and peers' adaptive limiter, now plain"
    );
    assert_eq!(names(registry.breakers()), ["hosts"]);
    assert_eq!(names(registry.bulkheads()), ["hosts"]);
    assert_eq!(names(registry.rate_limiters()), ["hosts"]);
    assert_eq!(names(registry.adaptive_limiters()), ["peers"]);
    let breaker = registry.breaker("hosts").unwrap();
    breaker.try_acquire().unwrap().failure();
    assert_eq!(breaker.state(), State::Open, "the instance's own section");

    // And back to keyed: the plain ones stay the same policies.
    let back = registry.reload(config(&keyed)).unwrap();
    assert_eq!(back.built, 0);
    assert_eq!(registry.breaker("hosts").unwrap().state(), State::Open);
}

/// "until something asks for the plain policy of that name (its `pipeline`, say)". The
/// pipeline of a keyed instance makes the plain policies its stages use (`LivePipeline`: rate
/// limit, bulkhead or adaptive limiter, retry with budget, breaker), with the instance's
/// settings, and only those: after `pipeline("hosts")` they are listed; the adaptive
/// limiter of another keyed instance stays unbuilt until its own pipeline asks.
#[tokio::test(start_paused = true)]
async fn a_keyed_instances_pipeline_makes_exactly_its_stages_plain_ones() {
    let registry = Registry::new(config(
        r#"
        [instances.hosts.breaker]
        consecutive_failures = 1
        break_duration = "10s"
        [instances.hosts.bulkhead]
        max_concurrent = 1
        max_queue = 0
        [instances.hosts.rate_limit]
        count = 100
        period = "1s"
        [instances.hosts.keys]
        max_keys = 4
        [instances.peers.adaptive]
        algorithm = "aimd"
        min_limit = 1
        initial_limit = 1
        max_limit = 4
        [instances.peers.keys]
        max_keys = 4
        "#,
    ))
    .unwrap();
    let hosts = registry.pipeline("hosts").unwrap();
    assert_eq!(names(registry.breakers()), ["hosts"]);
    assert_eq!(names(registry.bulkheads()), ["hosts"]);
    assert_eq!(names(registry.rate_limiters()), ["hosts"]);
    assert!(
        registry.adaptive_limiters().is_empty(),
        "peers' was not asked for"
    );
    let failed = hosts.call(|| async { Err::<(), _>("down") }).await;
    assert_eq!(failed, Err(Error::Inner("down")));
    assert_eq!(
        registry.breaker("hosts").unwrap().state(),
        State::Open,
        "the pipeline's breaker is the registry's, with the instance's settings"
    );
    let _peers = registry.pipeline("peers").unwrap();
    assert_eq!(names(registry.adaptive_limiters()), ["peers"]);
    assert_eq!(registry.adaptive_limiter("peers").unwrap().limit(), 1);
}

/// `record_gauges`: "each keyed table's keys held and bound, labelled with the instance's
/// name [...] A keyed table's keys have no gauges of their own"; the telemetry table:
/// `tidewall_keyed_keys`, `tidewall_keyed_max_keys` labelled `policy`, `name`; `Event::policy`:
/// "(the registry's gauges of that table say `keyed_adaptive`)"; `KeyedTable::policy`:
/// `keyed_breaker`, `keyed_bulkhead`, `keyed_rate` or `keyed_adaptive`.
///
/// Before any table is asked for, a keyed instance has no gauge at all but its budget's (no
/// breaker said closed, no bulkhead idle and full). Each table asked for then has exactly its
/// two keyed gauges with the right `policy`, the keys it holds and its bound; no per-key or
/// plain gauge carries the instance's name. Once a pipeline makes the plain policies, their
/// gauges appear too.
#[tokio::test(start_paused = true)]
async fn keyed_tables_gauge_their_keys_and_bound_and_nothing_plain() {
    let registry = Registry::new(config(
        r#"
        [instances.gh.breaker]
        consecutive_failures = 1
        break_duration = "10s"
        [instances.gh.bulkhead]
        max_concurrent = 2
        max_queue = 0
        [instances.gh.rate_limit]
        count = 3
        period = "1s"
        [instances.gh.budget]
        ratio = 0.2
        [instances.gh.keys]
        max_keys = 7
        [instances.ga.adaptive]
        algorithm = "aimd"
        min_limit = 1
        initial_limit = 2
        max_limit = 10
        [instances.ga.keys]
        max_keys = 5
        "#,
    ))
    .unwrap();
    let before: Vec<String> = gauges_of(&registry, "gh")
        .into_iter()
        .chain(gauges_of(&registry, "ga"))
        .map(|(n, _, _)| n)
        .collect();
    assert_eq!(
        before,
        ["tidewall_retry_budget_balance"],
        "a keyed instance's plain policies are not gauged before anyone asks for them"
    );

    let breakers = registry.keyed_breaker::<String>("gh").unwrap();
    for host in ["a", "b", "c"] {
        let _ = breakers
            .call(&host.to_owned(), || async { Err::<(), _>("down") })
            .await;
    }
    let bulkheads = registry.keyed_bulkhead::<String>("gh").unwrap();
    let _held = bulkheads.try_acquire(&"a".to_owned()).unwrap();
    let limits = registry.keyed_rate_limiter::<String>("gh").unwrap();
    for client in ["x", "y"] {
        limits.check_key(&client.to_owned()).unwrap();
    }
    let adaptive = registry.keyed_adaptive_limiter::<String>("ga").unwrap();
    let _slot = adaptive.try_acquire(&"p".to_owned()).unwrap();

    let keys = |policy: &str, instance: &str| {
        (
            gauge(
                &registry,
                "tidewall_keyed_keys",
                &[("policy", policy), ("name", instance)],
            ),
            gauge(
                &registry,
                "tidewall_keyed_max_keys",
                &[("policy", policy), ("name", instance)],
            ),
        )
    };
    assert_eq!(keys("keyed_breaker", "gh"), (Some(3.0), Some(7.0)));
    assert_eq!(keys("keyed_bulkhead", "gh"), (Some(1.0), Some(7.0)));
    assert_eq!(keys("keyed_rate", "gh"), (Some(2.0), Some(7.0)));
    assert_eq!(keys("keyed_adaptive", "ga"), (Some(1.0), Some(5.0)));
    let mut after: Vec<String> = gauges_of(&registry, "gh")
        .into_iter()
        .chain(gauges_of(&registry, "ga"))
        .map(|(n, _, _)| n)
        .collect();
    after.sort();
    after.dedup();
    assert_eq!(
        after,
        [
            "tidewall_keyed_keys",
            "tidewall_keyed_max_keys",
            "tidewall_retry_budget_balance"
        ],
        "no breaker state, bulkhead, rate or adaptive gauge for a keyed instance's keys"
    );

    // The plain ones, once a pipeline asks for them.
    let _gh = registry.pipeline("gh").unwrap();
    let _ga = registry.pipeline("ga").unwrap();
    assert_eq!(
        gauge(
            &registry,
            "tidewall_breaker_state",
            &[("name", "gh"), ("state", "closed")]
        ),
        Some(1.0)
    );
    assert_eq!(
        gauge(&registry, "tidewall_bulkhead_capacity", &[("name", "gh")]),
        Some(2.0)
    );
    assert_eq!(
        gauge(&registry, "tidewall_adaptive_limit", &[("name", "ga")]),
        Some(2.0)
    );
}

/// Telemetry docs: "A keyed breaker's, bulkhead's or adaptive limiter's keys count together in
/// the series of the table's name, with the `policy` each key is (`breaker`, `bulkhead`): the
/// series a plain policy of that name counts in too, if one is also used (a registry's
/// pipeline of the instance, say). A keyed rate limiter's refusals count under `keyed_rate`."
/// `Event::policy`: a full table's refusals "come as `keyed_breaker`, `keyed_bulkhead` or
/// `keyed_adaptive`". Checked on the counters (the process's
/// recorder, installed before the registry is built) and on the registry's listener.
#[tokio::test(start_paused = true)]
async fn keyed_keys_count_in_their_tables_series_alongside_the_plain_policy() {
    let counters = Counters::installed();
    let events = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&events);
    let registry = Registry::builder(config(
        r#"
        [instances.s36k.breaker]
        consecutive_failures = 1
        break_duration = "10s"
        [instances.s36k.bulkhead]
        max_concurrent = 1
        max_queue = 0
        [instances.s36k.keys]
        max_keys = 2
        [instances.s36a.adaptive]
        algorithm = "aimd"
        min_limit = 1
        initial_limit = 1
        max_limit = 4
        [instances.s36a.keys]
        max_keys = 1
        [instances.s36r.rate_limit]
        count = 1
        period = "1h"
        [instances.s36r.keys]
        max_keys = 1
        "#,
    ))
    .on_event(move |event: &Event<'_>| {
        if let EventKind::Rejected(why) = event.kind {
            log.lock()
                .unwrap()
                .push(format!("{} {} {}", event.policy, event.name, why.kind()));
        }
    })
    .build()
    .unwrap();
    let total = |metric: &str, labels: &[&str]| counters.total(metric, labels);

    // Keyed breaker: two keys fail, a third key is refused by the full table.
    let breakers = registry.keyed_breaker::<u8>("s36k").unwrap();
    for key in [1, 2] {
        let _ = breakers.call(&key, || async { Err::<(), _>("down") }).await;
    }
    assert_eq!(
        breakers
            .call(&3, || async { Ok::<_, &str>(()) })
            .await
            .map_err(|e| e.rejection().map(|r| r.kind())),
        Err(Some("keys_full"))
    );
    // Their key's own refusal (open).
    let _ = breakers.call(&1, || async { Ok::<_, &str>(()) }).await;
    assert_eq!(
        total(
            "tidewall_calls_total",
            &["policy=breaker", "name=s36k", "outcome=failure"]
        ),
        2
    );
    assert_eq!(
        total(
            "tidewall_rejections_total",
            &["policy=breaker", "name=s36k", "reason=circuit_open"]
        ),
        1
    );
    assert_eq!(
        total(
            "tidewall_rejections_total",
            &["policy=keyed_breaker", "name=s36k", "reason=keys_full"]
        ),
        1
    );
    // The plain breaker of the same name (the pipeline's) counts in the same series.
    let pipeline = registry.pipeline("s36k").unwrap();
    let _ = pipeline.call(|| async { Err::<(), _>("down") }).await;
    assert_eq!(
        total(
            "tidewall_calls_total",
            &["policy=breaker", "name=s36k", "outcome=failure"]
        ),
        3
    );

    // Keyed bulkhead: a key's refusal is a `bulkhead`'s.
    let bulkheads = registry.keyed_bulkhead::<u8>("s36k").unwrap();
    let _held = bulkheads.try_acquire(&1).unwrap();
    assert_eq!(
        bulkheads.try_acquire(&1).map(drop),
        Err(Rejected::BulkheadFull)
    );
    assert_eq!(
        total(
            "tidewall_rejections_total",
            &["policy=bulkhead", "name=s36k", "reason=bulkhead_full"]
        ),
        1
    );

    // Keyed adaptive: a key's refusal as an `adaptive`'s, a full table's as `keyed_adaptive`.
    let adaptive = registry.keyed_adaptive_limiter::<u8>("s36a").unwrap();
    let _slot = adaptive.try_acquire(&1).unwrap();
    assert!(adaptive.try_acquire(&1).is_err(), "a limit of one");
    assert!(
        matches!(adaptive.try_acquire(&2), Err(Rejected::KeysFull { .. })),
        "a table of one key, held"
    );
    assert_eq!(
        total(
            "tidewall_rejections_total",
            &["policy=adaptive", "name=s36a"]
        ),
        1
    );
    assert_eq!(
        total(
            "tidewall_rejections_total",
            &["policy=keyed_adaptive", "name=s36a", "reason=keys_full"]
        ),
        1
    );

    // Keyed rate limiter: a key's refusal and a full table's, both under `keyed_rate`.
    let limits = registry.keyed_rate_limiter::<u8>("s36r").unwrap();
    limits.check_key(&1).unwrap();
    assert!(matches!(
        limits.check_key(&1),
        Err(Rejected::RateLimited { .. })
    ));
    assert!(matches!(
        limits.check_key(&2),
        Err(Rejected::RateLimited { .. })
    ));
    assert_eq!(
        total(
            "tidewall_rejections_total",
            &["policy=keyed_rate", "name=s36r", "reason=rate_limited"]
        ),
        2
    );
    assert_eq!(
        total("tidewall_rejections_total", &["policy=rate", "name=s36r"]),
        0
    );

    let mut seen = events.lock().unwrap().clone();
    seen.sort();
    let mut expected = vec![
        "breaker s36k circuit_open",
        "keyed_breaker s36k keys_full",
        "bulkhead s36k bulkhead_full",
        "adaptive s36a bulkhead_full",
        "keyed_adaptive s36a keys_full",
        "keyed_rate s36r rate_limited",
        "keyed_rate s36r rate_limited",
    ];
    expected.sort_unstable();
    assert_eq!(seen, expected, "the listener's `policy` labels");
}

/// `RegistryBuilder::max_instances`: "Every declared instance keeps a place in each kind [...]
/// a name the file does not declare gets `Problem::Full` when only reserved places are
/// left"; registry docs: "names taken from requests can neither grow it without bound nor take
/// a declared instance's place". A keyed instance builds no plain policy up front, but it is
/// declared: names from requests must not take the place its plain breaker, bulkhead and rate
/// limiter (its pipeline's) will need.
#[tokio::test(start_paused = true)]
async fn names_from_requests_cannot_take_a_keyed_instances_reserved_place() {
    let registry = Registry::builder(config(
        r#"
        [instances.hosts.breaker]
        consecutive_failures = 1
        [instances.hosts.bulkhead]
        max_concurrent = 1
        [instances.hosts.keys]
        max_keys = 4
        [instances.db.breaker]
        consecutive_failures = 1
        "#,
    ))
    .max_instances(2)
    .build()
    .unwrap();
    for request in ["from-a-request", "another-one", "a-third"] {
        let _ = registry.breaker(request);
        let _ = registry.bulkhead(request);
    }
    assert!(
        registry.breakers().len() <= 2,
        "at most max_instances breakers: {:?}",
        names(registry.breakers())
    );
    let pipeline = registry.pipeline("hosts");
    assert!(
        pipeline.is_ok(),
        "the keyed instance's pipeline found its place taken: {:?}",
        pipeline.err().map(|e| e.to_string())
    );
    assert!(registry.breaker("hosts").is_ok());
    assert!(registry.breaker("db").is_ok());
    assert_eq!(names(registry.breakers()), ["db", "hosts"]);
}

// === 2. Breaker listeners that panic =========================================================

/// What an `on_event` listener heard of state changes: (from, to, generation).
type Heard = Arc<Mutex<Vec<(State, State, u32)>>>;

fn hears_changes() -> (Heard, impl Fn(&Event<'_>) + Send + Sync + 'static) {
    let heard: Heard = Arc::default();
    let log = Arc::clone(&heard);
    (heard, move |event: &Event<'_>| {
        if let EventKind::StateChanged(change) = event.kind {
            log.lock()
                .unwrap()
                .push((change.from, change.to, change.generation));
        }
    })
}

fn last_change(heard: &Heard) -> Option<(State, State)> {
    heard.lock().unwrap().last().map(|&(f, t, _)| (f, t))
}

/// `on_state_change`: "Called on every state change [...] An `on_event` listener sees state
/// changes too"; `Event`: "A listener that panics unwinds into the call it was told of [...]
/// and the policy loses nothing to it: [...] a breaker permit whose outcome listener panics
/// records nothing and gives a half-open probe's slot back, as any permit unwound by a panic
/// does"; `force_open_if`: "The listeners hear of the force before this returns: code that
/// must not lose track of its force even if one of them panics records
/// `generation.wrapping_add(1)` first"; the telemetry table: `tidewall_breaker_transitions_total`
/// counts "state changes".
///
/// A state-change listener that panics on every change, on every path a breaker changes state
/// by: a failure that trips it, the break's end (met by `try_acquire`), a probe's success and
/// failure, `force_open`, `force_closed`, `reset`, `force_open_if`, `reset_if` and a
/// reconfiguration that resets it. Each time the panic reaches the caller, the state has
/// changed, `on_event` heard that very change (generations one apart), the transitions
/// counter counted it, and nothing is lost: the half-open probe slot taken as the break ended
/// is there for the next caller, and the new settings of the reconfiguration are in force.
#[tokio::test(start_paused = true)]
async fn a_panicking_state_change_listener_hides_no_transition_on_any_path() {
    let counters = Counters::installed();
    let (heard, on_event) = hears_changes();
    let breaker = CircuitBreaker::builder()
        .name("s36-every-path")
        .consecutive_failures(1)
        .break_duration(SEC)
        .half_open_probes(1)
        .max_open_hint(SEC)
        .on_state_change(|change| {
            panic!("state-change listener panics at {} (on purpose)", change.to)
        })
        .on_event(on_event)
        .build()
        .unwrap();
    let transitions = |to: State| {
        counters.total(
            "tidewall_breaker_transitions_total",
            &["name=s36-every-path", &format!("to={}", to.as_str())],
        )
    };
    let step = |what: &str, expected: (State, State), f: &mut dyn FnMut()| {
        let before = heard.lock().unwrap().len();
        let message = panics(what, f);
        assert!(message.contains("on purpose"), "{what}: {message}");
        assert_eq!(breaker.state(), expected.1, "{what}: the state changed");
        let heard_now = heard.lock().unwrap().clone();
        assert_eq!(
            heard_now.len(),
            before + 1,
            "{what}: on_event heard the change once: {heard_now:?}"
        );
        assert_eq!(last_change(&heard), Some(expected), "{what}");
        if let [.., (_, _, g1), (_, _, g2)] = heard_now[..] {
            assert_eq!(g2, g1.wrapping_add(1), "{what}: generations one apart");
        }
    };

    step(
        "a failure trips it",
        (State::Closed, State::Open),
        &mut || {
            breaker.try_acquire().unwrap().failure();
        },
    );
    tokio::time::advance(SEC).await;
    step(
        "the break ends",
        (State::Open, State::HalfOpen),
        &mut || {
            let _ = breaker.try_acquire_owned();
        },
    );
    let probe = breaker
        .try_acquire_owned()
        .expect("the probe slot was lost to the listener's panic");
    assert!(probe.is_probe());
    let mut probe = Some(probe);
    step(
        "a probe succeeds",
        (State::HalfOpen, State::Closed),
        &mut || {
            probe.take().unwrap().success();
        },
    );
    step(
        "a failure trips it again",
        (State::Closed, State::Open),
        &mut || {
            breaker.try_acquire().unwrap().failure();
        },
    );
    tokio::time::advance(SEC).await;
    step(
        "the break ends again",
        (State::Open, State::HalfOpen),
        &mut || {
            let _ = breaker.try_acquire_owned();
        },
    );
    let mut probe = breaker.try_acquire_owned().ok();
    assert!(probe.is_some(), "a probe slot");
    step("a probe fails", (State::HalfOpen, State::Open), &mut || {
        probe.take().unwrap().failure();
    });
    step("force_open", (State::Open, State::ForcedOpen), &mut || {
        breaker.force_open()
    });
    step(
        "force_closed",
        (State::ForcedOpen, State::ForcedClosed),
        &mut || {
            breaker.force_closed();
        },
    );
    step("reset", (State::ForcedClosed, State::Closed), &mut || {
        breaker.reset()
    });
    let (_, generation) = breaker.state_and_generation();
    step(
        "force_open_if",
        (State::Closed, State::ForcedOpen),
        &mut || {
            let _ = breaker.force_open_if(generation);
        },
    );
    assert_eq!(breaker.state_and_generation().1, generation.wrapping_add(1));
    step("reset_if", (State::ForcedOpen, State::Closed), &mut || {
        let _ = breaker.reset_if(generation.wrapping_add(1));
    });
    step(
        "a failure trips it once more",
        (State::Closed, State::Open),
        &mut || {
            breaker.try_acquire().unwrap().failure();
        },
    );
    let window = Window::Count { calls: 7 };
    step(
        "a reconfiguration resets it",
        (State::Open, State::Closed),
        &mut || {
            let how = breaker.reconfigure(
                CircuitBreaker::builder()
                    .consecutive_failures(3)
                    .window(window)
                    .break_duration(SEC),
            );
            assert_eq!(how.ok(), Some(Reconfigured::Reset));
        },
    );
    assert_eq!(
        breaker.policy().window(),
        window,
        "the reconfiguration's settings are in force though its listener panicked"
    );
    breaker.try_acquire().unwrap().failure();
    assert_eq!(
        breaker.state(),
        State::Closed,
        "three failures in a row now, not one"
    );

    for (to, times) in [
        (State::Open, 4),
        (State::HalfOpen, 2),
        (State::Closed, 4),
        (State::ForcedOpen, 2),
        (State::ForcedClosed, 1),
    ] {
        assert_eq!(transitions(to), times, "transitions to {to} counted");
    }
}

/// Keyed breakers have three listeners for a key's change: the base builder's
/// `on_state_change` and `on_event`, and the keyed builder's `on_state_change` ("Called on
/// every state change of any key's breaker, with the key [...] A listener set on the
/// breaker's builder is called too"). Whichever of the two state-change listeners panics, the
/// other one and `on_event` still hear the change, and the panic reaches the caller.
#[tokio::test(start_paused = true)]
async fn a_keyed_breakers_listeners_all_hear_a_change_whichever_one_panics() {
    let mut problems = Vec::new();
    for panicking in ["base", "keyed"] {
        let (heard, on_event) = hears_changes();
        let base_heard = Arc::new(Mutex::new(Vec::new()));
        let keyed_heard = Arc::new(Mutex::new(Vec::new()));
        let (b, k) = (Arc::clone(&base_heard), Arc::clone(&keyed_heard));
        let base_panics = panicking == "base";
        let breakers = CircuitBreaker::builder()
            .consecutive_failures(1)
            .break_duration(SEC)
            .on_event(on_event)
            .on_state_change(move |change| {
                b.lock().unwrap().push(change.to);
                assert!(!base_panics, "the base listener panics (on purpose)");
            })
            .keyed::<String>()
            .on_state_change(move |key: &String, change| {
                k.lock().unwrap().push((key.clone(), change.to));
                assert!(base_panics, "the keyed listener panics (on purpose)");
            })
            .build()
            .unwrap();
        let host = "a.example".to_owned();
        let permit = breakers.try_acquire(&host).unwrap();
        let message = panics(panicking, move || permit.failure());
        assert!(message.contains("on purpose"), "{panicking}: {message}");
        assert_eq!(breakers.state(&host), Some(State::Open), "{panicking}");
        if last_change(&heard) != Some((State::Closed, State::Open)) {
            problems.push(format!(
                "the {panicking} listener panics: on_event heard {:?}",
                heard.lock().unwrap()
            ));
        }
        if *base_heard.lock().unwrap() != [State::Open] {
            problems.push(format!(
                "the {panicking} listener panics: the base on_state_change heard {:?}",
                base_heard.lock().unwrap()
            ));
        }
        if *keyed_heard.lock().unwrap() != [(host.clone(), State::Open)] {
            problems.push(format!(
                "the {panicking} listener panics: the keyed on_state_change heard {:?}",
                keyed_heard.lock().unwrap()
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The same listener inside a composition: a breaker whose `on_state_change` always panics,
/// behind a bulkhead of one and a retry with a budget in a pipeline, and behind a tower
/// `RetryLayer` over a `BreakerLayer`. Each state change (a failure tripping it, the break's
/// end, a probe's success) unwinds into the call that made it, and "the policy loses
/// nothing": the bulkhead's slot comes back, the probe slot taken as the break ended is there
/// for the next call, `on_event` hears every change, and the next calls work.
#[tokio::test(start_paused = true)]
async fn a_panicking_state_change_listener_in_a_pipeline_and_a_tower_stack_loses_nothing() {
    use tidewall::budget::{RetryBudget, RetryBudgetPolicy};
    use tidewall::bulkhead::Bulkhead;
    use tidewall::pipeline::Pipeline;
    use tidewall::rt::{Clock as _, Tokio};
    use tidewall::tower::{BreakerLayer, RetryLayer};
    use tidewall::{Backoff, Jitter};
    use tower::ServiceExt as _;
    use tower_layer::Layer as _;

    let backoff = Backoff::constant(ms(10))
        .jitter(Jitter::None)
        .max_attempts(3)
        .build()
        .unwrap();
    let panicking_breaker = |heard: &mut Heard| {
        let (log, on_event): (Heard, _) = hears_changes();
        *heard = log;
        CircuitBreaker::builder()
            .consecutive_failures(1)
            .break_duration(SEC)
            .half_open_probes(1)
            .on_state_change(|_| panic!("state-change listener panics (on purpose)"))
            .on_event(on_event)
            .build()
            .unwrap()
    };

    // The pipeline.
    let mut heard: Heard = Arc::default();
    let breaker = panicking_breaker(&mut heard);
    let bulkhead = Bulkhead::builder(1).max_queue(0).build().unwrap();
    let budget = RetryBudget::new(
        RetryBudgetPolicy::builder()
            .ratio(1.0)
            .min_per_second(100)
            .build()
            .unwrap(),
        Tokio.now(),
    );
    let pipeline = Pipeline::builder()
        .bulkhead(bulkhead.clone())
        .retry(backoff)
        .retry_budget(budget)
        .breaker(breaker.clone())
        .build()
        .unwrap();
    let calls = AtomicUsize::new(0);
    let call = |fail: bool| {
        let calls = &calls;
        AssertUnwindSafe(pipeline.call(move || {
            calls.fetch_add(1, SeqCst);
            async move { if fail { Err("down") } else { Ok(7) } }
        }))
        .catch_unwind()
    };
    assert!(
        call(true).await.is_err(),
        "the trip's panic unwinds the call"
    );
    assert_eq!(calls.load(SeqCst), 1, "no retry ran after the panic");
    assert_eq!((breaker.state(), bulkhead.in_flight()), (State::Open, 0));
    assert_eq!(last_change(&heard), Some((State::Closed, State::Open)));
    // The retry honours the open breaker's hint (its remaining break), so the next call
    // waits the break out inside itself and meets the break's end, then a probe: each change
    // unwinds the call it happens in. Within four calls one must succeed.
    let mut answers = Vec::new();
    for _ in 0..4 {
        let answer = call(false).await;
        assert_eq!(bulkhead.in_flight(), 0, "the bulkhead slot came back");
        let done = matches!(answer, Ok(Ok(7)));
        answers.push(
            answer
                .map(|r| r.map_err(|e| e.to_string()))
                .map_err(|_| "panicked"),
        );
        if done {
            break;
        }
    }
    assert_eq!(
        answers.last().cloned(),
        Some(Ok(Ok(7))),
        "a probe slot lost to a panic would refuse every call: {answers:?}"
    );
    assert_eq!(breaker.state(), State::Closed);
    assert_eq!(
        heard
            .lock()
            .unwrap()
            .iter()
            .map(|&(f, t, _)| (f, t))
            .collect::<Vec<_>>(),
        [
            (State::Closed, State::Open),
            (State::Open, State::HalfOpen),
            (State::HalfOpen, State::Closed)
        ]
    );

    // The tower stack: RetryLayer over BreakerLayer over a service.
    let mut heard: Heard = Arc::default();
    let breaker = panicking_breaker(&mut heard);
    let served = Arc::new(AtomicUsize::new(0));
    let svc = {
        let served = Arc::clone(&served);
        tower::service_fn(move |fail: bool| {
            served.fetch_add(1, SeqCst);
            async move { if fail { Err("down") } else { Ok::<_, &str>(7) } }
        })
        .map_err(Error::Inner)
    };
    let stack = RetryLayer::new(backoff).layer(BreakerLayer::new(breaker.clone()).layer(svc));
    let send = |fail: bool| AssertUnwindSafe(stack.clone().oneshot(fail)).catch_unwind();
    assert!(
        send(true).await.is_err(),
        "the trip's panic unwinds the call"
    );
    assert_eq!(served.load(SeqCst), 1, "no retry ran after the panic");
    assert_eq!(breaker.state(), State::Open);
    tokio::time::advance(SEC).await;
    let mut answers = Vec::new();
    for _ in 0..4 {
        let answer = send(false).await;
        let done = matches!(answer, Ok(Ok(7)));
        answers.push(
            answer
                .map(|r| r.map_err(|e| e.to_string()))
                .map_err(|_| "panicked"),
        );
        if done {
            break;
        }
    }
    assert_eq!(
        answers.last().cloned(),
        Some(Ok(Ok(7))),
        "a probe slot lost to a panic would refuse every call: {answers:?}"
    );
    assert_eq!(breaker.state(), State::Closed);
    assert_eq!(
        heard
            .lock()
            .unwrap()
            .iter()
            .map(|&(f, t, _)| (f, t))
            .collect::<Vec<_>>(),
        [
            (State::Closed, State::Open),
            (State::Open, State::HalfOpen),
            (State::HalfOpen, State::Closed)
        ]
    );
}

/// `Event`: "A retry budget is the exception: a retry (or hedge) is drawn from it before the
/// listener hears `RetryScheduled` (`HedgeLaunched`), so one whose listener panics stays drawn,
/// though it never runs."
///
/// Two identical pipelines (a bulkhead of one, a retry, a shared-nothing budget holding five
/// retries), one whose listener panics on `RetryScheduled`: after one call each whose first
/// attempt fails, both budgets hold the same balance (the draw stays), the panicking one ran
/// its operation once (the retry never ran), and its bulkhead slot came back ("the policy
/// loses nothing").
#[tokio::test(start_paused = true)]
async fn a_retry_whose_listener_panicked_stays_drawn_and_never_runs() {
    use tidewall::budget::{RetryBudget, RetryBudgetPolicy};
    use tidewall::bulkhead::Bulkhead;
    use tidewall::pipeline::Pipeline;
    use tidewall::rt::{Clock as _, Tokio};
    use tidewall::{Backoff, Jitter};

    let mut outcomes = Vec::new();
    for panicking in [false, true] {
        let now = Tokio.now();
        let budget = RetryBudget::new(
            RetryBudgetPolicy::builder()
                .ratio(0.5)
                .min_per_second(0)
                .build()
                .unwrap(),
            now,
        );
        for _ in 0..10 {
            budget.deposit(now);
        }
        assert_eq!(budget.balance(now), 5);
        let bulkhead = Bulkhead::builder(1).max_queue(0).build().unwrap();
        let pipeline = Pipeline::builder()
            .bulkhead(bulkhead.clone())
            .retry(
                Backoff::constant(ms(10))
                    .jitter(Jitter::None)
                    .max_attempts(3)
                    .build()
                    .unwrap(),
            )
            .retry_budget(budget.clone())
            .on_event(move |event: &Event<'_>| {
                if panicking && matches!(event.kind, EventKind::RetryScheduled { .. }) {
                    panic!("the listener panics on RetryScheduled (on purpose)");
                }
            })
            .build()
            .unwrap();
        let calls = AtomicU32::new(0);
        let result = AssertUnwindSafe(pipeline.call(|| {
            let n = calls.fetch_add(1, SeqCst);
            async move { if n == 0 { Err("flaky") } else { Ok(n) } }
        }))
        .catch_unwind()
        .await;
        assert_eq!(result.is_err(), panicking, "the panic reaches the caller");
        outcomes.push((
            budget.balance(Tokio.now()),
            calls.load(SeqCst),
            bulkhead.in_flight(),
        ));
    }
    let (control, panicked) = (outcomes[0], outcomes[1]);
    assert_eq!(control.1, 2, "the control's retry ran");
    assert_eq!(panicked.1, 1, "the retry whose listener panicked never ran");
    assert_eq!(panicked.2, 0, "the bulkhead slot came back");
    assert_eq!(
        panicked.0, control.0,
        "the draw stays (balance {} after the panic, {} after the retry that ran)",
        panicked.0, control.0
    );
}

/// The same for a hedge: two identical hedging policies with a budget (`budget_ratio(0.5)`),
/// warmed by ten calls answered at once, one whose listener panics on the first
/// `HedgeLaunched`. That call ran its operation once (the hedge never ran); afterwards, under
/// the same run of twenty slow calls, both launch exactly as many hedges: the panicked hedge
/// stayed drawn, no more and no less.
#[tokio::test(start_paused = true)]
async fn a_hedge_whose_listener_panicked_stays_drawn_and_never_runs() {
    use tidewall::hedge::{Hedge, Idempotent};

    let mut outcomes = Vec::new();
    for panicking in [false, true] {
        let launched = Arc::new(AtomicU32::new(0));
        let counted = Arc::clone(&launched);
        let hedge = Hedge::builder()
            .delay(ms(10))
            .max_hedges(1)
            .budget_ratio(0.5)
            .on_event(move |event: &Event<'_>| {
                if let EventKind::HedgeLaunched { .. } = event.kind {
                    let first = counted.fetch_add(1, SeqCst) == 0;
                    if panicking && first {
                        panic!("the listener panics on HedgeLaunched (on purpose)");
                    }
                }
            })
            .build()
            .unwrap();
        for _ in 0..10 {
            assert_eq!(
                hedge.call(Idempotent(|| async { Ok::<_, ()>(0) })).await,
                Ok(0)
            );
        }
        let starts = AtomicU32::new(0);
        let slow = || {
            starts.fetch_add(1, SeqCst);
            async {
                tokio::time::sleep(ms(50)).await;
                Ok::<_, ()>(1)
            }
        };
        let first = AssertUnwindSafe(hedge.call(Idempotent(slow)))
            .catch_unwind()
            .await;
        assert_eq!(first.is_err(), panicking, "the panic reaches the caller");
        assert_eq!(
            launched.load(SeqCst),
            1,
            "the first slow call launched a hedge"
        );
        let first_starts = starts.swap(0, SeqCst);
        for _ in 0..20 {
            assert_eq!(hedge.call(Idempotent(slow)).await, Ok(1));
        }
        outcomes.push((first_starts, launched.load(SeqCst) - 1));
    }
    let (control, panicked) = (outcomes[0], outcomes[1]);
    assert_eq!(control.0, 2, "the control's hedge ran");
    assert_eq!(panicked.0, 1, "the hedge whose listener panicked never ran");
    assert!(
        control.1 < 20,
        "the budget binds within the run ({} hedges)",
        control.1
    );
    assert_eq!(
        panicked.1, control.1,
        "hedges launched afterwards: the panicked draw must stay drawn"
    );
}

// === 3. Hints stacked in either order ========================================================

mod hints {
    use super::*;
    use std::collections::VecDeque;
    use std::future::Future;
    use tidewall::RetryAfter;
    use tidewall::classify::Verdict;

    /// An operation's error: with a hint of its own, or without.
    #[derive(Debug, Clone, PartialEq)]
    pub(super) enum Api {
        Throttled(Duration),
        Plain,
    }

    impl RetryAfter for Api {
        fn retry_after(&self) -> Option<Duration> {
            match self {
                Api::Throttled(wait) => Some(*wait),
                Api::Plain => None,
            }
        }
    }

    /// `Ok(503)` is retried, `Ok(404)` ignored, other values succeed, every error is retried.
    pub(super) fn judge(r: Result<&u32, &Api>) -> Verdict {
        match r {
            Ok(503) | Err(_) => Verdict::RetryableFailure,
            Ok(404) => Verdict::Ignored,
            Ok(_) => Verdict::Success,
        }
    }

    /// `judge` over a tower stack's `Error<Api>`.
    pub(super) fn judge_err(r: Result<&u32, &Error<Api>>) -> Verdict {
        match r {
            Ok(v) => judge(Ok(v)),
            Err(_) => Verdict::RetryableFailure,
        }
    }

    pub(super) type HintFn = fn(Result<&u32, &Api>) -> Option<Duration>;

    /// A closure with a hint for everything that fails.
    pub(super) fn full(r: Result<&u32, &Api>) -> Option<Duration> {
        match r {
            Ok(503) => Some(ms(300)),
            Err(Api::Plain) => Some(ms(200)),
            Err(Api::Throttled(_)) => Some(ms(700)),
            Ok(_) => None,
        }
    }

    /// A closure with no hint for errors that carry their own.
    pub(super) fn partial(r: Result<&u32, &Api>) -> Option<Duration> {
        match r {
            Err(Api::Throttled(_)) => None,
            other => full(other),
        }
    }

    /// A closure asking for ten seconds for a value or an error without a hint of its own.
    pub(super) fn long(r: Result<&u32, &Api>) -> Option<Duration> {
        match r {
            Ok(503) | Err(Api::Plain) => Some(Duration::from_secs(10)),
            _ => None,
        }
    }

    /// A closure that must only be read for failures ("Read only for a result judged a
    /// failure"): it panics for a success or an ignored result.
    pub(super) fn strict(r: Result<&u32, &Api>) -> Option<Duration> {
        match r {
            Ok(503) | Err(_) => full(r),
            Ok(v) => panic!("a hint was read for a result that is no failure: Ok({v})"),
        }
    }

    /// Which wrapper is outside: `.honor_retry_after().retry_after_with(f)` makes
    /// `Hinted(WithRetryAfter(..), f)`; `.retry_after_with(f).honor_retry_after()` makes
    /// `WithRetryAfter(Hinted(.., f))`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(super) enum Order {
        ClosureOutside,
        ErrorsOutside,
    }

    /// An operation playing back a script (then `Ok(200)` for ever), recording when each
    /// attempt started.
    pub(super) struct Op {
        script: Mutex<VecDeque<Result<u32, Api>>>,
        starts: Mutex<Vec<Duration>>,
        origin: tokio::time::Instant,
    }

    impl Op {
        pub(super) fn new(script: impl IntoIterator<Item = Result<u32, Api>>) -> Arc<Self> {
            Arc::new(Self {
                script: Mutex::new(script.into_iter().collect()),
                starts: Mutex::default(),
                origin: tokio::time::Instant::now(),
            })
        }

        pub(super) fn call(&self) -> impl Future<Output = Result<u32, Api>> + Send + use<> {
            self.starts.lock().unwrap().push(self.origin.elapsed());
            let outcome = self.script.lock().unwrap().pop_front().unwrap_or(Ok(200));
            async move { outcome }
        }

        pub(super) fn starts(&self) -> Vec<Duration> {
            self.starts.lock().unwrap().clone()
        }
    }

    /// The cap (`max_retry_after`) and the deadline (`deadline` / the tower layer's
    /// `deadline`) a run sets, if any.
    #[derive(Debug, Clone, Copy, Default)]
    pub(super) struct Limits {
        pub(super) cap: Option<Duration>,
        pub(super) deadline: Option<Duration>,
    }

    pub(super) fn backoff() -> tidewall::Backoff {
        tidewall::Backoff::constant(ms(10))
            .jitter(tidewall::Jitter::None)
            .max_attempts(3)
            .build()
            .unwrap()
    }

    /// The retry future; whether it ended well.
    pub(super) async fn retry_future(
        op: &Arc<Op>,
        order: Order,
        hint: HintFn,
        limits: Limits,
    ) -> bool {
        use tidewall::RetryExt as _;
        use tidewall::rt::Tokio;
        let base = (|| op.call()).retry_on(&Tokio, backoff()).classify(judge);
        let deadline = limits.deadline.map_or_else(tidewall::Deadline::none, |d| {
            tidewall::Deadline::after(&Tokio, d)
        });
        let cap = limits.cap.unwrap_or(Duration::from_secs(60));
        match order {
            Order::ClosureOutside => base
                .honor_retry_after()
                .retry_after_with(hint)
                .max_retry_after(cap)
                .deadline(deadline)
                .await
                .is_ok(),
            Order::ErrorsOutside => base
                .retry_after_with(hint)
                .honor_retry_after()
                .max_retry_after(cap)
                .deadline(deadline)
                .await
                .is_ok(),
        }
    }

    /// The pipeline (a retry stage); whether the call ended well.
    pub(super) async fn pipeline(op: &Arc<Op>, order: Order, hint: HintFn, limits: Limits) -> bool {
        use tidewall::pipeline::Pipeline;
        let mut builder = Pipeline::builder().retry(backoff());
        if let Some(cap) = limits.cap {
            builder = builder.max_retry_after(cap);
        }
        if let Some(deadline) = limits.deadline {
            builder = builder.deadline(deadline);
        }
        let builder = builder.classify(judge);
        match order {
            Order::ClosureOutside => {
                let p = builder
                    .honor_retry_after()
                    .retry_after_with(hint)
                    .build()
                    .unwrap();
                p.call(|| op.call()).await.is_ok()
            }
            Order::ErrorsOutside => {
                let p = builder
                    .retry_after_with(hint)
                    .honor_retry_after()
                    .build()
                    .unwrap();
                p.call(|| op.call()).await.is_ok()
            }
        }
    }

    /// The tower `RetryLayer` over a service whose error is `Error<Api>`; whether the call
    /// ended well.
    pub(super) async fn tower(op: &Arc<Op>, order: Order, hint: HintFn, limits: Limits) -> bool {
        use tidewall::tower::RetryLayer;
        use tower::ServiceExt as _;
        use tower_layer::Layer as _;
        let service = {
            let op = Arc::clone(op);
            tower::service_fn(move |(): ()| op.call()).map_err(Error::Inner)
        };
        let over_errors = move |r: Result<&u32, &Error<Api>>| match r {
            Ok(v) => hint(Ok(v)),
            Err(Error::Inner(e)) => hint(Err(e)),
            Err(_) => None,
        };
        let mut layer = RetryLayer::new(backoff()).classify(judge_err);
        if let Some(cap) = limits.cap {
            layer = layer.max_retry_after(cap);
        }
        if let Some(within) = limits.deadline {
            layer = layer.deadline(within);
        }
        match order {
            Order::ClosureOutside => layer
                .honor_retry_after()
                .retry_after_with(over_errors)
                .layer(service)
                .oneshot(())
                .await
                .is_ok(),
            Order::ErrorsOutside => layer
                .retry_after_with(over_errors)
                .honor_retry_after()
                .layer(service)
                .oneshot(())
                .await
                .is_ok(),
        }
    }

    pub(super) const FRONTS: [&str; 3] = ["retry future", "pipeline", "tower RetryLayer"];

    /// Runs `script` through `front`; when each attempt started, and whether it ended well.
    pub(super) async fn run(
        front: &str,
        order: Order,
        hint: HintFn,
        limits: Limits,
        script: &[Result<u32, Api>],
    ) -> (Vec<Duration>, bool) {
        let op = Op::new(script.iter().cloned());
        let ok = match front {
            "retry future" => retry_future(&op, order, hint, limits).await,
            "pipeline" => pipeline(&op, order, hint, limits).await,
            _ => tower(&op, order, hint, limits).await,
        };
        (op.starts(), ok)
    }
}

use hints::{Api, Limits, Order};

/// `WithRetryAfter`: "the hints of errors that implement `RetryAfter` [...], else `C`'s own
/// hint (so it stacks with `Hinted`)"; `Hinted`: "hints read by a closure over the whole
/// result [...], else `C`'s own hint (so it stacks with `WithRetryAfter`)"; the builders:
/// "the next delay is at least the hint".
///
/// Every front, both orders, under virtual time: the delay before the second attempt is the
/// outer wrapper's hint when it has one, else the inner one's; a value's hint comes from the
/// closure either way; a hint shorter than the backoff leaves the backoff.
#[tokio::test(start_paused = true)]
async fn hints_stack_in_either_order_on_every_front() {
    use Order::{ClosureOutside, ErrorsOutside};
    type Case = (&'static str, hints::HintFn, Result<u32, Api>, [u64; 2]);
    let cases: [Case; 6] = [
        (
            "an error without a hint",
            hints::full,
            Err(Api::Plain),
            [200, 200],
        ),
        ("a value", hints::full, Ok(503), [300, 300]),
        (
            "an error with a hint, the closure with another",
            hints::full,
            Err(Api::Throttled(ms(400))),
            [700, 400],
        ),
        (
            "an error with a hint, the closure without",
            hints::partial,
            Err(Api::Throttled(ms(400))),
            [400, 400],
        ),
        (
            "a hint shorter than the backoff",
            hints::partial,
            Err(Api::Throttled(ms(3))),
            [10, 10],
        ),
        ("no hint at all", hints::partial, Ok(503), [300, 300]),
    ];
    let mut problems = Vec::new();
    for front in hints::FRONTS {
        for (what, hint, first, [closure_outside, errors_outside]) in cases.clone() {
            for (order, wait) in [
                (ClosureOutside, closure_outside),
                (ErrorsOutside, errors_outside),
            ] {
                let (starts, ok) = hints::run(
                    front,
                    order,
                    hint,
                    Limits::default(),
                    std::slice::from_ref(&first),
                )
                .await;
                if starts != [Duration::ZERO, ms(wait)] || !ok {
                    problems.push(format!(
                        "{front}, {order:?}, {what}: attempts at {starts:?} (ok: {ok}), expected [0, {wait} ms]"
                    ));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// "`max_retry_after`: the largest hint honoured; a longer hint is cut to this": the cap
/// applies to whichever source the stack answers from. "a retry whose whole hint ends past
/// the deadline is not made (the call ends at once)": a ten-second hint from the fallback
/// source (an error without a hint, the closure's) or from the error (the closure without)
/// under a five-second deadline ends the call at once, after one attempt, in either order (a
/// value judged a failure is returned as the value).
#[tokio::test(start_paused = true)]
async fn caps_and_deadlines_apply_to_the_fallback_hint_in_either_order() {
    use Order::{ClosureOutside, ErrorsOutside};
    let mut problems = Vec::new();
    let capped = Limits {
        cap: Some(ms(150)),
        deadline: None,
    };
    let tight = Limits {
        cap: None,
        deadline: Some(Duration::from_secs(5)),
    };
    for front in hints::FRONTS {
        for order in [ClosureOutside, ErrorsOutside] {
            for first in [Err(Api::Plain), Ok(503), Err(Api::Throttled(ms(400)))] {
                let (starts, _) = hints::run(
                    front,
                    order,
                    hints::full,
                    capped,
                    std::slice::from_ref(&first),
                )
                .await;
                if starts != [Duration::ZERO, ms(150)] {
                    problems.push(format!(
                        "{front}, {order:?}, {first:?} capped at 150 ms: attempts at {starts:?}"
                    ));
                }
            }
            for (hint, first) in [
                (hints::long as hints::HintFn, Err(Api::Plain)),
                (hints::long, Ok(503)),
                (hints::partial, Err(Api::Throttled(Duration::from_secs(10)))),
            ] {
                let start = tokio::time::Instant::now();
                let (starts, ok) =
                    hints::run(front, order, hint, tight, std::slice::from_ref(&first)).await;
                // "an `Ok` value judged a failure is still returned as `Ok` when no retry
                // follows it" (module docs): the value comes back; an error stays one.
                if starts != [Duration::ZERO]
                    || ok != first.is_ok()
                    || start.elapsed() != Duration::ZERO
                {
                    problems.push(format!(
                        "{front}, {order:?}, {first:?}: a 10 s hint under a 5 s deadline: \
                         attempts at {starts:?}, ok {ok}, ended after {:?} (expected at once)",
                        start.elapsed()
                    ));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Module docs: "a breaker it opens stays open that long (each capped)"; `classify::
/// retry_after`: "read once, for the breaker (which it may hold open longer) and the retry
/// alike". A pipeline with a breaker (1 s break, hints up to an hour) and no retry, and a
/// tower `BreakerLayer` given the stacked classifier: an error without a hint of its own, for
/// which the closure asks ten seconds, holds the breaker open ten seconds in either order.
#[tokio::test(start_paused = true)]
async fn a_fallback_hint_holds_the_breaker_open_in_either_order() {
    use tidewall::classify::{Hinted, WithRetryAfter};
    use tidewall::pipeline::Pipeline;
    use tidewall::tower::BreakerLayer;
    use tower::ServiceExt as _;
    use tower_layer::Layer as _;

    let breaker = || {
        CircuitBreaker::builder()
            .consecutive_failures(1)
            .break_duration(SEC)
            .max_open_hint(Duration::from_secs(3600))
            .build()
            .unwrap()
    };
    /// (state at 2 s, refused at 9.9 s, admitted at 10.1 s) after the failure.
    async fn held_open(front: &str, order: Order, b: &CircuitBreaker) -> Option<String> {
        let start = tokio::time::Instant::now();
        tokio::time::sleep_until(start + Duration::from_secs(2)).await;
        let at_2s = b.state();
        tokio::time::sleep_until(start + Duration::from_millis(9_900)).await;
        let at_9_9s = b.try_acquire().map(drop);
        tokio::time::sleep_until(start + Duration::from_millis(10_100)).await;
        let at_10_1s = b.try_acquire().map(drop);
        let seen = (at_2s, at_9_9s.is_err(), at_10_1s.is_ok());
        (seen != (State::Open, true, true)).then(|| {
            format!(
                "{front}, {order:?}: (state at 2 s, refused at 9.9 s, admitted at 10.1 s) = {seen:?}"
            )
        })
    }
    let mut problems = Vec::new();
    for order in [Order::ClosureOutside, Order::ErrorsOutside] {
        let b = breaker();
        let builder = Pipeline::builder()
            .breaker(b.clone())
            .classify(hints::judge);
        let failed = match order {
            Order::ClosureOutside => {
                let p = builder
                    .honor_retry_after()
                    .retry_after_with(hints::long)
                    .build()
                    .unwrap();
                p.call(|| async { Err::<u32, _>(Api::Plain) }).await
            }
            Order::ErrorsOutside => {
                let p = builder
                    .retry_after_with(hints::long)
                    .honor_retry_after()
                    .build()
                    .unwrap();
                p.call(|| async { Err::<u32, _>(Api::Plain) }).await
            }
        };
        assert_eq!(failed, Err(Error::Inner(Api::Plain)));
        problems.extend(held_open("pipeline", order, &b).await);

        let b = breaker();
        let over_errors = |r: Result<&u32, &Error<Api>>| match r {
            Ok(v) => hints::long(Ok(v)),
            Err(Error::Inner(e)) => hints::long(Err(e)),
            Err(_) => None,
        };
        let service =
            tower::service_fn(|(): ()| async { Err::<u32, _>(Api::Plain) }).map_err(Error::Inner);
        let layer = BreakerLayer::new(b.clone());
        let failed = match order {
            Order::ClosureOutside => layer
                .classify(Hinted(WithRetryAfter(hints::judge_err), over_errors))
                .layer(service)
                .oneshot(())
                .await
                .is_err(),
            Order::ErrorsOutside => layer
                .classify(WithRetryAfter(Hinted(hints::judge_err, over_errors)))
                .layer(service)
                .oneshot(())
                .await
                .is_err(),
        };
        assert!(failed);
        problems.extend(held_open("tower BreakerLayer", order, &b).await);
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// `Classify::retry_after`: "Read only for a result judged a failure". A hint closure that
/// panics when read for a success or an ignored result, stacked either way on every front:
/// an ignored value ends the call at once, a failure then a success is retried once, and the
/// closure is never read for what is no failure.
#[tokio::test(start_paused = true)]
async fn hints_are_never_read_for_successes_or_ignored_results() {
    let mut problems = Vec::new();
    for front in hints::FRONTS {
        for order in [Order::ClosureOutside, Order::ErrorsOutside] {
            for script in [vec![Ok(404)], vec![Err(Api::Plain), Ok(200)], vec![Ok(200)]] {
                let run = AssertUnwindSafe(hints::run(
                    front,
                    order,
                    hints::strict,
                    Limits::default(),
                    &script,
                ))
                .catch_unwind()
                .await;
                if run.is_err() {
                    problems.push(format!("{front}, {order:?}, {script:?}: the hint was read"));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// A hint closure that panics on a failure, in a pipeline with a bulkhead of one and a breaker
/// in its half-open state: the panic unwinds the call, and the policies lose nothing
/// (`Event`: "a breaker permit [...] gives a half-open probe's slot back, as any permit
/// unwound by a panic does"): the bulkhead slot is back, the probe slot is there for the next
/// caller, and the failure was not recorded (the breaker is still half-open).
#[tokio::test(start_paused = true)]
async fn a_hint_closure_that_panics_loses_no_bulkhead_or_probe_slot() {
    use tidewall::bulkhead::Bulkhead;
    use tidewall::pipeline::Pipeline;

    fn panics_on_errors(r: Result<&u32, &Api>) -> Option<Duration> {
        assert!(r.is_ok(), "the hint closure panics (on purpose)");
        None
    }
    for order in [Order::ClosureOutside, Order::ErrorsOutside] {
        let breaker = CircuitBreaker::builder()
            .consecutive_failures(1)
            .break_duration(SEC)
            .half_open_probes(1)
            .build()
            .unwrap();
        breaker.try_acquire().unwrap().failure();
        tokio::time::advance(SEC).await;
        let bulkhead = Bulkhead::builder(1).max_queue(0).build().unwrap();
        let builder = Pipeline::builder()
            .bulkhead(bulkhead.clone())
            .breaker(breaker.clone())
            .classify(hints::judge);
        let unwound = match order {
            Order::ClosureOutside => {
                let p = builder
                    .honor_retry_after()
                    .retry_after_with(panics_on_errors)
                    .build()
                    .unwrap();
                AssertUnwindSafe(p.call(|| async { Err::<u32, _>(Api::Plain) }))
                    .catch_unwind()
                    .await
                    .is_err()
            }
            Order::ErrorsOutside => {
                let p = builder
                    .retry_after_with(panics_on_errors)
                    .honor_retry_after()
                    .build()
                    .unwrap();
                AssertUnwindSafe(p.call(|| async { Err::<u32, _>(Api::Plain) }))
                    .catch_unwind()
                    .await
                    .is_err()
            }
        };
        assert!(unwound, "{order:?}: the closure's panic reaches the caller");
        assert_eq!(
            bulkhead.in_flight(),
            0,
            "{order:?}: the bulkhead slot is back"
        );
        assert_eq!(
            breaker.state(),
            State::HalfOpen,
            "{order:?}: nothing recorded"
        );
        let probe = breaker.try_acquire();
        assert!(
            probe.as_ref().is_ok_and(|p| p.is_probe()),
            "{order:?}: the probe slot was lost to the panic: {:?}",
            probe.err()
        );
    }
}

/// `RetryLayer::honor_retry_after`: "Over a stack's one error type: [...] tower's `BoxError`
/// (the hint of a `Rejected` in its chain)", stacked with a closure that knows only the
/// service's own errors. A tower stack, `RetryLayer` over an `AdmitLayer` (a rate limit of one
/// a second, refusing at once) over a service failing once: the service's error gets the
/// closure's 50 ms; the next attempt is refused by the rate limit, a boxed `Rejected` the
/// closure has no hint for, so its `retry_after` (950 ms) must be waited in either order, and
/// the third attempt reaches the service at 1 s.
#[tokio::test(start_paused = true)]
async fn a_boxed_refusals_hint_stacks_with_a_closure_in_either_order() {
    use tidewall::rate::RateLimiter;
    use tidewall::tower::{AdmitLayer, AdmitMode, RetryLayer};
    use tower::ServiceExt as _;
    use tower_layer::Layer as _;
    type BoxError = Box<dyn std::error::Error + Send + Sync>;

    fn judge(r: Result<&u32, &BoxError>) -> tidewall::classify::Verdict {
        if r.is_ok() {
            tidewall::classify::Verdict::Success
        } else {
            tidewall::classify::Verdict::RetryableFailure
        }
    }
    fn boom_waits(r: Result<&u32, &BoxError>) -> Option<Duration> {
        r.err().filter(|e| e.to_string() == "boom").map(|_| ms(50))
    }
    let backoff = tidewall::Backoff::constant(ms(10))
        .jitter(tidewall::Jitter::None)
        .max_attempts(4)
        .build()
        .unwrap();
    let mut problems = Vec::new();
    for order in [Order::ClosureOutside, Order::ErrorsOutside] {
        let limiter = RateLimiter::builder(1, SEC).build().unwrap();
        let origin = tokio::time::Instant::now();
        let starts = Arc::new(Mutex::new(Vec::new()));
        let service = {
            let starts = Arc::clone(&starts);
            tower::service_fn(move |(): ()| {
                let mut starts = starts.lock().unwrap();
                starts.push(origin.elapsed());
                let first = starts.len() == 1;
                async move {
                    if first {
                        Err::<u32, BoxError>("boom".into())
                    } else {
                        Ok(7)
                    }
                }
            })
        };
        let admitted = AdmitLayer::new(limiter, AdmitMode::Reject).layer(service);
        let layer = RetryLayer::new(backoff).classify(judge);
        let answer = match order {
            Order::ClosureOutside => {
                layer
                    .honor_retry_after()
                    .retry_after_with(boom_waits)
                    .layer(admitted)
                    .oneshot(())
                    .await
            }
            Order::ErrorsOutside => {
                layer
                    .retry_after_with(boom_waits)
                    .honor_retry_after()
                    .layer(admitted)
                    .oneshot(())
                    .await
            }
        };
        let starts = starts.lock().unwrap().clone();
        if answer.as_ref().ok() != Some(&7) || starts != [Duration::ZERO, SEC] {
            problems.push(format!(
                "{order:?}: {:?}, the service reached at {starts:?} (expected [0, 1 s])",
                answer.map_err(|e| e.to_string())
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

// === 4. fs::write_atomic: permissions at every step, cancellation, odd names ================

mod atomic {
    use std::ffi::OsString;
    use std::future::Future;
    use std::os::unix::fs::PermissionsExt as _;
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
    use std::sync::{Arc, Mutex};
    use std::task::{Context, Poll, Waker};

    use tidewall::rt::Spawn;

    /// A runtime whose blocking jobs run at once on the calling thread, their handles ready
    /// one poll later (every await point of the writer an exact suspension), and which looks
    /// at the directory before each job, after it, and all along while it runs (another
    /// thread listing it in a loop): every entry it sees other than `known` names, with its
    /// mode. Job number `cancel_at` (from 0), if any, is dropped unrun and reported
    /// `JoinError::Cancelled`, as tokio does to jobs not started at shutdown.
    #[derive(Clone)]
    pub(super) struct Observed {
        dir: PathBuf,
        known: Vec<OsString>,
        pub(super) seen: Arc<Mutex<Vec<(OsString, u32)>>>,
        jobs: Arc<AtomicUsize>,
        cancel_at: Option<usize>,
    }

    impl Observed {
        pub(super) fn new(
            dir: &Path,
            known: &[&std::ffi::OsStr],
            cancel_at: Option<usize>,
        ) -> Self {
            Self {
                dir: dir.to_owned(),
                known: known.iter().map(|n| (*n).to_owned()).collect(),
                seen: Arc::default(),
                jobs: Arc::default(),
                cancel_at,
            }
        }

        fn look(&self) {
            let Ok(entries) = std::fs::read_dir(&self.dir) else {
                return;
            };
            for entry in entries.flatten() {
                let name = entry.file_name();
                if self.known.contains(&name) {
                    continue;
                }
                if let Ok(meta) = std::fs::symlink_metadata(entry.path()) {
                    self.seen
                        .lock()
                        .unwrap()
                        .push((name, meta.permissions().mode() & 0o7777));
                }
            }
        }

        pub(super) fn temporaries(&self) -> Vec<(OsString, u32)> {
            self.seen.lock().unwrap().clone()
        }
    }

    impl Spawn for Observed {
        type JoinHandle<T: Send + 'static> = crate::ready_later::ReadyLater<T>;

        fn spawn<F>(&self, _: F) -> Self::JoinHandle<F::Output>
        where
            F: Future + Send + 'static,
            F::Output: Send + 'static,
        {
            unreachable!("write_atomic only uses spawn_blocking")
        }

        fn spawn_blocking<W, T>(&self, work: W) -> Self::JoinHandle<T>
        where
            W: FnOnce() -> T + Send + 'static,
            T: Send + 'static,
        {
            self.look();
            if Some(self.jobs.fetch_add(1, SeqCst)) == self.cancel_at {
                drop(work);
                self.look();
                return crate::ready_later::ReadyLater::new(None);
            }
            let done = AtomicBool::new(false);
            let out = std::thread::scope(|scope| {
                scope.spawn(|| {
                    while !done.load(SeqCst) {
                        self.look();
                    }
                });
                let out = work();
                done.store(true, SeqCst);
                out
            });
            self.look();
            crate::ready_later::ReadyLater::new(Some(out))
        }
    }

    /// Polls `fut` to its end (each suspension is one poll long).
    pub(super) fn run<T>(fut: impl Future<Output = T>) -> T {
        let mut fut = std::pin::pin!(fut);
        let mut cx = Context::from_waker(Waker::noop());
        for _ in 0..100 {
            if let Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
                return out;
            }
        }
        panic!("a stepwise write did not finish in 100 polls")
    }

    /// Polls `fut` at most `polls` times, then drops it; whether it finished (and how).
    pub(super) fn poll_then_drop<T>(fut: impl Future<Output = T>, polls: usize) -> Option<T> {
        let mut fut = Box::pin(fut);
        let mut cx = Context::from_waker(Waker::noop());
        for _ in 0..polls {
            if let Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
                return Some(out);
            }
        }
        None
    }

    pub(super) fn mode(path: &Path) -> u32 {
        std::fs::symlink_metadata(path)
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    }

    pub(super) fn set_mode(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
        assert_eq!(
            self::mode(path),
            mode,
            "the test could not set mode {mode:o}"
        );
    }

    pub(super) fn entries(dir: &Path) -> Vec<OsString> {
        let mut names: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        names
    }

    /// Every temporary file seen is no more open than `target` (no permission bit and no
    /// setuid, setgid or sticky bit the target lacks): the problems.
    pub(super) fn wider_than(seen: &[(OsString, u32)], target: u32, what: &str) -> Vec<String> {
        seen.iter()
            .filter(|(_, mode)| mode & !target != 0)
            .map(|(name, mode)| {
                format!("{what}: temporary {name:?} seen with mode {mode:o}, target {target:o}")
            })
            .collect()
    }
}

/// The modes a target is given: private, unusual, open to all, special bits.
const MODES: [u32; 13] = [
    0o600, 0o640, 0o400, 0o000, 0o200, 0o644, 0o666, 0o777, 0o4755, 0o2750, 0o6711, 0o1644, 0o7777,
];

/// Module docs (step 1): the temporary file carries over "the old file's permissions: given to
/// the open that creates it (Unix: no other user can open it in between), set exactly once it
/// is created, and again after the contents are written, since a write [...] clears the setuid
/// and setgid bits (which then survive as far as the OS lets the writer set them)".
///
/// For each of thirteen target modes (private, read-only, none, write-only, open to all,
/// setuid, setgid, both, sticky, all twelve bits), the directory is looked at before, during
/// and after every blocking step: the temporary file is never seen with a bit the target
/// lacks (a 0o600 target's stays 0o600 or narrower throughout), and the result has exactly
/// the target's mode with the new contents (the file's owner may set all these bits on
/// Linux), and nothing else is left in the directory.
#[test]
fn the_temporary_file_is_never_more_open_than_the_target_and_the_result_keeps_every_bit() {
    let mut problems = Vec::new();
    for target_mode in MODES {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret.conf");
        std::fs::write(&path, b"old").unwrap();
        atomic::set_mode(&path, target_mode);
        let rt = atomic::Observed::new(dir.path(), &["secret.conf".as_ref()], None);
        let written = atomic::run(tidewall::fs::write_atomic(&rt, &path, b"new".to_vec()));
        let what = format!("target {target_mode:o}");
        if let Err(e) = written {
            problems.push(format!("{what}: {e}"));
            continue;
        }
        let seen = rt.temporaries();
        if seen.is_empty() {
            problems.push(format!("{what}: the temporary file was never seen"));
        }
        problems.extend(atomic::wider_than(&seen, target_mode, &what));
        if std::fs::read(&path).unwrap() != b"new" {
            problems.push(format!("{what}: not the new contents"));
        }
        let result = atomic::mode(&path);
        if result != target_mode {
            problems.push(format!("{what}: the result has mode {result:o}"));
        }
        if atomic::entries(dir.path()) != ["secret.conf"] {
            problems.push(format!("{what}: left {:?}", atomic::entries(dir.path())));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// "**Cancel safety**: dropping the future at any await point leaves the old file or the
/// complete new one. Before the rename, the temporary file is removed on drop"; and a
/// blocking step its runtime cancelled "is reported as an `io::Error` of kind `Other`" with
/// the old file or the new one left. For a private (0o600) and a setuid (0o4750) target,
/// dropped after every number of polls and with every blocking step cancelled in turn: the
/// file left is the old or the complete new one, with the target's mode either way; no
/// temporary file is left; none was ever seen more open than the target.
#[test]
fn cancelled_at_every_point_a_private_target_stays_private_and_whole() {
    let old = b"old private contents".to_vec();
    let new = vec![b'N'; 64 * 1024];
    let mut problems = Vec::new();
    for target_mode in [0o600, 0o4750] {
        let (mut saw_old, mut saw_new) = (false, false);
        for polls in 0..=16 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("key.pem");
            std::fs::write(&path, &old).unwrap();
            atomic::set_mode(&path, target_mode);
            let rt = atomic::Observed::new(dir.path(), &["key.pem".as_ref()], None);
            let finished =
                atomic::poll_then_drop(tidewall::fs::write_atomic(&rt, &path, new.clone()), polls);
            let what = format!("{target_mode:o}, dropped after {polls} polls");
            let contents = std::fs::read(&path).unwrap();
            saw_old |= contents == old;
            saw_new |= contents == new;
            if contents != old && contents != new {
                problems.push(format!("{what}: a partial file ({} bytes)", contents.len()));
            }
            if matches!(finished, Some(Ok(()))) && contents != new {
                problems.push(format!("{what}: finished, yet not the new contents"));
            }
            if atomic::mode(&path) != target_mode {
                problems.push(format!("{what}: mode {:o}", atomic::mode(&path)));
            }
            if atomic::entries(dir.path()) != ["key.pem"] {
                problems.push(format!("{what}: left {:?}", atomic::entries(dir.path())));
            }
            problems.extend(atomic::wider_than(&rt.temporaries(), target_mode, &what));
        }
        if !(saw_old && saw_new) {
            problems.push(format!(
                "{target_mode:o}: both outcomes must have been exercised"
            ));
        }
        for cancel_at in 0..8 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("key.pem");
            std::fs::write(&path, &old).unwrap();
            atomic::set_mode(&path, target_mode);
            let rt = atomic::Observed::new(dir.path(), &["key.pem".as_ref()], Some(cancel_at));
            let result = atomic::run(tidewall::fs::write_atomic(&rt, &path, new.clone()));
            let what = format!("{target_mode:o}, blocking step {cancel_at} cancelled");
            let contents = std::fs::read(&path).unwrap();
            match &result {
                Ok(()) if contents != new => problems.push(format!("{what}: Ok, not new")),
                Err(e) if e.kind() != std::io::ErrorKind::Other => {
                    problems.push(format!("{what}: error of kind {:?}", e.kind()));
                }
                _ => {}
            }
            if contents != old && contents != new {
                problems.push(format!("{what}: a partial file"));
            }
            if atomic::mode(&path) != target_mode {
                problems.push(format!("{what}: mode {:o}", atomic::mode(&path)));
            }
            if atomic::entries(dir.path()) != ["key.pem"] {
                problems.push(format!("{what}: left {:?}", atomic::entries(dir.path())));
            }
            problems.extend(atomic::wider_than(&rt.temporaries(), target_mode, &what));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// "**Symbolic links**: a `path` that is a link is replaced by a regular file (the link's
/// target is left as it was), with the permissions of the file the link pointed to." A link
/// to a private file, a link to a link to a setgid file, and a dangling link: each becomes a
/// regular file with the new contents and (for the first two) the pointed-to file's mode; the
/// files pointed to keep their contents and modes; the dangling link's target is not created;
/// the temporary file is never more open than the file pointed to.
#[test]
fn a_link_becomes_a_regular_file_with_the_pointed_to_files_mode() {
    use std::os::unix::fs::symlink;
    let mut problems = Vec::new();
    let known = ["real", "middle", "link"].map(std::ffi::OsStr::new);
    for (case, real_mode) in [
        ("link to a private file", Some(0o600)),
        ("chain", Some(0o2750)),
        ("dangling", None),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        if let Some(mode) = real_mode {
            std::fs::write(&real, b"old").unwrap();
            atomic::set_mode(&real, mode);
        }
        let link = dir.path().join("link");
        if case == "chain" {
            symlink("real", dir.path().join("middle")).unwrap();
            symlink("middle", &link).unwrap();
        } else {
            symlink("real", &link).unwrap();
        }
        let rt = atomic::Observed::new(dir.path(), &known, None);
        if let Err(e) = atomic::run(tidewall::fs::write_atomic(&rt, &link, b"new".to_vec())) {
            problems.push(format!("{case}: {e}"));
            continue;
        }
        let meta = std::fs::symlink_metadata(&link).unwrap();
        if !meta.file_type().is_file() {
            problems.push(format!("{case}: the link is not a regular file now"));
        }
        if std::fs::read(&link).unwrap() != b"new" {
            problems.push(format!("{case}: not the new contents"));
        }
        match real_mode {
            Some(mode) => {
                if atomic::mode(&link) != mode {
                    problems.push(format!(
                        "{case}: mode {:o}, expected {mode:o}",
                        atomic::mode(&link)
                    ));
                }
                if std::fs::read(&real).unwrap() != b"old" || atomic::mode(&real) != mode {
                    problems.push(format!("{case}: the file pointed to changed"));
                }
                problems.extend(atomic::wider_than(&rt.temporaries(), mode, case));
            }
            None => {
                if std::fs::symlink_metadata(&real).is_ok() {
                    problems.push(format!("{case}: the dangling link's target was created"));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// "The temporary file's name is the target's (at most its first 64 bytes, cut at a character
/// boundary) with a unique suffix of at most 46 bytes, so names near the file system's limit
/// fit." A 255-byte name of three-byte characters (64 is not a multiple of three) and a
/// 255-byte name that is not UTF-8 at all: both are written; every temporary seen is at most
/// 111 bytes long (64 + 46, and the leading dot the temporaries have), and for the UTF-8 name
/// it is valid UTF-8 with the name's first characters.
#[test]
fn names_at_the_limit_in_three_byte_characters_or_not_utf8_are_written() {
    use std::os::unix::ffi::{OsStrExt as _, OsStringExt as _};
    let utf8 = "語".repeat(85);
    assert_eq!(utf8.len(), 255);
    let raw = std::ffi::OsString::from_vec(vec![0xff; 255]);
    let mut problems = Vec::new();
    for name in [std::ffi::OsString::from(&utf8), raw] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(&name);
        std::fs::write(&path, b"old").unwrap();
        let rt = atomic::Observed::new(dir.path(), &[name.as_os_str()], None);
        let what = if name.to_str().is_some() {
            "UTF-8"
        } else {
            "not UTF-8"
        };
        if let Err(e) = atomic::run(tidewall::fs::write_atomic(&rt, &path, b"new".to_vec())) {
            problems.push(format!("{what}: {e}"));
            continue;
        }
        if std::fs::read(&path).unwrap() != b"new" {
            problems.push(format!("{what}: not written"));
        }
        let seen = rt.temporaries();
        if seen.is_empty() {
            problems.push(format!("{what}: no temporary seen"));
        }
        for (temp, _) in seen {
            if temp.as_bytes().len() > 1 + 64 + 46 {
                problems.push(format!(
                    "{what}: a temporary of {} bytes",
                    temp.as_bytes().len()
                ));
            }
            if name.to_str().is_some() {
                match temp.to_str() {
                    // (A leading dot, hiding the temporary, is taken as part of the suffix's
                    // convention: the docs do not mention it.)
                    Some(t) if t.trim_start_matches('.').starts_with("語語語") => {}
                    _ => {
                        problems.push(format!("{what}: temporary {temp:?} cut inside a character"))
                    }
                }
            }
        }
        if atomic::entries(dir.path()) != [name.clone()] {
            problems.push(format!("{what}: left {:?}", atomic::entries(dir.path())));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// "Each step runs on the runtime's blocking pool [...] **Cancel safety**: dropping the future
/// at any await point leaves the old file or the complete new one. Before the rename, the
/// temporary file is removed on drop". On every runtime adapter's real blocking pool: a
/// setuid private target (0o4700) replaced twice keeps its mode; then writes dropped after one,
/// two and three polls (a step may still be running on the pool when the future goes) leave
/// the old or the complete new file, with the same mode, and no temporary file once the pool
/// is done (waited for, at most 10 s: a hang guard, not a timing assertion).
async fn write_atomic_keeps_modes<R: tidewall::rt::Runtime>(rt: tidewall::testing::Clocked<R>) {
    use std::task::Poll;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run.sh");
    std::fs::write(&path, b"#!/bin/sh\n").unwrap();
    atomic::set_mode(&path, 0o4700);
    for contents in [&b"one"[..], b"two"] {
        tidewall::fs::write_atomic(&rt, &path, contents.to_vec())
            .await
            .unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), contents);
        assert_eq!(atomic::mode(&path), 0o4700);
    }
    let mut last = b"two".to_vec();
    for polls in 1..=3_u8 {
        let new = vec![b'0' + polls; 256 * 1024];
        {
            let mut write = std::pin::pin!(tidewall::fs::write_atomic(&rt, &path, new.clone()));
            for _ in 0..polls {
                if let Poll::Ready(done) = futures_util::poll!(write.as_mut()) {
                    done.unwrap();
                    break;
                }
            }
        }
        let started = std::time::Instant::now();
        while atomic::entries(dir.path()) != ["run.sh"] {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "dropped after {polls} polls: a temporary file stayed: {:?}",
                atomic::entries(dir.path())
            );
            std::thread::sleep(ms(5));
        }
        let left = std::fs::read(&path).unwrap();
        assert!(
            left == last || left == new,
            "dropped after {polls} polls: a partial file"
        );
        assert_eq!(atomic::mode(&path), 0o4700, "dropped after {polls} polls");
        last = left;
    }
}

#[test]
fn write_atomic_keeps_special_modes_on_every_runtime() {
    on_every_runtime!(write_atomic_keeps_modes);
}

/// The telemetry table: `tidewall_breaker_transitions_total` counts "state changes", with
/// `key` when the keyed table has a `key_label`. Whichever of a keyed breaker's state-change
/// listeners panics, the key's change is counted once, under its label (the audit-s36 fix:
/// "the change was then never passed on, counted nor traced").
#[tokio::test(start_paused = true)]
async fn a_keyed_change_is_counted_under_its_label_whichever_listener_panics() {
    let counters = Counters::installed();
    let mut problems = Vec::new();
    for panicking in ["base", "keyed"] {
        let name = format!("s36-keyed-count-{panicking}");
        let base_panics = panicking == "base";
        let breakers = CircuitBreaker::builder()
            .name(name.clone())
            .consecutive_failures(1)
            .break_duration(SEC)
            .on_state_change(move |_| {
                assert!(!base_panics, "the base listener panics (on purpose)");
            })
            .keyed::<String>()
            .key_label(|host: &String| format!("host-{host}"))
            .on_state_change(move |_: &String, _| {
                assert!(base_panics, "the keyed listener panics (on purpose)");
            })
            .build()
            .unwrap();
        let permit = breakers.try_acquire(&"a".to_owned()).unwrap();
        let _ = panics(panicking, move || permit.failure());
        let counted = counters.total(
            "tidewall_breaker_transitions_total",
            &[&format!("name={name}"), "key=host-a", "to=open"],
        );
        if counted != 1 {
            problems.push(format!(
                "the {panicking} listener panics: counted {counted} times"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Two sentences of the `Event` doc, on a closed breaker whose outcome listener (`on_event`
/// told `Failed`) panics: "a breaker permit whose outcome listener panics records nothing",
/// and "Listeners run on the caller's thread, in the call, after the policy's state has
/// changed". With `consecutive_failures(1)`, recording the failure would open it: "records
/// nothing" means it stays closed with no failure counted, and the next failure (listener
/// quiet) opens it.
#[tokio::test(start_paused = true)]
async fn a_failure_whose_outcome_listener_panics_records_nothing() {
    let quiet = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let q = Arc::clone(&quiet);
    let breaker = CircuitBreaker::builder()
        .consecutive_failures(1)
        .break_duration(SEC)
        .on_event(move |event: &Event<'_>| {
            if matches!(event.kind, EventKind::Failed) && !q.load(SeqCst) {
                panic!("the outcome listener panics (on purpose)");
            }
        })
        .build()
        .unwrap();
    let permit = breaker.try_acquire().unwrap();
    let _ = panics("Failed", move || permit.failure());
    assert_eq!(
        (breaker.state(), breaker.counts().failures),
        (State::Closed, 0),
        "the failure whose listener panicked was recorded"
    );
    quiet.store(true, SeqCst);
    breaker.try_acquire().unwrap().failure();
    assert_eq!(breaker.state(), State::Open);
}

/// `Reload::retuned`: "Policies that took their new settings in place, state and permits kept
/// (fault injectors included; a keyed table counts once, however many keys it retuned)";
/// `KeysConfig`: "Each is fixed when a table it bounds is made: a reload that changes
/// `max_keys` while the registry holds any keyed table of the instance [...] is refused
/// (`Problem::Fixed`)"; `reload`: "an invalid configuration [...] is refused with its error,
/// and the old one stays in force, whole".
///
/// Before any table is made, `max_keys` may change (nothing is fixed yet). With three tables
/// made (three keys in one), a reload retuning all of them, the budget and another instance's
/// bulkhead counts five, builds nothing and lists nothing plain; the keys keep their state. Changing `max_keys` then is
/// refused, and so is removing the instance (its tables would fall back to the defaults'
/// bound): the old configuration stays in force either way.
#[tokio::test(start_paused = true)]
async fn reloading_a_keyed_instance_counts_each_table_once_and_fixes_its_bound() {
    let text = |max_keys: u32, failures: u32, ratio: f64| {
        config(&format!(
            r#"
            [instances.hosts.breaker]
            consecutive_failures = {failures}
            [instances.hosts.bulkhead]
            max_concurrent = {failures}
            [instances.hosts.rate_limit]
            count = {failures}
            period = "1s"
            [instances.hosts.budget]
            ratio = {ratio}
            [instances.hosts.keys]
            max_keys = {max_keys}
            [instances.other.bulkhead]
            max_concurrent = 1
            "#
        ))
    };
    let registry = Registry::new(text(4, 2, 0.2)).unwrap();
    registry
        .reload(text(8, 2, 0.2))
        .expect("no table made yet: max_keys may change");
    let breakers = registry.keyed_breaker::<String>("hosts").unwrap();
    assert_eq!(breakers.max_keys(), 8);
    for host in ["a", "b", "c"] {
        let _ = breakers
            .call(&host.to_owned(), || async { Err::<(), _>("down") })
            .await;
    }
    let bulkheads = registry.keyed_bulkhead::<String>("hosts").unwrap();
    let _held = bulkheads.try_acquire(&"a".to_owned()).unwrap();
    let limits = registry.keyed_rate_limiter::<String>("hosts").unwrap();
    limits.check_key(&"a".to_owned()).unwrap();

    let reload = registry.reload(text(8, 3, 0.3)).unwrap();
    assert_eq!(
        (reload.retuned, reload.built, reload.reset.len()),
        (5, 0, 0),
        "three tables once each (one holds three keys), the budget and `other`'s bulkhead \
         (every policy held takes its settings): {reload:?}"
    );
    assert!(registry.breakers().is_empty());
    assert_eq!(names(registry.bulkheads()), ["other"]);
    assert_eq!(bulkheads.in_flight(&"a".to_owned()), 1, "permits kept");
    let _ = breakers
        .call(&"a".to_owned(), || async { Err::<(), _>("down") })
        .await;
    let _ = breakers
        .call(&"d".to_owned(), || async { Err::<(), _>("down") })
        .await;
    assert_eq!(
        breakers.state(&"d".to_owned()),
        Some(State::Closed),
        "one failure of three: the new settings"
    );

    let refused = registry.reload(text(16, 3, 0.3));
    assert!(
        matches!(
            refused.as_ref().map_err(|e| e.problem()),
            Err(Problem::Fixed)
        ),
        "changing max_keys with tables held: {:?}",
        refused.map_err(|e| e.to_string())
    );
    assert_eq!(
        registry.config().instances["hosts"]
            .keys
            .as_ref()
            .unwrap()
            .max_keys,
        Some(8)
    );

    let without = config("[instances.other.bulkhead]\nmax_concurrent = 1\n");
    let removed = registry.reload(without);
    assert!(
        matches!(
            removed.as_ref().map_err(|e| e.problem()),
            Err(Problem::Fixed)
        ),
        "removing the instance changes its tables' bound to the defaults': {:?}",
        removed.map(|r| format!("{r:?}")).map_err(|e| e.to_string())
    );
    assert!(
        registry.config().instances.contains_key("hosts"),
        "the old one stays in force"
    );
    assert_eq!(breakers.max_keys(), 8);
}

/// The keyed table's own listener panicking as a key's break ends (inside `try_acquire`,
/// which finds the break over): `Event`: the policy "loses nothing" and a probe slot unwound
/// by a panic is given back. The key's probe slot is there for the next caller, the probe
/// closes the key, other keys are untouched and the table keeps working (no lock left
/// poisoned by the panic).
#[tokio::test(start_paused = true)]
async fn a_keyed_listener_panicking_as_a_break_ends_loses_no_probe_slot() {
    let (heard, on_event) = hears_changes();
    let breakers = CircuitBreaker::builder()
        .consecutive_failures(1)
        .break_duration(SEC)
        .half_open_probes(1)
        .on_event(on_event)
        .keyed::<u32>()
        .on_state_change(|_: &u32, change| {
            assert!(
                change.to != State::HalfOpen,
                "the keyed listener panics at half-open (on purpose)"
            );
        })
        .build()
        .unwrap();
    breakers.try_acquire(&1).unwrap().failure();
    breakers.try_acquire(&2).unwrap().success();
    tokio::time::advance(SEC).await;
    let first = std::panic::catch_unwind(AssertUnwindSafe(|| breakers.try_acquire(&1).map(drop)));
    if first.is_err() {
        assert_eq!(breakers.state(&1), Some(State::HalfOpen));
        assert_eq!(last_change(&heard), Some((State::Open, State::HalfOpen)));
    }
    let probe = breakers.try_acquire(&1);
    assert!(
        probe.as_ref().is_ok_and(|p| p.is_probe()),
        "the key's probe slot was lost to the panic: {:?}",
        probe.as_ref().err()
    );
    probe.unwrap().success();
    assert_eq!(breakers.state(&1), Some(State::Closed));
    assert_eq!(breakers.state(&2), Some(State::Closed));
    assert!(
        breakers.try_acquire(&3).is_ok(),
        "the table still takes new keys"
    );
}
