//! The retry configuration, built fluently and awaited directly.

use std::future::{Future, IntoFuture};
use std::time::Duration;

use tidewall_core::backoff::Backoff;

use super::engine::RetryRules;
use super::future::RetryFuture;
use super::hooks::{NoNotify, Notify};
use crate::Deadline;
use crate::classify::{Classify, DefaultClassifier, ErrorsWhere, Hinted, WithRetryAfter};
use crate::rt::Clock;

/// A configured retry of `op`; `.await` it to run. See the [module docs](super).
///
/// The type parameters are the runtime and the pluggable decisions (the
/// [classifier](crate::classify), which also reads hints, and the notify hook); each builder
/// method that sets one changes its type, so an unconfigured `Retry` stores no closure at all.
#[must_use = "a Retry does nothing until it is awaited"]
#[derive(Debug, Clone)]
pub struct Retry<Op, R = crate::rt::DefaultRuntime, C = DefaultClassifier, N = NoNotify> {
    pub(super) op: Op,
    pub(super) rt: R,
    pub(super) settings: Settings,
    pub(super) classify: C,
    pub(super) notify: N,
}

/// The plain-data part of a [`Retry`].
#[derive(Debug, Clone)]
pub(super) struct Settings {
    pub(super) rules: RetryRules,
    pub(super) attempt_timeout: Option<Duration>,
    pub(super) deadline: Deadline,
}

/// Retries `op` on tokio according to `backoff`.
#[cfg(feature = "tokio")]
pub fn retry<Op>(backoff: Backoff, op: Op) -> Retry<Op, crate::rt::Tokio> {
    Retry::new(backoff, op)
}

impl<Op> Retry<Op> {
    /// Retries `op` according to `backoff`, on the default runtime (choose another with
    /// [`runtime`](Self::runtime)).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tidewall::Backoff;
    /// use tidewall::retry::Retry;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), tidewall::ConfigError> {
    /// let backoff = Backoff::constant(Duration::from_millis(10)).max_attempts(3).build()?;
    /// let mut calls = 0;
    /// let value = Retry::new(backoff, || {
    ///     calls += 1;
    ///     let ready = calls == 2;
    ///     async move { if ready { Ok(7) } else { Err("not yet") } }
    /// })
    /// .await;
    /// assert_eq!(value, Ok(7));
    /// # Ok(()) }
    /// ```
    pub fn new(backoff: Backoff, op: Op) -> Self {
        let settings = Settings {
            rules: RetryRules::new(backoff),
            attempt_timeout: None,
            deadline: Deadline::none(),
        };
        Self {
            op,
            rt: crate::rt::DefaultRuntime::default(),
            settings,
            classify: DefaultClassifier,
            notify: NoNotify,
        }
    }
}

impl<Op, R, C, N> Retry<Op, R, C, N> {
    /// Runs on another runtime (its clock and timers).
    pub fn runtime<R2: Clock>(self, rt: R2) -> Retry<Op, R2, C, N> {
        Retry {
            op: self.op,
            rt,
            settings: self.settings,
            classify: self.classify,
            notify: self.notify,
        }
    }

    /// Judges each attempt's result with `classifier` (see [`classify`](crate::classify)):
    /// only a [`RetryableFailure`](crate::classify::Verdict::RetryableFailure) is retried;
    /// any other verdict returns the result at once. The default retries every `Err` and no
    /// `Ok`; an `Ok` judged retryable that no retry follows is still returned as `Ok`.
    pub fn classify<C2>(self, classifier: C2) -> Retry<Op, R, C2, N> {
        self.map_classifier(|_| classifier)
    }

    fn map_classifier<C2>(self, wrap: impl FnOnce(C) -> C2) -> Retry<Op, R, C2, N> {
        Retry {
            op: self.op,
            rt: self.rt,
            settings: self.settings,
            classify: wrap(self.classify),
            notify: self.notify,
        }
    }

    /// Retries only the errors `predicate` accepts; others return at once as
    /// [`RetryError::Inner`](super::RetryError::Inner). Shorthand for
    /// `.classify(ErrorsWhere(predicate))` ([`ErrorsWhere`]).
    pub fn when<P>(self, predicate: P) -> Retry<Op, R, ErrorsWhere<P>, N> {
        self.classify(ErrorsWhere(predicate))
    }

    /// Calls `hook` before every backoff sleep with the attempt, its outcome and the delay.
    pub fn notify<N2>(self, hook: N2) -> Retry<Op, R, C, N2> {
        Retry {
            op: self.op,
            rt: self.rt,
            settings: self.settings,
            classify: self.classify,
            notify: hook,
        }
    }

