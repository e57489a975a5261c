//! The keys that reach the last builder options a file could not say: a bulkhead's queue
//! discipline, an HTTP client's `min_attempt_time`, its verdict on other 4xx and its
//! idempotency key's header; the keys that would do nothing alone, refused; the standard
//! client written out; and every fuzz seed, built. (A breaker's break schedule, in virtual
//! time, is in `hostile_config_keys.rs`.) The client scenarios run on every runtime adapter.
#![cfg(all(feature = "toml", feature = "http", feature = "metrics"))]

mod common;
mod keyed_support;
mod support;

use std::future::Future as _;
use std::task::{Context, Waker};
use std::time::Duration;

use keyed_support::client::{Answer, Hosts, get, request, status};
use support::ms;
use tidewall::ConfigError;
use tidewall::breaker::State;
use tidewall::config::{Config, Problem, Registry};
use tidewall::http::{ClientPolicies, Overrides};
use tidewall::rt::Runtime;
use tidewall::testing::{Clocked, FakeClock};

fn config(text: &str) -> Config {
    Config::from_toml(text).unwrap_or_else(|e| panic!("a valid configuration: {e}\n{text}"))
}

fn refused(text: &str) -> tidewall::config::Invalid {
    match Config::from_toml(text) {
        Ok(config) => panic!("refused, not read: {config:?}\n{text}"),
        Err(e) => e,
    }
}

#[test]
fn a_break_schedules_keys_alone_are_refused_where_an_instance_uses_them() {
    for (text, path) in [
        (
            "[instances.a.breaker]\nbreak_factor = 2.0\n",
            "instances.a.breaker.break_factor",
        ),
        (
            "[instances.a.breaker]\nmax_break_duration = \"1m\"\n",
            "instances.a.breaker.max_break_duration",
        ),
        (
            "[instances.a.breaker]\nbreak_backoff = \"linear\"\nbreak_factor = 2.0\n",
            "instances.a.breaker.break_factor",
        ),
        (
            "[instances.a.breaker]\nbreak_backoff = \"decorrelated_jitter\"\nbreak_jitter = \"full\"\n",
            "instances.a.breaker.break_jitter",
        ),
        (
            "[defaults.breaker]\nslow_call_threshold = \"1s\"\n[instances.a]\nbreaker = {}\n",
            "defaults.breaker.slow_call_threshold",
        ),
        (
            "[instances.a.breaker]\nbreak_backoff = \"exponential\"\nbreak_duration = \"0s\"\n",
            "instances.a.breaker.break_duration",
        ),
        (
            "[instances.a.breaker]\nbreak_backoff = \"exponential\"\nbreak_factor = 0.5\n",
            "instances.a.breaker.break_factor",
        ),
        (
            "[instances.a.breaker]\nbreak_backoff = \"exponential\"\nmax_break_duration = \"0s\"\n",
            "instances.a.breaker.max_break_duration",
        ),
    ] {
        assert_eq!(refused(text).path(), path, "{text}");
    }
    // Completed by another layer, the same keys are fine: a base's threshold and an
    // instance's rate, the defaults' schedule keys and an instance's schedule.
    config(
        r#"
        [defaults.breaker]
        break_factor = 4.0
        max_break_duration = "2m"
        [configs.slow.breaker]
        slow_call_threshold = "300ms"
        [instances.a]
        base = "slow"
        [instances.a.breaker]
        slow_call_rate = 0.5
        break_backoff = "exponential"
        "#,
    );
    // A layer alone is judged where an instance uses it: the defaults' lone schedule key
    // waits, and an instance without a breaker never meets it.
    config("[defaults.breaker]\nbreak_factor = 2.0\n[instances.b.bulkhead]\nmax_concurrent = 1\n");
}

