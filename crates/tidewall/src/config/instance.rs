//! One instance's effective settings, turned into validated builders.

use std::time::{Duration, Instant};

use tidewall_core::backoff::DEFAULT_MAX_DELAY;
use tidewall_core::breaker::{DEFAULT_BREAK_DURATION, Window};
use tidewall_core::budget::RetryBudgetPolicy;

use super::discipline::{CODEL_KEYS, codel_keys_fit, discipline};
use super::sections::{
    BackoffKind, BreakerConfig, BudgetConfig, BulkheadConfig, JitterKind, KeysConfig,
    RateLimitConfig, RetryConfig,
};
use super::{Invalid, Policies, Problem, Toggle};
use crate::breaker::{CircuitBreaker, CircuitBreakerBuilder};
use crate::bulkhead::{Bulkhead, BulkheadBuilder};
use crate::rate::{RateLimiter, RateLimiterBuilder};
use crate::rt::{Clock, DefaultRuntime};
use crate::{Backoff, ConfigError, Jitter, Name};

/// An instance as its layers make it: its own keys over its base's over the defaults (see
/// [`Config::instance`](super::Config::instance)). Each policy comes out as the same builder
/// code would use, named after the instance and already checked, so `build` succeeds unless
/// the caller changes it; add what a file cannot say (listeners, a runtime) before building.
///
/// ```
/// use tidewall::config::Config;
///
/// let config = Config::from_toml(r#"
///     [instances.payments.breaker]
///     consecutive_failures = 5
///     failure_rate = "off"
/// "#)?;
/// let breaker = config
///     .instance("payments")?
///     .breaker()?
///     .on_state_change(|change| println!("{} is now {}", change.name, change.to))
///     .build()?;
/// assert_eq!(breaker.name(), "payments");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Instance<'a> {
    name: &'a str,
    /// Top first: the instance's own keys, its base's, the defaults; each with its key path.
    layers: Vec<(String, &'a Policies)>,
}

/// A clock for checking settings: builders need one to build, and checking must not depend on
/// a runtime being around.
#[derive(Clone)]
pub(super) struct Checking(pub(super) Instant);

/// Builds a policy only to check its settings. Without a recorder of its own it would
/// register its metric series (named after the layer checked, `defaults` say) with the
/// process's recorder, where a dashboard would list policies that do not exist.
pub(super) fn checked<T>(build: impl FnOnce() -> T) -> T {
    #[cfg(feature = "metrics")]
    return metrics::with_local_recorder(&metrics::NoopRecorder, build);
    #[cfg(not(feature = "metrics"))]
    build()
}

impl Clock for Checking {
    type Sleep = std::future::Pending<()>;

    fn now(&self) -> Instant {
        self.0
    }

    fn sleep_until(&self, _: Instant) -> Self::Sleep {
        std::future::pending()
    }
}

/// What to do about a key without a default that no layer sets.
#[derive(Clone, Copy)]
pub(super) enum Absent {
    /// [`Problem::Missing`]: the policy is to be built.
    Refused,
    /// A neutral stand-in, to check the keys that are set (a layer checked alone).
    Neutral,
}

/// Reads one section of a layer.
pub(super) type Get<S> = fn(&Policies) -> &Option<S>;

/// Each policy's builder fields whose key in a file is another (the rest are the same).
const BREAKER_KEYS: &[(&str, &str)] = &[
    ("window.calls", "window_calls"),
    ("window.span", "window"),
    ("window.buckets", "window_buckets"),
];
const RETRY_KEYS: &[(&str, &str)] = &[("delay", "initial_delay"), ("initial", "initial_delay")];
/// The fields of a breaker's `break_backoff` schedule, and the `[breaker]` key of each.
const BREAK_KEYS: &[(&str, &str)] = &[
    ("delay", "break_duration"),
    ("initial", "break_duration"),
    ("factor", "break_factor"),
    ("max_delay", "max_break_duration"),
];
/// The `[breaker]` keys that shape a `break_backoff`, and are nothing without one.
const BREAK_SCHEDULE_KEYS: [&str; 3] = ["break_factor", "max_break_duration", "break_jitter"];

