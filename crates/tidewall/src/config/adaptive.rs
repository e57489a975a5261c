//! An instance's `[adaptive]` section, turned into an adaptive limiter's builder.

use std::time::Instant;

use tidewall_core::adaptive::{Aimd, AnyAlgorithm, FixedLimit, Gradient2, Vegas, WindowedGradient};

use super::discipline::{CODEL_KEYS, codel_keys_fit, discipline};
use super::instance::{Absent, Checking, Get, checked};
use super::sections::{AdaptiveConfig, AlgorithmKind};
use super::{Instance, Invalid, Problem};
use crate::ConfigError;
use crate::adaptive::{AdaptiveLimiter, AdaptiveLimiterBuilder, Priority};
use crate::rt::DefaultRuntime;

/// What an adaptive section builds: a limiter of whichever algorithm it names.
pub type ConfiguredAdaptive<R = DefaultRuntime> = AdaptiveLimiter<AnyAlgorithm, R>;

/// The keys each algorithm takes besides the limits (a layer naming one may set only its).
const ALGORITHM_KEYS: [(AlgorithmKind, &[&str]); 4] = [
    (AlgorithmKind::Aimd, &["backoff_ratio", "timeout"]),
    (
        AlgorithmKind::Vegas,
        &["smoothing", "alpha", "beta", "probe_multiplier", "seed"],
    ),
    (
        AlgorithmKind::Gradient2,
        &["smoothing", "queue_size", "long_window", "rtt_tolerance"],
    ),
    (
        AlgorithmKind::WindowedGradient,
        &["window", "buffer", "probe_samples", "probe_interval"],
    ),
];

/// The algorithm `kind` with `s`'s keys for it (the others are not read).
fn algorithm(kind: AlgorithmKind, s: &AdaptiveConfig) -> Result<AnyAlgorithm, ConfigError> {
    macro_rules! limits {
        ($builder:expr) => {{
            let mut b = $builder;
            if let Some(n) = s.initial_limit {
                b = b.initial_limit(n);
            }
            if let Some(n) = s.min_limit {
                b = b.min_limit(n);
            }
            if let Some(n) = s.max_limit {
                b = b.max_limit(n);
            }
            b
        }};
    }
    Ok(match kind {
        AlgorithmKind::Aimd => {
            let mut b = limits!(Aimd::builder());
            if let Some(ratio) = s.backoff_ratio {
                b = b.backoff_ratio(ratio);
            }
            if let Some(timeout) = s.timeout {
                b = b.timeout(timeout);
            }
            b.build()?.into()
        }
        AlgorithmKind::Vegas => {
            let mut b = limits!(Vegas::builder());
            if let Some(smoothing) = s.smoothing {
                b = b.smoothing(smoothing);
            }
            if let Some(alpha) = s.alpha {
                b = b.alpha(alpha);
            }
            if let Some(beta) = s.beta {
                b = b.beta(beta);
            }
            if let Some(n) = s.probe_multiplier {
                b = b.probe_multiplier(n);
            }
            if let Some(seed) = s.seed {
                b = b.seed(seed);
            }
            b.build()?.into()
        }
        AlgorithmKind::Gradient2 => {
            let mut b = limits!(Gradient2::builder());
            if let Some(smoothing) = s.smoothing {
                b = b.smoothing(smoothing);
            }
            if let Some(n) = s.queue_size {
                b = b.queue_size(n);
            }
            if let Some(n) = s.long_window {
                b = b.long_window(n);
            }
            if let Some(tolerance) = s.rtt_tolerance {
                b = b.rtt_tolerance(tolerance);
            }
            b.build()?.into()
        }
        AlgorithmKind::WindowedGradient => {
            let mut b = limits!(WindowedGradient::builder());
            if let Some(n) = s.window {
                b = b.window(n);
            }
            if let Some(buffer) = s.buffer {
                b = b.buffer(buffer);
            }
            if let Some(n) = s.probe_samples {
                b = b.probe_samples(n);
            }
            if let Some(interval) = s.probe_interval {
                b = b.probe_interval(interval);
            }
            b.build()?.into()
        }
    })
}

/// An algorithm, or for a neutral check one whose limits contradict each other (an instance
/// may settle that) a stand-in, so that the limiter's own keys are checked too, with the
/// contradiction to report after them.
fn settled(
    algorithm: Result<AnyAlgorithm, ConfigError>,
    absent: Absent,
) -> Result<(AnyAlgorithm, Option<ConfigError>), ConfigError> {
    match (algorithm, absent) {
        (Ok(algorithm), _) => Ok((algorithm, None)),
        (Err(e @ ConfigError::Conflict { .. }), Absent::Neutral) => {
            Ok((FixedLimit(1).into(), Some(e)))
        }
        (Err(e), _) => Err(e),
    }
}

