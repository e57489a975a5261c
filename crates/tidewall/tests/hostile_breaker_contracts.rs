//! Hostile black-box tests of the circuit breaker's documented contracts, written from the
//! rustdoc (and `docs/CONFIG.md`) alone: failure-rate and slow-call-rate thresholds at their
//! exact boundaries over count and time windows (differential checks against a model written
//! from the docs), minimum throughput, windows after idle gaps of hours to a century (the
//! time window's 16-bit bucket stamps wrapped on purpose), exact half-open probes under racing
//! threads and tasks, probes dropped, ignored or panicking, the half-open maximum wait, break
//! backoff with its caps and hints, manual forces and generations, the listeners (each
//! transition reported once, chained by generation), and the breaker composed as users compose
//! it: in a `Pipeline` with retry, budget and deadline (nested, and cancelled at seeded random
//! points on every runtime adapter), under the tower `BreakerLayer`, per key, and from a
//! configuration. Extreme configurations must give typed errors, never panics.
//!
//! Virtual time only (`FakeClock`, `Clocked`, paused tokio), seeded randomness, no real sleeps.
#![cfg(all(
    feature = "tokio",
    feature = "smol",
    feature = "async-std",
    feature = "test-util",
    feature = "tower",
    feature = "toml"
))]
// Seeded draws are taken below small bounds and ratios are whole parts per million: the casts
// of this file's arithmetic cannot truncate or lose a sign.
#![allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]

mod common;
mod hostile_support;

use std::collections::VecDeque;
use std::future::poll_fn;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;

use common::ms;
use common::rng::Rng;
use futures_util::FutureExt as _;
use hostile_support::{
    Changes, DAY, Fb, HOUR, PPM, Rules, SEC, on_fake, ppm, tally_trip, watch_changes,
};
use tidewall::breaker::{
    CircuitBreaker, CircuitBreakerBuilder, Counts, KeyedCircuitBreaker, Outcome, State, TripReason,
    Window,
};
use tidewall::budget::{RetryBudget, RetryBudgetPolicy};
use tidewall::classify::Verdict;
use tidewall::config::{Config, Registry};
use tidewall::pipeline::Pipeline;
use tidewall::rt::{Clock, Runtime, Spawn, Tokio};
use tidewall::telemetry::EventKind;
use tidewall::testing::{Clocked, FakeClock};
use tidewall::tower::BreakerLayer;
use tidewall::{Backoff, ConfigError, Error, FutureExt as _, Jitter, Rejected};
use tidewall_core::breaker::{MAX_BUCKETS, MAX_COUNT_WINDOW, MAX_HALF_OPEN_PROBES};
use tower_layer::Layer;
use tower_service::Service;

const YEAR: Duration = Duration::from_secs(365 * 86_400);
const NS: Duration = Duration::from_nanos(1);

// === shared pieces =========================================================================

/// Builds, turning a panic into a test failure that names the configuration.
fn build_no_panic<R: Clock>(
    what: &str,
    builder: CircuitBreakerBuilder<R>,
) -> Result<CircuitBreaker<R>, ConfigError> {
    match catch_unwind(AssertUnwindSafe(move || builder.build())) {
        Ok(result) => result,
        Err(_) => panic!("{what}: build panicked instead of returning a typed error"),
    }
}

/// The `retry_after` of the breaker's refusal now; panics if it admits.
fn refusal<R: Clock>(breaker: &CircuitBreaker<R>) -> Duration {
    match breaker.try_acquire() {
        Err(Rejected::CircuitOpen { retry_after }) => retry_after,
        Err(other) => panic!("refused with {other:?}, not CircuitOpen"),
        Ok(permit) => panic!(
            "admitted (probe: {}) in state {:?}",
            permit.is_probe(),
            breaker.state()
        ),
    }
}

fn tos(changes: &Changes) -> Vec<State> {
    changes.lock().unwrap().iter().map(|c| c.1).collect()
}

/// Brings a breaker that nothing else is using back to closed, the way callers would: wait
/// out each break, take every probe it admits and succeed them. A probe slot that leaked (a
/// dropped, cancelled or panicked probe that did not give it back) leaves it half-open and
/// refusing forever, which fails here.
fn drain_to_closed(clock: &FakeClock, breaker: &Fb) {
    for _ in 0..20 {
        match breaker.state() {
            State::Closed => return,
            State::Open | State::HalfOpen => match breaker.try_acquire() {
                Ok(permit) => permit.success(),
                Err(Rejected::CircuitOpen { retry_after }) => clock.advance(retry_after + NS),
                Err(other) => panic!("refused with {other:?}"),
            },
            other => panic!("unexpected state {other:?}"),
        }
    }
    panic!(
        "still {:?} after 20 rounds of waiting out breaks and succeeding every probe it admits: a probe slot leaked",
        breaker.state()
    );
}

/// As [`drain_to_closed`], on a breaker on any clock, waiting in virtual time.
async fn drain_to_closed_on<R: Clock>(rt: &R, breaker: &CircuitBreaker<R>) {
    for _ in 0..20 {
        match breaker.state() {
            State::Closed => return,
            State::Open | State::HalfOpen => match breaker.try_acquire() {
                Ok(permit) => permit.success(),
                Err(Rejected::CircuitOpen { retry_after }) => rt.sleep(retry_after + NS).await,
                Err(other) => panic!("refused with {other:?}"),
            },
            other => panic!("unexpected state {other:?}"),
        }
    }
    panic!(
        "still {:?} after 20 rounds of waiting out breaks and succeeding every probe it admits: a probe slot leaked",
        breaker.state()
    );
}

fn exponential(first: Duration, cap: Duration) -> Backoff {
    Backoff::exponential(first)
        .factor(2.0)
        .jitter(Jitter::None)
        .max_delay(cap)
        .max_attempts(u32::MAX)
        .build()
        .unwrap()
}

// === extreme configurations: typed errors, never panics ===================================

#[test]
fn rates_outside_one_ppm_to_one_are_typed_errors_and_the_edges_build() {
    let refused = [
        0.0,
        -0.0,
        -0.5,
        1.000_001,
        2.0,
        1e-7,
        9.99e-7,
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::MIN_POSITIVE,
    ];
    for rate in refused {
        let built = build_no_panic(
            &format!("failure_rate({rate})"),
            CircuitBreaker::builder().failure_rate(rate),
        );
        assert!(built.is_err(), "failure_rate({rate}) was accepted");
        let built = build_no_panic(
            &format!("slow_call_rate({rate})"),
            CircuitBreaker::builder().slow_call_rate(rate, ms(100)),
        );
        assert!(built.is_err(), "slow_call_rate({rate}) was accepted");
    }
    for rate in [1e-6, 0.5, 0.999_999_5, 1.0] {
        build_no_panic(
            &format!("failure_rate({rate})"),
            CircuitBreaker::builder().failure_rate(rate),
        )
        .unwrap_or_else(|e| panic!("failure_rate({rate}) refused: {e}"));
        build_no_panic(
            &format!("slow_call_rate({rate})"),
            CircuitBreaker::builder().slow_call_rate(rate, ms(100)),
        )
        .unwrap_or_else(|e| panic!("slow_call_rate({rate}) refused: {e}"));
    }
    // NaN is "not finite": the documented variant, not a range error about a number.
    assert!(matches!(
        CircuitBreaker::builder().failure_rate(f64::NAN).build(),
        Err(ConfigError::NotFinite { .. } | ConfigError::OutOfRange { .. })
    ));
}

#[test]
fn window_shapes_at_and_past_their_bounds() {
    let count = |calls: u32| {
        build_no_panic(
            &format!("Count {{ calls: {calls} }}"),
            CircuitBreaker::builder()
                .minimum_calls(1)
                .window(Window::Count { calls }),
        )
    };
    assert!(count(0).is_err(), "an empty count window");
    count(1).expect("a window of one call");
    count(MAX_COUNT_WINDOW).expect("the largest count window");
    assert!(count(MAX_COUNT_WINDOW + 1).is_err());
    assert!(count(u32::MAX).is_err());

    let time = |span: Duration, buckets: u32| {
        build_no_panic(
            &format!("Time {{ span: {span:?}, buckets: {buckets} }}"),
            CircuitBreaker::builder()
                .minimum_calls(1)
                .window(Window::Time { span, buckets }),
        )
    };
    assert!(time(SEC, 0).is_err(), "no buckets");
    assert!(time(SEC, MAX_BUCKETS + 1).is_err());
    assert!(time(SEC, u32::MAX).is_err());
    assert!(time(Duration::ZERO, 1).is_err(), "a zero span");
    assert!(
        time(Duration::MAX, 10).is_err(),
        "a span past u64 nanoseconds"
    );
    time(SEC, MAX_BUCKETS).expect("the most buckets");
    time(NS, 1).expect("one bucket of one nanosecond");
    time(Duration::from_nanos(u64::MAX), MAX_BUCKETS).expect("the longest span");
    // 1,999 ns in 1,000 buckets: 1 ns each, a window of 1,000 ns, half the span.
    assert!(time(Duration::from_nanos(1_999), 1_000).is_err());
    // 999 ns in 1,000 buckets: zero-length buckets.
    assert!(time(Duration::from_nanos(999), 1_000).is_err());
    // 1,000,999 ns in 1,000 buckets: 1,000 ns each, 0.0998 % short of the span.
    time(Duration::from_nanos(1_000_999), 1_000).expect("within 0.1 % of the span");
}

#[test]
fn minimum_calls_beyond_what_the_window_holds_is_refused_unless_runs_are_counted() {
    let with = |min: u32, window: Window, consecutive: bool| {
        let mut b = CircuitBreaker::builder().minimum_calls(min).window(window);
        if consecutive {
            b = b.consecutive_failures(3);
        }
        build_no_panic(&format!("minimum {min} over {window:?}"), b)
    };
    let count = Window::Count { calls: 5 };
    with(5, count, false).expect("the minimum equal to the window");
    assert!(
        with(6, count, false).is_err(),
        "a window of 5 never holds 6"
    );
    with(6, count, true).expect("consecutive failures can still trip it");
    with(u32::MAX, count, true).expect("consecutive failures can still trip it");

    // "or 65,535 per time bucket"
    let time = Window::Time {
        span: SEC,
        buckets: 2,
    };
    with(2 * 65_535, time, false).expect("two full buckets");
    assert!(with(2 * 65_535 + 1, time, false).is_err());
}

#[test]
fn probes_zero_and_past_the_maximum_are_refused() {
    let probes = |n: u32| {
        build_no_panic(
            &format!("half_open_probes({n})"),
            CircuitBreaker::builder().half_open_probes(n),
        )
    };
    assert!(matches!(probes(0), Err(ConfigError::Zero { .. })));
    probes(1).unwrap();
    probes(MAX_HALF_OPEN_PROBES).unwrap();
    assert!(probes(MAX_HALF_OPEN_PROBES + 1).is_err());
    assert!(probes(u32::MAX).is_err());
}

#[test]
fn zero_and_overflowing_durations_are_typed_errors() {
    assert!(
        build_no_panic(
            "break_duration(0)",
            CircuitBreaker::builder().break_duration(Duration::ZERO)
        )
        .is_err()
    );
    assert!(matches!(
        build_no_panic(
            "break_duration(MAX)",
            CircuitBreaker::builder().break_duration(Duration::MAX)
        ),
        Err(ConfigError::DurationOverflow { .. })
    ));
    build_no_panic(
        "break_duration(u64::MAX ns)",
        CircuitBreaker::builder().break_duration(Duration::from_nanos(u64::MAX)),
    )
    .expect("u64::MAX nanoseconds is within the documented limit");
    assert!(matches!(
        build_no_panic(
            "max_open_hint(MAX)",
            CircuitBreaker::builder().max_open_hint(Duration::MAX)
        ),
        Err(ConfigError::DurationOverflow { .. })
    ));
    build_no_panic(
        "max_open_hint(0)",
        CircuitBreaker::builder().max_open_hint(Duration::ZERO),
    )
    .expect("a zero cap ignores hints");
    // Not documented either way: a typed answer, never a panic.
    for wait in [Duration::ZERO, NS, Duration::MAX] {
        let _ = build_no_panic(
            &format!("max_half_open_wait({wait:?})"),
            CircuitBreaker::builder().max_half_open_wait(Some(wait)),
        );
    }
    for threshold in [Duration::ZERO, Duration::MAX] {
        let _ = build_no_panic(
            &format!("slow threshold {threshold:?}"),
            CircuitBreaker::builder().slow_call_rate(0.5, threshold),
        );
    }
    for n in [0, 1, u32::MAX] {
        let _ = build_no_panic(
            &format!("consecutive_failures({n})"),
            CircuitBreaker::builder().consecutive_failures(n),
        );
        let _ = build_no_panic(
            &format!("minimum_calls({n})"),
            CircuitBreaker::builder()
                .minimum_calls(n)
                .window(Window::Count { calls: 10 }),
        );
    }
}

#[test]
fn a_policy_that_can_never_trip_is_a_conflict() {
    assert!(matches!(
        build_no_panic("no rule", CircuitBreaker::builder().no_failure_rate()),
        Err(ConfigError::Conflict { .. })
    ));
}

#[test]
fn keyed_table_bounds_are_typed_errors() {
    assert!(matches!(
        CircuitBreaker::builder()
            .keyed::<u64>()
            .max_keys(0)
            .build()
            .map(|_| ()),
        Err(ConfigError::Zero { .. })
    ));
    assert!(matches!(
        CircuitBreaker::builder()
            .keyed::<u64>()
            .idle_ttl(Duration::MAX)
            .build()
            .map(|_| ()),
        Err(ConfigError::DurationOverflow { .. })
    ));
    CircuitBreaker::builder()
        .keyed::<u64>()
        .max_keys(usize::MAX)
        .idle_ttl(Duration::from_nanos(u64::MAX))
        .build()
        .expect("any usize but zero, and u64::MAX nanoseconds");
}

/// The extremes that build must also run: record, trip, wait, probe, without a panic.
#[test]
fn extreme_configurations_that_build_also_run() {
    let mut rng = Rng::new(0xE87E);
    let shapes = [
        Window::Count { calls: 1 },
        Window::Count {
            calls: MAX_COUNT_WINDOW,
        },
        Window::Time {
            span: NS,
            buckets: 1,
        },
        Window::Time {
            span: Duration::from_nanos(u64::MAX),
            buckets: MAX_BUCKETS,
        },
    ];
    let waits = [Duration::ZERO, NS, Duration::from_nanos(u64::MAX)];
    for window in shapes {
        for brk in [NS, Duration::from_nanos(u64::MAX)] {
            for wait in waits {
                let (clock, builder) = on_fake();
                let builder = builder
                    .window(window)
                    .failure_rate(1e-6)
                    .slow_call_rate(1.0, Duration::from_nanos(u64::MAX))
                    .minimum_calls(1)
                    .consecutive_failures(1)
                    .break_duration(brk)
                    .half_open_probes(MAX_HALF_OPEN_PROBES)
                    .max_half_open_wait(Some(wait))
                    .max_open_hint(Duration::from_nanos(u64::MAX));
                let Ok(breaker) = build_no_panic("extreme", builder) else {
                    continue;
                };
                let run = catch_unwind(AssertUnwindSafe(|| {
                    for _ in 0..50 {
                        match breaker.try_acquire() {
                            Ok(permit) => {
                                clock.advance(Duration::from_nanos(rng.below(1_000)));
                                let hint = rng.one_in(3).then(|| Duration::from_nanos(rng.next()));
                                let outcome =
                                    [Outcome::Success, Outcome::Failure, Outcome::Ignored]
                                        [rng.index(3)];
                                permit.record_hinted(outcome, hint);
                            }
                            Err(Rejected::CircuitOpen { retry_after }) => {
                                clock.advance(retry_after.min(30 * YEAR) + NS);
                            }
                            Err(other) => panic!("refused with {other:?}"),
                        }
                        let _ = (breaker.state(), breaker.counts());
                    }
                }));
                assert!(
                    run.is_ok(),
                    "{window:?}, break {brk:?}, wait {wait:?}: panicked while running"
                );
            }
        }
    }
}

// === thresholds at their exact boundaries =================================================

/// Whether `failures` of `calls` reach a threshold kept in whole parts per million, rounded to
/// the nearest, "a rate equal to it trips".
fn reaches(failures: u64, calls: u64, rate: f64) -> bool {
    let ppm = (rate * PPM as f64).round() as u64;
    failures * PPM >= ppm * calls
}

#[test]
fn failure_rate_trips_exactly_at_its_threshold_and_not_one_call_below() {
    let mut rng = Rng::new(0xB0B);
    for rate in [1e-6, 0.25, 1.0 / 3.0, 0.5, 2.0 / 3.0, 0.999_999, 1.0] {
        for n in [1u32, 2, 3, 4, 7, 10, 64] {
            for failures in 0..=n {
                let (_clock, builder) = on_fake();
                let (builder, changes) = watch_changes(
                    builder
                        .failure_rate(rate)
                        .minimum_calls(n)
                        .window(Window::Count { calls: n }),
                );
                let breaker = builder.build().unwrap();
                let mut outcomes: Vec<bool> = (0..n).map(|i| i < failures).collect();
                rng.shuffle(&mut outcomes);
                for (i, failed) in outcomes.iter().enumerate() {
                    let permit = breaker.try_acquire().unwrap_or_else(|r| {
                        panic!(
                            "rate {rate}, window {n}: call {i} refused ({r:?}) below the minimum"
                        )
                    });
                    if *failed {
                        permit.failure();
                    } else {
                        permit.success();
                    }
                }
                let expected = reaches(u64::from(failures), u64::from(n), rate);
                assert_eq!(
                    breaker.state() == State::Open,
                    expected,
                    "rate {rate}: {failures} failures of {n} (order {outcomes:?})"
                );
                if expected {
                    assert_eq!(changes.lock().unwrap()[0].2, Some(TripReason::FailureRate));
                }
            }
        }
    }
}

