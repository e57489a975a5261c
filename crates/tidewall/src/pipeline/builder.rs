//! The pipeline builder: stages can only be added in the recommended order, so a known-bad
//! order is a compile error, not a runtime surprise.

use std::time::Duration;

use tidewall_core::backoff::Backoff;

use super::Pipeline;
use super::stages::sealed::OnClock;
use super::stages::{Gate, Retries, RetryStage};
use crate::admission::Admission;
use crate::budget::RetryBudget;
use crate::classify::{DefaultClassifier, Hinted, WithRetryAfter};
use crate::retry::engine::RetryRules;
use crate::rt::Clock;
use crate::{ConfigError, Name};

/// Builds a [`Pipeline`] outermost stage first:
/// `deadline → rate_limit → bulkhead → retry → breaker → attempt_timeout → op`.
///
/// Each method exists only while the stages after it are still empty, so
/// `.bulkhead(..).rate_limit(..)` (a limiter inside a bulkhead holds slots while it waits)
/// or `.breaker(..).retry(..)` (retries that cannot see the breaker's `CircuitOpen` hint)
/// do not compile:
///
/// ```compile_fail
/// use std::time::Duration;
/// use tidewall::{bulkhead::Bulkhead, pipeline::Pipeline, rate::RateLimiter};
///
/// let limiter = RateLimiter::builder(10, Duration::from_secs(1)).build().unwrap();
/// let bulkhead = Bulkhead::builder(4).build().unwrap();
/// let _ = Pipeline::builder().bulkhead(bulkhead).rate_limit(limiter);
/// ```
#[must_use]
#[derive(Debug, Clone)]
pub struct PipelineBuilder<R, L = (), B = (), T = (), C = (), K = DefaultClassifier> {
    pub(super) rt: R,
    pub(super) budget: Option<Duration>,
    pub(super) limiter: L,
    pub(super) bulkhead: B,
    pub(super) retry: T,
    pub(super) breaker: C,
    pub(super) attempt_timeout: Option<Duration>,
    pub(super) min_attempt_time: Duration,
    pub(super) seed: Option<u64>,
    pub(super) name: Name,
    pub(super) events: Option<crate::telemetry::Listener>,
    pub(super) classify: K,
}

impl<R, K> PipelineBuilder<R, (), (), (), (), K> {
    /// Reads the pipeline's time (its deadline, attempt timeouts, backoff sleeps) from `rt`,
    /// before any stage is added. Give the stages the same clock: the breaker's type enforces
    /// it; a limiter or bulkhead on another clock is accepted and waits on its own.
    pub fn runtime<R2: Clock>(self, rt: R2) -> PipelineBuilder<R2, (), (), (), (), K> {
        PipelineBuilder {
            rt,
            budget: self.budget,
            limiter: (),
            bulkhead: (),
            retry: (),
            breaker: (),
            attempt_timeout: self.attempt_timeout,
            min_attempt_time: self.min_attempt_time,
            seed: self.seed,
            name: self.name,
            events: self.events,
            classify: self.classify,
        }
    }
}

impl<R, L, B, T, C, K> PipelineBuilder<R, L, B, T, C, K> {
    /// Every call gets at most `budget`, shared by all stages (waits, sleeps, attempts).
    /// Calls made with [`Pipeline::call_before`] keep the earlier of the two. The budget
    /// starts when the call first needs the clock — no later than its first wait, first
    /// pending attempt or first retry; a call that never waits reads no clock for it (with
    /// the `metrics` feature, the call's duration is timed: on the CPU counter in real time,
    /// on the runtime's clock otherwise).
    pub fn deadline(mut self, budget: Duration) -> Self {
        self.budget = Some(budget);
        self
    }

    /// Starts an attempt (or a retry's sleep) only if more than this much time would be left
    /// for it before the deadline: every retry, and the first attempt once the call has
    /// waited (for the limiter or the bulkhead) or brought its own deadline
    /// ([`call_before`](Pipeline::call_before)). A first attempt that waited for nothing
    /// starts at once, with the pipeline's whole `deadline` before it (its budget starts
    /// then), whatever this minimum. A wait for the limiter or the bulkhead ends with
    /// [`Rejected::DeadlineExceeded`](crate::Rejected::DeadlineExceeded) once it would leave
    /// less: at once for a rate-limit wait known to be that long, and for a bulkhead's queue
    /// (whose wait no one knows) when only the minimum is left.
    pub fn min_attempt_time(mut self, time: Duration) -> Self {
        self.min_attempt_time = time;
        self
    }

