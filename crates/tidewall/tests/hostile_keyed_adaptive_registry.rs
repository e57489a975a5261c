#![cfg(all(feature = "toml", feature = "test-util"))]
//! Hostile black-box tests of the registry's keyed adaptive limiters, written from the public
//! docs alone: `Registry::keyed_adaptive_limiter` (one table per name and key type,
//! `Problem::KeyType`, bounded by `[keys]`), `KeyedAdaptiveLimiter::reconfigure` and
//! `AdaptiveLimiter::reconfigure` (refusals that change nothing), and reloads: every key
//! retuned, keys keeping what they learned unless the algorithm changed "as built" (then
//! every key, and every new or forgotten key, starts from the new initial limit and the
//! name is in `Reload::relearning` once), `max_keys` fixed while the table is held,
//! `keyed_tables()` and the `tidewall_keyed_*` gauges. Many keys near `max_keys` with
//! permits held, waiters queued per key by priority, reloads and acquires racing on a
//! multi-thread runtime, acquire futures dropped at seeded points, long idle gaps in virtual
//! time, extreme bounds and limits.
//!
//! Doc readings, where a sentence admits more than one (the assertion follows the reading):
//! * `Reload::retuned` "a keyed table counts once" and "Both count in `retuned` too": a
//!   registry holding one name's single limiter and its keyed table retunes 2.
//! * `Reload::relearning` "each name once": a name whose single limiter and keyed table both
//!   relearn is listed once.
//! * A key whose own handle was reconfigured (`get(&k)?.reconfigure(..)`) keeps that
//!   algorithm across a reload that does not change the configured algorithm ("else each key
//!   keeps its own, with what it learned").
//! * `acquire_before`: "The key is held (never evicted) while the future exists" says nothing
//!   of a future never polled: only that the table never holds two keys under
//!   `max_keys = 1` (one of the two callers is refused) is asserted.
//! * `KeysConfig`: `idle_ttl` is fixed only "while it holds its keyed breaker": changing it
//!   while only the keyed adaptive table is held is accepted.
//! * `max_keys`: "a few percent under, for large bounds" is read with a wide margin: a table of
//!   busy keys under the default bound of 10,000 holds at least 85 % of it.
//! * "A larger share or limit admits queued callers at once": whether the slot is counted in
//!   flight at the reload or when the waiter is next polled is not said; in-flight counts are
//!   asserted only after the waiters were polled.

mod support;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Barrier};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tidewall::adaptive::{
    AdaptiveLimiter, AdaptivePermit, KeyedAdaptiveLimiter, Priority, QueueDiscipline,
};
use tidewall::admission::{Admission, Wait};
use tidewall::config::{Config, Problem, Registry};
use tidewall::rt::Clock;
use tidewall::testing::FakeClock;
use tidewall::{ConfigError, Deadline, Name, Rejected};
use tidewall_core::adaptive::{Aimd, AnyAlgorithm, FixedLimit};
use tidewall_core::rng::SplitMix64;

// === shared pieces =========================================================================

const HOUR: Duration = Duration::from_secs(3_600);
const CENTURY: Duration = Duration::from_secs(100 * 365 * 86_400);
const FULL: Rejected = Rejected::KeysFull { retry_after: None };

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Seeded draws from the library's own generator: every run draws the same numbers.
struct Rng(SplitMix64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(SplitMix64::new(seed))
    }
    fn below(&mut self, n: u64) -> u64 {
        self.0.below_or_equal(n - 1)
    }
    fn index(&mut self, n: usize) -> usize {
        usize::try_from(self.below(u64::try_from(n).unwrap())).unwrap()
    }
    fn key(&mut self, n: u32) -> u32 {
        u32::try_from(self.below(u64::from(n))).unwrap()
    }
    fn chance(&mut self, one_in: u64) -> bool {
        self.below(one_in) == 0
    }
}

fn config(text: &str) -> Config {
    Config::from_toml(text).unwrap_or_else(|e| panic!("must be accepted: {e}\n---\n{text}"))
}

fn on(clock: &FakeClock, text: &str) -> Registry<FakeClock> {
    Registry::builder(config(text))
        .runtime(clock.clone())
        .build()
        .unwrap_or_else(|e| panic!("registry refused: {e}\n---\n{text}"))
}

fn names(list: &[Name]) -> Vec<String> {
    let mut v: Vec<String> = list.iter().map(ToString::to_string).collect();
    v.sort();
    v
}

/// AIMD within 1..=100 halving on each drop (a failure, or a call slower than 5 s), with
/// `extra` limiter keys, the table bounded by `max_keys`.
fn hosts_text(initial: u32, extra: &str, max_keys: usize) -> String {
    format!(
        "[instances.hosts.adaptive]\nalgorithm = \"aimd\"\nmin_limit = 1\ninitial_limit = {initial}\nmax_limit = 100\nbackoff_ratio = 0.5\n{extra}[instances.hosts.keys]\nmax_keys = {max_keys}\n"
    )
}

/// `(keys, max_keys, evicted)` of the keyed adaptive table of `name`, as listed.
fn table<R: Clock>(registry: &Registry<R>, name: &str) -> Option<(usize, usize, u64)> {
    registry
        .keyed_tables()
        .into_iter()
        .find(|t| t.policy == "keyed_adaptive" && t.name == name)
        .map(|t| (t.keys, t.max_keys, t.evicted))
}

type Table = KeyedAdaptiveLimiter<u32, AnyAlgorithm, FakeClock>;
type Permit = AdaptivePermit<AnyAlgorithm, FakeClock>;
type Waiting = Pin<Box<dyn Future<Output = Result<Permit, Rejected>> + Send>>;

fn poll<F: Future + ?Sized>(future: Pin<&mut F>) -> Poll<F::Output> {
    future.poll(&mut Context::from_waker(Waker::noop()))
}

/// `key` made (a permit dropped untaught), then `failures` dropped calls of it, one at a time:
/// each multiplies its limit by the backoff ratio (truncated, at least `min_limit`).
fn learn(hosts: &Table, key: u32, failures: usize) {
    drop(hosts.try_acquire(&key).unwrap());
    for i in 0..failures {
        hosts
            .try_acquire(&key)
            .unwrap_or_else(|e| panic!("key {key} failure #{i}: {e:?}"))
            .failure();
    }
}

fn hold(hosts: &Table, key: u32, n: usize) -> Vec<Permit> {
    (0..n)
        .map(|i| {
            hosts
                .try_acquire(&key)
                .unwrap_or_else(|e| panic!("key {key} permit #{i} of {n}: {e:?}"))
        })
        .collect()
}

/// A caller of `key` and `priority` that waits with no deadline, polled once: it must queue.
fn queue(hosts: &Table, key: u32, priority: Priority) -> Waiting {
    let handle = hosts.get(&key).unwrap().with_priority(priority);
    let mut waiting: Waiting = Box::pin(handle.admit(Wait::Until(Deadline::none())));
    let first = poll(waiting.as_mut());
    assert!(
        first.is_pending(),
        "key {key} {priority:?} should queue, got {first:?}"
    );
    waiting
}

fn admitted(waiting: &mut Waiting) -> Option<Permit> {
    match poll(waiting.as_mut()) {
        Poll::Pending => None,
        Poll::Ready(Ok(permit)) => Some(permit),
        Poll::Ready(Err(e)) => panic!("a waiter was refused: {e:?}"),
    }
}

/// How many calls of `key` and `priority` are admitted now (all released untaught after).
fn room(hosts: &Table, key: u32, priority: Priority) -> usize {
    let handle = hosts.get(&key).unwrap().with_priority(priority);
    let mut held = Vec::new();
    while let Ok(p) = handle.try_acquire() {
        held.push(p);
        assert!(held.len() <= 100_000, "runaway admission");
    }
    held.len()
}

/// `key` is held, nothing of it is out, and exactly its limit can be taken (by critical calls,
/// which always have the whole limit), no more.
fn settled(hosts: &Table, key: u32) {
    let limit = hosts
        .limit(&key)
        .unwrap_or_else(|| panic!("key {key} held"));
    let handle = hosts.get(&key).unwrap().with_priority(Priority::Critical);
    assert_eq!(
        (handle.in_flight(), handle.queued(), hosts.in_flight(&key)),
        (0, 0, 0),
        "key {key}: everything came back"
    );
    assert_eq!(handle.limit(), limit, "key {key}: the handle is the key's");
    let taken: Vec<Permit> = (0..limit)
        .map(|i| {
            handle
                .try_acquire()
                .unwrap_or_else(|e| panic!("key {key} permit #{i} of {limit}: {e:?}"))
        })
        .collect();
    assert_eq!(
        handle.try_acquire().unwrap_err(),
        Rejected::BulkheadFull,
        "key {key}: exactly {limit} slots"
    );
    drop(taken);
}

fn aimd(initial: u32) -> AnyAlgorithm {
    Aimd::builder()
        .min_limit(1)
        .initial_limit(initial)
        .max_limit(100)
        .backoff_ratio(0.5)
        .build()
        .unwrap()
        .into()
}

/// `(limit, in flight)` of every key in `keys`.
fn snapshot(hosts: &Table, keys: std::ops::Range<u32>) -> Vec<(Option<u32>, usize)> {
    keys.map(|k| (hosts.limit(&k), hosts.in_flight(&k)))
        .collect()
}

// === tables by name and key type ===========================================================

/// Doc (keyed_adaptive_limiter): "made on first use with keys of type `K`"; "[`Problem::KeyType`]
/// when the registry holds the table with another key type"; (KeyType) "keys of another type
/// (named here)"; (keyed_tables) "breakers, then bulkheads, then rate limiters, then adaptive
/// limiters, each by name"; (KeysConfig) "default 10,000 for ... adaptive limiters".
#[test]
fn one_table_per_name_and_key_type_and_a_wrong_type_changes_nothing() {
    let clock = FakeClock::new();
    let text = format!(
        "{}[instances.alpha.adaptive]\nalgorithm = \"vegas\"\ninitial_limit = 5\n",
        hosts_text(16, "", 100)
    );
    let registry = on(&clock, &text);
    assert!(registry.keyed_tables().is_empty(), "made on first use only");

    let first = registry.keyed_adaptive_limiter::<u32>("hosts").unwrap();
    assert_eq!(first.name(), "hosts");
    learn(&first, 7, 2);
    drop(first);
    let hosts = registry.keyed_adaptive_limiter::<u32>("hosts").unwrap();
    assert_eq!(
        hosts.limit(&7),
        Some(4),
        "the registry keeps the table and what its keys learned"
    );

    let wrong = [
        registry
            .keyed_adaptive_limiter::<u64>("hosts")
            .map(drop)
            .unwrap_err(),
        registry
            .keyed_adaptive_limiter::<i32>("hosts")
            .map(drop)
            .unwrap_err(),
        registry
            .keyed_adaptive_limiter::<String>("hosts")
            .map(drop)
            .unwrap_err(),
        registry
            .keyed_adaptive_limiter::<(u32, u32)>("hosts")
            .map(drop)
            .unwrap_err(),
    ];
    for e in wrong {
        assert!(
            matches!(e.problem(), Problem::KeyType(held) if held.contains("u32")),
            "{e:?}"
        );
    }
    assert_eq!(table(&registry, "hosts"), Some((1, 100, 0)));
    assert_eq!(hosts.limit(&7), Some(4));
    assert_eq!(registry.keyed_tables().len(), 1, "a refusal makes no table");

    // Another kind of the same name, and another name, are other tables.
    let breakers = registry.keyed_breaker::<u64>("hosts").unwrap();
    let alpha = registry.keyed_adaptive_limiter::<String>("alpha").unwrap();
    drop(alpha.try_acquire(&"x".to_owned()).unwrap());
    assert_eq!(alpha.limit(&"x".to_owned()), Some(5));
    let e = registry
        .keyed_adaptive_limiter::<u32>("alpha")
        .map(drop)
        .unwrap_err();
    assert!(
        matches!(e.problem(), Problem::KeyType(held) if held.contains("String")),
        "{e:?}"
    );
    let listed: Vec<(&str, String, usize)> = registry
        .keyed_tables()
        .into_iter()
        .map(|t| (t.policy, t.name.to_string(), t.max_keys))
        .collect();
    assert_eq!(
        listed,
        [
            ("keyed_breaker", "hosts".to_owned(), 100),
            ("keyed_adaptive", "alpha".to_owned(), 10_000),
            ("keyed_adaptive", "hosts".to_owned(), 100),
        ]
    );
    drop(breakers);
}

