//! The supervisor's loop: start, watch, restart within the intensity, stop in reverse of the
//! order added.

use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use tidewall_core::backoff::{Backoff, DelayState};

use super::builder::{EventHook, Strategy, SupervisorBuilder};
use super::report::{Ended, Escalation, SupervisorEvent, SupervisorReport};
use super::spec::{ChildSpec, Restart};
use crate::rt::{JoinHandle, Runtime, TaskHandle, instant_after};
use crate::task::{
    CancellationToken, CancelledOwned, Ending, Exit, TaskReport, after_abort, ended_already,
    exit_from, exit_of, lost_or,
};

struct Running<R: Runtime> {
    handle: JoinHandle<R, Exit>,
    stop: CancellationToken,
    started_at: Instant,
}

struct Slot<R: Runtime> {
    spec: ChildSpec,
    running: Option<Running<R>>,
    /// When a scheduled restart is due.
    restart_at: Option<Instant>,
    /// A temporary child that ended or was stopped: OTP deletes it, it never starts again.
    /// (A transient child that ended normally stays: a sibling's one-for-all or rest-for-one
    /// restart starts it again, as in OTP.)
    removed: bool,
    backoff: DelayState,
    runs: u64,
    /// Its exit, seen while the supervisor was stopping other children: handled next, and
    /// dated by when it was seen, not by when it was handled.
    seen_exit: Option<ChildExit>,
}

/// A child's own exit: how it ended, when, and when that run had started.
struct ChildExit {
    exit: Exit,
    at: Instant,
    started_at: Instant,
}

/// An OTP-style supervisor: starts its children in order, restarts them by [`Strategy`] and
/// [`Restart`] kind with a jittered backoff, fails and escalates when restarts exceed the
/// intensity, and stops its children in reverse of the order they were added (OTP's order,
/// whatever restarts happened), each within its own shutdown timeout.
///
/// Supervisors nest: [`ChildSpec::supervisor`] makes one a child of another, so an escalation
/// is a failure of that child in its parent.
///
/// ```
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicU32, Ordering};
/// use std::time::Duration;
/// use tidewall::task::{CancellationToken, supervisor::{ChildSpec, Supervisor}};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let starts = Arc::new(AtomicU32::new(0));
/// let counter = Arc::clone(&starts);
/// let supervisor = Supervisor::builder()
///     .intensity(2, Duration::from_secs(10))
///     .child(ChildSpec::new("flaky", move |_stop| {
///         counter.fetch_add(1, Ordering::SeqCst);
///         async { Err::<(), _>("connection reset") }
///     }))
///     .build()?;
/// let escalation = supervisor.run(CancellationToken::new()).await.unwrap_err();
/// assert_eq!(&*escalation.child, "flaky");
/// assert_eq!(starts.load(Ordering::SeqCst), 3); // the first run and two restarts
/// # Ok(()) }
/// ```
pub struct Supervisor<R: Runtime> {
    rt: R,
    strategy: Strategy,
    max_restarts: u32,
    period: Duration,
    backoff: Backoff,
    stable_after: Duration,
    slots: Vec<Slot<R>>,
    restarts: VecDeque<Instant>,
    total_restarts: u64,
    on_event: Option<EventHook>,
    seed: u64,
}

impl<R: Runtime> std::fmt::Debug for Supervisor<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor")
            .field("strategy", &self.strategy)
            .field("max_restarts", &self.max_restarts)
            .field("period", &self.period)
            .field("children", &self.slots.len())
            .finish_non_exhaustive()
    }
}

#[cfg(feature = "tokio")]
impl Supervisor<crate::rt::Tokio> {
    /// Starts configuring a supervisor on tokio (`.runtime(..)` switches); the same as
    /// [`SupervisorBuilder::new`], which exists without the `tokio` feature too.
    pub fn builder() -> SupervisorBuilder {
        SupervisorBuilder::new()
    }
}

