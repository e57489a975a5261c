use core::time::Duration;
use std::vec::Vec;

use proptest::prelude::*;

use super::*;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn collect(b: &Backoff, seed: u64) -> Vec<Duration> {
    b.delays(seed).collect()
}

/// A factor that is not a whole number steps in f64, whose products of decimal numbers land
/// a hair below the decimal result: each delay is the nearest nanosecond, not the truncation.
#[test]
fn a_fractional_factor_gives_the_nearest_nanosecond() {
    let b = Backoff::exponential(ms(100))
        .factor(1.15)
        .jitter(Jitter::None)
        .max_attempts(4)
        .build()
        .unwrap();
    let nanos: Vec<u64> = collect(&b, 0)
        .iter()
        .map(|d| u64::try_from(d.as_nanos()).unwrap())
        .collect();
    assert_eq!(nanos, [100_000_000, 115_000_000, 132_250_000]);
}

#[test]
fn exponential_is_base_times_factor_to_the_n_not_base_to_the_n() {
    let b = Backoff::exponential(ms(100))
        .factor(3.0)
        .jitter(Jitter::None)
        .max_attempts(5);
    let delays = collect(&b.max_delay(Duration::from_secs(60)).build().unwrap(), 0);
    assert_eq!(delays, [ms(100), ms(300), ms(900), ms(2700)]);
}

#[test]
fn fractional_factor_compounds() {
    let b = Backoff::exponential(ms(1000))
        .factor(1.5)
        .jitter(Jitter::None)
        .max_attempts(4);
    assert_eq!(
        collect(&b.build().unwrap(), 0),
        [ms(1000), ms(1500), ms(2250)]
    );
}

#[test]
fn linear_and_constant() {
    let lin = Backoff::linear(ms(10), ms(5))
        .jitter(Jitter::None)
        .max_attempts(4)
        .build()
        .unwrap();
    assert_eq!(collect(&lin, 0), [ms(10), ms(15), ms(20)]);
    let con = Backoff::constant(ms(7))
        .jitter(Jitter::None)
        .max_attempts(3)
        .build()
        .unwrap();
    assert_eq!(collect(&con, 0), [ms(7), ms(7)]);
}

#[test]
fn jitter_is_on_by_default_and_seeded() {
    let b = Backoff::constant(ms(1000))
        .max_attempts(50)
        .build()
        .unwrap();
    assert_eq!(b.jitter_mode(), Jitter::Full);
    let a = collect(&b, 1);
    assert!(
        a.iter().any(|d| *d != ms(1000)),
        "full jitter must randomize"
    );
    assert_eq!(a, collect(&b, 1));
    assert_ne!(a, collect(&b, 2));
}

#[test]
fn equal_jitter_keeps_at_least_half() {
    let b = Backoff::constant(ms(1000))
        .jitter(Jitter::Equal)
        .max_attempts(200)
        .build()
        .unwrap();
    for d in collect(&b, 3) {
        assert!(d >= ms(500) && d <= ms(1000), "{d:?}");
    }
}

#[test]
fn cap_applies_to_the_schedule_and_after_jitter() {
    let b = Backoff::exponential(ms(100))
        .jitter(Jitter::None)
        .max_delay(ms(250))
        .max_attempts(6);
    assert_eq!(
        collect(&b.build().unwrap(), 0),
        [ms(100), ms(200), ms(250), ms(250), ms(250)]
    );
}

#[test]
fn max_elapsed_stops_before_the_budget_is_exceeded() {
    let b = Backoff::constant(ms(100))
        .jitter(Jitter::None)
        .max_attempts(100)
        .max_elapsed(ms(350));
    assert_eq!(collect(&b.build().unwrap(), 0), [ms(100), ms(100), ms(100)]);
}

#[test]
fn single_attempt_yields_no_delay() {
    let b = Backoff::constant(ms(1)).max_attempts(1).build().unwrap();
    assert_eq!(b.delays(0).next(), None);
}