#[test]
fn a_bulkheads_discipline_comes_from_the_file() {
    let clock = FakeClock::new();
    let registry = Registry::builder(config(
        r#"
        [instances.lifo.bulkhead]
        max_concurrent = 1
        max_queue = 4
        max_wait = "off"
        discipline = "lifo"
        "#,
    ))
    .runtime(clock.clone())
    .build()
    .unwrap();
    let lifo = registry.bulkhead("lifo").unwrap();
    let held = lifo.try_acquire().unwrap();
    let order = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut waiting = Vec::new();
        for n in 0..3 {
            let (lifo, order) = (lifo.clone(), order.clone());
            let mut wait = Box::pin(async move {
                let permit = lifo.acquire().await.unwrap();
                order.lock().unwrap().push(n);
                drop(permit);
            });
            // Polled once, so it queues in this order.
            let mut cx = Context::from_waker(Waker::noop());
            assert!(wait.as_mut().poll(&mut cx).is_pending());
            waiting.push(wait);
        }
        drop(held);
        futures_util::future::join_all(waiting).await;
    });
    assert_eq!(*order.lock().unwrap(), [2, 1, 0], "the newest waiter first");

    let misplaced = refused(
        "[instances.a.bulkhead]\nmax_concurrent = 1\ndiscipline = \"fifo\"\ncodel_interval = \"1s\"\n",
    );
    assert_eq!(misplaced.path(), "instances.a.bulkhead.codel_interval");
    let zero = refused(
        "[instances.a.bulkhead]\nmax_concurrent = 1\ndiscipline = \"codel\"\ncodel_target = \"0s\"\n",
    );
    assert_eq!(zero.path(), "instances.a.bulkhead.codel_target");
}

/// A 1 s deadline, retries every 350 ms: with `min_attempt_time = "400ms"` the retry at 700 ms
/// (300 ms left) is not started, so a host that keeps failing is sent two attempts, not three.
async fn min_attempt_time_stops_a_doomed_retry<R: Runtime>(rt: Clocked<R>) {
    let file = |min: &str| {
        config(&format!(
            r#"
            [instances.outbound]
            deadline = "1s"
            {min}
            http = {{}}
            [instances.outbound.retry]
            backoff = "constant"
            initial_delay = "350ms"
            jitter = "none"
            max_attempts = 5
            "#
        ))
    };
    for (min, sends) in [("", 3), ("min_attempt_time = \"400ms\"", 2)] {
        let registry = Registry::builder(file(min))
            .runtime(rt.clone())
            .build()
            .unwrap();
        let outbound = registry.http_client("outbound").unwrap();
        let hosts = Hosts::new(&rt);
        hosts.play("down:80", [Answer::Status(503)]);
        let answer = outbound
            .run(get("http://down/"), Overrides::new(), |r| hosts.send(r))
            .await;
        assert_eq!(status(&answer), Some(503), "the last answer: {min}");
        assert_eq!(hosts.seen("down:80"), sends, "{min}");
    }
    // A deadline no longer than the minimum sends nothing.
    let policies = ClientPolicies::builder()
        .runtime(rt.clone())
        .min_attempt_time(ms(400))
        .build()
        .unwrap();
    let hosts = Hosts::new(&rt);
    let short = Overrides::new().deadline(ms(400));
    let answer = policies
        .run(get("http://any/"), short, |r| hosts.send(r))
        .await;
    assert!(
        matches!(
            answer,
            Err(tidewall::Error::Rejected(
                tidewall::Rejected::DeadlineExceeded
            ))
        ),
        "{answer:?}"
    );
    assert_eq!(hosts.seen("any:80"), 0);
}

#[test]
fn min_attempt_time_stops_a_doomed_retry_on_every_runtime() {
    on_every_runtime!(min_attempt_time_stops_a_doomed_retry);
}

#[test]
fn min_attempt_time_past_u64_nanoseconds_is_refused() {
    let too_long = Duration::from_nanos(u64::MAX) + Duration::from_nanos(1);
    let built = ClientPolicies::builder()
        .runtime(FakeClock::new())
        .min_attempt_time(too_long)
        .build();
    assert!(matches!(
        built,
        Err(ConfigError::DurationOverflow {
            field: "min_attempt_time"
        })
    ));
}

