//! Hostile black-box tests of `WindowedGradient`, written from its rustdoc alone: the doc
//! example's numbers and new cases derived from the documented formulas (gradient, headroom,
//! halving on a drop, no growth while idle, the real-valued estimate), an independent model of
//! the formulas checked window by window over random inputs, the no-load measurement (which
//! samples count, its schedule by `at` over idle hours, times going backwards, `Duration::MAX`
//! everywhere), extreme bounds (`u32::MAX`, `min == max`) and the builder's typed errors for
//! any numeric input (NaN, infinities, negatives, zeros), never a panic.
#![allow(clippy::float_cmp)] // whole numbers compared exactly, as the formulas give them

use core::time::Duration;
use std::panic::{AssertUnwindSafe, catch_unwind};

use proptest::prelude::*;
use tidewall_core::ConfigError;
use tidewall_core::adaptive::{LimitAlgorithm, Sample, WindowedGradient};

const HOUR: Duration = Duration::from_secs(3_600);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn s(rtt: Duration, inflight: u32, dropped: bool, at: Duration) -> Sample {
    Sample {
        rtt,
        inflight,
        dropped,
        at,
    }
}

/// The doc example's builder: initial 10, min 2, windows of 4, a probe of 2.
fn doc_builder() -> WindowedGradient {
    WindowedGradient::builder()
        .initial_limit(10)
        .min_limit(2)
        .window(4)
        .probe_samples(2)
        .build()
        .unwrap()
}

/// Feeds one whole window of `n` samples at `rtt`, each with `inflight`, the last one
/// `dropped` if asked, at `at`; returns the limit after it.
fn window(
    w: &mut WindowedGradient,
    n: u32,
    rtt: Duration,
    inflight: u32,
    dropped: bool,
    at: Duration,
) -> u32 {
    let mut last = w.limit();
    for i in 0..n {
        last = w.update(&s(rtt, inflight, dropped && i + 1 == n, at));
        assert_eq!(last, w.limit(), "update returns the limit in force");
    }
    last
}

/// Measures the no-load RTT with `rtt`, from calls admitted with one in flight, at `at`.
fn probe(w: &mut WindowedGradient, rtt: Duration, at: Duration) {
    let mut guard = 0;
    while w.is_probing() {
        w.update(&s(rtt, 1, false, at));
        guard += 1;
        assert!(guard < 1_000_000, "the probe never ended");
    }
}

fn no_panic<T>(what: &str, f: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| panic!("{what} panicked"))
}

// === the doc example, and what follows from its formulas ===================================

/// Doc (struct example): "A window at 20 ms: the gradient is 10 × 1.25 / 20 = 0.625, and
/// 10 × 0.625 + ⌊√6⌋ = 8.25." Then, from the same formulas:
/// `gradient = clamp(no_load × (1 + buffer) / mean, 0.5, 2)`,
/// `limit = limit × gradient + ⌊√⌊limit × gradient⌋⌋`: a second window at 20 ms gives
/// 8.25 × 0.625 = 5.15625, + ⌊√5⌋ = 7.15625 → 7.
#[test]
fn the_doc_example_and_its_next_window() {
    let mut w = doc_builder();
    assert_eq!(w.limit(), 2);
    assert!(w.is_probing());
    assert_eq!(w.no_load_rtt(), None);
    w.update(&s(ms(10), 1, false, Duration::ZERO));
    assert!(w.is_probing(), "one of two probe samples");
    assert_eq!(w.update(&s(ms(10), 2, false, Duration::ZERO)), 10);
    assert_eq!(w.no_load_rtt(), Some(ms(10)));
    assert!(!w.is_probing());
    // "Every `window` samples": three samples of four move nothing.
    for _ in 0..3 {
        assert_eq!(w.update(&s(ms(20), 10, false, Duration::ZERO)), 10);
    }
    assert_eq!(w.update(&s(ms(20), 10, false, Duration::ZERO)), 8);
    assert_eq!(window(&mut w, 4, ms(20), 8, false, Duration::ZERO), 7);
}

