//! Hostile black-box tests of `tidewall-core`, written from its rustdoc alone (no look at the
//! implementation): backoff schedules and `DelayState` (the cap after jitter, the first delay,
//! attempt counts at `u32::MAX`, `Duration::MAX`, factors at their edges, typed builder errors),
//! GCRA (the burst sentence over random arrival gaps from zero to centuries, exact wait hints,
//! time going backwards, states at the `u64` limit), breaker thresholds and the packed window
//! words (exact parts-per-million comparisons, minimum calls, stamped buckets that must expire
//! after any idle gap and never go dead), the retry budget's integer math, quantile bounds,
//! the rng's ranges, the human duration grammar (every form, near misses, an exact model of
//! token soups, printing round trips) and `ConfigError`'s messages.

use core::num::NonZeroU32;
use core::time::Duration;
use std::panic::{AssertUnwindSafe, catch_unwind};

use proptest::prelude::*;
use tidewall_core::ConfigError;
use tidewall_core::backoff::{Backoff, DEFAULT_MAX_ATTEMPTS, DEFAULT_MAX_DELAY, Jitter};
use tidewall_core::breaker::window::{Bucket, SWEEP_EVERY, slot_code, totals_delta, unpack_totals};
use tidewall_core::breaker::{
    BreakerPolicy, Counts, MAX_BUCKETS, MAX_COUNT_WINDOW, MAX_HALF_OPEN_PROBES, PPM, Thresholds,
    TripReason, Window,
};
use tidewall_core::budget::RetryBudgetPolicy;
use tidewall_core::duration::{DurationError, HumanDuration, parse};
use tidewall_core::gcra::{Denied, Gcra, Resolution, emission_interval};
use tidewall_core::quantile::{BUCKETS, bucket_of, bucket_upper, quantile};
use tidewall_core::rng::SplitMix64;

const SEC: u64 = 1_000_000_000;
const HOUR_NS: u64 = 3_600 * SEC;
const YEAR_NS: u64 = 365 * 24 * HOUR_NS;
const CENTURY_NS: u64 = 100 * YEAR_NS;

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).expect("fits in u64 ns")
}

/// Modest case counts (the CI fixes the seed); no regression file is written next to the tests.
fn cfg(cases: u32) -> ProptestConfig {
    ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::with_cases(cases)
    }
}

fn jitter_of(i: u8) -> Jitter {
    match i % 3 {
        0 => Jitter::None,
        1 => Jitter::Full,
        _ => Jitter::Equal,
    }
}

// ---------------------------------------------------------------------------------------------
// Backoff
// ---------------------------------------------------------------------------------------------

/// The raw (un-jittered) delay of retry `n` for the integer-valued schedules, saturating in
/// u128 and capped (the documented table, then the documented cap).
fn raw_model(kind: u8, initial: u64, step: u64, factor: u64, n: u32, cap: u64) -> u64 {
    let initial = u128::from(initial);
    let raw: u128 = match kind {
        0 => initial,
        1 => initial.saturating_add(u128::from(step).saturating_mul(u128::from(n))),
        _ => {
            let mut v = initial;
            for _ in 0..n {
                v = v.saturating_mul(u128::from(factor));
                if v >= u128::from(cap) {
                    break;
                }
            }
            v
        }
    };
    u64::try_from(raw.min(u128::from(cap))).expect("capped")
}

proptest! {
    #![proptest_config(cfg(256))]

    /// Module docs: "`max_delay` caps the *jittered* value, so no delay ever exceeds the cap";
    /// "the iterator yields at most `max_attempts − 1` items, and the sum of yielded delays
    /// never exceeds `max_elapsed`"; jitter Full is in `[0, d]`, Equal in `[d/2, d]`.
    #[test]
    fn every_delay_is_within_zero_and_cap_and_inside_its_jitter_band(
        kind in 0u8..3,
        initial in prop_oneof![Just(0u64), 1u64..=5 * SEC],
        step in prop_oneof![Just(0u64), 1u64..=5 * SEC, Just(u64::MAX / 3)],
        factor in 1u64..=10,
        extra_cap in prop_oneof![Just(0u64), 1u64..=60 * SEC, Just(u64::MAX)],
        jitter in 0u8..3,
        attempts in 1u32..=40,
        budget in proptest::option::of(0u64..=200 * SEC),
        seed in any::<u64>(),
    ) {
        let cap = initial.saturating_add(extra_cap).max(1);
        let d = |v: u64| Duration::from_nanos(v);
        let builder = match kind {
            0 => Backoff::constant(d(initial)),
            1 => Backoff::linear(d(initial), d(step)),
            _ => Backoff::exponential(d(initial)).factor(f64::from(u32::try_from(factor).unwrap())),
        };
        let mut builder = builder.jitter(jitter_of(jitter)).max_delay(d(cap)).max_attempts(attempts);
        if let Some(b) = budget {
            builder = builder.max_elapsed(d(b));
        }
        let backoff = builder.build().expect("a valid configuration");
        let delays: Vec<Duration> = backoff.delays(seed).collect();
        prop_assert!(delays.len() <= usize::try_from(attempts - 1).unwrap());
        let mut sum = 0u128;
        for (n, delay) in delays.iter().enumerate() {
            let raw = raw_model(kind, initial, step, factor, u32::try_from(n).unwrap(), cap);
            let v = nanos(*delay);
            prop_assert!(v <= cap, "delay {v} above cap {cap}");
            match jitter_of(jitter) {
                Jitter::None => prop_assert_eq!(v, raw, "retry {}", n),
                Jitter::Full => prop_assert!(v <= raw, "full jitter {v} above raw {raw}"),
                Jitter::Equal => prop_assert!(raw / 2 <= v && v <= raw, "equal jitter {v} outside [{}, {raw}]", raw / 2),
                other => prop_assert!(false, "unexpected jitter {:?}", other),
            }
            sum += delay.as_nanos();
        }
        if let Some(b) = budget {
            prop_assert!(sum <= u128::from(b), "sum {sum} above max_elapsed {b}");
        } else if jitter_of(jitter) == Jitter::None {
            prop_assert_eq!(delays.len(), usize::try_from(attempts - 1).unwrap());
        }
    }

    /// `Backoff::next_delay`: "Advances `state` and returns the next delay, exactly as
    /// [`Delays`] would"; `retries_yielded` counts them; the iterator is fused.
    #[test]
    fn delay_state_walk_matches_delays_iterator_and_is_fused(
        kind in 0u8..4,
        initial in 0u64..=2 * SEC,
        jitter in 0u8..3,
        attempts in 1u32..=30,
        seed in any::<u64>(),
    ) {
        let d = Duration::from_nanos(initial);
        let builder = match kind {
            0 => Backoff::constant(d).jitter(jitter_of(jitter)),
            1 => Backoff::linear(d, d).jitter(jitter_of(jitter)),
            2 => Backoff::exponential(d).factor(1.7).jitter(jitter_of(jitter)),
            _ => Backoff::decorrelated_jitter(d),
        };
        let backoff = builder.max_delay(Duration::from_secs(40)).max_attempts(attempts).build().unwrap();
        let mut iter = backoff.delays(seed);
        let mut state = backoff.start(seed);
        loop {
            let a = iter.next();
            let b = backoff.next_delay(&mut state);
            prop_assert_eq!(a, b);
            prop_assert_eq!(iter.retries_yielded(), state.retries_yielded());
            if a.is_none() {
                break;
            }
        }
        prop_assert_eq!(state.retries_yielded(), attempts - 1);
        for _ in 0..5 {
            prop_assert_eq!(iter.next(), None);
            prop_assert_eq!(backoff.next_delay(&mut state), None);
        }
    }

    /// Decorrelated jitter: "each delay is random in `initial ..= 3 × previous`, capped", with
    /// `initial` "the smallest delay, and the first previous", in saturating arithmetic.
    #[test]
    fn decorrelated_delays_stay_between_initial_and_three_times_previous_capped(
        initial in prop_oneof![Just(1u64), 1u64..=SEC, (u64::MAX / 4)..=(u64::MAX / 2)],
        extra_cap in prop_oneof![Just(0u64), 1u64..=100 * SEC, Just(u64::MAX)],
        seed in any::<u64>(),
    ) {
        let cap = initial.saturating_add(extra_cap).max(1);
        let backoff = Backoff::decorrelated_jitter(Duration::from_nanos(initial))
            .max_delay(Duration::from_nanos(cap))
            .max_attempts(60)
            .build()
            .unwrap();
        let mut previous = initial;
        for delay in backoff.delays(seed) {
            let v = nanos(delay);
            prop_assert!(v >= initial.min(cap), "{v} below initial {initial}");
            prop_assert!(v <= cap);
            prop_assert!(u128::from(v) <= (3 * u128::from(previous)).max(u128::from(initial)), "{v} above 3 × {previous}");
            previous = v;
        }
    }

    /// `BackoffBuilder::build`: "ConfigError for zero attempts, a zero cap, a factor below 1 or
    /// not finite, a duration above u64::MAX nanoseconds, an initial delay above the cap, or a
    /// jitter mode set on decorrelated jitter" — and a typed error, never a panic, for anything.
    #[test]
    fn backoff_builder_never_panics_and_errors_are_exactly_the_documented_ones(
        kind in 0u8..4,
        initial_s in prop_oneof![Just(0u64), 0u64..=100, Just(u64::MAX)],
        initial_n in prop_oneof![Just(0u32), Just(999_999_999u32)],
        factor_bits in prop_oneof![any::<u64>(), Just(f64::NAN.to_bits()), Just(f64::INFINITY.to_bits()), Just(0.999_999_f64.to_bits()), Just(1.0f64.to_bits()), Just(f64::MAX.to_bits())],
        cap_s in prop_oneof![Just(0u64), 0u64..=200, Just(u64::MAX)],
        attempts in prop_oneof![Just(0u32), 1u32..=10, Just(u32::MAX)],
        elapsed_s in proptest::option::of(prop_oneof![Just(0u64), 0u64..=100, Just(u64::MAX)]),
        set_jitter in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let initial = Duration::new(initial_s, initial_n);
        let cap = Duration::from_secs(cap_s);
        let factor = f64::from_bits(factor_bits);
        let result = catch_unwind(AssertUnwindSafe(|| {
            let mut b = match kind {
                0 => Backoff::constant(initial),
                1 => Backoff::linear(initial, initial),
                2 => Backoff::exponential(initial),
                _ => Backoff::decorrelated_jitter(initial),
            };
            b = b.factor(factor).max_delay(cap).max_attempts(attempts);
            if set_jitter {
                b = b.jitter(Jitter::Equal);
            }
            if let Some(e) = elapsed_s {
                b = b.max_elapsed(Duration::from_secs(e));
            }
            b.build()
        }));
        let built = result.map_err(|_| TestCaseError::fail("build panicked"))?;
        let too_big = |d: Duration| d.as_nanos() > u128::from(u64::MAX);
        let bad_factor = kind == 2 && (!factor.is_finite() || factor < 1.0);
        let should_fail = attempts == 0
            || cap.is_zero()
            || bad_factor
            || too_big(initial)
            || too_big(cap)
            || elapsed_s.is_some_and(|e| too_big(Duration::from_secs(e)))
            || (!too_big(initial) && !too_big(cap) && initial > cap)
            || (kind == 3 && set_jitter)
            // Not in the documented list, but a typed error (reported as a doc gap): a zero
            // decorrelated initial delay would stay zero forever.
            || (kind == 3 && initial.is_zero());
        match built {
            Ok(backoff) => {
                prop_assert!(!should_fail, "accepted an invalid configuration: {:?}", backoff);
                let walk = catch_unwind(AssertUnwindSafe(|| {
                    backoff.delays(seed).take(200).all(|d| d <= backoff.max_delay_cap())
                }));
                prop_assert_eq!(walk.ok(), Some(true), "a delay above the cap, or a panic");
            }
            Err(e) => prop_assert!(should_fail, "refused a valid configuration: {e}"),
        }
    }
}

