use core::time::Duration;
use std::vec::Vec;

use proptest::prelude::*;

use super::window::{Bucket, slot_code, totals_delta, unpack_totals};
use super::*;
use crate::ConfigError;

#[test]
fn builder_rejects_bad_input_with_typed_errors() {
    let b = BreakerPolicy::builder;
    assert!(matches!(
        b().failure_rate(0.0).build(),
        Err(ConfigError::OutOfRange { .. })
    ));
    assert!(matches!(
        b().failure_rate(1.5).build(),
        Err(ConfigError::OutOfRange { .. })
    ));
    assert!(matches!(
        b().failure_rate(f64::NAN).build(),
        Err(ConfigError::NotFinite { .. })
    ));
    assert!(matches!(
        b().slow_call_rate(-0.1, Duration::from_secs(1)).build(),
        Err(ConfigError::OutOfRange { .. })
    ));
    assert_eq!(
        b().slow_call_rate(0.5, Duration::ZERO).build(),
        Err(ConfigError::Zero {
            field: "slow_call_threshold"
        })
    );
    assert_eq!(
        b().window(Window::Count { calls: 0 }).build(),
        Err(ConfigError::Zero {
            field: "window.calls"
        })
    );
    assert_eq!(
        b().window(Window::Time {
            span: Duration::from_secs(1),
            buckets: 0
        })
        .build(),
        Err(ConfigError::Zero {
            field: "window.buckets"
        })
    );
    assert_eq!(
        b().window(Window::Time {
            span: Duration::ZERO,
            buckets: 4
        })
        .build(),
        Err(ConfigError::Zero {
            field: "window.span"
        })
    );
    // Not zero, but shorter than one nanosecond per bucket: out of range, not "zero".
    assert!(matches!(
        b().window(Window::Time {
            span: Duration::from_nanos(3),
            buckets: 4
        })
        .build(),
        Err(ConfigError::OutOfRange {
            field: "window.span",
            ..
        })
    ));
    assert_eq!(
        b().window(Window::Time {
            span: Duration::MAX,
            buckets: 4
        })
        .build(),
        Err(ConfigError::DurationOverflow {
            field: "window.span"
        })
    );
    assert_eq!(
        b().half_open_probes(0).build(),
        Err(ConfigError::Zero {
            field: "half_open_probes"
        })
    );
    assert_eq!(
        b().break_duration(Duration::ZERO).build(),
        Err(ConfigError::Zero {
            field: "break_duration"
        })
    );
    assert_eq!(
        b().break_duration(Duration::MAX).build(),
        Err(ConfigError::DurationOverflow {
            field: "break_duration"
        })
    );
    assert_eq!(
        b().consecutive_failures(0).build(),
        Err(ConfigError::Zero {
            field: "consecutive_failures"
        })
    );
    assert!(matches!(
        b().no_failure_rate().build(),
        Err(ConfigError::Conflict { .. })
    ));
    // Probe counters are 12-bit fields of the state word: more would spill into the next field.
    assert!(matches!(
        b().half_open_probes(4096).build(),
        Err(ConfigError::OutOfRange {
            field: "half_open_probes",
            ..
        })
    ));
    assert!(b().half_open_probes(4095).build().is_ok());
    assert!(matches!(
        b().window(Window::Count { calls: 5 })
            .minimum_calls(6)
            .build(),
        Err(ConfigError::Conflict { .. })
    ));
    assert!(
        b().window(Window::Count { calls: 5 })
            .minimum_calls(6)
            .consecutive_failures(2)
            .build()
            .is_ok()
    );
    assert_eq!(
        b().max_half_open_wait(Some(Duration::ZERO)).build(),
        Err(ConfigError::Zero {
            field: "max_half_open_wait"
        })
    );
    assert!(
        b().no_failure_rate()
            .consecutive_failures(3)
            .build()
            .is_ok()
    );
}