/// Doc (module): "Vegas and Gradient2 keep their estimate as a real number" and the struct's
/// formula in real numbers: from 8.25, a gradient of 1.6 (10 × 1.25 / 7.8125) gives
/// 13.2 + ⌊√13⌋ = 16.2 → 16, where a whole-number limit of 8 would give 12.8 + ⌊√12⌋ = 15.
#[test]
fn the_estimate_is_carried_as_a_real_number_between_windows() {
    let mut w = doc_builder();
    probe(&mut w, ms(10), Duration::ZERO);
    assert_eq!(window(&mut w, 4, ms(20), 10, false, Duration::ZERO), 8);
    assert_eq!(
        window(
            &mut w,
            4,
            Duration::from_nanos(7_812_500),
            8,
            false,
            Duration::ZERO
        ),
        16
    );
}

/// Doc: "A window with a drop in it halves the limit instead": 8.25 → 4.125 → 4, and the
/// next window at 1 ms (gradient clamped to 2) gives 8.25 + ⌊√8⌋ = 10.25 → 10. A drop in an
/// idle window halves too; halving stops at `min_limit`.
#[test]
fn a_drop_anywhere_in_a_window_halves_the_limit() {
    let mut w = doc_builder();
    probe(&mut w, ms(10), Duration::ZERO);
    assert_eq!(window(&mut w, 4, ms(20), 10, false, Duration::ZERO), 8);
    // The drop in the first sample of the window, the rest fast: still halved.
    w.update(&s(ms(1), 8, true, Duration::ZERO));
    for _ in 0..3 {
        w.update(&s(ms(1), 8, false, Duration::ZERO));
    }
    assert_eq!(w.limit(), 4);
    assert_eq!(window(&mut w, 4, ms(1), 4, false, Duration::ZERO), 10);
    // An idle window with a drop: 10.25 → 5.125.
    assert_eq!(window(&mut w, 4, ms(10), 0, true, Duration::ZERO), 5);
    // 5.125 → 2.5625 → 2; then 1.28…, clamped to min_limit.
    assert_eq!(window(&mut w, 4, ms(10), 5, true, Duration::ZERO), 2);
    assert_eq!(window(&mut w, 4, ms(10), 2, true, Duration::ZERO), 2);
}

/// Doc: "a window whose calls all found the limit less than half used does not grow it"
/// (and the module: "A limit does not grow while a call found fewer than half its slots in
/// use"). Not growing is not freezing: a slow idle window still shrinks it; and one busy call
/// in the window lets it grow.
#[test]
fn an_idle_window_does_not_grow_but_still_shrinks() {
    let mut w = doc_builder();
    probe(&mut w, ms(10), Duration::ZERO);
    // Four of ten in flight: less than half. 10 ms would give 15.5.
    assert_eq!(window(&mut w, 4, ms(10), 4, false, Duration::ZERO), 10);
    assert_eq!(window(&mut w, 4, ms(1), 0, false, Duration::ZERO), 10);
    // Three idle calls and one at exactly half: it grows (10 × 1.25 + 3 = 15.5).
    for _ in 0..3 {
        w.update(&s(ms(10), 4, false, Duration::ZERO));
    }
    assert_eq!(w.update(&s(ms(10), 5, false, Duration::ZERO)), 15);
    // Idle but slow: 15.5 × 0.5 = 7.75 + ⌊√7⌋ = 9.75 → 9.
    assert_eq!(window(&mut w, 4, ms(40), 1, false, Duration::ZERO), 9);
}

/// Doc (module): "an RTT of zero counts as one nanosecond". A probe of zeros measures 1 ns,
/// and a window of zeros then has the gradient 1 × 1.25 / 1: 12.5 + ⌊√12⌋ = 15.5.
#[test]
fn a_zero_rtt_counts_as_one_nanosecond() {
    let mut w = doc_builder();
    probe(&mut w, Duration::ZERO, Duration::ZERO);
    assert_eq!(w.no_load_rtt(), Some(Duration::from_nanos(1)));
    assert_eq!(
        window(&mut w, 4, Duration::ZERO, 10, false, Duration::ZERO),
        15
    );
}

