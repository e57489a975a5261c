//! Keyed policies in the registry: one table per instance name, its key type chosen by the
//! first caller.

use std::any::Any;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use super::{Config, Invalid, Problem, Registry, key};
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
    /// checked): [`Problem::Fixed`] if they change the table's bounds.
    fn retune(&self, config: &Config, name: &str, apply: bool) -> Result<(), Invalid>;

    /// What a health or admin endpoint shows of it.
    fn summary(&self, name: &Name) -> KeyedTable;
}

/// The tables of one kind, by instance name.
pub(super) type Tables = Mutex<std::collections::BTreeMap<Name, Arc<dyn Table>>>;

/// A keyed policy's table as [`Registry::keyed_tables`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyedTable {
    /// `keyed_breaker`, `keyed_bulkhead` or `keyed_rate`.
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
    config: &Config,
    name: &str,
    key_name: &str,
    held: T,
    wanted: Option<T>,
    default: T,
) -> Result<(), Invalid> {
    if wanted.unwrap_or(default) == held {
        return Ok(());
    }
    let at = config.instances.get(name).map_or_else(
        || "defaults".to_owned(),
        |_| format!("instances.{}", key(name)),
    );
    Err(Invalid::new(
        format!("{at}.keys.{key_name}"),
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

const BREAKER_KEYS: usize = 10_000;
const BULKHEAD_KEYS: usize = 10_000;
const RATE_KEYS: usize = 100_000;
const IDLE_TTL: Duration = Duration::from_secs(60);

impl<K, R> Table for KeyedCircuitBreaker<K, R>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    R: Clock,
{
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn key_type(&self) -> &'static str {
        std::any::type_name::<K>()
    }

    fn retune(&self, config: &Config, name: &str, apply: bool) -> Result<(), Invalid> {
        let instance = config.instance(name)?;
        let keys = instance.keys()?;
        same(
            config,
            name,
            "max_keys",
            self.max_keys(),
            keys.max_keys,
            BREAKER_KEYS,
        )?;
        same(
            config,
            name,
            "idle_ttl",
            self.idle_ttl(),
            keys.idle_ttl,
            IDLE_TTL,
        )?;
        let settings = instance.breaker_on(())?;
        if apply {
            self.reconfigure(settings)
                .map_err(|e| placed(name, "breaker", e))?;
        }
        Ok(())
    }

    fn summary(&self, name: &Name) -> KeyedTable {
        summary(
            "keyed_breaker",
            name,
            self.len(),
            self.max_keys(),
            self.evicted(),
        )
    }
}

impl<K, R> Table for KeyedBulkhead<K, R>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    R: Clock,
{
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn key_type(&self) -> &'static str {
        std::any::type_name::<K>()
    }

    fn retune(&self, config: &Config, name: &str, apply: bool) -> Result<(), Invalid> {
        let instance = config.instance(name)?;
        let keys = instance.keys()?;
        same(
            config,
            name,
            "max_keys",
            self.max_keys(),
            keys.max_keys,
            BULKHEAD_KEYS,
        )?;
        let settings = instance.bulkhead_on(())?;
        if apply {
            self.reconfigure(settings)
                .map_err(|e| placed(name, "bulkhead", e))?;
        }
        Ok(())
    }

    fn summary(&self, name: &Name) -> KeyedTable {
        summary(
            "keyed_bulkhead",
            name,
            self.len(),
            self.max_keys(),
            self.evicted(),
        )
    }
}

impl<K, R> Table for KeyedRateLimiter<K, R>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    R: Clock,
{
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn key_type(&self) -> &'static str {
        std::any::type_name::<K>()
    }

    fn retune(&self, config: &Config, name: &str, apply: bool) -> Result<(), Invalid> {
        let instance = config.instance(name)?;
        let keys = instance.keys()?;
        same(
            config,
            name,
            "max_keys",
            self.max_keys(),
            keys.max_keys,
            RATE_KEYS,
        )?;
        let settings = instance.rate_limiter_on(())?;
        if apply {
            self.reconfigure(settings)
                .map_err(|e| placed(name, "rate_limit", e))?;
        }
        Ok(())
    }

    fn summary(&self, name: &Name) -> KeyedTable {
        summary(
            "keyed_rate",
            name,
            self.len(),
            self.max_keys(),
            self.evicted(),
        )
    }
}

