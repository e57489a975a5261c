//! Adversarial black-box tests of the standalone resilience policies used DIRECTLY, the way
//! their own rustdoc shows: the circuit breaker (`breaker`), the bulkhead (`bulkhead`), the
//! rate limiter (`rate`) and the retry budget (`budget`).
//!
//! They attack the edges: long idle gaps (an hour, a year, a century of virtual time) followed
//! by bursts, deep queues, extreme configurations (limits of 1 and the integer maxima, zero and
//! `Duration::MAX` durations), permits and probes dropped at seeded random points, futures
//! cancelled mid-wait, many concurrent callers on a paused tokio runtime with capacity
//! conservation checked afterwards, exact half-open probe counts under thread races, and every
//! documented `retry_after` hint checked against what actually happens at that instant.
//!
//! Written from the public rustdoc alone (the extract of `breaker`, `bulkhead`, `rate` and
//! `budget.rs`), without reading the implementation. Time is virtual throughout (a
//! `tidewall::testing::FakeClock` advanced by hand, or paused tokio time) and randomness is
//! seeded (`SplitMix64`), so every run is the same.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::task::noop_waker_ref;
use tidewall::admission::QueueDiscipline;
use tidewall::breaker::{CircuitBreaker, Outcome, State, Window};
use tidewall::budget::{RetryBudget, RetryBudgetPolicy};
use tidewall::bulkhead::Bulkhead;
use tidewall::rate::{KeyedRateLimiter, RateLimiter};
use tidewall::rt::Tokio;
use tidewall::testing::FakeClock;
use tidewall::{Backoff, ConfigError, Deadline, Jitter, Rejected};
use tidewall_core::rng::SplitMix64;

const NS: Duration = Duration::from_nanos(1);
const MS: Duration = Duration::from_millis(1);
const SEC: Duration = Duration::from_secs(1);
const HOUR: Duration = Duration::from_secs(3_600);
const YEAR: Duration = Duration::from_secs(365 * 86_400);
const CENTURY: Duration = Duration::from_secs(100 * 365 * 86_400);
const GAPS: [Duration; 3] = [HOUR, YEAR, CENTURY];

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn circuit_open_hint<T: std::fmt::Debug>(result: Result<T, Rejected>) -> Duration {
    match result {
        Err(Rejected::CircuitOpen { retry_after }) => retry_after,
        other => panic!("expected CircuitOpen, got {other:?}"),
    }
}

fn rate_hint(result: Result<(), Rejected>) -> Duration {
    match result {
        Err(Rejected::RateLimited { retry_after }) => retry_after,
        other => panic!("expected RateLimited, got {other:?}"),
    }
}

fn keys_full_hint<T: std::fmt::Debug>(result: Result<T, Rejected>) -> Option<Duration> {
    match result {
        Err(Rejected::KeysFull { retry_after }) => retry_after,
        other => panic!("expected KeysFull, got {other:?}"),
    }
}

fn no_jitter_backoff(base: Duration, max: Duration) -> Backoff {
    // `max_attempts` far above the trips a test makes: the schedule is not cut short (a
    // backoff's default of 4 attempts would hold the break at its fourth step).
    Backoff::exponential(base)
        .max_delay(max)
        .max_attempts(100_000)
        .jitter(Jitter::None)
        .build()
        .expect("valid backoff")
}

// ---------------------------------------------------------------------------------------------
// Circuit breaker
// ---------------------------------------------------------------------------------------------

/// "Any age: a breaker behaves the same an hour, a month or a century after it was built, and
/// after any idle gap" + the break is measured from the trip ("a trip reads it once, so the
/// break always starts when the breaker opens").
#[test]
fn breaker_after_hour_year_century_idle_trips_with_full_break_and_exact_hint() {
    let clock = FakeClock::new();
    let breaker = CircuitBreaker::builder()
        .runtime(clock.clone())
        .consecutive_failures(3)
        .break_duration(Duration::from_secs(5))
        .half_open_probes(1)
        .build()
        .unwrap();
    for gap in GAPS {
        clock.advance(gap);
        for _ in 0..3 {
            breaker.try_acquire().expect("closed").failure();
        }
        assert_eq!(breaker.state(), State::Open, "after a gap of {gap:?}");
        let hint = circuit_open_hint(breaker.try_acquire());
        assert_eq!(
            hint,
            Duration::from_secs(5),
            "the whole break is left right after the trip"
        );
        clock.advance(hint - NS);
        let hint = circuit_open_hint(breaker.try_acquire());
        assert_eq!(hint, NS, "one nanosecond of the break left");
        clock.advance(NS);
        let probe = breaker.try_acquire().expect("a probe at the hint");
        assert!(probe.is_probe());
        probe.success();
        assert_eq!(breaker.state(), State::Closed);
    }
}

/// "a time window's stale buckets never count again" after any idle gap.
#[test]
fn breaker_time_window_stale_buckets_never_count_after_long_idle() {
    let clock = FakeClock::new();
    let breaker = CircuitBreaker::builder()
        .runtime(clock.clone())
        .failure_rate(0.5)
        .minimum_calls(4)
        .window(Window::Time {
            span: Duration::from_secs(10),
            buckets: 10,
        })
        .build()
        .unwrap();
    for gap in GAPS {
        // Three failures: below the minimum of four, so still closed.
        for _ in 0..3 {
            breaker.try_acquire().expect("closed").failure();
        }
        assert_eq!(breaker.state(), State::Closed);
        assert_eq!(breaker.counts().failures, 3);
        clock.advance(gap);
        let counts = breaker.counts();
        assert_eq!(
            (counts.calls, counts.failures),
            (0, 0),
            "stale after {gap:?}"
        );
        // Three successes then one failure: 1 of 4 now; 4 of 7 had the stale ones counted.
        for _ in 0..3 {
            breaker.try_acquire().expect("closed").success();
        }
        breaker.try_acquire().expect("closed").failure();
        assert_eq!(
            breaker.state(),
            State::Closed,
            "stale failures counted after {gap:?}"
        );
        assert_eq!(breaker.counts().calls, 4);
        clock.advance(gap);
    }
}

/// "repeated trips cost one backoff step each however many came before"; the break grows with
/// the backoff, is capped by it, and "The break durations after a close: the schedule starts
/// over"; `reset` restarts "the break backoff".
#[test]
fn breaker_break_backoff_steps_once_per_trip_caps_and_restarts_after_close_and_reset() {
    let clock = FakeClock::new();
    let breaker = CircuitBreaker::builder()
        .runtime(clock.clone())
        .consecutive_failures(1)
        .break_backoff(no_jitter_backoff(SEC, Duration::from_secs(8)))
        .half_open_probes(1)
        .max_half_open_wait(None)
        .build()
        .unwrap();
    let expected = |trip: usize| -> Duration {
        let secs = [1, 2, 4, 8].get(trip).copied().unwrap_or(8);
        Duration::from_secs(secs)
    };
    let mut rng = SplitMix64::new(0xB4EA);
    breaker.try_acquire().expect("closed").failure();
    for trip in 0..1_000 {
        let want = expected(trip);
        let hint = circuit_open_hint(breaker.try_acquire());
        assert_eq!(hint, want, "trip {trip}");
        clock.advance(want - NS);
        assert!(
            breaker.try_acquire().is_err(),
            "trip {trip}: open until its break ends"
        );
        clock.advance(NS);
        // Sometimes idle for a long time in the open state before probing.
        if rng.below_or_equal(9) == 0 {
            clock.advance(YEAR);
        }
        let probe = breaker.try_acquire().expect("a probe after the break");
        assert!(probe.is_probe());
        probe.failure();
    }
    // A successful probe closes it: the next trip starts the schedule again.
    clock.advance(Duration::from_secs(8));
    breaker.try_acquire().expect("probe").success();
    assert_eq!(breaker.state(), State::Closed);
    breaker.try_acquire().expect("closed").failure();
    assert_eq!(
        circuit_open_hint(breaker.try_acquire()),
        SEC,
        "restarted after a close"
    );
    // Grow it again, then reset.
    clock.advance(SEC);
    breaker.try_acquire().expect("probe").failure();
    assert_eq!(
        circuit_open_hint(breaker.try_acquire()),
        Duration::from_secs(2)
    );
    breaker.reset();
    assert_eq!(breaker.state(), State::Closed);
    breaker.try_acquire().expect("closed").failure();
    assert_eq!(
        circuit_open_hint(breaker.try_acquire()),
        SEC,
        "restarted by reset"
    );
}

