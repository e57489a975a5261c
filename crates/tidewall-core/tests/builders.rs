//! Every core builder at the edges of its input (0, 1, MAX, `Duration::MAX`, huge durations):
//! a faithful value or a typed `ConfigError`, never a wrap, a silent rounding or a panic.

use core::time::Duration;

use proptest::prelude::*;
use tidewall_core::ConfigError;
use tidewall_core::backoff::{Backoff, Jitter};
use tidewall_core::breaker::{BreakerPolicy, MAX_BUCKETS, Window};
use tidewall_core::budget::RetryBudgetPolicy;
use tidewall_core::gcra::Gcra;

/// Durations at and around every edge: zero, one tick, the largest that fits in `u64`
/// nanoseconds, and past it.
fn durations() -> impl Strategy<Value = Duration> {
    prop_oneof![
        Just(Duration::ZERO),
        Just(Duration::from_nanos(1)),
        (0u64..=u64::MAX).prop_map(Duration::from_nanos),
        (0u64..10_000_000_000).prop_map(Duration::from_nanos),
        Just(Duration::from_nanos(u64::MAX)),
        (0u64..1_000_000).prop_map(|n| Duration::MAX - Duration::from_nanos(n)),
    ]
}

fn counts() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(0u32),
        Just(1),
        Just(u32::MAX),
        0u32..=u32::MAX,
        0u32..2_000
    ]
}

fn nanos(d: Duration) -> u128 {
    d.as_nanos()
}

