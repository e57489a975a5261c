//! The pure core of Tidewall: policy math with no I/O, no runtime and no allocation.
//!
//! Everything here is a plain value driven by the caller (a delay index, an outcome, a seed), so
//! it can be tested without sleeping and reused on `no_std` targets such as embassy. The async
//! drivers live in the `tidewall` crate.
//!
//! * [`backoff`]: retry delay schedules as `Iterator<Item = Duration>` values, with jitter that is
//!   on by default, a cap that applies *after* jitter, and attempt and elapsed-time budgets.
//! * [`gcra`]: the rate-limit math (one `u64` of state per limit) with its burst sentence.
//! * [`breaker`]: circuit-breaker trip rules, break durations and packed window counters.
//! * [`budget`]: the retry budget, exact in integer parts per million.
//! * [`quantile`]: the log-linear buckets behind the streaming latency estimate for hedging.
//! * [`rng`]: the small seedable generator behind every jitter decision.
//! * [`duration`]: human durations (`"250ms"`, `"1h 30m"`), parsed strictly and printed exactly.
//! * [`ConfigError`]: the one typed error every Tidewall builder returns.
//!
//! ```
//! use core::time::Duration;
//! use tidewall_core::backoff::{Backoff, Jitter};
//!
//! let backoff = Backoff::exponential(Duration::from_millis(100))
//!     .factor(2.0)
//!     .max_delay(Duration::from_secs(1))
//!     .max_attempts(4)
//!     .jitter(Jitter::None)
//!     .build()?;
//! let delays: Vec<Duration> = backoff.delays(0).collect();
//! assert_eq!(delays, [100, 200, 400].map(Duration::from_millis));
//! # Ok::<(), tidewall_core::ConfigError>(())
//! ```
#![no_std]
#![forbid(unsafe_code)]
// On docs.rs, `doc_cfg` labels any platform-gated item with what it needs.
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(test)]
extern crate std;

pub mod adaptive;
pub mod backoff;
pub mod breaker;
pub mod budget;
pub mod duration;
mod error;
pub mod gcra;
pub mod quantile;
pub mod rng;

pub use error::{ConfigError, ConfigRule};

/// This crate's README example, compiled and run as a doc test.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
