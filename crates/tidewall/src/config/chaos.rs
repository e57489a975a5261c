//! An instance's `[chaos]` section (feature `chaos`): a fault injector by name.

use std::collections::BTreeMap;
use std::time::Duration;

use super::instance::{Checking, Get, checked};
use super::sections::ChaosConfig;
use super::{Config, Instance, Invalid, Problem, Registry, key};
use crate::Name;
use crate::chaos::{Chaos, ChaosBuilder};
use crate::rt::{Clock, DefaultRuntime};
use crate::sync::{Mutex, MutexGuard};

/// The builder's fields whose key in a file is another.
const CHAOS_KEYS: &[(&str, &str)] = &[
    ("error", "error_rate"),
    ("hang", "hang_rate"),
    ("alter", "alter_rate"),
];

/// The handles a registry holds, by name.
pub(super) type Handles<R> = Mutex<BTreeMap<Name, Chaos<R>>>;

/// A held handle and the settings a reload gives it.
pub(super) type Plan<R> = (Chaos<R>, ChaosBuilder<()>);

impl Instance<'_> {
    /// The fault injector, on the default runtime (choose another with
    /// [`runtime`](ChaosBuilder::runtime)).
    ///
    /// ```
    /// use tidewall::config::Config;
    ///
    /// let config = Config::from_toml("[instances.a.chaos]\nseed = 1\nhang_rate = 1\n")?;
    /// let chaos = config.instance("a")?.chaos()?.build()?;
    /// assert_eq!((chaos.name(), chaos.seed(), chaos.settings().hang_rate), ("a", 1, 1.0));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Invalid`] with the key path of the first setting the builder refuses.
    pub fn chaos(&self) -> Result<ChaosBuilder, Invalid> {
        self.chaos_on(DefaultRuntime::default())
    }

    pub(super) fn chaos_on<R>(&self, rt: R) -> Result<ChaosBuilder<R>, Invalid> {
        let get: Get<ChaosConfig> = |p| &p.chaos;
        let (s, at) = self.section("chaos", get, ChaosConfig::over);
        let mut b = Chaos::builder()
            .name(self.named())
            .enabled(s.enabled.unwrap_or(true))
            .latency(
                s.latency_rate.unwrap_or(0.0),
                s.latency.unwrap_or(Duration::ZERO),
            )
            .error(s.error_rate.unwrap_or(0.0))
            .hang(s.hang_rate.unwrap_or(0.0))
            .alter(s.alter_rate.unwrap_or(0.0));
        if let Some(seed) = s.seed {
            b = b.seed(seed);
        }
        let clock = Checking(std::time::Instant::now());
        checked(|| b.clone().runtime(clock).build())
            .map_err(|e| self.placed("chaos", get, ChaosConfig::sets, CHAOS_KEYS, &at, e))?;
        Ok(b.runtime(rt))
    }

    /// Where the topmost layer that sets `seed` sets it.
    fn chaos_seed_path(&self) -> String {
        let get: Get<ChaosConfig> = |p| &p.chaos;
        let (_, at) = self.section("chaos", get, ChaosConfig::over);
        self.key_path("chaos", get, ChaosConfig::sets, "seed", &at)
    }
}

impl<R: Clock> Registry<R> {
    /// The fault injector named `name` (feature `chaos`), built on first use: wrap it around
    /// the operation of the instance's pipeline (`pipeline.call(chaos.wrap(op))`: every
    /// attempt is a call, so retries, the breaker and timeouts see its faults). A
    /// [reload](Self::reload) applies the new switch and rates at once, for the calls that
    /// start after it; the seed, fixed while the registry holds the handle, keeps the calls'
    /// faults replayable (a reload that sets another is refused with [`Problem::Fixed`] at
    /// the seed's key path, in the layer that sets it; one that leaves it out keeps it).
    ///
    /// ```
    /// use tidewall::chaos::InjectedFault;
    /// use tidewall::config::{Config, Registry};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let off = "[instances.payments.chaos]\nseed = 1\nerror_rate = 1\nenabled = false\n";
    /// let registry = Registry::new(Config::from_toml(off)?)?;
    /// let (payments, chaos) = (registry.pipeline("payments")?, registry.chaos("payments")?);
    /// let op = || async { Ok::<_, InjectedFault>("paid") };
    /// assert_eq!(payments.call(chaos.wrap(op)).await, Ok("paid"));
    ///
    /// // Game day: the same file, switched on.
    /// registry.reload(Config::from_toml(&off.replace("false", "true"))?)?;
    /// assert!(payments.call(chaos.wrap(op)).await.is_err());
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`breaker`](Self::breaker).
    pub fn chaos(&self, name: &str) -> Result<Chaos<R>, Invalid> {
        self.held_or_made(&self.chaos, name, |config| {
            config
                .instance(name)?
                .chaos_on(self.runtime().clone())?
                .build()
                .map_err(|e| {
                    Invalid::new(format!("instances.{}.chaos", key(name)), Problem::Rule(e))
                })
        })
    }

    /// Every fault injector so far, by name.
    pub fn chaos_handles(&self) -> Vec<(Name, Chaos<R>)> {
        super::registry::listed(&self.chaos)
    }
}

/// The settings `config` gives each handle held, checked: [`Problem::Fixed`] where a file's
/// seed differs from the handle's.
pub(super) fn plans<R: Clock>(
    held: &MutexGuard<'_, BTreeMap<Name, Chaos<R>>>,
    config: &Config,
) -> Result<Vec<Plan<R>>, Invalid> {
    held.iter()
        .map(|(name, chaos)| {
            let instance = config.instance(name)?;
            let settings = instance.chaos_on(())?;
            if settings
                .seed_given()
                .is_some_and(|seed| seed != chaos.seed())
            {
                return Err(Invalid::new(instance.chaos_seed_path(), Problem::Fixed));
            }
            Ok((chaos.clone(), settings))
        })
        .collect()
}
