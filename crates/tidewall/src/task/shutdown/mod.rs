//! Graceful shutdown: a service's components stopped in reverse start order within one
//! deadline, started by a signal, a trigger or a failing component, with a final report.
//!
//! A [`Scope`](super::scope::Scope) stops children that do related work all at once; a
//! [`Supervisor`](super::supervisor::Supervisor) restarts its children. `Shutdown` is the top of a
//! service: its components may be supervisors, pools or servers, and the order in which
//! they stop matters (stop taking requests before closing the database they use).

mod coordinator;
mod report;

pub use coordinator::{DEFAULT_DEADLINE, Shutdown, ShutdownBuilder};
pub use report::{Cause, ShutdownReport};