/// Doc: "gradient = clamp(no_load × (1 + buffer) / mean, 0.5, 2)": however slow the window
/// (`Duration::MAX`), the limit at most halves before the headroom: 5 + ⌊√5⌋ = 7; however
/// large the buffer (`f64::MAX`, finite so accepted), at most doubles: 20 + ⌊√20⌋ = 24.
#[test]
fn extreme_rtts_and_buffers_are_clamped_gradients() {
    let mut w = doc_builder();
    probe(&mut w, ms(10), Duration::ZERO);
    assert_eq!(
        window(&mut w, 4, Duration::MAX, 10, false, Duration::ZERO),
        7
    );
    let mut big = WindowedGradient::builder()
        .initial_limit(10)
        .min_limit(2)
        .window(4)
        .probe_samples(2)
        .buffer(f64::MAX)
        .build()
        .unwrap();
    probe(&mut big, ms(10), Duration::ZERO);
    assert_eq!(window(&mut big, 4, ms(10), 10, false, Duration::ZERO), 24);
    // A buffer of zero: a window at the no-load RTT has a gradient of exactly 1.
    let mut flat = WindowedGradient::builder()
        .initial_limit(10)
        .min_limit(2)
        .window(4)
        .probe_samples(2)
        .buffer(0.0)
        .build()
        .unwrap();
    probe(&mut flat, ms(10), Duration::ZERO);
    assert_eq!(window(&mut flat, 4, ms(10), 10, false, Duration::ZERO), 13);
}

/// Doc (module): an RTT "beyond `u64::MAX` nanoseconds (584 years)" counts "as that many",
/// and `no_load_rtt`: "RTTs count up to `u64::MAX` nanoseconds, 584 years". A probe of 1,000
/// years reads back as exactly 584 years and change; one just under the cap reads back whole.
/// (Before the docs said so, this test expected 1,000 years.)
#[test]
fn no_load_rtt_reads_back_a_huge_measurement_as_the_documented_cap() {
    let thousand_years = Duration::from_secs(1_000 * 365 * 86_400);
    let mut w = doc_builder();
    probe(&mut w, thousand_years, Duration::ZERO);
    assert_eq!(w.no_load_rtt(), Some(Duration::from_nanos(u64::MAX)));
    let mut under = doc_builder();
    let century = Duration::from_secs(100 * 365 * 86_400);
    probe(&mut under, century, Duration::ZERO);
    let got = under.no_load_rtt().expect("measured");
    assert!(
        got.abs_diff(century) <= Duration::from_micros(1),
        "{got:?} for {century:?}"
    );
}

/// Doc: "The no-load RTT it measured last": a later, slower measurement replaces an earlier
/// faster one (it is not the least ever seen, as Vegas's is), and the gradient uses it.
#[test]
fn no_load_rtt_is_the_last_measurement_not_the_least() {
    let mut w = WindowedGradient::builder()
        .initial_limit(10)
        .min_limit(2)
        .window(4)
        .probe_samples(2)
        .probe_interval(Duration::from_secs(60))
        .build()
        .unwrap();
    probe(&mut w, ms(10), Duration::ZERO);
    assert_eq!(w.no_load_rtt(), Some(ms(10)));
    // 60 s later: measured again, at 30 ms.
    w.update(&s(ms(10), 10, false, Duration::from_secs(60)));
    assert!(w.is_probing());
    probe(&mut w, ms(30), Duration::from_secs(60));
    assert_eq!(w.no_load_rtt(), Some(ms(30)));
    assert_eq!(w.limit(), 10, "back to what it was");
    // A window at 30 ms against 30 × 1.25: 12.5 + 3 = 15.5.
    assert_eq!(
        window(&mut w, 4, ms(30), 10, false, Duration::from_secs(61)),
        15
    );
}

// === the no-load measurement ===============================================================

/// Doc: "The limit is `min_limit` until `probe_samples` calls admitted with at most
/// `min_limit` in flight have ended". A call admitted with `min_limit + 1` does not count, one
/// with exactly `min_limit` does (and one with none counts too: at most).
#[test]
fn only_calls_admitted_with_at_most_min_limit_count_for_the_probe() {
    let mut w = WindowedGradient::builder()
        .initial_limit(10)
        .min_limit(3)
        .window(4)
        .probe_samples(3)
        .build()
        .unwrap();
    for _ in 0..50 {
        w.update(&s(ms(99), 4, false, Duration::ZERO));
        w.update(&s(ms(1), 1, true, Duration::ZERO));
        assert!(w.is_probing());
        assert_eq!(w.limit(), 3, "doc: `is_probing`: its limit is `min_limit`");
    }
    w.update(&s(ms(10), 3, false, Duration::ZERO));
    w.update(&s(ms(20), 0, false, Duration::ZERO));
    assert!(w.is_probing());
    assert_eq!(w.update(&s(ms(30), 2, false, Duration::ZERO)), 10);
    assert_eq!(w.no_load_rtt(), Some(ms(20)));
}