#[test]
fn slow_call_rate_trips_exactly_at_its_threshold_and_the_threshold_duration_is_inclusive() {
    // "Trip when at least `rate` ... of the window's calls took `threshold` or longer."
    let threshold = ms(100);
    for rate in [0.25, 0.5, 1.0] {
        let n = 4u32;
        for slow in 0..=n {
            for slow_took in [threshold, threshold + NS, 10 * threshold] {
                let (clock, builder) = on_fake();
                let (builder, changes) = watch_changes(
                    builder
                        .no_failure_rate()
                        .slow_call_rate(rate, threshold)
                        .minimum_calls(n)
                        .window(Window::Count { calls: n }),
                );
                let breaker = builder.build().unwrap();
                for i in 0..n {
                    let permit = breaker.try_acquire().unwrap();
                    clock.advance(if i < slow { slow_took } else { threshold - NS });
                    permit.success();
                }
                assert_eq!(
                    breaker.counts().slow,
                    slow,
                    "rate {rate}, slow took {slow_took:?}"
                );
                let expected = reaches(u64::from(slow), u64::from(n), rate);
                assert_eq!(
                    breaker.state() == State::Open,
                    expected,
                    "rate {rate}: {slow} slow of {n}"
                );
                if expected {
                    assert_eq!(changes.lock().unwrap()[0].2, Some(TripReason::SlowCallRate));
                }
            }
        }
    }
}

#[test]
fn slow_failures_count_as_slow_and_as_failures() {
    let (clock, builder) = on_fake();
    let breaker = builder
        .failure_rate(1.0)
        .slow_call_rate(1.0, ms(10))
        .minimum_calls(5)
        .window(Window::Count { calls: 5 })
        .build()
        .unwrap();
    for _ in 0..3 {
        let permit = breaker.try_acquire().unwrap();
        clock.advance(ms(10));
        permit.failure();
    }
    let c = breaker.counts();
    assert_eq!((c.calls, c.failures, c.slow), (3, 3, 3));
}

#[test]
fn minimum_calls_off_by_one_on_count_and_time_windows() {
    for m in [1u32, 2, 10, 100, 1_000] {
        for window in [
            Window::Count { calls: m },
            Window::Count { calls: 2 * m + 5 },
            Window::Time {
                span: SEC,
                buckets: 10,
            },
        ] {
            let (_clock, builder) = on_fake();
            let breaker = builder
                .failure_rate(1.0)
                .minimum_calls(m)
                .window(window)
                .build()
                .unwrap();
            for i in 1..m {
                breaker.try_acquire().unwrap().failure();
                assert_eq!(
                    breaker.state(),
                    State::Closed,
                    "minimum {m} over {window:?}: tripped at {i} calls"
                );
            }
            breaker.try_acquire().unwrap().failure();
            assert_eq!(
                breaker.state(),
                State::Open,
                "minimum {m} over {window:?}: not tripped at the minimum"
            );
        }
    }
}

#[test]
fn consecutive_failures_trip_under_the_minimum_and_an_ignored_or_dropped_call_does_not_break_the_run()
 {
    let (_clock, builder) = on_fake();
    let (builder, changes) = watch_changes(
        builder
            .failure_rate(1.0)
            .minimum_calls(100)
            .consecutive_failures(3),
    );
    let breaker = builder.build().unwrap();
    breaker.try_acquire().unwrap().failure();
    breaker.try_acquire().unwrap().failure();
    breaker.try_acquire().unwrap().success(); // breaks the run
    breaker.try_acquire().unwrap().failure();
    breaker.try_acquire().unwrap().failure();
    assert_eq!(breaker.state(), State::Closed, "a success broke the run");
    // Neither says anything about the service: "Not counted at all", "records nothing".
    breaker.try_acquire().unwrap().record(Outcome::Ignored);
    drop(breaker.try_acquire().unwrap());
    assert_eq!(breaker.state(), State::Closed);
    breaker.try_acquire().unwrap().failure();
    assert_eq!(
        breaker.state(),
        State::Open,
        "failure, failure, (ignored), (dropped), failure is three in a row"
    );
    assert_eq!(
        changes.lock().unwrap()[0].2,
        Some(TripReason::ConsecutiveFailures)
    );
}

#[test]
fn a_single_call_window_trips_on_one_failure_and_forgets_it_on_the_next_success() {
    let (_clock, builder) = on_fake();
    let breaker = builder
        .failure_rate(1.0)
        .minimum_calls(1)
        .window(Window::Count { calls: 1 })
        .build()
        .unwrap();
    for _ in 0..1_000 {
        breaker.try_acquire().unwrap().success();
    }
    assert_eq!(breaker.counts().calls, 1);
    breaker.try_acquire().unwrap().failure();
    assert_eq!(breaker.state(), State::Open);
}

#[test]
fn a_success_can_trip_as_older_successes_leave_a_time_window() {
    // "a success can ... arrive as older successes leave a time window"
    let (clock, builder) = on_fake();
    let breaker = builder
        .failure_rate(0.5)
        .minimum_calls(2)
        .window(Window::Time {
            span: SEC,
            buckets: 10,
        })
        .build()
        .unwrap();
    breaker.try_acquire().unwrap().success();
    breaker.try_acquire().unwrap().success();
    clock.advance(ms(500));
    breaker.try_acquire().unwrap().failure();
    assert_eq!(breaker.state(), State::Closed, "1 failure of 3");
    clock.advance(ms(500)); // the two successes leave; the failure stays
    breaker.try_acquire().unwrap().success();
    assert_eq!(breaker.counts().calls, 2);
    assert_eq!(
        breaker.state(),
        State::Open,
        "1 failure of 2 reaches 50 %, and the success that made it so decides"
    );
}

// --- differential checks against a model written from the docs ----------------------------

/// The documented rules, applied to the last `n` recorded calls.
struct Model {
    n: usize,
    rules: Rules,
    window: VecDeque<(bool, bool)>,
    run: u32,
}

impl Model {
    fn counts(&self) -> (u32, u32, u32) {
        let calls = self.window.len() as u32;
        let failures = self.window.iter().filter(|c| c.0).count() as u32;
        let slow = self.window.iter().filter(|c| c.1).count() as u32;
        (calls, failures, slow)
    }

    /// Records a call; the reasons the breaker now trips for.
    fn record(&mut self, failed: bool, slow: bool) -> Vec<TripReason> {
        self.window.push_back((failed, slow));
        if self.window.len() > self.n {
            self.window.pop_front();
        }
        self.run = if failed { self.run + 1 } else { 0 };
        let (calls, failures, slow) = self.counts();
        let held = Counts {
            calls,
            failures,
            slow,
        };
        self.rules.trips(held, self.run)
    }

    fn reset(&mut self) {
        self.window.clear();
        self.run = 0;
    }
}

#[test]
fn count_window_agrees_with_the_documented_model_over_seeded_random_runs() {
    let threshold = ms(100);
    let durations = [Duration::ZERO, ms(99), threshold - NS, threshold, ms(150)];
    let mut trips = [0usize; 3];
    for seed in 0..24u64 {
        let mut rng = Rng::new(0xC0DE ^ seed);
        let n = 1 + rng.below(12) as u32;
        let minimum = 1 + rng.below(u64::from(n)) as u32;
        let rate = |rng: &mut Rng| [0.2, 0.25, 1.0 / 3.0, 0.5, 0.6, 0.75, 1.0][rng.index(7)];
        let f_rate = rate(&mut rng);
        let s_rate = rate(&mut rng);
        let consecutive = rng.one_in(2).then(|| 1 + rng.below(5) as u32);
        let (clock, builder) = on_fake();
        let mut builder = builder
            .failure_rate(f_rate)
            .slow_call_rate(s_rate, threshold)
            .minimum_calls(minimum)
            .window(Window::Count { calls: n });
        if let Some(c) = consecutive {
            builder = builder.consecutive_failures(c);
        }
        let (builder, changes) = watch_changes(builder);
        let breaker = builder.build().unwrap();
        let mut model = Model {
            n: n as usize,
            rules: Rules {
                minimum: u64::from(minimum),
                failure_ppm: Some(ppm(f_rate)),
                slow_ppm: Some(ppm(s_rate)),
                consecutive,
            },
            window: VecDeque::new(),
            run: 0,
        };
        let what = format!(
            "seed {seed}: window {n}, minimum {minimum}, failure {f_rate}, slow {s_rate}, consecutive {consecutive:?}"
        );
        for step in 0..400 {
            let permit = breaker
                .try_acquire()
                .unwrap_or_else(|r| panic!("{what}, step {step}: refused while closed: {r:?}"));
            let took = durations[rng.index(durations.len())];
            clock.advance(took);
            let slow = took >= threshold;
            let reasons = match rng.below(10) {
                0 => {
                    permit.record(Outcome::Ignored);
                    Vec::new()
                }
                1 => {
                    drop(permit);
                    Vec::new()
                }
                2..=5 => {
                    permit.failure();
                    model.record(true, slow)
                }
                _ => {
                    permit.success();
                    model.record(false, slow)
                }
            };
            let (calls, failures, slows) = model.counts();
            if reasons.is_empty() {
                assert_eq!(breaker.state(), State::Closed, "{what}, step {step}");
                let c = breaker.counts();
                assert_eq!(
                    (c.calls, c.failures, c.slow),
                    (calls, failures, slows),
                    "{what}, step {step}"
                );
            } else {
                assert_eq!(
                    breaker.state(),
                    State::Open,
                    "{what}, step {step}: the model trips for {reasons:?} on {calls} calls, {failures} failed, {slows} slow"
                );
                let reason = changes.lock().unwrap().last().unwrap().2.unwrap();
                tally_trip(
                    &mut trips,
                    reason,
                    &reasons,
                    &format!("{what}, step {step}"),
                );
                breaker.reset();
                model.reset();
                assert_eq!(breaker.counts(), Counts::default(), "{what}: reset empties");
            }
        }
    }
    assert!(trips.iter().all(|&n| n >= 10), "trips by reason: {trips:?}");
}

/// Times are whole buckets after the breaker's creation, so the model needs no bucket origin.
#[test]
fn time_window_agrees_with_the_documented_model_across_gaps_that_wrap_its_stamps() {
    const WIDTH: Duration = Duration::from_millis(100);
    const BUCKETS: u64 = 10;
    // Gaps in buckets: small steps, the sweep period, half and whole stamp ranges (2^15, 2^16)
    // and their neighbours, an hour, a day, years.
    let gaps: [u64; 14] = [
        1 << 14,
        (1 << 15) - 1,
        1 << 15,
        (1 << 16) - BUCKETS,
        (1 << 16) - 1,
        1 << 16,
        (1 << 16) + 1,
        (1 << 16) + 5,
        3 << 16,
        36_000,
        864_000,
        (1 << 32) + 3,
        315_360_000, // a year
        3_153_600_000 + (1 << 16),
    ];
    let mut trips = 0usize;
    for seed in 0..12u64 {
        let mut rng = Rng::new(0x71AE ^ seed);
        let minimum = 1 + rng.below(8) as u32;
        let f_rate = [0.25, 0.5, 0.6, 1.0][rng.index(4)];
        let (clock, builder) = on_fake();
        let (builder, changes) =
            watch_changes(builder.failure_rate(f_rate).minimum_calls(minimum).window(
                Window::Time {
                    span: WIDTH * BUCKETS as u32,
                    buckets: BUCKETS as u32,
                },
            ));
        let breaker = builder.build().unwrap();
        let ppm = (f_rate * PPM as f64).round() as u64;
        let mut now = 0u64; // in buckets since creation
        let fail_in_ten = 3 + rng.below(6);
        let mut calls: Vec<(u64, bool)> = Vec::new();
        let what = format!("seed {seed}: minimum {minimum}, failure {f_rate}");
        for step in 0..500 {
            let gap = if rng.one_in(25) {
                gaps[rng.index(gaps.len())]
            } else {
                rng.below(4) * rng.below(4)
            };
            // Advance in chunks a clock can always add.
            let mut left = gap;
            while left > 0 {
                let chunk = left.min(3_000_000_000);
                clock.advance(WIDTH * u32::try_from(chunk).unwrap());
                left -= chunk;
            }
            now += gap;
            calls.retain(|(at, _)| now - at < BUCKETS);
            let failed = rng.below(10) < fail_in_ten;
            if failed {
                breaker.try_acquire().unwrap().failure();
            } else {
                breaker.try_acquire().unwrap().success();
            }
            calls.push((now, failed));
            let n = calls.len() as u64;
            let f = calls.iter().filter(|c| c.1).count() as u64;
            let trip = n >= u64::from(minimum) && f * PPM >= ppm * n;
            if trip {
                assert_eq!(
                    breaker.state(),
                    State::Open,
                    "{what}, step {step} (gap {gap}): {f} failures of {n} live calls"
                );
                assert_eq!(
                    changes.lock().unwrap().last().unwrap().2,
                    Some(TripReason::FailureRate)
                );
                breaker.reset();
                calls.clear();
                trips += 1;
            } else {
                assert_eq!(
                    breaker.state(),
                    State::Closed,
                    "{what}, step {step} (gap {gap}): {f} failures of {n} live calls"
                );
                let c = breaker.counts();
                assert_eq!(
                    (u64::from(c.calls), u64::from(c.failures)),
                    (n, f),
                    "{what}, step {step} (gap {gap})"
                );
            }
        }
    }
    assert!(trips >= 100, "{trips} trips in all");
}

#[test]
fn packed_counts_stay_exact_under_racing_threads() {
    // A threshold that never trips in this test: only consecutive failures, out of reach.
    for window in [
        Window::Count { calls: 4_096 },
        Window::Time {
            span: SEC,
            buckets: 4,
        },
    ] {
        let (_clock, builder) = on_fake();
        let breaker = builder
            .no_failure_rate()
            .consecutive_failures(u32::MAX)
            .window(window)
            .build()
            .unwrap();
        let failures = AtomicU32::new(0);
        let threads = 8u32;
        let per_thread = 400u32;
        std::thread::scope(|s| {
            for t in 0..threads {
                let (breaker, failures) = (&breaker, &failures);
                s.spawn(move || {
                    let mut rng = Rng::new(0x7EAD + u64::from(t));
                    for _ in 0..per_thread {
                        let permit = breaker.try_acquire().unwrap();
                        match rng.below(3) {
                            0 => {
                                failures.fetch_add(1, SeqCst);
                                permit.failure();
                            }
                            1 => permit.success(),
                            _ => permit.record(Outcome::Ignored),
                        }
                    }
                });
            }
        });
        let c = breaker.counts();
        let recorded_failures = failures.load(SeqCst);
        assert_eq!(c.failures, recorded_failures, "{window:?}");
        assert!(
            c.calls >= c.failures && c.calls <= threads * per_thread,
            "{window:?}: {c:?}"
        );
        assert_eq!(c.slow, 0);
    }
}

// === idle gaps ==============================================================================

#[test]
fn stale_time_window_failures_never_count_again_after_any_gap() {
    let gaps = [
        SEC,
        HOUR,
        DAY,
        30 * DAY,
        ms(100) * 65_536,
        ms(100) * 65_536 + ms(50),
        ms(100) * 65_536 * 2,
        ms(100) * 32_768,
        YEAR,
        100 * YEAR,
    ];
    for gap in gaps {
        let (clock, builder) = on_fake();
        let breaker = builder
            .failure_rate(0.5)
            .minimum_calls(10)
            .window(Window::Time {
                span: SEC,
                buckets: 10,
            })
            .build()
            .unwrap();
        clock.advance(ms(30));
        for _ in 0..9 {
            breaker.try_acquire().unwrap().failure();
        }
        let mut left = gap;
        while left > Duration::ZERO {
            let chunk = left.min(10 * YEAR);
            clock.advance(chunk);
            left -= chunk;
        }
        assert_eq!(breaker.counts().calls, 0, "after {gap:?}");
        breaker.try_acquire().unwrap().failure();
        assert_eq!(
            breaker.state(),
            State::Closed,
            "after {gap:?}: nine failures long gone counted again"
        );
        assert_eq!(breaker.counts().calls, 1, "after {gap:?}");
    }
}

#[test]
fn a_count_window_holds_its_calls_however_long_it_idles() {
    let (clock, builder) = on_fake();
    let breaker = builder
        .failure_rate(0.5)
        .minimum_calls(10)
        .window(Window::Count { calls: 10 })
        .build()
        .unwrap();
    for _ in 0..9 {
        breaker.try_acquire().unwrap().failure();
    }
    for _ in 0..10 {
        clock.advance(10 * YEAR);
    }
    assert_eq!(
        breaker.counts().calls,
        9,
        "the last N calls, not the last N seconds"
    );
    breaker.try_acquire().unwrap().success();
    assert_eq!(breaker.state(), State::Open, "9 failures of 10");
}

#[test]
fn an_open_breaker_idle_for_a_century_admits_a_probe_and_closes() {
    let (clock, builder) = on_fake();
    let breaker = builder
        .consecutive_failures(1)
        .break_backoff(exponential(SEC, 30 * SEC))
        .build()
        .unwrap();
    breaker.try_acquire().unwrap().failure();
    assert_eq!(refusal(&breaker), SEC);
    for _ in 0..10 {
        clock.advance(10 * YEAR);
    }
    let probe = breaker.try_acquire().expect("a probe after a century");
    assert!(probe.is_probe());
    probe.success();
    assert_eq!(breaker.state(), State::Closed);
    breaker.try_acquire().unwrap().failure();
    assert_eq!(
        refusal(&breaker),
        SEC,
        "the schedule restarted after the close"
    );
}

#[test]
fn a_half_open_breaker_with_no_probe_in_flight_never_times_out() {
    let (clock, builder) = on_fake();
    let (builder, changes) = watch_changes(
        builder
            .consecutive_failures(1)
            .break_duration(SEC)
            .max_half_open_wait(Some(10 * SEC)),
    );
    let breaker = builder.build().unwrap();
    breaker.try_acquire().unwrap().failure();
    clock.advance(SEC);
    // A probe taken and dropped: its slot is back, nothing is in flight.
    drop(breaker.try_acquire().expect("the first probe"));
    for _ in 0..10 {
        clock.advance(DAY);
    }
    let probe = breaker
        .try_acquire()
        .expect("ten idle days later, with no probe in flight, the next caller probes");
    assert!(probe.is_probe());
    assert_eq!(
        tos(&changes),
        [State::Open, State::HalfOpen],
        "no reopening while idle with no probe in flight"
    );
    // This probe hangs: the wait counts from it, not from the one dropped days ago.
    clock.advance(10 * SEC - NS);
    refusal(&breaker);
    assert_eq!(
        breaker.state(),
        State::HalfOpen,
        "1 ns before the wait ends"
    );
    clock.advance(2 * NS);
    refusal(&breaker);
    assert_eq!(breaker.state(), State::Open, "the hung probe's wait ended");
    assert_eq!(
        changes.lock().unwrap().last().unwrap().2,
        Some(TripReason::HalfOpenTimeout)
    );
    probe.success();
    assert_eq!(breaker.state(), State::Open, "too late: ignored");
}

