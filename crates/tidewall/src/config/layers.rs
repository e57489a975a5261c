//! The file's three layers: `defaults`, named `configs`, and `instances`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::human::opt_duration;
use super::sections::{
    AdaptiveConfig, BreakerConfig, BudgetConfig, BulkheadConfig, HedgeConfig, KeysConfig,
    RateLimitConfig, RetryConfig,
};
use super::{Instance, Invalid, Problem, Toggle, key};

/// A whole configuration: `[defaults]`, `[configs.<name>]` and `[instances.<name>]`, each a
/// set of [`Policies`]. See the [module docs](super) for how the layers combine.
///
/// ```
/// use tidewall::config::Config;
///
/// let config = Config::from_toml(r#"
///     [defaults.breaker]
///     failure_rate = 0.5
///
///     [configs.critical.breaker]
///     failure_rate = 0.25
///
///     [instances.payments]
///     base = "critical"
///     deadline = "2s"
///     breaker = {}
/// "#)?;
/// assert_eq!(config.instances.keys().collect::<Vec<_>>(), ["payments"]);
/// # Ok::<(), tidewall::config::Invalid>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Config {
    /// What every instance starts from.
    #[serde(default)]
    pub defaults: Policies,
    /// Named bases an instance may start from instead (`base = "<name>"`), over the defaults.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub configs: BTreeMap<String, Policies>,
    /// The named instances, each over its base and the defaults.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub instances: BTreeMap<String, Policies>,
}

/// One layer's policies: the keys of `[defaults]`, of a `[configs.<name>]` or of an
/// `[instances.<name>]`. Every key is optional.
///
/// ```
/// use std::time::Duration;
/// use tidewall::config::{Config, Toggle};
///
/// let config = Config::from_toml(r#"
///     [instances.search]
///     deadline = "800ms"
///     attempt_timeout = "250ms"
///     [instances.search.retry]
///     max_attempts = 2
/// "#)?;
/// let search = &config.instances["search"];
/// assert_eq!(search.attempt_timeout, Some(Toggle::On(Duration::from_millis(250))));
/// assert!(search.retry.is_some() && search.breaker.is_none());
/// # Ok::<(), tidewall::config::Invalid>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Policies {
    /// The config in `configs` this instance starts from (instances only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
    /// The whole call's deadline, or `"off"` (default: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<Toggle<Duration>>,
    /// Each attempt's timeout, or `"off"` (default: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt_timeout: Option<Toggle<Duration>>,
    /// No attempt starts with less than this left before the deadline (default zero).
    #[serde(
        default,
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub min_attempt_time: Option<Duration>,
    /// `[.rate_limit]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitConfig>,
    /// `[.bulkhead]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bulkhead: Option<BulkheadConfig>,
    /// `[.retry]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryConfig>,
    /// `[.budget]`: the retry budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<BudgetConfig>,
    /// `[.breaker]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub breaker: Option<BreakerConfig>,
    /// `[.adaptive]`: an adaptive concurrency limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adaptive: Option<AdaptiveConfig>,
    /// `[.hedge]`: hedging, for [`Registry::hedge`](super::Registry::hedge).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hedge: Option<HedgeConfig>,
    /// `[.chaos]`: fault injection (feature `chaos`).
    #[cfg(feature = "chaos")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chaos: Option<super::ChaosConfig>,
    /// `[.keys]`: the key table of keyed policies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<KeysConfig>,
    /// `[.http]`: the instance as an HTTP client (feature `http`).
    #[cfg(feature = "http")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<super::HttpConfig>,
}