/// Doc (keyed_adaptive_limiter): "an adaptive limiter per key ... each learning from its own
/// calls"; (Reload::relearning) "Instances whose adaptive limiter (or keyed table of them; each
/// name once) had its algorithm changed"; (Reload::retuned) "a keyed table counts once ...
/// Both count in `retuned` too".
#[test]
fn the_single_limiter_and_the_table_of_one_name_learn_apart_and_relearn_once() {
    let clock = FakeClock::new();
    let text = |initial: u32, extra: &str| hosts_text(initial, extra, 100);
    let registry = on(&clock, &text(16, ""));
    let single = registry.adaptive_limiter("hosts").unwrap();
    let hosts = registry.keyed_adaptive_limiter::<u32>("hosts").unwrap();
    single.try_acquire().unwrap().failure();
    learn(&hosts, 1, 2);
    assert_eq!(
        (single.limit(), hosts.limit(&1), hosts.limit(&2)),
        (8, Some(4), None)
    );
    drop(hosts.try_acquire(&2).unwrap());
    assert_eq!(
        hosts.limit(&2),
        Some(16),
        "the single limiter taught no key"
    );
    let held_single = single.try_acquire().unwrap();
    let held_key = hosts.try_acquire(&1).unwrap();
    assert_eq!(
        (single.in_flight(), hosts.in_flight(&1), hosts.in_flight(&2)),
        (1, 1, 0)
    );

    let reload = registry
        .reload(config(&text(16, "sheddable_share = 0.5\n")))
        .unwrap();
    assert!(reload.relearning.is_empty(), "{reload:?}");
    assert_eq!(reload.retuned, 2, "the limiter and the table: {reload:?}");
    assert_eq!(
        (single.limit(), hosts.limit(&1), hosts.limit(&2)),
        (8, Some(4), Some(16))
    );

    let reload = registry.reload(config(&text(10, ""))).unwrap();
    assert_eq!(
        reload.relearning,
        vec![Name::from("hosts")],
        "each name once: {reload:?}"
    );
    assert_eq!(reload.retuned, 2, "{reload:?}");
    assert_eq!(
        (single.limit(), hosts.limit(&1), hosts.limit(&2)),
        (10, Some(10), Some(10))
    );
    assert_eq!(
        (single.in_flight(), hosts.in_flight(&1)),
        (1, 1),
        "nothing revoked"
    );
    // Each permit's sample goes to its own limiter's new algorithm.
    held_key.failure();
    assert_eq!((single.limit(), hosts.limit(&1)), (10, Some(5)));
    held_single.failure();
    assert_eq!((single.limit(), hosts.limit(&1)), (5, Some(5)));
    drop(hosts.try_acquire(&3).unwrap());
    assert_eq!(hosts.limit(&3), Some(10));
    assert_eq!(registry.adaptive_limiters().len(), 1);
    assert_eq!(table(&registry, "hosts").map(|t| t.0), Some(3));
}

// === keeping and relearning =================================================================

/// Doc (keyed_adaptive_limiter): "every key keeps what it learned unless the algorithm
/// changed"; (Registry::reload) "takes its queue, wait, discipline and shares in place".
#[test]
fn a_reload_of_everything_but_the_algorithm_keeps_every_keys_learned_limit() {
    let clock = FakeClock::new();
    let text = |extra: &str| hosts_text(16, extra, 1_000);
    let registry = on(&clock, &text(""));
    let hosts = registry.keyed_adaptive_limiter::<u32>("hosts").unwrap();
    for k in 0..64 {
        learn(&hosts, k, usize::try_from(k % 5).unwrap());
    }
    let held: Vec<Permit> = (0..64)
        .step_by(2)
        .map(|k| hosts.try_acquire(&k).unwrap())
        .collect();
    let before = snapshot(&hosts, 0..64);
    assert_eq!(before[4], (Some(1), 1));
    assert_eq!(before[3], (Some(2), 0));
    for extra in [
        "max_queue = 3\nmax_wait = \"off\"\n",
        "discipline = \"lifo\"\nmax_queue = 1\n",
        "discipline = \"codel\"\ncodel_target = \"1ms\"\ncodel_interval = \"10ms\"\nmax_queue = 7\n",
        "sheddable_share = 0.25\ndefault_share = 0.5\n",
        "max_wait = \"1h\"\n",
        "",
    ] {
        let reload = registry.reload(config(&text(extra))).unwrap();
        assert!(reload.relearning.is_empty(), "{extra}: {reload:?}");
        assert_eq!(snapshot(&hosts, 0..64), before, "{extra}");
        assert_eq!(table(&registry, "hosts"), Some((64, 1_000, 0)), "{extra}");
    }
    drop(held);
    drop(hosts.try_acquire(&500).unwrap());
    assert_eq!(
        hosts.limit(&500),
        Some(16),
        "a new key starts from the initial limit"
    );
    for k in [0, 1, 2, 3, 4, 63] {
        settled(&hosts, k);
    }
}

/// Doc (Reload::relearning): "other settings of its own: a default written out is no change";
/// (module) "An instance's value for a key is its own, else its base's, else the defaults',
/// else the policy builder's default"; (Aimd::builder) "initial 20, within 20..=200, backoff
/// 0.9, timeout 5 s"; (AdaptiveConfig) the limiter's defaults. The algorithm is compared as
/// built: the same algorithm written any other way keeps every key's learned limit.
#[test]
fn the_same_algorithm_written_another_way_keeps_every_key() {
    let keys = "[instances.hosts.keys]\nmax_keys = 50\n";
    let plain =
        format!("[instances.hosts.adaptive]\nalgorithm = \"aimd\"\ninitial_limit = 30\n{keys}");
    let clock = FakeClock::new();
    let registry = on(&clock, &plain);
    let hosts = registry.keyed_adaptive_limiter::<u32>("hosts").unwrap();
    learn(&hosts, 1, 1);
    learn(&hosts, 2, 2);
    drop(hosts.try_acquire(&3).unwrap());
    let held = hosts.try_acquire(&2).unwrap();
    let before = snapshot(&hosts, 1..4);
    assert_eq!(before, [(Some(27), 0), (Some(24), 1), (Some(30), 0)]);

    let variants = [
        format!(
            "[instances.hosts.adaptive]\nalgorithm = \"aimd\"\ninitial_limit = 30\nmin_limit = 20\nmax_limit = 200\nbackoff_ratio = 0.9\ntimeout = \"5s\"\n{keys}"
        ),
        format!(
            "[instances.hosts.adaptive]\nalgorithm = \"aimd\"\ninitial_limit = 30\nbackoff_ratio = 9e-1\ntimeout = \"5000ms\"\n{keys}"
        ),
        format!(
            "[defaults.adaptive]\nalgorithm = \"aimd\"\ninitial_limit = 30\n[instances.hosts.adaptive]\n{keys}"
        ),
        format!(
            "[configs.c.adaptive]\nalgorithm = \"aimd\"\ninitial_limit = 30\ntimeout = \"5s\"\n[instances.hosts]\nbase = \"c\"\nadaptive = {{}}\n{keys}"
        ),
        format!(
            "[instances.hosts.adaptive]\nalgorithm = \"aimd\"\ninitial_limit = 30\nmax_queue = 0\nmax_wait = \"1s\"\ndiscipline = \"fifo\"\ndefault_share = 1.0\nsheddable_share = 0.8\n{keys}"
        ),
        format!(
            "[defaults.adaptive]\nalpha = 3\nbeta = 6\nqueue_size = 4\nwindow = 50\nprobe_samples = 9\n{plain}"
        ),
        "[defaults.keys]\nmax_keys = 50\n[instances.hosts.adaptive]\nalgorithm = \"aimd\"\ninitial_limit = 30\n"
            .to_owned(),
        plain.clone(),
    ];
    for text in &variants {
        let reload = registry.reload(config(text)).unwrap();
        assert!(reload.relearning.is_empty(), "{reload:?}\n---\n{text}");
        assert_eq!(snapshot(&hosts, 1..4), before, "{text}");
    }
    // One of its own keys, another value: every key starts again.
    let changed = plain.replace("initial_limit = 30", "initial_limit = 30\ntimeout = \"4s\"");
    let reload = registry.reload(config(&changed)).unwrap();
    assert_eq!(names(&reload.relearning), ["hosts"]);
    assert_eq!(
        snapshot(&hosts, 1..4),
        [(Some(30), 0), (Some(30), 1), (Some(30), 0)]
    );
    drop(held);
}

/// Doc (keyed_adaptive_limiter): "then every key starts again"; (Reload::relearning) "it
/// starts learning again from the new initial limit, every key of a table"; (reconfigure)
/// "Calls in flight keep their slots, and their samples go to the new algorithm when they
/// end"; "A larger share or limit admits queued callers at once"; (KeyedAdaptiveLimiter) a
/// forgotten key "seen again starts from the algorithm's initial limit" (the one in force).
#[test]
fn a_relearning_reload_restarts_every_key_busy_idle_queued_new_and_forgotten() {
    let clock = FakeClock::new();
    let text = |initial: u32, extra: &str| {
        hosts_text(
            initial,
            &format!("max_queue = 2\nmax_wait = \"off\"\n{extra}"),
            1_000,
        )
    };
    let registry = on(&clock, &text(16, ""));
    let hosts = registry.keyed_adaptive_limiter::<u32>("hosts").unwrap();
    for k in 0..40 {
        learn(&hosts, k, usize::try_from(k % 4).unwrap());
    }
    let mut held: Vec<(u32, Permit)> = Vec::new();
    let mut waiting: Vec<(u32, Waiting)> = Vec::new();
    for k in (0..40).step_by(3) {
        for p in hold(&hosts, k, 2) {
            held.push((k, p));
        }
        if hosts.limit(&k) == Some(2) {
            waiting.push((k, queue(&hosts, k, Priority::Default)));
        }
    }
    assert_eq!(waiting.len(), 4, "keys 3, 15, 27 and 39 are full");

    let reload = registry.reload(config(&text(6, ""))).unwrap();
    assert_eq!(names(&reload.relearning), ["hosts"]);
    let mut from_waiters = Vec::new();
    for (k, w) in &mut waiting {
        let p = admitted(w).unwrap_or_else(|| panic!("key {k}: 2 of 6 in flight, at once"));
        from_waiters.push(p);
    }
    drop(waiting);
    for k in 0..40 {
        assert_eq!(hosts.limit(&k), Some(6), "key {k}");
        let expected = match (k % 3, k % 4) {
            (0, 3) => 3,
            (0, _) => 2,
            _ => 0,
        };
        assert_eq!(hosts.in_flight(&k), expected, "key {k}: nothing revoked");
    }
    drop(hosts.try_acquire(&1_000).unwrap());
    assert_eq!(hosts.limit(&1_000), Some(6), "a new key");

    // The old permits teach the new algorithm: 6 × 0.5.
    let mut once = std::collections::BTreeSet::new();
    for (k, p) in held {
        if once.insert(k) {
            p.failure();
        } else {
            p.ignore();
        }
    }
    for k in (0..40).step_by(3) {
        assert_eq!(hosts.limit(&k), Some(3), "key {k}");
    }
    drop(from_waiters);

    // Forgotten keys come back at the initial limit in force, not the first one, not what
    // they learned; a reload that keeps the algorithm keeps that.
    registry
        .reload(config(&text(6, "sheddable_share = 0.5\n")))
        .unwrap();
    let forgotten = hosts.retain_in_use();
    assert_eq!(forgotten, 41);
    assert_eq!(table(&registry, "hosts"), Some((0, 1_000, 41)));
    for k in [0, 3, 5] {
        drop(hosts.try_acquire(&k).unwrap());
        assert_eq!(hosts.limit(&k), Some(6), "key {k} seen again");
    }
}

