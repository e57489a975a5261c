//! [`Scope`]: children as runtime tasks, joined before the scope closes.

use std::future::{Future, poll_fn};
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use super::builder::ScopeBuilder;
use super::close::{Closing, Plan, close};
use super::ledger::Ledger;
use super::report::{ChildId, ChildReport, ScopeReport, SpawnError};
use crate::rt::{DefaultRuntime, Runtime, instant_after};
use crate::task::{CancellationToken, Reason};

use super::child::{Child, Shared, State};

/// A structured-concurrency scope: children run as tasks on the runtime, and the scope does
/// not close before every one of them has ended.
///
/// * **Spawning from anywhere**: [`spawner`](Self::spawner) hands out cloneable [`Spawner`]s
///   (children can spawn siblings). With a [`limit`](ScopeBuilder::limit), `spawn` waits for
///   a free slot and `try_spawn` hands the future back.
/// * **Results as they complete**: [`next`](Self::next). A finished child's task is released
///   at once (unlike a `JoinSet`, which keeps each finished task until joined); only its
///   report is kept, and [`discard_ok`](ScopeBuilder::discard_ok) drops successful ones too.
/// * **Failures**: with [`FailurePolicy::FailFast`](super::FailurePolicy::FailFast) the first
///   `Err` or panic cancels the scope's [`token`](Self::token) with a reason naming the child;
///   with `CollectAll` the siblings go on. A panic is caught and reported as a value.
/// * **Closing**: [`join`](Self::join) waits for every child, including those that children
///   spawn meanwhile, and closes the scope to new spawns once the last one has ended;
///   [`shutdown`](Self::shutdown) cancels with a reason, gives the children a grace period,
///   aborts the rest, waits until the aborted tasks are gone, and reports each child.
///   Dropping a scope without closing it cancels its token and aborts every child.
///
/// Children learn of cancellation through the scope's token, which they clone in.
///
/// ```
/// use tidewall::task::scope::Scope;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let scope = Scope::builder().build::<u32, &str>()?;
/// let token = scope.token();
/// scope.spawn(async move {
///     token.cancelled().await; // a sibling that stops when told to
///     Ok(99)
/// }).await?;
/// for n in 1..=3 {
///     scope.spawn(async move { if n == 3 { Err("bad input") } else { Ok(n * 10) } }).await?;
/// }
/// let report = scope.join().await;
/// assert_eq!((report.succeeded, report.failed), (3, 1));
/// assert!(report.is_balanced());
/// assert_eq!(report.cancel_reason.unwrap().as_str(), "child #3 returned an error");
/// # Ok(()) }
/// ```
pub struct Scope<T, E, R = DefaultRuntime> {
    spawner: Spawner<T, E, R>,
    closed: bool,
}

/// A cloneable handle that spawns children into a [`Scope`].
pub struct Spawner<T, E, R = DefaultRuntime> {
    shared: Arc<Shared<T, E, R>>,
}

impl<T, E, R> Clone for Spawner<T, E, R> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<T, E, R> std::fmt::Debug for Spawner<T, E, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.shared.state();
        f.debug_struct("Spawner")
            .field("running", &state.running)
            .field("closed", &state.closed)
            .field("limit", &self.shared.limit)
            .finish_non_exhaustive()
    }
}

impl<T, E, R> std::fmt::Debug for Scope<T, E, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Scope").field(&self.spawner).finish()
    }
}

impl Scope<(), ()> {
    /// Starts configuring a scope (on the default runtime; fail-fast, no limit, a 5 s grace).
    pub fn builder() -> ScopeBuilder {
        ScopeBuilder::new()
    }
}

