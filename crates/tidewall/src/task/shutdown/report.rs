//! What a shutdown reports.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::rt::Signal;
#[cfg(doc)]
use crate::task::Ending;
use crate::task::{Exit, Reason, TaskReport};

/// What started the shutdown.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Cause {
    /// The process received a signal.
    Signal(Signal),
    /// The trigger token was cancelled (or [`Shutdown::stop`](super::Shutdown::stop) called).
    Triggered(Reason),
    /// While [`run`](super::Shutdown::run) waited for a cause, it saw this component end
    /// with any exit but `Ok` (return an error, panic, or be lost by its runtime) with the
    /// trigger not cancelled and no signal come.
    ComponentFailed {
        /// The component.
        name: Arc<str>,
        /// How it ended.
        exit: Exit,
    },
    /// While [`run`](super::Shutdown::run) waited for a cause, it saw every component end on
    /// its own, none failing (at once, when none was registered).
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

/// The final report: why, what happened to each component (in the order they were
/// stopped: reverse registration order), and how long it took.
///
/// Each component's [`TaskReport`] has the name it was registered with, its [`Exit`], and
/// its [`Ending`]:
///
/// * [`Ending::Finished`]: it ended on its own (returned, failed, or panicked) before the
///   shutdown began; its token was never cancelled. This holds even when nobody was polling
///   [`run`](super::Shutdown::run) as it ended (see [`Shutdown`](super::Shutdown) for when
///   the shutdown begins).
/// * [`Ending::Stopped`]: it was still running when the shutdown began; at its turn its token
///   was cancelled and it ended, `took` after the cancel. One that ended on its own during
///   the shutdown, before its turn came, reads `Stopped` with a `took` of about zero.
/// * [`Ending::Aborted`]: it was still running when its own timeout, the global deadline or
///   a second signal came, and was aborted; its exit is [`Exit::Aborted`] (also when it
///   panicked as the abort dropped it). Or, with a
///   `took` of zero, its task was lost by its runtime before its turn (before or during the
///   shutdown): the shutdown aborted nothing, and [`is_clean`](Self::is_clean) says so.
///
/// ```
/// use std::time::Duration;
/// use tidewall::task::{Ending, Exit, shutdown::Shutdown};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let mut shutdown = Shutdown::builder().build()?;
/// shutdown.register("migrations", |_stop| async { Ok::<(), std::io::Error>(()) });
/// shutdown.register("server", |stop| async move {
///     stop.cancelled().await;
///     Ok::<(), std::io::Error>(())
/// });
/// tokio::time::sleep(Duration::from_secs(1)).await; // the migrations finish meanwhile
/// let report = shutdown.stop("deploy").await;
/// let migrations = &report.components[1];
/// assert_eq!((&migrations.exit, migrations.ending), (&Exit::Ok(()), Ending::Finished));
/// let server = &report.components[0];
/// assert_eq!(server.exit, Exit::Ok(()));
/// assert!(matches!(server.ending, Ending::Stopped { .. }));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// What started the shutdown.
    pub cause: Cause,
    /// Each component, in stop order.
    pub components: Vec<TaskReport>,
    /// From the moment [`run`](super::Shutdown::run) began stopping components (when it
    /// noticed the cause, or at its first poll for a trigger cancelled earlier) to the last
    /// component gone.
    pub took: Duration,
    /// Whether the global deadline passed and the remaining components were aborted.
    pub deadline_exceeded: bool,
    /// Whether a second signal cut the shutdown short (everything left was aborted).
    pub forced: bool,
    /// How many components the shutdown itself aborted, whether or not their drops then
    /// panicked: a lost one reads [`Ending::Aborted`] too, and is not among them.
    pub(super) aborted: usize,
}

impl ShutdownReport {
    /// Whether the shutdown aborted no component (one that failed, panicked or was lost on
    /// its own still counts as clean; one that panicked as the shutdown aborted it does not).
    pub fn is_clean(&self) -> bool {
        self.aborted == 0
    }
}
