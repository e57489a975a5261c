//! The layer: the retry rules, the classifier (which also reads hints) and an optional
//! deadline.

use std::time::Duration;

use tidewall_core::backoff::Backoff;
use tower_layer::Layer;

use super::RetryService;
use crate::budget::RetryBudget;
use crate::classify::{DefaultClassifier, ErrorsWhere, Hinted, WithRetryAfter};
use crate::retry::engine::RetryRules;
use crate::rt::{Clock, DefaultRuntime};
use crate::tower::ByClone;

/// Retries failed calls with the same rules as [`Retry`](crate::retry::Retry) and the
/// [`Pipeline`](crate::pipeline::Pipeline): a [`Backoff`] schedule, a
/// [classifier](crate::classify), server hints, a shared [`RetryBudget`] and a per-call
/// deadline.
///
/// | setting | default |
/// |---|---|
/// | which results retry | every `Err`, no `Ok` ([`classify`](Self::classify), [`when`](Self::when)) |
/// | server hints | ignored until [`honor_retry_after`](Self::honor_retry_after), then capped at 60 s |
/// | deadline for a call's retries | none ([`deadline`](Self::deadline)) |
/// | budget | none ([`budget`](Self::budget)) |
///
/// The request is cloned before an attempt only if a retry could follow it — the backoff has
/// a delay left and the budget has a retry in it; otherwise the original is sent. With
/// `max_attempts(1)` or a spent budget, nothing is ever cloned. (tower's `Retry` clones
/// before every attempt.) With [`clone_requests`](Self::clone_requests), a request that
/// cannot be copied is sent itself, and that attempt is the call's last.
///
/// The service's error type is unchanged: when no retry follows, the last attempt's result is
/// returned as it was (an `Ok` judged a failure stays `Ok`), except that when the
/// [`deadline`](Self::deadline) leaves no time for a retry after an error, a response an
/// earlier attempt got (an `Ok` judged a retryable failure, such as a 503) is returned
/// instead, as the retry future and the pipeline do. An error from the inner service's
/// `poll_ready` is returned at once, unretried.
///
/// Over a [`BreakerLayer`](crate::tower::BreakerLayer), set
/// [`honor_retry_after`](Self::honor_retry_after) and a [`deadline`](Self::deadline): a call
/// shed with [`Rejected::CircuitOpen`](crate::Rejected::CircuitOpen) is then retried no
/// sooner than the breaker's `retry_after`, and returns at once when that is past the
/// deadline.
///
/// The deadline runs from the call, and the first attempt is made in `call` on the service
/// that was polled ready; each retry goes to a clone of it, polled ready first.
///
/// **Cancel safety:** dropping the response future drops the running attempt or the backoff
/// sleep; no further attempt is made.
///
/// The request type must be `Clone` (a retry resends a copy), unless the layer is told how
/// to copy requests ([`clone_requests`](Self::clone_requests), for a streaming body, say):
/// without either the layered service is not a `Service`, and the compiler says so in those
/// words (``the trait bound `Req:
/// Clone` is not satisfied``, with a hint to derive it):
///
/// ```compile_fail,E0599
/// # use std::time::Duration;
/// # use tidewall::Backoff;
/// # use tidewall::tower::RetryLayer;
/// # use tower::ServiceExt as _;
/// # use tower_layer::Layer;
/// struct Order(u32); // not Clone
///
/// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
/// let backoff = Backoff::constant(Duration::from_millis(10)).max_attempts(2).build()?;
/// let place = tower::service_fn(|o: Order| async move { Ok::<_, std::io::Error>(o.0) });
/// let mut service = RetryLayer::new(backoff).layer(place);
/// service.ready().await?;
/// # Ok(()) }
/// ```
///
/// ```
/// use std::convert::Infallible;
/// use std::sync::atomic::{AtomicU32, Ordering};
/// use std::sync::Arc;
/// use std::time::Duration;
/// use tidewall::Backoff;
/// use tidewall::tower::RetryLayer;
/// use tower_layer::Layer;
/// use tower_service::Service;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let calls = Arc::new(AtomicU32::new(0));
/// let counted = calls.clone();
/// // Fails twice, then answers.
/// let flaky = tower::service_fn(move |x: u32| {
///     let n = counted.fetch_add(1, Ordering::Relaxed);
///     async move { if n < 2 { Err("unavailable") } else { Ok::<_, &str>(x) } }
/// });
/// let backoff = Backoff::exponential(Duration::from_millis(10)).max_attempts(4).build()?;
/// let mut service = RetryLayer::new(backoff)
///     .when(|e: &&str| *e == "unavailable")
///     .deadline(Duration::from_secs(1))
///     .layer(flaky);
/// assert_eq!(service.call(7).await, Ok(7));
/// assert_eq!(calls.load(Ordering::Relaxed), 3);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RetryLayer<R = DefaultRuntime, C = DefaultClassifier, Q = ByClone> {
    pub(super) rt: R,
    pub(super) rules: RetryRules,
    pub(super) classify: C,
    pub(super) within: Option<Duration>,
    pub(super) clones: Q,
}

