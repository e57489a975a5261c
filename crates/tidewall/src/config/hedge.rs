//! An instance's `[hedge]` section: a hedging policy by name, following every reload.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use super::instance::{Checking, Get, checked};
use super::live::Cell;
use super::sections::HedgeConfig;
use super::{Config, Instance, Invalid, Problem, Registry, key};
use crate::Name;
use crate::classify::{Classify, DefaultClassifier};
use crate::hedge::{Hedge, HedgeBuilder, HedgeFuture, Idempotent, MakeAttempt};
use crate::rt::{Clock, DefaultRuntime};
use crate::sync::{Mutex, MutexGuard, Swap};

/// The builder's fields whose key in a file is another.
const HEDGE_KEYS: &[(&str, &str)] = &[("quantile", "percentile")];

/// Latencies recorded before a percentile delay is used, when no layer says.
const DEFAULT_MIN_SAMPLES: u64 = 100;

/// The hedges a registry holds, by name.
pub(super) type Cells<R> = Mutex<BTreeMap<Name, Cell<Hedge<R>>>>;

/// A held hedge and the settings a reload gives it.
pub(super) type Plan<R> = (Cell<Hedge<R>>, HedgeBuilder<()>);

impl Instance<'_> {
    /// The hedging policy, on the default runtime (choose another with
    /// [`runtime`](HedgeBuilder::runtime)).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tidewall::config::Config;
    ///
    /// let config = Config::from_toml("[instances.search.hedge]\ndelay = \"40ms\"\nmax_hedges = 2\n")?;
    /// let hedge = config.instance("search")?.hedge()?.build()?;
    /// assert_eq!((hedge.delay(), hedge.max_hedges()), (Duration::from_millis(40), 2));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Invalid`] with the key path of the first setting the builder refuses, or of a
    /// `min_samples` that no layer's `percentile` would use.
    pub fn hedge(&self) -> Result<HedgeBuilder, Invalid> {
        self.hedge_on(DefaultRuntime::default())
    }

    pub(super) fn hedge_on<R>(&self, rt: R) -> Result<HedgeBuilder<R>, Invalid> {
        let get: Get<HedgeConfig> = |p| &p.hedge;
        let (s, at) = self.section("hedge", get, HedgeConfig::over);
        if s.min_samples.is_some() && s.percentile.is_none() {
            let path = self.key_path("hedge", get, HedgeConfig::sets, "min_samples", &at);
            let reason = "`min_samples` is used only with a `percentile`";
            let unused = crate::ConfigError::Conflict { reason };
            return Err(Invalid::new(path, Problem::Rule(unused)));
        }
        let mut b = Hedge::builder().name(self.named());
        if let Some(delay) = s.delay {
            b = b.delay(delay);
        }
        if let Some(n) = s.max_hedges {
            b = b.max_hedges(n);
        }
        if let Some(quantile) = s.percentile.and_then(super::Toggle::on) {
            b = b.percentile(quantile, s.min_samples.unwrap_or(DEFAULT_MIN_SAMPLES));
        }
        if let Some(ratio) = s.budget_ratio.and_then(super::Toggle::on) {
            b = b.budget_ratio(ratio);
        }
        let clock = Checking(std::time::Instant::now());
        checked(|| b.clone().runtime(clock).build())
            .map_err(|e| self.placed("hedge", get, HedgeConfig::sets, HEDGE_KEYS, &at, e))?;
        Ok(b.runtime(rt))
    }
}