    /// Fixes the retry jitter seed (by default every call draws a fresh one, so concurrent
    /// failures do not retry in lockstep).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// The name its metrics and tracing spans carry (default `pipeline`): see
    /// [`telemetry`](crate::telemetry).
    ///
    /// ```
    /// use tidewall::pipeline::Pipeline;
    ///
    /// let pipeline = Pipeline::builder().name("prices").build()?;
    /// assert_eq!(pipeline.name(), "prices");
    /// # Ok::<(), tidewall::ConfigError>(())
    /// ```
    pub fn name(mut self, name: impl Into<Name>) -> Self {
        self.name = name.into();
        self
    }

    /// Calls `listener` with each call's end (its classifier's verdict on the final result,
    /// a refusal with its reason, a timeout, a cancellation), each retry scheduled with its
    /// delay, and each retry the retry budget refused. On the caller's task, in the call
    /// (keep it short). See [`Event`](crate::telemetry::Event).
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use std::time::Duration;
    /// use tidewall::pipeline::Pipeline;
    /// use tidewall::telemetry::EventKind;
    /// use tidewall::{Backoff, Jitter};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), tidewall::ConfigError> {
    /// let delays = Arc::new(Mutex::new(Vec::new()));
    /// let seen = Arc::clone(&delays);
    /// let pipeline = Pipeline::builder()
    ///     .retry(Backoff::constant(Duration::from_millis(10)).jitter(Jitter::None).max_attempts(3).build()?)
    ///     .on_event(move |event| {
    ///         if let EventKind::RetryScheduled { delay, .. } = event.kind {
    ///             seen.lock().unwrap().push(delay);
    ///         }
    ///     })
    ///     .build()?;
    /// let failed: Result<(), _> = pipeline.call(|| async { Err("down") }).await;
    /// assert!(failed.is_err());
    /// assert_eq!(*delays.lock().unwrap(), [Duration::from_millis(10); 2]);
    /// # Ok(()) }
    /// ```
    pub fn on_event(
        mut self,
        listener: impl Fn(&crate::telemetry::Event<'_>) + Send + Sync + 'static,
    ) -> Self {
        self.events = Some(crate::telemetry::Listener::new(listener));
        self
    }

    /// Validates and builds.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Zero`] for a zero deadline or attempt timeout,
    /// [`ConfigError::DurationOverflow`] for durations beyond `u64` nanoseconds.
    pub fn build(mut self) -> Result<Pipeline<R, L, B, T, C, K>, ConfigError>
    where
        R: Clock,
        T: Retries,
    {
        for (field, value) in [
            ("deadline", self.budget),
            ("attempt_timeout", self.attempt_timeout),
        ] {
            if let Some(d) = value {
                crate::time::positive_duration(field, d)?;
            }
        }
        // Zero is allowed (no minimum); past u64 nanoseconds no deadline could ever hold it.
        if u64::try_from(self.min_attempt_time.as_nanos()).is_err() {
            return Err(ConfigError::DurationOverflow {
                field: "min_attempt_time",
            });
        }
        self.retry.set_call_rules(self.min_attempt_time, self.seed);
        Ok(Pipeline {
            telemetry: crate::telemetry::CallTelemetry::new(
                "pipeline",
                self.name.clone(),
                self.events.clone(),
                &self.rt,
            ),
            config: self,
        })
    }
}

impl<R, K> PipelineBuilder<R, (), (), (), (), K> {
    /// Every stage at once, each possibly chosen at run time (an `Option`): how a
    /// [pipeline from configuration](crate::config::LivePipeline) is made.
    #[cfg(feature = "serde")]
    pub(crate) fn stages<L, B, T, C>(
        self,
        limiter: L,
        bulkhead: B,
        retry: T,
        breaker: C,
    ) -> PipelineBuilder<R, L, B, T, C, K> {
        self.restaged(|(), (), (), ()| (limiter, bulkhead, retry, breaker))
    }
}

impl<R: Clock, K> PipelineBuilder<R, (), (), (), (), K> {
    /// Waits on `limiter` first (the wait counts against the deadline): a
    /// [`RateLimiter`](crate::rate::RateLimiter), or any other [`Admission`] stage (a distributed limiter).
    pub fn rate_limit<L: Admission>(self, limiter: L) -> PipelineBuilder<R, L, (), (), (), K> {
        self.restaged(|(), (), (), ()| (limiter, (), (), ()))
    }
}

impl<R: Clock, L, K> PipelineBuilder<R, L, (), (), (), K> {
    /// Holds a bulkhead slot for the whole call, retries included: a
    /// [`Bulkhead`](crate::bulkhead::Bulkhead), or any
    /// other [`Admission`] stage (a distributed bulkhead).
    pub fn bulkhead<B: Admission>(self, bulkhead: B) -> PipelineBuilder<R, L, B, (), (), K> {
        self.restaged(|limiter, (), (), ()| (limiter, bulkhead, (), ()))
    }
}

impl<R, L, B, K> PipelineBuilder<R, L, B, (), (), K> {
    /// Retries failed attempts (results the [classifier](Self::classify) judges retryable,
    /// attempt timeouts, `CircuitOpen` rejections) after `backoff`, waiting at least a
    /// rejection's `retry_after` (capped by [`max_retry_after`](Self::max_retry_after)).
    pub fn retry(self, backoff: Backoff) -> PipelineBuilder<R, L, B, RetryStage, (), K> {
        self.restaged(|limiter, bulkhead, (), ()| {
            let retry = RetryStage {
                rules: RetryRules::new(backoff),
            };
            (limiter, bulkhead, retry, ())
        })
    }
}

impl<R, L, B, K> PipelineBuilder<R, L, B, RetryStage, (), K> {
    /// Draws retries from a shared budget.
    pub fn retry_budget(mut self, budget: RetryBudget) -> Self {
        self.retry.rules.budget = Some(budget);
        self
    }

