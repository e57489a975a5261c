#![cfg(all(feature = "toml", feature = "http", feature = "tokio"))]
//! Hostile black-box tests of the configuration keys added last, from the rustdoc alone:
//! `min_attempt_time` on HTTP clients, the breaker's break schedule (`break_backoff`,
//! `break_factor`, `max_break_duration`, `break_jitter`) and the refused lone
//! `slow_call_threshold`, a bulkhead's queue `discipline` (with CoDel's durations), and the
//! `[http]` section's `client_errors` and `idempotency_key_header`. Layering per key, the key
//! path of every refusal, `validate` against a registry's build, reloads of held policies,
//! extreme values, and each key's effect observed in virtual time.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tidewall::breaker::{CircuitBreaker, State};
use tidewall::config::{Config, Invalid, Problem, Registry};
use tidewall::http::{Authority, ClientPolicies, Overrides};
use tidewall::rt::Clock;
use tidewall::testing::FakeClock;
use tidewall::{ConfigError, Error, Jitter, Rejected};
use tidewall_core::backoff::Schedule;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn parse(text: &str) -> Config {
    Config::from_toml(text).unwrap_or_else(|e| panic!("must be accepted: {e}\n---\n{text}"))
}

/// The text read as a `Config` without validation (serde alone), to hand to `validate` and a
/// registry separately.
fn raw(text: &str) -> Config {
    toml::from_str(text).unwrap_or_else(|e| panic!("serde must read it: {e}\n---\n{text}"))
}

fn refused(text: &str) -> Invalid {
    match Config::from_toml(text) {
        Ok(config) => panic!("must be refused:\n{text}\n--- read as {config:?}"),
        Err(e) => e,
    }
}

fn is_conflict(err: &Invalid) -> bool {
    matches!(err.problem(), Problem::Rule(ConfigError::Conflict { .. }))
}

fn on(clock: &FakeClock, config: Config) -> Registry<FakeClock> {
    Registry::builder(config)
        .runtime(clock.clone())
        .build()
        .unwrap_or_else(|e| panic!("registry refused: {e}"))
}

fn poll_once<F: Future + ?Sized>(fut: Pin<&mut F>) -> Poll<F::Output> {
    let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
    fut.poll(&mut cx)
}

/// Trips `breaker` (one failure trips it) and checks each break lasts exactly the expected
/// length: refused 1 ms before its end, a probe at its end, which fails and trips it again.
fn expect_breaks<R: Clock>(breaker: &CircuitBreaker<R>, clock: &FakeClock, breaks: &[Duration]) {
    breaker
        .try_acquire()
        .expect("a closed breaker admits")
        .failure();
    for (k, &expected) in breaks.iter().enumerate() {
        assert_eq!(breaker.state(), State::Open, "trip {k}: open");
        clock.advance(expected - ms(1));
        if let Ok(early) = breaker.try_acquire() {
            early.failure();
            panic!(
                "trip {} (1-based) of {breaks:?}: a probe was let through before {:?}, the \
                 break should last {expected:?}",
                k + 1,
                expected - ms(1)
            );
        }
        clock.advance(ms(1));
        match breaker.try_acquire() {
            Ok(probe) => probe.failure(),
            Err(e) => {
                // Find roughly how long the break really is, for the report.
                let mut extra = Duration::ZERO;
                let step = (expected / 10).max(ms(1));
                let found = loop {
                    clock.advance(step);
                    extra += step;
                    if let Ok(probe) = breaker.try_acquire() {
                        probe.failure();
                        break Some(expected + extra);
                    }
                    if extra > expected * 100 {
                        break None;
                    }
                };
                panic!(
                    "trip {} (1-based) of {breaks:?}: still refused ({e}) at the end of its \
                     {expected:?} break; it ended after about {found:?}",
                    k + 1
                );
            }
        }
    }
}

fn breaker_of(text: &str) -> (FakeClock, CircuitBreaker<FakeClock>) {
    let clock = FakeClock::new();
    let registry = on(&clock, parse(text));
    let breaker = registry.breaker("api").unwrap();
    (clock, breaker)
}

fn get(uri: &str) -> http::Request<()> {
    http::Request::get(uri).body(()).unwrap()
}

fn post(uri: &str, header: Option<(&str, &str)>) -> http::Request<()> {
    let mut builder = http::Request::post(uri);
    if let Some((name, value)) = header {
        builder = builder.header(name, value);
    }
    builder.body(()).unwrap()
}

fn response(status: u16) -> http::Response<()> {
    http::Response::builder().status(status).body(()).unwrap()
}

/// Runs `request` through `policies`, every attempt answered by `script(n)` (n from 0), and
/// counts the sends.
async fn run_scripted(
    policies: &ClientPolicies,
    request: http::Request<()>,
    overrides: Overrides,
    script: impl Fn(u32) -> u16,
) -> (Result<http::Response<()>, Error<std::io::Error>>, u32) {
    let sends = AtomicU32::new(0);
    let result = policies
        .run(request, overrides, |_request| {
            let n = sends.fetch_add(1, SeqCst);
            let status = script(n);
            async move { Ok::<_, std::io::Error>(response(status)) }
        })
        .await;
    (result, sends.load(SeqCst))
}

fn status(result: &Result<http::Response<()>, Error<std::io::Error>>) -> Result<u16, String> {
    match result {
        Ok(r) => Ok(r.status().as_u16()),
        Err(e) => Err(format!("{e:?}")),
    }
}

fn api() -> Authority {
    Authority::from_uri(&"http://api.example/".parse().unwrap()).unwrap()
}

/// A client of a 10 s deadline retrying 3 times 10 ms apart, with a breaker that counts but
/// does not open within these tests, and the `[http]` lines given.
fn client_text(http: &str) -> String {
    format!(
        r#"
        [instances.api]
        deadline = "10s"
        [instances.api.retry]
        backoff = "constant"
        initial_delay = "10ms"
        jitter = "none"
        max_attempts = 3
        [instances.api.breaker]
        minimum_calls = 100
        [instances.api.http]
        {http}
        "#
    )
}

// ---------------------------------------------------------------------------------------------
// Breaker: the break schedule, in virtual time
// ---------------------------------------------------------------------------------------------

// BreakerConfig::break_backoff: "the k-th trip in a row (no successful close between) stays
// open for the k-th delay of this schedule, from `break_duration` up to `max_break_duration`";
// break_jitter "(default "none")".
#[test]
fn exponential_breaks_double_and_hold_at_max_break_duration() {
    let (clock, breaker) = breaker_of(
        r#"
        [instances.api.breaker]
        consecutive_failures = 1
        break_duration = "1s"
        break_backoff = "exponential"
        max_break_duration = "8s"
        "#,
    );
    expect_breaks(
        &breaker,
        &clock,
        &[secs(1), secs(2), secs(4), secs(8), secs(8), secs(8)],
    );
}

// The schedule goes on growing for "as many trips in a row as there are", not for a retry
// schedule's default four attempts.
#[test]
fn exponential_breaks_keep_growing_past_a_retry_schedules_attempts() {
    let (clock, breaker) = breaker_of(
        r#"
        [instances.api.breaker]
        consecutive_failures = 1
        break_duration = "1s"
        break_backoff = "exponential"
        max_break_duration = "1024s"
        "#,
    );
    let breaks: Vec<Duration> = (0..12).map(|k| secs(1 << k.min(10))).collect();
    expect_breaks(&breaker, &clock, &breaks);
}

// "`"linear"` (each break `break_duration` longer)".
#[test]
fn linear_breaks_grow_by_break_duration_and_hold_at_max() {
    let (clock, breaker) = breaker_of(
        r#"
        [instances.api.breaker]
        consecutive_failures = 1
        break_duration = "2s"
        break_backoff = "linear"
        max_break_duration = "7s"
        "#,
    );
    expect_breaks(
        &breaker,
        &clock,
        &[secs(2), secs(4), secs(6), secs(7), secs(7)],
    );
}

// Defaults of the schedule: break_duration 5 s, break_factor 2, max_break_duration 30 s.
#[test]
fn exponential_breaks_from_the_defaults_alone() {
    let (clock, breaker) = breaker_of(
        r#"
        [instances.api.breaker]
        consecutive_failures = 1
        break_backoff = "exponential"
        "#,
    );
    expect_breaks(
        &breaker,
        &clock,
        &[secs(5), secs(10), secs(20), secs(30), secs(30)],
    );
}

// "(no successful close between)": a probe that succeeds closes the breaker, and the next
// trip starts the schedule over.
#[test]
fn a_successful_close_resets_the_growth() {
    let (clock, breaker) = breaker_of(
        r#"
        [instances.api.breaker]
        consecutive_failures = 1
        break_duration = "1s"
        break_backoff = "exponential"
        max_break_duration = "60s"
        "#,
    );
    expect_breaks(&breaker, &clock, &[secs(1), secs(2), secs(4)]);
    clock.advance(secs(8));
    breaker.try_acquire().expect("a probe after 8 s").success();
    assert_eq!(breaker.state(), State::Closed, "the probe closed it");
    expect_breaks(&breaker, &clock, &[secs(1), secs(2)]);
}

// Module docs: "An instance's value for a key is its own, else its base's, else the
// defaults'": the factor from the defaults, the schedule from the base, the first break from
// the instance.
#[test]
fn break_schedule_keys_layer_per_key() {
    let (clock, breaker) = breaker_of(
        r#"
        [defaults.breaker]
        break_factor = 3
        max_break_duration = "100s"
        [configs.growing.breaker]
        break_backoff = "exponential"
        [instances.api]
        base = "growing"
        [instances.api.breaker]
        consecutive_failures = 1
        break_duration = "1s"
        "#,
    );
    expect_breaks(
        &breaker,
        &clock,
        &[secs(1), secs(3), secs(9), secs(27), secs(81), secs(100)],
    );
}

