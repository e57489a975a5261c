//! The one error type of a stack: each layer returns its inner service's error type.

use std::time::Duration;

use crate::{Error, Rejected, RetryAfter};

/// An error type that can also say "a policy refused the call" and "the call ran out of
/// time": what a Tidewall layer that can refuse or time out ([`AdmitLayer`],
/// [`BreakerLayer`], [`TimeoutLayer`], [`PipelineLayer`](super::PipelineLayer)) needs from
/// the service it wraps.
///
/// Each such layer returns its inner service's error type unchanged, so a stack has one
/// error type however many layers it has: `Error<E>` through four layers is `Error<E>`, not
/// `Error<Error<Error<Error<E>>>>`. Give the service under the lowest such layer that type
/// once (layers below it, such as a hedge, keep the plain error):
///
/// * [`Error<E>`](crate::Error), typed: `.map_err(tidewall::Error::Inner)` on the
///   `ServiceBuilder`, just before `.service(..)`;
/// * tower's `BoxError`, as tower's own middleware returns: `.map_err(BoxError::from)`
///   (find a rejection behind it with [`cause`](super::cause));
/// * your own error enum, with a variant for each: implement this trait for it.
///
/// [`RetryLayer`](super::RetryLayer) and [`HedgeLayer`](super::HedgeLayer) never add an
/// error of their own and take any error type. A classifier on a layer above the `map_err`
/// (a breaker's, a retry's) judges this one type: in a typed stack the service's own error
/// is `Error::Inner(e)`, and a timeout from a layer below is a value it sees too (the default
/// classifier counts every `Err` as a failure); a breaker, and a
/// [`PipelineLayer`](super::PipelineLayer)'s breaker and admission stages, record a refusal
/// from below as `Ignored`, nothing in a window ([`rejection`](Self::rejection)).
///
/// ```
/// use std::num::ParseIntError;
/// use std::time::Duration;
/// use tidewall::breaker::CircuitBreaker;
/// use tidewall::bulkhead::Bulkhead;
/// use tidewall::tower::{AdmitLayer, AdmitMode, BreakerLayer, TimeoutLayer};
/// use tidewall::{Error, Rejected};
/// use tower::util::BoxCloneService;
/// use tower::{Service, ServiceBuilder, ServiceExt};
///
/// /// A client keeps its stack under one short name: one error type, whatever the layers.
/// struct Client {
///     parse: BoxCloneService<&'static str, u32, Error<ParseIntError>>,
/// }
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let breaker = CircuitBreaker::builder().consecutive_failures(1).build()?;
/// let bulkhead = Bulkhead::builder(4).build()?;
/// let stack = ServiceBuilder::new()
///     .layer(TimeoutLayer::new(Duration::from_secs(1)))
///     .layer(AdmitLayer::new(bulkhead, AdmitMode::Reject))
///     .layer(BreakerLayer::new(breaker))
///     .map_err(Error::Inner)
///     .service_fn(|text: &'static str| async move { text.parse::<u32>() });
/// let mut client = Client { parse: BoxCloneService::new(stack) };
///
/// // Three layers, one level: the service's own error, then the breaker's refusal.
/// let failed = client.parse.ready().await?.call("x").await;
/// assert!(matches!(failed, Err(Error::Inner(_))));
/// let shed = client.parse.ready().await?.call("1").await;
/// assert!(matches!(shed, Err(Error::Rejected(Rejected::CircuitOpen { .. }))));
/// # Ok(()) }
/// ```
///
/// [`AdmitLayer`]: super::AdmitLayer
/// [`BreakerLayer`]: super::BreakerLayer
/// [`TimeoutLayer`]: super::TimeoutLayer
#[diagnostic::on_unimplemented(
    message = "a Tidewall layer cannot return `{Self}`: it cannot say that a policy refused the call",
    label = "the inner service's error type",
    note = "give the innermost service a `PolicyError` type once: `.map_err(tidewall::Error::Inner)` (typed) or `.map_err(tower::BoxError::from)` before `.service(..)`, or implement `PolicyError` for your own error type"
)]
pub trait PolicyError {
    /// A policy refused the call before it reached the inner service.
    fn rejected(rejected: Rejected) -> Self;

    /// The call (or the wait for the service to be ready) ran out of time.
    fn timed_out() -> Self;

    /// The refusal this error is, if a policy made it: a [`BreakerLayer`](super::BreakerLayer)
    /// or a [`PipelineLayer`](super::PipelineLayer) over the layer that refused records such an
    /// error as `Ignored`, nothing in its window (a full bulkhead below says nothing about the
    /// service's health), before its classifier sees it (the pipeline retries it after its
    /// `retry_after`). By default `None`: implement it for your own enum so its refusals are
    /// not counted as the service's failures.
    fn rejection(&self) -> Option<Rejected> {
        None
    }
}

impl<E> PolicyError for Error<E> {
    #[inline]
    fn rejected(rejected: Rejected) -> Self {
        Self::Rejected(rejected)
    }

    #[inline]
    fn timed_out() -> Self {
        Self::TimedOut
    }

    #[inline]
    fn rejection(&self) -> Option<Rejected> {
        Error::rejection(self)
    }
}

/// tower's `BoxError`: a rejection is boxed as [`Rejected`], a timeout as
/// [`Elapsed`](crate::time::Elapsed).
impl PolicyError for Box<dyn std::error::Error + Send + Sync> {
    fn rejected(rejected: Rejected) -> Self {
        Box::new(rejected)
    }

    fn timed_out() -> Self {
        Box::new(crate::time::Elapsed)
    }

    fn rejection(&self) -> Option<Rejected> {
        super::cause::<Rejected>(&**self).copied()
    }
}

/// The hint of a [`Rejected`] in a `BoxError`'s source chain (found with
/// [`cause`](super::cause)), so a [`RetryLayer`](super::RetryLayer) with `honor_retry_after`
/// waits out a breaker's or a limiter's `retry_after` over a boxed stack too.
///
/// ```
/// use std::time::Duration;
/// use tidewall::{Rejected, RetryAfter};
///
/// let shed: tower::BoxError = Box::new(Rejected::CircuitOpen { retry_after: Duration::from_secs(3) });
/// assert_eq!(shed.retry_after(), Some(Duration::from_secs(3)));
/// let other: tower::BoxError = "refused by the server".into();
/// assert_eq!(other.retry_after(), None);
/// ```
impl RetryAfter for dyn std::error::Error + Send + Sync {
    fn retry_after(&self) -> Option<Duration> {
        super::cause::<Rejected>(self).and_then(RetryAfter::retry_after)
    }
}
