//! Keyed policies in a registry (`Registry::keyed_breaker` and its siblings) and the keyed
//! tables' `reconfigure`: every key retuned in place, the tables' bounds fixed, a key type
//! chosen once, and a keyed limiter's change atomic under concurrent decisions.
#![cfg(all(feature = "toml", feature = "tokio"))]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::time::Duration;

use proptest::prelude::*;
use tidewall::breaker::{CircuitBreaker, State};
use tidewall::bulkhead::Bulkhead;
use tidewall::config::{Config, KeyedTable, Problem, Registry};
use tidewall::rate::{KeyedRateLimiter, RateLimiter};
use tidewall::{Name, Rejected};

fn config(text: &str) -> Config {
    Config::from_toml(text).unwrap_or_else(|e| panic!("a valid configuration: {e}\n{text}"))
}

const HOSTS: &str = r#"
    [instances.hosts.breaker]
    consecutive_failures = 2
    [instances.hosts.bulkhead]
    max_concurrent = 1
    max_queue = 0
    [instances.hosts.rate_limit]
    count = 2
    period = "1s"
    [instances.hosts.keys]
    max_keys = 64
"#;

#[tokio::test(start_paused = true)]
async fn keyed_tables_are_made_once_with_the_instances_settings_and_bounds() {
    let registry = Registry::new(config(HOSTS)).unwrap();
    let breakers = registry.keyed_breaker::<String>("hosts").unwrap();
    let bulkheads = registry.keyed_bulkhead::<String>("hosts").unwrap();
    let limits = registry.keyed_rate_limiter::<String>("hosts").unwrap();
    assert_eq!(
        (breakers.max_keys(), bulkheads.max_keys(), limits.max_keys()),
        (64, 64, 64)
    );
    assert_eq!(breakers.idle_ttl(), Duration::from_secs(60));
    assert_eq!(
        (breakers.name(), bulkheads.name(), limits.name()),
        ("hosts", "hosts", "hosts")
    );
    let a = "a.example".to_owned();
    for _ in 0..2 {
        let _ = breakers.call(&a, || async { Err::<(), _>("down") }).await;
    }
    // The same table for the next caller with the same key type.
    let again = registry.keyed_breaker::<String>("hosts").unwrap();
    assert_eq!(again.state(&a), Some(State::Open));
    let _held = bulkheads.try_acquire(&a).unwrap();
    assert_eq!(
        registry
            .keyed_bulkhead::<String>("hosts")
            .unwrap()
            .try_acquire(&a)
            .unwrap_err(),
        Rejected::BulkheadFull
    );
    // Another key type is a typed error naming the one held.
    let wrong = registry.keyed_rate_limiter::<u64>("hosts").unwrap_err();
    assert_eq!(wrong.path(), "instances.hosts.rate_limit");
    assert!(
        matches!(wrong.problem(), Problem::KeyType(held) if held.contains("String")),
        "{wrong}"
    );
    limits.check_key(&a).unwrap();
    let tables = registry.keyed_tables();
    let summary = |policy: &str| {
        tables
            .iter()
            .find(|t| t.policy == policy)
            .map(|t: &KeyedTable| (t.name.clone(), t.keys, t.max_keys))
    };
    let hosts = Name::from("hosts".to_owned());
    for policy in ["keyed_breaker", "keyed_bulkhead", "keyed_rate"] {
        assert_eq!(summary(policy), Some((hosts.clone(), 1, 64)), "{policy}");
    }
}

