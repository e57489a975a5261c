//! Pipeline: the resilience policies composed statically, with one deadline through all.
//!
//! ```text
//! deadline → rate limit → bulkhead → retry → circuit breaker → attempt timeout → op
//! ```
//!
//! A [`Pipeline`] nests the policies it was given as type parameters (an absent stage is `()`
//! and compiles away), so a call dispatches nothing dynamically and allocates nothing (but
//! for one allocation in a call that retries an `Ok` value, a 503 say, to keep it for the
//! deadline's answer). One [`Deadline`] covers the whole call: the rate limiter's wait, the
//! bulkhead queue, every backoff sleep and every attempt count against it, and a retry that
//! cannot start before it is not started — the call returns the last failure instead, or the
//! latest retried value an attempt got (see [`Pipeline::call`]).
//!
//! The retry stage is the [retry engine](crate::retry) (the same rules as the retry future),
//! and a [classifier](crate::classify) set with [`PipelineBuilder::classify`] judges each
//! result for both the breaker and the retry stage. It retries retryable failures (by default
//! every operation error), attempt timeouts and
//! [`Rejected::CircuitOpen`](crate::Rejected::CircuitOpen) rejections, sleeping at least the
//! rejection's `retry_after`; with [`PipelineBuilder::honor_retry_after`] (or
//! [`retry_after_with`](PipelineBuilder::retry_after_with), which reads `Ok` results too) it
//! also honours the operation's own hints (e.g. an HTTP 429's `Retry-After`).
//! The builder only accepts stages in the order above (see [`PipelineBuilder`]).
//!
//! To store a pipeline without spelling its stages (`Pipeline<Tokio, RateLimiter, Bulkhead,
//! RetryStage, CircuitBreaker>`), erase them: [`Pipeline::boxed`] gives a
//! [`BoxPipeline<T, E>`], named only by what its operations return.
//!
//! ```
//! use std::time::Duration;
//! use tidewall::breaker::CircuitBreaker;
//! use tidewall::bulkhead::Bulkhead;
//! use tidewall::pipeline::Pipeline;
//! use tidewall::rate::RateLimiter;
//! use tidewall::Backoff;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let pipeline = Pipeline::builder()
//!     .deadline(Duration::from_secs(2))
//!     .rate_limit(RateLimiter::builder(100, Duration::from_secs(1)).build()?)
//!     .bulkhead(Bulkhead::builder(8).build()?)
//!     .retry(Backoff::exponential(Duration::from_millis(50)).max_attempts(4).build()?)
//!     .breaker(CircuitBreaker::builder().consecutive_failures(5).build()?)
//!     .attempt_timeout(Duration::from_millis(300))
//!     .build()?;
//!
//! let mut failures = 2;
//! let value = pipeline
//!     .call(|| {
//!         let fail = failures > 0;
//!         failures -= 1;
//!         async move { if fail { Err("flaky") } else { Ok(42) } }
//!     })
//!     .await;
//! assert_eq!(value, Ok(42));
//! # Ok(()) }
//! ```

mod boxed;
mod builder;
mod operation;
mod run;
mod stages;

use crate::admission::Admission;
use std::future::Future;
use std::time::Duration;

pub use boxed::{BoxCall, BoxPipeline};
pub use builder::PipelineBuilder;
pub(crate) use operation::Operation;
pub use stages::{Gate, Retries, RetryStage};

use crate::classify::{Classify, DefaultClassifier};
use crate::rt::{Clock, DefaultRuntime};
use crate::{Deadline, Error};

/// A composed set of policies; see the [module docs](self). Cheap to share by reference;
/// clone it to share the same policies (their state is shared).
#[derive(Debug, Clone)]
pub struct Pipeline<R, L = (), B = (), T = (), C = (), K = DefaultClassifier> {
    config: PipelineBuilder<R, L, B, T, C, K>,
    telemetry: crate::telemetry::CallTelemetry,
}

