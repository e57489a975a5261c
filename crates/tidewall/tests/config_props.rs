//! Configuration values over their whole range: whatever the numbers, validating gives Ok or
//! an error at a key path, never a panic; a configuration that validates builds every policy;
//! and every configuration prints back to itself.
#![cfg(feature = "toml")]

use std::time::Duration;

use proptest::prelude::*;
use tidewall::config::{
    AdaptiveConfig, AlgorithmKind, BackoffKind, BreakerConfig, BudgetConfig, BulkheadConfig,
    Config, DisciplineKind, JitterKind, Policies, RateLimitConfig, Registry, RetryConfig, Toggle,
};
use tidewall::testing::FakeClock;

fn duration() -> BoxedStrategy<Duration> {
    // Mostly values a builder takes, so that whole configurations often validate; the rest
    // at the edges and anywhere in the range.
    prop_oneof![
        8 => (1u64..=10_000).prop_map(Duration::from_millis),
        1 => Just(Duration::ZERO),
        1 => any::<u64>().prop_map(Duration::from_nanos),
    ]
    .boxed()
}

fn ratio() -> BoxedStrategy<f64> {
    prop_oneof![
        16 => 0.01..=1.0f64,
        1 => Just(0.0),
        1 => Just(1e-7),
        1 => Just(1e-6),
        1 => Just(1000.0),
        1 => Just(f64::NAN),
        1 => Just(f64::INFINITY),
        1 => Just(-1.0),
        1 => any::<f64>(),
    ]
    .boxed()
}

fn small() -> BoxedStrategy<u32> {
    prop_oneof![
        16 => 1u32..=200,
        1 => Just(0),
        1 => Just(1024),
        1 => Just(1025),
        1 => Just((1 << 20) - 1),
        1 => Just(1 << 20),
        1 => any::<u32>(),
    ]
    .boxed()
}

fn toggle<T: std::fmt::Debug + Clone + 'static>(
    value: impl Strategy<Value = T> + 'static,
) -> BoxedStrategy<Toggle<T>> {
    prop_oneof![Just(Toggle::Off), value.prop_map(Toggle::On)].boxed()
}

fn breaker() -> BoxedStrategy<BreakerConfig> {
    (
        (
            proptest::option::of(toggle(ratio())),
            proptest::option::of(ratio()),
            proptest::option::of(duration()),
            proptest::option::of(small()),
            proptest::option::of(small()),
            proptest::option::of(small()),
        ),
        (
            proptest::option::of(duration()),
            proptest::option::of(small()),
            proptest::option::of(duration()),
            proptest::option::of(small()),
            proptest::option::of(toggle(duration())),
            proptest::option::of(duration()),
        ),
    )
        .prop_map(
            |(
                (rate, slow, threshold, consecutive, minimum, calls),
                (window, buckets, pause, probes, wait, hint),
            )| {
                let mut b = BreakerConfig::default();
                b.failure_rate = rate;
                b.slow_call_rate = slow;
                b.slow_call_threshold = threshold;
                b.consecutive_failures = consecutive;
                b.minimum_calls = minimum;
                // At most one of the two windows per layer: both is its own error, tested apart.
                if window.is_some() {
                    b.window = window;
                } else {
                    b.window_calls = calls;
                }
                b.window_buckets = buckets;
                b.break_duration = pause;
                b.half_open_probes = probes;
                b.max_half_open_wait = wait;
                b.max_open_hint = hint;
                b
            },
        )
        .boxed()
}

fn bulkhead() -> BoxedStrategy<BulkheadConfig> {
    (
        proptest::option::of(prop_oneof![0usize..=4, Just(usize::MAX), any::<usize>()]),
        proptest::option::of(prop_oneof![0usize..=4, Just(usize::MAX)]),
        proptest::option::of(toggle(duration())),
    )
        .prop_map(|(max, queue, wait)| {
            let mut b = BulkheadConfig::default();
            b.max_concurrent = max;
            b.max_queue = queue;
            b.max_wait = wait;
            b
        })
        .boxed()
}

fn rate_limit() -> BoxedStrategy<RateLimitConfig> {
    (
        proptest::option::of(small()),
        proptest::option::of(duration()),
        proptest::option::of(small()),
        proptest::option::of(duration()),
    )
        .prop_map(|(count, period, burst, jitter)| {
            let mut r = RateLimitConfig::default();
            r.count = count;
            r.period = period;
            r.burst = burst;
            r.jitter = jitter;
            r
        })
        .boxed()
}