#[test]
fn thousands_of_trips_in_a_row_hold_the_last_break_of_the_schedule() {
    // "Past the end of the backoff schedule (its `max_attempts` ...) the duration stays at the
    // schedule's last delay, so this never runs out, however many trips".
    let backoff = Backoff::exponential(ms(1))
        .factor(2.0)
        .jitter(Jitter::None)
        .max_delay(SEC)
        .max_attempts(5)
        .build()
        .unwrap();
    let (clock, builder) = on_fake();
    let breaker = builder
        .consecutive_failures(1)
        .break_backoff(backoff)
        .max_half_open_wait(None)
        .build()
        .unwrap();
    breaker.try_acquire().unwrap().failure();
    let expected = |trip: u32| ms([1, 2, 4, 8][trip.min(3) as usize]);
    for trip in 0..20_000u32 {
        let brk = expected(trip);
        assert_eq!(refusal(&breaker), brk, "trip {trip}");
        clock.advance(brk - NS);
        assert_eq!(
            refusal(&breaker),
            NS,
            "trip {trip}: 1 ns before the break ends"
        );
        clock.advance(NS);
        let probe = breaker.try_acquire().expect("the break ended");
        probe.failure();
    }
}

// === half-open ==============================================================================

fn tripped(clock: &FakeClock, builder: CircuitBreakerBuilder<FakeClock>) -> Fb {
    let breaker = builder
        .consecutive_failures(1)
        .break_duration(SEC)
        .build()
        .unwrap();
    breaker.try_acquire().unwrap().failure();
    clock.advance(SEC);
    breaker
}

#[test]
fn exactly_the_configured_probes_get_through_racing_threads() {
    for probes in [1u32, 3, 64, MAX_HALF_OPEN_PROBES] {
        let (clock, builder) = on_fake();
        let breaker = tripped(&clock, builder.half_open_probes(probes));
        let threads = 8usize;
        let tries = (probes as usize / threads + 1) * 2;
        let barrier = Barrier::new(threads);
        let held = Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for _ in 0..threads {
                let (barrier, held, breaker) = (&barrier, &held, &breaker);
                s.spawn(move || {
                    barrier.wait();
                    let mut mine = Vec::new();
                    for _ in 0..tries {
                        if let Ok(p) = breaker.try_acquire_owned() {
                            assert!(p.is_probe());
                            mine.push(p);
                        }
                    }
                    held.lock().unwrap().extend(mine);
                });
            }
        });
        let held = held.into_inner().unwrap();
        assert_eq!(held.len(), probes as usize, "{probes} probes configured");
        assert_eq!(breaker.state(), State::HalfOpen);
        let last = held.len() - 1;
        for (i, p) in held.into_iter().enumerate() {
            p.success();
            let want = if i == last {
                State::Closed
            } else {
                State::HalfOpen
            };
            assert_eq!(
                breaker.state(),
                want,
                "{probes} probes: after {} successes",
                i + 1
            );
        }
    }
}

#[test]
fn one_failure_after_all_but_one_probe_succeeded_reopens_with_the_next_break() {
    let (clock, builder) = on_fake();
    let (builder, changes) = watch_changes(builder.half_open_probes(3));
    let breaker = builder
        .consecutive_failures(1)
        .break_backoff(exponential(SEC, 10 * SEC))
        .build()
        .unwrap();
    breaker.try_acquire().unwrap().failure();
    clock.advance(SEC);
    let a = breaker.try_acquire().unwrap();
    let b = breaker.try_acquire().unwrap();
    a.success();
    b.success();
    let c = breaker.try_acquire().expect("the third slot");
    refusal(&breaker); // every slot taken
    c.failure();
    assert_eq!(breaker.state(), State::Open);
    assert_eq!(
        changes.lock().unwrap().last().unwrap().2,
        Some(TripReason::ProbeFailed)
    );
    assert_eq!(refusal(&breaker), 2 * SEC, "the second trip in a row");
}

#[test]
fn a_slow_probe_success_reopens_and_a_fast_one_counts() {
    // "one failure (or, when slow calls are tracked, one slow success) reopens it"
    for (took, reopens) in [(ms(100) - NS, false), (ms(100), true), (ms(300), true)] {
        let (clock, builder) = on_fake();
        let breaker = tripped(&clock, builder.slow_call_rate(0.5, ms(100)));
        let probe = breaker.try_acquire().unwrap();
        clock.advance(took);
        probe.success();
        let want = if reopens { State::Open } else { State::Closed };
        assert_eq!(breaker.state(), want, "a probe that took {took:?}");
    }
}

#[test]
fn ignored_and_dropped_probes_give_their_slots_back_and_count_for_nothing() {
    let (clock, builder) = on_fake();
    let breaker = tripped(&clock, builder.half_open_probes(2));
    let a = breaker.try_acquire().unwrap();
    a.success();
    let b = breaker.try_acquire().unwrap();
    refusal(&breaker);
    b.record(Outcome::Ignored);
    assert_eq!(
        breaker.state(),
        State::HalfOpen,
        "an ignored probe closes nothing"
    );
    let c = breaker.try_acquire().expect("the ignored probe's slot");
    drop(c);
    assert_eq!(breaker.state(), State::HalfOpen);
    let d = breaker.try_acquire().expect("the dropped probe's slot");
    refusal(&breaker);
    d.success();
    assert_eq!(breaker.state(), State::Closed, "two successes of two");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_probe_whose_operation_panics_inside_call_gives_its_slot_back() {
    let breaker = CircuitBreaker::builder()
        .consecutive_failures(1)
        .break_duration(SEC)
        .build()
        .unwrap();
    breaker.try_acquire().unwrap().failure();
    tokio::time::sleep(SEC).await;
    let call = breaker.call(|| async {
        tokio::task::yield_now().await;
        if true {
            panic!("the probe's operation panics");
        }
        Ok::<(), ()>(())
    });
    let caught = AssertUnwindSafe(call).catch_unwind().await;
    assert!(caught.is_err(), "the panic goes on to the caller");
    assert_eq!(breaker.state(), State::HalfOpen, "a panic is no outcome");
    let probe = breaker.try_acquire().expect("the panicked probe's slot");
    probe.success();
    assert_eq!(breaker.state(), State::Closed);
}

#[test]
fn max_half_open_wait_counts_from_the_first_probe_even_after_it_finishes() {
    let (clock, builder) = on_fake();
    let (builder, changes) = watch_changes(
        builder
            .half_open_probes(2)
            .max_half_open_wait(Some(10 * SEC)),
    );
    let breaker = tripped(&clock, builder);
    let first = breaker.try_acquire().unwrap();
    clock.advance(4 * SEC);
    let second = breaker.try_acquire().unwrap();
    clock.advance(SEC);
    first.success(); // at 5 s: the second still runs
    clock.advance(5 * SEC - NS); // 1 ns before 10 s from the first
    refusal(&breaker);
    assert_eq!(breaker.state(), State::HalfOpen);
    clock.advance(2 * NS);
    refusal(&breaker);
    assert_eq!(
        breaker.state(),
        State::Open,
        "10 s after the first probe started, not after the second"
    );
    assert_eq!(
        changes.lock().unwrap().last().unwrap().2,
        Some(TripReason::HalfOpenTimeout)
    );
    second.success();
    assert_eq!(breaker.state(), State::Open, "a late probe moves nothing");
}

#[test]
fn without_a_half_open_wait_a_probe_may_hang_for_a_century_and_still_close_it() {
    let (clock, builder) = on_fake();
    let breaker = tripped(&clock, builder.max_half_open_wait(None));
    let probe = breaker.try_acquire().unwrap();
    for _ in 0..10 {
        clock.advance(10 * YEAR);
        refusal(&breaker);
    }
    assert_eq!(breaker.state(), State::HalfOpen);
    probe.success();
    assert_eq!(breaker.state(), State::Closed);
}

#[test]
fn the_default_half_open_wait_is_sixty_seconds() {
    // "reopen if no probe finishes within 60 s"
    let (clock, builder) = on_fake();
    let breaker = tripped(&clock, builder);
    let _hung = breaker.try_acquire().unwrap();
    clock.advance(60 * SEC - NS);
    refusal(&breaker);
    assert_eq!(breaker.state(), State::HalfOpen);
    clock.advance(2 * NS);
    refusal(&breaker);
    assert_eq!(breaker.state(), State::Open);
}

// === breaks, backoff and hints ============================================================

#[test]
fn break_backoff_grows_per_trip_in_a_row_caps_and_restarts_after_a_close_or_a_reset() {
    let (clock, builder) = on_fake();
    let breaker = builder
        .consecutive_failures(1)
        .break_backoff(exponential(SEC, 3 * SEC))
        .max_half_open_wait(Some(SEC))
        .build()
        .unwrap();
    let trip_and_wait = |expected: Duration, how: &str| {
        assert_eq!(refusal(&breaker), expected, "{how}");
        clock.advance(expected - NS);
        assert_eq!(refusal(&breaker), NS, "{how}");
        clock.advance(NS);
    };
    breaker.try_acquire().unwrap().failure();
    trip_and_wait(SEC, "first trip");
    breaker.try_acquire().unwrap().failure();
    trip_and_wait(2 * SEC, "second trip: a failed probe");
    let _hung = breaker.try_acquire().unwrap();
    clock.advance(SEC);
    // The probe hung for the whole wait: the next caller reopens it, a trip in a row.
    trip_and_wait(3 * SEC, "third trip: the half-open wait, capped at 3 s");
    breaker.try_acquire().unwrap().failure();
    trip_and_wait(3 * SEC, "fourth trip: held at the cap");
    breaker.try_acquire().unwrap().success();
    assert_eq!(breaker.state(), State::Closed);
    breaker.try_acquire().unwrap().failure();
    trip_and_wait(SEC, "after a close the schedule starts over");
    breaker.try_acquire().unwrap().failure();
    assert_eq!(refusal(&breaker), 2 * SEC);
    breaker.reset();
    breaker.try_acquire().unwrap().failure();
    assert_eq!(refusal(&breaker), SEC, "reset restarts the break backoff");
}

#[test]
fn jittered_break_schedules_stay_within_their_caps() {
    for seed in 0..16u64 {
        let backoff = Backoff::exponential(ms(100))
            .jitter(Jitter::Equal)
            .max_delay(SEC)
            .max_attempts(u32::MAX)
            .build()
            .unwrap();
        let (clock, builder) = on_fake();
        let breaker = builder
            .consecutive_failures(1)
            .break_backoff(backoff)
            .seed(seed)
            .build()
            .unwrap();
        breaker.try_acquire().unwrap().failure();
        for trip in 0..40u32 {
            let brk = refusal(&breaker);
            let raw = ms(100).saturating_mul(1 << trip.min(20)).min(SEC);
            assert!(
                brk <= SEC && brk >= raw / 2,
                "seed {seed}, trip {trip}: a break of {brk:?} (equal jitter of {raw:?}, cap 1 s)"
            );
            clock.advance(brk);
            breaker
                .try_acquire()
                .unwrap_or_else(|r| panic!("seed {seed}, trip {trip}: still refused {r:?}"))
                .failure();
        }
    }
}

#[test]
fn a_failures_hint_holds_the_breaker_open_within_the_cap_and_never_shortens_the_break() {
    let case = |brk: Duration, cap: Duration, hint: Option<Duration>, expected: Duration| {
        let (clock, builder) = on_fake();
        let breaker = builder
            .consecutive_failures(1)
            .break_duration(brk)
            .max_open_hint(cap)
            .build()
            .unwrap();
        breaker
            .try_acquire()
            .unwrap()
            .record_hinted(Outcome::Failure, hint);
        let what = format!("break {brk:?}, cap {cap:?}, hint {hint:?}");
        assert_eq!(refusal(&breaker), expected, "{what}");
        clock.advance(expected - NS);
        refusal(&breaker);
        clock.advance(NS);
        assert!(
            breaker.try_acquire().is_ok(),
            "{what}: open past {expected:?}"
        );
    };
    case(SEC, 30 * SEC, Some(10 * SEC), 10 * SEC);
    case(SEC, 5 * SEC, Some(10 * SEC), 5 * SEC);
    case(SEC, 30 * SEC, Some(ms(500)), SEC);
    case(SEC, Duration::ZERO, Some(10 * SEC), SEC);
    case(SEC, 30 * SEC, None, SEC);
    case(SEC, 60 * SEC, Some(Duration::MAX), 60 * SEC);
    // The default cap is 60 s.
    let (_clock, builder) = on_fake();
    let breaker = builder
        .consecutive_failures(1)
        .break_duration(SEC)
        .build()
        .unwrap();
    breaker
        .try_acquire()
        .unwrap()
        .record_hinted(Outcome::Failure, Some(HOUR));
    assert_eq!(refusal(&breaker), 60 * SEC, "the default cap");
}

#[test]
fn a_hint_on_a_failure_that_does_not_trip_does_nothing_and_a_failed_probe_honours_its_hint() {
    let (clock, builder) = on_fake();
    let breaker = builder
        .consecutive_failures(2)
        .break_duration(SEC)
        .build()
        .unwrap();
    breaker
        .try_acquire()
        .unwrap()
        .record_hinted(Outcome::Failure, Some(20 * SEC));
    assert_eq!(breaker.state(), State::Closed);
    breaker.try_acquire().unwrap().failure();
    assert_eq!(
        refusal(&breaker),
        SEC,
        "the trip's own failure carried no hint: an earlier failure's hint does not hold it"
    );
    clock.advance(SEC);
    breaker
        .try_acquire()
        .unwrap()
        .record_hinted(Outcome::Failure, Some(7 * SEC));
    assert_eq!(refusal(&breaker), 7 * SEC, "the failed probe's hint");
}

// === manual control and generations ========================================================

#[test]
fn force_open_refuses_for_a_century_hinting_the_first_break_until_reset() {
    let (clock, builder) = on_fake();
    let breaker = builder
        .consecutive_failures(1)
        .break_backoff(exponential(2 * SEC, 60 * SEC))
        .build()
        .unwrap();
    // Escalate the schedule first: the force still hints the *first* break.
    for _ in 0..3 {
        breaker.try_acquire().unwrap().failure();
        clock.advance(refusal(&breaker));
    }
    breaker.force_open();
    assert_eq!(breaker.state(), State::ForcedOpen);
    for _ in 0..10 {
        assert_eq!(refusal(&breaker), 2 * SEC, "a force hints the first break");
        clock.advance(10 * YEAR);
    }
    assert_eq!(breaker.state(), State::ForcedOpen);
    breaker.reset();
    assert_eq!(breaker.state(), State::Closed);
    assert_eq!(breaker.counts(), Counts::default());
    let permit = breaker.try_acquire().unwrap();
    assert!(!permit.is_probe());
    permit.failure();
    assert_eq!(refusal(&breaker), 2 * SEC, "reset restarted the backoff");
}

#[test]
fn force_closed_admits_everything_counts_nothing_and_never_trips_until_reset() {
    let (clock, builder) = on_fake();
    let breaker = builder
        .consecutive_failures(1)
        .slow_call_rate(0.5, ms(1))
        .minimum_calls(1)
        .build()
        .unwrap();
    breaker.force_closed();
    for i in 0..1_000u32 {
        let permit = breaker
            .try_acquire()
            .expect("forced closed admits everything");
        assert!(!permit.is_probe());
        clock.advance(ms(5));
        if i % 2 == 0 {
            permit.failure();
        } else {
            permit.success();
        }
    }
    assert_eq!(breaker.state(), State::ForcedClosed);
    assert_eq!(
        breaker.counts(),
        Counts::default(),
        "a forced breaker counts no call"
    );
    breaker.reset();
    assert_eq!(breaker.state(), State::Closed);
    breaker.try_acquire().unwrap().failure();
    assert_eq!(breaker.state(), State::Open);
}

#[test]
fn outcomes_of_permits_from_before_a_reset_or_force_never_land_in_the_fresh_window() {
    let (clock, builder) = on_fake();
    let breaker = builder
        .consecutive_failures(1)
        .break_duration(SEC)
        .build()
        .unwrap();
    // Closed, then reset: the old failure is ignored.
    let old = breaker.try_acquire().unwrap();
    breaker.reset();
    old.failure();
    assert_eq!(breaker.state(), State::Closed);
    assert_eq!(breaker.counts(), Counts::default());
    // Closed, forced closed, reset: ignored.
    let old = breaker.try_acquire().unwrap();
    breaker.force_closed();
    breaker.reset();
    old.failure();
    assert_eq!(
        (breaker.state(), breaker.counts()),
        (State::Closed, Counts::default())
    );
    // A probe from before a force and a reset: its success closes nothing and its failure
    // opens nothing.
    breaker.try_acquire().unwrap().failure();
    clock.advance(SEC);
    let probe = breaker.try_acquire().unwrap();
    breaker.force_open();
    breaker.reset();
    probe.failure();
    assert_eq!(
        (breaker.state(), breaker.counts()),
        (State::Closed, Counts::default())
    );
    // A permit from a closed period before a trip and a close: ignored.
    let old = breaker.try_acquire().unwrap();
    breaker.try_acquire().unwrap().failure();
    clock.advance(SEC);
    breaker.try_acquire().unwrap().success();
    assert_eq!(breaker.state(), State::Closed);
    old.failure();
    assert_eq!(
        breaker.state(),
        State::Closed,
        "a failure from an earlier closed period"
    );
}

#[test]
fn every_transition_bumps_the_generation_once_and_is_reported_once_in_order() {
    for seed in 0..8u64 {
        let mut rng = Rng::new(0x6E4E ^ seed);
        let events = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&events);
        let (clock, builder) = on_fake();
        let (builder, changes) = watch_changes(
            builder
                .consecutive_failures(2)
                .break_duration(ms(100))
                .half_open_probes(2)
                .max_half_open_wait(Some(ms(300)))
                .on_event(move |e| {
                    if let EventKind::StateChanged(c) = e.kind {
                        seen.lock().unwrap().push((c.from, c.to, c.generation));
                    }
                }),
        );
        let breaker = builder.build().unwrap();
        let (mut state, mut generation) = breaker.state_and_generation();
        assert_eq!(state, State::Closed);
        let mut held = Vec::new();
        let mut reported = 0usize;
        for step in 0..600 {
            match rng.below(14) {
                0..=4 => {
                    if let Ok(p) = breaker.try_acquire() {
                        held.push(p);
                    }
                }
                5..=8 if !held.is_empty() => {
                    let p = held.swap_remove(rng.index(held.len()));
                    match rng.below(4) {
                        0 => p.success(),
                        1 => p.record(Outcome::Ignored),
                        2 => drop(p),
                        _ => p.failure(),
                    }
                }
                9 => clock.advance(ms(rng.below(400))),
                10 => breaker.force_open(),
                11 => breaker.force_closed(),
                12 => breaker.reset(),
                _ => {
                    let (_, g) = breaker.state_and_generation();
                    let stale = rng.one_in(2);
                    let g = if stale { g.wrapping_sub(1) } else { g };
                    if rng.one_in(2) {
                        let made = breaker.force_open_if(g);
                        assert_eq!(made, (!stale).then(|| g.wrapping_add(1)), "step {step}");
                    } else {
                        assert_eq!(breaker.reset_if(g), !stale, "step {step}");
                    }
                }
            }
            let (now_state, now_generation) = breaker.state_and_generation();
            let changes = changes.lock().unwrap();
            let new = &changes[reported..];
            let mut expected_generation = generation;
            let mut expected_from = state;
            for &(from, to, _, g) in new {
                expected_generation = expected_generation.wrapping_add(1);
                assert_eq!(g, expected_generation, "seed {seed}, step {step}: {new:?}");
                assert_eq!(from, expected_from, "seed {seed}, step {step}: {new:?}");
                expected_from = to;
            }
            assert_eq!(
                (now_state, now_generation),
                (expected_from, expected_generation),
                "seed {seed}, step {step}: the state read now against the changes reported ({new:?})"
            );
            reported = changes.len();
            (state, generation) = (now_state, now_generation);
        }
        held.clear();
        let on_event: Vec<_> = events.lock().unwrap().clone();
        let on_change: Vec<_> = changes
            .lock()
            .unwrap()
            .iter()
            .map(|c| (c.0, c.1, c.3))
            .collect();
        assert_eq!(
            on_event, on_change,
            "seed {seed}: on_event hears the same changes"
        );
    }
}

