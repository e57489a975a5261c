//! `docs/CONFIG.md`, checked black-box: each key left out behaves as its documented default,
//! each key set maps to the documented builder call (the same builder configured in code),
//! the documented refusals, the `[http]` section's empty-section claims, and the `registry`
//! label of the reload series.
#![cfg(all(
    feature = "toml",
    feature = "http",
    feature = "metrics",
    feature = "chaos"
))]

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use tidewall::adaptive::{
    AdaptiveLimiter, Aimd, AnyAlgorithm, Gradient2, Priority, QueueDiscipline, Vegas,
    WindowedGradient,
};
use tidewall::admission::{Admission, Wait};
use tidewall::breaker::{CircuitBreaker, CircuitBreakerBuilder, Outcome, Window};
use tidewall::budget::RetryBudgetPolicy;
use tidewall::bulkhead::{Bulkhead, BulkheadBuilder};
use tidewall::chaos::Chaos;
use tidewall::config::{Config, Invalid, Registry};
use tidewall::http::{Authority, ClientPolicies};
use tidewall::rate::{RateLimiter, RateLimiterBuilder};
use tidewall::testing::FakeClock;
use tidewall::{Backoff, Deadline, Jitter, Rejected};

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn config(text: &str) -> Config {
    Config::from_toml(text).unwrap_or_else(|e| panic!("a valid configuration: {e}\n{text}"))
}

/// The breaker `[instances.a.breaker]` with `keys` builds, and the file's text.
fn breaker_of(keys: &str) -> (String, tidewall::breaker::CircuitBreaker) {
    let text = format!("[instances.a.breaker]\n{keys}\n");
    let built = breaker_in(&text);
    (text, built)
}

/// The breaker instance `a` of `text` builds.
fn breaker_in(text: &str) -> tidewall::breaker::CircuitBreaker {
    config(text)
        .instance("a")
        .unwrap()
        .breaker()
        .unwrap()
        .build()
        .unwrap()
}

fn refused(text: &str) -> Invalid {
    match Config::from_toml(text) {
        Ok(config) => panic!("refused, not read: {config:?}\n{text}"),
        Err(e) => e,
    }
}

/// Polls a future once, with a waker that does nothing.
fn poll_once<F: Future + ?Sized>(future: Pin<&mut F>) -> Poll<F::Output> {
    future.poll(&mut Context::from_waker(Waker::noop()))
}

// ---------------------------------------------------------------------------------------
// Per call: the instance's top level.

#[test]
fn top_level_keys_and_their_defaults() {
    // (keys, deadline, attempt_timeout, min_attempt_time)
    let rows: [(&str, Option<Duration>, Option<Duration>, Duration); 5] = [
        ("", None, None, Duration::ZERO),
        ("deadline = \"2s\"", Some(secs(2)), None, Duration::ZERO),
        (
            "deadline = \"off\"\nattempt_timeout = \"off\"",
            None,
            None,
            Duration::ZERO,
        ),
        (
            "attempt_timeout = \"250ms\"",
            None,
            Some(ms(250)),
            Duration::ZERO,
        ),
        (
            "deadline = \"1s\"\nmin_attempt_time = \"50ms\"",
            Some(secs(1)),
            None,
            ms(50),
        ),
    ];
    for (keys, deadline, attempt_timeout, min_attempt_time) in rows {
        let text = format!("[instances.a]\n{keys}\nhttp = {{}}\n");
        let config = config(&text);
        let a = config.instance("a").unwrap();
        assert_eq!(a.deadline(), deadline, "{text}");
        assert_eq!(a.attempt_timeout(), attempt_timeout, "{text}");
        assert_eq!(a.min_attempt_time(), min_attempt_time, "{text}");
        // For an HTTP client: `ClientPoliciesBuilder::deadline` and its siblings.
        let client = a.http_client().unwrap().build().unwrap();
        let expected = ClientPolicies::builder()
            .name("a")
            .deadline(deadline)
            .attempt_timeout(attempt_timeout)
            .min_attempt_time(min_attempt_time)
            .no_retry()
            .retry_budget(None)
            .breaker(None)
            .bulkhead(None)
            .adaptive(None)
            .rate_limit(None)
            .build()
            .unwrap();
        let debug = format!("{client:?}");
        for field in ["deadline", "attempt_timeout", "min_attempt_time"] {
            assert_eq!(
                field_of(&debug, field),
                field_of(&format!("{expected:?}"), field),
                "{field}: {text}\n{debug}"
            );
        }
    }
}

/// The text of `field: value` in a Debug output, up to the next top-level comma.
fn field_of(debug: &str, field: &str) -> String {
    let start = debug
        .find(&format!(" {field}: "))
        .unwrap_or_else(|| panic!("no {field} in {debug}"));
    let rest = &debug[start + field.len() + 3..];
    let mut depth = 0i32;
    let end = rest
        .char_indices()
        .find(|&(_, c)| {
            match c {
                '{' | '(' | '[' => depth += 1,
                '}' | ')' | ']' => depth -= 1,
                _ => {}
            }
            depth < 0 || (depth == 0 && c == ',')
        })
        .map_or(rest.len(), |(i, _)| i);
    rest[..end].trim().to_owned()
}

// ---------------------------------------------------------------------------------------
// `[breaker]`