/// Doc (KeyedAdaptiveLimiter): "A key with no permit out ... may be forgotten whenever a shard
/// fills up ...; its learned limit is forgotten with it, so a key seen again starts from the
/// algorithm's initial limit. A key with anything out is never forgotten"; (max_keys) "one
/// shard up to 511 keys". Forgotten under pressure after a relearning reload and a keeping
/// one: the initial limit in force.
#[test]
fn a_key_forgotten_under_pressure_returns_at_the_current_initial_limit() {
    let clock = FakeClock::new();
    let text = |initial: u32, extra: &str| hosts_text(initial, extra, 2);
    let registry = on(&clock, &text(16, ""));
    let hosts = registry.keyed_adaptive_limiter::<u32>("hosts").unwrap();
    learn(&hosts, 1, 1);
    let busy = hosts.try_acquire(&2).unwrap();
    assert_eq!(hosts.limit(&1), Some(8));

    registry.reload(config(&text(6, ""))).unwrap();
    assert_eq!((hosts.limit(&1), hosts.limit(&2)), (Some(6), Some(6)));
    learn(&hosts, 1, 1);
    let reload = registry
        .reload(config(&text(6, "sheddable_share = 0.5\n")))
        .unwrap();
    assert!(reload.relearning.is_empty());
    assert_eq!(hosts.limit(&1), Some(3));

    // Key 3 meets a full table: idle key 1 goes, busy key 2 stays.
    let third = hosts.try_acquire(&3).unwrap();
    assert_eq!(hosts.limit(&3), Some(6));
    assert_eq!(hosts.limit(&1), None, "the idle key was forgotten");
    assert_eq!((hosts.limit(&2), hosts.in_flight(&2)), (Some(6), 1));
    assert_eq!(table(&registry, "hosts"), Some((2, 2, 1)));
    // Both busy: a new key is refused at once, without a hint, and is not made.
    assert_eq!(hosts.try_acquire(&1).unwrap_err(), FULL);
    assert_eq!((hosts.limit(&1), hosts.in_flight(&1)), (None, 0));
    third.failure();
    assert_eq!(hosts.limit(&3), Some(3));
    // Key 1 again: idle key 3 goes; key 1 starts from 6, not 16, not the 3 it had learned.
    let again = hosts.try_acquire(&1).unwrap();
    assert_eq!(hosts.limit(&1), Some(6));
    assert_eq!(hosts.limit(&3), None);
    assert_eq!(table(&registry, "hosts"), Some((2, 2, 2)));
    drop((busy, again));
}

/// Doc (KeyedAdaptiveLimiter): busy is "a permit out, a waiter queued or a handle from `get`
/// held (nor a pipeline or a layer built over one)"; (acquire_before) "The key is held (never
/// evicted) while the future exists"; a new key meeting a full table "is refused with
/// [`Rejected::KeysFull`] (its `retry_after` is `None`: only a permit's release frees room)".
#[test]
fn max_keys_one_every_kind_of_busy_keeps_the_only_key() {
    let clock = FakeClock::new();
    let registry = on(
        &clock,
        &hosts_text(1, "max_queue = 1\nmax_wait = \"off\"\n", 1),
    );
    let hosts = registry.keyed_adaptive_limiter::<u32>("hosts").unwrap();
    assert_eq!(table(&registry, "hosts"), Some((0, 1, 0)));

    // A permit.
    let permit = hosts.try_acquire(&1).unwrap();
    assert_eq!(hosts.try_acquire(&2).unwrap_err(), FULL);
    assert_eq!(hosts.get(&2).map(drop).unwrap_err(), FULL);
    let refused = poll(std::pin::pin!(hosts.acquire_before(&2, Deadline::none())));
    assert!(
        matches!(&refused, Poll::Ready(Err(e)) if *e == FULL),
        "{refused:?}"
    );
    assert_eq!(hosts.limit(&2), None, "a refused key is not made");

    // A waiter that was handed the slot but has not been polled since.
    let mut waiter: Waiting = Box::pin(hosts.acquire_before(&1, Deadline::none()));
    assert!(poll(waiter.as_mut()).is_pending());
    drop(permit);
    assert_eq!(
        hosts.try_acquire(&2).unwrap_err(),
        FULL,
        "key 1 is held while its future exists"
    );
    assert_eq!(
        hosts.try_acquire(&1).unwrap_err(),
        Rejected::BulkheadFull,
        "the waiter comes first"
    );
    let permit = admitted(&mut waiter).expect("the waiter gets the slot");
    drop(waiter);
    assert_eq!(hosts.in_flight(&1), 1);
    drop(permit);

    // A handle, and a priority handle made from it.
    let handle = hosts.get(&1).unwrap();
    let sheddable = handle.with_priority(Priority::Sheddable);
    drop(handle);
    assert_eq!(hosts.try_acquire(&2).unwrap_err(), FULL);
    drop(sheddable);
    assert_eq!(table(&registry, "hosts"), Some((1, 1, 0)));

    // Nothing out: key 2 takes key 1's place.
    let two = hosts.try_acquire(&2).unwrap();
    assert_eq!((hosts.limit(&1), hosts.limit(&2)), (None, Some(1)));
    assert_eq!(table(&registry, "hosts"), Some((1, 1, 1)));
    // A relearning reload keeps the busy key; it still refuses another.
    let reload = registry
        .reload(config(&hosts_text(
            3,
            "max_queue = 1\nmax_wait = \"off\"\n",
            1,
        )))
        .unwrap();
    assert_eq!(names(&reload.relearning), ["hosts"]);
    assert_eq!((hosts.limit(&2), hosts.in_flight(&2)), (Some(3), 1));
    assert_eq!(hosts.try_acquire(&1).unwrap_err(), FULL);
    drop(two);
    settled(&hosts, 2);
}

/// Doc (acquire_before): "The key is held (never evicted) while the future exists";
/// "[`Rejected::KeysFull`] (at once) for a new key when its shard is full of busy keys".
/// Whichever of a future made first and a caller that comes next gets the only place, the
/// other is refused: never two keys under `max_keys = 1`.
#[test]
fn a_future_not_yet_polled_and_a_new_caller_never_both_get_the_only_place() {
    let clock = FakeClock::new();
    let registry = on(&clock, &hosts_text(2, "", 1));
    let hosts = registry.keyed_adaptive_limiter::<u32>("hosts").unwrap();
    let mut first: Waiting = Box::pin(hosts.acquire_before(&1, Deadline::none()));
    let second = hosts.try_acquire(&2);
    let first = poll(first.as_mut());
    match (&first, &second) {
        (Poll::Ready(Ok(_)), Err(e)) | (Poll::Ready(Err(e)), Ok(_)) => assert_eq!(*e, FULL),
        other => panic!("exactly one of the two keys fits: {other:?}"),
    }
    assert_eq!(table(&registry, "hosts").map(|t| t.0), Some(1));
}

/// Doc (max_keys): "one shard up to 511 keys", "a new key is refused when its own shard is
/// full of keys that may not be forgotten"; a key with anything out "is never forgotten".
/// 511 busy keys that learned different limits, a relearning reload over them, idle ones
/// making room for new ones.
#[test]
fn five_hundred_eleven_busy_keys_fill_one_shard_exactly_and_none_is_ever_dropped() {
    let clock = FakeClock::new();
    let registry = on(&clock, &hosts_text(16, "", 511));
    let hosts = registry.keyed_adaptive_limiter::<u32>("hosts").unwrap();
    let mut held: BTreeMap<u32, Permit> = BTreeMap::new();
    for k in 0..511 {
        learn(&hosts, k, usize::try_from(k % 4).unwrap());
        held.insert(k, hosts.try_acquire(&k).unwrap());
    }
    assert_eq!(table(&registry, "hosts"), Some((511, 511, 0)));
    for k in 511..530 {
        assert_eq!(hosts.try_acquire(&k).unwrap_err(), FULL, "key {k}");
    }
    // Odd keys go idle; new keys take their places, the even ones stay with what they learned.
    for k in (1..511).step_by(2) {
        drop(held.remove(&k));
    }
    let mut newcomers = Vec::new();
    for k in 1_000..1_255 {
        newcomers.push(
            hosts
                .try_acquire(&k)
                .unwrap_or_else(|e| panic!("{k}: {e:?}")),
        );
        let (keys, bound, _) = table(&registry, "hosts").unwrap();
        assert!(keys <= bound, "{keys} keys over {bound}");
    }
    assert_eq!(hosts.try_acquire(&2_000).unwrap_err(), FULL, "full again");
    assert_eq!(table(&registry, "hosts"), Some((511, 511, 255)));
    for &k in held.keys() {
        let expected = 16 >> (k % 4);
        assert_eq!(
            (hosts.limit(&k), hosts.in_flight(&k)),
            (Some(expected), 1),
            "busy key {k}"
        );
    }
    let reload = registry.reload(config(&hosts_text(5, "", 511))).unwrap();
    assert_eq!(names(&reload.relearning), ["hosts"]);
    for &k in held.keys() {
        assert_eq!(
            (hosts.limit(&k), hosts.in_flight(&k)),
            (Some(5), 1),
            "key {k}"
        );
    }
    for k in 1_000..1_255 {
        assert_eq!(
            (hosts.limit(&k), hosts.in_flight(&k)),
            (Some(5), 1),
            "key {k}"
        );
    }
    drop(held);
    drop(newcomers);
    assert_eq!(hosts.retain_in_use(), 511);
    assert_eq!(table(&registry, "hosts"), Some((0, 511, 766)));
}