/// The hedge of an instance, from a [`Registry`]: it follows every reload.
///
/// Got with [`Registry::hedge`]. A [reload](Registry::reload) that changes the instance's
/// `[hedge]` section gives the calls that start after it the new delay and number of hedges;
/// a call already running keeps the ones it started with. The latency estimate of a
/// percentile delay is kept across a reload unless `percentile` or `min_samples` changes
/// (another quantile starts a new estimate). The budget is kept too, with its window of
/// calls, while the instance has a `budget_ratio`: it is one budget for the calls before the
/// reload and after it, so it takes a new ratio at once, running calls included (as a
/// pipeline's retry budget does).
///
/// Attempts are judged by the [default classifier](DefaultClassifier) (`Ok` wins, every
/// `Err` may be hedged) unless [`classify`](Self::classify) sets another, which the handle
/// keeps across reloads.
///
/// In a tower stack (feature `tower`), `HedgeLayer::live(handle)` follows reloads as the
/// handle does; `HedgeLayer::new(handle.hedge())` keeps the hedge in force when the layer is
/// made.
///
/// ```
/// use std::time::Duration;
/// use tidewall::config::{Config, Registry};
/// use tidewall::hedge::Idempotent;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let registry = Registry::new(Config::from_toml("[instances.search.hedge]\ndelay = \"20ms\"\n")?)?;
/// let search = registry.hedge("search")?;
/// // The first copy is stuck; the hedge, sent after 20 ms, answers in 10.
/// let mut copies = 0;
/// let op = Idempotent(|| {
///     copies += 1;
///     let took = if copies == 1 { 1_000 } else { 10 };
///     async move {
///         tokio::time::sleep(Duration::from_millis(took)).await;
///         Ok::<_, ()>(copies)
///     }
/// });
/// assert_eq!(search.call(op).await, Ok(2));
///
/// // No hedges after this reload: the stuck copy is the answer.
/// registry.reload(Config::from_toml("[instances.search.hedge]\nmax_hedges = 0\n")?)?;
/// assert_eq!(search.hedge().max_hedges(), 0);
/// # Ok(()) }
/// ```
pub struct LiveHedge<R = DefaultRuntime, K = DefaultClassifier> {
    current: Arc<Swap<Hedge<R>>>,
    classify: K,
}

impl<R, K: Clone> Clone for LiveHedge<R, K> {
    fn clone(&self) -> Self {
        Self {
            current: Arc::clone(&self.current),
            classify: self.classify.clone(),
        }
    }
}

impl<R: Clock, K> fmt::Debug for LiveHedge<R, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LiveHedge")
            .field("hedge", &*self.current.load_full())
            .finish_non_exhaustive()
    }
}

impl<R: Clock, K> LiveHedge<R, K> {
    /// Runs `op` under the hedge in force now (see [`Hedge::call`]); the call keeps it to the
    /// end, whatever reloads happen meanwhile.
    ///
    /// **Cancel safety:** as [`HedgeFuture`]: dropping it drops every attempt still running.
    pub fn call<F, T, E>(&self, op: Idempotent<F>) -> HedgeFuture<'static, F, R, K>
    where
        F: MakeAttempt<Attempt: std::future::Future<Output = Result<T, E>>>,
        K: Classify<T, E> + Clone,
    {
        self.judged().into_call(op)
    }

    /// The hedge in force now, judging attempts with this handle's classifier.
    pub(crate) fn judged(&self) -> Hedge<R, K>
    where
        K: Clone,
    {
        self.current.load_full().judged_by(self.classify.clone())
    }

    /// The hedge in force now (the next reload replaces it; this one stays usable, with the
    /// estimate and budget it shares with its successor).
    pub fn hedge(&self) -> Hedge<R> {
        Hedge::clone(&self.current.load_full())
    }

    /// Judges attempts with `classifier` instead (see [`HedgeBuilder::classify`]). The handle
    /// keeps it across reloads; other handles keep theirs.
    ///
    /// ```
    /// use tidewall::classify::ErrorsWhere;
    /// use tidewall::config::{Config, Registry};
    /// use tidewall::hedge::Idempotent;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let registry = Registry::new(Config::from_toml("[instances.search.hedge]\nmax_hedges = 2\n")?)?;
    /// // Only an overloaded copy is worth another; "not found" ends the call at once.
    /// let search = registry.hedge("search")?.classify(ErrorsWhere(|e: &&str| *e == "overloaded"));
    /// let mut copies = 0;
    /// let answer = search
    ///     .call(Idempotent(|| {
    ///         copies += 1;
    ///         async { Err::<u32, _>("not found") }
    ///     }))
    ///     .await;
    /// assert_eq!((answer, copies), (Err("not found"), 1));
    /// # Ok(()) }
    /// ```
    pub fn classify<K2>(self, classifier: K2) -> LiveHedge<R, K2> {
        LiveHedge {
            current: self.current,
            classify: classifier,
        }
    }
}