#[test]
fn decorrelated_jitter_stays_between_initial_and_cap() {
    let b = Backoff::decorrelated_jitter(ms(10))
        .max_delay(ms(500))
        .max_attempts(100);
    let delays = collect(&b.build().unwrap(), 9);
    assert_eq!(delays.len(), 99);
    assert!(delays.iter().all(|d| *d >= ms(10) && *d <= ms(500)));
    assert!(
        delays.iter().any(|d| *d > ms(30)),
        "it must grow past 3 × initial"
    );
}

#[test]
fn invalid_configuration_is_a_typed_error() {
    let err = |b: BackoffBuilder| b.build().unwrap_err();
    assert_eq!(
        err(Backoff::constant(ms(1)).max_attempts(0)),
        ConfigError::Zero {
            field: "max_attempts"
        }
    );
    assert_eq!(
        err(Backoff::constant(ms(1)).max_delay(ms(0))),
        ConfigError::Zero { field: "max_delay" }
    );
    assert_eq!(
        err(Backoff::exponential(ms(1)).factor(f64::NAN)),
        ConfigError::NotFinite { field: "factor" }
    );
    assert_eq!(
        err(Backoff::exponential(ms(1)).factor(f64::INFINITY)),
        ConfigError::NotFinite { field: "factor" }
    );
    assert!(matches!(
        err(Backoff::exponential(ms(1)).factor(0.5)),
        ConfigError::OutOfRange {
            field: "factor",
            ..
        }
    ));
    assert_eq!(
        err(Backoff::constant(Duration::MAX).max_delay(Duration::MAX)),
        ConfigError::DurationOverflow { field: "max_delay" }
    );
    assert_eq!(
        err(Backoff::constant(ms(1)).max_elapsed(Duration::MAX)),
        ConfigError::DurationOverflow {
            field: "max_elapsed"
        }
    );
    assert!(matches!(
        err(Backoff::constant(ms(100)).max_delay(ms(10))),
        ConfigError::Conflict { .. }
    ));
    assert!(matches!(
        err(Backoff::decorrelated_jitter(ms(1)).jitter(Jitter::Full)),
        ConfigError::Conflict { .. }
    ));
    assert_eq!(
        err(Backoff::decorrelated_jitter(ms(0))),
        ConfigError::Zero { field: "initial" }
    );
}

#[test]
fn exponential_delays_beyond_f64_precision_are_exact() {
    // 2^53 + 1 ns (104 days) is the first delay an f64 cannot hold.
    let initial = Duration::from_nanos((1 << 53) + 1);
    let b = |factor| {
        Backoff::exponential(initial)
            .factor(factor)
            .jitter(Jitter::None)
            .max_delay(Duration::from_nanos(u64::MAX))
            .max_attempts(4)
            .build()
            .unwrap()
    };
    assert_eq!(collect(&b(1.0), 0), [initial; 3]);
    let doubling = collect(&b(2.0), 0);
    assert_eq!(doubling[0], initial);
    assert!(doubling.windows(2).all(|w| w[0] <= w[1]), "{doubling:?}");
}

#[test]
fn a_product_that_fits_in_53_bits_is_exact() {
    let b = |initial, factor| {
        Backoff::exponential(Duration::from_nanos(initial))
            .factor(factor)
            .jitter(Jitter::None)
            .max_delay(Duration::from_nanos(u64::MAX))
            .max_attempts(3)
            .build()
            .unwrap()
    };
    // An odd result between 2^52 and 2^53: `x + 0.5` rounded it to even, one ns high.
    let halves = collect(&b(3_002_399_751_580_334, 1.5), 0);
    assert_eq!(halves[1], Duration::from_nanos(4_503_599_627_370_501));
    // A whole factor past 2^52 is exact in integers, not stepped in f64.
    let whole = collect(&b(3, 4_503_599_627_370_497.0), 0);
    assert_eq!(whole[1], Duration::from_nanos(13_510_798_882_111_491));
}