/// A keyed instance builds no plain policy of its name up front: one would be listed (for a
/// health endpoint) and gauged as closed, idle and full for ever while its keys trip. Asked
/// for by name (a pipeline of the instance, say), the plain one is still made. (Audit s36.)
#[tokio::test(start_paused = true)]
async fn a_keyed_instance_lists_no_plain_policy_nobody_asked_for() {
    let registry = Registry::new(config(HOSTS)).unwrap();
    assert!(registry.breakers().is_empty());
    assert!(registry.bulkheads().is_empty());
    assert!(registry.rate_limiters().is_empty());
    let per_host = registry.keyed_breaker::<String>("hosts").unwrap();
    for _ in 0..2 {
        let _ = per_host
            .call(&"a.example".to_owned(), || async { Err::<(), _>("down") })
            .await;
    }
    assert_eq!(per_host.state(&"a.example".to_owned()), Some(State::Open));
    assert!(
        registry.breakers().is_empty(),
        "nothing says `hosts: closed`"
    );
    let plain = registry.breaker("hosts").unwrap();
    assert_eq!(plain.state(), State::Closed);
    assert_eq!(registry.breakers().len(), 1);
    let reload = registry.reload(config(HOSTS)).unwrap();
    assert_eq!(reload.built, 0);
}

#[tokio::test(start_paused = true)]
async fn a_reload_retunes_every_key_and_keeps_what_they_hold() {
    let registry = Registry::new(config(HOSTS)).unwrap();
    let breakers = registry.keyed_breaker::<&'static str>("hosts").unwrap();
    let bulkheads = registry.keyed_bulkhead::<&'static str>("hosts").unwrap();
    let limits = registry
        .keyed_rate_limiter::<&'static str>("hosts")
        .unwrap();
    let _ = breakers.call(&"a", || async { Err::<(), _>("down") }).await;
    let held = bulkheads.try_acquire(&"a").unwrap();
    limits.check_key_n(&"a", 2).unwrap();

    let reload = registry
        .reload(config(
            &HOSTS
                .replace("consecutive_failures = 2", "consecutive_failures = 1")
                .replace("max_concurrent = 1", "max_concurrent = 2")
                .replace("count = 2", "count = 4"),
        ))
        .unwrap();
    assert!(reload.reset.is_empty());
    // The breaker kept its failure, and one is now enough: judged at the reload.
    assert_eq!(breakers.state(&"a"), Some(State::Open));
    // A new key gets the new threshold too.
    let _ = breakers.call(&"b", || async { Err::<(), _>("down") }).await;
    assert_eq!(breakers.state(&"b"), Some(State::Open));
    // The held permit stays held, under the new size of 2.
    let second = bulkheads.try_acquire(&"a").unwrap();
    assert_eq!(
        bulkheads.try_acquire(&"a").unwrap_err(),
        Rejected::BulkheadFull
    );
    drop((held, second));
    // The 2 cells taken stay taken, as 2 of the new burst of 4.
    limits.check_key_n(&"a", 2).unwrap();
    assert!(limits.check_key(&"a").is_err());
    limits.check_key_n(&"c", 4).unwrap();
}

/// `Reload::reset`: "a keyed table's [name] when any of its keys' [breakers] was [reset]",
/// each name once.
#[tokio::test(start_paused = true)]
async fn a_reload_that_resets_a_keyed_tables_breakers_names_it_once() {
    let registry = Registry::new(config(HOSTS)).unwrap();
    let breakers = registry.keyed_breaker::<&'static str>("hosts").unwrap();
    for key in ["a", "b"] {
        for _ in 0..2 {
            let _ = breakers.call(&key, || async { Err::<(), _>("down") }).await;
        }
        assert_eq!(breakers.state(&key), Some(State::Open));
    }
    let reshaped = HOSTS.replace(
        "consecutive_failures = 2",
        "consecutive_failures = 2\nwindow_calls = 20",
    );
    let reload = registry.reload(config(&reshaped)).unwrap();
    assert_eq!(reload.reset, [Name::from_static("hosts")]);
    assert_eq!(breakers.state(&"a"), Some(State::Closed));
    assert_eq!(breakers.state(&"b"), Some(State::Closed));
    // The same shape again resets nothing.
    let reload = registry.reload(config(&reshaped)).unwrap();
    assert!(reload.reset.is_empty(), "{:?}", reload.reset);
    // With the plain breaker of the same instance reset too, the name is still there once.
    let _ = registry.breaker("hosts").unwrap();
    let reload = registry.reload(config(HOSTS)).unwrap();
    assert_eq!(reload.reset, [Name::from_static("hosts")]);
}