fn retry() -> BoxedStrategy<RetryConfig> {
    (
        (
            proptest::option::of(prop_oneof![
                Just(BackoffKind::Constant),
                Just(BackoffKind::Linear),
                Just(BackoffKind::Exponential),
                Just(BackoffKind::DecorrelatedJitter),
            ]),
            proptest::option::of(duration()),
            proptest::option::of(duration()),
            proptest::option::of(prop_oneof![1.0..=4.0f64, any::<f64>()]),
            proptest::option::of(prop_oneof![
                Just(JitterKind::None),
                Just(JitterKind::Full),
                Just(JitterKind::Equal),
            ]),
        ),
        (
            proptest::option::of(duration()),
            proptest::option::of(small()),
            proptest::option::of(duration()),
            proptest::option::of(duration()),
            proptest::option::of(any::<u64>()),
        ),
    )
        .prop_map(
            |((kind, initial, step, factor, jitter), (cap, attempts, elapsed, hint, seed))| {
                let mut r = RetryConfig::default();
                r.backoff = kind;
                r.initial_delay = initial;
                r.step = step;
                r.factor = factor;
                r.jitter = jitter;
                r.max_delay = cap;
                r.max_attempts = attempts;
                r.max_elapsed = elapsed;
                r.max_retry_after = hint;
                r.seed = seed;
                r
            },
        )
        .boxed()
}

fn budget() -> BoxedStrategy<BudgetConfig> {
    (
        proptest::option::of(ratio()),
        proptest::option::of(small()),
        proptest::option::of(duration()),
        proptest::option::of(small()),
    )
        .prop_map(|(ratio, floor, window, buckets)| {
            let mut b = BudgetConfig::default();
            b.ratio = ratio;
            b.min_per_second = floor;
            b.window = window;
            b.buckets = buckets;
            b
        })
        .boxed()
}

fn adaptive() -> BoxedStrategy<AdaptiveConfig> {
    let algorithm = prop_oneof![
        Just(AlgorithmKind::Aimd),
        Just(AlgorithmKind::Vegas),
        Just(AlgorithmKind::Gradient2),
        Just(AlgorithmKind::WindowedGradient),
    ];
    let discipline = prop_oneof![
        Just(DisciplineKind::Fifo),
        Just(DisciplineKind::Lifo),
        Just(DisciplineKind::Codel),
    ];
    (
        (
            proptest::option::of(algorithm),
            proptest::option::weighted(0.5, small()),
            proptest::option::weighted(0.5, small()),
            proptest::option::weighted(0.5, small()),
            proptest::option::weighted(0.2, ratio()),
            proptest::option::weighted(0.2, duration()),
            proptest::option::weighted(0.2, ratio()),
            proptest::option::weighted(0.1, small()),
            proptest::option::weighted(0.1, small()),
        ),
        (
            proptest::option::weighted(0.1, small()),
            proptest::option::weighted(0.1, any::<u64>()),
            proptest::option::weighted(0.1, small()),
            proptest::option::weighted(0.1, small()),
            proptest::option::weighted(0.1, ratio()),
            proptest::option::weighted(0.1, small()),
            proptest::option::weighted(0.1, ratio()),
            proptest::option::weighted(0.1, small()),
            proptest::option::weighted(0.1, duration()),
        ),
        (
            proptest::option::weighted(0.3, prop_oneof![0usize..=4, Just(usize::MAX)]),
            proptest::option::weighted(0.3, toggle(duration())),
            proptest::option::weighted(0.3, discipline),
            proptest::option::weighted(0.2, duration()),
            proptest::option::weighted(0.2, duration()),
            proptest::option::weighted(0.3, ratio()),
            proptest::option::weighted(0.3, ratio()),
        ),
    )
        .prop_map(
            |(
                (algorithm, initial, min, max, backoff_ratio, timeout, smoothing, alpha, beta),
                (probes, seed, queue_size, long_window, tolerance, window, buffer, samples, every),
                (queue, wait, discipline, target, interval, default_share, sheddable_share),
            )| {
                let mut a = AdaptiveConfig::default();
                a.algorithm = algorithm;
                a.initial_limit = initial;
                a.min_limit = min;
                a.max_limit = max;
                a.backoff_ratio = backoff_ratio;
                a.timeout = timeout;
                a.smoothing = smoothing;
                a.alpha = alpha;
                a.beta = beta;
                a.probe_multiplier = probes;
                a.seed = seed;
                a.queue_size = queue_size;
                a.long_window = long_window;
                a.rtt_tolerance = tolerance;
                a.window = window;
                a.buffer = buffer;
                a.probe_samples = samples;
                a.probe_interval = every;
                a.max_queue = queue;
                a.max_wait = wait;
                a.discipline = discipline;
                a.codel_target = target;
                a.codel_interval = interval;
                a.default_share = default_share;
                a.sheddable_share = sheddable_share;
                a
            },
        )
        .boxed()
}