// "`"constant"` (default: every break is `break_duration`)".
#[test]
fn constant_break_backoff_is_break_duration_every_time() {
    let (clock, breaker) = breaker_of(
        r#"
        [instances.api.breaker]
        consecutive_failures = 1
        break_duration = "3s"
        break_backoff = "constant"
        "#,
    );
    expect_breaks(&breaker, &clock, &[secs(3), secs(3), secs(3), secs(3)]);
}

// The schedule the keys make, as the breaker's policy reports it: no jitter by default (unlike
// a retry's), `break_jitter` mapped, decorrelated jitter from `break_duration`.
#[test]
fn break_schedule_maps_onto_the_policy() {
    let clock = FakeClock::new();
    let registry = on(
        &clock,
        parse(
            r#"
            [instances.plain.breaker]
            break_duration = "2s"
            break_backoff = "exponential"
            [instances.equal.breaker]
            break_duration = "2s"
            break_backoff = "linear"
            break_jitter = "equal"
            max_break_duration = "1m"
            [instances.decorrelated.breaker]
            break_duration = "2s"
            break_backoff = "decorrelated_jitter"
            max_break_duration = "40s"
            "#,
        ),
    );
    let plain = registry.breaker("plain").unwrap().policy().break_backoff();
    assert_eq!(
        plain.jitter_mode(),
        Jitter::None,
        "break_jitter default none"
    );
    assert_eq!(
        plain.max_delay_cap(),
        secs(30),
        "max_break_duration default 30 s"
    );
    assert_eq!(
        plain.schedule(),
        Schedule::Exponential {
            initial: secs(2),
            factor: 2.0
        }
    );
    let equal = registry.breaker("equal").unwrap().policy().break_backoff();
    assert_eq!(equal.jitter_mode(), Jitter::Equal);
    assert_eq!(equal.max_delay_cap(), secs(60));
    assert_eq!(
        equal.schedule(),
        Schedule::Linear {
            initial: secs(2),
            step: secs(2)
        }
    );
    let decorrelated = registry
        .breaker("decorrelated")
        .unwrap()
        .policy()
        .break_backoff();
    assert_eq!(
        decorrelated.schedule(),
        Schedule::DecorrelatedJitter { initial: secs(2) }
    );
    assert_eq!(decorrelated.max_delay_cap(), secs(40));
    // Every break of the decorrelated schedule lies in [break_duration, max_break_duration].
    let policy = registry.breaker("decorrelated").unwrap().policy();
    for seed in 0..50 {
        for trip in 0..20 {
            let d = policy.break_duration(trip, seed);
            assert!(
                (secs(2)..=secs(40)).contains(&d),
                "seed {seed} trip {trip}: {d:?}"
            );
        }
    }
}

// A huge factor is finite and at least 1: accepted, and the second break is already the cap
// (never an overflow nor a panic).
#[test]
fn a_huge_break_factor_jumps_to_the_cap() {
    let (clock, breaker) = breaker_of(
        r#"
        [instances.api.breaker]
        consecutive_failures = 1
        break_duration = "1s"
        break_backoff = "exponential"
        break_factor = 1e300
        max_break_duration = "18446744073709551615ns"
        "#,
    );
    expect_breaks(&breaker, &clock, &[secs(1)]);
    // The second break is u64::MAX ns: still open after a century.
    clock.advance(secs(100 * 365 * 86_400));
    assert!(
        breaker.try_acquire().is_err(),
        "the second break is the cap"
    );
}

// "`break_factor`: An exponential `break_backoff`'s growth factor" — as a Backoff factor it
// must be finite and at least 1; refused at its key path.
#[test]
fn bad_break_factors_are_refused_at_their_key() {
    for (value, finite) in [
        ("nan", false),
        ("inf", false),
        ("-inf", false),
        ("0.5", true),
        ("0.0", true),
        ("-2.0", true),
    ] {
        let err = refused(&format!(
            "[instances.api.breaker]\nbreak_backoff = \"exponential\"\nbreak_factor = {value}\n"
        ));
        assert_eq!(
            err.path(),
            "instances.api.breaker.break_factor",
            "{value}: {err}"
        );
        if finite {
            assert!(
                matches!(err.problem(), Problem::Rule(ConfigError::OutOfRange { .. })),
                "{value}: {err:?}"
            );
        } else {
            assert!(
                matches!(err.problem(), Problem::Rule(ConfigError::NotFinite { .. })),
                "{value}: {err:?}"
            );
        }
    }
}

// "A layer that names another `break_backoff` may not set it" / "a `break_jitter` not with
// `"decorrelated_jitter"` in the layer that names it" / schedule keys without any
// `break_backoff` are refused where they are set, as a Conflict.
#[test]
fn break_schedule_keys_out_of_place_are_refused_at_their_key() {
    let cases: &[(&str, &str)] = &[
        (
            "[instances.api.breaker]\nbreak_backoff = \"linear\"\nbreak_factor = 3\n",
            "instances.api.breaker.break_factor",
        ),
        (
            "[instances.api.breaker]\nbreak_backoff = \"constant\"\nbreak_factor = 3\n",
            "instances.api.breaker.break_factor",
        ),
        (
            "[configs.b.breaker]\nbreak_backoff = \"decorrelated_jitter\"\nbreak_factor = 2\n",
            "configs.b.breaker.break_factor",
        ),
        (
            "[instances.api.breaker]\nbreak_backoff = \"decorrelated_jitter\"\nbreak_jitter = \"full\"\n",
            "instances.api.breaker.break_jitter",
        ),
        (
            "[instances.api.breaker]\nbreak_factor = 3\n",
            "instances.api.breaker.break_factor",
        ),
        (
            "[instances.api.breaker]\nmax_break_duration = \"1m\"\n",
            "instances.api.breaker.max_break_duration",
        ),
        (
            "[instances.api.breaker]\nbreak_jitter = \"equal\"\n",
            "instances.api.breaker.break_jitter",
        ),
    ];
    for (i, (text, path)) in cases.iter().enumerate() {
        let err = refused(text);
        assert_eq!(err.path(), *path, "{text}\n{err}");
        // The schedule keys with no `break_backoff` anywhere (cases 4..=6) are, as the docs
        // say, a `ConfigError::Conflict` ("Keys that would be silently unused are refused
        // where they are set (as a ConfigError::Conflict: another layer may complete them)").
        // The same-layer cases the docs give no problem kind for.
        if i >= 4 {
            assert!(is_conflict(&err), "{text}\n{err:?}");
        } else {
            assert!(
                matches!(err.problem(), Problem::Rule(_) | Problem::NotHere(_)),
                "{text}\n{err:?}"
            );
        }
    }
}

// Keys of a schedule with no `break_backoff` are a Conflict "another layer may complete":
// the defaults may give them for instances that name a schedule.
#[test]
fn schedule_keys_in_the_defaults_are_completed_by_an_instances_backoff() {
    let (clock, breaker) = breaker_of(
        r#"
        [defaults.breaker]
        max_break_duration = "3s"
        break_jitter = "none"
        [instances.api.breaker]
        consecutive_failures = 1
        break_duration = "1s"
        break_backoff = "linear"
        "#,
    );
    expect_breaks(&breaker, &clock, &[secs(1), secs(2), secs(3), secs(3)]);
}

// A break_jitter from a lower layer next to a decorrelated schedule named above it: only "the
// layer that names it" may not set one, so this is accepted, and the breaker is built.
#[test]
fn a_lower_layers_break_jitter_under_decorrelated_jitter_is_accepted() {
    let config = parse(
        r#"
        [defaults.breaker]
        break_jitter = "full"
        [instances.api.breaker]
        break_backoff = "decorrelated_jitter"
        break_duration = "1s"
        "#,
    );
    let clock = FakeClock::new();
    let registry = Registry::builder(config).runtime(clock).build();
    let registry = registry.unwrap_or_else(|e| panic!("refused: {e}"));
    let breaker = registry.breaker("api").unwrap();
    assert_eq!(
        breaker.policy().break_backoff().schedule(),
        Schedule::DecorrelatedJitter { initial: secs(1) }
    );
}

// Zero and too-large durations of the schedule: "A schedule that starts at zero (or is capped
// at zero) is refused"; durations above u64::MAX ns are errors.
#[test]
fn zero_and_overflowing_schedule_durations_are_refused() {
    let err = refused(
        "[instances.api.breaker]\nbreak_backoff = \"exponential\"\nmax_break_duration = \"0s\"\n",
    );
    assert_eq!(
        err.path(),
        "instances.api.breaker.max_break_duration",
        "{err}"
    );
    let err =
        refused("[instances.api.breaker]\nbreak_backoff = \"linear\"\nbreak_duration = \"0s\"\n");
    assert_eq!(err.path(), "instances.api.breaker.break_duration", "{err}");

    // u64::MAX ns + 1, which TOML cannot spell, set on the struct: validate and a registry
    // both refuse it at its key.
    let mut config =
        raw("[instances.api.breaker]\nbreak_backoff = \"exponential\"\nbreak_duration = \"1s\"\n");
    let over = Duration::from_nanos(u64::MAX) + Duration::from_nanos(1);
    config
        .instances
        .get_mut("api")
        .unwrap()
        .breaker
        .as_mut()
        .unwrap()
        .max_break_duration = Some(over);
    let by_validate = config.validate().unwrap_err();
    assert_eq!(
        by_validate.path(),
        "instances.api.breaker.max_break_duration",
        "{by_validate}"
    );
    assert!(
        matches!(
            by_validate.problem(),
            Problem::Rule(ConfigError::DurationOverflow { .. })
        ),
        "{by_validate:?}"
    );
    let by_registry = Registry::builder(config)
        .runtime(FakeClock::new())
        .build()
        .map(|_| ())
        .expect_err("the registry refuses it too");
    assert_eq!(by_registry, by_validate);
}