/// Lib docs and the schedule table: "delay before retry n (n = 0, 1, ...)" is `delay`,
/// `initial + n × step`, `initial × factor^n`: the *first* delay is the initial delay itself.
#[test]
fn first_delay_is_exactly_the_initial_delay_for_every_deterministic_schedule() {
    let initial = Duration::from_millis(70);
    let builders = [
        Backoff::constant(initial),
        Backoff::linear(initial, Duration::from_millis(30)),
        Backoff::exponential(initial).factor(3.0),
    ];
    for b in builders {
        let backoff = b.jitter(Jitter::None).build().unwrap();
        assert_eq!(backoff.delays(1).next(), Some(initial), "{backoff:?}");
        let mut state = backoff.start(1);
        assert_eq!(backoff.next_delay(&mut state), Some(initial));
    }
    // Defaults, as documented: full jitter, 30 s cap, 4 attempts, factor 2, no elapsed budget.
    let backoff = Backoff::exponential(initial).build().unwrap();
    assert_eq!(backoff.jitter_mode(), Jitter::Full);
    assert_eq!(backoff.max_delay_cap(), DEFAULT_MAX_DELAY);
    assert_eq!(backoff.max_attempts_total(), DEFAULT_MAX_ATTEMPTS);
    assert_eq!(backoff.max_elapsed_budget(), None);
    assert_eq!(Jitter::default(), Jitter::Full);
}

/// `Schedule::Exponential`: "kept as f64 so a fractional factor compounds exactly"; 1.5^n × 100
/// ms is a whole number of nanoseconds for n ≤ 8, so nothing may be lost.
#[test]
fn fractional_factor_compounds_exactly() {
    let backoff = Backoff::exponential(Duration::from_millis(100))
        .factor(1.5)
        .jitter(Jitter::None)
        .max_delay(Duration::from_secs(3_600))
        .max_attempts(10)
        .build()
        .unwrap();
    let got: Vec<u64> = backoff.delays(0).map(nanos).collect();
    let want = [
        100_000_000u64,
        150_000_000,
        225_000_000,
        337_500_000,
        506_250_000,
        759_375_000,
        1_139_062_500,
        1_708_593_750,
        2_562_890_625,
    ];
    assert_eq!(got, want);
}

/// "All arithmetic is in saturating u64 nanoseconds, so extreme settings cannot overflow":
/// the largest cap, the largest finite factor and `u32::MAX` attempts.
#[test]
fn extreme_factor_cap_and_attempts_saturate_at_the_cap_without_panic() {
    let cap = Duration::from_nanos(u64::MAX);
    for jitter in [Jitter::None, Jitter::Full, Jitter::Equal] {
        let backoff = Backoff::exponential(Duration::from_nanos(1))
            .factor(f64::MAX)
            .jitter(jitter)
            .max_delay(cap)
            .max_attempts(u32::MAX)
            .build()
            .unwrap();
        let delays: Vec<Duration> = backoff.delays(9).take(20_000).collect();
        assert_eq!(
            delays.len(),
            20_000,
            "u32::MAX attempts do not run out early"
        );
        assert!(delays.iter().all(|d| *d <= cap));
        if jitter == Jitter::None {
            assert_eq!(delays[0], Duration::from_nanos(1));
            assert!(delays[1..].iter().all(|d| *d == cap), "{:?}", &delays[..4]);
        }
    }
    // A linear step of u64::MAX / 2 nanoseconds saturates at the cap too.
    let backoff = Backoff::linear(
        Duration::from_nanos(u64::MAX / 2),
        Duration::from_nanos(u64::MAX / 2),
    )
    .jitter(Jitter::None)
    .max_delay(cap)
    .max_attempts(u32::MAX)
    .build()
    .unwrap();
    let delays: Vec<u64> = backoff.delays(0).take(5).map(nanos).collect();
    assert_eq!(
        delays,
        [u64::MAX / 2, u64::MAX - 1, u64::MAX, u64::MAX, u64::MAX]
    );
    // Factor 1: a constant exponential schedule, any number of times.
    let backoff = Backoff::exponential(Duration::from_millis(3))
        .factor(1.0)
        .jitter(Jitter::None)
        .max_attempts(u32::MAX)
        .build()
        .unwrap();
    assert!(
        backoff
            .delays(0)
            .take(10_000)
            .all(|d| d == Duration::from_millis(3))
    );
}

/// `Delays`: "the sum of yielded delays never exceeds `max_elapsed`" and "All arithmetic is in
/// saturating `u64` nanoseconds": with the largest budget (`u64::MAX` ns, which the builder
/// accepts) the running sum must not saturate into "still within budget" — two delays of
/// `u64::MAX / 2` ns fill it, a third would pass it.
#[test]
fn max_elapsed_at_u64_max_still_ends_the_schedule_when_the_sum_saturates() {
    let cap = Duration::from_nanos(u64::MAX);
    let backoff = Backoff::constant(Duration::from_nanos(u64::MAX / 2))
        .jitter(Jitter::None)
        .max_delay(cap)
        .max_attempts(u32::MAX)
        .max_elapsed(cap)
        .build()
        .unwrap();
    let yielded: Vec<Duration> = backoff.delays(0).take(10).collect();
    let sum: u128 = yielded.iter().map(Duration::as_nanos).sum();
    assert!(
        sum <= u128::from(u64::MAX),
        "{} delays summing to {sum} ns, above max_elapsed {}",
        yielded.len(),
        u64::MAX
    );
    assert_eq!(yielded.len(), 2);
}

/// "`max_elapsed` ends the schedule before the sum of delays would exceed it": a sum equal to
/// the budget is allowed, one nanosecond more is not; a zero delay never spends the budget.
#[test]
fn max_elapsed_stops_exactly_before_the_sum_would_exceed_it() {
    let step = Duration::from_millis(10);
    for (budget_ms, want) in [(0u64, 0usize), (9, 0), (10, 1), (29, 2), (30, 3), (31, 3)] {
        let backoff = Backoff::constant(step)
            .jitter(Jitter::None)
            .max_attempts(100)
            .max_elapsed(Duration::from_millis(budget_ms))
            .build()
            .unwrap();
        assert_eq!(backoff.delays(0).count(), want, "budget {budget_ms} ms");
    }
    let backoff = Backoff::constant(Duration::ZERO)
        .max_attempts(7)
        .max_elapsed(Duration::ZERO)
        .build()
        .unwrap();
    assert_eq!(backoff.delays(0).collect::<Vec<_>>(), [Duration::ZERO; 6]);
}

/// `cap_attempts`: "it lowers the count, never raises it"; `Backoff` is `Copy` and every call
/// to `delays` is a fresh, independent schedule; same seed, same delays.
#[test]
fn cap_attempts_only_lowers_and_schedules_are_independent_and_seeded() {
    let backoff = Backoff::exponential(Duration::from_millis(10))
        .max_attempts(9)
        .build()
        .unwrap();
    for n in [1u32, 2, 8, 9, 10, u32::MAX] {
        let capped = backoff.cap_attempts(NonZeroU32::new(n).unwrap());
        assert_eq!(capped.max_attempts_total(), n.min(9));
        assert_eq!(
            capped.delays(5).count(),
            usize::try_from(n.min(9) - 1).unwrap()
        );
    }
    let a: Vec<Duration> = backoff.delays(123).collect();
    let mut it = backoff.delays(123);
    it.next();
    assert_eq!(a, backoff.delays(123).collect::<Vec<_>>());
    let differs = (0..20u64).any(|s| backoff.delays(s).collect::<Vec<_>>() != a);
    assert!(differs, "jitter ignores its seed");
}

/// `BackoffBuilder::build` errors, each with its typed variant and the builder's field name.
#[test]
fn backoff_builder_rejects_each_bad_setting_with_the_right_typed_error() {
    let ms = Duration::from_millis;
    let e = |r: Result<Backoff, ConfigError>| r.expect_err("must be refused");
    assert!(matches!(
        e(Backoff::constant(ms(1)).max_attempts(0).build()),
        ConfigError::Zero {
            field: "max_attempts"
        }
    ));
    assert!(matches!(
        e(Backoff::constant(ms(1)).max_delay(Duration::ZERO).build()),
        ConfigError::Zero { field: "max_delay" }
    ));
    for f in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        assert!(
            matches!(
                e(Backoff::exponential(ms(1)).factor(f).build()),
                ConfigError::NotFinite { field: "factor" }
            ),
            "{f}"
        );
    }
    for f in [0.999_999_999, 0.0, -0.0, -2.0, f64::MIN_POSITIVE] {
        assert!(
            matches!(
                e(Backoff::exponential(ms(1)).factor(f).build()),
                ConfigError::OutOfRange {
                    field: "factor",
                    ..
                }
            ),
            "{f}"
        );
    }
    let huge = Duration::from_nanos(u64::MAX) + Duration::from_nanos(1);
    assert!(matches!(
        e(Backoff::constant(huge).max_delay(Duration::MAX).build()),
        ConfigError::DurationOverflow { .. }
    ));
    assert!(matches!(
        e(Backoff::constant(ms(1)).max_delay(huge).build()),
        ConfigError::DurationOverflow { field: "max_delay" }
    ));
    assert!(matches!(
        e(Backoff::constant(ms(1)).max_elapsed(Duration::MAX).build()),
        ConfigError::DurationOverflow {
            field: "max_elapsed"
        }
    ));
    assert!(matches!(
        e(Backoff::linear(ms(1), Duration::MAX).build()),
        ConfigError::DurationOverflow { .. }
    ));
    assert!(matches!(
        e(Backoff::constant(ms(31_000)).build()),
        ConfigError::Conflict { .. }
    ));
    // "setting a jitter mode on it is rejected": any mode, the default one included.
    for j in [Jitter::None, Jitter::Full, Jitter::Equal] {
        assert!(
            matches!(
                e(Backoff::decorrelated_jitter(ms(1)).jitter(j).build()),
                ConfigError::Conflict { .. }
            ),
            "{j:?}"
        );
    }
    // The factor is "ignored by the other schedules".
    assert!(Backoff::constant(ms(1)).factor(f64::NAN).build().is_ok());
}

