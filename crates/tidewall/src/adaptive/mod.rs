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
//! nothing held, and admits nobody new, queued callers included, until fewer are in flight.
//! A call that was cancelled, or whose outcome was ignored, teaches the algorithm nothing: it
//! never counts as a fast success.
//!
//! Updates are made one at a time, under the algorithm's lock, except for a sample that the
//! algorithm says ([`LimitAlgorithm::steady`]) would leave it exactly as it is: that call
//! ends without the lock, with the same outcome. AIMD's steady samples are the successes
//! within its timeout that found under half the limit in use (or any number, at its most
//! limit), a fixed limit's are all of them; Vegas and Gradient2 learn from every sample, so
//! every call of theirs takes the lock.
//!
//! **Time:** as a [rate limiter](crate::rate)'s. Calls are timed on the limiter's runtime's
//! clock, except that when that clock is real time as the limiter is built
//! ([`Clock::is_real_time`](crate::rt::Clock::is_real_time)) they are timed on the CPU's
//! counter (feature `quanta`), which costs no system call. The choice is made once, at
//! build: in a test, build the limiter after pausing tokio's time, inside the paused runtime.
//! One built before the pause keeps timing calls in real time while its waits run in virtual
//! time, so a virtual second's call looks instant to its algorithm. Its waits always use the
//! runtime's clock.
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
//!
//! **Shedding by priority.** Each call has a [`Priority`]: a handle made with
//! [`with_priority`](AdaptiveLimiter::with_priority) admits its calls while fewer than their
//! [`share`](AdaptiveLimiterBuilder::share) of the limit are in flight (sheddable calls: 0.8
//! of it by default), so as the limit nears, sheddable work is refused first and critical
//! work last. With a queue, the most important waiters are served first, the newest of the
//! least important is shed to make room, and a [`QueueDiscipline`] (LIFO, or CoDel's bound on
//! the wait once the queue stands) keeps a standing queue from delaying everyone. A priority
//! per request under tower: one [`AdmitLayer`](crate::tower::AdmitLayer) per priority, picked
//! by `tower::steer::Steer` (its docs show how).
//!
//! ```
//! use tidewall::adaptive::{AdaptiveLimiter, Priority, WindowedGradient};
//!
//! let limiter = AdaptiveLimiter::builder(WindowedGradient::builder().initial_limit(20).build()?)
//!     .share(Priority::Sheddable, 0.5)
//!     .build()?;
//! let prefetch = limiter.with_priority(Priority::Sheddable);
//! // (The windowed gradient first measures the no-load RTT at its min_limit, 3.)
//! let held: Vec<_> = (0..2).map(|_| prefetch.try_acquire().unwrap()).collect();
//! assert!(prefetch.try_acquire().is_err(), "2 of 3 in flight: half the limit is used");
//! assert!(limiter.try_acquire().is_ok(), "default calls have all of it");
//! # drop(held);
//! # Ok::<(), tidewall::ConfigError>(())
//! ```
//!
//! **Per key.** A [`KeyedAdaptiveLimiter`] (built with
//! [`keyed`](AdaptiveLimiterBuilder::keyed)) holds a limiter per key (per host, per tenant)
//! in bounded memory, each learning from its own calls alone: one slow host lowers its own
//! limit and no other. A key's handle ([`get`](KeyedAdaptiveLimiter::get)) is the stage of a
//! pipeline or a layer serving that key. A key with nothing out may be forgotten to make room,
//! and what it learned with it: seen again, it starts from the initial limit.
//!
//! ```
//! use std::time::Duration;
//! use tidewall::adaptive::{AdaptiveLimiter, Aimd};
//! use tidewall::pipeline::Pipeline;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let aimd = Aimd::builder()
//!     .initial_limit(10)
//!     .min_limit(1)
//!     .timeout(Duration::from_millis(100))
//!     .build()?;
//! let hosts = AdaptiveLimiter::builder(aimd).keyed().max_keys(10_000).build::<String>()?;
//! for host in ["fast.example", "slow.example"] {
//!     let pipeline = Pipeline::builder().bulkhead(hosts.get(&host.to_owned())?).build()?;
//!     let latency = if host == "slow.example" { 500 } else { 5 };
//!     pipeline
//!         .call(|| async move {
//!             tokio::time::sleep(Duration::from_millis(latency)).await;
//!             Ok::<_, std::io::Error>(())
//!         })
//!         .await?;
//! }
//! // Slower than the timeout counts as a drop: only that host's limit backs off.
//! assert_eq!(hosts.limit(&"slow.example".to_owned()), Some(9));
//! assert_eq!(hosts.limit(&"fast.example".to_owned()), Some(10));
//! # Ok(()) }
//! ```

mod keyed;
mod limiter;
mod steady;

pub use crate::admission::{Priority, QueueDiscipline};
pub use keyed::{KeyedAdaptiveLimiter, KeyedAdaptiveLimiterBuilder};
pub use limiter::{AdaptiveAdmit, AdaptiveLimiter, AdaptiveLimiterBuilder, AdaptivePermit};
pub use tidewall_core::adaptive::{
    Aimd, AimdBuilder, AnyAlgorithm, FixedLimit, Gradient2, Gradient2Builder, LimitAlgorithm,
    Sample, Steady, Vegas, VegasBuilder, WindowedGradient, WindowedGradientBuilder,
};