#[test]
fn rates_trip_at_the_threshold_not_before() {
    let p = BreakerPolicy::builder()
        .failure_rate(0.3)
        .slow_call_rate(0.5, Duration::from_millis(100))
        .minimum_calls(10)
        .build()
        .unwrap();
    let c = |calls, failures, slow| Counts {
        calls,
        failures,
        slow,
    };
    assert_eq!(p.evaluate(c(10, 2, 4), 0), None);
    assert_eq!(p.evaluate(c(10, 3, 0), 0), Some(TripReason::FailureRate));
    assert_eq!(p.evaluate(c(10, 0, 5), 0), Some(TripReason::SlowCallRate));
    assert_eq!(
        p.evaluate(c(9, 9, 9), 0),
        None,
        "below the minimum number of calls"
    );
    assert!(p.is_slow(Duration::from_millis(100)));
    assert!(!p.is_slow(Duration::from_millis(99)));
}

#[test]
fn consecutive_failures_ignore_the_minimum() {
    let p = BreakerPolicy::builder()
        .consecutive_failures(3)
        .minimum_calls(100)
        .build()
        .unwrap();
    assert_eq!(
        p.evaluate(
            Counts {
                calls: 3,
                failures: 3,
                slow: 0
            },
            2
        ),
        None
    );
    assert_eq!(
        p.evaluate(
            Counts {
                calls: 3,
                failures: 3,
                slow: 0
            },
            3
        ),
        Some(TripReason::ConsecutiveFailures)
    );
}

#[test]
fn break_duration_grows_with_the_backoff_and_stays_at_its_cap() {
    let backoff = crate::backoff::Backoff::exponential(Duration::from_secs(1))
        .factor(2.0)
        .jitter(crate::backoff::Jitter::None)
        .max_delay(Duration::from_secs(10))
        .max_attempts(4)
        .build()
        .unwrap();
    let p = BreakerPolicy::builder()
        .break_backoff(backoff)
        .build()
        .unwrap();
    let got: Vec<u64> = (0..6).map(|k| p.break_duration(k, 7).as_secs()).collect();
    assert_eq!(got, [1, 2, 4, 4, 4, 4]);
    let fixed = BreakerPolicy::builder()
        .break_duration(Duration::from_secs(3))
        .build()
        .unwrap();
    assert_eq!(fixed.break_duration(0, 0), Duration::from_secs(3));
    assert_eq!(fixed.break_duration(50, 0), Duration::from_secs(3));
}

#[test]
fn stale_buckets_count_as_empty() {
    let b = Bucket::BREAKER;
    let word = b.add(0, 5, [1, 1, 0]).unwrap();
    // A ring of 4 slots: epoch 5 lives in slot 1 and is live until epoch 8 is current.
    assert_eq!(b.live(word, 1, 4, 5), [1, 1, 0]);
    assert_eq!(b.live(word, 1, 4, 8), [1, 1, 0]);
    assert_eq!(b.live(word, 1, 4, 9), [0, 0, 0]);
    // Adding at a new epoch starts the bucket afresh.
    assert_eq!(b.field(b.add(word, 9, [1, 0, 0]).unwrap(), 1), 0);
    // A writer a little behind a boundary leaves the newer bucket alone.
    let newer = b.add(0, 10, [3, 0, 0]).unwrap();
    assert_eq!(b.add(newer, 9, [1, 0, 0]), None);
    // A counter at its limit refuses instead of wrapping, or halves to make room.
    let full = b.add(0, 1, [65_535, 0, 0]).unwrap();
    assert_eq!(b.add(full, 1, [1, 0, 0]), None);
    assert_eq!(
        b.field(b.add_or_halve(full, 1, [1, 0, 0]).unwrap(), 0),
        32_768
    );
    // An add past u64 is refused, never wrapped or a panic, with or without halving.
    let one = b.add(0, 7, [1, 0, 0]).unwrap();
    assert_eq!(b.add(one, 7, [u64::MAX, 0, 0]), None);
    assert_eq!(b.add_or_halve(one, 7, [u64::MAX, 0, 0]), None);
    // A slot outside the ring, or a ring of no slots, holds nothing live and keeps nothing.
    assert_eq!(b.live(one, 0, 0, 7), [0; 3]);
    assert_eq!(b.live(one, 4, 4, 7), [0; 3]);
    assert!(!Bucket::survives_sweep(one, 0, 0, 0, 7));
    assert!(!Bucket::survives_sweep(one, 5, 4, 0, 7));
    // Rings as large as u64 allows: no overflow working out a slot's epoch.
    let top = b.add(0, 0xFFFE, [1, 0, 0]).unwrap(); // the stamp of bucket u64::MAX - 1
    assert_eq!(b.live(top, u64::MAX - 1, u64::MAX, u64::MAX - 1), [1, 0, 0]);
    // Halving makes no room in a newer bucket, nor for an add too big for any bucket.
    assert_eq!(b.add_or_halve(newer, 9, [1, 0, 0]), None);
    assert_eq!(b.add_or_halve(0, 1, [65_536, 0, 0]), None);
    assert_eq!(
        Bucket::BUDGET.add(0, 1, [0, 0, 1]),
        None,
        "the budget has no third counter"
    );
}

