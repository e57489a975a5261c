//! HTTP presets (feature `http`): the standard resilience stack for outbound calls, the
//! standard classification of responses and errors, which requests may be sent again, and
//! `Retry-After` parsing into retry hints.
//!
//! * [`ClientPolicies`]: deadline, retry with a budget, and a breaker, bulkhead and rate limit
//!   per [`Authority`], with attempt timeouts: one loop behind every client front (the tower
//!   [`ClientLayer`](crate::tower::http::ClientLayer) and the tidewall-reqwest middleware), with
//!   per-request [`Overrides`]. Other clients plug in through [`Outbound`] and [`Inbound`].
//! * [`HttpClassifier`]: the standard table (in its docs) as a [`Classify`](crate::classify::Classify)
//!   for `http::Response<B>` results, its hint the `Retry-After` of a 429 or 503.
//! * [`Idempotency`]: which requests may be replayed (RFC 9110 §9.2.2, plus `Idempotency-Key`).
//! * [`parse_retry_after`], [`retry_after`]: the header, parsed.
//!
//! ## `Retry-After`
//!
//! RFC 9110 §10.2.3 allows two forms: `delay-seconds` (`Retry-After: 120`) and an HTTP-date
//! (`Retry-After: Wed, 21 Oct 2015 07:28:00 GMT`, plus the obsolete RFC 850 and asctime forms,
//! which recipients must accept). Both become a [`Duration`](std::time::Duration) from `now`; a date in the past is
//! zero. Malformed input is a typed [`RetryAfterError`], never a panic: this parser faces
//! untrusted servers (it has a fuzz target in `fuzz/`).
//!
//! Feed the result to the [retry driver](crate::retry) through the classifier's
//! [`retry_after`](crate::classify::Classify::retry_after): `retry_after_with(..)` reading the
//! header of an `Ok` response, or `honor_retry_after()` with an error type that implements
//! [`RetryAfter`](crate::RetryAfter).
//!
//! ```
//! use std::time::{Duration, SystemTime, UNIX_EPOCH};
//! use tidewall::http::{parse_retry_after, RetryAfterError};
//!
//! let now = UNIX_EPOCH + Duration::from_secs(1_445_412_480); // Wed, 21 Oct 2015 07:28:00 GMT
//! assert_eq!(parse_retry_after(b"120", now), Ok(Duration::from_secs(120)));
//! assert_eq!(
//!     parse_retry_after(b"Wed, 21 Oct 2015 07:30:00 GMT", now),
//!     Ok(Duration::from_secs(120))
//! );
//! assert_eq!(parse_retry_after(b"Wed, 21 Oct 2015 07:00:00 GMT", now), Ok(Duration::ZERO));
//! assert_eq!(parse_retry_after(b"soon", now), Err(RetryAfterError::Malformed));
//! ```

mod classify;
mod client;
mod date;
mod exchange;
mod idempotency;
mod retry_after;

pub use classify::{FailureKind, HttpClassifier, HttpFailure};
pub use client::{ClientPolicies, ClientPoliciesBuilder, Overrides, Retuned};
pub use exchange::{Authority, Inbound, Outbound};
pub use idempotency::Idempotency;
pub use retry_after::{RetryAfterError, parse_retry_after, retry_after};
