//! Named policy instances built from a configuration.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use super::keyed::{Retuned, Tables};
use super::live::{Cell, LivePipeline, stages_of};
use super::{Config, ConfiguredAdaptive, Invalid, Problem, key};
use crate::Name;
use crate::breaker::CircuitBreaker;
use crate::budget::RetryBudget;
use crate::bulkhead::Bulkhead;
use crate::rate::RateLimiter;
use crate::rt::{Clock, DefaultRuntime};
use crate::sync::{Mutex, lock};
use crate::telemetry::Listener;
use std::sync::Arc;

/// The policies of a configuration, by instance name: one circuit breaker, bulkhead,
/// adaptive limiter, rate limiter, retry budget and hedge per name, shared by everyone who
/// asks for it.
///
/// Building the registry validates the whole configuration and builds every policy an
/// instance has (its own sections and its base's), so they are there to list from the start
/// (for a health or admin endpoint). An instance with a `[keys]` table is keyed: its
/// breaker, bulkhead, rate limit and adaptive sections are made per key by the table asked
/// for with its key type ([`keyed_breaker`](Self::keyed_breaker) and the like), so none of
/// them is built up front nor listed by [`breakers`](Self::breakers) and the like until
/// something asks for the plain policy of that name (its [`pipeline`](Self::pipeline), say).
/// Asking for a policy of a name the file does not declare,
/// or a kind the instance has no section for, builds it from the layers there are (the
/// defaults, say) on first use and keeps it: get-or-create, as resilience4j's registries do
/// (a [strict](RegistryBuilder::strict) registry refuses undeclared names instead). A
/// [pipeline](Self::pipeline) or an [HTTP client](Self::http_client) is made only for a
/// declared instance: its stages are the sections the instance has, so a misspelt name would
/// otherwise get a stack of none ([`Problem::Undeclared`]).
/// The registry holds at most [`max_instances`](RegistryBuilder::max_instances) policies of
/// each kind, and keeps a place in each for every declared instance, so names taken from
/// requests can neither grow it without bound nor take a declared instance's place.
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
    /// The configuration in force: replaced whole by `reload`.
    config: Mutex<Arc<Config>>,
    /// Serializes reloads.
    reloading: Mutex<()>,
    rt: R,
    max_instances: usize,
    /// Every lookup and reload asks for declared instances only.
    strict: bool,
    breakers: Mutex<BTreeMap<Name, CircuitBreaker<R>>>,
    bulkheads: Mutex<BTreeMap<Name, Bulkhead<R>>>,
    limiters: Mutex<BTreeMap<Name, RateLimiter<R>>>,
    budgets: Mutex<BTreeMap<Name, RetryBudget>>,
    adaptive: Mutex<BTreeMap<Name, ConfiguredAdaptive<R>>>,
    pub(super) hedges: super::hedge::Cells<R>,
    #[cfg(feature = "chaos")]
    pub(super) chaos: super::chaos::Handles<R>,
    /// Locked before any policy map: making a pipeline makes its policies.
    pipelines: Mutex<BTreeMap<Name, Cell<super::ConfiguredPipeline<R>>>>,
    pub(super) keyed_breakers: Tables,
    pub(super) keyed_bulkheads: Tables,
    pub(super) keyed_limiters: Tables,
    pub(super) keyed_adaptive: Tables,
    #[cfg(feature = "http")]
    pub(super) clients: super::http::Clients<R>,
    /// Told of every event of every policy and pipeline the registry makes.
    pub(super) events: Option<Listener>,
    /// Its reload series, labelled with its name.
    reloads: crate::telemetry::ReloadCounters,
}