// ---------------------------------------------------------------------------------------------
// Breaker: slow_call_threshold without a rate
// ---------------------------------------------------------------------------------------------

// "A call slower than this is slow (default 1 s). Used only with a `slow_call_rate`: an
// instance with a threshold and no rate is refused at this key" (as a Conflict).
#[test]
fn a_lone_slow_call_threshold_is_a_conflict_at_its_key() {
    let err = refused("[instances.api.breaker]\nslow_call_threshold = \"2s\"\n");
    assert_eq!(err.path(), "instances.api.breaker.slow_call_threshold");
    assert!(is_conflict(&err), "{err:?}");

    // Set in a base the instance uses.
    let err = refused(
        "[configs.b.breaker]\nslow_call_threshold = \"2s\"\n[instances.api]\nbase = \"b\"\nbreaker = {}\n",
    );
    assert_eq!(err.path(), "configs.b.breaker.slow_call_threshold", "{err}");
    assert!(is_conflict(&err), "{err:?}");
}

// A threshold of the defaults completed by an instance's rate; one no layer completes is
// judged "where an instance uses them: here for an instance that has the section, otherwise
// when a registry or Instance builds that policy for a name".
#[test]
fn a_defaults_threshold_is_judged_where_an_instance_uses_it() {
    // Completed by the instance's rate: accepted, and the threshold is the defaults'.
    let clock = FakeClock::new();
    let registry = on(
        &clock,
        parse(
            r#"
            [defaults.breaker]
            slow_call_threshold = "2s"
            [instances.api.breaker]
            slow_call_rate = 0.5
            "#,
        ),
    );
    let policy = registry.breaker("api").unwrap().policy();
    assert!(policy.tracks_slow_calls());
    assert!(policy.is_slow(ms(2_500)) && !policy.is_slow(ms(1_500)));

    // Uncompleted, for an instance that has the section: validate refuses, at the defaults.
    let text = "[defaults.breaker]\nslow_call_threshold = \"2s\"\n[instances.api]\nbreaker = {}\n";
    let config = raw(text);
    let by_validate = config.validate().unwrap_err();
    assert_eq!(by_validate.path(), "defaults.breaker.slow_call_threshold");
    assert!(is_conflict(&by_validate), "{by_validate:?}");
    let by_registry = Registry::builder(config)
        .runtime(FakeClock::new())
        .build()
        .map(|_| ())
        .expect_err("the registry refuses what validate refuses");
    assert_eq!(by_registry, by_validate);

    // No instance has a breaker: accepted, until a breaker is made for a name.
    let config = parse(
        "[defaults.breaker]\nslow_call_threshold = \"2s\"\n[instances.db]\ndeadline = \"1s\"\n",
    );
    let by_instance = config
        .instance("db")
        .unwrap()
        .breaker()
        .err()
        .expect("Instance::breaker builds the policy for a name: the threshold has no rate");
    assert_eq!(by_instance.path(), "defaults.breaker.slow_call_threshold");
    assert!(is_conflict(&by_instance), "{by_instance:?}");
    let registry = on(&FakeClock::new(), config);
    let err = registry
        .breaker("other")
        .map(|_| ())
        .expect_err("a registry breaker of the defaults alone is refused");
    assert_eq!(err, by_instance);
}

// ---------------------------------------------------------------------------------------------
// Breaker: reloads
// ---------------------------------------------------------------------------------------------

// Registry::reload: "a breaker keeps its state and window when the window keeps its shape":
// a reload giving a held, open breaker a break schedule keeps it open (not reset), and its
// next trips follow the new schedule.
#[test]
fn a_reload_gives_a_held_breaker_its_break_schedule() {
    let clock = FakeClock::new();
    let before = r#"
        [instances.api.breaker]
        consecutive_failures = 1
        break_duration = "1s"
    "#;
    let registry = on(&clock, parse(before));
    let breaker = registry.breaker("api").unwrap();
    expect_breaks(&breaker, &clock, &[secs(1), secs(1)]);
    assert_eq!(breaker.state(), State::Open);

    let reload = registry
        .reload(parse(
            r#"
            [instances.api.breaker]
            consecutive_failures = 1
            break_duration = "1s"
            break_backoff = "exponential"
            max_break_duration = "16s"
            "#,
        ))
        .unwrap();
    assert!(
        reload.reset.is_empty(),
        "same window shape: {:?}",
        reload.reset
    );
    assert_eq!(breaker.state(), State::Open, "state kept");
    assert_eq!(
        breaker.policy().break_backoff().schedule(),
        Schedule::Exponential {
            initial: secs(1),
            factor: 2.0
        }
    );
    // Finish the break in force, close with a success, then the schedule is the new one.
    clock.advance(secs(20));
    breaker.try_acquire().expect("probe").success();
    assert_eq!(breaker.state(), State::Closed);
    expect_breaks(
        &breaker,
        &clock,
        &[secs(1), secs(2), secs(4), secs(8), secs(16), secs(16)],
    );

    // A reload back to no schedule: every break is break_duration again.
    registry.reload(parse(before)).unwrap();
    clock.advance(secs(60));
    breaker.try_acquire().expect("probe").success();
    expect_breaks(&breaker, &clock, &[secs(1), secs(1), secs(1)]);
}

// A reload with a schedule key out of place is refused whole: the old settings stay.
#[test]
fn a_reload_with_a_bad_schedule_key_changes_nothing() {
    let clock = FakeClock::new();
    let registry = on(
        &clock,
        parse("[instances.api.breaker]\nconsecutive_failures = 1\nbreak_duration = \"1s\"\n"),
    );
    let breaker = registry.breaker("api").unwrap();
    let err = registry
        .reload(raw(
            "[instances.api.breaker]\nconsecutive_failures = 1\nbreak_duration = \"1s\"\nbreak_backoff = \"linear\"\nbreak_factor = 4\n",
        ))
        .unwrap_err();
    assert_eq!(err.path(), "instances.api.breaker.break_factor", "{err}");
    let err = registry
        .reload(raw(
            "[instances.api.breaker]\nconsecutive_failures = 1\nslow_call_threshold = \"1s\"\n",
        ))
        .unwrap_err();
    assert_eq!(
        err.path(),
        "instances.api.breaker.slow_call_threshold",
        "{err}"
    );
    assert!(is_conflict(&err), "{err:?}");
    expect_breaks(&breaker, &clock, &[secs(1), secs(1)]);
}

// ---------------------------------------------------------------------------------------------
// Bulkhead: discipline
// ---------------------------------------------------------------------------------------------

type Waiter<'a> = Pin<Box<tidewall::bulkhead::Acquire<'a, FakeClock>>>;

/// Polls every waiter once and says which are admitted (by index), keeping their permits.
fn admitted<'a>(
    waiters: &mut [Option<Waiter<'a>>],
    permits: &mut Vec<tidewall::bulkhead::Permit<'a, FakeClock>>,
) -> Vec<usize> {
    let mut ready = Vec::new();
    for (i, slot) in waiters.iter_mut().enumerate() {
        if let Some(waiter) = slot {
            match poll_once(waiter.as_mut()) {
                Poll::Ready(Ok(permit)) => {
                    permits.push(permit);
                    ready.push(i);
                    *slot = None;
                }
                Poll::Ready(Err(e)) => panic!("waiter {i} refused: {e}"),
                Poll::Pending => {}
            }
        }
    }
    ready
}

/// The order a registry bulkhead of one slot admits three waiters that queued one after the
/// other, when the slot is handed on three times.
fn admission_order(text: &str) -> Vec<usize> {
    let clock = FakeClock::new();
    let registry = on(&clock, parse(text));
    let bulkhead = registry.bulkhead("q").unwrap();
    let held = bulkhead.try_acquire_owned().unwrap();
    let mut waiters: Vec<Option<Waiter<'_>>> = (0..3)
        .map(|_| {
            let mut w = Box::pin(bulkhead.acquire());
            assert!(poll_once(w.as_mut()).is_pending(), "the slot is held");
            clock.advance(ms(1));
            Some(w)
        })
        .collect();
    assert_eq!(bulkhead.queued(), 3);
    let mut order = Vec::new();
    let mut permits = Vec::new();
    drop(held);
    for _ in 0..3 {
        let ready = admitted(&mut waiters, &mut permits);
        assert_eq!(ready.len(), 1, "one slot, one admitted: {ready:?}");
        order.extend(ready);
        permits.clear();
    }
    order
}

// BulkheadConfig: "The queue's order: `"fifo"` (default), `"lifo"` or `"codel"`"; LIFO is
// "The newest first".
#[test]
fn lifo_admits_the_newest_waiter_first_and_fifo_the_oldest() {
    let lifo = admission_order(
        "[instances.q.bulkhead]\nmax_concurrent = 1\nmax_queue = 3\nmax_wait = \"off\"\ndiscipline = \"lifo\"\n",
    );
    assert_eq!(lifo, [2, 1, 0], "lifo");
    let fifo = admission_order(
        "[instances.q.bulkhead]\nmax_concurrent = 1\nmax_queue = 3\nmax_wait = \"off\"\n",
    );
    assert_eq!(fifo, [0, 1, 2], "fifo by default");
    // The discipline from the defaults, the capacity from the instance.
    let layered = admission_order(
        "[defaults.bulkhead]\ndiscipline = \"lifo\"\nmax_wait = \"off\"\n[instances.q.bulkhead]\nmax_concurrent = 1\nmax_queue = 3\n",
    );
    assert_eq!(layered, [2, 1, 0], "lifo from the defaults");
}