// ---------------------------------------------------------------------------------------------
// GCRA
// ---------------------------------------------------------------------------------------------

/// A gap between arrivals, from none to centuries.
fn gap() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => Just(0u64),
        4 => 0u64..=50_000_000,
        2 => 0u64..=10 * SEC,
        1 => Just(HOUR_NS),
        1 => Just(YEAR_NS),
        1 => Just(CENTURY_NS),
        1 => any::<u64>(),
    ]
}

proptest! {
    #![proptest_config(cfg(256))]

    /// The burst sentence: "over any span `d` starting from rest it admits at most
    /// `burst + floor(d / interval)` cells" — checked over every pair of admissions (any span
    /// starts no better than from rest), with arrival gaps from zero to centuries, states up to
    /// `u64::MAX`; `max_admitted` is that formula; a denial's wait is exact.
    #[test]
    fn gcra_never_admits_more_than_burst_plus_rate_times_span(
        count in 1u32..=1_000,
        period_ms in 1u64..=10_000,
        burst in 1u32..=12,
        arrivals in proptest::collection::vec((gap(), 0u32..=4), 1..60),
        start in prop_oneof![Just(0u64), any::<u64>()],
    ) {
        let Ok(gcra) = Gcra::new(count, Duration::from_millis(period_ms), burst) else {
            return Ok(()); // a rate the 0.1 % rule refuses
        };
        let interval = gcra.interval_nanos();
        let mut tat = 0u64;
        let mut now = start;
        let mut admitted: Vec<(u64, u64)> = Vec::new();
        for (g, cells) in arrivals {
            now = now.saturating_add(g);
            match gcra.decide(tat, now, cells) {
                Ok(next) => {
                    // (cells == 0 "leaves the state unchanged": its own test below.)
                    if cells > 0 {
                        prop_assert!(next > now && next - now <= u64::from(burst) * interval);
                        admitted.push((now, u64::from(cells)));
                    }
                    tat = next;
                }
                Err(Denied::Wait { nanos }) => {
                    prop_assert!(nanos >= 1);
                    // Near the top of the clock no wait can help (the state cannot hold the
                    // new TAT): the hint is checked where the new state fits.
                    let horizon = u64::from(burst) * interval;
                    if let Some(later) = now.checked_add(nanos).filter(|l| l.checked_add(horizon).is_some()) {
                        prop_assert!(gcra.decide(tat, later, cells).is_ok(), "not admitted at the hinted time");
                        prop_assert!(gcra.decide(tat, later - 1, cells).is_err(), "admitted before the hinted time");
                    }
                }
                Err(Denied::InsufficientCapacity { burst: b }) => {
                    prop_assert_eq!(b, burst);
                    prop_assert!(cells > burst);
                }
                Err(other) => prop_assert!(false, "undocumented denial {:?}", other),
            }
        }
        for i in 0..admitted.len() {
            let mut cells = 0u64;
            for j in i..admitted.len() {
                cells += admitted[j].1;
                let span = admitted[j].0 - admitted[i].0;
                let bound = u64::from(burst) + span / interval;
                prop_assert!(cells <= bound, "{} cells in {} ns (bound {})", cells, span, bound);
                prop_assert_eq!(gcra.max_admitted(span), bound);
            }
        }
    }

    /// `available`: "How many cells one request could take at `now` from the stored `tat`:
    /// the burst when rested" — the largest request `decide` admits there. And "A TAT at or
    /// before `now` means fully rested, exactly like a key never seen".
    #[test]
    fn gcra_available_is_the_largest_admitted_request_and_rested_is_fresh(
        burst in 1u32..=50,
        interval in 1u64..=2 * SEC,
        tat in 0u64..=(1u64 << 62),
        back in 0u64..=(1u64 << 40),
        fwd in 0u64..=(1u64 << 40),
        cells in 0u32..=60,
    ) {
        let gcra = Gcra::from_words([interval, u64::from(burst)]);
        prop_assert_eq!(gcra.interval_nanos(), interval);
        prop_assert_eq!(gcra.burst(), burst);
        for now in [tat.saturating_sub(back), tat.saturating_add(fwd)] {
            let available = gcra.available(tat, now);
            prop_assert!(available <= burst);
            if available > 0 {
                prop_assert!(gcra.decide(tat, now, available).is_ok());
            }
            prop_assert!(gcra.decide(tat, now, available + 1).is_err());
            if Gcra::is_rested(tat, now) {
                prop_assert!(tat <= now);
                prop_assert_eq!(available, burst);
                let fresh = gcra.decide(0, now, cells);
                let rested = gcra.decide(tat, now, cells);
                if cells == 0 {
                    // "returns `tat` itself": two rested states, each as it was.
                    prop_assert_eq!((fresh, rested), (Ok(0), Ok(tat)));
                } else {
                    prop_assert_eq!(rested.map_err(|e| format!("{e:?}")), fresh.map_err(|e| format!("{e:?}")));
                }
            } else {
                prop_assert!(tat > now);
            }
        }
    }

    /// `from_words`: "Total: words that no validated limit has are brought into range ...
    /// so reading them never fails" — and deciding with such a limit never panics either,
    /// whatever the state and the time (backwards included).
    #[test]
    fn gcra_from_arbitrary_words_and_any_state_never_panics(
        words in proptest::array::uniform2(any::<u64>()),
        tat in any::<u64>(),
        now in any::<u64>(),
        cells in any::<u32>(),
        elapsed in any::<u64>(),
    ) {
        let r = catch_unwind(|| {
            let g = Gcra::from_words(words);
            assert!(g.interval_nanos() >= 1 && g.burst() >= 1);
            let _ = g.decide(tat, now, cells);
            let _ = g.available(tat, now);
            let _ = g.max_admitted(elapsed);
        });
        prop_assert!(r.is_ok(), "panicked on {:?} tat {} now {} cells {}", words, tat, now, cells);
    }

    /// `emission_interval`: "`count / period ≤ 1 / (interval × unit) ≤ 1.001 × count /
    /// period`", or a typed error (zero, overflow, out of range) — never a panic.
    #[test]
    fn emission_interval_is_within_a_tenth_of_a_percent_or_a_typed_error(
        count in prop_oneof![Just(0u32), 1u32..=1_000, any::<u32>()],
        period in prop_oneof![Just(0u64), 1u64..=1_000_000, any::<u64>()],
        micros in any::<bool>(),
        extra_secs in prop_oneof![Just(0u64), Just(1u64)],
    ) {
        let resolution = if micros { Resolution::Micros } else { Resolution::Nanos };
        let period_d = Duration::from_nanos(period) + Duration::from_secs(extra_secs * (u64::MAX / SEC));
        match emission_interval(count, period_d, resolution) {
            Ok(interval) => {
                let unit = u128::from(resolution.nanos());
                let p = period_d.as_nanos();
                let c = u128::from(count);
                let i = u128::from(interval) * unit;
                prop_assert!(interval >= 1);
                // count/p <= 1/i  <=>  c*i <= p ; 1/i <= 1.001 c/p  <=>  1000 p <= 1001 c i
                prop_assert!(c * i <= p, "faster than asked");
                prop_assert!(1000 * p <= 1001 * c * i, "more than 0.1 % faster");
            }
            Err(ConfigError::Zero { .. }) => prop_assert!(count == 0 || period_d.is_zero()),
            Err(ConfigError::DurationOverflow { .. }) => prop_assert!(period_d.as_nanos() > u128::from(u64::MAX)),
            Err(ConfigError::OutOfRange { field, .. }) => prop_assert_eq!(field, "count"),
            Err(other) => prop_assert!(false, "undocumented error {other}"),
        }
    }
}

/// The module example's limiter, driven greedily across centuries of idleness: after any idle
/// gap it admits exactly `burst` cells at once, then one per interval.
#[test]
fn gcra_after_an_idle_century_admits_exactly_the_burst_again() {
    let gcra = Gcra::new(10, Duration::from_secs(1), 3).unwrap();
    let mut tat = 0u64;
    let mut now = 0u64;
    for gap in [0, HOUR_NS, YEAR_NS, CENTURY_NS, CENTURY_NS, CENTURY_NS] {
        now += gap;
        let mut at_once = 0;
        while let Ok(next) = gcra.decide(tat, now, 1) {
            tat = next;
            at_once += 1;
            assert!(
                at_once <= 3,
                "more than the burst at once after {gap} ns idle"
            );
        }
        assert_eq!(at_once, 3, "after {gap} ns idle");
        assert_eq!(
            gcra.decide(tat, now, 1),
            Err(Denied::Wait { nanos: 100_000_000 })
        );
        assert_eq!(gcra.available(tat, now), 0);
    }
}

/// `decide`: "A request whose new state would pass `u64::MAX` nanoseconds is refused with
/// the wait it would need (at least 1 ns; `u64::MAX` when that does not fit)"; time going
/// backwards (an older `now` than the stored TAT's) waits, never wraps into an admission.
#[test]
fn gcra_at_the_top_of_u64_refuses_with_a_wait_and_backwards_time_never_wraps() {
    let gcra = Gcra::new(1, Duration::from_secs(1), 2).unwrap();
    for now in [u64::MAX, u64::MAX - 1, u64::MAX - SEC + 1] {
        match gcra.decide(0, now, 1) {
            Err(Denied::Wait { nanos }) => assert!(nanos >= 1, "now {now}"),
            other => panic!("now {now}: {other:?}"),
        }
    }
    // Exactly at the top: the new TAT is u64::MAX, which fits.
    assert_eq!(gcra.decide(0, u64::MAX - SEC, 1), Ok(u64::MAX));
    // A TAT at the top and a clock read at zero: denied with the whole distance, no wrap.
    assert!(matches!(
        gcra.decide(u64::MAX, 0, 1),
        Err(Denied::Wait { .. })
    ));
    assert_eq!(gcra.available(u64::MAX, 0), 0);
    // Time going backwards after an admission: the earlier reading cannot get more cells.
    let tat = gcra.decide(0, 10 * SEC, 2).unwrap();
    for back in [1, SEC, 10 * SEC] {
        assert!(gcra.decide(tat, 10 * SEC - back, 1).is_err(), "back {back}");
    }
    assert_eq!(
        gcra.decide(tat, 10 * SEC, 3),
        Err(Denied::InsufficientCapacity { burst: 2 })
    );
}