/// The schedule of a breaker's breaks: from `break_duration`, growing for as many trips in a
/// row as there are (held at `max_break_duration`), not randomized unless `break_jitter` says.
fn break_schedule(kind: BackoffKind, s: &BreakerConfig) -> Result<Backoff, ConfigError> {
    let first = s.break_duration.unwrap_or(DEFAULT_BREAK_DURATION);
    // A zero break is refused as such, however the schedule would treat a zero delay.
    crate::time::positive_duration("delay", first)?;
    let mut b = match kind {
        BackoffKind::Constant => Backoff::constant(first),
        BackoffKind::Linear => Backoff::linear(first, first),
        BackoffKind::Exponential => Backoff::exponential(first),
        BackoffKind::DecorrelatedJitter => Backoff::decorrelated_jitter(first),
    };
    if let Some(factor) = s.break_factor {
        b = b.factor(factor);
    }
    if kind != BackoffKind::DecorrelatedJitter {
        b = b.jitter(jitter(s.break_jitter.unwrap_or(JitterKind::None)));
    }
    if let Some(cap) = s.max_break_duration {
        crate::time::positive_duration("max_delay", cap)?;
        b = b.max_delay(cap);
    }
    // Said here in the section's own words: the schedule's would name `max_delay`.
    if first > s.max_break_duration.unwrap_or(DEFAULT_MAX_DELAY) {
        return Err(ConfigError::Conflict {
            reason: "the first break (`break_duration`) is longer than `max_break_duration` \
                     (default 30 s)",
        });
    }
    // Every trip in a row may grow the break: the schedule never runs out.
    b.max_attempts(u32::MAX).build()
}

fn jitter(kind: JitterKind) -> Jitter {
    match kind {
        JitterKind::None => Jitter::None,
        JitterKind::Full => Jitter::Full,
        JitterKind::Equal => Jitter::Equal,
    }
}

