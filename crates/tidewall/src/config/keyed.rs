//! Keyed policies in the registry: one table per instance name, its key type chosen by the
//! first caller.

use std::any::Any;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use super::{Config, Instance, Invalid, KeysConfig, Problem, Registry, key};
use crate::adaptive::{AnyAlgorithm, KeyedAdaptiveLimiter};
use crate::breaker::KeyedCircuitBreaker;
use crate::bulkhead::KeyedBulkhead;
use crate::rate::KeyedRateLimiter;
use crate::rt::Clock;
use crate::sync::{Mutex, lock};
use crate::{ConfigError, Name};

/// A key table the registry holds, its key type erased.
pub(super) trait Table: Send + Sync {
    fn as_any(&self) -> &dyn Any;

    /// The key type, for [`Problem::KeyType`].
    fn key_type(&self) -> &'static str;

    /// The settings `config` gives the table of `name`, applied if `apply` (else only
    /// checked): [`Problem::Fixed`] if they change the table's bounds. What the keys' state
    /// went through.
    fn retune(&self, config: &Config, name: &str, apply: bool) -> Result<Retuned, Invalid>;

    /// What a health or admin endpoint shows of it.
    fn summary(&self, name: &Name) -> KeyedTable;
}

/// What a table's retuning did to its keys' state, for [`Reload`](super::Reload).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Retuned {
    /// Kept as it was (or only checked).
    Kept,
    /// Some keys' breakers were reset to closed (their window changed shape).
    Reset,
    /// The keys' adaptive limits start learning again (their algorithm changed).
    Relearning,
}

/// The tables of one kind, by instance name.
pub(super) type Tables = Mutex<std::collections::BTreeMap<Name, Arc<dyn Table>>>;

/// A keyed policy's table as [`Registry::keyed_tables`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyedTable {
    /// `keyed_breaker`, `keyed_bulkhead`, `keyed_rate` or `keyed_adaptive`.
    pub policy: &'static str,
    /// The instance's name.
    pub name: Name,
    /// Keys held now.
    pub keys: usize,
    /// The most it holds.
    pub max_keys: usize,
    /// Keys forgotten so far.
    pub evicted: u64,
}

/// Refuses a change of a table's bound.
fn same<T: PartialEq>(
    name: &str,
    key_name: &str,
    held: T,
    wanted: Option<T>,
    default: T,
) -> Result<(), Invalid> {
    if wanted.unwrap_or(default) == held {
        return Ok(());
    }
    Err(Invalid::new(
        format!("instances.{}.keys.{key_name}", key(name)),
        Problem::Fixed,
    ))
}

/// A keyed builder's error, at the instance's section.
fn placed(name: &str, section: &str, error: ConfigError) -> Invalid {
    Invalid::new(
        format!("instances.{}.{section}", key(name)),
        Problem::Rule(error),
    )
}

const IDLE_TTL: Duration = Duration::from_secs(60);

/// What differs between the three keyed policies, for one [`Table`] impl and one getter.
trait Kind: Clone + Send + Sync + 'static {
    /// Its `policy` label.
    const POLICY: &'static str;
    /// Its section in a layer.
    const SECTION: &'static str;
    /// Its builder's default `max_keys`.
    const MAX_KEYS: usize;
    type Key: 'static;

    fn max_keys(&self) -> usize;
    fn summary_counts(&self) -> (usize, u64);

    /// Refuses a change of any bound but `max_keys` (checked for every kind).
    fn other_bounds_kept(&self, _name: &str, _keys: &KeysConfig) -> Result<(), Invalid> {
        Ok(())
    }

    /// Applies (`apply`) or checks the per-key settings the instance `name` gives.
    fn retune_from(
        &self,
        instance: &Instance<'_>,
        name: &str,
        apply: bool,
    ) -> Result<Retuned, Invalid>;
}

impl<T: Kind> Table for T {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn key_type(&self) -> &'static str {
        std::any::type_name::<T::Key>()
    }

    fn retune(&self, config: &Config, name: &str, apply: bool) -> Result<Retuned, Invalid> {
        let instance = config.instance(name)?;
        let keys = instance.keys()?;
        same(
            name,
            "max_keys",
            self.max_keys(),
            keys.max_keys,
            T::MAX_KEYS,
        )?;
        self.other_bounds_kept(name, &keys)?;
        self.retune_from(&instance, name, apply)
    }

    fn summary(&self, name: &Name) -> KeyedTable {
        let (keys, evicted) = self.summary_counts();
        KeyedTable {
            policy: T::POLICY,
            name: name.clone(),
            keys,
            max_keys: self.max_keys(),
            evicted,
        }
    }
}

