//! The handle: shared settings read lock-free on every call, changed by one writer at a time.

use std::time::Duration;

use super::decide::{Injection, Rates, key_of, latency_nanos, rate_of, rate_ppm};
use crate::rt::DefaultRuntime;
use crate::sync::{Arc, AtomicBool, AtomicU64, Mutex, Ordering, Tuning, lock};
use crate::{ConfigError, Name};

/// A fault injector: decides, call by call, whether to delay, fail, hang or alter it. Cheap to
/// clone (an `Arc`): clones share settings and the call counter. See the
/// [module docs](super) for the faults and the fronts.
///
/// ```
/// use tidewall::chaos::{Chaos, InjectedFault};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), tidewall::ConfigError> {
/// let chaos = Chaos::builder().seed(11).error(0.5).build()?;
/// let mut failed = 0;
/// for _ in 0..100 {
///     let result = chaos.call(|| async { Ok::<_, InjectedFault>(()) }).await;
///     failed += usize::from(result.is_err());
/// }
/// assert!((30..=70).contains(&failed), "{failed}");
/// assert_eq!(chaos.decided(), 100);
/// # Ok(()) }
/// ```
///
/// # Determinism
///
/// Call number `n` (counting from 0, in the order calls draw: [`decided`](Self::decided)
/// says how many have) gets the two uniform draws `a` and `b` in `0..1_000_000` made from
/// outputs `2n + 1` and `2n + 2` of SplitMix64 started at the seed's own first output (each
/// by Lemire's multiply-high reduction). With every rate kept as an integer `p` parts per
/// million:
///
/// * fault: `Error` if `a < p_error`, else `Hang` if `a < p_error + p_hang`, else `Alter` if
///   `a < p_error + p_hang + p_alter`, else none;
/// * latency: if `b < p_latency`.
///
/// So the faults of call `n` are a pure function of (seed, `n`, settings), the same on every
/// runtime and machine ([`decide_nth`](Self::decide_nth) computes it without drawing), and a
/// rate of `p` parts per million faults each call with probability `p / 10^6` (to within
/// 2^-44). Raising the error or latency rate at run time only adds faults: every call that
/// failed (or was delayed) at the lower rate still does. Concurrent calls each get their own
/// number; which call gets which depends on how they race, but the sequence does not.
///
/// # When off
///
/// A call through a handle that is disabled or has every rate at 0 reads one atomic (relaxed)
/// and runs as it would without chaos: no number is drawn (the counter does not move), no
/// clock is read, nothing is counted.
pub struct Chaos<R = DefaultRuntime> {
    pub(super) shared: Arc<Shared<R>>,
}

/// What clones share.
pub(super) struct Shared<R> {
    /// Enabled with some rate above 0: the one load a call makes when off. Written after
    /// `rates` by each change; a call that finds it set reads `rates` and checks again, so a
    /// call racing a change acts on the old settings or the new, never on half of either.
    armed: AtomicBool,
    /// The next call number.
    calls: AtomicU64,
    /// The settings in force, as [`Rates::words`]: read whole, never half of a change.
    rates: Tuning<3>,
    /// Serializes changes (the check of a change against the settings it replaces, and
    /// `rates`'s one-writer rule); calls never take it.
    writer: Mutex<Rates>,
    seed: u64,
    /// The stream key of `seed` ([`key_of`]).
    key: u64,
    pub(super) rt: R,
    name: Name,
    counters: crate::telemetry::ChaosCounters,
}

impl<R> Shared<R> {
    pub(super) fn new(rt: R, name: Name, seed: u64, rates: Rates) -> Self {
        Self {
            armed: AtomicBool::new(rates.armed()),
            calls: AtomicU64::new(0),
            rates: Tuning::new(rates.words()),
            writer: Mutex::new(rates),
            seed,
            key: key_of(seed),
            counters: crate::telemetry::ChaosCounters::new(&name),
            rt,
            name,
        }
    }
}

impl<R> Clone for Chaos<R> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<R> std::fmt::Debug for Chaos<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chaos")
            .field("name", &self.shared.name)
            .field("seed", &self.shared.seed)
            .field("settings", &self.settings())
            .field("decided", &self.decided())
            .finish_non_exhaustive()
    }
}

/// A [`Chaos`] handle's settings, as kept (each rate rounded to the nearest part per
/// million): see [`Chaos::settings`].
///
/// ```
/// use tidewall::chaos::Chaos;
///
/// let settings = Chaos::builder().hang(0.000_001_4).build()?.settings();
/// assert_eq!(settings.hang_rate, 0.000_001, "kept as one part per million");
/// # Ok::<(), tidewall::ConfigError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct ChaosSettings {
    /// Whether the handle injects at all.
    pub enabled: bool,
    /// The share of calls delayed by `latency`.
    pub latency_rate: f64,
    /// How long a delayed call is held.
    pub latency: Duration,
    /// The share of calls failed without running.
    pub error_rate: f64,
    /// The share of calls that never complete.
    pub hang_rate: f64,
    /// The share of calls whose success is replaced by an error.
    pub alter_rate: f64,
}

