//! Named policy instances built from a configuration.

use std::collections::BTreeMap;
use std::fmt;

use super::{Config, Instance, Invalid, Problem};
use crate::Name;
use crate::breaker::CircuitBreaker;
use crate::budget::RetryBudget;
use crate::bulkhead::Bulkhead;
use crate::rate::RateLimiter;
use crate::rt::{Clock, DefaultRuntime};
use crate::sync::{Mutex, lock};

/// The policies of a configuration, by instance name: one circuit breaker, bulkhead, rate
/// limiter and retry budget per name, shared by everyone who asks for it.
///
/// Building the registry validates the whole configuration and builds every policy an
/// instance has (its own sections and its base's), so they are there to list from the start
/// (for a health or admin endpoint). Asking for a policy of a name the file does not declare,
/// or a kind the instance has no section for, builds it from the layers there are (the
/// defaults, say) on first use and keeps it: get-or-create, as resilience4j's registries do.
/// The registry holds at most [`max_instances`](RegistryBuilder::max_instances) policies of
/// each kind, so names taken from requests cannot grow it without bound.
///
/// Policies are handles to shared state: a breaker got twice is one breaker.
///
/// ```
/// use tidewall::config::{Config, Registry};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let config = Config::from_toml(r#"
///     [defaults.breaker]
///     failure_rate = 0.5
///     minimum_calls = 20
///
///     [instances.payments.breaker]
///     consecutive_failures = 3
///     [instances.payments.bulkhead]
///     max_concurrent = 16
/// "#)?;
/// let registry = Registry::new(config)?;
///
/// let breaker = registry.breaker("payments")?;
/// assert_eq!(breaker.name(), "payments");
/// assert_eq!(registry.bulkhead("payments")?.capacity(), 16);
///
/// // Another name gets the defaults, once.
/// let search = registry.breaker("search")?;
/// assert_eq!(registry.breakers().len(), 2);
/// # let _ = search;
/// for (name, breaker) in registry.breakers() {
///     println!("{name}: {}", breaker.state());
/// }
/// # Ok(()) }
/// ```
pub struct Registry<R = DefaultRuntime> {
    config: Config,
    rt: R,
    max_instances: usize,
    breakers: Mutex<BTreeMap<Name, CircuitBreaker<R>>>,
    bulkheads: Mutex<BTreeMap<Name, Bulkhead<R>>>,
    limiters: Mutex<BTreeMap<Name, RateLimiter<R>>>,
    budgets: Mutex<BTreeMap<Name, RetryBudget>>,
}

/// Configures a [`Registry`]: its runtime and its bound.
#[must_use]
pub struct RegistryBuilder<R = DefaultRuntime> {
    config: Config,
    rt: R,
    max_instances: usize,
}

impl Registry {
    /// The policies of `config` on the default runtime (feature `tokio`; otherwise use
    /// [`builder`](Self::builder) and [`runtime`](RegistryBuilder::runtime)).
    ///
    /// # Errors
    ///
    /// The configuration's first [`Invalid`] setting.
    #[cfg(feature = "tokio")]
    pub fn new(config: Config) -> Result<Self, Invalid> {
        Self::builder(config).build()
    }

    /// Starts a registry of `config`'s policies; choose the runtime with
    /// [`RegistryBuilder::runtime`].
    pub fn builder(config: Config) -> RegistryBuilder {
        RegistryBuilder {
            config,
            rt: DefaultRuntime::default(),
            max_instances: 10_000,
        }
    }
}

impl<R> RegistryBuilder<R> {
    /// Runs every policy on `rt` (its clock is the one they read).
    pub fn runtime<R2>(self, rt: R2) -> RegistryBuilder<R2> {
        RegistryBuilder {
            config: self.config,
            rt,
            max_instances: self.max_instances,
        }
    }

    /// The most policies of each kind the registry holds (default 10,000); the declared
    /// instances count, and a name asked for beyond it gets [`Problem::Full`].
    pub fn max_instances(mut self, max: usize) -> Self {
        self.max_instances = max;
        self
    }

    /// Validates the configuration and builds every policy its instances have.
    ///
    /// # Errors
    ///
    /// The configuration's first [`Invalid`] setting, or [`Problem::Full`] when the
    /// instances declared exceed [`max_instances`](Self::max_instances).
    pub fn build(self) -> Result<Registry<R>, Invalid>
    where
        R: Clock,
    {
        self.config.validate()?;
        if self.config.instances.len() > self.max_instances {
            return Err(Invalid::new(
                "instances",
                Problem::Full {
                    max: self.max_instances,
                },
            ));
        }
        let registry = Registry {
            config: self.config,
            rt: self.rt,
            max_instances: self.max_instances,
            breakers: Mutex::default(),
            bulkheads: Mutex::default(),
            limiters: Mutex::default(),
            budgets: Mutex::default(),
        };
        let config = &registry.config;
        for (name, policies) in &config.instances {
            let base = policies.base.as_ref().and_then(|b| config.configs.get(b));
            let has = |section: fn(&super::Policies) -> bool| {
                section(policies) || base.is_some_and(section)
            };
            if has(|p| p.breaker.is_some()) {
                registry.breaker(name)?;
            }
            if has(|p| p.bulkhead.is_some()) {
                registry.bulkhead(name)?;
            }
            if has(|p| p.rate_limit.is_some()) {
                registry.rate_limiter(name)?;
            }
            if has(|p| p.budget.is_some()) {
                registry.retry_budget(name)?;
            }
        }
        Ok(registry)
    }
}