/// Doc: "It measures from the first sample on, and again once `probe_interval` has passed
/// since the last measurement (by the samples' `at`)", and "the limit goes back to what it
/// was": after hours of idle virtual time the first sample starts a measurement, and the
/// limit returns to where the windows had taken it, not to `initial_limit`.
#[test]
fn hours_of_idle_time_then_a_measurement_and_back_to_the_moved_limit() {
    let mut w = doc_builder();
    probe(&mut w, ms(10), Duration::ZERO);
    assert_eq!(window(&mut w, 4, ms(20), 10, false, ms(1)), 8);
    // Nothing for five hours.
    w.update(&s(ms(20), 8, false, 5 * HOUR));
    assert!(w.is_probing(), "60 s have long passed");
    assert_eq!(w.limit(), 2);
    probe(&mut w, ms(16), 5 * HOUR + ms(5));
    assert_eq!(w.no_load_rtt(), Some(ms(16)));
    assert_eq!(w.limit(), 8, "back to what it was, not initial_limit");
    // What it was is the real 8.25: a window at 12.5 ms (gradient 16 × 1.25 / 12.5 = 1.6)
    // gives 13.2 + ⌊√13⌋ = 16.2 → 16 (from a whole 8: 12.8 + 3 = 15.8 → 15).
    let mut moved = w.clone();
    assert_eq!(
        window(
            &mut moved,
            4,
            Duration::from_micros(12_500),
            8,
            false,
            5 * HOUR + ms(6)
        ),
        16
    );
    // The next measurement is due 60 s after this one, not before.
    w.update(&s(
        ms(16),
        8,
        false,
        5 * HOUR + ms(5) + Duration::from_secs(59),
    ));
    assert!(!w.is_probing());
    w.update(&s(
        ms(16),
        8,
        false,
        5 * HOUR + ms(5) + Duration::from_secs(60),
    ));
    assert!(w.is_probing());
}

/// Doc (`Sample::at`): "Only differences between samples count". Times going backwards (a
/// clock reset, samples from another origin) never panic and do not make the interval pass:
/// a sample earlier than the measurement is not 60 s after it.
#[test]
fn times_going_backwards_do_not_start_a_measurement() {
    let mut w = doc_builder();
    w.update(&s(ms(10), 1, false, Duration::from_secs(1_000)));
    w.update(&s(ms(10), 1, false, Duration::from_secs(1_000)));
    assert!(!w.is_probing());
    for (i, at) in [
        Duration::ZERO,
        Duration::from_secs(999),
        Duration::from_nanos(1),
        Duration::from_secs(10),
        Duration::from_secs(1_059),
    ]
    .into_iter()
    .enumerate()
    {
        w.update(&s(ms(10), 10, false, at));
        assert!(!w.is_probing(), "#{i}: {at:?} is not 60 s after 1000 s");
    }
    // 60 s after the measurement, by its `at`.
    w.update(&s(ms(10), 10, false, Duration::from_secs(1_060)));
    assert!(w.is_probing());
}