/// Configures a [`Registry`]: its runtime and its bound.
#[must_use]
pub struct RegistryBuilder<R = DefaultRuntime> {
    config: Config,
    rt: R,
    max_instances: usize,
    strict: bool,
    events: Option<Listener>,
    name: Name,
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
            strict: false,
            events: None,
            name: Name::from_static("registry"),
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
            strict: self.strict,
            events: self.events,
            name: self.name,
        }
    }

    /// The registry's name (default `registry`): the `registry` label of its reload series
    /// (`tidewall_config_reloads_total`, `tidewall_config_last_reload_successful`,
    /// `tidewall_config_last_reload_success_timestamp_seconds`) and its reload's `tracing`
    /// events. Give each registry of a process its own, or their reloads count in one set of
    /// series, each setting the last-reload gauges over the other's (a refused reload of one
    /// hidden by the next build or reload of another).
    ///
    /// ```
    /// use tidewall::config::{Config, Registry};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let config = Config::from_toml("[instances.db.bulkhead]\nmax_concurrent = 1\n")?;
    /// let registry = Registry::builder(config).name("outbound").build()?;
    /// assert_eq!(registry.name(), "outbound");
    /// # Ok(()) }
    /// ```
    pub fn name(mut self, name: impl Into<Name>) -> Self {
        self.name = name.into();
        self
    }

    /// Tells `listener` of every event of every policy and pipeline the registry makes (each
    /// [`Event`](crate::telemetry::Event) names its policy and instance), as the builders'
    /// own `on_event` would: on the thread the event happens on, so keep it short. Retry
    /// budgets have no events. A reload tells of the resets it causes on its own thread, once
    /// the new configuration is in force; a listener may look the registry up then (and
    /// finds the new configuration), but its own [`reload`](Registry::reload) is refused
    /// ([`Problem::Reentrant`]): reload from another task.
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use tidewall::config::{Config, Registry};
    /// use tidewall::telemetry::EventKind;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let seen = Arc::new(Mutex::new(Vec::new()));
    /// let log = Arc::clone(&seen);
    /// let registry = Registry::builder(Config::from_toml("[instances.db.bulkhead]\nmax_concurrent = 1\nmax_queue = 0\n")?)
    ///     .on_event(move |event| {
    ///         if let EventKind::Rejected(why) = event.kind {
    ///             log.lock().unwrap().push(format!("{} {}: {why}", event.policy, event.name));
    ///         }
    ///     })
    ///     .build()?;
    /// let db = registry.bulkhead("db")?;
    /// let _held = db.try_acquire()?;
    /// assert!(db.try_acquire().is_err());
    /// assert_eq!(seen.lock().unwrap().len(), 1, "{:?}", seen.lock().unwrap());
    /// # Ok(()) }
    /// ```
    pub fn on_event(
        mut self,
        listener: impl Fn(&crate::telemetry::Event<'_>) + Send + Sync + 'static,
    ) -> Self {
        self.events = Some(Listener::new(listener));
        self
    }

    /// The most policies of each kind the registry holds (default 10,000). Every declared
    /// instance keeps a place in each kind (a file may declare at most this many); a name
    /// the file does not declare gets [`Problem::Full`] when only reserved places are left.
    pub fn max_instances(mut self, max: usize) -> Self {
        self.max_instances = max;
        self
    }

    /// Makes policies only for the instances the configuration declares (default `false`).
    ///
    /// By default a policy of a name the file does not declare is made from the layers there
    /// are (the defaults) on first use, as resilience4j's registries do, and an instance a
    /// reload removes leaves its policies on those layers ([`Reload::removed`] names them).
    /// Strict, a misspelt name is an error instead: every lookup of a name the file does not
    /// declare is refused with [`Problem::Undeclared`], and a reload that removes an instance
    /// the registry holds a policy of with [`Problem::Removed`]. Pipelines and HTTP clients
    /// are made only for declared instances either way.
    ///
    /// ```
    /// use tidewall::config::{Config, Problem, Registry};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let config = Config::from_toml("[instances.payments.breaker]\nconsecutive_failures = 3\n")?;
    /// let registry = Registry::builder(config).strict(true).build()?;
    /// assert!(registry.breaker("payments").is_ok());
    /// let typo = registry.breaker("paymnets").unwrap_err();
    /// assert_eq!((typo.path(), typo.problem()), ("instances.paymnets", &Problem::Undeclared));
    ///
    /// let removed = registry.reload(Config::from_toml("[instances.search.breaker]\n")?);
    /// assert_eq!(removed.unwrap_err().problem(), &Problem::Removed);
    /// # Ok(()) }
    /// ```
    pub fn strict(mut self, strict: bool) -> Self {
        self.strict = strict;
        self
    }

    /// Validates the configuration and builds every policy its instances have (a keyed
    /// instance's tables excepted: see [`Registry`]).
    ///
    /// # Errors
    ///
    /// The configuration's first [`Invalid`] setting, or [`Problem::Full`] when the
    /// instances declared exceed [`max_instances`](Self::max_instances).
    pub fn build(self) -> Result<Registry<R>, Invalid>
    where
        R: Clock,
    {
        check(&self.config, self.max_instances)?;
        let registry = Registry {
            config: Mutex::new(Arc::new(self.config)),
            reloading: Mutex::default(),
            rt: self.rt,
            max_instances: self.max_instances,
            strict: self.strict,
            breakers: Mutex::default(),
            bulkheads: Mutex::default(),
            limiters: Mutex::default(),
            budgets: Mutex::default(),
            adaptive: Mutex::default(),
            hedges: Mutex::default(),
            #[cfg(feature = "chaos")]
            chaos: Mutex::default(),
            pipelines: Mutex::default(),
            keyed_breakers: Mutex::default(),
            keyed_bulkheads: Mutex::default(),
            keyed_limiters: Mutex::default(),
            keyed_adaptive: Mutex::default(),
            #[cfg(feature = "http")]
            clients: Mutex::default(),
            events: self.events,
            reloads: crate::telemetry::ReloadCounters::new(self.name),
        };
        registry.build_declared()?;
        registry.reloads.built();
        Ok(registry)
    }
}

/// For which names a kind of policy is made on first use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Made {
    /// Any name (the defaults make one the file does not declare), unless the registry is
    /// strict.
    ForAnyName,
    /// Declared instances only: a stack (a pipeline, an HTTP client) is the sections its
    /// instance has, so an undeclared name would get one of no stage.
    ForDeclared,
}

/// A setting checked before it is applied cannot be refused.
fn applied<T: fmt::Debug>(result: Result<T, crate::ConfigError>) -> Option<T> {
    debug_assert!(result.is_ok(), "a checked setting was refused: {result:?}");
    result.ok()
}

/// Validates `config` and checks that its instances fit in the registry.
fn check(config: &Config, max_instances: usize) -> Result<(), Invalid> {
    config.validate()?;
    if config.instances.len() > max_instances {
        return Err(Invalid::new(
            "instances",
            Problem::Full { max: max_instances },
        ));
    }
    Ok(())
}

/// Whether an instance whose sections `has` tells is an HTTP client (it has `[http]`).
#[allow(unused_variables)]
fn is_http_client(has: &impl Fn(fn(&super::Policies) -> bool) -> bool) -> bool {
    #[cfg(feature = "http")]
    return has(|p| p.http.is_some());
    #[cfg(not(feature = "http"))]
    false
}

