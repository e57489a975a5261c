//! Structured concurrency: a [`Scope`] owns its children and does not close before every one
//! of them has ended; [`LocalScope`] does the same for `!Send` futures.
//!
//! Use a scope when a piece of work fans out into tasks that must not outlive it (a request
//! handler, a batch, a connection's sub-tasks): a failure cancels the siblings with a reason
//! (or is collected), panics come back as values, and a shutdown cancels, waits a grace
//! period, aborts the rest and reports how each child stopped. For a fixed set of workers
//! draining a queue, use [`WorkerPool`](super::pool::WorkerPool); for long-lived children that must
//! be restarted, a [`Supervisor`](super::supervisor::Supervisor).
//!
//! Joining or shutting a scope down waits for every child to be gone. Dropping it unjoined
//! cancels its token and aborts its children without waiting (a `Drop` cannot wait): each
//! child is dropped at its next poll, so one in the middle of a poll on another thread, or
//! one that never yields, runs on until it does.

mod builder;
mod child;
mod close;
mod engine;
mod ledger;
mod local;
mod lock;
mod report;
mod tasks;

pub use builder::{DEFAULT_GRACE, ScopeBuilder};
pub use local::{LocalScope, LocalSpawner};
pub use report::{ChildId, ChildReport, FailurePolicy, ScopeReport, SpawnError};
pub use tasks::{Scope, Spawner};

/// Runs both futures; `true` when `first` completes first (or both in the same poll).
async fn first_wins(first: impl std::future::Future, second: impl std::future::Future) -> bool {
    let (first, second) = (std::pin::pin!(first), std::pin::pin!(second));
    matches!(
        futures_util::future::select(first, second).await,
        futures_util::future::Either::Left(_)
    )
}
