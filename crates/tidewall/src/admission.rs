//! One contract for everything that admits a call before it runs: the rate limiter, the
//! bulkhead, and stages kept elsewhere (`tidewall-redis`'s limiter and bulkhead, shared
//! through Redis).
//!
//! The [pipeline](crate::pipeline) and the tower [`AdmitLayer`](crate::tower::AdmitLayer)
//! drive any [`Admission`] the same way: take the synchronous fast path when it admits, else
//! decide through [`admit`](Admission::admit), either at once ([`Wait::No`]: refused with the
//! stage's own reason and hint) or waiting up to a deadline ([`Wait::Until`]).
//!
//! ```
//! use std::time::Duration;
//! use tidewall::admission::{Admission, Wait};
//! use tidewall::bulkhead::Bulkhead;
//! use tidewall::{Deadline, Rejected};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), tidewall::ConfigError> {
//! let bulkhead = Bulkhead::builder(1).build()?;
//! let held = bulkhead.try_admit().expect("one free slot");
//! // Full: refused at once with the stage's reason...
//! assert_eq!(bulkhead.admit(Wait::No).await.err(), Some(Rejected::BulkheadFull));
//! // ...or waiting, here no longer than 100 ms.
//! let deadline = Deadline::after(&tidewall::rt::Tokio, Duration::from_millis(100));
//! let waiting = bulkhead.admit(Wait::Until(deadline));
//! drop(held); // frees the slot: the waiter gets it
//! assert!(waiting.await.is_ok());
//! # Ok(()) }
//! ```

use std::future::Future;
use std::time::Duration;

use crate::breaker::Outcome;
use crate::bulkhead::{AcquireOwned, Bulkhead, OwnedPermit};
use crate::rate::{RateLimiter, UntilReady};
use crate::rt::Clock;
use crate::{Deadline, Rejected};

/// How long [`Admission::admit`] may wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Wait {
    /// Not at all: a stage that cannot admit now refuses with its own reason and hint
    /// ([`Rejected::BulkheadFull`], [`Rejected::RateLimited`] with `retry_after`). A stage
    /// that decides remotely still makes its round trip.
    No,
    /// Until the stage admits, its own limits refuse (a bulkhead's `max_wait` or queue), or
    /// `deadline` passes ([`Rejected::DeadlineExceeded`]; returned at once when the wait is
    /// known to end past it, as a limiter's is: one that ends exactly at the deadline is
    /// waited out). `Deadline::none()` waits as long as the stage allows.
    Until(Deadline),
}

/// How much a call matters when load must be shed: the less it matters, the sooner it is
/// refused. An [adaptive limiter](crate::adaptive::AdaptiveLimiter) admits each priority while
/// fewer than its share of the limit are in flight, and its queue serves the most important
/// waiters first, shedding the newest of the least important to make room.
///
/// ```
/// use tidewall::admission::Priority;
///
/// assert!(Priority::Critical < Priority::Default && Priority::Default < Priority::Sheddable);
/// assert_eq!(Priority::default(), Priority::Default);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Priority {
    /// Refused last: the calls the service exists for (a checkout, a login).
    Critical,
    /// Everything not marked otherwise.
    #[default]
    Default,
    /// Refused first: work that can be dropped or done later (prefetches, analytics, retries
    /// of background jobs).
    Sheddable,
}

impl Priority {
    /// Every priority, the most important first.
    pub const ALL: [Self; 3] = [Self::Critical, Self::Default, Self::Sheddable];

    /// Its place in [`ALL`](Self::ALL).
    pub(crate) const fn index(self) -> usize {
        self as usize
    }

    /// Its name in metrics and configuration: `critical`, `default` or `sheddable`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Critical => "critical",
            Self::Default => "default",
            Self::Sheddable => "sheddable",
        }
    }
}

