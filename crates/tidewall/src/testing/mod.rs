//! Deterministic time for tests, on any executor (feature `test-util`).
//!
//! * [`FakeClock`]: a virtual monotonic clock with timers that fire only when the clock is
//!   advanced.
//! * [`Clocked`]: wraps any [`Runtime`](crate::rt::Runtime) so that its clock is a `FakeClock`,
//!   and tracks every task spawned through it. [`Clocked::drive`] runs a future and advances
//!   virtual time to the next timer *only when every task is idle*, the same rule as tokio's
//!   paused time, but on smol and async-std too. A test that waits 10 virtual minutes finishes
//!   in microseconds and observes exact instants.
//! * [`Scripted`]: an operation that plays back a script of outcomes (`Err, Err, Ok`) and
//!   records the virtual instant at which each attempt started.
//!
//! ```
//! use std::time::Duration;
//! use tidewall::rt::{Clock, Spawn, Tokio};
//! use tidewall::testing::Clocked;
//!
//! let rt = Clocked::new(Tokio);
//! let tokio = tokio::runtime::Builder::new_current_thread().build().unwrap();
//! let waited = tokio.block_on(rt.drive({
//!     let rt = rt.clone();
//!     async move {
//!         let start = rt.now();
//!         let child = rt.spawn({
//!             let rt = rt.clone();
//!             async move { rt.sleep(Duration::from_secs(600)).await }
//!         });
//!         child.await.unwrap();
//!         rt.now() - start
//!     }
//! }));
//! assert_eq!(waited, Duration::from_secs(600)); // exactly, and instantly
//! ```

mod clock;
mod clocked;
mod scripted;
mod tracked;

pub use clock::{FakeClock, FakeSleep};
pub use clocked::{Clocked, ClockedJoinHandle, Drive};
pub use scripted::Scripted;
