//! The windowed gradient over synthetic latency sequences: the limit stays within its bounds
//! whatever the samples (times anywhere, backwards included), starts by measuring the no-load
//! RTT at `min_limit` and measures again on schedule, converges on a dependency of any capacity
//! to a short queue above it, backs off on a latency step and on drops, and does not grow
//! while less than half used.

use core::time::Duration;

use proptest::prelude::*;
use tidewall_core::ConfigError;
use tidewall_core::adaptive::{LimitAlgorithm, Sample, WindowedGradient};

fn sample(rtt: Duration, inflight: u32, dropped: bool, at: Duration) -> Sample {
    Sample {
        rtt,
        inflight,
        dropped,
        at,
    }
}

/// A sample at the limit in force, with `rtt`, at time zero.
fn busy(algorithm: &WindowedGradient, rtt: Duration) -> Sample {
    sample(rtt, algorithm.limit(), false, Duration::ZERO)
}

/// Feeds `rtt` at the limit until the no-load RTT is measured.
fn measured(algorithm: &mut WindowedGradient, rtt: Duration) {
    while algorithm.is_probing() {
        let s = busy(algorithm, rtt);
        algorithm.update(&s);
    }
}

/// Valid bounds: `1 <= min <= initial <= max`, anywhere in `u32`.
fn bounds() -> impl Strategy<Value = (u32, u32, u32)> {
    (1_u32..=u32::MAX, any::<u32>(), any::<u32>()).prop_map(|(a, b, c)| {
        let mut v = [a, b.max(1), c.max(1)];
        v.sort_unstable();
        (v[0], v[1], v[2])
    })
}

fn any_duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        Just(Duration::ZERO),
        Just(Duration::MAX),
        any::<u64>().prop_map(Duration::from_nanos),
        (0_u64..10_000_000).prop_map(Duration::from_nanos),
    ]
}

proptest! {
    #[test]
    fn the_limit_stays_within_bounds_for_any_samples(
        (min, initial, max) in bounds(),
        window in 1_u32..100,
        probe_samples in 1_u32..100,
        buffer in prop_oneof![Just(0.0), Just(f64::MAX), 0.0_f64..10.0],
        interval in any_duration().prop_filter("not zero", |d| !d.is_zero()),
        samples in prop::collection::vec(
            (
                any_duration(),
                prop_oneof![Just(0_u32), Just(u32::MAX), any::<u32>(), 0_u32..500],
                any::<bool>(),
                any_duration(),
            ),
            1..400,
        ),
    ) {
        let mut algorithm = WindowedGradient::builder()
            .min_limit(min)
            .initial_limit(initial)
            .max_limit(max)
            .window(window)
            .probe_samples(probe_samples)
            .buffer(buffer)
            .probe_interval(interval)
            .build()
            .unwrap();
        prop_assert_eq!(algorithm.bounds(), (min, max));
        prop_assert_eq!(algorithm.limit(), min, "it starts by measuring");
        for (rtt, inflight, dropped, at) in samples {
            let limit = algorithm.update(&sample(rtt, inflight, dropped, at));
            prop_assert_eq!(limit, algorithm.limit());
            prop_assert!((min..=max).contains(&limit), "{} outside {}..={}", limit, min, max);
        }
    }

    /// A dependency serving `capacity` calls at once in `service`, queueing the rest (a call's
    /// RTT is `service × max(1, limit / capacity)`): from any initial limit the limit settles
    /// on a short queue, at least the capacity and at most `(1 + buffer) × capacity` plus its
    /// square root.
    #[test]
    fn it_settles_just_above_any_capacity(
        capacity in 4_u32..400,
        service in (1_000_u64..1_000_000_000).prop_map(Duration::from_nanos),
        initial in 3_u32..1_000,
    ) {
        let mut algorithm = WindowedGradient::builder().initial_limit(initial).build().unwrap();
        let rtt = |limit: u32| service * limit.max(capacity) / capacity;
        for _ in 0..200 * 50 {
            let limit = algorithm.limit();
            algorithm.update(&busy(&algorithm, rtt(limit)));
        }
        let high = 1.25 * f64::from(capacity) + (1.25 * f64::from(capacity)).sqrt() + 1.0;
        for _ in 0..20 * 50 {
            let limit = algorithm.limit();
            prop_assert!(
                limit >= capacity && f64::from(limit) <= high,
                "{} for a capacity of {}", limit, capacity
            );
            algorithm.update(&busy(&algorithm, rtt(limit)));
        }
    }

    /// From any steady state, two windows' worth of samples at `step` times the no-load RTT
    /// (3x or more) lower the limit, and so do two windows' worth with a drop in each: one
    /// of the two windows is whole, whatever part of a window the steady state left.
    #[test]
    fn a_latency_step_or_a_drop_backs_off(
        rtt in 1_000_u64..100_000_000,
        step in 3_u64..50,
        steady in 0_usize..3_000,
        drop_at in 0_u32..50,
    ) {
        let rtt = Duration::from_nanos(rtt);
        let mut algorithm = WindowedGradient::builder().initial_limit(100).build().unwrap();
        measured(&mut algorithm, rtt);
        for _ in 0..steady {
            algorithm.update(&busy(&algorithm, rtt));
        }
        let mut stepped = algorithm.clone();
        let mut dropping = algorithm.clone();
        let before = algorithm.limit();
        for _ in 0..100 {
            stepped.update(&busy(&stepped, rtt * u32::try_from(step).unwrap()));
        }
        prop_assert!(stepped.limit() < before, "{} after {}x from {}", stepped.limit(), step, before);
        for n in 0..100 {
            let s = sample(rtt, before, n % 50 == drop_at, Duration::ZERO);
            dropping.update(&s);
        }
        prop_assert!(dropping.limit() < before, "{} after a drop, from {}", dropping.limit(), before);
    }

    /// A limit less than half used never grows: an idle service says nothing about capacity.
    #[test]
    fn an_idle_limit_does_not_grow(
        rtt in 1_000_u64..1_000_000_000,
        initial in 10_u32..1_000,
        samples in 1_usize..5_000,
    ) {
        let rtt = Duration::from_nanos(rtt);
        let mut algorithm = WindowedGradient::builder().initial_limit(initial).build().unwrap();
        measured(&mut algorithm, rtt);
        for _ in 0..samples {
            let idle = algorithm.limit().div_ceil(2) - 1;
            let limit = algorithm.update(&sample(rtt, idle, false, Duration::ZERO));
            prop_assert!(limit <= initial, "{} grew past {}", limit, initial);
        }
    }
}