fn hedge() -> BoxedStrategy<tidewall::config::HedgeConfig> {
    (
        proptest::option::of(duration()),
        proptest::option::of(prop_oneof![small(), Just(u32::MAX), Just(u32::MAX - 1)]),
        proptest::option::weighted(0.5, toggle(ratio())),
        proptest::option::weighted(0.4, prop_oneof![1u64..=1000, Just(0), any::<u64>()]),
        proptest::option::weighted(0.4, toggle(ratio())),
    )
        .prop_map(
            |(delay, max_hedges, percentile, min_samples, budget_ratio)| {
                let mut h = tidewall::config::HedgeConfig::default();
                h.delay = delay;
                h.max_hedges = max_hedges;
                h.percentile = percentile;
                h.min_samples = min_samples;
                h.budget_ratio = budget_ratio;
                h
            },
        )
        .boxed()
}

#[cfg(feature = "chaos")]
fn chaos() -> BoxedStrategy<tidewall::config::ChaosConfig> {
    (
        proptest::option::of(any::<bool>()),
        proptest::option::weighted(0.3, any::<u64>()),
        proptest::option::weighted(0.5, ratio()),
        proptest::option::weighted(0.5, duration()),
        (
            proptest::option::weighted(0.5, ratio()),
            proptest::option::weighted(0.3, ratio()),
            proptest::option::weighted(0.3, ratio()),
        ),
    )
        .prop_map(
            |(enabled, seed, latency_rate, latency, (error, hang, alter))| {
                let mut c = tidewall::config::ChaosConfig::default();
                c.enabled = enabled;
                c.seed = seed;
                c.latency_rate = latency_rate;
                c.latency = latency;
                c.error_rate = error;
                c.hang_rate = hang;
                c.alter_rate = alter;
                c
            },
        )
        .boxed()
}

fn policies() -> BoxedStrategy<Policies> {
    let policies = (
        proptest::option::of(toggle(duration())),
        proptest::option::of(toggle(duration())),
        proptest::option::of(breaker()),
        proptest::option::of(bulkhead()),
        proptest::option::of(rate_limit()),
        proptest::option::of(retry()),
        proptest::option::of(budget()),
        proptest::option::weighted(0.3, adaptive()),
        proptest::option::weighted(0.3, hedge()),
    )
        .prop_map(
            |(deadline, timeout, breaker, bulkhead, rate_limit, retry, budget, adaptive, hedge)| {
                let mut p = Policies::default();
                p.deadline = deadline;
                p.attempt_timeout = timeout;
                p.breaker = breaker;
                p.bulkhead = bulkhead;
                p.rate_limit = rate_limit;
                p.retry = retry;
                p.budget = budget;
                p.adaptive = adaptive;
                p.hedge = hedge;
                p
            },
        );
    #[cfg(feature = "chaos")]
    let policies =
        (policies, proptest::option::weighted(0.3, chaos())).prop_map(|(mut p, chaos)| {
            p.chaos = chaos;
            p
        });
    policies.boxed()
}

fn config() -> BoxedStrategy<Config> {
    let sometimes = || prop_oneof![Just(Policies::default()), policies()];
    (sometimes(), sometimes(), policies(), any::<bool>())
        .prop_map(|(defaults, base, own, based)| {
            let mut config = Config::default();
            config.defaults = defaults;
            config.configs.insert("base".into(), base);
            let mut own = own;
            if based {
                own.base = Some("base".into());
            }
            config.instances.insert("a".into(), own);
            config
        })
        .boxed()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn validation_and_building_agree_over_the_whole_range(config in config()) {
        let checked = config.validate();
        let built = Registry::builder(config.clone()).runtime(FakeClock::new()).build();
        match (&checked, &built) {
            (Ok(()), Ok(_)) => {}
            (Err(a), Err(b)) => {
                prop_assert_eq!(a, b);
                let path = a.path();
                prop_assert!(
                    path.is_empty() || ["defaults", "configs.base", "instances.a"].iter().any(|p| path.starts_with(p)),
                    "an error names where it is: {}", a
                );
            }
            _ => prop_assert!(false, "validate {:?} but build {:?}", checked, built.map(drop)),
        }
        if checked.is_ok() {
            // Everything a file can print reads back as itself. A NaN that validation lets
            // through (in defaults no instance uses) is not equal to itself, so what reads back
            // is compared by what it prints, and whole only where it can equal itself.
            let printed = toml::to_string(&config).unwrap();
            let read = Config::from_toml(&printed).unwrap();
            prop_assert_eq!(toml::to_string(&read).unwrap(), printed);
            #[allow(clippy::eq_op)] // false only for a value holding a NaN
            let comparable = config == config;
            if comparable {
                prop_assert_eq!(read, config);
            }
        }
    }
}