/// `Gcra::new` errors: "Zero for a zero count, period or burst; OutOfRange (field `count`)
/// when period / count is below one nanosecond or more than 0.1 % above a whole number of
/// them; DurationOverflow when period, two intervals or (burst + 1) × interval does not fit".
#[test]
fn gcra_new_rejects_each_documented_bad_limit_with_its_typed_error() {
    let s = Duration::from_secs(1);
    assert!(matches!(
        Gcra::new(0, s, 1),
        Err(ConfigError::Zero { field: "count" })
    ));
    assert!(matches!(
        Gcra::new(1, Duration::ZERO, 1),
        Err(ConfigError::Zero { field: "period" })
    ));
    assert!(matches!(
        Gcra::new(1, s, 0),
        Err(ConfigError::Zero { field: "burst" })
    ));
    assert!(matches!(
        Gcra::new(700_000_000, s, 1),
        Err(ConfigError::OutOfRange { field: "count", .. })
    ));
    assert!(matches!(
        Gcra::new(u32::MAX, Duration::from_nanos(1), 1),
        Err(ConfigError::OutOfRange { field: "count", .. })
    ));
    assert!(matches!(
        Gcra::new(1, Duration::MAX, 1),
        Err(ConfigError::DurationOverflow { .. })
    ));
    // Two intervals do not fit: an interval above u64::MAX / 2.
    assert!(matches!(
        Gcra::new(1, Duration::from_nanos(u64::MAX / 2 + 1), 1),
        Err(ConfigError::DurationOverflow { .. })
    ));
    // (burst + 1) × interval does not fit.
    assert!(matches!(
        Gcra::new(1, Duration::from_nanos(1 << 62), 4),
        Err(ConfigError::DurationOverflow { .. })
    ));
    assert!(Gcra::new(1, Duration::from_nanos(1 << 62), 2).is_ok());
    // The largest burst with a 1 ns interval fits, and its formula must not overflow.
    let gcra = Gcra::new(1, Duration::from_nanos(1), u32::MAX).unwrap();
    assert_eq!(gcra.burst(), u32::MAX);
    assert_eq!(gcra.available(0, 0), u32::MAX);
}

/// `decide`: "`cells == 0` always passes and leaves the state unchanged": the TAT handed back
/// is the one passed in, at any `now` (a rested TAT moved up to `now` is a different state
/// for a caller whose clock reads a little behind, e.g. a shared key read by another host).
#[test]
fn gcra_zero_cells_pass_and_return_the_stored_tat_unchanged() {
    let gcra = Gcra::new(10, Duration::from_secs(1), 3).unwrap();
    for (tat, now) in [
        (0u64, 0u64),
        (5 * SEC, 0),
        (0, 1),
        (12, 10 * SEC),
        (12, u64::MAX),
        (u64::MAX, 0),
    ] {
        assert_eq!(gcra.decide(tat, now, 0), Ok(tat), "tat {tat} now {now}");
    }
}

/// `from_words`: "words that no validated limit has are brought into range (an interval of at
/// least 1 ns, a burst of 1 ..= `u32::MAX`, the horizon saturated) rather than refused", and
/// `decide`: "A request whose new state would pass `u64::MAX` nanoseconds is refused with the
/// wait it would need" — so a burst-sized request on such a limit is a refusal, not a panic.
#[test]
fn gcra_decide_on_a_from_words_limit_refuses_instead_of_overflowing() {
    for words in [
        [u64::MAX, 2],
        [21_686_866_300, 850_595_186],
        [1 << 40, 1 << 30],
    ] {
        let gcra = Gcra::from_words(words);
        let burst = gcra.burst();
        let available = catch_unwind(|| gcra.available(0, 0));
        assert!(available.is_ok(), "available panicked on {words:?}");
        let decided = catch_unwind(|| gcra.decide(0, 0, burst));
        assert!(
            matches!(decided, Ok(Err(Denied::Wait { .. }))),
            "decide on {words:?}: {decided:?}"
        );
    }
}

/// `max_admitted`: "`burst + floor(elapsed / interval)`", a `const fn` returning `u64`, for a
/// validated limit and any `elapsed`: at the top of the range the true value does not fit, and
/// it must saturate (the documented "never overflow" of the crate) rather than panic or wrap.
#[test]
fn gcra_max_admitted_at_u64_max_elapsed_saturates_instead_of_overflowing() {
    let gcra = Gcra::new(1, Duration::from_nanos(1), u32::MAX).unwrap();
    let got = catch_unwind(|| gcra.max_admitted(u64::MAX));
    assert_eq!(
        got.ok(),
        Some(u64::MAX),
        "burst + u64::MAX / 1 must saturate, not panic or wrap"
    );
}

// ---------------------------------------------------------------------------------------------
// Breaker
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(cfg(256))]

    /// `Thresholds::evaluate`: "Rates count only once `counts.calls >= minimum_calls`; a rate
    /// trips when it is *at or above* its threshold. Consecutive failures trip regardless of
    /// the minimum", compared in exact parts per million.
    #[test]
    fn breaker_trips_exactly_at_or_above_the_ppm_threshold_after_minimum_calls(
        ppm in 1u32..=PPM,
        slow_ppm in 1u32..=PPM,
        minimum in 1u32..=1_000,
        run in 1u32..=20,
        calls in 0u32..=2_000,
        failures_frac in 0u32..=PPM,
        slow_frac in 0u32..=PPM,
        consecutive in 0u32..=40,
    ) {
        let policy = BreakerPolicy::builder()
            .failure_rate(f64::from(ppm) / 1e6)
            .slow_call_rate(f64::from(slow_ppm) / 1e6, Duration::from_millis(250))
            .consecutive_failures(run)
            .minimum_calls(minimum)
            .window(Window::Count { calls: 2_000 })
            .build()
            .unwrap();
        let failures = u32::try_from(u64::from(calls) * u64::from(failures_frac) / u64::from(PPM)).unwrap();
        let slow = u32::try_from(u64::from(calls) * u64::from(slow_frac) / u64::from(PPM)).unwrap();
        let counts = Counts { calls, failures, slow };
        let got = policy.evaluate(counts, consecutive);
        let enough = calls >= minimum;
        let fr = enough && u64::from(failures) * u64::from(PPM) >= u64::from(ppm) * u64::from(calls);
        let sr = enough && u64::from(slow) * u64::from(PPM) >= u64::from(slow_ppm) * u64::from(calls);
        let cf = consecutive >= run;
        match got {
            None => prop_assert!(!fr && !sr && !cf, "should trip: fr {fr} sr {sr} cf {cf}"),
            Some(TripReason::FailureRate) => prop_assert!(fr),
            Some(TripReason::SlowCallRate) => prop_assert!(sr),
            Some(TripReason::ConsecutiveFailures) => prop_assert!(cf),
            Some(other) => prop_assert!(false, "a closed breaker cannot trip for {:?}", other),
        }
        prop_assert_eq!(policy.thresholds().evaluate(counts, consecutive), got);
        prop_assert_eq!(Thresholds::from_words(policy.thresholds().to_words()), policy.thresholds());
    }

    /// `Thresholds::from_words`: "Total: any words read as some thresholds" — evaluating them
    /// on any counts never panics.
    #[test]
    fn thresholds_from_arbitrary_words_never_panic(
        words in proptest::array::uniform3(any::<u64>()),
        calls in any::<u32>(), failures in any::<u32>(), slow in any::<u32>(), run in any::<u32>(),
        elapsed_s in any::<u64>(), elapsed_n in 0u32..1_000_000_000,
    ) {
        let r = catch_unwind(|| {
            let t = Thresholds::from_words(words);
            let _ = t.evaluate(Counts { calls, failures, slow }, run);
            let _ = t.is_slow(Duration::new(elapsed_s, elapsed_n));
            let _ = (t.tracks_slow_calls(), t.tracks_consecutive_failures());
        });
        prop_assert!(r.is_ok());
    }

    /// The count window's packed totals: "the packed arithmetic is exact" for any sequence of
    /// records into a ring of slots.
    #[test]
    fn count_window_totals_equal_the_sum_of_the_slots(
        size in 1usize..=64,
        records in proptest::collection::vec((any::<bool>(), any::<bool>()), 0..400),
    ) {
        let mut slots = vec![0u8; size];
        let mut totals = 0u64;
        for (i, (failed, slow)) in records.into_iter().enumerate() {
            let k = i % size;
            let new = slot_code(failed, slow);
            totals = totals.wrapping_add(totals_delta(new, slots[k]));
            slots[k] = new;
            let filled: Vec<u8> = slots.iter().copied().filter(|c| *c != 0).collect();
            let want_calls = u32::try_from(filled.len()).unwrap();
            let got = unpack_totals(totals);
            prop_assert_eq!(got.calls, want_calls);
            let f = (0..size).filter(|j| slots[*j] == slot_code(true, false) || slots[*j] == slot_code(true, true)).count();
            let s = (0..size).filter(|j| slots[*j] == slot_code(false, true) || slots[*j] == slot_code(true, true)).count();
            prop_assert_eq!(got.failures, u32::try_from(f).unwrap());
            prop_assert_eq!(got.slow, u32::try_from(s).unwrap());
        }
    }
}

/// "the packed arithmetic is exact because every field of the true result stays within its
/// 21 bits": a window of `MAX_COUNT_WINDOW` failed slow calls, then all overwritten.
#[test]
fn count_window_at_max_size_keeps_exact_totals() {
    let bad = slot_code(true, true);
    let good = slot_code(false, false);
    let mut totals = 0u64;
    for _ in 0..MAX_COUNT_WINDOW {
        totals = totals.wrapping_add(totals_delta(bad, 0));
    }
    assert_eq!(
        unpack_totals(totals),
        Counts {
            calls: MAX_COUNT_WINDOW,
            failures: MAX_COUNT_WINDOW,
            slow: MAX_COUNT_WINDOW
        }
    );
    for _ in 0..MAX_COUNT_WINDOW {
        totals = totals.wrapping_add(totals_delta(good, bad));
    }
    assert_eq!(
        unpack_totals(totals),
        Counts {
            calls: MAX_COUNT_WINDOW,
            failures: 0,
            slow: 0
        }
    );
}

