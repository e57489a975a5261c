//! The adaptive limit algorithms over synthetic latency sequences: the limit stays within its
//! bounds whatever the samples (RTTs of zero to `u64::MAX` nanoseconds, any in-flight count,
//! drops anywhere), converges on a steady signal, backs off on a latency step or on drops, and
//! does not move while the limit is less than half used. Plus Netflix's own examples.

use core::time::Duration;

use proptest::prelude::*;
use tidewall_core::ConfigError;
use tidewall_core::adaptive::{
    Aimd, AnyAlgorithm, FixedLimit, Gradient2, LimitAlgorithm, Sample, Steady, Vegas,
    WindowedGradient,
};

fn sample(rtt_nanos: u64, inflight: u32, dropped: bool) -> Sample {
    Sample {
        rtt: Duration::from_nanos(rtt_nanos),
        inflight,
        dropped,
        at: Duration::ZERO,
    }
}

/// Any sample, extremes included.
fn any_sample() -> impl Strategy<Value = Sample> {
    (
        prop_oneof![Just(0_u64), Just(u64::MAX), any::<u64>(), 1_u64..10_000_000],
        prop_oneof![Just(0_u32), Just(u32::MAX), any::<u32>(), 0_u32..500],
        any::<bool>(),
    )
        .prop_map(|(rtt, inflight, dropped)| sample(rtt, inflight, dropped))
}

/// Valid bounds: `1 <= min <= initial <= max`, anywhere in `u32`.
fn bounds() -> impl Strategy<Value = (u32, u32, u32)> {
    (1_u32..=u32::MAX, any::<u32>(), any::<u32>()).prop_map(|(a, b, c)| {
        let mut v = [a, b.max(1), c.max(1)];
        v.sort_unstable();
        (v[0], v[1], v[2])
    })
}

/// One of each algorithm, with `bounds` and otherwise arbitrary valid settings.
fn algorithms(
    (min, initial, max): (u32, u32, u32),
    ratio: f64,
    smoothing: f64,
    seed: u64,
) -> Vec<Box<dyn LimitAlgorithm>> {
    vec![
        Box::new(
            Aimd::builder()
                .min_limit(min)
                .initial_limit(initial)
                .max_limit(max)
                .backoff_ratio(0.5 + ratio / 2.0)
                .build()
                .unwrap(),
        ),
        Box::new(
            Vegas::builder()
                .min_limit(min)
                .initial_limit(initial)
                .max_limit(max)
                .smoothing(smoothing)
                .seed(seed)
                .build()
                .unwrap(),
        ),
        Box::new(
            Gradient2::builder()
                .min_limit(min)
                .initial_limit(initial)
                .max_limit(max)
                .smoothing(smoothing)
                .build()
                .unwrap(),
        ),
    ]
}

