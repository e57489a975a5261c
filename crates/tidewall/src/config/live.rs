//! A pipeline made from an instance's configuration, following every reload.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use super::{Config, ConfiguredAdaptive, Invalid, Problem, Registry, key};
use crate::admission::Either;
use crate::breaker::CircuitBreaker;
use crate::bulkhead::Bulkhead;
use crate::classify::{Classify, DefaultClassifier};
use crate::pipeline::{Operation, Pipeline, RetryStage};
use crate::rate::RateLimiter;
use crate::rt::{Clock, DefaultRuntime};
use crate::sync::Swap;
use crate::{Deadline, Error, Name};

/// The pipeline a configuration makes: each stage there when the instance has its section,
/// calls in flight limited by its bulkhead or its adaptive limiter.
pub type ConfiguredPipeline<R = DefaultRuntime> = Pipeline<
    R,
    Option<RateLimiter<R>>,
    Option<Either<Bulkhead<R>, ConfiguredAdaptive<R>>>,
    Option<RetryStage>,
    Option<CircuitBreaker<R>>,
>;

/// The pipeline of an instance, from a [`Registry`]: it follows every reload, its deadline,
/// attempt timeout and retry schedule included.
///
/// Got with [`Registry::pipeline`]. Its stages are the registry's policies of the same name
/// (so a breaker opened through the pipeline is open for
/// [`Registry::breaker`] too), in the pipeline's order: rate limit, bulkhead or adaptive
/// limiter, retry (with the retry budget, when the instance has one), breaker, each there
/// when the instance or its base has that section; `deadline`, `attempt_timeout` and
/// `min_attempt_time` come from the instance's layers. A [reload](Registry::reload) makes the
/// pipeline anew from the new configuration: a call started before it keeps the deadline,
/// timeouts and retry schedule it started with, while the policies it passes through (the
/// breaker, bulkhead or adaptive limiter, rate limiter and retry budget) are the registry's
/// shared ones and take their new settings at once, as [`Registry::reload`] says (its next
/// attempt may meet a breaker the new thresholds opened). Every call after the reload runs on
/// the new settings, and every handle sees the change. A reload that adds a section adds the
/// stage. One that removes a section removes the stage when no layer left (the defaults, a
/// base) gives that section; the registry keeps the policy built for it on those layers, so a
/// removed `[bulkhead]`, `[rate_limit]` or `[adaptive]` whose defaults cannot build one is
/// refused with the missing key's path (see [`Registry::reload`]).
///
/// Results are judged by the [default classifier](DefaultClassifier) (`Ok` succeeds, every
/// `Err` is a retryable failure) unless [`classify`](Self::classify) sets another, which the
/// handle keeps across reloads.
///
/// In a tower stack (feature `tower`), `PipelineLayer::new(handle)` runs every request
/// through it, following reloads as the handle does.
///
/// ```
/// use std::time::Duration;
/// use tidewall::config::{Config, Registry};
/// use tidewall::{Error, Rejected};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let registry = Registry::new(Config::from_toml(r#"
///     [instances.payments]
///     deadline = "1s"
///     [instances.payments.retry]
///     backoff = "constant"
///     initial_delay = "100ms"
///     max_attempts = 3
/// "#)?)?;
/// let payments = registry.pipeline("payments")?;
///
/// let mut attempts = 0;
/// let paid = payments.call(|| {
///     attempts += 1;
///     let fail = attempts < 3;
///     async move { if fail { Err("busy") } else { Ok("paid") } }
/// }).await;
/// assert_eq!((paid, attempts), (Ok("paid"), 3));
///
/// // A reload reaches the handle: the deadline is now 50 ms.
/// registry.reload(Config::from_toml("[instances.payments]\ndeadline = \"50ms\"\n")?)?;
/// let slow = payments.call(|| async {
///     tokio::time::sleep(Duration::from_millis(200)).await;
///     Ok::<_, &str>("late")
/// }).await;
/// assert_eq!(slow, Err(Error::Rejected(Rejected::DeadlineExceeded)));
/// # Ok(()) }
/// ```
pub struct LivePipeline<R = DefaultRuntime, K = DefaultClassifier> {
    current: Arc<Swap<ConfiguredPipeline<R>>>,
    classify: K,
}

impl<R, K: Clone> Clone for LivePipeline<R, K> {
    fn clone(&self) -> Self {
        Self {
            current: Arc::clone(&self.current),
            classify: self.classify.clone(),
        }
    }
}

impl<R: Clock, K> fmt::Debug for LivePipeline<R, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LivePipeline")
            .field("name", &self.current.load_full().name())
            .finish_non_exhaustive()
    }
}

impl<R: Clock, K> LivePipeline<R, K> {
    /// Calls `op` through the pipeline the configuration in force makes (see
    /// [`Pipeline::call`]).
    ///
    /// **Cancel safety:** as [`Pipeline::call`]: dropping the future releases everything it
    /// holds.
    ///
    /// # Errors
    ///
    /// As [`Pipeline::call`].
    pub async fn call<F, Fut, T, E>(&self, op: F) -> Result<T, Error<E>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        K: Classify<T, E>,
    {
        self.call_before(Deadline::none(), op).await
    }

    /// Like [`call`](Self::call), also bounded by the caller's `deadline`.
    ///
    /// **Cancel safety:** as [`call`](Self::call).
    ///
    /// # Errors
    ///
    /// As [`Pipeline::call`].
    pub async fn call_before<F, Fut, T, E>(&self, deadline: Deadline, op: F) -> Result<T, Error<E>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        K: Classify<T, E>,
    {
        self.call_operation(deadline, op).await
    }