// QueueDiscipline::Codel: "once the queue has not been empty for `interval`, a caller who
// joins it waits at most `target`", and the config's `codel_target`/`codel_interval` set them.
#[test]
fn codel_cuts_the_wait_of_a_caller_joining_a_standing_queue() {
    for (discipline, cut) in [("codel", true), ("fifo", false)] {
        let codel = if cut {
            "codel_target = \"5ms\"\ncodel_interval = \"100ms\"\n"
        } else {
            ""
        };
        let clock = FakeClock::new();
        let registry = on(
            &clock,
            parse(&format!(
                "[instances.q.bulkhead]\nmax_concurrent = 1\nmax_queue = 8\nmax_wait = \"off\"\ndiscipline = \"{discipline}\"\n{codel}"
            )),
        );
        let bulkhead = registry.bulkhead("q").unwrap();
        let _held = bulkhead.try_acquire().unwrap();
        let mut first = Box::pin(bulkhead.acquire());
        assert!(poll_once(first.as_mut()).is_pending());
        clock.advance(ms(150));
        assert!(
            poll_once(first.as_mut()).is_pending(),
            "{discipline}: no max_wait"
        );
        let mut late = Box::pin(bulkhead.acquire());
        assert!(poll_once(late.as_mut()).is_pending(), "{discipline}");
        clock.advance(ms(4));
        assert!(
            poll_once(late.as_mut()).is_pending(),
            "{discipline}: within the target"
        );
        clock.advance(ms(2));
        let polled = poll_once(late.as_mut());
        if cut {
            assert!(
                matches!(polled, Poll::Ready(Err(_))),
                "codel: a caller joining a queue standing 150 ms waits 5 ms at most, got {:?}",
                polled.map(|r| r.map(|_| ()))
            );
        } else {
            assert!(polled.is_pending(), "fifo: no cut");
        }
    }
}

// The codel defaults: target 5 ms, interval 100 ms. A caller joining a queue that has stood
// only 50 ms is not cut; one joining after 100 ms is, at 5 ms.
#[test]
fn codel_defaults_are_5ms_over_100ms() {
    let clock = FakeClock::new();
    let registry = on(
        &clock,
        parse(
            "[instances.q.bulkhead]\nmax_concurrent = 1\nmax_queue = 8\nmax_wait = \"off\"\ndiscipline = \"codel\"\n",
        ),
    );
    let bulkhead = registry.bulkhead("q").unwrap();
    let _held = bulkhead.try_acquire().unwrap();
    let mut first = Box::pin(bulkhead.acquire());
    assert!(poll_once(first.as_mut()).is_pending());
    clock.advance(ms(50));
    let mut early = Box::pin(bulkhead.acquire());
    assert!(poll_once(early.as_mut()).is_pending());
    clock.advance(ms(10));
    assert!(
        poll_once(early.as_mut()).is_pending(),
        "joined a queue standing 50 ms < 100 ms: not cut to 5 ms"
    );
    clock.advance(ms(60)); // the queue has stood 120 ms
    let mut late = Box::pin(bulkhead.acquire());
    assert!(poll_once(late.as_mut()).is_pending());
    clock.advance(ms(6));
    assert!(
        matches!(poll_once(late.as_mut()), Poll::Ready(Err(_))),
        "joined a standing queue: cut at the 5 ms default target"
    );
}

// BulkheadConfig: "A layer that names a `discipline` other than `"codel"` may not set CoDel's
// durations (Problem::NotHere)"; a layer naming none may fill in a base's CoDel; zero CoDel
// durations are refused at their key.
#[test]
fn codel_keys_per_layer() {
    for (text, path) in [
        (
            "[instances.q.bulkhead]\nmax_concurrent = 1\ndiscipline = \"fifo\"\ncodel_interval = \"1s\"\n",
            "instances.q.bulkhead.codel_interval",
        ),
        (
            "[configs.b.bulkhead]\ndiscipline = \"lifo\"\ncodel_target = \"1ms\"\n",
            "configs.b.bulkhead.codel_target",
        ),
        (
            "[defaults.bulkhead]\ndiscipline = \"fifo\"\ncodel_target = \"1ms\"\n",
            "defaults.bulkhead.codel_target",
        ),
    ] {
        let err = refused(text);
        assert_eq!(err.path(), path, "{text}\n{err}");
        assert!(matches!(err.problem(), Problem::NotHere(_)), "{err:?}");
    }
    // The instance names no discipline and fills in its base's CoDel.
    let config = parse(
        r#"
        [configs.b.bulkhead]
        discipline = "codel"
        [instances.q]
        base = "b"
        [instances.q.bulkhead]
        max_concurrent = 2
        codel_target = "20ms"
        codel_interval = "1s"
        "#,
    );
    on(&FakeClock::new(), config).bulkhead("q").unwrap();
    // Zero durations break the discipline's rule, at their key.
    for key in ["codel_target", "codel_interval"] {
        let err = refused(&format!(
            "[instances.q.bulkhead]\nmax_concurrent = 1\ndiscipline = \"codel\"\n{key} = \"0s\"\n"
        ));
        assert_eq!(err.path(), format!("instances.q.bulkhead.{key}"), "{err}");
        assert!(matches!(err.problem(), Problem::Rule(_)), "{err:?}");
    }
    // An unknown discipline is a syntax error.
    let err = refused("[instances.q.bulkhead]\nmax_concurrent = 1\ndiscipline = \"random\"\n");
    assert!(matches!(err.problem(), Problem::Syntax(_)), "{err:?}");
}

// CoDel keys in the defaults (naming no discipline) under an instance naming "lifo": the
// defaults only "fill in", and a lower layer's keys are not the LIFO layer's. validate and
// the registry must agree either way.
#[test]
fn defaults_codel_keys_under_a_lifo_instance_validate_and_registry_agree() {
    let config = raw(r#"
        [defaults.bulkhead]
        codel_target = "20ms"
        [instances.q.bulkhead]
        max_concurrent = 1
        discipline = "lifo"
        "#);
    let by_validate = config.validate();
    let by_registry = Registry::builder(config.clone())
        .runtime(FakeClock::new())
        .build()
        .map(|_| ());
    assert_eq!(
        by_validate, by_registry,
        "validate and the registry disagree"
    );
    assert!(
        by_validate.is_ok(),
        "the defaults' CoDel key only fills in: {by_validate:?}"
    );
}

// Registry::reload: a held bulkhead takes a new discipline in place.
#[test]
fn a_reload_switches_a_held_bulkheads_discipline() {
    let clock = FakeClock::new();
    let registry = on(
        &clock,
        parse("[instances.q.bulkhead]\nmax_concurrent = 1\nmax_queue = 3\nmax_wait = \"off\"\n"),
    );
    let bulkhead = registry.bulkhead("q").unwrap();
    let reload = registry
        .reload(parse(
            "[instances.q.bulkhead]\nmax_concurrent = 1\nmax_queue = 3\nmax_wait = \"off\"\ndiscipline = \"lifo\"\n",
        ))
        .unwrap();
    assert_eq!(reload.retuned, 1);
    let held = bulkhead.try_acquire_owned().unwrap();
    let mut waiters: Vec<Option<Waiter<'_>>> = (0..3)
        .map(|_| {
            let mut w = Box::pin(bulkhead.acquire());
            assert!(poll_once(w.as_mut()).is_pending());
            Some(w)
        })
        .collect();
    drop(held);
    let mut permits = Vec::new();
    assert_eq!(
        admitted(&mut waiters, &mut permits),
        [2],
        "after the reload to lifo, the newest first"
    );
}

// ---------------------------------------------------------------------------------------------
// HTTP client: min_attempt_time
// ---------------------------------------------------------------------------------------------

// ClientPoliciesBuilder::min_attempt_time: "A request whose deadline is no longer than this is
// refused at once with Rejected::DeadlineExceeded, nothing sent" — from the config's key, the
// equal case included.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_deadline_no_longer_than_min_attempt_time_sends_nothing() {
    for deadline in ["200ms", "300ms"] {
        let registry = Registry::new(parse(&format!(
            "[instances.api]\ndeadline = \"{deadline}\"\nmin_attempt_time = \"300ms\"\nhttp = {{}}\n"
        )))
        .unwrap();
        let client = registry.http_client("api").unwrap();
        let start = tokio::time::Instant::now();
        let (result, sends) = run_scripted(
            &client,
            get("http://api.example/"),
            Overrides::new(),
            |_| 200,
        )
        .await;
        assert!(
            matches!(result, Err(Error::Rejected(Rejected::DeadlineExceeded))),
            "deadline {deadline}: {:?}",
            status(&result)
        );
        assert_eq!(sends, 0, "deadline {deadline}: nothing sent");
        assert_eq!(start.elapsed(), Duration::ZERO, "refused at once");
    }
    // A deadline longer than it: sent.
    let registry = Registry::new(parse(
        "[instances.api]\ndeadline = \"301ms\"\nmin_attempt_time = \"300ms\"\nhttp = {}\n",
    ))
    .unwrap();
    let client = registry.http_client("api").unwrap();
    let (result, sends) = run_scripted(
        &client,
        get("http://api.example/"),
        Overrides::new(),
        |_| 200,
    )
    .await;
    assert_eq!((status(&result), sends), (Ok(200), 1));
}

