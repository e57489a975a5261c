//! The builder: rates as `f64`s, validated once into the integers a handle keeps.

use std::time::Duration;

use super::decide::{Rates, latency_nanos, rate_ppm};
use super::handle::{Chaos, Shared};
use crate::rt::{Clock, DefaultRuntime};
use crate::sync::Arc;
use crate::{ConfigError, Name};

/// Configures a [`Chaos`] handle: by default enabled, injecting nothing, on the default
/// runtime, named `chaos`, with a fresh random seed (read it back with [`Chaos::seed`] to
/// replay a run). Given to [`Chaos::reconfigure`], its switch and every rate replace the
/// handle's, those left at their defaults included.
///
/// ```
/// use std::time::Duration;
/// use tidewall::chaos::Chaos;
///
/// let chaos = Chaos::builder()
///     .name("payments-chaos")
///     .seed(42)
///     .latency(0.1, Duration::from_millis(200))
///     .error(0.05)
///     .build()?;
/// assert_eq!(chaos.settings().error_rate, 0.05);
/// # Ok::<(), tidewall::ConfigError>(())
/// ```
#[must_use]
#[derive(Debug, Clone)]
pub struct ChaosBuilder<R = DefaultRuntime> {
    rt: R,
    name: Name,
    seed: Option<u64>,
    enabled: bool,
    latency: (f64, Duration),
    error: f64,
    hang: f64,
    alter: f64,
}

impl Chaos {
    /// Starts a handle that injects nothing until rates are set, on the default runtime.
    pub fn builder() -> ChaosBuilder {
        ChaosBuilder {
            rt: DefaultRuntime::default(),
            name: Name::from_static("chaos"),
            seed: None,
            enabled: true,
            latency: (0.0, Duration::ZERO),
            error: 0.0,
            hang: 0.0,
            alter: 0.0,
        }
    }
}

