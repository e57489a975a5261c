//! Hedging: when a call is slow, start a second (third…) copy and take whichever answers first.
//!
//! Hedging trades a little extra load for a much shorter tail: if the primary attempt has not
//! answered after the hedge delay, a hedge starts alongside it; the first success wins and
//! the losers are dropped (cancelled). Only for **idempotent** calls — the caller says so by
//! wrapping the operation in [`Idempotent`].
//!
//! * Delay: fixed, or a latency percentile (e.g. p95) from a streaming estimate of this
//!   hedge's own successful attempts (and, when a hedge wins, of the primary's time so far:
//!   a lower bound of its latency, so the estimate does not drift down to the hedges'
//!   alone), with a fixed fallback until enough samples exist.
//! * At most `max_hedges` extra attempts per call, and an optional hedge budget: hedges may
//!   add at most `budget_ratio` of the calls of the last 10 s (the [`RetryBudget`]
//!   accounting, without the per-second floor a retry budget has by default, so a quiet
//!   service hedges rarely: see [`HedgeBuilder::budget_ratio`]). These are the
//!   [retry engine](crate::retry)'s rules, as for a retry: they bound the attempts
//!   (`1 + max_hedges`) and the budget pays for each hedge.
//! * When every running attempt has failed, the next hedge starts at once instead of waiting
//!   for the delay (a failure's hint still holds it: see below). It is a hedge like the
//!   others: the budget, if any, pays for it, and it is reported as
//!   [`HedgeLaunched`](crate::telemetry::EventKind::HedgeLaunched) and counted in
//!   `tidewall_hedges_total`, so on a failing dependency, hedges are retries.
//! * A [classifier](crate::classify) ([`HedgeBuilder::classify`]) judges each attempt: a
//!   success wins, a retryable failure (by default every `Err`) leaves the others running and
//!   may start the next hedge, and any other verdict ends the call with that result at once
//!   (another copy would fail the same way). A retryable failure's hint (the classifier's
//!   [`retry_after`](crate::classify::Classify::retry_after), capped at 60 s as a retry's)
//!   holds every later hedge until it ends.
//!
//! ```
//! use std::time::Duration;
//! use tidewall::hedge::{Hedge, Idempotent};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), tidewall::ConfigError> {
//! let hedge = Hedge::builder().delay(Duration::from_millis(50)).max_hedges(1).build()?;
//! let mut calls = 0;
//! let answer = hedge
//!     .call(Idempotent(|| {
//!         calls += 1;
//!         // The first copy is stuck; the hedge answers in 10 ms.
//!         let latency = if calls == 1 { 10_000 } else { 10 };
//!         async move {
//!             tokio::time::sleep(Duration::from_millis(latency)).await;
//!             Ok::<_, ()>(calls)
//!         }
//!     }))
//!     .await;
//! assert_eq!(answer, Ok(2));
//! # Ok(()) }
//! ```

mod estimator;
mod future;

use std::time::Duration;

pub use future::HedgeFuture;

use self::estimator::LatencyEstimator;
use tidewall_core::backoff::{Backoff, Jitter};

use crate::ConfigError;
use crate::budget::{RetryBudget, RetryBudgetPolicy};
use crate::classify::DefaultClassifier;
use crate::retry::engine::RetryRules;
use crate::rt::{Clock, DefaultRuntime};
use crate::sync::Arc;

/// Marks an operation as safe to run more than once at the same time.
#[derive(Debug, Clone, Copy)]
pub struct Idempotent<F>(pub F);

/// Starts one attempt of a hedged call. Every `FnMut() -> impl Future` closure is one; the
/// tower [`HedgeService`](crate::tower::HedgeService) has its own (a service and a request),
/// so its response future is a named type.
pub trait MakeAttempt {
    /// One attempt.
    type Attempt: std::future::Future;

    /// Starts an attempt.
    fn make_attempt(&mut self) -> Self::Attempt;

    /// Whether another attempt can be started: false once the operation has given away what
    /// each attempt needs (the tower layer's request, when it could not be copied). The hedge
    /// asks after each attempt it starts and whenever it polls with a hedge pending; once the
    /// answer is false it launches nothing more and waits for nothing more (a failure's hint
    /// included), so once false it should stay false. A closure is always repeatable.
    fn repeatable(&self) -> bool {
        true
    }
}