/// Doc (KeysConfig): "default 10,000 for breakers, bulkheads and adaptive limiters"; (max_keys)
/// "a hard bound", "a table of busy keys refuses new ones from a little under `max_keys` keys
/// on (a few percent under, for large bounds)". Read with a wide margin: at least 85 %.
#[test]
fn the_default_bound_holds_ten_thousand_busy_keys_at_most_and_a_few_percent_under_at_least() {
    let clock = FakeClock::new();
    let registry = on(
        &clock,
        "[instances.hosts.adaptive]\nalgorithm = \"aimd\"\nmin_limit = 1\ninitial_limit = 1\n",
    );
    let hosts = registry.keyed_adaptive_limiter::<u32>("hosts").unwrap();
    let mut held = Vec::new();
    let mut refused = 0_u32;
    for k in 0..12_000 {
        match hosts.try_acquire(&k) {
            Ok(p) => held.push((k, p)),
            Err(e) => {
                assert_eq!(e, FULL, "key {k}");
                refused += 1;
            }
        }
    }
    let (keys, bound, evicted) = table(&registry, "hosts").unwrap();
    assert_eq!((bound, evicted), (10_000, 0));
    assert_eq!(keys, held.len());
    assert!(keys <= 10_000, "{keys}");
    assert!(keys >= 8_500, "only {keys} of 10,000 before refusing");
    assert_eq!(usize::try_from(refused).unwrap() + keys, 12_000);
    for (k, _) in held.iter().step_by(97) {
        assert_eq!(hosts.in_flight(k), 1, "key {k}");
    }
    drop(held);
    assert_eq!(hosts.retain_in_use(), keys);
}

// === waiters, priorities and shares across reloads =========================================

/// Doc (Registry::reload): "Callers already queued keep the wait they started with";
/// (reconfigure) "a limit below what is held admits nobody new, queued callers included";
/// "A larger share or limit admits queued callers at once"; (module) "the most important
/// waiters are served first"; (share) "admitted while fewer than `limit × share` are in
/// flight". Eight keys, each with three waiters of every priority, polled least important
/// first.
#[test]
fn waiters_of_every_priority_on_many_keys_across_shrinking_and_growing_reloads() {
    let clock = FakeClock::new();
    let text = |initial: u32, extra: &str| {
        hosts_text(
            initial,
            &format!("max_queue = 3\nmax_wait = \"off\"\n{extra}"),
            100,
        )
    };
    let registry = on(&clock, &text(2, ""));
    let hosts = registry.keyed_adaptive_limiter::<u32>("hosts").unwrap();
    struct Key {
        held: Vec<Permit>,
        s: Waiting,
        d: Waiting,
        c: Waiting,
        got: Vec<Permit>,
    }
    let mut keys: Vec<(u32, Key)> = (0..8)
        .map(|k| {
            let held = hold(&hosts, k, 2);
            let s = queue(&hosts, k, Priority::Sheddable);
            let d = queue(&hosts, k, Priority::Default);
            let c = queue(&hosts, k, Priority::Critical);
            let got = Vec::new();
            (k, Key { held, s, d, c, got })
        })
        .collect();
    for (k, _) in &keys {
        assert_eq!(hosts.get(k).unwrap().queued(), 3, "key {k}");
    }

    let reload = registry.reload(config(&text(1, ""))).unwrap();
    assert_eq!(names(&reload.relearning), ["hosts"]);
    for (k, key) in &mut keys {
        assert_eq!((hosts.limit(k), hosts.in_flight(k)), (Some(1), 2));
        drop(key.held.pop());
        assert!(admitted(&mut key.s).is_none(), "key {k}: 1 of 1 in flight");
        assert!(admitted(&mut key.d).is_none(), "key {k}: 1 of 1 in flight");
        assert!(admitted(&mut key.c).is_none(), "key {k}: 1 of 1 in flight");
        drop(key.held.pop());
        assert!(admitted(&mut key.s).is_none(), "key {k}: critical first");
        assert!(admitted(&mut key.d).is_none(), "key {k}: critical first");
        key.got
            .push(admitted(&mut key.c).expect("the critical waiter"));
    }

    // A lower share and a larger limit in one reload: it admits at once, in order, and
    // sheddable calls get half of 4 = 2.
    let reload = registry
        .reload(config(&text(4, "sheddable_share = 0.5\n")))
        .unwrap();
    assert_eq!(names(&reload.relearning), ["hosts"]);
    for (k, key) in &mut keys {
        assert!(
            admitted(&mut key.s).is_none(),
            "key {k}: the default waiter is ahead"
        );
        key.got
            .push(admitted(&mut key.d).expect("admitted by the reload"));
        assert!(
            admitted(&mut key.s).is_none(),
            "key {k}: 2 in flight, not fewer than 4 × 0.5"
        );
        assert_eq!(hosts.get(k).unwrap().queued(), 1);
    }
    // A larger share alone keeps every key's limit and admits the sheddable waiters at once.
    let reload = registry
        .reload(config(&text(4, "sheddable_share = 1.0\n")))
        .unwrap();
    assert!(reload.relearning.is_empty(), "{reload:?}");
    for (k, key) in &mut keys {
        key.got
            .push(admitted(&mut key.s).expect("admitted by the larger share"));
        assert_eq!((hosts.limit(k), hosts.in_flight(k)), (Some(4), 3));
    }
    let ks: Vec<u32> = keys.iter().map(|(k, _)| *k).collect();
    drop(keys);
    for k in ks {
        settled(&hosts, k);
    }
}

/// Doc (Registry::reload): "an adaptive limiter takes its queue, wait, discipline and shares in
/// place"; (reconfigure) "its queue, wait, discipline and shares take effect at once"; "A
/// larger share or limit admits queued callers at once"; (share) "admitted while fewer than
/// `limit × share` are in flight". One reload (or `reconfigure`) that raises the limit and
/// lowers the sheddable share at once: the queued callers it admits are admitted by the new
/// share, on every key and on the single limiter of the name.
#[cfg(feature = "tokio")]
#[test]
fn a_reload_raising_the_limit_and_lowering_a_share_admits_by_the_new_share() {
    let clock = FakeClock::new();
    let text = |initial: u32, extra: &str| {
        hosts_text(
            initial,
            &format!("max_queue = 3\nmax_wait = \"off\"\n{extra}"),
            100,
        )
    };
    let registry = on(&clock, &text(1, ""));
    let hosts = registry.keyed_adaptive_limiter::<u32>("hosts").unwrap();
    let single = registry.adaptive_limiter("hosts").unwrap();
    let held = (hold(&hosts, 0, 1), single.try_acquire().unwrap());
    let mut d = queue(&hosts, 0, Priority::Default);
    let mut s = queue(&hosts, 0, Priority::Sheddable);
    let mut single_d: Waiting = Box::pin(
        single
            .with_priority(Priority::Default)
            .admit(Wait::Until(Deadline::none())),
    );
    let mut single_s: Waiting = Box::pin(
        single
            .with_priority(Priority::Sheddable)
            .admit(Wait::Until(Deadline::none())),
    );
    assert!(poll(single_d.as_mut()).is_pending() && poll(single_s.as_mut()).is_pending());

    let reload = registry
        .reload(config(&text(4, "sheddable_share = 0.5\n")))
        .unwrap();
    assert_eq!(names(&reload.relearning), ["hosts"]);
    let mut wrong = Vec::new();
    let got_d = admitted(&mut d).expect("the default waiter: 1 of 4 in flight");
    let got_s = admitted(&mut s);
    if got_s.is_some() {
        wrong.push(format!(
            "reload, key 0: a sheddable caller admitted with {} in flight",
            hosts.in_flight(&0) - 1
        ));
    }
    let single_got_d = admitted(&mut single_d).expect("the default waiter");
    let single_got_s = admitted(&mut single_s);
    if single_got_s.is_some() {
        wrong.push(format!(
            "reload, single limiter: a sheddable caller admitted with {} in flight",
            single.in_flight() - 1
        ));
    }

    // The same through the table's `reconfigure`, on another key.
    let more = hold(&hosts, 1, 1);
    hosts
        .reconfigure(
            AdaptiveLimiter::builder(aimd(1))
                .max_queue(3)
                .share(Priority::Sheddable, 0.8),
        )
        .unwrap();
    let mut d1 = queue(&hosts, 1, Priority::Default);
    let mut s1 = queue(&hosts, 1, Priority::Sheddable);
    hosts
        .reconfigure(
            AdaptiveLimiter::builder(aimd(4))
                .max_queue(3)
                .share(Priority::Sheddable, 0.5),
        )
        .unwrap();
    let got_d1 = admitted(&mut d1).expect("the default waiter");
    let got_s1 = admitted(&mut s1);
    if got_s1.is_some() {
        wrong.push(format!(
            "reconfigure, key 1: a sheddable caller admitted with {} in flight",
            hosts.in_flight(&1) - 1
        ));
    }
    assert!(
        wrong.is_empty(),
        "admitted past the new sheddable share (4 × 0.5 = 2): {wrong:#?}"
    );
    drop((held, more, got_d, got_s, single_got_d, single_got_s));
    drop((got_d1, got_s1));
}

/// Doc (share): "admitted while fewer than `limit × share` are in flight (always when none
/// are)"; (Registry::reload) shares "in place"; keys keep their learned limits, so each key's
/// share is of its own limit, new keys included.
#[test]
fn shares_from_a_reload_apply_to_each_keys_own_learned_limit() {
    let clock = FakeClock::new();
    let text = |extra: &str| hosts_text(16, extra, 100);
    let registry = on(&clock, &text(""));
    let hosts = registry.keyed_adaptive_limiter::<u32>("hosts").unwrap();
    for k in 0..5 {
        learn(&hosts, k, usize::try_from(k).unwrap());
    }
    // Limits 16, 8, 4, 2, 1; sheddable 0.8 by default.
    let rooms = |p: Priority| -> Vec<usize> { (0..6).map(|k| room(&hosts, k, p)).collect() };
    assert_eq!(rooms(Priority::Sheddable)[..5], [13, 7, 4, 2, 1]);
    let reload = registry
        .reload(config(&text(
            "default_share = 0.75\nsheddable_share = 0.5\n",
        )))
        .unwrap();
    assert!(reload.relearning.is_empty());
    assert_eq!(rooms(Priority::Critical), [16, 8, 4, 2, 1, 16]);
    assert_eq!(rooms(Priority::Default), [12, 6, 3, 2, 1, 12]);
    assert_eq!(rooms(Priority::Sheddable), [8, 4, 2, 1, 1, 8]);
    // A key with one in flight of limit 2 and a sheddable share of 0.5: 1 is not fewer than 1.
    let one = hosts.try_acquire(&3).unwrap();
    assert_eq!(
        hosts
            .get(&3)
            .unwrap()
            .with_priority(Priority::Sheddable)
            .try_acquire()
            .map(drop),
        Err(Rejected::BulkheadFull)
    );
    drop(one);
    for k in 0..6 {
        settled(&hosts, k);
    }
}