proptest! {
    #[test]
    fn the_limit_stays_within_bounds_for_any_samples(
        bounds in bounds(),
        ratio in 0.0_f64..0.999,
        smoothing in 0.001_f64..=1.0,
        seed in any::<u64>(),
        samples in prop::collection::vec(any_sample(), 1..300),
    ) {
        for mut algorithm in algorithms(bounds, ratio, smoothing, seed) {
            let (min, max) = algorithm.bounds();
            prop_assert_eq!((min, max), (bounds.0, bounds.2));
            prop_assert_eq!(algorithm.limit(), bounds.1);
            for sample in &samples {
                let limit = algorithm.update(sample);
                prop_assert_eq!(limit, algorithm.limit());
                prop_assert!((min..=max).contains(&limit), "{} outside {}..={}", limit, min, max);
            }
        }
    }

    /// A steady signal (the same RTT every call, the limit fully used, no drops) raises every
    /// algorithm to its maximum, which then holds.
    #[test]
    fn a_steady_signal_converges_to_the_most_and_holds(
        rtt in 1_u64..1_000_000_000,
        max in 20_u32..2_000,
        seed in any::<u64>(),
    ) {
        for mut algorithm in algorithms((1, 10, max), 0.5, 1.0, seed) {
            let mut reached = None;
            for n in 0..200_000 {
                let limit = algorithm.limit();
                if algorithm.update(&sample(rtt, limit, false)) == max {
                    reached = Some(n);
                    break;
                }
            }
            prop_assert!(reached.is_some(), "never reached {}", max);
            for _ in 0..1_000 {
                prop_assert_eq!(algorithm.update(&sample(rtt, max, false)), max);
            }
        }
    }

    /// A limit less than half used never grows: an idle service says nothing about capacity.
    #[test]
    fn an_idle_limit_does_not_grow(
        rtt in 1_u64..1_000_000_000,
        initial in 10_u32..1_000,
        seed in any::<u64>(),
        samples in 1_usize..2_000,
    ) {
        for mut algorithm in algorithms((1, initial, 5_000), 0.5, 1.0, seed) {
            for _ in 0..samples {
                let idle = algorithm.limit().div_ceil(2) - 1;
                let limit = algorithm.update(&sample(rtt, idle, false));
                prop_assert!(limit <= initial, "{} grew past {}", limit, initial);
            }
        }
    }

    /// Vegas and Gradient2 back off within a few samples of a latency step, from any steady
    /// state; AIMD (loss based) backs off on the first drop.
    #[test]
    fn a_latency_step_or_a_drop_backs_off(
        rtt in 1_000_u64..100_000_000,
        step in 3_u64..50,
        steady in 1_usize..3_000,
        seed in any::<u64>(),
    ) {
        let mut vegas = Vegas::builder().initial_limit(100).seed(seed).build().unwrap();
        let mut gradient = Gradient2::builder().initial_limit(100).build().unwrap();
        for algorithm in [&mut vegas as &mut dyn LimitAlgorithm, &mut gradient] {
            for _ in 0..steady {
                let limit = algorithm.limit();
                algorithm.update(&sample(rtt, limit, false));
            }
            let before = algorithm.limit();
            let slower = rtt.saturating_mul(step);
            let mut after = before;
            for _ in 0..3 {
                after = algorithm.update(&sample(slower, before, false));
            }
            prop_assert!(after < before, "{} after a step of {}x, from {}", after, step, before);
        }
        let mut aimd = Aimd::builder().min_limit(1).initial_limit(100).build().unwrap();
        for _ in 0..steady {
            let limit = aimd.limit();
            aimd.update(&sample(rtt, limit, false));
        }
        let before = aimd.limit();
        prop_assert!(aimd.update(&sample(rtt, before, true)) < before);
    }
}

/// Netflix's AIMD examples: +1 at a well-used limit, ×0.9 truncated on a drop, the maximum
/// holds, and a timeout counts as a drop.
#[test]
fn aimd_matches_netflix() {
    let at = |initial: u32, max: u32| {
        Aimd::builder()
            .min_limit(1)
            .initial_limit(initial)
            .max_limit(max)
            .build()
            .unwrap()
    };
    assert_eq!(at(20, 200).update(&sample(1_000_000, 10, false)), 21);
    assert_eq!(at(30, 200).update(&sample(1_000_000, 30, true)), 27);
    assert_eq!(at(21, 21).update(&sample(1_000_000, 21, false)), 21);
    assert_eq!(
        at(30, 200).update(&sample(5_000_000_001, 30, false)),
        27,
        "slower than the 5 s timeout"
    );
    // Small limits fall to the minimum, never to zero.
    assert_eq!(at(1, 200).update(&sample(1, 1, true)), 1);
}

/// Netflix's Vegas examples (alpha 3, beta 6, no smoothing, initial 10, max 20).
#[test]
fn vegas_matches_netflix() {
    let mut vegas = Vegas::builder()
        .initial_limit(10)
        .max_limit(20)
        .alpha(3)
        .beta(6)
        .build()
        .unwrap();
    let ms = |n: u64| n * 1_000_000;
    assert_eq!(
        vegas.update(&sample(ms(10), 10, false)),
        10,
        "sets the no-load RTT"
    );
    assert_eq!(vegas.no_load_rtt(), Some(Duration::from_millis(10)));
    assert_eq!(
        vegas.update(&sample(ms(10), 11, false)),
        16,
        "no queue: + beta"
    );
    let mut vegas = Vegas::builder()
        .initial_limit(10)
        .max_limit(20)
        .build()
        .unwrap();
    vegas.update(&sample(ms(10), 10, false));
    assert_eq!(
        vegas.update(&sample(ms(50), 11, false)),
        9,
        "a queue of 8 > 6: - 1"
    );
    let mut vegas = Vegas::builder()
        .initial_limit(10)
        .max_limit(20)
        .build()
        .unwrap();
    vegas.update(&sample(ms(10), 10, false));
    assert_eq!(
        vegas.update(&sample(ms(14), 14, false)),
        10,
        "a queue of 3, between alpha and beta: held"
    );
    // A drop on a sample that sets the no-load RTT changes nothing else.
    let mut vegas = Vegas::builder().initial_limit(10).build().unwrap();
    assert_eq!(vegas.update(&sample(ms(10), 10, true)), 10);
    assert_eq!(vegas.update(&sample(ms(10), 10, true)), 9);
}