impl<F: FnMut() -> Fut, Fut: std::future::Future> MakeAttempt for F {
    type Attempt = Fut;

    fn make_attempt(&mut self) -> Fut {
        self()
    }
}

/// A hedging policy. Cheap to clone: clones share the latency estimate and the budget.
pub struct Hedge<R = DefaultRuntime, K = DefaultClassifier> {
    inner: Arc<Inner<R>>,
    classify: K,
}

struct Inner<R> {
    // The retry engine's rules: the schedule bounds the attempts (1 + max_hedges), the
    // budget pays for each hedge.
    rules: RetryRules,
    // The fixed delay, and the percentile delay's fallback until enough samples exist.
    fixed: Duration,
    // A percentile hedge's estimate (none for a fixed delay), shared with the hedge a reload
    // builds from this one when it measures the same quantile.
    estimator: Option<Arc<LatencyEstimator>>,
    rt: R,
    telemetry: crate::telemetry::PolicyTelemetry,
}

impl<R: Clock, K: Clone> Clone for Hedge<R, K> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
            classify: self.classify.clone(),
        }
    }
}

impl<R: Clock, K> std::fmt::Debug for Hedge<R, K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hedge")
            .field("delay", &self.delay())
            .field("max_hedges", &self.max_hedges())
            .finish_non_exhaustive()
    }
}

/// Configures a [`Hedge`]: by default a fixed 100 ms delay, one hedge, no budget.
#[must_use]
#[derive(Debug, Clone)]
pub struct HedgeBuilder<R = DefaultRuntime, K = DefaultClassifier> {
    delay: Duration,
    percentile: Option<(f64, u64)>,
    max_hedges: u32,
    budget_ratio: Option<f64>,
    rt: R,
    classify: K,
    name: crate::Name,
    events: Option<crate::telemetry::Listener>,
}

impl Hedge {
    /// Starts a hedging policy on the default runtime.
    pub fn builder() -> HedgeBuilder {
        HedgeBuilder {
            delay: Duration::from_millis(100),
            percentile: None,
            max_hedges: 1,
            budget_ratio: None,
            rt: DefaultRuntime::default(),
            classify: DefaultClassifier,
            name: crate::Name::from_static("hedge"),
            events: None,
        }
    }
}

/// The budget policy's error about its `ratio`, named as this builder names it.
fn as_budget_ratio(error: ConfigError) -> ConfigError {
    match error {
        ConfigError::NotFinite { .. } => ConfigError::NotFinite {
            field: "budget_ratio",
        },
        ConfigError::OutOfRange { value, allowed, .. } => ConfigError::OutOfRange {
            field: "budget_ratio",
            value,
            allowed,
        },
        other => other,
    }
}

impl<R, K> HedgeBuilder<R, K> {
    /// Hedge after a fixed delay (also the fallback for a percentile delay).
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Hedge after the `quantile` (e.g. `0.95`) of recent successful latencies, once
    /// `min_samples` latencies were recorded; the fixed [`delay`](Self::delay) until then.
    /// A success records its latency; one won by a hedge also records what the losing primary
    /// had run by then (a lower bound of its latency, which keeps the estimate from drifting
    /// down to the hedges' faster latencies alone), so such a call counts twice. The estimate is
    /// the upper bound of the latency bucket the quantile falls in, as short as the latencies
    /// seen: unlike a fixed delay, it may be zero (when the quantile's successes took no
    /// time the clock could see, as every one does under a paused test clock), and then a
    /// call not answered at once hedges at once.
    ///
    /// The estimate is computed when `min_samples` latencies were recorded and then again
    /// whenever the count of latencies recorded is a multiple of 64 (a quantile costs a pass
    /// over every bucket, too much for each call): the delay is at most 64 calls behind the
    /// latencies recorded. It follows a change in latency once the new latencies weigh
    /// enough in the counts to move the quantile: a p50 once they are about half of them; a
    /// p95 once slower ones are about a twentieth, but faster ones only once the older, slower
    /// latencies have faded to under a twentieth, which takes several halvings (thousands of
    /// calls). Older latencies fade as the counts halve whenever they
    /// hold 4,096 latencies (after the first halving, every 2,048 or so), so the counts hold
    /// about 2,000 to 4,096 latencies once warm. Each count halves rounded down, so a latency
    /// seen once is gone at the next halving: however rare and slow, no latency holds even
    /// the 1.0 quantile (the slowest seen) for good.
    pub fn percentile(mut self, quantile: f64, min_samples: u64) -> Self {
        self.percentile = Some((quantile, min_samples));
        self
    }