/// A snapshot of `map`, by name.
pub(super) fn listed<T: Clone>(map: &Mutex<BTreeMap<Name, T>>) -> Vec<(Name, T)> {
    listed_from(&lock(map))
}

/// A snapshot of a map already locked, by name.
pub(super) fn listed_from<T: Clone>(map: &BTreeMap<Name, T>) -> Vec<(Name, T)> {
    map.iter()
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect()
}

/// Keeps the first of each name, in order.
fn first_of_each(names: &mut Vec<Name>) {
    let mut seen = std::collections::BTreeSet::new();
    names.retain(|name| seen.insert(name.clone()));
}

/// What a [`Registry::reload`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Reload {
    /// Policies that took their new settings in place, state and permits kept (fault
    /// injectors included; a keyed table counts once, however many keys it retuned, and an
    /// HTTP client once, however many tables).
    pub retuned: usize,
    /// Breakers whose window changed shape: reset to closed with a state-change event (an
    /// [HTTP client](Registry::http_client)'s name when any of its hosts' breakers was, a
    /// [keyed table](Registry::keyed_breaker)'s when any of its keys' was; each name once). A
    /// breaker forced open or closed by hand stays forced, and is not listed
    /// ([`Reconfigured::KeptForced`](crate::breaker::Reconfigured::KeptForced)). They count
    /// in `retuned` too.
    pub reset: Vec<Name>,
    /// Instances whose adaptive limiter (or keyed table of them, or HTTP client's per-host
    /// limits; each name once) had its
    /// algorithm changed (another kind, or other settings of its own: a default written out
    /// is no change): it starts learning again from the new initial limit, every key of a
    /// table. The others keep what they learned. Both count in `retuned` too.
    pub relearning: Vec<Name>,
    /// [Pipelines](Registry::pipeline) made anew from the new configuration: their handles
    /// run every call after the reload on it.
    pub pipelines: usize,
    /// Policies of instances the new configuration declares that the registry did not hold
    /// (a keyed instance's tables are made on first use, and not counted here).
    pub built: usize,
    /// Instances the configuration before declared and the new one does not, whose policies
    /// the registry holds, by name: they now run on the layers that remain (the defaults),
    /// and count in `retuned`. A [strict](RegistryBuilder::strict) registry refuses such a
    /// reload, and every registry refuses one that removes a pipeline's or HTTP client's
    /// instance ([`Problem::Removed`]). A held keyed table whose instance set its own
    /// `[keys]` bound cannot fall back to the default bound: removing that instance is
    /// refused with [`Problem::Fixed`].
    pub removed: Vec<Name>,
}

impl<R: Clock> Registry<R> {
    /// The entry of `name` in `map`, made by `make` from the configuration in force if it is
    /// not there yet, for any name (the defaults make one the file does not declare) unless
    /// the registry is strict. A hit reads nothing else: the configuration is read only to
    /// make one.
    pub(super) fn held_or_made<T: Clone>(
        &self,
        map: &Mutex<BTreeMap<Name, T>>,
        name: &str,
        make: impl FnOnce(&Config) -> Result<T, Invalid>,
    ) -> Result<T, Invalid> {
        self.held_or_made_for(map, name, Made::ForAnyName, make)
    }

    /// As [`held_or_made`](Self::held_or_made), for declared instances only, strict or not.
    pub(super) fn held_or_made_declared<T: Clone>(
        &self,
        map: &Mutex<BTreeMap<Name, T>>,
        name: &str,
        make: impl FnOnce(&Config) -> Result<T, Invalid>,
    ) -> Result<T, Invalid> {
        self.held_or_made_for(map, name, Made::ForDeclared, make)
    }

    fn held_or_made_for<T: Clone>(
        &self,
        map: &Mutex<BTreeMap<Name, T>>,
        name: &str,
        made: Made,
        make: impl FnOnce(&Config) -> Result<T, Invalid>,
    ) -> Result<T, Invalid> {
        let mut map = lock(map);
        if let Some(found) = map.get(name) {
            return Ok(found.clone());
        }
        let config = self.config();
        let declared = config.instances.contains_key(name);
        if !declared && (made == Made::ForDeclared || self.strict) {
            let at = format!("instances.{}", key(name));
            return Err(Invalid::new(at, Problem::Undeclared));
        }
        // Every declared instance keeps a place (a file declares at most `max`), so names
        // from requests cannot crowd one out: they get what the declared ones leave.
        let max = self.max_instances;
        let reserved = || {
            config
                .instances
                .keys()
                .filter(|n| !map.contains_key(n.as_str()))
                .count()
        };
        if !declared && map.len().saturating_add(reserved()) >= max {
            return Err(Invalid::new(
                format!("instances.{}", key(name)),
                Problem::Full { max },
            ));
        }
        let made = make(&config)?;
        map.insert(Name::from(name.to_owned()), made.clone());
        Ok(made)
    }