fn summary(
    policy: &'static str,
    name: &Name,
    keys: usize,
    max_keys: usize,
    evicted: u64,
) -> KeyedTable {
    KeyedTable {
        policy,
        name: name.clone(),
        keys,
        max_keys,
        evicted,
    }
}

/// `table` as the type the caller asked for.
fn typed<T: Clone + 'static>(
    table: &Arc<dyn Table>,
    name: &str,
    section: &str,
) -> Result<T, Invalid> {
    table.as_any().downcast_ref::<T>().cloned().ok_or_else(|| {
        Invalid::new(
            format!("instances.{}.{section}", key(name)),
            Problem::KeyType(table.key_type()),
        )
    })
}

impl<R: Clock> Registry<R> {
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
        let table = self.held_or_made(&self.keyed_breakers, name, |config| {
            let instance = config.instance(name)?;
            let keys = instance.keys()?;
            let mut builder = instance.breaker_on(self.runtime().clone())?;
            if let Some(listener) = self.listener() {
                builder = builder.on_event(listener);
            }
            let table = builder
                .keyed::<K>()
                .max_keys(keys.max_keys.unwrap_or(BREAKER_KEYS))
                .idle_ttl(keys.idle_ttl.unwrap_or(IDLE_TTL))
                .build()
                .map_err(|e| placed(name, "breaker", e))?;
            Ok(Arc::new(table) as Arc<dyn Table>)
        })?;
        typed(&table, name, "breaker")
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
        let table = self.held_or_made(&self.keyed_bulkheads, name, |config| {
            let instance = config.instance(name)?;
            let keys = instance.keys()?;
            let mut builder = instance.bulkhead_on(self.runtime().clone())?;
            if let Some(listener) = self.listener() {
                builder = builder.on_event(listener);
            }
            let table = builder
                .keyed()
                .max_keys(keys.max_keys.unwrap_or(BULKHEAD_KEYS))
                .build::<K>()
                .map_err(|e| placed(name, "bulkhead", e))?;
            Ok(Arc::new(table) as Arc<dyn Table>)
        })?;
        typed(&table, name, "bulkhead")
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
        let table = self.held_or_made(&self.keyed_limiters, name, |config| {
            let instance = config.instance(name)?;
            let keys = instance.keys()?;
            let mut builder = instance.rate_limiter_on(self.runtime().clone())?;
            if let Some(listener) = self.listener() {
                builder = builder.on_event(listener);
            }
            let table = builder
                .keyed()
                .max_keys(keys.max_keys.unwrap_or(RATE_KEYS))
                .build::<K>()
                .map_err(|e| placed(name, "rate_limit", e))?;
            Ok(Arc::new(table) as Arc<dyn Table>)
        })?;
        typed(&table, name, "rate_limit")
    }

    /// Every keyed policy's table so far: breakers, then bulkheads, then rate limiters, each
    /// by name (for a health or admin endpoint).
    pub fn keyed_tables(&self) -> Vec<KeyedTable> {
        [
            &self.keyed_breakers,
            &self.keyed_bulkheads,
            &self.keyed_limiters,
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

/// Checks (or, with `apply`, applies) `config` for every table in `tables`.
pub(super) fn retune(
    tables: &[&std::collections::BTreeMap<Name, Arc<dyn Table>>],
    config: &Config,
    apply: bool,
) -> Result<(), Invalid> {
    for (name, table) in tables.iter().flat_map(|held| held.iter()) {
        table.retune(config, name, apply)?;
    }
    Ok(())
}