proptest! {
    /// Unjittered delays are exactly the schedule's formula, capped; anything the builder
    /// refuses is a typed error.
    #[test]
    fn backoff_delays_are_the_formula_exactly_or_refused(
        kind in 0u8..3,
        first in durations(),
        step in durations(),
        cap in durations(),
        attempts in counts(),
        factor in prop_oneof![Just(1.0f64), Just(2.0), Just(f64::MAX), Just(f64::INFINITY), Just(f64::NAN), Just(0.5)],
    ) {
        let builder = match kind {
            0 => Backoff::constant(first),
            1 => Backoff::linear(first, step),
            _ => Backoff::exponential(first).factor(factor),
        };
        match builder.jitter(Jitter::None).max_delay(cap).max_attempts(attempts).build() {
            Ok(backoff) => {
                let delays: Vec<Duration> = backoff.delays(0).take(4).collect();
                let expected = usize::try_from(attempts.saturating_sub(1).min(4)).unwrap();
                prop_assert_eq!(delays.len(), expected);
                for (n, delay) in (0u128..).zip(&delays) {
                    let raw = match kind {
                        0 => nanos(first),
                        1 => nanos(first) + n * nanos(step),
                        // Exponential: the first delay is exact; later ones only grow.
                        _ if n == 0 => nanos(first),
                        _ => nanos(delays[0]).max(nanos(*delay)),
                    };
                    prop_assert_eq!(nanos(*delay), raw.min(nanos(cap)));
                }
                prop_assert!(delays.windows(2).all(|w| kind == 0 || w[0] <= w[1]));
            }
            Err(ConfigError::Zero { field }) => {
                prop_assert!(["max_attempts", "max_delay"].contains(&field), "{field}");
            }
            Err(ConfigError::DurationOverflow { field }) => {
                prop_assert!(["max_delay", "delay", "initial", "step"].contains(&field), "{field}");
            }
            Err(ConfigError::NotFinite { field: "factor" }) => prop_assert!(!factor.is_finite()),
            Err(ConfigError::OutOfRange { field: "factor", .. }) => prop_assert!(factor < 1.0),
            Err(ConfigError::Conflict { .. }) => prop_assert!(first > cap),
            Err(other) => prop_assert!(false, "unexpected {other:?}"),
        }
    }

    /// A breaker's settings: Ok means the window is the one asked for (to 0.1 %), the rates
    /// are kept to the part per million; the rest is a typed error.
    #[test]
    fn breaker_policies_are_faithful_or_refused(
        span in durations(),
        buckets in counts(),
        calls in counts(),
        rate in prop_oneof![Just(0.0f64), Just(1e-9), Just(1e-6), Just(0.5), Just(1.0), Just(1.5), Just(f64::NAN), 0.0f64..=1.0],
        probes in counts(),
        pause in durations(),
        wait in durations(),
        timed in any::<bool>(),
    ) {
        let window = if timed { Window::Time { span, buckets } } else { Window::Count { calls } };
        let built = BreakerPolicy::builder()
            .failure_rate(rate)
            .minimum_calls(1)
            .window(window)
            .half_open_probes(probes)
            .break_duration(pause)
            .max_half_open_wait(Some(wait))
            .build();
        match built {
            Ok(policy) => {
                prop_assert_eq!(policy.window(), window);
                prop_assert_eq!(policy.half_open_probes(), probes);
                prop_assert_eq!(policy.break_duration(0, 0), pause);
                prop_assert_eq!(policy.break_duration(u32::MAX >> 20, 0), pause);
                prop_assert!((1e-6..=1.0).contains(&rate));
                if let Window::Time { span, buckets } = window {
                    let length = nanos(span) / u128::from(buckets);
                    prop_assert!(length >= 1);
                    prop_assert!(nanos(span) * 1000 <= length * u128::from(buckets) * 1001);
                }
            }
            Err(ConfigError::OutOfRange { field, .. }) => prop_assert!(
                ["failure_rate", "window.calls", "window.buckets", "window.span", "half_open_probes"].contains(&field),
                "{field}"
            ),
            Err(ConfigError::NotFinite { field: "failure_rate" }) => prop_assert!(rate.is_nan()),
            Err(ConfigError::Zero { field }) => prop_assert!(
                ["window.calls", "window.buckets", "window.span", "half_open_probes", "break_duration", "max_half_open_wait"].contains(&field),
                "{field}"
            ),
            Err(ConfigError::DurationOverflow { field }) => prop_assert!(
                ["window.span", "break_duration", "max_half_open_wait", "max_delay", "delay"].contains(&field),
                "{field}"
            ),
            Err(other) => prop_assert!(false, "unexpected {other:?}"),
        }
    }

    /// A retry budget: Ok means bounded buckets that add up to the window (to 0.1 %) and a
    /// ratio kept to the part per million; the rest is a typed error.
    #[test]
    fn retry_budgets_are_faithful_or_refused(
        window in durations(),
        buckets in counts(),
        per_second in counts(),
        ratio in prop_oneof![Just(0.0f64), Just(4e-7), Just(1e-6), Just(1000.0), Just(1000.5), Just(-1.0), Just(f64::INFINITY), 0.0f64..=1000.0],
    ) {
        let built = RetryBudgetPolicy::builder()
            .window(window)
            .buckets(buckets)
            .min_per_second(per_second)
            .ratio(ratio)
            .build();
        match built {
            Ok(policy) => {
                prop_assert!((1..=MAX_BUCKETS).contains(&policy.buckets()));
                let length = nanos(window) / u128::from(buckets);
                prop_assert!(length >= 1);
                prop_assert!(nanos(window) * 1000 <= length * u128::from(buckets) * 1001);
                // Kept to the nearest part per million, and never rounded to zero.
                let ppm = u32::try_from(policy.ratio_ppm()).unwrap();
                prop_assert!((f64::from(ppm) - ratio * 1e6).abs() <= 0.5);
                prop_assert!(ratio == 0.0 || ppm >= 1);
                // The floor alone grants min_per_second × window retries, exactly.
                let floor = u128::from(per_second) * nanos(window) / 1_000_000_000;
                let floor = u64::try_from(floor).unwrap_or(u64::MAX);
                if floor < u64::MAX {
                    prop_assert!(!policy.allows(0, floor));
                    prop_assert!(floor == 0 || policy.allows(0, floor - 1));
                }
            }
            Err(ConfigError::OutOfRange { field, .. }) => {
                prop_assert!(["ratio", "buckets", "window", "min_per_second"].contains(&field), "{field}");
            }
            Err(ConfigError::NotFinite { field: "ratio" }) => prop_assert!(!ratio.is_finite()),
            Err(ConfigError::Zero { field }) => prop_assert!(["buckets", "window"].contains(&field), "{field}"),
            Err(ConfigError::DurationOverflow { field: "window" }) => {}
            Err(other) => prop_assert!(false, "unexpected {other:?}"),
        }
    }

    /// GCRA: Ok means the interval is within 0.1 % of the rate asked and the burst's
    /// horizon fits; the rest is a typed error.
    #[test]
    fn gcra_limits_are_faithful_or_refused(count in counts(), period in durations(), burst in counts()) {
        match Gcra::new(count, period, burst) {
            Ok(gcra) => {
                let interval = u128::from(gcra.interval_nanos());
                prop_assert!(interval * u128::from(count) <= nanos(period));
                prop_assert!(nanos(period) * 1000 <= interval * u128::from(count) * 1001);
                prop_assert!(interval * u128::from(burst) <= u128::from(u64::MAX));
                prop_assert_eq!(gcra.burst(), burst);
            }
            Err(ConfigError::Zero { field }) => prop_assert!(["count", "period", "burst"].contains(&field)),
            Err(ConfigError::OutOfRange { field: "count", .. }) => {}
            Err(ConfigError::DurationOverflow { field }) => prop_assert!(["period", "burst"].contains(&field)),
            Err(other) => prop_assert!(false, "unexpected {other:?}"),
        }
    }
}