#[tokio::test(start_paused = true)]
async fn a_reload_that_changes_a_held_tables_bound_is_refused_whole() {
    let registry = Registry::new(config(HOSTS)).unwrap();
    let breakers = registry.keyed_breaker::<u32>("hosts").unwrap();
    let bulkheads = registry.bulkhead("hosts").unwrap();
    let changed = HOSTS
        .replace("max_keys = 64", "max_keys = 128")
        .replace("max_concurrent = 1", "max_concurrent = 9");
    let refused = registry.reload(config(&changed)).unwrap_err();
    assert_eq!(refused.path(), "instances.hosts.keys.max_keys");
    assert_eq!(refused.problem(), &Problem::Fixed);
    assert_eq!(bulkheads.capacity(), 1, "nothing was applied");
    assert_eq!(breakers.max_keys(), 64);
    // The breaker's idle_ttl is a bound too.
    let refused = registry
        .reload(config(&format!("{HOSTS}idle_ttl = \"5m\"\n")))
        .unwrap_err();
    assert_eq!(refused.path(), "instances.hosts.keys.idle_ttl");
    // Tables not held yet take any bound.
    let fresh = Registry::new(config(HOSTS)).unwrap();
    fresh.reload(config(&changed)).unwrap();
    assert_eq!(
        fresh.keyed_bulkhead::<u32>("hosts").unwrap().max_keys(),
        128
    );
}

#[test]
fn bad_key_tables_are_refused_at_their_keys() {
    let refused = Config::from_toml("[instances.a.keys]\nmax_keys = 0\n").unwrap_err();
    assert_eq!(refused.path(), "instances.a.keys.max_keys");
    let refused = Config::from_toml("[defaults.keys]\nmax_keys = 0\n").unwrap_err();
    assert_eq!(refused.path(), "defaults.keys.max_keys");
    let refused = Config::from_toml("[instances.a.keys]\nmax_key = 3\n").unwrap_err();
    assert!(refused.to_string().contains("max_key"), "{refused}");
}

#[tokio::test(start_paused = true)]
async fn keyed_breaker_reconfigure_resets_keys_whose_window_changes_shape() {
    let breakers = CircuitBreaker::builder()
        .consecutive_failures(1)
        .keyed()
        .build()
        .unwrap();
    for key in [1, 2, 3] {
        let _ = breakers.call(&key, || async { Err::<(), _>("down") }).await;
    }
    let resets = breakers
        .reconfigure(
            CircuitBreaker::builder()
                .consecutive_failures(1)
                .window(tidewall::breaker::Window::Count { calls: 7 }),
        )
        .unwrap();
    assert_eq!(resets, 3);
    assert!(
        [1, 2, 3]
            .iter()
            .all(|k| breakers.state(k) == Some(State::Closed))
    );
    assert_eq!(
        breakers.policy().window(),
        tidewall::breaker::Window::Count { calls: 7 }
    );
    // Refused settings change nothing.
    assert!(
        breakers
            .reconfigure(CircuitBreaker::builder().failure_rate(2.0))
            .is_err()
    );
    assert_eq!(
        breakers.policy().window(),
        tidewall::breaker::Window::Count { calls: 7 }
    );
}

#[test]
fn keyed_bulkhead_reconfigure_resizes_every_key() {
    let bulkheads = Bulkhead::builder(2)
        .reject_when_full()
        .keyed()
        .build()
        .unwrap();
    let a: Vec<_> = (0..2)
        .map(|_| bulkheads.try_acquire(&"a").unwrap())
        .collect();
    bulkheads
        .reconfigure(Bulkhead::builder(1).reject_when_full())
        .unwrap();
    assert_eq!(bulkheads.in_flight(&"a"), 2, "held permits stay held");
    assert!(bulkheads.try_acquire(&"a").is_err());
    drop(a);
    let one = bulkheads.try_acquire(&"a").unwrap();
    assert!(bulkheads.try_acquire(&"a").is_err(), "the new size is 1");
    drop(one);
    assert!(bulkheads.reconfigure(Bulkhead::builder(0)).is_err());
    assert!(bulkheads.try_acquire(&"z").is_ok());
}