/// `at` at `Duration::MAX`, and back to zero, with the default interval and with
/// `probe_interval(Duration::MAX)`: no panic, bounds hold, and an interval of `Duration::MAX`
/// has not passed one second after a measurement even at the end of time.
#[test]
fn at_and_interval_at_duration_max() {
    let mut w = doc_builder();
    probe(&mut w, ms(10), Duration::ZERO);
    no_panic("at = MAX", || {
        w.update(&s(ms(10), 10, false, Duration::MAX))
    });
    assert!(w.is_probing(), "MAX - 0 is past 60 s");
    probe(&mut w, ms(10), Duration::MAX);
    assert_eq!(w.limit(), 10);
    no_panic("at back to 0", || {
        window(&mut w, 8, ms(10), 10, false, Duration::ZERO)
    });
    assert!(!w.is_probing());
    assert!((2..=1_000).contains(&w.limit()));

    let mut never = WindowedGradient::builder()
        .initial_limit(10)
        .min_limit(2)
        .window(4)
        .probe_samples(2)
        .probe_interval(Duration::MAX)
        .build()
        .unwrap();
    probe(&mut never, ms(10), Duration::from_secs(1));
    for at in [
        HOUR,
        1_000_000 * HOUR,
        Duration::from_nanos(u64::MAX),
        Duration::MAX,
    ] {
        no_panic("interval MAX", || never.update(&s(ms(10), 10, false, at)));
        assert!(
            !never.is_probing(),
            "{at:?} is less than Duration::MAX after 1 s"
        );
    }
}

/// Doc: "The limit is `min_limit` until `probe_samples` calls admitted with at most
/// `min_limit` in flight have ended". A measurement slower than `probe_interval` (samples
/// far apart, an interval of 1 ns) still ends after `probe_samples` such calls: the schedule
/// must not restart it forever and keep the limit at `min_limit`.
#[test]
fn a_measurement_longer_than_the_interval_still_ends() {
    for interval in [Duration::from_nanos(1), Duration::from_secs(1)] {
        let mut w = WindowedGradient::builder()
            .initial_limit(10)
            .min_limit(2)
            .window(4)
            .probe_samples(3)
            .probe_interval(interval)
            .build()
            .unwrap();
        for i in 1..=3_u32 {
            assert!(w.is_probing(), "{interval:?}: sample {i}");
            w.update(&s(ms(10), 1, false, i * HOUR));
        }
        assert!(
            !w.is_probing(),
            "{interval:?}: three calls at one in flight measured it"
        );
        assert_eq!(w.limit(), 10);
        assert_eq!(w.no_load_rtt(), Some(ms(10)));
    }
}

/// Long windows and probes of `Duration::MAX` RTTs: the means are taken without overflow (no
/// panic), the no-load RTT is the largest, and a window as slow as it has the gradient
/// 1.25: 12.5 + ⌊√12⌋ = 15.5.
#[test]
fn long_windows_of_duration_max_do_not_overflow() {
    let mut w = WindowedGradient::builder()
        .initial_limit(10)
        .min_limit(2)
        .window(10_000)
        .probe_samples(10_000)
        .build()
        .unwrap();
    no_panic("probe of MAX", || {
        probe(&mut w, Duration::MAX, Duration::ZERO)
    });
    assert_eq!(w.limit(), 10);
    let limit = no_panic("window of MAX", || {
        window(&mut w, 10_000, Duration::MAX, 10, false, Duration::ZERO)
    });
    assert_eq!(limit, 15);
}

// === bounds ================================================================================

/// Doc: "clamped to `[min_limit, max_limit]`", at the edges of `u32`: doubling at
/// `u32::MAX` stays `u32::MAX`; `min == max` never moves whatever the samples.
#[test]
fn bounds_at_the_edges_of_u32() {
    let mut top = WindowedGradient::builder()
        .min_limit(1)
        .initial_limit(u32::MAX - 1)
        .max_limit(u32::MAX)
        .window(1)
        .probe_samples(1)
        .build()
        .unwrap();
    assert_eq!(top.limit(), 1);
    probe(&mut top, ms(10), Duration::ZERO);
    assert_eq!(top.limit(), u32::MAX - 1);
    assert_eq!(
        window(&mut top, 1, ms(1), u32::MAX, false, Duration::ZERO),
        u32::MAX
    );
    assert_eq!(
        window(&mut top, 1, ms(1), u32::MAX, false, Duration::ZERO),
        u32::MAX
    );
    assert_eq!(
        window(&mut top, 1, ms(1), u32::MAX, true, Duration::ZERO),
        u32::MAX / 2
    );

    for v in [1, 7, u32::MAX] {
        let mut fixed = WindowedGradient::builder()
            .min_limit(v)
            .initial_limit(v)
            .max_limit(v)
            .window(1)
            .probe_samples(1)
            .probe_interval(Duration::from_nanos(1))
            .build()
            .unwrap();
        for (i, rtt) in [Duration::ZERO, Duration::MAX, ms(1), ms(1_000)]
            .into_iter()
            .enumerate()
        {
            for dropped in [false, true] {
                let at = Duration::from_nanos(i as u64 * 7);
                assert_eq!(fixed.update(&s(rtt, v, dropped, at)), v);
                assert_eq!(fixed.update(&s(rtt, 0, dropped, at)), v);
            }
        }
    }
}