impl<R> Chaos<R> {
    /// Whether a call would draw at all: one relaxed load, the whole cost of a call when off.
    #[inline(always)]
    pub(super) fn armed(&self) -> bool {
        self.shared.armed.load(Ordering::Relaxed)
    }

    /// The next call's injection, drawing its number and counting what it injects: what each
    /// call through a front does, for a front of your own. A handle that is off draws nothing
    /// and returns [`Injection::NONE`].
    ///
    /// ```
    /// use tidewall::chaos::{Chaos, Fault};
    ///
    /// let chaos = Chaos::builder().seed(1).error(1.0).build()?;
    /// assert_eq!(chaos.decide().fault, Some(Fault::Error));
    /// assert_eq!(chaos.decided(), 1);
    /// chaos.set_enabled(false);
    /// assert!(chaos.decide().is_none());
    /// assert_eq!(chaos.decided(), 1, "a disabled handle draws no number");
    /// # Ok::<(), tidewall::ConfigError>(())
    /// ```
    pub fn decide(&self) -> Injection {
        if !self.armed() {
            return Injection::NONE;
        }
        self.draw()
    }

    /// The armed path: settings, a number, the decision, its count.
    #[inline(never)]
    pub(super) fn draw(&self) -> Injection {
        let rates = Rates::from_words(self.shared.rates.read());
        // Switched off since the flag was read: no number drawn, as for any call when off.
        if !rates.armed() {
            return Injection::NONE;
        }
        let n = self.shared.calls.fetch_add(1, Ordering::Relaxed);
        let injection = rates.decide(self.shared.key, n);
        if !injection.is_none() {
            self.shared.counters.injected(&injection);
        }
        injection
    }

    /// What call number `n` gets under the settings now in force, drawing nothing and
    /// counting nothing: the pure decision (see [Determinism](Self#determinism)).
    /// [`Injection::NONE`] while the handle is disabled.
    ///
    /// ```
    /// use tidewall::chaos::Chaos;
    ///
    /// let a = Chaos::builder().seed(9).error(0.3).build()?;
    /// let b = Chaos::builder().seed(9).error(0.3).build()?;
    /// let first: Vec<_> = (0..100).map(|n| a.decide_nth(n)).collect();
    /// assert!(first.iter().copied().eq((0..100).map(|n| b.decide_nth(n))));
    /// assert!(first.iter().copied().eq((0..100).map(|_| a.decide())), "calls draw the same");
    /// # Ok::<(), tidewall::ConfigError>(())
    /// ```
    pub fn decide_nth(&self, n: u64) -> Injection {
        Rates::from_words(self.shared.rates.read()).decide(self.shared.key, n)
    }

    /// How many call numbers have been drawn: the next call is number `decided()`.
    ///
    /// ```
    /// use tidewall::chaos::Chaos;
    ///
    /// let chaos = Chaos::builder().seed(3).alter(0.5).build()?;
    /// let next = chaos.decide_nth(chaos.decided());
    /// assert_eq!(chaos.decide(), next);
    /// assert_eq!(chaos.decided(), 1);
    /// # Ok::<(), tidewall::ConfigError>(())
    /// ```
    pub fn decided(&self) -> u64 {
        self.shared.calls.load(Ordering::Relaxed)
    }

    /// The seed (the one given to [`ChaosBuilder::seed`](super::ChaosBuilder::seed), or the
    /// one drawn for it): log it to replay a run.
    ///
    /// ```
    /// use tidewall::chaos::Chaos;
    ///
    /// let first = Chaos::builder().error(0.3).build()?; // a seed drawn for it
    /// let replay = Chaos::builder().seed(first.seed()).error(0.3).build()?;
    /// assert!((0..100).all(|n| first.decide_nth(n) == replay.decide_nth(n)));
    /// # Ok::<(), tidewall::ConfigError>(())
    /// ```
    pub fn seed(&self) -> u64 {
        self.shared.seed
    }

    /// The name its metrics and events carry.
    ///
    /// ```
    /// use tidewall::chaos::Chaos;
    ///
    /// assert_eq!(Chaos::builder().build()?.name(), "chaos");
    /// # Ok::<(), tidewall::ConfigError>(())
    /// ```
    pub fn name(&self) -> &str {
        self.shared.name.as_str()
    }