#[test]
fn racing_threads_report_each_transition_once_chained_by_generation() {
    let (clock, builder) = on_fake();
    let (builder, changes) = watch_changes(
        builder
            .consecutive_failures(1)
            .break_duration(ms(1))
            .half_open_probes(2)
            .max_half_open_wait(Some(ms(3))),
    );
    let breaker = builder.build().unwrap();
    let (_, start) = breaker.state_and_generation();
    std::thread::scope(|s| {
        for t in 0..6u64 {
            let (breaker, clock) = (&breaker, &clock);
            s.spawn(move || {
                let mut rng = Rng::new(0x4ACE + t);
                let mut held = Vec::new();
                for _ in 0..3_000 {
                    match rng.below(10) {
                        0..=3 => {
                            if let Ok(p) = breaker.try_acquire_owned() {
                                held.push(p);
                            }
                        }
                        4..=7 if !held.is_empty() => {
                            let p = held.swap_remove(rng.index(held.len()));
                            match rng.below(3) {
                                0 => p.success(),
                                1 => drop(p),
                                _ => p.failure(),
                            }
                        }
                        8 => clock.advance(Duration::from_micros(rng.below(1_500))),
                        _ => {
                            if rng.one_in(50) {
                                breaker.reset();
                            }
                        }
                    }
                }
            });
        }
    });
    let mut changes = changes.lock().unwrap().clone();
    let (end_state, end) = breaker.state_and_generation();
    changes.sort_by_key(|c| c.3.wrapping_sub(start));
    assert!(
        changes.len() > 10,
        "the storm made few transitions: {}",
        changes.len()
    );
    let mut from = State::Closed;
    for (i, &(f, to, _, g)) in changes.iter().enumerate() {
        assert_eq!(
            g,
            start.wrapping_add(i as u32 + 1),
            "transition {i}: generations reported once each, none missing"
        );
        assert_eq!(
            f, from,
            "transition {i} ({g}): does not start where the last ended"
        );
        from = to;
    }
    assert_eq!(
        (from, end),
        (end_state, start.wrapping_add(changes.len() as u32))
    );
}

// === listeners ===============================================================================

#[derive(Debug, Clone, PartialEq, Eq)]
enum Heard {
    Succeeded,
    Failed,
    Ignored,
    Rejected,
    Changed(State, State),
    Other,
}

type Log = Arc<Mutex<Vec<Heard>>>;

fn hear<R>(builder: CircuitBreakerBuilder<R>) -> (CircuitBreakerBuilder<R>, Log) {
    let log: Log = Arc::default();
    let seen = Arc::clone(&log);
    let builder = builder.on_event(move |e| {
        let heard = match e.kind {
            EventKind::Succeeded => Heard::Succeeded,
            EventKind::Failed => Heard::Failed,
            EventKind::Ignored => Heard::Ignored,
            EventKind::Rejected(Rejected::CircuitOpen { .. }) => Heard::Rejected,
            EventKind::StateChanged(c) => Heard::Changed(c.from, c.to),
            _ => Heard::Other,
        };
        seen.lock().unwrap().push(heard);
    });
    (builder, log)
}

#[test]
fn on_event_hears_each_outcome_refusal_and_change_and_nothing_for_a_dropped_permit() {
    let (clock, builder) = on_fake();
    let (builder, log) = hear(builder.consecutive_failures(2).break_duration(SEC));
    let breaker = builder.build().unwrap();
    breaker.try_acquire().unwrap().success();
    breaker.try_acquire().unwrap().record(Outcome::Ignored);
    drop(breaker.try_acquire().unwrap());
    breaker.try_acquire().unwrap().failure();
    breaker.try_acquire().unwrap().failure();
    refusal(&breaker);
    clock.advance(SEC);
    let probe = breaker.try_acquire().unwrap();
    drop(probe);
    breaker.try_acquire().unwrap().success();
    use Heard::*;
    assert_eq!(
        *log.lock().unwrap(),
        [
            Succeeded,
            Ignored,
            Failed,
            Failed,
            Changed(State::Closed, State::Open),
            Rejected,
            Changed(State::Open, State::HalfOpen),
            Succeeded,
            Changed(State::HalfOpen, State::Closed),
        ]
    );
}