    /// Builds the policies every declared instance has, that the registry does not hold yet.
    fn build_declared(&self) -> Result<usize, Invalid> {
        let held = || {
            lock(&self.breakers).len()
                + lock(&self.bulkheads).len()
                + lock(&self.limiters).len()
                + lock(&self.budgets).len()
                + lock(&self.adaptive).len()
                + lock(&self.hedges).len()
                + self.chaos_held()
                + self.clients_held()
        };
        let before = held();
        let config = self.config();
        for (name, policies) in &config.instances {
            let base = policies.base.as_ref().and_then(|b| config.configs.get(b));
            let has = |section: fn(&super::Policies) -> bool| {
                section(policies) || base.is_some_and(section)
            };
            // A keyed instance's policies are its tables', made with their key type on first
            // use: a plain one built here would be listed and gauged (a breaker closed for
            // ever) though no call goes through it.
            // An HTTP client's sections are its per-host policies: the same holds.
            let per_key = has(|p| p.keys.is_some()) || is_http_client(&has);
            let plain = |section: fn(&super::Policies) -> bool| has(section) && !per_key;
            if plain(|p| p.breaker.is_some()) {
                self.breaker(name)?;
            }
            if plain(|p| p.bulkhead.is_some()) {
                self.bulkhead(name)?;
            }
            if plain(|p| p.rate_limit.is_some()) {
                self.rate_limiter(name)?;
            }
            if has(|p| p.budget.is_some()) && !is_http_client(&has) {
                self.retry_budget(name)?;
            }
            if plain(|p| p.adaptive.is_some()) {
                self.adaptive_limiter(name)?;
            }
            if has(|p| p.hedge.is_some()) {
                self.hedge(name)?;
            }
            #[cfg(feature = "chaos")]
            if has(|p| p.chaos.is_some()) {
                self.chaos(name)?;
            }
            #[cfg(feature = "http")]
            if is_http_client(&has) {
                self.http_client(name)?;
            }
        }
        Ok(held() - before)
    }

    /// HTTP clients held.
    fn clients_held(&self) -> usize {
        #[cfg(feature = "http")]
        return lock(&self.clients).len();
        #[cfg(not(feature = "http"))]
        0
    }

    /// Applies `config` to every policy the registry holds, in place, without a restart.
    ///
    /// The new configuration is validated first and every policy's new settings are worked
    /// out before any is applied: an invalid configuration (or one under which a policy the
    /// registry holds could not be built, such as a bulkhead whose `max_concurrent` was only
    /// in a section now removed) is refused with its error, and the old one stays in force,
    /// whole. Then each policy takes its settings as its own `reconfigure` says:
    ///
    /// * calls in flight keep their permits; a bulkhead shrunk below what is held admits
    ///   nobody new until enough permits come back;
    /// * a breaker keeps its state and window when the window keeps its shape, and is reset
    ///   with a state-change event when it does not ([`Reload::reset`]);
    /// * a rate limiter keeps the cells it admitted; a retry budget keeps its window's
    ///   counts when the window keeps its shape;
    /// * an adaptive limiter takes its queue, wait, discipline and shares in place, and keeps
    ///   its algorithm and what it learned unless the algorithm changed (another kind, or
    ///   other values for its limits or its own keys): then it starts learning again from
    ///   the new initial limit ([`Reload::relearning`]). Callers already queued keep the
    ///   wait they started with;
    /// * a hedge takes its new delay and hedges for the calls that start after the reload,
    ///   and keeps its latency estimate and its budget, which takes a new ratio at once (see
    ///   [`LiveHedge`](super::LiveHedge)).
    ///
    /// Handles got before the reload are the same policies: they see the new settings.
    /// Policies of instances new in `config` are built; those of instances it no longer
    /// declares are kept, on the layers that remain (the defaults, say), and named in
    /// [`Reload::removed`]. A reload that removes the instance of a pipeline or HTTP client
    /// the registry holds (of any policy it holds, when it is
    /// [strict](RegistryBuilder::strict)) is refused with [`Problem::Removed`], at the path of
    /// one such instance (the pipelines' first by name, then the HTTP clients', then, when
    /// strict, the other policies'): the calls through it would lose every stage.
    ///
    /// A listener that panics as the reload applies (told of a reset it causes, say) leaves
    /// no reload half done: every policy still takes its settings and the reload is counted
    /// as applied; then the first such panic goes on to the caller.
    ///
    /// ```
    /// use tidewall::config::{Config, Registry};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let registry = Registry::new(Config::from_toml("[instances.orders.bulkhead]\nmax_concurrent = 2\nmax_queue = 0\n")?)?;
    /// let orders = registry.bulkhead("orders")?;
    /// let held = orders.try_acquire_owned()?;
    ///
    /// let reload = registry.reload(Config::from_toml("[instances.orders.bulkhead]\nmax_concurrent = 1\nmax_queue = 0\n")?)?;
    /// assert_eq!(reload.retuned, 1);
    /// assert_eq!((orders.capacity(), orders.in_flight()), (1, 1), "the held permit stays held");
    /// assert!(orders.try_acquire().is_err(), "and the new limit counts it");
    /// drop(held);
    /// assert!(orders.try_acquire().is_ok());
    /// # Ok(()) }
    /// ```
    ///
    /// With the `metrics` feature each reload counts in
    /// `tidewall_config_reloads_total{registry, outcome="applied"|"refused"}` (both series exist from
    /// the registry's start), [`reload_file`](Self::reload_file)'s unreadable or unparsable
    /// files included.
    ///
    /// # Errors
    ///
    /// The new configuration's first [`Invalid`] setting; [`Problem::Full`] when a kind
    /// holds too many policies to keep a place for every instance it declares (names the
    /// old file did not declare took them); [`Problem::Removed`] as above. Nothing changes
    /// then.
    pub fn reload(&self, config: Config) -> Result<Reload, Invalid> {
        self.counted(self.apply(config))
    }