impl Config {
    /// Reads a TOML configuration and [validates](Self::validate) it.
    ///
    /// ```
    /// use tidewall::config::Config;
    ///
    /// let err = Config::from_toml("[instances.a.breaker]\nfailur_rate = 0.5\n").unwrap_err();
    /// assert!(err.to_string().contains("unknown field `failur_rate`"), "{err}");
    /// ```
    ///
    /// # Errors
    ///
    /// [`Invalid`]: the text is not TOML or not this format ([`Problem::Syntax`], with the
    /// parser's line and column), or a value breaks a rule (with its key path).
    #[cfg(feature = "toml")]
    pub fn from_toml(text: &str) -> Result<Self, Invalid> {
        let config: Self = toml::from_str(text)
            .map_err(|e| Invalid::new(String::new(), Problem::Syntax(e.to_string())))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every layer and every instance through the policy builders, without building
    /// anything for use: the first problem found, with its key path.
    ///
    /// ```
    /// use tidewall::config::{BulkheadConfig, Config, Policies};
    ///
    /// let mut config = Config::default();
    /// let mut orders = Policies::default();
    /// orders.bulkhead = Some(BulkheadConfig::default()); // no max_concurrent anywhere
    /// config.instances.insert("orders".into(), orders);
    /// assert_eq!(
    ///     config.validate().unwrap_err().to_string(),
    ///     "instances.orders.bulkhead.max_concurrent: must be set (it has no default)"
    /// );
    /// ```
    ///
    /// # Errors
    ///
    /// The first [`Invalid`] setting, in the order: `base` keys outside instances, the
    /// defaults, each config by name, each instance by name. The defaults and a config may
    /// leave out keys that have no default (an instance sets them); an instance that has a
    /// section, itself or through its base, may not. A layer is judged with the defaults of
    /// the keys it leaves out that have one: a `max_wait = "0s"` without `max_queue = 0` meets
    /// the default queue, and is refused at that key. Settings of the defaults or a config
    /// that only contradict each other (a `Conflict`, such as error and hang rates above 1
    /// together) are judged where an instance uses them: here for an
    /// instance that has the section, otherwise when a registry or
    /// [`Instance`](crate::config::Instance) builds that policy for a name.
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.defaults.base.is_some() {
            return Err(Invalid::new(
                "defaults.base",
                Problem::NotHere(ONLY_INSTANCES),
            ));
        }
        if let Some(name) = self
            .configs
            .iter()
            .find_map(|(n, p)| p.base.as_ref().map(|_| n))
        {
            return Err(Invalid::new(
                format!("configs.{}.base", key(name)),
                Problem::NotHere(ONLY_INSTANCES),
            ));
        }
        Instance::new("defaults", vec![("defaults".to_owned(), &self.defaults)]).check(false)?;
        for (name, config) in &self.configs {
            let layers = vec![
                (format!("configs.{}", key(name)), config),
                ("defaults".to_owned(), &self.defaults),
            ];
            Instance::new(name, layers).check(false)?;
        }
        for name in self.instances.keys() {
            self.instance(name)?.check(true)?;
        }
        Ok(())
    }

    /// The instance named `name`, over its base and the defaults; a name the file does not
    /// declare gets the defaults alone.
    ///
    /// ```
    /// use tidewall::config::Config;
    ///
    /// let config = Config::from_toml(r#"
    ///     [defaults.bulkhead]
    ///     max_concurrent = 16
    ///     [instances.orders.bulkhead]
    ///     max_queue = 0
    /// "#)?;
    /// let orders = config.instance("orders")?.bulkhead()?.build()?;
    /// assert_eq!((orders.name(), orders.capacity()), ("orders", 16));
    /// let other = config.instance("anything")?.bulkhead()?.build()?;
    /// assert_eq!(other.capacity(), 16);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Problem::UnknownBase`] for a `base` that `configs` lacks.
    pub fn instance<'a>(&'a self, name: &'a str) -> Result<Instance<'a>, Invalid> {
        let mut layers = Vec::with_capacity(3);
        if let Some(own) = self.instances.get(name) {
            layers.push((format!("instances.{}", key(name)), own));
            if let Some(base) = &own.base {
                let Some(config) = self.configs.get(base) else {
                    return Err(Invalid::new(
                        format!("instances.{}.base", key(name)),
                        Problem::UnknownBase(base.clone()),
                    ));
                };
                layers.push((format!("configs.{}", key(base)), config));
            }
        }
        layers.push(("defaults".to_owned(), &self.defaults));
        Ok(Instance::new(name, layers))
    }
}

const ONLY_INSTANCES: &str = "only an instance has a base";