impl RetryLayer {
    /// Retries after `backoff`'s delays, on the default runtime.
    pub fn new(backoff: Backoff) -> Self {
        Self {
            rt: DefaultRuntime::default(),
            rules: RetryRules::new(backoff),
            classify: DefaultClassifier,
            within: None,
            clones: ByClone,
        }
    }
}

impl<R, C, Q> RetryLayer<R, C, Q> {
    /// Sleeps and reads the time on `rt`.
    pub fn runtime<R2: Clock>(self, rt: R2) -> RetryLayer<R2, C, Q> {
        RetryLayer {
            rt,
            rules: self.rules,
            classify: self.classify,
            within: self.within,
            clones: self.clones,
        }
    }

    /// Copies requests for retries with `clones` instead of `Clone` (see
    /// [`CloneRequest`](crate::tower::CloneRequest)):
    /// a closure `Fn(&Req) -> Option<Req>` copies the requests it can, and one it cannot
    /// copy is sent once, unretried. Each service the layer makes gets a clone of it, which
    /// that service's calls share.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::sync::atomic::{AtomicU32, Ordering};
    /// use std::time::Duration;
    /// use tidewall::Backoff;
    /// use tidewall::tower::RetryLayer;
    /// use tower::{Layer, ServiceExt};
    ///
    /// /// Sent again only when it is a read: not `Clone`.
    /// enum Op {
    ///     Read(u32),
    ///     Charge(u32),
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let backoff = Backoff::constant(Duration::from_millis(10)).max_attempts(3).build()?;
    /// let layer = RetryLayer::new(backoff).clone_requests(|op: &Op| match op {
    ///     Op::Read(key) => Some(Op::Read(*key)),
    ///     Op::Charge(_) => None,
    /// });
    /// let sent = Arc::new(AtomicU32::new(0));
    /// let seen = Arc::clone(&sent);
    /// let down = tower::service_fn(move |_: Op| {
    ///     seen.fetch_add(1, Ordering::SeqCst);
    ///     async { Err::<u32, _>("down") }
    /// });
    /// assert_eq!(layer.layer(down.clone()).oneshot(Op::Read(1)).await, Err("down"));
    /// assert_eq!(sent.swap(0, Ordering::SeqCst), 3);
    /// assert_eq!(layer.layer(down).oneshot(Op::Charge(5)).await, Err("down"));
    /// assert_eq!(sent.load(Ordering::SeqCst), 1);
    /// # Ok(()) }
    /// ```
    pub fn clone_requests<Q2>(self, clones: Q2) -> RetryLayer<R, C, Q2> {
        RetryLayer {
            rt: self.rt,
            rules: self.rules,
            classify: self.classify,
            within: self.within,
            clones,
        }
    }

    /// Judges each response with `classifier`: only a
    /// [`RetryableFailure`](crate::classify::Verdict::RetryableFailure) is retried.
    pub fn classify<C2>(self, classifier: C2) -> RetryLayer<R, C2, Q> {
        self.map_classifier(|_| classifier)
    }

    fn map_classifier<C2>(self, wrap: impl FnOnce(C) -> C2) -> RetryLayer<R, C2, Q> {
        RetryLayer {
            rt: self.rt,
            rules: self.rules,
            classify: wrap(self.classify),
            within: self.within,
            clones: self.clones,
        }
    }