impl<K, R> Kind for KeyedCircuitBreaker<K, R>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    R: Clock,
{
    const POLICY: &'static str = "keyed_breaker";
    const SECTION: &'static str = "breaker";
    const MAX_KEYS: usize = 10_000;
    type Key = K;

    fn max_keys(&self) -> usize {
        KeyedCircuitBreaker::max_keys(self)
    }

    fn summary_counts(&self) -> (usize, u64) {
        (self.len(), self.evicted())
    }

    fn other_bounds_kept(&self, name: &str, keys: &KeysConfig) -> Result<(), Invalid> {
        same(name, "idle_ttl", self.idle_ttl(), keys.idle_ttl, IDLE_TTL)
    }

    fn retune_from(
        &self,
        instance: &Instance<'_>,
        name: &str,
        apply: bool,
    ) -> Result<Retuned, Invalid> {
        let settings = instance.breaker_on(())?;
        if apply {
            let reset = self
                .reconfigure(settings)
                .map_err(|e| placed(name, Self::SECTION, e))?;
            if reset > 0 {
                return Ok(Retuned::Reset);
            }
        }
        Ok(Retuned::Kept)
    }
}

impl<K, R> Kind for KeyedBulkhead<K, R>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    R: Clock,
{
    const POLICY: &'static str = "keyed_bulkhead";
    const SECTION: &'static str = "bulkhead";
    const MAX_KEYS: usize = 10_000;
    type Key = K;

    fn max_keys(&self) -> usize {
        KeyedBulkhead::max_keys(self)
    }

    fn summary_counts(&self) -> (usize, u64) {
        (self.len(), self.evicted())
    }

    fn retune_from(
        &self,
        instance: &Instance<'_>,
        name: &str,
        apply: bool,
    ) -> Result<Retuned, Invalid> {
        let settings = instance.bulkhead_on(())?;
        if apply {
            self.reconfigure(settings)
                .map_err(|e| placed(name, Self::SECTION, e))?;
        }
        Ok(Retuned::Kept)
    }
}

impl<K, R> Kind for KeyedRateLimiter<K, R>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    R: Clock,
{
    const POLICY: &'static str = "keyed_rate";
    const SECTION: &'static str = "rate_limit";
    const MAX_KEYS: usize = 100_000;
    type Key = K;

    fn max_keys(&self) -> usize {
        KeyedRateLimiter::max_keys(self)
    }

    fn summary_counts(&self) -> (usize, u64) {
        (self.len(), self.evicted())
    }

    fn retune_from(
        &self,
        instance: &Instance<'_>,
        name: &str,
        apply: bool,
    ) -> Result<Retuned, Invalid> {
        let settings = instance.rate_limiter_on(())?;
        if apply {
            self.reconfigure(settings)
                .map_err(|e| placed(name, Self::SECTION, e))?;
        }
        Ok(Retuned::Kept)
    }
}

impl<K, R> Kind for KeyedAdaptiveLimiter<K, AnyAlgorithm, R>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    R: Clock,
{
    const POLICY: &'static str = "keyed_adaptive";
    const SECTION: &'static str = "adaptive";
    const MAX_KEYS: usize = 10_000;
    type Key = K;

    fn max_keys(&self) -> usize {
        KeyedAdaptiveLimiter::max_keys(self)
    }

    fn summary_counts(&self) -> (usize, u64) {
        (self.len(), self.evicted())
    }

    fn retune_from(
        &self,
        instance: &Instance<'_>,
        name: &str,
        apply: bool,
    ) -> Result<Retuned, Invalid> {
        let (algorithm, settings) = instance.adaptive_limiter_on(())?.split();
        // As a single limiter's: compared as built, so a default written out is no change.
        let relearn = self.algorithm_given() != algorithm;
        if apply {
            self.retune(&settings, relearn.then_some(algorithm))
                .map_err(|e| placed(name, Self::SECTION, e))?;
        }
        Ok(if relearn {
            Retuned::Relearning
        } else {
            Retuned::Kept
        })
    }
}

