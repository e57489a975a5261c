//! Tidewall: production-grade async runtime patterns, on any runtime.
//!
//! | pattern | module | entry point |
//! |---|---|---|
//! | runtime seam (tokio, smol, async-std) | [`rt`] | [`rt::Runtime`] |
//! | timeouts and one shared deadline | [`time`] | [`FutureExt::timeout`], [`Deadline`] |
//! | retry with backoff, jitter, hints | [`retry`] | [`retry::retry`], [`RetryExt::retry`] |
//! | fallback | [`fallback`] | [`FutureExt::or_fallback`] |
//! | racing | [`race`] | [`race::race_ok`] |
//! | bounded fan-out / fan-in | [`fan_out`] | [`fan_out::FanOut`] |
//! | circuit breaker | [`breaker`] | [`breaker::CircuitBreaker`] |
//! | bulkhead (reject or bounded wait) | [`bulkhead`] | [`bulkhead::Bulkhead`] |
//! | rate limiting (GCRA, direct and keyed) | [`rate`] | [`rate::RateLimiter`], [`rate::KeyedRateLimiter`] |
//! | adaptive concurrency limits, shedding by priority | [`adaptive`] | [`adaptive::AdaptiveLimiter`], [`adaptive::KeyedAdaptiveLimiter`] |
//! | retry budget | [`budget`] | [`budget::RetryBudget`] |
//! | outcome classification for retry, breaker, pipeline, tower | [`classify`] | [`classify::Classify`], [`classify::Verdict`] |
//! | hedging | [`hedge`] | [`hedge::Hedge`] |
//! | policies composed with one deadline | [`pipeline`] | [`pipeline::Pipeline`] |
//! | stream operators, merges, line streaming | [`stream`] | [`stream::StreamOps`], [`stream::LineReader`] |
//! | cancellation with a reason | [`task`] | [`task::CancellationToken`] |
//! | tower layers (feature `tower`) | `tower` | `tower::BreakerLayer`, … |
//! | cancel-safe atomic file write | [`fs`] | [`fs::write_atomic`] |
//! | the outbound HTTP stack, its standard classifier, idempotency, `Retry-After` (feature `http`) | `http` | `http::ClientPolicies`, `http::HttpClassifier`, `http::Idempotency` |
//! | policies from a file by name, live reload (features `serde`, `toml`, `watch`) | `config` | `config::Registry`, `config::watch_file_on` |
//! | metrics, tracing and event listeners (features `metrics`, `tracing`) | [`telemetry`] | the table of metrics there, [`telemetry::Event`] |
//! | deterministic time for tests (feature `test-util`) | `testing` | `testing::Clocked` |
//! | fault injection (feature `chaos`) | `chaos` | `chaos::Chaos` |
//!
//! Every policy waits and spawns through [`rt::Runtime`], a type parameter that defaults to
//! tokio; pick another with `.runtime(..)`. Builders validate and return [`ConfigError`];
//! nothing panics on user input. Every async API documents its cancel safety. A policy that
//! refuses a call returns a [`Rejected`] value (inside [`Error`] when it wraps your call), whose
//! `retry_after` hint the retry driver and the pipeline honour.
//!
//! ```
//! use std::time::Duration;
//! use tidewall::prelude::*;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let backoff = Backoff::exponential(Duration::from_millis(100)).max_attempts(5).build()?;
//! let mut failures = 2;
//! let value = (|| {
//!     let fail = failures > 0;
//!     failures -= 1;
//!     async move { if fail { Err(std::io::Error::other("transient")) } else { Ok(42) } }
//! })
//! .retry(backoff)
//! .deadline(Deadline::after(&Tokio, Duration::from_secs(2)))
//! .await?;
//! assert_eq!(value, 42);
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
// On docs.rs, `doc_cfg` labels every feature- or platform-gated item with what it needs.
#![cfg_attr(docsrs, feature(doc_cfg))]

// First: its macro serves the keyed fronts in `breaker`, `bulkhead` and `rate`.
#[macro_use]
mod keyed_map;

pub mod adaptive;
pub mod admission;
pub mod breaker;
mod bucket_ring;
pub mod budget;
pub mod bulkhead;
#[cfg(feature = "chaos")]
pub mod chaos;
pub mod classify;
#[cfg(feature = "serde")]
pub mod config;
pub mod fallback;
pub mod fan_out;
pub mod fs;
pub mod hedge;
mod hint;
#[cfg(feature = "http")]
pub mod http;
mod name;
pub mod pipeline;
pub mod race;
pub mod rate;
mod reject;
pub mod retry;
pub mod rt;
mod seed;
pub mod stream;
mod sync;
pub mod task;
pub mod telemetry;
#[cfg(feature = "test-util")]
pub mod testing;
pub mod time;
#[cfg(feature = "tower")]
pub mod tower;

pub use hint::RetryAfter;
pub use name::Name;
pub use reject::{Error, Rejected};
pub use retry::RetryExt;
pub use tidewall_core::ConfigError;
pub use tidewall_core::backoff::{Backoff, Jitter};
pub use time::{Deadline, FutureExt};

/// The common imports: `use tidewall::prelude::*;`.
pub mod prelude {
    pub use crate::fallback::Fallback;
    pub use crate::retry::RetryExt as _;
    #[cfg(feature = "tokio")]
    pub use crate::rt::Tokio;
    pub use crate::rt::{Clock, Runtime, Spawn, TaskHandle};
    pub use crate::time::FutureExt as _;
    pub use crate::{Backoff, ConfigError, Deadline, Error, Jitter, Rejected, RetryAfter};
}

/// This crate's README's examples, compiled and run as doc tests (the workspace README's are
/// tidewall-reqwest's: its opening example uses that crate).
#[cfg(all(doctest, feature = "tokio"))]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