    /// The largest `retry_after` hint honoured (default
    /// [`DEFAULT_MAX_RETRY_AFTER`](crate::retry::DEFAULT_MAX_RETRY_AFTER), 60 s, as for the
    /// retry future). The cut only shortens the sleep: a retry whose whole hint ends past the
    /// deadline is not made (the call ends at once), and with no deadline a retry may come
    /// before a long hint ends — the breaker then refuses it again, so set this at least as
    /// long as the breaker's break.
    pub fn max_retry_after(mut self, cap: Duration) -> Self {
        self.retry.rules.max_retry_after = cap;
        self
    }
}

impl<R: Clock, L, B, T, K> PipelineBuilder<R, L, B, T, (), K> {
    /// Gates every attempt with `breaker`: a [`CircuitBreaker`](crate::breaker::CircuitBreaker),
    /// or an `Option` of one chosen at run time (`None` gates nothing). The
    /// [classifier](Self::classify) decides how each result counts.
    pub fn breaker<G>(self, breaker: G) -> PipelineBuilder<R, L, B, T, G, K>
    where
        G: Gate + OnClock<R>,
    {
        self.restaged(|limiter, bulkhead, retry, ()| (limiter, bulkhead, retry, breaker))
    }
}

impl<R, L, B, T, C, K> PipelineBuilder<R, L, B, T, C, K> {
    /// Bounds each attempt (innermost); a timed-out attempt counts as a breaker failure and
    /// is retryable.
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt_timeout = Some(timeout);
        self
    }

    /// Judges each attempt's result with `classifier` (see [`classify`](crate::classify)):
    /// the breaker counts its verdict, and the retry stage retries only a
    /// [`RetryableFailure`](crate::classify::Verdict::RetryableFailure). The default judges
    /// `Ok` a success and every `Err` a retryable failure.
    pub fn classify<K2>(self, classifier: K2) -> PipelineBuilder<R, L, B, T, C, K2> {
        self.map_classifier(|_| classifier)
    }