proptest! {
    /// A key that took `taken` cells keeps them as `taken` cells under any new limit: it may
    /// take exactly what the new burst leaves, and a new key the whole new burst.
    #[test]
    fn a_keyed_limiter_keeps_each_keys_cells_across_reconfigure(
        old_count in 1_u32..1_000,
        old_period_ms in 1_u64..10_000,
        new_count in 1_u32..1_000,
        new_period_ms in 1_u64..10_000,
        taken_seed in any::<u32>(),
    ) {
        let clock = tidewall::testing::FakeClock::new();
        let limiter = KeyedRateLimiter::builder(old_count, Duration::from_millis(old_period_ms))
            .runtime(clock.clone())
            .build::<u8>()
            .unwrap();
        let taken = taken_seed % (old_count + 1);
        if taken > 0 {
            limiter.check_key_n(&1, taken).unwrap();
        }
        limiter
            .reconfigure(RateLimiter::builder(new_count, Duration::from_millis(new_period_ms)))
            .unwrap();
        let left = new_count.saturating_sub(taken);
        if left > 0 {
            prop_assert!(limiter.check_key_n(&1, left).is_ok(), "{left} of {new_count} left");
        }
        prop_assert!(limiter.check_key(&1).is_err(), "no more than {left}");
        prop_assert!(limiter.check_key_n(&2, new_count).is_ok());
        prop_assert_eq!(limiter.gcra(), RateLimiter::builder(new_count, Duration::from_millis(new_period_ms)).build().unwrap().gcra());
    }
}

/// Decisions on many keys from several threads while the limit changes back and forth: no
/// decision pairs one limit with the other's state, so within one instant of a frozen clock no
/// key is ever admitted more than the larger burst.
#[test]
fn a_keyed_limiter_reconfigure_is_atomic_under_concurrent_decisions() {
    let clock = tidewall::testing::FakeClock::new();
    let limiter = KeyedRateLimiter::builder(4, Duration::from_secs(1))
        .runtime(clock.clone())
        .max_keys(1_024)
        .build::<u32>()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let admitted: Arc<Vec<AtomicU64>> = Arc::new((0..64).map(|_| AtomicU64::new(0)).collect());
    let deciders: Vec<_> = (0..3)
        .map(|t| {
            let (limiter, stop, admitted) = (limiter.clone(), stop.clone(), admitted.clone());
            std::thread::spawn(move || {
                let mut i = t;
                // At least 10,000 decisions each, the changes running or not.
                for n in 0_u32.. {
                    if n >= 10_000 && stop.load(SeqCst) {
                        break;
                    }
                    let key = i % 64;
                    if limiter.check_key(&key).is_ok() {
                        admitted[key as usize].fetch_add(1, SeqCst);
                    }
                    i = i.wrapping_add(7);
                }
            })
        })
        .collect();
    for round in 0..2_000 {
        let count = if round % 2 == 0 { 8 } else { 4 };
        limiter
            .reconfigure(RateLimiter::builder(count, Duration::from_secs(1)))
            .unwrap();
    }
    stop.store(true, SeqCst);
    for decider in deciders {
        decider.join().unwrap();
    }
    // The clock never moved: each key was admitted at most the largest burst it ever saw,
    // since every change keeps the cells taken.
    for (key, n) in admitted.iter().enumerate() {
        let n = n.load(SeqCst);
        assert!(
            (4..=8).contains(&n),
            "key {key} admitted {n} cells in one instant"
        );
    }
}

