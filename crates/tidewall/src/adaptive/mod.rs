//! Adaptive concurrency: a limit on calls in flight that follows the dependency's latency and
//! drops, as one of the [algorithms](tidewall_core::adaptive) ([`Aimd`], [`Vegas`],
//! [`Gradient2`], [`WindowedGradient`]) says after each call.
//!
//! An [`AdaptiveLimiter`] is a [bulkhead](crate::bulkhead) whose capacity is the algorithm's
//! limit: it admits a call while fewer than the limit are in flight, and otherwise refuses at
//! once or queues up to `max_wait` (never past the caller's deadline), as a bulkhead does.
//! When a call ends, its time since admission, the calls in flight when it was admitted (a
//! queued caller's: when its slot was granted) and whether it failed go to the algorithm, and
//! a new limit resizes the bulkhead before the call's slot goes back; a smaller one revokes
//! nothing held, and admits nobody new, queued callers included, until fewer are in flight. A call that was cancelled, or whose outcome was ignored, teaches
//! the algorithm nothing: it never counts as a fast success.
//!
//! It is an [`Admission`](crate::admission::Admission) stage: in a
//! [pipeline](crate::pipeline) (as its bulkhead, told how each call ended: one sample per
//! call, retries included) and behind [`AdmitLayer`](crate::tower::AdmitLayer) (an error is a
//! failure, unless a layer inside refused the call; in `WaitReady` mode the time runs from
//! `poll_ready`'s admission, so a service left idle after it looks slow).
//!
//! ```
//! use std::time::Duration;
//! use tidewall::adaptive::{AdaptiveLimiter, Gradient2};
//! use tidewall::pipeline::Pipeline;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let limiter = AdaptiveLimiter::builder(Gradient2::builder().initial_limit(20).build()?)
//!     .name("inventory")
//!     .build()?;
//! let pipeline = Pipeline::builder()
//!     .deadline(Duration::from_secs(1))
//!     .bulkhead(limiter.clone())
//!     .build()?;
//! for _ in 0..10 {
//!     pipeline
//!         .call(|| async {
//!             tokio::time::sleep(Duration::from_millis(5)).await;
//!             Ok::<_, std::io::Error>(())
//!         })
//!         .await?;
//! }
//! // One call at a time uses less than half the limit: it says nothing about capacity.
//! assert_eq!(limiter.limit(), 20);
//! # Ok(()) }
//! ```

mod limiter;

pub use crate::admission::{Priority, QueueDiscipline};
pub use limiter::{AdaptiveAdmit, AdaptiveLimiter, AdaptiveLimiterBuilder, AdaptivePermit};
pub use tidewall_core::adaptive::{
    Aimd, AimdBuilder, Gradient2, Gradient2Builder, LimitAlgorithm, Sample, Vegas, VegasBuilder,
    WindowedGradient, WindowedGradientBuilder,
};