    /// Counts a reload as applied or refused.
    fn counted(&self, reload: Result<Reload, Invalid>) -> Result<Reload, Invalid> {
        self.reloads.count(reload.is_ok());
        reload
    }

    fn apply(&self, config: Config) -> Result<Reload, Invalid> {
        let Some(_here) = ReloadingHere::enter(std::ptr::from_ref(self).addr()) else {
            return Err(Invalid::new("", Problem::Reentrant));
        };
        let _one_at_a_time = lock(&self.reloading);
        check(&config, self.max_instances)?;
        // Every map stays locked from planning to swapping the configuration, so no policy is
        // created from the old configuration after its new settings were worked out; the
        // pipelines stay locked until they are made anew, so none is made from the old one.
        // The plans are applied after that, with no map locked: a reconfigured breaker tells
        // its listeners, which may look the registry up.
        let mut pipelines = lock(&self.pipelines);
        let breakers = lock(&self.breakers);
        let bulkheads = lock(&self.bulkheads);
        let limiters = lock(&self.limiters);
        let budgets = lock(&self.budgets);
        let adaptive = lock(&self.adaptive);
        let hedges = lock(&self.hedges);
        #[cfg(feature = "chaos")]
        let chaos = lock(&self.chaos);
        #[cfg(feature = "http")]
        let clients = lock(&self.clients);
        let held_tables = [
            lock(&self.keyed_breakers),
            lock(&self.keyed_bulkheads),
            lock(&self.keyed_limiters),
            lock(&self.keyed_adaptive),
        ];
        let in_force = self.config();
        // Every name the registry holds a policy of, and apart those it holds a stack of.
        #[cfg(feature = "http")]
        let client_names = clients.keys();
        #[cfg(not(feature = "http"))]
        let client_names = std::iter::empty::<&Name>();
        let stacks: Vec<&Name> = pipelines.keys().chain(client_names).collect();
        let mut held: BTreeSet<&Name> = stacks.iter().copied().collect();
        held.extend(
            breakers
                .keys()
                .chain(bulkheads.keys())
                .chain(limiters.keys()),
        );
        held.extend(budgets.keys().chain(adaptive.keys()).chain(hedges.keys()));
        #[cfg(feature = "chaos")]
        held.extend(chaos.keys());
        held.extend(held_tables.iter().flat_map(|table| table.keys()));
        let undeclared = |name: &&Name| !config.instances.contains_key(name.as_str());
        let refused = stacks.into_iter().find(undeclared).or_else(|| {
            self.strict
                .then(|| held.iter().copied().find(undeclared))
                .flatten()
        });
        if let Some(name) = refused {
            let at = format!("instances.{}", key(name));
            return Err(Invalid::new(at, Problem::Removed));
        }
        let removed: Vec<Name> = held
            .into_iter()
            .filter(|name| undeclared(name) && in_force.instances.contains_key(name.as_str()))
            .cloned()
            .collect();
        let tables: Vec<(Name, Arc<dyn super::keyed::Table>)> = held_tables
            .iter()
            .flat_map(|held| held.iter().map(|(n, t)| (n.clone(), Arc::clone(t))))
            .collect();
        // Each kind needs a place for every declared instance and for every pipeline that will
        // have that stage, next to the policies it holds.
        let stages = pipelines
            .keys()
            .map(|name| Ok((name.as_str(), stages_of(&config, name)?)))
            .collect::<Result<Vec<_>, Invalid>>()?;
        // `stage`: the pipeline stage of the kind, if it is one.
        let places = |held: usize, holds: &dyn Fn(&str) -> bool, stage: Option<usize>| {
            let declared = config.instances.keys().map(String::as_str);
            let staged = stages
                .iter()
                .filter(|(_, has)| stage.is_some_and(|stage| has[stage]))
                .map(|(n, _)| *n);
            let new: BTreeSet<&str> = declared.chain(staged).filter(|n| !holds(n)).collect();
            held.saturating_add(new.len())
        };
        // The stages in `stages_of`'s order: rate limit, bulkhead, budget, breaker, adaptive.
        let needed = [
            places(breakers.len(), &|n| breakers.contains_key(n), Some(3)),
            places(bulkheads.len(), &|n| bulkheads.contains_key(n), Some(1)),
            places(limiters.len(), &|n| limiters.contains_key(n), Some(0)),
            places(budgets.len(), &|n| budgets.contains_key(n), Some(2)),
            places(adaptive.len(), &|n| adaptive.contains_key(n), Some(4)),
            places(hedges.len(), &|n| hedges.contains_key(n), None),
            #[cfg(feature = "chaos")]
            places(chaos.len(), &|n| chaos.contains_key(n), None),
            #[cfg(feature = "http")]
            places(clients.len(), &|n| clients.contains_key(n), None),
            places(pipelines.len(), &|n| pipelines.contains_key(n), None),
        ];
        // The keyed tables and the pipelines, like every map, keep a place for each declared
        // instance (see `held_or_made`).
        let tables_needed = held_tables
            .iter()
            .map(|held| places(held.len(), &|n| held.contains_key(n), None));
        if needed
            .into_iter()
            .chain(tables_needed)
            .any(|n| n > self.max_instances)
        {
            let max = self.max_instances;
            return Err(Invalid::new("instances", Problem::Full { max }));
        }
        let breaker_plans = breakers
            .iter()
            .map(|(name, b)| {
                Ok((
                    name.clone(),
                    b.clone(),
                    config.instance(name)?.breaker_on(())?,
                ))
            })
            .collect::<Result<Vec<_>, Invalid>>()?;
        let bulkhead_plans = bulkheads
            .iter()
            .map(|(name, b)| Ok((b.clone(), config.instance(name)?.bulkhead_on(())?)))
            .collect::<Result<Vec<_>, Invalid>>()?;
        let limiter_plans = limiters
            .iter()
            .map(|(name, l)| Ok((l.clone(), config.instance(name)?.rate_limiter_on(())?)))
            .collect::<Result<Vec<_>, Invalid>>()?;
        let budget_plans = budgets
            .iter()
            .map(|(name, b)| Ok((b.clone(), config.instance(name)?.retry_budget()?)))
            .collect::<Result<Vec<_>, Invalid>>()?;
        let adaptive_plans = adaptive
            .iter()
            .map(|(name, limiter)| {
                let instance = config.instance(name)?;
                let (algorithm, settings) = instance.adaptive_limiter_on(())?.split();
                // Compared as built, before any sample: a default written out is no change.
                let before = in_force.instance(name)?.adaptive_limiter_on(());
                let relearn = before.map_or(true, |b| b.split().0 != algorithm);
                Ok((
                    name.clone(),
                    limiter.clone(),
                    settings,
                    relearn.then_some(algorithm),
                ))
            })
            .collect::<Result<Vec<_>, Invalid>>()?;
        let hedge_plans = super::hedge::plans(&hedges, &config)?;
        #[cfg(feature = "chaos")]
        let chaos_plans = super::chaos::plans(&chaos, &config)?;
        #[cfg(feature = "http")]
        let client_plans = super::http::plans(&clients, &config, self.events.as_ref())?;
        for (name, table) in &tables {
            table.retune(&config, name, false)?;
        }

        let config = Arc::new(config);
        *lock(&self.config) = Arc::clone(&config);
        drop((
            breakers,
            bulkheads,
            limiters,
            budgets,
            adaptive,
            hedges,
            held_tables,
        ));
        #[cfg(feature = "chaos")]
        drop(chaos);
        #[cfg(feature = "http")]
        drop(clients);
        let mut reload = Reload {
            built: self.build_declared()?,
            removed,
            ..Reload::default()
        };
        for (name, cell) in pipelines.iter_mut() {
            // Checked above: its settings are valid and its policies have their places.
            match self.configured(&config, name) {
                Ok(pipeline) => {
                    cell.replace(pipeline);
                    reload.pipelines += 1;
                }
                Err(refused) => debug_assert!(false, "a checked pipeline was refused: {refused}"),
            }
        }
        drop(pipelines);

        // Each policy takes its settings whatever a listener does meanwhile (see `reload`).
        let mut steps = crate::telemetry::ListenerPanics::default();
        for (name, breaker, settings) in breaker_plans {
            let reconfigured = steps.run(|| applied(breaker.reconfigure(settings)));
            if reconfigured.flatten() == Some(crate::breaker::Reconfigured::Reset) {
                reload.reset.push(name);
            }
            reload.retuned += 1;
        }
        for (bulkhead, settings) in bulkhead_plans {
            steps.run(|| applied(bulkhead.reconfigure(settings)));
            reload.retuned += 1;
        }
        for (limiter, settings) in limiter_plans {
            steps.run(|| applied(limiter.reconfigure(settings)));
            reload.retuned += 1;
        }
        for (budget, policy) in budget_plans {
            steps.run(|| budget.reconfigure(policy));
            reload.retuned += 1;
        }
        for (cell, settings) in hedge_plans {
            let settings = self.live_settings(settings);
            steps.run(|| applied(cell.retune(settings)));
            reload.retuned += 1;
        }
        #[cfg(feature = "chaos")]
        for (chaos, settings) in chaos_plans {
            steps.run(|| applied(chaos.reconfigure(settings)));
            reload.retuned += 1;
        }
        for (name, limiter, settings, algorithm) in adaptive_plans {
            if algorithm.is_some() {
                reload.relearning.push(name);
            }
            steps.run(|| applied(limiter.retune(&settings, algorithm)));
            reload.retuned += 1;
        }
        #[cfg(feature = "http")]
        for (name, plan) in client_plans {
            if let Some(retuned) = steps.run(|| plan.apply()).flatten() {
                if retuned.breakers_reset > 0 {
                    reload.reset.push(name.clone());
                }
                if retuned.relearning {
                    reload.relearning.push(name);
                }
            }
            reload.retuned += 1;
        }
        for (name, table) in &tables {
            // Checked above; each table retunes every key it holds.
            let retuned = steps.run(|| table.retune(&config, name, true));
            debug_assert!(
                retuned.as_ref().is_none_or(Result::is_ok),
                "a checked table was refused: {retuned:?}"
            );
            match retuned {
                Some(Ok(Retuned::Reset)) => reload.reset.push(name.clone()),
                Some(Ok(Retuned::Relearning)) => reload.relearning.push(name.clone()),
                _ => {}
            }
            reload.retuned += 1;
        }
        // One instance's policies may each have been reset or relearning (its breaker and its
        // HTTP client, say); the name is listed once, where it first came.
        first_of_each(&mut reload.reset);
        first_of_each(&mut reload.relearning);
        // Applied whole: counted as such before a listener's panic goes on to the caller (it
        // skips `counted`).
        steps.resume(|| self.reloads.count(true));
        Ok(reload)
    }

