//! [`Shutdown`]: components registered in order, stopped in reverse within one deadline.

use std::future::{Future, poll_fn};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering::SeqCst};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use super::report::{Cause, ShutdownReport};
use crate::ConfigError;
use crate::rt::{
    DefaultRuntime, JoinHandle, Runtime, ShutdownSignals, Signal, Signals, TaskHandle,
    instant_after,
};
use crate::task::{
    CancellationToken, Ending, Exit, Reason, TaskReport, after_abort, ended_already, exit_from,
    exit_of, lost_or, supervisor::ChildError,
};

struct Component<R: Runtime> {
    name: Arc<str>,
    stop: CancellationToken,
    /// The task reports an [`Exit`] (no boxed error in the handle's type: see [`exit_from`]).
    handle: JoinHandle<R, Exit>,
    timeout: Option<Duration>,
    /// Its end as `run` saw it while waiting for the cause (the handle is then spent).
    exited: Option<Exit>,
    ended: Arc<EndMark>,
}

/// Whether the shutdown has begun, as the components' own tasks see it when they end: the
/// trigger was cancelled, or `run` noticed another cause.
struct Began {
    trigger: CancellationToken,
    noticed: AtomicBool,
}

impl Began {
    fn has(&self) -> bool {
        self.trigger.is_cancelled() || self.noticed.load(SeqCst)
    }
}

/// Where a component's task records, as it ends, whether the shutdown had begun.
struct EndMark(AtomicU8);

const RUNNING: u8 = 0;
const ENDED_BEFORE: u8 = 1;
const ENDED_AFTER: u8 = 2;

impl EndMark {
    /// It ended on its own before the shutdown began (final once its task is done).
    fn before(&self) -> bool {
        self.0.load(SeqCst) == ENDED_BEFORE
    }
}

/// Lives in a component's task and records its end when dropped: when the component
/// returns, and also when it panics (dropped while unwinding) or its task is aborted. In
/// the task itself, so the end is recorded whether or not anyone polls the handle.
struct RecordEnd {
    began: Arc<Began>,
    ended: Arc<EndMark>,
}

impl Drop for RecordEnd {
    fn drop(&mut self) {
        let when = if self.began.has() {
            ENDED_AFTER
        } else {
            ENDED_BEFORE
        };
        self.ended.0.store(when, SeqCst);
    }
}

/// How long a shutdown may take in all unless [`ShutdownBuilder::deadline`] says otherwise.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(30);

/// Configures a [`Shutdown`]: [`ShutdownBuilder::new`] (or `Shutdown::builder()` with the
/// `tokio` feature).
#[derive(Debug, Clone)]
#[must_use]
pub struct ShutdownBuilder<R = DefaultRuntime> {
    rt: R,
    deadline: Duration,
}

impl<R> ShutdownBuilder<R> {
    /// Runs the components on `rt`.
    pub fn runtime<R2: Runtime>(self, rt: R2) -> ShutdownBuilder<R2> {
        ShutdownBuilder {
            rt,
            deadline: self.deadline,
        }
    }

    /// The whole shutdown's budget ([`DEFAULT_DEADLINE`] by default), counted from the moment
    /// [`Shutdown::run`] begins stopping components: when it runs out, every component still
    /// running is aborted.
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }
}

impl<R: Runtime> ShutdownBuilder<R> {
    /// Validates the configuration.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Zero`] for a zero deadline, [`ConfigError::DurationOverflow`] beyond
    /// `u64::MAX` nanoseconds.
    pub fn build(self) -> Result<Shutdown<R>, ConfigError> {
        crate::time::positive_duration("deadline", self.deadline)?;
        let trigger = CancellationToken::new();
        Ok(Shutdown {
            rt: self.rt,
            deadline: self.deadline,
            components: Vec::new(),
            began: Arc::new(Began {
                trigger: trigger.clone(),
                noticed: AtomicBool::new(false),
            }),
            trigger,
            signals: None,
            listen: None,
        })
    }
}