/// Gradient2 at Netflix's defaults grows by `queue_size × smoothing` = 0.8 a sample while
/// latency holds, and a drop counts as the steepest gradient.
#[test]
fn gradient2_grows_by_its_queue_allowance_and_backs_off_on_a_drop() {
    let mut gradient = Gradient2::builder().build().unwrap();
    let limits: Vec<u32> = (0..6)
        .map(|_| gradient.update(&sample(10_000_000, 40, false)))
        .collect();
    assert_eq!(limits, [20, 21, 22, 23, 24, 24]);
    // A drop: 24.8 × 0.8 + (24.8 × 0.5 + 4) × 0.2 = 23.12.
    assert_eq!(gradient.update(&sample(10_000_000, 40, true)), 23);
    assert_eq!(gradient.long_rtt(), Duration::from_millis(10));
}

#[test]
fn bad_settings_are_refused_with_their_field() {
    assert_eq!(
        Aimd::builder().min_limit(0).build(),
        Err(ConfigError::Zero { field: "min_limit" })
    );
    assert!(matches!(
        Aimd::builder().initial_limit(500).build(),
        Err(ConfigError::Conflict { .. })
    ));
    assert!(matches!(
        Aimd::builder().backoff_ratio(1.0).build(),
        Err(ConfigError::OutOfRange {
            field: "backoff_ratio",
            ..
        })
    ));
    assert!(matches!(
        Aimd::builder().backoff_ratio(f64::NAN).build(),
        Err(ConfigError::NotFinite {
            field: "backoff_ratio"
        })
    ));
    assert_eq!(
        Aimd::builder().timeout(Duration::ZERO).build(),
        Err(ConfigError::Zero { field: "timeout" })
    );
    assert!(matches!(
        Vegas::builder().smoothing(0.0).build(),
        Err(ConfigError::Zero { field: "smoothing" })
    ));
    assert!(matches!(
        Vegas::builder().smoothing(1.5).build(),
        Err(ConfigError::OutOfRange {
            field: "smoothing",
            ..
        })
    ));
    assert!(matches!(
        Vegas::builder().alpha(7).beta(6).build(),
        Err(ConfigError::Conflict { .. })
    ));
    assert!(matches!(
        Vegas::builder().probe_multiplier(0).build(),
        Err(ConfigError::Zero {
            field: "probe_multiplier"
        })
    ));
    assert!(matches!(
        Gradient2::builder().rtt_tolerance(0.9).build(),
        Err(ConfigError::OutOfRange {
            field: "rtt_tolerance",
            ..
        })
    ));
    assert!(matches!(
        Gradient2::builder().rtt_tolerance(f64::INFINITY).build(),
        Err(ConfigError::NotFinite { .. })
    ));
    assert!(matches!(
        Gradient2::builder().long_window(0).build(),
        Err(ConfigError::Zero {
            field: "long_window"
        })
    ));
    assert!(matches!(
        Gradient2::builder().min_limit(300).build(),
        Err(ConfigError::Conflict { .. })
    ));
}

proptest! {
    /// Vegas blends the clamped limit with the old one: the blend, rounded in f64, must not
    /// land one below `min_limit` (0.93 × 10 + 0.07 × 10 is 9.999999999999998).
    #[test]
    fn vegas_blending_never_leaves_the_bounds(
        min in 1_u32..500,
        smoothing in 0.001_f64..1.0,
        seed in any::<u64>(),
        drops in 1_usize..200,
    ) {
        // Starting at the minimum: each drop blends the minimum with itself.
        let mut vegas = Vegas::builder()
            .min_limit(min)
            .initial_limit(min)
            .max_limit(min + 50)
            .smoothing(smoothing)
            .seed(seed)
            .build()
            .unwrap();
        vegas.update(&sample(10_000_000, min, false));
        for _ in 0..drops {
            let limit = vegas.update(&sample(10_000_000, min, true));
            prop_assert!(limit >= min, "{} below {}", limit, min);
        }
    }
}

/// The case the review found: a minimum of 10 with a smoothing of 0.07.
#[test]
fn vegas_at_its_minimum_stays_there_whatever_the_smoothing() {
    let mut vegas = Vegas::builder()
        .min_limit(10)
        .initial_limit(10)
        .smoothing(0.07)
        .build()
        .unwrap();
    vegas.update(&sample(10_000_000, 10, false));
    assert_eq!(vegas.update(&sample(10_000_000, 10, true)), 10);
}

