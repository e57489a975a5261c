//! What a supervisor reports: events as they happen, and how it ended.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::task::{Ending, Exit, TaskReport};

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
        /// How: `Ok(())`, its error's message, its panic's message, or `Aborted` (its task
        /// was aborted or lost by the runtime).
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
    /// A child was stopped by the supervisor: its token cancelled, then its end awaited
    /// within its shutdown timeout (it is aborted when the timeout runs out; a zero timeout
    /// aborts it at once, without waiting).
    Stopped {
        /// The child.
        child: Arc<str>,
        /// How its future ended: [`Exit::Aborted`] when it was aborted (also when it
        /// panicked as the abort dropped it).
        exit: Exit,
        /// [`Ending::Stopped`] when it ended within its shutdown timeout,
        /// [`Ending::Aborted`] when it was aborted (whatever its exit); `took` counts from the
        /// cancel.
        ending: Ending,
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
    /// Restarts scheduled over its life: one per [`SupervisorEvent::Restarting`], counted
    /// when the restart is decided (an exit that restarts siblings with it, by the
    /// [`Strategy`](super::Strategy), counts once). A restart still waiting for its backoff
    /// delay when `stop` was cancelled counts, though the child never started again; the exit
    /// that exceeded the intensity does not.
    pub restarts: u64,
    /// The children it stopped at the end, in the order stopped (reverse of the order they
    /// were added, whatever restarts happened): each one's exit, and [`Ending::Stopped`] (it
    /// ended within its shutdown timeout, `took` counted from the cancel) or
    /// [`Ending::Aborted`] (it was aborted: its exit is [`Exit::Aborted`], also when it
    /// panicked as the abort dropped it). A child that ended on its own before its turn to be
    /// told (while a sibling was being stopped, say) was not stopped: it is not here, and its
    /// exit is told as a [`SupervisorEvent::Exited`]. In the instant `stop` was cancelled, the
    /// child's end and the stop race (on a multi-threaded runtime, its task may publish its
    /// end just after its turn came): it is then one or the other, never both.
    /// A `stop` that comes while a restart is stopping a failed child's siblings ends the
    /// restart once the sibling being stopped is down: the siblings still running are
    /// stopped by the final stop, and are here (the one the restart was stopping is not: its
    /// [`SupervisorEvent::Stopped`] told its end).
    pub stopped: Vec<TaskReport>,
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