#[test]
fn a_panicking_outcome_listener_records_nothing_and_frees_the_probe() {
    let panic_on = Arc::new(Mutex::new(None::<&'static str>));
    let trigger = Arc::clone(&panic_on);
    let (clock, builder) = on_fake();
    let breaker = builder
        .consecutive_failures(1)
        .break_duration(SEC)
        .on_event(move |e| {
            let name = match e.kind {
                EventKind::Succeeded => "succeeded",
                EventKind::Failed => "failed",
                _ => return,
            };
            if *trigger.lock().unwrap() == Some(name) {
                panic!("listener panics on {name}");
            }
        })
        .build()
        .unwrap();
    // Closed: a failure whose listener panics records nothing.
    *panic_on.lock().unwrap() = Some("failed");
    let permit = breaker.try_acquire().unwrap();
    assert!(catch_unwind(AssertUnwindSafe(|| permit.failure())).is_err());
    assert_eq!(
        breaker.state(),
        State::Closed,
        "the failure was not recorded"
    );
    assert_eq!(breaker.counts(), Counts::default());
    *panic_on.lock().unwrap() = None;
    breaker.try_acquire().unwrap().failure();
    clock.advance(SEC);
    // Half-open: a probe success whose listener panics gives the slot back.
    *panic_on.lock().unwrap() = Some("succeeded");
    let probe = breaker.try_acquire().unwrap();
    assert!(catch_unwind(AssertUnwindSafe(|| probe.success())).is_err());
    assert_eq!(breaker.state(), State::HalfOpen);
    *panic_on.lock().unwrap() = None;
    breaker
        .try_acquire()
        .expect("the probe slot came back")
        .success();
    assert_eq!(breaker.state(), State::Closed);
}

#[test]
fn a_panicking_state_change_listener_does_not_undo_the_transition() {
    let (clock, builder) = on_fake();
    let (builder, log) = hear(
        builder
            .consecutive_failures(1)
            .break_duration(SEC)
            .on_state_change(|c| {
                if c.to == State::Open {
                    panic!("state-change listener panics");
                }
            }),
    );
    let breaker = builder.build().unwrap();
    let permit = breaker.try_acquire().unwrap();
    assert!(catch_unwind(AssertUnwindSafe(|| permit.failure())).is_err());
    assert_eq!(breaker.state(), State::Open, "the state changed either way");
    assert!(
        log.lock()
            .unwrap()
            .contains(&Heard::Changed(State::Closed, State::Open)),
        "on_event heard it too: {:?}",
        log.lock().unwrap()
    );
    assert_eq!(refusal(&breaker), SEC);
    clock.advance(SEC);
    breaker.try_acquire().unwrap().success();
    assert_eq!(breaker.state(), State::Closed);
}

// === on every runtime: racing tasks and random drop points ================================

async fn probes_race_as_tasks<R: Runtime>(rt: Clocked<R>) {
    let breaker = CircuitBreaker::builder()
        .runtime(rt.clone())
        .consecutive_failures(1)
        .break_duration(ms(100))
        .half_open_probes(3)
        .max_half_open_wait(None)
        .build()
        .unwrap();
    breaker.try_acquire().unwrap().failure();
    rt.sleep(ms(100)).await;
    let handles: Vec<_> = (0..40)
        .map(|_| {
            let (breaker, rt2) = (breaker.clone(), rt.clone());
            rt.spawn(async move {
                breaker
                    .call(|| async move {
                        rt2.sleep(ms(10)).await;
                        Ok::<_, ()>(())
                    })
                    .await
            })
        })
        .collect();
    let mut admitted = 0;
    for handle in handles {
        match handle.await.unwrap() {
            Ok(()) => admitted += 1,
            Err(Error::Rejected(Rejected::CircuitOpen { .. })) => {}
            Err(other) => panic!("{other:?}"),
        }
    }
    assert_eq!(admitted, 3, "exactly the configured probes");
    assert_eq!(breaker.state(), State::Closed);
}

#[test]
fn probes_racing_as_tasks_get_exactly_the_configured_slots_on_every_runtime() {
    on_every_runtime!(probes_race_as_tasks);
}

/// Calls through the breaker with random latencies and outcomes, each cancelled at a seeded
/// random time (or run to its end); afterwards the breaker must come back to closed.
async fn call_drop_storm<R: Runtime>(rt: Clocked<R>) {
    let half_opens = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&half_opens);
    let (cancelled, refused) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let breaker = CircuitBreaker::builder()
        .runtime(rt.clone())
        .on_state_change(move |c| {
            if c.to == State::HalfOpen {
                counted.fetch_add(1, SeqCst);
            }
        })
        .consecutive_failures(2)
        .break_duration(ms(20))
        .half_open_probes(3)
        .max_half_open_wait(None) // a leaked slot would stick for ever
        .build()
        .unwrap();
    let mut rng = Rng::new(0xD409);
    let mut handles = Vec::new();
    for _ in 0..300 {
        let start = ms(rng.below(2_000));
        let latency = ms(rng.below(60));
        let cancel = ms(rng.below(80));
        let fail = rng.below(10) < 5;
        let panics = rng.one_in(15);
        let (breaker, rt2) = (breaker.clone(), rt.clone());
        let (cancelled, refused) = (Arc::clone(&cancelled), Arc::clone(&refused));
        handles.push(rt.spawn(async move {
            rt2.sleep(start).await;
            let rt3 = rt2.clone();
            let call = breaker.call(|| async move {
                rt3.sleep(latency).await;
                assert!(!panics, "an operation that panics");
                if fail { Err(()) } else { Ok(()) }
            });
            match AssertUnwindSafe(call.timeout_on(&rt2, cancel))
                .catch_unwind()
                .await
            {
                Ok(Err(_elapsed)) => cancelled.fetch_add(1, SeqCst),
                Ok(Ok(Err(Error::Rejected(_)))) => refused.fetch_add(1, SeqCst),
                _ => 0,
            };
        }));
    }
    for handle in handles {
        handle.await.unwrap();
    }
    // The storm did what it is for: half-open states, cancelled calls and refusals.
    assert!(
        half_opens.load(SeqCst) >= 10,
        "{} half-open states",
        half_opens.load(SeqCst)
    );
    assert!(
        cancelled.load(SeqCst) >= 25,
        "{} cancelled",
        cancelled.load(SeqCst)
    );
    assert!(
        refused.load(SeqCst) >= 50,
        "{} refused",
        refused.load(SeqCst)
    );
    drain_to_closed_on(&rt, &breaker).await;
}

#[test]
fn calls_cancelled_or_panicking_at_random_points_leak_no_probe_on_every_runtime() {
    on_every_runtime!(call_drop_storm);
}

// === composed: Pipeline ======================================================================

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_pipeline_counts_each_attempt_and_retries_an_open_refusal_after_its_hint() {
    let breaker = CircuitBreaker::builder()
        .consecutive_failures(3)
        .break_duration(SEC)
        .build()
        .unwrap();
    let pipeline = Pipeline::builder()
        .deadline(10 * SEC)
        .retry(
            Backoff::constant(ms(10))
                .jitter(Jitter::None)
                .max_attempts(8)
                .build()
                .unwrap(),
        )
        .breaker(breaker.clone())
        .build()
        .unwrap();
    let origin = tokio::time::Instant::now();
    let starts = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&starts);
    let result = pipeline
        .call(move || {
            let mut log = log.lock().unwrap();
            log.push(origin.elapsed());
            let n = log.len();
            async move { if n <= 3 { Err("down") } else { Ok(n) } }
        })
        .await;
    assert_eq!(result, Ok(4));
    let starts = starts.lock().unwrap().clone();
    assert_eq!(starts[..3], [ms(0), ms(10), ms(20)], "{starts:?}");
    assert!(
        starts[3] >= ms(20) + SEC,
        "the fourth attempt ran {:?} in: before the break that began at 20 ms ended",
        starts[3]
    );
    assert_eq!(breaker.state(), State::Closed, "the probe closed it");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_retry_whose_open_hint_ends_past_the_deadline_ends_the_call_at_once() {
    let breaker = CircuitBreaker::builder()
        .consecutive_failures(1)
        .break_duration(10 * SEC)
        .build()
        .unwrap();
    breaker.try_acquire().unwrap().failure();
    let pipeline = Pipeline::builder()
        .deadline(2 * SEC)
        .retry(Backoff::constant(ms(10)).max_attempts(50).build().unwrap())
        .breaker(breaker.clone())
        .build()
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    let before = tokio::time::Instant::now();
    let result: Result<(), Error<&str>> = pipeline
        .call(move || {
            counted.fetch_add(1, SeqCst);
            async { Ok(()) }
        })
        .await;
    assert!(matches!(result, Err(Error::Rejected(_))), "{result:?}");
    assert_eq!(calls.load(SeqCst), 0, "the operation never ran");
    assert_eq!(before.elapsed(), Duration::ZERO, "the call ended at once");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_deadline_that_cuts_an_attempt_records_nothing_and_frees_the_probe() {
    let breaker = CircuitBreaker::builder()
        .consecutive_failures(1)
        .break_duration(SEC)
        .max_half_open_wait(None)
        .build()
        .unwrap();
    let pipeline = Pipeline::builder()
        .deadline(ms(100))
        .breaker(breaker.clone())
        .build()
        .unwrap();
    let slow = || async {
        tokio::time::sleep(SEC).await;
        Err::<(), _>("down")
    };
    // Closed: the cut attempt is not a failure.
    let result = pipeline.call(slow).await;
    assert_eq!(result, Err(Error::Rejected(Rejected::DeadlineExceeded)));
    assert_eq!(breaker.counts(), Counts::default());
    // Half-open: the cut probe gives its slot back.
    breaker.try_acquire().unwrap().failure();
    tokio::time::sleep(SEC).await;
    let result = pipeline.call(slow).await;
    assert_eq!(result, Err(Error::Rejected(Rejected::DeadlineExceeded)));
    assert_eq!(breaker.state(), State::HalfOpen);
    breaker
        .try_acquire()
        .expect("the cut probe's slot")
        .success();
    assert_eq!(breaker.state(), State::Closed);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn an_attempt_timeout_counts_as_a_breaker_failure() {
    let breaker = CircuitBreaker::builder()
        .consecutive_failures(2)
        .build()
        .unwrap();
    let pipeline = Pipeline::builder()
        .breaker(breaker.clone())
        .attempt_timeout(ms(50))
        .build()
        .unwrap();
    let result = pipeline
        .call(|| async {
            tokio::time::sleep(SEC).await;
            Ok::<(), &str>(())
        })
        .await;
    assert_eq!(result, Err(Error::TimedOut));
    let c = breaker.counts();
    assert_eq!((c.calls, c.failures), (1, 1));
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_pipelines_classifier_decides_what_the_breaker_counts() {
    let breaker = CircuitBreaker::builder()
        .consecutive_failures(3)
        .build()
        .unwrap();
    let pipeline = Pipeline::builder()
        .retry(
            Backoff::constant(ms(1))
                .jitter(Jitter::None)
                .max_attempts(3)
                .build()
                .unwrap(),
        )
        .breaker(breaker.clone())
        .classify(|result: Result<&u16, &u16>| match result {
            Ok(503) => Verdict::RetryableFailure,
            Ok(_) => Verdict::Success,
            Err(404) => Verdict::Ignored,
            Err(_) => Verdict::Failure,
        })
        .build()
        .unwrap();
    let attempts = Arc::new(AtomicUsize::new(0));
    let run = |answer: Result<u16, u16>| {
        let attempts = Arc::clone(&attempts);
        move || {
            attempts.fetch_add(1, SeqCst);
            async move { answer }
        }
    };
    assert_eq!(pipeline.call(run(Err(404))).await, Err(Error::Inner(404)));
    assert_eq!(breaker.counts().calls, 0, "ignored: not counted");
    assert_eq!(pipeline.call(run(Err(500))).await, Err(Error::Inner(500)));
    assert_eq!(
        (attempts.load(SeqCst), breaker.counts().failures),
        (2, 1),
        "not retried"
    );
    breaker.reset();
    assert_eq!(
        pipeline.call(run(Ok(503))).await,
        Ok(503),
        "the last value is returned"
    );
    assert_eq!(attempts.load(SeqCst), 5, "three attempts");
    assert_eq!(
        breaker.state(),
        State::Open,
        "three retryable failures in a row"
    );
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_spent_retry_budget_leaves_the_breaker_one_attempt_per_call() {
    let breaker = CircuitBreaker::builder()
        .consecutive_failures(100)
        .build()
        .unwrap();
    let budget = RetryBudget::new(
        RetryBudgetPolicy::builder()
            .ratio(0.1)
            .min_per_second(0)
            .build()
            .unwrap(),
        Tokio.now(),
    );
    let pipeline = Pipeline::builder()
        .retry(Backoff::constant(ms(1)).max_attempts(10).build().unwrap())
        .retry_budget(budget)
        .breaker(breaker.clone())
        .build()
        .unwrap();
    for _ in 0..5 {
        let result = pipeline.call(|| async { Err::<(), _>("down") }).await;
        assert_eq!(result, Err(Error::Inner("down")));
    }
    // 5 calls at a 10 % ratio earn no whole retry: the breaker saw one attempt per call.
    assert_eq!(breaker.counts().calls, 5);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_none_breaker_stage_gates_nothing() {
    let pipeline = Pipeline::builder()
        .breaker(None::<CircuitBreaker>)
        .build()
        .unwrap();
    for _ in 0..100 {
        assert_eq!(
            pipeline.call(|| async { Err::<(), _>("down") }).await,
            Err(Error::Inner("down"))
        );
    }
}

/// An outer pipeline (deadline, retry, breaker) whose operation calls an inner pipeline
/// (retry, its own breaker), both cancelled at seeded random points: neither breaker may keep
/// a probe slot.
async fn nested_pipeline_storm<R: Runtime>(rt: Clocked<R>) {
    let half_opens = Arc::new(AtomicUsize::new(0));
    let make = || {
        let counted = Arc::clone(&half_opens);
        CircuitBreaker::builder()
            .runtime(rt.clone())
            .on_state_change(move |c| {
                if c.to == State::HalfOpen {
                    counted.fetch_add(1, SeqCst);
                }
            })
            .consecutive_failures(2)
            .break_duration(ms(15))
            .half_open_probes(2)
            .max_half_open_wait(None)
            .build()
            .unwrap()
    };
    let (outer_breaker, inner_breaker) = (make(), make());
    let retry = Backoff::constant(ms(5))
        .jitter(Jitter::None)
        .max_attempts(3)
        .build()
        .unwrap();
    let inner = Pipeline::builder()
        .runtime(rt.clone())
        .retry(retry)
        .breaker(inner_breaker.clone())
        .build()
        .unwrap();
    let outer = Pipeline::builder()
        .runtime(rt.clone())
        .deadline(ms(120))
        .retry(retry)
        .breaker(outer_breaker.clone())
        .build()
        .unwrap();
    let (inner, outer) = (Arc::new(inner), Arc::new(outer));
    let mut rng = Rng::new(0x4E57);
    let mut handles = Vec::new();
    for _ in 0..160 {
        let start = ms(rng.below(1_500));
        let latency = ms(rng.below(30));
        let cancel = ms(1 + rng.below(150));
        let fail = rng.below(10) < 6;
        let (inner, outer, rt2) = (Arc::clone(&inner), Arc::clone(&outer), rt.clone());
        handles.push(rt.spawn(async move {
            rt2.sleep(start).await;
            let rt3 = rt2.clone();
            let call = outer.call(move || {
                let (inner, rt4) = (Arc::clone(&inner), rt3.clone());
                async move {
                    inner
                        .call(move || {
                            let rt5 = rt4.clone();
                            async move {
                                rt5.sleep(latency).await;
                                if fail { Err("down") } else { Ok(()) }
                            }
                        })
                        .await
                }
            });
            let _ = call.timeout_on(&rt2, cancel).await;
        }));
    }
    for handle in handles {
        handle.await.unwrap();
    }
    assert!(
        half_opens.load(SeqCst) >= 20,
        "{} half-open states",
        half_opens.load(SeqCst)
    );
    drain_to_closed_on(&rt, &inner_breaker).await;
    drain_to_closed_on(&rt, &outer_breaker).await;
}

#[test]
fn nested_pipelines_cancelled_at_random_points_leak_no_probe_on_every_runtime() {
    on_every_runtime!(nested_pipeline_storm);
}

// === composed: tower ===========================================================================

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn breaker_layer_records_refusals_from_below_as_nothing_and_shows_them_to_no_classifier() {
    let (_clock, builder) = on_fake();
    let breaker = builder.consecutive_failures(2).build().unwrap();
    let judged = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&judged);
    let mut service = BreakerLayer::new(breaker.clone())
        .classify(move |result: Result<&u16, &Error<&str>>| {
            counted.fetch_add(1, SeqCst);
            match result {
                Ok(404) => Verdict::Ignored,
                Ok(_) => Verdict::Success,
                Err(_) => Verdict::Failure,
            }
        })
        .layer(tower::service_fn(
            |answer: Result<u16, Error<&'static str>>| async move { answer },
        ));
    for _ in 0..10 {
        let refused = service
            .call(Err(Error::Rejected(Rejected::BulkheadFull)))
            .await;
        assert_eq!(refused, Err(Error::Rejected(Rejected::BulkheadFull)));
    }
    assert_eq!(breaker.counts(), Counts::default());
    assert_eq!(
        judged.load(SeqCst),
        0,
        "a refusal from below is not shown to the classifier"
    );
    assert_eq!(service.call(Ok(404)).await, Ok(404));
    assert_eq!(breaker.counts().calls, 0, "ignored");
    assert_eq!(
        service.call(Err(Error::Inner("down"))).await,
        Err(Error::Inner("down"))
    );
    assert_eq!(
        service.call(Err(Error::TimedOut)).await,
        Err(Error::TimedOut)
    );
    assert_eq!(breaker.state(), State::Open, "two failures");
    let shed = service.call(Ok(200)).await;
    assert!(matches!(
        shed,
        Err(Error::Rejected(Rejected::CircuitOpen { .. }))
    ));
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_dropped_breaker_layer_response_future_records_nothing_and_frees_the_probe() {
    let (clock, builder) = on_fake();
    let breaker = tripped(&clock, builder.max_half_open_wait(None));
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    let mut service = BreakerLayer::new(breaker.clone()).layer(tower::service_fn(move |_: ()| {
        counted.fetch_add(1, SeqCst);
        std::future::pending::<Result<(), Error<&str>>>()
    }));
    for _ in 0..5 {
        poll_fn(|cx| service.poll_ready(cx)).await.unwrap();
        let mut response = Box::pin(service.call(()));
        assert!(response.as_mut().now_or_never().is_none(), "the probe runs");
        drop(response);
        assert_eq!(breaker.state(), State::HalfOpen);
    }
    assert_eq!(
        calls.load(SeqCst),
        5,
        "each dropped probe's slot went to the next"
    );
    drain_to_closed(&clock, &breaker);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn an_inner_breaker_layers_refusal_does_not_trip_the_outer_one() {
    let (_clock, builder) = on_fake();
    let outer = builder.consecutive_failures(1).build().unwrap();
    let (_clock2, builder) = on_fake();
    let inner = builder.consecutive_failures(1).build().unwrap();
    inner.force_open();
    let service = tower::service_fn(|_: ()| async { Ok::<_, Error<&str>>(()) });
    let mut stack =
        BreakerLayer::new(outer.clone()).layer(BreakerLayer::new(inner.clone()).layer(service));
    for _ in 0..20 {
        let shed = stack.call(()).await;
        assert!(matches!(
            shed,
            Err(Error::Rejected(Rejected::CircuitOpen { .. }))
        ));
    }
    assert_eq!(outer.state(), State::Closed);
    assert_eq!(outer.counts(), Counts::default());
}

// === composed: keyed ===========================================================================

type Keyed = KeyedCircuitBreaker<&'static str, FakeClock>;

fn keyed(clock: &FakeClock, max_keys: usize, ttl: Duration) -> Keyed {
    CircuitBreaker::builder()
        .runtime(clock.clone())
        .consecutive_failures(5)
        .break_duration(SEC)
        .keyed()
        .max_keys(max_keys)
        .idle_ttl(ttl)
        .build()
        .unwrap()
}

fn keys_full(result: Result<impl Sized, Rejected>) -> Option<Duration> {
    match result {
        Err(Rejected::KeysFull { retry_after }) => retry_after,
        Err(other) => panic!("refused with {other:?}, not KeysFull"),
        Ok(_) => panic!("admitted"),
    }
}

#[test]
fn a_closed_key_with_failures_is_kept_for_idle_ttl_after_its_last_failure_then_forgotten() {
    let clock = FakeClock::new();
    let table = keyed(&clock, 1, 30 * SEC);
    let permit = table.try_acquire(&"a").unwrap();
    clock.advance(20 * SEC);
    permit.failure(); // used now, however long ago the call began
    assert_eq!(keys_full(table.try_acquire(&"b")), Some(30 * SEC));
    clock.advance(10 * SEC);
    assert_eq!(keys_full(table.try_acquire(&"b")), Some(20 * SEC));
    clock.advance(20 * SEC);
    table
        .try_acquire(&"b")
        .expect("a's failures are idle_ttl old")
        .success();
    assert_eq!(table.state(&"a"), None, "a was forgotten");
    assert_eq!(table.state(&"b"), Some(State::Closed));
}

#[test]
fn keys_held_by_permits_or_open_breakers_are_never_forgotten_and_refuse_with_no_hint() {
    let clock = FakeClock::new();
    let table = CircuitBreaker::builder()
        .runtime(clock.clone())
        .consecutive_failures(1)
        .break_duration(SEC)
        .keyed::<&'static str>()
        .max_keys(2)
        .idle_ttl(SEC)
        .build()
        .unwrap();
    let held = table.try_acquire(&"held").unwrap();
    table.try_acquire(&"down").unwrap().failure();
    for _ in 0..10 {
        clock.advance(10 * YEAR);
        assert_eq!(keys_full(table.try_acquire(&"new")), None);
    }
    assert_eq!(table.state(&"down"), Some(State::Open));
    assert_eq!(table.state(&"held"), Some(State::Closed));
    drop(held);
    // "held" is closed with an empty window and no permit: it may go at once.
    table
        .try_acquire(&"new")
        .expect("room made by forgetting 'held'")
        .success();
    assert_eq!(table.state(&"held"), None);
    assert_eq!(table.state(&"down"), Some(State::Open));
}

#[test]
fn a_key_forced_open_before_its_first_call_outlives_any_pressure_and_time() {
    let clock = FakeClock::new();
    let table = keyed(&clock, 1, SEC);
    table.get_or_make(&"out").unwrap().force_open();
    for _ in 0..10 {
        clock.advance(10 * YEAR);
        assert_eq!(table.retain_in_use(), 0);
        assert_eq!(keys_full(table.try_acquire(&"other")), None);
        assert!(matches!(
            table.try_acquire(&"out"),
            Err(Rejected::CircuitOpen { .. })
        ));
    }
    assert_eq!(table.not_closed(), vec![("out", State::ForcedOpen)]);
    table.get(&"out").unwrap().reset();
    table
        .try_acquire(&"other")
        .expect("out is closed and empty now")
        .success();
}

#[test]
fn each_keys_probes_are_exact_under_racing_threads_and_its_changes_are_heard_with_the_key() {
    let clock = FakeClock::new();
    let heard = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&heard);
    let table = CircuitBreaker::builder()
        .runtime(clock.clone())
        .consecutive_failures(1)
        .break_duration(SEC)
        .half_open_probes(2)
        .keyed::<u32>()
        .max_keys(100)
        .on_state_change(move |key: &u32, c| seen.lock().unwrap().push((*key, c.from, c.to)))
        .build()
        .unwrap();
    for key in 0..8u32 {
        table.try_acquire(&key).unwrap().failure();
    }
    clock.advance(SEC);
    let admitted = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for t in 0..8u32 {
            let (table, admitted) = (&table, &admitted);
            s.spawn(move || {
                for i in 0..40u32 {
                    let key = (t + i) % 8;
                    if let Ok(p) = table.try_acquire(&key) {
                        admitted.lock().unwrap().push((key, p));
                    }
                }
            });
        }
    });
    let admitted = admitted.into_inner().unwrap();
    for key in 0..8u32 {
        assert_eq!(
            admitted.iter().filter(|(k, _)| *k == key).count(),
            2,
            "key {key}: two probes"
        );
    }
    for (_, p) in admitted {
        p.success();
    }
    assert!(table.not_closed().is_empty());
    let heard = heard.lock().unwrap();
    for key in 0..8u32 {
        let mine: Vec<_> = heard
            .iter()
            .filter(|h| h.0 == key)
            .map(|h| (h.1, h.2))
            .collect();
        assert_eq!(
            mine,
            [
                (State::Closed, State::Open),
                (State::Open, State::HalfOpen),
                (State::HalfOpen, State::Closed)
            ],
            "key {key}"
        );
    }
}

// === composed: configuration ====================================================================

fn from_toml(toml: &str) -> Result<CircuitBreaker<FakeClock>, String> {
    let config = Config::from_toml(toml).map_err(|e| e.path().to_owned())?;
    let builder = config
        .instance("x")
        .map_err(|e| e.path().to_owned())?
        .breaker()
        .map_err(|e| e.path().to_owned())?;
    builder
        .runtime(FakeClock::new())
        .build()
        .map_err(|e| e.to_string())
}

fn breaks_of(toml: &str, trips: usize) -> Vec<Duration> {
    let breaker = from_toml(toml).unwrap();
    let clock = breaker.runtime().clone();
    let mut breaks = Vec::new();
    breaker.try_acquire().unwrap().failure();
    for _ in 0..trips {
        let brk = refusal(&breaker);
        breaks.push(brk);
        clock.advance(brk);
        breaker.try_acquire().unwrap().failure();
    }
    breaks
}

#[test]
fn a_configured_break_schedule_grows_from_break_duration_to_max_break_duration() {
    let exponential = breaks_of(
        "[instances.x.breaker]\nconsecutive_failures = 1\nbreak_duration = \"1s\"\nbreak_backoff = \"exponential\"\nmax_break_duration = \"3s\"\n",
        5,
    );
    assert_eq!(exponential, [SEC, 2 * SEC, 3 * SEC, 3 * SEC, 3 * SEC]);
    let linear = breaks_of(
        "[instances.x.breaker]\nconsecutive_failures = 1\nbreak_duration = \"1s\"\nbreak_backoff = \"linear\"\n",
        35,
    );
    let expected: Vec<_> = (1..=35u32).map(|k| (k * SEC).min(30 * SEC)).collect();
    assert_eq!(
        linear, expected,
        "linear: each break 1 s longer, up to the default 30 s"
    );
    let constant = breaks_of(
        "[instances.x.breaker]\nconsecutive_failures = 1\nbreak_duration = \"250ms\"\n",
        4,
    );
    assert_eq!(constant, [ms(250); 4]);
    let factor = breaks_of(
        "[instances.x.breaker]\nconsecutive_failures = 1\nbreak_duration = \"100ms\"\nbreak_backoff = \"exponential\"\nbreak_factor = 3.0\nmax_break_duration = \"1s\"\n",
        4,
    );
    assert_eq!(factor, [ms(100), ms(300), ms(900), SEC]);
}

#[test]
fn configured_breakers_at_their_bounds_build_and_past_them_are_refused_at_their_key() {
    let ok = |body: &str| {
        from_toml(&format!("[instances.x.breaker]\n{body}\n"))
            .unwrap_or_else(|e| panic!("{body}: refused at {e}"))
    };
    let refused_at = |body: &str, key: &str| {
        let err = from_toml(&format!("[instances.x.breaker]\n{body}\n"))
            .err()
            .unwrap_or_else(|| panic!("{body}: accepted"));
        assert_eq!(err, format!("instances.x.breaker.{key}"), "{body}");
    };
    ok("failure_rate = 1.0");
    ok("failure_rate = 0.000001");
    ok("window_calls = 1048575\nminimum_calls = 1");
    ok("window = \"1s\"\nwindow_buckets = 1024");
    ok("half_open_probes = 4095");
    ok("max_half_open_wait = \"off\"");
    ok("failure_rate = \"off\"\nconsecutive_failures = 3");
    refused_at("failure_rate = 0.0", "failure_rate");
    refused_at("failure_rate = 1.5", "failure_rate");
    refused_at("slow_call_rate = 0.0", "slow_call_rate");
    refused_at("window_calls = 0", "window_calls");
    refused_at("window_calls = 1048576", "window_calls");
    refused_at("window = \"1s\"\nwindow_buckets = 1025", "window_buckets");
    refused_at("window = \"1s\"\nwindow_buckets = 0", "window_buckets");
    refused_at("half_open_probes = 0", "half_open_probes");
    refused_at("half_open_probes = 4096", "half_open_probes");
    refused_at("break_duration = \"0s\"", "break_duration");
    refused_at("slow_call_threshold = \"2s\"", "slow_call_threshold");
    refused_at("break_factor = 3.0", "break_factor");
    refused_at("max_break_duration = \"10s\"", "max_break_duration");
    // Two windows in one layer: refused, at one of the two keys.
    let err = from_toml("[instances.x.breaker]\nwindow_calls = 10\nwindow = \"1s\"\n")
        .expect_err("two windows");
    assert!(
        err == "instances.x.breaker.window" || err == "instances.x.breaker.window_calls",
        "{err}"
    );
}

#[test]
fn a_configured_half_open_wait_of_off_waits_for_ever() {
    let breaker = from_toml(
        "[instances.x.breaker]\nconsecutive_failures = 1\nbreak_duration = \"1s\"\nmax_half_open_wait = \"off\"\n",
    )
    .unwrap();
    let clock = breaker.runtime().clone();
    breaker.try_acquire().unwrap().failure();
    clock.advance(SEC);
    let probe = breaker.try_acquire().unwrap();
    clock.advance(10 * YEAR);
    refusal(&breaker);
    probe.success();
    assert_eq!(breaker.state(), State::Closed);
}

#[test]
fn a_registrys_pipeline_and_breaker_share_one_state() {
    let config = Config::from_toml(
        "[instances.pay]\nretry = { max_attempts = 1 }\n[instances.pay.breaker]\nconsecutive_failures = 2\nbreak_duration = \"5s\"\n",
    )
    .unwrap();
    let rt = Clocked::new(Tokio);
    let registry = Registry::builder(config)
        .runtime(rt.clone())
        .build()
        .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(rt.drive(async {
        let pipeline = registry.pipeline("pay").unwrap();
        for _ in 0..2 {
            let failed: Result<(), Error<&str>> = pipeline.call(|| async { Err("down") }).await;
            assert_eq!(failed, Err(Error::Inner("down")));
        }
        let breaker = registry.breaker("pay").unwrap();
        assert_eq!(breaker.state(), State::Open, "opened through the pipeline");
        assert_eq!(refusal(&breaker), 5 * SEC);
        assert!(
            registry
                .breakers()
                .iter()
                .any(|(name, b)| &**name == "pay" && b.state() == State::Open)
        );
    }));
}

// === the closed path's clock reads =========================================================

/// A clock that counts its readings.
#[derive(Clone)]
struct Counting {
    clock: FakeClock,
    reads: Arc<AtomicUsize>,
}

impl Clock for Counting {
    type Sleep = <FakeClock as Clock>::Sleep;
    fn now(&self) -> std::time::Instant {
        self.reads.fetch_add(1, SeqCst);
        self.clock.now()
    }
    fn sleep_until(&self, deadline: std::time::Instant) -> Self::Sleep {
        self.clock.sleep_until(deadline)
    }
}

fn counting_breaker() -> (Counting, CircuitBreaker<Counting>) {
    let rt = Counting {
        clock: FakeClock::new(),
        reads: Arc::default(),
    };
    let breaker = CircuitBreaker::builder()
        .runtime(rt.clone())
        .failure_rate(0.5)
        .minimum_calls(4)
        .window(Window::Count { calls: 4 })
        .break_duration(SEC)
        .build()
        .unwrap();
    rt.reads.store(0, SeqCst);
    (rt, breaker)
}

#[test]
fn a_count_window_without_a_slow_rule_reads_no_clock_for_successes_and_a_trip_reads_it_once() {
    // "Closed path: admission is one atomic load; recording touches only the window ...
    // Without a time window or a slow-call rate a success reads no clock ...; a trip reads
    // it once more, so the break always starts when the breaker opens."
    let (rt, breaker) = counting_breaker();
    for i in 0..10_000u32 {
        let permit = breaker.try_acquire().unwrap();
        if i % 2 == 0 {
            permit.record(Outcome::Ignored);
        } else {
            permit.success();
        }
        drop(breaker.try_acquire().unwrap());
        let _ = (breaker.state(), breaker.state_and_generation());
    }
    assert_eq!(
        rt.reads.load(SeqCst),
        0,
        "clock reads admitting and recording successes"
    );
    breaker.reset(); // an empty window: the next three calls stay under the minimum of four
    breaker.try_acquire().unwrap().failure();
    breaker.try_acquire().unwrap().failure();
    breaker.try_acquire().unwrap().success();
    // Idle for a year, then the success that makes it 2 failures of 4 trips it.
    rt.clock.advance(YEAR);
    rt.reads.store(0, SeqCst);
    breaker.try_acquire().unwrap().success();
    assert_eq!(breaker.state(), State::Open);
    assert_eq!(rt.reads.load(SeqCst), 1, "a trip reads the clock once");
    rt.clock.advance(SEC - NS);
    assert_eq!(
        refusal(&breaker),
        NS,
        "the break started at the trip, not at the build"
    );
}

#[test]
fn on_the_closed_path_a_success_reads_no_clock_and_a_failure_reads_it_once() {
    // Module docs, "Closed path": "Without a time window or a slow-call rate a success reads
    // no clock and a failure reads it once (the time of the latest failure, by which a keyed
    // table keeps a key)".
    let (rt, breaker) = counting_breaker();
    for i in 0..10_000u32 {
        let permit = breaker.try_acquire().unwrap();
        // One failure in four calls, never two in a window of four: it never trips.
        if i % 4 == 0 {
            permit.failure();
        } else {
            permit.success();
        }
    }
    assert_eq!(breaker.state(), State::Closed);
    assert_eq!(
        rt.reads.load(SeqCst),
        2_500,
        "one clock read for each of the 2,500 failures, none for the 7,500 successes"
    );
}

#[test]
fn the_break_starts_when_the_failure_is_recorded_not_when_its_call_began() {
    let (clock, builder) = on_fake();
    let breaker = builder
        .consecutive_failures(1)
        .break_duration(SEC)
        .build()
        .unwrap();
    let permit = breaker.try_acquire().unwrap();
    clock.advance(HOUR);
    permit.failure();
    assert_eq!(refusal(&breaker), SEC);
    clock.advance(SEC - NS);
    assert_eq!(refusal(&breaker), NS);
}

// === a full time bucket ===================================================================

#[test]
fn a_full_time_bucket_halves_its_counts_and_counts_on() {
    // `Window::Time`: "A bucket holds at most 65,535 calls: the call that finds it full first
    // halves its counts (each rounded down), so it counts every call at any rate"; module
    // docs: "a failure storm that starts in a full bucket shows within it".
    let (_clock, builder) = on_fake();
    let breaker = builder
        .failure_rate(0.5)
        .minimum_calls(10)
        .window(Window::Time {
            span: 2 * SEC,
            buckets: 2,
        })
        .build()
        .unwrap();
    for _ in 0..65_535 {
        breaker.try_acquire().unwrap().success();
    }
    let c = breaker.counts();
    assert_eq!((c.calls, c.failures), (65_535, 0), "a full bucket");
    // Within the same bucket the service goes down: the first failure halves the successes
    // to 32,767, and the storm trips the breaker once the failures match them (rate 0.5).
    let mut failed = 0u32;
    while breaker.state() == State::Closed {
        breaker.try_acquire().unwrap().failure();
        failed += 1;
        assert!(failed <= 32_767, "the storm shows within the full bucket");
    }
    assert_eq!(failed, 32_767);
    let c = breaker.counts();
    assert_eq!((c.calls, c.failures), (65_534, 32_767));

    // A run of consecutive failures counts every one, even in a full bucket.
    let (_clock, builder) = on_fake();
    let breaker = builder
        .consecutive_failures(5)
        .window(Window::Time {
            span: SEC,
            buckets: 1,
        })
        .build()
        .unwrap();
    for _ in 0..65_535 {
        breaker.try_acquire().unwrap().success();
    }
    for _ in 0..5 {
        breaker.try_acquire().unwrap().failure();
    }
    assert_eq!(breaker.state(), State::Open);
}

#[test]
fn a_break_schedule_that_gives_no_delay_holds_at_its_cap_from_the_first_trip() {
    // `break_backoff`: "a schedule that gives none at all (`max_attempts(1)`, or a
    // `max_elapsed` shorter than its first delay) holds at its `max_delay` from the first
    // trip"; past the schedule's end "every trip stays open for its last delay".
    let cap = 7 * SEC;
    let schedules = [
        Backoff::exponential(SEC)
            .jitter(Jitter::None)
            .max_delay(cap)
            .max_elapsed(SEC / 2)
            .build()
            .unwrap(),
        Backoff::exponential(SEC)
            .jitter(Jitter::None)
            .max_delay(cap)
            .max_attempts(1)
            .build()
            .unwrap(),
    ];
    for schedule in schedules {
        let (clock, builder) = on_fake();
        let breaker = builder
            .consecutive_failures(1)
            .break_backoff(schedule)
            .build()
            .unwrap();
        for trip in 0..3 {
            breaker.try_acquire().unwrap().failure();
            assert_eq!(refusal(&breaker), cap, "trip {trip}");
            clock.advance(cap);
        }
    }
    // A schedule of two delays: the third trip and later hold at the second.
    let (clock, builder) = on_fake();
    let breaker = builder
        .consecutive_failures(1)
        .break_backoff(
            Backoff::exponential(SEC)
                .jitter(Jitter::None)
                .max_delay(cap)
                .max_attempts(3)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    for expected in [SEC, 2 * SEC, 2 * SEC, 2 * SEC] {
        breaker.try_acquire().unwrap().failure();
        assert_eq!(refusal(&breaker), expected);
        clock.advance(expected);
    }
}

// === reconfigure ===========================================================================

#[test]
fn an_invalid_reconfigure_changes_nothing() {
    let (clock, builder) = on_fake();
    let breaker = builder
        .failure_rate(0.5)
        .minimum_calls(4)
        .window(Window::Count { calls: 8 })
        .build()
        .unwrap();
    for _ in 0..3 {
        breaker.try_acquire().unwrap().failure();
    }
    let before = (
        breaker.policy(),
        breaker.counts(),
        breaker.state_and_generation(),
    );
    for bad in [
        CircuitBreaker::builder().failure_rate(2.0),
        CircuitBreaker::builder().window(Window::Count { calls: 0 }),
        CircuitBreaker::builder().half_open_probes(0),
        CircuitBreaker::builder().break_duration(Duration::ZERO),
        CircuitBreaker::builder().max_open_hint(Duration::MAX),
        CircuitBreaker::builder()
            .minimum_calls(9)
            .window(Window::Count { calls: 8 }),
    ] {
        assert!(breaker.reconfigure(bad.runtime(clock.clone())).is_err());
        assert_eq!(
            (
                breaker.policy(),
                breaker.counts(),
                breaker.state_and_generation()
            ),
            before
        );
    }
    breaker.try_acquire().unwrap().failure();
    assert_eq!(
        breaker.state(),
        State::Open,
        "still the old policy: 4 of 4 failed"
    );
}

#[test]
fn a_reconfigure_to_another_window_shape_resets_once_unless_forced_by_hand() {
    use tidewall::breaker::Reconfigured;
    let (_clock, builder) = on_fake();
    let (builder, changes) = watch_changes(builder.consecutive_failures(5).window(Window::Time {
        span: SEC,
        buckets: 10,
    }));
    let breaker = builder.build().unwrap();
    breaker.try_acquire().unwrap().failure();
    let (_, g) = breaker.state_and_generation();
    let same = CircuitBreaker::builder()
        .consecutive_failures(5)
        .window(Window::Time {
            span: SEC,
            buckets: 10,
        });
    assert_eq!(breaker.reconfigure(same).unwrap(), Reconfigured::Kept);
    assert_eq!(
        breaker.counts().failures,
        1,
        "same shape: the calls are kept"
    );
    // Same bucket count, another span: another shape.
    let other = CircuitBreaker::builder()
        .consecutive_failures(5)
        .window(Window::Time {
            span: 2 * SEC,
            buckets: 10,
        });
    assert_eq!(breaker.reconfigure(other).unwrap(), Reconfigured::Reset);
    assert_eq!(breaker.counts(), Counts::default());
    let (state, g2) = breaker.state_and_generation();
    assert_eq!((state, g2), (State::Closed, g.wrapping_add(1)));
    {
        let changes = changes.lock().unwrap();
        assert_eq!(changes.len(), 1, "one state-change event: {changes:?}");
        assert_eq!((changes[0].1, changes[0].3), (State::Closed, g2));
    }
    // Forced open: kept forced, same generation, no event; its force can still be undone.
    let forced = breaker.force_open_if(g2).unwrap();
    let count = CircuitBreaker::builder()
        .consecutive_failures(5)
        .window(Window::Count { calls: 7 });
    assert_eq!(
        breaker.reconfigure(count).unwrap(),
        Reconfigured::KeptForced
    );
    assert_eq!(breaker.state_and_generation(), (State::ForcedOpen, forced));
    assert_eq!(
        changes.lock().unwrap().len(),
        2,
        "only the force was reported"
    );
    assert!(breaker.reset_if(forced));
    assert_eq!(breaker.policy().window(), Window::Count { calls: 7 });
}

#[test]
fn a_lowered_half_open_wait_judges_the_probe_already_in_flight() {
    let (clock, builder) = on_fake();
    let settings = |wait: Duration| {
        CircuitBreaker::builder()
            .consecutive_failures(1)
            .break_duration(SEC)
            .max_half_open_wait(Some(wait))
    };
    let breaker = tripped(&clock, builder.max_half_open_wait(Some(60 * SEC)));
    let hung = breaker.try_acquire().unwrap();
    clock.advance(30 * SEC);
    breaker.reconfigure(settings(10 * SEC)).unwrap();
    refusal(&breaker);
    assert_eq!(
        breaker.state(),
        State::Open,
        "30 s in, past the new 10 s wait"
    );
    hung.success();
    assert_eq!(breaker.state(), State::Open);
}

#[test]
fn raised_half_open_probes_admit_more_and_need_that_many_successes() {
    let (clock, builder) = on_fake();
    let breaker = tripped(&clock, builder);
    let first = breaker.try_acquire().unwrap();
    refusal(&breaker);
    breaker
        .reconfigure(
            CircuitBreaker::builder()
                .consecutive_failures(1)
                .break_duration(SEC)
                .half_open_probes(3),
        )
        .unwrap();
    let second = breaker.try_acquire().expect("a second slot");
    let third = breaker.try_acquire().expect("a third slot");
    refusal(&breaker);
    first.success();
    second.success();
    assert_eq!(breaker.state(), State::HalfOpen, "two successes of three");
    third.success();
    assert_eq!(breaker.state(), State::Closed);
}

#[test]
fn an_open_breaker_keeps_its_running_break_and_the_next_trip_starts_the_new_schedule() {
    let (clock, builder) = on_fake();
    let breaker = builder
        .consecutive_failures(1)
        .break_backoff(exponential(10 * SEC, 60 * SEC))
        .build()
        .unwrap();
    breaker.try_acquire().unwrap().failure();
    clock.advance(SEC);
    breaker
        .reconfigure(
            CircuitBreaker::builder()
                .consecutive_failures(1)
                .break_backoff(exponential(2 * SEC, 60 * SEC)),
        )
        .unwrap();
    assert_eq!(refusal(&breaker), 9 * SEC, "the break that runs is kept");
    clock.advance(9 * SEC);
    breaker.try_acquire().unwrap().failure();
    assert_eq!(
        refusal(&breaker),
        2 * SEC,
        "a new break schedule starts from its first break"
    );
}

// === more of the keyed table ==============================================================

#[test]
fn asking_for_a_call_refreshes_a_keys_last_use_and_keys_full_names_the_first_to_go_idle() {
    let clock = FakeClock::new();
    let table = keyed(&clock, 2, 30 * SEC);
    table.try_acquire(&"a").unwrap().failure();
    clock.advance(10 * SEC);
    table.try_acquire(&"b").unwrap().failure();
    clock.advance(5 * SEC);
    assert_eq!(
        keys_full(table.try_acquire(&"c")),
        Some(15 * SEC),
        "a goes idle first"
    );
    drop(table.try_acquire(&"a").unwrap()); // "used: a call asked for"
    assert_eq!(
        keys_full(table.try_acquire(&"c")),
        Some(25 * SEC),
        "now b goes first"
    );
    clock.advance(25 * SEC);
    table.try_acquire(&"c").expect("b is idle").success();
    assert_eq!(
        (table.state(&"a"), table.state(&"b")),
        (Some(State::Closed), None)
    );
}

#[test]
fn a_handle_from_get_keeps_even_an_empty_key() {
    let clock = FakeClock::new();
    let table = keyed(&clock, 1, SEC);
    let handle = table.get_or_make(&"a").unwrap();
    assert_eq!(handle.counts(), Counts::default());
    clock.advance(YEAR);
    assert_eq!(keys_full(table.try_acquire(&"b")), None);
    let clone = table.get(&"a").unwrap();
    drop(handle);
    assert_eq!(
        keys_full(table.try_acquire(&"b")),
        None,
        "a clone of a handle holds it too"
    );
    drop(clone);
    table.try_acquire(&"b").expect("a may go now").success();
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_classifiers_hint_holds_a_breaker_open_through_call_classified() {
    use tidewall::classify::Hinted;
    let judge = |r: Result<&(u16, u64), &()>| match r {
        Ok((503, _)) => Verdict::Failure,
        Ok(_) => Verdict::Success,
        Err(()) => Verdict::Failure,
    };
    let hint = |r: Result<&(u16, u64), &()>| r.ok().map(|(_, s)| Duration::from_secs(*s));
    let breaker = CircuitBreaker::builder()
        .consecutive_failures(1)
        .break_duration(SEC)
        .build()
        .unwrap();
    let answer = breaker
        .call_classified(|| async { Ok::<_, ()>((503, 10)) }, Hinted(judge, hint))
        .await;
    assert_eq!(
        answer,
        Ok((503, 10)),
        "an Ok judged a failure is still returned"
    );
    assert_eq!(refusal(&breaker), 10 * SEC);
    let table = CircuitBreaker::builder()
        .consecutive_failures(1)
        .break_duration(SEC)
        .keyed::<&'static str>()
        .build()
        .unwrap();
    let _ = table
        .call_classified(
            &"h",
            || async { Ok::<_, ()>((503, 7)) },
            Hinted(judge, hint),
        )
        .await;
    match table.try_acquire(&"h") {
        Err(Rejected::CircuitOpen { retry_after }) => assert_eq!(retry_after, 7 * SEC),
        other => panic!("{:?}", other.map(|_| ())),
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_pipeline_retrying_past_a_forced_open_breaker_is_refused_once_per_attempt_at_its_pace() {
    let refusals = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&refusals);
    let breaker = CircuitBreaker::builder()
        .break_duration(ms(100))
        .on_event(move |e| {
            if let EventKind::Rejected(Rejected::CircuitOpen { .. }) = e.kind {
                counted.fetch_add(1, SeqCst);
            }
        })
        .build()
        .unwrap();
    breaker.force_open();
    let pipeline = Pipeline::builder()
        .retry(
            Backoff::constant(ms(1))
                .jitter(Jitter::None)
                .max_attempts(4)
                .build()
                .unwrap(),
        )
        .breaker(breaker.clone())
        .build()
        .unwrap();
    let ran = Arc::new(AtomicUsize::new(0));
    let runs = Arc::clone(&ran);
    let before = tokio::time::Instant::now();
    let result: Result<(), Error<&str>> = pipeline
        .call(move || {
            runs.fetch_add(1, SeqCst);
            async { Ok(()) }
        })
        .await;
    assert!(
        matches!(result, Err(Error::Rejected(Rejected::CircuitOpen { .. }))),
        "{result:?}"
    );
    assert_eq!(ran.load(SeqCst), 0);
    assert_eq!(refusals.load(SeqCst), 4, "one refusal per attempt");
    assert!(
        before.elapsed() >= ms(300),
        "three retries, each at least the refusal's 100 ms hint apart: {:?}",
        before.elapsed()
    );
}
// === tidewall-core's pure arithmetic ======================================================

mod core_math {
    use super::*;
    use tidewall::breaker::BreakerPolicy;
    use tidewall_core::breaker::Thresholds;
    use tidewall_core::breaker::window::{Bucket, slot_code, totals_delta, unpack_totals};

    #[test]
    fn evaluate_agrees_with_exact_arithmetic_up_to_u32_max_calls() {
        let mut rng = Rng::new(0xE7A1);
        let edge = |rng: &mut Rng| -> u32 {
            match rng.below(4) {
                0 => u32::MAX - rng.below(3) as u32,
                1 => rng.below(20) as u32,
                _ => rng.next() as u32,
            }
        };
        for _ in 0..20_000 {
            let f_ppm = 1 + rng.below(u64::from(tidewall_core::breaker::PPM));
            let s_ppm = 1 + rng.below(u64::from(tidewall_core::breaker::PPM));
            let minimum = edge(&mut rng);
            let consecutive = rng.one_in(3).then(|| edge(&mut rng).max(1));
            let mut builder = BreakerPolicy::builder()
                .failure_rate(f_ppm as f64 / 1e6)
                .slow_call_rate(s_ppm as f64 / 1e6, ms(100))
                .minimum_calls(minimum)
                .window(Window::Count { calls: 10 });
            match consecutive {
                Some(c) => builder = builder.consecutive_failures(c),
                // Without consecutive failures the minimum must fit the window.
                None => builder = builder.minimum_calls(minimum % 11),
            }
            let policy = builder.build().unwrap();
            let minimum = if consecutive.is_some() {
                minimum
            } else {
                minimum % 11
            };
            let (calls, failures, slow) = if rng.one_in(2) {
                // Exactly at both thresholds, or one call below: `calls` a multiple of a
                // million.
                let m = 1 + rng.below(4_294) as u32;
                let below = |ppm: u64, rng: &mut Rng| ppm as u32 * m - u32::from(rng.one_in(2));
                (
                    1_000_000 * m,
                    below(f_ppm, &mut rng),
                    below(s_ppm, &mut rng),
                )
            } else {
                let calls = edge(&mut rng);
                let failures = if calls == 0 {
                    0
                } else {
                    [calls, calls / 2, rng.below(u64::from(calls) + 1) as u32][rng.index(3)]
                };
                let slow = if calls == 0 {
                    0
                } else {
                    rng.below(u64::from(calls) + 1) as u32
                };
                (calls, failures, slow)
            };
            let run = edge(&mut rng);
            let counts = Counts {
                calls,
                failures,
                slow,
            };
            let got = policy.evaluate(counts, run);
            let (n, f, sl) = (u128::from(calls), u128::from(failures), u128::from(slow));
            let mut reasons = Vec::new();
            if calls >= minimum && calls > 0 {
                if f * 1_000_000 >= u128::from(f_ppm) * n {
                    reasons.push(TripReason::FailureRate);
                }
                if sl * 1_000_000 >= u128::from(s_ppm) * n {
                    reasons.push(TripReason::SlowCallRate);
                }
            }
            if consecutive.is_some_and(|c| run >= c) {
                reasons.push(TripReason::ConsecutiveFailures);
            }
            match got {
                None => assert!(
                    reasons.is_empty(),
                    "{counts:?}, run {run}, minimum {minimum}, ppm {f_ppm}/{s_ppm}, consecutive {consecutive:?}: no trip, the model trips for {reasons:?}"
                ),
                Some(reason) => assert!(
                    reasons.contains(&reason),
                    "{counts:?}, run {run}, minimum {minimum}, ppm {f_ppm}/{s_ppm}, consecutive {consecutive:?}: {reason:?}, the model {reasons:?}"
                ),
            }
        }
    }

    #[test]
    fn an_empty_window_never_trips_on_a_rate_even_with_a_minimum_of_zero() {
        let policy = BreakerPolicy::builder()
            .failure_rate(1e-6)
            .slow_call_rate(1e-6, ms(1))
            .minimum_calls(0)
            .build()
            .unwrap();
        assert_eq!(policy.evaluate(Counts::default(), 0), None);
        // And a breaker retuned to a minimum of zero on an empty window stays closed.
        let (_clock, builder) = on_fake();
        let breaker = builder.build().unwrap();
        breaker
            .reconfigure(
                CircuitBreaker::builder()
                    .failure_rate(1e-6)
                    .minimum_calls(0),
            )
            .unwrap();
        assert_eq!(breaker.state(), State::Closed);
    }

    #[test]
    fn thresholds_words_are_total_and_round_trip() {
        let mut rng = Rng::new(0x3011);
        for _ in 0..20_000 {
            let words = [rng.next(), rng.next(), rng.next()];
            let words = match rng.below(3) {
                0 => words,
                1 => [words[0] & 0xFFFF_FFFF, words[1] & 0xFFFF_FFFF, words[2]],
                _ => [u64::MAX, 0, words[2]],
            };
            let thresholds = catch_unwind(|| Thresholds::from_words(words))
                .unwrap_or_else(|_| panic!("from_words({words:x?}) panicked"));
            let counts = Counts {
                calls: rng.next() as u32,
                failures: 0,
                slow: 0,
            };
            let (run, took) = (rng.next() as u32, Duration::from_nanos(rng.next()));
            let _ = catch_unwind(|| {
                (
                    thresholds.evaluate(counts, run),
                    thresholds.is_slow(took),
                    thresholds.tracks_slow_calls(),
                    thresholds.tracks_consecutive_failures(),
                )
            })
            .unwrap_or_else(|_| panic!("thresholds from {words:x?} panicked"));
        }
        for _ in 0..5_000 {
            let mut b = BreakerPolicy::builder()
                .failure_rate((1 + rng.below(999_999)) as f64 / 1e6)
                .minimum_calls(rng.below(11) as u32)
                .window(Window::Count { calls: 10 });
            if rng.one_in(2) {
                b = b.slow_call_rate(
                    (1 + rng.below(999_999)) as f64 / 1e6,
                    Duration::from_nanos(rng.next() >> rng.below(64)),
                );
            }
            if rng.one_in(2) {
                b = b.consecutive_failures(1 + rng.below(u64::from(u32::MAX)) as u32);
            }
            let Ok(policy) = b.build() else { continue };
            let t = policy.thresholds();
            assert_eq!(Thresholds::from_words(t.to_words()), t);
        }
    }

    #[test]
    fn the_kth_break_replayed_equals_the_kth_break_stepped() {
        let mut rng = Rng::new(0xB4EA);
        for case in 0..60u64 {
            let first = Duration::from_millis(1 + rng.below(2_000));
            let cap = first * (1 + rng.below(50) as u32);
            let backoff = match case % 5 {
                0 => Backoff::exponential(first).jitter(Jitter::Full),
                1 => Backoff::exponential(first)
                    .factor(1.5)
                    .jitter(Jitter::Equal),
                2 => Backoff::linear(first, first / 3).jitter(Jitter::None),
                3 => Backoff::decorrelated_jitter(first),
                _ => Backoff::constant(first).jitter(Jitter::Full),
            }
            .max_delay(cap)
            .max_attempts(1 + rng.below(40) as u32)
            .build()
            .unwrap();
            let policy = BreakerPolicy::builder()
                .break_backoff(backoff)
                .build()
                .unwrap();
            let seed = rng.next();
            let mut stepped = policy.break_durations(seed);
            for k in 0..120u32 {
                let next = stepped.next_break();
                assert_eq!(
                    next,
                    policy.break_duration(k, seed),
                    "case {case}, trip {k}"
                );
                assert!(
                    next <= cap,
                    "case {case}, trip {k}: {next:?} past the cap {cap:?}"
                );
            }
        }
    }

    #[test]
    fn a_count_windows_packed_totals_follow_every_slot_change_up_to_the_largest_window() {
        let mut rng = Rng::new(0x5107);
        for &n in &[1usize, 2, 7, 1_000, MAX_COUNT_WINDOW as usize] {
            // The ring as the model sees it, and as codes.
            let mut calls: Vec<Option<(bool, bool)>> = vec![None; n];
            let mut codes = vec![0u8; n];
            let mut totals = 0u64;
            let (mut c, mut f, mut sl) = (0u32, 0u32, 0u32);
            let steps = 3 * n;
            for step in 0..steps {
                let i = step % n;
                // The largest window is filled with slow failures first: every field reaches
                // its largest value.
                let (failed, slow) = if n == MAX_COUNT_WINDOW as usize && step < n {
                    (true, true)
                } else {
                    (rng.one_in(2), rng.one_in(2))
                };
                let new = slot_code(failed, slow);
                totals = totals.wrapping_add(totals_delta(new, codes[i]));
                codes[i] = new;
                if let Some((of, os)) = calls[i] {
                    c -= 1;
                    f -= u32::from(of);
                    sl -= u32::from(os);
                }
                calls[i] = Some((failed, slow));
                c += 1;
                f += u32::from(failed);
                sl += u32::from(slow);
                if step % 997 == 0 || step + 1 == n || step + 1 == steps {
                    assert_eq!(
                        unpack_totals(totals),
                        Counts {
                            calls: c,
                            failures: f,
                            slow: sl
                        },
                        "window {n}, step {step}"
                    );
                }
            }
            // Every slot rewritten as a fast success.
            for code in &mut codes {
                let new = slot_code(false, false);
                totals = totals.wrapping_add(totals_delta(new, *code));
                *code = new;
            }
            assert_eq!(
                unpack_totals(totals),
                Counts {
                    calls: n as u32,
                    failures: 0,
                    slow: 0
                },
                "window {n}"
            );
        }
    }

    #[test]
    fn count_window_slot_codes_count_each_call_as_documented() {
        for (failed, slow) in [(false, false), (true, false), (false, true), (true, true)] {
            let code = slot_code(failed, slow);
            assert_ne!(code, 0, "0 is an empty slot");
            let c = unpack_totals(totals_delta(code, 0));
            assert_eq!(
                (c.calls, c.failures, c.slow),
                (1, u32::from(failed), u32::from(slow))
            );
            let back = unpack_totals(totals_delta(code, 0).wrapping_add(totals_delta(0, code)));
            assert_eq!(back, Counts::default());
        }
    }

    #[test]
    fn unstamp_finds_the_bucket_within_half_the_stamp_range() {
        let mut rng = Rng::new(0x57A3);
        for _ in 0..100_000 {
            let reference = (1u64 << 15) + (rng.next() >> rng.below(64)).min(1 << 62);
            let offset = rng.below((1 << 16) - 1) as i64 - ((1 << 15) - 1);
            let bucket = reference.checked_add_signed(offset).unwrap();
            assert_eq!(
                Bucket::unstamp(bucket as u16, reference),
                bucket,
                "bucket {bucket}, reference {reference}"
            );
        }
    }

    #[test]
    fn bucket_words_start_over_on_a_newer_epoch_refuse_older_ones_and_overflow() {
        // The breaker's buckets: three 16-bit counters; the budget's: two of 24 bits.
        for (b, fields, max) in [
            (Bucket::BREAKER, 3usize, (1u64 << 16) - 1),
            (Bucket::BUDGET, 2, (1u64 << 24) - 1),
        ] {
            let third = u64::from(fields == 3);
            for e in [0u16, 1, 32_767, 32_768, 65_534, 65_535] {
                let word = b.add(0, e, [1, 1, 0]).unwrap();
                assert_eq!(Bucket::epoch(word), e);
                let word = b.add(word, e, [2, 0, third]).unwrap();
                let read = |w: u64| (0..fields).map(|i| b.field(w, i)).collect::<Vec<_>>();
                assert_eq!(read(word), [3, 1, 1][..fields]);
                let newer = b.add(word, e.wrapping_add(1), [5, 0, 0]).unwrap();
                assert_eq!(Bucket::epoch(newer), e.wrapping_add(1), "epoch {e}");
                assert_eq!(
                    read(newer),
                    [5, 0, 0][..fields],
                    "an older bucket starts from zero (epoch {e} then {})",
                    e.wrapping_add(1)
                );
                assert_eq!(
                    b.add(word, e.wrapping_sub(1), [1, 0, 0]),
                    None,
                    "a newer bucket is left alone (epoch {e})"
                );
                // An empty word is never newer.
                let empty = b.add(0, e, [0, 0, 0]).unwrap_or(0);
                let written = b.add(empty, e.wrapping_sub(1), [1, 0, 0]).unwrap();
                assert_eq!(Bucket::epoch(written), e.wrapping_sub(1));
                // Overflow: each counter up to its width, then None.
                for field in 0..fields {
                    let mut add = [0u64; 3];
                    add[field] = max;
                    let full = b.add(0, e, add).unwrap();
                    assert_eq!(b.field(full, field), max);
                    let mut one = [0u64; 3];
                    one[field] = 1;
                    assert_eq!(b.add(full, e, one), None, "field {field} past {max}");
                }
            }
        }
    }

    #[test]
    fn live_and_sweep_keep_exactly_the_buckets_of_the_last_slots() {
        let b = Bucket::BREAKER;
        let mut rng = Rng::new(0x11FE);
        for _ in 0..50_000 {
            let slots = 1 + rng.below(u64::from(MAX_BUCKETS));
            let written = (1 << 20) + rng.below(1 << 40);
            let slot = written % slots;
            let word = b.add(0, written as u16, [1, 1, 0]).unwrap();
            // Read any time from the write to 2^15 - 1 buckets later.
            let current = written + rng.below(1 << 15).min(rng.below(4 * slots + 4));
            let expected_live = current - written < slots;
            let live = b.live(word, slot, slots, current);
            assert_eq!(
                live != [0, 0, 0],
                expected_live,
                "written {written}, read at {current}, {slots} slots"
            );
            // A sweep whose previous sweep was at most SWEEP_EVERY buckets before the write.
            let reference = written - rng.below(tidewall_core::breaker::window::SWEEP_EVERY);
            let current = written
                + rng.below(tidewall_core::breaker::window::SWEEP_EVERY + u64::from(MAX_BUCKETS));
            assert_eq!(
                Bucket::survives_sweep(word, slot, slots, reference, current),
                current - written < slots,
                "written {written}, previous sweep {reference}, swept at {current}, {slots} slots"
            );
            assert!(!Bucket::survives_sweep(0, slot, slots, reference, current));
        }
    }
}

// === telemetry ===============================================================================

#[cfg(feature = "metrics")]
#[test]
fn metrics_count_each_outcome_refusal_and_transition_once() {
    use common::tally::Counters;
    let counters = Counters::installed();
    let name = "hostile_breaker_contracts_metrics";
    let (clock, builder) = on_fake();
    let breaker = builder
        .name(name)
        .consecutive_failures(2)
        .break_duration(SEC)
        .build()
        .unwrap();
    let total = |metric: &str, labels: &[&str]| {
        let mut all = vec!["policy=breaker"];
        let name_label = format!("name={name}");
        all.push(&name_label);
        all.extend_from_slice(labels);
        counters.total(metric, &all)
    };
    breaker.try_acquire().unwrap().success();
    breaker.try_acquire().unwrap().record(Outcome::Ignored);
    drop(breaker.try_acquire().unwrap());
    breaker.try_acquire().unwrap().failure();
    breaker.try_acquire().unwrap().failure();
    for _ in 0..3 {
        refusal(&breaker);
    }
    clock.advance(SEC);
    let probe = breaker.try_acquire().unwrap();
    refusal(&breaker);
    probe.success();
    assert_eq!(total("tidewall_calls_total", &["outcome=success"]), 2);
    assert_eq!(total("tidewall_calls_total", &["outcome=failure"]), 2);
    assert_eq!(total("tidewall_calls_total", &["outcome=ignored"]), 1);
    assert_eq!(
        total("tidewall_rejections_total", &["reason=circuit_open"]),
        4
    );
    assert_eq!(total("tidewall_breaker_transitions_total", &["to=open"]), 1);
    assert_eq!(
        total("tidewall_breaker_transitions_total", &["to=half_open"]),
        1
    );
    assert_eq!(
        total("tidewall_breaker_transitions_total", &["to=closed"]),
        1
    );
}

#[test]
fn events_carry_the_policy_the_name_and_a_keys_label() {
    type Seen = Arc<Mutex<Vec<(String, String, Option<String>, String)>>>;
    let seen: Seen = Arc::default();
    let log = Arc::clone(&seen);
    let clock = FakeClock::new();
    let table = CircuitBreaker::builder()
        .runtime(clock.clone())
        .name("hosts")
        .consecutive_failures(1)
        .on_event(move |e| {
            let kind = match e.kind {
                EventKind::Failed => "failed".to_owned(),
                EventKind::Succeeded => "succeeded".to_owned(),
                EventKind::Rejected(r) => r.kind().to_owned(),
                EventKind::StateChanged(c) => format!("to {}", c.to),
                _ => "other".to_owned(),
            };
            log.lock().unwrap().push((
                e.policy.to_owned(),
                e.name.to_owned(),
                e.key.map(str::to_owned),
                kind,
            ));
        })
        .keyed::<&'static str>()
        .max_keys(1)
        .key_label(|k| format!("host:{k}"))
        .build()
        .unwrap();
    table.try_acquire(&"a").unwrap().failure();
    let _ = table.try_acquire(&"a");
    let _ = table.try_acquire(&"b");
    let seen = seen.lock().unwrap().clone();
    let own = |policy: &str, key: Option<&str>, kind: &str| {
        (
            policy.to_owned(),
            "hosts".to_owned(),
            key.map(str::to_owned),
            kind.to_owned(),
        )
    };
    assert_eq!(
        seen,
        [
            own("breaker", Some("host:a"), "failed"),
            own("breaker", Some("host:a"), "to open"),
            own("breaker", Some("host:a"), "circuit_open"),
            own("keyed_breaker", None, "keys_full"),
        ]
    );
}

// === more configuration =====================================================================

#[test]
fn a_decorrelated_break_schedule_stays_between_its_first_break_and_its_cap() {
    let toml = "[instances.x.breaker]\nconsecutive_failures = 1\nbreak_duration = \"100ms\"\nbreak_backoff = \"decorrelated_jitter\"\nmax_break_duration = \"1s\"\n";
    let breaks = breaks_of(toml, 200);
    let mut previous = ms(100);
    for (k, brk) in breaks.iter().enumerate() {
        assert!(
            *brk >= ms(100) && *brk <= SEC && *brk <= 3 * previous,
            "trip {k}: {brk:?} after {previous:?}"
        );
        previous = *brk;
    }
    assert!(breaks.iter().any(|b| *b > ms(300)), "it grows: {breaks:?}");
}

#[test]
fn a_registrys_keyed_breaker_takes_its_bounds_from_keys_and_its_idle_ttl_from_the_breaker() {
    let config = Config::from_toml(
        "[instances.hosts.breaker]\nconsecutive_failures = 1\n[instances.hosts.keys]\nmax_keys = 3\n[instances.tuned.breaker]\nconsecutive_failures = 1\n[instances.tuned.keys]\nidle_ttl = \"5s\"\n",
    )
    .unwrap();
    let registry = Registry::builder(config)
        .runtime(FakeClock::new())
        .build()
        .unwrap();
    let hosts = registry.keyed_breaker::<u32>("hosts").unwrap();
    assert_eq!((hosts.max_keys(), hosts.idle_ttl()), (3, 60 * SEC));
    for key in 0..3 {
        hosts.try_acquire(&key).unwrap().failure();
    }
    assert_eq!(keys_full(hosts.try_acquire(&3)), None, "three open keys");
    let tuned = registry.keyed_breaker::<u32>("tuned").unwrap();
    assert_eq!((tuned.max_keys(), tuned.idle_ttl()), (10_000, 5 * SEC));
}

// === more composition =======================================================================

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_retry_layer_over_a_breaker_layer_waits_out_the_open_hint_within_its_deadline() {
    use tidewall::tower::RetryLayer;
    use tower::ServiceExt as _;
    // "Over a BreakerLayer, set honor_retry_after and a deadline: a call shed with
    // CircuitOpen is then retried no sooner than the breaker's retry_after, and returns at
    // once when that is past the deadline."
    #[derive(Debug, PartialEq)]
    struct Down;
    impl tidewall::RetryAfter for Down {
        fn retry_after(&self) -> Option<Duration> {
            None
        }
    }
    let breaker = CircuitBreaker::builder()
        .consecutive_failures(1)
        .break_duration(SEC)
        .build()
        .unwrap();
    let origin = tokio::time::Instant::now();
    let starts = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&starts);
    let service = tower::service_fn(move |fail: bool| {
        log.lock().unwrap().push(origin.elapsed());
        async move {
            if fail {
                Err(Error::Inner(Down))
            } else {
                Ok(())
            }
        }
    });
    let backoff = Backoff::constant(ms(10))
        .jitter(Jitter::None)
        .max_attempts(5)
        .build()
        .unwrap();
    let stack = |deadline: Duration| {
        RetryLayer::new(backoff)
            .honor_retry_after()
            .deadline(deadline)
            .layer(BreakerLayer::new(breaker.clone()).layer(service.clone()))
    };
    breaker.try_acquire().unwrap().failure();
    let at = origin.elapsed();
    let answer = stack(5 * SEC).oneshot(false).await;
    assert_eq!(answer, Ok(()));
    let starts_now = starts.lock().unwrap().clone();
    assert_eq!(
        starts_now.len(),
        1,
        "one attempt reached the service: {starts_now:?}"
    );
    assert!(
        starts_now[0] >= at + SEC,
        "the service was called {:?} after the trip",
        starts_now[0] - at
    );
    // Past the deadline: the call returns at once with the refusal.
    breaker.try_acquire().unwrap().failure();
    let before = tokio::time::Instant::now();
    let answer = stack(ms(500)).oneshot(false).await;
    assert!(
        matches!(answer, Err(Error::Rejected(Rejected::CircuitOpen { .. }))),
        "{answer:?}"
    );
    assert_eq!(before.elapsed(), Duration::ZERO, "returned at once");
    assert_eq!(starts.lock().unwrap().len(), 1);
}

#[test]
fn a_keyed_reconfigure_whose_listener_panics_still_retunes_every_key() {
    let clock = FakeClock::new();
    let table = CircuitBreaker::builder()
        .runtime(clock.clone())
        .consecutive_failures(1)
        .keyed::<u32>()
        .on_state_change(|key: &u32, c| {
            if c.to == State::Closed && c.from == State::Open {
                panic!("listener panics on key {key}");
            }
        })
        .build()
        .unwrap();
    for key in 0..6u32 {
        if key % 2 == 0 {
            table.try_acquire(&key).unwrap().failure(); // open
        } else {
            table.try_acquire(&key).unwrap().success();
        }
    }
    table.get_or_make(&100).unwrap().force_open();
    let new_window = Window::Count { calls: 17 };
    let caught = catch_unwind(AssertUnwindSafe(|| {
        table.reconfigure(
            CircuitBreaker::builder()
                .runtime(clock.clone())
                .consecutive_failures(1)
                .window(new_window),
        )
    }));
    assert!(
        caught.is_err(),
        "the first listener panic goes on to the caller"
    );
    for key in 0..6u32 {
        let breaker = table.get(&key).unwrap();
        assert_eq!(breaker.policy().window(), new_window, "key {key}");
        assert_eq!(breaker.state(), State::Closed, "key {key} was reset");
    }
    assert_eq!(
        table.state(&100),
        Some(State::ForcedOpen),
        "a force outlives a reload"
    );
    assert_eq!(table.policy().window(), new_window);
    assert!(
        !table.try_acquire(&7).unwrap().is_probe(),
        "a new key starts closed"
    );
    assert_eq!(table.get(&7).unwrap().policy().window(), new_window);
}

#[test]
fn a_plain_reconfigure_whose_listener_panics_still_applies_the_policy() {
    let (_clock, builder) = on_fake();
    let breaker = builder
        .consecutive_failures(1)
        .on_state_change(|c| {
            if c.to == State::Closed {
                panic!("listener panics on the reset");
            }
        })
        .build()
        .unwrap();
    breaker.try_acquire().unwrap().failure();
    let new_window = Window::Count { calls: 3 };
    let caught = catch_unwind(AssertUnwindSafe(|| {
        breaker.reconfigure(
            CircuitBreaker::builder()
                .consecutive_failures(2)
                .window(new_window),
        )
    }));
    assert!(caught.is_err());
    assert_eq!(breaker.state(), State::Closed);
    assert_eq!(breaker.policy().window(), new_window);
    breaker.try_acquire().unwrap().failure();
    assert_eq!(breaker.state(), State::Closed, "two in a row now");
}
#[test]
fn probes_that_outlived_their_half_open_state_hold_no_slot_in_the_next_one() {
    let (clock, builder) = on_fake();
    let breaker = tripped(
        &clock,
        builder
            .half_open_probes(2)
            .max_half_open_wait(Some(5 * SEC)),
    );
    let old: Vec<_> = (0..2).map(|_| breaker.try_acquire().unwrap()).collect();
    clock.advance(5 * SEC + NS);
    let brk = refusal(&breaker); // reopens: the probes hung
    clock.advance(brk);
    let new: Vec<_> = (0..2)
        .map(|i| {
            breaker.try_acquire().unwrap_or_else(|r| {
                panic!("new probe {i} refused ({r:?}): an old probe holds its slot")
            })
        })
        .collect();
    refusal(&breaker);
    for p in old {
        p.failure(); // too late: ignored, opens nothing
    }
    assert_eq!(breaker.state(), State::HalfOpen);
    for p in new {
        p.success();
    }
    assert_eq!(breaker.state(), State::Closed);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_refused_call_never_creates_its_operation_and_call_classified_counts_both_failures() {
    let breaker = CircuitBreaker::builder()
        .consecutive_failures(3)
        .build()
        .unwrap();
    let judge = |r: Result<&(), &u16>| match r {
        Ok(()) => Verdict::Success,
        Err(500) => Verdict::RetryableFailure,
        Err(404) => Verdict::Ignored,
        Err(_) => Verdict::Failure,
    };
    let _ = breaker
        .call_classified(|| async { Err::<(), u16>(500) }, judge)
        .await;
    let _ = breaker
        .call_classified(|| async { Err::<(), u16>(404) }, judge)
        .await;
    let _ = breaker
        .call_classified(|| async { Err::<(), u16>(400) }, judge)
        .await;
    assert_eq!(breaker.counts().failures, 2);
    assert_eq!(
        breaker.state(),
        State::Closed,
        "the ignored result broke no run and counted none"
    );
    let _ = breaker
        .call_classified(|| async { Err::<(), u16>(502) }, judge)
        .await;
    assert_eq!(breaker.state(), State::Open);
    let created = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&created);
    let refused = breaker
        .call(move || {
            seen.fetch_add(1, SeqCst);
            async { Ok::<(), ()>(()) }
        })
        .await;
    assert!(matches!(
        refused,
        Err(Error::Rejected(Rejected::CircuitOpen { .. }))
    ));
    assert_eq!(
        created.load(SeqCst),
        0,
        "op is not even created when the call is rejected"
    );
}

#[test]
fn owned_permits_outlive_every_handle_of_their_breaker_or_table() {
    let (clock, builder) = on_fake();
    let breaker = builder
        .consecutive_failures(1)
        .slow_call_rate(0.5, ms(1))
        .build()
        .unwrap();
    let permits: Vec<_> = (0..3)
        .map(|_| breaker.try_acquire_owned().unwrap())
        .collect();
    drop(breaker);
    clock.advance(SEC);
    let mut permits = permits.into_iter();
    permits.next().unwrap().failure();
    permits.next().unwrap().success();
    drop(permits);
    let table = keyed(&clock, 4, SEC);
    let permit = table.try_acquire(&"a").unwrap();
    drop(table);
    permit.failure();
}

#[test]
fn a_table_of_511_keys_is_one_shard_and_holds_exactly_511_busy_keys() {
    // "one shard up to 511 keys ... that is at exactly max_keys below 512 keys (one shard)"
    let clock = FakeClock::new();
    let table = CircuitBreaker::builder()
        .runtime(clock.clone())
        .consecutive_failures(1)
        .keyed::<u32>()
        .max_keys(511)
        .build()
        .unwrap();
    for key in 0..511u32 {
        table
            .try_acquire(&key)
            .unwrap_or_else(|r| panic!("key {key} refused: {r:?}"))
            .failure();
    }
    assert_eq!(table.not_closed().len(), 511);
    assert_eq!(keys_full(table.try_acquire(&511)), None);
}

#[test]
fn configured_break_keys_layer_as_documented() {
    // "across layers such a key is fine ... (the defaults may give a factor that only the
    // exponential instances use)"
    let config = Config::from_toml(
        "[defaults.breaker]\nconsecutive_failures = 1\nbreak_duration = \"1s\"\nbreak_factor = 3.0\nmax_break_duration = \"20s\"\n\
         [instances.x.breaker]\nbreak_backoff = \"exponential\"\n\
         [instances.y.breaker]\nbreak_backoff = \"linear\"\n",
    )
    .unwrap();
    let breaks = |name: &str| {
        let breaker = config
            .instance(name)
            .unwrap()
            .breaker()
            .unwrap()
            .runtime(FakeClock::new())
            .build()
            .unwrap();
        let clock = breaker.runtime().clone();
        breaker.try_acquire().unwrap().failure();
        (0..4)
            .map(|_| {
                let brk = refusal(&breaker);
                clock.advance(brk);
                breaker.try_acquire().unwrap().failure();
                brk
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(breaks("x"), [SEC, 3 * SEC, 9 * SEC, 20 * SEC]);
    assert_eq!(breaks("y"), [SEC, 2 * SEC, 3 * SEC, 4 * SEC]);
    // In the layer that names its schedule: refused at the key.
    for (body, key) in [
        (
            "break_backoff = \"linear\"\nbreak_factor = 3.0",
            "break_factor",
        ),
        (
            "break_backoff = \"decorrelated_jitter\"\nbreak_jitter = \"full\"",
            "break_jitter",
        ),
    ] {
        assert_eq!(
            from_toml(&format!("[instances.x.breaker]\n{body}\n")).err(),
            Some(format!("instances.x.breaker.{key}")),
            "{body}"
        );
    }
}

// === the largest window, a century on ========================================================

#[test]
fn the_largest_count_window_trips_exactly_at_its_minimum() {
    let (_clock, builder) = on_fake();
    let breaker = builder
        .failure_rate(1.0)
        .minimum_calls(MAX_COUNT_WINDOW)
        .window(Window::Count {
            calls: MAX_COUNT_WINDOW,
        })
        .build()
        .unwrap();
    for _ in 1..MAX_COUNT_WINDOW {
        breaker.try_acquire().unwrap().failure();
    }
    let c = breaker.counts();
    assert_eq!(
        (c.calls, c.failures),
        (MAX_COUNT_WINDOW - 1, MAX_COUNT_WINDOW - 1)
    );
    assert_eq!(breaker.state(), State::Closed);
    breaker.try_acquire().unwrap().failure();
    assert_eq!(breaker.state(), State::Open);
}

#[test]
fn a_call_that_takes_a_century_is_slow_and_nothing_overflows() {
    for window in [
        Window::Count { calls: 10 },
        Window::Time {
            span: 10 * SEC,
            buckets: 10,
        },
    ] {
        let (clock, builder) = on_fake();
        let breaker = builder
            .no_failure_rate()
            .slow_call_rate(0.5, SEC)
            .minimum_calls(3)
            .window(window)
            .build()
            .unwrap();
        let permit = breaker.try_acquire().unwrap();
        breaker.try_acquire().unwrap().success();
        for _ in 0..10 {
            clock.advance(10 * YEAR);
        }
        permit.success();
        assert_eq!(breaker.counts().slow, 1, "{window:?}");
        breaker.try_acquire().unwrap().success();
        // The count window holds 1 slow of 3 calls; the time window 1 slow of 2 (its first
        // success left a century ago).
        assert_eq!(breaker.state(), State::Closed, "{window:?}");
        let permit = breaker.try_acquire().unwrap();
        clock.advance(SEC);
        permit.success();
        assert_eq!(
            breaker.state(),
            State::Open,
            "{window:?}: 2 slow of 4 (of 3)"
        );
    }
}

#[test]
fn a_keyed_tables_idle_times_are_right_a_century_on() {
    let clock = FakeClock::new();
    let table = keyed(&clock, 3, 30 * SEC);
    for _ in 0..10 {
        clock.advance(10 * YEAR);
    }
    table
        .try_acquire(&"empty")
        .unwrap()
        .record(Outcome::Ignored);
    let long = table.try_acquire(&"failed").unwrap();
    clock.advance(10 * YEAR); // a call that took ten years, then failed
    long.failure();
    table.try_acquire(&"open").unwrap().failure();
    for _ in 0..4 {
        table.try_acquire(&"open").unwrap().failure();
    }
    assert_eq!(table.state(&"open"), Some(State::Open));
    assert_eq!(table.retain_in_use(), 1, "only the empty key may go");
    assert_eq!(table.state(&"empty"), None);
    table.try_acquire(&"new").unwrap().success();
    assert_eq!(
        keys_full(table.try_acquire(&"newer")),
        Some(30 * SEC),
        "the failed key"
    );
    clock.advance(30 * SEC);
    assert_eq!(
        table.retain_in_use(),
        2,
        "the failed key's failure and the new key's success are idle_ttl old"
    );
    assert_eq!((table.state(&"failed"), table.state(&"new")), (None, None));
    assert_eq!(table.state(&"open"), Some(State::Open));
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_probe_cut_by_its_attempt_timeout_reopens_the_breaker() {
    let (builder, changes) = watch_changes(
        CircuitBreaker::builder()
            .consecutive_failures(1)
            .break_duration(SEC),
    );
    let breaker = builder.build().unwrap();
    let pipeline = Pipeline::builder()
        .breaker(breaker.clone())
        .attempt_timeout(ms(50))
        .build()
        .unwrap();
    breaker.try_acquire().unwrap().failure();
    tokio::time::sleep(SEC).await;
    let result = pipeline
        .call(|| async {
            tokio::time::sleep(SEC).await;
            Ok::<(), &str>(())
        })
        .await;
    assert_eq!(result, Err(Error::TimedOut));
    assert_eq!(breaker.state(), State::Open);
    assert_eq!(
        changes.lock().unwrap().last().unwrap().2,
        Some(TripReason::ProbeFailed)
    );
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_probe_refused_by_a_layer_below_gives_its_slot_back() {
    let (clock, builder) = on_fake();
    let breaker = tripped(&clock, builder.max_half_open_wait(None));
    let mut service = BreakerLayer::new(breaker.clone()).layer(tower::service_fn(
        |answer: Result<(), Error<&'static str>>| async move { answer },
    ));
    for _ in 0..5 {
        let refused = service
            .call(Err(Error::Rejected(Rejected::BulkheadFull)))
            .await;
        assert_eq!(refused, Err(Error::Rejected(Rejected::BulkheadFull)));
        assert_eq!(
            breaker.state(),
            State::HalfOpen,
            "a refusal from below is no outcome"
        );
    }
    assert_eq!(
        service.call(Ok(())).await,
        Ok(()),
        "the slot came back each time"
    );
    assert_eq!(breaker.state(), State::Closed);
}
