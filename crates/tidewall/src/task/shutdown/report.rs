//! What a shutdown reports.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::rt::Signal;
use crate::task::{Exit, Reason, Stopped};

/// What started the shutdown.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Cause {
    /// The process received a signal.
    Signal(Signal),
    /// The trigger token was cancelled (or [`Shutdown::stop`](super::Shutdown::stop) called).
    Triggered(Reason),
    /// A component failed before any shutdown was asked for.
    ComponentFailed {
        /// The component.
        name: Arc<str>,
        /// How it failed.
        exit: Exit,
    },
    /// Every component ended on its own.
    AllComponentsEnded,
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Signal(signal) => write!(f, "received {signal}"),
            Self::Triggered(reason) => write!(f, "triggered: {reason}"),
            Self::ComponentFailed { name, exit } => {
                write!(f, "component `{name}` failed: {exit:?}")
            }
            Self::AllComponentsEnded => f.write_str("every component ended"),
        }
    }
}

/// How one component ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ComponentEnd {
    /// It had ended on its own before the shutdown began.
    Early(Exit),
    /// It was stopped: within its time, or aborted.
    Stopped(Stopped),
}

/// One component's line in the report.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ComponentReport {
    /// The name it was registered with.
    pub name: Arc<str>,
    /// How it ended.
    pub end: ComponentEnd,
}

/// The final report: why, what happened to each component (in the order they were
/// stopped: reverse registration order), and how long it took.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// What started the shutdown.
    pub cause: Cause,
    /// Each component, in stop order.
    pub components: Vec<ComponentReport>,
    /// From the cause to the last component gone.
    pub took: Duration,
    /// Whether the global deadline passed and the remaining components were aborted.
    pub deadline_exceeded: bool,
    /// Whether a second signal cut the shutdown short (everything left was aborted).
    pub forced: bool,
}

impl ShutdownReport {
    /// Whether every component stopped (or had ended) without being aborted.
    pub fn is_clean(&self) -> bool {
        self.components
            .iter()
            .all(|c| !matches!(c.end, ComponentEnd::Stopped(Stopped::Aborted { .. })))
    }
}