impl Instance<'_> {
    /// The adaptive limiter, on the default runtime (choose another with
    /// [`runtime`](AdaptiveLimiterBuilder::runtime)): the algorithm the layers name, with
    /// their keys for it, under the limiter's queue, wait, discipline and shares.
    ///
    /// ```
    /// use tidewall::adaptive::LimitAlgorithm;
    /// use tidewall::config::Config;
    ///
    /// let config = Config::from_toml(r#"
    ///     [defaults.adaptive]
    ///     algorithm = "aimd"
    ///     timeout = "250ms"
    ///     [instances.search.adaptive]
    ///     initial_limit = 40
    /// "#)?;
    /// let search = config.instance("search")?.adaptive_limiter()?.build()?;
    /// assert_eq!((search.name(), search.limit()), ("search", 40));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Problem::Missing`] when no layer sets `algorithm`; [`Problem::NotHere`] for a key
    /// of another algorithm (or a CoDel key without `discipline = "codel"`) in a layer that
    /// names its own; [`Invalid`] with the key path of a setting the builders refuse.
    pub fn adaptive_limiter(&self) -> Result<AdaptiveLimiterBuilder<AnyAlgorithm>, Invalid> {
        self.adaptive_limiter_with(DefaultRuntime::default(), Absent::Refused)
    }

    pub(super) fn adaptive_limiter_on<R>(
        &self,
        rt: R,
    ) -> Result<AdaptiveLimiterBuilder<AnyAlgorithm, R>, Invalid> {
        self.adaptive_limiter_with(rt, Absent::Refused)
    }

    /// Checks the section's keys where `absent` says (the algorithm a neutral check has no
    /// name for: each algorithm whose own keys are set, on those keys alone).
    pub(super) fn check_adaptive(&self, absent: Absent) -> Result<(), Invalid> {
        let clock = Checking(Instant::now());
        self.adaptive_limiter_with(clock, absent).map(drop)
    }

    fn adaptive_limiter_with<R>(
        &self,
        rt: R,
        absent: Absent,
    ) -> Result<AdaptiveLimiterBuilder<AnyAlgorithm, R>, Invalid> {
        let get: Get<AdaptiveConfig> = |p| &p.adaptive;
        self.adaptive_keys_fit()?;
        let (s, at) = self.section("adaptive", get, AdaptiveConfig::over);
        let place =
            |e: ConfigError| self.placed("adaptive", get, AdaptiveConfig::sets, &[], &at, e);
        let (algorithm, contradiction) = match (s.algorithm, absent) {
            (Some(kind), absent) => settled(algorithm(kind, &s), absent).map_err(place)?,
            (None, Absent::Refused) => {
                return Err(Invalid::new(format!("{at}.algorithm"), Problem::Missing));
            }
            (None, Absent::Neutral) => {
                // No algorithm named: each one whose own keys are set checks them (each
                // reads only its own), the first the limits too.
                let mut checked = settled(algorithm(AlgorithmKind::Aimd, &s), absent);
                for (kind, keys) in &ALGORITHM_KEYS[1..] {
                    if keys.iter().any(|key| s.sets(key)) {
                        let own = settled(algorithm(*kind, &s), absent).map_err(place)?;
                        checked = checked.map(|(_, earlier)| (own.0, earlier.or(own.1)));
                    }
                }
                checked.map_err(place)?
            }
        };
        let mut b = AdaptiveLimiter::builder(algorithm)
            .name(self.named())
            .discipline(discipline(s.discipline, s.codel_target, s.codel_interval));
        if let Some(n) = s.max_queue {
            b = b.max_queue(n);
        }
        if let Some(wait) = s.max_wait {
            b = b.max_wait(wait.on());
        }
        if let Some(share) = s.default_share {
            b = b.share(Priority::Default, share);
        }
        if let Some(share) = s.sheddable_share {
            b = b.share(Priority::Sheddable, share);
        }
        checked(|| b.clone().runtime(Checking(Instant::now())).build())
            .map_err(|e| self.placed("adaptive", get, AdaptiveConfig::sets, CODEL_KEYS, &at, e))?;
        if let Some(contradiction) = contradiction {
            return Err(place(contradiction));
        }
        Ok(b.runtime(rt))
    }

    /// A layer that names its algorithm may set only that algorithm's keys, and CoDel's
    /// durations only next to `discipline = "codel"` (when it names a discipline).
    fn adaptive_keys_fit(&self) -> Result<(), Invalid> {
        for (path, policies) in self.layers() {
            let Some(adaptive) = &policies.adaptive else {
                continue;
            };
            if let Some(kind) = adaptive.algorithm {
                let own = ALGORITHM_KEYS
                    .iter()
                    .find(|(k, _)| *k == kind)
                    .map(|(_, keys)| *keys);
                let own = own.unwrap_or_default();
                let foreign = ALGORITHM_KEYS
                    .iter()
                    .flat_map(|(_, keys)| keys.iter())
                    .find(|key| !own.contains(key) && adaptive.sets(key));
                if let Some(key) = foreign {
                    return Err(Invalid::new(
                        format!("{path}.adaptive.{key}"),
                        Problem::NotHere(match kind {
                            AlgorithmKind::Aimd => "not a key of `algorithm = \"aimd\"`",
                            AlgorithmKind::Vegas => "not a key of `algorithm = \"vegas\"`",
                            AlgorithmKind::Gradient2 => "not a key of `algorithm = \"gradient2\"`",
                            AlgorithmKind::WindowedGradient => {
                                "not a key of `algorithm = \"windowed_gradient\"`"
                            }
                        }),
                    ));
                }
            }
            codel_keys_fit(
                &format!("{path}.adaptive"),
                |k| adaptive.sets(k),
                adaptive.discipline,
            )?;
        }
        Ok(())
    }
}
