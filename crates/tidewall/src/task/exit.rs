//! How a task ended, in one vocabulary for scopes, supervisors, worker pools and shutdowns.
//!
//! * [`Exit`]: what the task's future did: returned `Ok` or `Err`, panicked, or was aborted.
//! * [`Ending`]: when it ended relative to being told to stop: on its own, within its grace
//!   period, or aborted when the grace period ran out.
//! * [`TaskReport`]: both, for one named task.
//!
//! | where | how its future ended | when, relative to the stop |
//! |---|---|---|
//! | a scope's [`ChildReport`](super::scope::ChildReport) | `exit: Exit<T, E, Panic>` | `ending: Ending` |
//! | a pool's [`JobHandle`](super::pool::JobHandle) | resolves to `Exit<T, Elapsed, Panic>` | (not reported) |
//! | a supervisor's [`SupervisorEvent`](super::supervisor::SupervisorEvent)s | `Exited { exit, .. }`, `Stopped { exit, .. }` | `Stopped { ending, .. }` |
//! | [`SupervisorReport::stopped`](super::supervisor::SupervisorReport::stopped), [`ShutdownReport::components`](super::shutdown::ShutdownReport::components) | [`TaskReport::exit`] | [`TaskReport::ending`] |

use std::sync::Arc;
use std::time::Duration;

use crate::rt::{JoinError, JoinHandle, Runtime, TaskHandle};
use crate::task::supervisor::ChildError;

/// How a task's future ended.
///
/// The parameters are what each kind of task keeps:
///
/// | task | `T` | `E` | `P` |
/// |---|---|---|---|
/// | a scope's child ([`ChildReport`](super::scope::ChildReport)) | its `Ok` value | its `Err` value | the payload: [`Panic`](crate::rt::Panic) |
/// | a pool's job ([`JobHandle`](super::pool::JobHandle)) | the job's value | [`Elapsed`](crate::time::Elapsed): it exceeded the per-job timeout | the payload: [`Panic`](crate::rt::Panic) |
/// | a supervisor's child, a shutdown's component | `()` | the error's message | the panic's message |
///
/// The last row is the default, a plain `Exit`: messages instead of payloads, so that
/// supervisor and shutdown reports are `Clone` and `Eq`. An `Exit` whose `P` is a
/// [`Panic`](crate::rt::Panic) is only `Debug`.
///
/// ```
/// use tidewall::task::Exit;
///
/// let exits: [Exit; 4] = [
///     Exit::Ok(()),
///     Exit::Err("connection reset".to_owned()),
///     Exit::Panicked("bad state".to_owned()),
///     Exit::Aborted,
/// ];
/// let failures: Vec<bool> = exits.iter().map(Exit::is_failure).collect();
/// assert_eq!(failures, [false, true, true, false]);
///
/// let job: Exit<u64, tidewall::time::Elapsed, tidewall::rt::Panic> = Exit::Ok(49);
/// assert_eq!(job.ok(), Some(49));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Exit<T = (), E = String, P = String> {
    /// It returned `Ok` (a pool job: it returned its value).
    Ok(T),
    /// It returned `Err` (a pool job: it exceeded the per-job timeout and was dropped).
    Err(E),
    /// It panicked: the payload (scope, pool) or its message (supervisor, shutdown).
    Panicked(P),
    /// It was stopped before it ended: aborted when its grace period, shutdown timeout or
    /// drain deadline ran out, or lost by its runtime (its task dropped unfinished). A pool
    /// job also reads `Aborted` when the pool shut down before it started: the job itself is
    /// then in [`PoolReport::handed_back`](super::pool::PoolReport::handed_back). One that
    /// panicked as the abort dropped it (a local whose `Drop` panics) reads `Aborted` too: the
    /// abort ended it.
    Aborted,
}

impl<T, E, P> Exit<T, E, P> {
    /// Whether it failed: returned `Err` or panicked. `Ok` and `Aborted` are not failures.
    ///
    /// This is what a [`FailurePolicy::FailFast`](super::scope::FailurePolicy::FailFast)
    /// scope stops on. (A transient supervisor child is restarted, and a shutdown started,
    /// after any exit but `Ok`: an abort included.)
    pub fn is_failure(&self) -> bool {
        matches!(self, Self::Err(_) | Self::Panicked(_))
    }

    /// The value, if it returned `Ok`.
    pub fn ok(self) -> Option<T> {
        match self {
            Self::Ok(value) => Some(value),
            _ => None,
        }
    }
}

/// When a task ended relative to being told to stop, and how long the stop took.
///
/// `took` counts from the moment the task was told to stop: the cancellation of its scope
/// (as the scope saw it: see [`ChildReport`](super::scope::ChildReport)), or its own token
/// cancelled by its supervisor or, at its turn, by the shutdown.
///
/// ```
/// use std::time::Duration;
/// use tidewall::task::Ending;
///
/// let endings = [
///     Ending::Finished,
///     Ending::Stopped { took: Duration::from_millis(20) },
///     Ending::Aborted { took: Duration::from_secs(5) },
/// ];
/// let aborted = endings.iter().filter(|e| matches!(e, Ending::Aborted { .. })).count();
/// assert_eq!(aborted, 1);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Ending {
    /// It ended on its own, before it was told to stop.
    Finished,
    /// It ended after it was told to stop, within its grace period (a scope's grace, a
    /// supervisor child's shutdown timeout, a shutdown component's timeout or deadline).
    /// One that ended on its own after the stop, or returned just as the abort came (too late
    /// for the abort to take effect), reads `Stopped` too, in a scope's and a shutdown's
    /// reports, which list every task. A supervisor's report lists only the children it
    /// stopped: one that ended on its own before its turn is an exit there
    /// ([`SupervisorEvent::Exited`](super::supervisor::SupervisorEvent::Exited)).
    Stopped {
        /// From the stop to its end.
        took: Duration,
    },
    /// It was still running when its grace period ended, and was aborted; or (with `took`
    /// zero) its task was lost by its runtime before it was told to stop. Its exit is
    /// [`Exit::Aborted`].
    Aborted {
        /// From the stop to the completed abort.
        took: Duration,
    },
}