    /// The retry stage also honours hints from errors that implement
    /// [`RetryAfter`](crate::RetryAfter) (an HTTP 429's `Retry-After` carried by the error),
    /// as it always does a rejection's `retry_after`. Wraps the classifier
    /// ([`WithRetryAfter`]): set [`classify`](Self::classify) first, as it replaces it.
    pub fn honor_retry_after(self) -> PipelineBuilder<R, L, B, T, C, WithRetryAfter<K>> {
        self.map_classifier(WithRetryAfter)
    }

    /// The retry stage also honours hints read by `source` from each failed result, `Ok`
    /// values included (a closure `|r: Result<&T, &E>| -> Option<Duration>`, e.g. a 503
    /// response's `Retry-After`). Wraps the classifier ([`Hinted`]): set
    /// [`classify`](Self::classify) first.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tidewall::classify::Verdict;
    /// use tidewall::pipeline::Pipeline;
    /// use tidewall::Backoff;
    ///
    /// /// A response: its status and its `Retry-After`, in seconds.
    /// struct Response { status: u16, retry_after: Option<u64> }
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let pipeline = Pipeline::builder()
    ///     .retry(Backoff::constant(Duration::from_millis(10)).max_attempts(3).build()?)
    ///     .classify(|r: Result<&Response, &std::io::Error>| match r {
    ///         Ok(response) if response.status == 503 => Verdict::RetryableFailure,
    ///         Ok(_) => Verdict::Success,
    ///         Err(_) => Verdict::RetryableFailure,
    ///     })
    ///     // A 503 is an `Ok` response, and its `Retry-After` sets the wait.
    ///     .retry_after_with(|r: Result<&Response, &std::io::Error>| {
    ///         r.ok()?.retry_after.map(Duration::from_secs)
    ///     })
    ///     .build()?;
    /// let start = tokio::time::Instant::now();
    /// let mut calls = 0;
    /// let response = pipeline
    ///     .call(|| {
    ///         calls += 1;
    ///         let busy = calls == 1;
    ///         async move {
    ///             Ok::<_, std::io::Error>(if busy {
    ///                 Response { status: 503, retry_after: Some(2) }
    ///             } else {
    ///                 Response { status: 200, retry_after: None }
    ///             })
    ///         }
    ///     })
    ///     .await?;
    /// assert_eq!((response.status, calls), (200, 2));
    /// assert_eq!(start.elapsed(), Duration::from_secs(2), "waited the server's 2 s, not 10 ms");
    /// # Ok(()) }
    /// ```
    pub fn retry_after_with<F>(self, source: F) -> PipelineBuilder<R, L, B, T, C, Hinted<K, F>> {
        self.map_classifier(|classify| Hinted(classify, source))
    }

    /// The same settings around other stages, made from these: how each stage is added.
    fn restaged<L2, B2, T2, C2>(
        self,
        stages: impl FnOnce(L, B, T, C) -> (L2, B2, T2, C2),
    ) -> PipelineBuilder<R, L2, B2, T2, C2, K> {
        let (limiter, bulkhead, retry, breaker) =
            stages(self.limiter, self.bulkhead, self.retry, self.breaker);
        PipelineBuilder {
            rt: self.rt,
            budget: self.budget,
            limiter,
            bulkhead,
            retry,
            breaker,
            attempt_timeout: self.attempt_timeout,
            min_attempt_time: self.min_attempt_time,
            seed: self.seed,
            name: self.name,
            events: self.events,
            classify: self.classify,
        }
    }

    fn map_classifier<K2>(self, wrap: impl FnOnce(K) -> K2) -> PipelineBuilder<R, L, B, T, C, K2> {
        PipelineBuilder {
            rt: self.rt,
            budget: self.budget,
            limiter: self.limiter,
            bulkhead: self.bulkhead,
            retry: self.retry,
            breaker: self.breaker,
            attempt_timeout: self.attempt_timeout,
            min_attempt_time: self.min_attempt_time,
            seed: self.seed,
            name: self.name,
            events: self.events,
            classify: wrap(self.classify),
        }
    }
}