/// Doc (Registry::reload): "Callers already queued keep the wait they started with"; (max_wait)
/// "The longest a queued caller waits"; (acquire_before) "[`Rejected::BulkheadFull`] when ...
/// the wait exceeds `max_wait`". A century of virtual time around the reloads.
#[test]
fn queued_callers_of_a_key_keep_the_wait_they_started_with() {
    let clock = FakeClock::new();
    let text = |wait: &str| hosts_text(1, &format!("max_queue = 4\nmax_wait = {wait}\n"), 100);
    let registry = on(&clock, &text("\"1s\""));
    let hosts = registry.keyed_adaptive_limiter::<u32>("hosts").unwrap();
    let held = hosts.try_acquire(&0).unwrap();
    let mut bounded: Waiting = Box::pin(hosts.acquire_before(&0, Deadline::none()));
    assert!(poll(bounded.as_mut()).is_pending());
    let reload = registry.reload(config(&text("\"off\""))).unwrap();
    assert!(reload.relearning.is_empty());
    let mut unbounded: Waiting = Box::pin(hosts.acquire_before(&0, Deadline::none()));
    assert!(poll(unbounded.as_mut()).is_pending());
    clock.advance(ms(2_000));
    assert!(matches!(
        poll(bounded.as_mut()),
        Poll::Ready(Err(Rejected::BulkheadFull))
    ));
    clock.advance(CENTURY);
    assert!(
        poll(unbounded.as_mut()).is_pending(),
        "no max_wait any more"
    );

    // Back to one second: the caller queued without a bound keeps waiting.
    registry.reload(config(&text("\"1s\""))).unwrap();
    clock.advance(CENTURY);
    assert!(poll(unbounded.as_mut()).is_pending());
    let mut late: Waiting = Box::pin(hosts.acquire_before(&0, Deadline::none()));
    assert!(poll(late.as_mut()).is_pending());
    drop(held);
    let permit = admitted(&mut unbounded).expect("the first in the queue");
    clock.advance(ms(2_000));
    assert!(matches!(
        poll(late.as_mut()),
        Poll::Ready(Err(Rejected::BulkheadFull))
    ));
    permit.ignore();
    drop((bounded, unbounded, late));
    assert_eq!(hosts.limit(&0), Some(1));
    settled(&hosts, 0);
}

// === refusals ==============================================================================

/// Doc (Registry::reload): "an invalid configuration ... is refused with its error, and the
/// old one stays in force, whole"; (KeysConfig) "a reload that changes `max_keys` while the
/// registry holds any keyed table of the instance ... is refused ([`Problem::Fixed`], at
/// `instances.<name>.keys.<key>` wherever the value came from)".
#[test]
fn refused_reloads_leave_every_key_waiter_and_the_single_limiter_as_they_were() {
    let clock = FakeClock::new();
    let extra = "max_queue = 2\nmax_wait = \"off\"\n";
    let registry = on(&clock, &hosts_text(16, extra, 100));
    let single = registry.adaptive_limiter("hosts").unwrap();
    let hosts = registry.keyed_adaptive_limiter::<u32>("hosts").unwrap();
    single.try_acquire().unwrap().failure();
    for k in 0..20 {
        learn(&hosts, k, usize::try_from(k % 5).unwrap());
    }
    let held = hold(&hosts, 4, 1);
    let mut waiter = queue(&hosts, 4, Priority::Critical);
    let held2 = hold(&hosts, 9, 1);
    let before = snapshot(&hosts, 0..20);
    let config_before = registry.config();

    let fixed = [
        hosts_text(9, extra, 101),
        format!(
            "[defaults.keys]\nmax_keys = 7\n[instances.hosts.adaptive]\nalgorithm = \"aimd\"\nmin_limit = 1\ninitial_limit = 9\n{extra}"
        ),
        format!(
            "[instances.hosts.adaptive]\nalgorithm = \"aimd\"\nmin_limit = 1\ninitial_limit = 9\n{extra}"
        ),
    ];
    for text in &fixed {
        let e = registry.reload(config(text)).unwrap_err();
        assert_eq!(e.problem(), &Problem::Fixed, "{e}\n---\n{text}");
        assert_eq!(e.path(), "instances.hosts.keys.max_keys", "{text}");
    }
    let mut invalid: Vec<Config> = Vec::new();
    for text in [
        // Shares that contradict each other, next to a new initial limit.
        hosts_text(9, "default_share = 0.5\nsheddable_share = 0.6\n", 100),
        // A key of another algorithm in the layer that names aimd.
        hosts_text(9, "alpha = 3\n", 100),
        // No algorithm anywhere for the limiters held.
        "[instances.hosts.breaker]\n[instances.hosts.keys]\nmax_keys = 100\n".to_owned(),
        // A bound of zero.
        hosts_text(9, "", 0),
    ] {
        invalid.push(toml::from_str(&text).unwrap());
    }
    for c in invalid {
        let e = registry.reload(c).unwrap_err();
        assert_ne!(e.problem(), &Problem::Fixed, "{e}");
    }
    assert_eq!(*registry.config(), *config_before, "the old one, whole");
    assert_eq!(snapshot(&hosts, 0..20), before);
    assert_eq!(single.limit(), 8);
    assert_eq!(hosts.get(&4).unwrap().queued(), 1);
    assert!(admitted(&mut waiter).is_none());
    assert_eq!(table(&registry, "hosts"), Some((20, 100, 0)));
    drop(hosts.try_acquire(&77).unwrap());
    assert_eq!(hosts.limit(&77), Some(16), "new keys on the old algorithm");

    // The same reload with the bound as it is goes through, and relearns.
    let reload = registry.reload(config(&hosts_text(9, extra, 100))).unwrap();
    assert_eq!(names(&reload.relearning), ["hosts"]);
    assert_eq!((single.limit(), hosts.limit(&4)), (9, Some(9)));
    let got = admitted(&mut waiter).expect("9 > 1 in flight");
    drop((held, held2, got, waiter));
    settled(&hosts, 4);
}

/// Doc (KeysConfig): the bound is fixed only "while the registry holds any keyed table of the
/// instance": the same bound written in another layer, or the default written out, is no
/// change; a bound changed before the table is made is the table's.
#[test]
fn the_bound_is_fixed_only_by_value_and_only_once_a_table_is_held() {
    let clock = FakeClock::new();
    let adaptive =
        "[instances.hosts.adaptive]\nalgorithm = \"aimd\"\nmin_limit = 1\ninitial_limit = 4\n";
    let registry = on(&clock, adaptive);
    // Only the single limiter is held: any bound goes.
    registry
        .reload(config(&format!(
            "{adaptive}[instances.hosts.keys]\nmax_keys = 3\n"
        )))
        .unwrap();
    let hosts = registry.keyed_adaptive_limiter::<u32>("hosts").unwrap();
    assert_eq!(table(&registry, "hosts"), Some((0, 3, 0)));
    learn(&hosts, 1, 1);
    for same in [
        format!("[defaults.keys]\nmax_keys = 3\n{adaptive}"),
        format!("[configs.b.keys]\nmax_keys = 3\n{adaptive}[instances.hosts]\nbase = \"b\"\n"),
        format!("[defaults.keys]\nmax_keys = 9\n{adaptive}[instances.hosts.keys]\nmax_keys = 3\n"),
    ] {
        let reload = registry
            .reload(config(&same))
            .unwrap_or_else(|e| panic!("{e}\n{same}"));
        assert!(reload.relearning.is_empty());
        assert_eq!(hosts.limit(&1), Some(3), "4 × 0.9, truncated");
    }
    for changed in [
        adaptive.to_owned(),
        format!("{adaptive}[instances.hosts.keys]\nmax_keys = 2\n"),
        format!("[defaults.keys]\nmax_keys = 9\n{adaptive}"),
    ] {
        let e = registry.reload(config(&changed)).unwrap_err();
        assert_eq!(e.problem(), &Problem::Fixed, "{changed}");
    }
    assert_eq!(table(&registry, "hosts"), Some((1, 3, 0)));

    // Without a `[keys]` section the default is the bound; writing it out changes nothing.
    let registry = on(&clock, adaptive);
    let hosts = registry.keyed_adaptive_limiter::<u32>("hosts").unwrap();
    drop(hosts.try_acquire(&1).unwrap());
    assert_eq!(table(&registry, "hosts"), Some((1, 10_000, 0)));
    registry
        .reload(config(&format!(
            "{adaptive}[instances.hosts.keys]\nmax_keys = 10000\n"
        )))
        .unwrap();
    let e = registry
        .reload(config(&format!(
            "{adaptive}[instances.hosts.keys]\nmax_keys = 9999\n"
        )))
        .unwrap_err();
    assert_eq!(e.problem(), &Problem::Fixed);
    assert_eq!(e.path(), "instances.hosts.keys.max_keys");
}

/// Doc (KeysConfig): "`idle_ttl` while it holds its keyed breaker, is refused": with only the
/// keyed adaptive table of the instance held, `idle_ttl` may change; once its keyed breaker
/// is held it may not.
#[test]
fn idle_ttl_is_not_fixed_by_an_adaptive_table() {
    let clock = FakeClock::new();
    let text = |ttl: &str| {
        format!(
            "[instances.hosts.adaptive]\nalgorithm = \"aimd\"\nmin_limit = 1\ninitial_limit = 4\n[instances.hosts.keys]\nmax_keys = 10\nidle_ttl = \"{ttl}\"\n"
        )
    };
    let registry = on(&clock, &text("60s"));
    let hosts = registry.keyed_adaptive_limiter::<u32>("hosts").unwrap();
    learn(&hosts, 1, 1);
    let reload = registry
        .reload(config(&text("5m")))
        .unwrap_or_else(|e| panic!("only a keyed breaker fixes idle_ttl: {e}"));
    assert!(reload.relearning.is_empty());
    assert_eq!(hosts.limit(&1), Some(3), "4 × 0.9, truncated");
    let _breakers = registry.keyed_breaker::<u32>("hosts").unwrap();
    let e = registry.reload(config(&text("6m"))).unwrap_err();
    assert_eq!(e.problem(), &Problem::Fixed);
    assert_eq!(e.path(), "instances.hosts.keys.idle_ttl");
    assert_eq!(hosts.limit(&1), Some(3));
}

/// Doc (keyed_adaptive_limiter): "# Errors As [`adaptive_limiter`]": [`Problem::Missing`] when
/// no layer sets `algorithm`; (Registry) a name the file does not declare is built "from the
/// layers there are (the defaults, say)"; (reload) "one under which a policy the registry
/// holds could not be built ... is refused"; instances no longer declared "are kept, on the
/// layers that remain".
#[test]
fn tables_of_names_without_an_algorithm_or_undeclared_follow_the_layers_that_reach_them() {
    let clock = FakeClock::new();
    let registry = on(&clock, "[instances.db.breaker]\n");
    let e = registry
        .keyed_adaptive_limiter::<u32>("db")
        .map(drop)
        .unwrap_err();
    assert!(matches!(e.problem(), Problem::Missing), "{e:?}");
    assert!(registry.keyed_tables().is_empty());

    let defaults = |initial: u32| {
        format!(
            "[defaults.adaptive]\nalgorithm = \"aimd\"\nmin_limit = 1\ninitial_limit = {initial}\n[instances.db.breaker]\n"
        )
    };
    registry.reload(config(&defaults(6))).unwrap();
    let ghost = registry.keyed_adaptive_limiter::<u32>("ghost").unwrap();
    let db = registry.keyed_adaptive_limiter::<u32>("db").unwrap();
    learn(&ghost, 1, 1);
    let held = db.try_acquire(&1).unwrap();
    assert_eq!((ghost.limit(&1), db.limit(&1)), (Some(5), Some(6)));
    assert_eq!(
        registry
            .keyed_tables()
            .iter()
            .map(|t| t.name.to_string())
            .collect::<Vec<_>>(),
        ["db", "ghost"]
    );

    // The defaults' algorithm goes: the tables held could not be built.
    let e = registry
        .reload(config("[instances.db.breaker]\n"))
        .unwrap_err();
    assert!(matches!(e.problem(), Problem::Missing), "{e:?}");
    assert_eq!((ghost.limit(&1), db.limit(&1)), (Some(5), Some(6)));

    let reload = registry.reload(config(&defaults(3))).unwrap();
    assert_eq!(names(&reload.relearning), ["db", "ghost"]);
    assert_eq!(
        (ghost.limit(&1), db.limit(&1), db.in_flight(&1)),
        (Some(3), Some(3), 1)
    );
    drop(held);
}

