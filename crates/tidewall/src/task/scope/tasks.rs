//! [`Scope`]: children as runtime tasks, joined before the scope closes.

use std::future::{Future, poll_fn};
use std::sync::{Arc, Mutex};
use std::task::Context;
use std::time::Duration;

use super::builder::ScopeBuilder;
use super::child::{Child, Shared, TaskChildren, TaskCore};
use super::close::{self, Front};
use super::engine::{Children as _, Core, State};
use super::report::{ChildId, ChildReport, ScopeReport, SpawnError};
use crate::rt::{DefaultRuntime, Runtime};
use crate::task::{CancellationToken, Reason};

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
///   with `CollectAll` the siblings go on. A panic is caught and reported as a value, also
///   one in the child's `Drop` after it returned: that child reads `Exit::Panicked` with the
///   payload (what it returned is dropped), as the same future spawned on the runtime reads
///   [`JoinError::Panicked`](crate::rt::JoinError::Panicked).
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
        let core = &self.shared.core;
        let state = core.state();
        f.debug_struct("Spawner")
            .field("running", &state.children.running())
            .field("closed", &state.closed)
            .field("limit", &core.limit())
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
        self.shared
            .core
            .spawn(future, |_| {}, |id, future| self.launch(id, future))
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
        self.shared
            .core
            .try_spawn(future, |id, future| self.launch(id, future))
    }

    /// The scope's token: clone it into children so they can stop when the scope is
    /// cancelled, and read why.
    pub fn token(&self) -> CancellationToken {
        self.shared.core.token.clone()
    }

    /// Children running now (including those whose spawn is in progress).
    pub fn running(&self) -> usize {
        self.shared.core.running()
    }

    fn launch<F>(&self, id: u64, future: F)
    where
        F: Future<Output = Result<T, E>> + Send + 'static,
    {
        // Detached: the scope tracks the child through its wrapper, not a handle.
        drop(
            self.shared
                .core
                .rt
                .spawn(Child::new(Arc::clone(&self.shared), id, future)),
        );
    }
}

impl<T, E, R> Scope<T, E, R>
where
    T: Send + 'static,
    E: Send + 'static,
    R: Runtime,
{
    pub(super) fn from_builder(builder: ScopeBuilder<R>) -> Self {
        let core = Core::new(builder, TaskChildren::new(), Mutex::new);
        let shared = Arc::new(Shared::new(core));
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
    /// [`SpawnError::Closed`] with the future, unpolled, when the scope is closed or
    /// cancelled (also while waiting), as [`Spawner::spawn`].
    ///
    /// # Cancel safety
    ///
    /// Dropping the returned future before it resolves spawns nothing (and drops `future`).
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
        self.spawner.shared.core.cancel(reason.into());
    }

    /// Refuses new spawns from now on without cancelling anything: a later
    /// [`join`](Self::join) waits only for the children already running.
    pub fn close(&self) {
        self.spawner.shared.core.close();
    }

    /// The next child to end, in completion order; `None` when no child is running and no
    /// report is waiting.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: a report is removed only when it is returned.
    pub async fn next(&mut self) -> Option<ChildReport<T, E>> {
        poll_fn(|cx| self.spawner.shared.core.poll_next(cx)).await
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
        close::join(self).await
    }

    /// As [`join`](Self::join), but children still running after `limit` are cancelled with
    /// `reason`, then get the scope's grace period before they are aborted. Like every
    /// `async fn`, it does nothing until polled: `limit` runs from its first poll.
    ///
    /// # Cancel safety
    ///
    /// As [`join`](Self::join).
    pub async fn join_within(
        self,
        limit: Duration,
        reason: impl Into<Reason>,
    ) -> ScopeReport<T, E> {
        close::join_within(self, limit, reason).await
    }

    /// Two-phase shutdown: cancels the token with `reason`, waits up to `grace` (from the
    /// cancel, at its first poll: like every `async fn`, it does nothing until polled) for the
    /// children to stop, aborts the rest, and waits until the aborted tasks are gone. The
    /// report has each child's ending and how long it took to stop. On a scope cancelled
    /// earlier, the first reason stays.
    ///
    /// # Cancel safety
    ///
    /// As [`join`](Self::join).
    pub async fn shutdown(self, reason: impl Into<Reason>, grace: Duration) -> ScopeReport<T, E> {
        close::shutdown(self, reason.into(), grace).await
    }
}

impl<T, E, R: Runtime> Front<T, E> for Scope<T, E, R> {
    type Runtime = R;
    type Children = TaskChildren;
    type Lock = Mutex<State<T, E, TaskChildren>>;
    type Shared = Arc<Shared<T, E, R>>;

    fn shared(&self) -> Self::Shared {
        Arc::clone(&self.spawner.shared)
    }

    fn core(shared: &Self::Shared) -> &TaskCore<T, E, R> {
        &shared.core
    }

    /// Nothing to do: the children are tasks the runtime polls.
    fn drive(&mut self, _: &mut Context<'_>) {}

    fn abort_all(&mut self) {
        self.spawner.shared.abort_all();
    }

    fn set_closed(&mut self) {
        self.closed = true;
    }
}

impl<T, E, R> Drop for Scope<T, E, R> {
    fn drop(&mut self) {
        if self.closed {
            return;
        }
        let shared = &self.spawner.shared;
        shared
            .core
            .token
            .cancel("scope dropped without being joined");
        shared.core.state().closed = true;
        shared.abort_all();
    }
}