    /// Honours hints from errors that implement [`RetryAfter`](crate::RetryAfter): the next
    /// delay is at least the hint, capped at [`Retry::max_retry_after`] (default 60 s). The
    /// schedule's `max_elapsed` counts its own delays, not the hints' longer waits: the
    /// deadline bounds those. Wraps
    /// the classifier ([`WithRetryAfter`]): set [`classify`](Self::classify) or
    /// [`when`](Self::when) first, as they replace it.
    pub fn honor_retry_after(self) -> Retry<Op, R, WithRetryAfter<C>, N> {
        self.map_classifier(WithRetryAfter)
    }

    /// Honours hints read by `source` from each failed result, `Ok` values included (a
    /// closure `|r: Result<&T, &E>| -> Option<Duration>`). Wraps the classifier
    /// ([`Hinted`]): set [`classify`](Self::classify) or [`when`](Self::when) first.
    pub fn retry_after_with<F>(self, source: F) -> Retry<Op, R, Hinted<C, F>, N> {
        self.map_classifier(|classify| Hinted(classify, source))
    }

    /// The largest hint honoured; a longer hint is cut to this (default 60 s). The cut only
    /// shortens the sleep: a retry whose whole hint ends past the deadline is not made (the
    /// call ends at once), and with no deadline a retry may come before a long hint ends — a
    /// breaker then refuses it again, so set this at least as long as the breaker's break.
    pub fn max_retry_after(mut self, cap: Duration) -> Self {
        self.settings.rules.max_retry_after = cap;
        self
    }

    /// Bounds each attempt; a timed-out attempt counts as a retryable failure. As with
    /// [`FutureExt::timeout`](crate::FutureExt::timeout), an attempt ready when the timer is
    /// wins, so a zero timeout lets through only an attempt that is ready at its first poll
    /// (on tokio in real time, whose timers fire on whole milliseconds: one ready at a poll
    /// before the driver's next millisecond tick).
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.settings.attempt_timeout = Some(timeout);
        self
    }

    /// Bounds the whole operation, attempts and sleeps together. Combined with any deadline
    /// already set, the earlier wins.
    pub fn deadline(mut self, deadline: Deadline) -> Self {
        self.settings.deadline = self.settings.deadline.min(deadline);
        self
    }

    /// Starts an attempt only if more than `budget` remains before the deadline (default
    /// zero: any time left will do). Set it near the operation's typical latency so the last
    /// attempt is not doomed from the start.
    pub fn min_attempt_time(mut self, budget: Duration) -> Self {
        self.settings.rules.min_attempt_time = budget;
        self
    }

    /// Draws every retry from a shared [`RetryBudget`](crate::budget::RetryBudget): the
    /// first attempt deposits, each retry withdraws when it is decided (before its wait: a
    /// call dropped during the wait has spent it), and when the budget is spent the last
    /// failure is returned as if the attempts had run out.
    pub fn budget(mut self, budget: crate::budget::RetryBudget) -> Self {
        self.settings.rules.budget = Some(budget);
        self
    }

    /// Fixes the jitter seed, making the delays reproducible.
    pub fn seed(mut self, seed: u64) -> Self {
        self.settings.rules.seed = Some(seed);
        self
    }
}

impl<Op, Fut, T, E, R, C, N> IntoFuture for Retry<Op, R, C, N>
where
    Op: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    R: Clock,
    C: Classify<T, E>,
    N: Notify<T, E>,
{
    type Output = Result<T, super::RetryError<E>>;
    type IntoFuture = RetryFuture<Op, Fut, R, C, N, T, E>;

    fn into_future(self) -> Self::IntoFuture {
        RetryFuture::new(self)
    }
}

/// `op.retry(backoff)` on any `FnMut() -> impl Future<Output = Result<T, E>>`.
pub trait RetryExt<Fut>: FnMut() -> Fut + Sized {
    /// Retries this operation on tokio according to `backoff`.
    #[cfg(feature = "tokio")]
    fn retry(self, backoff: Backoff) -> Retry<Self, crate::rt::Tokio> {
        Retry::new(backoff, self)
    }

    /// Retries this operation on `rt` according to `backoff`.
    fn retry_on<R: Clock>(self, rt: &R, backoff: Backoff) -> Retry<Self, R> {
        Retry::new(backoff, self).runtime(rt.clone())
    }
}

impl<F: FnMut() -> Fut, Fut> RetryExt<Fut> for F {}