/// Doc (builder): "initial 20, within 3..=1,000, windows of 50 samples, a buffer of 0.25, the
/// no-load RTT measured over 50 calls every 60 s".
#[test]
fn the_documented_defaults() {
    let mut w = WindowedGradient::builder().build().unwrap();
    assert_eq!(w.bounds(), (3, 1_000));
    assert_eq!(w.limit(), 3);
    for _ in 0..49 {
        w.update(&s(ms(10), 3, false, Duration::ZERO));
    }
    assert!(w.is_probing(), "49 of 50");
    assert_eq!(w.update(&s(ms(10), 3, false, Duration::ZERO)), 20);
    for _ in 0..49 {
        w.update(&s(ms(10), 20, false, ms(1)));
    }
    assert_eq!(w.limit(), 20, "49 of 50");
    // 20 × 1.25 + ⌊√25⌋ = 30.
    assert_eq!(w.update(&s(ms(10), 20, false, ms(1))), 30);
    w.update(&s(ms(10), 30, false, Duration::from_secs(59) + ms(999)));
    assert!(!w.is_probing());
    w.update(&s(ms(10), 30, false, Duration::from_secs(60)));
    assert!(w.is_probing());
}

// === the builder ===========================================================================

/// Doc (`build`): "`ConfigError::Zero` for a zero `min_limit`, `window`, `probe_samples` or
/// `probe_interval`; `ConfigError::Conflict` unless `min_limit <= initial_limit <=
/// max_limit`; `ConfigError::OutOfRange` (or `NotFinite`) for a negative or infinite
/// `buffer`"; (`buffer`): "finite, not negative".
#[test]
fn the_builder_refuses_with_the_documented_errors() {
    let b = WindowedGradient::builder;
    assert!(matches!(
        b().initial_limit(5).max_limit(4).build(),
        Err(ConfigError::Conflict { .. })
    ));
    assert!(matches!(
        b().min_limit(10).initial_limit(10).max_limit(9).build(),
        Err(ConfigError::Conflict { .. })
    ));
    assert!(matches!(
        b().min_limit(u32::MAX).build(),
        Err(ConfigError::Conflict { .. })
    ));
    for buffer in [
        -f64::MIN_POSITIVE,
        -1.0,
        f64::MIN,
        f64::NEG_INFINITY,
        f64::INFINITY,
    ] {
        let got = b().buffer(buffer).build();
        assert!(
            matches!(
                got,
                Err(ConfigError::OutOfRange {
                    field: "buffer",
                    ..
                } | ConfigError::NotFinite { field: "buffer" })
            ),
            "buffer {buffer}: {got:?}"
        );
    }
    let nan = b().buffer(f64::NAN).build();
    assert!(
        matches!(
            nan,
            Err(ConfigError::OutOfRange {
                field: "buffer",
                ..
            } | ConfigError::NotFinite { field: "buffer" })
        ),
        "NaN: {nan:?}"
    );
    for buffer in [0.0, f64::MIN_POSITIVE, 1e-300, 1.0, 1e300, f64::MAX] {
        assert!(b().buffer(buffer).build().is_ok(), "buffer {buffer}");
    }
    // The smallest and largest of the others are accepted.
    assert!(
        b().window(u32::MAX)
            .probe_samples(u32::MAX)
            .probe_interval(Duration::from_nanos(1))
            .build()
            .is_ok()
    );
    assert!(b().probe_interval(Duration::MAX).build().is_ok());
    assert!(
        b().min_limit(1)
            .initial_limit(1)
            .max_limit(1)
            .window(1)
            .probe_samples(1)
            .build()
            .is_ok()
    );
}

