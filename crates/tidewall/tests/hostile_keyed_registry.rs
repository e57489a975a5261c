//! Hostile black-box tests of keyed policies in a configuration `Registry`, written from the
//! public docs alone: `keyed_breaker` / `keyed_bulkhead` / `keyed_rate_limiter`, the
//! `[<layer>.keys]` section and its default bounds, `Problem::KeyType` and `Problem::Fixed`,
//! reloads that retune every key of every held table (permits, probes, waiters and owed cells
//! held across them), the keyed tables' own `reconfigure`, `RateLimiterBuilder::keyed`, and
//! the `tidewall_keyed_*` gauges. Virtual time only (a `FakeClock`), seeded randomness.
//!
//! Doc ambiguities, and the reading tested (or why nothing is asserted):
//! * `Reload::reset` / `Reload::retuned` do not say how a keyed table counts (once per table?
//!   per key? at all?): not asserted; the keys' resets are checked through their events.
//! * `[keys].idle_ttl` only shapes keyed breakers, yet KeysConfig says "Both are fixed when a
//!   table is made": whether changing it refuses a reload when only a keyed bulkhead or rate
//!   limiter is held is not asserted.
//! * The path of a `Problem::Fixed` whose bound comes from a base, the defaults or a removed
//!   section is not documented: only the problem is asserted there.
//! * Whether keyed tables count against `max_instances`: read as yes ("names taken from
//!   requests can neither grow it without bound").
//! * Whether a KeyType error is per kind: read as per kind ("this keyed policy").
//! * `KeyedCircuitBreaker::reconfigure` "Returns how many keys' breakers were reset": read as
//!   every held key whose window changes shape, closed and empty ones included.
//! * A held table whose instance a reload drops falls back to "the layers that remain": read as
//!   a bound change (refused) when those layers give another bound.
#![cfg(all(
    feature = "toml",
    feature = "tokio",
    feature = "test-util",
    feature = "metrics"
))]

mod support;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Barrier, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use support::snapshot::snapshot;
use tidewall::breaker::{CircuitBreaker, Counts, KeyedCircuitBreaker, State, Window};
use tidewall::bulkhead::{Bulkhead, KeyedBulkhead, OwnedPermit};
use tidewall::config::{Config, Problem, Registry};
use tidewall::rate::{KeyedRateLimiter, RateLimiter};
use tidewall::telemetry::EventKind;
use tidewall::testing::FakeClock;
use tidewall::{Deadline, Rejected};
use tidewall_core::rng::SplitMix64;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

const HOUR: Duration = Duration::from_secs(3_600);
const DAY: Duration = Duration::from_secs(86_400);
const YEAR: Duration = Duration::from_secs(365 * 86_400);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn config(text: &str) -> Config {
    Config::from_toml(text).unwrap_or_else(|e| panic!("must be accepted: {e}\n---\n{text}"))
}

fn on(clock: &FakeClock, text: &str) -> Registry<FakeClock> {
    Registry::builder(config(text))
        .runtime(clock.clone())
        .build()
        .unwrap_or_else(|e| panic!("registry refused: {e}"))
}

/// `(instance name, from, to)` of every state change the registry's listener heard.
type Changes = Arc<Mutex<Vec<(String, State, State)>>>;

fn on_heard(clock: &FakeClock, text: &str) -> (Registry<FakeClock>, Changes) {
    let changes: Changes = Arc::default();
    let sink = Arc::clone(&changes);
    let registry = Registry::builder(config(text))
        .runtime(clock.clone())
        .on_event(move |event| {
            if let EventKind::StateChanged(c) = event.kind {
                sink.lock()
                    .unwrap()
                    .push((event.name.to_owned(), c.from, c.to));
            }
        })
        .build()
        .unwrap();
    (registry, changes)
}

/// Seeded draws from the library's own generator: every run draws the same numbers.
struct Rng(SplitMix64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(SplitMix64::new(seed))
    }
    /// Uniform in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.0.below_or_equal(n - 1)
    }
}

/// `(keys, max_keys, evicted)` of the table `registry.keyed_tables()` lists for
/// `policy`/`name`.
fn table<R: tidewall::rt::Clock>(
    registry: &Registry<R>,
    policy: &str,
    name: &str,
) -> Option<(usize, usize, u64)> {
    registry
        .keyed_tables()
        .into_iter()
        .find(|t| t.policy == policy && t.name == name)
        .map(|t| (t.keys, t.max_keys, t.evicted))
}

fn is_open<T>(result: Result<T, Rejected>) -> bool {
    matches!(result, Err(Rejected::CircuitOpen { .. }))
}

fn retry_after<T: std::fmt::Debug>(result: Result<T, Rejected>) -> Duration {
    match result {
        Err(Rejected::RateLimited { retry_after }) => retry_after,
        other => panic!("expected RateLimited, got {other:?}"),
    }
}

type Waiter = Pin<Box<dyn Future<Output = Result<OwnedPermit<FakeClock>, Rejected>> + Send>>;

fn poll_once(waiter: &mut Waiter) -> Poll<Result<OwnedPermit<FakeClock>, Rejected>> {
    waiter
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
}

const HOSTS: &str = r#"
[instances.hosts.breaker]
consecutive_failures = 2
window_calls = 10
break_duration = "10s"
[instances.hosts.bulkhead]
max_concurrent = 2
max_queue = 0
[instances.hosts.rate_limit]
count = 4
period = "1s"
"#;

fn with_keys(text: &str, keys: &str) -> String {
    format!("{text}[instances.hosts.keys]\n{keys}\n")
}

// ---------------------------------------------------------------------------------------------
// Default bounds, layers, key types, names
// ---------------------------------------------------------------------------------------------

// Docs (KeysConfig): "The most keys a table holds (not zero; default 10,000 for breakers and
// bulkheads, 100,000 for rate limiters)"; "How long a keyed breaker keeps a closed key with
// failures in its window after its last call (default 60 s)". `keyed_tables`: "breakers, then
// bulkheads, then rate limiters, each by name".
#[test]
fn without_a_keys_section_each_kind_gets_its_own_default_bound() {
    let clock = FakeClock::new();
    let registry = on(
        &clock,
        &format!("{HOSTS}[defaults.breaker]\nfailure_rate = 0.5\n"),
    );
    let rate = registry.keyed_rate_limiter::<u64>("hosts").unwrap();
    let bulk = registry.keyed_bulkhead::<u64>("hosts").unwrap();
    let brk = registry.keyed_breaker::<u64>("hosts").unwrap();
    assert_eq!(
        (brk.max_keys(), bulk.max_keys(), rate.max_keys()),
        (10_000, 10_000, 100_000)
    );
    assert_eq!(brk.idle_ttl(), secs(60));
    // A name the file does not declare: the defaults alone, the same default bounds.
    let edge = registry.keyed_breaker::<u64>("edge").unwrap();
    assert_eq!((edge.max_keys(), edge.idle_ttl()), (10_000, secs(60)));
    // No layer sets max_concurrent for it: Missing, and no table is listed for it.
    let missing = registry.keyed_bulkhead::<u64>("edge").unwrap_err();
    assert_eq!(missing.problem(), &Problem::Missing, "{missing}");
    let listed: Vec<_> = registry
        .keyed_tables()
        .into_iter()
        .map(|t| (t.policy, t.name.to_string(), t.keys, t.max_keys, t.evicted))
        .collect();
    assert_eq!(
        listed,
        [
            ("keyed_breaker", "edge".to_owned(), 0, 10_000, 0),
            ("keyed_breaker", "hosts".to_owned(), 0, 10_000, 0),
            ("keyed_bulkhead", "hosts".to_owned(), 0, 10_000, 0),
            ("keyed_rate", "hosts".to_owned(), 0, 100_000, 0),
        ]
    );

    // A keys section that sets only idle_ttl leaves each kind's own max_keys default.
    let registry = on(
        &clock,
        &format!("{HOSTS}[defaults.keys]\nidle_ttl = \"90m\"\n"),
    );
    let brk = registry.keyed_breaker::<u64>("hosts").unwrap();
    assert_eq!(
        (brk.max_keys(), brk.idle_ttl()),
        (10_000, 90 * 60 * secs(1))
    );
    assert_eq!(
        registry
            .keyed_rate_limiter::<u64>("hosts")
            .unwrap()
            .max_keys(),
        100_000
    );
}

// Docs: "An instance's value for a key is its own, else its base's, else the defaults', else
// the policy builder's default" — for `[keys]` too ("merged down the layers").
#[test]
fn keys_sections_layer_over_base_and_defaults_for_every_kind() {
    let clock = FakeClock::new();
    let registry = on(
        &clock,
        r#"
[defaults.keys]
max_keys = 50
[defaults.rate_limit]
count = 3
period = "1s"
[configs.edge.keys]
max_keys = 20
idle_ttl = "5m"
[instances.a]
base = "edge"
breaker = {}
[instances.a.keys]
idle_ttl = "7m"
[instances.b.breaker]
consecutive_failures = 1
"#,
    );
    let a = registry.keyed_breaker::<u8>("a").unwrap();
    assert_eq!((a.max_keys(), a.idle_ttl()), (20, secs(7 * 60)));
    let a_rate = registry.keyed_rate_limiter::<u8>("a").unwrap();
    assert_eq!(
        a_rate.max_keys(),
        20,
        "the base's bound, not the 100,000 default"
    );
    let b = registry.keyed_breaker::<u8>("b").unwrap();
    assert_eq!((b.max_keys(), b.idle_ttl()), (50, secs(60)));
    let b_rate = registry.keyed_rate_limiter::<u8>("b").unwrap();
    assert_eq!(
        b_rate.max_keys(),
        50,
        "the defaults' bound, not the 100,000 default"
    );
    // An undeclared name: the defaults' keys section.
    assert_eq!(
        registry.keyed_rate_limiter::<u8>("zz").unwrap().max_keys(),
        50
    );
}