/// A 1 s deadline, retries 400 ms apart (5 attempts), the `min_attempt_time` given; every
/// answer a 503. Returns (status, sends, virtual time taken).
async fn retried_under(min: &str) -> (Result<u16, String>, u32, Duration) {
    let min = if min.is_empty() {
        String::new()
    } else {
        format!("min_attempt_time = \"{min}\"\n")
    };
    let registry = Registry::new(parse(&format!(
        r#"
        [instances.api]
        deadline = "1s"
        {min}
        http = {{}}
        [instances.api.retry]
        backoff = "constant"
        initial_delay = "400ms"
        jitter = "none"
        max_attempts = 5
        "#
    )))
    .unwrap();
    let client = registry.http_client("api").unwrap();
    let start = tokio::time::Instant::now();
    let (result, sends) = run_scripted(
        &client,
        get("http://api.example/"),
        Overrides::new(),
        |_| 503,
    )
    .await;
    (status(&result), sends, start.elapsed())
}

// "Starts an attempt, or a retry's backoff sleep, only if more than `time` would be left for
// it before the deadline ... a retry it stops leaves the last attempt's answer as the
// request's". Attempts at 0, 400 and 800 ms fit a 1 s deadline; with 300 ms the third (200 ms
// left) is not started, and neither is the sleep before it.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn min_attempt_time_stops_retries_that_would_have_too_little_left() {
    assert_eq!(retried_under("").await, (Ok(503), 3, ms(800)), "no minimum");
    assert_eq!(retried_under("0s").await, (Ok(503), 3, ms(800)), "zero");
    assert_eq!(
        retried_under("150ms").await,
        (Ok(503), 3, ms(800)),
        "150 ms"
    );
    let (s, sends, took) = retried_under("300ms").await;
    assert_eq!(
        (s, sends),
        (Ok(503), 2),
        "300 ms: the third attempt has 200 ms left"
    );
    assert_eq!(
        took,
        ms(400),
        "300 ms: the sleep before it is not started either"
    );
    // "only if more than `time` would be left": exactly 200 ms left is not more than 200 ms.
    let (s, sends, _) = retried_under("200ms").await;
    assert_eq!(
        (s, sends),
        (Ok(503), 2),
        "200 ms left is not more than 200 ms"
    );
    let (s, sends, _) = retried_under("199ms").await;
    assert_eq!((s, sends), (Ok(503), 3), "200 ms left is more than 199 ms");
}

// "Without a deadline it has no effect": no layer sets `deadline` (none, for a config's
// client) or it is "off"; an Overrides deadline brings one back, and min_attempt_time then
// applies to it.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn min_attempt_time_without_a_deadline_and_with_overrides() {
    for deadline in ["", "deadline = \"off\"\n"] {
        let registry = Registry::new(parse(&format!(
            r#"
            [instances.api]
            {deadline}
            min_attempt_time = "1h"
            http = {{}}
            [instances.api.retry]
            backoff = "constant"
            initial_delay = "10ms"
            jitter = "none"
            max_attempts = 3
            "#
        )))
        .unwrap();
        let client = registry.http_client("api").unwrap();
        let (result, sends) = run_scripted(
            &client,
            get("http://api.example/"),
            Overrides::new(),
            |_| 503,
        )
        .await;
        assert_eq!(
            (status(&result), sends),
            (Ok(503), 3),
            "no deadline ({deadline:?}): every attempt made"
        );
        // An Overrides deadline shorter than the minimum: refused, nothing sent.
        let (result, sends) = run_scripted(
            &client,
            get("http://api.example/"),
            Overrides::new().deadline(secs(60)),
            |_| 200,
        )
        .await;
        assert!(
            matches!(result, Err(Error::Rejected(Rejected::DeadlineExceeded))),
            "{:?}",
            status(&result)
        );
        assert_eq!(sends, 0);
        // Duration::MAX is "about thirty years": more than an hour.
        let (result, sends) = run_scripted(
            &client,
            get("http://api.example/"),
            Overrides::new().deadline(Duration::MAX),
            |_| 200,
        )
        .await;
        assert_eq!((status(&result), sends), (Ok(200), 1));
    }
}

// min_attempt_time from the defaults reaches an instance's client (layering), and
// Instance::min_attempt_time reports the merged value.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn min_attempt_time_layers_down_to_the_client() {
    let config = parse(
        r#"
        [defaults]
        min_attempt_time = "500ms"
        [configs.b]
        deadline = "400ms"
        [instances.api]
        base = "b"
        http = {}
        "#,
    );
    assert_eq!(config.instance("api").unwrap().min_attempt_time(), ms(500));
    let registry = Registry::new(config).unwrap();
    let client = registry.http_client("api").unwrap();
    let (result, sends) = run_scripted(
        &client,
        get("http://api.example/"),
        Overrides::new(),
        |_| 200,
    )
    .await;
    assert!(
        matches!(result, Err(Error::Rejected(Rejected::DeadlineExceeded))),
        "{:?}",
        status(&result)
    );
    assert_eq!(sends, 0);
}

// Extremes: u64::MAX ns is accepted (every request with a deadline refused); one nanosecond
// more is DurationOverflow, from the builder and from a configuration (validate and registry
// alike, at the key of the layer that sets it).
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn min_attempt_time_extremes() {
    let over = Duration::from_nanos(u64::MAX) + Duration::from_nanos(1);
    let err = ClientPolicies::builder()
        .min_attempt_time(over)
        .build()
        .map(|_| ())
        .expect_err("above u64::MAX ns");
    assert!(
        matches!(err, ConfigError::DurationOverflow { .. }),
        "{err:?}"
    );
    ClientPolicies::builder()
        .min_attempt_time(Duration::from_nanos(u64::MAX))
        .build()
        .expect("u64::MAX ns itself is allowed");

    let registry = Registry::new(parse(
        "[instances.api]\ndeadline = \"1h\"\nmin_attempt_time = \"18446744073709551615ns\"\nhttp = {}\n",
    ))
    .unwrap();
    let client = registry.http_client("api").unwrap();
    let (result, sends) = run_scripted(
        &client,
        get("http://api.example/"),
        Overrides::new(),
        |_| 200,
    )
    .await;
    assert!(
        matches!(result, Err(Error::Rejected(Rejected::DeadlineExceeded))),
        "{:?}",
        status(&result)
    );
    assert_eq!(sends, 0);

    for layer in ["defaults", "instances.api"] {
        let mut config = raw("[instances.api]\nhttp = {}\n");
        let policies = if layer == "defaults" {
            &mut config.defaults
        } else {
            config.instances.get_mut("api").unwrap()
        };
        policies.min_attempt_time = Some(over);
        let by_validate = config
            .validate()
            .map(|_| ())
            .expect_err("validate refuses it");
        assert_eq!(
            by_validate.path(),
            format!("{layer}.min_attempt_time"),
            "{by_validate}"
        );
        assert!(
            matches!(
                by_validate.problem(),
                Problem::Rule(ConfigError::DurationOverflow { .. })
            ),
            "{by_validate:?}"
        );
        let by_registry = Registry::new(config)
            .map(|_| ())
            .expect_err("the registry refuses it");
        assert_eq!(by_registry, by_validate);
    }
}

// A reload reaches a held client's min_attempt_time ("Every clone follows reloads").
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_reload_changes_a_held_clients_min_attempt_time() {
    let registry =
        Registry::new(parse("[instances.api]\ndeadline = \"200ms\"\nhttp = {}\n")).unwrap();
    let client = registry.http_client("api").unwrap();
    let (result, sends) = run_scripted(
        &client,
        get("http://api.example/"),
        Overrides::new(),
        |_| 200,
    )
    .await;
    assert_eq!((status(&result), sends), (Ok(200), 1));
    registry
        .reload(parse(
            "[instances.api]\ndeadline = \"200ms\"\nmin_attempt_time = \"250ms\"\nhttp = {}\n",
        ))
        .unwrap();
    let (result, sends) = run_scripted(
        &client,
        get("http://api.example/"),
        Overrides::new(),
        |_| 200,
    )
    .await;
    assert!(
        matches!(result, Err(Error::Rejected(Rejected::DeadlineExceeded))),
        "after the reload: {:?}",
        status(&result)
    );
    assert_eq!(sends, 0);
    registry
        .reload(parse("[instances.api]\ndeadline = \"200ms\"\nhttp = {}\n"))
        .unwrap();
    let (result, sends) = run_scripted(
        &client,
        get("http://api.example/"),
        Overrides::new(),
        |_| 200,
    )
    .await;
    assert_eq!((status(&result), sends), (Ok(200), 1), "back to zero");
}

// ---------------------------------------------------------------------------------------------
// HTTP client: client_errors
// ---------------------------------------------------------------------------------------------

/// (status, sends, breaker counts (calls, failures)) of a GET answered 404 every time.
async fn a_404_under(http: &str) -> (Result<u16, String>, u32, (u32, u32)) {
    let registry = Registry::new(parse(&client_text(http))).unwrap();
    let client = registry.http_client("api").unwrap();
    let (result, sends) = run_scripted(
        &client,
        get("http://api.example/x"),
        Overrides::new(),
        |_| 404,
    )
    .await;
    let counts = client
        .breakers()
        .unwrap()
        .counts(&api())
        .map_or((0, 0), |c| (c.calls, c.failures));
    (status(&result), sends, counts)
}