fn strange_f64() -> impl Strategy<Value = f64> {
    prop_oneof![
        Just(f64::NAN),
        Just(f64::INFINITY),
        Just(f64::NEG_INFINITY),
        Just(-0.0),
        Just(0.0),
        Just(f64::MIN_POSITIVE),
        Just(-f64::MIN_POSITIVE),
        Just(f64::MAX),
        Just(f64::MIN),
        Just(5e-324),
        any::<f64>(),
        -10.0_f64..10.0,
    ]
}

fn strange_u32() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(0_u32),
        Just(1),
        Just(u32::MAX),
        any::<u32>(),
        0_u32..50
    ]
}

fn strange_duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        Just(Duration::ZERO),
        Just(Duration::MAX),
        Just(Duration::from_nanos(1)),
        Just(Duration::from_nanos(u64::MAX)),
        any::<u64>().prop_map(Duration::from_nanos),
        (any::<u64>(), 0_u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
        (0_u64..100_000_000).prop_map(Duration::from_nanos),
    ]
}

/// The documented equation for one step: `limit × gradient + ⌊√⌊limit × gradient⌋⌋`, the
/// gradient clamped to `[0.5, 2]`, clamped to `[min, max]`; a drop halves; an idle window
/// does not grow.
#[allow(clippy::too_many_arguments)]
fn model_step(
    estimate: f64,
    no_load: f64,
    buffer: f64,
    mean: f64,
    dropped: bool,
    idle: bool,
    min: u32,
    max: u32,
) -> f64 {
    let next = if dropped {
        estimate / 2.0
    } else {
        let gradient = (no_load * (1.0 + buffer) / mean).clamp(0.5, 2.0);
        let scaled = estimate * gradient;
        let grown = scaled + scaled.floor().sqrt().floor();
        if idle && grown > estimate {
            estimate
        } else {
            grown
        }
    };
    next.clamp(f64::from(min), f64::from(max))
}