// Docs: "made on first use with keys of type K"; "Problem::KeyType when the registry holds the
// table with another key type"; KeyType "(named here)"; paths quote names TOML would quote
// (`instances."api.v2".breaker`). The key type is per keyed policy: `&'static str` and `String`
// are different types, and a refused caller changes nothing of the table.
#[test]
fn the_first_callers_key_type_sticks_per_kind_and_a_wrong_one_changes_nothing() {
    let clock = FakeClock::new();
    let text = r#"
[instances."api.v2".breaker]
consecutive_failures = 1
[instances."api.v2".bulkhead]
max_concurrent = 1
max_queue = 0
[instances."api.v2".rate_limit]
count = 1
period = "1h"
"#;
    let registry = on(&clock, text);
    let brk = registry.keyed_breaker::<&'static str>("api.v2").unwrap();
    brk.try_acquire(&"x").unwrap().failure();
    assert_eq!(brk.state(&"x"), Some(State::Open));

    let wrong = registry.keyed_breaker::<String>("api.v2").unwrap_err();
    assert!(
        matches!(wrong.problem(), Problem::KeyType(held) if held.contains("str") && !held.contains("String")),
        "{wrong:?}"
    );
    assert_eq!(wrong.path(), r#"instances."api.v2".breaker"#);
    let again = registry.keyed_breaker::<&'static str>("api.v2").unwrap();
    assert_eq!((again.state(&"x"), again.len()), (Some(State::Open), 1));

    // Each kind chooses its own key type: a tuple for the bulkhead, String for the limiter.
    let bulk = registry.keyed_bulkhead::<(String, u16)>("api.v2").unwrap();
    let held = bulk.try_acquire(&("a.example".to_owned(), 443)).unwrap();
    let wrong = registry
        .keyed_bulkhead::<(String, u32)>("api.v2")
        .unwrap_err();
    assert!(
        matches!(wrong.problem(), Problem::KeyType(held) if held.contains("u16")),
        "{wrong:?}"
    );
    assert_eq!(wrong.path(), r#"instances."api.v2".bulkhead"#);
    assert_eq!(
        registry
            .keyed_bulkhead::<(String, u16)>("api.v2")
            .unwrap()
            .try_acquire(&("a.example".to_owned(), 443))
            .unwrap_err(),
        Rejected::BulkheadFull,
        "the same table, its permit still held"
    );
    drop(held);

    let rate = registry.keyed_rate_limiter::<String>("api.v2").unwrap();
    rate.check_key(&"k".to_owned()).unwrap();
    let wrong = registry
        .keyed_rate_limiter::<&'static str>("api.v2")
        .unwrap_err();
    assert!(
        matches!(wrong.problem(), Problem::KeyType(held) if held.contains("String")),
        "{wrong:?}"
    );
    assert!(
        rate.check_key(&"k".to_owned()).is_err(),
        "the key still owes its cell"
    );
    // One table per kind, each listed once under the raw name.
    let listed: Vec<_> = registry
        .keyed_tables()
        .into_iter()
        .map(|t| (t.policy, t.name.to_string(), t.keys))
        .collect();
    assert_eq!(
        listed,
        [
            ("keyed_breaker", "api.v2".to_owned(), 1),
            ("keyed_bulkhead", "api.v2".to_owned(), 1),
            ("keyed_rate", "api.v2".to_owned(), 1),
        ]
    );
}

// Docs (mod): "A name as a key path writes it: bare when TOML would write it bare, quoted
// otherwise (`instances."api.v2".breaker`)"; Problem::Fixed for a held table's bound.
#[test]
fn a_quoted_names_bound_is_fixed_and_its_refusal_path_is_quoted() {
    let clock = FakeClock::new();
    let text = r#"
[instances."api.v2".breaker]
consecutive_failures = 1
[instances."api.v2".keys]
max_keys = 7
"#;
    let registry = on(&clock, text);
    let brk = registry.keyed_breaker::<u64>("api.v2").unwrap();
    assert_eq!(brk.max_keys(), 7);
    let refused = registry
        .reload(config(&text.replace("max_keys = 7", "max_keys = 8")))
        .unwrap_err();
    assert_eq!(refused.problem(), &Problem::Fixed, "{refused}");
    assert_eq!(refused.path(), r#"instances."api.v2".keys.max_keys"#);
    assert_eq!(table(&registry, "keyed_breaker", "api.v2"), Some((0, 7, 0)));
}

// Docs (Registry): "The registry holds at most max_instances policies of each kind, and keeps
// a place in each for every declared instance, so names taken from requests can neither grow
// it without bound nor take a declared instance's place." Keyed tables are got by name, so a
// name taken from a request must not grow the registry without bound through them either.
#[test]
fn keyed_tables_of_undeclared_names_respect_max_instances() {
    let clock = FakeClock::new();
    let registry = Registry::builder(config(
        "[instances.hosts.breaker]\nconsecutive_failures = 1\n[defaults.rate_limit]\ncount = 5\nperiod = \"1s\"\n",
    ))
    .runtime(clock.clone())
    .max_instances(3)
    .build()
    .unwrap();
    let mut made = 0;
    for i in 0..100 {
        match registry.keyed_breaker::<u32>(&format!("req-{i}")) {
            Ok(_) => made += 1,
            Err(e) => assert!(matches!(e.problem(), Problem::Full { .. }), "{e}"),
        }
        match registry.keyed_rate_limiter::<u32>(&format!("req-{i}")) {
            Ok(_) => {}
            Err(e) => assert!(matches!(e.problem(), Problem::Full { .. }), "{e}"),
        }
    }
    assert!(
        made <= 2,
        "{made} keyed breakers of undeclared names in a registry of max_instances(3) with a declared instance"
    );
    registry
        .keyed_breaker::<u32>("hosts")
        .expect("the declared instance keeps its place");
    let tables = registry.keyed_tables();
    for policy in ["keyed_breaker", "keyed_rate"] {
        let n = tables.iter().filter(|t| t.policy == policy).count();
        assert!(n <= 3, "{n} {policy} tables under max_instances(3)");
    }
}

// ---------------------------------------------------------------------------------------------
// Problem::Fixed: bounds judged by their effective value
// ---------------------------------------------------------------------------------------------

// Docs (KeysConfig): "Both are fixed when a table is made: a reload that changes them for a
// table the registry holds is refused (Problem::Fixed)." Removing the section changes the
// effective bound (64 → the 10,000 default) just as editing it does.
#[test]
fn removing_a_keys_section_changes_a_held_tables_bound_and_is_refused() {
    let clock = FakeClock::new();
    let text = with_keys(HOSTS, "max_keys = 64\nidle_ttl = \"2m\"");
    let registry = on(&clock, &text);
    let bulk = registry.keyed_bulkhead::<u32>("hosts").unwrap();
    let brk = registry.keyed_breaker::<u32>("hosts").unwrap();
    let before = registry.config();
    let refused = registry
        .reload(config(
            &HOSTS.replace("max_concurrent = 2", "max_concurrent = 5"),
        ))
        .unwrap_err();
    assert_eq!(refused.problem(), &Problem::Fixed, "{refused}");
    assert_eq!(
        (bulk.max_keys(), brk.max_keys(), brk.idle_ttl()),
        (64, 64, secs(120))
    );
    assert_eq!(
        *registry.config(),
        *before,
        "the old configuration stays in force"
    );
    let _one = bulk.try_acquire(&1).unwrap();
    let _two = bulk.try_acquire(&1).unwrap();
    assert_eq!(
        bulk.try_acquire(&1).unwrap_err(),
        Rejected::BulkheadFull,
        "the size of 5 was not applied"
    );
}

// The other side of the same sentence: writing the bound a table already has (the default,
// or the same duration spelt another way) changes nothing and must be accepted.
#[test]
fn writing_the_bound_a_table_already_has_is_no_change() {
    let clock = FakeClock::new();
    let registry = on(&clock, HOSTS);
    let brk = registry.keyed_breaker::<u32>("hosts").unwrap();
    let bulk = registry.keyed_bulkhead::<u32>("hosts").unwrap();
    let explicit = with_keys(
        &HOSTS.replace("consecutive_failures = 2", "consecutive_failures = 1"),
        "max_keys = 10000\nidle_ttl = \"1m\"",
    );
    registry
        .reload(config(&explicit))
        .expect("the default bound written out is the same bound");
    brk.try_acquire(&7).unwrap().failure();
    assert_eq!(brk.state(&7), Some(State::Open), "the reload applied");
    assert_eq!(
        (brk.max_keys(), bulk.max_keys(), brk.idle_ttl()),
        (10_000, 10_000, secs(60))
    );
    // And back to no section at all: still the same bound.
    registry
        .reload(config(HOSTS))
        .expect("no section is the same default bound");
    // The defaults' layer saying the same.
    registry
        .reload(config(&format!(
            "{HOSTS}[defaults.keys]\nmax_keys = 10000\nidle_ttl = \"60000ms\"\n"
        )))
        .expect("the same bound, from the defaults");
}

// Docs: default 10,000 for breakers and bulkheads, 100,000 for rate limiters. One `[keys]`
// section bounds every keyed table of the instance, so a value equal to one kind's default is
// a change for the other kind's table. A reload refused for the last kind in `keyed_tables`
// order (rate limiters) must not have touched the breakers or bulkheads before it: "refused
// with its error, and the old one stays in force, whole".
#[test]
fn one_keys_section_against_two_default_bounds_is_refused_whole() {
    let clock = FakeClock::new();
    let registry = on(&clock, HOSTS);
    let brk = registry.keyed_breaker::<u32>("hosts").unwrap();
    let bulk = registry.keyed_bulkhead::<u32>("hosts").unwrap();
    let rate = registry.keyed_rate_limiter::<u32>("hosts").unwrap();
    let (policy, gcra) = (brk.policy(), rate.gcra());
    let changed = HOSTS
        .replace("consecutive_failures = 2", "consecutive_failures = 1")
        .replace("max_concurrent = 2", "max_concurrent = 3")
        .replace("count = 4", "count = 8");
    for bound in [10_000, 100_000] {
        let refused = registry
            .reload(config(&with_keys(&changed, &format!("max_keys = {bound}"))))
            .unwrap_err();
        assert_eq!(
            refused.problem(),
            &Problem::Fixed,
            "max_keys = {bound}: {refused}"
        );
        assert_eq!(
            brk.policy(),
            policy,
            "max_keys = {bound}: the breakers were retuned"
        );
        assert_eq!(
            rate.gcra(),
            gcra,
            "max_keys = {bound}: the limiters were retuned"
        );
        // Behaviour: the old threshold (2 in a row), the old size (2), the old burst (4).
        brk.try_acquire(&bound).unwrap().failure();
        assert_eq!(brk.state(&bound), Some(State::Closed), "max_keys = {bound}");
        let held: Vec<_> = (0..2).map(|_| bulk.try_acquire(&bound).unwrap()).collect();
        assert_eq!(
            bulk.try_acquire(&bound).unwrap_err(),
            Rejected::BulkheadFull
        );
        drop(held);
        rate.check_key_n(&bound, 4).unwrap();
        assert!(rate.check_key(&bound).is_err());
        assert_eq!(
            (brk.max_keys(), bulk.max_keys(), rate.max_keys()),
            (10_000, 10_000, 100_000)
        );
    }
    // Without a held rate table, 10,000 is no change for anyone held.
    let fresh = on(&clock, HOSTS);
    let _brk = fresh.keyed_breaker::<u32>("hosts").unwrap();
    fresh
        .reload(config(&with_keys(&changed, "max_keys = 10000")))
        .expect("only the breaker's table is held, and its bound is 10,000");
    assert_eq!(
        fresh.keyed_rate_limiter::<u32>("hosts").unwrap().max_keys(),
        10_000,
        "a table made after the reload takes the new bound"
    );
}

// The bound can come from the base or the defaults; a change there is a change of every held
// table that inherits it, and a change hidden by the instance's own value is none.
#[test]
fn a_bound_inherited_from_a_base_or_the_defaults_is_fixed_too() {
    let clock = FakeClock::new();
    let text = r#"
[defaults.keys]
max_keys = 50
[configs.edge.keys]
max_keys = 20
[instances.a]
base = "edge"
[instances.a.breaker]
consecutive_failures = 1
[instances.b.breaker]
consecutive_failures = 1
"#;
    let registry = on(&clock, text);
    let a = registry.keyed_breaker::<u8>("a").unwrap();
    let b = registry.keyed_breaker::<u8>("b").unwrap();
    let refused = registry
        .reload(config(&text.replace("max_keys = 20", "max_keys = 21")))
        .unwrap_err();
    assert_eq!(refused.problem(), &Problem::Fixed, "{refused}");
    let refused = registry
        .reload(config(&text.replace("max_keys = 50", "max_keys = 51")))
        .unwrap_err();
    assert_eq!(refused.problem(), &Problem::Fixed, "{refused}");
    // The instance's own 20 over a base now saying 30: the effective bound is still 20.
    let hidden = text.replace("max_keys = 20", "max_keys = 30").replace(
        "[instances.a.breaker]",
        "[instances.a.keys]\nmax_keys = 20\n[instances.a.breaker]",
    );
    registry
        .reload(config(&hidden))
        .expect("the effective bound of a did not change");
    assert_eq!((a.max_keys(), b.max_keys()), (20, 50));
}

// Docs (reload): "those of instances it no longer declares are kept, on the layers that
// remain (the defaults, say)". A held table whose instance is dropped from the file would be
// bounded by the layers that remain: a bound change, refused. One whose bound does not change
// is retuned from the defaults.
#[test]
fn an_instance_dropped_from_the_file_keeps_its_table_on_the_layers_that_remain() {
    let clock = FakeClock::new();
    let text = r#"
[defaults.breaker]
consecutive_failures = 3
[instances.gone.breaker]
consecutive_failures = 1
[instances.gone.keys]
max_keys = 64
[instances.plain.breaker]
consecutive_failures = 1
"#;
    let registry = on(&clock, text);
    let gone = registry.keyed_breaker::<u8>("gone").unwrap();
    let plain = registry.keyed_breaker::<u8>("plain").unwrap();
    let without_gone = "[defaults.breaker]\nconsecutive_failures = 3\n[instances.plain.breaker]\nconsecutive_failures = 1\n";
    let refused = registry.reload(config(without_gone)).unwrap_err();
    assert_eq!(refused.problem(), &Problem::Fixed, "{refused}");
    assert_eq!(gone.max_keys(), 64);

    let without_plain = "[defaults.breaker]\nconsecutive_failures = 3\n[instances.gone.breaker]\nconsecutive_failures = 1\n[instances.gone.keys]\nmax_keys = 64\n";
    registry
        .reload(config(without_plain))
        .expect("plain's bound is the default either way");
    plain.try_acquire(&1).unwrap().failure();
    assert_eq!(
        plain.state(&1),
        Some(State::Closed),
        "plain's table now follows the defaults' three in a row"
    );
    plain.try_acquire(&1).unwrap().failure();
    plain.try_acquire(&1).unwrap().failure();
    assert_eq!(plain.state(&1), Some(State::Open));
}

// ---------------------------------------------------------------------------------------------
// Refused reloads change nothing
// ---------------------------------------------------------------------------------------------

fn hosts(c: &mut Config) -> &mut tidewall::config::Policies {
    c.instances.get_mut("hosts").unwrap()
}

fn tables_snapshot(
    registry: &Registry<FakeClock>,
    brk: &KeyedCircuitBreaker<u32, FakeClock>,
    bulk: &KeyedBulkhead<u32, FakeClock>,
    rate: &KeyedRateLimiter<u32, FakeClock>,
) -> String {
    let mut out = format!("{:?}\n{:?}\n", registry.config(), registry.keyed_tables());
    out += &format!(
        "breaker {:?} {:?} {} {}\n",
        brk.policy(),
        brk.idle_ttl(),
        brk.max_keys(),
        brk.len()
    );
    for k in 0..8 {
        out += &format!("  {k} {:?} {:?}\n", brk.state(&k), brk.counts(&k));
    }
    out += &format!("bulkhead {} {}\n", bulk.max_keys(), bulk.len());
    for k in 0..8 {
        out += &format!(
            "  {k} {} {:?}\n",
            bulk.in_flight(&k),
            bulk.get(&k)
                .map(|b| (b.capacity(), b.available(), b.queued()))
        );
    }
    out += &format!(
        "rate {:?} {} {}\n",
        rate.gcra(),
        rate.max_keys(),
        rate.len()
    );
    for (name, b) in registry.breakers() {
        out += &format!("plain breaker {name} {:?} {:?}\n", b.policy(), b.state());
    }
    for (name, b) in registry.bulkheads() {
        out += &format!("plain bulkhead {name} {}\n", b.capacity());
    }
    out
}

// Docs (reload): "an invalid configuration ... is refused with its error, and the old one
// stays in force, whole"; Problem::Fixed; KeysConfig's own rules (`max_keys` not zero,
// `idle_ttl` within u64 nanoseconds); the rate builder's overflow and resolution rules. Each
// is tried on a reload that changes everything else too; every table must read and behave
// exactly as before.
#[test]
fn refused_reloads_leave_every_keyed_table_exactly_as_it_was() {
    let clock = FakeClock::new();
    let text = with_keys(HOSTS, "max_keys = 16\nidle_ttl = \"2m\"");
    let registry = on(&clock, &text);
    let brk = registry.keyed_breaker::<u32>("hosts").unwrap();
    let bulk = registry.keyed_bulkhead::<u32>("hosts").unwrap();
    let rate = registry.keyed_rate_limiter::<u32>("hosts").unwrap();
    // State: key 0 open, key 1 one failure, key 2 full, key 3 owes its burst.
    brk.try_acquire(&0).unwrap().failure();
    brk.try_acquire(&0).unwrap().failure();
    brk.try_acquire(&1).unwrap().failure();
    let held: Vec<_> = (0..2).map(|_| bulk.try_acquire(&2).unwrap()).collect();
    rate.check_key_n(&3, 4).unwrap();
    let before = tables_snapshot(&registry, &brk, &bulk, &rate);

    let changed = config(&with_keys(
        &HOSTS
            .replace("consecutive_failures = 2", "consecutive_failures = 1")
            .replace("window_calls = 10", "window_calls = 20")
            .replace("max_concurrent = 2", "max_concurrent = 9")
            .replace("count = 4", "count = 40"),
        "max_keys = 16\nidle_ttl = \"2m\"",
    ));
    let mut bad: Vec<(&str, Config)> = Vec::new();
    let mut c = changed.clone();
    hosts(&mut c).keys.as_mut().unwrap().max_keys = Some(0);
    bad.push(("max_keys = 0", c));
    let mut c = changed.clone();
    hosts(&mut c).keys.as_mut().unwrap().idle_ttl = Some(Duration::MAX);
    bad.push(("an idle_ttl beyond u64 nanoseconds", c));
    let mut c = changed.clone();
    hosts(&mut c).keys.as_mut().unwrap().max_keys = Some(17);
    bad.push(("a bound change", c));
    let mut c = changed.clone();
    hosts(&mut c).keys.as_mut().unwrap().idle_ttl = Some(secs(121));
    bad.push(("an idle_ttl change", c));
    let mut c = changed.clone();
    {
        let limit = hosts(&mut c).rate_limit.as_mut().unwrap();
        limit.count = Some(1);
        limit.period = Some(HOUR);
        limit.burst = Some(u32::MAX);
    }
    bad.push(("a (burst + 1) × interval beyond u64 nanoseconds", c));
    let mut c = changed.clone();
    hosts(&mut c).rate_limit.as_mut().unwrap().count = Some(700_000_000);
    hosts(&mut c).rate_limit.as_mut().unwrap().period = Some(secs(1));
    bad.push(("a rate too fine", c));
    let mut c = changed.clone();
    hosts(&mut c).bulkhead.as_mut().unwrap().max_concurrent = Some(0);
    bad.push(("a zero bulkhead", c));
    let mut c = changed.clone();
    hosts(&mut c).breaker.as_mut().unwrap().consecutive_failures = Some(0);
    bad.push(("a zero run", c));

    for (what, c) in bad {
        let err = registry.reload(c).expect_err(what);
        assert_eq!(
            tables_snapshot(&registry, &brk, &bulk, &rate),
            before,
            "{what}: a refused reload changed something ({err})"
        );
    }
    // Behaviour, after all of them: the old settings in every table.
    assert!(is_open(brk.try_acquire(&0).map(drop)), "key 0 still open");
    brk.try_acquire(&1).unwrap().failure();
    assert_eq!(
        brk.state(&1),
        Some(State::Open),
        "the kept failure and the old run of 2"
    );
    brk.try_acquire(&4).unwrap().failure();
    assert_eq!(
        brk.state(&4),
        Some(State::Closed),
        "a new key: still 2 in a row"
    );
    assert_eq!(bulk.try_acquire(&2).unwrap_err(), Rejected::BulkheadFull);
    drop(held);
    let fresh: Vec<_> = (0..2).map(|_| bulk.try_acquire(&5).unwrap()).collect();
    assert_eq!(
        bulk.try_acquire(&5).unwrap_err(),
        Rejected::BulkheadFull,
        "size 2, not 9"
    );
    drop(fresh);
    assert!(rate.check_key(&3).is_err(), "key 3 still owes its burst");
    rate.check_key_n(&6, 4).unwrap();
    assert!(rate.check_key(&6).is_err(), "burst 4, not 40");
    // And the registry still reloads afterwards.
    registry.reload(changed).unwrap();
    assert_eq!(brk.policy().window(), Window::Count { calls: 20 });
}

// ---------------------------------------------------------------------------------------------
// Breakers across reloads
// ---------------------------------------------------------------------------------------------

// Docs (CircuitBreaker::reconfigure, which a reload applies to every key): "A window of the
// same shape is kept, with the state ...: an open breaker stays open until its break ends (the
// next break follows the new schedule)."
#[test]
fn an_open_key_keeps_its_break_across_reloads_that_change_the_break_both_ways() {
    let clock = FakeClock::new();
    let text = "[instances.hosts.breaker]\nconsecutive_failures = 1\nbreak_duration = \"10s\"\n";
    let registry = on(&clock, text);
    let brk = registry.keyed_breaker::<&'static str>("hosts").unwrap();
    brk.try_acquire(&"a").unwrap().failure();
    clock.advance(secs(3));
    let reload = registry.reload(config(&text.replace("10s", "1h"))).unwrap();
    assert!(reload.reset.is_empty(), "{reload:?}");
    assert_eq!(brk.state(&"a"), Some(State::Open));
    clock.advance(secs(6));
    assert!(
        is_open(brk.try_acquire(&"a").map(drop)),
        "9 s into a 10 s break"
    );
    clock.advance(secs(1));
    let probe = brk.try_acquire(&"a").expect("the 10 s break is over");
    assert!(probe.is_probe());
    probe.failure();
    assert_eq!(brk.state(&"a"), Some(State::Open));
    clock.advance(HOUR - secs(1));
    assert!(
        is_open(brk.try_acquire(&"a").map(drop)),
        "the next break is the new 1 h"
    );
    clock.advance(secs(1));
    brk.try_acquire(&"a").expect("1 h later: a probe").success();
    assert_eq!(brk.state(&"a"), Some(State::Closed));

    // The other way: opened under 1 h, shortened to 1 s: the break in course is kept.
    brk.try_acquire(&"b").unwrap().failure();
    registry.reload(config(&text.replace("10s", "1s"))).unwrap();
    clock.advance(secs(2));
    assert!(
        is_open(brk.try_acquire(&"b").map(drop)),
        "an open breaker stays open until its break ends"
    );
    clock.advance(HOUR - secs(2));
    let probe = brk.try_acquire(&"b").expect("its 1 h break is over");
    probe.failure();
    clock.advance(secs(1));
    assert!(
        brk.try_acquire(&"b").is_ok(),
        "the next break follows the 1 s schedule"
    );
}

// Docs: "Calls in flight keep their permits either way; after a reset their outcomes are
// ignored, as after any reset"; the registry's listener hears "every event of every policy
// ... the registry makes" — each key's reset with its state-change event.
#[test]
fn half_open_probes_across_same_shape_and_reshaping_reloads() {
    let clock = FakeClock::new();
    let text = "[instances.hosts.breaker]\nconsecutive_failures = 1\nwindow_calls = 10\nbreak_duration = \"5s\"\n";
    let (registry, changes) = on_heard(&clock, text);
    let brk = registry.keyed_breaker::<u64>("hosts").unwrap();
    brk.try_acquire(&1).unwrap().failure();
    brk.try_acquire(&2).unwrap().failure();
    clock.advance(secs(5));
    let probe1 = brk.try_acquire(&1).unwrap();
    let probe2 = brk.try_acquire(&2).unwrap();
    assert!(probe1.is_probe() && probe2.is_probe());
    assert_eq!(brk.state(&1), Some(State::HalfOpen));

    // Same shape: the probe stays a probe and its success closes the key.
    registry
        .reload(config(&text.replace(
            "consecutive_failures = 1",
            "consecutive_failures = 4",
        )))
        .unwrap();
    assert_eq!(brk.state(&1), Some(State::HalfOpen));
    assert!(
        is_open(brk.try_acquire(&1).map(drop)),
        "the one probe slot is taken"
    );
    probe1.success();
    assert_eq!(brk.state(&1), Some(State::Closed));

    // Another shape: key 2 is reset with an event; its late probe's failure is ignored.
    changes.lock().unwrap().clear();
    registry
        .reload(config(
            &text.replace("window_calls = 10", "window_calls = 20"),
        ))
        .unwrap();
    assert_eq!(brk.state(&2), Some(State::Closed));
    let heard = changes.lock().unwrap().clone();
    assert!(
        heard.contains(&("hosts".to_owned(), State::HalfOpen, State::Closed)),
        "key 2's reset was not heard: {heard:?}"
    );
    probe2.failure();
    assert_eq!(
        brk.state(&2),
        Some(State::Closed),
        "an outcome from before the reset"
    );
    assert_eq!(brk.counts(&2), Some(Counts::default()));
    assert_eq!(brk.policy().window(), Window::Count { calls: 20 });
}

// Docs: "a breaker ... is reset with a state-change event when it does not [keep its shape]",
// "unless it was forced open or closed by hand (it stays forced)"; CircuitBreaker::reset:
// "Back to closed with an empty window". Every key: open, forced open, half-open, closed with
// failures. A handle from `get` held across the reload is the same breaker, and sees the new
// policy.
#[test]
fn a_reshaping_reload_resets_every_key_but_one_forced_by_hand() {
    let clock = FakeClock::new();
    let text = "[instances.hosts.breaker]\nconsecutive_failures = 2\nwindow_calls = 10\nbreak_duration = \"5s\"\n";
    let (registry, changes) = on_heard(&clock, text);
    let brk = registry.keyed_breaker::<u8>("hosts").unwrap();
    for _ in 0..2 {
        brk.try_acquire(&3).unwrap().failure(); // to be half-open
    }
    clock.advance(secs(5));
    let probe = brk.try_acquire(&3).unwrap();
    assert!(probe.is_probe());
    for _ in 0..2 {
        brk.try_acquire(&1).unwrap().failure(); // open, its break just begun
    }
    brk.try_acquire(&2).unwrap().success();
    let forced = brk.get(&2).unwrap();
    forced.force_open();
    brk.try_acquire(&4).unwrap().failure(); // closed, one failure
    let states: Vec<_> = (1..=4).map(|k| brk.state(&k)).collect();
    assert_eq!(
        states,
        [
            Some(State::Open),
            Some(State::ForcedOpen),
            Some(State::HalfOpen),
            Some(State::Closed)
        ]
    );
    changes.lock().unwrap().clear();
    registry
        .reload(config(
            &text.replace("window_calls = 10", "window_calls = 30"),
        ))
        .unwrap();
    for k in 1..=4 {
        let state = if k == 2 {
            State::ForcedOpen
        } else {
            State::Closed
        };
        assert_eq!(
            (brk.state(&k), brk.counts(&k)),
            (Some(state), Some(Counts::default())),
            "key {k}"
        );
    }
    let heard: Vec<_> = changes
        .lock()
        .unwrap()
        .iter()
        .filter(|(name, from, to)| {
            name == "hosts" && *from != State::Closed && *to == State::Closed
        })
        .map(|(_, from, _)| *from)
        .collect();
    for (from, events) in [
        (State::Open, 1),
        (State::ForcedOpen, 0),
        (State::HalfOpen, 1),
    ] {
        assert_eq!(
            heard.iter().filter(|f| **f == from).count(),
            events,
            "reset events from {from:?}: {heard:?}"
        );
    }
    assert_eq!(
        forced.state(),
        State::ForcedOpen,
        "the handle is the key's breaker, still forced"
    );
    assert_eq!(forced.policy().window(), Window::Count { calls: 30 });
    drop(probe);
    // Reset by hand, the force is gone: two failures trip key 2 as any other.
    forced.reset();
    forced.try_acquire().unwrap().failure();
    forced.try_acquire().unwrap().failure();
    assert_eq!(brk.state(&2), Some(State::Open));
}

// Docs (KeyedCircuitBreaker::reconfigure): "Its name, listeners, max_keys, idle_ttl and
// runtime are not changed"; "Returns how many keys' breakers were reset"; `policy()` is "a
// copy: reconfigure may replace it"; "on an error nothing changes".
#[test]
fn keyed_breaker_reconfigure_counts_every_reset_key_and_keeps_name_and_listeners() {
    let clock = FakeClock::new();
    let heard: Arc<Mutex<Vec<(u32, State, State)>>> = Arc::default();
    let sink = Arc::clone(&heard);
    let brk = CircuitBreaker::builder()
        .name("hosts")
        .runtime(clock.clone())
        .consecutive_failures(2)
        .window(Window::Count { calls: 10 })
        .keyed()
        .max_keys(100)
        .idle_ttl(secs(300))
        .on_state_change(move |key: &u32, change| {
            sink.lock().unwrap().push((*key, change.from, change.to));
        })
        .build()
        .unwrap();
    for _ in 0..2 {
        brk.try_acquire(&0).unwrap().failure();
    }
    brk.try_acquire(&1).unwrap().failure();
    for k in 2..5 {
        brk.try_acquire(&k).unwrap().success();
    }
    let held = brk.len();
    assert_eq!(held, 5);
    let copy = brk.policy();

    // Same shape: nothing reset, even the open key.
    assert_eq!(
        brk.reconfigure(
            CircuitBreaker::builder()
                .consecutive_failures(3)
                .window(Window::Count { calls: 10 })
        )
        .unwrap(),
        0
    );
    assert_eq!(brk.state(&0), Some(State::Open));
    // Refused: nothing changes.
    assert!(
        brk.reconfigure(CircuitBreaker::builder().failure_rate(1.5))
            .is_err()
    );
    assert_eq!(brk.policy().window(), Window::Count { calls: 10 });

    let stranger: Arc<AtomicUsize> = Arc::default();
    let counted = Arc::clone(&stranger);
    let resets = brk
        .reconfigure(
            CircuitBreaker::builder()
                .name("other")
                .consecutive_failures(1)
                .window(Window::Count { calls: 50 })
                .on_state_change(move |_| {
                    counted.fetch_add(1, SeqCst);
                }),
        )
        .unwrap();
    assert_eq!(resets, held, "every held key's window changed shape");
    assert_eq!(brk.name(), "hosts");
    assert_eq!((brk.max_keys(), brk.idle_ttl()), (100, secs(300)));
    assert_eq!(
        copy.window(),
        Window::Count { calls: 10 },
        "the copy is a copy"
    );
    assert_ne!(brk.policy(), copy);
    assert_eq!(brk.policy().window(), Window::Count { calls: 50 });
    assert!(
        heard
            .lock()
            .unwrap()
            .contains(&(0, State::Open, State::Closed)),
        "key 0's reset reached the keyed listener with its key: {:?}",
        heard.lock().unwrap()
    );
    brk.try_acquire(&9).unwrap().failure();
    assert_eq!(
        brk.state(&9),
        Some(State::Open),
        "a new key follows the new policy"
    );
    assert!(
        heard
            .lock()
            .unwrap()
            .contains(&(9, State::Closed, State::Open))
    );
    assert_eq!(
        stranger.load(SeqCst),
        0,
        "the new builder's listener is not installed"
    );
    assert_eq!(brk.get(&9).unwrap().name(), "hosts");
}

// Docs: a key "has not been used for idle_ttl" before it may go (a reload is not a use); "Any
// age: a time window's stale buckets never count again" — across days of idleness and a
// same-shape reload.
#[test]
fn idle_time_around_reloads_neither_refreshes_keys_nor_revives_stale_calls() {
    let clock = FakeClock::new();
    let text = "[instances.hosts.breaker]\nfailure_rate = 0.5\nminimum_calls = 4\nwindow = \"10m\"\nwindow_buckets = 10\n[instances.hosts.keys]\nidle_ttl = \"2m\"\n";
    let registry = on(&clock, text);
    let brk = registry.keyed_breaker::<u32>("hosts").unwrap();
    assert_eq!(brk.idle_ttl(), secs(120));
    for _ in 0..3 {
        brk.try_acquire(&1).unwrap().failure();
    }
    clock.advance(secs(119));
    let reload = registry
        .reload(config(&text.replace("0.5", "0.6")))
        .unwrap();
    assert!(reload.reset.is_empty(), "same window shape: {reload:?}");
    assert_eq!(brk.retain_in_use(), 0, "119 s idle, failures in its window");
    assert_eq!(brk.counts(&1).map(|c| c.failures), Some(3));
    clock.advance(secs(2));
    assert_eq!(
        brk.retain_in_use(),
        1,
        "121 s since its last call: the reload was no call"
    );
    assert_eq!(brk.state(&1), None);
    assert_eq!(
        table(&registry, "keyed_breaker", "hosts"),
        Some((0, 10_000, 1))
    );

    // Days of idleness, then a same-shape reload: the old failures never count again.
    for _ in 0..3 {
        brk.try_acquire(&2).unwrap().failure();
    }
    let handle = brk.get(&2).unwrap(); // held: key 2 stays whatever the idleness
    clock.advance(3 * DAY);
    registry.reload(config(text)).unwrap();
    assert_eq!(
        handle.counts().calls,
        0,
        "stale buckets hold nothing after 3 days"
    );
    for _ in 0..3 {
        brk.try_acquire(&2).unwrap().failure();
    }
    assert_eq!(
        brk.state(&2),
        Some(State::Closed),
        "3 calls are under the minimum of 4: the 3 from days ago must not count"
    );
    brk.try_acquire(&2).unwrap().failure();
    assert_eq!(brk.state(&2), Some(State::Open));
}

// ---------------------------------------------------------------------------------------------
// Bulkheads across reloads
// ---------------------------------------------------------------------------------------------

// Docs (reload): "calls in flight keep their permits; a bulkhead shrunk below what is held
// admits nobody new until enough permits come back"; KeyedBulkhead::get: "While a handle is
// held the key is never evicted"; max_keys "a hard bound" that a reload cannot change.
#[test]
fn permits_and_handles_held_across_a_shrinking_reload() {
    let clock = FakeClock::new();
    let text = "[instances.tenants.bulkhead]\nmax_concurrent = 3\nmax_queue = 0\n[instances.tenants.keys]\nmax_keys = 4\n";
    let registry = on(&clock, text);
    let bulk = registry.keyed_bulkhead::<String>("tenants").unwrap();
    let a = "a".to_owned();
    let mut a_held: Vec<_> = (0..3).map(|_| bulk.try_acquire(&a).unwrap()).collect();
    let c_held = bulk.try_acquire(&"c".to_owned()).unwrap();
    drop(bulk.try_acquire(&"b".to_owned()).unwrap());
    let b_handle = bulk.get(&"b".to_owned()).expect("b is held");
    let d_held = bulk.try_acquire(&"d".to_owned()).unwrap();
    assert!(
        matches!(
            bulk.try_acquire(&"e".to_owned()),
            Err(Rejected::KeysFull { .. })
        ),
        "four busy keys fill a table of 4"
    );

    registry
        .reload(config(
            &text.replace("max_concurrent = 3", "max_concurrent = 1"),
        ))
        .unwrap();
    assert!(
        matches!(
            bulk.try_acquire(&"e".to_owned()),
            Err(Rejected::KeysFull { .. })
        ),
        "the bound is still 4 and a, b, c, d are busy"
    );
    assert_eq!(bulk.in_flight(&a), 3, "nothing revoked");
    assert_eq!(
        b_handle.capacity(),
        1,
        "the handle is the key's bulkhead, retuned"
    );
    assert_eq!(bulk.try_acquire(&a).unwrap_err(), Rejected::BulkheadFull);
    a_held.pop();
    a_held.pop();
    assert_eq!(
        bulk.try_acquire(&a).unwrap_err(),
        Rejected::BulkheadFull,
        "one still out, and 1 is the limit"
    );
    a_held.clear();
    drop(bulk.try_acquire(&a).expect("all back: one admitted"));
    assert_eq!(
        bulk.try_acquire(&"c".to_owned()).unwrap_err(),
        Rejected::BulkheadFull
    );
    drop((c_held, d_held));
    assert_eq!(
        bulk.retain_in_use(),
        3,
        "a, c and d have nothing out; b has a handle"
    );
    assert_eq!(bulk.len(), 1);
    let e = bulk.try_acquire(&"e".to_owned()).expect("room now");
    assert_eq!(
        bulk.try_acquire(&"e".to_owned()).unwrap_err(),
        Rejected::BulkheadFull,
        "a new key gets the new size of 1"
    );
    drop((e, b_handle));
    assert_eq!(bulk.retain_in_use(), 2);
    assert_eq!(bulk.len(), 0);
}

// Docs (Bulkhead::reconfigure, applied to every key): "growing hands the new permits to queued
// callers first ... Callers already queued stay queued when the queue shrinks";
// acquire_before: "The key is held (never evicted) while the future exists".
#[test]
fn queued_waiters_of_every_key_across_growing_and_shrinking_reloads() {
    let clock = FakeClock::new();
    let text =
        "[instances.tenants.bulkhead]\nmax_concurrent = 1\nmax_queue = 4\nmax_wait = \"off\"\n";
    let registry = on(&clock, text);
    let bulk = registry.keyed_bulkhead::<u8>("tenants").unwrap();
    let a0 = bulk.try_acquire(&1).unwrap();
    let b0 = bulk.try_acquire(&2).unwrap();
    let mut a1: Waiter = Box::pin(bulk.acquire_before(&1, Deadline::none()));
    let mut a2: Waiter = Box::pin(bulk.acquire_before(&1, Deadline::none()));
    let mut b1: Waiter = Box::pin(bulk.acquire_before(&2, Deadline::none()));
    assert!(poll_once(&mut a1).is_pending());
    assert!(poll_once(&mut a2).is_pending());
    assert!(poll_once(&mut b1).is_pending());
    assert_eq!(bulk.get(&1).unwrap().queued(), 2);

    registry
        .reload(config(
            &text.replace("max_concurrent = 1", "max_concurrent = 2"),
        ))
        .unwrap();
    let Poll::Ready(Ok(a1_permit)) = poll_once(&mut a1) else {
        panic!("key 1's first waiter gets the new slot")
    };
    let Poll::Ready(Ok(b1_permit)) = poll_once(&mut b1) else {
        panic!("key 2's waiter gets the new slot: every key is retuned")
    };
    assert!(poll_once(&mut a2).is_pending());
    assert_eq!(bulk.try_acquire(&2).unwrap_err(), Rejected::BulkheadFull);

    registry
        .reload(config(&text.replace("max_queue = 4", "max_queue = 0")))
        .unwrap();
    assert_eq!(
        bulk.get(&1).unwrap().queued(),
        1,
        "queued callers stay queued"
    );
    assert_eq!(
        bulk.retain_in_use(),
        0,
        "every key has something out or queued"
    );
    drop(a1_permit);
    assert!(
        poll_once(&mut a2).is_pending(),
        "one out, and 1 is the limit"
    );
    drop(a0);
    let Poll::Ready(Ok(a2_permit)) = poll_once(&mut a2) else {
        panic!("key 1's second waiter gets the slot once enough came back")
    };
    drop((a2_permit, b0, b1_permit, a1, a2, b1));
    assert_eq!(bulk.retain_in_use(), 2);
}

// Docs (KeyedBulkhead::reconfigure): "Its name, max_keys and runtime are not changed"; "on an
// error nothing changes"; "a new key gets the new size too".
#[test]
fn keyed_bulkhead_reconfigure_keeps_name_and_bound_and_refuses_atomically() {
    let clock = FakeClock::new();
    let bulk = Bulkhead::builder(2)
        .name("tenants")
        .max_queue(0)
        .runtime(clock.clone())
        .keyed()
        .max_keys(8)
        .build::<u32>()
        .unwrap();
    let held: Vec<_> = (0..2).map(|_| bulk.try_acquire(&1).unwrap()).collect();
    for bad in [
        Bulkhead::builder(0),
        Bulkhead::builder(3).max_queue(2).max_wait(Duration::ZERO),
        Bulkhead::builder(3).max_wait(Duration::MAX),
    ] {
        assert!(bulk.reconfigure(bad).is_err());
        assert_eq!(bulk.get(&1).unwrap().capacity(), 2);
        assert_eq!(bulk.try_acquire(&1).unwrap_err(), Rejected::BulkheadFull);
    }
    bulk.reconfigure(Bulkhead::builder(5).name("other").max_queue(0))
        .unwrap();
    assert_eq!((bulk.name(), bulk.max_keys()), ("tenants", 8));
    assert_eq!(bulk.get(&1).unwrap().name(), "tenants");
    let more: Vec<_> = (0..3).map(|_| bulk.try_acquire(&1).unwrap()).collect();
    assert_eq!(bulk.try_acquire(&1).unwrap_err(), Rejected::BulkheadFull);
    let new: Vec<_> = (0..5).map(|_| bulk.try_acquire(&2).unwrap()).collect();
    assert_eq!(bulk.try_acquire(&2).unwrap_err(), Rejected::BulkheadFull);
    drop((held, more, new));
}

// ---------------------------------------------------------------------------------------------
// Rate limits across reloads
// ---------------------------------------------------------------------------------------------

fn rate_text(count: u64, period: &str, burst: u64) -> String {
    format!(
        "[instances.hosts.rate_limit]\ncount = {count}\nperiod = \"{period}\"\nburst = {burst}\n"
    )
}

// Docs: "each key keeps the cells it was admitted, as that many cells under the new limit, so
// a change never hands a key a fresh burst"; "the time they take to pay off ... is rescaled to
// the new rate". From 1 ns a cell to 1 h a cell: 1,000 cells owed become 1,000 hours.
#[test]
fn a_burst_spent_at_nanosecond_rates_is_owed_in_hours_after_the_reload() {
    let clock = FakeClock::new();
    let registry = on(&clock, &rate_text(1_000_000_000, "1s", 1_000));
    let rate = registry
        .keyed_rate_limiter::<&'static str>("hosts")
        .unwrap();
    rate.check_key_n(&"a", 1_000).unwrap();
    registry.reload(config(&rate_text(1, "1h", 1))).unwrap();
    assert_eq!(
        rate.gcra(),
        RateLimiter::builder(1, HOUR).build().unwrap().gcra(),
        "gcra() is the limit in force"
    );
    assert_eq!(rate.gcra(), registry.rate_limiter("hosts").unwrap().gcra());
    let wait = retry_after(rate.check_key(&"a"));
    assert!(
        (999 * HOUR..=1_000 * HOUR).contains(&wait),
        "1,000 cells owed at 1 h each, told to wait {wait:?}"
    );
    clock.advance(999 * HOUR);
    assert!(rate.check_key(&"a").is_err(), "still owed after 999 h");
    clock.advance(HOUR + secs(1));
    rate.check_key(&"a").expect("paid off after 1,000 h");
    rate.check_key(&"b").expect("a new key: the new burst of 1");
    assert!(rate.check_key(&"b").is_err());
}

// The other way: 1,000 cells owed at 1 h each become 1,000 cells at 1 ns each under a limit of
// u32::MAX per u32::MAX ns with the largest burst, so exactly u32::MAX − 1,000 are left.
#[test]
fn cells_owed_in_hours_stay_owed_as_cells_under_a_u32_max_burst() {
    let clock = FakeClock::new();
    let registry = on(&clock, &rate_text(1, "1h", 1_000));
    let rate = registry.keyed_rate_limiter::<u8>("hosts").unwrap();
    rate.check_key_n(&1, 1_000).unwrap();
    let max = u64::from(u32::MAX);
    registry
        .reload(config(&rate_text(max, &format!("{max}ns"), max)))
        .unwrap();
    assert_eq!(
        (rate.gcra().interval_nanos(), rate.gcra().burst()),
        (1, u32::MAX)
    );
    assert!(
        matches!(
            rate.check_key_n(&1, u32::MAX),
            Err(Rejected::RateLimited { .. })
        ),
        "no fresh burst: 1,000 cells are still owed"
    );
    rate.check_key_n(&1, u32::MAX - 1_000)
        .expect("what the new burst leaves");
    assert!(rate.check_key(&1).is_err());
    rate.check_key_n(&2, u32::MAX)
        .expect("a new key: the whole new burst");
}

// A debt that no longer fits in u64 nanoseconds (u32::MAX cells, then 1 h a cell: ~490,000
// years) must not wrap into a fresh burst: the key stays refused for as long as the clock can
// tell, a new key gets its burst, nothing panics.
#[test]
fn a_debt_beyond_u64_nanoseconds_never_wraps_into_a_fresh_burst() {
    let clock = FakeClock::new();
    let max = u64::from(u32::MAX);
    let registry = on(&clock, &rate_text(max, &format!("{max}ns"), max));
    let rate = registry.keyed_rate_limiter::<u8>("hosts").unwrap();
    rate.check_key_n(&1, u32::MAX).unwrap();
    registry.reload(config(&rate_text(1, "1h", 1))).unwrap();
    assert!(rate.check_key(&1).is_err(), "u32::MAX cells owed");
    for gap in [DAY, YEAR, 99 * YEAR] {
        clock.advance(gap);
        assert!(rate.check_key(&1).is_err(), "still owed after {gap:?} more");
    }
    rate.check_key(&2).expect("a new key");
    assert!(rate.check_key(&2).is_err());
}

// The round trip through an unrepresentable debt, with no time passing: 1 ns a cell, u32::MAX
// cells taken; then 1 h a cell; then 1 ns a cell again. The docs promise every change keeps
// "the cells it was admitted, as that many cells under the new limit", up to one stated bound
// (`RateLimiter::reconfigure`): a debt past u64::MAX nanoseconds is capped there, and a later
// change rescales the capped debt ("4 billion cells taken at 1 ns each, then a limit of one an
// hour, then 1 ns again, owe 5 million cells"). The key must owe exactly the capped debt.
#[test]
fn a_round_trip_through_an_unrepresentable_debt_keeps_exactly_the_capped_debt() {
    let clock = FakeClock::new();
    let max = u64::from(u32::MAX);
    let fast = rate_text(max, &format!("{max}ns"), max);
    let registry = on(&clock, &fast);
    let rate = registry.keyed_rate_limiter::<u8>("hosts").unwrap();
    rate.check_key_n(&1, u32::MAX).unwrap();
    registry.reload(config(&rate_text(1, "1h", 1))).unwrap();
    registry.reload(config(&fast)).unwrap();
    // How many cells the key is handed now (greedy, largest chunks first).
    let mut handed: u64 = 0;
    for p in (0..32).rev() {
        while rate.check_key_n(&1, 1 << p).is_ok() {
            handed += 1 << p;
        }
    }
    // The cap: 584 years of 1 h cells, each 1 ns again, rounded up (less the few nanoseconds
    // the clock had run when the cells were taken).
    let capped = u64::MAX.div_ceil(3_600_000_000_000);
    let owed = u64::from(u32::MAX) - handed;
    assert!(
        owed == capped || owed + 1 == capped,
        "the key owes {owed} cells after the round trip; the capped debt is {capped}"
    );
}

// Rescaling between intervals whose ratio is not whole (3 ns and 1,000,000,007 ns) must not
// round a debt away: flipped a thousand times at one instant, a key that owes 29 ns (9⅔ cells
// of 3 ns, burst 10) is refused after every flip, under either limit ("a change never hands a
// key a fresh burst").
#[test]
fn a_thousand_flips_between_incommensurate_intervals_never_round_a_debt_away() {
    let clock = FakeClock::new();
    let a = rate_text(1, "3ns", 10);
    let b = rate_text(1, "1000000007ns", 10);
    let registry = on(&clock, &a);
    let rate = registry.keyed_rate_limiter::<u8>("hosts").unwrap();
    rate.check_key_n(&1, 10).unwrap();
    clock.advance(Duration::from_nanos(1));
    assert!(
        rate.check_key(&1).is_err(),
        "29 ns owed, 3 ns a cell, 30 ns of burst"
    );
    let mut admitted = Vec::new();
    for flip in 0..1_000 {
        let text = if flip % 2 == 0 { &b } else { &a };
        registry.reload(config(text)).unwrap();
        if rate.check_key(&1).is_ok() {
            admitted.push(flip);
        }
    }
    assert!(
        admitted.is_empty(),
        "at one instant, with 9⅔ cells of a burst of 10 owed, {} more cells were admitted across \
         1,000 reloads (first at flips {:?})",
        admitted.len(),
        &admitted[..admitted.len().min(5)]
    );
}

// Docs (KeyedRateLimiter::check_key): "Rejected::RateLimited with the exact retry_after (also
// when the key is new and its shard is full of keys that have not rested yet)"; the type's
// docs: "whose retry_after is when the first of them rests". A reload rescales the keys' debts,
// so they rest at another time — and the next refusal must say when, whether or not a new key
// was refused before the reload. Here to a slower rate.
#[test]
fn a_full_limiter_tables_hint_follows_a_reload_to_a_slower_rate() {
    let clock = FakeClock::new();
    let registry = on(&clock, &with_keys(&rate_text(1, "1s", 1), "max_keys = 2"));
    let rate = registry.keyed_rate_limiter::<u8>("hosts").unwrap();
    rate.check_key(&1).unwrap();
    rate.check_key(&2).unwrap();
    let wait = retry_after(rate.check_key(&3));
    assert!(wait <= secs(1), "{wait:?}");
    registry
        .reload(config(&with_keys(&rate_text(1, "1h", 1), "max_keys = 2")))
        .unwrap();
    assert_eq!(
        retry_after(rate.check_key(&1)),
        HOUR,
        "key 1 owes one cell of 1 h"
    );
    let wait = retry_after(rate.check_key(&3));
    assert!(
        wait > HOUR - secs(1) && wait <= HOUR,
        "keys 1 and 2 each owe one cell of 1 h now: key 3 told to retry after {wait:?}"
    );
    clock.advance(secs(2));
    assert!(
        matches!(rate.check_key(&3), Err(Rejected::RateLimited { .. })),
        "keys 1 and 2 have not rested: forgetting one would hand it an extra burst"
    );
    assert_eq!(rate.len(), 2);
    clock.advance(HOUR);
    rate.check_key(&3).expect("keys 1 and 2 rested: one may go");
}

// The same, to a faster rate: the keys rest sooner. Once both have rested (key 1 shows it: it
// is admitted again), "such keys are evicted whenever a shard fills up", so a new key must be
// admitted — and the hint given before must not have said an hour.
#[test]
fn a_full_limiter_table_frees_up_on_the_rescaled_debts_after_a_reload_to_a_faster_rate() {
    let clock = FakeClock::new();
    let registry = on(&clock, &with_keys(&rate_text(1, "1h", 1), "max_keys = 2"));
    let rate = registry.keyed_rate_limiter::<u8>("hosts").unwrap();
    rate.check_key(&1).unwrap();
    rate.check_key(&2).unwrap();
    assert_eq!(
        retry_after(rate.check_key(&3)),
        HOUR,
        "a refusal before the reload"
    );
    registry
        .reload(config(&with_keys(&rate_text(1, "1s", 1), "max_keys = 2")))
        .unwrap();
    let hint = rate.check_key(&3);
    clock.advance(secs(1));
    let later = rate.check_key(&3);
    let rested = rate.check_key(&2);
    assert!(
        later.is_ok(),
        "keys 1 and 2 owed one cell of 1 s and have rested (key 2 admitted again: {rested:?}), \
         yet the new key 3 is refused 1 s after the reload: {later:?} (hint right after the \
         reload: {hint:?})"
    );
    assert!(
        retry_after(hint) <= secs(1),
        "the hint right after the reload kept the old hour"
    );
}

// Docs: "A closed breaker with an empty window may go at once"; a reshaping reload resets
// every key "to closed" with an empty window — so a table full of open keys, which refused a
// new key a moment ago, must have room right after the reload.
#[test]
fn a_reshaping_reload_frees_a_breaker_table_full_of_open_keys_at_once() {
    let clock = FakeClock::new();
    let text = "[instances.h.breaker]\nconsecutive_failures = 1\nwindow_calls = 5\n[instances.h.keys]\nmax_keys = 2\n";
    let registry = on(&clock, text);
    let brk = registry.keyed_breaker::<u8>("h").unwrap();
    brk.try_acquire(&1).unwrap().failure();
    brk.try_acquire(&2).unwrap().failure();
    assert_eq!(
        brk.try_acquire(&3).map(drop),
        Err(Rejected::KeysFull { retry_after: None }),
        "both open"
    );
    registry
        .reload(config(
            &text.replace("window_calls = 5", "window_calls = 6"),
        ))
        .unwrap();
    assert_eq!(brk.counts(&1), Some(Counts::default()));
    brk.try_acquire(&3)
        .expect("keys 1 and 2 are closed and empty: one may go")
        .success();
    // The sweep may forget one or both of the closed, empty keys.
    let held = brk.len();
    assert!((1..=2).contains(&held), "{held}");
    assert_eq!(
        table(&registry, "keyed_breaker", "h"),
        Some((held, 2, u64::try_from(3 - held).unwrap()))
    );
}

// Docs (RateLimiterBuilder::keyed): "the same as KeyedRateLimiter::builder, from a builder at
// hand"; on_event: "a keyed limiter built from this builder calls it too (a full key table as
// keyed_rate)"; KeyedRateLimiter::reconfigure: "Its name, max_keys, seed and runtime are not
// changed ... on an error nothing changes".
#[test]
fn rate_limiter_builder_keyed_is_the_keyed_builder_and_keeps_its_listener() {
    let clock = FakeClock::new();
    let events: Arc<Mutex<Vec<(&'static str, String)>>> = Arc::default();
    let sink = Arc::clone(&events);
    let keyed = RateLimiter::builder(1, HOUR)
        .name("users")
        .seed(7)
        .runtime(clock.clone())
        .on_event(move |event| {
            if let EventKind::Rejected(_) = event.kind {
                sink.lock()
                    .unwrap()
                    .push((event.policy, event.name.to_owned()));
            }
        })
        .keyed()
        .max_keys(1)
        .build::<u8>()
        .unwrap();
    let plain = KeyedRateLimiter::builder(1, HOUR)
        .runtime(clock.clone())
        .build::<u8>()
        .unwrap();
    assert_eq!(keyed.gcra(), plain.gcra());
    assert_eq!((plain.max_keys(), keyed.max_keys()), (100_000, 1));
    assert_eq!(keyed.name(), "users");
    keyed.check_key(&1).unwrap();
    assert!(keyed.check_key(&1).is_err());
    let wait = retry_after(keyed.check_key(&2));
    assert!(wait <= HOUR && wait > HOUR - secs(1), "{wait:?}");
    let heard = events.lock().unwrap().clone();
    assert_eq!(heard.len(), 2, "{heard:?}");
    assert_eq!(heard[1], ("keyed_rate", "users".to_owned()), "{heard:?}");

    keyed
        .reconfigure(RateLimiter::builder(2, HOUR).name("other"))
        .unwrap();
    assert_eq!((keyed.name(), keyed.max_keys()), ("users", 1));
    let two = keyed.gcra();
    assert_eq!(two, RateLimiter::builder(2, HOUR).build().unwrap().gcra());
    assert!(
        keyed
            .reconfigure(RateLimiter::builder(700_000_000, secs(1)))
            .is_err()
    );
    assert!(keyed.reconfigure(RateLimiter::builder(0, secs(1))).is_err());
    assert_eq!(keyed.gcra(), two, "on an error nothing changes");
    keyed.check_key(&1).expect("1 owed of the burst of 2");
    assert!(keyed.check_key(&1).is_err());
    // Time still comes from the FakeClock though the settings came on the default runtime.
    clock.advance(HOUR);
    keyed
        .check_key(&1)
        .expect("one interval (30 min) twice over");
}

// ---------------------------------------------------------------------------------------------
// Threads
// ---------------------------------------------------------------------------------------------

fn hosts_text(cap: usize, run: u32, calls: u32, count: u32) -> String {
    format!(
        "[instances.hosts.breaker]\nconsecutive_failures = {run}\nwindow_calls = {calls}\nbreak_duration = \"1s\"\n\
         [instances.hosts.bulkhead]\nmax_concurrent = {cap}\nmax_queue = 0\n\
         [instances.hosts.rate_limit]\ncount = {count}\nperiod = \"1s\"\n\
         [instances.hosts.keys]\nmax_keys = 64\n"
    )
}

/// Threads use every keyed table of an instance (each got on its own thread) while the main
/// thread reloads hundreds of times and moves the clock: no key ever holds more permits than
/// the largest size it was ever given, no table ever holds more than its bound, nothing fails
/// in a way the docs do not list, and at the end every table is on the last configuration.
#[test]
fn threads_hammer_every_keyed_table_while_reloads_retune_them() {
    const KEYS: u32 = 128;
    const MAX_CAP: usize = 4;
    let clock = FakeClock::new();
    let registry = Arc::new(on(&clock, &hosts_text(2, 2, 10, 5)));
    let holders: Arc<Vec<AtomicUsize>> = Arc::new((0..KEYS).map(|_| AtomicUsize::new(0)).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..4_u64)
        .map(|t| {
            let (registry, holders, stop) = (registry.clone(), holders.clone(), stop.clone());
            std::thread::spawn(move || {
                let brk = registry.keyed_breaker::<u32>("hosts").unwrap();
                let bulk = registry.keyed_bulkhead::<u32>("hosts").unwrap();
                let rate = registry.keyed_rate_limiter::<u32>("hosts").unwrap();
                let mut rng = Rng::new(0x9E37_79B9_7F4A_7C15 ^ (t + 1));
                let mut held: Vec<(usize, OwnedPermit<FakeClock>)> = Vec::new();
                for n in 0_u32.. {
                    if n >= 4_000 && stop.load(SeqCst) {
                        break;
                    }
                    let key = u32::try_from(rng.below(u64::from(KEYS))).unwrap();
                    let slot = usize::try_from(key).unwrap();
                    match rng.below(6) {
                        0 | 1 => match bulk.try_acquire(&key) {
                            Ok(permit) => {
                                let now = holders[slot].fetch_add(1, SeqCst) + 1;
                                assert!(now <= MAX_CAP, "key {key} holds {now} permits");
                                held.push((slot, permit));
                            }
                            Err(Rejected::BulkheadFull | Rejected::KeysFull { .. }) => {}
                            Err(e) => panic!("bulkhead: {e:?}"),
                        },
                        2 => {
                            if !held.is_empty() {
                                let len = u64::try_from(held.len()).unwrap();
                                let i = usize::try_from(rng.below(len)).unwrap();
                                let (slot, permit) = held.swap_remove(i);
                                holders[slot].fetch_sub(1, SeqCst);
                                drop(permit);
                            }
                        }
                        3 => match brk.try_acquire(&key) {
                            Ok(permit) if rng.below(3) == 0 => permit.failure(),
                            Ok(permit) => permit.success(),
                            Err(Rejected::CircuitOpen { .. } | Rejected::KeysFull { .. }) => {}
                            Err(e) => panic!("breaker: {e:?}"),
                        },
                        4 => match rate.check_key(&key) {
                            Ok(()) | Err(Rejected::RateLimited { .. }) => {}
                            Err(e) => panic!("rate: {e:?}"),
                        },
                        _ => {
                            if let Some(handle) = bulk.get(&key) {
                                assert!([1, 2, 4].contains(&handle.capacity()));
                            }
                            let _ = brk.state(&key);
                        }
                    }
                }
                for (slot, permit) in held {
                    holders[slot].fetch_sub(1, SeqCst);
                    drop(permit);
                }
            })
        })
        .collect();
    // One more thread reads the tables' listing and records the gauges the whole time.
    let observer = {
        let (registry, stop) = (registry.clone(), stop.clone());
        std::thread::spawn(move || {
            let recorder = DebuggingRecorder::new();
            let mut reads = 0_u32;
            while !stop.load(SeqCst) || reads < 100 {
                for t in registry.keyed_tables() {
                    assert!(t.keys <= t.max_keys, "{t:?}");
                }
                metrics::with_local_recorder(&recorder, || registry.record_gauges());
                reads += 1;
            }
        })
    };
    let caps = [1, 2, 4];
    let runs = [1, 2, 3];
    let mut rng = Rng::new(42);
    let mut last = hosts_text(2, 2, 10, 5);
    for round in 0..300 {
        let calls = if rng.below(10) == 0 { 20 } else { 10 };
        let cap = caps[usize::try_from(rng.below(3)).unwrap()];
        let run = runs[usize::try_from(rng.below(3)).unwrap()];
        let count = if rng.below(2) == 0 { 2 } else { 5 };
        last = hosts_text(cap, run, calls, count);
        registry.reload(config(&last)).unwrap();
        if round % 10 == 0 {
            clock.advance(ms(250));
        }
        for t in registry.keyed_tables() {
            assert!(t.keys <= t.max_keys && t.max_keys == 64, "{t:?}");
        }
        std::thread::yield_now();
    }
    stop.store(true, SeqCst);
    for worker in workers {
        worker.join().unwrap();
    }
    observer.join().unwrap();
    let brk = registry.keyed_breaker::<u32>("hosts").unwrap();
    let bulk = registry.keyed_bulkhead::<u32>("hosts").unwrap();
    let rate = registry.keyed_rate_limiter::<u32>("hosts").unwrap();
    for key in 0..KEYS {
        assert_eq!(bulk.in_flight(&key), 0, "key {key}");
        if let Some(handle) = bulk.get(&key) {
            assert_eq!(
                handle.available(),
                handle.capacity(),
                "key {key}: capacity conserved"
            );
        }
    }
    bulk.retain_in_use();
    assert_eq!(bulk.len(), 0);
    let expected = registry.config();
    let instance = expected.instance("hosts").unwrap();
    let cap = instance
        .bulkhead()
        .unwrap()
        .runtime(clock.clone())
        .build()
        .unwrap()
        .capacity();
    let permits: Vec<_> = (0..cap).map(|_| bulk.try_acquire(&999).unwrap()).collect();
    assert_eq!(bulk.try_acquire(&999).unwrap_err(), Rejected::BulkheadFull);
    drop(permits);
    assert_eq!(*expected, config(&last));
    assert_eq!(
        brk.policy(),
        instance
            .breaker()
            .unwrap()
            .runtime(clock.clone())
            .build()
            .unwrap()
            .policy()
    );
    assert_eq!(
        rate.gcra(),
        instance
            .rate_limiter()
            .unwrap()
            .runtime(clock.clone())
            .build()
            .unwrap()
            .gcra()
    );
}

/// Reloads flipping a keyed limit between 1 ns a cell (burst 8) and 1 h a cell (burst 4) while
/// threads decide on 32 keys at one frozen instant: cells taken stay taken across each change,
/// so no key is ever admitted more than the larger burst, and each at least the smaller one.
#[test]
fn reloads_between_nanosecond_and_hour_limits_never_admit_more_than_the_largest_burst() {
    let clock = FakeClock::new();
    let fast = rate_text(8, "8ns", 8);
    let slow = rate_text(4, "4h", 4);
    let registry = Arc::new(on(&clock, &fast));
    let stop = Arc::new(AtomicBool::new(false));
    let admitted: Arc<Vec<AtomicU64>> = Arc::new((0..32).map(|_| AtomicU64::new(0)).collect());
    let deciders: Vec<_> = (0..3_u64)
        .map(|t| {
            let (registry, stop, admitted) = (registry.clone(), stop.clone(), admitted.clone());
            std::thread::spawn(move || {
                let rate = registry.keyed_rate_limiter::<u32>("hosts").unwrap();
                let mut rng = Rng::new(0xDEAD_BEEF ^ (t + 1));
                for n in 0_u32.. {
                    if n >= 20_000 && stop.load(SeqCst) {
                        break;
                    }
                    let key = u32::try_from(rng.below(32)).unwrap();
                    let cells = u32::try_from(rng.below(3) + 1).unwrap();
                    match rate.check_key_n(&key, cells) {
                        Ok(()) => {
                            admitted[usize::try_from(key).unwrap()]
                                .fetch_add(u64::from(cells), SeqCst);
                        }
                        Err(Rejected::RateLimited { .. }) => {}
                        Err(e) => panic!("{e:?}"),
                    }
                }
            })
        })
        .collect();
    for round in 0..1_000 {
        let text = if round % 2 == 0 { &slow } else { &fast };
        registry.reload(config(text)).unwrap();
    }
    stop.store(true, SeqCst);
    for decider in deciders {
        decider.join().unwrap();
    }
    for (key, n) in admitted.iter().enumerate() {
        let n = n.load(SeqCst);
        assert!(
            (2..=8).contains(&n),
            "key {key} admitted {n} cells in one instant (bursts 4 and 8)"
        );
    }
}

/// A first `keyed_*` call racing a reload: the table must end on the configuration in force
/// (none made from the old one after the reload applied), and a bound change either applies
/// to a table made after it or is refused whole for a table made before it.
#[test]
fn first_use_racing_a_reload_never_leaves_a_table_on_the_old_configuration() {
    let old = r#"
[defaults.rate_limit]
count = 2
period = "1s"
[instances.n.breaker]
consecutive_failures = 1
[instances.n.bulkhead]
max_concurrent = 1
max_queue = 0
[instances.n.rate_limit]
count = 2
period = "1s"
[instances.m.rate_limit]
count = 2
period = "1s"
[instances.m.keys]
max_keys = 32
"#;
    let new = old
        .replace("consecutive_failures = 1", "consecutive_failures = 4")
        .replace("max_concurrent = 1", "max_concurrent = 5")
        .replace("count = 2", "count = 9")
        .replace("max_keys = 32", "max_keys = 48");
    let mut refused = 0;
    for round in 0..200_u64 {
        let clock = FakeClock::new();
        let registry = Arc::new(on(&clock, old));
        let barrier = Arc::new(Barrier::new(2));
        let user = {
            let (registry, barrier) = (registry.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                if round % 2 == 0 {
                    std::thread::yield_now();
                }
                (
                    registry.keyed_breaker::<u32>("n").unwrap(),
                    registry.keyed_bulkhead::<u32>("n").unwrap(),
                    registry.keyed_rate_limiter::<u32>("n").unwrap(),
                    registry.keyed_rate_limiter::<u32>("u").unwrap(),
                    registry.keyed_rate_limiter::<u32>("m").unwrap(),
                )
            })
        };
        barrier.wait();
        let outcome = registry.reload(config(&new));
        let (brk, bulk, rate_n, rate_u, rate_m) = user.join().unwrap();
        let target = match outcome {
            Ok(_) => config(&new),
            Err(e) => {
                assert_eq!(e.problem(), &Problem::Fixed, "round {round}: {e}");
                assert_eq!(rate_m.max_keys(), 32, "round {round}");
                refused += 1;
                config(old)
            }
        };
        assert_eq!(*registry.config(), target, "round {round}");
        let n = target.instance("n").unwrap();
        assert_eq!(
            brk.policy(),
            n.breaker()
                .unwrap()
                .runtime(clock.clone())
                .build()
                .unwrap()
                .policy(),
            "round {round}: a keyed breaker on a stale configuration"
        );
        let permit = bulk.try_acquire(&1).unwrap();
        assert_eq!(
            bulk.get(&1).unwrap().capacity(),
            n.bulkhead()
                .unwrap()
                .runtime(clock.clone())
                .build()
                .unwrap()
                .capacity(),
            "round {round}: a keyed bulkhead on a stale configuration"
        );
        drop(permit);
        let gcra = |name: &str| {
            target
                .instance(name)
                .unwrap()
                .rate_limiter()
                .unwrap()
                .runtime(clock.clone())
                .build()
                .unwrap()
                .gcra()
        };
        assert_eq!(rate_n.gcra(), gcra("n"), "round {round}");
        assert_eq!(
            rate_u.gcra(),
            gcra("u"),
            "round {round}: an undeclared name's table"
        );
        assert_eq!(rate_m.gcra(), gcra("m"), "round {round}");
        let m_bound = target
            .instance("m")
            .unwrap()
            .keys()
            .unwrap()
            .max_keys
            .unwrap();
        assert_eq!(rate_m.max_keys(), m_bound, "round {round}");
    }
    // Not an assertion on scheduling, only that both outcomes are legal: `refused` may be
    // anything from 0 to 200.
    assert!(refused <= 200);
}

// ---------------------------------------------------------------------------------------------
// Gauges
// ---------------------------------------------------------------------------------------------

type Gauges = BTreeMap<(String, BTreeMap<String, String>), DebugValue>;

fn gauges(snapshotter: &Snapshotter) -> Gauges {
    snapshot(snapshotter)
        .into_iter()
        .filter(|(_, _, value)| matches!(value, DebugValue::Gauge(_)))
        .map(|(name, labels, value)| ((name, labels), value))
        .collect()
}

fn keyed_gauge<'a>(
    seen: &'a Gauges,
    metric: &str,
    policy: &str,
    name: &str,
) -> Option<&'a DebugValue> {
    let labels: BTreeMap<String, String> = [
        ("name".to_owned(), name.to_owned()),
        ("policy".to_owned(), policy.to_owned()),
    ]
    .into();
    seen.get(&(metric.to_owned(), labels))
}

fn gauge_of(n: usize) -> Option<DebugValue> {
    Some(DebugValue::Gauge(
        f64::from(u32::try_from(n).unwrap()).into(),
    ))
}

// Docs (telemetry table): "`tidewall_keyed_keys`, `tidewall_keyed_max_keys` | gauge |
// `policy`, `name` | a keyed table's keys held, and its bound", set by `record_gauges` ("Sets
// the gauges of every policy held"). The name label is the instance's name as given
// (`api.v2`, not its quoted key path); the values follow evictions and survive a refused
// reload unchanged.
#[test]
fn keyed_gauges_follow_keys_and_bounds_of_every_table() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let clock = FakeClock::new();
    let text = r#"
[instances."api.v2".breaker]
consecutive_failures = 1
[instances."api.v2".keys]
max_keys = 7
[instances.plain.bulkhead]
max_concurrent = 2
max_queue = 0
[instances.plain.rate_limit]
count = 5
period = "1s"
"#;
    let registry = on(&clock, text);
    let brk = registry.keyed_breaker::<String>("api.v2").unwrap();
    let bulk = registry.keyed_bulkhead::<u64>("plain").unwrap();
    let rate = registry.keyed_rate_limiter::<u64>("plain").unwrap();
    for host in ["a", "b", "c"] {
        brk.try_acquire(&host.to_owned()).unwrap().failure();
    }
    let held: Vec<_> = [1, 2]
        .iter()
        .map(|k| bulk.try_acquire(k).unwrap())
        .collect();
    for k in 0..4 {
        rate.check_key(&k).unwrap();
    }
    metrics::with_local_recorder(&recorder, || registry.record_gauges());
    let seen = gauges(&snapshotter);
    let expected = [
        ("keyed_breaker", "api.v2", 3, 7),
        ("keyed_bulkhead", "plain", 2, 10_000),
        ("keyed_rate", "plain", 4, 100_000),
    ];
    for (policy, name, keys, max) in expected {
        assert_eq!(
            keyed_gauge(&seen, "tidewall_keyed_keys", policy, name),
            gauge_of(keys).as_ref(),
            "{policy} {name}: {seen:?}"
        );
        assert_eq!(
            keyed_gauge(&seen, "tidewall_keyed_max_keys", policy, name),
            gauge_of(max).as_ref(),
            "{policy} {name}"
        );
        assert_eq!(
            table(&registry, policy, name).map(|t| (t.0, t.1)),
            Some((keys, max))
        );
    }
    assert_eq!(
        keyed_gauge(&seen, "tidewall_keyed_keys", "keyed_breaker", "plain"),
        None,
        "no table, no series"
    );

    // Evictions show at the next reading; a refused reload changes no bound.
    drop(held);
    assert_eq!(bulk.retain_in_use(), 2);
    clock.advance(secs(2));
    assert_eq!(rate.retain_recent(), 4);
    let refused = registry
        .reload(config(&text.replace("max_keys = 7", "max_keys = 9")))
        .unwrap_err();
    assert_eq!(refused.problem(), &Problem::Fixed);
    metrics::with_local_recorder(&recorder, || registry.record_gauges());
    let seen = gauges(&snapshotter);
    for (policy, name, keys, max) in [
        ("keyed_breaker", "api.v2", 3, 7),
        ("keyed_bulkhead", "plain", 0, 10_000),
        ("keyed_rate", "plain", 0, 100_000),
    ] {
        assert_eq!(
            keyed_gauge(&seen, "tidewall_keyed_keys", policy, name),
            gauge_of(keys).as_ref(),
            "{policy} {name} after evictions"
        );
        assert_eq!(
            keyed_gauge(&seen, "tidewall_keyed_max_keys", policy, name),
            gauge_of(max).as_ref(),
            "{policy} {name} after a refused reload"
        );
    }
    assert_eq!(
        table(&registry, "keyed_bulkhead", "plain"),
        Some((0, 10_000, 2))
    );
    assert_eq!(
        table(&registry, "keyed_rate", "plain"),
        Some((0, 100_000, 4))
    );
}
