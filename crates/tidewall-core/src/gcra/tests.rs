use core::time::Duration;

use proptest::prelude::*;

use super::*;

#[test]
fn rejects_zero_and_overflowing_configuration() {
    let s = Duration::from_secs(1);
    assert_eq!(
        Gcra::new(0, s, 1),
        Err(ConfigError::Zero { field: "count" })
    );
    assert_eq!(
        Gcra::new(1, s, 0),
        Err(ConfigError::Zero { field: "burst" })
    );
    assert_eq!(
        Gcra::new(1, Duration::ZERO, 1),
        Err(ConfigError::Zero { field: "period" })
    );
    assert!(matches!(
        Gcra::new(10, Duration::from_nanos(5), 1),
        Err(ConfigError::OutOfRange { field: "count", .. })
    ));
    assert_eq!(
        Gcra::new(1, Duration::MAX, 1),
        Err(ConfigError::DurationOverflow { field: "period" })
    );
    // Two intervals must fit: the state reaches a burst and the cell after it.
    assert_eq!(
        Gcra::new(1, Duration::from_nanos(u64::MAX), 1),
        Err(ConfigError::DurationOverflow { field: "period" })
    );
    let half = u64::MAX / 2;
    assert!(Gcra::new(1, Duration::from_nanos(half), 1).is_ok());
    assert_eq!(
        Gcra::new(1, Duration::from_nanos(half + 1), 1),
        Err(ConfigError::DurationOverflow { field: "period" })
    );
    let quarter = u64::MAX / 4;
    assert!(Gcra::new(1, Duration::from_nanos(quarter), 3).is_ok());
    assert_eq!(
        Gcra::new(1, Duration::from_nanos(quarter), 4),
        Err(ConfigError::DurationOverflow { field: "burst" })
    );
}

#[test]
fn the_longest_interval_that_builds_states_its_waits_exactly() {
    // A state saturated at u64::MAX would admit the second cell at once, or misstate its wait.
    let interval = u64::MAX / 2;
    let g = Gcra::new(1, Duration::from_nanos(interval), 1).unwrap();
    let tat = g.decide(0, 0, 1).unwrap();
    assert_eq!(g.decide(tat, 0, 1), Err(Denied::Wait { nanos: interval }));
    assert_eq!(
        g.decide(tat, 1, 1),
        Err(Denied::Wait {
            nanos: interval - 1
        })
    );
}

#[test]
fn burst_then_one_per_interval() {
    let g = Gcra::new(10, Duration::from_secs(1), 3).unwrap();
    let mut tat = 0;
    for _ in 0..3 {
        tat = g.decide(tat, 0, 1).unwrap();
    }
    assert_eq!(
        g.decide(tat, 0, 1),
        Err(Denied::Wait { nanos: 100_000_000 })
    );
    assert_eq!(g.decide(tat, 99_999_999, 1), Err(Denied::Wait { nanos: 1 }));
    tat = g.decide(tat, 100_000_000, 1).unwrap();
    assert_eq!(
        g.decide(tat, 100_000_000, 1),
        Err(Denied::Wait { nanos: 100_000_000 })
    );
}

#[test]
fn more_cells_than_the_burst_can_never_pass() {
    let g = Gcra::new(10, Duration::from_secs(1), 3).unwrap();
    assert_eq!(
        g.decide(0, 0, 4),
        Err(Denied::InsufficientCapacity { burst: 3 })
    );
    assert_eq!(g.decide(0, 0, 3), Ok(300_000_000));
    assert_eq!(g.decide(7, 5, 0), Ok(7), "zero cells leave the state alone");
}

#[test]
fn a_rested_state_behaves_like_a_fresh_one() {
    let g = Gcra::new(5, Duration::from_secs(1), 2).unwrap();
    let now = 10_000_000_000;
    let old_tat = now - 1;
    assert!(Gcra::is_rested(old_tat, now));
    assert_eq!(g.decide(old_tat, now, 2), g.decide(0, now, 2));
    assert_eq!(g.decide(old_tat, now, 1), g.decide(now, now, 1));
}

/// At the end of time `available` counts only what `decide` can store.
#[test]
fn available_at_the_end_of_time_is_what_fits() {
    let g = Gcra::new(10, Duration::from_secs(1), 5).unwrap(); // 100 ms a cell
    assert!(Gcra::is_rested(0, u64::MAX));
    assert_eq!(g.available(0, u64::MAX), 0);
    assert!(g.decide(0, u64::MAX, 1).is_err());
    let two_left = u64::MAX - 250_000_000;
    assert_eq!(g.available(0, two_left), 2);
    assert!(g.decide(0, two_left, 2).is_ok());
    assert!(g.decide(0, two_left, 3).is_err());
}