// HttpConfig::client_errors: "The 4xx statuses named nowhere else: "success" (default),
// "ignored", "failure" or "retryable_failure"" — ClientErrors: Success "a success for the
// breaker, not retried"; Ignored "neither a success nor a failure"; Failure "a failure for the
// breaker, not retried"; RetryableFailure "a failure for the breaker, and retried".
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn client_errors_verdicts_show_in_retries_and_breaker_counts() {
    assert_eq!(
        a_404_under("").await,
        (Ok(404), 1, (1, 0)),
        "default: success"
    );
    assert_eq!(
        a_404_under("client_errors = \"success\"").await,
        (Ok(404), 1, (1, 0)),
        "success"
    );
    assert_eq!(
        a_404_under("client_errors = \"ignored\"").await,
        (Ok(404), 1, (0, 0)),
        "ignored: not recorded"
    );
    assert_eq!(
        a_404_under("client_errors = \"failure\"").await,
        (Ok(404), 1, (1, 1)),
        "failure: counted, not retried"
    );
    assert_eq!(
        a_404_under("client_errors = \"retryable_failure\"").await,
        (Ok(404), 3, (3, 3)),
        "retryable_failure: counted and retried"
    );
}

// "The 4xx statuses named nowhere else": the standard table's 429 and the file's own lists
// keep their verdicts whatever `client_errors` says.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn client_errors_leave_statuses_named_elsewhere_alone() {
    async fn sends_of(http: &str, code: u16) -> u32 {
        let registry = Registry::new(parse(&client_text(http))).unwrap();
        let client = registry.http_client("api").unwrap();
        run_scripted(
            &client,
            get("http://api.example/x"),
            Overrides::new(),
            move |_| code,
        )
        .await
        .1
    }
    assert_eq!(
        sends_of("client_errors = \"success\"", 429).await,
        3,
        "429 stays retryable"
    );
    assert_eq!(
        sends_of("client_errors = \"ignored\"", 408).await,
        3,
        "408 stays retryable"
    );
    assert_eq!(
        sends_of(
            "client_errors = \"retryable_failure\"\nfail_statuses = [409]",
            409
        )
        .await,
        1,
        "a fail_status is not retried"
    );
    assert_eq!(
        sends_of("client_errors = \"failure\"\nretry_statuses = [418]", 418).await,
        3,
        "a retry_status is retried"
    );
    assert_eq!(
        sends_of("client_errors = \"retryable_failure\"", 503).await,
        3,
        "a 5xx as the table says"
    );
    assert_eq!(
        sends_of("client_errors = \"retryable_failure\"", 200).await,
        1,
        "a 2xx is a success"
    );
}

// Layering of `[http]` keys: client_errors from the defaults, the section from the instance;
// a reload changes the verdict of a held client.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn client_errors_layer_and_follow_reloads() {
    let text = |verdict: &str| {
        format!(
            r#"
            [defaults.http]
            client_errors = "{verdict}"
            {}
            "#,
            client_text("")
        )
    };
    let registry = Registry::new(parse(&text("retryable_failure"))).unwrap();
    let client = registry.http_client("api").unwrap();
    let (_, sends) = run_scripted(
        &client,
        get("http://api.example/x"),
        Overrides::new(),
        |_| 404,
    )
    .await;
    assert_eq!(sends, 3, "retryable_failure from the defaults");
    registry.reload(parse(&text("success"))).unwrap();
    let (_, sends) = run_scripted(
        &client,
        get("http://api.example/x"),
        Overrides::new(),
        |_| 404,
    )
    .await;
    assert_eq!(sends, 1, "after the reload: success, not retried");
    registry.reload(parse(&text("retryable_failure"))).unwrap();
    let (_, sends) = run_scripted(
        &client,
        get("http://api.example/x"),
        Overrides::new(),
        |_| 404,
    )
    .await;
    assert_eq!(sends, 3, "and back");
    // An unknown verdict is a syntax error, and a reload with it changes nothing.
    let err = refused(&client_text("client_errors = \"fatal\""));
    assert!(matches!(err.problem(), Problem::Syntax(_)), "{err:?}");
}

// ---------------------------------------------------------------------------------------------
// HTTP client: idempotency_key_header
// ---------------------------------------------------------------------------------------------

async fn post_sends(http: &str, header: Option<(&str, &str)>) -> u32 {
    let registry = Registry::new(parse(&client_text(http))).unwrap();
    let client = registry.http_client("api").unwrap();
    run_scripted(
        &client,
        post("http://api.example/orders", header),
        Overrides::new(),
        |_| 503,
    )
    .await
    .1
}

// HttpConfig::idempotency_key_header: "The header whose presence makes any request replayable
// (default "Idempotency-Key"; header names are case-insensitive), or "off": no header does";
// replay_methods: "a request with the `idempotency_key_header` is sent again whatever its
// method".
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn idempotency_key_header_makes_a_post_replayable() {
    assert_eq!(post_sends("", None).await, 1, "a bare POST is sent once");
    assert_eq!(
        post_sends("", Some(("Idempotency-Key", "k1"))).await,
        3,
        "the default header"
    );
    let custom = "idempotency_key_header = \"X-Request-Id\"";
    assert_eq!(
        post_sends(custom, Some(("x-request-id", "r1"))).await,
        3,
        "the configured header, any case"
    );
    assert_eq!(
        post_sends(custom, Some(("Idempotency-Key", "k1"))).await,
        1,
        "the configured header replaces the default one"
    );
    let spelled = "idempotency_key_header = \"x-REQUEST-id\"";
    assert_eq!(
        post_sends(spelled, Some(("X-Request-Id", "r1"))).await,
        3,
        "header names are case-insensitive in the file too"
    );
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn idempotency_key_header_off_disables_the_default_header() {
    let off = "idempotency_key_header = \"off\"";
    assert_eq!(
        post_sends(off, Some(("Idempotency-Key", "k1"))).await,
        1,
        "off: no header makes a POST replayable"
    );
    // GET is still replayed, and replay_methods still work.
    let registry = Registry::new(parse(&client_text(off))).unwrap();
    let client = registry.http_client("api").unwrap();
    let (_, sends) = run_scripted(
        &client,
        get("http://api.example/"),
        Overrides::new(),
        |_| 503,
    )
    .await;
    assert_eq!(sends, 3, "GET stays idempotent");
    assert_eq!(
        post_sends(&format!("{off}\nreplay_methods = [\"POST\"]"), None).await,
        3,
        "a replay method still replays"
    );
}

// http_client errors: "an `idempotency_key_header` that is not a header name
// (Problem::Malformed)", at its key path; "off" is never a name.
#[test]
fn a_malformed_idempotency_key_header_is_refused_at_its_key() {
    for bad in ["bad header", "", "x:y", "caf\u{e9}"] {
        let text = client_text(&format!("idempotency_key_header = \"{bad}\""));
        let err = refused(&text);
        assert_eq!(
            err.path(),
            "instances.api.http.idempotency_key_header",
            "{bad:?}: {err}"
        );
        assert!(
            matches!(err.problem(), Problem::Malformed(_)),
            "{bad:?}: {err:?}"
        );
    }
    // In the defaults, judged and placed there.
    let err = refused(&format!(
        "[defaults.http]\nidempotency_key_header = \"no good\"\n{}",
        client_text("")
    ));
    assert_eq!(err.path(), "defaults.http.idempotency_key_header", "{err}");
}

// A reload switches the header of a held client.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_reload_switches_the_idempotency_key_header() {
    let registry = Registry::new(parse(&client_text(""))).unwrap();
    let client = registry.http_client("api").unwrap();
    let keyed = || post("http://api.example/orders", Some(("Idempotency-Key", "k")));
    let (_, sends) = run_scripted(&client, keyed(), Overrides::new(), |_| 503).await;
    assert_eq!(sends, 3);
    registry
        .reload(parse(&client_text("idempotency_key_header = \"off\"")))
        .unwrap();
    let (_, sends) = run_scripted(&client, keyed(), Overrides::new(), |_| 503).await;
    assert_eq!(sends, 1, "off after the reload");
    // A reload with a malformed header is refused; "off" stays in force.
    let err = registry
        .reload(raw(&client_text("idempotency_key_header = \"a b\"")))
        .unwrap_err();
    assert_eq!(err.path(), "instances.api.http.idempotency_key_header");
    let (_, sends) = run_scripted(&client, keyed(), Overrides::new(), |_| 503).await;
    assert_eq!(sends, 1, "the refused reload changed nothing");
}

// ---------------------------------------------------------------------------------------------
// validate and the registry agree
// ---------------------------------------------------------------------------------------------

// Config::validate "Checks every layer and every instance through the policy builders", and
// the registry's build refuses "The configuration's first Invalid setting": the same error for
// every bad use of the new keys.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn validate_and_registry_build_refuse_alike() {
    let cases = [
        "[instances.a.breaker]\nslow_call_threshold = \"1s\"\n",
        "[instances.a.breaker]\nbreak_factor = 2\n",
        "[instances.a.breaker]\nbreak_backoff = \"exponential\"\nbreak_factor = 0.9\n",
        "[instances.a.breaker]\nbreak_backoff = \"linear\"\nbreak_duration = \"10s\"\nmax_break_duration = \"1s\"\n",
        "[instances.a.bulkhead]\nmax_concurrent = 1\ndiscipline = \"lifo\"\ncodel_interval = \"1s\"\n",
        "[instances.a.bulkhead]\nmax_concurrent = 1\ndiscipline = \"codel\"\ncodel_target = \"0s\"\n",
        "[instances.a]\nhttp = { idempotency_key_header = \"not a header\" }\n",
        "[instances.a]\nmin_attempt_time = \"1s\"\ndeadline = \"0s\"\n",
        "[defaults.breaker]\nslow_call_threshold = \"1s\"\n[instances.a]\nbreaker = {}\n",
        "[configs.c.breaker]\nbreak_backoff = \"constant\"\nbreak_jitter = \"full\"\nbreak_factor = 3\n",
    ];
    for text in cases {
        let config = raw(text);
        let by_validate = config
            .validate()
            .err()
            .unwrap_or_else(|| panic!("validate must refuse:\n{text}"));
        let by_registry = Registry::new(config)
            .err()
            .unwrap_or_else(|| panic!("the registry must refuse:\n{text}"));
        let by_toml = Config::from_toml(text)
            .map(|_| ())
            .expect_err("from_toml validates");
        assert_eq!(by_registry, by_validate, "{text}");
        assert_eq!(by_toml, by_validate, "{text}");
    }
}

