//! tower `Layer`s and `Service`s for every policy (feature `tower`).
//!
//! Each layer wraps the same engine as the rest of Tidewall; there is one implementation of
//! each policy. Compared with tower's own middleware:
//!
//! * [`TimeoutLayer`] also bounds the wait in `poll_ready`, and the call gets only what is
//!   left of the same budget (tower's timeout misses the readiness wait).
//! * [`RetryLayer`] runs the same [retry engine](crate::retry) as the retry future and the
//!   pipeline (classifier, hints, budget, deadline), and clones the request only when a retry
//!   could follow the attempt; the last possible attempt sends the original. A request that
//!   is not `Clone` goes through it, as through `HedgeLayer` and `PipelineLayer`, with a
//!   [`CloneRequest`] (`clone_requests`).
//! * [`AdmitLayer`] is one service over any [`Admission`](crate::admission::Admission): the
//!   rate limiter (GCRA, shared by clones, no window-edge double bursts), the bulkhead (a
//!   bounded FIFO queue with a max wait), or a distributed stage deciding after a round trip.
//!   Its [`AdmitMode`] says where a call waits: nowhere (load shedding), in `poll_ready`
//!   (backpressure, as `ConcurrencyLimit` and `RateLimit`), or in the response future.
//! * [`BreakerLayer`] (reject, or hold callers in `poll_ready` until the breaker admits) has
//!   no tower counterpart.
//! * [`HedgeLayer`] runs the [hedge](crate::hedge) engine. tower's `hedge::Hedge` (feature
//!   `hedge`) sends at most one hedge, after a percentile of a latency histogram it rotates
//!   every period, with no budget of its own (its `Policy::can_retry` decides), and answers
//!   with whichever attempt completes first, an error included; `HedgeLayer` also takes a
//!   fixed delay, up to `max_hedges` hedges, a hedge budget and a classifier (a retryable
//!   failure leaves the other attempts running).
//! * [`PipelineLayer`] is a whole [`Pipeline`](crate::pipeline::Pipeline) as one layer
//!   (one deadline over every stage), or an instance's
//!   [`LivePipeline`](crate::config::LivePipeline) from a configuration, following every
//!   reload. Like `RetryLayer` it clones a request only while a retry could follow, and
//!   [`clone_requests`](PipelineLayer::clone_requests) takes requests that are not `Clone`.
//! * `http::ClientLayer` (feature `http`) is the whole outbound HTTP stack of
//!   [`ClientPolicies`](crate::http::ClientPolicies), per authority, over a client service.
//!
//! The policy layers' response futures are named types (each middleware's module holds its
//! `ResponseFuture`), so a stack of them can be stored without boxing; `PipelineLayer` and
//! `http::ClientLayer` box each call's future (one engine runs the whole call). With one
//! error type per stack, a stack can also be
//! stored without spelling its layers, as tower's `BoxCloneService<Req, Resp, Error<E>>`.
//!
//! A stack has one error type, however deep: every layer returns its inner service's error
//! type, and the layers that can refuse or time out need it to be a [`PolicyError`] — the
//! typed [`crate::Error<E>`], tower's `BoxError`, or your own enum. Give the innermost service
//! that type once (`.map_err(tidewall::Error::Inner)`); behind `BoxError` (e.g. in axum's
//! `HandleErrorLayer`), find the cause with [`cause`]: `cause::<Rejected>(&*err)`,
//! `cause::<Elapsed>(&*err)`.
//!
//! ```
//! use std::convert::Infallible;
//! use std::task::{Context, Poll};
//! use std::time::Duration;
//! use tidewall::rate::RateLimiter;
//! use tidewall::tower::{AdmitLayer, AdmitMode};
//! use tidewall::{Error, Rejected};
//! use tower_layer::Layer;
//! use tower_service::Service;
//!
//! #[derive(Clone)]
//! struct Echo;
//!
//! // Its errors are already Tidewall's `Error<E>`, so layers can add their refusals.
//! impl Service<u32> for Echo {
//!     type Response = u32;
//!     type Error = Error<Infallible>;
//!     type Future = std::future::Ready<Result<u32, Self::Error>>;
//!     fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
//!         Poll::Ready(Ok(()))
//!     }
//!     fn call(&mut self, x: u32) -> Self::Future {
//!         std::future::ready(Ok(x))
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let limiter = RateLimiter::builder(1, Duration::from_secs(1)).burst(1).build()?;
//! let mut service = AdmitLayer::new(limiter, AdmitMode::Reject).layer(Echo);
//! std::future::poll_fn(|cx| service.poll_ready(cx)).await?;
//! assert_eq!(service.call(7).await?, 7);
//! // A burst of 1: the second call is refused.
//! assert!(matches!(service.call(8).await, Err(Error::Rejected(Rejected::RateLimited { .. }))));
//! # Ok(()) }
//! ```

/// `get_ref`, `get_mut` and `into_inner` for a service whose inner service is the field
/// `inner`; `$into_inner` says what `into_inner` lets go of besides the service.
macro_rules! inner_service_accessors {
    ($into_inner:literal) => {
        /// The inner service.
        pub fn get_ref(&self) -> &S {
            &self.inner
        }

        /// The inner service, mutably.
        pub fn get_mut(&mut self) -> &mut S {
            &mut self.inner
        }

        #[doc = concat!("The inner service", $into_inner, ".")]
        pub fn into_inner(self) -> S {
            self.inner
        }
    };
}

pub mod admit;
mod attempt;
pub mod breaker;
pub(crate) mod clones;
mod error;
pub mod hedge;
#[cfg(feature = "http")]
pub mod http;
pub mod pipeline;
pub mod retry;
pub mod timeout;

pub use admit::{AdmitLayer, AdmitMode, AdmitService};
pub use breaker::{BreakerLayer, BreakerService};
pub use clones::{ByClone, CloneRequest, NoClone};
pub use error::PolicyError;
pub use hedge::{HedgeLayer, HedgeService};
pub use pipeline::{PipelineLayer, PipelineService};
pub use retry::{RetryLayer, RetryService};
pub use timeout::{TimeoutLayer, TimeoutService};

/// Finds an error of type `T` in `err`'s `source()` chain (including `err` itself).
///
/// ```
/// use tidewall::{Error, Rejected};
///
/// let err: Box<dyn std::error::Error + Send + Sync> =
///     Box::new(Error::<std::io::Error>::Rejected(Rejected::BulkheadFull));
/// assert_eq!(tidewall::tower::cause::<Rejected>(&*err), Some(&Rejected::BulkheadFull));
/// ```
pub fn cause<'a, T: std::error::Error + 'static>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut current = Some(err);
    while let Some(e) = current {
        if let Some(found) = e.downcast_ref::<T>() {
            return Some(found);
        }
        current = e.source();
    }
    None
}

/// What a service keeps between `poll_ready` and `call` (a readiness timer, a pending
/// admission, a guard). The `Mutex` exists only to make the service `Sync`, which axum
/// requires; the slot is always reached through `&mut self` with `get_mut`, so it is never
/// locked.
pub(crate) struct SyncSlot<T>(std::sync::Mutex<T>);

impl<T> SyncSlot<T> {
    pub(crate) fn new(value: T) -> Self {
        Self(std::sync::Mutex::new(value))
    }

    pub(crate) fn get_mut(&mut self) -> &mut T {
        self.0
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