    /// The circuit breaker named `name`, built on first use.
    ///
    /// # Errors
    ///
    /// [`Invalid`] when the layers for `name` do not make a valid breaker (only possible when
    /// neither the instance nor its base has a breaker section, so the defaults alone make
    /// it: a name the file does not declare, say), [`Problem::Full`], or
    /// [`Problem::Undeclared`] for an undeclared name in a [strict](RegistryBuilder::strict)
    /// registry.
    pub fn breaker(&self, name: &str) -> Result<CircuitBreaker<R>, Invalid> {
        self.held_or_made(&self.breakers, name, |config| {
            let mut builder = config.instance(name)?.breaker_on(self.rt.clone())?;
            if let Some(listener) = self.listener() {
                builder = builder.on_event(listener);
            }
            builder.build().map_err(|e| {
                Invalid::new(format!("instances.{}.breaker", key(name)), Problem::Rule(e))
            })
        })
    }

    /// The bulkhead named `name`, built on first use.
    ///
    /// # Errors
    ///
    /// As [`breaker`](Self::breaker); [`Problem::Missing`] when no layer sets
    /// `max_concurrent`.
    pub fn bulkhead(&self, name: &str) -> Result<Bulkhead<R>, Invalid> {
        self.held_or_made(&self.bulkheads, name, |config| {
            let mut builder = config.instance(name)?.bulkhead_on(self.rt.clone())?;
            if let Some(listener) = self.listener() {
                builder = builder.on_event(listener);
            }
            builder.build().map_err(|e| {
                Invalid::new(
                    format!("instances.{}.bulkhead", key(name)),
                    Problem::Rule(e),
                )
            })
        })
    }