/// Doc (Reload::relearning): "each name once"; "The others keep what they learned"; (reload)
/// instances no longer declared are kept "on the layers that remain (the defaults, say)".
#[test]
fn relearning_lists_exactly_the_tables_whose_algorithm_changed_each_once() {
    let clock = FakeClock::new();
    let text = |defaults_algorithm: &str, defaults_initial: u32, a: u32, with_c: bool| {
        let mut s = format!(
            "[defaults.adaptive]\nalgorithm = \"{defaults_algorithm}\"\nmin_limit = 1\ninitial_limit = {defaults_initial}\n[instances.a.adaptive]\ninitial_limit = {a}\n[instances.b.adaptive]\nalgorithm = \"vegas\"\ninitial_limit = 7\n"
        );
        if with_c {
            s.push_str("[instances.c.adaptive]\ninitial_limit = 8\n");
        }
        s
    };
    let registry = on(&clock, &text("aimd", 5, 6, true));
    let tables: Vec<(&str, Table)> = ["a", "b", "c", "ghost"]
        .into_iter()
        .map(|n| (n, registry.keyed_adaptive_limiter::<u32>(n).unwrap()))
        .collect();
    let limits = || -> Vec<Option<u32>> {
        tables
            .iter()
            .map(|(_, t)| {
                drop(t.try_acquire(&1).unwrap());
                t.limit(&1)
            })
            .collect()
    };
    assert_eq!(limits(), [Some(6), Some(7), Some(8), Some(5)]);
    let step = |text: String, expected: &[&str], limits_after: [Option<u32>; 4]| {
        let reload = registry.reload(config(&text)).unwrap();
        assert_eq!(names(&reload.relearning), expected, "{text}");
        assert_eq!(limits(), limits_after, "{text}");
    };
    step(
        text("aimd", 5, 9, true),
        &["a"],
        [Some(9), Some(7), Some(8), Some(5)],
    );
    step(
        text("aimd", 4, 9, true),
        &["ghost"],
        [Some(9), Some(7), Some(8), Some(4)],
    );
    step(
        text("gradient2", 4, 9, true),
        &["a", "c", "ghost"],
        [Some(9), Some(7), Some(8), Some(4)],
    );
    step(
        text("gradient2", 4, 9, false),
        &["c"],
        [Some(9), Some(7), Some(4), Some(4)],
    );
    step(
        text("gradient2", 4, 9, false),
        &[],
        [Some(9), Some(7), Some(4), Some(4)],
    );
    assert_eq!(registry.keyed_tables().len(), 4);
}

/// Doc (AlgorithmKind and each algorithm's builder): relearning into another kind starts each
/// key from that algorithm's initial limit (the windowed gradient's is `min_limit` while it
/// measures the no-load RTT); nothing held is revoked; the same kind again is no change.
#[test]
fn relearning_through_every_kind_restarts_every_key_and_revokes_nothing() {
    let clock = FakeClock::new();
    let text = |algorithm: &str, keys: &str| {
        format!(
            "[instances.hosts.adaptive]\nalgorithm = \"{algorithm}\"\n{keys}[instances.hosts.keys]\nmax_keys = 64\n"
        )
    };
    let registry = on(&clock, &text("aimd", "min_limit = 1\ninitial_limit = 16\n"));
    let hosts = registry.keyed_adaptive_limiter::<u32>("hosts").unwrap();
    let mut held: Vec<Permit> = Vec::new();
    for k in 0..6 {
        learn(&hosts, k, 1);
        held.extend(hold(&hosts, k, 2));
    }
    for (algorithm, keys, expected) in [
        ("vegas", "initial_limit = 12\n", 12),
        ("gradient2", "min_limit = 1\ninitial_limit = 14\n", 14),
        (
            "windowed_gradient",
            "min_limit = 3\ninitial_limit = 15\n",
            3,
        ),
        ("aimd", "min_limit = 1\ninitial_limit = 11\n", 11),
    ] {
        let reload = registry.reload(config(&text(algorithm, keys))).unwrap();
        assert_eq!(names(&reload.relearning), ["hosts"], "{algorithm}");
        for k in 0..6 {
            assert_eq!(
                (hosts.limit(&k), hosts.in_flight(&k)),
                (Some(expected), 2),
                "{algorithm} key {k}"
            );
        }
        let reload = registry.reload(config(&text(algorithm, keys))).unwrap();
        assert!(reload.relearning.is_empty(), "{algorithm} again");
    }
    drop(held);
    for k in 0..6 {
        settled(&hosts, k);
    }
}

// === reconfigure ===========================================================================

/// Doc (KeyedAdaptiveLimiter::reconfigure): "# Errors As [`AdaptiveLimiterBuilder::build`];
/// nothing changes then"; (build) shares outside `(0, 1]`, a critical share below 1, a less
/// important share above a more important one, a discipline the bulkhead refuses; (FixedLimit)
/// "A limit of zero is refused when the limiter is built". On success: "every key starts
/// learning again from the new initial limit ... permits and waiters are kept. Its name,
/// listener and runtime are not read, and the bound on keys stays." The single limiter of the
/// same name is another limiter.
#[cfg(feature = "tokio")]
#[test]
fn reconfigure_refusals_change_no_key_and_success_retunes_the_table_alone() {
    let clock = FakeClock::new();
    let registry = on(
        &clock,
        &hosts_text(16, "max_queue = 2\nmax_wait = \"off\"\n", 100),
    );
    let single = registry.adaptive_limiter("hosts").unwrap();
    let hosts = registry.keyed_adaptive_limiter::<u32>("hosts").unwrap();
    single.try_acquire().unwrap().failure();
    for k in 0..6 {
        learn(&hosts, k, usize::try_from(k % 3).unwrap());
    }
    let mut held = hold(&hosts, 2, 4);
    held.extend(hold(&hosts, 0, 1));
    let mut waiter = queue(&hosts, 2, Priority::Default);
    let before = snapshot(&hosts, 0..6);

    let bad = || {
        vec![
            AdaptiveLimiter::builder(aimd(9)).share(Priority::Default, 0.0),
            AdaptiveLimiter::builder(aimd(9)).share(Priority::Critical, 0.5),
            AdaptiveLimiter::builder(aimd(9))
                .share(Priority::Default, 0.5)
                .share(Priority::Sheddable, 0.9),
            AdaptiveLimiter::builder(aimd(9)).share(Priority::Sheddable, f64::NAN),
            AdaptiveLimiter::builder(aimd(9)).share(Priority::Sheddable, 1.5),
            AdaptiveLimiter::builder(aimd(9)).discipline(QueueDiscipline::Codel {
                target: Duration::ZERO,
                interval: ms(100),
            }),
            AdaptiveLimiter::builder(AnyAlgorithm::from(FixedLimit(0))),
        ]
    };
    for b in bad() {
        let e: ConfigError = hosts.reconfigure(b).unwrap_err();
        assert_eq!(snapshot(&hosts, 0..6), before, "{e:?}");
        assert_eq!(hosts.get(&2).unwrap().queued(), 1, "{e:?}");
        assert!(admitted(&mut waiter).is_none(), "{e:?}");
    }
    for b in bad() {
        assert!(single.reconfigure(b).is_err());
        assert_eq!(single.limit(), 8);
    }
    let key_handle = hosts.get(&1).unwrap();
    for b in bad() {
        assert!(key_handle.reconfigure(b).is_err());
    }
    drop(key_handle);
    assert_eq!(snapshot(&hosts, 0..6), before);
    drop(hosts.try_acquire(&50).unwrap());
    assert_eq!(
        hosts.limit(&50),
        Some(16),
        "new keys on the algorithm in force"
    );

    hosts
        .reconfigure(
            AdaptiveLimiter::builder(aimd(9))
                .max_queue(5)
                .name("renamed"),
        )
        .unwrap();
    assert_eq!(hosts.name(), "hosts", "the name is not read");
    for k in (0..6).chain([50]) {
        assert_eq!(hosts.limit(&k), Some(9), "key {k}");
    }
    let from_waiter = admitted(&mut waiter).expect("9 > 4: admitted at once");
    assert_eq!(
        (hosts.in_flight(&2), hosts.in_flight(&0)),
        (5, 1),
        "nothing revoked"
    );
    assert_eq!(single.limit(), 8, "the single limiter is another limiter");
    assert_eq!(
        table(&registry, "hosts"),
        Some((7, 100, 0)),
        "the bound stays"
    );
    drop(hosts.try_acquire(&51).unwrap());
    assert_eq!(hosts.limit(&51), Some(9));

    let reload = registry
        .reload(config(&hosts_text(
            12,
            "max_queue = 2\nmax_wait = \"off\"\n",
            100,
        )))
        .unwrap();
    assert_eq!(names(&reload.relearning), ["hosts"]);
    assert_eq!(
        (single.limit(), hosts.limit(&2), hosts.limit(&51)),
        (12, Some(12), Some(12))
    );
    drop((held, from_waiter, waiter));
    for k in 0..6 {
        settled(&hosts, k);
    }
}

/// Doc (get): "A handle to `key`'s limiter"; (AdaptiveLimiter::reconfigure) "Applies `settings`
/// in place, to every handle and clone" (of that limiter: that key alone); a reload that keeps
/// the algorithm leaves each key "its own, with what it learned"; one that changes it
/// restarts every key.
#[cfg(feature = "tokio")]
#[test]
fn one_keys_handle_reconfigured_alone_until_a_relearning_reload() {
    let clock = FakeClock::new();
    let text = |initial: u32, extra: &str| hosts_text(initial, extra, 100);
    let registry = on(&clock, &text(16, ""));
    let hosts = registry.keyed_adaptive_limiter::<u32>("hosts").unwrap();
    let one = hosts.get(&1).unwrap();
    drop(hosts.try_acquire(&2).unwrap());
    one.reconfigure(AdaptiveLimiter::builder(aimd(50))).unwrap();
    assert_eq!((hosts.limit(&1), hosts.limit(&2)), (Some(50), Some(16)));
    drop(hosts.try_acquire(&3).unwrap());
    assert_eq!(
        hosts.limit(&3),
        Some(16),
        "new keys on the table's algorithm"
    );

    let reload = registry
        .reload(config(&text(16, "sheddable_share = 0.5\n")))
        .unwrap();
    assert!(reload.relearning.is_empty());
    assert_eq!(
        (hosts.limit(&1), hosts.limit(&2), one.limit()),
        (Some(50), Some(16), 50),
        "each key keeps its own"
    );
    let reload = registry.reload(config(&text(7, ""))).unwrap();
    assert_eq!(names(&reload.relearning), ["hosts"]);
    assert_eq!(
        (
            hosts.limit(&1),
            hosts.limit(&2),
            hosts.limit(&3),
            one.limit()
        ),
        (Some(7), Some(7), Some(7), 7)
    );
    drop(one);
    settled(&hosts, 1);
}

// === time ==================================================================================

