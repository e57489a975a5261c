//! Rate limiting with GCRA: a direct limiter and a keyed one, both exact and lock-light.
//!
//! **Burst, in one sentence:** a limiter that has been idle long enough admits `burst` cells
//! at once, then one cell every `period / count`, so over any span `d` it admits at most
//! `burst + floor(d / interval)` cells (tested exactly in `tests/rate.rs`).
//!
//! * [`RateLimiter`]: one shared limit; `check` is a clock read plus one compare-and-swap.
//! * [`KeyedRateLimiter`]: a limit per key, at most `max_keys` keys, rested keys evicted
//!   losslessly.
//! * Waiting (`until_ready*`) sleeps exactly until the limiter would admit, plus jitter so
//!   waiters do not wake together, and gives up at once when the wait would pass the deadline.
//! * Rejections are values: [`Rejected::RateLimited`](crate::Rejected::RateLimited) with
//!   `retry_after`, which the retry driver and the pipeline honour.
//!
//! **Time:** a limiter reads its [`Clock`](crate::rt::Clock). When that clock is real time
//! when the limiter is built ([`Clock::is_real_time`](crate::rt::Clock::is_real_time): a
//! runtime adapter whose time is not paused), decisions read the CPU's timestamp counter
//! instead (feature `quanta`, on by default), the counter governor reads: no system clock call
//! per decision. Under paused tokio time, a [`FakeClock`](crate::testing::FakeClock), a
//! [`Clocked`](crate::testing::Clocked) runtime or any clock of your own, the limiter follows
//! that clock exactly, so virtual time drives it in tests. The choice is made once, when the
//! limiter is built: build it after pausing tokio's time, inside the paused runtime. A
//! limiter built before the pause, outside the runtime or in a `static` keeps real time, and
//! its `until_ready` would then sleep in virtual time while deciding in real time. Time is
//! kept as `u64` nanoseconds since the limiter was built, so decisions are exact for 584
//! years of its life less the length of a full burst (its `burst × period / count`): past
//! that, a cell whose cost would reach beyond 584 years is refused, never admitted. One cell
//! a year with a burst of 500 is exact for its first 84 years.
//!
//! Fairness: waiters are not queued; whoever checks first after a refill wins (the jitter
//! spreads them). Use a [bulkhead](crate::bulkhead) in front if you need FIFO.
//!
//! ```
//! use std::time::Duration;
//! use tidewall::rate::RateLimiter;
//!
//! let limiter = RateLimiter::builder(10, Duration::from_secs(3_600)).burst(10).build()?;
//! let admitted = (0..50).filter(|_| limiter.check().is_ok()).count();
//! assert_eq!(admitted, 10, "a burst of 10 at one instant, then one per 6 minutes");
//! # Ok::<(), tidewall::ConfigError>(())
//! ```

pub(crate) mod clock;
mod direct;
mod keyed;
mod until_ready;
mod wait;

pub use direct::{RateLimiter, RateLimiterBuilder};
pub use keyed::{KeyedRateLimiter, KeyedRateLimiterBuilder};
pub use tidewall_core::gcra::Gcra;
pub use until_ready::UntilReady;