proptest! {
    /// Changes back and forth between any two limits, at one frozen instant, never round a
    /// debt away: the time owed is rescaled up, never down, so a key (or the direct limiter)
    /// that owes part of a cell is never admitted a cell more than it was before the changes.
    #[test]
    fn flips_between_any_two_limits_never_round_cells_away(
        a_nanos in 1_u64..1_000,
        b_nanos in 1_000_u64..2_000_000_000,
        burst in 1_u32..64,
        taken_seed in any::<u32>(),
        paid_seed in any::<u64>(),
        flips in 1_usize..40,
    ) {
        let limit = |nanos: u64| RateLimiter::builder(1, Duration::from_nanos(nanos)).burst(burst);
        let clock = tidewall::testing::FakeClock::new();
        let keyed = limit(a_nanos).runtime(clock.clone()).keyed().build::<u8>().unwrap();
        let direct = limit(a_nanos).runtime(clock.clone()).build().unwrap();
        let taken = taken_seed % burst + 1;
        keyed.check_key_n(&1, taken).unwrap();
        direct.check_n(taken).unwrap();
        // Part of the debt paid off: what is left is rarely a whole number of cells.
        let debt = u64::from(taken) * a_nanos;
        clock.advance(Duration::from_nanos(paid_seed % debt));
        let owed_cells = (debt - paid_seed % debt).div_ceil(a_nanos);
        let left = burst - u32::try_from(owed_cells).unwrap();
        for flip in 0..flips {
            let nanos = if flip % 2 == 0 { b_nanos } else { a_nanos };
            keyed.reconfigure(limit(nanos)).unwrap();
            direct.reconfigure(limit(nanos)).unwrap();
        }
        prop_assert!(keyed.check_key_n(&1, left + 1).is_err(), "keyed: more than {} left", left);
        prop_assert!(direct.check_n(left + 1).is_err(), "direct: more than {} left", left);
    }
}

/// Reloads `registry` with `config` on a thread of its own, so a reload that waits for
/// itself fails the test instead of hanging it; returns the breakers it reset.
fn resets_on_a_thread(
    registry: &Arc<Registry<tidewall::testing::FakeClock>>,
    config: Config,
) -> Result<usize, tidewall::config::Invalid> {
    let (done, finished) = std::sync::mpsc::channel();
    let reloading = Arc::clone(registry);
    std::thread::spawn(move || {
        let reload = reloading.reload(config);
        let _ = done.send(reload.map(|r| r.reset.len()));
    });
    finished
        .recv_timeout(Duration::from_secs(60))
        .expect("the reload finishes: a listener of its own does not make it wait for itself")
}

/// A listener may look the registry up while a reload tells it of a reset: the reload
/// applies its plans with no map locked. (Before, a reset told under the breakers' lock
/// deadlocked a listener that listed the breakers.)
#[test]
fn a_listener_may_look_the_registry_up_during_a_reload() {
    use std::sync::OnceLock;
    use tidewall::telemetry::EventKind;

    let cell: Arc<OnceLock<Arc<Registry<tidewall::testing::FakeClock>>>> = Arc::default();
    let seen = Arc::new(AtomicU64::new(0));
    let (looked_up, heard) = (Arc::clone(&cell), Arc::clone(&seen));
    let text = |calls: u32| {
        format!("{HOSTS}[instances.hosts.breaker.window_calls]\n")
            .replace("[instances.hosts.breaker.window_calls]\n", "")
            .replace(
                "consecutive_failures = 2",
                &format!("consecutive_failures = 2\nwindow_calls = {calls}"),
            )
    };
    let registry = Registry::builder(config(&text(10)))
        .runtime(tidewall::testing::FakeClock::new())
        .on_event(move |event| {
            if matches!(event.kind, EventKind::StateChanged { .. }) {
                let registry = looked_up.get().expect("set before any reload");
                // Every kind of lookup, during the reload that caused the event.
                let listed = registry.breakers().len() + registry.pipelines().len();
                let _ = registry.keyed_breaker::<u8>("hosts").map(|t| t.len());
                let _ = registry.pipeline("hosts");
                heard.fetch_add(u64::try_from(listed).unwrap_or(0) + 1, SeqCst);
            }
        })
        .build()
        .unwrap();
    let registry = Arc::new(registry);
    assert!(cell.set(Arc::clone(&registry)).is_ok());
    registry.breaker("hosts").unwrap();
    let table = registry.keyed_breaker::<u8>("hosts").unwrap();
    let _ =
        futures_util::FutureExt::now_or_never(table.call(&1, || async { Err::<(), _>("down") }));
    // The window changes shape: the breaker and the key's breaker reset, each with its event.
    let reset = resets_on_a_thread(&registry, config(&text(20)));
    assert_eq!(reset, Ok(1));
    assert!(seen.load(SeqCst) >= 2, "both resets were heard");
}