/// `floor(model)`, or either neighbour when the model sits within a rounding error of a whole
/// number (the order of floating-point operations is not documented).
fn close(actual: u32, model: f64) -> bool {
    let eps = model.abs() * 1e-9 + 1e-9;
    let lo = (model - eps).floor();
    let hi = (model + eps).floor();
    let a = f64::from(actual);
    a == model.floor() || a == lo || a == hi
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Any builder input: a typed error or a limit, never a panic; `Ok` exactly when the
    /// documented conditions hold, and the documented error kind otherwise.
    #[test]
    fn any_builder_input_is_a_limit_or_a_typed_error(
        initial in strange_u32(),
        min in strange_u32(),
        max in strange_u32(),
        window in strange_u32(),
        probe_samples in strange_u32(),
        buffer in strange_f64(),
        interval in strange_duration(),
    ) {
        let built = no_panic("build", || {
            WindowedGradient::builder()
                .initial_limit(initial)
                .min_limit(min)
                .max_limit(max)
                .window(window)
                .probe_samples(probe_samples)
                .buffer(buffer)
                .probe_interval(interval)
                .build()
        });
        let zero = min == 0 || window == 0 || probe_samples == 0 || interval.is_zero();
        let conflict = !(min <= initial && initial <= max);
        let bad_buffer = !buffer.is_finite() || buffer < 0.0;
        // -0.0 equals zero: "not negative" may be read either way.
        let either = buffer == 0.0 && buffer.is_sign_negative();
        match built {
            Ok(w) => {
                prop_assert!(!zero && !conflict && !bad_buffer, "accepted {:?}", w);
                prop_assert_eq!(w.bounds(), (min, max));
                prop_assert_eq!(w.limit(), min);
                prop_assert!(w.is_probing());
            }
            Err(ConfigError::Zero { field }) => {
                prop_assert!(zero, "Zero {{ {} }} without a zero", field);
                let is_zero = match field {
                    "min_limit" => min == 0,
                    "window" => window == 0,
                    "probe_samples" => probe_samples == 0,
                    "probe_interval" => interval.is_zero(),
                    _ => false,
                };
                prop_assert!(is_zero, "Zero names {} which is not zero", field);
            }
            Err(ConfigError::Conflict { .. }) => prop_assert!(conflict),
            Err(ConfigError::OutOfRange { field, .. } | ConfigError::NotFinite { field }) => {
                prop_assert!(bad_buffer || either, "{} refused", field);
                prop_assert_eq!(field, "buffer");
            }
            Err(other) => prop_assert!(false, "undocumented error {:?}", other),
        }
    }

    /// The documented formulas, window by window, against an independent model: random
    /// bounds, buffer, no-load RTT and windows (each at one RTT, busy or idle, with or
    /// without a drop). The published limit is the model's integer part and within bounds,
    /// and `limit()` is `min_limit` exactly while probing.
    #[test]
    fn each_window_follows_the_documented_formulas(
        min in 1_u32..50,
        extra in 0_u32..500,
        above in 0_u32..2_000,
        window_len in 1_u32..8,
        probe_samples in 1_u32..8,
        buffer in prop_oneof![Just(0.0), Just(0.25), 0.0_f64..3.0],
        no_load in 1_000_u64..50_000_000,
        windows in prop::collection::vec(
            (1_000_u64..200_000_000, any::<bool>(), prop::bool::weighted(0.15)),
            1..60,
        ),
    ) {
        let initial = min + extra;
        let max = initial + above;
        let mut w = WindowedGradient::builder()
            .min_limit(min)
            .initial_limit(initial)
            .max_limit(max)
            .window(window_len)
            .probe_samples(probe_samples)
            .buffer(buffer)
            .build()
            .unwrap();
        for _ in 0..probe_samples {
            prop_assert!(w.is_probing());
            prop_assert_eq!(w.limit(), min);
            w.update(&s(Duration::from_nanos(no_load), min, false, Duration::ZERO));
        }
        prop_assert!(!w.is_probing());
        prop_assert_eq!(w.no_load_rtt(), Some(Duration::from_nanos(no_load)));
        prop_assert_eq!(w.limit(), initial);
        let mut estimate = f64::from(initial);
        for (i, (rtt, busy, dropped)) in windows.into_iter().enumerate() {
            let before = w.limit();
            // Busy: every call found the limit in use; idle: every call found none.
            let inflight = if busy { before } else { 0 };
            let after = window(
                &mut w, window_len, Duration::from_nanos(rtt), inflight, dropped, Duration::ZERO,
            );
            #[allow(clippy::cast_precision_loss)]
            let next = model_step(
                estimate, no_load as f64, buffer, rtt as f64, dropped, !busy, min, max,
            );
            prop_assert!(
                close(after, next),
                "window {}: {} → {} (rtt {} ns, busy {}, drop {}), the formula says {}",
                i, before, after, rtt, busy, dropped, next
            );
            prop_assert!((min..=max).contains(&after));
            estimate = next;
        }
    }

    /// Samples at random times (forwards, backwards, idle hours, `Duration::MAX`) with random
    /// RTTs and loads: never a panic, always within bounds, `min_limit` whenever probing.
    #[test]
    fn random_times_never_break_the_bounds(
        min in 1_u32..20,
        extra in 0_u32..100,
        above in 0_u32..1_000,
        window_len in 1_u32..6,
        probe_samples in 1_u32..6,
        interval in prop_oneof![
            Just(Duration::from_nanos(1)), Just(Duration::MAX), Just(HOUR),
            (1_u64..10_000_000_000).prop_map(Duration::from_nanos),
        ],
        samples in prop::collection::vec(
            (strange_duration(), strange_u32(), prop::bool::weighted(0.1), strange_duration()),
            1..300,
        ),
    ) {
        let initial = min + extra;
        let max = initial + above;
        let mut w = WindowedGradient::builder()
            .min_limit(min)
            .initial_limit(initial)
            .max_limit(max)
            .window(window_len)
            .probe_samples(probe_samples)
            .probe_interval(interval)
            .build()
            .unwrap();
        for (rtt, inflight, dropped, at) in samples {
            let limit = no_panic("update", || w.update(&s(rtt, inflight, dropped, at)));
            prop_assert_eq!(limit, w.limit());
            prop_assert!((min..=max).contains(&limit));
            if w.is_probing() {
                prop_assert_eq!(limit, min, "probing at min_limit");
            }
            if let Some(rtt) = w.no_load_rtt() {
                prop_assert!(rtt >= Duration::from_nanos(1), "zero counts as 1 ns");
            }
        }
    }
}