/// `BreakerPolicyBuilder::build` errors, each documented one, plus "minimum_calls ... at most
/// what the window can hold" and "Ratios below one part per million are refused rather than
/// raised to it".
#[test]
fn breaker_builder_refuses_each_documented_bad_setting() {
    let b = BreakerPolicy::builder;
    let refused = |r: Result<BreakerPolicy, ConfigError>, what: &str| {
        assert!(r.is_err(), "{what} accepted: {r:?}");
    };
    for rate in [
        0.0,
        -0.5,
        1.5,
        f64::NAN,
        f64::INFINITY,
        0.000_000_4,
        1e-9,
        1.000_001,
    ] {
        refused(
            b().failure_rate(rate).build(),
            &format!("failure_rate({rate})"),
        );
        refused(
            b().slow_call_rate(rate, Duration::from_secs(1)).build(),
            &format!("slow_call_rate({rate})"),
        );
    }
    assert!(b().failure_rate(0.000_001).build().is_ok());
    assert!(b().failure_rate(1.0).build().is_ok());
    refused(
        b().window(Window::Count { calls: 0 }).build(),
        "count window 0",
    );
    refused(
        b().window(Window::Count {
            calls: MAX_COUNT_WINDOW + 1,
        })
        .build(),
        "count window too big",
    );
    assert!(
        b().window(Window::Count {
            calls: MAX_COUNT_WINDOW
        })
        .build()
        .is_ok()
    );
    refused(
        b().window(Window::Time {
            span: Duration::from_secs(10),
            buckets: 0,
        })
        .build(),
        "0 buckets",
    );
    refused(
        b().window(Window::Time {
            span: Duration::from_secs(10),
            buckets: MAX_BUCKETS + 1,
        })
        .build(),
        "too many buckets",
    );
    refused(
        b().window(Window::Time {
            span: Duration::ZERO,
            buckets: 10,
        })
        .build(),
        "zero span",
    );
    refused(
        b().window(Window::Time {
            span: Duration::from_nanos(1_999),
            buckets: 1_000,
        })
        .build(),
        "1.999 ns buckets",
    );
    refused(
        b().window(Window::Time {
            span: Duration::MAX,
            buckets: 10,
        })
        .build(),
        "span overflow",
    );
    assert!(
        b().window(Window::Time {
            span: Duration::from_nanos(1_000_999),
            buckets: 1_000
        })
        .build()
        .is_ok()
    );
    refused(b().half_open_probes(0).build(), "0 probes");
    refused(
        b().half_open_probes(MAX_HALF_OPEN_PROBES + 1).build(),
        "4096 probes",
    );
    assert_eq!(
        b().half_open_probes(MAX_HALF_OPEN_PROBES)
            .build()
            .unwrap()
            .half_open_probes(),
        MAX_HALF_OPEN_PROBES
    );
    refused(b().break_duration(Duration::ZERO).build(), "zero break");
    refused(b().break_duration(Duration::MAX).build(), "break overflow");
    refused(
        b().max_half_open_wait(Some(Duration::MAX)).build(),
        "half-open wait overflow",
    );
    refused(
        b().slow_call_rate(0.5, Duration::MAX).build(),
        "slow threshold overflow",
    );
    // "a policy that can never trip (ConfigError::Conflict)".
    assert!(matches!(
        b().no_failure_rate().build(),
        Err(ConfigError::Conflict { .. })
    ));
    // Minimum calls beyond what the window holds, without consecutive failures.
    refused(
        b().window(Window::Count { calls: 100 })
            .minimum_calls(101)
            .build(),
        "minimum above window",
    );
    assert!(
        b().window(Window::Count { calls: 100 })
            .minimum_calls(100)
            .build()
            .is_ok()
    );
    refused(
        b().window(Window::Time {
            span: Duration::from_secs(1),
            buckets: 1,
        })
        .minimum_calls(65_536)
        .build(),
        "minimum above one bucket",
    );
    assert!(
        b().window(Window::Count { calls: 100 })
            .minimum_calls(u32::MAX)
            .consecutive_failures(3)
            .build()
            .is_ok()
    );
}

/// "kept in whole parts per million (rounded to the nearest)", slow: "took `threshold` or
/// longer"; and the documented defaults of `builder()`.
#[test]
fn breaker_slow_threshold_is_inclusive_and_defaults_are_as_documented() {
    let t = Duration::from_millis(300);
    let policy = BreakerPolicy::builder()
        .slow_call_rate(0.5, t)
        .build()
        .unwrap();
    assert!(policy.tracks_slow_calls());
    assert!(policy.is_slow(t));
    assert!(!policy.is_slow(t - Duration::from_nanos(1)));
    assert!(policy.is_slow(Duration::MAX));
    assert!(!policy.is_slow(Duration::ZERO));
    let d = BreakerPolicy::builder().build().unwrap();
    assert_eq!(d.window(), Window::Count { calls: 100 });
    assert_eq!(d.half_open_probes(), 1);
    assert_eq!(d.max_half_open_wait(), Some(Duration::from_secs(60)));
    assert_eq!(d.break_duration(0, 0), Duration::from_secs(5));
    assert!(!d.tracks_slow_calls());
    assert!(!d.tracks_consecutive_failures());
    assert_eq!(
        d.evaluate(
            Counts {
                calls: 9,
                failures: 9,
                slow: 0
            },
            9
        ),
        None
    );
    assert_eq!(
        d.evaluate(
            Counts {
                calls: 10,
                failures: 5,
                slow: 0
            },
            0
        ),
        Some(TripReason::FailureRate)
    );
    assert_eq!(
        d.evaluate(
            Counts {
                calls: 10,
                failures: 4,
                slow: 0
            },
            0
        ),
        None
    );
    // Rounded to the nearest part: 0.3333334 is 333,333 ppm; 0.3333335 rounds up to 333,334.
    let p = BreakerPolicy::builder()
        .failure_rate(0.333_333_4)
        .minimum_calls(1)
        .build()
        .unwrap();
    assert_eq!(
        p.evaluate(
            Counts {
                calls: 1_000_000,
                failures: 333_333,
                slow: 0
            },
            0
        ),
        Some(TripReason::FailureRate)
    );
    let p = BreakerPolicy::builder()
        .failure_rate(0.333_333_6)
        .minimum_calls(1)
        .build()
        .unwrap();
    assert_eq!(
        p.evaluate(
            Counts {
                calls: 1_000_000,
                failures: 333_333,
                slow: 0
            },
            0
        ),
        None
    );
    // Counts at the type's limit never overflow the comparison.
    let p = BreakerPolicy::builder()
        .failure_rate(1.0)
        .consecutive_failures(u32::MAX)
        .minimum_calls(1)
        .build()
        .unwrap();
    assert_eq!(
        p.evaluate(
            Counts {
                calls: u32::MAX,
                failures: u32::MAX,
                slow: u32::MAX
            },
            u32::MAX - 1
        ),
        Some(TripReason::FailureRate)
    );
    assert_eq!(
        p.evaluate(
            Counts {
                calls: u32::MAX,
                failures: u32::MAX - 1,
                slow: 0
            },
            u32::MAX
        ),
        Some(TripReason::ConsecutiveFailures)
    );
}

/// `BreakDurations::next_break`: "Past the end of the backoff schedule (its `max_attempts` or
/// `max_elapsed`) the duration stays at the schedule's last delay, so this never runs out";
/// "the k-th call ... returns `break_duration(k, seed)`".
#[test]
fn break_durations_never_run_out_and_match_break_duration() {
    let backoff = Backoff::exponential(Duration::from_millis(100))
        .max_delay(Duration::from_secs(2))
        .max_attempts(4)
        .build()
        .unwrap();
    let policy = BreakerPolicy::builder()
        .break_backoff(backoff)
        .build()
        .unwrap();
    for seed in [0u64, 1, u64::MAX] {
        let mut breaks = policy.break_durations(seed);
        let got: Vec<Duration> = (0..40).map(|_| breaks.next_break()).collect();
        for (k, d) in got.iter().enumerate() {
            assert_eq!(
                *d,
                policy.break_duration(u32::try_from(k).unwrap(), seed),
                "trip {k}"
            );
            assert!(*d <= Duration::from_secs(2));
        }
        assert!(
            got[3..].iter().all(|d| *d == got[2]),
            "past the schedule it stays at the last delay: {got:?}"
        );
        for _ in 0..100_000 {
            assert_eq!(breaks.next_break(), got[2]);
        }
    }
    // Ended by max_elapsed: 1 s, 2 s, then 4 s would pass 3.5 s — stays at 2 s.
    let backoff = Backoff::exponential(Duration::from_secs(1))
        .jitter(Jitter::None)
        .max_attempts(u32::MAX)
        .max_elapsed(Duration::from_millis(3_500))
        .build()
        .unwrap();
    let policy = BreakerPolicy::builder()
        .break_backoff(backoff)
        .build()
        .unwrap();
    let mut breaks = policy.break_durations(0);
    let secs: Vec<u64> = (0..6).map(|_| breaks.next_break().as_secs()).collect();
    assert_eq!(secs, [1, 2, 2, 2, 2, 2]);
}

// ---------------------------------------------------------------------------------------------
// Stamped buckets (breaker time windows and the retry budget)
// ---------------------------------------------------------------------------------------------

fn stamp(epoch: u64) -> u16 {
    u16::try_from(epoch % 65_536).unwrap()
}

/// A gap between two uses of a ring, in buckets: none, within the ring, around the stamp's
/// wrap, an hour, a year, a century (of one-second or one-millisecond buckets).
fn bucket_gap() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => Just(0u64),
        4 => 0u64..=20,
        2 => 0u64..=2_000,
        1 => (SWEEP_EVERY - 3)..=(SWEEP_EVERY + 3),
        1 => 32_760u64..=32_780,
        1 => 65_530u64..=65_545,
        1 => Just(3_600u64),
        1 => Just(3_600_000u64),
        1 => Just(31_536_000u64),
        1 => Just(3_153_600_000u64),
        1 => Just(3_153_600_000_000u64),
    ]
}

/// Plays the documented protocol of a stamped ring ("at least once every `SWEEP_EVERY` buckets
/// (and before the first use after a longer gap) it sweeps, emptying each word that
/// `survives_sweep` rejects") and checks, against a plain list of what was recorded when, that
/// `live` sums exactly the last `slots` buckets, and that `add` never refuses a write (no
/// dead window after an idle hour, year or century).
fn play_ring(
    layout: Bucket,
    fields: usize,
    slots: u64,
    start: u64,
    ops: &[(u64, bool, [u64; 3])],
) -> Result<(), TestCaseError> {
    let mut ring = vec![0u64; usize::try_from(slots).unwrap()];
    let mut last_sweep = start;
    let mut now = start;
    let mut history: Vec<(u64, [u64; 3])> = Vec::new();
    for &(gap, write, add) in ops {
        now += gap;
        if now - last_sweep >= SWEEP_EVERY {
            for (slot, word) in ring.iter_mut().enumerate() {
                let slot = u64::try_from(slot).unwrap();
                if !Bucket::survives_sweep(*word, slot, slots, last_sweep, now) {
                    *word = 0;
                }
            }
            last_sweep = now;
        }
        let mut add = add;
        for f in add.iter_mut().skip(fields) {
            *f = 0;
        }
        if write {
            let slot = usize::try_from(now % slots).unwrap();
            let next = layout.add(ring[slot], stamp(now), add);
            prop_assert!(
                next.is_some(),
                "write refused at bucket {} (gap {})",
                now,
                gap
            );
            ring[slot] = next.unwrap();
            prop_assert_eq!(Bucket::epoch(ring[slot]), stamp(now));
            history.push((now, add));
        }
        let mut want = [0u64; 3];
        for (at, a) in &history {
            if now - at < slots {
                for f in 0..3 {
                    want[f] += a[f];
                }
            }
        }
        let mut got = [0u64; 3];
        for (slot, word) in ring.iter().enumerate() {
            let live = layout.live(*word, u64::try_from(slot).unwrap(), slots, now);
            for f in 0..3 {
                got[f] += live[f];
            }
        }
        prop_assert_eq!(got, want, "at bucket {} after a gap of {}", now, gap);
    }
    Ok(())
}