impl<R: Clock> Cell<Hedge<R>> {
    fn handle(&self) -> LiveHedge<R> {
        LiveHedge {
            current: self.shared(),
            classify: DefaultClassifier,
        }
    }

    /// Replaces the hedge with the one `settings` build, which keeps what the hedge in force
    /// learned.
    pub(super) fn retune(&self, settings: HedgeBuilder<R>) -> Result<(), crate::ConfigError> {
        self.replace(settings.build_after(Some(&*self.current()))?);
        Ok(())
    }
}

impl<R: Clock> Registry<R> {
    /// The hedge named `name`, built on first use, following every reload (see
    /// [`LiveHedge`]). Not a pipeline stage: put the pipeline inside it
    /// (`hedge.call(Idempotent(|| pipeline.call(op)))`, every copy a call of its own, retried
    /// and limited as one) or it inside an attempt, and only around idempotent work.
    ///
    /// ```
    /// use tidewall::config::{Config, Registry};
    ///
    /// let registry = Registry::new(Config::from_toml("[defaults.hedge]\ndelay = \"30ms\"\n")?)?;
    /// let hedge = registry.hedge("anything")?.hedge();
    /// assert_eq!(hedge.delay(), std::time::Duration::from_millis(30));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`breaker`](Self::breaker).
    pub fn hedge(&self, name: &str) -> Result<LiveHedge<R>, Invalid> {
        let cell = self.held_or_made(&self.hedges, name, |config| {
            let settings = config.instance(name)?.hedge_on(())?;
            let hedge = self
                .live_settings(settings)
                .build()
                .map_err(|e| Invalid::new(hedge_path(name), Problem::Rule(e)))?;
            Ok(Cell::new(hedge))
        })?;
        Ok(cell.handle())
    }

    /// Every hedge so far, by name: the declared instances' with a `[hedge]` section from the
    /// start, and any other name's once asked for.
    ///
    /// ```
    /// use tidewall::config::{Config, Registry};
    ///
    /// let registry = Registry::new(Config::from_toml("[instances.search.hedge]\n[instances.pay]\n")?)?;
    /// let names: Vec<String> = registry.hedges().iter().map(|(name, _)| name.to_string()).collect();
    /// assert_eq!(names, ["search"]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn hedges(&self) -> Vec<(Name, LiveHedge<R>)> {
        super::registry::listed(&self.hedges)
            .into_iter()
            .map(|(name, cell)| (name, cell.handle()))
            .collect()
    }

    /// `settings` on the registry's runtime, telling the registry's listener.
    pub(super) fn live_settings(&self, settings: HedgeBuilder<()>) -> HedgeBuilder<R> {
        let settings = settings.runtime(self.runtime().clone());
        match self.listener() {
            Some(listener) => settings.on_event(listener),
            None => settings,
        }
    }
}

fn hedge_path(name: &str) -> String {
    format!("instances.{}.hedge", key(name))
}

/// The settings `config` gives each hedge held, checked.
pub(super) fn plans<R: Clock>(
    held: &MutexGuard<'_, BTreeMap<Name, Cell<Hedge<R>>>>,
    config: &Config,
) -> Result<Vec<Plan<R>>, Invalid> {
    held.iter()
        .map(|(name, cell)| Ok((cell.clone(), config.instance(name)?.hedge_on(())?)))
        .collect()
}