proptest! {
    /// `available` is exactly the largest request `decide` admits, at any state and any
    /// time up to the type's limits.
    #[test]
    fn available_is_the_largest_request_decide_admits(
        interval in prop_oneof![Just(1u64), Just(u64::MAX / 2), 1u64..1_000_000_000],
        burst in prop_oneof![Just(1u32), Just(u32::MAX), 1u32..100],
        tat in prop_oneof![Just(0u64), Just(u64::MAX), any::<u64>()],
        now in prop_oneof![Just(0u64), Just(u64::MAX), any::<u64>()],
    ) {
        let Ok(g) = Gcra::new(1, Duration::from_nanos(interval), burst) else {
            return Ok(()); // refused limits have no state to read
        };
        let available = g.available(tat, now);
        prop_assert!(available <= burst);
        if available > 0 {
            // Admitted, at the end of time too: `available` counts only what fits.
            prop_assert!(g.decide(tat, now, available).is_ok());
        }
        if available < burst {
            prop_assert!(g.decide(tat, now, available + 1).is_err());
        }
    }

    /// A greedy caller that asks at every nanosecond the limiter names gets exactly
    /// `burst + floor(span / interval)` cells: the documented burst sentence, exactly.
    #[test]
    fn greedy_caller_gets_exactly_the_theoretical_count(
        count in 1u32..1_000, period_ms in 1u64..10_000, burst in 1u32..50, span_ms in 0u64..20_000,
    ) {
        let g = Gcra::new(count, Duration::from_millis(period_ms), burst).unwrap();
        let span = span_ms * 1_000_000;
        let (mut tat, mut now, mut admitted) = (0u64, 0u64, 0u64);
        loop {
            match g.decide(tat, now, 1) {
                Ok(next) => { tat = next; admitted += 1; }
                Err(Denied::Wait { nanos }) => {
                    prop_assert!(nanos > 0);
                    now += nanos;
                    if now > span { break; }
                }
                Err(other) => prop_assert!(false, "unexpected {other:?}"),
            }
        }
        prop_assert_eq!(admitted, g.max_admitted(span));
    }

    /// Whatever the arrival pattern, no window of time from rest admits more than the bound,
    /// and a denial's wait is exact: waiting that long makes the same request pass.
    #[test]
    fn arbitrary_arrivals_never_exceed_the_bound(
        burst in 1u32..20,
        gaps in proptest::collection::vec((0u64..50_000_000, 1u32..4), 1..300),
    ) {
        let g = Gcra::new(100, Duration::from_secs(1), burst).unwrap();
        let (mut tat, mut now, mut admitted) = (0u64, 0u64, 0u64);
        for (gap, cells) in gaps {
            now += gap;
            match g.decide(tat, now, cells) {
                Ok(next) => { tat = next; admitted += u64::from(cells); }
                Err(Denied::Wait { nanos }) => {
                    prop_assert!(g.decide(tat, now + nanos, cells).is_ok());
                    prop_assert!(g.decide(tat, now + nanos - 1, cells).is_err());
                }
                Err(Denied::InsufficientCapacity { .. }) => prop_assert!(cells > burst),
            }
            prop_assert!(admitted <= g.max_admitted(now));
        }
    }
}

#[test]
fn seven_hundred_million_per_second_is_refused_not_rounded_to_a_billion() {
    // 1.43 ns rounded down to 1 ns would admit 1,000,000,001 cells a second: 43 % too many.
    let second = Duration::from_secs(1);
    for resolution in [Resolution::Nanos, Resolution::Micros] {
        assert!(matches!(
            emission_interval(700_000_000, second, resolution),
            Err(ConfigError::OutOfRange { field: "count", .. })
        ));
    }
    assert!(matches!(
        Gcra::new(700_000_000, second, 1),
        Err(ConfigError::OutOfRange { field: "count", .. })
    ));
    // Exact divisions and roundings under 0.1 % still pass.
    assert_eq!(
        Gcra::new(1_000_000_000, second, 1).map(|g| g.interval_nanos()),
        Ok(1)
    );
    assert_eq!(
        Gcra::new(999_000, second, 1).map(|g| g.interval_nanos()),
        Ok(1_001)
    );
    assert_eq!(
        Gcra::new(3, second, 1).map(|g| g.interval_nanos()),
        Ok(333_333_333)
    );
}