/// `client_errors = "failure"` counts a 404 against the host (a breaker opening on two
/// failures in a row opens); a custom idempotency header makes a POST replayable, and `"off"`
/// leaves only the methods.
async fn the_http_sections_new_rules_apply<R: Runtime>(rt: Clocked<R>) {
    let registry = Registry::builder(config(
        r#"
        [defaults]
        deadline = "10s"
        [defaults.retry]
        backoff = "constant"
        initial_delay = "10ms"
        jitter = "none"
        max_attempts = 3
        [instances.strict]
        http = { client_errors = "failure" }
        [instances.strict.breaker]
        consecutive_failures = 2
        failure_rate = "off"
        [instances.keyed]
        http = { idempotency_key_header = "X-Request-Id" }
        retry = {}
        [instances.unkeyed]
        http = { idempotency_key_header = "off" }
        retry = {}
        "#,
    ))
    .runtime(rt.clone())
    .build()
    .unwrap();
    let hosts = Hosts::new(&rt);
    hosts.play("missing:80", [Answer::Status(404)]);
    let strict = registry.http_client("strict").unwrap();
    for _ in 0..2 {
        let answer = strict
            .run(get("http://missing/"), Overrides::new(), |r| hosts.send(r))
            .await;
        assert_eq!(status(&answer), Some(404));
    }
    assert_eq!(hosts.seen("missing:80"), 2, "a failure, but not retried");
    let breakers = strict.breakers().unwrap();
    let missing = keyed_support::client::auth("http://missing/");
    assert_eq!(breakers.state(&missing), Some(State::Open));

    let post = |key: &str| {
        let mut post = request(http::Method::POST, "http://flaky/");
        post.headers_mut().insert(
            http::HeaderName::from_bytes(key.as_bytes()).unwrap(),
            "1".parse().unwrap(),
        );
        post
    };
    for (name, header, sends) in [
        ("keyed", "x-request-id", 2),
        ("keyed", "idempotency-key", 1),
        ("unkeyed", "idempotency-key", 1),
    ] {
        let hosts = Hosts::new(&rt);
        hosts.play("flaky:80", [Answer::Status(503), Answer::Status(200)]);
        let client = registry.http_client(name).unwrap();
        let _ = client
            .run(post(header), Overrides::new(), |r| hosts.send(r))
            .await;
        assert_eq!(hosts.seen("flaky:80"), sends, "{name} with {header}");
    }
    let bad = refused("[instances.a]\nhttp = { idempotency_key_header = \"no spaces\" }\n");
    assert_eq!(bad.path(), "instances.a.http.idempotency_key_header");
    assert!(matches!(bad.problem(), Problem::Malformed(_)));
}

#[test]
fn the_http_sections_new_rules_apply_on_every_runtime() {
    on_every_runtime!(the_http_sections_new_rules_apply);
}

/// The config fuzzer's seeds are whole, valid files: each builds a registry, and each
/// instance with an `[http]` section its client.
#[test]
fn every_fuzz_seed_builds() {
    let seeds = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz/seeds/config");
    let mut read = 0;
    for entry in std::fs::read_dir(seeds).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let config = Config::from_toml(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let registry = Registry::builder(config.clone())
            .runtime(FakeClock::new())
            .build()
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        for (name, instance) in &config.instances {
            if instance.http.is_some() {
                registry
                    .http_client(name)
                    .unwrap_or_else(|e| panic!("{}: {name}: {e}", path.display()));
            }
        }
        read += 1;
    }
    assert!(read >= 6, "the seeds were found: {read}");
}

/// The standard client written out in docs/CONFIG.md builds the stack
/// `ClientPolicies::standard()` is: the same deadlines, schedule, breaker policy and table
/// bounds, and the same bulkhead per host. (The retry budget has no getter to compare: its
/// two keys are the standard's, and the rest the builder's defaults on both sides.)
#[test]
fn the_standard_client_written_out_is_the_standard_client() {
    let doc = include_str!("../../../docs/CONFIG.md");
    let start = doc
        .find("```toml\n[instances.outbound]\ndeadline = \"30s\"")
        .expect("the standard client's snippet");
    let text = &doc[start + "```toml\n".len()..];
    let text = &text[..text.find("```").unwrap()];
    let clock = FakeClock::new();
    let registry = Registry::builder(config(text))
        .runtime(clock.clone())
        .build()
        .unwrap();
    let written = registry.http_client("outbound").unwrap();
    let standard = ClientPolicies::builder()
        .name("outbound")
        .runtime(clock.clone())
        .build()
        .unwrap();
    assert_eq!(format!("{written:?}"), format!("{standard:?}"));
    let host = keyed_support::client::auth("http://api/");
    let (a, b) = (written.breakers().unwrap(), standard.breakers().unwrap());
    assert_eq!(a.policy(), b.policy());
    assert_eq!((a.max_keys(), a.idle_ttl()), (b.max_keys(), b.idle_ttl()));
    let (a, b) = (written.bulkheads().unwrap(), standard.bulkheads().unwrap());
    let (_one, _other) = (a.try_acquire(&host).unwrap(), b.try_acquire(&host).unwrap());
    let (a, b) = (a.get(&host).unwrap(), b.get(&host).unwrap());
    assert_eq!((a.capacity(), a.in_flight()), (b.capacity(), b.in_flight()));
    assert_eq!(written.max_authorities(), standard.max_authorities());
}