proptest! {
    #![proptest_config(cfg(200))]

    /// Breaker time-window buckets after arbitrary idle gaps (an hour, a year, a century).
    #[test]
    fn breaker_time_buckets_expire_after_any_idle_gap_and_never_go_dead(
        slots in prop_oneof![1u64..=16, Just(u64::from(MAX_BUCKETS))],
        start in prop_oneof![Just(0u64), 0u64..=(1u64 << 40)],
        ops in proptest::collection::vec((bucket_gap(), any::<bool>(), (1u64..=3, 0u64..=3, 0u64..=3)), 1..50),
    ) {
        let ops: Vec<(u64, bool, [u64; 3])> = ops.into_iter().map(|(g, w, (a, b, c))| (g, w, [a, b.min(a), c.min(a)])).collect();
        play_ring(Bucket::BREAKER, 3, slots, start, &ops)?;
    }

    /// Retry-budget buckets (deposits, withdrawals) after arbitrary idle gaps: the known
    /// defect class of a budget that went dead after an idle hour.
    #[test]
    fn budget_buckets_expire_after_any_idle_gap_and_never_go_dead(
        slots in prop_oneof![1u64..=16, Just(10u64), Just(u64::from(MAX_BUCKETS))],
        start in prop_oneof![Just(0u64), 0u64..=(1u64 << 40)],
        ops in proptest::collection::vec((bucket_gap(), any::<bool>(), (0u64..=1_000, 0u64..=3)), 1..50),
    ) {
        let ops: Vec<(u64, bool, [u64; 3])> = ops.into_iter().map(|(g, w, (d, r))| (g, w, [d, r, 0])).collect();
        play_ring(Bucket::BUDGET, 2, slots, start, &ops)?;
    }

    /// `unstamp`: "of the epochs with that stamp, the one nearest `reference` (within 2¹⁵
    /// buckets of it)" — exact near zero and near `u64::MAX`, and total on any input.
    #[test]
    fn unstamp_recovers_any_epoch_within_half_the_stamp_range(
        epoch in prop_oneof![0u64..=100_000, any::<u64>(), (u64::MAX - 100_000)..=u64::MAX],
        delta in 0u64..(1 << 15),
        ahead in any::<bool>(),
        any_stamp in any::<u16>(),
        any_ref in any::<u64>(),
    ) {
        let reference = if ahead { epoch.saturating_add(delta) } else { epoch.saturating_sub(delta) };
        prop_assert_eq!(Bucket::unstamp(stamp(epoch), reference), epoch);
        let r = catch_unwind(|| Bucket::unstamp(any_stamp, any_ref));
        prop_assert!(r.is_ok(), "unstamp panicked on {} {}", any_stamp, any_ref);
        prop_assert_eq!(stamp(r.unwrap()), any_stamp);
    }
}

/// `Bucket::add`: "`None` if a counter would overflow"; "A bucket already stamped with a
/// *newer* epoch is left alone (`None`) ... An empty word (all counters zero) is never newer";
/// "a bucket stamped with an older epoch starts from zero".
#[test]
fn bucket_add_overflow_newer_and_empty_words_behave_as_documented() {
    for (layout, max) in [
        (Bucket::BREAKER, (1u64 << 16) - 1),
        (Bucket::BUDGET, (1u64 << 24) - 1),
    ] {
        let full = layout.add(0, 7, [max, 0, 0]).expect("a full counter fits");
        assert_eq!(layout.field(full, 0), max);
        assert_eq!(layout.add(full, 7, [1, 0, 0]), None, "overflow");
        assert_eq!(
            layout.add(0, 7, [max + 1, 0, 0]),
            None,
            "overflow from empty"
        );
        let w = layout.add(0, 8, [1, 1, 0]).unwrap();
        assert_eq!(
            layout.add(w, 7, [1, 0, 0]),
            None,
            "newer bucket wiped by a late writer"
        );
        let fresh = layout.add(full, 8, [2, 0, 0]).unwrap();
        assert_eq!(layout.field(fresh, 0), 2, "older bucket starts from zero");
        assert_eq!(Bucket::epoch(fresh), 8);
        // An empty word stamped "newer" holds nothing: a write goes in.
        let empty_newer = layout.add(0, 9, [0, 0, 0]).unwrap_or(0);
        let wrote = layout
            .add(empty_newer, 3, [1, 0, 0])
            .expect("empty word is never newer");
        assert_eq!(layout.field(wrote, 0), 1);
        // Across the wrap of the 16-bit stamp: 65,535 then 0 is one bucket later.
        let w = layout.add(0, u16::MAX, [1, 0, 0]).unwrap();
        let w2 = layout
            .add(w, 0, [1, 0, 0])
            .expect("epoch 65,536 is newer than 65,535");
        assert_eq!(layout.field(w2, 0), 1);
    }
    // The documented sweep example, and a word ahead of `current` is kept.
    let b = Bucket::BREAKER;
    let word = b.add(0, stamp(70_000), [1, 1, 0]).unwrap();
    assert!(Bucket::survives_sweep(word, 0, 10, 65_536, 70_005));
    assert!(!Bucket::survives_sweep(
        word,
        0,
        10,
        70_005,
        70_000 + 65_536
    ));
    assert!(
        !Bucket::survives_sweep(word, 0, 10, 70_000, 70_010),
        "a whole ring later it is stale"
    );
    assert!(
        Bucket::survives_sweep(word, 0, 10, 69_990, 69_999),
        "a word a little ahead is kept"
    );
    assert!(
        !Bucket::survives_sweep(0, 0, 10, 0, 5),
        "an empty word is dropped"
    );
}

// ---------------------------------------------------------------------------------------------
// Retry budget
// ---------------------------------------------------------------------------------------------

/// The budget model from the module docs: one retry is `PPM` parts; a call deposits
/// `ratio_ppm`; the floor is `min_per_second × window` retries.
fn budget_allows_model(ratio_ppm: u64, floor_ppm: u128, deposits: u64, withdrawals: u64) -> bool {
    let have = u128::from(ratio_ppm) * u128::from(deposits) + floor_ppm;
    (u128::from(withdrawals) + 1) * u128::from(PPM) <= have
}

proptest! {
    #![proptest_config(cfg(256))]

    /// "All of it is integer arithmetic in parts per million, so a 10 % budget over 100 calls
    /// grants exactly 10 retries, never 11"; "Granted retries never exceed floor + ratio ×
    /// calls"; `balance` is "the largest n for which allows holds after n - 1 more
    /// withdrawals ... u64::MAX when more fit" — over counts up to `u64::MAX`.
    #[test]
    fn budget_grants_exactly_floor_plus_ratio_times_calls_at_any_count(
        ratio_ppm in prop_oneof![Just(0u64), 1u64..=1_000_000, 1u64..=1_000_000_000],
        per_second in prop_oneof![Just(0u32), 1u32..=100],
        window_ms in prop_oneof![Just(10_000u64), 1u64..=60_000],
        deposits in prop_oneof![0u64..=10_000, any::<u64>(), Just(u64::MAX)],
        withdrawals in prop_oneof![0u64..=10_000, any::<u64>(), Just(u64::MAX)],
    ) {
        #[allow(clippy::cast_precision_loss)] // ratio_ppm ≤ 1e9 is exact in f64
        let ratio = ratio_ppm as f64 / 1e6;
        let policy = RetryBudgetPolicy::builder()
            .ratio(ratio)
            .min_per_second(per_second)
            .window(Duration::from_millis(window_ms))
            .buckets(1)
            .build()
            .unwrap();
        prop_assert_eq!(policy.ratio_ppm(), ratio_ppm);
        let floor_ppm = u128::from(per_second) * u128::from(window_ms) * 1_000;
        let want = budget_allows_model(ratio_ppm, floor_ppm, deposits, withdrawals);
        prop_assert_eq!(policy.allows(deposits, withdrawals), want);
        let balance = policy.balance(deposits, withdrawals);
        let have = u128::from(ratio_ppm) * u128::from(deposits) + floor_ppm;
        let fits = (have / u128::from(PPM)).saturating_sub(u128::from(withdrawals));
        let want_balance = u64::try_from(fits).unwrap_or(u64::MAX);
        prop_assert_eq!(balance, want_balance, "balance of {} deposits, {} withdrawals", deposits, withdrawals);
    }
}

/// A budget idle for an hour or a century: the policy math sees empty windows (zero deposits,
/// zero withdrawals) and must still grant its floor, and a full window must grant no more.
#[test]
fn budget_floor_is_granted_on_an_empty_window_and_never_more() {
    let policy = RetryBudgetPolicy::builder().build().unwrap();
    assert_eq!(policy.window(), Duration::from_secs(10));
    assert_eq!(policy.buckets(), 10);
    assert_eq!(policy.ratio_ppm(), 200_000);
    // 10 per second over 10 s: 100 retries on an idle budget, exactly.
    assert_eq!(policy.balance(0, 0), 100);
    assert!(policy.allows(0, 99));
    assert!(!policy.allows(0, 100));
    // The module example.
    let p = RetryBudgetPolicy::builder()
        .ratio(0.1)
        .min_per_second(0)
        .build()
        .unwrap();
    assert!(p.allows(100, 9) && !p.allows(100, 10));
    assert_eq!(p.balance(100, 7), 3);
    assert_eq!(p.balance(100, 12), 0);
    assert_eq!(p.balance(0, 0), 0);
    assert!(!p.allows(0, 0));
    // Fractional percentages never over-grant: 0.15 % of 1,000 calls is 1.5 retries: one.
    let p = RetryBudgetPolicy::builder()
        .ratio(0.0015)
        .min_per_second(0)
        .build()
        .unwrap();
    assert_eq!(p.balance(1_000, 0), 1);
    assert_eq!(p.balance(666, 0), 0);
    // The largest ratio over the largest count: no overflow, "u64::MAX when more fit".
    let p = RetryBudgetPolicy::builder()
        .ratio(1_000.0)
        .min_per_second(0)
        .build()
        .unwrap();
    assert!(p.allows(u64::MAX, u64::MAX - 1));
    assert!(p.allows(u64::MAX, u64::MAX));
    assert_eq!(p.balance(u64::MAX, 0), u64::MAX);
    let zero = RetryBudgetPolicy::builder()
        .ratio(0.0)
        .min_per_second(0)
        .build()
        .unwrap();
    assert_eq!(zero.balance(u64::MAX, 0), 0);
    assert!(!zero.allows(u64::MAX, 0));
}