impl<R: Clock> Registry<R> {
    /// The table of `name` in `tables` as a `T`, made by `make` from the instance and its
    /// `[keys]` if the registry does not hold it yet.
    fn keyed<T: Kind>(
        &self,
        tables: &Tables,
        name: &str,
        make: impl FnOnce(&Instance<'_>, &KeysConfig) -> Result<T, Invalid>,
    ) -> Result<T, Invalid> {
        let table = self.held_or_made(tables, name, |config| {
            let instance = config.instance(name)?;
            let keys = instance.keys()?;
            Ok(Arc::new(make(&instance, &keys)?) as Arc<dyn Table>)
        })?;
        table.as_any().downcast_ref::<T>().cloned().ok_or_else(|| {
            Invalid::new(
                format!("instances.{}.{}", key(name), T::SECTION),
                Problem::KeyType(table.key_type()),
            )
        })
    }

    /// The keyed circuit breaker of `name` (a [`KeyedCircuitBreaker`]: a breaker per key, per
    /// host say, each with the instance's breaker settings), made on first use with keys of
    /// type `K`, its table bounded by the instance's `[keys]`. A
    /// [reload](Self::reload) retunes every key's breaker (see
    /// [`KeyedCircuitBreaker::reconfigure`]).
    ///
    /// ```
    /// use tidewall::breaker::State;
    /// use tidewall::config::{Config, Registry};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let registry = Registry::new(Config::from_toml(r#"
    ///     [instances.hosts.breaker]
    ///     consecutive_failures = 1
    ///     [instances.hosts.keys]
    ///     max_keys = 500
    /// "#)?)?;
    /// let per_host = registry.keyed_breaker::<String>("hosts")?;
    /// let _ = per_host.call(&"a.example".into(), || async { Err::<(), _>("down") }).await;
    /// assert_eq!(per_host.state(&"a.example".into()), Some(State::Open));
    /// assert_eq!(per_host.max_keys(), 500);
    /// // The same table for everyone who asks with the same key type...
    /// assert_eq!(registry.keyed_breaker::<String>("hosts")?.len(), 1);
    /// // ...and a typed error for another.
    /// assert!(registry.keyed_breaker::<u64>("hosts").is_err());
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`breaker`](Self::breaker); [`Problem::KeyType`] when the registry holds the table
    /// with another key type.
    pub fn keyed_breaker<K>(&self, name: &str) -> Result<KeyedCircuitBreaker<K, R>, Invalid>
    where
        K: Hash + Eq + Clone + Send + Sync + 'static,
    {
        self.keyed(&self.keyed_breakers, name, |instance, keys| {
            let mut builder = instance.breaker_on(self.runtime().clone())?;
            if let Some(listener) = self.listener() {
                builder = builder.on_event(listener);
            }
            builder
                .keyed()
                .max_keys(
                    keys.max_keys
                        .unwrap_or(KeyedCircuitBreaker::<K, R>::MAX_KEYS),
                )
                .idle_ttl(keys.idle_ttl.unwrap_or(IDLE_TTL))
                .build()
                .map_err(|e| placed(name, "breaker", e))
        })
    }

    /// The keyed bulkhead of `name` (a [`KeyedBulkhead`]: a bulkhead per key, per tenant say),
    /// made on first use with keys of type `K`, as [`keyed_breaker`](Self::keyed_breaker)
    /// says.
    ///
    /// # Errors
    ///
    /// As [`bulkhead`](Self::bulkhead); [`Problem::KeyType`] when the registry holds the table
    /// with another key type.
    pub fn keyed_bulkhead<K>(&self, name: &str) -> Result<KeyedBulkhead<K, R>, Invalid>
    where
        K: Hash + Eq + Clone + Send + Sync + 'static,
    {
        self.keyed(&self.keyed_bulkheads, name, |instance, keys| {
            let mut builder = instance.bulkhead_on(self.runtime().clone())?;
            if let Some(listener) = self.listener() {
                builder = builder.on_event(listener);
            }
            builder
                .keyed()
                .max_keys(keys.max_keys.unwrap_or(KeyedBulkhead::<K, R>::MAX_KEYS))
                .build()
                .map_err(|e| placed(name, "bulkhead", e))
        })
    }

