//! Retry with backoff, jitter, per-attempt timeouts, one deadline and server hints.
//!
//! [`retry`] (or [`RetryExt::retry`] on any `FnMut() -> impl Future<Output = Result<T, E>>`)
//! builds a [`Retry`]; configure it, then `.await` it. Delays come from a
//! [`Backoff`](crate::Backoff) schedule from `tidewall-core` (jitter on by default, cap after
//! jitter, attempt and elapsed budgets).
//!
//! | setting | default |
//! |---|---|
//! | which results retry | every `Err`, no `Ok` ([`Retry::classify`], [`Retry::when`]) |
//! | per-attempt timeout | none ([`Retry::attempt_timeout`]) |
//! | deadline for the whole operation | none ([`Retry::deadline`]) |
//! | server hints | ignored until [`Retry::honor_retry_after`], then capped at 60 s |
//! | randomness | a fresh seed per call ([`Retry::seed`] fixes it) |
//!
//! # With a deadline
//!
//! One [`Deadline`](crate::Deadline) bounds the whole operation: no attempt starts once it has
//! passed (or with no more than [`Retry::min_attempt_time`] left); a backoff sleep that would
//! end past it is not slept at all, and the driver returns
//! [`RetryError::DeadlineExceeded`] at once with the last error attached; a running attempt
//! is cut off when the deadline arrives. When the deadline cuts a running attempt, or leaves
//! no time to start the next, the answer is the latest value an earlier attempt got (a
//! retryable `Ok`, such as a 503 response), even if later attempts failed or timed out;
//! without one, `DeadlineExceeded` with the latest error.
//!
//! # Outcomes
//!
//! * `Ok(value)` on success, or when the last attempt's `Ok` value was marked retryable but no
//!   retry is left, or the deadline leaves no time for one (the last attempt's value is never
//!   thrown away; an earlier one is kept only past the deadline, as above);
//! * [`RetryError::Inner`]: the operation's own error, when it is not retryable or the
//!   schedule is exhausted;
//! * [`RetryError::AttemptTimedOut`]: the last attempt hit the per-attempt timeout;
//! * [`RetryError::DeadlineExceeded`]: the deadline ended it.
//!
//! **Cancel safety**: dropping the future drops the running attempt (or the backoff sleep);
//! the operation is not called again. Nothing else is held.
//!
//! **A zero delay** (`Backoff::constant(Duration::ZERO)`, say) starts the next attempt at the
//! next poll: the future yields once first, so an operation that fails without waiting
//! never holds the executor's thread, and an outer timeout or cancellation can end it. The
//! [pipeline](crate::pipeline) and the tower `RetryLayer` do the same.
//!
//! **Cost**: the success path allocates nothing and reads no clock unless a timeout, a deadline
//! or a [budget](Retry::budget) is set; the seed and the delay iterator are created on the
//! first failure.
//!
//! ```
//! use std::time::Duration;
//! use tidewall::prelude::*;
//! use tidewall::retry::RetryError;
//!
//! #[derive(Debug)]
//! enum Error { Unavailable, BadRequest }
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), tidewall::ConfigError> {
//! let backoff = Backoff::exponential(Duration::from_millis(50)).max_attempts(3).build()?;
//! let mut calls = 0;
//! let result = (|| {
//!     calls += 1;
//!     async { Err::<(), _>(Error::Unavailable) }
//! })
//! .retry(backoff)
//! .when(|e: &Error| matches!(e, Error::Unavailable))
//! .notify(|event: &tidewall::retry::RetryEvent<'_, (), Error>| {
//!     eprintln!("attempt {} failed, retrying in {:?}", event.attempt, event.delay);
//! })
//! .await;
//! assert!(matches!(result, Err(RetryError::Inner(Error::Unavailable))));
//! assert_eq!(calls, 3);
//! # Ok(()) }
//! ```

mod builder;
pub(crate) mod engine;
mod error;
mod future;
mod hooks;

#[cfg(feature = "tokio")]
pub use builder::retry;
pub use builder::{Retry, RetryExt};
pub use engine::DEFAULT_MAX_RETRY_AFTER;
pub use error::RetryError;
pub use future::RetryFuture;
pub use hooks::{NoNotify, Notify, Outcome, RetryEvent};