/// Doc (KeyedAdaptiveLimiter): keys are forgotten when "a shard fills up (and by
/// `retain_in_use`)", not by time (an adaptive table has no `idle_ttl`); (Aimd) "a call
/// slower than `timeout`" is a drop; (WindowedGradient) it measures "again once
/// `probe_interval` has passed since the last measurement", per key.
#[test]
fn a_century_idle_forgets_nothing_and_slow_calls_teach_only_their_key() {
    let clock = FakeClock::new();
    let text = |initial: u32, wg: &str| {
        format!(
            "{}[instances.wg.adaptive]\nalgorithm = \"windowed_gradient\"\nmin_limit = 2\ninitial_limit = 10\nprobe_samples = 1\nprobe_interval = \"1s\"\n{wg}",
            hosts_text(initial, "", 100)
        )
    };
    let registry = on(&clock, &text(16, ""));
    let hosts = registry.keyed_adaptive_limiter::<u32>("hosts").unwrap();
    for k in 0..10 {
        learn(&hosts, k, usize::try_from(k % 4).unwrap());
    }
    let slow = hosts.try_acquire(&20).unwrap();
    let before = snapshot(&hosts, 0..10);
    clock.advance(CENTURY);
    assert_eq!(snapshot(&hosts, 0..10), before);
    assert_eq!(table(&registry, "hosts"), Some((11, 100, 0)));
    slow.success();
    assert_eq!(
        hosts.limit(&20),
        Some(8),
        "a century is slower than 5 s: a drop"
    );
    assert_eq!(snapshot(&hosts, 0..10), before, "only its own key");

    let slower = hosts.try_acquire(&21).unwrap();
    let reload = registry.reload(config(&text(10, ""))).unwrap();
    assert_eq!(names(&reload.relearning), ["hosts"]);
    clock.advance(HOUR);
    slower.success();
    assert_eq!(
        hosts.limit(&21),
        Some(5),
        "its sample goes to the new algorithm"
    );
    assert_eq!(hosts.limit(&0), Some(10));

    let wg = registry.keyed_adaptive_limiter::<u32>("wg").unwrap();
    let measure = |k: u32| {
        let p = wg.try_acquire(&k).unwrap();
        clock.advance(ms(5));
        p.success();
    };
    drop(wg.try_acquire(&1).unwrap());
    assert_eq!(wg.limit(&1), Some(2), "measuring at min_limit");
    measure(1);
    assert_eq!(wg.limit(&1), Some(10));
    clock.advance(CENTURY);
    drop(wg.try_acquire(&2).unwrap());
    assert_eq!((wg.limit(&1), wg.limit(&2)), (Some(10), Some(2)));
    measure(1);
    assert_eq!(
        wg.limit(&1),
        Some(2),
        "a century past probe_interval: measuring again"
    );
    measure(2);
    assert_eq!(wg.limit(&2), Some(10));
    let reload = registry
        .reload(config(&text(10, "max_queue = 1\n")))
        .unwrap();
    assert!(reload.relearning.is_empty(), "{reload:?}");
    assert_eq!(wg.limit(&2), Some(10));
}

// === extremes ==============================================================================

/// Doc (module): "nothing is clamped or rounded"; (Aimd) limits are `u32`, a drop multiplies
/// by `backoff_ratio`, truncated; (max_keys) "any `usize` but zero". Limits of `u32::MAX`,
/// relearned down to 1 and back with permits held, and a table of one key.
#[test]
fn u32_max_limits_relearn_down_and_up_with_permits_held() {
    let clock = FakeClock::new();
    let text = |initial: u32| {
        format!(
            "[instances.hosts.adaptive]\nalgorithm = \"aimd\"\nmin_limit = 1\ninitial_limit = {initial}\nmax_limit = {}\nbackoff_ratio = 0.5\n[instances.hosts.keys]\nmax_keys = 1\n",
            u32::MAX
        )
    };
    let registry = on(&clock, &text(u32::MAX));
    let hosts = registry.keyed_adaptive_limiter::<u32>("hosts").unwrap();
    let held = hold(&hosts, 0, 3);
    assert_eq!(hosts.limit(&0), Some(u32::MAX));
    let mut held = held.into_iter();
    held.next().unwrap().failure();
    assert_eq!(hosts.limit(&0), Some(u32::MAX / 2));
    let reload = registry.reload(config(&text(1))).unwrap();
    assert_eq!(names(&reload.relearning), ["hosts"]);
    assert_eq!((hosts.limit(&0), hosts.in_flight(&0)), (Some(1), 2));
    assert_eq!(hosts.try_acquire(&0).unwrap_err(), Rejected::BulkheadFull);
    assert_eq!(hosts.try_acquire(&1).unwrap_err(), FULL);
    let reload = registry.reload(config(&text(u32::MAX))).unwrap();
    assert_eq!(names(&reload.relearning), ["hosts"]);
    let more = hold(&hosts, 0, 5);
    assert_eq!((hosts.limit(&0), hosts.in_flight(&0)), (Some(u32::MAX), 7));
    for p in held.chain(more) {
        p.success();
    }
    assert_eq!(hosts.limit(&0), Some(u32::MAX), "clamped at max_limit");

    // The delay-based algorithms at the same bounds: no panic, the limit within them.
    for (algorithm, own) in [
        ("vegas", ""),
        ("gradient2", ""),
        ("windowed_gradient", "probe_samples = 1\nwindow = 1\n"),
    ] {
        let registry = on(
            &clock,
            &format!(
                "[instances.x.adaptive]\nalgorithm = \"{algorithm}\"\nmin_limit = 1\ninitial_limit = {max}\nmax_limit = {max}\n{own}[instances.x.keys]\nmax_keys = 1\n",
                max = u32::MAX
            ),
        );
        let x = registry.keyed_adaptive_limiter::<u32>("x").unwrap();
        let mut rng = Rng::new(11);
        for round in 0..50 {
            let held: Vec<Permit> = (0..=rng.index(3))
                .filter_map(|_| x.try_acquire(&0).ok())
                .collect();
            clock.advance(ms(1 + rng.below(100)));
            for p in held {
                if rng.chance(3) {
                    p.failure();
                } else {
                    p.success();
                }
            }
            let limit = x.limit(&0).unwrap();
            assert!(limit >= 1, "{algorithm} round {round}");
        }
        let reload = registry
            .reload(config(&format!(
                "[instances.x.adaptive]\nalgorithm = \"aimd\"\nmin_limit = 1\ninitial_limit = {max}\nmax_limit = {max}\n[instances.x.keys]\nmax_keys = 1\n",
                max = u32::MAX
            )))
            .unwrap();
        assert_eq!(names(&reload.relearning), ["x"]);
        assert_eq!(x.limit(&0), Some(u32::MAX));
    }
}

/// Doc (max_keys): "any `usize` but zero: the table grows as keys arrive". The largest bound a
/// TOML file can write and the largest a `Config` built in code can hold.
#[test]
fn huge_bounds_are_held_exactly_and_fixed_exactly() {
    let clock = FakeClock::new();
    let big = i64::MAX;
    let registry = on(&clock, &hosts_text(2, "", usize::try_from(big).unwrap()));
    let hosts = registry.keyed_adaptive_limiter::<u32>("hosts").unwrap();
    let held: Vec<Permit> = (0..1_000).map(|k| hosts.try_acquire(&k).unwrap()).collect();
    assert_eq!(
        table(&registry, "hosts"),
        Some((1_000, usize::try_from(big).unwrap(), 0))
    );
    drop(held);

    let mut c = config(&hosts_text(2, "", 5));
    c.instances
        .get_mut("hosts")
        .unwrap()
        .keys
        .as_mut()
        .unwrap()
        .max_keys = Some(usize::MAX);
    let registry = Registry::builder(c.clone())
        .runtime(clock.clone())
        .build()
        .unwrap();
    let hosts = registry.keyed_adaptive_limiter::<u32>("hosts").unwrap();
    drop(hosts.try_acquire(&1).unwrap());
    assert_eq!(table(&registry, "hosts"), Some((1, usize::MAX, 0)));
    registry.reload(c.clone()).unwrap();
    let mut smaller = c;
    smaller
        .instances
        .get_mut("hosts")
        .unwrap()
        .keys
        .as_mut()
        .unwrap()
        .max_keys = Some(usize::MAX - 1);
    let e = registry.reload(smaller).unwrap_err();
    assert_eq!(e.problem(), &Problem::Fixed);
    assert_eq!(table(&registry, "hosts"), Some((1, usize::MAX, 0)));
}

/// Doc (module): a key path writes a name "quoted otherwise (`instances."api.v2".breaker`)";
/// (KeysConfig) [`Problem::Fixed`] "at `instances.<name>.keys.<key>`"; (Reload::relearning)
/// instance names, each once. A keyed adaptive table under a name TOML must quote.
#[test]
fn a_quoted_names_table_is_fixed_at_its_quoted_path_and_relearns_under_its_name() {
    let clock = FakeClock::new();
    let text = |initial: u32, max_keys: usize| {
        format!(
            "[instances.\"api.v2\".adaptive]\nalgorithm = \"aimd\"\nmin_limit = 1\ninitial_limit = {initial}\n[instances.\"api.v2\".keys]\nmax_keys = {max_keys}\n"
        )
    };
    let registry = on(&clock, &text(4, 5));
    let api = registry.keyed_adaptive_limiter::<u32>("api.v2").unwrap();
    learn(&api, 1, 1);
    assert_eq!(table(&registry, "api.v2"), Some((1, 5, 0)));
    let e = registry.reload(config(&text(4, 6))).unwrap_err();
    assert_eq!(e.problem(), &Problem::Fixed);
    assert_eq!(e.path(), "instances.\"api.v2\".keys.max_keys");
    assert_eq!(api.limit(&1), Some(3));
    let reload = registry.reload(config(&text(8, 5))).unwrap();
    assert_eq!(reload.relearning, vec![Name::from("api.v2")]);
    assert_eq!(api.limit(&1), Some(8));
    let e = registry
        .keyed_adaptive_limiter::<u64>("api.v2")
        .map(drop)
        .unwrap_err();
    assert!(matches!(e.problem(), Problem::KeyType(_)), "{e:?}");
}

// === races =================================================================================

/// Doc (keyed_adaptive_limiter): "made on first use", "the same table for everyone who asks
/// with the same key type"; (reload) "every call after it runs on the new" settings. A first
/// use racing a relearning reload never leaves the table on the old algorithm, and two first
/// uses with different key types racing each other make one table.
#[test]
fn first_use_racing_a_reload_or_another_key_type_ends_on_one_table_and_the_new_algorithm() {
    let clock = FakeClock::new();
    for round in 0..60_u32 {
        let registry = Arc::new(on(&clock, &hosts_text(4, "", 100)));
        let barrier = Arc::new(Barrier::new(3));
        let maker = {
            let (registry, barrier) = (Arc::clone(&registry), Arc::clone(&barrier));
            std::thread::spawn(move || {
                barrier.wait();
                registry.keyed_adaptive_limiter::<u32>("hosts").map(drop)
            })
        };
        let other = {
            let (registry, barrier) = (Arc::clone(&registry), Arc::clone(&barrier));
            std::thread::spawn(move || {
                barrier.wait();
                registry.keyed_adaptive_limiter::<u64>("hosts").map(drop)
            })
        };
        let reloader = {
            let (registry, barrier) = (Arc::clone(&registry), Arc::clone(&barrier));
            std::thread::spawn(move || {
                barrier.wait();
                registry.reload(config(&hosts_text(9, "", 100)))
            })
        };
        let made = maker.join().unwrap();
        let other = other.join().unwrap();
        reloader.join().unwrap().unwrap();
        let (winner_limit, loser) = match (made, other) {
            (Ok(()), Err(loser)) => {
                let t = registry.keyed_adaptive_limiter::<u32>("hosts").unwrap();
                drop(t.try_acquire(&round).unwrap());
                (t.limit(&round), loser)
            }
            (Err(loser), Ok(())) => {
                let t = registry.keyed_adaptive_limiter::<u64>("hosts").unwrap();
                drop(t.try_acquire(&u64::from(round)).unwrap());
                (t.limit(&u64::from(round)), loser)
            }
            both => panic!("round {round}: exactly one key type wins: {both:?}"),
        };
        assert!(matches!(loser.problem(), Problem::KeyType(_)), "{loser:?}");
        assert_eq!(
            winner_limit,
            Some(9),
            "round {round}: the algorithm in force"
        );
        assert_eq!(registry.keyed_tables().len(), 1);
    }
}