/// A graceful-shutdown coordinator for a service's long-lived components.
///
/// Register components in start order (the database pool before the HTTP server that uses
/// it); each runs as a task with its own stop token. [`run`](Self::run) waits for the cause
/// — a signal (after [`listen_for_signals`](Self::listen_for_signals)), the
/// [`trigger`](Self::trigger) token, a component failing, or every component ending (at once
/// when none is registered) — then stops the components in reverse order: each one's token
/// is cancelled and it gets until its own timeout or the global deadline, whichever comes
/// first; when the deadline passes, everything left is aborted. A second signal during the
/// shutdown aborts everything left at once. The [`ShutdownReport`] says what happened to
/// each.
///
/// An abort takes effect at the component's next await, and the shutdown waits for it to
/// take effect before it stops the next component: a component that never yields (a blocking
/// loop on a multi-threaded runtime) holds `run` until it returns or yields.
///
/// **When the shutdown begins:** at the moment the trigger is cancelled (by anyone, or by
/// [`stop`](Self::stop)), or when `run` notices another cause. Each component's task notes,
/// as it ends (returns, fails, or panics), whether the shutdown had begun. A component that
/// ended before is reported with [`Ending::Finished`], whether or not `run` was being
/// polled at the time, and its token is never cancelled. Every other one is stopped at its
/// turn and reported with [`Ending::Stopped`] or [`Ending::Aborted`]: one that ended on its
/// own after the shutdown began, before its turn came, reads `Ending::Stopped` with a `took`
/// of about zero. A component whose task was lost by its runtime before its turn (it reads
/// [`Exit::Aborted`](crate::task::Exit::Aborted)) reads `Ending::Aborted` with a `took` of
/// zero, before or after the shutdown began, as a lost child of a scope does.
///
/// ```
/// use std::time::Duration;
/// use tidewall::task::shutdown::{Cause, Shutdown};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let mut shutdown = Shutdown::builder().deadline(Duration::from_secs(10)).build()?;
/// // shutdown.listen_for_signals()?; // in a service: SIGINT / SIGTERM start the shutdown
/// shutdown.register("db-pool", |stop| async move {
///     stop.cancelled().await;
///     Ok::<(), std::io::Error>(())
/// });
/// shutdown.register("http", |stop| async move {
///     stop.cancelled().await;
///     tokio::time::sleep(Duration::from_millis(250)).await; // drain connections
///     Ok::<(), std::io::Error>(())
/// });
/// shutdown.trigger().cancel("deploy");
/// let report = shutdown.run().await;
/// assert!(matches!(report.cause, Cause::Triggered(ref r) if r.as_str() == "deploy"));
/// let order: Vec<&str> = report.components.iter().map(|c| &*c.name).collect();
/// assert_eq!(order, ["http", "db-pool"]);
/// assert!(report.is_clean());
/// # Ok(()) }
/// ```
pub struct Shutdown<R: Runtime> {
    rt: R,
    deadline: Duration,
    components: Vec<Component<R>>,
    trigger: CancellationToken,
    began: Arc<Began>,
    signals: Option<ShutdownSignals>,
    // Set by `listen_for_signals`: how to listen again for the signal that forces a stop.
    listen: Option<Listen<R>>,
}

type Listen<R> = fn(&R) -> io::Result<ShutdownSignals>;

impl<R: Runtime> std::fmt::Debug for Shutdown<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.components.iter().map(|c| &*c.name).collect();
        f.debug_struct("Shutdown")
            .field("deadline", &self.deadline)
            .field("components", &names)
            .field("listening", &self.signals.is_some())
            .finish_non_exhaustive()
    }
}

impl ShutdownBuilder {
    /// Starts configuring a coordinator on the default runtime, with a 30 s deadline (set
    /// another runtime with [`runtime`](Self::runtime); without the `tokio` feature there is
    /// no default and `build` asks for one).
    pub fn new() -> Self {
        Self {
            rt: DefaultRuntime::default(),
            deadline: DEFAULT_DEADLINE,
        }
    }
}

impl Default for ShutdownBuilder {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(feature = "tokio")]
impl Shutdown<crate::rt::Tokio> {
    /// Starts configuring a coordinator on tokio (`.runtime(..)` switches); the same as
    /// [`ShutdownBuilder::new`], which exists without the `tokio` feature too.
    pub fn builder() -> ShutdownBuilder {
        ShutdownBuilder::new()
    }
}