/// The order a queue (a [bulkhead](crate::bulkhead)'s, an adaptive limiter's) admits its
/// waiters in, and how long they may wait once it stands. A queue absorbs bursts; under
/// sustained overload it only adds delay, and these disciplines keep that delay from reaching
/// every caller.
///
/// ```
/// use std::time::Duration;
/// use tidewall::admission::QueueDiscipline;
///
/// let codel = QueueDiscipline::Codel {
///     target: Duration::from_millis(5),
///     interval: Duration::from_millis(100),
/// };
/// assert_ne!(codel, QueueDiscipline::default());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum QueueDiscipline {
    /// The longest waiting first.
    #[default]
    Fifo,
    /// The newest first: under a standing queue, the callers who still have time to use an
    /// answer are served, and the oldest wait until they give up.
    Lifo,
    /// The longest waiting first, with a wait bounded by the queue's delay rather than its
    /// length (CoDel's rule, as Facebook's servers apply it): once the queue has not been
    /// empty for `interval`, a caller who joins it waits at most `target`. A queue that
    /// already stands when a `reconfigure` switches CoDel on counts from when it began to
    /// stand if the bulkhead knew it (it had CoDel, LIFO or priorities before), else from the
    /// switch (a plain FIFO queue does not note when it began).
    Codel {
        /// The longest wait under a standing queue (e.g. 5 ms); not zero.
        target: Duration,
        /// How long the queue must stand before waits are cut to `target` (e.g. 100 ms); not
        /// zero.
        interval: Duration,
    },
}

impl QueueDiscipline {
    /// Checks a CoDel discipline's durations.
    pub(crate) fn validate(self) -> Result<(), crate::ConfigError> {
        if let Self::Codel { target, interval } = self {
            for (field, value) in [("target", target), ("interval", interval)] {
                if value.is_zero() {
                    return Err(crate::ConfigError::Zero { field });
                }
                if u64::try_from(value.as_nanos()).is_err() {
                    return Err(crate::ConfigError::DurationOverflow { field });
                }
            }
        }
        Ok(())
    }
}

/// A stage that admits a call before it runs and may hold something for the whole call (a
/// bulkhead slot). Implemented by [`RateLimiter`], [`Bulkhead`], `()` (admits everything) and
/// `Option` of any of them (`None` admits everything: a stage chosen at run time, as a
/// [pipeline from configuration](crate::config::LivePipeline) has), and open to stages kept
/// elsewhere.
///
/// Guards and futures own what they need (`'static`): they live in tower response futures
/// and in services between `poll_ready` and `call`.
pub trait Admission: Send + Sync {
    /// Held for the whole call and released on drop (a bulkhead slot; `()` for a limiter).
    type Guard: Send + 'static;

    /// The future [`admit`](Self::admit) returns.
    type Admit: Future<Output = Result<Self::Guard, Rejected>> + Send + 'static;

    /// Admits now if it can, without waiting and without counting a refusal as a rejection
    /// (the caller goes on to [`admit`](Self::admit), which counts). `None` when it cannot
    /// admit now, or cannot decide without a round trip.
    fn try_admit(&self) -> Option<Self::Guard>;

    /// Decides, waiting as `wait` allows.
    ///
    /// **Cancel safety:** dropping the future releases whatever it was waiting for or held;
    /// nothing is taken from the stage.
    ///
    /// # Errors
    ///
    /// The stage's rejection ([`Rejected::BulkheadFull`], [`Rejected::RateLimited`], ...), or
    /// [`Rejected::DeadlineExceeded`] under [`Wait::Until`].
    fn admit(&self, wait: Wait) -> Self::Admit;

    /// Ends an admitted call with how it went, for a stage that learns from its calls (an
    /// adaptive limiter); the default just releases the guard. The pipeline and the tower
    /// layer call it when the call ends: [`Outcome::Success`], [`Outcome::Failure`] (the
    /// classifier's failures, timeouts, the deadline running out during the call) or
    /// [`Outcome::Ignored`] (the classifier's verdict, or any ending before the dependency was
    /// called: a later stage's refusal, a deadline that left no time for a first attempt).
    /// Through a pipeline, a call whose retry a later stage refused (an open breaker, a spent
    /// budget) after an attempt reached the dependency ends with that attempt's outcome; the
    /// tower layer sees only the inner stack's answer, so a refusal from a layer inside it
    /// (a retry's last attempt refused by an open breaker) is ignored. A guard dropped
    /// without it (a cancelled call) teaches nothing.
    #[inline]
    fn finish(guard: Self::Guard, outcome: Outcome) {
        let _ = outcome;
        drop(guard);
    }
}