/// `CircuitBreaker::builder()` with every default CONFIG.md lists, written out.
fn documented_breaker() -> CircuitBreakerBuilder {
    CircuitBreaker::builder()
        .failure_rate(0.5)
        .minimum_calls(10)
        .window(Window::Count { calls: 100 })
        .break_duration(secs(5))
        .half_open_probes(1)
        .max_half_open_wait(Some(secs(60)))
}

#[test]
fn breaker_keys_map_to_their_builder_calls() {
    let rows: Vec<(&str, CircuitBreakerBuilder)> = vec![
        ("", documented_breaker()),
        (
            "failure_rate = 0.25",
            documented_breaker().failure_rate(0.25),
        ),
        (
            "failure_rate = \"off\"\nconsecutive_failures = 3",
            documented_breaker()
                .no_failure_rate()
                .consecutive_failures(3),
        ),
        (
            "slow_call_rate = 0.3",
            documented_breaker().slow_call_rate(0.3, secs(1)),
        ),
        (
            "slow_call_rate = 0.3\nslow_call_threshold = \"2s\"",
            documented_breaker().slow_call_rate(0.3, secs(2)),
        ),
        (
            "consecutive_failures = 5",
            documented_breaker().consecutive_failures(5),
        ),
        ("minimum_calls = 3", documented_breaker().minimum_calls(3)),
        (
            "window_calls = 50",
            documented_breaker().window(Window::Count { calls: 50 }),
        ),
        (
            "window = \"30s\"",
            documented_breaker().window(Window::Time {
                span: secs(30),
                buckets: 10,
            }),
        ),
        (
            "window = \"30s\"\nwindow_buckets = 5",
            documented_breaker().window(Window::Time {
                span: secs(30),
                buckets: 5,
            }),
        ),
        (
            "break_duration = \"2s\"",
            documented_breaker().break_duration(secs(2)),
        ),
        (
            "half_open_probes = 3",
            documented_breaker().half_open_probes(3),
        ),
        (
            "max_half_open_wait = \"10s\"",
            documented_breaker().max_half_open_wait(Some(secs(10))),
        ),
        (
            "max_half_open_wait = \"off\"",
            documented_breaker().max_half_open_wait(None),
        ),
    ];
    for (keys, expected) in rows {
        let (text, built) = breaker_of(keys);
        let expected = expected.build().unwrap();
        assert_eq!(built.policy(), expected.policy(), "{text}");
        assert_eq!(built.name(), "a");
    }
    // `breaker = {}` alone is a stage with every default.
    let built = breaker_in("[instances.a]\nbreaker = {}\n");
    assert_eq!(
        built.policy(),
        documented_breaker().build().unwrap().policy()
    );
}

#[test]
fn break_schedules_follow_the_documented_delays() {
    // (keys, the first breaks, in order, each exact: no jitter by default)
    let rows: [(&str, &[u64]); 8] = [
        ("", &[5, 5, 5, 5, 5]),
        ("break_backoff = \"constant\"", &[5, 5, 5, 5, 5]),
        ("break_backoff = \"linear\"", &[5, 10, 15, 20, 25, 30, 30]),
        (
            "break_backoff = \"linear\"\nbreak_duration = \"1s\"",
            &[1, 2, 3, 4, 5, 6, 7, 8],
        ),
        ("break_backoff = \"exponential\"", &[5, 10, 20, 30, 30]),
        (
            "break_backoff = \"exponential\"\nbreak_factor = 3.0",
            &[5, 15, 30, 30],
        ),
        (
            "break_backoff = \"exponential\"\nmax_break_duration = \"12s\"",
            &[5, 10, 12, 12],
        ),
        (
            "break_backoff = \"exponential\"\nbreak_duration = \"1s\"",
            &[1, 2, 4, 8, 16, 30, 30],
        ),
    ];
    for (keys, breaks) in rows {
        let (text, built) = breaker_of(keys);
        let mut durations = built.policy().break_durations(17);
        let seen: Vec<u64> = breaks
            .iter()
            .map(|_| durations.next_break().as_secs())
            .collect();
        assert_eq!(seen, breaks, "{text}");
        if !keys.is_empty() {
            let schedule = built.policy().break_backoff();
            assert_eq!(
                schedule.jitter_mode(),
                Jitter::None,
                "break_jitter \"none\": {text}"
            );
        }
    }
    // `break_jitter` is the schedule's jitter; decorrelated jitter is random from
    // `break_duration` and capped at `max_break_duration`.
    for (keys, jitter) in [
        ("break_jitter = \"full\"", Jitter::Full),
        ("break_jitter = \"equal\"", Jitter::Equal),
    ] {
        let (text, built) = breaker_of(&format!("break_backoff = \"exponential\"\n{keys}"));
        assert_eq!(
            built.policy().break_backoff().jitter_mode(),
            jitter,
            "{text}"
        );
        assert_eq!(
            built.policy().break_backoff().max_delay_cap(),
            secs(30),
            "{text}"
        );
    }
    let text = "[instances.a.breaker]\nbreak_backoff = \"decorrelated_jitter\"\n";
    let built = breaker_in(text);
    for seed in 0..20 {
        let mut durations = built.policy().break_durations(seed);
        for _ in 0..6 {
            let d = durations.next_break();
            assert!(d >= secs(5) && d <= secs(30), "{d:?}");
        }
    }
}