    /// The keyed rate limiter of `name` (a [`KeyedRateLimiter`]: a limit per key, per client
    /// say), made on first use with keys of type `K`, as
    /// [`keyed_breaker`](Self::keyed_breaker) says.
    ///
    /// # Errors
    ///
    /// As [`rate_limiter`](Self::rate_limiter); [`Problem::KeyType`] when the registry holds
    /// the table with another key type.
    pub fn keyed_rate_limiter<K>(&self, name: &str) -> Result<KeyedRateLimiter<K, R>, Invalid>
    where
        K: Hash + Eq + Clone + Send + Sync + 'static,
    {
        self.keyed(&self.keyed_limiters, name, |instance, keys| {
            let mut builder = instance.rate_limiter_on(self.runtime().clone())?;
            if let Some(listener) = self.listener() {
                builder = builder.on_event(listener);
            }
            builder
                .keyed()
                .max_keys(keys.max_keys.unwrap_or(KeyedRateLimiter::<K, R>::MAX_KEYS))
                .build()
                .map_err(|e| placed(name, "rate_limit", e))
        })
    }

    /// The keyed adaptive limiter of `name` (a [`KeyedAdaptiveLimiter`]: an adaptive limiter
    /// per key, per host say, each learning from its own calls, with the instance's
    /// `[adaptive]` settings), made on first use with keys of type `K`, as
    /// [`keyed_breaker`](Self::keyed_breaker) says. A [reload](Self::reload) retunes every
    /// key as [`adaptive_limiter`](Self::adaptive_limiter)'s limiter is retuned: every key
    /// keeps what it learned unless the algorithm changed, and then every key starts again
    /// (the table's name is in [`Reload::relearning`](super::Reload::relearning)).
    ///
    /// ```
    /// use tidewall::config::{Config, Registry};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let registry = Registry::new(Config::from_toml(r#"
    ///     [instances.hosts.adaptive]
    ///     algorithm = "aimd"
    ///     min_limit = 1
    ///     initial_limit = 4
    ///     [instances.hosts.keys]
    ///     max_keys = 1000
    /// "#)?)?;
    /// let per_host = registry.keyed_adaptive_limiter::<String>("hosts")?;
    /// per_host.try_acquire(&"slow.example".into())?.failure();
    /// assert_eq!(per_host.limit(&"slow.example".into()), Some(3), "4 × 0.9, truncated");
    /// assert_eq!(per_host.try_acquire(&"fast.example".into()).map(drop), Ok(()));
    /// assert_eq!(per_host.limit(&"fast.example".into()), Some(4));
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`adaptive_limiter`](Self::adaptive_limiter); [`Problem::KeyType`] when the
    /// registry holds the table with another key type.
    pub fn keyed_adaptive_limiter<K>(
        &self,
        name: &str,
    ) -> Result<KeyedAdaptiveLimiter<K, AnyAlgorithm, R>, Invalid>
    where
        K: Hash + Eq + Clone + Send + Sync + 'static,
    {
        self.keyed(&self.keyed_adaptive, name, |instance, keys| {
            let mut builder = instance.adaptive_limiter_on(self.runtime().clone())?;
            if let Some(listener) = self.listener() {
                builder = builder.on_event(listener);
            }
            builder
                .keyed()
                .max_keys(
                    keys.max_keys
                        .unwrap_or(<KeyedAdaptiveLimiter<K, AnyAlgorithm, R> as Kind>::MAX_KEYS),
                )
                .build()
                .map_err(|e| placed(name, "adaptive", e))
        })
    }

    /// Every keyed policy's table so far: breakers, then bulkheads, then rate limiters, then
    /// adaptive limiters, each by name (for a health or admin endpoint).
    pub fn keyed_tables(&self) -> Vec<KeyedTable> {
        [
            &self.keyed_breakers,
            &self.keyed_bulkheads,
            &self.keyed_limiters,
            &self.keyed_adaptive,
        ]
        .into_iter()
        .flat_map(|tables| {
            lock(tables)
                .iter()
                .map(|(name, table)| table.summary(name))
                .collect::<Vec<_>>()
        })
        .collect()
    }
}