/// A listener that reloads the registry while a reload tells it of a reset: its reload is
/// refused as `Reentrant` (it would wait for the reload it runs in), the reload in progress
/// finishes, and a reload from the listener of another registry still works.
#[test]
fn a_listener_reloading_the_registry_during_its_reload_is_refused_not_deadlocked() {
    use std::sync::OnceLock;
    use tidewall::telemetry::EventKind;

    type Shared = Arc<OnceLock<Arc<Registry<tidewall::testing::FakeClock>>>>;
    let text = |calls: u32| {
        format!("[instances.hosts.breaker]\nconsecutive_failures = 2\nwindow_calls = {calls}\n")
    };
    let (this, other): (Shared, Shared) = (Arc::default(), Arc::default());
    let answers = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (this_seen, other_seen, told) =
        (Arc::clone(&this), Arc::clone(&other), Arc::clone(&answers));
    let registry = Registry::builder(config(&text(10)))
        .runtime(tidewall::testing::FakeClock::new())
        .on_event(move |event| {
            if matches!(event.kind, EventKind::StateChanged { .. }) {
                let itself = this_seen.get().expect("set before any reload");
                let elsewhere = other_seen.get().expect("set before any reload");
                let mine = itself.reload(config(&text(30))).map(|r| r.retuned);
                let theirs = elsewhere.reload(config(&text(40))).map(|r| r.retuned);
                told.lock().unwrap().push((mine, theirs));
            }
        })
        .build()
        .unwrap();
    let registry = Arc::new(registry);
    let elsewhere = Arc::new(
        Registry::builder(config(&text(10)))
            .runtime(tidewall::testing::FakeClock::new())
            .build()
            .unwrap(),
    );
    assert!(this.set(Arc::clone(&registry)).is_ok());
    assert!(other.set(Arc::clone(&elsewhere)).is_ok());
    registry.breaker("hosts").unwrap();
    elsewhere.breaker("hosts").unwrap();

    // The window changes shape: the breaker resets, and its listener hears it.
    let reset = resets_on_a_thread(&registry, config(&text(20)));
    assert_eq!(reset, Ok(1));
    let answers = answers.lock().unwrap().clone();
    assert_eq!(answers.len(), 1, "one reset, heard once: {answers:?}");
    let (mine, theirs) = &answers[0];
    let refused = mine
        .as_ref()
        .expect_err("a reload from inside its own reload");
    assert_eq!(refused.problem(), &Problem::Reentrant);
    assert!(refused.to_string().contains("another task"), "{refused}");
    assert_eq!(theirs.as_ref().ok(), Some(&1), "another registry reloads");
    // The refused reload changed nothing: the first reload's window is in force.
    let window = |r: &Registry<_>| {
        r.config().instances["hosts"]
            .breaker
            .as_ref()
            .and_then(|b| b.window_calls)
    };
    assert_eq!(window(&registry), Some(20));
    assert_eq!(window(&elsewhere), Some(40));
    // And the registry reloads again from this thread.
    assert!(registry.reload(config(&text(30))).is_ok());
    assert_eq!(window(&registry), Some(30));
}