fn any_builder() -> impl Strategy<Value = BackoffBuilder> {
    let nanos = prop_oneof![
        0..1_000u64,
        0..10_000_000_000u64,
        Just(u64::MAX / 2),
        Just(u64::MAX)
    ];
    let jitter = prop_oneof![Just(Jitter::None), Just(Jitter::Full), Just(Jitter::Equal)];
    (0u8..4, nanos.clone(), nanos.clone(), 1.0f64..1000.0, jitter).prop_map(
        move |(kind, a, b, factor, jitter)| {
            let (a, b) = (Duration::from_nanos(a), Duration::from_nanos(b));
            match kind {
                0 => Backoff::constant(a).jitter(jitter),
                1 => Backoff::linear(a, b).jitter(jitter),
                2 => Backoff::exponential(a).factor(factor).jitter(jitter),
                _ => Backoff::decorrelated_jitter(a.max(Duration::from_nanos(1))),
            }
        },
    )
}

proptest! {
    #[test]
    fn every_delay_is_capped_counted_and_within_budget(
        builder in any_builder(),
        cap in 1u64..=u64::MAX,
        attempts in 1u32..200,
        budget in proptest::option::of(0u64..=u64::MAX),
        seed in any::<u64>(),
    ) {
        let mut builder = builder.max_delay(Duration::from_nanos(cap)).max_attempts(attempts);
        if let Some(budget) = budget {
            builder = builder.max_elapsed(Duration::from_nanos(budget));
        }
        // Configurations whose first delay exceeds the cap are rejected; the rest must hold.
        if let Ok(b) = builder.build() {
            let delays = collect(&b, seed);
            prop_assert!(delays.len() < attempts as usize);
            prop_assert!(delays.iter().all(|d| *d <= Duration::from_nanos(cap)));
            let total: u128 = delays.iter().map(Duration::as_nanos).sum();
            if let Some(budget) = budget {
                prop_assert!(total <= u128::from(budget));
            }
            prop_assert_eq!(delays, collect(&b, seed));
        }
    }

    #[test]
    fn the_unjittered_schedule_never_shrinks(initial in 1u64..1_000_000, factor in 1.0f64..10.0) {
        let b = Backoff::exponential(Duration::from_nanos(initial))
            .factor(factor).jitter(Jitter::None).max_attempts(100).build().unwrap();
        let delays = collect(&b, 0);
        prop_assert!(delays.windows(2).all(|w| w[0] <= w[1]));
    }
}

proptest! {
    #[test]
    fn the_state_api_matches_the_iterator(builder in any_builder(), attempts in 1u32..50, seed in any::<u64>()) {
        if let Ok(b) = builder.max_delay(Duration::MAX / 1_000_000_000).max_attempts(attempts).build() {
            let mut state = b.start(seed);
            let stepped: Vec<_> = core::iter::from_fn(|| b.next_delay(&mut state)).collect();
            prop_assert_eq!(stepped, collect(&b, seed));
        }
    }
}

proptest! {
    /// A held schedule gives the iterator's delays, then repeats the last one for ever (the
    /// cap when it gave none), for any schedule, jitter and budget.
    #[test]
    fn a_held_schedule_repeats_its_last_delay_once_spent(
        builder in any_builder(),
        attempts in 1u32..20,
        seed in any::<u64>(),
        // A budget that refuses a delay drawn must not make the held delay that one.
        budget in proptest::option::of(1u64..1u64 << 40),
    ) {
        let builder = builder.max_delay(Duration::MAX / 1_000_000_000).max_attempts(attempts);
        let builder = match budget {
            Some(nanos) => builder.max_elapsed(Duration::from_nanos(nanos)),
            None => builder,
        };
        if let Ok(b) = builder.build() {
            let delays = collect(&b, seed);
            let mut state = b.start(seed);
            let held: Vec<_> = (0..delays.len() + 5).map(|_| b.next_delay_held(&mut state)).collect();
            prop_assert_eq!(&held[..delays.len()], &delays[..]);
            let last = delays.last().copied().unwrap_or(b.max_delay_cap());
            prop_assert!(held[delays.len()..].iter().all(|d| *d == last));
        }
    }
}