    /// Extra attempts per call (default 1; 0 disables hedging). Each waits for the hedge
    /// delay, except after every running attempt has failed: then the next starts at once, so
    /// an operation that fails at once can be started `1 + n` times back to back (bound it
    /// with a budget, or keep `n` small). An attempt started early this way is a hedge all
    /// the same: [`HedgeLaunched`](crate::telemetry::EventKind::HedgeLaunched) and
    /// `tidewall_hedges_total` count it.
    pub fn max_hedges(mut self, n: u32) -> Self {
        self.max_hedges = n;
        self
    }

    /// Hedges may add at most `ratio` of the calls (e.g. `0.05` for 5 %), over a 10 s window
    /// (10 buckets of 1 s: a call counts for 9 to 10 s). Unlike a retry budget's default, a
    /// hedge budget has no per-second floor, and none can be set: only the calls in the
    /// window pay for hedges, and a hedge is granted while `ratio ×` those calls is at least
    /// the hedges already granted in it plus one (with `0.05`, 20 calls in the window for
    /// each hedge). A quiet service, or one just started, hedges rarely or not at all until
    /// enough calls have gone through.
    ///
    /// A hedge the budget refuses is not sent, and no later hedge of that call is scheduled;
    /// if every attempt then running fails, the budget is asked once more, at once, and a
    /// second refusal ends the call with the last failure.
    pub fn budget_ratio(mut self, ratio: f64) -> Self {
        self.budget_ratio = Some(ratio);
        self
    }

    /// The name its metrics and events carry (default `hedge`): see
    /// [`telemetry`](crate::telemetry).
    pub fn name(mut self, name: impl Into<crate::Name>) -> Self {
        self.name = name.into();
        self
    }