/// One named task's end: a supervisor's child stopped at its end
/// ([`SupervisorReport::stopped`](super::supervisor::SupervisorReport::stopped): never
/// [`Ending::Finished`]), a shutdown's component
/// ([`ShutdownReport::components`](super::shutdown::ShutdownReport::components)).
///
/// ```
/// use std::time::Duration;
/// use tidewall::task::{CancellationToken, Ending, Exit, TaskReport};
/// use tidewall::task::supervisor::{ChildSpec, Supervisor};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let supervisor = Supervisor::builder()
///     .child(ChildSpec::new("consumer", |stop: CancellationToken| async move {
///         stop.cancelled().await;
///         tokio::time::sleep(Duration::from_millis(30)).await; // commit offsets
///         Ok::<(), std::io::Error>(())
///     }))
///     .build()?;
/// let stop = CancellationToken::new();
/// stop.cancel("deploy");
/// let report = supervisor.run(stop).await?;
/// let [TaskReport { name, exit, ending, .. }] = report.stopped.as_slice() else {
///     panic!("one child was running");
/// };
/// assert_eq!(&**name, "consumer");
/// assert_eq!(*exit, Exit::Ok(()));
/// assert_eq!(*ending, Ending::Stopped { took: Duration::from_millis(30) });
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TaskReport {
    /// The name it was given (a child's spec, a component's registration).
    pub name: Arc<str>,
    /// How its future ended.
    pub exit: Exit,
    /// Whether it ended on its own, after it was told to stop, or by abort.
    pub ending: Ending,
}

/// How a supervised child's or a component's own result reads as an [`Exit`]; computed
/// inside its task.
///
/// Those tasks report an `Exit`, never a `Box<dyn Error>`: a join handle whose output type
/// holds a trait object makes rustc fail to prove the supervisor's and the shutdown
/// coordinator's futures `Send` for a concrete runtime (the object's lifetime bound is
/// erased inside the future).
pub(crate) fn exit_from(result: Result<(), ChildError>) -> Exit {
    match result {
        Ok(()) => Exit::Ok(()),
        Err(error) => Exit::Err(error.to_string()),
    }
}

/// The [`Exit`] of a future run under `catch_unwind`, its panic payload kept.
pub(crate) fn caught<T, E>(
    result: Result<Result<T, E>, Box<dyn std::any::Any + Send>>,
) -> Exit<T, E, crate::rt::Panic> {
    match result {
        Ok(Ok(value)) => Exit::Ok(value),
        Ok(Err(error)) => Exit::Err(error),
        Err(payload) => Exit::Panicked(crate::rt::Panic::new(payload)),
    }
}

/// How a task that a pattern has just aborted ended, once its handle has resolved.
///
/// Only a task that returned before the abort could take effect reads what it returned, with
/// `Ending::Stopped`: the abort did not end it. Any other end is the abort's, `Exit::Aborted`
/// and `Ending::Aborted` (counted as aborted by the shutdown): a panic out of the task as it
/// was aborted (its drop's, which the [`Spawn`](crate::rt::Spawn) contract reports as
/// `Panicked`) included, as the scope and the pool report it.
pub(crate) fn after_abort(result: Result<Exit, JoinError>, took: Duration) -> (Exit, Ending) {
    match result {
        Ok(exit) => (exit, Ending::Stopped { took }),
        Err(_) => (Exit::Aborted, Ending::Aborted { took }),
    }
}

/// The exit of a task whose handle has already resolved, without waiting: to tell one that
/// had ended on its own from one a stop or an abort ends.
pub(crate) fn ended_already<R: Runtime>(handle: &mut JoinHandle<R, Exit>) -> Option<Exit> {
    handle.try_join().map(exit_of)
}

/// How a task that ended without being aborted reads: `ending`, unless it was lost by its
/// runtime (an `Aborted` exit no abort caused), which reads `Aborted` with `took` zero, in
/// every report (a scope's, a supervisor's, a shutdown's).
pub(crate) fn lost_or(exit: &Exit, ending: Ending) -> Ending {
    if matches!(exit, Exit::Aborted) {
        Ending::Aborted {
            took: Duration::ZERO,
        }
    } else {
        ending
    }
}

/// A finished task's [`Exit`], with a panic or an abort read from the join error.
pub(crate) fn exit_of(result: Result<Exit, JoinError>) -> Exit {
    match result {
        Ok(exit) => exit,
        Err(JoinError::Panicked(panic)) => {
            Exit::Panicked(panic.message().unwrap_or("<non-string payload>").to_owned())
        }
        Err(_) => Exit::Aborted,
    }
}