#[test]
fn the_rounding_rule_is_exactly_one_part_in_a_thousand() {
    // 1001 ns / 1000 units: a remainder of 1 over a period of 1001 is exactly 0.1 %.
    assert_eq!(
        emission_interval(1, Duration::from_nanos(1_001), Resolution::Micros),
        Ok(1)
    );
    assert!(emission_interval(1, Duration::from_nanos(1_000), Resolution::Micros).is_ok());
    // 1000.999 ns for one cell is 0.0999 % above 1 µs; 999 ns is under one unit.
    assert!(emission_interval(1_000, Duration::from_nanos(1_000_999), Resolution::Micros).is_ok());
    assert!(emission_interval(1, Duration::from_nanos(999), Resolution::Micros).is_err());
    // 2 cells in 1001 ns: 500.5 ns rounded to 500 is exactly 0.1 % faster, still allowed;
    // 2 in 999 ns: 499.5 ns rounded to 499 is 0.1002 % faster, refused.
    assert_eq!(
        emission_interval(2, Duration::from_nanos(1_001), Resolution::Nanos),
        Ok(500)
    );
    assert!(emission_interval(2, Duration::from_nanos(999), Resolution::Nanos).is_err());
}

/// The rule's promise, checked without its arithmetic: the admitted rate is never below the
/// rate asked, nor more than 0.1 % above it (rates compared as exact fractions).
fn assert_faithful(
    count: u32,
    period: u128,
    unit: u64,
    interval: u64,
) -> Result<(), TestCaseError> {
    prop_assert!(interval >= 1);
    // Admitted: one cell per `interval × unit` ns. Asked: `count` per `period` ns.
    let admitted_period = u128::from(interval) * u128::from(unit) * u128::from(count);
    prop_assert!(admitted_period <= period, "never slower than asked");
    prop_assert!(
        period * 1000 <= admitted_period * 1001,
        "at most 0.1 % faster"
    );
    Ok(())
}

/// A period, in ns, near a multiple of `count × unit` or anywhere in u64.
fn periods(count: u32, unit: u64) -> impl Strategy<Value = u64> {
    let step = u64::from(count) * unit;
    prop_oneof![
        (1u64..4_000, 0..step).prop_map(move |(k, r)| k.saturating_mul(step).saturating_add(r)),
        1u64..=u64::MAX,
        1u64..2_000_000,
    ]
}

proptest! {
    /// Over the whole input range (any count, any period from 1 ns up to and past `u64::MAX`
    /// ns, both units): an interval within 0.1 % of the asked rate, or a typed error that
    /// says why — never a panic, never a silent over-rate.
    #[test]
    fn an_interval_is_within_a_tenth_of_a_percent_or_refused(
        (count, unit, period) in (1u32..=u32::MAX, prop_oneof![Just(1u64), Just(1_000u64)])
            .prop_flat_map(|(count, unit)| (Just(count), Just(unit), periods(count, unit))),
        beyond in any::<bool>(),
    ) {
        let resolution = if unit == 1 { Resolution::Nanos } else { Resolution::Micros };
        let period = if beyond {
            // Past u64::MAX ns: refused as an overflow, whatever the count.
            Duration::from_secs(u64::MAX / 1_000_000_000 + 1 + period % 1_000_000)
        } else {
            Duration::from_nanos(period)
        };
        let nanos = period.as_nanos();
        match emission_interval(count, period, resolution) {
            Ok(interval) => assert_faithful(count, nanos, unit, interval)?,
            Err(ConfigError::DurationOverflow { field: "period" }) => prop_assert!(nanos > u128::from(u64::MAX)),
            Err(ConfigError::OutOfRange { field: "count", .. }) => {
                prop_assert!(nanos <= u128::from(u64::MAX));
                // Refused only when the rounded-down interval really breaks the rule.
                let floor = nanos / (u128::from(count) * u128::from(unit));
                let admitted_period = floor * u128::from(unit) * u128::from(count);
                prop_assert!(floor == 0 || nanos * 1000 > admitted_period * 1001);
            }
            Err(other) => prop_assert!(false, "unexpected {other:?}"),
        }
        // The GCRA agrees with the rule it is built on.
        if resolution == Resolution::Nanos {
            match (Gcra::new(count, period, 1), emission_interval(count, period, resolution)) {
                (Ok(g), Ok(interval)) => prop_assert_eq!(g.interval_nanos(), interval),
                (Err(a), Err(b)) => prop_assert_eq!(a, b),
                (a, b) => prop_assert!(false, "{a:?} vs {b:?}"),
            }
        }
    }
}