/// `RetryBudgetBuilder::build` errors: "A NaN, negative, larger-than-1000 or nonzero-but-under-
/// 0.000001 ratio, a zero window or bucket count, more than MAX_BUCKETS buckets, a window
/// shorter than one nanosecond per bucket or not within 0.1 % ..., or one that overflows;
/// OutOfRange on min_per_second when ... pass 18,446,744,073,709".
#[test]
fn budget_builder_refuses_each_documented_bad_setting() {
    let b = RetryBudgetPolicy::builder;
    for r in [
        f64::NAN,
        -0.1,
        -0.0 - 1e-12,
        1_000.000_1,
        f64::INFINITY,
        0.000_000_4,
        1e-300,
    ] {
        assert!(b().ratio(r).build().is_err(), "ratio {r} accepted");
    }
    for r in [0.0, 0.000_001, 1_000.0] {
        assert!(b().ratio(r).build().is_ok(), "ratio {r} refused");
    }
    assert!(b().window(Duration::ZERO).build().is_err());
    assert!(b().buckets(0).build().is_err());
    assert!(b().buckets(MAX_BUCKETS + 1).build().is_err());
    assert!(
        b().buckets(MAX_BUCKETS)
            .window(Duration::from_secs(1))
            .build()
            .is_ok()
    );
    assert!(
        b().buckets(10)
            .window(Duration::from_nanos(9))
            .build()
            .is_err(),
        "under 1 ns per bucket"
    );
    assert!(
        b().buckets(1_000)
            .window(Duration::from_nanos(1_999))
            .build()
            .is_err(),
        "not within 0.1 %"
    );
    assert!(b().window(Duration::MAX).build().is_err(), "overflow");
    // The floor limit: u32::MAX per second over 4,294 s is 1.8442e13 retries (fits); over
    // 4,295 s it is 1.84469e13 (passes 18,446,744,073,709).
    assert!(
        b().min_per_second(u32::MAX)
            .window(Duration::from_secs(4_294))
            .buckets(1)
            .build()
            .is_ok()
    );
    let err = b()
        .min_per_second(u32::MAX)
        .window(Duration::from_secs(4_295))
        .buckets(1)
        .build();
    assert!(
        matches!(
            err,
            Err(ConfigError::OutOfRange {
                field: "min_per_second",
                ..
            })
        ),
        "{err:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Quantiles
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(cfg(256))]

    /// "exact below 8, then eight buckets per power of two, so any estimate is within 12.5 %
    /// above the true value"; bucket indices stay below `BUCKETS` and are monotonic.
    #[test]
    fn bucket_upper_is_within_an_eighth_above_every_value(
        v in prop_oneof![0u64..=64, any::<u64>(), (u64::MAX - 1_000)..=u64::MAX],
        w in any::<u64>(),
    ) {
        let b = bucket_of(v);
        prop_assert!(b < BUCKETS);
        let up = bucket_upper(b);
        prop_assert!(up >= v);
        if v < 8 {
            prop_assert_eq!(up, v);
        }
        prop_assert!(u128::from(up) * 8 <= u128::from(v) * 9, "{} -> {}", v, up);
        if b > 0 {
            prop_assert!(bucket_upper(b - 1) < v, "not the bucket holding {}", v);
        }
        let (lo, hi) = if v <= w { (v, w) } else { (w, v) };
        prop_assert!(bucket_of(lo) <= bucket_of(hi));
    }

    /// `quantile`: "the upper bound of the bucket holding it": the bucket of the sample of
    /// rank ⌈q·n⌉ (within one rank); total over any q and any counts.
    #[test]
    fn quantile_is_the_upper_bound_of_the_bucket_holding_the_rank(
        samples in proptest::collection::vec(prop_oneof![0u64..=100, 0u64..=10_000_000, any::<u64>()], 1..300),
        q in 0.0f64..=1.0,
    ) {
        let mut counts = vec![0u64; BUCKETS];
        for s in &samples {
            counts[bucket_of(*s)] += 1;
        }
        let n = u64::try_from(samples.len()).unwrap();
        let est = quantile(|i| counts[i], n, q).expect("values and a q in [0, 1]");
        let b = bucket_of(est);
        prop_assert_eq!(bucket_upper(b), est, "not a bucket's upper bound");
        prop_assert!(counts[b] > 0, "an empty bucket");
        let at_or_below: u64 = counts[..=b].iter().sum();
        let below: u64 = counts[..b].iter().sum();
        #[allow(clippy::cast_precision_loss)] // n < 300
        let rank = q * n as f64;
        #[allow(clippy::cast_precision_loss)]
        let (a, c) = (at_or_below as f64, below as f64);
        prop_assert!(a + 1.0 >= rank, "bucket too low: {} at or below, rank {}", at_or_below, rank);
        prop_assert!(c <= rank, "bucket too high: {} below, rank {}", below, rank);
    }
}

/// `quantile`: "`None` without values or with a `q` outside [0, 1]"; one sample at the top of
/// `u64`; counts at the type's limit never overflow; `bucket_upper` "saturating for
/// out-of-range indices".
#[test]
fn quantile_edges_empty_one_sample_extremes_and_huge_counts() {
    let zero = |_: usize| 0u64;
    assert_eq!(quantile(zero, 0, 0.5), None);
    for q in [
        f64::NAN,
        -0.000_001,
        1.000_001,
        f64::INFINITY,
        f64::NEG_INFINITY,
    ] {
        assert_eq!(
            quantile(|_| 1, u64::try_from(BUCKETS).unwrap(), q),
            None,
            "q {q}"
        );
    }
    let top = bucket_of(u64::MAX);
    assert_eq!(top, BUCKETS - 1);
    assert_eq!(bucket_upper(top), u64::MAX);
    assert_eq!(bucket_upper(BUCKETS), u64::MAX);
    assert_eq!(bucket_upper(usize::MAX), u64::MAX);
    for q in [0.0, 0.5, 1.0] {
        assert_eq!(
            quantile(|i| u64::from(i == top), 1, q),
            Some(u64::MAX),
            "q {q}"
        );
        assert_eq!(quantile(|i| u64::from(i == 0), 1, q), Some(0), "q {q}");
    }
    // Every bucket full to u64::MAX, and a total that does not match the counts.
    let r = catch_unwind(|| {
        let _ = quantile(|_| u64::MAX, u64::MAX, 1.0);
        let _ = quantile(|_| u64::MAX, u64::MAX, 0.5);
        let _ = quantile(|_| 0, 5, 0.5);
        let _ = quantile(|_| 1, 1, 1.0);
    });
    assert!(r.is_ok(), "quantile panicked on counts at the type's limit");
}

// ---------------------------------------------------------------------------------------------
// Rng
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(cfg(256))]

    /// "The same seed always yields the same sequence"; `below_or_equal` in `0..=max`;
    /// `between` in `low..=high` with "`high` ... raised to `low` if smaller".
    #[test]
    fn rng_is_deterministic_and_stays_in_its_documented_ranges(
        seed in any::<u64>(),
        max in prop_oneof![Just(0u64), Just(1u64), Just(u64::MAX), any::<u64>()],
        low in any::<u64>(),
        high in any::<u64>(),
    ) {
        let mut a = SplitMix64::new(seed);
        let mut b = a.clone();
        for _ in 0..32 {
            prop_assert_eq!(a.next_u64(), b.next_u64());
            let x = a.below_or_equal(max);
            prop_assert_eq!(x, b.below_or_equal(max));
            prop_assert!(x <= max);
            let y = a.between(low, high);
            prop_assert_eq!(y, b.between(low, high));
            prop_assert!(y >= low && y <= high.max(low));
        }
        prop_assert_eq!(SplitMix64::new(seed).below_or_equal(0), 0);
        prop_assert_eq!(SplitMix64::new(seed).between(low, low), low);
    }
}