impl<T, E, R> Spawner<T, E, R>
where
    T: Send + 'static,
    E: Send + 'static,
    R: Runtime,
{
    /// Spawns `future` as a child, first waiting for a free slot when the scope has a limit.
    ///
    /// # Errors
    ///
    /// [`SpawnError::Closed`] with the future, unpolled, when the scope is closed or
    /// cancelled (also while waiting).
    ///
    /// # Cancel safety
    ///
    /// Dropping the returned future before it resolves spawns nothing (and drops `future`).
    pub async fn spawn<F>(&self, future: F) -> Result<ChildId, SpawnError<F>>
    where
        F: Future<Output = Result<T, E>> + Send + 'static,
    {
        let mut future = Some(future);
        // A cancel must reach a spawner waiting for a slot even if no child ends.
        let mut cancelled = pin!(self.shared.token.cancelled());
        poll_fn(|cx| {
            // Empty only after `Ready`, which the `await` never polls again.
            let Some(pending) = future.take() else {
                return Poll::Pending;
            };
            match self.admit(Some(cx.waker())) {
                Admission::Admitted(id) => Poll::Ready(Ok(self.launch(id, pending))),
                Admission::Closed => Poll::Ready(Err(SpawnError::Closed(pending))),
                Admission::Full if cancelled.as_mut().poll(cx).is_ready() => {
                    Poll::Ready(Err(SpawnError::Closed(pending)))
                }
                Admission::Full => {
                    future = Some(pending);
                    Poll::Pending
                }
            }
        })
        .await
    }

    /// Spawns `future` as a child if a slot is free now.
    ///
    /// # Errors
    ///
    /// [`SpawnError::Full`] at the limit, [`SpawnError::Closed`] when closed or cancelled;
    /// either way the future comes back unpolled.
    pub fn try_spawn<F>(&self, future: F) -> Result<ChildId, SpawnError<F>>
    where
        F: Future<Output = Result<T, E>> + Send + 'static,
    {
        match self.admit(None) {
            Admission::Admitted(id) => Ok(self.launch(id, future)),
            Admission::Closed => Err(SpawnError::Closed(future)),
            Admission::Full => Err(SpawnError::Full(future)),
        }
    }

    /// The scope's token: clone it into children so they can stop when the scope is
    /// cancelled, and read why.
    pub fn token(&self) -> CancellationToken {
        self.shared.token.clone()
    }

    /// Children running now (including those whose spawn is in progress).
    pub fn running(&self) -> usize {
        self.shared.state().running
    }

    fn admit(&self, waiter: Option<&Waker>) -> Admission {
        let mut state = self.shared.state();
        if state.closed || self.shared.token.is_cancelled() {
            return Admission::Closed;
        }
        if self
            .shared
            .limit
            .is_some_and(|limit| state.running >= limit)
        {
            if let Some(waker) = waiter
                && !state.spawners.iter().any(|w| w.will_wake(waker))
            {
                state.spawners.push(waker.clone());
            }
            return Admission::Full;
        }
        let id = state.next_id;
        state.next_id += 1;
        state.ledger.spawned += 1;
        state.running += 1;
        Admission::Admitted(id)
    }

    fn launch<F>(&self, id: u64, future: F) -> ChildId
    where
        F: Future<Output = Result<T, E>> + Send + 'static,
    {
        // Detached: the scope tracks the child through its wrapper, not a handle.
        drop(
            self.shared
                .rt
                .spawn(Child::new(Arc::clone(&self.shared), id, future)),
        );
        ChildId(id)
    }
}

enum Admission {
    Admitted(u64),
    Full,
    Closed,
}