    /// [`call_before`](Self::call_before) for any [`Operation`] (a front's own, which may
    /// end the call before the retry stage does).
    pub(crate) async fn call_operation<O, T, E>(
        &self,
        deadline: Deadline,
        op: O,
    ) -> Result<T, Error<E>>
    where
        O: Operation<Attempt: Future<Output = Result<T, E>>>,
        K: Classify<T, E>,
    {
        // Held for the whole call: a reload during it builds a new pipeline for the calls
        // after it, and this one keeps its deadline, timeouts and retry schedule.
        let pipeline = self.current.load_full();
        pipeline.judged(&self.classify, deadline, op).await
    }

    /// The pipeline in force now (the next reload replaces it; this one stays usable).
    pub fn pipeline(&self) -> Arc<ConfiguredPipeline<R>> {
        self.current.load_full()
    }

    /// The instance's name, which its metrics and spans carry.
    pub fn name(&self) -> Name {
        Name::from(self.current.load_full().name().to_owned())
    }

    /// Judges results with `classifier` instead (see [`PipelineBuilder::classify`]); wrap it
    /// in [`WithRetryAfter`](crate::classify::WithRetryAfter) or
    /// [`Hinted`](crate::classify::Hinted) to honour the operation's own `Retry-After`. The
    /// handle keeps it across reloads; other handles keep theirs.
    ///
    /// [`PipelineBuilder::classify`]: crate::pipeline::PipelineBuilder::classify
    pub fn classify<K2>(self, classifier: K2) -> LivePipeline<R, K2> {
        LivePipeline {
            current: self.current,
            classify: classifier,
        }
    }
}

/// A registry's record of a policy that is made anew on reload (a pipeline, a hedge): the
/// cell its live handles read, replaced whole.
pub(super) struct Cell<T>(Arc<Swap<T>>);

impl<T> Clone for Cell<T> {
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

impl<T> Cell<T> {
    pub(super) fn new(value: T) -> Self {
        Self(Arc::new(Swap::new(value)))
    }

    pub(super) fn replace(&self, value: T) {
        self.0.store(value);
    }

    /// The value in force now.
    pub(super) fn current(&self) -> Arc<T> {
        self.0.load_full()
    }

    /// What a handle reads: the cell itself, shared.
    pub(super) fn shared(&self) -> Arc<Swap<T>> {
        Arc::clone(&self.0)
    }
}

impl<R: Clock> Cell<ConfiguredPipeline<R>> {
    pub(super) fn handle(&self) -> LivePipeline<R> {
        LivePipeline {
            current: self.shared(),
            classify: DefaultClassifier,
        }
    }
}

/// The registry's policies a pipeline of `name` has under `config`, by kind: rate limit,
/// bulkhead, retry budget, breaker, adaptive limiter (a valid configuration gives an instance
/// a bulkhead or an adaptive limiter, not both).
pub(super) fn stages_of(config: &Config, name: &str) -> Result<[bool; 5], Invalid> {
    let instance = config.instance(name)?;
    Ok([
        instance.has(|p| p.rate_limit.is_some()),
        instance.has(|p| p.bulkhead.is_some()),
        instance.has(|p| p.retry.is_some()) && instance.has(|p| p.budget.is_some()),
        instance.has(|p| p.breaker.is_some()),
        instance.has(|p| p.adaptive.is_some()),
    ])
}

impl<R: Clock> Registry<R> {
    /// The pipeline of `name` under `config`, on the registry's policies of that name (made
    /// now if the registry does not hold them yet).
    pub(super) fn configured(
        &self,
        config: &Config,
        name: &str,
    ) -> Result<ConfiguredPipeline<R>, Invalid> {
        let instance = config.instance(name)?;
        let [limited, bulkheaded, budgeted, broken, adaptive] = stages_of(config, name)?;
        let limiter = limited.then(|| self.rate_limiter(name)).transpose()?;
        let bulkhead = if bulkheaded {
            Some(Either::Left(self.bulkhead(name)?))
        } else if adaptive {
            Some(Either::Right(self.adaptive_limiter(name)?))
        } else {
            None
        };
        let breaker = broken.then(|| self.breaker(name)).transpose()?;
        let retry = if instance.has(|p| p.retry.is_some()) {
            let budget = budgeted.then(|| self.retry_budget(name)).transpose()?;
            Some(RetryStage::new(
                instance.backoff()?,
                budget,
                instance.max_retry_after(),
            ))
        } else {
            None
        };
        let mut builder = Pipeline::builder()
            .runtime(self.runtime().clone())
            .name(Name::from(name.to_owned()))
            .min_attempt_time(instance.min_attempt_time());
        if let Some(deadline) = instance.deadline() {
            builder = builder.deadline(deadline);
        }
        if let Some(timeout) = instance.attempt_timeout() {
            builder = builder.attempt_timeout(timeout);
        }
        if let Some(seed) = instance.retry_seed() {
            builder = builder.seed(seed);
        }
        if let Some(listener) = self.listener() {
            builder = builder.on_event(listener);
        }
        builder
            .stages(limiter, bulkhead, retry, breaker)
            .build()
            .map_err(|e| Invalid::new(format!("instances.{}", key(name)), Problem::Rule(e)))
    }
}