    /// Calls `listener` with each hedge launched (numbered from 1; one started at once because
    /// every running attempt failed is one too), each refusal by the hedge budget (a hedge
    /// asked for again, once every running attempt failed, and refused again is told twice),
    /// and how each call that resolved ended (`Succeeded`, `Failed` or `Ignored`, by the
    /// classifier's verdict on its answer; a call dropped first, nothing).
    /// On the caller's task, in the call (keep it short). See
    /// [`Event`](crate::telemetry::Event).
    ///
    /// ```
    /// use std::sync::atomic::{AtomicU32, Ordering};
    /// use std::sync::Arc;
    /// use std::time::Duration;
    /// use tidewall::hedge::{Hedge, Idempotent};
    /// use tidewall::telemetry::EventKind;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), tidewall::ConfigError> {
    /// let launched = Arc::new(AtomicU32::new(0));
    /// let counted = Arc::clone(&launched);
    /// let hedge = Hedge::builder()
    ///     .delay(Duration::from_millis(10))
    ///     .on_event(move |event| {
    ///         if let EventKind::HedgeLaunched { .. } = event.kind {
    ///             counted.fetch_add(1, Ordering::Relaxed);
    ///         }
    ///     })
    ///     .build()?;
    /// let slow = hedge
    ///     .call(Idempotent(|| async {
    ///         tokio::time::sleep(Duration::from_millis(50)).await;
    ///         Ok::<_, ()>(1)
    ///     }))
    ///     .await;
    /// assert_eq!(slow, Ok(1));
    /// assert_eq!(launched.load(Ordering::Relaxed), 1);
    /// # Ok(()) }
    /// ```
    pub fn on_event(
        mut self,
        listener: impl Fn(&crate::telemetry::Event<'_>) + Send + Sync + 'static,
    ) -> Self {
        self.events = Some(crate::telemetry::Listener::new(listener));
        self
    }

    /// Runs on another runtime.
    pub fn runtime<R2>(self, rt: R2) -> HedgeBuilder<R2, K> {
        HedgeBuilder {
            delay: self.delay,
            percentile: self.percentile,
            max_hedges: self.max_hedges,
            budget_ratio: self.budget_ratio,
            rt,
            classify: self.classify,
            name: self.name,
            events: self.events,
        }
    }

    /// Judges each attempt with `classifier` (see [`classify`](crate::classify)) instead of
    /// `Ok` wins, `Err` may be hedged: only a
    /// [`RetryableFailure`](crate::classify::Verdict::RetryableFailure) lets the call go on;
    /// a [`Success`](crate::classify::Verdict::Success) wins, and any other verdict ends the
    /// call with that result.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tidewall::classify::ErrorsWhere;
    /// use tidewall::hedge::{Hedge, Idempotent};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), tidewall::ConfigError> {
    /// let hedge = Hedge::builder()
    ///     .max_hedges(2)
    ///     .classify(ErrorsWhere(|e: &&str| *e == "overloaded"))
    ///     .build()?;
    /// let mut calls = 0;
    /// // "not found" is not worth another copy: the call ends with it at once.
    /// let answer = hedge
    ///     .call(Idempotent(|| {
    ///         calls += 1;
    ///         async { Err::<u32, _>("not found") }
    ///     }))
    ///     .await;
    /// assert_eq!(answer, Err("not found"));
    /// assert_eq!(calls, 1);
    /// # Ok(()) }
    /// ```
    pub fn classify<K2>(self, classifier: K2) -> HedgeBuilder<R, K2> {
        HedgeBuilder {
            delay: self.delay,
            percentile: self.percentile,
            max_hedges: self.max_hedges,
            budget_ratio: self.budget_ratio,
            rt: self.rt,
            classify: classifier,
            name: self.name,
            events: self.events,
        }
    }

    /// Validates and builds.
    ///
    /// # Errors
    ///
    /// A zero or overflowing delay, `max_hedges` of `u32::MAX` (attempts, the primary
    /// included, are counted in a `u32`), a quantile outside (0, 1] or NaN, zero
    /// `min_samples`, a budget ratio outside [0, 1000] or a nonzero one under 0.000001 (the
    /// budget counts in parts per million).
    pub fn build(self) -> Result<Hedge<R, K>, ConfigError>
    where
        R: Clock,
    {
        self.build_after::<K>(None)
    }

    /// Builds the hedge that takes over from `before` (a registry's reload): it keeps
    /// `before`'s latency estimate when the quantile and `min_samples` are the same, and its
    /// budget, given the new ratio, when both have one (the budget keeps its window's counts).
    /// Nothing of `before` changes unless the settings are valid.
    pub(crate) fn build_after<K0>(
        self,
        before: Option<&Hedge<R, K0>>,
    ) -> Result<Hedge<R, K>, ConfigError>
    where
        R: Clock,
    {
        crate::time::positive_duration("delay", self.delay)?;
        let (quantile, min_samples) = self.percentile.unwrap_or((0.5, 1));
        if !quantile.is_finite() {
            return Err(ConfigError::NotFinite { field: "quantile" });
        }
        if quantile <= 0.0 || quantile > 1.0 {
            return Err(ConfigError::OutOfRange {
                field: "quantile",
                value: quantile,
                allowed: "in (0, 1]",
            });
        }
        if min_samples == 0 {
            return Err(ConfigError::Zero {
                field: "min_samples",
            });
        }
        let budget_policy = match self.budget_ratio {
            Some(ratio) => Some(
                RetryBudgetPolicy::builder()
                    .ratio(ratio)
                    .min_per_second(0)
                    .build()
                    .map_err(as_budget_ratio)?,
            ),
            None => None,
        };
        let attempts = self
            .max_hedges
            .checked_add(1)
            .ok_or(ConfigError::OutOfRange {
                field: "max_hedges",
                value: f64::from(self.max_hedges),
                allowed: "at most u32::MAX - 1",
            })?;
        // The schedule is the hedges' (a constant one of the delay, without jitter); the wait
        // before each hedge is the delay or the percentile estimate, read when it is armed.
        let schedule = Backoff::constant(self.delay)
            .jitter(Jitter::None)
            .max_delay(self.delay)
            .max_attempts(attempts)
            .build()?;
        // Valid: from here on nothing fails, so `before`'s budget may take the new ratio.
        let before = before.map(|hedge| &*hedge.inner);
        let budget =
            budget_policy.map(
                |policy| match before.and_then(|inner| inner.rules.budget.clone()) {
                    Some(kept) => {
                        kept.reconfigure(policy);
                        kept
                    }
                    None => RetryBudget::new(policy, self.rt.now()),
                },
            );
        let estimator = self.percentile.map(|_| {
            before
                .and_then(|inner| inner.estimator.as_ref())
                .filter(|kept| kept.measures(quantile, min_samples))
                .map_or_else(
                    || Arc::new(LatencyEstimator::new(quantile, min_samples)),
                    Arc::clone,
                )
        });
        let mut rules = RetryRules::new(schedule);
        rules.budget = budget;
        Ok(Hedge {
            inner: Arc::new(Inner {
                rules,
                fixed: self.delay,
                estimator,
                rt: self.rt,
                telemetry: crate::telemetry::PolicyTelemetry::new("hedge", &self.name, &[])
                    .with_hedges()
                    .with_outcomes()
                    .with_listener(self.events),
            }),
            classify: self.classify,
        })
    }
}

impl<R: Clock, K> Hedge<R, K> {
    /// Runs `op`, hedging it per the policy. See [`HedgeFuture`].
    ///
    /// **Cancel safety:** dropping the future drops every attempt still running (see
    /// [`HedgeFuture`]).
    pub fn call<F, T, E>(&self, op: Idempotent<F>) -> HedgeFuture<'_, F, R, K>
    where
        F: MakeAttempt<Attempt: std::future::Future<Output = Result<T, E>>>,
        K: crate::classify::Classify<T, E>,
    {
        HedgeFuture::new(future::HedgeRef::Borrowed(self), op)
    }

