#![cfg(feature = "toml")]
//! Hostile tests of `tidewall::config` and `tidewall::Name`, from the rustdoc alone: layering
//! per key over three layers, the layer and key every refusal names, syntax at every level,
//! extreme values, the registry's sharing, bounds, listing, virtual time and races, and printing
//! a configuration back to itself.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Barrier};
use std::task::{Context, Poll};
use std::time::Duration;

use tidewall::breaker::{CircuitBreaker, State, Window};
use tidewall::config::{
    BackoffKind, BreakerConfig, BudgetConfig, BulkheadConfig, Config, Invalid, JitterKind,
    Policies, Problem, RateLimitConfig, Registry, RetryConfig, Toggle,
};
use tidewall::rt::Clock;
use tidewall::testing::FakeClock;
use tidewall::{ConfigError, Jitter, Name, Rejected};
use tidewall_core::backoff::Schedule;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

const NS_MAX: &str = "18446744073709551615ns";

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn parse(text: &str) -> Config {
    Config::from_toml(text).unwrap_or_else(|e| {
        let shown: String = text.chars().take(600).collect();
        panic!("must be accepted: {e}\n---\n{shown}")
    })
}

fn invalid(text: &str) -> Invalid {
    match Config::from_toml(text) {
        Ok(config) => panic!("must be refused:\n{text}\n--- read as {config:?}"),
        Err(e) => e,
    }
}

fn syntax(text: &str) -> Invalid {
    let err = invalid(text);
    assert!(
        matches!(err.problem(), Problem::Syntax(_)),
        "a syntax error expected for:\n{text}\ngot {err:?}"
    );
    assert_eq!(err.path(), "", "a syntax error has an empty path: {err}");
    err
}

fn on(clock: &FakeClock, config: Config) -> Registry<FakeClock> {
    Registry::builder(config)
        .runtime(clock.clone())
        .build()
        .unwrap_or_else(|e| panic!("registry refused: {e}"))
}

fn names<T>(list: Vec<(Name, T)>) -> Vec<String> {
    list.into_iter()
        .map(|(n, _)| n.as_str().to_owned())
        .collect()
}

fn poll_once<F: Future>(fut: Pin<&mut F>) -> Poll<F::Output> {
    let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
    fut.poll(&mut cx)
}

/// Feeds outcomes (`F` failure, `S` success) and says whether the breaker opened.
fn trips<R: Clock>(breaker: &CircuitBreaker<R>, pattern: &str) -> bool {
    for c in pattern.chars() {
        let Ok(permit) = breaker.try_acquire() else {
            return true;
        };
        match c {
            'F' => permit.failure(),
            _ => permit.success(),
        }
    }
    breaker.state() == State::Open
}

/// Whether the dotted `path` names something (a key or a table) the TOML text really has.
fn is_set(text: &str, path: &str) -> bool {
    let table: toml::Table = toml::from_str(text).expect("the test's TOML");
    let mut value = toml::Value::Table(table);
    for seg in path.split('.') {
        match value.get(seg) {
            Some(v) => value = v.clone(),
            None => return false,
        }
    }
    true
}

/// The name serde gives a value (for enum spellings the docs do not print).
fn serde_name<T: serde::Serialize>(value: T) -> String {
    serde_json::to_value(value)
        .unwrap()
        .as_str()
        .expect("a unit variant serializes as a string")
        .to_owned()
}

// ---------------------------------------------------------------------------------------------
// Layering, per key
// ---------------------------------------------------------------------------------------------

// Module docs: "An instance's value for a key is its own, else its base's, else the defaults',
// else the policy builder's default." Bulkhead: capacity from the instance, max_queue from the
// base, max_wait from the defaults.
#[test]
fn bulkhead_keys_come_from_three_layers_each() {
    let config = parse(
        r#"
        [defaults.bulkhead]
        max_concurrent = 16
        max_wait = "250ms"
        [configs.tight.bulkhead]
        max_queue = 0
        [instances.a]
        base = "tight"
        [instances.a.bulkhead]
        max_concurrent = 2
        [instances.b.bulkhead]
        max_concurrent = 1
        "#,
    );
    let clock = FakeClock::new();
    let registry = on(&clock, config);

    let a = registry.bulkhead("a").unwrap();
    assert_eq!((a.name(), a.capacity()), ("a", 2), "capacity is a's own");
    let _p1 = a.try_acquire().unwrap();
    let _p2 = a.try_acquire().unwrap();
    let mut refused = Box::pin(a.acquire());
    assert!(
        matches!(
            poll_once(refused.as_mut()),
            Poll::Ready(Err(Rejected::BulkheadFull))
        ),
        "max_queue = 0 from the base: refused at once, no queueing"
    );

    // b: no base, so it queues (default max_queue = max_concurrent) for the defaults' 250 ms.
    let b = registry.bulkhead("b").unwrap();
    let held = b.try_acquire().unwrap();
    let mut waiting = Box::pin(b.acquire());
    assert!(poll_once(waiting.as_mut()).is_pending(), "b queues");
    clock.advance(ms(249));
    assert!(poll_once(waiting.as_mut()).is_pending(), "within max_wait");
    clock.advance(ms(1));
    assert!(
        matches!(poll_once(waiting.as_mut()), Poll::Ready(Err(_))),
        "max_wait = 250ms from the defaults ends the wait"
    );
    drop(held);
    assert_eq!(b.available(), b.capacity());
}

// Rate limit: count from the defaults, burst from the base, period from the instance.
#[test]
fn rate_limit_keys_come_from_three_layers_each() {
    let config = parse(
        r#"
        [defaults.rate_limit]
        count = 10
        period = "1s"
        [configs.bursty.rate_limit]
        burst = 3
        [instances.a]
        base = "bursty"
        [instances.a.rate_limit]
        period = "2s"
        "#,
    );
    let limiter = config
        .instance("a")
        .unwrap()
        .rate_limiter()
        .unwrap()
        .runtime(FakeClock::new())
        .build()
        .unwrap();
    assert_eq!(limiter.name(), "a");
    assert_eq!(limiter.gcra().interval_nanos(), 200_000_000, "2s / 10");
    assert_eq!(limiter.gcra().burst(), 3, "the base's burst");
    // An undeclared name: defaults alone, burst defaults to count.
    let other = config
        .instance("zzz")
        .unwrap()
        .rate_limiter()
        .unwrap()
        .runtime(FakeClock::new())
        .build()
        .unwrap();
    assert_eq!(
        (other.gcra().interval_nanos(), other.gcra().burst()),
        (100_000_000, 10)
    );
}

// Retry: "step ... default: initial_delay", "max_delay default 30 s", per key over three layers.
#[test]
fn retry_keys_come_from_three_layers_each() {
    let config = parse(
        r#"
        [defaults.retry]
        max_attempts = 7
        initial_delay = "10ms"
        max_retry_after = "5s"
        [configs.lin.retry]
        backoff = "linear"
        step = "5ms"
        jitter = "equal"
        [instances.a]
        base = "lin"
        [instances.a.retry]
        initial_delay = "20ms"
        max_delay = "1s"
        [instances.b.retry]
        backoff = "linear"
        initial_delay = "30ms"
        jitter = "none"
        "#,
    );
    let a = config.instance("a").unwrap();
    let backoff = a.backoff().unwrap();
    assert_eq!(
        backoff.schedule(),
        Schedule::Linear {
            initial: ms(20),
            step: ms(5)
        }
    );
    assert_eq!(backoff.max_attempts_total(), 7, "from the defaults");
    assert_eq!(backoff.max_delay_cap(), secs(1), "the instance's own");
    assert_eq!(backoff.jitter_mode(), Jitter::Equal, "the base's");
    assert_eq!(backoff.max_elapsed_budget(), None, "default: no limit");
    assert_eq!(a.max_retry_after(), secs(5), "from the defaults");

    let b = config.instance("b").unwrap().backoff().unwrap();
    assert_eq!(
        b.schedule(),
        Schedule::Linear {
            initial: ms(30),
            step: ms(30)
        },
        "a linear step defaults to initial_delay (the layered one)"
    );
    assert_eq!(b.jitter_mode(), Jitter::None);
    assert_eq!(b.max_delay_cap(), secs(30), "builder default");
}

// Budget: ratio from the defaults, window from the base, buckets from the instance.
#[test]
fn budget_keys_come_from_three_layers_each() {
    let config = parse(
        r#"
        [defaults.budget]
        ratio = 0.5
        [configs.long.budget]
        window = "20s"
        [instances.a]
        base = "long"
        [instances.a.budget]
        buckets = 4
        "#,
    );
    let policy = config.instance("a").unwrap().retry_budget().unwrap();
    assert_eq!(policy.ratio_ppm(), 500_000);
    assert_eq!(policy.window(), secs(20));
    assert_eq!(policy.buckets(), 4);
    let plain = config.instance("zzz").unwrap().retry_budget().unwrap();
    assert_eq!(
        (plain.ratio_ppm(), plain.window(), plain.buckets()),
        (500_000, secs(10), 10),
        "defaults over the builder's 10 s / 10 buckets"
    );
}

// Policies: deadline / attempt_timeout / min_attempt_time layered; "off" at a middle layer
// turns off a value below it, and a value above turns an "off" below back on.
#[test]
fn scalar_keys_and_off_toggles_layer_per_key() {
    let config = parse(
        r#"
        [defaults]
        deadline = "1s"
        attempt_timeout = "off"
        min_attempt_time = "10ms"
        [configs.quiet]
        deadline = "off"
        attempt_timeout = "100ms"
        [instances.a]
        base = "quiet"
        [instances.b]
        base = "quiet"
        deadline = "3s"
        attempt_timeout = "off"
        min_attempt_time = "1ms"
        [instances.c]
        "#,
    );
    let a = config.instance("a").unwrap();
    assert_eq!(a.deadline(), None, "the base's off over the defaults' 1s");
    assert_eq!(
        a.attempt_timeout(),
        Some(ms(100)),
        "the base's value over off"
    );
    assert_eq!(a.min_attempt_time(), ms(10));
    let b = config.instance("b").unwrap();
    assert_eq!(b.deadline(), Some(secs(3)), "own value over the base's off");
    assert_eq!(b.attempt_timeout(), None, "own off over the base's value");
    assert_eq!(b.min_attempt_time(), ms(1));
    let c = config.instance("c").unwrap();
    assert_eq!(
        (c.deadline(), c.attempt_timeout(), c.min_attempt_time()),
        (Some(secs(1)), None, ms(10))
    );
    let none = Config::default();
    let x = none.instance("x").unwrap();
    assert_eq!(x.name(), "x");
    assert_eq!(
        (
            x.deadline(),
            x.attempt_timeout(),
            x.min_attempt_time(),
            x.max_retry_after()
        ),
        (None, None, Duration::ZERO, secs(60)),
        "documented defaults: none, none, zero, 60 s"
    );
}