proptest! {
    /// Replaying any sequence into a count window ring keeps the packed totals equal to the
    /// sum of the slots.
    #[test]
    fn count_window_totals_match_the_slots(
        size in 1usize..64,
        calls in proptest::collection::vec((any::<bool>(), any::<bool>()), 0..500),
    ) {
        let mut slots = std::vec![0u8; size];
        let mut totals = 0u64;
        for (i, (failed, slow)) in calls.into_iter().enumerate() {
            let code = slot_code(failed, slow);
            let old = core::mem::replace(&mut slots[i % size], code);
            totals = totals.wrapping_add(totals_delta(code, old));
            let expect = slots.iter().fold(Counts::default(), |mut c, &s| {
                if s != 0 {
                    c.calls += 1;
                    c.failures += u32::from((s - 1) & 1);
                    c.slow += u32::from((s - 1) >> 1);
                }
                c
            });
            prop_assert_eq!(unpack_totals(totals), expect);
        }
    }

    /// A bucket that fills halves every counter (rounding down) and then adds: it never
    /// refuses a call of its own epoch, never wraps, and keeps failures and slow calls within
    /// its calls.
    #[test]
    fn a_full_bucket_halves_and_adds(
        calls in 0u64..=65_535,
        failures_share in 0u64..=65_535,
        slow_share in 0u64..=65_535,
        failed in any::<bool>(),
        slow in any::<bool>(),
        stamp in any::<u16>(),
    ) {
        let b = Bucket::BREAKER;
        let (failures, slow_calls) = (failures_share % (calls + 1), slow_share % (calls + 1));
        let word = b.add(0, stamp, [calls, failures, slow_calls]).unwrap();
        let add = [1, u64::from(failed), u64::from(slow)];
        let next = b.add_or_halve(word, stamp, add).unwrap();
        let fields = [0, 1, 2].map(|i| b.field(next, i));
        let base = if calls == 65_535 {
            [calls / 2, failures / 2, slow_calls / 2]
        } else {
            [calls, failures, slow_calls]
        };
        prop_assert_eq!(fields, [base[0] + 1, base[1] + add[1], base[2] + add[2]]);
        prop_assert!(fields[1] <= fields[0] && fields[2] <= fields[0]);
        prop_assert_eq!(Bucket::epoch(next), stamp);
        // Where plain `add` succeeds, the two agree.
        if calls < 65_535 {
            prop_assert_eq!(b.add(word, stamp, add), Some(next));
        }
    }

    /// A bucket ring sums exactly the calls of the last `slots` epochs.
    #[test]
    fn bucket_ring_counts_exactly_the_live_epochs(
        slots in 1u64..16,
        events in proptest::collection::vec(0u64..5, 1..200),
    ) {
        let b = Bucket::BREAKER;
        let mut ring = std::vec![0u64; usize::try_from(slots).unwrap()];
        let mut history: Vec<u64> = Vec::new();
        let mut epoch = 0u64;
        for step in events {
            epoch += step;
            let slot = usize::try_from(epoch % slots).unwrap();
            ring[slot] = b.add(ring[slot], u16::try_from(epoch % 65_536).unwrap(), [1, 0, 0]).unwrap();
            history.push(epoch);
            let live: u64 = ring
                .iter()
                .enumerate()
                .map(|(s, &w)| b.live(w, s as u64, slots, epoch)[0])
                .sum();
            let expect = history.iter().filter(|&&e| e + slots > epoch).count() as u64;
            prop_assert_eq!(live, expect);
        }
    }
}