/// Every algorithm as an [`AnyAlgorithm`] (comparable whole), AIMD with `timeout`.
fn comparable(
    (min, initial, max): (u32, u32, u32),
    ratio: f64,
    timeout: Duration,
    seed: u64,
) -> Vec<AnyAlgorithm> {
    let aimd = Aimd::builder()
        .min_limit(min)
        .initial_limit(initial)
        .max_limit(max)
        .backoff_ratio(0.5 + ratio / 2.0)
        .timeout(timeout)
        .build()
        .unwrap();
    let vegas = Vegas::builder()
        .min_limit(min)
        .initial_limit(initial)
        .max_limit(max)
        .seed(seed)
        .build()
        .unwrap();
    let gradient2 = Gradient2::builder()
        .min_limit(min)
        .initial_limit(initial)
        .max_limit(max)
        .build()
        .unwrap();
    let windowed = WindowedGradient::builder()
        .min_limit(min)
        .initial_limit(initial)
        .max_limit(max)
        .build()
        .unwrap();
    vec![
        aimd.into(),
        vegas.into(),
        gradient2.into(),
        windowed.into(),
        FixedLimit(initial).into(),
    ]
}

proptest! {
    /// What `steady` claims holds: in any state a sequence of samples leads to, a sample it
    /// covers leaves the algorithm exactly as it was (the limiter skips its update).
    #[test]
    fn a_steady_sample_changes_nothing(
        // Narrow bounds too, so that sequences reach the least and the most limits.
        bounds in prop_oneof![bounds(), (1_u32..40, 0_u32..10, 0_u32..10).prop_map(|(min, a, b)| (min, min + a.min(b), min + a.max(b)))],
        ratio in 0.0_f64..0.999,
        timeout in prop_oneof![Just(1_u64), Just(u64::MAX), 1_u64..=u64::MAX, 1_u64..10_000_000],
        seed in any::<u64>(),
        samples in prop::collection::vec(any_sample(), 1..200),
    ) {
        for mut algorithm in comparable(bounds, ratio, Duration::from_nanos(timeout), seed) {
            for sample in &samples {
                // The sample, and its neighbours at each edge a claim could be off by one at.
                let limit = algorithm.limit();
                let inflights = [
                    sample.inflight, 0, 1, limit / 2, limit.div_ceil(2), limit - 1, limit,
                    limit.saturating_add(1), u32::MAX - 1, u32::MAX,
                ];
                let rtts = [sample.rtt.as_nanos(), 0, timeout.into(), u128::from(timeout) + 1];
                for inflight in inflights {
                    for &rtt in &rtts {
                        for dropped in [false, true] {
                            let rtt = u64::try_from(rtt).unwrap_or(u64::MAX);
                            let rtt = Duration::from_nanos(rtt);
                            let probe = Sample { rtt, inflight, dropped, at: sample.at };
                            if algorithm.steady().holds(&probe) {
                                let mut updated = algorithm.clone();
                                updated.update(&probe);
                                prop_assert_eq!(&updated, &algorithm, "{:?}", probe);
                            }
                        }
                    }
                }
                algorithm.update(sample);
            }
        }
    }
}

/// AIMD's steady samples: successes within its timeout below half the limit, or any number
/// at the most; never a drop or a slow call. The fixed limit's: all.
#[test]
fn aimd_is_steady_below_half_and_at_its_most() {
    let timeout = Duration::from_millis(100);
    let mut aimd = Aimd::builder()
        .initial_limit(20)
        .max_limit(21)
        .timeout(timeout)
        .build()
        .unwrap();
    let steady = aimd.steady();
    let ok = |inflight| sample(100_000_000, inflight, false);
    assert!(steady.holds(&ok(9)));
    assert!(!steady.holds(&ok(10)), "half of 20 in use: it grows");
    assert!(
        !steady.holds(&sample(100_000_001, 1, false)),
        "slower than the timeout"
    );
    assert!(!steady.holds(&sample(1, 1, true)), "a drop");
    assert_eq!(aimd.update(&ok(10)), 21);
    let steady = aimd.steady();
    assert!(
        steady.holds(&ok(u32::MAX - 1)),
        "at its most: nothing grows it"
    );
    assert!(!steady.holds(&sample(1, 1, true)));
    assert_eq!(FixedLimit(3).steady(), Steady::ALL);
    assert_eq!(Vegas::builder().build().unwrap().steady(), Steady::NONE);
}