impl<R> ChaosBuilder<R> {
    /// Fixes the seed: the same seed gives the same faults to the same call numbers, on every
    /// runtime and machine (see [`Chaos`] for the rule).
    ///
    /// ```
    /// use tidewall::chaos::Chaos;
    ///
    /// let a = Chaos::builder().seed(5).error(0.5).build()?;
    /// let b = Chaos::builder().seed(5).error(0.5).build()?;
    /// assert!((0..64).all(|n| a.decide_nth(n) == b.decide_nth(n)));
    /// assert_eq!(a.seed(), 5);
    /// # Ok::<(), tidewall::ConfigError>(())
    /// ```
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Delays a `rate` of calls by `latency` before they go on (independently of the
    /// exclusive faults: a delayed call may also fail, hang or be altered).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tidewall::chaos::Chaos;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), tidewall::ConfigError> {
    /// let chaos = Chaos::builder().latency(1.0, Duration::from_millis(300)).build()?;
    /// let start = tokio::time::Instant::now();
    /// let value = chaos.call(|| async { Ok::<_, tidewall::chaos::InjectedFault>(1) }).await;
    /// assert_eq!((value, start.elapsed()), (Ok(1), Duration::from_millis(300)));
    /// # Ok(()) }
    /// ```
    pub fn latency(mut self, rate: f64, latency: Duration) -> Self {
        self.latency = (rate, latency);
        self
    }

    /// Fails a `rate` of calls with [`InjectedFault::Error`](super::InjectedFault::Error)
    /// without running their operation.
    ///
    /// ```
    /// use tidewall::chaos::{Chaos, Fault};
    ///
    /// let chaos = Chaos::builder().seed(2).error(0.25).build()?;
    /// let errors = (0..10_000).filter(|&n| chaos.decide_nth(n).fault == Some(Fault::Error)).count();
    /// assert!((2_300..=2_700).contains(&errors), "{errors}");
    /// # Ok::<(), tidewall::ConfigError>(())
    /// ```
    pub fn error(mut self, rate: f64) -> Self {
        self.error = rate;
        self
    }

    /// Makes a `rate` of calls never complete (until dropped by a deadline or timeout),
    /// without running their operation.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tidewall::chaos::{Chaos, InjectedFault};
    /// use tidewall::FutureExt as _;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), tidewall::ConfigError> {
    /// let chaos = Chaos::builder().hang(1.0).build()?;
    /// let hung = chaos.call(|| async { Ok::<_, InjectedFault>(1) });
    /// assert!(hung.timeout(Duration::from_secs(5)).await.is_err(), "only the timeout ends it");
    /// # Ok(()) }
    /// ```
    pub fn hang(mut self, rate: f64) -> Self {
        self.hang = rate;
        self
    }

    /// Runs the operation of a `rate` of calls and replaces a success with
    /// [`InjectedFault::Altered`](super::InjectedFault::Altered).
    ///
    /// ```
    /// use tidewall::chaos::{Chaos, InjectedFault};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), tidewall::ConfigError> {
    /// let chaos = Chaos::builder().alter(1.0).build()?;
    /// let mut ran = false;
    /// let result = chaos.call(|| { ran = true; async { Ok::<u32, InjectedFault>(1) } }).await;
    /// assert_eq!(result, Err(InjectedFault::Altered));
    /// assert!(ran, "the operation ran: only its outcome was replaced");
    /// # Ok(()) }
    /// ```
    pub fn alter(mut self, rate: f64) -> Self {
        self.alter = rate;
        self
    }

    /// Whether the handle injects at all (default `true`); switch it later with
    /// [`Chaos::set_enabled`].
    ///
    /// ```
    /// use tidewall::chaos::Chaos;
    ///
    /// // Configured, ready to be switched on during a game day.
    /// let chaos = Chaos::builder().error(0.1).enabled(false).build()?;
    /// assert!(!chaos.settings().enabled);
    /// assert!(chaos.decide().is_none());
    /// # Ok::<(), tidewall::ConfigError>(())
    /// ```
    pub fn enabled(mut self, enabled: bool) -> Self {
        self.enabled = enabled;
        self
    }

    /// The name its metrics and events carry (default `chaos`): see
    /// [`telemetry`](crate::telemetry).
    ///
    /// ```
    /// use tidewall::chaos::Chaos;
    ///
    /// let chaos = Chaos::builder().name(String::from("payments")).build()?;
    /// assert_eq!(chaos.name(), "payments");
    /// # Ok::<(), tidewall::ConfigError>(())
    /// ```
    pub fn name(mut self, name: impl Into<Name>) -> Self {
        self.name = name.into();
        self
    }

    /// Sleeps injected latency on `rt`'s clock (any [`Clock`]: a runtime adapter, or a
    /// [`FakeClock`](crate::testing::FakeClock) in tests).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tidewall::chaos::{Chaos, InjectedFault};
    /// use tidewall::rt::{Clock, Tokio};
    /// use tidewall::testing::Clocked;
    ///
    /// let rt = Clocked::new(Tokio);
    /// let chaos = Chaos::builder()
    ///     .latency(1.0, Duration::from_secs(60))
    ///     .runtime(rt.clone())
    ///     .build()?;
    /// let tokio = tokio::runtime::Builder::new_current_thread().build().unwrap();
    /// let waited = tokio.block_on(rt.drive(async {
    ///     let start = rt.now();
    ///     chaos.call(|| async { Ok::<_, InjectedFault>(()) }).await.unwrap();
    ///     rt.now() - start
    /// }));
    /// assert_eq!(waited, Duration::from_secs(60)); // virtual: at once
    /// # Ok::<(), tidewall::ConfigError>(())
    /// ```
    pub fn runtime<R2>(self, rt: R2) -> ChaosBuilder<R2> {
        ChaosBuilder {
            rt,
            name: self.name,
            seed: self.seed,
            enabled: self.enabled,
            latency: self.latency,
            error: self.error,
            hang: self.hang,
            alter: self.alter,
        }
    }

    /// The switch and the rates, validated as kept.
    pub(super) fn rates(&self) -> Result<Rates, ConfigError> {
        let (latency_rate, latency) = self.latency;
        let latency_ppm = rate_ppm("latency_rate", latency_rate)?;
        let rates = Rates {
            enabled: self.enabled,
            latency_ppm,
            latency_nanos: latency_nanos(latency_ppm, latency)?,
            error_ppm: rate_ppm("error", self.error)?,
            hang_ppm: rate_ppm("hang", self.hang)?,
            alter_ppm: rate_ppm("alter", self.alter)?,
        };
        rates.check_sum()?;
        Ok(rates)
    }

    /// The seed it was given, if any.
    #[cfg(feature = "serde")]
    pub(crate) fn seed_given(&self) -> Option<u64> {
        self.seed
    }

    /// Validates and builds.
    ///
    /// # Errors
    ///
    /// For any rate (`latency_rate`, `error`, `hang`, `alter`):
    /// [`ConfigError::NotFinite`] for NaN or an infinity, [`ConfigError::OutOfRange`] for one
    /// that is negative, above 1, or above 0 but below 0.000001 (one part per million, the
    /// unit rates are kept in). [`ConfigError::Zero`] for a zero `latency` with a latency
    /// rate above 0, [`ConfigError::DurationOverflow`] for one beyond `u64` nanoseconds, and
    /// [`ConfigError::Conflict`] when the error, hang and alter rates (as kept, in parts per
    /// million) sum to more than 1.
    ///
    /// ```
    /// use tidewall::chaos::Chaos;
    /// use tidewall::ConfigError;
    ///
    /// assert!(matches!(Chaos::builder().error(f64::NAN).build(), Err(ConfigError::NotFinite { field: "error" })));
    /// assert!(matches!(Chaos::builder().error(0.6).hang(0.5).build(), Err(ConfigError::Conflict { .. })));
    /// assert!(Chaos::builder().error(0.1).hang(0.2).alter(0.7).build().is_ok());
    /// ```
    pub fn build(self) -> Result<Chaos<R>, ConfigError>
    where
        R: Clock,
    {
        let rates = self.rates()?;
        let seed = self.seed.unwrap_or_else(crate::seed::fresh_seed);
        Ok(Chaos {
            shared: Arc::new(Shared::new(self.rt, self.name, seed, rates)),
        })
    }
}