impl ChildSpec {
    /// A child that is itself a supervisor, built afresh by `make` at every (re)start; its
    /// escalation is this child's failure. Its shutdown timeout is
    /// [`SUPERVISOR_SHUTDOWN_TIMEOUT`](super::SUPERVISOR_SHUTDOWN_TIMEOUT) (OTP's `infinity`):
    /// it stops its own children within theirs.
    pub fn supervisor<R, F>(name: impl Into<Arc<str>>, mut make: F) -> Self
    where
        R: Runtime,
        F: FnMut() -> Supervisor<R> + Send + 'static,
    {
        Self::new(name, move |stop| {
            let supervisor = make();
            async move { supervisor.run(stop).await.map(drop) }
        })
        .shutdown_timeout(super::spec::SUPERVISOR_SHUTDOWN_TIMEOUT)
    }
}

enum Event {
    Stop,
    Exited(usize, ChildExit),
    RestartDue,
}

impl<R: Runtime> Supervisor<R> {
    pub(super) fn from_builder(builder: SupervisorBuilder<R>, backoff: Backoff) -> Self {
        let mut supervisor = Self {
            rt: builder.rt,
            strategy: builder.strategy,
            max_restarts: builder.max_restarts,
            period: builder.period,
            backoff,
            stable_after: builder.stable_after.unwrap_or(builder.period),
            slots: Vec::new(),
            restarts: VecDeque::new(),
            total_restarts: 0,
            on_event: builder.on_event,
            seed: builder.seed.unwrap_or_else(crate::seed::fresh_seed),
        };
        for spec in builder.children {
            let seed = supervisor.next_seed();
            supervisor.slots.push(Slot {
                spec,
                running: None,
                restart_at: None,
                removed: false,
                backoff: backoff.start(seed),
                runs: 0,
                seen_exit: None,
            });
        }
        supervisor
    }

    /// Starts the children and supervises them until `stop` is cancelled (then stops them
    /// in reverse of the order they were added, whatever restarts happened, and returns the
    /// report), until no child is left to run, or until the restart intensity is exceeded.
    ///
    /// # Errors
    ///
    /// [`Escalation`] when a child needed one restart more than the intensity allows; the
    /// children have been stopped by then.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future cancels every child's token and aborts it at once, without the
    /// ordered shutdown: cancel `stop` and await the future to stop them in order.
    pub async fn run(mut self, stop: CancellationToken) -> Result<SupervisorReport, Escalation> {
        for index in 0..self.slots.len() {
            self.start(index);
        }
        let mut cancelled = stop.cancelled_owned();
        loop {
            let due = self.slots.iter().filter_map(|s| s.restart_at).min();
            match self.next_event(&mut cancelled, due).await {
                Event::Stop => return Ok(self.stop_all(Ended::Stopped).await),
                Event::RestartDue => self.start_due(),
                Event::Exited(index, exited) => {
                    if let Some(child) = self.on_exit(index, exited, &stop).await {
                        let max_restarts = self.max_restarts;
                        let period = self.period;
                        self.emit(SupervisorEvent::Escalating {
                            child: Arc::clone(&child),
                        });
                        let report = self.stop_all(Ended::Escalated).await;
                        return Err(Escalation {
                            child,
                            max_restarts,
                            period,
                            report,
                        });
                    }
                }
            }
            let idle = self
                .slots
                .iter()
                .all(|s| s.running.is_none() && s.restart_at.is_none() && s.seen_exit.is_none());
            if idle {
                return Ok(self.stop_all(Ended::NoChildrenLeft).await);
            }
        }
    }

