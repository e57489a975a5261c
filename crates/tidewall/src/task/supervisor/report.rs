//! What a supervisor reports: events as they happen, and how it ended.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// How a child's run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Exit {
    /// It returned `Ok`.
    Normal,
    /// It returned `Err`; the error's message.
    Failed(String),
    /// It panicked; the panic message.
    Panicked(String),
    /// Its task was aborted or lost by the runtime.
    Aborted,
}

impl Exit {
    /// Whether this is an abnormal exit (a transient child is restarted after one).
    pub fn is_failure(&self) -> bool {
        !matches!(self, Self::Normal)
    }
}

/// How a child stopped when the supervisor stopped it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Stopped {
    /// It ended within its shutdown timeout, this long after its token was cancelled.
    /// (A [`Shutdown`](crate::task::shutdown::Shutdown) reports a component that ended before the
    /// shutdown began as [`ComponentEnd::Early`](crate::task::shutdown::ComponentEnd::Early) instead.)
    InTime {
        /// From the cancel to its end.
        took: Duration,
        /// How it ended.
        exit: Exit,
    },
    /// It was still running when it had to stop (its own shutdown timeout; under a
    /// [`Shutdown`](crate::task::shutdown::Shutdown) also the global deadline or a second signal) and
    /// was aborted.
    Aborted {
        /// From the cancel to the completed abort.
        took: Duration,
    },
}

/// Something that happened under a supervisor, in order (see
/// [`SupervisorBuilder::on_event`](super::SupervisorBuilder::on_event)).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SupervisorEvent {
    /// A child was started (`run` counts its starts from 1).
    Started {
        /// The child.
        child: Arc<str>,
        /// 1 for the first start, 2 after the first restart, …
        run: u64,
    },
    /// A child ended on its own.
    Exited {
        /// The child.
        child: Arc<str>,
        /// How.
        exit: Exit,
    },
    /// A restart was scheduled after `delay` (the strategy may restart siblings with it).
    Restarting {
        /// The child whose exit caused the restart.
        child: Arc<str>,
        /// The backoff delay before the restart.
        delay: Duration,
        /// Restarts within the intensity period, this one included.
        restarts_in_period: u32,
    },
    /// A child was stopped by the supervisor.
    Stopped {
        /// The child.
        child: Arc<str>,
        /// How it stopped.
        how: Stopped,
    },
    /// The restart intensity was exceeded: the supervisor stops its children and fails.
    Escalating {
        /// The child whose exit would have been one restart too many.
        child: Arc<str>,
    },
}

/// Why a supervisor returned `Ok`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Ended {
    /// Its stop token was cancelled.
    Stopped,
    /// Every child ended and none is to be restarted.
    NoChildrenLeft,
    /// The restart intensity was exceeded (the report of an [`Escalation`]).
    Escalated,
}

/// A supervisor's account of its life.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SupervisorReport {
    /// Why it ended.
    pub ended: Ended,
    /// Restarts over its life.
    pub restarts: u64,
    /// The children it stopped at the end, in the order stopped (reverse start order).
    pub stopped: Vec<(Arc<str>, Stopped)>,
}

/// The supervisor failed: a child needed one restart more than the intensity allows. Its
/// children have been stopped (see `report`); its parent decides what happens next.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Escalation {
    /// The child whose exit exceeded the intensity.
    pub child: Arc<str>,
    /// The allowed restarts within `period`.
    pub max_restarts: u32,
    /// The intensity period.
    pub period: Duration,
    /// The shutdown that followed.
    pub report: SupervisorReport,
}

impl fmt::Display for Escalation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "child `{}` exceeded the restart intensity ({} restarts in {:?})",
            self.child, self.max_restarts, self.period
        )
    }
}

impl std::error::Error for Escalation {}