#[cfg(feature = "tokio")]
fn finish(permit: Permit, rng: &mut Rng) {
    match rng.below(4) {
        0 => permit.success(),
        1 => permit.failure(),
        2 => permit.ignore(),
        _ => drop(permit),
    }
}

#[cfg(feature = "tokio")]
async fn worker(hosts: Table, seed: u64) {
    let mut rng = Rng::new(seed);
    let expected = |e: &Rejected| matches!(e, Rejected::BulkheadFull | Rejected::KeysFull { .. });
    for _ in 0..1_500 {
        // Half the calls on four hot keys (queues), the rest over 40 keys (a full table).
        let key = if rng.chance(2) {
            rng.key(4)
        } else {
            rng.key(40)
        };
        match rng.below(5) {
            0 | 1 => match hosts.acquire_before(&key, Deadline::none()).await {
                Ok(p) => {
                    tokio::task::yield_now().await;
                    finish(p, &mut rng);
                }
                Err(e) => assert!(expected(&e), "{e:?}"),
            },
            2 => {
                // Polled a seeded number of times, then dropped wherever it is.
                let mut waiting = Box::pin(hosts.acquire_before(&key, Deadline::none()));
                for _ in 0..rng.below(3) {
                    let step = tokio::select! {
                        biased;
                        r = &mut waiting => Some(r),
                        () = tokio::task::yield_now() => None,
                    };
                    match step {
                        Some(Ok(p)) => {
                            finish(p, &mut rng);
                            break;
                        }
                        Some(Err(e)) => {
                            assert!(expected(&e), "{e:?}");
                            break;
                        }
                        None => {}
                    }
                }
            }
            3 => {
                if let Ok(handle) = hosts.get(&key) {
                    let priority = Priority::ALL[rng.index(3)];
                    let admit = handle
                        .with_priority(priority)
                        .admit(Wait::Until(Deadline::none()));
                    match admit.await {
                        Ok(p) => finish(p, &mut rng),
                        Err(e) => assert!(expected(&e), "{e:?}"),
                    }
                }
            }
            _ => {
                let mut held = Vec::new();
                for _ in 0..3 {
                    if let Ok(p) = hosts.try_acquire(&rng.key(40)) {
                        held.push(p);
                    }
                }
                tokio::task::yield_now().await;
                for p in held {
                    finish(p, &mut rng);
                }
            }
        }
    }
}

/// Doc (Registry::reload): "calls in flight keep their permits", "Callers already queued keep
/// the wait they started with", reloads serialized ("it waits for the first to finish");
/// (acquire_before) "dropping the future leaves the queue and leaks nothing". Workers on a
/// multi-thread runtime wait, hold, cancel and shed across 40 keys (four of them hot) of a 12-key table while two
/// threads reload (relearning or not, queue and shares changing): at the end every slot is
/// back and every key admits exactly its limit.
#[cfg(feature = "tokio")]
#[test]
fn reloads_racing_acquires_on_a_multi_thread_runtime_give_every_slot_back() {
    let clock = FakeClock::new();
    let text = |initial: u32, queue: u64, shed: &str| {
        hosts_text(
            initial,
            &format!("max_queue = {queue}\nmax_wait = \"off\"\nsheddable_share = {shed}\n"),
            12,
        )
    };
    let registry = Arc::new(on(&clock, &text(4, 2, "0.8")));
    let hosts = registry.keyed_adaptive_limiter::<u32>("hosts").unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    rt.block_on(async {
        let workers: Vec<_> = (0..6_u64)
            .map(|t| tokio::spawn(worker(hosts.clone(), 0x6b65_7965_6400 + t)))
            .collect();
        let reloaders: Vec<_> = (0..2_u64)
            .map(|r| {
                let registry = Arc::clone(&registry);
                tokio::task::spawn_blocking(move || {
                    let mut rng = Rng::new(77 + r);
                    for _ in 0..150 {
                        let initial = [2, 4, 6][rng.index(3)];
                        let shed = ["0.5", "0.8", "1.0"][rng.index(3)];
                        let reload = registry
                            .reload(config(&text(initial, rng.below(4), shed)))
                            .unwrap();
                        assert!(reload.relearning.len() <= 1, "{reload:?}");
                        let (keys, bound, _) = table(&registry, "hosts").unwrap();
                        assert!(keys <= bound, "{keys} > {bound}");
                        std::thread::yield_now();
                    }
                })
            })
            .collect();
        for w in workers {
            w.await.unwrap();
        }
        for r in reloaders {
            r.await.unwrap();
        }
    });
    let reload = registry.reload(config(&text(7, 2, "0.8"))).unwrap();
    assert_eq!(names(&reload.relearning), ["hosts"]);
    let mut seen = 0;
    for k in 0..40 {
        if hosts.limit(&k).is_some() {
            seen += 1;
            assert_eq!(hosts.limit(&k), Some(7), "key {k}");
            settled(&hosts, k);
        }
    }
    let (keys, bound, _) = table(&registry, "hosts").unwrap();
    assert_eq!((keys, bound), (seen, 12));
}

/// Doc (acquire_before): "**Cancel safety:** ... dropping the future leaves the queue and leaks
/// nothing"; (AdaptivePermit) "dropped without one (a cancelled call), it frees the slot and
/// teaches the algorithm nothing"; `ignore`: "no sample". Futures dropped at seeded points
/// (their own timers, task aborts) under paused tokio time, with deadlines, `max_wait` and
/// reloads in between: every key ends with nothing out at the initial limit in force.
#[cfg(feature = "tokio")]
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn acquire_futures_dropped_at_seeded_points_leak_nothing_and_teach_nothing() {
    let text = |initial: u32, queue: u64| {
        hosts_text(
            initial,
            &format!("max_queue = {queue}\nmax_wait = \"300ms\"\n"),
            1_000,
        )
    };
    let registry = Registry::new(config(&text(3, 4))).unwrap();
    let hosts = registry.keyed_adaptive_limiter::<u32>("hosts").unwrap();
    let mut rng = Rng::new(0x5eed);
    let mut initial = 3;
    let mut tasks = Vec::new();
    for _ in 0..400 {
        let key = rng.key(6);
        let hold_for = ms(rng.below(80));
        let give_up = ms(rng.below(400));
        let deadline = if rng.chance(3) {
            Deadline::after(registry.runtime(), ms(rng.below(200)))
        } else {
            Deadline::none()
        };
        let ignore = rng.chance(2);
        let hosts = hosts.clone();
        tasks.push(tokio::spawn(async move {
            let waiting = hosts.acquire_before(&key, deadline);
            tokio::select! {
                r = waiting => match r {
                    Ok(p) => {
                        tokio::time::sleep(hold_for).await;
                        if ignore { p.ignore() } else { drop(p) }
                    }
                    Err(e) => assert!(
                        matches!(e, Rejected::BulkheadFull | Rejected::DeadlineExceeded),
                        "{e:?}"
                    ),
                },
                () = tokio::time::sleep(give_up) => {}
            }
        }));
        if rng.chance(4) {
            tokio::time::sleep(ms(rng.below(100))).await;
        } else {
            tokio::task::yield_now().await;
        }
        if rng.chance(6) {
            let i = rng.index(tasks.len());
            tasks[i].abort();
        }
        if rng.chance(15) {
            let relearn = rng.chance(2);
            if relearn {
                initial = [2, 3, 5][rng.index(3)];
            }
            registry
                .reload(config(&text(initial, rng.below(5))))
                .unwrap();
        }
    }
    for t in tasks {
        if let Err(e) = t.await {
            assert!(e.is_cancelled(), "{e:?}");
        }
    }
    for k in 0..6 {
        let Some(limit) = hosts.limit(&k) else {
            continue;
        };
        assert_eq!(limit, initial, "key {k} learned nothing");
        let handle = hosts.get(&k).unwrap();
        assert_eq!((handle.in_flight(), handle.queued()), (0, 0), "key {k}");
        let taken: Vec<_> = (0..limit).map(|_| handle.try_acquire().unwrap()).collect();
        assert_eq!(handle.try_acquire().unwrap_err(), Rejected::BulkheadFull);
        drop(taken);
    }
}

// === gauges ================================================================================

/// `(keys, max_keys)` gauges of the keyed adaptive table of `name`, from one snapshot (a
/// debugging snapshot reads each gauge once).
#[cfg(feature = "metrics")]
fn keyed_gauges(
    snapshotter: &metrics_util::debugging::Snapshotter,
    name: &str,
) -> (Option<f64>, Option<f64>) {
    use support::snapshot::{gauge, snapshot};
    let all = snapshot(snapshotter);
    let labels = [("policy", "keyed_adaptive"), ("name", name)];
    (
        gauge(&all, "tidewall_keyed_keys", &labels),
        gauge(&all, "tidewall_keyed_max_keys", &labels),
    )
}

/// Doc (brief: `tidewall_keyed_keys` / `tidewall_keyed_max_keys` via `record_gauges`, "Sets the
/// gauges of every policy held"): the keyed adaptive table's keys and bound, following
/// evictions, relearning reloads (which forget no key) and refused reloads (which change no
/// bound).
#[cfg(feature = "metrics")]
#[test]
fn keyed_gauges_follow_the_adaptive_tables_keys_and_bound() {
    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let read = |registry: &Registry<FakeClock>| {
        metrics::with_local_recorder(&recorder, || registry.record_gauges());
        keyed_gauges(&snapshotter, "hosts")
    };
    let exactly =
        |seen: Option<f64>, n: u32| seen.is_some_and(|v| v.total_cmp(&f64::from(n)).is_eq());
    let clock = FakeClock::new();
    let registry = on(&clock, &hosts_text(4, "", 3));
    assert_eq!(
        read(&registry).0.map(f64::to_bits),
        None,
        "no table, no series"
    );
    let hosts = registry.keyed_adaptive_limiter::<u32>("hosts").unwrap();
    let busy = hosts.try_acquire(&0).unwrap();
    learn(&hosts, 1, 1);
    learn(&hosts, 2, 1);
    let (keys, bound) = read(&registry);
    assert!(exactly(keys, 3) && exactly(bound, 3), "{keys:?} {bound:?}");

    let reload = registry.reload(config(&hosts_text(6, "", 3))).unwrap();
    assert_eq!(names(&reload.relearning), ["hosts"]);
    assert_eq!(
        registry
            .reload(config(&hosts_text(6, "", 4)))
            .unwrap_err()
            .problem(),
        &Problem::Fixed
    );
    let (keys, bound) = read(&registry);
    assert!(
        exactly(keys, 3) && exactly(bound, 3),
        "a relearning reload forgets no key, a refused one changes no bound: {keys:?} {bound:?}"
    );

    assert_eq!(hosts.retain_in_use(), 2);
    let (keys, bound) = read(&registry);
    assert!(exactly(keys, 1) && exactly(bound, 3), "{keys:?} {bound:?}");
    assert_eq!(table(&registry, "hosts"), Some((1, 3, 2)));
    drop(busy);
}