    /// The runtime injected latency sleeps on.
    ///
    /// ```
    /// use tidewall::chaos::Chaos;
    /// use tidewall::testing::FakeClock;
    ///
    /// let clock = FakeClock::new();
    /// let chaos = Chaos::builder().runtime(clock.clone()).build()?;
    /// assert_eq!(chaos.runtime().now(), clock.now());
    /// # Ok::<(), tidewall::ConfigError>(())
    /// ```
    pub fn runtime(&self) -> &R {
        &self.shared.rt
    }

    /// The settings in force, each rate as kept (rounded to the nearest part per million).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tidewall::chaos::Chaos;
    ///
    /// let chaos = Chaos::builder().latency(0.123_456_7, Duration::from_millis(3)).build()?;
    /// let settings = chaos.settings();
    /// assert_eq!(settings.latency_rate, 0.123_457);
    /// assert_eq!(settings.latency, Duration::from_millis(3));
    /// assert!(settings.enabled);
    /// # Ok::<(), tidewall::ConfigError>(())
    /// ```
    pub fn settings(&self) -> ChaosSettings {
        let rates = Rates::from_words(self.shared.rates.read());
        ChaosSettings {
            enabled: rates.enabled,
            latency_rate: rate_of(rates.latency_ppm),
            latency: Duration::from_nanos(rates.latency_nanos),
            error_rate: rate_of(rates.error_ppm),
            hang_rate: rate_of(rates.hang_ppm),
            alter_rate: rate_of(rates.alter_ppm),
        }
    }

    /// Switches injection on or off, for the calls that start after this returns (a call
    /// already delayed or hanging keeps its fault). The rates are kept either way.
    ///
    /// ```
    /// use tidewall::chaos::Chaos;
    ///
    /// let chaos = Chaos::builder().error(1.0).enabled(false).build()?;
    /// assert!(chaos.decide().is_none());
    /// chaos.set_enabled(true);
    /// assert!(!chaos.decide().is_none());
    /// # Ok::<(), tidewall::ConfigError>(())
    /// ```
    pub fn set_enabled(&self, enabled: bool) {
        let changed = self.change(|rates| {
            rates.enabled = enabled;
            Ok(())
        });
        debug_assert!(changed.is_ok(), "switching changes no rate");
    }

    /// Delays a `rate` of the calls that start after this returns by `latency`.
    ///
    /// # Errors
    ///
    /// As [`ChaosBuilder::build`](super::ChaosBuilder::build) for the latency; the settings
    /// in force are then kept.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tidewall::chaos::Chaos;
    /// use tidewall::ConfigError;
    ///
    /// let chaos = Chaos::builder().build()?;
    /// chaos.set_latency(1.0, Duration::from_millis(50))?;
    /// assert_eq!(chaos.decide().latency, Some(Duration::from_millis(50)));
    /// let refused = chaos.set_latency(0.5, Duration::ZERO);
    /// assert_eq!(refused, Err(ConfigError::Zero { field: "latency" }));
    /// assert_eq!(chaos.settings().latency, Duration::from_millis(50), "kept");
    /// # Ok::<(), tidewall::ConfigError>(())
    /// ```
    pub fn set_latency(&self, rate: f64, latency: Duration) -> Result<(), ConfigError> {
        self.change(|rates| {
            let ppm = rate_ppm("latency_rate", rate)?;
            rates.latency_nanos = latency_nanos(ppm, latency)?;
            rates.latency_ppm = ppm;
            Ok(())
        })
    }

    /// Fails a `rate` of the calls that start after this returns.
    ///
    /// # Errors
    ///
    /// As [`ChaosBuilder::build`](super::ChaosBuilder::build) for the rate, and
    /// [`ConfigError::Conflict`] if with the hang and alter rates in force it sums past 1; the
    /// settings in force are then kept.
    ///
    /// ```
    /// use tidewall::chaos::Chaos;
    /// use tidewall::ConfigError;
    ///
    /// let chaos = Chaos::builder().hang(0.5).build()?;
    /// assert!(matches!(chaos.set_error_rate(0.6), Err(ConfigError::Conflict { .. })));
    /// assert_eq!(chaos.settings().error_rate, 0.0, "refused: the old rate stays");
    /// chaos.set_error_rate(0.5)?;
    /// assert_eq!(chaos.settings().error_rate, 0.5);
    /// # Ok::<(), tidewall::ConfigError>(())
    /// ```
    pub fn set_error_rate(&self, rate: f64) -> Result<(), ConfigError> {
        self.change(|rates| {
            rates.error_ppm = rate_ppm("error", rate)?;
            Ok(())
        })
    }