impl<'a> Instance<'a> {
    pub(super) fn new(name: &'a str, layers: Vec<(String, &'a Policies)>) -> Self {
        Self { name, layers }
    }

    /// The instance's name.
    pub fn name(&self) -> &str {
        self.name
    }

    /// Its layers, top first, each with its key path.
    pub(super) fn layers(&self) -> impl Iterator<Item = (&str, &Policies)> {
        self.layers.iter().map(|(path, p)| (path.as_str(), *p))
    }

    /// A scalar key from the topmost layer that sets it.
    fn scalar<T: Clone>(&self, key: fn(&Policies) -> &Option<T>) -> Option<T> {
        self.layers.iter().find_map(|(_, p)| key(p).clone())
    }

    /// The whole call's deadline (`None`: none, or `"off"`).
    pub fn deadline(&self) -> Option<Duration> {
        self.scalar(|p| &p.deadline).and_then(Toggle::on)
    }

    /// Each attempt's timeout (`None`: none, or `"off"`).
    pub fn attempt_timeout(&self) -> Option<Duration> {
        self.scalar(|p| &p.attempt_timeout).and_then(Toggle::on)
    }

    /// The least time an attempt needs before the deadline (default zero).
    pub fn min_attempt_time(&self) -> Duration {
        self.scalar(|p| &p.min_attempt_time).unwrap_or_default()
    }

    /// Whether the instance or its base has a section (an empty one is enough); the
    /// defaults only fill sections in.
    pub(super) fn has(&self, section: fn(&Policies) -> bool) -> bool {
        self.layers
            .iter()
            .any(|(path, p)| path != "defaults" && section(p))
    }

    /// Checks the call-wide keys (`deadline`, `attempt_timeout`, `min_attempt_time`) as a
    /// pipeline's builder would, at the key path of the layer that sets each.
    fn check_call_keys(&self) -> Result<(), Invalid> {
        // Each key as the topmost layer that sets it says: `Some(None)` is set to `"off"`.
        type Key = fn(&Policies) -> Option<Option<Duration>>;
        let keys: [(&'static str, Key); 3] = [
            ("deadline", |p| p.deadline.map(Toggle::on)),
            ("attempt_timeout", |p| p.attempt_timeout.map(Toggle::on)),
            ("min_attempt_time", |p| p.min_attempt_time.map(Some)),
        ];
        for (field, get) in keys {
            let Some((path, Some(value))) = self
                .layers
                .iter()
                .find_map(|(path, p)| Some((path, get(p)?)))
            else {
                continue;
            };
            let checked = if field == "min_attempt_time" {
                // Zero means no minimum; past u64 nanoseconds no deadline could hold it.
                u64::try_from(value.as_nanos())
                    .map(drop)
                    .map_err(|_| ConfigError::DurationOverflow { field })
            } else {
                crate::time::positive_duration(field, value)
            };
            checked.map_err(|e| Invalid::new(format!("{path}.{field}"), Problem::Rule(e)))?;
        }
        // Refused as the HTTP client refuses it: past u64 nanoseconds it would not print back
        // as a file that parses.
        if let Some((path, cap)) = self
            .layers
            .iter()
            .find_map(|(path, p)| Some((path, p.retry.as_ref()?.max_retry_after?)))
            && u64::try_from(cap.as_nanos()).is_err()
        {
            return Err(Invalid::new(
                format!("{path}.retry.max_retry_after"),
                Problem::Rule(ConfigError::DurationOverflow {
                    field: "max_retry_after",
                }),
            ));
        }
        Ok(())
    }

    /// The section merged down the layers, and the path of the topmost layer that has it.
    pub(super) fn section<S: Clone + Default>(
        &self,
        name: &str,
        get: Get<S>,
        over: fn(&S, &S) -> S,
    ) -> (S, String) {
        let mut merged = S::default();
        for (_, policies) in self.layers.iter().rev() {
            if let Some(section) = get(policies) {
                merged = over(section, &merged);
            }
        }
        let top = self
            .layers
            .iter()
            .find(|(_, p)| get(p).is_some())
            .unwrap_or(&self.layers[0]);
        (merged, format!("{}.{name}", top.0))
    }

    /// The path of `key` in `section`: in the topmost layer that sets it, or else where the
    /// section is (`fallback`).
    pub(super) fn key_path<S>(
        &self,
        section: &str,
        get: Get<S>,
        sets: fn(&S, &str) -> bool,
        key: &str,
        fallback: &str,
    ) -> String {
        self.layers
            .iter()
            .find(|(_, p)| get(p).as_ref().is_some_and(|s| sets(s, key)))
            .map_or_else(
                || format!("{fallback}.{key}"),
                |(path, _)| format!("{path}.{section}.{key}"),
            )
    }

    /// A builder's error, placed at the key that caused it.
    pub(super) fn placed<S>(
        &self,
        section: &str,
        get: Get<S>,
        sets: fn(&S, &str) -> bool,
        keys: &[(&str, &str)],
        at: &str,
        error: ConfigError,
    ) -> Invalid {
        let path = match error.field() {
            Some(field) => {
                let key = keys
                    .iter()
                    .find(|(f, _)| *f == field)
                    .map_or(field, |(_, k)| *k);
                self.key_path(section, get, sets, key, at)
            }
            None => at.to_owned(),
        };
        Invalid::new(path, Problem::Rule(error))
    }

    pub(super) fn named(&self) -> Name {
        Name::from(self.name.to_owned())
    }

    /// The circuit breaker, on the default runtime (choose another with
    /// [`runtime`](CircuitBreakerBuilder::runtime)).
    ///
    /// # Errors
    ///
    /// [`Invalid`] with the key path of the first setting the builder refuses.
    pub fn breaker(&self) -> Result<CircuitBreakerBuilder, Invalid> {
        self.breaker_on(DefaultRuntime::default())
    }

    pub(super) fn breaker_on<R>(&self, rt: R) -> Result<CircuitBreakerBuilder<R>, Invalid> {
        let get: Get<BreakerConfig> = |p| &p.breaker;
        let (s, at) = self.section("breaker", get, BreakerConfig::over);
        self.breaker_keys_fit(&s, &at)?;
        let window = self.window(&at)?;
        let mut b = CircuitBreaker::builder().name(self.named());
        match s.failure_rate {
            Some(Toggle::On(rate)) => b = b.failure_rate(rate),
            Some(Toggle::Off) => b = b.no_failure_rate(),
            None => {}
        }
        if let Some(rate) = s.slow_call_rate {
            let threshold = s.slow_call_threshold.unwrap_or(Duration::from_secs(1));
            b = b.slow_call_rate(rate, threshold);
        }
        if let Some(n) = s.consecutive_failures {
            b = b.consecutive_failures(n);
        }
        if let Some(n) = s.minimum_calls {
            b = b.minimum_calls(n);
        }
        if let Some(window) = window {
            b = b.window(window);
        }
        if let Some(d) = s.break_duration {
            b = b.break_duration(d);
        }
        if let Some(kind) = s.break_backoff {
            let place = |e| self.placed("breaker", get, BreakerConfig::sets, BREAK_KEYS, &at, e);
            b = b.break_backoff(break_schedule(kind, &s).map_err(place)?);
        }
        if let Some(n) = s.half_open_probes {
            b = b.half_open_probes(n);
        }
        if let Some(wait) = s.max_half_open_wait {
            b = b.max_half_open_wait(wait.on());
        }
        if let Some(cap) = s.max_open_hint {
            b = b.max_open_hint(cap);
        }
        checked(|| b.clone().runtime(Checking(Instant::now())).build())
            .map_err(|e| self.placed("breaker", get, BreakerConfig::sets, BREAKER_KEYS, &at, e))?;
        Ok(b.runtime(rt))
    }

    /// Keys that would be silently unused are refused where they are set (as a
    /// [`ConfigError::Conflict`]: another layer may complete them): a slow-call threshold
    /// with no slow-call rate; a break schedule's keys with no `break_backoff`. In one layer
    /// that names its `break_backoff`: a `break_factor` only for `"exponential"`, a
    /// `break_jitter` not for `"decorrelated_jitter"`.
    /// `s` is the merged section, at `at`.
    fn breaker_keys_fit(&self, s: &BreakerConfig, at: &str) -> Result<(), Invalid> {
        let get: Get<BreakerConfig> = |p| &p.breaker;
        for (path, policies) in &self.layers {
            let Some(breaker) = &policies.breaker else {
                continue;
            };
            let Some(kind) = breaker.break_backoff else {
                continue;
            };
            if breaker.break_factor.is_some() && kind != BackoffKind::Exponential {
                return Err(Invalid::new(
                    format!("{path}.breaker.break_factor"),
                    Problem::NotHere("`break_factor` is for `break_backoff = \"exponential\"`"),
                ));
            }
            if breaker.break_jitter.is_some() && kind == BackoffKind::DecorrelatedJitter {
                return Err(Invalid::new(
                    format!("{path}.breaker.break_jitter"),
                    Problem::NotHere("decorrelated jitter is its own randomness"),
                ));
            }
        }
        let path = |key: &str| self.key_path("breaker", get, BreakerConfig::sets, key, at);
        // Incomplete rather than wrong: another layer may still give what they need, so they
        // are contradictions (judged where an instance uses them), not misplaced keys.
        let incomplete = |key: &str, reason| {
            Err(Invalid::new(
                path(key),
                Problem::Rule(ConfigError::Conflict { reason }),
            ))
        };
        if s.slow_call_threshold.is_some() && s.slow_call_rate.is_none() {
            return incomplete(
                "slow_call_threshold",
                "a slow-call threshold is used only with a `slow_call_rate`",
            );
        }
        // Across layers a key of another schedule is fine, as for `[retry]`: the defaults may
        // give a factor that only the exponential instances use.
        let unused = s
            .break_backoff
            .is_none()
            .then(|| BREAK_SCHEDULE_KEYS.iter().find(|key| s.sets(key)))
            .flatten();
        match unused {
            Some(key) => incomplete(
                key,
                "a break schedule's key is used only with a `break_backoff`",
            ),
            None => Ok(()),
        }
    }

    /// The window of the topmost layer that gives one: `window_calls`, or `window` with
    /// `window_buckets` (which alone may come from any layer).
    fn window(&self, at: &str) -> Result<Option<Window>, Invalid> {
        let sections = || {
            self.layers
                .iter()
                .filter_map(|(path, p)| Some((path, p.breaker.as_ref()?)))
        };
        // Buckets belong to a time window: next to a count window in one layer they are a
        // mistake, not a default for later (another layer may still give `window`).
        if let Some((path, _)) =
            sections().find(|(_, s)| s.window_calls.is_some() && s.window_buckets.is_some())
        {
            return Err(Invalid::new(
                format!("{path}.breaker.window_buckets"),
                Problem::NotHere("buckets are for a time window (`window`), not `window_calls`"),
            ));
        }
        let Some((path, top)) =
            sections().find(|(_, s)| s.window.is_some() || s.window_calls.is_some())
        else {
            return Ok(None);
        };
        match (top.window_calls, top.window) {
            (Some(_), Some(_)) => Err(Invalid::new(
                format!("{path}.breaker.window"),
                Problem::NotHere("a window is `window_calls` or `window`, not both"),
            )),
            (Some(calls), None) => Ok(Some(Window::Count { calls })),
            (None, Some(span)) => {
                let buckets = sections().find_map(|(_, s)| s.window_buckets).unwrap_or(10);
                Ok(Some(Window::Time { span, buckets }))
            }
            (None, None) => {
                debug_assert!(false, "found by having one of them");
                Err(Invalid::new(at, Problem::Missing))
            }
        }
    }

    /// The bulkhead, on the default runtime.
    ///
    /// # Errors
    ///
    /// [`Problem::Missing`] when no layer sets `max_concurrent`; [`Invalid`] with the key path
    /// of a setting the builder refuses.
    pub fn bulkhead(&self) -> Result<BulkheadBuilder, Invalid> {
        self.bulkhead_on(DefaultRuntime::default())
    }

    pub(super) fn bulkhead_on<R>(&self, rt: R) -> Result<BulkheadBuilder<R>, Invalid> {
        self.bulkhead_with(rt, Absent::Refused)
    }

    fn bulkhead_with<R>(&self, rt: R, absent: Absent) -> Result<BulkheadBuilder<R>, Invalid> {
        let get: Get<BulkheadConfig> = |p| &p.bulkhead;
        for (path, policies) in self.layers() {
            if let Some(bulkhead) = &policies.bulkhead {
                let at = format!("{path}.bulkhead");
                codel_keys_fit(&at, |k| bulkhead.sets(k), bulkhead.discipline)?;
            }
        }
        let (s, at) = self.section("bulkhead", get, BulkheadConfig::over);
        let max_concurrent = match (s.max_concurrent, absent) {
            (Some(n), _) => n,
            (None, Absent::Neutral) => 1,
            (None, Absent::Refused) => {
                return Err(Invalid::new(
                    format!("{at}.max_concurrent"),
                    Problem::Missing,
                ));
            }
        };
        let mut b = Bulkhead::builder(max_concurrent)
            .name(self.named())
            .discipline(discipline(s.discipline, s.codel_target, s.codel_interval));
        if let Some(n) = s.max_queue {
            b = b.max_queue(n);
        }
        if let Some(wait) = s.max_wait {
            b = b.max_wait(wait.on());
        }
        checked(|| b.clone().runtime(Checking(Instant::now())).build())
            .map_err(|e| self.placed("bulkhead", get, BulkheadConfig::sets, CODEL_KEYS, &at, e))?;
        Ok(b.runtime(rt))
    }

    /// The rate limiter, on the default runtime.
    ///
    /// # Errors
    ///
    /// [`Problem::Missing`] when no layer sets `count` or `period`; [`Invalid`] with the key
    /// path of a setting the builder refuses.
    pub fn rate_limiter(&self) -> Result<RateLimiterBuilder, Invalid> {
        self.rate_limiter_on(DefaultRuntime::default())
    }

    pub(super) fn rate_limiter_on<R>(&self, rt: R) -> Result<RateLimiterBuilder<R>, Invalid> {
        self.rate_limiter_with(rt, Absent::Refused)
    }

    fn rate_limiter_with<R>(
        &self,
        rt: R,
        absent: Absent,
    ) -> Result<RateLimiterBuilder<R>, Invalid> {
        let get: Get<RateLimitConfig> = |p| &p.rate_limit;
        let (s, at) = self.section("rate_limit", get, RateLimitConfig::over);
        let missing = |key: &str| Invalid::new(format!("{at}.{key}"), Problem::Missing);
        // Neutral stand-ins make a one-millisecond interval with whichever of the two is set,
        // so the one that is set is checked on its own rules and nothing else.
        let (count, period) = match (s.count, s.period, absent) {
            (Some(count), Some(period), _) => (count, period),
            (None, _, Absent::Refused) => return Err(missing("count")),
            (_, None, Absent::Refused) => return Err(missing("period")),
            (Some(count), None, Absent::Neutral) => {
                (count, Duration::from_millis(u64::from(count)))
            }
            (None, Some(period), Absent::Neutral) => {
                let per_millisecond = period.as_nanos() / 1_000_000;
                (
                    u32::try_from(per_millisecond).unwrap_or(u32::MAX).max(1),
                    period,
                )
            }
            (None, None, Absent::Neutral) => (1, Duration::from_millis(1)),
        };
        let mut b = RateLimiter::builder(count, period).name(self.named());
        if let Some(burst) = s.burst {
            b = b.burst(burst);
        }
        if let Some(jitter) = s.jitter {
            b = b.jitter(jitter);
        }
        if let Some(wait) = s.max_wait {
            b = b.max_wait(wait.on());
        }
        checked(|| b.clone().runtime(Checking(Instant::now())).build())
            .map_err(|e| self.placed("rate_limit", get, RateLimitConfig::sets, &[], &at, e))?;
        Ok(b.runtime(rt))
    }

    /// The retry schedule. A retry made from it keeps it: for one that follows reloads, run
    /// the calls through [`Registry::pipeline`](super::Registry::pipeline) (in a tower stack,
    /// `PipelineLayer::new(registry.pipeline(name)?)`).
    ///
    /// # Errors
    ///
    /// [`Invalid`] with the key path of the first setting [`Backoff`]'s builder refuses.
    pub fn backoff(&self) -> Result<Backoff, Invalid> {
        let get: Get<RetryConfig> = |p| &p.retry;
        self.schedule_keys_fit()?;
        let (s, at) = self.section("retry", get, RetryConfig::over);
        let initial = s.initial_delay.unwrap_or(Duration::from_millis(100));
        let mut b = match s.backoff.unwrap_or(BackoffKind::Exponential) {
            BackoffKind::Constant => Backoff::constant(initial),
            BackoffKind::Linear => Backoff::linear(initial, s.step.unwrap_or(initial)),
            BackoffKind::Exponential => Backoff::exponential(initial),
            BackoffKind::DecorrelatedJitter => Backoff::decorrelated_jitter(initial),
        };
        if let Some(factor) = s.factor {
            b = b.factor(factor);
        }
        // Decorrelated jitter is its own randomness: a `jitter` from a layer below the one that
        // names it is for the other schedules (one at or above it is refused above).
        if let Some(jitter) = s.jitter
            && s.backoff != Some(BackoffKind::DecorrelatedJitter)
        {
            b = b.jitter(self::jitter(jitter));
        }
        if let Some(cap) = s.max_delay {
            b = b.max_delay(cap);
        }
        if let Some(n) = s.max_attempts {
            b = b.max_attempts(n);
        }
        if let Some(budget) = s.max_elapsed {
            b = b.max_elapsed(budget);
        }
        let random = s.backoff == Some(BackoffKind::DecorrelatedJitter)
            || s.jitter != Some(JitterKind::None);
        if s.seed.is_some() && !random {
            let path = self.key_path("retry", get, RetryConfig::sets, "seed", &at);
            let reason = "`seed` fixes the jitter, and this schedule has none";
            let unused = crate::ConfigError::Conflict { reason };
            return Err(Invalid::new(path, Problem::Rule(unused)));
        }
        b.build()
            .map_err(|e| self.placed("retry", get, RetryConfig::sets, RETRY_KEYS, &at, e))
    }

    /// The retry jitter's seed, if a layer fixes it (`None`: each call draws a fresh one).
    /// A configured pipeline and HTTP client take it; give it to a retry made from
    /// [`backoff`](Self::backoff) with its `seed` (as `RetryLayer::seed`).
    ///
    /// ```
    /// use tidewall::config::Config;
    ///
    /// let config = Config::from_toml("[defaults.retry]\nseed = 7\n[instances.search]\nretry = {}\n")?;
    /// assert_eq!(config.instance("search")?.retry_seed(), Some(7));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn retry_seed(&self) -> Option<u64> {
        self.layers.iter().find_map(|(_, p)| p.retry.as_ref()?.seed)
    }

    /// A layer that names its schedule may set only that schedule's keys: a `factor` next to
    /// `backoff = "constant"` is a mistake, not a setting kept for another layer. (Across
    /// layers a key of another schedule is fine: the defaults may give a factor that only
    /// exponential instances use.) A `jitter` is a mistake with decorrelated jitter in the
    /// layer that names that schedule or any layer above it.
    fn schedule_keys_fit(&self) -> Result<(), Invalid> {
        for (path, policies) in &self.layers {
            let Some(retry) = &policies.retry else {
                continue;
            };
            let Some(kind) = retry.backoff else {
                continue;
            };
            if retry.factor.is_some() && kind != BackoffKind::Exponential {
                return Err(Invalid::new(
                    format!("{path}.retry.factor"),
                    Problem::NotHere("`factor` is for `backoff = \"exponential\"`"),
                ));
            }
            if retry.step.is_some() && kind != BackoffKind::Linear {
                return Err(Invalid::new(
                    format!("{path}.retry.step"),
                    Problem::NotHere("`step` is for `backoff = \"linear\"`"),
                ));
            }
        }
        // Decorrelated jitter is its own randomness: a `jitter` in the layer that names it, or
        // in one above it, is a mistake; one below it is for the other schedules.
        let named = self.layers.iter().position(|(_, p)| {
            p.retry
                .as_ref()
                .is_some_and(|retry| retry.backoff.is_some())
        });
        if let Some(named) = named
            && self.layers[named].1.retry.as_ref().and_then(|r| r.backoff)
                == Some(BackoffKind::DecorrelatedJitter)
            && let Some((path, _)) = self.layers[..=named]
                .iter()
                .find(|(_, p)| p.retry.as_ref().is_some_and(|r| r.jitter.is_some()))
        {
            return Err(Invalid::new(
                format!("{path}.retry.jitter"),
                Problem::NotHere("`backoff = \"decorrelated_jitter\"` is its own jitter"),
            ));
        }
        Ok(())
    }

    /// The longest `Retry-After` hint a retry honours (default 60 s).
    pub fn max_retry_after(&self) -> Duration {
        self.layers
            .iter()
            .find_map(|(_, p)| p.retry.as_ref()?.max_retry_after)
            .unwrap_or(crate::retry::DEFAULT_MAX_RETRY_AFTER)
    }

    /// The retry budget's policy.
    ///
    /// # Errors
    ///
    /// [`Invalid`] with the key path of the first setting the budget's builder refuses.
    pub fn retry_budget(&self) -> Result<RetryBudgetPolicy, Invalid> {
        let get: Get<BudgetConfig> = |p| &p.budget;
        let (s, at) = self.section("budget", get, BudgetConfig::over);
        let mut b = RetryBudgetPolicy::builder();
        if let Some(ratio) = s.ratio {
            b = b.ratio(ratio);
        }
        if let Some(n) = s.min_per_second {
            b = b.min_per_second(n);
        }
        if let Some(window) = s.window {
            b = b.window(window);
        }
        if let Some(buckets) = s.buckets {
            b = b.buckets(buckets);
        }
        b.build()
            .map_err(|e| self.placed("budget", get, BudgetConfig::sets, &[], &at, e))
    }

    /// The key table's settings (`max_keys`, `idle_ttl`) merged down the layers, each `None`
    /// where no layer sets it (the keyed policy's own default holds).
    ///
    /// # Errors
    ///
    /// [`Invalid`] at `keys.max_keys` for zero, at `keys.idle_ttl` for one beyond `u64`
    /// nanoseconds.
    pub fn keys(&self) -> Result<KeysConfig, Invalid> {
        let get: Get<KeysConfig> = |p| &p.keys;
        let (keys, at) = self.section("keys", get, KeysConfig::over);
        let path = |key: &str| self.key_path("keys", get, KeysConfig::sets, key, &at);
        if keys.max_keys == Some(0) {
            let zero = ConfigError::Zero { field: "max_keys" };
            return Err(Invalid::new(path("max_keys"), Problem::Rule(zero)));
        }
        if keys
            .idle_ttl
            .is_some_and(|ttl| u64::try_from(ttl.as_nanos()).is_err())
        {
            let overflow = ConfigError::DurationOverflow { field: "idle_ttl" };
            return Err(Invalid::new(path("idle_ttl"), Problem::Rule(overflow)));
        }
        Ok(keys)
    }

    /// Checks every section some layer has. A section that `complete` requires (one the
    /// instance or its base has) must make a whole policy. Any other (one only the defaults
    /// have, or a layer checked alone: the defaults, a base) is checked for the values it
    /// sets: keys it leaves out that have no default stand in with neutral values, and
    /// settings that contradict each other wait for the instance that completes them.
    pub(super) fn check(&self, complete: bool) -> Result<(), Invalid> {
        let clock = Checking(Instant::now());
        let present = |section: fn(&Policies) -> bool| self.layers.iter().any(|(_, p)| section(p));
        let required = |section: fn(&Policies) -> bool| complete && self.has(section);
        let settle = |section: fn(&Policies) -> bool, result: Result<(), Invalid>| match result {
            Err(e) if !required(section) && e.is_contradiction() => Ok(()),
            other => other,
        };
        let absent = |section: fn(&Policies) -> bool| {
            if required(section) {
                Absent::Refused
            } else {
                Absent::Neutral
            }
        };
        self.check_call_keys()?;
        let breaker = |p: &Policies| p.breaker.is_some();
        if present(breaker) {
            settle(breaker, self.breaker_on(clock.clone()).map(drop))?;
        }
        let bulkhead = |p: &Policies| p.bulkhead.is_some();
        if present(bulkhead) {
            let checked = self
                .bulkhead_with(clock.clone(), absent(bulkhead))
                .map(drop);
            settle(bulkhead, checked)?;
        }
        let rate_limit = |p: &Policies| p.rate_limit.is_some();
        if present(rate_limit) {
            let checked = self.rate_limiter_with(clock, absent(rate_limit)).map(drop);
            settle(rate_limit, checked)?;
        }
        let retry = |p: &Policies| p.retry.is_some();
        if present(retry) {
            settle(retry, self.backoff().map(drop))?;
        }
        let budget = |p: &Policies| p.budget.is_some();
        if present(budget) {
            settle(budget, self.retry_budget().map(drop))?;
        }
        let adaptive = |p: &Policies| p.adaptive.is_some();
        // Not only when complete: a base with both is refused where it is written, since
        // every instance built on it would be.
        if self.has(adaptive) && self.has(bulkhead) {
            let (_, at) = self.section("adaptive", |p| &p.adaptive, super::AdaptiveConfig::over);
            return Err(Invalid::new(
                at,
                Problem::NotHere(
                    "an instance limits calls in flight with `bulkhead` or `adaptive`, not both \
                     (an adaptive limiter's `max_limit` caps it)",
                ),
            ));
        }
        if present(adaptive) {
            settle(adaptive, self.check_adaptive(absent(adaptive)))?;
        }
        let hedge = |p: &Policies| p.hedge.is_some();
        if present(hedge) {
            settle(hedge, self.hedge_on(()).map(drop))?;
        }
        #[cfg(feature = "chaos")]
        {
            let chaos = |p: &Policies| p.chaos.is_some();
            if present(chaos) {
                settle(chaos, self.chaos_on(()).map(drop))?;
            }
        }
        if present(|p| p.keys.is_some()) {
            self.keys()?;
        }
        #[cfg(feature = "http")]
        if present(|p| p.http.is_some()) {
            self.http_rules()?;
        }
        Ok(())
    }
}