    /// Retries only the errors `predicate` accepts. Shorthand for
    /// `.classify(ErrorsWhere(predicate))`.
    pub fn when<P>(self, predicate: P) -> RetryLayer<R, ErrorsWhere<P>, Q> {
        self.classify(ErrorsWhere(predicate))
    }

    /// Honours hints from errors that implement [`RetryAfter`](crate::RetryAfter) (a
    /// rejection's `retry_after`, an HTTP 429): the next delay is at least the hint, capped
    /// at [`max_retry_after`](Self::max_retry_after). Over a stack's one error type:
    /// `Error<E>` when `E: RetryAfter`, and tower's `BoxError` (the hint of a
    /// [`Rejected`](crate::Rejected) in its chain). For `Error<E>` with an `E` that has no
    /// hints, read the refusals' alone:
    /// `.retry_after_with(|r: Result<&Resp, &Error<E>>| r.err()?.rejection()?.retry_after())`.
    pub fn honor_retry_after(self) -> RetryLayer<R, WithRetryAfter<C>, Q> {
        self.map_classifier(WithRetryAfter)
    }

    /// Honours hints read by `source` from each failed response, `Ok` ones included (a
    /// closure `|r: Result<&Resp, &E>| -> Option<Duration>`, e.g. a 503's `Retry-After`).
    /// Wraps the classifier ([`Hinted`]): set [`classify`](Self::classify) or
    /// [`when`](Self::when) first, as they replace it.
    pub fn retry_after_with<F>(self, source: F) -> RetryLayer<R, Hinted<C, F>, Q> {
        self.map_classifier(|classify| Hinted(classify, source))
    }

    /// The largest hint honoured; a longer hint is cut to this (default 60 s). The cut only
    /// shortens the sleep: a retry whose whole hint ends past the deadline is not made (the
    /// call ends at once), and with no deadline a retry may come before a long hint ends — a
    /// breaker then refuses it again, so set this at least as long as the breaker's break.
    #[must_use]
    pub fn max_retry_after(mut self, cap: Duration) -> Self {
        self.rules.max_retry_after = cap;
        self
    }

    /// Gives each call's retries `within` from the call: a retry whose sleep (plus
    /// [`min_attempt_time`](Self::min_attempt_time)) would end past it is not taken, and the
    /// last result is returned at once (or, when that is an error, the latest response an
    /// earlier attempt got and was retried). The first attempt always starts, and neither a
    /// running attempt nor a retry's wait for its service to be ready is cut off: put a
    /// [`TimeoutLayer`](crate::tower::TimeoutLayer) outside this layer for that.
    #[must_use]
    pub fn deadline(mut self, within: Duration) -> Self {
        self.within = Some(within);
        self
    }

    /// Starts a retry only if more than `budget` remains before the deadline (default zero).
    #[must_use]
    pub fn min_attempt_time(mut self, budget: Duration) -> Self {
        self.rules.min_attempt_time = budget;
        self
    }

    /// Draws retries from `budget` (each call deposits, each retry withdraws).
    #[must_use]
    pub fn budget(mut self, budget: RetryBudget) -> Self {
        self.rules.budget = Some(budget);
        self
    }

    /// Fixes the jitter seed (by default every request draws a fresh one).
    #[must_use]
    pub fn seed(mut self, seed: u64) -> Self {
        self.rules.seed = Some(seed);
        self
    }
}

impl<R: std::fmt::Debug, C: std::fmt::Debug, Q> std::fmt::Debug for RetryLayer<R, C, Q> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the copier: a closure has no `Debug`.
        f.debug_struct("RetryLayer")
            .field("rt", &self.rt)
            .field("rules", &self.rules)
            .field("classify", &self.classify)
            .field("within", &self.within)
            .finish_non_exhaustive()
    }
}

impl<S, R: Clone, C: Clone, Q: Clone> Layer<S> for RetryLayer<R, C, Q> {
    type Service = RetryService<S, R, C, Q>;

    fn layer(&self, inner: S) -> Self::Service {
        RetryService::new(inner, self.clone())
    }
}