enum Wake {
    Signal(Signal),
    Triggered,
    Exited(usize, Exit),
    /// Nothing was registered: every component (none) has ended.
    NoComponents,
}

impl<R: Runtime + Signals> Shutdown<R> {
    /// Installs the SIGINT/SIGTERM handlers now (through the runtime seam), so that a signal
    /// from here on starts the shutdown instead of killing the process. Call it early.
    ///
    /// # Errors
    ///
    /// The OS error.
    pub fn listen_for_signals(&mut self) -> io::Result<()> {
        self.signals = Some(self.rt.shutdown_signals()?);
        self.listen = Some(<R as Signals>::shutdown_signals);
        Ok(())
    }
}

impl<R: Runtime> Shutdown<R> {
    /// The token that starts the shutdown when cancelled (its reason is the cause).
    pub fn trigger(&self) -> CancellationToken {
        self.trigger.clone()
    }

    /// Starts a component now: `start(stop)` runs as a task until it returns; `stop` is
    /// cancelled when its turn to stop comes. It gets as long as the global deadline allows.
    pub fn register<F, Fut, E>(&mut self, name: impl Into<Arc<str>>, start: F)
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<ChildError>,
    {
        self.start(name.into(), None, start);
    }

    /// As [`register`](Self::register), with at most `timeout` to stop once told (the global
    /// deadline still applies). Zero aborts it as soon as its turn comes (OTP's
    /// `brutal_kill`), without waiting: it reads [`Ending::Aborted`] unless it had already
    /// ended. Its token is cancelled once the abort has taken effect, for whatever it shared
    /// it with.
    pub fn register_with_timeout<F, Fut, E>(
        &mut self,
        name: impl Into<Arc<str>>,
        timeout: Duration,
        start: F,
    ) where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<ChildError>,
    {
        self.start(name.into(), Some(timeout), start);
    }

    fn start<F, Fut, E>(&mut self, name: Arc<str>, timeout: Option<Duration>, start: F)
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<ChildError>,
    {
        let stop = CancellationToken::new();
        let running = start(stop.clone());
        let ended = Arc::new(EndMark(AtomicU8::new(RUNNING)));
        let record = RecordEnd {
            began: Arc::clone(&self.began),
            ended: Arc::clone(&ended),
        };
        let handle = self.rt.spawn(async move {
            let _record = record;
            exit_from(running.await.map_err(Into::into))
        });
        self.components.push(Component {
            name,
            stop,
            handle,
            timeout,
            exited: None,
            ended,
        });
    }

    /// Waits for the cause, then stops every component in reverse registration order within
    /// the deadline, and reports.
    ///
    /// The cause is what it sees first; when several are there at one poll, the trigger
    /// comes first, then a signal, then the components' ends in registration order. With no
    /// component registered, every component has ended already: unless the trigger is
    /// cancelled or a signal has come, it returns at its first poll with
    /// [`Cause::AllComponentsEnded`] and an empty report. The deadline and the report's `took`
    /// count from the moment it begins stopping components.
    ///
    /// # Cancel safety
    ///
    /// Let it finish. Dropping the future ends the shutdown there, as dropping a `Shutdown`
    /// does: every component not yet stopped has its token cancelled (reason "shutdown
    /// coordinator dropped") and is aborted at once, and so is the one being stopped at
    /// that moment (its token already cancelled): no component outlives the coordinator by
    /// more than the poll it is in (an abort takes effect at its next await point).
    pub async fn run(mut self) -> ShutdownReport {
        let cause = loop {
            match self.wait().await {
                Wake::Signal(signal) => break Cause::Signal(signal),
                Wake::Triggered => {
                    let reason = self.trigger.reason().unwrap_or_else(|| Reason::new(""));
                    break Cause::Triggered(reason);
                }
                Wake::NoComponents => break Cause::AllComponentsEnded,
                Wake::Exited(index, exit) => {
                    let component = &self.components[index];
                    // Any exit but `Ok` starts it: an error, a panic, or a lost task.
                    if !matches!(exit, Exit::Ok(())) {
                        let name = Arc::clone(&component.name);
                        break Cause::ComponentFailed { name, exit };
                    }
                    if self.components.iter().all(|c| c.exited.is_some()) {
                        break Cause::AllComponentsEnded;
                    }
                }
            }
        };
        self.began.noticed.store(true, SeqCst);
        self.stop_all(cause).await
    }