    /// The rate limiter named `name`, built on first use.
    ///
    /// # Errors
    ///
    /// As [`breaker`](Self::breaker); [`Problem::Missing`] when no layer sets `count` or
    /// `period`.
    pub fn rate_limiter(&self, name: &str) -> Result<RateLimiter<R>, Invalid> {
        self.held_or_made(&self.limiters, name, |config| {
            let mut builder = config.instance(name)?.rate_limiter_on(self.rt.clone())?;
            if let Some(listener) = self.listener() {
                builder = builder.on_event(listener);
            }
            builder.build().map_err(|e| {
                Invalid::new(
                    format!("instances.{}.rate_limit", key(name)),
                    Problem::Rule(e),
                )
            })
        })
    }

    /// The retry budget named `name`, built on first use.
    ///
    /// # Errors
    ///
    /// As [`breaker`](Self::breaker).
    pub fn retry_budget(&self, name: &str) -> Result<RetryBudget, Invalid> {
        self.held_or_made(&self.budgets, name, |config| {
            let policy = config.instance(name)?.retry_budget()?;
            Ok(RetryBudget::new(policy, self.rt.now()))
        })
    }

    /// The adaptive limiter named `name`, built on first use, of the algorithm its layers
    /// name (see [`AdaptiveConfig`](super::AdaptiveConfig)), reporting as `policy`
    /// `adaptive` under this name.
    ///
    /// ```
    /// use tidewall::config::{Config, Registry};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let registry = Registry::new(Config::from_toml(r#"
    ///     [instances.inventory.adaptive]
    ///     algorithm = "gradient2"
    ///     min_limit = 1
    ///     initial_limit = 2
    ///     max_limit = 100
    /// "#)?)?;
    /// let inventory = registry.adaptive_limiter("inventory")?;
    /// let (a, b) = (inventory.try_acquire()?, inventory.try_acquire()?);
    /// assert!(inventory.try_acquire().is_err(), "the limit is 2");
    /// # drop((a, b));
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`breaker`](Self::breaker); [`Problem::Missing`] when no layer sets `algorithm`.
    pub fn adaptive_limiter(&self, name: &str) -> Result<ConfiguredAdaptive<R>, Invalid> {
        self.held_or_made(&self.adaptive, name, |config| {
            let mut builder = config
                .instance(name)?
                .adaptive_limiter_on(self.rt.clone())?;
            if let Some(listener) = self.listener() {
                builder = builder.on_event(listener);
            }
            builder.build().map_err(|e| {
                Invalid::new(
                    format!("instances.{}.adaptive", key(name)),
                    Problem::Rule(e),
                )
            })
        })
    }

    /// The pipeline of `name`, made on first use from the configuration in force (see
    /// [`LivePipeline`]): the registry's rate limiter, bulkhead, retry (with its budget) and
    /// breaker of that name, each when the instance or its base has the section, under the
    /// instance's `deadline`, `attempt_timeout` and `min_attempt_time`. Every handle follows
    /// reloads. A name the file does not declare is refused (it would get a pipeline of no
    /// stage), and so is a reload that removes this one's instance ([`Problem::Removed`]).
    ///
    /// # Errors
    ///
    /// As [`breaker`](Self::breaker) for each stage's policy; [`Problem::Undeclared`] for a
    /// name the file does not declare (never [`Problem::Full`]: every declared instance has
    /// its place).
    pub fn pipeline(&self, name: &str) -> Result<LivePipeline<R>, Invalid> {
        let cell = self.held_or_made_declared(&self.pipelines, name, |config| {
            Ok(Cell::new(self.configured(config, name)?))
        })?;
        Ok(cell.handle())
    }

    /// Every pipeline got so far, by name.
    pub fn pipelines(&self) -> Vec<(Name, LivePipeline<R>)> {
        lock(&self.pipelines)
            .iter()
            .map(|(name, cell)| (name.clone(), cell.handle()))
            .collect()
    }

    /// The registry's listener, as a builder's `on_event` takes it.
    pub(super) fn listener(
        &self,
    ) -> Option<impl Fn(&crate::telemetry::Event<'_>) + Send + Sync + 'static> {
        let listener = self.events.clone()?;
        Some(move |event: &crate::telemetry::Event<'_>| listener.forward(event))
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

    /// Every adaptive limiter so far, by name.
    pub fn adaptive_limiters(&self) -> Vec<(Name, ConfiguredAdaptive<R>)> {
        listed(&self.adaptive)
    }

    /// The fault injectors held (none without feature `chaos`).
    fn chaos_held(&self) -> usize {
        #[cfg(feature = "chaos")]
        return lock(&self.chaos).len();
        #[cfg(not(feature = "chaos"))]
        0
    }

    /// Every retry budget so far, by name.
    pub fn retry_budgets(&self) -> Vec<(Name, RetryBudget)> {
        listed(&self.budgets)
    }

    /// Reads the TOML file at `path` and [reloads](Self::reload) from it (as a `SIGHUP`
    /// handler would). Blocking: it reads the file on the calling thread.
    ///
    /// ```
    /// use tidewall::config::{Config, Registry};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let dir = tempfile::tempdir()?;
    /// let path = dir.path().join("tidewall.toml");
    /// std::fs::write(&path, "[instances.a.bulkhead]\nmax_concurrent = 2\n")?;
    /// let registry = Registry::new(Config::from_toml(&std::fs::read_to_string(&path)?)?)?;
    /// std::fs::write(&path, "[instances.a.bulkhead]\nmax_concurrent = 8\n")?;
    /// registry.reload_file(&path)?;
    /// assert_eq!(registry.bulkhead("a")?.capacity(), 8);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Problem::Read`] (with the file's path) when the file cannot be read; otherwise as
    /// [`reload`](Self::reload).
    #[cfg(feature = "toml")]
    pub fn reload_file(&self, path: impl AsRef<std::path::Path>) -> Result<Reload, Invalid> {
        let path = path.as_ref();
        let config = std::fs::read_to_string(path)
            .map_err(|e| Invalid::new(path.display().to_string(), Problem::Read(e.to_string())))
            .and_then(|text| Config::from_toml(&text));
        self.counted(config.and_then(|config| self.apply(config)))
    }

    /// The configuration in force: the one the registry was built from or last reloaded.
    pub fn config(&self) -> Arc<Config> {
        Arc::clone(&lock(&self.config))
    }

    /// The runtime whose clock the policies read.
    pub fn runtime(&self) -> &R {
        &self.rt
    }

    /// The registry's name ([`RegistryBuilder::name`]).
    pub fn name(&self) -> &str {
        self.reloads.registry()
    }

    /// Sets the gauges of every policy held (feature `metrics`): each breaker's state, each
    /// bulkhead's permits in flight, callers queued and capacity, each adaptive limiter's
    /// limit, calls in flight and callers queued, each rate limiter's cells available and
    /// each retry budget's balance, and each keyed table's keys held and bound, labelled
    /// with the instance's name (the table is in [`telemetry`](crate::telemetry)), and each
    /// [HTTP client](Self::http_client)'s
    /// ([`ClientPolicies::record_gauges`](crate::http::ClientPolicies::record_gauges)). A keyed
    /// table's keys have no gauges of their own. Call it before each scrape: gauges read
    /// this way cost the calls nothing.
    ///
    /// ```
    /// use metrics_util::debugging::DebuggingRecorder;
    /// use tidewall::config::{Config, Registry};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let recorder = DebuggingRecorder::new();
    /// let snapshotter = recorder.snapshotter();
    /// let registry = Registry::new(Config::from_toml("[instances.db.bulkhead]\nmax_concurrent = 4\n")?)?;
    /// let _held = registry.bulkhead("db")?.try_acquire_owned()?;
    /// metrics::with_local_recorder(&recorder, || registry.record_gauges());
    ///
    /// let in_flight = snapshotter.snapshot().into_vec().into_iter().find_map(|(key, _, _, value)| {
    ///     (key.key().name() == "tidewall_bulkhead_in_flight").then_some(value)
    /// });
    /// assert_eq!(in_flight, Some(metrics_util::debugging::DebugValue::Gauge(1.0.into())));
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "metrics")]
    pub fn record_gauges(&self) {
        crate::telemetry::record_gauges(self);
    }
}

thread_local! {
    /// The registries this thread is reloading, by address. A reload tells the listeners of
    /// the breakers it resets on its own thread, still holding the registry's reload lock, so
    /// a reload of the same registry from one of them must be refused, not wait for itself.
    static RELOADING: std::cell::RefCell<Vec<usize>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// One registry marked as reloading on this thread, for as long as it lives.
struct ReloadingHere(usize);

impl ReloadingHere {
    /// Marks `registry`, unless this thread is reloading it already.
    fn enter(registry: usize) -> Option<Self> {
        RELOADING.with_borrow_mut(|reloading| {
            if reloading.contains(&registry) {
                return None;
            }
            reloading.push(registry);
            Some(Self(registry))
        })
    }
}

impl Drop for ReloadingHere {
    fn drop(&mut self) {
        RELOADING.with_borrow_mut(|reloading| reloading.retain(|r| *r != self.0));
    }
}

impl<R> fmt::Debug for Registry<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("instances", &lock(&self.config).instances.len())
            .field("max_instances", &self.max_instances)
            .finish_non_exhaustive()
    }
}