/// The no-load RTT is the mean of calls admitted with at most `min_limit` in flight: calls
/// admitted before the measurement began do not count, nor do drops. Then the limit is back
/// where it was, and the measurement comes again once `probe_interval` has passed.
#[test]
fn it_measures_the_no_load_rtt_on_schedule_from_low_load_calls_only() {
    let ms = Duration::from_millis;
    let mut algorithm = WindowedGradient::builder()
        .initial_limit(40)
        .min_limit(2)
        .window(10)
        .probe_samples(3)
        .probe_interval(Duration::from_secs(60))
        .build()
        .unwrap();
    assert!(algorithm.is_probing());
    assert_eq!(algorithm.no_load_rtt(), None);
    // Admitted with 30 in flight, a drop: neither counts.
    algorithm.update(&sample(ms(90), 30, false, ms(1)));
    algorithm.update(&sample(ms(1), 1, true, ms(2)));
    assert_eq!(algorithm.limit(), 2);
    for rtt in [10, 20, 30] {
        algorithm.update(&sample(ms(rtt), 2, false, ms(3)));
    }
    assert_eq!(algorithm.no_load_rtt(), Some(ms(20)));
    assert!(!algorithm.is_probing());
    assert_eq!(algorithm.limit(), 40);
    // 59.999 s later: no measurement yet; at 60 s from the last one, it starts.
    algorithm.update(&sample(ms(20), 40, false, ms(60_002)));
    assert!(!algorithm.is_probing());
    algorithm.update(&sample(ms(20), 40, false, ms(60_003)));
    assert!(algorithm.is_probing());
    assert_eq!(algorithm.limit(), 2);
    for _ in 0..3 {
        algorithm.update(&sample(ms(12), 1, false, ms(60_100)));
    }
    assert_eq!(algorithm.no_load_rtt(), Some(ms(12)));
    // The window that was cut by the measurement counted for nothing: the limit is as it was.
    assert_eq!(algorithm.limit(), 40);
}

/// Envoy's gradient and headroom, window by window: clamped to 2 on the way up, to 0.5 on
/// the way down, and a drop halves the limit.
#[test]
fn each_window_moves_the_limit_by_its_gradient_and_headroom() {
    let ms = Duration::from_millis;
    let mut algorithm = WindowedGradient::builder()
        .initial_limit(10)
        .min_limit(1)
        .window(2)
        .probe_samples(1)
        .build()
        .unwrap();
    algorithm.update(&sample(ms(10), 1, false, ms(0)));
    let window = |algorithm: &mut WindowedGradient, rtt, dropped| {
        let limit = algorithm.limit();
        algorithm.update(&sample(ms(rtt), limit, false, ms(1)));
        algorithm.update(&sample(ms(rtt), limit, dropped, ms(1)))
    };
    // 10 ms against 10 × 1.25: 10 × 1.25 + ⌊√12⌋ = 15.5.
    assert_eq!(window(&mut algorithm, 10, false), 15);
    // 1 ms: the gradient of 12.5 is clamped to 2: 15.5 × 2 + ⌊√31⌋ = 36.
    assert_eq!(window(&mut algorithm, 1, false), 36);
    // 100 ms: clamped to 0.5: 18 + ⌊√18⌋ = 22.
    assert_eq!(window(&mut algorithm, 100, false), 22);
    // A drop: halved.
    assert_eq!(window(&mut algorithm, 10, true), 11);
}

#[test]
fn bad_settings_are_refused_with_their_field() {
    let zero = |field| Err(ConfigError::Zero { field });
    assert_eq!(
        WindowedGradient::builder().window(0).build().map(|_| ()),
        zero("window")
    );
    assert_eq!(
        WindowedGradient::builder()
            .probe_samples(0)
            .build()
            .map(|_| ()),
        zero("probe_samples")
    );
    assert_eq!(
        WindowedGradient::builder()
            .probe_interval(Duration::ZERO)
            .build()
            .map(|_| ()),
        zero("probe_interval")
    );
    assert_eq!(
        WindowedGradient::builder().min_limit(0).build().map(|_| ()),
        zero("min_limit")
    );
    assert!(matches!(
        WindowedGradient::builder().buffer(-0.1).build(),
        Err(ConfigError::OutOfRange {
            field: "buffer",
            ..
        })
    ));
    for buffer in [f64::NAN, f64::INFINITY] {
        assert!(matches!(
            WindowedGradient::builder().buffer(buffer).build(),
            Err(ConfigError::NotFinite { field: "buffer" })
        ));
    }
    assert!(matches!(
        WindowedGradient::builder().initial_limit(2).build(),
        Err(ConfigError::Conflict { .. })
    ));
}
