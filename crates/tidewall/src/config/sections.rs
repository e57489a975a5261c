//! One section per policy, as a configuration file writes it. Every key is optional: an absent
//! key comes from the layer below (see the [module docs](super) on layers), and in the end from
//! the policy builder's own default.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Toggle;
use super::human::opt_duration;

/// Declares a section: every field optional, unknown keys refused, and the two things layering
/// needs — `over` (this section's keys over another's) and `sets` (whether a key is set here,
/// to name the layer a bad value came from).
macro_rules! section {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $( $(#[$field_meta:meta])* $field:ident : $ty:ty, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
        #[serde(deny_unknown_fields)]
        #[non_exhaustive]
        pub struct $name {
            $(
                $(#[$field_meta])*
                #[serde(default, skip_serializing_if = "Option::is_none")]
                pub $field: Option<$ty>,
            )*
        }

        impl $name {
            /// This section's keys, each falling back to `under`'s.
            pub(in crate::config) fn over(&self, under: &Self) -> Self {
                Self { $( $field: self.$field.clone().or_else(|| under.$field.clone()), )* }
            }

            /// Whether `key` is set in this section.
            pub(in crate::config) fn sets(&self, key: &str) -> bool {
                match key {
                    $( stringify!($field) => self.$field.is_some(), )*
                    _ => false,
                }
            }
        }
    };
}

section! {
    /// `[<layer>.breaker]`: a [`CircuitBreaker`](crate::breaker::CircuitBreaker).
    ///
    /// A window is either `window_calls` (the last N calls) or `window` with
    /// `window_buckets` (the calls of a span of time, default 10 buckets); setting both is an
    /// error.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tidewall::config::Config;
    ///
    /// let config = Config::from_toml(r#"
    ///     [defaults.breaker]
    ///     failure_rate = 0.5
    ///     minimum_calls = 20
    ///     window = "30s"
    ///     break_duration = "5s"
    /// "#)?;
    /// let breaker = config.defaults.breaker.as_ref().unwrap();
    /// assert_eq!(breaker.window, Some(Duration::from_secs(30)));
    /// # Ok::<(), tidewall::config::Invalid>(())
    /// ```
    pub struct BreakerConfig {
        /// Trip at this failure share (0.000001 ..= 1), or `"off"` (default 0.5).
        failure_rate: Toggle<f64>,
        /// Trip at this share of slow calls (0.000001 ..= 1; default: not checked).
        slow_call_rate: f64,
        /// A call that took this long or longer is slow (default 1 s). Used only with a
        /// `slow_call_rate`: an instance with a threshold and no rate is refused at this key.
        #[serde(with = "opt_duration")]
        slow_call_threshold: Duration,
        /// Trip after this many failures in a row, whatever the window says.
        consecutive_failures: u32,
        /// Calls the window needs before its rates count (default 10).
        minimum_calls: u32,
        /// A count window of the last N calls (default 100).
        window_calls: u32,
        /// A time window of this span.
        #[serde(with = "opt_duration")]
        window: Duration,
        /// Buckets of a time window (default 10); not next to `window_calls` in one layer.
        window_buckets: u32,
        /// How long it stays open (default 5 s); with a `break_backoff`, the first break.
        #[serde(with = "opt_duration")]
        break_duration: Duration,
        /// Stay open longer on repeated trips: the k-th trip in a row (no successful close
        /// between) stays open for the k-th delay of this schedule, from `break_duration` up
        /// to `max_break_duration`: `"exponential"`, `"linear"` (each break `break_duration`
        /// longer), `"decorrelated_jitter"` or `"constant"` (default: every break is
        /// `break_duration`).
        break_backoff: BackoffKind,
        /// An exponential `break_backoff`'s growth factor (default 2). A layer that names
        /// another `break_backoff` may not set it. This key, `max_break_duration` and
        /// `break_jitter` do nothing without a `break_backoff`: an instance with one of them
        /// and no `break_backoff` in any layer is refused at that key.
        break_factor: f64,
        /// The longest break a `break_backoff` grows to (default 30 s).
        #[serde(with = "opt_duration")]
        max_break_duration: Duration,
        /// How each break of a `break_backoff` is randomized (default `"none"`). Not with
        /// `break_backoff = "decorrelated_jitter"` in the layer that names it.
        break_jitter: JitterKind,
        /// Probes let through while half-open (default 1).
        half_open_probes: u32,
        /// Reopen when probes have not finished after this, or `"off"` (default 60 s).
        max_half_open_wait: Toggle<Duration>,
        /// The longest a server's hint may hold it open (default 60 s).
        #[serde(with = "opt_duration")]
        max_open_hint: Duration,
    }
}

section! {
    /// `[<layer>.bulkhead]`: a [`Bulkhead`](crate::bulkhead::Bulkhead). `max_concurrent` has
    /// no default: some layer must set it. A layer that names a `discipline` other than
    /// `"codel"` may not set CoDel's durations ([`Problem::NotHere`](super::Problem::NotHere)).
    ///
    /// ```
    /// use tidewall::config::Config;
    ///
    /// let config = Config::from_toml(r#"
    ///     [instances.orders.bulkhead]
    ///     max_concurrent = 32
    ///     max_queue = 0
    ///
    ///     [instances.reports.bulkhead]
    ///     max_concurrent = 4
    ///     discipline = "codel"
    ///     codel_target = "20ms"
    /// "#)?;
    /// assert_eq!(config.instances["orders"].bulkhead.as_ref().unwrap().max_concurrent, Some(32));
    /// let reports = config.instance("reports")?.bulkhead()?.build()?;
    /// assert_eq!(reports.capacity(), 4);
    ///
    /// let refused = Config::from_toml(r#"
    ///     [instances.reports.bulkhead]
    ///     max_concurrent = 4
    ///     discipline = "lifo"
    ///     codel_target = "20ms"
    /// "#).unwrap_err();
    /// assert_eq!(refused.path(), "instances.reports.bulkhead.codel_target");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub struct BulkheadConfig {
        /// Calls admitted at once.
        max_concurrent: usize,
        /// Calls that may wait for a slot (default: `max_concurrent`).
        max_queue: usize,
        /// The longest a call waits for a slot, or `"off"` (default 1 s).
        max_wait: Toggle<Duration>,
        /// The queue's order: `"fifo"` (default), `"lifo"` or `"codel"`.
        discipline: DisciplineKind,
        /// `"codel"`: the longest wait once the queue stands (default 5 ms).
        #[serde(with = "opt_duration")]
        codel_target: Duration,
        /// `"codel"`: how long the queue must stand before waits are cut (default 100 ms).
        #[serde(with = "opt_duration")]
        codel_interval: Duration,
    }
}

section! {
    /// `[<layer>.rate_limit]`: a [`RateLimiter`](crate::rate::RateLimiter) of `count` calls
    /// per `period`; both have no default.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tidewall::config::Config;
    ///
    /// let config = Config::from_toml(r#"
    ///     [instances.search.rate_limit]
    ///     count = 100
    ///     period = "1s"
    ///     burst = 20
    /// "#)?;
    /// let limit = config.instances["search"].rate_limit.as_ref().unwrap();
    /// assert_eq!((limit.count, limit.period), (Some(100), Some(Duration::from_secs(1))));
    /// # Ok::<(), tidewall::config::Invalid>(())
    /// ```
    pub struct RateLimitConfig {
        /// Calls per period.
        count: u32,
        /// The period.
        #[serde(with = "opt_duration")]
        period: Duration,
        /// Calls admitted at once from rest (default: `count`).
        burst: u32,
        /// The most random delay added to each wait (default: one emission interval).
        #[serde(with = "opt_duration")]
        jitter: Duration,
        /// The longest a caller waits for a cell, or `"off"` (the default: as long as the
        /// call's deadline allows); `"0s"` refuses at once with `retry_after`.
        max_wait: Toggle<Duration>,
    }
}

section! {
    /// `[<layer>.retry]`: the retry schedule ([`Backoff`](crate::Backoff)).
    ///
    /// ```
    /// use tidewall::config::{BackoffKind, Config};
    ///
    /// let config = Config::from_toml(r#"
    ///     [defaults.retry]
    ///     backoff = "exponential"
    ///     initial_delay = "100ms"
    ///     max_delay = "2s"
    ///     max_attempts = 3
    ///     jitter = "full"
    /// "#)?;
    /// assert_eq!(config.defaults.retry.as_ref().unwrap().backoff, Some(BackoffKind::Exponential));
    /// # Ok::<(), tidewall::config::Invalid>(())
    /// ```
    pub struct RetryConfig {
        /// The schedule's shape (default exponential).
        backoff: BackoffKind,
        /// The first delay (the only one of a constant schedule; default 100 ms).
        #[serde(with = "opt_duration")]
        initial_delay: Duration,
        /// What a linear schedule adds each time (default: `initial_delay`). A layer that
        /// names another `backoff` may not set it.
        #[serde(with = "opt_duration")]
        step: Duration,
        /// An exponential schedule's growth factor (default 2). A layer that names another
        /// `backoff` may not set it.
        factor: f64,
        /// How each delay is randomized (default full). Not with
        /// `backoff = "decorrelated_jitter"` in the layer that names it or a layer above it
        /// (an instance over its base or the defaults); one from a layer below is ignored by
        /// that schedule.
        jitter: JitterKind,
        /// The cap on each delay (default 30 s).
        #[serde(with = "opt_duration")]
        max_delay: Duration,
        /// Attempts in all, the first included (default 4).
        max_attempts: u32,
        /// Stop before the delays add up to more than this (default: no limit).
        #[serde(with = "opt_duration")]
        max_elapsed: Duration,
        /// The longest `Retry-After` hint honoured (default 60 s).
        #[serde(with = "opt_duration")]
        max_retry_after: Duration,
        /// Fixes the jitter's seed, so the delays are the same on every run (default: each
        /// call draws a fresh one). Refused where the schedule draws nothing at random
        /// (`jitter = "none"`, other than with decorrelated jitter).
        seed: u64,
    }
}

section! {
    /// `[<layer>.budget]`: a [retry budget](crate::budget): retries as a share of calls.
    ///
    /// ```
    /// use tidewall::config::Config;
    ///
    /// let config = Config::from_toml(r#"
    ///     [defaults.budget]
    ///     ratio = 0.2
    ///     min_per_second = 10
    ///     window = "10s"
    /// "#)?;
    /// assert_eq!(config.defaults.budget.as_ref().unwrap().ratio, Some(0.2));
    /// # Ok::<(), tidewall::config::Invalid>(())
    /// ```
    pub struct BudgetConfig {
        /// Retries allowed per call (0, or 0.000001 ..= 1000; default 0.2).
        ratio: f64,
        /// Retries allowed per second whatever the traffic (default 10).
        min_per_second: u32,
        /// How long a call counts (default 10 s).
        #[serde(with = "opt_duration")]
        window: Duration,
        /// Buckets the window slides by (default 10).
        buckets: u32,
    }
}

section! {
    /// `[<layer>.hedge]`: a [`Hedge`](crate::hedge::Hedge), got by name with
    /// [`Registry::hedge`](super::Registry::hedge): when a call is slow, a second copy of it,
    /// and the first answer wins. Keys as the builder's setters, defaults as its own.
    ///
    /// `min_samples` without any layer setting `percentile` would be unused: it is refused
    /// where an instance (or a name asked of the registry) takes it, at its key path. With
    /// `percentile = "off"` it waits, unused, for a layer that turns it on.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tidewall::config::{Config, Toggle};
    ///
    /// let config = Config::from_toml(r#"
    ///     [instances.search.hedge]
    ///     delay = "50ms"
    ///     percentile = 0.95
    ///     min_samples = 200
    ///     max_hedges = 1
    ///     budget_ratio = 0.05
    /// "#)?;
    /// let hedge = config.instances["search"].hedge.as_ref().unwrap();
    /// assert_eq!(hedge.delay, Some(Duration::from_millis(50)));
    /// assert_eq!(hedge.percentile, Some(Toggle::On(0.95)));
    /// # Ok::<(), tidewall::config::Invalid>(())
    /// ```
    pub struct HedgeConfig {
        /// Hedge after this long (default 100 ms); with a `percentile`, until the estimate
        /// has `min_samples` latencies.
        #[serde(with = "opt_duration")]
        delay: Duration,
        /// Extra attempts per call (default 1; 0 sends none).
        max_hedges: u32,
        /// Hedge after this quantile (in (0, 1]) of recent successful latencies, or `"off"`
        /// (the default: after the fixed `delay`).
        percentile: Toggle<f64>,
        /// Latencies recorded before the percentile is used (default 100).
        min_samples: u64,
        /// Hedges may add at most this share of the calls of the last 10 s (0, or
        /// 0.000001 ..= 1000), with no per-second floor (a quiet service hedges rarely), or
        /// `"off"` (the default: no budget).
        budget_ratio: Toggle<f64>,
    }
}

section! {
    /// `[<layer>.adaptive]`: an [`AdaptiveLimiter`](crate::adaptive::AdaptiveLimiter), a
    /// limit on calls in flight that an algorithm sets from their latency and drops.
    /// `algorithm` has no default: some layer must choose one. Each algorithm takes its own
    /// keys (named as its builder's setters, defaults as theirs); a layer that names an
    /// algorithm may set only that algorithm's keys, as a layer that names a retry `backoff`
    /// may set only that schedule's (across layers, the defaults may give keys only some
    /// instances' algorithms use).
    ///
    /// | algorithm | its keys |
    /// |---|---|
    /// | `aimd` | `backoff_ratio`, `timeout` |
    /// | `vegas` | `smoothing`, `alpha`, `beta`, `probe_multiplier`, `seed` |
    /// | `gradient2` | `smoothing`, `queue_size`, `long_window`, `rtt_tolerance` |
    /// | `windowed_gradient` | `window`, `buffer`, `probe_samples`, `probe_interval` |
    ///
    /// Every algorithm takes `initial_limit`, `min_limit` and `max_limit`; the limiter takes
    /// `max_queue`, `max_wait`, `discipline` (with `codel_target` and `codel_interval` for
    /// `"codel"`) and the priorities' shares.
    ///
    /// It takes the place of a bulkhead: an instance with its base has a `bulkhead` or an
    /// `adaptive` section, not both, and a file where one has both (or a `configs` base has
    /// both, used or not) is refused at the `adaptive` section's path. The defaults may have
    /// both, since they only fill in the sections an instance has.
    ///
    /// ```
    /// use tidewall::config::{AlgorithmKind, Config};
    ///
    /// let config = Config::from_toml(r#"
    ///     [instances.inventory.adaptive]
    ///     algorithm = "windowed_gradient"
    ///     initial_limit = 20
    ///     max_limit = 200
    ///     sheddable_share = 0.5
    /// "#)?;
    /// let adaptive = config.instances["inventory"].adaptive.as_ref().unwrap();
    /// assert_eq!(adaptive.algorithm, Some(AlgorithmKind::WindowedGradient));
    /// # Ok::<(), tidewall::config::Invalid>(())
    /// ```
    pub struct AdaptiveConfig {
        /// The algorithm (no default).
        algorithm: AlgorithmKind,
        /// The limit before any sample (the algorithm's default).
        initial_limit: u32,
        /// The least the limit falls to (the algorithm's default; at least 1).
        min_limit: u32,
        /// The most the limit grows to (the algorithm's default).
        max_limit: u32,
        /// AIMD: what a drop multiplies the limit by (default 0.9).
        backoff_ratio: f64,
        /// AIMD: a call slower than this is a drop (default 5 s).
        #[serde(with = "opt_duration")]
        timeout: Duration,
        /// Vegas, Gradient2: the weight of each new limit against the old.
        smoothing: f64,
        /// Vegas: the queue below which the limit grows (default 3 × log10 of the limit).
        alpha: u32,
        /// Vegas: the queue above which the limit shrinks (default 6 × log10 of the limit).
        beta: u32,
        /// Vegas: how often the no-load RTT is measured afresh, in samples per unit of limit.
        probe_multiplier: u32,
        /// Vegas: the seed of its probe jitter.
        seed: u64,
        /// Gradient2: the queue allowance while latency holds.
        queue_size: u32,
        /// Gradient2: the samples the long-term RTT averages over.
        long_window: u32,
        /// Gradient2: how far above the long-term RTT a sample may be before the limit shrinks.
        rtt_tolerance: f64,
        /// Windowed gradient: samples per window.
        window: u32,
        /// Windowed gradient: the latency allowance over the no-load RTT, as a share of it.
        buffer: f64,
        /// Windowed gradient: the calls the no-load RTT is the mean of.
        probe_samples: u32,
        /// Windowed gradient: the time between measurements of the no-load RTT.
        #[serde(with = "opt_duration")]
        probe_interval: Duration,
        /// Calls that may wait for a slot (default 0: refused at once, as shedding wants).
        max_queue: usize,
        /// The longest a call waits for a slot, or `"off"` (default 1 s).
        max_wait: Toggle<Duration>,
        /// The queue's order (default fifo).
        discipline: DisciplineKind,
        /// `"codel"`: the longest wait once the queue stands (default 5 ms).
        #[serde(with = "opt_duration")]
        codel_target: Duration,
        /// `"codel"`: how long the queue must stand before waits are cut (default 100 ms).
        #[serde(with = "opt_duration")]
        codel_interval: Duration,
        /// The share of the limit default-priority calls may fill (default 1; critical calls
        /// always have the whole limit).
        default_share: f64,
        /// The share of the limit sheddable calls may fill (default 0.8). Never above the
        /// default share: a `default_share` below 0.8 needs a `sheddable_share` at most as
        /// large, or the section (whose two settings contradict) is refused at its path.
        sheddable_share: f64,
    }
}

#[cfg(feature = "chaos")]
section! {
    /// `[<layer>.chaos]` (feature `chaos`): a [`Chaos`](crate::chaos::Chaos) fault injector,
    /// got by name with [`Registry::chaos`](super::Registry::chaos) and wrapped around the
    /// operation (`pipeline.call(chaos.wrap(op))`). Rates are shares of calls (0, or within
    /// [0.000001, 1], kept in parts per million); error, hang and alter together at most 1.
    /// A reload applies the switch and the rates at once, for the calls after it; the seed is
    /// fixed while the registry holds the handle. Without the feature, the section is an
    /// unknown key.
    ///
    /// ```
    /// use tidewall::config::Config;
    ///
    /// let config = Config::from_toml(r#"
    ///     [instances.payments.chaos]
    ///     seed = 7
    ///     error_rate = 0.05
    ///     latency_rate = 0.1
    ///     latency = "200ms"
    /// "#)?;
    /// let chaos = config.instances["payments"].chaos.as_ref().unwrap();
    /// assert_eq!(chaos.error_rate, Some(0.05));
    /// # Ok::<(), tidewall::config::Invalid>(())
    /// ```
    pub struct ChaosConfig {
        /// Whether it injects at all (default true: a section with rates injects them).
        enabled: bool,
        /// The seed its draws start from (default: one drawn when it is built).
        seed: u64,
        /// The share of calls delayed by `latency` (default 0).
        latency_rate: f64,
        /// How long a delayed call is held (not zero with a latency rate).
        #[serde(with = "opt_duration")]
        latency: Duration,
        /// The share of calls failed without running (default 0).
        error_rate: f64,
        /// The share of calls that never complete (default 0).
        hang_rate: f64,
        /// The share of calls whose success becomes an error (default 0).
        alter_rate: f64,
    }
}

#[cfg(feature = "http")]
pub use http_section::{ClientErrors, HttpConfig};

#[cfg(feature = "http")]
mod http_section {
    use super::{Deserialize, Serialize};

    /// How [`HttpConfig::client_errors`] counts the 4xx statuses the table names nothing
    /// for.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "snake_case")]
    #[non_exhaustive]
    pub enum ClientErrors {
        /// The server's deliberate answer: a success for the breaker, not retried (the
        /// standard table).
        Success,
        /// Nothing: neither a success nor a failure.
        Ignored,
        /// A failure for the breaker, not retried.
        Failure,
        /// A failure for the breaker, and retried.
        RetryableFailure,
    }

    section! {
        /// `[<layer>.http]` (feature `http`): what an
        /// [HTTP client](super::super::Registry::http_client) made from the instance judges
        /// and sends again, besides the
        /// [standard table](crate::http::HttpClassifier) and
        /// [`Idempotency`](crate::http::Idempotency)'s methods. Its presence (an empty
        /// `http = {}` is enough) makes the instance an HTTP client: the registry builds the
        /// client up front, and no plain breaker, bulkhead, rate limiter, adaptive limiter or
        /// retry budget of the name, since its sections are the client's per-host ones.
        ///
        /// ```
        /// use tidewall::config::{ClientErrors, Config};
        ///
        /// let config = Config::from_toml(r#"
        ///     [instances.cdn.http]
        ///     retry_statuses = [521, 522]
        ///     fail_statuses = [409]
        ///     client_errors = "ignored"
        ///     replay_methods = ["POST"]
        ///     idempotency_key_header = "X-Request-Id"
        /// "#)?;
        /// let http = config.instances["cdn"].http.as_ref().unwrap();
        /// assert_eq!(http.client_errors, Some(ClientErrors::Ignored));
        /// # Ok::<(), tidewall::config::Invalid>(())
        /// ```
        pub struct HttpConfig {
            /// Statuses retried besides the standard table's (400 to 999).
            retry_statuses: Vec<u16>,
            /// Statuses counted as failures and not retried (400 to 999; none in
            /// `retry_statuses`).
            fail_statuses: Vec<u16>,
            /// The 4xx statuses named nowhere else: `"success"` (default), `"ignored"`,
            /// `"failure"` or `"retryable_failure"`.
            client_errors: ClientErrors,
            /// Methods sent again besides GET, HEAD, OPTIONS, PUT, DELETE and TRACE, spelled as
            /// sent (methods are case-sensitive: `"POST"`,
            /// say; a request with the `idempotency_key_header` is sent again whatever its
            /// method).
            replay_methods: Vec<String>,
            /// The header whose presence makes any request replayable (default
            /// `"Idempotency-Key"`; header names are case-insensitive), or `"off"`: no header
            /// does.
            idempotency_key_header: super::Toggle<String>,
        }
    }
}

section! {
    /// `[<layer>.keys]`: the key table of the instance's keyed policies (see
    /// [`Registry::keyed_breaker`](super::Registry::keyed_breaker) and its siblings). Each is
    /// fixed when a table it bounds is made: a reload that changes `max_keys` while the
    /// registry holds any keyed table of the instance, or `idle_ttl` while it holds its keyed
    /// breaker, is refused ([`Problem::Fixed`](super::Problem::Fixed), at
    /// `instances.<name>.keys.<key>` wherever the value came from).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tidewall::config::Config;
    ///
    /// let config = Config::from_toml(r#"
    ///     [instances.hosts.keys]
    ///     max_keys = 1000
    ///     idle_ttl = "5m"
    /// "#)?;
    /// let keys = config.instances["hosts"].keys.as_ref().unwrap();
    /// assert_eq!((keys.max_keys, keys.idle_ttl), (Some(1000), Some(Duration::from_secs(300))));
    /// # Ok::<(), tidewall::config::Invalid>(())
    /// ```
    pub struct KeysConfig {
        /// The most keys a table holds (not zero; default 10,000 for breakers, bulkheads and
        /// adaptive limiters, 100,000 for rate limiters).
        max_keys: usize,
        /// How long a keyed breaker keeps a closed key with failures in its window after its
        /// last call (default 60 s; breakers only).
        #[serde(with = "opt_duration")]
        idle_ttl: Duration,
    }
}

/// The shape of a retry schedule (see [`Backoff`](crate::Backoff)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum BackoffKind {
    /// The same delay every time.
    Constant,
    /// `initial_delay`, then `+ step` each time.
    Linear,
    /// `initial_delay × factor^n`.
    Exponential,
    /// AWS's decorrelated jitter: random in `initial_delay ..= 3 × previous`.
    DecorrelatedJitter,
}

/// How a retry delay is randomized (see [`Jitter`](crate::Jitter)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum JitterKind {
    /// No randomness.
    None,
    /// Uniform in `[0, d]`.
    Full,
    /// Uniform in `[d/2, d]`.
    Equal,
}

/// An adaptive limiter's algorithm (see [`tidewall::adaptive`](crate::adaptive)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum AlgorithmKind {
    /// [`Aimd`](crate::adaptive::Aimd): loss based.
    Aimd,
    /// [`Vegas`](crate::adaptive::Vegas): delay based, per sample.
    Vegas,
    /// [`Gradient2`](crate::adaptive::Gradient2): delay based, smoothed.
    Gradient2,
    /// [`WindowedGradient`](crate::adaptive::WindowedGradient): delay based, per window.
    WindowedGradient,
}

/// The order an adaptive limiter's queue admits waiters in (see
/// [`QueueDiscipline`](crate::admission::QueueDiscipline)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum DisciplineKind {
    /// The longest waiting first.
    Fifo,
    /// The newest first.
    Lifo,
    /// The longest waiting first, waits bounded by `codel_target` once the queue has stood
    /// for `codel_interval`.
    Codel,
}
