//! Supervision trees: children restarted by strategy and restart kind within a restart
//! intensity, with backoff, escalation to the parent, and ordered shutdown.
//!
//! Use a [`Supervisor`] for long-lived children that should come back when they fail (a
//! connection loop, a consumer, a cache refresher). For work that ends, use a
//! [`Scope`](super::scope::Scope); for a queue of jobs, a [`WorkerPool`](super::pool::WorkerPool).
//!
//! | OTP | Tidewall |
//! |---|---|
//! | `one_for_one`, `one_for_all`, `rest_for_one` | [`Strategy`] |
//! | `permanent`, `transient`, `temporary` | [`Restart`] |
//! | `intensity`, `period` | [`SupervisorBuilder::intensity`] |
//! | `shutdown` (timeout, `brutal_kill`) | [`ChildSpec::shutdown_timeout`] (zero) |
//! | (none: restarts are immediate) | [`SupervisorBuilder::backoff`], [`SupervisorBuilder::stable_after`] |

mod builder;
mod report;
mod run;
mod spec;

pub use builder::{Strategy, SupervisorBuilder};
pub use report::{Ended, Escalation, SupervisorEvent, SupervisorReport};
pub use run::Supervisor;
pub use spec::{
    ChildError, ChildSpec, DEFAULT_SHUTDOWN_TIMEOUT, Restart, SUPERVISOR_SHUTDOWN_TIMEOUT,
};
