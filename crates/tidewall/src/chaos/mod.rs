//! Fault injection (feature `chaos`): delay, fail, hang or alter a share of calls, to see the
//! policies around them do their work.
//!
//! A [`Chaos`] handle decides, call by call, what to inject:
//!
//! | fault | builder | the call | the operation |
//! |---|---|---|---|
//! | latency | [`latency(rate, d)`](ChaosBuilder::latency) | waits `d` on the runtime's clock (from the call, not its first poll), then goes on | called at once; its future first polled after the wait |
//! | error | [`error(rate)`](ChaosBuilder::error) | fails with [`InjectedFault::Error`] | not called |
//! | hang | [`hang(rate)`](ChaosBuilder::hang) | never completes, until a deadline or timeout drops it | not called |
//! | alter | [`alter(rate)`](ChaosBuilder::alter) | its success becomes [`InjectedFault::Altered`]; its errors pass | runs |
//!
//! Error, hang and alter are exclusive outcomes of one call, so their rates may sum to at
//! most 1. Latency is drawn independently and combines with any of them (a delay, then an
//! error: a slow failure). Injected errors reach the caller's error type `E` through
//! `E: From<InjectedFault>`: `Box<dyn Error + Send + Sync>` and tower's `BoxError` take them
//! as they are; implement `From` for your own error type.
//!
//! **Rates** are kept as integers, in parts per million: a rate is 0 or within
//! [0.000001, 1], rounded to the nearest part per million (0.1234567 is kept as 123,457
//! parts, and [`Chaos::settings`] reports it so); NaN, infinities, negative rates, rates
//! above 1 and nonzero rates below one part per million are refused with a typed
//! [`ConfigError`](crate::ConfigError), never a panic, as is an error + hang + alter sum above
//! 10^6 parts.
//!
//! **Deterministic.** What call number `n` gets is a pure function of the seed, `n` and the
//! settings (SplitMix64 draws; the rule is in [`Chaos`]), so a seed replays the same faults on
//! every runtime and machine; [`Chaos::decide_nth`] computes it for tests, and
//! [`Chaos::seed`] reports the seed drawn when none was given.
//!
//! **Switched at run time.** Every clone shares the settings: [`Chaos::set_enabled`],
//! [`set_latency`](Chaos::set_latency), [`set_error_rate`](Chaos::set_error_rate),
//! [`set_hang_rate`](Chaos::set_hang_rate) and [`set_alter_rate`](Chaos::set_alter_rate)
//! take effect for the calls that start after they return. A change is validated as the
//! builder validates, against the other settings in force; an invalid one is refused with its
//! error and the settings in force stay.
//!
//! **Fronts**, over the one engine:
//!
//! * [`Chaos::wrap`]: an operation for a [`Pipeline`](crate::pipeline::Pipeline), as its
//!   innermost stage (`pipeline.call(chaos.wrap(op))`), where the operation is: every attempt
//!   is a call, so the retry stage retries injected errors, the breaker counts them, and the
//!   attempt timeout and the deadline end hangs and long delays;
//!
//!   ```text
//!   deadline → rate limit → bulkhead → retry → circuit breaker → attempt timeout → chaos → op
//!   ```
//! * [`Chaos::call`]: one call, on its own;
//! * [`ChaosLayer`] (with feature `tower`): every request of a service.
//!
//! **Cheap when off.** Without the `chaos` feature none of this exists. With it, a call
//! through a handle that is disabled (or has every rate at 0) reads one atomic, relaxed, and
//! runs the operation as it would without chaos: it draws no number, reads no clock, counts
//! nothing and allocates nothing. Its future is the operation's behind an `Option`, plus an
//! empty pointer: 0.5–3.8 ns a call on the project's VM (docs/BENCHMARKS.md, "Fault injection
//! (chaos) when off"), not the 1 ns aimed at through a pipeline or a tower stack. A call
//! given a fault allocates its state (and its timer) once.
//! With the `metrics` feature, each injection counts in `tidewall_chaos_injections_total`
//! (see [`telemetry`](crate::telemetry)).
//!
//! ```
//! use std::time::Duration;
//! use tidewall::chaos::{Chaos, InjectedFault};
//! use tidewall::pipeline::Pipeline;
//! use tidewall::{Backoff, Error, Jitter};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Every call hangs: the attempt timeout ends each attempt, the retry makes three.
//! let chaos = Chaos::builder().seed(1).hang(1.0).build()?;
//! let pipeline = Pipeline::builder()
//!     .retry(Backoff::constant(Duration::from_millis(10)).jitter(Jitter::None).max_attempts(3).build()?)
//!     .attempt_timeout(Duration::from_millis(100))
//!     .build()?;
//! let op = || async { Ok::<_, InjectedFault>("fresh") };
//! let start = tokio::time::Instant::now();
//! assert_eq!(pipeline.call(chaos.wrap(op)).await, Err(Error::TimedOut));
//! assert_eq!(start.elapsed(), Duration::from_millis(3 * 100 + 2 * 10));
//!
//! // Switched off at run time: the next call runs as if chaos were not there.
//! chaos.set_enabled(false);
//! assert_eq!(pipeline.call(chaos.wrap(op)).await, Ok("fresh"));
//! assert_eq!(chaos.decided(), 3, "a disabled handle draws no number");
//! # Ok(()) }
//! ```
//!
//! A seed replays: the same seed gives the same calls the same faults.
//!
//! ```
//! use tidewall::chaos::{Chaos, Fault};
//!
//! let errors = |seed| -> Result<Vec<u64>, tidewall::ConfigError> {
//!     let chaos = Chaos::builder().seed(seed).error(0.25).build()?;
//!     Ok((0..40).filter(|_| chaos.decide().fault == Some(Fault::Error)).collect())
//! };
//! assert_eq!(errors(7)?, errors(7)?);
//! assert_ne!(errors(7)?, errors(8)?);
//! # Ok::<(), tidewall::ConfigError>(())
//! ```

mod builder;
mod call;
mod decide;
mod fault;
mod handle;
#[cfg(feature = "tower")]
mod tower;

pub use builder::ChaosBuilder;
pub use call::Call;
pub use decide::{Fault, Injection};
pub use fault::InjectedFault;
pub use handle::{Chaos, ChaosSettings};
#[cfg(feature = "tower")]
pub use tower::{ChaosLayer, ChaosService};