impl<T, E, R> Scope<T, E, R>
where
    T: Send + 'static,
    E: Send + 'static,
    R: Runtime,
{
    pub(super) fn from_builder(builder: ScopeBuilder<R>) -> Self {
        let token = builder.token();
        let ledger = Ledger::new(builder.policy, builder.keep_ok);
        let shared = Arc::new(Shared::new(
            builder.rt,
            builder.limit,
            builder.grace,
            token,
            State::new(ledger),
        ));
        Self {
            spawner: Spawner { shared },
            closed: false,
        }
    }

    /// A cloneable spawner for this scope.
    pub fn spawner(&self) -> Spawner<T, E, R> {
        self.spawner.clone()
    }

    /// See [`Spawner::spawn`].
    ///
    /// # Errors
    ///
    /// [`SpawnError::Closed`] when the scope is cancelled.
    pub async fn spawn<F>(&self, future: F) -> Result<ChildId, SpawnError<F>>
    where
        F: Future<Output = Result<T, E>> + Send + 'static,
    {
        self.spawner.spawn(future).await
    }

    /// See [`Spawner::try_spawn`].
    ///
    /// # Errors
    ///
    /// [`SpawnError::Full`] or [`SpawnError::Closed`], with the future.
    pub fn try_spawn<F>(&self, future: F) -> Result<ChildId, SpawnError<F>>
    where
        F: Future<Output = Result<T, E>> + Send + 'static,
    {
        self.spawner.try_spawn(future)
    }

    /// The scope's cancellation token (see [`Spawner::token`]).
    pub fn token(&self) -> CancellationToken {
        self.spawner.token()
    }

    /// Children running now.
    pub fn running(&self) -> usize {
        self.spawner.running()
    }

    /// Cancels the scope's token with `reason`; children see it, new spawns are refused
    /// (waiting ones too).
    pub fn cancel(&self, reason: impl Into<Reason>) {
        self.cancel_now(reason.into());
    }

    /// Refuses new spawns from now on without cancelling anything: a later
    /// [`join`](Self::join) waits only for the children already running.
    pub fn close(&self) {
        let wakers = {
            let mut state = self.spawner.shared.state();
            state.closed = true;
            std::mem::take(&mut state.spawners)
        };
        wakers.into_iter().for_each(Waker::wake);
    }

    /// The next child to end, in completion order; `None` when no child is running and no
    /// report is waiting.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: a report is removed only when it is returned.
    pub async fn next(&mut self) -> Option<ChildReport<T, E>> {
        poll_fn(|cx| {
            let mut state = self.spawner.shared.state();
            if let Some(report) = state.ledger.take_next() {
                return Poll::Ready(Some(report));
            }
            if state.running == 0 {
                return Poll::Ready(None);
            }
            state.register_owner(cx.waker(), false);
            Poll::Pending
        })
        .await
    }

    /// Waits for every child (children may still spawn siblings meanwhile), then closes the
    /// scope to new spawns. If the scope is (or becomes) cancelled, children still running
    /// after the grace period are aborted and reported so.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future drops the scope: its token is cancelled and every child aborted
    /// (so `join().timeout(..)` loses the report: use [`join_within`](Self::join_within)).
    pub async fn join(self) -> ScopeReport<T, E> {
        let grace = self.spawner.shared.grace;
        self.finish(Plan {
            grace,
            grace_from: None,
            cancel_at: None,
        })
        .await
    }

    /// As [`join`](Self::join), but children still running after `limit` are cancelled with
    /// `reason`, then get the scope's grace period before they are aborted.
    ///
    /// # Cancel safety
    ///
    /// As [`join`](Self::join).
    pub async fn join_within(
        self,
        limit: Duration,
        reason: impl Into<Reason>,
    ) -> ScopeReport<T, E> {
        let shared = &self.spawner.shared;
        let at = instant_after(shared.rt.now(), limit);
        let grace = shared.grace;
        let cancel_at = Some((at, reason.into()));
        self.finish(Plan {
            grace,
            grace_from: None,
            cancel_at,
        })
        .await
    }

    /// Two-phase shutdown: cancels the token with `reason`, waits up to `grace` (from this
    /// call) for the children to stop, aborts the rest, and waits until the aborted tasks are
    /// gone. The report has each child's ending and how long it took to stop. On a scope
    /// cancelled earlier, the first reason stays.
    ///
    /// # Cancel safety
    ///
    /// As [`join`](Self::join).
    pub async fn shutdown(self, reason: impl Into<Reason>, grace: Duration) -> ScopeReport<T, E> {
        self.cancel_now(reason.into());
        let grace_from = Some(self.spawner.shared.rt.now());
        self.finish(Plan {
            grace,
            grace_from,
            cancel_at: None,
        })
        .await
    }

    async fn finish(mut self, plan: Plan) -> ScopeReport<T, E> {
        let shared = Arc::clone(&self.spawner.shared);
        close(&mut self, &shared.rt, &shared.token, plan).await;
        self.closed = true;
        let reason = shared.token.reason();
        let mut state = shared.state();
        let ledger = std::mem::replace(&mut state.ledger, Ledger::new(Default::default(), false));
        ledger.into_report(reason)
    }
}

impl<T, E, R: Runtime> Closing for Scope<T, E, R> {
    fn all_ended(&mut self) -> impl Future<Output = ()> + '_ {
        poll_fn(|cx: &mut Context<'_>| {
            let mut state = self.spawner.shared.state();
            if state.running == 0 {
                // Only the owner's join gets here: from now on the scope is closed, so no
                // child can start after the join has seen the last one end.
                state.closed = true;
                Poll::Ready(())
            } else {
                state.register_owner(cx.waker(), true);
                Poll::Pending
            }
        })
    }

    fn note_cancel(&self, now: Instant) -> Instant {
        self.spawner.shared.state().ledger.note_cancel(now)
    }

    fn cancel_now(&self, reason: Reason) {
        let shared = &self.spawner.shared;
        if !shared.token.is_cancelled() {
            shared.state().ledger.note_cancel(shared.rt.now());
        }
        shared.token.cancel(reason);
    }

    fn abort_all(&mut self) {
        self.spawner.shared.abort_all();
    }
}

impl<T, E, R> Drop for Scope<T, E, R> {
    fn drop(&mut self) {
        if self.closed {
            return;
        }
        let shared = &self.spawner.shared;
        shared.token.cancel("scope dropped without being joined");
        shared.state().closed = true;
        shared.abort_all();
    }
}
