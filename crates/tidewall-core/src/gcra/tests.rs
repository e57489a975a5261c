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
    assert_eq!(
        Gcra::new(1, Duration::from_nanos(u64::MAX), 2),
        Err(ConfigError::DurationOverflow { field: "burst" })
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

proptest! {
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