/// "Exact probes: a half-open slot is reserved with a compare-and-swap, so however many callers
/// race, exactly the configured number get through", and dropped probes give their slot back.
#[test]
fn breaker_half_open_admits_exactly_the_configured_probes_under_thread_races() {
    for probes in [1_u32, 3, 64] {
        let clock = FakeClock::new();
        let breaker = CircuitBreaker::builder()
            .runtime(clock.clone())
            .consecutive_failures(1)
            .break_duration(SEC)
            .half_open_probes(probes)
            .max_half_open_wait(None)
            .build()
            .unwrap();
        breaker.try_acquire().unwrap().failure();
        clock.advance(SEC);
        for round in 0..3 {
            let admitted = std::thread::scope(|scope| {
                let handles: Vec<_> = (0..8)
                    .map(|_| {
                        scope.spawn(|| {
                            (0..200)
                                .filter_map(|_| breaker.try_acquire().ok())
                                .collect::<Vec<_>>()
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .flat_map(|h| h.join().unwrap())
                    .collect::<Vec<_>>()
            });
            assert_eq!(
                admitted.len(),
                usize::try_from(probes).unwrap(),
                "probes {probes}, round {round}"
            );
            assert!(admitted.iter().all(|p| p.is_probe()));
            assert_eq!(breaker.state(), State::HalfOpen);
            drop(admitted); // every slot comes back
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Modelled {
    Closed,
    Open { until: Duration },
    HalfOpen { taken: u32, succeeded: u32 },
}

/// Seeded random acquire/drop/ignore/success/failure/advance against a model of the documented
/// state machine: "admits exactly `half_open_probes` probe calls: that many successes close it,
/// one failure reopens it"; "a permit dropped ... records nothing and a probe gives its slot
/// back"; "An ignored probe gives its half-open slot back"; "an outcome from an earlier state
/// never moves the current one".
#[test]
fn breaker_seeded_random_probe_drops_match_the_documented_state_machine() {
    const PROBES: u32 = 4;
    for seed in [1_u64, 2, 3, 0xDEAD] {
        let clock = FakeClock::new();
        let breaker = CircuitBreaker::builder()
            .runtime(clock.clone())
            .consecutive_failures(1)
            .break_duration(SEC)
            .half_open_probes(PROBES)
            .max_half_open_wait(None)
            .build()
            .unwrap();
        let mut rng = SplitMix64::new(seed);
        let mut now = Duration::ZERO;
        let mut model = Modelled::Closed;
        let mut epoch = 0_u64;
        let mut held: Vec<(u64, tidewall::breaker::OwnedPermit<FakeClock>)> = Vec::new();
        for step in 0..4_000 {
            match rng.below_or_equal(9) {
                0..=3 => {
                    if let Modelled::Open { until } = model
                        && now >= until
                    {
                        model = Modelled::HalfOpen {
                            taken: 0,
                            succeeded: 0,
                        };
                        epoch += 1;
                    }
                    let got = breaker.try_acquire_owned();
                    match &mut model {
                        Modelled::Closed => {
                            let permit = got.unwrap_or_else(|e| panic!("{seed}/{step}: {e:?}"));
                            assert!(!permit.is_probe());
                            held.push((epoch, permit));
                        }
                        Modelled::Open { .. } => {
                            assert!(got.is_err(), "seed {seed} step {step}: admitted while open");
                        }
                        Modelled::HalfOpen { taken, .. } => {
                            if *taken < PROBES {
                                let permit = got.unwrap_or_else(|e| {
                                    panic!("seed {seed} step {step}: slot {taken} refused: {e:?}")
                                });
                                assert!(permit.is_probe());
                                *taken += 1;
                                held.push((epoch, permit));
                            } else {
                                assert!(
                                    got.is_err(),
                                    "seed {seed} step {step}: probe {} admitted",
                                    *taken + 1
                                );
                            }
                        }
                    }
                }
                4..=7 if !held.is_empty() => {
                    let index =
                        usize::try_from(rng.below_or_equal(u64::try_from(held.len() - 1).unwrap()))
                            .unwrap();
                    let (permit_epoch, permit) = held.swap_remove(index);
                    let current = permit_epoch == epoch;
                    let action = rng.below_or_equal(3);
                    match action {
                        0 => drop(permit),
                        1 => permit.record(Outcome::Ignored),
                        2 => permit.success(),
                        _ => permit.failure(),
                    }
                    if current {
                        match (&mut model, action) {
                            (Modelled::HalfOpen { taken, .. }, 0 | 1) => *taken -= 1,
                            (Modelled::HalfOpen { succeeded, .. }, 2) => {
                                *succeeded += 1;
                                if *succeeded == PROBES {
                                    model = Modelled::Closed;
                                    epoch += 1;
                                }
                            }
                            (Modelled::HalfOpen { .. } | Modelled::Closed, 3) => {
                                model = Modelled::Open { until: now + SEC };
                                epoch += 1;
                            }
                            _ => {}
                        }
                    }
                }
                _ => {
                    let by = ms(rng.below_or_equal(700));
                    clock.advance(by);
                    now += by;
                }
            }
        }
    }
}

/// "`max_half_open_wait` reopens a breaker whose probes hang (measured from the first probe in
/// flight)", and the hung probe's late outcome is from an earlier generation: ignored.
#[test]
fn breaker_max_half_open_wait_reopens_on_a_hung_probe_and_ignores_its_late_success() {
    let clock = FakeClock::new();
    let breaker = CircuitBreaker::builder()
        .runtime(clock.clone())
        .consecutive_failures(1)
        .break_duration(SEC)
        .half_open_probes(2)
        .max_half_open_wait(Some(Duration::from_secs(10)))
        .build()
        .unwrap();
    breaker.try_acquire().unwrap().failure();
    clock.advance(SEC);
    let hung = breaker.try_acquire_owned().expect("first probe");
    assert!(hung.is_probe());
    clock.advance(Duration::from_secs(10) - NS);
    let second = breaker
        .try_acquire()
        .expect("still half-open just before the wait ends");
    drop(second);
    clock.advance(NS * 2);
    let hint = circuit_open_hint(breaker.try_acquire());
    assert_eq!(breaker.state(), State::Open, "reopened by the hung probe");
    hung.success();
    assert_eq!(
        breaker.state(),
        State::Open,
        "a late outcome never moves the new state"
    );
    clock.advance(hint);
    assert!(
        breaker
            .try_acquire()
            .expect("probe after the new break")
            .is_probe()
    );
}

/// "with no probe in flight it waits for the next caller however long it stays idle": a probe
/// that was dropped is no longer in flight, so a century later the breaker still probes.
#[test]
fn breaker_half_open_without_probe_in_flight_waits_a_century_for_the_next_caller() {
    let clock = FakeClock::new();
    let breaker = CircuitBreaker::builder()
        .runtime(clock.clone())
        .consecutive_failures(1)
        .break_duration(SEC)
        .half_open_probes(1)
        .max_half_open_wait(Some(Duration::from_secs(10)))
        .build()
        .unwrap();
    breaker.try_acquire().unwrap().failure();
    // Break over, nobody calls for a century.
    clock.advance(CENTURY);
    let probe = breaker
        .try_acquire()
        .expect("a probe after a century idle in open");
    assert!(probe.is_probe());
    drop(probe);
    clock.advance(CENTURY);
    let probe = breaker
        .try_acquire()
        .expect("no probe in flight: still waiting for the next caller");
    assert!(probe.is_probe());
    probe.success();
    assert_eq!(breaker.state(), State::Closed);

    // One probe of three succeeds, then nobody calls for a year: no probe is in flight, so the
    // next two callers are still probes and close it.
    let breaker = CircuitBreaker::builder()
        .runtime(clock.clone())
        .consecutive_failures(1)
        .break_duration(SEC)
        .half_open_probes(3)
        .max_half_open_wait(Some(Duration::from_secs(10)))
        .build()
        .unwrap();
    breaker.try_acquire().unwrap().failure();
    clock.advance(SEC);
    breaker.try_acquire().expect("first probe").success();
    clock.advance(YEAR);
    let second = breaker.try_acquire().expect("second probe a year later");
    assert!(second.is_probe());
    second.success();
    breaker.try_acquire().expect("third probe").success();
    assert_eq!(breaker.state(), State::Closed);
}

/// "Generations: every transition bumps a generation the permit carries; an outcome from an
/// earlier state never moves the current one", and after a reset "their outcomes are ignored".
#[test]
fn breaker_outcomes_of_permits_from_earlier_generations_are_ignored() {
    let clock = FakeClock::new();
    let breaker = CircuitBreaker::builder()
        .runtime(clock.clone())
        .consecutive_failures(2)
        .break_duration(Duration::from_secs(30))
        .half_open_probes(1)
        .build()
        .unwrap();
    let stale_success = breaker.try_acquire_owned().unwrap();
    let stale_failure = breaker.try_acquire_owned().unwrap();
    breaker.try_acquire().unwrap().failure();
    breaker.try_acquire().unwrap().failure();
    assert_eq!(breaker.state(), State::Open);
    let hint = circuit_open_hint(breaker.try_acquire());
    clock.advance(hint);
    let probe = breaker.try_acquire_owned().expect("probe");
    // A closed-state success must not count as the half-open probe's success...
    stale_success.success();
    assert_eq!(breaker.state(), State::HalfOpen);
    assert!(
        breaker.try_acquire().is_err(),
        "the only slot is still taken"
    );
    probe.success();
    assert_eq!(breaker.state(), State::Closed);
    // ... and a failure from the first closed period must not count in the second.
    breaker.try_acquire().unwrap().failure();
    stale_failure.failure();
    assert_eq!(
        breaker.state(),
        State::Closed,
        "a stale failure completed a run of two"
    );
    // After a reset, outcomes of permits taken before are ignored.
    let before_reset = breaker.try_acquire_owned().unwrap();
    breaker.reset();
    before_reset.failure();
    assert_eq!(breaker.counts().failures, 0);
}

/// `force_open`: "every call is rejected until reset", whatever the age; `force_closed`: "every
/// call passes and nothing trips it until reset"; `reset`: "Back to closed with an empty
/// window".
#[test]
fn breaker_forced_states_hold_for_a_century_and_reset_empties_the_window() {
    let clock = FakeClock::new();
    let breaker = CircuitBreaker::builder()
        .runtime(clock.clone())
        .consecutive_failures(1)
        .break_duration(SEC)
        .build()
        .unwrap();
    breaker.force_open();
    for gap in GAPS {
        clock.advance(gap);
        assert!(breaker.try_acquire().is_err(), "forced open after {gap:?}");
        assert_eq!(breaker.state(), State::ForcedOpen);
    }
    breaker.force_closed();
    for _ in 0..10_000 {
        breaker.try_acquire().expect("forced closed").failure();
    }
    clock.advance(CENTURY);
    assert_eq!(breaker.state(), State::ForcedClosed);
    breaker.reset();
    assert_eq!(breaker.state(), State::Closed);
    let counts = breaker.counts();
    assert_eq!((counts.calls, counts.failures, counts.slow), (0, 0, 0));
    // A probe in flight when forced open cannot close it.
    breaker.try_acquire().unwrap().failure();
    clock.advance(SEC);
    let probe = breaker.try_acquire().expect("probe");
    breaker.force_open();
    probe.success();
    assert_eq!(breaker.state(), State::ForcedOpen);
}

/// `max_open_hint`: "a failure that opens it keeps it open for its break or the hint, whichever
/// is longer, the hint cut to this (default 60 s; zero ignores hints)".
#[test]
fn breaker_hints_are_capped_by_max_open_hint_even_at_duration_max() {
    for (cap, hint, open_for) in [
        (None, Duration::MAX, Duration::from_secs(60)),
        (
            Some(Duration::from_secs(30)),
            Duration::from_secs(10),
            Duration::from_secs(10),
        ),
        (
            Some(Duration::from_secs(30)),
            Duration::from_secs(300),
            Duration::from_secs(30),
        ),
        (
            Some(Duration::from_secs(30)),
            Duration::from_millis(200),
            SEC,
        ),
        (Some(Duration::ZERO), Duration::from_secs(300), SEC),
    ] {
        let clock = FakeClock::new();
        clock.advance(YEAR);
        let mut builder = CircuitBreaker::builder()
            .runtime(clock.clone())
            .consecutive_failures(1)
            .break_duration(SEC)
            .half_open_probes(1);
        if let Some(cap) = cap {
            builder = builder.max_open_hint(cap);
        }
        let breaker = builder.build().unwrap();
        breaker
            .try_acquire()
            .unwrap()
            .record_hinted(Outcome::Failure, Some(hint));
        let retry_after = circuit_open_hint(breaker.try_acquire());
        assert_eq!(retry_after, open_for, "cap {cap:?}, hint {hint:?}");
        clock.advance(open_for - NS);
        assert!(breaker.try_acquire().is_err(), "cap {cap:?}, hint {hint:?}");
        clock.advance(NS);
        assert!(
            breaker.try_acquire().is_ok(),
            "cap {cap:?}, hint {hint:?}: probe at the hint"
        );
    }
}

/// Extreme breaker configurations: documented errors where documented, never a panic, and a
/// large probe count that is accepted must be honoured exactly ("admits exactly
/// `half_open_probes` probe calls").
#[test]
fn breaker_extreme_configs_are_typed_errors_or_exact_never_panics() {
    // Documented: "ConfigError::DurationOverflow for a max_open_hint above u64::MAX ns".
    let err = CircuitBreaker::builder()
        .max_open_hint(Duration::MAX)
        .build()
        .err();
    assert!(
        matches!(err, Some(ConfigError::DurationOverflow { .. })),
        "{err:?}"
    );
    // Not documented in the extract: each must be an error or work, never panic.
    for builder in [
        CircuitBreaker::builder().break_duration(Duration::MAX),
        CircuitBreaker::builder().break_duration(Duration::ZERO),
        CircuitBreaker::builder().max_half_open_wait(Some(Duration::MAX)),
        CircuitBreaker::builder().max_half_open_wait(Some(Duration::ZERO)),
        CircuitBreaker::builder().failure_rate(f64::NAN),
        CircuitBreaker::builder().failure_rate(2.0),
        CircuitBreaker::builder().slow_call_rate(0.5, Duration::MAX),
        CircuitBreaker::builder().minimum_calls(u32::MAX),
        CircuitBreaker::builder().consecutive_failures(u32::MAX),
        CircuitBreaker::builder().half_open_probes(0),
        CircuitBreaker::builder().window(Window::Count { calls: 0 }),
        CircuitBreaker::builder().window(Window::Count { calls: 1 }),
        CircuitBreaker::builder().window(Window::Time {
            span: Duration::MAX,
            buckets: 10,
        }),
        CircuitBreaker::builder().window(Window::Time {
            span: SEC,
            buckets: 0,
        }),
        CircuitBreaker::builder().window(Window::Time {
            span: NS,
            buckets: 1,
        }),
    ] {
        let clock = FakeClock::new();
        if let Ok(breaker) = builder.runtime(clock.clone()).build() {
            for _ in 0..3 {
                if let Ok(permit) = breaker.try_acquire() {
                    permit.failure();
                }
                clock.advance(CENTURY);
            }
        }
    }
    // A NaN rate must not be accepted silently.
    assert!(
        CircuitBreaker::builder()
            .failure_rate(f64::NAN)
            .build()
            .is_err()
    );
    assert!(CircuitBreaker::builder().failure_rate(2.0).build().is_err());
}

/// The state word keeps probe counters in 12 bits (bits 8..20); a probe count beyond 4095 that
/// `build` accepts must still admit exactly that many probes.
#[test]
fn breaker_large_half_open_probe_counts_are_refused_or_admitted_exactly() {
    for probes in [4_095_u32, 4_096, 5_000, u32::MAX] {
        let clock = FakeClock::new();
        let Ok(breaker) = CircuitBreaker::builder()
            .runtime(clock.clone())
            .consecutive_failures(1)
            .break_duration(SEC)
            .half_open_probes(probes)
            .max_half_open_wait(None)
            .build()
        else {
            continue;
        };
        breaker.try_acquire().unwrap().failure();
        clock.advance(SEC);
        let limit = probes.min(20_000);
        let mut held = Vec::new();
        for i in 0..limit {
            let permit = breaker
                .try_acquire_owned()
                .unwrap_or_else(|e| panic!("probes {probes}: slot {i} refused: {e:?}"));
            assert!(permit.is_probe(), "probes {probes}: slot {i} not a probe");
            held.push(permit);
        }
        assert_eq!(breaker.state(), State::HalfOpen, "probes {probes}");
        if limit == probes {
            assert!(
                breaker.try_acquire().is_err(),
                "probes {probes}: one more admitted"
            );
            for permit in held {
                permit.success();
            }
            assert_eq!(breaker.state(), State::Closed, "probes {probes}");
        }
    }
}

/// Slow calls are measured from admission to record, even for a call that hangs a year: "the
/// slow-call rate ... crosses its threshold" opens it.
#[test]
fn breaker_calls_that_hang_a_year_count_as_slow_and_trip_the_slow_rate() {
    for window in [
        Window::Count { calls: 10 },
        Window::Time {
            span: Duration::from_secs(10),
            buckets: 10,
        },
    ] {
        let clock = FakeClock::new();
        let reasons = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&reasons);
        let breaker = CircuitBreaker::builder()
            .runtime(clock.clone())
            .no_failure_rate()
            .slow_call_rate(0.5, ms(100))
            .minimum_calls(2)
            .window(window)
            .on_state_change(move |change| seen.lock().unwrap().push((change.to, change.reason)))
            .build()
            .unwrap();
        let a = breaker.try_acquire().unwrap();
        let b = breaker.try_acquire().unwrap();
        clock.advance(YEAR);
        a.success();
        assert_eq!(breaker.counts().slow, 1, "{window:?}");
        b.success();
        assert_eq!(breaker.state(), State::Open, "{window:?}");
        assert_eq!(
            reasons.lock().unwrap().last().copied(),
            Some((
                State::Open,
                Some(tidewall::breaker::TripReason::SlowCallRate)
            )),
            "{window:?}"
        );
    }
}

/// Keyed breaker: a new key meeting a full table "is refused with Rejected::KeysFull, whose
/// retry_after says when the first of them goes idle" -- checked at that instant and one
/// nanosecond before.
#[test]
fn keyed_breaker_keys_full_hint_is_exactly_when_the_first_key_goes_idle() {
    let clock = FakeClock::new();
    let breakers = CircuitBreaker::builder()
        .runtime(clock.clone())
        .consecutive_failures(5)
        .keyed::<&str>()
        .max_keys(1)
        .idle_ttl(Duration::from_secs(10))
        .build()
        .unwrap();
    clock.advance(YEAR);
    breakers.try_acquire(&"a").unwrap().failure();
    assert_eq!(breakers.counts(&"a").map(|c| c.failures), Some(1));
    clock.advance(Duration::from_secs(3));
    let hint = keys_full_hint(breakers.try_acquire(&"b")).expect("a closed key goes idle");
    assert_eq!(hint, Duration::from_secs(7));
    clock.advance(hint - NS);
    assert!(
        matches!(breakers.try_acquire(&"b"), Err(Rejected::KeysFull { .. })),
        "a was forgotten before its idle_ttl"
    );
    clock.advance(NS);
    breakers
        .try_acquire(&"b")
        .expect("admitted at the hint")
        .success();
    assert_eq!(breakers.state(&"a"), None, "a was idle: forgotten");
}

/// "An open, half-open or forced breaker is kept whatever the pressure ... (`None` when all are
/// open or hold permits)"; a permit or a handle from `get` pins a key.
#[test]
fn keyed_breaker_never_forgets_open_or_pinned_keys_under_pressure() {
    let clock = FakeClock::new();
    let breakers = CircuitBreaker::builder()
        .runtime(clock.clone())
        .consecutive_failures(1)
        .break_duration(SEC)
        .keyed::<u32>()
        .max_keys(1)
        .idle_ttl(SEC)
        .build()
        .unwrap();
    breakers.try_acquire(&1).unwrap().failure();
    assert_eq!(breakers.state(&1), Some(State::Open));
    for gap in GAPS {
        clock.advance(gap);
        assert_eq!(
            keys_full_hint(breakers.try_acquire(&2)),
            None,
            "open key, {gap:?}"
        );
        assert_eq!(breakers.retain_in_use(), 0);
        assert!(
            breakers.state(&1).is_some(),
            "open key forgotten after {gap:?}"
        );
    }
    // Let key 1 be forgotten: a handle made of a fresh breaker with an empty window.
    breakers.get(&1).unwrap().reset();
    assert_eq!(breakers.retain_in_use(), 1);
    // A permit out pins a closed, empty key.
    let permit = breakers.try_acquire(&3).unwrap();
    assert_eq!(
        keys_full_hint(breakers.try_acquire(&4)),
        None,
        "a permit is out"
    );
    assert_eq!(breakers.retain_in_use(), 0);
    drop(permit);
    // A handle pins it too.
    let handle = breakers.get(&3).expect("held");
    clock.advance(CENTURY);
    assert!(matches!(
        breakers.try_acquire(&4),
        Err(Rejected::KeysFull { .. })
    ));
    assert_eq!(breakers.retain_in_use(), 0);
    drop(handle);
    breakers
        .try_acquire(&4)
        .expect("key 3 may go now")
        .success();
    assert_eq!(breakers.state(&3), None);
}

// ---------------------------------------------------------------------------------------------
// Bulkhead
// ---------------------------------------------------------------------------------------------

fn poll_once<F: Future + ?Sized>(future: Pin<&mut F>) -> Poll<F::Output> {
    let mut cx = Context::from_waker(noop_waker_ref());
    future.poll(&mut cx)
}

/// Many spawned callers, seeded modes (try, deadline, cancel mid-wait, cancel mid-hold): the
/// limit is never exceeded, and afterwards "Once nothing is running or queued, it equals the
/// capacity"; `rejected()` counts exactly the refusals ("full, waited too long, or past their
/// deadline"), not the cancellations.
#[tokio::test(start_paused = true)]
async fn bulkhead_conserves_capacity_under_seeded_concurrent_cancellation_chaos() {
    let capacity = 4;
    let bulkhead = Bulkhead::builder(capacity)
        .max_queue(16)
        .max_wait(ms(40))
        .build()
        .unwrap();
    let inside = Arc::new(AtomicUsize::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let admitted = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for seed in 0..400_u64 {
        let bulkhead = bulkhead.clone();
        let inside = Arc::clone(&inside);
        let refused = Arc::clone(&refused);
        let admitted = Arc::clone(&admitted);
        tasks.push(tokio::spawn(async move {
            let mut rng = SplitMix64::new(seed ^ 0x5EED);
            tokio::time::sleep(ms(rng.below_or_equal(300))).await;
            let wait = ms(rng.below_or_equal(60));
            let got = match rng.below_or_equal(3) {
                0 => Some(bulkhead.try_acquire_owned()),
                1 => Some(bulkhead.acquire_owned(Deadline::after(&Tokio, wait)).await),
                2 => tokio::time::timeout(wait, bulkhead.acquire_owned(Deadline::none()))
                    .await
                    .ok(),
                _ => Some(bulkhead.acquire_owned(Deadline::none()).await),
            };
            match got {
                None => {} // cancelled mid-wait
                Some(Err(_)) => {
                    refused.fetch_add(1, Ordering::SeqCst);
                }
                Some(Ok(permit)) => {
                    admitted.fetch_add(1, Ordering::SeqCst);
                    let now_inside = inside.fetch_add(1, Ordering::SeqCst) + 1;
                    assert!(
                        now_inside <= capacity,
                        "{now_inside} inside a limit of {capacity}"
                    );
                    let hold = ms(rng.below_or_equal(30));
                    if rng.below_or_equal(1) == 0 {
                        tokio::time::sleep(hold).await;
                    } else {
                        // Cancelled mid-hold: the future holding the permit is dropped.
                        let _ = tokio::time::timeout(hold, std::future::pending::<()>()).await;
                    }
                    inside.fetch_sub(1, Ordering::SeqCst);
                    drop(permit);
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert!(admitted.load(Ordering::SeqCst) > 0);
    assert!(refused.load(Ordering::SeqCst) > 0);
    assert_eq!(bulkhead.available(), capacity);
    assert_eq!(bulkhead.in_flight(), 0);
    assert_eq!(bulkhead.queued(), 0);
    assert_eq!(bulkhead.rejected(), refused.load(Ordering::SeqCst));
}

/// "Fairness: FIFO among waiters"; "a waiter dropped while queued leaves the queue".
#[tokio::test(start_paused = true)]
async fn bulkhead_grants_in_fifo_order_past_cancelled_waiters() {
    let bulkhead = Bulkhead::builder(1)
        .max_queue(64)
        .max_wait(None)
        .build()
        .unwrap();
    let holder = bulkhead.try_acquire_owned().unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..20_u32 {
        let bulkhead = bulkhead.clone();
        let order = Arc::clone(&order);
        tasks.push(tokio::spawn(async move {
            let permit = bulkhead.acquire_owned(Deadline::none()).await.unwrap();
            order.lock().unwrap().push(i);
            tokio::time::sleep(MS).await;
            drop(permit);
        }));
        tokio::task::yield_now().await;
    }
    assert_eq!(bulkhead.queued(), 20);
    let cancelled = [0_usize, 5, 11, 19];
    for &i in &cancelled {
        tasks[i].abort();
    }
    let mut survivors = Vec::new();
    for (i, task) in tasks.into_iter().enumerate() {
        if cancelled.contains(&i) {
            assert!(task.await.unwrap_err().is_cancelled());
        } else {
            survivors.push(task);
        }
    }
    assert_eq!(bulkhead.queued(), 16);
    drop(holder);
    for task in survivors {
        task.await.unwrap();
    }
    let expected: Vec<u32> = (0..20)
        .filter(|i| !cancelled.contains(&usize::try_from(*i).unwrap()))
        .collect();
    assert_eq!(*order.lock().unwrap(), expected);
    assert_eq!(bulkhead.available(), 1);
    assert_eq!(bulkhead.queued(), 0);
}

/// "a permit granted to it at that instant is passed on. Nothing leaks" -- seeded random
/// creation, polling and dropping of waiters and permits, polled by hand so grants land on
/// waiters that are then dropped before they see them.
#[tokio::test(start_paused = true)]
async fn bulkhead_random_waiter_and_permit_drops_never_leak_or_strand() {
    for seed in [7_u64, 8, 9, 10] {
        let capacity = 2;
        let bulkhead = Bulkhead::builder(capacity)
            .max_queue(1_000)
            .max_wait(None)
            .build()
            .unwrap();
        let mut rng = SplitMix64::new(seed);
        let mut waiters: Vec<(u64, Pin<Box<tidewall::bulkhead::Acquire<'_, Tokio>>>)> = Vec::new();
        let mut permits = Vec::new();
        let mut next_id = 0_u64;
        for step in 0..3_000 {
            match rng.below_or_equal(5) {
                0 | 1 => {
                    let mut waiter = Box::pin(bulkhead.acquire());
                    match poll_once(waiter.as_mut()) {
                        Poll::Ready(Ok(permit)) => permits.push(permit),
                        Poll::Ready(Err(e)) => panic!("seed {seed} step {step}: {e:?}"),
                        Poll::Pending => {
                            waiters.push((next_id, waiter));
                            next_id += 1;
                        }
                    }
                }
                2 if !waiters.is_empty() => {
                    let i = rng.below_or_equal(u64::try_from(waiters.len() - 1).unwrap());
                    drop(waiters.remove(usize::try_from(i).unwrap()));
                }
                3 if !permits.is_empty() => {
                    let i = rng.below_or_equal(u64::try_from(permits.len() - 1).unwrap());
                    drop(permits.swap_remove(usize::try_from(i).unwrap()));
                }
                _ => {
                    // Poll every waiter in arrival order: the ready ones are a prefix (FIFO).
                    let mut still = Vec::new();
                    let mut saw_pending = false;
                    for (id, mut waiter) in waiters.drain(..) {
                        match poll_once(waiter.as_mut()) {
                            Poll::Ready(Ok(permit)) => {
                                assert!(!saw_pending, "seed {seed} step {step}: {id} jumped");
                                permits.push(permit);
                            }
                            Poll::Ready(Err(e)) => panic!("seed {seed} step {step}: {e:?}"),
                            Poll::Pending => {
                                saw_pending = true;
                                still.push((id, waiter));
                            }
                        }
                    }
                    waiters = still;
                    assert!(permits.len() <= capacity, "seed {seed} step {step}");
                    assert!(
                        waiters.is_empty() || permits.len() == capacity,
                        "seed {seed} step {step}: {} waiting with {} of {capacity} held",
                        waiters.len(),
                        permits.len()
                    );
                    assert_eq!(bulkhead.queued(), waiters.len(), "seed {seed} step {step}");
                }
            }
        }
        drop(permits);
        drop(waiters);
        assert_eq!(bulkhead.available(), capacity, "seed {seed}");
        assert_eq!(bulkhead.queued(), 0, "seed {seed}");
        assert_eq!(bulkhead.in_flight(), 0, "seed {seed}");
    }
}

/// "Boundedness: the queue holds at most max_queue waiters"; a waiter stays queued for "at most
/// max_wait" (and not less); every refusal is counted.
#[tokio::test(start_paused = true)]
async fn bulkhead_queue_bound_and_max_wait_are_exact() {
    let bulkhead = Bulkhead::builder(1)
        .max_queue(2)
        .max_wait(ms(100))
        .build()
        .unwrap();
    let held = bulkhead.try_acquire_owned().unwrap();
    let start = tokio::time::Instant::now();
    let waiters: Vec<_> = (0..2)
        .map(|_| {
            let bulkhead = bulkhead.clone();
            tokio::spawn(async move {
                let result = bulkhead.acquire_owned(Deadline::none()).await.map(drop);
                (result, start.elapsed())
            })
        })
        .collect();
    tokio::task::yield_now().await;
    assert_eq!(bulkhead.queued(), 2);
    assert_eq!(
        bulkhead.acquire().await.unwrap_err(),
        Rejected::BulkheadFull,
        "a third waiter is refused at once"
    );
    assert_eq!(start.elapsed(), Duration::ZERO);
    tokio::time::advance(ms(99)).await;
    assert_eq!(bulkhead.queued(), 2, "gave up before max_wait");
    for waiter in waiters {
        let (result, waited) = waiter.await.unwrap();
        assert!(result.is_err());
        assert!(
            waited >= ms(100) && waited <= ms(101),
            "waited {waited:?} for a max_wait of 100 ms"
        );
    }
    assert_eq!(bulkhead.queued(), 0);
    assert_eq!(bulkhead.rejected(), 3);
    drop(held);
    assert_eq!(bulkhead.available(), 1);
}

/// "never waits past deadline (Rejected::DeadlineExceeded then)"; with no `max_wait` and no
/// deadline a waiter waits as long as it takes -- here a year.
#[tokio::test(start_paused = true)]
async fn bulkhead_deadlines_bound_waits_and_unbounded_waits_survive_a_year() {
    let rt = Tokio;
    let bulkhead = Bulkhead::builder(1)
        .max_queue(4)
        .max_wait(SEC)
        .build()
        .unwrap();
    let held = bulkhead.try_acquire().unwrap();
    let start = tokio::time::Instant::now();
    let result = bulkhead.acquire_before(Deadline::after(&rt, ms(10))).await;
    assert_eq!(result.unwrap_err(), Rejected::DeadlineExceeded);
    let waited = start.elapsed();
    assert!(waited >= ms(10) && waited <= ms(11), "waited {waited:?}");
    // A deadline already past: refused without waiting.
    let start = tokio::time::Instant::now();
    let past = Deadline::at(rt_now(&rt));
    tokio::time::advance(MS).await;
    assert_eq!(
        bulkhead.acquire_before(past).await.unwrap_err(),
        Rejected::DeadlineExceeded
    );
    assert_eq!(start.elapsed(), MS);
    assert_eq!(bulkhead.queued(), 0);
    drop(held);

    let patient = Bulkhead::builder(1)
        .max_queue(1)
        .max_wait(None)
        .build()
        .unwrap();
    let held = patient.try_acquire_owned().unwrap();
    let waiter = tokio::spawn({
        let patient = patient.clone();
        async move { patient.acquire_owned(Deadline::none()).await.map(drop) }
    });
    tokio::time::sleep(YEAR).await;
    assert_eq!(patient.queued(), 1, "still waiting after a year");
    drop(held);
    assert_eq!(waiter.await.unwrap(), Ok(()));
    assert_eq!(patient.available(), 1);
}

fn rt_now(rt: &Tokio) -> Instant {
    tidewall::rt::Clock::now(rt)
}

/// The documented build errors, exactly; `isize::MAX` is the largest accepted capacity.
#[test]
fn bulkhead_extreme_configs_give_the_documented_errors() {
    let zero = Bulkhead::builder(0).build().err();
    assert!(matches!(zero, Some(ConfigError::Zero { .. })), "{zero:?}");
    let huge = Bulkhead::builder(usize::MAX).build().err();
    assert!(
        matches!(huge, Some(ConfigError::OutOfRange { .. })),
        "{huge:?}"
    );
    let above = Bulkhead::builder(usize::try_from(isize::MAX).unwrap() + 1)
        .build()
        .err();
    assert!(
        matches!(above, Some(ConfigError::OutOfRange { .. })),
        "{above:?}"
    );
    let forever = Bulkhead::builder(1).max_wait(Duration::MAX).build().err();
    assert!(
        matches!(forever, Some(ConfigError::DurationOverflow { .. })),
        "{forever:?}"
    );
    let zero_wait = Bulkhead::builder(1).max_wait(Duration::ZERO).build().err();
    assert!(
        matches!(zero_wait, Some(ConfigError::Zero { .. })),
        "{zero_wait:?}"
    );
    assert!(
        Bulkhead::builder(1)
            .max_wait(Duration::ZERO)
            .max_queue(0)
            .build()
            .is_ok(),
        "a zero wait is fine without a queue"
    );
    let codel_zero = Bulkhead::builder(1)
        .discipline(QueueDiscipline::Codel {
            target: Duration::ZERO,
            interval: SEC,
        })
        .build()
        .err();
    assert!(
        matches!(codel_zero, Some(ConfigError::Zero { .. })),
        "{codel_zero:?}"
    );
    let codel_max = Bulkhead::builder(1)
        .discipline(QueueDiscipline::Codel {
            target: MS,
            interval: Duration::MAX,
        })
        .build()
        .err();
    assert!(
        matches!(codel_max, Some(ConfigError::DurationOverflow { .. })),
        "{codel_max:?}"
    );

    let max = usize::try_from(isize::MAX).unwrap();
    let wide = Bulkhead::builder(max)
        .max_queue(usize::MAX)
        .build()
        .unwrap();
    assert_eq!(wide.capacity(), max);
    assert_eq!(wide.available(), max);
    let permits: Vec<_> = (0..1_000).map(|_| wide.try_acquire().unwrap()).collect();
    assert_eq!(wide.in_flight(), 1_000);
    drop(permits);
    assert_eq!(wide.available(), max);
    assert_eq!(wide.in_flight(), 0);
}

/// `reconfigure`: "growing hands the new permits to queued callers first" (in queue order);
/// "shrinking below what is held admits nobody new until enough permits come back".
#[tokio::test(start_paused = true)]
async fn bulkhead_reconfigure_grows_into_the_queue_in_order_and_shrinks_without_revoking() {
    let bulkhead = Bulkhead::builder(1)
        .max_queue(8)
        .max_wait(None)
        .build()
        .unwrap();
    let held = bulkhead.try_acquire_owned().unwrap();
    let admitted = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..3_u32 {
        let bulkhead = bulkhead.clone();
        let admitted = Arc::clone(&admitted);
        tasks.push(tokio::spawn(async move {
            let permit = bulkhead.acquire_owned(Deadline::none()).await.unwrap();
            admitted.lock().unwrap().push(i);
            permit
        }));
        tokio::task::yield_now().await;
    }
    assert_eq!(bulkhead.queued(), 3);
    bulkhead
        .reconfigure(Bulkhead::builder(3).max_queue(8).max_wait(None))
        .unwrap();
    for _ in 0..4 {
        tokio::task::yield_now().await;
    }
    assert_eq!(
        *admitted.lock().unwrap(),
        [0, 1],
        "the two new permits go to the queue first"
    );
    assert!(
        bulkhead.try_acquire().is_err(),
        "a newcomer may not pass the queue"
    );
    // Shrink to 1 while 3 are held and one waits.
    bulkhead
        .reconfigure(Bulkhead::builder(1).max_queue(8).max_wait(None))
        .unwrap();
    assert_eq!((bulkhead.capacity(), bulkhead.in_flight()), (1, 3));
    drop(held);
    let first = tasks.remove(0).await.unwrap();
    drop(first);
    tokio::task::yield_now().await;
    assert_eq!(
        admitted.lock().unwrap().len(),
        2,
        "one still out, limit 1: nobody new"
    );
    let second = tasks.remove(0).await.unwrap();
    drop(second);
    let third = tasks.remove(0).await.unwrap();
    assert_eq!(*admitted.lock().unwrap(), [0, 1, 2]);
    assert_eq!(bulkhead.in_flight(), 1);
    drop(third);
    assert_eq!(bulkhead.available(), 1);

    // "Callers already queued stay queued when the queue shrinks."
    let held = bulkhead.try_acquire_owned().unwrap();
    let mut waiters = Vec::new();
    for _ in 0..4 {
        let bulkhead = bulkhead.clone();
        waiters.push(tokio::spawn(async move {
            bulkhead.acquire_owned(Deadline::none()).await.map(drop)
        }));
        tokio::task::yield_now().await;
    }
    assert_eq!(bulkhead.queued(), 4);
    bulkhead
        .reconfigure(Bulkhead::builder(1).max_queue(1).max_wait(None))
        .unwrap();
    assert_eq!(bulkhead.queued(), 4, "queued callers stay queued");
    assert_eq!(
        bulkhead.acquire().await.map(drop),
        Err(Rejected::BulkheadFull)
    );
    drop(held);
    for waiter in waiters {
        assert_eq!(waiter.await.unwrap(), Ok(()));
    }
    assert_eq!((bulkhead.available(), bulkhead.queued()), (1, 0));
}

/// `QueueDiscipline::Lifo`: "Under a standing queue, the newest callers first".
#[tokio::test(start_paused = true)]
async fn bulkhead_lifo_discipline_admits_the_newest_waiter_first() {
    let bulkhead = Bulkhead::builder(1)
        .max_queue(8)
        .max_wait(None)
        .discipline(QueueDiscipline::Lifo)
        .build()
        .unwrap();
    let held = bulkhead.try_acquire_owned().unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..4_u32 {
        let bulkhead = bulkhead.clone();
        let order = Arc::clone(&order);
        tasks.push(tokio::spawn(async move {
            let permit = bulkhead.acquire_owned(Deadline::none()).await.unwrap();
            order.lock().unwrap().push(i);
            tokio::time::sleep(MS).await;
            drop(permit);
        }));
        tokio::task::yield_now().await;
    }
    drop(held);
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(*order.lock().unwrap(), [3, 2, 1, 0]);
    assert_eq!(bulkhead.available(), 1);
}

/// Keyed bulkhead: "The key is held (never evicted) while the future exists", and a full table
/// refuses new keys with `KeysFull` whose "retry_after is None".
#[tokio::test(start_paused = true)]
async fn keyed_bulkhead_a_pending_acquire_future_pins_its_key() {
    let bulkheads = Bulkhead::builder(1)
        .max_queue(4)
        .max_wait(None)
        .keyed()
        .max_keys(1)
        .build::<&'static str>()
        .unwrap();
    let held = bulkheads.try_acquire(&"a").unwrap();
    assert_eq!(keys_full_hint(bulkheads.try_acquire(&"b")), None);
    drop(held);
    // Nothing out for "a" but a future not yet polled.
    let future = bulkheads.acquire_before(&"a", Deadline::none());
    assert!(
        matches!(bulkheads.try_acquire(&"b"), Err(Rejected::KeysFull { .. })),
        "the key of a live acquire future was forgotten"
    );
    let permit = future.await.unwrap();
    assert_eq!(bulkheads.in_flight(&"a"), 1);
    drop(permit);
    let b = bulkheads.try_acquire(&"b").expect("a may go now");
    assert_eq!(bulkheads.in_flight(&"a"), 0);
    drop(b);
    assert_eq!(bulkheads.retain_in_use(), 1);
    assert_eq!(bulkheads.retain_in_use(), 0);
}

/// Keyed bulkhead under many concurrent callers over many keys with cancellations: every key
/// ends with nothing in flight and every key can be forgotten (lossless eviction).
#[tokio::test(start_paused = true)]
async fn keyed_bulkhead_conserves_every_keys_capacity_under_chaos() {
    let bulkheads = Bulkhead::builder(2)
        .max_queue(4)
        .max_wait(ms(20))
        .keyed()
        .max_keys(10_000)
        .build::<u64>()
        .unwrap();
    let mut tasks = Vec::new();
    for seed in 0..300_u64 {
        let bulkheads = bulkheads.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = SplitMix64::new(seed.wrapping_mul(31) ^ 0xC0FFEE);
            let key = rng.below_or_equal(11);
            tokio::time::sleep(ms(rng.below_or_equal(100))).await;
            let wait = ms(rng.below_or_equal(30));
            let acquire = bulkheads.acquire_before(&key, Deadline::none());
            if let Ok(Ok(permit)) = tokio::time::timeout(wait, acquire).await {
                assert!(bulkheads.in_flight(&key) <= 2);
                tokio::time::sleep(ms(rng.below_or_equal(15))).await;
                drop(permit);
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    for key in 0..12 {
        assert_eq!(bulkheads.in_flight(&key), 0, "key {key}");
        if let Some(bulkhead) = bulkheads.get(&key) {
            assert_eq!(bulkhead.available(), 2, "key {key}");
            assert_eq!(bulkhead.queued(), 0, "key {key}");
        }
    }
    bulkheads.retain_in_use();
    for key in 0..12 {
        assert!(
            bulkheads.get(&key).is_none(),
            "key {key} still held with nothing out"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Rate limiter
// ---------------------------------------------------------------------------------------------

/// "a limiter that has been idle long enough admits `burst` cells at once, then one cell every
/// period / count"; `check` returns "the exact retry_after" -- after an hour, a year and a
/// century of its life.
#[test]
fn rate_limiter_burst_and_exact_retry_after_after_hour_year_century_idle() {
    let clock = FakeClock::new();
    let limiter = RateLimiter::builder(10, SEC)
        .burst(5)
        .runtime(clock.clone())
        .build()
        .unwrap();
    for gap in GAPS {
        clock.advance(gap);
        assert_eq!(limiter.available(), 5, "rested after {gap:?}");
        for i in 0..5 {
            limiter
                .check()
                .unwrap_or_else(|e| panic!("cell {i} after {gap:?}: {e:?}"));
        }
        let hint = rate_hint(limiter.check());
        assert_eq!(hint, ms(100), "after {gap:?}");
        clock.advance(hint - NS);
        assert_eq!(rate_hint(limiter.check()), NS, "after {gap:?}");
        clock.advance(NS);
        limiter.check().expect("admitted exactly at the hint");
        assert_eq!(rate_hint(limiter.check()), ms(100));
    }
}

/// "over any span d it admits at most burst + floor(d / interval) cells", and every refusal's
/// `retry_after` is exact: refused one nanosecond before, admitted at it.
#[test]
fn rate_limiter_seeded_random_checks_obey_the_span_bound_and_exact_hints() {
    for (count, period, burst, seed) in [
        (7_u32, SEC, 3_u32, 1_u64),
        (1, Duration::from_secs(60), 1, 2),
        (1_000, SEC, 50, 3),
        (3, Duration::from_millis(10), 9, 4),
    ] {
        let clock = FakeClock::new();
        let limiter = RateLimiter::builder(count, period)
            .burst(burst)
            .runtime(clock.clone())
            .build()
            .unwrap();
        let interval = limiter.gcra().interval_nanos();
        let mut rng = SplitMix64::new(seed);
        let mut now = 0_u64;
        let mut admitted: Vec<u64> = Vec::new();
        for _ in 0..3_000 {
            let step = rng.below_or_equal(interval.saturating_mul(2));
            clock.advance(Duration::from_nanos(step));
            now += step;
            let cells = u32::try_from(rng.below_or_equal(u64::from(burst.min(3))))
                .unwrap()
                .max(1);
            match limiter.check_n(cells) {
                Ok(()) => {
                    admitted.extend(std::iter::repeat_n(now, usize::try_from(cells).unwrap()))
                }
                Err(Rejected::RateLimited { retry_after }) => {
                    if rng.below_or_equal(2) == 0 {
                        let wait = u64::try_from(retry_after.as_nanos()).unwrap();
                        assert!(wait > 0);
                        clock.advance(Duration::from_nanos(wait - 1));
                        now += wait - 1;
                        assert!(limiter.check_n(cells).is_err(), "admitted before its hint");
                        clock.advance(NS);
                        now += 1;
                        limiter.check_n(cells).expect("refused at its hint");
                        admitted.extend(std::iter::repeat_n(now, usize::try_from(cells).unwrap()));
                    }
                }
                Err(other) => panic!("{other:?}"),
            }
        }
        // Span bound over every window that starts at an admission.
        let max_window = usize::try_from(burst).unwrap() + 64;
        for i in 0..admitted.len() {
            for j in i..admitted.len().min(i + max_window) {
                let d = admitted[j] - admitted[i];
                let allowed = u64::from(burst) + d / interval;
                let got = u64::try_from(j - i + 1).unwrap();
                assert!(
                    got <= allowed,
                    "{count}/{period:?} burst {burst}: {got} cells in {d} ns (allowed {allowed})"
                );
            }
        }
    }
}

/// `until_ready` "sleeps exactly until the limiter would admit, plus jitter": the jitter is "the
/// most random delay added to each wait", and `seed` makes "the waits reproducible".
#[tokio::test(start_paused = true)]
async fn rate_until_ready_waits_the_exact_wait_plus_bounded_seeded_jitter() {
    let jitter = ms(200);
    let mut waits = Vec::new();
    for seed in 0..24_u64 {
        let mut per_seed = Vec::new();
        for _ in 0..2 {
            let limiter = RateLimiter::builder(1, SEC)
                .burst(1)
                .jitter(jitter)
                .seed(seed)
                .build()
                .unwrap();
            limiter.check().unwrap();
            let start = tokio::time::Instant::now();
            limiter.until_ready().await.unwrap();
            let waited = start.elapsed();
            assert!(
                waited >= SEC && waited <= SEC + jitter + MS,
                "seed {seed}: waited {waited:?}"
            );
            per_seed.push(waited);
        }
        assert_eq!(per_seed[0], per_seed[1], "seed {seed}: not reproducible");
        waits.push(per_seed[0]);
    }
    waits.sort();
    waits.dedup();
    assert!(waits.len() > 1, "24 seeds all waited {waits:?}: no jitter");

    // Zero jitter: exactly the wait.
    let limiter = RateLimiter::builder(1, SEC)
        .burst(1)
        .jitter(Duration::ZERO)
        .build()
        .unwrap();
    limiter.check().unwrap();
    tokio::time::advance(ms(250)).await;
    let start = tokio::time::Instant::now();
    limiter.until_ready().await.unwrap();
    assert_eq!(start.elapsed(), ms(750));
}

/// `max_wait`/deadline boundaries: "a wait that ends exactly at either is waited out"; one past
/// is refused "at once" (with the limiter's own `retry_after`, or `DeadlineExceeded`).
#[tokio::test(start_paused = true)]
async fn rate_waits_ending_exactly_at_max_wait_or_deadline_are_waited_out() {
    let rt = Tokio;
    let limiter = RateLimiter::builder(1, SEC)
        .burst(1)
        .jitter(Duration::ZERO)
        .max_wait(SEC)
        .build()
        .unwrap();
    limiter.check().unwrap();
    let start = tokio::time::Instant::now();
    limiter
        .until_ready()
        .await
        .expect("a wait of exactly max_wait");
    assert_eq!(start.elapsed(), SEC);

    let limiter = RateLimiter::builder(1, SEC)
        .burst(1)
        .jitter(Duration::ZERO)
        .max_wait(SEC - MS)
        .build()
        .unwrap();
    limiter.check().unwrap();
    let start = tokio::time::Instant::now();
    assert_eq!(
        limiter.until_ready().await,
        Err(Rejected::RateLimited { retry_after: SEC })
    );
    assert_eq!(start.elapsed(), Duration::ZERO, "refused at once");

    let limiter = RateLimiter::builder(1, SEC)
        .burst(1)
        .jitter(Duration::ZERO)
        .build()
        .unwrap();
    limiter.check().unwrap();
    let start = tokio::time::Instant::now();
    let late = Deadline::after(&rt, SEC - MS);
    assert_eq!(
        limiter.until_ready_before(late).await,
        Err(Rejected::DeadlineExceeded)
    );
    assert_eq!(start.elapsed(), Duration::ZERO, "refused at once");
    let exact = Deadline::after(&rt, SEC);
    limiter
        .until_ready_before(exact)
        .await
        .expect("a wait ending exactly at the deadline");
    assert_eq!(start.elapsed(), SEC);
    // More cells than the burst can never pass.
    assert_eq!(
        limiter.until_n_ready_before(2, Deadline::none()).await,
        Err(Rejected::InsufficientCapacity { burst: 1 })
    );
    assert_eq!(
        limiter.check_n(2),
        Err(Rejected::InsufficientCapacity { burst: 1 })
    );
}

/// "GCRA reserves nothing while waiting; dropping the future loses nothing and takes no
/// capacity" -- waiters cancelled at seeded random points mid-wait.
#[tokio::test(start_paused = true)]
async fn rate_until_ready_cancelled_mid_wait_takes_no_capacity() {
    let limiter = RateLimiter::builder(4, SEC)
        .burst(4)
        .seed(3)
        .build()
        .unwrap();
    limiter.check_n(4).unwrap();
    let mut rng = SplitMix64::new(99);
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let limiter = limiter.clone();
        tasks.push(tokio::spawn(async move { limiter.until_ready().await }));
    }
    tokio::task::yield_now().await;
    // Cancel every waiter at a random instant before the first cell is back (250 ms).
    for task in &tasks {
        tokio::time::advance(Duration::from_micros(rng.below_or_equal(7_000))).await;
        task.abort();
    }
    for task in tasks {
        assert!(task.await.unwrap_err().is_cancelled());
    }
    tokio::time::advance(SEC).await;
    assert_eq!(limiter.available(), 4, "a cancelled waiter took capacity");
    limiter.check_n(4).expect("the whole burst is back");
}

/// Many concurrent `until_ready` waiters on a paused runtime: none is stranded, and the times
/// they are admitted obey "at most burst + floor(d / interval) cells over any span d".
#[tokio::test(start_paused = true)]
async fn rate_many_concurrent_waiters_all_finish_within_the_span_bound() {
    let limiter = RateLimiter::builder(10, SEC)
        .burst(2)
        .seed(11)
        .build()
        .unwrap();
    let interval = Duration::from_nanos(limiter.gcra().interval_nanos());
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..40 {
        let limiter = limiter.clone();
        tasks.push(tokio::spawn(async move {
            limiter.until_ready().await.unwrap();
            tokio::time::Instant::now()
        }));
    }
    let mut done = Vec::new();
    for task in tasks {
        let finished = tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("a waiter was stranded")
            .unwrap();
        done.push(finished - start);
    }
    done.sort();
    for i in 0..done.len() {
        for j in i..done.len() {
            let d = done[j] - done[i];
            let allowed = 2 + usize::try_from(d.as_nanos() / interval.as_nanos()).unwrap();
            assert!(j - i < allowed, "{} cells within {d:?}", j - i + 1);
        }
    }
}

/// `reconfigure`: "The cells already admitted stay admitted, as that many cells under the new
/// limit ... a faster rate pays it off sooner"; and the documented example: "4 billion cells
/// taken at 1 ns each, then a limit of one an hour, then 1 ns again, owe 5 million cells, not
/// 4 billion".
#[test]
fn rate_reconfigure_rescales_debt_and_caps_it_as_documented() {
    let clock = FakeClock::new();
    clock.advance(YEAR);
    let limiter = RateLimiter::builder(1, SEC)
        .burst(5)
        .jitter(Duration::ZERO)
        .runtime(clock.clone())
        .build()
        .unwrap();
    limiter.check_n(5).unwrap();
    limiter
        .reconfigure(RateLimiter::builder(2, SEC).burst(5))
        .unwrap();
    assert_eq!(
        rate_hint(limiter.check()),
        ms(500),
        "no fresh burst; one cell at 500 ms"
    );
    clock.advance(ms(2_500) - NS);
    assert_eq!(limiter.available(), 4);
    clock.advance(NS);
    assert_eq!(
        limiter.available(),
        5,
        "5 cells at 500 ms each are paid off in 2.5 s"
    );

    let clock = FakeClock::new();
    let limiter = RateLimiter::builder(1_000_000_000, SEC)
        .burst(4_000_000_000)
        .runtime(clock.clone())
        .build()
        .unwrap();
    limiter.check_n(4_000_000_000).unwrap();
    limiter.reconfigure(RateLimiter::builder(1, HOUR)).unwrap();
    assert!(limiter.check().is_err());
    limiter
        .reconfigure(RateLimiter::builder(1_000_000_000, SEC).burst(4_000_000_000))
        .unwrap();
    let owed = 4_000_000_000 - limiter.available();
    assert!(
        (5_000_000..=5_200_000).contains(&owed),
        "owes {owed} cells, the docs say about 5 million"
    );
}

/// Extreme limiter configurations give the documented errors: "Zero count, period or burst; a
/// period / count under one nanosecond ... (OutOfRange); a period, two intervals, a (burst + 1)
/// × interval, a jitter or a max_wait beyond u64::MAX nanoseconds (DurationOverflow)".
#[test]
fn rate_extreme_configs_give_the_documented_errors() {
    let zero = |r: Result<RateLimiter, ConfigError>| matches!(r, Err(ConfigError::Zero { .. }));
    let overflow = |r: Result<RateLimiter, ConfigError>| {
        matches!(r, Err(ConfigError::DurationOverflow { .. }))
    };
    assert!(zero(RateLimiter::builder(0, SEC).build()));
    assert!(zero(RateLimiter::builder(1, Duration::ZERO).build()));
    assert!(zero(RateLimiter::builder(1, SEC).burst(0).build()));
    assert!(matches!(
        RateLimiter::builder(u32::MAX, SEC).build(),
        Err(ConfigError::OutOfRange { field: "count", .. })
    ));
    assert!(overflow(RateLimiter::builder(1, Duration::MAX).build()));
    assert!(overflow(
        RateLimiter::builder(1, Duration::from_nanos(u64::MAX)).build()
    ));
    assert!(overflow(
        RateLimiter::builder(1, SEC).jitter(Duration::MAX).build()
    ));
    assert!(overflow(
        RateLimiter::builder(1, SEC).max_wait(Duration::MAX).build()
    ));
    assert!(overflow(
        RateLimiter::builder(1, YEAR).burst(u32::MAX).build()
    ));
    // Within range: one a second with a burst of u32::MAX (136 years) is fine.
    let clock = FakeClock::new();
    let big = RateLimiter::builder(1, SEC)
        .burst(u32::MAX)
        .runtime(clock.clone())
        .build()
        .unwrap();
    assert_eq!(big.available(), u32::MAX);
    big.check_n(u32::MAX).unwrap();
    assert_eq!(rate_hint(big.check()), SEC);
    // The keyed builder refuses zero keys.
    assert!(matches!(
        KeyedRateLimiter::builder(1, SEC).max_keys(0).build::<u8>(),
        Err(ConfigError::Zero { .. })
    ));
}

/// "One cell a year with a burst of 500 is exact for its first 84 years"; past the 584-year
/// range "a cell whose cost would reach beyond 584 years is refused, never admitted".
#[test]
fn rate_one_cell_a_year_burst_500_is_exact_for_84_years_and_never_over_admits_after() {
    let clock = FakeClock::new();
    let limiter = RateLimiter::builder(1, YEAR)
        .burst(500)
        .runtime(clock.clone())
        .build()
        .unwrap();
    clock.advance(YEAR * 84);
    assert_eq!(limiter.available(), 500);
    limiter.check_n(500).expect("the whole burst at 84 years");
    assert_eq!(rate_hint(limiter.check()), YEAR);
    // Later in its life, never more than the bound.
    for years in [100_u32, 300, 583] {
        let clock = FakeClock::new();
        let limiter = RateLimiter::builder(1, YEAR)
            .burst(500)
            .runtime(clock.clone())
            .build()
            .unwrap();
        clock.advance(YEAR * years);
        let admitted = (0..600).filter(|_| limiter.check().is_ok()).count();
        assert!(admitted <= 500, "{admitted} at {years} years");
        let _ = limiter.available();
        clock.advance(YEAR);
        let more = (0..600).filter(|_| limiter.check().is_ok()).count();
        assert!(
            admitted + more <= 501,
            "{admitted} + {more} over a year at {years} years"
        );
    }
}

/// Keyed limiter, full table: a new key "is rejected with RateLimited whose retry_after is when
/// the first of them rests"; the limiter "never forgets a key early (which would hand out an
/// extra burst)".
#[test]
fn keyed_rate_full_table_hint_is_exact_and_keys_are_never_forgotten_early() {
    let clock = FakeClock::new();
    let limiter = KeyedRateLimiter::builder(1, SEC)
        .burst(3)
        .max_keys(1)
        .runtime(clock.clone())
        .build::<&str>()
        .unwrap();
    clock.advance(CENTURY);
    limiter.check_key_n(&"a", 3).unwrap();
    clock.advance(ms(300));
    let hint = rate_hint(limiter.check_key(&"b"));
    assert_eq!(hint, ms(2_700), "a rests 3 s after it took its burst");
    assert_eq!(
        rate_hint(limiter.check_key(&"a")),
        ms(700),
        "a was not forgotten"
    );
    limiter.check_key(&"a").unwrap_err();
    assert_eq!(limiter.retain_recent(), 0);
    clock.advance(ms(700));
    limiter.check_key(&"a").expect("a's next cell");
    let hint = rate_hint(limiter.check_key(&"b"));
    assert_eq!(hint, ms(3_000), "a took another cell: rests 3 s from now");
    clock.advance(hint - NS);
    assert!(
        limiter.check_key(&"b").is_err(),
        "a forgotten before it rested"
    );
    clock.advance(NS);
    limiter
        .check_key_n(&"b", 3)
        .expect("b admitted at the hint, with its burst");
}

/// A keyed wait for a new key refused by a full table waits for the table's hint, then is
/// admitted; cancelled mid-wait it takes nothing.
#[tokio::test(start_paused = true)]
async fn keyed_rate_until_key_ready_waits_out_a_full_table() {
    let limiter = KeyedRateLimiter::builder(1, SEC)
        .burst(1)
        .max_keys(1)
        .jitter(Duration::ZERO)
        .build::<u32>()
        .unwrap();
    limiter.check_key(&1).unwrap();
    let start = tokio::time::Instant::now();
    let cancelled = tokio::time::timeout(
        ms(400),
        limiter.until_key_ready_before(&2, Deadline::none()),
    )
    .await;
    assert!(cancelled.is_err());
    limiter
        .until_key_ready_before(&2, Deadline::none())
        .await
        .expect("admitted once key 1 rests");
    assert_eq!(start.elapsed(), SEC);
    assert!(limiter.check_key(&2).is_err(), "key 2 took its one cell");
}

// ---------------------------------------------------------------------------------------------
// Retry budget
// ---------------------------------------------------------------------------------------------

/// "Right at any age: a budget built long before its first use, or idle for any time between
/// uses, counts exactly the calls and retries of its last window."
#[test]
fn budget_counts_exactly_its_last_window_after_hour_year_century_idle() {
    let origin = Instant::now();
    let policy = RetryBudgetPolicy::builder()
        .ratio(0.1)
        .min_per_second(0)
        .window(Duration::from_secs(10))
        .buckets(10)
        .build()
        .unwrap();
    let budget = RetryBudget::new(policy, origin);
    let mut now = origin;
    for gap in GAPS {
        now += gap;
        assert_eq!(
            budget.balance(now),
            0,
            "old calls still counted after {gap:?}"
        );
        assert!(!budget.try_withdraw(now));
        for _ in 0..100 {
            budget.deposit(now);
        }
        assert_eq!(budget.balance(now), 10, "after {gap:?}");
        let granted = (0..50).filter(|_| budget.try_withdraw(now)).count();
        assert_eq!(granted, 10, "after {gap:?}");
        assert!(!budget.has_balance(now));
    }
}

/// "concurrent retries can never overdraw the budget, even when they straddle a bucket
/// boundary", and `balance` is "How many retries the budget would grant now, one after
/// another".
#[test]
fn budget_concurrent_withdrawals_never_overdraw_and_balance_predicts_grants() {
    let origin = Instant::now();
    let policy = RetryBudgetPolicy::builder()
        .ratio(0.2)
        .min_per_second(0)
        .window(Duration::from_secs(10))
        .buckets(10)
        .build()
        .unwrap();
    let budget = RetryBudget::new(policy, origin);
    let mut rng = SplitMix64::new(42);
    let mut now = origin + YEAR;
    for round in 0..50 {
        let deposits = rng.below_or_equal(200);
        for _ in 0..deposits {
            budget.deposit(now);
        }
        let expected = budget.balance(now).max(budget.balance(now + NS));
        let at_least = budget.balance(now).min(budget.balance(now + NS));
        let boundary = now;
        let granted = AtomicU64::new(0);
        std::thread::scope(|scope| {
            for t in 0..8_u32 {
                let budget = budget.clone();
                let granted = &granted;
                scope.spawn(move || {
                    for i in 0..40_u32 {
                        // Straddle a bucket boundary: some threads read a nanosecond later.
                        let at = boundary + NS * ((t + i) % 2);
                        if budget.try_withdraw(at) {
                            granted.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                });
            }
        });
        let granted = granted.load(Ordering::SeqCst);
        assert!(
            granted <= expected && granted >= at_least,
            "round {round}: {granted} granted, balance said {at_least}..={expected}"
        );
        assert_eq!(budget.balance(now + NS), 0, "round {round}");
        now += ms(rng.below_or_equal(3_000));
        // Sequentially, the balance is exactly the number of grants.
        let balance = budget.balance(now);
        let mut sequential = 0;
        while budget.try_withdraw(now) {
            sequential += 1;
            assert!(
                sequential <= balance + 1,
                "round {round}: runaway withdrawals"
            );
        }
        assert_eq!(sequential, balance, "round {round}");
    }
}

/// `reconfigure`: "another shape starts an empty window, which only leaves the floor
/// (min_per_second) until calls come in again"; the same shape keeps the counts.
#[test]
fn budget_reconfigure_to_another_shape_starts_empty_and_same_shape_keeps_counts() {
    let origin = Instant::now();
    let shape = |ratio: f64, window: u64| {
        RetryBudgetPolicy::builder()
            .ratio(ratio)
            .min_per_second(0)
            .window(Duration::from_secs(window))
            .buckets(10)
            .build()
            .unwrap()
    };
    let budget = RetryBudget::new(shape(0.1, 10), origin);
    let now = origin + CENTURY;
    (0..100).for_each(|_| budget.deposit(now));
    assert_eq!(budget.balance(now), 10);
    budget.reconfigure(shape(0.5, 10));
    assert_eq!(budget.balance(now), 50, "same shape keeps the 100 calls");
    budget.reconfigure(shape(0.5, 20));
    assert_eq!(budget.balance(now), 0, "another shape starts empty");
    (0..10).for_each(|_| budget.deposit(now));
    assert_eq!(budget.balance(now), 5);
}

// ---------------------------------------------------------------------------------------------
// Second wave: hints after state moves, cancellation inside `call`, CoDel, long sleeps, bounds
// ---------------------------------------------------------------------------------------------

/// Keyed breaker: the `KeysFull` hint "says when the first of them goes idle" -- also after the
/// key that fills the table is used again (its idle time starts over).
#[test]
fn keyed_breaker_keys_full_hint_follows_a_key_used_again() {
    let clock = FakeClock::new();
    let breakers = CircuitBreaker::builder()
        .runtime(clock.clone())
        .consecutive_failures(5)
        .keyed::<&str>()
        .max_keys(1)
        .idle_ttl(Duration::from_secs(10))
        .build()
        .unwrap();
    breakers.try_acquire(&"a").unwrap().failure();
    clock.advance(Duration::from_secs(3));
    assert_eq!(
        keys_full_hint(breakers.try_acquire(&"b")),
        Some(Duration::from_secs(7))
    );
    clock.advance(Duration::from_secs(3));
    breakers.try_acquire(&"a").unwrap().failure();
    let hint = keys_full_hint(breakers.try_acquire(&"b")).expect("a closed key goes idle");
    assert_eq!(hint, Duration::from_secs(10), "a was used again just now");
    clock.advance(hint - NS);
    assert!(breakers.try_acquire(&"b").is_err());
    clock.advance(NS);
    assert!(breakers.try_acquire(&"b").is_ok(), "admitted at the hint");
}

/// "Every outcome decides: ... a success can ... arrive as older successes leave a time
/// window": the success that finds the failure rate over the threshold opens the breaker.
#[test]
fn breaker_success_arriving_as_old_successes_leave_a_time_window_trips_it() {
    let clock = FakeClock::new();
    let breaker = CircuitBreaker::builder()
        .runtime(clock.clone())
        .failure_rate(0.5)
        .minimum_calls(4)
        .window(Window::Time {
            span: Duration::from_secs(10),
            buckets: 10,
        })
        .build()
        .unwrap();
    clock.advance(YEAR);
    for _ in 0..4 {
        breaker.try_acquire().unwrap().success();
    }
    clock.advance(Duration::from_secs(5));
    for _ in 0..3 {
        breaker.try_acquire().unwrap().failure();
    }
    assert_eq!(breaker.state(), State::Closed, "3 of 7 failed");
    // The four successes leave the window; three failures remain (below the minimum).
    clock.advance(Duration::from_secs(6));
    assert_eq!(breaker.counts().calls, 3);
    breaker.try_acquire().unwrap().success();
    assert_eq!(
        breaker.state(),
        State::Open,
        "3 of 4 failed when the success arrived"
    );
}

/// "Cancel safety: dropping the future before op finishes records nothing and gives a
/// half-open probe slot back"; "a permit ... unwound by a panic records nothing and a probe
/// gives its slot back".
#[tokio::test(start_paused = true)]
async fn breaker_call_cancelled_or_panicking_mid_probe_gives_the_slot_back() {
    use futures_util::FutureExt;
    let breaker = CircuitBreaker::builder()
        .consecutive_failures(1)
        .break_duration(SEC)
        .half_open_probes(1)
        .max_half_open_wait(None)
        .build()
        .unwrap();
    breaker.try_acquire().unwrap().failure();
    tokio::time::advance(SEC).await;
    let mut hung = Box::pin(breaker.call(std::future::pending::<Result<(), &str>>));
    assert!(poll_once(hung.as_mut()).is_pending());
    assert!(
        breaker.try_acquire().is_err(),
        "the only probe slot is taken"
    );
    drop(hung);
    let panicked = std::panic::AssertUnwindSafe(breaker.call(|| async {
        panic!("the probe blew up");
        #[allow(unreachable_code)]
        Ok::<(), &str>(())
    }))
    .catch_unwind()
    .await;
    assert!(panicked.is_err());
    assert_eq!(breaker.state(), State::HalfOpen, "nothing recorded");
    breaker
        .call(|| async { Ok::<_, &str>(()) })
        .await
        .expect("the slot came back twice");
    assert_eq!(breaker.state(), State::Closed);
}

/// CoDel: "once the queue has stood for 100 ms, a caller waits 5 ms at most"; a caller that
/// joined before still has its `max_wait`.
#[tokio::test(start_paused = true)]
async fn bulkhead_codel_bounds_waits_only_once_the_queue_has_stood() {
    let bulkhead = Bulkhead::builder(1)
        .max_queue(8)
        .max_wait(SEC)
        .discipline(QueueDiscipline::Codel {
            target: ms(5),
            interval: ms(100),
        })
        .build()
        .unwrap();
    let held = bulkhead.try_acquire_owned().unwrap();
    let start = tokio::time::Instant::now();
    let spawn_waiter = |bulkhead: Bulkhead| {
        tokio::spawn(async move {
            let joined = tokio::time::Instant::now();
            let result = bulkhead.acquire_owned(Deadline::none()).await.map(drop);
            (result, joined.elapsed())
        })
    };
    let early = spawn_waiter(bulkhead.clone());
    tokio::time::sleep(ms(150)).await;
    let late = spawn_waiter(bulkhead.clone());
    let (late_result, late_waited) = late.await.unwrap();
    assert!(late_result.is_err());
    assert!(
        late_waited >= ms(5) && late_waited <= ms(6),
        "joined a standing queue, waited {late_waited:?}"
    );
    let (early_result, early_waited) = early.await.unwrap();
    assert!(early_result.is_err());
    assert!(
        early_waited >= SEC && early_waited <= SEC + MS,
        "joined an empty queue, waited {early_waited:?}"
    );
    assert!(start.elapsed() <= SEC + MS);
    drop(held);
    assert_eq!(bulkhead.available(), 1);
}

/// Waits far longer than a timer wheel spans: a rate-limited wait of ten years ends exactly
/// when the cell is due, a bulkhead `max_wait` of ten years is honoured in full, and a
/// deadline a century away does not end a wait early.
#[tokio::test(start_paused = true)]
async fn waits_of_ten_years_end_exactly_when_due_never_early() {
    let decade = YEAR * 10;
    let limiter = RateLimiter::builder(1, decade)
        .burst(1)
        .jitter(Duration::ZERO)
        .build()
        .unwrap();
    limiter.check().unwrap();
    let start = tokio::time::Instant::now();
    limiter.until_ready().await.unwrap();
    let waited = start.elapsed();
    assert!(
        waited >= decade && waited <= decade + MS,
        "waited {waited:?}"
    );

    let bulkhead = Bulkhead::builder(1)
        .max_queue(2)
        .max_wait(decade)
        .build()
        .unwrap();
    let held = bulkhead.try_acquire_owned().unwrap();
    let start = tokio::time::Instant::now();
    let refused = bulkhead.acquire().await.map(drop);
    assert!(refused.is_err());
    let waited = start.elapsed();
    assert!(
        waited >= decade && waited <= decade + MS,
        "waited {waited:?}"
    );

    let rt = Tokio;
    let far = Deadline::at(rt_now(&rt) + CENTURY);
    let waiter = tokio::spawn({
        let bulkhead = bulkhead.clone();
        async move { bulkhead.acquire_owned(far).await.map(drop) }
    });
    tokio::time::sleep(YEAR * 3).await;
    assert_eq!(bulkhead.queued(), 1, "the waiter gave up before its decade");
    drop(held);
    assert_eq!(waiter.await.unwrap(), Ok(()));
}

/// `max_wait` is "counted from the first refusal": a waiter whose cell is taken by another
/// caller just before it wakes is refused at once if the next cell is past its `max_wait`, with
/// the exact `retry_after`; without a `max_wait` it waits for that next cell.
#[tokio::test(start_paused = true)]
async fn rate_max_wait_counts_from_the_first_refusal_when_a_cell_is_stolen() {
    for max_wait in [Some(ms(1_500)), None] {
        let limiter = RateLimiter::builder(1, SEC)
            .burst(1)
            .jitter(ms(100))
            .seed(5)
            .max_wait(max_wait)
            .build()
            .unwrap();
        limiter.check().unwrap();
        let start = tokio::time::Instant::now();
        let waiter = tokio::spawn({
            let limiter = limiter.clone();
            async move {
                let result = limiter.until_ready().await;
                (result, start.elapsed())
            }
        });
        tokio::task::yield_now().await;
        tokio::time::advance(SEC).await;
        // Jitter delays the waiter past 1 s (a seeded delay above zero): steal the cell.
        limiter.check().expect("the cell at 1 s");
        let (result, waited) = waiter.await.unwrap();
        match max_wait {
            Some(max_wait) => {
                let Err(Rejected::RateLimited { retry_after }) = result else {
                    panic!("expected a refusal, got {result:?} after {waited:?}");
                };
                assert!(waited <= max_wait, "waited {waited:?}");
                assert_eq!(
                    waited + retry_after,
                    Duration::from_secs(2),
                    "the next cell is at 2 s"
                );
            }
            None => {
                result.expect("waits for the next cell");
                assert!(waited >= Duration::from_secs(2), "waited {waited:?}");
            }
        }
    }
}

/// "The most keys held at once, a hard bound (... any usize but zero ...)": a single-shard
/// table (up to 511 keys) holds exactly `max_keys` busy keys, a multi-shard one a few percent
/// fewer at most, and `usize::MAX` is accepted.
#[test]
fn keyed_tables_hold_at_most_max_keys_busy_keys_and_accept_usize_max() {
    for (max_keys, at_least) in [(1_usize, 1_usize), (100, 100), (511, 511), (2_000, 1_800)] {
        let clock = FakeClock::new();
        let rate = KeyedRateLimiter::builder(1, HOUR)
            .burst(1)
            .max_keys(max_keys)
            .runtime(clock.clone())
            .build::<usize>()
            .unwrap();
        let admitted = (0..max_keys * 2)
            .filter(|k| rate.check_key(k).is_ok())
            .count();
        assert!(
            (at_least..=max_keys).contains(&admitted),
            "rate: {admitted} busy keys held under max_keys {max_keys}"
        );

        let bulkheads = Bulkhead::builder(1)
            .reject_when_full()
            .keyed()
            .max_keys(max_keys)
            .build::<usize>()
            .unwrap();
        let held: Vec<_> = (0..max_keys * 2)
            .filter_map(|k| bulkheads.try_acquire(&k).ok())
            .collect();
        assert!(
            (at_least..=max_keys).contains(&held.len()),
            "bulkhead: {} busy keys held under max_keys {max_keys}",
            held.len()
        );

        let breakers = CircuitBreaker::builder()
            .runtime(clock.clone())
            .consecutive_failures(1)
            .keyed::<usize>()
            .max_keys(max_keys)
            .build()
            .unwrap();
        let mut opened = 0;
        for k in 0..max_keys * 2 {
            if let Ok(permit) = breakers.try_acquire(&k) {
                permit.failure();
                opened += 1;
            }
        }
        assert!(
            (at_least..=max_keys).contains(&opened),
            "breaker: {opened} open keys held under max_keys {max_keys}"
        );
    }
    let rate = KeyedRateLimiter::builder(1, SEC)
        .max_keys(usize::MAX)
        .build::<u32>()
        .unwrap();
    assert!((0..1_000).all(|k| rate.check_key(&k).is_ok()));
    let bulkheads = Bulkhead::builder(1)
        .keyed()
        .max_keys(usize::MAX)
        .build::<u32>()
        .unwrap();
    let held: Vec<_> = (0..1_000)
        .map(|k| bulkheads.try_acquire(&k).unwrap())
        .collect();
    drop(held);
    let breakers = CircuitBreaker::builder()
        .keyed::<u32>()
        .max_keys(usize::MAX)
        .idle_ttl(Duration::MAX)
        .build();
    assert!(
        matches!(breakers, Err(ConfigError::DurationOverflow { .. })),
        "an idle_ttl above u64::MAX ns is documented as DurationOverflow"
    );
    let breakers = CircuitBreaker::builder()
        .keyed::<u32>()
        .max_keys(usize::MAX)
        .build()
        .unwrap();
    assert!((0..1_000).all(|k| breakers.try_acquire(&k).is_ok()));
}

/// `reconfigure` with a window of the same shape: "an open breaker stays open until its break
/// ends (the next break follows the new schedule)"; a keyed table's reconfigure "Returns how
/// many keys' breakers were reset".
#[test]
fn breaker_reconfigure_keeps_an_open_break_then_follows_the_new_schedule() {
    let clock = FakeClock::new();
    let breaker = CircuitBreaker::builder()
        .runtime(clock.clone())
        .consecutive_failures(1)
        .break_duration(Duration::from_secs(10))
        .half_open_probes(1)
        .build()
        .unwrap();
    breaker.try_acquire().unwrap().failure();
    clock.advance(Duration::from_secs(4));
    let how = breaker
        .reconfigure(
            CircuitBreaker::builder()
                .consecutive_failures(1)
                .break_duration(SEC)
                .half_open_probes(1),
        )
        .unwrap();
    assert_eq!(how, tidewall::breaker::Reconfigured::Kept);
    assert_eq!(
        circuit_open_hint(breaker.try_acquire()),
        Duration::from_secs(6)
    );
    clock.advance(Duration::from_secs(6) - NS);
    assert!(breaker.try_acquire().is_err(), "the old break still holds");
    clock.advance(NS);
    breaker.try_acquire().expect("probe").failure();
    assert_eq!(
        circuit_open_hint(breaker.try_acquire()),
        SEC,
        "the new schedule"
    );

    let keyed = CircuitBreaker::builder()
        .runtime(clock.clone())
        .consecutive_failures(1)
        .keyed::<u8>()
        .build()
        .unwrap();
    for key in 0..5 {
        let permit = keyed.try_acquire(&key).unwrap();
        if key % 2 == 0 {
            permit.failure();
        } else {
            permit.success();
        }
    }
    let reset = keyed
        .reconfigure(
            CircuitBreaker::builder()
                .minimum_calls(5)
                .window(Window::Count { calls: 20 }),
        )
        .unwrap();
    assert_eq!(reset, 5, "every held key's window changed shape");
    assert!((0..5).all(|key| keyed.state(&key) != Some(State::Open)));
}

/// Rate `reconfigure`: "the time owed is rounded up, so changes back and forth never round
/// cells away" -- a hundred flips between intervals that do not divide each other.
#[test]
fn rate_reconfigure_back_and_forth_never_rounds_cells_away() {
    let clock = FakeClock::new();
    let a = || RateLimiter::builder(1, Duration::from_millis(3)).burst(10);
    let b = || RateLimiter::builder(1, Duration::from_millis(7)).burst(10);
    let limiter = a().runtime(clock.clone()).build().unwrap();
    let mut rng = SplitMix64::new(77);
    limiter.check_n(10).unwrap();
    let mut floor = 0_u32;
    for flip in 0..200 {
        if flip % 2 == 0 {
            limiter.reconfigure(b()).unwrap();
        } else {
            limiter.reconfigure(a()).unwrap();
        }
        let available = limiter.available();
        assert!(
            available <= floor,
            "flip {flip}: {available} cells available after the debt was rescaled, had {floor}"
        );
        floor = available;
        // Sometimes let a little time pass (less than a cell) between flips.
        if rng.below_or_equal(3) == 0 {
            clock.advance(Duration::from_micros(rng.below_or_equal(900)));
            floor = limiter.available();
        }
    }
}

/// "A full bucket (16.7 M calls) stops counting, which only ever makes the budget stricter"
/// and the accounting is "exact integer arithmetic": deposits past a bucket's capacity must not
/// spill into its retries or wrap around, and two full buckets count twice one.
#[test]
fn budget_full_bucket_saturates_without_wrapping_or_loosening() {
    let origin = Instant::now();
    let policy = RetryBudgetPolicy::builder()
        .ratio(0.1)
        .min_per_second(0)
        .window(Duration::from_secs(10))
        .buckets(10)
        .build()
        .unwrap();
    let budget = RetryBudget::new(policy, origin);
    let full = 16_777_215_u64;
    let now = origin + HOUR;
    for _ in 0..full {
        budget.deposit(now);
    }
    let at_capacity = budget.balance(now);
    assert!(
        at_capacity >= full / 10 - 1 && at_capacity <= full / 10 + 1,
        "{at_capacity}"
    );
    for _ in 0..1_000 {
        budget.deposit(now);
    }
    assert_eq!(
        budget.balance(now),
        at_capacity,
        "a full bucket stops counting"
    );
    assert!(budget.try_withdraw(now));
    assert_eq!(budget.balance(now), at_capacity - 1);
    let next = now + SEC;
    for _ in 0..full {
        budget.deposit(next);
    }
    let two = budget.balance(next);
    assert!(
        two + 2 >= 2 * at_capacity && two <= 2 * at_capacity,
        "two full buckets: {two}, one: {at_capacity}"
    );
}

/// `until_ready_before`: "Waits until one cell is admitted, but not past deadline", and
/// `max_wait` is "The longest a caller waits for cells": the jitter added to a wait that ends
/// before either bound must not carry the caller past it.
#[tokio::test(start_paused = true)]
async fn rate_jitter_never_carries_a_wait_past_its_deadline_or_max_wait() {
    let rt = Tokio;
    for seed in 0..16_u64 {
        let limiter = RateLimiter::builder(1, SEC)
            .burst(1)
            .jitter(ms(500))
            .seed(seed)
            .build()
            .unwrap();
        limiter.check().unwrap();
        let start = tokio::time::Instant::now();
        let result = limiter
            .until_ready_before(Deadline::after(&rt, ms(1_100)))
            .await;
        let waited = start.elapsed();
        assert!(
            waited <= ms(1_100),
            "seed {seed}: waited {waited:?} ({result:?}) for a deadline of 1.1 s"
        );
        assert_eq!(
            result,
            Ok(()),
            "seed {seed}: the cell was due at 1 s, inside the deadline"
        );

        let limiter = RateLimiter::builder(1, SEC)
            .burst(1)
            .jitter(ms(500))
            .seed(seed)
            .max_wait(ms(1_100))
            .build()
            .unwrap();
        limiter.check().unwrap();
        let start = tokio::time::Instant::now();
        let result = limiter.until_ready().await;
        let waited = start.elapsed();
        assert!(
            waited <= ms(1_100),
            "seed {seed}: waited {waited:?} ({result:?}) under a max_wait of 1.1 s"
        );
    }
}

/// "a failure that opens it keeps it open for its break or the hint, whichever is longer" --
/// also the failed half-open probe that reopens it; a hint on a success or an ignored outcome
/// opens nothing.
#[test]
fn breaker_hint_of_a_failed_probe_holds_the_reopened_breaker() {
    let clock = FakeClock::new();
    let breaker = CircuitBreaker::builder()
        .runtime(clock.clone())
        .consecutive_failures(1)
        .break_duration(SEC)
        .half_open_probes(1)
        .max_open_hint(Duration::from_secs(120))
        .build()
        .unwrap();
    let hinted = Some(Duration::from_secs(30));
    breaker
        .try_acquire()
        .unwrap()
        .record_hinted(Outcome::Success, hinted);
    breaker
        .try_acquire()
        .unwrap()
        .record_hinted(Outcome::Ignored, hinted);
    assert_eq!(breaker.state(), State::Closed);
    breaker.try_acquire().unwrap().failure();
    clock.advance(SEC);
    breaker
        .try_acquire()
        .expect("probe")
        .record_hinted(Outcome::Failure, hinted);
    assert_eq!(
        circuit_open_hint(breaker.try_acquire()),
        Duration::from_secs(30)
    );
    clock.advance(Duration::from_secs(30) - NS);
    assert!(
        breaker.try_acquire().is_err(),
        "the probe's hint holds it open"
    );
    clock.advance(NS);
    assert!(breaker.try_acquire().is_ok());
}

/// `StateChange::generation`: "one more on every transition"; and with N probes succeeding
/// on N threads at once, the breaker closes exactly once.
#[test]
fn breaker_state_changes_carry_consecutive_generations_and_close_once_under_races() {
    let clock = FakeClock::new();
    let changes = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&changes);
    let breaker = CircuitBreaker::builder()
        .runtime(clock.clone())
        .consecutive_failures(1)
        .break_duration(SEC)
        .half_open_probes(8)
        .max_half_open_wait(None)
        .on_state_change(move |change| {
            seen.lock()
                .unwrap()
                .push((change.from, change.to, change.generation));
        })
        .build()
        .unwrap();
    for _ in 0..50 {
        breaker.try_acquire().unwrap().failure();
        clock.advance(SEC);
        let probes: Vec<_> = (0..8)
            .map(|_| breaker.try_acquire_owned().expect("probe"))
            .collect();
        std::thread::scope(|scope| {
            for probe in probes {
                scope.spawn(move || probe.success());
            }
        });
        assert_eq!(breaker.state(), State::Closed);
    }
    breaker.force_open();
    breaker.force_closed();
    breaker.reset();
    let mut changes = changes.lock().unwrap().clone();
    changes.sort_by_key(|&(_, _, generation)| generation);
    let closes = changes
        .iter()
        .filter(|&&(from, to, _)| from == State::HalfOpen && to == State::Closed)
        .count();
    assert_eq!(closes, 50, "each half-open period closes exactly once");
    for pair in changes.windows(2) {
        assert_eq!(
            pair[1].2,
            pair[0].2.wrapping_add(1),
            "generations skip or repeat: {pair:?}"
        );
        assert_eq!(pair[0].1, pair[1].0, "transitions do not chain: {pair:?}");
    }
}

/// Keyed `max_wait`, "as RateLimiterBuilder::max_wait says": "a wait that would end later is
/// refused at once with Rejected::RateLimited and its retry_after ... rather than waiting" --
/// for a new key waiting on a full table, whether or not a new key was refused before.
#[tokio::test(start_paused = true)]
async fn keyed_rate_max_wait_refuses_at_once_a_new_key_whose_table_wait_is_too_long() {
    for primed in [false, true] {
        let limiter = KeyedRateLimiter::builder(1, SEC)
            .burst(3)
            .max_keys(1)
            .jitter(Duration::ZERO)
            .max_wait(ms(2_500))
            .build::<&str>()
            .unwrap();
        limiter.check_key_n(&"a", 3).unwrap();
        tokio::time::advance(ms(300)).await;
        if primed {
            // A new key refused while "a" rests at 3 s.
            assert_eq!(rate_hint(limiter.check_key(&"b")), ms(2_700));
        }
        tokio::time::advance(ms(700)).await;
        limiter.check_key(&"a").unwrap(); // "a" now rests at 4 s: 3 s away
        let start = tokio::time::Instant::now();
        let result = limiter.until_key_ready_before(&"b", Deadline::none()).await;
        let waited = start.elapsed();
        assert_eq!(
            (result, waited),
            (
                Err(Rejected::RateLimited {
                    retry_after: Duration::from_secs(3)
                }),
                Duration::ZERO
            ),
            "primed: {primed}"
        );
    }
}