/// An empty word (as a ring starts, or after a sweep) is never "newer" than a write, whatever
/// its stamp: a ring built 2^15..2^16 buckets before its first use must count that use.
#[test]
fn an_empty_bucket_takes_any_epoch() {
    for epoch in [1u16, 0x7FFF, 0x8000, 0x8001, 0xFFFF] {
        let b = Bucket::BREAKER;
        assert_eq!(b.add(0, epoch, [1, 0, 0]).map(Bucket::epoch), Some(epoch));
        assert_eq!(
            Bucket::BUDGET
                .add(0, epoch, [1, 0, 0])
                .map(|w| Bucket::BUDGET.field(w, 0)),
            Some(1)
        );
    }
}

#[test]
fn a_sweep_keeps_live_and_newer_words_and_drops_stale_ones() {
    let b = Bucket::BREAKER;
    let at = |epoch: u64| {
        b.add(0, u16::try_from(epoch % 65_536).unwrap(), [1, 0, 0])
            .unwrap()
    };
    // Ring of 10, last sweep at 100_000, sweeping at 110_000 (slot 0 stands for 110_000).
    assert!(Bucket::survives_sweep(at(110_000), 0, 10, 100_000, 110_000));
    assert!(
        Bucket::survives_sweep(at(110_010), 0, 10, 100_000, 110_000),
        "ahead of the sweeper"
    );
    assert!(!Bucket::survives_sweep(
        at(109_990),
        0,
        10,
        100_000,
        110_000
    ));
    assert!(!Bucket::survives_sweep(
        at(100_000),
        0,
        10,
        100_000,
        110_000
    ));
    assert!(!Bucket::survives_sweep(0, 0, 10, 100_000, 110_000), "empty");
    assert_eq!(Bucket::unstamp(0xFFFF, 65_536), 65_535);
    assert_eq!(Bucket::unstamp(5, 65_536), 65_541);
    assert_eq!(Bucket::unstamp(0xFFFF, 0), 0, "never before bucket 0");
}

proptest! {
    /// One step per trip gives the same breaks as replaying the schedule for each trip.
    #[test]
    fn break_durations_step_like_break_duration(
        initial_ms in 1u64..10_000,
        factor in 1.0f64..4.0,
        max_attempts in 1u32..20,
        jitter in prop_oneof![Just(crate::backoff::Jitter::None), Just(crate::backoff::Jitter::Full), Just(crate::backoff::Jitter::Equal)],
        seed in any::<u64>(),
    ) {
        let backoff = crate::backoff::Backoff::exponential(Duration::from_millis(initial_ms))
            .factor(factor)
            .jitter(jitter)
            .max_delay(Duration::from_secs(60))
            .max_attempts(max_attempts)
            .build()
            .unwrap();
        let policy = BreakerPolicy::builder().break_backoff(backoff).build().unwrap();
        let mut breaks = policy.break_durations(seed);
        for trip in 0..40 {
            prop_assert_eq!(breaks.next_break(), policy.break_duration(trip, seed));
        }
    }
}