/// The entry of `name` in `map`, made by `make` if it is not there yet.
fn get_or_create<T: Clone>(
    map: &Mutex<BTreeMap<Name, T>>,
    max: usize,
    name: &str,
    make: impl FnOnce() -> Result<T, Invalid>,
) -> Result<T, Invalid> {
    let mut map = lock(map);
    if let Some(found) = map.get(name) {
        return Ok(found.clone());
    }
    if map.len() >= max {
        return Err(Invalid::new(
            format!("instances.{name}"),
            Problem::Full { max },
        ));
    }
    let made = make()?;
    map.insert(Name::from(name.to_owned()), made.clone());
    Ok(made)
}

/// A snapshot of `map`, by name.
fn listed<T: Clone>(map: &Mutex<BTreeMap<Name, T>>) -> Vec<(Name, T)> {
    lock(map)
        .iter()
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect()
}

impl<R: Clock> Registry<R> {
    fn instance<'a>(&'a self, name: &'a str) -> Result<Instance<'a>, Invalid> {
        self.config.instance(name)
    }

    /// The circuit breaker named `name`, built on first use.
    ///
    /// # Errors
    ///
    /// [`Invalid`] when the layers for `name` do not make a valid breaker (only possible for
    /// a name the file does not declare), or [`Problem::Full`].
    pub fn breaker(&self, name: &str) -> Result<CircuitBreaker<R>, Invalid> {
        get_or_create(&self.breakers, self.max_instances, name, || {
            let builder = self.instance(name)?.breaker_on(self.rt.clone())?;
            builder
                .build()
                .map_err(|e| Invalid::new(format!("instances.{name}.breaker"), Problem::Rule(e)))
        })
    }

    /// The bulkhead named `name`, built on first use.
    ///
    /// # Errors
    ///
    /// As [`breaker`](Self::breaker); [`Problem::Missing`] when no layer sets
    /// `max_concurrent`.
    pub fn bulkhead(&self, name: &str) -> Result<Bulkhead<R>, Invalid> {
        get_or_create(&self.bulkheads, self.max_instances, name, || {
            let builder = self.instance(name)?.bulkhead_on(self.rt.clone())?;
            builder
                .build()
                .map_err(|e| Invalid::new(format!("instances.{name}.bulkhead"), Problem::Rule(e)))
        })
    }

    /// The rate limiter named `name`, built on first use.
    ///
    /// # Errors
    ///
    /// As [`breaker`](Self::breaker); [`Problem::Missing`] when no layer sets `count` or
    /// `period`.
    pub fn rate_limiter(&self, name: &str) -> Result<RateLimiter<R>, Invalid> {
        get_or_create(&self.limiters, self.max_instances, name, || {
            let builder = self.instance(name)?.rate_limiter_on(self.rt.clone())?;
            builder
                .build()
                .map_err(|e| Invalid::new(format!("instances.{name}.rate_limit"), Problem::Rule(e)))
        })
    }

    /// The retry budget named `name`, built on first use.
    ///
    /// # Errors
    ///
    /// As [`breaker`](Self::breaker).
    pub fn retry_budget(&self, name: &str) -> Result<RetryBudget, Invalid> {
        get_or_create(&self.budgets, self.max_instances, name, || {
            let policy = self.instance(name)?.retry_budget()?;
            Ok(RetryBudget::new(policy, self.rt.now()))
        })
    }

    /// Every circuit breaker so far, by name.
    pub fn breakers(&self) -> Vec<(Name, CircuitBreaker<R>)> {
        listed(&self.breakers)
    }

    /// Every bulkhead so far, by name.
    pub fn bulkheads(&self) -> Vec<(Name, Bulkhead<R>)> {
        listed(&self.bulkheads)
    }

    /// Every rate limiter so far, by name.
    pub fn rate_limiters(&self) -> Vec<(Name, RateLimiter<R>)> {
        listed(&self.limiters)
    }

    /// Every retry budget so far, by name.
    pub fn retry_budgets(&self) -> Vec<(Name, RetryBudget)> {
        listed(&self.budgets)
    }

    /// The configuration the registry was built from.
    pub fn config(&self) -> &Config {
        &self.config
    }
}

impl<R> fmt::Debug for Registry<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("instances", &self.config.instances.len())
            .field("max_instances", &self.max_instances)
            .finish_non_exhaustive()
    }
}