impl Admission for () {
    type Guard = ();
    type Admit = std::future::Ready<Result<(), Rejected>>;

    fn try_admit(&self) -> Option<()> {
        Some(())
    }

    fn admit(&self, _: Wait) -> Self::Admit {
        std::future::ready(Ok(()))
    }
}

impl<A: Admission> Admission for Option<A> {
    type Guard = Option<A::Guard>;
    type Admit = MaybeAdmit<A::Admit>;

    #[inline]
    fn try_admit(&self) -> Option<Self::Guard> {
        match self {
            Some(stage) => stage.try_admit().map(Some),
            None => Some(None),
        }
    }

    fn admit(&self, wait: Wait) -> Self::Admit {
        MaybeAdmit {
            admit: self.as_ref().map(|stage| stage.admit(wait)),
        }
    }

    #[inline]
    fn finish(guard: Self::Guard, outcome: Outcome) {
        if let Some(guard) = guard {
            A::finish(guard, outcome);
        }
    }
}

pin_project_lite::pin_project! {
    /// The [`Admission::admit`] future of an `Option` stage: the stage's own, or admitted at
    /// once when there is none.
    #[derive(Debug)]
    #[must_use = "futures do nothing unless polled"]
    pub struct MaybeAdmit<F> {
        #[pin]
        admit: Option<F>,
    }
}

impl<F, G> Future for MaybeAdmit<F>
where
    F: Future<Output = Result<G, Rejected>>,
{
    type Output = Result<Option<G>, Rejected>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        match self.project().admit.as_pin_mut() {
            Some(admit) => admit.poll(cx).map(|admitted| admitted.map(Some)),
            None => std::task::Poll::Ready(Ok(None)),
        }
    }
}

impl<R: Clock> Admission for RateLimiter<R> {
    type Guard = ();
    type Admit = UntilReady<R>;

    #[inline]
    fn try_admit(&self) -> Option<()> {
        self.decide(1).ok()
    }

    fn admit(&self, wait: Wait) -> UntilReady<R> {
        self.until_ready_within(1, wait)
    }
}

impl<R: Clock> Admission for Bulkhead<R> {
    type Guard = OwnedPermit<R>;
    type Admit = AcquireOwned<R>;

    #[inline]
    fn try_admit(&self) -> Option<OwnedPermit<R>> {
        self.try_acquire_owned_quiet()
    }

    fn admit(&self, wait: Wait) -> AcquireOwned<R> {
        self.acquire_owned_within(wait)
    }
}

/// A stage that never waits: it admits at once or refuses with its own reason and hint, as
/// under [`Wait::No`], however long the caller would wait. For a pipeline or a service that
/// must shed load at once (answer 429 with `Retry-After`) rather than queue for the limiter.
/// It wraps any stage (one kept in Redis too); a [`RateLimiter`]'s own
/// [`max_wait`](crate::rate::RateLimiterBuilder::max_wait) of zero says the same in its
/// settings, where a configuration file can set it.
///
/// ```
/// use std::time::Duration;
/// use tidewall::admission::NoWait;
/// use tidewall::pipeline::Pipeline;
/// use tidewall::rate::RateLimiter;
/// use tidewall::{Error, Rejected};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), tidewall::ConfigError> {
/// let limiter = RateLimiter::builder(1, Duration::from_secs(60)).build()?;
/// let pipeline = Pipeline::builder()
///     .deadline(Duration::from_secs(120)) // long enough to wait for the next cell...
///     .rate_limit(NoWait(limiter))         // ...but this stage does not wait
///     .build()?;
/// assert_eq!(pipeline.call(|| async { Ok::<_, ()>(1) }).await, Ok(1));
/// let refused = pipeline.call(|| async { Ok::<_, ()>(2) }).await;
/// assert!(matches!(refused, Err(Error::Rejected(Rejected::RateLimited { .. }))));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct NoWait<A>(pub A);