// "off" for breaker toggles at each layer: failure_rate and max_half_open_wait.
#[test]
fn breaker_off_toggles_override_per_layer() {
    let config = parse(
        r#"
        [defaults.breaker]
        failure_rate = "off"
        consecutive_failures = 3
        window_calls = 4
        minimum_calls = 4
        max_half_open_wait = "10s"
        [configs.nowait.breaker]
        max_half_open_wait = "off"
        [instances.rate]
        base = "nowait"
        [instances.rate.breaker]
        failure_rate = 0.5
        [instances.plain]
        breaker = {}
        [instances.rewait]
        base = "nowait"
        [instances.rewait.breaker]
        max_half_open_wait = "2s"
        "#,
    );
    let build = |name: &str| {
        config
            .instance(name)
            .unwrap()
            .breaker()
            .unwrap()
            .runtime(FakeClock::new())
            .build()
            .unwrap()
    };
    assert!(
        trips(&build("rate"), "FSFS"),
        "the instance's 0.5 turns the defaults' off rate on"
    );
    assert!(
        !trips(&build("plain"), "FSFS"),
        "the defaults' rate is off: 2 of 4 does not trip"
    );
    assert!(
        trips(&build("plain"), "FFF"),
        "consecutive failures still do"
    );
    assert_eq!(
        build("rate").policy().max_half_open_wait(),
        None,
        "base's off"
    );
    assert_eq!(build("plain").policy().max_half_open_wait(), Some(secs(10)));
    assert_eq!(
        build("rewait").policy().max_half_open_wait(),
        Some(secs(2)),
        "own value over the base's off"
    );
}

// A bulkhead max_wait = "off" at the instance over the defaults' value: the waiter waits for a
// slot however long it takes (virtual days).
#[test]
fn bulkhead_max_wait_off_over_a_lower_value_waits_indefinitely() {
    let config = parse(
        r#"
        [defaults.bulkhead]
        max_concurrent = 1
        max_wait = "100ms"
        [instances.a.bulkhead]
        max_wait = "off"
        "#,
    );
    let clock = FakeClock::new();
    let registry = on(&clock, config);
    let a = registry.bulkhead("a").unwrap();
    let held = a.try_acquire().unwrap();
    let mut waiting = Box::pin(a.acquire());
    assert!(poll_once(waiting.as_mut()).is_pending());
    clock.advance(Duration::from_secs(86_400 * 30));
    assert!(
        poll_once(waiting.as_mut()).is_pending(),
        "off: no wait limit"
    );
    drop(held);
    assert!(matches!(poll_once(waiting.as_mut()), Poll::Ready(Ok(_))));
}

// Registry docs: it "builds every policy an instance has (its own sections and its base's)";
// module docs: "the defaults only fill sections in", and `breaker = {}` is enough to have one.
#[test]
fn only_sections_the_instance_or_its_base_declares_are_prebuilt() {
    let config = parse(
        r#"
        [defaults]
        breaker = { consecutive_failures = 2, failure_rate = "off" }
        bulkhead = { max_concurrent = 4 }
        rate_limit = { count = 5, period = "1s" }
        budget = { ratio = 0.25 }
        [configs.guard]
        breaker = {}
        [instances.bare]
        deadline = "1s"
        [instances.all]
        breaker = {}
        bulkhead = {}
        rate_limit = {}
        budget = {}
        [instances.based]
        base = "guard"
        "#,
    );
    let clock = FakeClock::new();
    let registry = on(&clock, config);
    assert_eq!(names(registry.breakers()), ["all", "based"]);
    assert_eq!(names(registry.bulkheads()), ["all"]);
    assert_eq!(names(registry.rate_limiters()), ["all"]);
    assert_eq!(names(registry.retry_budgets()), ["all"]);

    // `{}` sections are filled in by the defaults.
    assert_eq!(registry.bulkhead("all").unwrap().capacity(), 4);
    assert_eq!(
        registry
            .rate_limiter("all")
            .unwrap()
            .gcra()
            .interval_nanos(),
        200_000_000
    );
    assert_eq!(
        registry.retry_budget("all").unwrap().policy().ratio_ppm(),
        250_000
    );
    assert!(trips(&registry.breaker("based").unwrap(), "FF"));

    // On demand: a declared instance without the section gets the defaults, and is kept.
    let bare = registry.breaker("bare").unwrap();
    assert_eq!(bare.name(), "bare");
    assert!(trips(&bare, "FF"), "the defaults' consecutive_failures = 2");
    assert_eq!(names(registry.breakers()), ["all", "bare", "based"]);
    assert_eq!(registry.bulkhead("bare").unwrap().capacity(), 4);
    assert_eq!(names(registry.bulkheads()), ["all", "bare"]);
    assert!(
        registry.rate_limiters().len() == 1 && registry.retry_budgets().len() == 1,
        "asking for one kind builds only that kind"
    );
}

// Sections docs: "A window is either window_calls or window with window_buckets"; instance docs:
// "The window of the topmost layer that gives one ... window_buckets (which alone may come from
// any layer)".
#[test]
fn the_topmost_window_wins_whole_across_layers() {
    let config = parse(
        r#"
        [defaults.breaker]
        window_calls = 50
        minimum_calls = 10
        [configs.timed.breaker]
        window = "30s"
        window_buckets = 6
        [configs.counted.breaker]
        window_calls = 20
        [configs.bucketed.breaker]
        window_buckets = 4

        [instances.time_over_count.breaker]
        window = "10s"
        [instances.count_over_time]
        base = "timed"
        [instances.count_over_time.breaker]
        window_calls = 30
        [instances.base_count]
        base = "counted"
        breaker = {}
        [instances.buckets_from_base]
        base = "bucketed"
        [instances.buckets_from_base.breaker]
        window = "8s"
        [instances.buckets_over_base_time]
        base = "timed"
        [instances.buckets_over_base_time.breaker]
        window_buckets = 3
        [instances.defaults_only]
        breaker = {}
        "#,
    );
    let window = |name: &str| {
        config
            .instance(name)
            .unwrap()
            .breaker()
            .unwrap()
            .runtime(FakeClock::new())
            .build()
            .unwrap()
            .policy()
            .window()
    };
    assert_eq!(
        window("time_over_count"),
        Window::Time {
            span: secs(10),
            buckets: 10
        }
    );
    assert_eq!(window("count_over_time"), Window::Count { calls: 30 });
    assert_eq!(window("base_count"), Window::Count { calls: 20 });
    assert_eq!(
        window("buckets_from_base"),
        Window::Time {
            span: secs(8),
            buckets: 4
        }
    );
    assert_eq!(
        window("buckets_over_base_time"),
        Window::Time {
            span: secs(30),
            buckets: 3
        }
    );
    assert_eq!(window("defaults_only"), Window::Count { calls: 50 });
}

// "setting both is an error" (Problem::NotHere) — at every layer, even one that a higher layer
// overrides, and in a config no instance uses.
#[test]
fn two_windows_in_one_layer_are_refused_at_every_layer() {
    for (text, path) in [
        (
            "[defaults.breaker]\nwindow = \"1s\"\nwindow_calls = 10\n[instances.a.breaker]\nwindow_calls = 5\nminimum_calls = 5\n",
            "defaults.breaker.window",
        ),
        (
            "[configs.unused.breaker]\nwindow_calls = 10\nwindow = \"1s\"\n",
            "configs.unused.breaker.window",
        ),
        (
            "[configs.c.breaker]\nwindow = \"1s\"\n[instances.a]\nbase = \"c\"\n[instances.a.breaker]\nwindow = \"2s\"\nwindow_calls = 7\nminimum_calls = 7\n",
            "instances.a.breaker.window",
        ),
    ] {
        let err = invalid(text);
        assert_eq!(err.path(), path, "for:\n{text}");
        assert!(matches!(err.problem(), Problem::NotHere(_)), "{err:?}");
        assert!(err.to_string().starts_with(&format!("{path}: ")), "{err}");
    }
}

// ---------------------------------------------------------------------------------------------
// Refusals and their key paths
// ---------------------------------------------------------------------------------------------

/// (section, body, the key the bad value is at). Every body is otherwise complete.
const RULES: &[(&str, &str, &str)] = &[
    ("breaker", "failure_rate = 1.5", "failure_rate"),
    ("breaker", "failure_rate = nan", "failure_rate"),
    ("breaker", "failure_rate = -inf", "failure_rate"),
    ("breaker", "failure_rate = 1e-7", "failure_rate"),
    ("breaker", "slow_call_rate = 2.0", "slow_call_rate"),
    ("breaker", "slow_call_rate = nan", "slow_call_rate"),
    ("breaker", "half_open_probes = 0", "half_open_probes"),
    ("breaker", "half_open_probes = 4096", "half_open_probes"),
    ("breaker", "window_calls = 0", "window_calls"),
    ("breaker", "window_calls = 1048576", "window_calls"),
    (
        "breaker",
        "window = \"10s\"\nwindow_buckets = 0",
        "window_buckets",
    ),
    (
        "breaker",
        "window = \"10s\"\nwindow_buckets = 1025",
        "window_buckets",
    ),
    ("breaker", "window = \"0s\"", "window"),
    ("breaker", "break_duration = \"0s\"", "break_duration"),
    ("bulkhead", "max_concurrent = 0", "max_concurrent"),
    (
        "bulkhead",
        "max_concurrent = 2\nmax_wait = \"0s\"",
        "max_wait",
    ),
    ("rate_limit", "count = 0\nperiod = \"1s\"", "count"),
    ("rate_limit", "count = 10\nperiod = \"0s\"", "period"),
    (
        "rate_limit",
        "count = 10\nperiod = \"1s\"\nburst = 0",
        "burst",
    ),
    ("rate_limit", "count = 700000000\nperiod = \"1s\"", "count"),
    ("retry", "max_attempts = 0", "max_attempts"),
    ("retry", "factor = 0.5", "factor"),
    ("retry", "factor = inf", "factor"),
    ("retry", "factor = nan", "factor"),
    ("budget", "ratio = 1000.5", "ratio"),
    ("budget", "ratio = nan", "ratio"),
    ("budget", "ratio = 1e-7", "ratio"),
    ("budget", "buckets = 0", "buckets"),
    ("budget", "buckets = 1025", "buckets"),
    ("budget", "window = \"0s\"", "window"),
];

