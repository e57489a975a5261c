//! The retry configuration, built fluently and awaited directly.

use std::future::{Future, IntoFuture};
use std::time::Duration;

use tidewall_core::backoff::Backoff;

use super::future::RetryFuture;
use super::hooks::{
    AnyError, ErrorPredicate, FromRetryAfter, HintSource, NoHints, NoNotify, NoValue, Notify,
    OkPredicate,
};
use crate::Deadline;
use crate::rt::Runtime;

/// The default cap on a server's "retry after" hint.
pub const DEFAULT_MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// A configured retry of `op`; `.await` it to run. See the [module docs](super).
///
/// The type parameters are the runtime and the pluggable decisions; each builder method that
/// sets a closure changes one of them, so an unconfigured `Retry` stores no closure at all.
#[must_use = "a Retry does nothing until it is awaited"]
#[derive(Debug, Clone)]
pub struct Retry<
    Op,
    R = crate::rt::DefaultRuntime,
    W = AnyError,
    V = NoValue,
    N = NoNotify,
    H = NoHints,
> {
    pub(super) op: Op,
    pub(super) rt: R,
    pub(super) settings: Settings,
    pub(super) when: W,
    pub(super) when_ok: V,
    pub(super) notify: N,
    pub(super) hints: H,
}

/// The plain-data part of a [`Retry`].
#[derive(Debug, Clone)]
pub(super) struct Settings {
    pub(super) budget: Option<crate::budget::RetryBudget>,
    pub(super) backoff: Backoff,
    pub(super) seed: Option<u64>,
    pub(super) attempt_timeout: Option<Duration>,
    pub(super) deadline: Deadline,
    pub(super) min_attempt_time: Duration,
    pub(super) max_retry_after: Duration,
}

/// Retries `op` on tokio according to `backoff`.
#[cfg(feature = "tokio")]
pub fn retry<Op>(backoff: Backoff, op: Op) -> Retry<Op, crate::rt::Tokio> {
    Retry::new(crate::rt::Tokio, backoff, op)
}

impl<Op, R: Runtime> Retry<Op, R> {
    /// Retries `op` on `rt` according to `backoff`.
    pub fn new(rt: R, backoff: Backoff, op: Op) -> Self {
        let settings = Settings {
            budget: None,
            backoff,
            seed: None,
            attempt_timeout: None,
            deadline: Deadline::none(),
            min_attempt_time: Duration::ZERO,
            max_retry_after: DEFAULT_MAX_RETRY_AFTER,
        };
        Self {
            op,
            rt,
            settings,
            when: AnyError,
            when_ok: NoValue,
            notify: NoNotify,
            hints: NoHints,
        }
    }
}

impl<Op, R, W, V, N, H> Retry<Op, R, W, V, N, H> {
    /// Runs on another runtime (its clock and timers).
    pub fn runtime<R2: Runtime>(self, rt: R2) -> Retry<Op, R2, W, V, N, H> {
        let Self {
            op,
            settings,
            when,
            when_ok,
            notify,
            hints,
            ..
        } = self;
        Retry {
            op,
            rt,
            settings,
            when,
            when_ok,
            notify,
            hints,
        }
    }

    /// Retries only the errors `predicate` accepts; others return at once as
    /// [`RetryError::Inner`](super::RetryError::Inner).
    pub fn when<W2>(self, predicate: W2) -> Retry<Op, R, W2, V, N, H> {
        let Self {
            op,
            rt,
            settings,
            when_ok,
            notify,
            hints,
            ..
        } = self;
        Retry {
            op,
            rt,
            settings,
            when: predicate,
            when_ok,
            notify,
            hints,
        }
    }

    /// Also retries `Ok` values that `predicate` accepts (e.g. "still processing").
    pub fn retry_if_ok<V2>(self, predicate: V2) -> Retry<Op, R, W, V2, N, H> {
        let Self {
            op,
            rt,
            settings,
            when,
            notify,
            hints,
            ..
        } = self;
        Retry {
            op,
            rt,
            settings,
            when,
            when_ok: predicate,
            notify,
            hints,
        }
    }

    /// Calls `hook` before every backoff sleep with the attempt, its outcome and the delay.
    pub fn notify<N2>(self, hook: N2) -> Retry<Op, R, W, V, N2, H> {
        let Self {
            op,
            rt,
            settings,
            when,
            when_ok,
            hints,
            ..
        } = self;
        Retry {
            op,
            rt,
            settings,
            when,
            when_ok,
            notify: hook,
            hints,
        }
    }

    /// Honours hints from errors that implement [`RetryAfter`](crate::RetryAfter): the next
    /// delay is at least the hint, capped at [`Retry::max_retry_after`] (default 60 s).
    pub fn honor_retry_after(self) -> Retry<Op, R, W, V, N, FromRetryAfter> {
        self.retry_after_with(FromRetryAfter)
    }

    /// Honours hints extracted by `source` (a closure `|e: &E| -> Option<Duration>`).
    pub fn retry_after_with<H2>(self, source: H2) -> Retry<Op, R, W, V, N, H2> {
        let Self {
            op,
            rt,
            settings,
            when,
            when_ok,
            notify,
            ..
        } = self;
        Retry {
            op,
            rt,
            settings,
            when,
            when_ok,
            notify,
            hints: source,
        }
    }

    /// The largest hint honoured; a longer hint is cut to this (default 60 s).
    pub fn max_retry_after(mut self, cap: Duration) -> Self {
        self.settings.max_retry_after = cap;
        self
    }

    /// Bounds each attempt; a timed-out attempt counts as a retryable failure.
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
        self.settings.min_attempt_time = budget;
        self
    }

    /// Draws every retry from a shared [`RetryBudget`](crate::budget::RetryBudget): the
    /// first attempt deposits, each retry withdraws, and when the budget is spent the last
    /// failure is returned as if the attempts had run out.
    pub fn budget(mut self, budget: crate::budget::RetryBudget) -> Self {
        self.settings.budget = Some(budget);
        self
    }

    /// Fixes the jitter seed, making the delays reproducible.
    pub fn seed(mut self, seed: u64) -> Self {
        self.settings.seed = Some(seed);
        self
    }
}

impl<Op, Fut, T, E, R, W, V, N, H> IntoFuture for Retry<Op, R, W, V, N, H>
where
    Op: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    R: Runtime,
    W: ErrorPredicate<E>,
    V: OkPredicate<T>,
    N: Notify<T, E>,
    H: HintSource<E>,
{
    type Output = Result<T, super::RetryError<E>>;
    type IntoFuture = RetryFuture<Op, Fut, R, W, V, N, H, T, E>;

    fn into_future(self) -> Self::IntoFuture {
        RetryFuture::new(self)
    }
}

/// `op.retry(backoff)` on any `FnMut() -> impl Future<Output = Result<T, E>>`.
pub trait RetryExt<Fut>: FnMut() -> Fut + Sized {
    /// Retries this operation on tokio according to `backoff`.
    #[cfg(feature = "tokio")]
    fn retry(self, backoff: Backoff) -> Retry<Self, crate::rt::Tokio> {
        Retry::new(crate::rt::Tokio, backoff, self)
    }

    /// Retries this operation on `rt` according to `backoff`.
    fn retry_on<R: Runtime>(self, rt: R, backoff: Backoff) -> Retry<Self, R> {
        Retry::new(rt, backoff, self)
    }
}

impl<F: FnMut() -> Fut, Fut> RetryExt<Fut> for F {}