// ---------------------------------------------------------------------------------------------
// More: the keys through an HTTP client's per-host stages, and printing them back
// ---------------------------------------------------------------------------------------------

// Instance::http_client: "`[breaker]` ... a breaker ... per authority" — with its break
// schedule; a reload retunes the per-host table in place, the schedule included.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn an_http_clients_host_breakers_take_the_break_schedule_and_its_reloads() {
    let text = |backoff: &str| {
        format!(
            r#"
            [instances.api]
            deadline = "10s"
            http = {{}}
            [instances.api.breaker]
            consecutive_failures = 1
            break_duration = "1s"
            {backoff}
            "#
        )
    };
    let registry = Registry::new(parse(&text(
        "break_backoff = \"linear\"\nmax_break_duration = \"3s\"",
    )))
    .unwrap();
    let client = registry.http_client("api").unwrap();
    assert_eq!(
        client
            .breakers()
            .unwrap()
            .policy()
            .break_backoff()
            .schedule(),
        Schedule::Linear {
            initial: secs(1),
            step: secs(1)
        }
    );
    // Trips in a row through requests: each refused until its break ends.
    let mut breaks = Vec::new();
    for _ in 0..4 {
        let (result, _) = run_scripted(
            &client,
            get("http://api.example/"),
            Overrides::new(),
            |_| 503,
        )
        .await;
        assert_eq!(
            status(&result),
            Ok(503),
            "the failure that opens it is the answer"
        );
        let opened = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(ms(100)).await;
            let probe = client.breakers().unwrap().try_acquire(&api());
            if let Ok(probe) = probe {
                drop(probe);
                break;
            }
        }
        breaks.push(opened.elapsed());
        // Let the next request be the probe.
    }
    assert_eq!(
        breaks,
        [secs(1), secs(2), secs(3), secs(3)],
        "linear 1 s steps, held at 3 s"
    );

    registry
        .reload(parse(&text(
            "break_backoff = \"exponential\"\nbreak_factor = 4\nmax_break_duration = \"1h\"",
        )))
        .unwrap();
    assert_eq!(
        client
            .breakers()
            .unwrap()
            .policy()
            .break_backoff()
            .schedule(),
        Schedule::Exponential {
            initial: secs(1),
            factor: 4.0
        },
        "the reload retuned the per-host table"
    );
}

// "A failure that leaves the authority's breaker open is not retried either": a
// `retryable_failure` 404 that opens the host's breaker is the answer, after one send; the
// next request is refused with CircuitOpen, nothing sent.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_retryable_client_error_that_opens_the_breaker_is_not_retried() {
    let registry = Registry::new(parse(
        r#"
        [instances.api]
        deadline = "10s"
        [instances.api.retry]
        backoff = "constant"
        initial_delay = "10ms"
        jitter = "none"
        max_attempts = 3
        [instances.api.breaker]
        consecutive_failures = 2
        failure_rate = "off"
        [instances.api.http]
        client_errors = "retryable_failure"
        "#,
    ))
    .unwrap();
    let client = registry.http_client("api").unwrap();
    let (result, sends) = run_scripted(
        &client,
        get("http://api.example/x"),
        Overrides::new(),
        |_| 404,
    )
    .await;
    assert_eq!(
        (status(&result), sends),
        (Ok(404), 2),
        "retried once, then open"
    );
    assert_eq!(client.breakers().unwrap().state(&api()), Some(State::Open));
    let (result, sends) = run_scripted(
        &client,
        get("http://api.example/x"),
        Overrides::new(),
        |_| 404,
    )
    .await;
    assert!(
        matches!(result, Err(Error::Rejected(Rejected::CircuitOpen { .. }))),
        "{:?}",
        status(&result)
    );
    assert_eq!(sends, 0);
}

// A `Retry-After` sleep is a retry's backoff sleep: with 600 ms minimum and a 1 s deadline, a
// 503 asking for 500 ms leaves 500 ms: not started, and the 503 is the answer at once.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn min_attempt_time_weighs_a_retry_after_sleep() {
    let registry = Registry::new(parse(
        r#"
        [instances.api]
        deadline = "1s"
        min_attempt_time = "600ms"
        http = {}
        [instances.api.retry]
        backoff = "constant"
        initial_delay = "1ms"
        jitter = "none"
        max_attempts = 3
        "#,
    ))
    .unwrap();
    let client = registry.http_client("api").unwrap();
    let sends = AtomicU32::new(0);
    let start = tokio::time::Instant::now();
    let result = client
        .run(get("http://api.example/"), Overrides::new(), |_request| {
            sends.fetch_add(1, SeqCst);
            async {
                Ok::<_, std::io::Error>(
                    http::Response::builder()
                        .status(503)
                        .header("retry-after", "0")
                        .body(())
                        .unwrap(),
                )
            }
        })
        .await;
    // Retry-After 0: the 1 ms backoff, 999 ms left: retried (the minimum is met).
    assert_eq!(status(&result), Ok(503));
    let first = sends.swap(0, SeqCst);
    assert!(
        first >= 2,
        "a retry with 999 ms left was made: {first} sends"
    );
    let _ = start;

    let start = tokio::time::Instant::now();
    let result = client
        .run(get("http://api.example/"), Overrides::new(), |_request| {
            sends.fetch_add(1, SeqCst);
            async {
                Ok::<_, std::io::Error>(
                    http::Response::builder()
                        .status(503)
                        .header("retry-after", "1")
                        .body(())
                        .unwrap(),
                )
            }
        })
        .await;
    // Retry-After 1 s ends at the deadline: the answer at once.
    assert_eq!((status(&result), sends.load(SeqCst)), (Ok(503), 1));
    assert_eq!(
        start.elapsed(),
        Duration::ZERO,
        "answered at once, no sleep"
    );
}

// A host's bulkhead from `[bulkhead]` with `discipline = "lifo"`: the newest queued request
// is sent first when the slot frees.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn an_http_clients_host_bulkhead_takes_the_discipline() {
    let registry = Registry::new(parse(
        r#"
        [instances.api]
        deadline = "10s"
        http = {}
        [instances.api.bulkhead]
        max_concurrent = 1
        max_queue = 3
        max_wait = "off"
        discipline = "lifo"
        "#,
    ))
    .unwrap();
    let client = registry.http_client("api").unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for name in ["a", "b", "c", "d"] {
        let client = client.clone();
        let log = Arc::clone(&log);
        tasks.push(tokio::spawn(async move {
            client
                .run(
                    get(&format!("http://api.example/{name}")),
                    Overrides::new(),
                    move |request| {
                        log.lock().unwrap().push(request.uri().path().to_owned());
                        async {
                            tokio::time::sleep(ms(100)).await;
                            Ok::<_, std::io::Error>(response(200))
                        }
                    },
                )
                .await
                .map(|r| r.status().as_u16())
                .map_err(|e| format!("{e:?}"))
        }));
        tokio::time::sleep(ms(1)).await;
    }
    for task in tasks {
        assert_eq!(task.await.unwrap(), Ok(200));
    }
    assert_eq!(*log.lock().unwrap(), ["/a", "/d", "/c", "/b"], "lifo");
}

// Config is Serialize "so an admin endpoint can print the configuration in force": the new
// keys print back to themselves.
#[test]
fn the_new_keys_print_back_to_themselves() {
    let text = r#"
        [defaults]
        min_attempt_time = "250ms"
        [defaults.breaker]
        break_backoff = "exponential"
        break_factor = 1.5
        max_break_duration = "2m"
        break_jitter = "equal"
        [instances.q.bulkhead]
        max_concurrent = 4
        discipline = "codel"
        codel_target = "20ms"
        codel_interval = "1s"
        [instances.api]
        min_attempt_time = "1h 30m"
        [instances.api.http]
        client_errors = "retryable_failure"
        idempotency_key_header = "off"
        [instances.web.http]
        client_errors = "failure"
        idempotency_key_header = "X-Request-Id"
        [instances.slow.breaker]
        slow_call_rate = 0.5
        slow_call_threshold = "3s"
    "#;
    let config = parse(text);
    let printed = toml::to_string(&config).expect("prints as TOML");
    let again = Config::from_toml(&printed)
        .unwrap_or_else(|e| panic!("the printed config must read back: {e}\n{printed}"));
    assert_eq!(again, config, "{printed}");
    let json = serde_json::to_string(&config).unwrap();
    let from_json: Config = serde_json::from_str(&json).unwrap();
    assert_eq!(from_json, config, "{json}");
    from_json.validate().unwrap();
}