// Invalid docs: "the key path of what is wrong ... and why"; validate: "the first problem found,
// with its key path". Every rule, at each of the three layers, names that layer and key; the
// message is "<path>: <rule>"; a registry refuses the same way.
#[test]
fn every_rule_names_the_layer_and_key_at_every_layer() {
    let mut failures = Vec::new();
    for &(section, body, key) in RULES {
        for layer in ["defaults", "configs.c", "instances.i"] {
            let text = format!("[{layer}.{section}]\n{body}\n");
            let expected = format!("{layer}.{section}.{key}");
            let err = match Config::from_toml(&text) {
                Ok(_) => {
                    failures.push(format!("accepted:\n{text}"));
                    continue;
                }
                Err(e) => e,
            };
            let Problem::Rule(rule) = err.problem() else {
                failures.push(format!("not a Rule for\n{text}: {err:?}"));
                continue;
            };
            if err.path() != expected {
                failures.push(format!(
                    "path {:?}, expected {expected:?} for\n{text}: {err}",
                    err.path()
                ));
            }
            let message = format!("{}: {}", err.path(), rule.rule());
            if err.to_string() != message {
                failures.push(format!("message {err} is not {message}"));
            }
            let mut config = Config::default();
            // The same values read without validation and validated in code, and through a
            // registry: the same refusal.
            if let Ok(read) = toml::from_str::<Config>(&text) {
                config = read;
            }
            if config.validate().as_ref().err() != Some(&err) {
                failures.push(format!("validate differs for\n{text}"));
            }
            match Registry::builder(config).runtime(FakeClock::new()).build() {
                Err(e) if e == err => {}
                other => {
                    failures.push(format!("registry gave {:?} for\n{text}", other.map(|_| ())))
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

// validate: "Checks every layer ... the first problem found"; the defaults and a config may
// only *leave out* keys that have no default. A value a builder refuses whatever the other keys
// are (a zero count, burst or period; a zero max_wait with a queue) is still a bad value in
// that layer when the layer leaves out count, period or max_concurrent: with them it is refused
// at that key (see every_rule_names_the_layer_and_key_at_every_layer), so leaving out another
// key must not hide it.
#[test]
fn a_bad_value_is_refused_even_in_a_layer_that_leaves_out_required_keys() {
    let mut failures = Vec::new();
    for (body, key) in [
        ("count = 0", "count"),
        ("burst = 0", "burst"),
        ("period = \"0s\"", "period"),
        ("count = 0\nburst = 0", "count"),
    ] {
        for layer in ["defaults", "configs.c"] {
            let text = format!("[{layer}.rate_limit]\n{body}\n");
            let path = format!("{layer}.rate_limit.{key}");
            match Config::from_toml(&text) {
                Err(e) if e.path() == path && matches!(e.problem(), Problem::Rule(_)) => {}
                other => failures.push(format!("{text:?}: {:?}", other.map(|_| ()))),
            }
        }
    }
    for layer in ["defaults", "configs.c"] {
        let text = format!("[{layer}.bulkhead]\nmax_queue = 3\nmax_wait = \"0s\"\n");
        match Config::from_toml(&text) {
            Err(e) if e.path() == format!("{layer}.bulkhead.max_wait") => {}
            other => failures.push(format!("{text:?}: {:?}", other.map(|_| ()))),
        }
    }
    assert!(
        failures.is_empty(),
        "accepted or misplaced:\n{}",
        failures.join("\n")
    );
}

// Invalid docs: "names the layer the bad value came from". When a value is bad only with one
// from another layer, the path must still be a key (or, for a conflict, a section) that the
// layer it names really sets.
#[test]
fn a_value_bad_only_in_combination_is_reported_where_it_is_set() {
    for text in [
        // minimum_calls from the base over a smaller window from the instance.
        "[configs.c.breaker]\nminimum_calls = 50\n[instances.a]\nbase = \"c\"\n[instances.a.breaker]\nwindow_calls = 20\n",
        // count from the defaults, period from the instance: too fine a rate.
        "[defaults.rate_limit]\ncount = 700000000\n[instances.a.rate_limit]\nperiod = \"1s\"\n",
        // initial_delay from the defaults above the instance's cap.
        "[defaults.retry]\ninitial_delay = \"5s\"\n[instances.a.retry]\nmax_delay = \"1s\"\n",
        // burst from the base that overflows with the instance's interval.
        "[configs.c.rate_limit]\nburst = 4294967295\n[instances.a]\nbase = \"c\"\n[instances.a.rate_limit]\ncount = 1\nperiod = \"10s\"\n",
        // no trip condition left once the instance turns the rate off.
        "[configs.c.breaker]\nminimum_calls = 5\n[instances.a]\nbase = \"c\"\n[instances.a.breaker]\nfailure_rate = \"off\"\n",
    ] {
        let text = text.replace(
            "\"DJ\"",
            &format!("\"{}\"", serde_name(BackoffKind::DecorrelatedJitter)),
        );
        let err = invalid(&text);
        assert!(matches!(err.problem(), Problem::Rule(_)), "{err:?}");
        assert!(
            is_set(&text, err.path()),
            "the path {:?} names nothing the file sets:\n{text}\n{err}",
            err.path()
        );
    }
}

// RetryConfig::jitter: "A layer that names `backoff = \"decorrelated_jitter\"` may not set it;
// one inherited from another layer is ignored by that schedule" (a contract changed on
// 2026-12-05: an inherited jitter used to be refused, so defaults with a jitter made decorrelated
// jitter unusable in every instance).
#[test]
fn a_jitter_is_refused_only_next_to_decorrelated_jitter() {
    let dj = serde_name(BackoffKind::DecorrelatedJitter);
    let inherited = format!(
        "[configs.c.retry]\njitter = \"equal\"\n[instances.a]\nbase = \"c\"\n[instances.a.retry]\nbackoff = \"{dj}\"\n"
    );
    let config = parse(&inherited);
    assert!(config.instance("a").unwrap().backoff().is_ok());
    let same_layer = format!("[instances.a.retry]\nbackoff = \"{dj}\"\njitter = \"none\"\n");
    let err = invalid(&same_layer);
    assert_eq!(err.path(), "instances.a.retry.jitter", "{err}");
    assert!(is_set(&same_layer, err.path()));
}

// validate: "The defaults and a config may leave out keys that have no default (an instance
// sets them)"; Registry::breaker: "Invalid when the layers for name do not make a valid breaker
// (only possible for a name the file does not declare)". So defaults that leave the trip
// condition (consecutive_failures, which has no default) to each instance are a valid file, and
// only an undeclared name, getting the defaults alone, can meet an invalid breaker.
#[test]
fn defaults_may_leave_the_trip_condition_to_each_instance() {
    let text = r#"
        [defaults.breaker]
        failure_rate = "off"
        [instances.a.breaker]
        consecutive_failures = 3
        [instances.b.breaker]
        consecutive_failures = 5
        "#;
    let config = parse(text);
    let registry = on(&FakeClock::new(), config);
    assert!(trips(&registry.breaker("a").unwrap(), "FFF"));
    let err = registry.breaker("undeclared").unwrap_err();
    assert!(matches!(err.problem(), Problem::Rule(_)), "{err:?}");
    assert!(err.path().starts_with("defaults.breaker"), "{err}");
}

// Problem::Missing: "A key that has no default is set in no layer"; placed "where the section
// is" (the topmost layer that has it).
#[test]
fn missing_keys_are_reported_where_the_section_is() {
    for (text, path) in [
        (
            "[instances.a]\nbulkhead = {}\n",
            "instances.a.bulkhead.max_concurrent",
        ),
        (
            "[instances.a.rate_limit]\nperiod = \"1s\"\n",
            "instances.a.rate_limit.count",
        ),
        (
            "[defaults.rate_limit]\ncount = 3\n[instances.a]\nrate_limit = {}\n",
            "instances.a.rate_limit.period",
        ),
        (
            "[configs.c.rate_limit]\ncount = 1\n[instances.a]\nbase = \"c\"\n",
            "configs.c.rate_limit.period",
        ),
    ] {
        let err = invalid(text);
        assert_eq!(err.problem(), &Problem::Missing, "{err:?} for\n{text}");
        assert_eq!(err.path(), path, "for\n{text}");
        assert_eq!(
            err.to_string(),
            format!("{path}: must be set (it has no default)")
        );
    }
    // Nothing anywhere: an on-demand policy is Missing too, and nothing is kept.
    let registry = on(&FakeClock::new(), Config::default());
    for err in [
        registry.bulkhead("x").unwrap_err(),
        registry.rate_limiter("x").unwrap_err(),
    ] {
        assert_eq!(err.problem(), &Problem::Missing, "{err}");
    }
    assert!(registry.bulkheads().is_empty() && registry.rate_limiters().is_empty());
    assert_eq!(
        Config::default()
            .instance("x")
            .unwrap()
            .bulkhead()
            .unwrap_err()
            .problem(),
        &Problem::Missing
    );
}

// Problem::UnknownBase / NotHere for `base`: `Config::instance` refuses an unknown base even on
// a configuration built in code and never validated; `base` is refused in `configs` too.
#[test]
fn unknown_and_misplaced_bases() {
    let mut config = Config::default();
    let mut a = Policies::default();
    a.base = Some("nope".into());
    config.instances.insert("a".into(), a);
    let err = config.instance("a").unwrap_err();
    assert_eq!(err.problem(), &Problem::UnknownBase("nope".into()));
    assert_eq!(err.path(), "instances.a.base");
    assert_eq!(config.validate().unwrap_err(), err);
    assert!(
        config.instance("undeclared").is_ok(),
        "a name the file does not declare gets the defaults alone"
    );

    // A base names a config, not an instance.
    let err = invalid("[instances.x]\ndeadline = \"1s\"\n[instances.a]\nbase = \"x\"\n");
    assert_eq!(err.problem(), &Problem::UnknownBase("x".into()));
    assert_eq!(err.path(), "instances.a.base");

    let err = invalid("[configs.d]\n[configs.c]\nbase = \"d\"\n");
    assert_eq!(err.path(), "configs.c.base");
    assert!(matches!(err.problem(), Problem::NotHere(_)), "{err:?}");
    assert_eq!(
        err.to_string(),
        "configs.c.base: only an instance has a base"
    );
}

// validate: "The first Invalid setting, in the order: base keys outside instances, the defaults,
// each config by name, each instance by name."
#[test]
fn validate_reports_problems_in_the_documented_order() {
    let mut parts = vec![
        ("configs.zz.base", "[configs.zz]\nbase = \"aa\"\n"),
        (
            "defaults.breaker.failure_rate",
            "[defaults.breaker]\nfailure_rate = 2.0\n",
        ),
        (
            "configs.aa.budget.ratio",
            "[configs.aa.budget]\nratio = -1.0\n",
        ),
        (
            "configs.bb.retry.max_attempts",
            "[configs.bb.retry]\nmax_attempts = 0\n",
        ),
        (
            "instances.m.bulkhead.max_concurrent",
            "[instances.m.bulkhead]\nmax_concurrent = 0\n",
        ),
        (
            "instances.z.breaker.half_open_probes",
            "[instances.z.breaker]\nhalf_open_probes = 0\n",
        ),
    ];
    while !parts.is_empty() {
        // Written in reverse, so file order cannot be what orders them.
        let text: String = parts.iter().rev().map(|(_, t)| *t).collect();
        let err = invalid(&text);
        assert_eq!(err.path(), parts[0].0, "first of:\n{text}");
        parts.remove(0);
    }
}

// Problem::Syntax: "bad syntax, an unknown key, a value of the wrong type; the parser's message,
// which says where"; path "empty for a syntax error"; from_toml: "with the parser's line and
// column". Unknown keys anywhere, wrong types, negative and huge integers.
#[test]
fn syntax_errors_anywhere_have_an_empty_path_and_a_line() {
    let cases: &[&str] = &[
        "bogus = 1\n",
        "[defaults]\nbogus = 1\n",
        "[configs.c]\nbogus = 1\n",
        "[instances.a]\nbogus = 1\n",
        "[instances.a.breaker]\nwindow_bucket = 3\n",
        "[defaults.bulkhead]\nmax_queues = 1\n",
        "[configs.c.rate_limit]\nrate = 1\n",
        "[instances.a.retry]\nmax_retries = 1\n",
        "[instances.a.budget]\nmin_per_sec = 1\n",
        "[instances.a.timeout]\n",
        // wrong types
        "[instances.a.bulkhead]\nmax_concurrent = \"4\"\n",
        "[instances.a.breaker]\nfailure_rate = true\n",
        "[instances.a]\ndeadline = 5\n",
        "[instances.a]\ndeadline = 07:32:00\n",
        "[instances.a.breaker]\nwindow_calls = 1.5\n",
        "[instances.a.retry]\nbackoff = 3\n",
        "[instances.a.retry]\njitter = \"random\"\n",
        "[instances.a]\nbase = 5\n",
        "[instances.a]\nbreaker = 5\n",
        "[instances.a]\nbreaker = \"off\"\n",
        "instances = 3\n",
        "[[instances.a]]\n",
        "[instances]\na = [1]\n",
        "[instances.a.breaker.failure_rate]\n",
        "instances.a.breaker.failure_rate.x = 1\n",
        "instances.a.b.c.d = 1\n",
        // "off" where a setting cannot be turned off
        "[instances.a]\nmin_attempt_time = \"off\"\n",
        "[instances.a.breaker]\nbreak_duration = \"off\"\n",
        "[instances.a.breaker]\nwindow = \"off\"\n",
        "[instances.a.rate_limit]\nperiod = \"off\"\n",
        "[instances.a.retry]\nmax_delay = \"off\"\n",
        // negative and huge integers
        "[instances.a.breaker]\nwindow_calls = -1\n",
        "[instances.a.rate_limit]\ncount = -5\nperiod = \"1s\"\n",
        "[instances.a.budget]\nmin_per_second = -1\n",
        "[instances.a.rate_limit]\ncount = 4294967296\nperiod = \"1s\"\n",
        "[instances.a.breaker]\nconsecutive_failures = 99999999999999999999\n",
        "[instances.a.bulkhead]\nmax_concurrent = -9223372036854775808\n",
        // duplicate keys, unclosed things
        "[instances.a]\ndeadline = \"1s\"\ndeadline = \"2s\"\n",
        "[instances.a]\ndeadline = \"1s\n",
    ];
    for text in cases {
        // Put the fault on line 4, to see that the line is said.
        let padded = format!("# one\n\n# three\n{text}");
        let err = syntax(&padded);
        let message = err.to_string();
        assert!(
            ["line 4", "line 5", "line 6"]
                .iter()
                .any(|l| message.contains(l)),
            "the message says where for:\n{padded}\n{message}"
        );
    }
}

// tidewall_core::duration: "no months or years", "no bare numbers", "a fraction finer than a
// nanosecond (\"0.5ns\") and a sum above u64::MAX nanoseconds ... are errors, never rounded".
#[test]
fn bad_durations_are_syntax_errors_with_the_grammars_reason() {
    for (value, reason) in [
        ("5", "a number without a unit"),
        ("1y", "an unknown unit"),
        ("0.5ns", "finer than a nanosecond"),
        ("1.0000000001s", "finer than a nanosecond"),
        ("600000d", "larger than u64::MAX nanoseconds"),
        ("18446744073709551616ns", "larger than u64::MAX nanoseconds"),
        ("213504d", "larger than u64::MAX nanoseconds"),
        ("213503d 1d", "larger than u64::MAX nanoseconds"),
        ("", "an empty duration"),
        ("   ", "an empty duration"),
        ("-5s", "not a duration"),
        ("5s,", "not a duration"),
        ("of", "not a duration"),
    ] {
        for key in [
            "[instances.a]\ndeadline",
            "[instances.a]\nmin_attempt_time",
            "[defaults.breaker]\nbreak_duration",
            "[configs.c.bulkhead]\nmax_wait",
            "[instances.a.retry]\ninitial_delay",
            "[instances.a.budget]\nwindow",
        ] {
            let text = format!("{key} = \"{value}\"\n");
            let err = syntax(&text);
            assert!(
                err.to_string().contains(reason),
                "{reason:?} not said for {text:?}: {err}"
            );
        }
    }
}

// The whole documented grammar is accepted, exactly.
#[test]
fn good_durations_read_exactly() {
    for (value, expected) in [
        ("250ms", ms(250)),
        ("5s", secs(5)),
        ("1h 30m", secs(5400)),
        ("1h30m", secs(5400)),
        ("1.5s", ms(1500)),
        ("0", Duration::ZERO),
        ("0s", Duration::ZERO),
        ("250us", Duration::from_micros(250)),
        ("250µs", Duration::from_micros(250)),
        ("2min", secs(120)),
        ("1d", secs(86_400)),
        ("1ns", Duration::from_nanos(1)),
        ("1.000000001s", Duration::from_nanos(1_000_000_001)),
        (NS_MAX, Duration::from_nanos(u64::MAX)),
        ("213503d", secs(213_503 * 86_400)),
    ] {
        let text =
            format!("[instances.a]\ndeadline = \"{value}\"\nmin_attempt_time = \"{value}\"\n");
        let config: Config = toml::from_str(&text).unwrap_or_else(|e| panic!("{value}: {e}"));
        let a = &config.instances["a"];
        assert_eq!(a.deadline, Some(Toggle::On(expected)), "{value}");
        assert_eq!(a.min_attempt_time, Some(expected), "{value}");
    }
}

// Toggle<f64> docs: "a number, or \"off\"": a TOML integer is a number. Plain f64 keys too.
#[test]
fn integers_are_numbers_for_float_keys() {
    let config = parse(
        r#"
        [instances.a.breaker]
        failure_rate = 1
        slow_call_rate = 1
        [instances.a.retry]
        factor = 3
        [instances.a.budget]
        ratio = 1
        "#,
    );
    let a = &config.instances["a"];
    let breaker = a.breaker.as_ref().unwrap();
    assert_eq!(breaker.failure_rate, Some(Toggle::On(1.0)));
    assert_eq!(breaker.slow_call_rate, Some(1.0));
    assert_eq!(a.retry.as_ref().unwrap().factor, Some(3.0));
    assert_eq!(a.budget.as_ref().unwrap().ratio, Some(1.0));
    assert_eq!(
        config.instance("a").unwrap().backoff().unwrap().schedule(),
        Schedule::Exponential {
            initial: ms(100),
            factor: 3.0
        }
    );
}

// NaN and infinities written as TOML literals reach the builders' rules (NotFinite), never a
// panic or a silent clamp; "nothing is clamped or rounded".
#[test]
fn toml_nan_and_inf_are_refused_by_rule() {
    for (text, path) in [
        (
            "[instances.a.breaker]\nfailure_rate = nan\n",
            "instances.a.breaker.failure_rate",
        ),
        (
            "[instances.a.breaker]\nfailure_rate = +inf\n",
            "instances.a.breaker.failure_rate",
        ),
        ("[defaults.budget]\nratio = inf\n", "defaults.budget.ratio"),
        (
            "[configs.c.retry]\nfactor = -nan\n",
            "configs.c.retry.factor",
        ),
    ] {
        let err = invalid(text);
        assert_eq!(err.path(), path);
        assert!(
            matches!(
                err.problem(),
                Problem::Rule(ConfigError::NotFinite { .. } | ConfigError::OutOfRange { .. })
            ),
            "{err:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Extremes
// ---------------------------------------------------------------------------------------------

// u32::MAX: taken exactly where the builders allow it, refused at its own key where the docs
// bound it (probes at 4095, windows at 1,048,575 calls / 1024 buckets).
#[test]
fn u32_max_values_are_taken_or_refused_at_their_key() {
    let config = parse(
        r#"
        [instances.a.rate_limit]
        count = 4294967295
        period = "4294967295s"
        [instances.a.retry]
        max_attempts = 4294967295
        backoff = "constant"
        [instances.a.budget]
        min_per_second = 4294967295
        [instances.a.breaker]
        consecutive_failures = 4294967295
        minimum_calls = 4294967295
        "#,
    );
    let clock = FakeClock::new();
    let registry = on(&clock, config.clone());
    let limiter = registry.rate_limiter("a").unwrap();
    assert_eq!(limiter.gcra().burst(), u32::MAX, "burst defaults to count");
    assert_eq!(limiter.gcra().interval_nanos(), 1_000_000_000);
    assert_eq!(
        config
            .instance("a")
            .unwrap()
            .backoff()
            .unwrap()
            .max_attempts_total(),
        u32::MAX
    );
    registry.retry_budget("a").unwrap();
    registry.breaker("a").unwrap();

    for (section, body, key) in [
        (
            "breaker",
            "half_open_probes = 4294967295",
            "half_open_probes",
        ),
        ("breaker", "window_calls = 4294967295", "window_calls"),
        (
            "breaker",
            "window = \"1h\"\nwindow_buckets = 4294967295",
            "window_buckets",
        ),
        ("budget", "buckets = 4294967295", "buckets"),
    ] {
        let text = format!("[instances.a.{section}]\n{body}\n");
        let err = invalid(&text);
        assert!(matches!(err.problem(), Problem::Rule(_)), "{err:?}");
        assert_eq!(err.path(), format!("instances.a.{section}.{key}"));
    }
}

// BulkheadBuilder::build documents only Zero / zero max_wait / DurationOverflow refusals: the
// largest integer TOML can write is a capacity like any other, and prints back.
#[test]
fn the_largest_toml_integer_is_a_bulkhead_capacity() {
    let text = "[instances.a.bulkhead]\nmax_concurrent = 9223372036854775807\nmax_queue = 9223372036854775807\n";
    let config = parse(text);
    let registry = on(&FakeClock::new(), config.clone());
    let bulkhead = registry.bulkhead("a").unwrap();
    let big = usize::try_from(i64::MAX).unwrap();
    assert_eq!(bulkhead.capacity(), big);
    assert_eq!(bulkhead.available(), big);
    let printed = toml::to_string(&config).unwrap();
    assert_eq!(parse(&printed), config);
}

fn usize_bulkhead(max_concurrent: usize, max_queue: usize) -> Config {
    let mut section = BulkheadConfig::default();
    section.max_concurrent = Some(max_concurrent);
    section.max_queue = Some(max_queue);
    section.max_wait = Some(Toggle::Off);
    let mut config = Config::default();
    let mut a = Policies::default();
    a.bulkhead = Some(section);
    config.instances.insert("a".into(), a);
    config
}

// usize::MAX cannot be written in TOML, but a configuration built in code may hold it, and
// JSON carries it back and forth exactly.
#[test]
fn usize_max_values_round_trip_through_json() {
    let config = usize_bulkhead(usize::MAX, usize::MAX);
    let json = serde_json::to_string(&config).unwrap();
    assert_eq!(serde_json::from_str::<Config>(&json).unwrap(), config);
}

// BulkheadBuilder::build documents its refusals as: Zero for max_concurrent == 0, a zero
// max_wait with a non-empty queue, DurationOverflow for a max_wait beyond u64 ns. A capacity or
// queue of usize::MAX is none of these, so a configuration holding them must validate and
// build; if refused, at least the refusal must be at its key.
#[test]
fn bulkhead_capacity_is_valid_up_to_isize_max_and_refused_beyond() {
    // BulkheadBuilder::build: OutOfRange for a max_concurrent above isize::MAX (a live
    // shrink may leave the permit count below zero, so it is signed); max_queue has no bound.
    let queue = usize_bulkhead(1, usize::MAX);
    assert_eq!(queue.validate(), Ok(()), "max_queue = usize::MAX");
    let largest = isize::MAX.unsigned_abs();
    let registry = on(&FakeClock::new(), usize_bulkhead(largest, 0));
    assert_eq!(registry.bulkhead("a").unwrap().capacity(), largest);
    for too_many in [largest + 1, usize::MAX] {
        let err = usize_bulkhead(too_many, 0).validate().unwrap_err();
        assert_eq!(err.path(), "instances.a.bulkhead.max_concurrent");
        assert!(
            matches!(
                err.problem(),
                Problem::Rule(tidewall::ConfigError::OutOfRange { .. })
            ),
            "{err}"
        );
    }
}

// Durations at exactly u64::MAX nanoseconds: the builders refuse only durations *beyond*
// u64::MAX ns for bulkhead max_wait and retry delays, so these must be accepted; anything else
// near the top is either accepted or refused at its own key, never a panic.
#[test]
fn durations_at_u64_max_nanoseconds() {
    let text = format!(
        "[instances.a.bulkhead]\nmax_concurrent = 1\nmax_wait = \"{NS_MAX}\"\n[instances.a.retry]\nbackoff = \"constant\"\ninitial_delay = \"{NS_MAX}\"\nmax_delay = \"{NS_MAX}\"\n"
    );
    let config = parse(&text);
    let a = config.instance("a").unwrap();
    assert_eq!(
        a.backoff().unwrap().max_delay_cap(),
        Duration::from_nanos(u64::MAX)
    );
    on(&FakeClock::new(), config.clone()).bulkhead("a").unwrap();

    // Keys outside sections: a deadline of u64::MAX ns is read exactly, or refused at its key.
    for key in ["deadline", "attempt_timeout", "min_attempt_time"] {
        let text = format!("[instances.a]\n{key} = \"{NS_MAX}\"\n");
        match Config::from_toml(&text) {
            Ok(config) => {
                let a = config.instance("a").unwrap();
                let got = match key {
                    "deadline" => a.deadline(),
                    "attempt_timeout" => a.attempt_timeout(),
                    _ => Some(a.min_attempt_time()),
                };
                assert_eq!(got, Some(Duration::from_nanos(u64::MAX)), "{key}");
            }
            Err(err) => assert_eq!(err.path(), format!("instances.a.{key}"), "{err}"),
        }
    }

    for (section, body, keys) in [
        (
            "breaker",
            format!("break_duration = \"{NS_MAX}\""),
            &["break_duration"][..],
        ),
        (
            "breaker",
            format!("max_half_open_wait = \"{NS_MAX}\""),
            &["max_half_open_wait"],
        ),
        (
            "breaker",
            format!("max_open_hint = \"{NS_MAX}\""),
            &["max_open_hint"],
        ),
        (
            "breaker",
            format!("slow_call_rate = 0.5\nslow_call_threshold = \"{NS_MAX}\""),
            &["slow_call_threshold"],
        ),
        (
            "breaker",
            format!("window = \"{NS_MAX}\""),
            &["window", "window_buckets"],
        ),
        (
            "rate_limit",
            format!("count = 1\nperiod = \"{NS_MAX}\""),
            &["period", "count", "burst"],
        ),
        (
            "rate_limit",
            format!("count = 1\nperiod = \"1s\"\njitter = \"{NS_MAX}\""),
            &["jitter"],
        ),
        (
            "retry",
            format!("max_elapsed = \"{NS_MAX}\""),
            &["max_elapsed"],
        ),
        (
            "budget",
            format!("window = \"{NS_MAX}\""),
            &["window", "buckets"],
        ),
    ] {
        let text = format!("[instances.a.{section}]\n{body}\n");
        match Config::from_toml(&text) {
            Ok(config) => {
                // Valid: every policy it has builds on a registry.
                on(&FakeClock::new(), config);
            }
            Err(err) => {
                assert!(matches!(err.problem(), Problem::Rule(_)), "{err:?}");
                assert!(
                    keys.iter()
                        .any(|k| err.path() == format!("instances.a.{section}.{k}")),
                    "refused at {:?} for\n{text}",
                    err.path()
                );
            }
        }
    }
    // One interval of u64::MAX ns: "two intervals ... beyond u64::MAX nanoseconds" is refused.
    let err = invalid(&format!(
        "[instances.a.rate_limit]\ncount = 1\nperiod = \"{NS_MAX}\"\n"
    ));
    assert!(
        matches!(
            err.problem(),
            Problem::Rule(ConfigError::DurationOverflow { .. })
        ),
        "{err:?}"
    );
}

// "An empty file": the default configuration, and every policy the builders can make without
// a required key comes out with the documented defaults.
#[test]
fn an_empty_file_is_the_default_configuration() {
    for text in [
        "",
        "\n\n",
        "# nothing here\n",
        "[defaults]\n[configs]\n[instances]\n",
    ] {
        assert_eq!(parse(text), Config::default(), "{text:?}");
    }
    let registry = on(&FakeClock::new(), Config::default());
    assert!(registry.breakers().is_empty() && registry.retry_budgets().is_empty());
    let breaker = registry.breaker("x").unwrap();
    let policy = breaker.policy();
    assert_eq!(policy.window(), Window::Count { calls: 100 });
    assert_eq!(policy.half_open_probes(), 1);
    assert_eq!(policy.max_half_open_wait(), Some(secs(60)));
    let budget = registry.retry_budget("x").unwrap();
    assert_eq!(
        (
            budget.policy().ratio_ppm(),
            budget.policy().window(),
            budget.policy().buckets()
        ),
        (200_000, secs(10), 10)
    );
    let backoff = Config::default().instance("x").unwrap().backoff().unwrap();
    assert_eq!(
        backoff.schedule(),
        Schedule::Exponential {
            initial: ms(100),
            factor: 2.0
        }
    );
    assert_eq!(backoff.max_attempts_total(), 4);
    assert_eq!(backoff.max_delay_cap(), secs(30));
    assert_eq!(backoff.jitter_mode(), Jitter::Full);
}

// RetryConfig docs: "jitter ... (default full; not with decorrelated jitter)": a decorrelated
// schedule with no jitter key must not get the default jitter forced on it (that would be the
// builder's Conflict).
#[test]
fn decorrelated_jitter_without_a_jitter_key_builds() {
    let dj = serde_name(BackoffKind::DecorrelatedJitter);
    let config = parse(&format!(
        "[defaults.retry]\ninitial_delay = \"10ms\"\n[instances.a.retry]\nbackoff = \"{dj}\"\n"
    ));
    assert_eq!(
        config.instance("a").unwrap().backoff().unwrap().schedule(),
        Schedule::DecorrelatedJitter { initial: ms(10) }
    );
    // With a jitter key in the same layer it is the builder's conflict, at that section.
    let err = invalid(&format!(
        "[instances.a.retry]\nbackoff = \"{dj}\"\njitter = \"none\"\n"
    ));
    assert!(err.path().starts_with("instances.a.retry"), "{err}");
}

// Empty, unicode and dotted instance names: names are text like any other.
#[test]
fn empty_unicode_and_dotted_instance_names() {
    let config = parse(
        r#"
        [instances.""]
        breaker = {}
        [instances."支払い".bulkhead]
        max_concurrent = 2
        [instances."with space"]
        breaker = {}
        [instances."a.b"]
        breaker = {}
        [instances."🦀"]
        breaker = {}
        "#,
    );
    let registry = on(&FakeClock::new(), config);
    let mut expected = vec!["", "a.b", "with space", "🦀"];
    expected.sort_unstable();
    assert_eq!(names(registry.breakers()), expected);
    assert_eq!(registry.breaker("").unwrap().name(), "");
    let pay = registry.bulkhead("支払い").unwrap();
    assert_eq!((pay.name(), pay.capacity()), ("支払い", 2));
    assert_eq!(names(registry.bulkheads()), ["支払い"]);

    let err = invalid("[instances.\"支払い\".breaker]\nfailure_rate = 9.0\n");
    assert!(err.path().contains("支払い"), "{err}");
    assert!(err.path().ends_with("breaker.failure_rate"), "{err}");
    let err = invalid("[instances.\"\".breaker]\nfailure_rate = 9.0\n");
    assert!(err.path().starts_with("instances."), "{err}");
    assert!(err.path().ends_with("breaker.failure_rate"), "{err}");
}

// Thousands of instances in one file: all read, all pre-built, each with its own settings, in
// name order; and the default bound (10,000) is exact.
#[test]
fn thousands_of_instances() {
    use std::fmt::Write as _;
    let mut text =
        String::from("[defaults.breaker]\nfailure_rate = \"off\"\nconsecutive_failures = 100\n");
    for i in 0..3000u32 {
        let _ = write!(
            text,
            "[instances.i{i:04}.breaker]\nconsecutive_failures = {}\n",
            i % 7 + 1
        );
    }
    let config = parse(&text);
    assert_eq!(config.instances.len(), 3000);
    let registry = on(&FakeClock::new(), config);
    let listed = registry.breakers();
    assert_eq!(listed.len(), 3000);
    for (i, (name, breaker)) in listed.iter().enumerate() {
        assert_eq!(name.as_str(), format!("i{i:04}"));
        assert_eq!(breaker.name(), name.as_str());
    }
    let i13 = registry.breaker("i0013").unwrap(); // 13 % 7 + 1 = 7
    assert!(!trips(&i13, "FFFFFF"));
    assert!(trips(&i13, "F"));

    let mut at_limit = Config::default();
    for i in 0..10_000 {
        at_limit
            .instances
            .insert(format!("n{i}"), Policies::default());
    }
    Registry::builder(at_limit.clone())
        .runtime(FakeClock::new())
        .build()
        .expect("10,000 declared instances fit the default bound");
    at_limit
        .instances
        .insert("one more".into(), Policies::default());
    let err = Registry::builder(at_limit)
        .runtime(FakeClock::new())
        .build()
        .unwrap_err();
    assert_eq!(err.problem(), &Problem::Full { max: 10_000 });
}

// Dotted keys, inline tables and tables all spell the same configuration.
#[test]
fn dotted_keys_inline_tables_and_tables_are_the_same() {
    let tables = parse(
        "[defaults.bulkhead]\nmax_concurrent = 3\n[instances.a.breaker]\nconsecutive_failures = 2\nfailure_rate = \"off\"\n[instances.a]\ndeadline = \"1s\"\n",
    );
    let dotted = parse(
        "defaults.bulkhead.max_concurrent = 3\ninstances.a.breaker.consecutive_failures = 2\ninstances.a.breaker.failure_rate = \"off\"\ninstances.a.deadline = \"1s\"\n",
    );
    let inline = parse(
        "defaults = { bulkhead = { max_concurrent = 3 } }\ninstances = { a = { deadline = \"1s\", breaker = { consecutive_failures = 2, failure_rate = \"off\" } } }\n",
    );
    assert_eq!(tables, dotted);
    assert_eq!(tables, inline);
}

// ---------------------------------------------------------------------------------------------
// The registry
// ---------------------------------------------------------------------------------------------

// "Policies are handles to shared state: a breaker got twice is one breaker" — for every kind,
// declared or made on demand, and the listing hands out the same shared policies.
#[test]
fn every_kind_is_one_shared_policy_per_name() {
    let config = parse(
        r#"
        [defaults]
        breaker = { failure_rate = "off", consecutive_failures = 2 }
        bulkhead = { max_concurrent = 2, max_queue = 0 }
        rate_limit = { count = 1, period = "1s", burst = 2 }
        budget = { ratio = 0.5, min_per_second = 0 }
        [instances.d]
        breaker = {}
        bulkhead = {}
        rate_limit = {}
        budget = {}
        "#,
    );
    let clock = FakeClock::new();
    let registry = on(&clock, config);
    for name in ["d", "on-demand"] {
        let b1 = registry.breaker(name).unwrap();
        b1.try_acquire().unwrap().failure();
        registry
            .breaker(name)
            .unwrap()
            .try_acquire()
            .unwrap()
            .failure();
        assert_eq!(b1.state(), State::Open, "{name}: one breaker");
        let listed = registry
            .breakers()
            .into_iter()
            .find(|(n, _)| n == name)
            .unwrap()
            .1;
        assert_eq!(listed.state(), State::Open, "{name}: the listing shares it");

        let k1 = registry.bulkhead(name).unwrap();
        let _p = k1.try_acquire_owned().unwrap();
        let _q = registry
            .bulkhead(name)
            .unwrap()
            .try_acquire_owned()
            .unwrap();
        assert_eq!(k1.available(), 0, "{name}: one bulkhead");
        assert_eq!(
            registry.bulkhead(name).unwrap().try_acquire().unwrap_err(),
            Rejected::BulkheadFull
        );

        registry.rate_limiter(name).unwrap().check().unwrap();
        registry.rate_limiter(name).unwrap().check().unwrap();
        assert!(
            matches!(
                registry.rate_limiter(name).unwrap().check(),
                Err(Rejected::RateLimited { .. })
            ),
            "{name}: one limiter, its burst of 2 spent through two handles"
        );

        let now = clock.now();
        let budget = registry.retry_budget(name).unwrap();
        budget.deposit(now);
        budget.deposit(now);
        let other = registry.retry_budget(name).unwrap();
        assert!(
            other.try_withdraw(now),
            "{name}: deposits seen by another handle"
        );
        assert!(!budget.try_withdraw(now), "{name}: the withdrawal too");
    }
}

// RegistryBuilder::max_instances: "The most policies of each kind the registry holds; the
// declared instances count, and a name asked for beyond it gets Problem::Full."
#[test]
fn max_instances_is_exact_per_kind_including_zero() {
    let config = parse(
        r#"
        [defaults.bulkhead]
        max_concurrent = 1
        [instances.a]
        breaker = {}
        [instances.b]
        breaker = {}
        [instances.c]
        breaker = {}
        "#,
    );
    let registry = Registry::builder(config.clone())
        .runtime(FakeClock::new())
        .max_instances(3)
        .build()
        .expect("exactly at the limit");
    assert_eq!(
        registry.breaker("x").unwrap_err().problem(),
        &Problem::Full { max: 3 }
    );
    for name in ["a", "b", "c", "a"] {
        registry.breaker(name).unwrap();
    }
    assert_eq!(registry.breakers().len(), 3);
    // Every kind keeps a place for each declared instance: with three declared and a bound
    // of three, no undeclared bulkhead fits, and each declared one does (from the defaults).
    assert_eq!(
        registry.bulkhead("w").unwrap_err().problem(),
        &Problem::Full { max: 3 }
    );
    for name in ["a", "b", "c"] {
        registry.bulkhead(name).unwrap();
    }
    assert_eq!(registry.bulkheads().len(), 3);
    // With room to spare, undeclared names take what the declared ones leave.
    let roomy = Registry::builder(config.clone())
        .runtime(FakeClock::new())
        .max_instances(5)
        .build()
        .unwrap();
    for name in ["x", "y"] {
        roomy.bulkhead(name).unwrap();
    }
    assert_eq!(
        roomy.bulkhead("z").unwrap_err().problem(),
        &Problem::Full { max: 5 }
    );
    for name in ["a", "b", "c"] {
        roomy.bulkhead(name).unwrap();
    }

    let err = Registry::builder(config)
        .runtime(FakeClock::new())
        .max_instances(2)
        .build()
        .unwrap_err();
    assert_eq!(err.problem(), &Problem::Full { max: 2 });

    // Zero: nothing at all, of any kind.
    let mut full = Config::default();
    full.defaults.bulkhead = Some({
        let mut b = BulkheadConfig::default();
        b.max_concurrent = Some(1);
        b
    });
    full.defaults.rate_limit = Some({
        let mut r = RateLimitConfig::default();
        r.count = Some(1);
        r.period = Some(secs(1));
        r
    });
    let zero = Registry::builder(full.clone())
        .runtime(FakeClock::new())
        .max_instances(0)
        .build()
        .unwrap();
    for err in [
        zero.breaker("a").unwrap_err(),
        zero.bulkhead("a").unwrap_err(),
        zero.rate_limiter("a").unwrap_err(),
        zero.retry_budget("a").unwrap_err(),
    ] {
        assert_eq!(err.problem(), &Problem::Full { max: 0 });
    }
    // One: each kind holds one on its own.
    let one = Registry::builder(full)
        .runtime(FakeClock::new())
        .max_instances(1)
        .build()
        .unwrap();
    one.breaker("p").unwrap();
    one.bulkhead("q").unwrap();
    one.rate_limiter("r").unwrap();
    one.retry_budget("s").unwrap();
    one.breaker("p").unwrap();
    assert_eq!(
        one.breaker("q").unwrap_err().problem(),
        &Problem::Full { max: 1 }
    );
    // A refusal keeps nothing.
    assert_eq!(names(one.breakers()), ["p"]);
    let mut declared = Config::default();
    declared
        .instances
        .insert("only".into(), Policies::default());
    assert_eq!(
        Registry::builder(declared)
            .runtime(FakeClock::new())
            .max_instances(0)
            .build()
            .unwrap_err()
            .problem(),
        &Problem::Full { max: 0 }
    );
}

// max_instances: "the declared instances count" toward the bound, and `build` refuses a file
// that declares more than it; so a declared instance always has its place: names taken from
// requests, asked for first, must not take the places of declared instances for a kind they
// have no section for (that kind is then built on demand, from the defaults).
#[test]
fn undeclared_names_never_take_the_places_of_declared_instances() {
    let config = parse(
        r#"
        [defaults.bulkhead]
        max_concurrent = 1
        [instances.a]
        breaker = {}
        [instances.b]
        breaker = {}
        [instances.c]
        breaker = {}
        "#,
    );
    let registry = Registry::builder(config)
        .runtime(FakeClock::new())
        .max_instances(3)
        .build()
        .expect("exactly at the limit");
    let undeclared: Vec<_> = ["x", "y", "z"]
        .into_iter()
        .filter(|n| registry.bulkhead(n).is_ok())
        .collect();
    for name in ["a", "b", "c"] {
        let got = registry.bulkhead(name);
        assert!(
            got.is_ok(),
            "declared {name:?} refused ({:?}) after undeclared {undeclared:?} were given bulkheads",
            got.err()
        );
    }
    assert!(registry.bulkheads().len() <= 3);
}

// "Every circuit breaker so far, by name": sorted by name (Names order as their text), and
// exactly the ones that exist.
#[test]
fn listings_are_by_name_and_exact() {
    let config = parse(
        r#"
        [defaults.bulkhead]
        max_concurrent = 1
        [instances.m]
        breaker = {}
        [instances.B]
        breaker = {}
        [instances."é".bulkhead]
        max_concurrent = 2
        "#,
    );
    let registry = on(&FakeClock::new(), config);
    for name in ["b", "10", "9", "", "z", "m", "a"] {
        registry.breaker(name).unwrap();
    }
    let mut expected: Vec<String> = ["m", "B", "b", "10", "9", "", "z", "a"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    expected.sort();
    assert_eq!(names(registry.breakers()), expected);
    assert_eq!(names(registry.bulkheads()), ["é"]);
    registry.bulkhead("a").unwrap();
    assert_eq!(names(registry.bulkheads()), ["a", "é"]);
    assert!(registry.rate_limiters().is_empty());
    for (name, breaker) in registry.breakers() {
        assert_eq!(breaker.name(), name.as_str());
    }
    assert!(!format!("{registry:?}").is_empty());
}

// The registry's runtime is the one its policies read: a FakeClock drives the configured
// break_duration (from a base) and half_open_probes (from the instance) in virtual time.
#[test]
fn a_fake_clock_registry_drives_the_configured_break() {
    let config = parse(
        r#"
        [defaults.breaker]
        failure_rate = "off"
        consecutive_failures = 2
        [configs.slow.breaker]
        break_duration = "7s"
        [instances.p]
        base = "slow"
        [instances.p.breaker]
        half_open_probes = 2
        "#,
    );
    let clock = FakeClock::new();
    let registry = on(&clock, config);
    let breaker = registry.breaker("p").unwrap();
    assert!(trips(&breaker, "FF"));
    assert_eq!(
        breaker.try_acquire().unwrap_err(),
        Rejected::CircuitOpen {
            retry_after: secs(7)
        },
        "the base's break_duration"
    );
    clock.advance(secs(7) - Duration::from_nanos(1));
    assert_eq!(
        registry.breaker("p").unwrap().try_acquire().unwrap_err(),
        Rejected::CircuitOpen {
            retry_after: Duration::from_nanos(1)
        }
    );
    clock.advance(Duration::from_nanos(1));
    let one = breaker.try_acquire().expect("the break is over");
    let two = breaker.try_acquire().expect("two probes");
    assert!(one.is_probe() && two.is_probe());
    assert!(breaker.try_acquire().is_err(), "exactly two probes");
    one.success();
    two.success();
    assert_eq!(breaker.state(), State::Closed);
}

// ... and a rate limiter's configured rate, in virtual time.
#[test]
fn a_fake_clock_registry_drives_the_configured_rate() {
    let config = parse(
        r#"
        [defaults.rate_limit]
        count = 4
        period = "1s"
        burst = 1
        [instances.s.rate_limit]
        burst = 2
        "#,
    );
    let clock = FakeClock::new();
    let registry = on(&clock, config);
    let other = registry.rate_limiter("undeclared").unwrap();
    other.check().unwrap();
    assert_eq!(
        other.check(),
        Err(Rejected::RateLimited {
            retry_after: ms(250)
        })
    );
    clock.advance(ms(249));
    assert_eq!(
        other.check(),
        Err(Rejected::RateLimited { retry_after: ms(1) })
    );
    clock.advance(ms(1));
    other.check().unwrap();
    // Steady state: one every 250 ms for ten virtual seconds, no more.
    for _ in 0..40 {
        clock.advance(ms(250));
        other.check().unwrap();
        assert!(other.check().is_err());
    }
    let s = registry.rate_limiter("s").unwrap();
    s.check().unwrap();
    s.check().unwrap();
    assert!(s.check().is_err(), "the instance's burst of 2");
}

// A time window, the slow-call threshold and a budget's window, all from the file, measured
// on the registry's FakeClock.
#[test]
fn configured_windows_and_thresholds_run_in_virtual_time() {
    let config = parse(
        r#"
        [configs.slowish.breaker]
        slow_call_threshold = "100ms"
        [instances.t.breaker]
        window = "10s"
        window_buckets = 10
        minimum_calls = 3
        [instances.s]
        base = "slowish"
        [instances.s.breaker]
        failure_rate = "off"
        slow_call_rate = 0.5
        window_calls = 2
        minimum_calls = 2
        [instances.r.budget]
        ratio = 1.0
        min_per_second = 0
        window = "2s"
        buckets = 2
        "#,
    );
    let clock = FakeClock::new();
    let registry = on(&clock, config);

    let t = registry.breaker("t").unwrap();
    assert!(!trips(&t, "FF"), "2 calls, under minimum_calls = 3");
    clock.advance(secs(10));
    assert!(!trips(&t, "S"));
    assert_eq!(
        t.counts().calls,
        1,
        "the failures of 10 s ago left the 10 s window"
    );

    let s = registry.breaker("s").unwrap();
    let quick = s.try_acquire().unwrap();
    clock.advance(ms(99));
    quick.success();
    let slow = s.try_acquire().unwrap();
    clock.advance(ms(100));
    slow.success();
    assert_eq!(s.counts().slow, 1, "the base's 100 ms threshold");
    assert_eq!(
        s.state(),
        State::Open,
        "1 slow of 2 reaches slow_call_rate 0.5"
    );

    let budget = registry.retry_budget("r").unwrap();
    budget.deposit(clock.now());
    assert!(budget.has_balance(clock.now()));
    clock.advance(secs(2));
    assert!(
        !budget.has_balance(clock.now()),
        "the deposit of 2 s ago left the 2 s window"
    );
}

// Bulkhead docs: "Once nothing is running or queued, [available] equals the capacity": capacity
// is conserved across every handle the registry gives out, including a queued waiter served
// from a permit taken through another handle.
#[test]
fn bulkhead_capacity_is_conserved_across_handles() {
    let config = parse("[instances.k.bulkhead]\nmax_concurrent = 3\nmax_wait = \"1s\"\n");
    let clock = FakeClock::new();
    let registry = on(&clock, config);
    let permits: Vec<_> = (0..3)
        .map(|_| registry.bulkhead("k").unwrap().try_acquire_owned().unwrap())
        .collect();
    let h = registry.bulkhead("k").unwrap();
    assert_eq!((h.available(), h.in_flight()), (0, 3));
    let mut waiting = Box::pin(h.acquire());
    assert!(poll_once(waiting.as_mut()).is_pending());
    assert_eq!(registry.bulkhead("k").unwrap().queued(), 1);
    let mut permits = permits;
    drop(permits.pop());
    let Poll::Ready(Ok(granted)) = poll_once(waiting.as_mut()) else {
        panic!("the waiter gets the slot another handle gave back");
    };
    drop(permits);
    drop(granted);
    let listed = registry.bulkheads().pop().unwrap().1;
    assert_eq!(listed.available(), listed.capacity());
    assert_eq!((listed.in_flight(), listed.queued()), (0, 0));
}

// "shared by everyone who asks for it" under a race: many threads get-or-create the same
// undeclared name at once; exactly one policy of each kind results, and every thread's handle
// is that one.
#[test]
fn racing_get_or_create_makes_exactly_one_policy() {
    const THREADS: u32 = 8;
    for round in 0..20 {
        let config = parse(&format!(
            r#"
            [defaults]
            breaker = {{ failure_rate = "off", consecutive_failures = {THREADS} }}
            bulkhead = {{ max_concurrent = {THREADS}, max_queue = 0 }}
            rate_limit = {{ count = 1, period = "1h", burst = {THREADS} }}
            budget = {{ ratio = 0.5, min_per_second = 0 }}
            "#
        ));
        let clock = FakeClock::new();
        let registry = on(&clock, config);
        let name = format!("hot{round}");
        let barrier = Barrier::new(usize::try_from(THREADS).unwrap());
        let now = clock.now();
        let permits: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..THREADS)
                .map(|_| {
                    s.spawn(|| {
                        barrier.wait();
                        registry
                            .breaker(&name)
                            .unwrap()
                            .try_acquire()
                            .unwrap()
                            .failure();
                        registry.rate_limiter(&name).unwrap().check().unwrap();
                        registry.retry_budget(&name).unwrap().deposit(now);
                        registry
                            .bulkhead(&name)
                            .unwrap()
                            .try_acquire_owned()
                            .unwrap()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(registry.breakers().len(), 1);
        assert_eq!(registry.bulkheads().len(), 1);
        assert_eq!(registry.rate_limiters().len(), 1);
        assert_eq!(registry.retry_budgets().len(), 1);
        assert_eq!(
            registry.breaker(&name).unwrap().state(),
            State::Open,
            "round {round}: every failure went to one breaker"
        );
        assert_eq!(registry.bulkhead(&name).unwrap().available(), 0);
        assert!(registry.rate_limiter(&name).unwrap().check().is_err());
        let budget = registry.retry_budget(&name).unwrap();
        let granted = (0..THREADS).filter(|_| budget.try_withdraw(now)).count();
        assert_eq!(granted, 4, "round {round}: 8 deposits at ratio 0.5");
        drop(permits);
        assert_eq!(registry.bulkhead(&name).unwrap().available(), 8);
    }
}

// The bound under a race: 32 threads each ask for their own name with room for 5.
#[test]
fn racing_distinct_names_never_exceed_max_instances() {
    for _ in 0..20 {
        let registry = Registry::builder(Config::default())
            .runtime(FakeClock::new())
            .max_instances(5)
            .build()
            .unwrap();
        let barrier = Barrier::new(32);
        let ok = std::thread::scope(|s| {
            let handles: Vec<_> = (0..32)
                .map(|i| {
                    let (registry, barrier) = (&registry, &barrier);
                    s.spawn(move || {
                        barrier.wait();
                        match registry.retry_budget(&format!("n{i}")) {
                            Ok(_) => true,
                            Err(e) => {
                                assert_eq!(e.problem(), &Problem::Full { max: 5 });
                                false
                            }
                        }
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap())
                .filter(|ok| *ok)
                .count()
        });
        assert_eq!(ok, 5);
        assert_eq!(registry.retry_budgets().len(), 5);
    }
}

// Registry::config: "The configuration the registry was built from."
#[test]
fn the_registry_keeps_its_configuration() {
    let text = "[defaults.breaker]\nconsecutive_failures = 3\n[instances.a]\nbreaker = {}\n";
    let registry = on(&FakeClock::new(), parse(text));
    assert_eq!(*registry.config(), parse(text));
}

// ---------------------------------------------------------------------------------------------
// Round trips
// ---------------------------------------------------------------------------------------------

fn everything() -> String {
    let dj = serde_name(BackoffKind::DecorrelatedJitter);
    format!(
        r#"
        [defaults]
        deadline = "1h 30m"
        attempt_timeout = "off"
        min_attempt_time = "1.5s"
        [defaults.breaker]
        failure_rate = 0.3
        slow_call_rate = 0.000001
        slow_call_threshold = "250µs"
        consecutive_failures = 5
        minimum_calls = 20
        window = "30s"
        window_buckets = 6
        break_duration = "5s"
        half_open_probes = 3
        max_half_open_wait = "off"
        max_open_hint = "2min"
        [defaults.bulkhead]
        max_concurrent = 8
        max_queue = 0
        max_wait = "off"
        [defaults.rate_limit]
        count = 100
        period = "1s"
        burst = 20
        jitter = "0s"
        [defaults.retry]
        backoff = "exponential"
        initial_delay = "100ms"
        factor = 1.5
        max_delay = "2s"
        max_attempts = 3
        max_elapsed = "10s"
        max_retry_after = "1d"
        [defaults.budget]
        ratio = 1000.0
        min_per_second = 0
        window = "10s"
        buckets = 1024

        [configs.lin]
        deadline = "off"
        [configs.lin.retry]
        backoff = "linear"
        step = "1ns"
        jitter = "none"
        [configs.lin.breaker]
        failure_rate = "off"
        window_calls = 1048575
        max_half_open_wait = "1ms"
        [configs.flat.retry]
        backoff = "constant"
        initial_delay = "18446744073709551615ns"
        max_delay = "18446744073709551615ns"
        [configs.dj.retry]
        backoff = "{dj}"

        [instances.a]
        base = "lin"
        attempt_timeout = "1.000000001s"
        breaker = {{}}
        [instances.b]
        base = "flat"
        deadline = "1ns"
        min_attempt_time = "0"
        [instances.b.bulkhead]
        max_concurrent = 1
        max_wait = "1s"
        max_queue = 4
        [instances.c]
        base = "dj"
        [instances.c.retry]
        jitter = "full"
        backoff = "exponential"
        [instances."支払い"]
        budget = {{ ratio = 0.0 }}
        "#
    )
}

// layers docs: Config is Serialize and Deserialize, "so an admin endpoint can print the
// configuration in force": printed as TOML (compact and pretty) and JSON, it reads back equal.
#[test]
fn a_configuration_with_every_key_prints_back_to_itself() {
    let config = parse(&everything());
    on(&FakeClock::new(), config.clone());
    for printed in [
        toml::to_string(&config).unwrap(),
        toml::to_string_pretty(&config).unwrap(),
    ] {
        assert_eq!(parse(&printed), config, "printed:\n{printed}");
    }
    let json = serde_json::to_string(&config).unwrap();
    let back: Config = serde_json::from_str(&json).unwrap();
    back.validate().unwrap();
    assert_eq!(back, config, "{json}");
    let pretty = serde_json::to_string_pretty(&config).unwrap();
    assert_eq!(serde_json::from_str::<Config>(&pretty).unwrap(), config);
}

// HumanDuration: "a printed value always parses to itself": every duration, including the odd
// ones (1 ns, u64::MAX ns, 1 s + 1 ns, zero), and every float, round-trips without validation.
#[test]
fn odd_values_round_trip_through_toml_and_json() {
    let durations = [
        Duration::ZERO,
        Duration::from_nanos(1),
        Duration::from_nanos(1_000_000_001),
        Duration::from_nanos(u64::MAX),
        Duration::from_nanos(u64::MAX - 1),
        secs(5400),
        Duration::from_micros(1),
        secs(86_400 * 7),
        Duration::from_nanos(59_999_999_999),
    ];
    let floats = [
        0.1 + 0.2,
        1e-6,
        f64::MIN_POSITIVE,
        f64::MAX,
        -0.0,
        1.0,
        1000.0,
        0.123_456_789_012_345_67,
    ];
    let mut config = Config::default();
    for (i, (&d, &f)) in durations.iter().zip(floats.iter().cycle()).enumerate() {
        let mut p = Policies::default();
        p.deadline = Some(Toggle::On(d));
        p.attempt_timeout = Some(if i % 2 == 0 {
            Toggle::Off
        } else {
            Toggle::On(d)
        });
        p.min_attempt_time = Some(d);
        let mut b = BreakerConfig::default();
        b.failure_rate = Some(Toggle::On(f));
        b.slow_call_rate = Some(f);
        b.window = Some(d);
        b.max_half_open_wait = Some(Toggle::On(d));
        b.half_open_probes = Some(u32::MAX);
        p.breaker = Some(b);
        let mut r = RetryConfig::default();
        r.factor = Some(f);
        r.initial_delay = Some(d);
        r.jitter = Some(JitterKind::None);
        r.backoff = Some(BackoffKind::Linear);
        p.retry = Some(r);
        let mut g = BudgetConfig::default();
        g.ratio = Some(f);
        g.window = Some(d);
        p.budget = Some(g);
        let mut k = BulkheadConfig::default();
        k.max_wait = Some(Toggle::On(d));
        p.bulkhead = Some(k);
        let mut l = RateLimitConfig::default();
        l.period = Some(d);
        l.jitter = Some(d);
        l.count = Some(u32::MAX);
        p.rate_limit = Some(l);
        config.instances.insert(format!("i{i}"), p);
    }
    let printed = toml::to_string(&config).unwrap();
    let back: Config = toml::from_str(&printed).unwrap();
    assert_eq!(back, config, "printed:\n{printed}");
    let json = serde_json::to_string(&config).unwrap();
    assert_eq!(
        serde_json::from_str::<Config>(&json).unwrap(),
        config,
        "{json}"
    );
    // -0.0 == 0.0 for PartialEq; its sign must survive too.
    let sign = back.instances["i4"].retry.as_ref().unwrap().factor.unwrap();
    assert!(sign.is_sign_negative(), "-0.0 printed as {sign}");
}

// Toggle: "written as its value, or as the string \"off\"", both ways, and `on()`.
#[test]
fn toggle_is_its_value_or_off() {
    assert_eq!(
        serde_json::to_string(&Toggle::<Duration>::Off).unwrap(),
        "\"off\""
    );
    assert_eq!(
        serde_json::to_string(&Toggle::On(ms(800))).unwrap(),
        "\"800ms\""
    );
    assert_eq!(
        serde_json::to_string(&Toggle::On(secs(5400))).unwrap(),
        "\"90m\"",
        "the shortest exact single group"
    );
    assert_eq!(
        serde_json::to_string(&Toggle::<f64>::Off).unwrap(),
        "\"off\""
    );
    assert_eq!(serde_json::to_string(&Toggle::On(0.25f64)).unwrap(), "0.25");
    assert_eq!(
        serde_json::from_str::<Toggle<Duration>>("\"off\"").unwrap(),
        Toggle::Off
    );
    assert_eq!(
        serde_json::from_str::<Toggle<Duration>>("\"1h 30m\"").unwrap(),
        Toggle::On(secs(5400))
    );
    assert_eq!(
        serde_json::from_str::<Toggle<f64>>("0.5").unwrap(),
        Toggle::On(0.5)
    );
    assert_eq!(
        serde_json::from_str::<Toggle<f64>>("1").unwrap(),
        Toggle::On(1.0)
    );
    assert!(serde_json::from_str::<Toggle<Duration>>("5").is_err());
    assert!(serde_json::from_str::<Toggle<Duration>>("null").is_err());
    assert!(serde_json::from_str::<Toggle<f64>>("\"0.5\"").is_err());
    assert_eq!(Toggle::On(3u8).on(), Some(3));
    assert_eq!(Toggle::<u8>::Off.on(), None);
}

// "Unknown keys are errors, so a typo never silently keeps a default" — in any serde format.
#[test]
fn json_refuses_unknown_keys_at_every_level() {
    for json in [
        r#"{"bogus": {}}"#,
        r#"{"defaults": {"bogus": 1}}"#,
        r#"{"configs": {"c": {"bogus": 1}}}"#,
        r#"{"instances": {"a": {"bogus": 1}}}"#,
        r#"{"instances": {"a": {"breaker": {"bogus": 1}}}}"#,
        r#"{"instances": {"a": {"bulkhead": {"bogus": 1}}}}"#,
        r#"{"instances": {"a": {"rate_limit": {"bogus": 1}}}}"#,
        r#"{"instances": {"a": {"retry": {"bogus": 1}}}}"#,
        r#"{"instances": {"a": {"budget": {"bogus": 1}}}}"#,
    ] {
        assert!(
            serde_json::from_str::<Config>(json).is_err(),
            "accepted {json}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Name
// ---------------------------------------------------------------------------------------------

// "Names compare, hash and order as their text, whichever way they are kept" — so a map keyed
// by Name is found by &str (Borrow<str>), and sorting Names sorts their texts.
#[test]
fn names_compare_hash_and_order_as_text() {
    const STATIC: Name = Name::from_static("payments");
    let texts = [
        "payments",
        "",
        "支払い",
        "Zeta",
        "alpha",
        "a",
        "ab",
        "10",
        "9",
    ];
    let made: Vec<Vec<Name>> = texts
        .iter()
        .map(|t| {
            vec![
                Name::from(String::from(*t)),
                Name::from(Box::<str>::from(*t)),
                Name::from(Arc::<str>::from(*t)),
                Name::from(&Name::from(String::from(*t))),
            ]
        })
        .collect();
    for (text, forms) in texts.iter().zip(&made) {
        let mut map: HashMap<Name, usize> = HashMap::new();
        for (i, n) in forms.iter().enumerate() {
            assert_eq!(n, *text);
            assert_eq!(n, text);
            assert_eq!(n.as_str(), *text);
            assert_eq!(&**n, *text);
            assert_eq!(AsRef::<str>::as_ref(n), *text);
            assert_eq!(n.to_string(), *text);
            assert_eq!(n.clone(), forms[0]);
            map.insert(n.clone(), i);
        }
        assert_eq!(
            map.len(),
            1,
            "one key for {text:?} whichever way it is kept"
        );
        assert!(map.contains_key(*text), "found by &str");
        let set: HashSet<Name> = forms.iter().cloned().collect();
        assert_eq!(set.len(), 1);
    }
    assert_eq!(STATIC, "payments");
    assert_eq!(STATIC, made[0][2]);
    let mut by_hash: HashSet<Name> = HashSet::new();
    by_hash.insert(STATIC);
    assert!(by_hash.contains("payments") && by_hash.contains(&made[0][1]));

    let sorted: BTreeSet<Name> = made.iter().flatten().cloned().collect();
    let mut expected: Vec<&str> = texts.to_vec();
    expected.sort_unstable();
    assert_eq!(
        sorted.iter().map(Name::as_str).collect::<Vec<_>>(),
        expected
    );
    let (lit_a, owned_b, owned_upper_b) = (
        Name::from("a"),
        Name::from(String::from("b")),
        Name::from(String::from("B")),
    );
    assert!(
        lit_a < owned_b && owned_upper_b < lit_a,
        "byte order of the texts"
    );
}

// "cloning a Name never copies the text": clones, and a Name made from an Arc<str>, share it.
#[test]
fn cloning_a_name_never_copies_the_text() {
    let arc: Arc<str> = Arc::from("loaded-from-a-file");
    let name = Name::from(Arc::clone(&arc));
    assert_eq!(name.as_str().as_ptr(), arc.as_ptr(), "kept behind that Arc");
    let clone = name.clone();
    assert_eq!(clone.as_str().as_ptr(), name.as_str().as_ptr());
    let owned = Name::from(String::from("x"));
    assert_eq!(owned.clone().as_str().as_ptr(), owned.as_str().as_ptr());
    assert_eq!(
        Name::from(&owned).as_str().as_ptr(),
        owned.as_str().as_ptr()
    );
    let literal: &'static str = "static";
    assert_eq!(Name::from(literal).as_str().as_ptr(), literal.as_ptr());
    assert_eq!(
        Name::from_static(literal).clone().as_str().as_ptr(),
        literal.as_ptr()
    );
}

// A builder's `name` takes `impl Into<Name>`; a registry's policies carry the instance's name.
#[test]
fn registry_policies_carry_the_instance_name() {
    let config = parse(
        "[defaults]\nbulkhead = { max_concurrent = 1 }\nrate_limit = { count = 1, period = \"1s\" }\n",
    );
    let registry = on(&FakeClock::new(), config);
    let name: String = "dynamic-name".into();
    assert_eq!(registry.breaker(&name).unwrap().name(), name);
    assert_eq!(registry.bulkhead(&name).unwrap().name(), name);
    assert_eq!(registry.rate_limiter(&name).unwrap().name(), name);
    let (listed, _) = registry.rate_limiters().pop().unwrap();
    assert_eq!(listed, name.as_str());
}
