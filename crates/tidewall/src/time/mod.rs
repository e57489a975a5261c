//! Timeouts and deadlines.
//!
//! * [`FutureExt::timeout`] bounds one future by a duration;
//! * a [`Deadline`] is one instant shared by a whole operation: pass it down and every layer
//!   that takes it (a retry's attempts and backoff sleeps, a pipeline call, a wait for a rate
//!   limit or a bulkhead slot, any future through [`FutureExt::deadline`], the branches of a
//!   fan-out included) spends from the same budget, so nested timeouts cannot add up to more
//!   than the caller allowed.
//!
//! Both are biased toward the operation: when the future and the timer are ready in the same
//! poll, the future's output wins (work that finished is never thrown away).
//!
//! **Cancel safety**: dropping a [`Timeout`] drops the inner future and the timer, nothing else.
//!
//! ```
//! use std::time::Duration;
//! use tidewall::prelude::*;
//! use tidewall::time::Elapsed;
//!
//! # tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap().block_on(async {
//! let slow = tokio::time::sleep(Duration::from_secs(10));
//! assert_eq!(slow.timeout(Duration::from_millis(100)).await, Err(Elapsed));
//!
//! let deadline = Deadline::after(&Tokio, Duration::from_secs(1));
//! let fast = async { 5 };
//! assert_eq!(fast.deadline(deadline).await, Ok(5));
//! # });
//! ```

mod deadline;
mod ext;
mod timeout;

pub use deadline::Deadline;
pub use ext::FutureExt;
pub use timeout::{DeadlineExceeded, Elapsed, Timeout, WithDeadline};

/// Checks a duration a builder needs to be positive and to fit in `u64` nanoseconds (so
/// adding it to a clock reading cannot overflow): the one rule behind every period, timeout
/// and wait setting.
pub(crate) fn positive_duration(
    field: &'static str,
    d: std::time::Duration,
) -> Result<(), crate::ConfigError> {
    if d.is_zero() {
        return Err(crate::ConfigError::Zero { field });
    }
    if u64::try_from(d.as_nanos()).is_err() {
        return Err(crate::ConfigError::DurationOverflow { field });
    }
    Ok(())
}