    /// The next thing to act on. Not an `async fn`: rustc's `Send` check on the `run` future
    /// trips over the borrowed `Cancelled` inside one ("not general enough").
    fn next_event<'a>(
        &'a mut self,
        cancelled: &'a mut CancelledOwned,
        due: Option<Instant>,
    ) -> impl Future<Output = Event> + 'a {
        let mut timer: Option<Pin<Box<R::Sleep>>> = due.map(|at| Box::pin(self.rt.sleep_until(at)));
        poll_fn(move |cx| {
            if Pin::new(&mut *cancelled).poll(cx).is_ready() {
                return Poll::Ready(Event::Stop);
            }
            // Exits seen earlier happened before any seen now; among them, the earliest first.
            let earliest = (self.slots.iter().enumerate())
                .filter_map(|(index, slot)| Some((slot.seen_exit.as_ref()?.at, index)))
                .min();
            if let Some((_, index)) = earliest
                && let Some(exited) = self.slots[index].seen_exit.take()
            {
                return Poll::Ready(Event::Exited(index, exited));
            }
            for index in 0..self.slots.len() {
                if let Some(exited) = poll_exit(&mut self.slots[index], &self.rt, cx) {
                    return Poll::Ready(Event::Exited(index, exited));
                }
            }
            match timer.as_mut().map(|timer| timer.as_mut().poll(cx)) {
                Some(Poll::Ready(())) => Poll::Ready(Event::RestartDue),
                _ => Poll::Pending,
            }
        })
    }

    /// Handles a child's own exit, dated by when it was seen. Returns the child's name if
    /// restarting it would exceed the intensity.
    async fn on_exit(
        &mut self,
        index: usize,
        exited: ChildExit,
        stop: &CancellationToken,
    ) -> Option<Arc<str>> {
        let ChildExit {
            exit,
            at: now,
            started_at,
        } = exited;
        let slot = &self.slots[index];
        let name = Arc::clone(&slot.spec.name);
        let restart = match slot.spec.restart {
            Restart::Permanent => true,
            // After any exit but `Ok`: an error, a panic, or an abort from outside.
            Restart::Transient => !matches!(exit, Exit::Ok(())),
            Restart::Temporary => false,
        };
        self.tell_exited(index, exit);
        let slot = &mut self.slots[index];
        if !restart {
            slot.removed = slot.spec.restart == Restart::Temporary;
            return None;
        }
        // Intensity: restarts within the last `period`, this one included. The window is
        // closed, as OTP's: a restart exactly `period` ago still counts.
        while self
            .restarts
            .front()
            .is_some_and(|&at| now.saturating_duration_since(at) > self.period)
        {
            self.restarts.pop_front();
        }
        if self.restarts.len() >= self.max_restarts as usize {
            return Some(name);
        }
        self.restarts.push_back(now);
        self.total_restarts += 1;
        if now.saturating_duration_since(started_at) >= self.stable_after {
            // Stable long enough: its backoff starts over (a new seed, so not the same delays).
            let seed = self.next_seed();
            self.slots[index].backoff = self.backoff.start(seed);
        }
        // A schedule that ran out (its attempts or its elapsed budget: the intensity bounds
        // restarts, not the backoff) holds its last delay until the child runs stable again,
        // as a breaker's break backoff does; starting it over would restart a crash loop fast
        // again. A schedule that gave no delay at all (`max_attempts(1)`) holds its cap, as
        // the builder's docs say.
        let delay = self.backoff.next_delay_held(&mut self.slots[index].backoff);
        self.emit(SupervisorEvent::Restarting {
            child: name,
            delay,
            restarts_in_period: u32::try_from(self.restarts.len()).unwrap_or(u32::MAX),
        });
        let group: Vec<usize> = match self.strategy {
            Strategy::OneForOne => vec![index],
            Strategy::OneForAll => (0..self.slots.len()).collect(),
            Strategy::RestForOne => (index..self.slots.len()).collect(),
        };
        // Siblings taken down with it stop in reverse of the order added.
        // (A plain loop: an iterator with a closure held across the await would trip rustc's
        // `Send` check on the `run` future.)
        let siblings: Vec<usize> = group
            .iter()
            .rev()
            .copied()
            .filter(|&i| i != index)
            .collect();
        // The children outside the group are watched meanwhile: one that exits then is dated
        // by its exit, not by the end of these stops (which may take their whole timeouts).
        let outside: Vec<usize> = (0..self.slots.len())
            .filter(|i| !group.contains(i))
            .collect();
        for sibling in siblings {
            if stop.is_cancelled() {
                // The supervisor was told to stop meanwhile: the siblings still running are
                // the final stop's to stop, in its order and in its report.
                break;
            }
            // Ended on its own while an earlier stop was under way: told as the exit it was,
            // and restarted with the group, not once more on its own.
            if let Some(ChildExit { exit, .. }) = self.slots[sibling].seen_exit.take() {
                self.tell_exited(sibling, exit);
                continue;
            }
            if let Some(stopped) = self.stop_one(sibling, &outside).await {
                self.tell_stopped(sibling, stopped);
            }
        }
        let at = instant_after(now, delay);
        for i in group {
            let slot = &mut self.slots[i];
            // Temporary siblings taken down with it are never restarted (OTP deletes them).
            if slot.spec.restart == Restart::Temporary && i != index {
                slot.removed = true;
            }
            if !slot.removed {
                slot.restart_at = Some(at);
            }
        }
        None
    }

    /// Seeds for the children's jitter: a SplitMix64-style sequence from the supervisor's
    /// seed, so a seeded supervisor restarts with the same delays on every run.
    fn next_seed(&mut self) -> u64 {
        self.seed = self.seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        self.seed
    }

    fn start_due(&mut self) {
        let now = self.rt.now();
        for index in 0..self.slots.len() {
            if self.slots[index].restart_at.is_some_and(|at| at <= now) {
                self.slots[index].restart_at = None;
                self.start(index);
            }
        }
    }

    fn start(&mut self, index: usize) {
        let stop = CancellationToken::new();
        let slot = &mut self.slots[index];
        // A factory that panics is a child that panicked at once: reported and restarted
        // like any other (it never takes the supervisor, and its other children, down).
        let factory = &mut slot.spec.factory;
        let child = std::panic::catch_unwind(AssertUnwindSafe(|| factory(stop.clone())))
            .unwrap_or_else(|payload| Box::pin(async move { std::panic::resume_unwind(payload) }));
        slot.runs += 1;
        slot.running = Some(Running {
            handle: self.rt.spawn(async move { exit_from(child.await) }),
            stop,
            started_at: self.rt.now(),
        });
        let event = SupervisorEvent::Started {
            child: Arc::clone(&slot.spec.name),
            run: slot.runs,
        };
        self.emit(event);
    }

    /// Cancels a running child's token, waits its shutdown timeout, then aborts it (a zero
    /// timeout aborts it first, without waiting). Returns how it ended, with
    /// [`Ending::Stopped`] or [`Ending::Aborted`], or [`Ending::Finished`] for one whose task
    /// had ended before it was told (its own exit, unseen yet: not a stop); `None` when it
    /// was not running.
    ///
    /// The child stays in its slot until it has ended: if this future is dropped mid-wait
    /// (the supervisor's own `run` dropped or aborted), `Drop` still finds it and aborts it,
    /// instead of a handle dropped here detaching a child that ignores its token.
    ///
    /// While it waits, the children at `watched` that exit on their own are seen, and their
    /// exits kept (dated) for the loop to handle next.
    async fn stop_one(&mut self, index: usize, watched: &[usize]) -> Option<(Exit, Ending)> {
        let rt = self.rt.clone();
        let slot = &mut self.slots[index];
        slot.restart_at = None;
        let running = slot.running.as_mut()?;
        let reason = format!("supervisor stopping `{}`", slot.spec.name);
        let timeout = slot.spec.shutdown_timeout;
        let cancelled_at = rt.now();
        if let Some(exit) = ended_already::<R>(&mut running.handle) {
            // It ended on its own before this stop (in the same instant, unseen yet): its
            // exit is its own, not the stop's, and a panic of its own must not read as an
            // abort's. The token is still cancelled, for whatever the child shared it with.
            running.stop.cancel(reason);
            slot.running = None;
            let ending = lost_or(&exit, Ending::Finished);
            return Some((exit, ending));
        }
        let in_time = if timeout.is_zero() {
            // OTP's `brutal_kill`: aborted before the token is cancelled, so the child gets no
            // chance to see the stop and end on its own first. (The token is still cancelled,
            // for whatever the child shared it with.)
            running.handle.abort();
            running.stop.cancel(reason);
            None
        } else {
            running.stop.cancel(reason);
            let deadline = instant_after(cancelled_at, timeout);
            let mut timer = Box::pin(rt.sleep_until(deadline));
            let slots = &mut self.slots;
            poll_fn(|cx| {
                for &other in watched {
                    if other != index
                        && let Some(exited) = poll_exit(&mut slots[other], &rt, cx)
                    {
                        slots[other].seen_exit = Some(exited);
                    }
                }
                let Some(running) = &mut slots[index].running else {
                    return Poll::Ready(None);
                };
                if let Poll::Ready(result) = Pin::new(&mut running.handle).poll(cx) {
                    return Poll::Ready(Some(exit_of(result)));
                }
                timer.as_mut().poll(cx).map(|()| None)
            })
            .await
        };
        let running = self.slots[index].running.as_mut()?;
        let stopped = if let Some(exit) = in_time {
            let took = rt.now().saturating_duration_since(cancelled_at);
            let ending = lost_or(&exit, Ending::Stopped { took });
            (exit, ending)
        } else {
            running.handle.abort();
            let result = (&mut running.handle).await;
            let took = rt.now().saturating_duration_since(cancelled_at);
            after_abort(result, took)
        };
        self.slots[index].running = None;
        Some(stopped)
    }

    async fn stop_all(&mut self, ended: Ended) -> SupervisorReport {
        // Exits seen while siblings were being stopped, not handled yet: told in the order
        // they happened, not restarted.
        let mut seen: Vec<(Instant, usize, Exit)> = Vec::new();
        for (index, slot) in self.slots.iter_mut().enumerate() {
            if let Some(ChildExit { exit, at, .. }) = slot.seen_exit.take() {
                seen.push((at, index, exit));
            }
        }
        seen.sort_by_key(|&(at, index, _)| (at, index));
        for (_, index, exit) in seen {
            self.tell_exited(index, exit);
        }
        let mut stopped = Vec::new();
        for index in (0..self.slots.len()).rev() {
            if let Some(stopped_one) = self.stop_one(index, &[]).await {
                stopped.extend(self.tell_stopped(index, stopped_one));
            }
        }
        SupervisorReport {
            ended,
            restarts: self.total_restarts,
            stopped,
        }
    }

    /// Tells how a child [`stop_one`](Self::stop_one) stopped ended, and reports it: one that
    /// had ended on its own before it was told is an exit, as those seen before, and not
    /// reported as stopped.
    fn tell_stopped(&self, index: usize, (exit, ending): (Exit, Ending)) -> Option<TaskReport> {
        if ending == Ending::Finished {
            self.tell_exited(index, exit);
            return None;
        }
        let name = Arc::clone(&self.slots[index].spec.name);
        self.emit(SupervisorEvent::Stopped {
            child: Arc::clone(&name),
            exit: exit.clone(),
            ending,
        });
        Some(TaskReport { name, exit, ending })
    }

    fn tell_exited(&self, index: usize, exit: Exit) {
        let child = Arc::clone(&self.slots[index].spec.name);
        self.emit(SupervisorEvent::Exited { child, exit });
    }

    fn emit(&self, event: SupervisorEvent) {
        crate::telemetry::supervisor_event(&event);
        if let Some(hook) = &self.on_event {
            // A panicking hook must not take the supervisor and its children down: ignored.
            let _ = std::panic::catch_unwind(AssertUnwindSafe(|| hook(&event)));
        }
    }
}

impl<R: Runtime> Drop for Supervisor<R> {
    /// A supervisor dropped before it stopped its children (its `run` future dropped, or
    /// aborted by a parent after its shutdown timeout) takes them down with it: each is told
    /// to stop and aborted, so no worker outlives its supervisor by more than the poll it is
    /// in: an abort takes effect at the child's next await point, so one blocked inside a
    /// poll, or that never yields, runs on until it does, even past a restart of the tree.
    fn drop(&mut self) {
        for slot in &mut self.slots {
            if let Some(running) = slot.running.take() {
                running.stop.cancel("supervisor dropped");
                running.handle.abort();
            }
        }
    }
}

/// The child's own exit, if its task has ended: taken out of its slot, dated now.
fn poll_exit<R: Runtime>(
    slot: &mut Slot<R>,
    rt: &R,
    cx: &mut std::task::Context<'_>,
) -> Option<ChildExit> {
    let running = slot.running.as_mut()?;
    let Poll::Ready(result) = Pin::new(&mut running.handle).poll(cx) else {
        return None;
    };
    let started_at = running.started_at;
    slot.running = None;
    Some(ChildExit {
        exit: exit_of(result),
        at: rt.now(),
        started_at,
    })
}
