//! Policies from a configuration file, by name (feature `serde`; [`Config::from_toml`] needs
//! feature `toml`).
//!
//! A [`Config`] has three layers, each a set of [`Policies`]:
//!
//! * `[defaults]`: what every instance starts from;
//! * `[configs.<name>]`: named bases an instance may start from instead (resilience4j's
//!   `configs`), themselves over the defaults;
//! * `[instances.<name>]`: the instances, each over its `base` (if it names one) over the
//!   defaults.
//!
//! An instance's value for a key is its own, else its base's, else the defaults', else the
//! policy builder's default. An instance *has* a policy when it or its base has that section
//! (an empty `breaker = {}` is enough); the defaults only fill sections in. A name the file
//! does not declare gets the defaults alone (a registry makes no pipeline or HTTP client for
//! one, and a [strict](RegistryBuilder::strict) registry nothing at all).
//!
//! Every value goes through the same builder code would use, so a configuration is exactly as
//! strict as the builders: nothing is clamped or rounded, and the first bad value is reported
//! with its key path and the rule it breaks ([`Invalid`]):
//!
//! ```text
//! instances.payments.breaker.failure_rate: must be in [0.000001, 1] (kept in parts per million), got 1.5
//! ```
//!
//! Every key, its default and the builder call it becomes are listed in the repository's
//! `docs/CONFIG.md`, and on each section's type ([`BreakerConfig`], [`BulkheadConfig`], ...).
//!
//! Durations are strings in the strict [human grammar](tidewall_core::duration)
//! (`"250ms"`, `"5s"`, `"1h 30m"`); a setting that can be turned off takes `"off"`
//! ([`Toggle`]). Unknown keys are errors, so a typo never silently keeps a default.
//!
//! TOML is the documented format:
//!
//! ```
//! use std::time::Duration;
//! use tidewall::breaker::Window;
//! use tidewall::config::{Config, Registry};
//!
//! let text = r#"
//!     [defaults.breaker]
//!     failure_rate = 0.5
//!     minimum_calls = 20
//!     window = "30s"
//!     break_duration = "5s"
//!
//!     [defaults.retry]
//!     max_attempts = 3
//!     initial_delay = "100ms"
//!     max_delay = "2s"
//!
//!     [configs.critical.breaker]
//!     failure_rate = 0.25
//!     break_duration = "30s"
//!
//!     [instances.payments]
//!     base = "critical"
//!     deadline = "2s"
//!     attempt_timeout = "500ms"
//!     breaker = {}
//!     retry = {}
//!     [instances.payments.bulkhead]
//!     max_concurrent = 32
//!     max_queue = 0
//!
//!     [instances.search.rate_limit]
//!     count = 100
//!     period = "1s"
//! "#;
//! let config = Config::from_toml(text)?;
//! let payments = config.instance("payments")?;
//! assert_eq!(payments.deadline(), Some(Duration::from_secs(2)));
//! assert_eq!(payments.backoff()?.max_attempts_total(), 3);
//!
//! # tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build()?.block_on(async {
//! let registry = Registry::new(config)?;
//! let breaker = registry.breaker("payments")?;
//! // The window comes from the defaults, under the instance's base.
//! assert_eq!(breaker.policy().window(), Window::Time { span: Duration::from_secs(30), buckets: 10 });
//! # Ok::<(), tidewall::config::Invalid>(()) })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! YAML, JSON and any other serde format work too: [`Config`] is `Deserialize` (check it with
//! [`Config::validate`] after reading it) and `Serialize`, so an admin endpoint can print the
//! configuration in force.
//!
//! A [`Registry`] builds the policies of a configuration once and hands out shared handles by
//! name: breakers, bulkheads, adaptive limiters ([`AdaptiveConfig`]), rate limiters, retry
//! budgets, hedges ([`HedgeConfig`], [`Registry::hedge`], a [`LiveHedge`]) and (feature
//! `chaos`) fault injectors (`ChaosConfig`, [`Registry::chaos`]); an instance's whole pipeline
//! ([`Registry::pipeline`], a [`LivePipeline`]); and keyed tables, a policy per key
//! ([`Registry::keyed_breaker`] and its siblings, bounded by the instance's `[keys]`); and
//! (feature `http`) an instance as an HTTP client, its sections per host
//! (`Registry::http_client`, the `[http]` section: `HttpConfig`), for the reqwest
//! middleware or the tower client layer. A [reload](Registry::reload) reaches all of them. [`Config::instance`] gives one instance's
//! builders, to add what a file cannot say (a state-change listener, a classifier) before
//! building.

/// A name as a key path writes it: bare when TOML would write it bare, quoted otherwise
/// (`instances."api.v2".breaker`), so a path reads back unambiguously.
fn key(name: &str) -> std::borrow::Cow<'_, str> {
    let bare = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if bare {
        name.into()
    } else {
        format!("{name:?}").into()
    }
}

mod adaptive;
#[cfg(feature = "chaos")]
mod chaos;
mod discipline;
mod error;
mod hedge;
#[cfg(feature = "http")]
mod http;
mod human;
mod instance;
mod keyed;
mod layers;
mod live;
mod registry;
mod sections;
#[cfg(all(feature = "watch", feature = "toml"))]
mod watch;

pub use adaptive::ConfiguredAdaptive;
pub use error::{Invalid, Problem};
pub use hedge::LiveHedge;
pub use human::Toggle;
pub use instance::Instance;
pub use keyed::KeyedTable;
pub use layers::{Config, Policies};
pub use live::{ConfiguredPipeline, LivePipeline};
pub use registry::{Registry, RegistryBuilder, Reload};
#[cfg(feature = "chaos")]
pub use sections::ChaosConfig;
pub use sections::{
    AdaptiveConfig, AlgorithmKind, BackoffKind, BreakerConfig, BudgetConfig, BulkheadConfig,
    DisciplineKind, HedgeConfig, JitterKind, KeysConfig, RateLimitConfig, RetryConfig,
};
#[cfg(feature = "http")]
pub use sections::{ClientErrors, HttpConfig};
#[cfg(all(feature = "watch", feature = "toml"))]
pub use watch::{ConfigWatch, watch_file_on};