    /// Starts the shutdown now, at the call (not at the first poll), with `reason`; the
    /// future it returns waits for it: [`trigger`](Self::trigger)`.cancel(reason)`, then
    /// [`run`](Self::run).
    ///
    /// # Cancel safety
    ///
    /// As `run`'s: dropping the future aborts every component not yet stopped.
    pub fn stop(self, reason: impl Into<Reason>) -> impl Future<Output = ShutdownReport> {
        self.trigger.cancel(reason);
        self.run()
    }

    async fn wait(&mut self) -> Wake {
        let trigger = self.trigger.clone();
        let mut triggered = std::pin::pin!(trigger.cancelled());
        poll_fn(|cx| {
            if triggered.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Wake::Triggered);
            }
            if let Some(signals) = &mut self.signals
                && let Poll::Ready(signal) = signals.as_mut().poll(cx)
            {
                self.signals = None;
                return Poll::Ready(Wake::Signal(signal));
            }
            for (index, component) in self.components.iter_mut().enumerate() {
                if component.exited.is_some() {
                    continue;
                }
                if let Poll::Ready(result) = Pin::new(&mut component.handle).poll(cx) {
                    let exit = exit_of(result);
                    component.exited = Some(exit.clone());
                    return Poll::Ready(Wake::Exited(index, exit));
                }
            }
            if self.components.is_empty() {
                return Poll::Ready(Wake::NoComponents);
            }
            Poll::Pending
        })
        .await
    }

    async fn stop_all(mut self, cause: Cause) -> ShutdownReport {
        let started = self.rt.now();
        let deadline = instant_after(started, self.deadline);
        // Only a process that listens for signals is forced by one: the *second* signal of
        // the shutdown. So a SIGTERM that follows a triggered shutdown (a Kubernetes preStop
        // hook, then the kubelet's SIGTERM) only counts; the operator's next one forces.
        let mut force = Force {
            listen: self.listen,
            signals_left: if matches!(cause, Cause::Signal(_)) {
                1
            } else {
                2
            },
            listener: match self.signals.take() {
                Some(listener) => Some(listener),
                None if matches!(cause, Cause::Signal(_)) => {
                    self.listen.and_then(|listen| listen(&self.rt).ok())
                }
                None => None,
            },
        };
        let mut forced = false;
        let mut deadline_exceeded = false;
        let mut aborted = 0;
        let mut reports = Vec::with_capacity(self.components.len());
        // Each component stays in `self.components` until it has ended: if this future is
        // dropped mid-wait, `Drop` still finds the one being stopped and aborts it.
        while let Some(component) = self.components.last_mut() {
            // Take in any signal already delivered (and listen for the next one) before this
            // component is told to stop: what it does then may raise the next signal at once.
            if !forced {
                let mut cx = Context::from_waker(Waker::noop());
                forced = force.poll(&self.rt, &mut cx).is_ready();
            }
            let (exit, ending) = if component.ended.before() {
                let exit = match component.exited.take() {
                    Some(exit) => exit,
                    // Its task is done (it recorded its end last): the handle is ready.
                    None => exit_of((&mut component.handle).await),
                };
                let ending = lost_or(&exit, Ending::Finished);
                (exit, ending)
            } else if let Some(exit) = component.exited.take() {
                // `run` saw it end, just after the shutdown began.
                component.stop.cancel("shutting down");
                let ending = lost_or(
                    &exit,
                    Ending::Stopped {
                        took: Duration::ZERO,
                    },
                );
                (exit, ending)
            } else {
                let told = self.rt.now();
                let own = component.timeout.map(|t| instant_after(told, t));
                let until = own.map_or(deadline, |own| own.min(deadline));
                let exit = if forced || until <= told {
                    // No time to stop (a zero timeout, OTP's `brutal_kill`, a deadline passed
                    // or a forced stop): aborted, and the token cancelled only once the abort
                    // has taken effect (below), so it gets no chance to see the stop and end
                    // on its own first, even mid-poll on another thread. (The token is still
                    // cancelled, for whatever it shared it with.) One already ended (lost by
                    // its runtime, say) is not aborted by this shutdown.
                    let ended = ended_already::<R>(&mut component.handle);
                    if ended.is_some() {
                        component.stop.cancel("shutting down");
                    }
                    ended
                } else {
                    component.stop.cancel("shutting down");
                    let waited = wait_for(&self.rt, &mut component.handle, until, &mut force).await;
                    match waited {
                        Waited::Exited(exit) => Some(exit),
                        Waited::TimedOut => None,
                        Waited::Forced => {
                            forced = true;
                            None
                        }
                    }
                };
                let (exit, ending) = match exit {
                    Some(exit) => {
                        let took = self.rt.now().saturating_duration_since(told);
                        let ending = lost_or(&exit, Ending::Stopped { took });
                        (exit, ending)
                    }
                    None => {
                        deadline_exceeded |= !forced && self.rt.now() >= deadline;
                        component.handle.abort();
                        let result = (&mut component.handle).await;
                        component.stop.cancel("shutting down");
                        let took = self.rt.now().saturating_duration_since(told);
                        let (exit, ending) = after_abort(result, took);
                        aborted += usize::from(matches!(ending, Ending::Aborted { .. }));
                        (exit, ending)
                    }
                };
                match ending {
                    // It ended before the shutdown began, but recorded so only after this
                    // coordinator looked: what it recorded decides.
                    Ending::Stopped { .. } if component.ended.before() => (exit, Ending::Finished),
                    ending => (exit, ending),
                }
            };
            if let Some(component) = self.components.pop() {
                reports.push(TaskReport {
                    name: component.name,
                    exit,
                    ending,
                });
            }
        }
        ShutdownReport {
            cause,
            components: reports,
            took: self.rt.now().saturating_duration_since(started),
            deadline_exceeded,
            forced,
            aborted,
        }
    }
}