impl Pipeline<DefaultRuntime> {
    /// Starts an empty pipeline on the default runtime; choose another with
    /// [`PipelineBuilder::runtime`] before adding stages.
    pub fn builder() -> PipelineBuilder<DefaultRuntime> {
        PipelineBuilder {
            rt: DefaultRuntime::default(),
            budget: None,
            limiter: (),
            bulkhead: (),
            retry: (),
            breaker: (),
            attempt_timeout: None,
            min_attempt_time: Duration::ZERO,
            seed: None,
            name: crate::Name::from_static("pipeline"),
            events: None,
            classify: DefaultClassifier,
        }
    }
}

impl<R, L, B, T, C, K> Pipeline<R, L, B, T, C, K>
where
    R: Clock,
    L: Admission,
    B: Admission,
    T: Retries,
    C: Gate,
{
    /// Calls `op` through every stage, within the pipeline's deadline.
    ///
    /// **Cancel safety:** dropping the future releases everything it holds (bulkhead slot,
    /// breaker permit — recorded as nothing) and drops the running attempt; with the
    /// `metrics` feature the call is counted as `cancelled`.
    ///
    /// # Errors
    ///
    /// [`Error::Rejected`] when a stage refused (and retries, if any, ran out or could not
    /// finish before the deadline), and [`Rejected::DeadlineExceeded`] when the deadline
    /// ended the call, an attempt still running included (the deadline cut it, not the
    /// service: the breaker records it as `Ignored`, nothing in its window, and a probe
    /// gives its slot back); [`Error::TimedOut`] for a last attempt
    /// that its own `attempt_timeout` cut off; [`Error::Inner`] with the last attempt's own
    /// error.
    ///
    /// When the deadline ends a call (cuts its attempt, or leaves no time for the next) after
    /// an attempt got a value that was retried (an `Ok` judged a retryable failure, such as
    /// a 503 response), the answer is `Ok` with the latest such
    /// value, past any later errors and timeouts, as for the [retry future](crate::retry)
    /// and the tower `RetryLayer`; the call counts as a failure in the pipeline's metrics
    /// and for its admission stages.
    ///
    /// [`Rejected::DeadlineExceeded`]: crate::Rejected::DeadlineExceeded
    pub async fn call<F, Fut, T2, E>(&self, op: F) -> Result<T2, Error<E>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T2, E>>,
        K: Classify<T2, E>,
    {
        self.call_operation(Deadline::none(), op).await
    }

    /// Like [`call`](Self::call), also bounded by the caller's `deadline`.
    ///
    /// **Cancel safety:** as [`call`](Self::call).
    ///
    /// # Errors
    ///
    /// As [`call`](Self::call).
    pub async fn call_before<F, Fut, T2, E>(
        &self,
        deadline: Deadline,
        op: F,
    ) -> Result<T2, Error<E>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T2, E>>,
        K: Classify<T2, E>,
    {
        self.call_operation(deadline, op).await
    }

    /// [`call_before`](Self::call_before) for any [`Operation`] (a front's own, which may
    /// end the call before the retry stage does).
    pub(crate) fn call_operation<O, T2, E>(
        &self,
        deadline: Deadline,
        op: O,
    ) -> impl Future<Output = Result<T2, Error<E>>>
    where
        O: Operation<Attempt: Future<Output = Result<T2, E>>>,
        K: Classify<T2, E>,
    {
        self.judged(&self.config.classify, deadline, op)
    }

    /// A call whose results `classify` judges, in the pipeline's span: the one body behind
    /// every front (`call`, `call_before`, [`BoxPipeline`], the configured
    /// [`LivePipeline`](crate::config::LivePipeline), which brings its own classifier).
    pub(crate) fn judged<'a, O, T2, E, K2>(
        &'a self,
        classify: &'a K2,
        deadline: Deadline,
        op: O,
    ) -> impl Future<Output = Result<T2, Error<E>>>
    where
        O: Operation<Attempt: Future<Output = Result<T2, E>>>,
        K2: Classify<T2, E>,
    {
        let call = run::run(self, classify, deadline, op);
        #[cfg(feature = "tracing")]
        let call = tracing::Instrument::instrument(call, self.telemetry.span());
        call
    }

    /// The runtime.
    pub fn runtime(&self) -> &R {
        &self.config.rt
    }

    /// The name its metrics and spans carry ([`PipelineBuilder::name`]).
    pub fn name(&self) -> &str {
        self.telemetry.name()
    }
}