    /// Like [`call`](Self::call), the future owning this handle to the policy (a tower
    /// response future must not borrow its service, nor a live hedge's the one it replaced).
    #[cfg(any(feature = "tower", feature = "serde"))]
    pub(crate) fn into_call<F: MakeAttempt>(
        self,
        op: Idempotent<F>,
    ) -> HedgeFuture<'static, F, R, K> {
        HedgeFuture::new(future::HedgeRef::Owned(self), op)
    }

    /// The same policy (its estimate and budget), judging attempts with `classify`.
    #[cfg(feature = "serde")]
    pub(crate) fn judged_by<K2>(&self, classify: K2) -> Hedge<R, K2> {
        Hedge {
            inner: Arc::clone(&self.inner),
            classify,
        }
    }

    /// The delay a call starting now would hedge after.
    pub fn delay(&self) -> Duration {
        let inner = &*self.inner;
        inner
            .estimator
            .as_ref()
            .and_then(|estimator| estimator.estimate())
            .unwrap_or(inner.fixed)
    }

    /// The most hedges a call starts.
    ///
    /// ```
    /// # fn main() -> Result<(), tidewall::ConfigError> {
    /// let hedge = tidewall::hedge::Hedge::builder().max_hedges(2).build()?;
    /// assert_eq!(hedge.max_hedges(), 2);
    /// # Ok(()) }
    /// ```
    pub fn max_hedges(&self) -> u32 {
        self.inner.rules.backoff.max_attempts_total() - 1
    }

    /// The hedges its [budget](HedgeBuilder::budget_ratio) would grant now (read on the
    /// hedge's runtime clock), or `None` for a hedge without a budget. A registry's hedges
    /// report it as the gauge `tidewall_hedge_budget_balance`
    /// ([`telemetry`](crate::telemetry)).
    ///
    /// ```
    /// # fn main() -> Result<(), tidewall::ConfigError> {
    /// use tidewall::hedge::Hedge;
    ///
    /// assert_eq!(Hedge::builder().build()?.budget_balance(), None);
    /// // No call yet: a budget without a per-second floor grants nothing.
    /// let budgeted = Hedge::builder().budget_ratio(0.1).build()?;
    /// assert_eq!(budgeted.budget_balance(), Some(0));
    /// # Ok(()) }
    /// ```
    pub fn budget_balance(&self) -> Option<u64> {
        let inner = &*self.inner;
        let budget = inner.rules.budget.as_ref()?;
        Some(budget.balance(inner.rt.now()))
    }
}