/// Waits for a component to end, its time to run out, or the signal that forces the
/// shutdown. (A free function: borrowing the coordinator across the wait would require it to
/// be `Sync`, which its signal listener is not.)
async fn wait_for<R: Runtime>(
    rt: &R,
    handle: &mut JoinHandle<R, Exit>,
    until: Instant,
    force: &mut Force<R>,
) -> Waited {
    let mut timer = Box::pin(rt.sleep_until(until));
    poll_fn(|cx| {
        if let Poll::Ready(result) = Pin::new(&mut *handle).poll(cx) {
            return Poll::Ready(Waited::Exited(exit_of(result)));
        }
        if force.poll(rt, cx).is_ready() {
            return Poll::Ready(Waited::Forced);
        }
        timer.as_mut().poll(cx).map(|()| Waited::TimedOut)
    })
    .await
}

/// Signals still to come before a shutdown is forced, and the listener for the next one.
struct Force<R> {
    signals_left: u32,
    listener: Option<ShutdownSignals>,
    listen: Option<Listen<R>>,
}

impl<R: Runtime> Force<R> {
    /// Counts the signals delivered so far; ready once the last one needed has come. A
    /// listener that fires is replaced at once, in the same poll, so the window in which a
    /// signal can slip between two listeners is as short as it can be.
    fn poll(&mut self, rt: &R, cx: &mut Context<'_>) -> Poll<()> {
        while let Some(listener) = &mut self.listener {
            if listener.as_mut().poll(cx).is_pending() {
                break;
            }
            self.signals_left -= 1;
            if self.signals_left == 0 {
                self.listener = None;
                return Poll::Ready(());
            }
            // Listen for the next one (polled at once by the loop).
            self.listener = self.listen.and_then(|listen| listen(rt).ok());
        }
        Poll::Pending
    }
}

impl<R: Runtime> Drop for Shutdown<R> {
    /// A coordinator dropped before `run` (an early `?` between registrations) does not leave
    /// its components running unseen: each is told to stop and aborted.
    fn drop(&mut self) {
        for component in self.components.drain(..).rev() {
            component.stop.cancel("shutdown coordinator dropped");
            component.handle.abort();
        }
    }
}

enum Waited {
    Exited(Exit),
    TimedOut,
    Forced,
}