#[test]
fn max_open_hint_caps_a_retry_after_at_60s_by_default() {
    // (keys, the longest a 120 s hint holds the breaker open)
    for (keys, cap) in [("", secs(60)), ("max_open_hint = \"10s\"", secs(10))] {
        let text = format!(
            "[instances.a.breaker]\nconsecutive_failures = 1\nbreak_duration = \"1s\"\n{keys}\n"
        );
        let clock = FakeClock::new();
        let breaker = config(&text)
            .instance("a")
            .unwrap()
            .breaker()
            .unwrap()
            .runtime(clock.clone())
            .build()
            .unwrap();
        breaker
            .try_acquire()
            .unwrap()
            .record_hinted(Outcome::Failure, Some(secs(120)));
        clock.advance(cap - ms(1));
        assert!(
            breaker.try_acquire().is_err(),
            "still open before {cap:?}: {text}"
        );
        clock.advance(ms(1));
        assert!(breaker.try_acquire().is_ok(), "a probe at {cap:?}: {text}");
    }
}

// ---------------------------------------------------------------------------------------
// `[bulkhead]`

#[test]
fn bulkhead_keys_map_to_their_builder_calls() {
    let documented = || {
        Bulkhead::builder(4)
            .name("a")
            .max_queue(4)
            .max_wait(secs(1))
            .discipline(QueueDiscipline::Fifo)
    };
    let codel = |target, interval| QueueDiscipline::Codel { target, interval };
    let rows: Vec<(&str, BulkheadBuilder)> = vec![
        ("", documented()),
        ("max_queue = 0", documented().reject_when_full()),
        ("max_queue = 2", documented().max_queue(2)),
        ("max_wait = \"off\"", documented().max_wait(None)),
        ("max_wait = \"250ms\"", documented().max_wait(ms(250))),
        ("discipline = \"fifo\"", documented()),
        (
            "discipline = \"lifo\"",
            documented().discipline(QueueDiscipline::Lifo),
        ),
        (
            "discipline = \"codel\"",
            documented().discipline(codel(ms(5), ms(100))),
        ),
        (
            "discipline = \"codel\"\ncodel_target = \"10ms\"\ncodel_interval = \"1s\"",
            documented().discipline(codel(ms(10), secs(1))),
        ),
    ];
    for (keys, expected) in rows {
        let text = format!("[instances.a.bulkhead]\nmax_concurrent = 4\n{keys}\n");
        let builder = config(&text).instance("a").unwrap().bulkhead().unwrap();
        assert_eq!(format!("{builder:?}"), format!("{expected:?}"), "{text}");
        assert_eq!(builder.build().unwrap().capacity(), 4, "{text}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_bulkheads_default_queue_is_max_concurrent_waiters_for_one_second() {
    let config = config("[instances.a.bulkhead]\nmax_concurrent = 2\n");
    let bulkhead = config
        .instance("a")
        .unwrap()
        .bulkhead()
        .unwrap()
        .build()
        .unwrap();
    assert_default_bulkhead_queue(&bulkhead).await;
}

/// Two slots held, two callers queue, the third is refused at once, and the queued ones
/// are refused after 1 s.
async fn assert_default_bulkhead_queue<R: tidewall::rt::Clock>(bulkhead: &Bulkhead<R>) {
    assert_eq!(bulkhead.capacity(), 2);
    let _held: Vec<_> = (0..2)
        .map(|_| bulkhead.try_acquire_owned().unwrap())
        .collect();
    let mut first = Box::pin(bulkhead.acquire());
    let mut second = Box::pin(bulkhead.acquire());
    assert!(poll_once(first.as_mut()).is_pending());
    assert!(poll_once(second.as_mut()).is_pending());
    assert_eq!(bulkhead.queued(), 2, "max_queue defaults to max_concurrent");
    let mut third = Box::pin(bulkhead.acquire());
    assert!(
        matches!(
            poll_once(third.as_mut()),
            Poll::Ready(Err(Rejected::BulkheadFull))
        ),
        "the queue is full"
    );
    tokio::time::advance(ms(999)).await;
    assert!(poll_once(first.as_mut()).is_pending(), "max_wait is 1 s");
    tokio::time::advance(ms(1)).await;
    assert!(
        matches!(poll_once(first.as_mut()), Poll::Ready(Err(_))),
        "refused after max_wait (1 s)"
    );
}

// ---------------------------------------------------------------------------------------
// `[rate_limit]`

#[tokio::test(start_paused = true)]
async fn rate_limit_keys_map_to_their_builder_calls() {
    let code = || RateLimiter::builder(10, secs(1)).name("a");
    let rows: Vec<(&str, RateLimiterBuilder, u32)> = vec![
        ("", code(), 10),
        ("burst = 3", code().burst(3), 3),
        ("jitter = \"5ms\"", code().jitter(ms(5)), 10),
        ("max_wait = \"off\"", code().max_wait(None), 10),
        ("max_wait = \"0s\"", code().max_wait(Duration::ZERO), 10),
        ("max_wait = \"2s\"", code().max_wait(secs(2)), 10),
    ];
    for (keys, expected, burst) in rows {
        let text = format!("[instances.a.rate_limit]\ncount = 10\nperiod = \"1s\"\n{keys}\n");
        let builder = config(&text).instance("a").unwrap().rate_limiter().unwrap();
        assert_eq!(format!("{builder:?}"), format!("{expected:?}"), "{text}");
        let gcra = builder.build().unwrap().gcra();
        assert_eq!(gcra, expected.build().unwrap().gcra(), "{text}");
        assert_eq!(gcra.burst(), burst, "burst defaults to count: {text}");
        assert_eq!(gcra.interval_nanos(), 100_000_000, "{text}");
    }
    // max_wait: "off" (the default) waits; "0s" refuses at once.
    let waits = config("[instances.a.rate_limit]\ncount = 1\nperiod = \"1s\"\n")
        .instance("a")
        .unwrap()
        .rate_limiter()
        .unwrap()
        .build()
        .unwrap();
    waits.check().unwrap();
    assert_eq!(waits.until_ready().await, Ok(()), "the default waits");
    let refuses =
        config("[instances.a.rate_limit]\ncount = 1\nperiod = \"1s\"\nmax_wait = \"0s\"\n")
            .instance("a")
            .unwrap()
            .rate_limiter()
            .unwrap()
            .build()
            .unwrap();
    refuses.check().unwrap();
    assert!(
        matches!(
            refuses.until_ready().await,
            Err(Rejected::RateLimited { .. })
        ),
        "\"0s\" refuses at once"
    );
}

// ---------------------------------------------------------------------------------------
// `[retry]` and `[budget]`

#[test]
fn retry_keys_map_to_their_backoff() {
    let rows: Vec<(&str, tidewall_core::backoff::BackoffBuilder)> = vec![
        ("", Backoff::exponential(ms(100))),
        ("backoff = \"exponential\"", Backoff::exponential(ms(100))),
        ("backoff = \"constant\"", Backoff::constant(ms(100))),
        ("backoff = \"linear\"", Backoff::linear(ms(100), ms(100))),
        (
            "backoff = \"linear\"\ninitial_delay = \"50ms\"",
            Backoff::linear(ms(50), ms(50)),
        ),
        (
            "backoff = \"linear\"\nstep = \"20ms\"",
            Backoff::linear(ms(100), ms(20)),
        ),
        (
            "backoff = \"decorrelated_jitter\"",
            Backoff::decorrelated_jitter(ms(100)),
        ),
        ("initial_delay = \"250ms\"", Backoff::exponential(ms(250))),
        ("factor = 3.0", Backoff::exponential(ms(100)).factor(3.0)),
        (
            "jitter = \"none\"",
            Backoff::exponential(ms(100)).jitter(Jitter::None),
        ),
        (
            "jitter = \"equal\"",
            Backoff::exponential(ms(100)).jitter(Jitter::Equal),
        ),
        (
            "max_delay = \"5s\"",
            Backoff::exponential(ms(100)).max_delay(secs(5)),
        ),
        (
            "max_attempts = 2",
            Backoff::exponential(ms(100)).max_attempts(2),
        ),
        (
            "max_elapsed = \"3s\"",
            Backoff::exponential(ms(100)).max_elapsed(secs(3)),
        ),
    ];
    for (keys, expected) in rows {
        let text = format!("[instances.a.retry]\n{keys}\n");
        let backoff = config(&text).instance("a").unwrap().backoff().unwrap();
        assert_eq!(backoff, expected.build().unwrap(), "{text}");
    }
    // The documented defaults, written out.
    let backoff = config("[instances.a]\nretry = {}\n")
        .instance("a")
        .unwrap()
        .backoff()
        .unwrap();
    assert_eq!(backoff.jitter_mode(), Jitter::Full);
    assert_eq!(backoff.max_delay_cap(), secs(30));
    assert_eq!(backoff.max_attempts_total(), 4);
    assert_eq!(backoff.max_elapsed_budget(), None);
    assert_eq!(
        backoff,
        Backoff::exponential(ms(100))
            .factor(2.0)
            .jitter(Jitter::Full)
            .max_delay(secs(30))
            .max_attempts(4)
            .build()
            .unwrap()
    );
    // max_retry_after: 60 s unless set.
    for (keys, cap) in [("", secs(60)), ("max_retry_after = \"5s\"", secs(5))] {
        let text = format!("[instances.a.retry]\n{keys}\n");
        assert_eq!(
            config(&text).instance("a").unwrap().max_retry_after(),
            cap,
            "{text}"
        );
    }
}

#[test]
fn budget_keys_map_to_their_policy() {
    let documented = || {
        RetryBudgetPolicy::builder()
            .ratio(0.2)
            .min_per_second(10)
            .window(secs(10))
            .buckets(10)
    };
    let rows = [
        ("", documented()),
        ("ratio = 0.5", documented().ratio(0.5)),
        ("min_per_second = 3", documented().min_per_second(3)),
        ("window = \"20s\"", documented().window(secs(20))),
        ("buckets = 5", documented().buckets(5)),
    ];
    for (keys, expected) in rows {
        let text = format!("[instances.a.budget]\n{keys}\n");
        let policy = config(&text).instance("a").unwrap().retry_budget().unwrap();
        assert_eq!(policy, expected.build().unwrap(), "{text}");
    }
    let text = "[instances.a]\nbudget = {}\n";
    let policy = config(text).instance("a").unwrap().retry_budget().unwrap();
    assert_eq!(policy, RetryBudgetPolicy::builder().build().unwrap());
}

// ---------------------------------------------------------------------------------------
// `[adaptive]`

#[tokio::test(start_paused = true)]
async fn adaptive_keys_map_to_their_builders() {
    // Each algorithm with no keys starts at its own builder's initial limit; `initial_limit`
    // is the builder's setter.
    let rows: Vec<(&str, &str, AnyAlgorithm)> = vec![
        ("aimd", "", Aimd::builder().build().unwrap().into()),
        ("vegas", "", Vegas::builder().build().unwrap().into()),
        (
            "gradient2",
            "",
            Gradient2::builder().build().unwrap().into(),
        ),
        (
            "windowed_gradient",
            "",
            WindowedGradient::builder().build().unwrap().into(),
        ),
        (
            "aimd",
            "initial_limit = 7\nmin_limit = 1",
            Aimd::builder()
                .min_limit(1)
                .initial_limit(7)
                .build()
                .unwrap()
                .into(),
        ),
        (
            "gradient2",
            "initial_limit = 30\nmax_limit = 500",
            Gradient2::builder()
                .initial_limit(30)
                .max_limit(500)
                .build()
                .unwrap()
                .into(),
        ),
    ];
    for (algorithm, keys, expected) in rows {
        let text = format!("[instances.a.adaptive]\nalgorithm = \"{algorithm}\"\n{keys}\n");
        let built = config(&text)
            .instance("a")
            .unwrap()
            .adaptive_limiter()
            .unwrap()
            .build()
            .unwrap();
        let code = AdaptiveLimiter::builder(expected)
            .name("a")
            .build()
            .unwrap();
        assert_eq!(format!("{built:?}"), format!("{code:?}"), "{text}");
        assert_eq!(built.limit(), code.limit(), "{text}");
    }

    // The limiter's own keys: max_queue 0 (refused at once), max_wait 1 s.
    let limiter = |keys: &str| {
        let text = format!(
            "[instances.a.adaptive]\nalgorithm = \"aimd\"\nmin_limit = 1\ninitial_limit = 5\n{keys}\n"
        );
        config(&text)
            .instance("a")
            .unwrap()
            .adaptive_limiter()
            .unwrap()
            .build()
            .unwrap()
    };
    let refuses = limiter("");
    let held: Vec<_> = (0..5).map(|_| refuses.try_acquire().unwrap()).collect();
    let mut admit = Box::pin(refuses.admit(Wait::Until(Deadline::none())));
    assert!(
        matches!(
            poll_once(admit.as_mut()),
            Poll::Ready(Err(Rejected::BulkheadFull))
        ),
        "max_queue defaults to 0: refused at once"
    );
    drop(held);

    let queues = limiter("max_queue = 1");
    let held: Vec<_> = (0..5).map(|_| queues.try_acquire().unwrap()).collect();
    let mut admit = Box::pin(queues.admit(Wait::Until(Deadline::none())));
    assert!(
        poll_once(admit.as_mut()).is_pending(),
        "max_queue = 1 queues one"
    );
    assert_eq!(queues.queued(), 1);
    tokio::time::advance(ms(999)).await;
    assert!(
        poll_once(admit.as_mut()).is_pending(),
        "max_wait defaults to 1 s"
    );
    tokio::time::advance(ms(1)).await;
    assert!(
        matches!(poll_once(admit.as_mut()), Poll::Ready(Err(_))),
        "refused after 1 s"
    );
    drop(held);

    let short = limiter("max_queue = 1\nmax_wait = \"100ms\"");
    let held: Vec<_> = (0..5).map(|_| short.try_acquire().unwrap()).collect();
    let mut admit = Box::pin(short.admit(Wait::Until(Deadline::none())));
    assert!(poll_once(admit.as_mut()).is_pending());
    tokio::time::advance(ms(100)).await;
    assert!(
        matches!(poll_once(admit.as_mut()), Poll::Ready(Err(_))),
        "max_wait = 100ms"
    );
    drop(held);

    // Shares: default 1 and sheddable 0.8 unless set.
    // (keys, held before a default call is refused, held before a sheddable one is)
    for (keys, default_at, sheddable_at) in [
        ("", 5, 4),
        ("sheddable_share = 0.4", 5, 2),
        ("default_share = 0.6\nsheddable_share = 0.4", 3, 2),
    ] {
        let limiter = limiter(keys);
        let default = limiter.with_priority(Priority::Default);
        let sheddable = limiter.with_priority(Priority::Sheddable);
        let mut held = Vec::new();
        for n in 0..=5 {
            let refused = sheddable.try_acquire().map(drop).is_err();
            assert_eq!(
                refused,
                n >= sheddable_at,
                "sheddable with {n} held: {keys}"
            );
            let refused = default.try_acquire().map(drop).is_err();
            assert_eq!(refused, n >= default_at, "default with {n} held: {keys}");
            if n < 5 {
                held.push(
                    limiter
                        .with_priority(Priority::Critical)
                        .try_acquire()
                        .unwrap(),
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// `[chaos]`

#[tokio::test(start_paused = true)]
async fn chaos_keys_map_to_their_builder_calls() {
    let rows = [
        ("", Chaos::builder().enabled(true)),
        ("enabled = false", Chaos::builder().enabled(false)),
        (
            "latency_rate = 0.5\nlatency = \"10ms\"",
            Chaos::builder().latency(0.5, ms(10)),
        ),
        ("error_rate = 0.25", Chaos::builder().error(0.25)),
        ("hang_rate = 0.125", Chaos::builder().hang(0.125)),
        ("alter_rate = 0.75", Chaos::builder().alter(0.75)),
    ];
    for (keys, expected) in rows {
        let text = format!("[instances.a.chaos]\n{keys}\n");
        let chaos = config(&text)
            .instance("a")
            .unwrap()
            .chaos()
            .unwrap()
            .build()
            .unwrap();
        assert_eq!(
            chaos.settings(),
            expected.build().unwrap().settings(),
            "{text}"
        );
    }
    let defaults = config("[instances.a]\nchaos = {}\n")
        .instance("a")
        .unwrap()
        .chaos()
        .unwrap()
        .build()
        .unwrap()
        .settings();
    assert!(defaults.enabled);
    assert_eq!(
        (
            defaults.latency_rate,
            defaults.error_rate,
            defaults.hang_rate,
            defaults.alter_rate
        ),
        (0.0, 0.0, 0.0, 0.0)
    );
    // seed: the key's, else drawn when built.
    let seeded = config("[instances.a.chaos]\nseed = 7\n");
    assert_eq!(
        seeded
            .instance("a")
            .unwrap()
            .chaos()
            .unwrap()
            .build()
            .unwrap()
            .seed(),
        7
    );
    let drawn = config("[instances.a]\nchaos = {}\n");
    let seeds: Vec<u64> = (0..4)
        .map(|_| {
            drawn
                .instance("a")
                .unwrap()
                .chaos()
                .unwrap()
                .build()
                .unwrap()
                .seed()
        })
        .collect();
    assert!(
        seeds.windows(2).any(|w| w[0] != w[1]),
        "drawn when built: {seeds:?}"
    );
}

// ---------------------------------------------------------------------------------------
// `[keys]`

fn authority(uri: &str) -> Authority {
    Authority::from_uri(&uri.parse().unwrap()).unwrap()
}

#[tokio::test(start_paused = true)]
async fn keys_bound_the_keyed_tables() {
    let text = r#"
        [instances.plain.breaker]
        consecutive_failures = 1
        [instances.plain.bulkhead]
        max_concurrent = 2
        [instances.plain.rate_limit]
        count = 10
        period = "1s"
        [instances.plain]
        keys = {}

        [instances.bound.breaker]
        consecutive_failures = 1
        [instances.bound.bulkhead]
        max_concurrent = 2
        [instances.bound.rate_limit]
        count = 10
        period = "1s"
        [instances.bound.keys]
        max_keys = 7
        idle_ttl = "5m"

        [instances.client]
        http = {}
        breaker = {}
        [instances.client_bound]
        http = {}
        breaker = {}
        [instances.client_bound.keys]
        max_keys = 7
        idle_ttl = "5m"
    "#;
    let registry = Registry::new(config(text)).unwrap();

    let breakers = registry.keyed_breaker::<String>("plain").unwrap();
    assert_eq!(breakers.max_keys(), 10_000);
    let own = CircuitBreaker::builder().keyed::<String>().build().unwrap();
    assert_eq!(
        breakers.idle_ttl(),
        own.idle_ttl(),
        "idle_ttl: the breaker's own"
    );
    assert_eq!(
        registry
            .keyed_bulkhead::<String>("plain")
            .unwrap()
            .max_keys(),
        10_000
    );
    assert_eq!(
        registry
            .keyed_rate_limiter::<String>("plain")
            .unwrap()
            .max_keys(),
        100_000,
        "a keyed rate limiter: 100,000"
    );

    let breakers = registry.keyed_breaker::<String>("bound").unwrap();
    assert_eq!((breakers.max_keys(), breakers.idle_ttl()), (7, secs(300)));
    assert_eq!(
        breakers.idle_ttl(),
        CircuitBreaker::builder()
            .keyed::<String>()
            .idle_ttl(secs(300))
            .build()
            .unwrap()
            .idle_ttl()
    );
    assert_eq!(
        registry
            .keyed_bulkhead::<String>("bound")
            .unwrap()
            .max_keys(),
        7
    );
    assert_eq!(
        registry
            .keyed_rate_limiter::<String>("bound")
            .unwrap()
            .max_keys(),
        7
    );

    // An HTTP client: max_authorities, one bound for each table; idle_ttl 60 s.
    let client = registry.http_client("client").unwrap();
    assert_eq!(client.max_authorities(), 10_000);
    let per_host = client.breakers().unwrap();
    assert_eq!(
        (per_host.max_keys(), per_host.idle_ttl()),
        (10_000, secs(60))
    );
    let client = registry.http_client("client_bound").unwrap();
    assert_eq!(client.max_authorities(), 7);
    let per_host = client.breakers().unwrap();
    assert_eq!((per_host.max_keys(), per_host.idle_ttl()), (7, secs(300)));
}

// ---------------------------------------------------------------------------------------
// Rules: which keys are refused where.

#[test]
fn documented_refusals_name_their_key() {
    let rows = [
        (
            "[instances.a.breaker]\nslow_call_threshold = \"2s\"\n",
            "instances.a.breaker.slow_call_threshold",
        ),
        (
            "[instances.a.breaker]\nbreak_factor = 3.0\n",
            "instances.a.breaker.break_factor",
        ),
        (
            "[instances.a.breaker]\nmax_break_duration = \"1m\"\n",
            "instances.a.breaker.max_break_duration",
        ),
        (
            "[instances.a.breaker]\nbreak_jitter = \"full\"\n",
            "instances.a.breaker.break_jitter",
        ),
        (
            "[instances.a.breaker]\nbreak_backoff = \"linear\"\nbreak_factor = 3.0\n",
            "instances.a.breaker.break_factor",
        ),
        (
            "[instances.a.breaker]\nbreak_backoff = \"decorrelated_jitter\"\nbreak_jitter = \"full\"\n",
            "instances.a.breaker.break_jitter",
        ),
        (
            "[instances.a.breaker]\nfailure_rate = 1.5\n",
            "instances.a.breaker.failure_rate",
        ),
        (
            "[instances.a.bulkhead]\nmax_concurrent = 2\ndiscipline = \"lifo\"\ncodel_target = \"5ms\"\n",
            "instances.a.bulkhead.codel_target",
        ),
        (
            "[instances.a.bulkhead]\nmax_queue = 2\n",
            "instances.a.bulkhead.max_concurrent",
        ),
        (
            "[instances.a.rate_limit]\ncount = 2\n",
            "instances.a.rate_limit.period",
        ),
        (
            "[instances.a.adaptive]\nmax_queue = 2\n",
            "instances.a.adaptive.algorithm",
        ),
        ("[instances.a.breaker]\nfailur_rate = 0.5\n", ""),
    ];
    for (text, path) in rows {
        let e = refused(text);
        if !path.is_empty() {
            assert_eq!(e.path(), path, "{text}\n{e}");
        }
    }
    // `window` is not next to `window_calls` in one layer.
    let e = refused("[instances.a.breaker]\nwindow_calls = 10\nwindow = \"10s\"\n");
    assert!(e.path().starts_with("instances.a.breaker.window"), "{e}");
    // Across layers a schedule key is fine; a threshold completed by another layer too.
    config(
        "[defaults.breaker]\nbreak_factor = 3.0\nslow_call_threshold = \"2s\"\n\
         [instances.a.breaker]\nbreak_backoff = \"linear\"\nslow_call_rate = 0.5\n",
    );
    // A base layer: `base` names a `[configs.<name>]`.
    let layered = config(
        "[defaults.breaker]\nminimum_calls = 4\n[configs.c.breaker]\nfailure_rate = 0.25\n\
         [instances.a]\nbase = \"c\"\n",
    );
    let built = layered
        .instance("a")
        .unwrap()
        .breaker()
        .unwrap()
        .build()
        .unwrap();
    assert_eq!(
        built.policy(),
        documented_breaker()
            .failure_rate(0.25)
            .minimum_calls(4)
            .build()
            .unwrap()
            .policy()
    );
}

// ---------------------------------------------------------------------------------------
// `[http]`: empty sections take the tables' defaults, not the standard client's.

#[tokio::test(start_paused = true)]
async fn http_instances_take_the_tables_defaults_not_the_standard_clients() {
    let text = r#"
        [instances.bare]
        http = {}

        [instances.empty]
        http = {}
        breaker = {}
        retry = {}
        [instances.empty.bulkhead]
        max_concurrent = 2
    "#;
    let config = config(text);
    let registry = Registry::new(config.clone()).unwrap();

    // Only the instance's sections: no [retry], no retry; no [breaker], no breaker.
    let bare = registry.http_client("bare").unwrap();
    assert!(bare.breakers().is_none() && bare.bulkheads().is_none());
    let no_retry = ClientPolicies::builder()
        .name("bare")
        .deadline(None)
        .attempt_timeout(None)
        .no_retry()
        .build()
        .unwrap();
    assert_eq!(
        field_of(&format!("{bare:?}"), "backoff"),
        field_of(&format!("{no_retry:?}"), "backoff"),
        "no [retry], no retry"
    );
    // The standard client has every stage on.
    let standard = ClientPolicies::standard();
    assert!(standard.breakers().is_some() && standard.bulkheads().is_some());

    let empty = registry.http_client("empty").unwrap();
    // breaker = {}: a 100-call count window needing 10 calls.
    let policy = empty.breakers().unwrap().policy();
    assert_eq!(policy.window(), Window::Count { calls: 100 });
    assert_eq!(policy, documented_breaker().build().unwrap().policy());
    // ... the standard client's: a 30 s window needing 20.
    let standard_policy = standard.breakers().unwrap().policy();
    assert_eq!(
        standard_policy.window(),
        Window::Time {
            span: secs(30),
            buckets: 10
        }
    );
    assert_eq!(
        standard_policy,
        documented_breaker()
            .minimum_calls(20)
            .window(Window::Time {
                span: secs(30),
                buckets: 10
            })
            .build()
            .unwrap()
            .policy()
    );

    // retry = {}: 4 attempts from 100 ms up to 30 s (the standard: 3 from 200 ms up to 5 s).
    let debug = format!("{empty:?}");
    let expected = Backoff::exponential(ms(100))
        .max_attempts(4)
        .max_delay(secs(30))
        .build()
        .unwrap();
    assert_eq!(
        field_of(&debug, "backoff"),
        format!("{expected:?}"),
        "{debug}"
    );
    assert_eq!(
        config.instance("empty").unwrap().backoff().unwrap(),
        expected
    );
    let standard_backoff = Backoff::exponential(ms(200))
        .max_attempts(3)
        .max_delay(secs(5))
        .build()
        .unwrap();
    assert_eq!(
        field_of(&format!("{standard:?}"), "backoff"),
        format!("{standard_backoff:?}")
    );

    // A [bulkhead] there queues up to max_concurrent requests per host for 1 s.
    let per_host = empty.bulkheads().unwrap();
    let host = authority("http://a.example/");
    let first = per_host.try_acquire(&host).unwrap();
    let bulkhead = per_host.get(&host).unwrap();
    drop(first);
    assert_default_bulkhead_queue(&bulkhead).await;
    // Another host has its own.
    let other = authority("http://b.example/");
    assert!(per_host.try_acquire(&other).is_ok());

    // The standard client's bulkhead refuses at once: `max_queue = 0`.
    let standard_hosts = ClientPolicies::standard().bulkheads().unwrap();
    let held = standard_hosts.try_acquire(&host).unwrap();
    let standard_bulkhead = standard_hosts.get(&host).unwrap();
    let _rest: Vec<_> = (1..standard_bulkhead.capacity())
        .map(|_| standard_bulkhead.try_acquire_owned().unwrap())
        .collect();
    let mut waiting = Box::pin(standard_bulkhead.acquire());
    assert!(matches!(poll_once(waiting.as_mut()), Poll::Ready(Err(_))));
    drop(held);
}

// ---------------------------------------------------------------------------------------
// The reload series and their `registry` label.

/// A series recorded: its name, its labels and its value.
type Series = (String, Vec<(String, String)>, DebugValue);

/// Every series recorded.
fn series(snapshotter: &Snapshotter) -> Vec<Series> {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| {
            let labels = key
                .key()
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            (key.key().name().to_owned(), labels, value)
        })
        .collect()
}

fn value_of<'a>(seen: &'a [Series], name: &str, labels: &[(&str, &str)]) -> Option<&'a DebugValue> {
    seen.iter()
        .find(|(n, l, _)| {
            n == name
                && l.len() == labels.len()
                && labels
                    .iter()
                    .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .map(|(_, _, v)| v)
}

#[tokio::test(start_paused = true)]
async fn registries_of_different_names_keep_separate_reload_series() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let text = "[instances.db.bulkhead]\nmax_concurrent = 1\n";
    metrics::with_local_recorder(&recorder, || {
        let one = Registry::builder(config(text)).name("one").build().unwrap();
        let two = Registry::builder(config(text)).name("two").build().unwrap();
        let plain = Registry::new(config(text)).unwrap();
        assert_eq!(plain.name(), "registry");
        assert!(
            one.reload_file("/nonexistent/tidewall-config-reference.toml")
                .is_err()
        );
        two.reload(config(text)).unwrap();
        two.reload(config(text)).unwrap();
    });
    let seen = series(&snapshotter);
    let reloads = "tidewall_config_reloads_total";
    let counter = |registry: &str, outcome: &str| {
        value_of(
            &seen,
            reloads,
            &[("registry", registry), ("outcome", outcome)],
        )
    };
    for (registry, outcome, count) in [
        ("one", "refused", 1),
        ("one", "applied", 0),
        ("two", "applied", 2),
        ("two", "refused", 0),
        ("registry", "applied", 0),
        ("registry", "refused", 0),
    ] {
        assert_eq!(
            counter(registry, outcome),
            Some(&DebugValue::Counter(count)),
            "{registry} {outcome}: {seen:?}"
        );
    }

    let last = "tidewall_config_last_reload_successful";
    let gauge = |registry: &str| value_of(&seen, last, &[("registry", registry)]);
    assert_eq!(
        gauge("one"),
        Some(&DebugValue::Gauge(0.0.into())),
        "{seen:?}"
    );
    assert_eq!(
        gauge("two"),
        Some(&DebugValue::Gauge(1.0.into())),
        "{seen:?}"
    );
    assert_eq!(
        gauge("registry"),
        Some(&DebugValue::Gauge(1.0.into())),
        "{seen:?}"
    );

    let stamp = "tidewall_config_last_reload_success_timestamp_seconds";
    for registry in ["one", "two", "registry"] {
        match value_of(&seen, stamp, &[("registry", registry)]) {
            Some(&DebugValue::Gauge(seconds)) => {
                assert!(
                    seconds.into_inner() > 1.0e9,
                    "wall-clock seconds: {registry}"
                )
            }
            other => panic!("{stamp}{{registry={registry}}}: {other:?}\n{seen:?}"),
        }
    }
    // Every reload series carries the `registry` label.
    for (name, labels, _) in &seen {
        if name.starts_with("tidewall_config_") {
            assert!(
                labels.iter().any(|(k, _)| k == "registry"),
                "{name} {labels:?}"
            );
        }
    }
}