// Registry::reload with a bulkhead's queue standing: "A queue that already stands when a
// reconfigure switches CoDel on counts from when it began to stand if the bulkhead knew it (it
// had CoDel, LIFO or priorities before), else from the switch".
#[test]
fn a_reload_to_codel_counts_a_lifo_queue_from_when_it_began_to_stand() {
    for (before, knew) in [("lifo", true), ("fifo", false)] {
        let clock = FakeClock::new();
        let text = |discipline: &str, codel: &str| {
            format!(
                "[instances.q.bulkhead]\nmax_concurrent = 1\nmax_queue = 8\nmax_wait = \"off\"\ndiscipline = \"{discipline}\"\n{codel}"
            )
        };
        let registry = on(&clock, parse(&text(before, "")));
        let bulkhead = registry.bulkhead("q").unwrap();
        let _held = bulkhead.try_acquire().unwrap();
        let mut first = Box::pin(bulkhead.acquire());
        assert!(poll_once(first.as_mut()).is_pending());
        clock.advance(ms(150));
        registry
            .reload(parse(&text(
                "codel",
                "codel_target = \"5ms\"\ncodel_interval = \"100ms\"\n",
            )))
            .unwrap();
        let mut late = Box::pin(bulkhead.acquire());
        assert!(poll_once(late.as_mut()).is_pending());
        clock.advance(ms(6));
        let cut = matches!(poll_once(late.as_mut()), Poll::Ready(Err(_)));
        assert_eq!(
            cut, knew,
            "before {before}: a joiner 150 ms into the standing queue is cut: {knew}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// More edges
// ---------------------------------------------------------------------------------------------

// Registry::reload: "an invalid configuration (or one under which a policy the registry holds
// could not be built ...) is refused with its error, and the old one stays in force". A held
// breaker of an undeclared name runs on the defaults alone: a reload giving the defaults a
// lone threshold (or schedule key) would leave it unbuildable.
#[test]
fn a_reload_that_leaves_a_held_defaults_breaker_unbuildable_is_refused() {
    let clock = FakeClock::new();
    let registry = on(
        &clock,
        parse(
            "[defaults.breaker]\nconsecutive_failures = 1\nbreak_duration = \"1s\"\n[instances.db]\ndeadline = \"1s\"\n",
        ),
    );
    let other = registry.breaker("other").unwrap();
    for (key, line) in [
        ("slow_call_threshold", "slow_call_threshold = \"2s\""),
        ("break_factor", "break_factor = 3"),
        ("max_break_duration", "max_break_duration = \"1m\""),
    ] {
        let text = format!(
            "[defaults.breaker]\nconsecutive_failures = 1\nbreak_duration = \"1s\"\n{line}\n[instances.db]\ndeadline = \"1s\"\n"
        );
        let config = raw(&text);
        assert!(
            config.validate().is_ok(),
            "{key}: no instance has the section"
        );
        let err = registry.reload(config).err().unwrap_or_else(|| {
            panic!("{key}: the held breaker `other` could not be built under it")
        });
        assert_eq!(err.path(), format!("defaults.breaker.{key}"), "{err}");
        assert!(is_conflict(&err), "{err:?}");
    }
    expect_breaks(&other, &clock, &[secs(1), secs(1)]);
}

// "nothing is clamped or rounded": a first break above the schedule's cap (the default 30 s)
// is refused, never cut to the cap nor let grow past it.
#[test]
fn a_break_duration_above_the_schedule_cap_is_refused() {
    let mut wrong = Vec::new();
    for (max, kind) in [
        ("", "exponential"),
        ("max_break_duration = \"10s\"\n", "linear"),
        ("max_break_duration = \"10s\"\n", "decorrelated_jitter"),
    ] {
        let text = format!(
            "[instances.api.breaker]\nbreak_duration = \"1m\"\nbreak_backoff = \"{kind}\"\n{max}"
        );
        match Config::from_toml(&text) {
            Err(err) => {
                // At either key; or, as the project places a Conflict between two keys, at the
                // section, with a rule that names the section's own keys (`max_delay` is not a
                // `[breaker]` key: written there it is an unknown field).
                let at_key = err.path() == "instances.api.breaker.break_duration"
                    || err.path() == "instances.api.breaker.max_break_duration";
                let message = err.to_string();
                let names_keys = err.path() == "instances.api.breaker"
                    && message.contains("break_duration")
                    && !message.contains("max_delay");
                if !at_key && !names_keys {
                    wrong.push(format!(
                        "{kind} {max:?}: refused at `{}`, naming no key of `[breaker]`: {err}",
                        err.path()
                    ));
                }
            }
            Ok(config) => {
                let clock = FakeClock::new();
                let b = on(&clock, config).breaker("api").unwrap();
                wrong.push(format!(
                    "{kind} {max:?}: a 1 min first break over a smaller cap was accepted; \
                     its breaks: {:?}",
                    (0..3)
                        .map(|k| b.policy().break_duration(k, 1))
                        .collect::<Vec<_>>()
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

// Extremes that must neither overflow nor panic: a u64::MAX ns linear step.
#[test]
fn a_linear_schedule_of_u64_max_steps_holds_at_the_cap() {
    let (clock, breaker) = breaker_of(
        r#"
        [instances.api.breaker]
        consecutive_failures = 1
        break_duration = "18446744073709551615ns"
        break_backoff = "linear"
        max_break_duration = "18446744073709551615ns"
        "#,
    );
    let policy = breaker.policy();
    for trip in [0, 1, 2, 50] {
        assert_eq!(
            policy.break_duration(trip, 7),
            Duration::from_nanos(u64::MAX),
            "trip {trip}"
        );
    }
    breaker.try_acquire().unwrap().failure();
    clock.advance(secs(200 * 365 * 86_400));
    assert!(
        breaker.try_acquire().is_err(),
        "still in its 584-year break"
    );
}

// "A request whose deadline is no longer than this is refused at once ... nothing sent": the
// default minimum is zero, and a zero deadline is no longer than zero.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_zero_overrides_deadline_sends_nothing_even_with_a_zero_minimum() {
    let registry = Registry::new(parse("[instances.api]\ndeadline = \"1s\"\nhttp = {}\n")).unwrap();
    let client = registry.http_client("api").unwrap();
    let (result, sends) = run_scripted(
        &client,
        get("http://api.example/"),
        Overrides::new().deadline(Duration::ZERO),
        |_| 200,
    )
    .await;
    assert!(
        matches!(result, Err(Error::Rejected(Rejected::DeadlineExceeded))),
        "{:?}",
        status(&result)
    );
    assert_eq!(sends, 0, "nothing sent");
}

// LivePipeline: "`deadline`, `attempt_timeout` and `min_attempt_time` come from the instance's
// layers"; PipelineBuilder::min_attempt_time: "A first attempt that waited for nothing starts
// at once ... whatever this minimum"; every retry is weighed.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_pipelines_min_attempt_time_from_the_file() {
    let registry = Registry::new(parse(
        r#"
        [defaults]
        min_attempt_time = "300ms"
        [instances.p]
        deadline = "1s"
        [instances.p.retry]
        backoff = "constant"
        initial_delay = "400ms"
        jitter = "none"
        max_attempts = 5
        "#,
    ))
    .unwrap();
    let pipeline = registry.pipeline("p").unwrap();
    let attempts = AtomicU32::new(0);
    let result: Result<(), Error<&str>> = pipeline
        .call(|| {
            attempts.fetch_add(1, SeqCst);
            async { Err("busy") }
        })
        .await;
    assert_eq!(result, Err(Error::Inner("busy")));
    assert_eq!(
        attempts.load(SeqCst),
        2,
        "the third attempt would have 200 ms < 300 ms"
    );
}

// Config::validate: "The first Invalid setting, in the order: `base` keys outside instances,
// the defaults, each config by name, each instance by name."
#[test]
fn validate_reports_the_new_keys_in_layer_order() {
    let text = r#"
        [defaults.breaker]
        break_backoff = "exponential"
        break_factor = 0.5
        [configs.b.bulkhead]
        discipline = "fifo"
        codel_target = "1ms"
        [instances.a.http]
        idempotency_key_header = "bad header"
    "#;
    let config = raw(text);
    assert_eq!(
        config.validate().unwrap_err().path(),
        "defaults.breaker.break_factor"
    );
    let mut config = raw(text);
    config.defaults.breaker = None;
    assert_eq!(
        config.validate().unwrap_err().path(),
        "configs.b.bulkhead.codel_target"
    );
    config.configs.clear();
    assert_eq!(
        config.validate().unwrap_err().path(),
        "instances.a.http.idempotency_key_header"
    );
    // A bad header in the defaults is refused even when no instance is an HTTP client: every
    // layer is checked.
    let config = raw("[defaults.http]\nidempotency_key_header = \"bad header\"\n");
    let err = config
        .validate()
        .map(|_| ())
        .expect_err("a malformed header name in the defaults");
    assert_eq!(err.path(), "defaults.http.idempotency_key_header");
}

// A break_jitter in a layer above the one naming decorrelated jitter: whatever the verdict,
// validate, Instance::breaker and the registry must give the same one.
#[test]
fn a_break_jitter_above_a_decorrelated_schedule_is_judged_alike_everywhere() {
    let text = r#"
        [defaults.breaker]
        break_backoff = "decorrelated_jitter"
        [instances.api.breaker]
        break_jitter = "full"
    "#;
    let config = raw(text);
    let by_validate = config.validate();
    let by_instance = config.instance("api").unwrap().breaker().map(|_| ());
    let by_registry = Registry::builder(config.clone())
        .runtime(FakeClock::new())
        .build()
        .and_then(|r| r.breaker("api").map(|_| ()));
    assert_eq!(by_validate, by_instance, "validate vs Instance::breaker");
    assert_eq!(by_validate, by_registry, "validate vs the registry");
    if let Err(err) = &by_validate {
        assert_eq!(err.path(), "instances.api.breaker.break_jitter", "{err}");
    }
}
