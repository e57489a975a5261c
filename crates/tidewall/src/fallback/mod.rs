//! Fallback: replace chosen errors with a value, a computed value or another async call.
//!
//! A [`Fallback`] decides, given the primary future's error, whether to handle it and how.
//! Build one with [`value`], [`with`] or [`with_async`], restrict it to some errors with
//! [`Fallback::when`], and attach it with
//! [`FutureExt::or_fallback`](crate::time::FutureExt::or_fallback). An error the fallback does
//! not handle passes through unchanged; the caller's error type is never erased.
//!
//! Use it for graceful degradation (serve the cache when the primary times out). Do not use it
//! to hide errors the caller must see: restrict it with `when`.
//!
//! **Cancel safety**: dropping the future drops whichever of the primary or fallback future is
//! running; no other state.
//!
//! ```
//! use tidewall::fallback;
//! use tidewall::prelude::*;
//!
//! #[derive(Debug, PartialEq)]
//! enum Error { Timeout, NotFound }
//!
//! # futures_util::FutureExt::now_or_never(async {
//! let from_cache = fallback::value("cached").when(|e: &Error| *e == Error::Timeout);
//! assert_eq!(async { Err(Error::Timeout) }.or_fallback(from_cache).await, Ok("cached"));
//!
//! let not_handled = fallback::value("cached").when(|e: &Error| *e == Error::Timeout);
//! assert_eq!(async { Err::<&str, _>(Error::NotFound) }.or_fallback(not_handled).await, Err(Error::NotFound));
//!
//! let secondary = fallback::with_async(|_e: Error| async { Ok::<_, Error>("from replica") });
//! assert_eq!(async { Err(Error::Timeout) }.or_fallback(secondary).await, Ok("from replica"));
//! # }).unwrap();
//! ```

mod future;
mod policy;

pub use future::FallbackFuture;
pub use policy::{Fallback, Value, When, With, WithAsync, value, with, with_async};