/// "every seed (including 0) is valid" and "uniformly distributed value in `0..=max`": both
/// ends of a small range are reached about equally, from seed 0.
#[test]
fn rng_seed_zero_is_valid_and_small_ranges_are_uniform() {
    let mut r = SplitMix64::new(0);
    let first: Vec<u64> = (0..4).map(|_| r.next_u64()).collect();
    assert!(first.windows(2).all(|w| w[0] != w[1]), "{first:?}");
    let mut hist = [0u32; 3];
    for _ in 0..30_000 {
        hist[usize::try_from(r.below_or_equal(2)).unwrap()] += 1;
    }
    assert!(
        hist.iter().all(|h| (9_000..=11_000).contains(h)),
        "{hist:?}"
    );
    let mut hist = [0u32; 2];
    for _ in 0..20_000 {
        let v = r.between(u64::MAX - 1, u64::MAX);
        hist[usize::try_from(v - (u64::MAX - 1)).unwrap()] += 1;
    }
    assert!(
        hist.iter().all(|h| (9_000..=11_000).contains(h)),
        "{hist:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Human durations
// ---------------------------------------------------------------------------------------------

/// Every documented form: units `ns`, `us` (or `µs`), `ms`, `s`, `m` (or `min`), `h`, `d`; a
/// lone "0"; fractions; groups with or without spaces; the top of the range.
#[test]
fn duration_accepts_every_documented_form_exactly() {
    let ok = |s: &str, ns: u64| assert_eq!(parse(s), Ok(Duration::from_nanos(ns)), "{s:?}");
    ok("0", 0);
    ok("0s", 0);
    ok("7ns", 7);
    ok("7us", 7_000);
    ok("7µs", 7_000);
    ok("7ms", 7_000_000);
    ok("7s", 7 * SEC);
    ok("7m", 420 * SEC);
    ok("7min", 420 * SEC);
    ok("7h", 7 * HOUR_NS);
    ok("7d", 7 * 24 * HOUR_NS);
    ok("250ms", 250_000_000);
    ok("1h30m", 5_400 * SEC);
    ok("1h 30m", 5_400 * SEC);
    ok("1h   30m  15s", 5_415 * SEC);
    ok("30m1h", 5_400 * SEC);
    ok("1s1s", 2 * SEC);
    ok("1.5s", 1_500_000_000);
    ok("0.5d", 12 * HOUR_NS);
    ok("1.5min", 90 * SEC);
    ok("0.000000001s", 1);
    ok("1.000000000s", SEC);
    ok("2.5us", 2_500);
    ok("18446744073709551615ns", u64::MAX);
    ok("18446744073709551614ns 1ns", u64::MAX);
    ok("18446744073.709551615s", u64::MAX);
    ok("213503d 23h 34m 33.709551615s", u64::MAX);
}

/// "a typo is an error and never another duration": near misses with the documented error
/// kinds, and "a sum above `u64::MAX` nanoseconds ... [is an error], never rounded or wrapped".
#[test]
fn duration_refuses_near_misses_with_the_documented_error() {
    use DurationError as E;
    let err = |s: &str, e: E| assert_eq!(parse(s), Err(e), "{s:?}");
    err("", E::Empty);
    err("   ", E::Empty);
    err("5", E::MissingUnit);
    err("1h30", E::MissingUnit);
    err("1y", E::UnknownUnit);
    err("1mo", E::UnknownUnit);
    err("1w", E::UnknownUnit);
    err("1S", E::UnknownUnit);
    err("1MS", E::UnknownUnit);
    err("1sec", E::UnknownUnit);
    err("0.5ns", E::SubNanosecond);
    err("1.0000000001s", E::SubNanosecond);
    err("0.1us 0.0001ns", E::SubNanosecond);
    err("18446744073709551616ns", E::TooLarge);
    err("18446744073709551616s", E::TooLarge);
    err("18446744073709551615ns1ns", E::TooLarge);
    err("18446744073.709551616s", E::TooLarge);
    err("213504d", E::TooLarge);
    err("99999999999999999999999999999999999999999d", E::TooLarge);
    for s in [
        "-1s", "+1s", "1,5s", "1_000ms", "0x10s", "1e3ms", "off", "NaN", "inf", "1s,2s", "1s-",
        "1..5s", "s", "ms",
    ] {
        assert!(parse(s).is_err(), "{s:?} accepted as {:?}", parse(s));
    }
    // A number must be whole before its optional fraction, and a fraction needs digits.
    for s in [".5s", "1.s", "1.5.5s", "1 .5s"] {
        assert!(parse(s).is_err(), "{s:?} accepted as {:?}", parse(s));
    }
    // A lone "0" is zero; other lone numbers, "0.0" and "00" are not the lone "0".
    for s in ["00", "0.0", "1", "0 0"] {
        assert!(parse(s).is_err(), "{s:?} accepted as {:?}", parse(s));
    }
}

/// "the result is exact in nanoseconds": leading zeros and trailing fraction zeros are the
/// same number, however many of them — not an overflow.
#[test]
fn duration_leading_and_trailing_zeros_are_exact_not_overflow() {
    let zeros = "0".repeat(60);
    assert_eq!(parse(&format!("{zeros}1s")), Ok(Duration::from_secs(1)));
    assert_eq!(
        parse(&format!("1.5{zeros}s")),
        Ok(Duration::from_millis(1_500))
    );
    assert_eq!(parse(&format!("0.{zeros}ms")), Ok(Duration::ZERO));
}

/// One group of the grammar, for an independent model of the sum.
#[derive(Debug, Clone)]
struct Group {
    whole: u64,
    fraction: String,
    unit: (&'static str, u64),
    space: &'static str,
}

fn group() -> impl Strategy<Value = Group> {
    let units = prop_oneof![
        Just(("ns", 1u64)),
        Just(("us", 1_000u64)),
        Just(("µs", 1_000u64)),
        Just(("ms", 1_000_000u64)),
        Just(("s", SEC)),
        Just(("m", 60 * SEC)),
        Just(("min", 60 * SEC)),
        Just(("h", HOUR_NS)),
        Just(("d", 24 * HOUR_NS)),
    ];
    (
        prop_oneof![0u64..=1_000, any::<u64>(), 0u64..=20_000_000_000],
        prop_oneof![Just(String::new()), "[0-9]{1,12}"],
        units,
        prop_oneof![Just(""), Just(" "), Just("  ")],
    )
        .prop_map(|(whole, fraction, unit, space)| Group {
            whole,
            fraction,
            unit,
            space,
        })
}

proptest! {
    #![proptest_config(cfg(256))]

    /// "Any input gives a value or an error, never a panic."
    #[test]
    fn duration_parse_never_panics_on_any_string(s in any::<String>()) {
        let r = catch_unwind(|| parse(&s));
        prop_assert!(r.is_ok(), "panicked on {:?}", s);
    }

    /// Soups of grammar tokens (digits, dots, units, spaces, signs): never a panic, and
    /// anything accepted prints back to itself.
    #[test]
    fn duration_parse_never_panics_on_token_soup(
        tokens in proptest::collection::vec(prop_oneof![
            Just("0"), Just("1"), Just("9"), Just("18446744073709551615"), Just("99999999999"),
            Just("."), Just("ns"), Just("us"), Just("µs"), Just("µ"), Just("ms"), Just("s"),
            Just("m"), Just("min"), Just("h"), Just("d"), Just(" "), Just("-"), Just("+"),
            Just("\t"), Just("e"), Just("y"), Just("mo"), Just("\u{0}"), Just("٣"),
        ], 0..16),
    ) {
        let s: String = tokens.concat();
        let r = catch_unwind(|| parse(&s));
        prop_assert!(r.is_ok(), "panicked on {:?}", s);
        if let Ok(Ok(d)) = r {
            prop_assert_eq!(parse(&HumanDuration(d).to_string()), Ok(d));
        }
    }

    /// "one or more groups of a whole number, an optional fraction and a unit, with optional
    /// spaces between groups"; "the result is exact ...: a fraction finer than a nanosecond and
    /// a sum above `u64::MAX` nanoseconds ... are errors" — against an exact u128 model.
    #[test]
    fn duration_groups_sum_exactly_or_fail_for_the_documented_reason(
        groups in proptest::collection::vec(group(), 1..5),
    ) {
        let mut text = String::new();
        let mut total = 0u128;
        let mut sub_ns = false;
        for (i, g) in groups.iter().enumerate() {
            if i > 0 {
                text.push_str(g.space);
            }
            text.push_str(&g.whole.to_string());
            if !g.fraction.is_empty() {
                text.push('.');
                text.push_str(&g.fraction);
            }
            text.push_str(g.unit.0);
            let per = u128::from(g.unit.1);
            total += u128::from(g.whole) * per;
            if !g.fraction.is_empty() {
                let digits = u32::try_from(g.fraction.len()).unwrap();
                let f: u128 = g.fraction.parse().unwrap();
                let scale = 10u128.pow(digits);
                if !(f * per).is_multiple_of(scale) {
                    sub_ns = true;
                }
                total += f * per / scale;
            }
        }
        let too_large = total > u128::from(u64::MAX);
        match parse(&text) {
            Ok(d) => {
                prop_assert!(!sub_ns && !too_large, "{:?} accepted as {:?}", text, d);
                prop_assert_eq!(d.as_nanos(), total, "{:?}", text);
            }
            Err(DurationError::SubNanosecond) => prop_assert!(sub_ns, "{:?}", text),
            Err(DurationError::TooLarge) => prop_assert!(too_large, "{:?}", text),
            Err(e) => prop_assert!(false, "{:?} refused as {:?}", text, e),
        }
    }

    /// `HumanDuration`: "prints any duration back in the shortest single group that is exact,
    /// so a printed value always parses to itself" — one group, a whole number of the largest
    /// unit that is exact.
    #[test]
    fn human_duration_prints_one_exact_group_that_parses_to_itself(
        n in prop_oneof![any::<u64>(), 0u64..=1_000, (1u64..=1_000).prop_map(|k| k * 60 * SEC), (1u64..=1_000).prop_map(|k| k * 24 * HOUR_NS)],
    ) {
        let d = Duration::from_nanos(n);
        let text = HumanDuration(d).to_string();
        prop_assert_eq!(parse(&text), Ok(d), "{:?}", text);
        prop_assert!(!text.contains(' ') && !text.contains('.'), "not one whole group: {:?}", text);
        let digits: String = text.chars().take_while(char::is_ascii_digit).collect();
        let unit = &text[digits.len()..];
        let value: u64 = digits.parse().unwrap();
        let next_ratio = match unit {
            "ns" | "us" | "ms" => 1_000,
            "s" | "m" => 60,
            "h" => 24,
            "d" => u64::MAX,
            other => return Err(TestCaseError::fail(format!("unit {other:?}"))),
        };
        prop_assert!(n == 0 || !value.is_multiple_of(next_ratio), "{:?} is not in the largest exact unit", text);
    }
}

/// "Durations above `u64::MAX` nanoseconds, which `parse` refuses, print in whole seconds and
/// nanoseconds (`"…s …ns"`), still exactly"; and the documented examples.
#[test]
fn human_duration_prints_documented_examples_and_huge_values_exactly() {
    assert_eq!(HumanDuration(Duration::ZERO).to_string(), "0s");
    assert_eq!(
        HumanDuration(Duration::from_millis(1_500)).to_string(),
        "1500ms"
    );
    assert_eq!(HumanDuration(Duration::from_secs(5_400)).to_string(), "90m");
    assert_eq!(
        HumanDuration(Duration::from_micros(2_500)).to_string(),
        "2500us"
    );
    assert_eq!(HumanDuration(Duration::from_secs(86_400)).to_string(), "1d");
    assert_eq!(
        HumanDuration(Duration::MAX).to_string(),
        format!("{}s {}ns", u64::MAX, 999_999_999)
    );
    let just_over = Duration::from_nanos(u64::MAX) + Duration::from_nanos(1);
    let text = HumanDuration(just_over).to_string();
    assert_eq!(parse(&text), Err(DurationError::TooLarge), "{text:?}");
    assert_eq!(text, "18446744073s 709551616ns");
}

// ---------------------------------------------------------------------------------------------
// ConfigError
// ---------------------------------------------------------------------------------------------

/// `ConfigError::rule`: "The rule that was broken, without the field's name" (the documented
/// "must be within [0.000001, 1], got 1.5" and "must be greater than zero"); `field()`; and
/// messages in lowercase, naming the field, without a trailing period (as every documented
/// message is written).
#[test]
fn config_error_messages_are_lowercase_name_the_field_and_rule_omits_it() {
    let errors = [
        ConfigError::Zero { field: "burst" },
        ConfigError::NotFinite { field: "factor" },
        ConfigError::OutOfRange {
            field: "failure_rate",
            value: 1.5,
            allowed: "within [0.000001, 1]",
        },
        ConfigError::OutOfRange {
            field: "ratio",
            value: f64::NAN,
            allowed: "<= 1000",
        },
        ConfigError::DurationOverflow { field: "max_delay" },
        ConfigError::Conflict {
            reason: "initial delay exceeds max_delay",
        },
    ];
    for e in errors {
        let shown = e.to_string();
        let first = shown.trim_start_matches('`').chars().next().unwrap();
        assert!(first.is_lowercase(), "{shown:?}");
        assert!(!shown.ends_with('.'), "{shown:?}");
        let rule = e.rule().to_string();
        assert!(!rule.is_empty());
        match e.field() {
            Some(field) => {
                assert!(shown.contains(field), "{shown:?} does not name {field}");
                assert!(!rule.contains(field), "rule {rule:?} names the field");
            }
            None => assert!(
                shown.contains("initial delay exceeds max_delay"),
                "{shown:?}"
            ),
        }
    }
    let e = ConfigError::OutOfRange {
        field: "failure_rate",
        value: 1.5,
        allowed: "within [0.000001, 1]",
    };
    assert_eq!(
        e.rule().to_string(),
        "must be within [0.000001, 1], got 1.5"
    );
    assert_eq!(
        ConfigError::Zero { field: "burst" }.rule().to_string(),
        "must be greater than zero"
    );
    // Errors from real builders carry the builder's field names.
    let e = Backoff::constant(Duration::from_millis(1))
        .max_attempts(0)
        .build()
        .unwrap_err();
    assert_eq!(e.field(), Some("max_attempts"));
    for e in [
        DurationError::Empty,
        DurationError::Malformed,
        DurationError::MissingUnit,
        DurationError::UnknownUnit,
        DurationError::SubNanosecond,
        DurationError::TooLarge,
    ] {
        let shown = e.to_string();
        assert!(
            shown.chars().next().unwrap().is_lowercase() && !shown.ends_with('.'),
            "{shown:?}"
        );
    }
}