impl<A: Admission> Admission for NoWait<A> {
    type Guard = A::Guard;
    type Admit = A::Admit;

    #[inline]
    fn try_admit(&self) -> Option<Self::Guard> {
        self.0.try_admit()
    }

    fn admit(&self, _: Wait) -> Self::Admit {
        self.0.admit(Wait::No)
    }

    #[inline]
    fn finish(guard: Self::Guard, outcome: Outcome) {
        A::finish(guard, outcome);
    }
}

/// One stage of two kinds, chosen at run time: a [pipeline from
/// configuration](crate::config::LivePipeline) limits calls in flight with a bulkhead or an
/// adaptive limiter, as the instance's file says. Each call goes to the stage inside, and
/// so does its outcome.
///
/// ```
/// use tidewall::adaptive::{AdaptiveLimiter, Aimd};
/// use tidewall::admission::{Admission, Either};
/// use tidewall::bulkhead::Bulkhead;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), tidewall::ConfigError> {
/// let learn = true;
/// let stage = if learn {
///     Either::Right(AdaptiveLimiter::builder(Aimd::builder().min_limit(1).initial_limit(1).build()?).build()?)
/// } else {
///     Either::Left(Bulkhead::builder(1).build()?)
/// };
/// let held = stage.try_admit().expect("a free slot");
/// assert!(stage.try_admit().is_none());
/// # drop(held);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Either<A, B> {
    /// The first kind.
    Left(A),
    /// The second kind.
    Right(B),
}

impl<A: Admission, B: Admission> Admission for Either<A, B> {
    type Guard = Either<A::Guard, B::Guard>;
    type Admit = EitherAdmit<A::Admit, B::Admit>;

    #[inline]
    fn try_admit(&self) -> Option<Self::Guard> {
        match self {
            Self::Left(stage) => stage.try_admit().map(Either::Left),
            Self::Right(stage) => stage.try_admit().map(Either::Right),
        }
    }

    fn admit(&self, wait: Wait) -> Self::Admit {
        match self {
            Self::Left(stage) => EitherAdmit {
                admit: OneOf::Left {
                    admit: stage.admit(wait),
                },
            },
            Self::Right(stage) => EitherAdmit {
                admit: OneOf::Right {
                    admit: stage.admit(wait),
                },
            },
        }
    }

    #[inline]
    fn finish(guard: Self::Guard, outcome: Outcome) {
        match guard {
            Either::Left(guard) => A::finish(guard, outcome),
            Either::Right(guard) => B::finish(guard, outcome),
        }
    }
}

pin_project_lite::pin_project! {
    /// The [`Admission::admit`] future of an [`Either`] stage: the one inside's.
    #[derive(Debug)]
    #[must_use = "futures do nothing unless polled"]
    pub struct EitherAdmit<F, G> {
        #[pin]
        admit: OneOf<F, G>,
    }
}

pin_project_lite::pin_project! {
    #[derive(Debug)]
    #[project = OneOfProj]
    enum OneOf<F, G> {
        Left { #[pin] admit: F },
        Right { #[pin] admit: G },
    }
}

impl<F, G, FG, GG> Future for EitherAdmit<F, G>
where
    F: Future<Output = Result<FG, Rejected>>,
    G: Future<Output = Result<GG, Rejected>>,
{
    type Output = Result<Either<FG, GG>, Rejected>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        match self.project().admit.project() {
            OneOfProj::Left { admit } => admit.poll(cx).map(|a| a.map(Either::Left)),
            OneOfProj::Right { admit } => admit.poll(cx).map(|a| a.map(Either::Right)),
        }
    }
}
