//! Task management: structured concurrency, cancellation with a reason, supervision trees,
//! a bounded worker pool, graceful shutdown, periodic work, health checks, cancellable
//! blocking work. Every piece runs on any [`Runtime`](crate::rt::Runtime).
//!
//! * [`CancellationToken`]: cancel once with a [`Reason`] that every child token and waiter
//!   can read; child tokens; [`CancellationToken::run_until_cancelled`], which checks the token
//!   before every poll of the wrapped future (an always-ready future is still stopped);
//!   a [`DropGuard`].
//! * [`scope`]: a [`Scope`](scope::Scope) (and [`LocalScope`](scope::LocalScope) for `!Send`
//!   futures) whose children cannot outlive its join or shutdown; cloneable spawners, an optional limit, results
//!   as they complete, fail-fast or collect-all, panics as values, and a two-phase shutdown
//!   (cancel, grace, abort) that reports how each child stopped.
//! * [`supervisor`]: OTP-style restarts ([`Strategy`](supervisor::Strategy),
//!   [`Restart`](supervisor::Restart)) within a restart intensity, with jittered backoff,
//!   escalation to the parent, nesting, and shutdown in reverse of the order added.
//! * [`pool`]: a [`WorkerPool`](pool::WorkerPool) of N workers, a bounded queue with backpressure, per-job timeouts and
//!   result handles, panics reported; a shutdown that drains within a deadline and hands back
//!   every job never started (`submitted = completed + failed + handed back`).
//! * [`shutdown`]: a service's components stopped in reverse registration order within one
//!   deadline, started by SIGINT/SIGTERM (through the runtime seam), a trigger, or a failing
//!   component; a final report.
//! * [`Exit`], [`Ending`], [`TaskReport`]: how a task ended, in one vocabulary for scopes,
//!   supervisors, pools and shutdowns: what its future did (returned `Ok` or `Err`,
//!   panicked, was aborted) and when it ended relative to being told to stop.
//! * [`periodic`]: work every period with an explicit missed-tick behaviour, stopped by a
//!   token; [`HealthChecker`]: a probe at once, then one each period, each with a timeout,
//!   published through a watch-style [`HealthHandle`].
//! * [`spawn_blocking_cancellable`]: blocking work with a cooperative [`CancelFlag`], raised
//!   when the result is no longer wanted (see `examples/rayon_offload.rs` for CPU-bound work
//!   on rayon).
//!
//! ```
//! use tidewall::task::CancellationToken;
//!
//! let token = CancellationToken::new();
//! let child = token.child();
//! token.cancel("maintenance window");
//! assert!(child.is_cancelled());
//! assert_eq!(child.reason().unwrap().as_str(), "maintenance window");
//! ```

mod blocking;
mod cancel;
mod exit;
mod periodic;
pub mod pool;
pub mod scope;
pub mod shutdown;
pub mod supervisor;
mod wakers;

pub use blocking::{BlockingTask, CancelFlag, spawn_blocking_cancellable};
pub use cancel::{
    CancellationToken, Cancelled, CancelledOwned, DropGuard, Reason, RunUntilCancelled,
};
pub use exit::{Ending, Exit, TaskReport};
pub(crate) use exit::{after_abort, caught, ended_already, exit_from, exit_of, lost_or};
pub use periodic::{Health, HealthChecker, HealthCheckerBuilder, HealthHandle, periodic};