    /// Hangs a `rate` of the calls that start after this returns.
    ///
    /// # Errors
    ///
    /// As [`set_error_rate`](Self::set_error_rate).
    ///
    /// ```
    /// use tidewall::chaos::{Chaos, Fault};
    ///
    /// let chaos = Chaos::builder().build()?;
    /// chaos.set_hang_rate(1.0)?;
    /// assert_eq!(chaos.decide().fault, Some(Fault::Hang));
    /// assert!(chaos.set_hang_rate(f64::NAN).is_err());
    /// # Ok::<(), tidewall::ConfigError>(())
    /// ```
    pub fn set_hang_rate(&self, rate: f64) -> Result<(), ConfigError> {
        self.change(|rates| {
            rates.hang_ppm = rate_ppm("hang", rate)?;
            Ok(())
        })
    }

    /// Alters the outcome of a `rate` of the calls that start after this returns.
    ///
    /// # Errors
    ///
    /// As [`set_error_rate`](Self::set_error_rate).
    ///
    /// ```
    /// use tidewall::chaos::{Chaos, Fault};
    ///
    /// let chaos = Chaos::builder().build()?;
    /// chaos.set_alter_rate(1.0)?;
    /// assert_eq!(chaos.decide().fault, Some(Fault::Alter));
    /// assert!(chaos.set_alter_rate(-1.0).is_err());
    /// # Ok::<(), tidewall::ConfigError>(())
    /// ```
    pub fn set_alter_rate(&self, rate: f64) -> Result<(), ConfigError> {
        self.change(|rates| {
            rates.alter_ppm = rate_ppm("alter", rate)?;
            Ok(())
        })
    }

    /// Replaces the switch and every rate with `settings`', in place, all at once, for the
    /// calls that start after this returns: checked together, so moving a share of calls from
    /// one fault to another never passes through a sum above 1, as two `set_*` calls might,
    /// and a call racing it acts on the old settings or the new, never on a mix. Its seed,
    /// name and runtime are not read: the handle keeps its own, and its call numbers.
    ///
    /// Nothing of the settings in force is kept: a field `settings` does not set takes the
    /// builder's default (enabled, no latency, no fault). So
    /// `reconfigure(Chaos::builder().error(0.2))` on a handle that was switched off turns it
    /// on, and clears its latency and its other rates. No builder starts from the settings
    /// in force: set every field wanted, reading the ones to keep from
    /// [`settings`](Self::settings).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tidewall::chaos::{Chaos, Fault};
    ///
    /// let chaos = Chaos::builder().seed(3).error(0.6).hang(0.4).build()?;
    /// // One step: as two `set_*` calls, either order would sum past 1 on the way.
    /// chaos.reconfigure(Chaos::builder().error(0.4).hang(0.6))?;
    /// assert_eq!((chaos.settings().error_rate, chaos.settings().hang_rate), (0.4, 0.6));
    /// assert_eq!(chaos.seed(), 3, "kept");
    /// chaos.reconfigure(Chaos::builder().error(1.0).enabled(false))?;
    /// assert!(chaos.decide().is_none());
    ///
    /// // Switched off, with latency: a builder that sets neither turns it on, without latency.
    /// chaos.set_latency(0.5, Duration::from_millis(20))?;
    /// chaos.reconfigure(Chaos::builder().error(0.2))?;
    /// assert!(chaos.settings().enabled);
    /// assert_eq!(chaos.settings().latency_rate, 0.0);
    ///
    /// // To change one rate with `reconfigure`, carry the others over.
    /// chaos.set_enabled(false);
    /// chaos.set_latency(0.5, Duration::from_millis(20))?;
    /// let now = chaos.settings();
    /// chaos.reconfigure(
    ///     Chaos::builder()
    ///         .enabled(now.enabled)
    ///         .latency(now.latency_rate, now.latency)
    ///         .error(0.3)
    ///         .hang(now.hang_rate)
    ///         .alter(now.alter_rate),
    /// )?;
    /// assert_eq!((chaos.settings().enabled, chaos.settings().latency_rate), (false, 0.5));
    /// # Ok::<(), tidewall::ConfigError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`ChaosBuilder::build`](super::ChaosBuilder::build); the settings in force are then
    /// kept.
    pub fn reconfigure<R2>(&self, settings: super::ChaosBuilder<R2>) -> Result<(), ConfigError> {
        let rates = settings.rates()?;
        self.change(|current| {
            *current = rates;
            Ok(())
        })
    }

    /// Applies `edit` to a copy of the settings and publishes it if it is valid whole; one
    /// change at a time, so two changes cannot each pass the sum check against the other's
    /// old rate and together break it.
    fn change(
        &self,
        edit: impl FnOnce(&mut Rates) -> Result<(), ConfigError>,
    ) -> Result<(), ConfigError> {
        let mut current = lock(&self.shared.writer);
        let mut next = *current;
        edit(&mut next)?;
        next.check_sum()?;
        self.shared.rates.write(next.words());
        self.shared.armed.store(next.armed(), Ordering::Relaxed);
        *current = next;
        Ok(())
    }
}
