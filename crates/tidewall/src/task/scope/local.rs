//! [`LocalScope`]: the same scope for `!Send` futures, driven by its owner.

use std::cell::RefCell;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt as _};

use super::builder::ScopeBuilder;
use super::close::{self, Front};
use super::engine::{Children, Core, State};
use super::report::{ChildId, ChildReport, ScopeReport, SpawnError};
use crate::rt::caught::Caught;
use crate::rt::{DefaultRuntime, Panic, Runtime};
use crate::task::{CancellationToken, Exit, Reason, caught};

type LocalChild<T, E> = Pin<Box<dyn Future<Output = (u64, Exit<T, E, Panic>)>>>;

/// A [`LocalScope`]'s running children: futures the owner polls, queued by the spawners until
/// the owner moves them into its set.
pub(super) struct LocalChildren<T, E> {
    /// Spawned, not yet moved into the driver's set.
    incoming: Vec<LocalChild<T, E>>,
    /// Every child not yet ended (incoming or in the set).
    running: hashbrown::HashSet<u64>,
    driver: Option<Waker>,
}

impl<T, E> Children for LocalChildren<T, E> {
    fn running(&self) -> usize {
        self.running.len()
    }

    fn admit(&mut self, id: u64) {
        self.running.insert(id);
    }

    /// Nothing to keep: the owner waits only while it drives the children, which registers
    /// its waker for the spawners.
    fn park_owner(&mut self, _: &Waker, _: bool) {}
}

pub(super) type LocalCore<T, E, R> = Core<R, RefCell<State<T, E, LocalChildren<T, E>>>>;

/// A [`Scope`](super::Scope) for `!Send` futures: same limit, failure policy, reports, join
/// and two-phase shutdown, on one thread.
///
/// The children are not runtime tasks: the scope polls them itself, inside whichever task
/// awaits [`next`](Self::next), [`join`](Self::join), [`shutdown`](Self::shutdown) or the
/// owner's [`spawn`](Self::spawn) (which keeps the children going while it waits for a slot).
/// So it needs no `LocalSet` and works the same inside a tokio `LocalSet` or local runtime,
/// a smol `LocalExecutor`, or a plain `block_on` — and children make progress only while the
/// owner awaits one of those (as with `FuturesUnordered`). "Aborting" a child drops its
/// future; a panic in its `Drop` then is caught, as a runtime catches a task's, and never
/// reaches the owner. [`LocalSpawner`]s (cloneable, usable from inside children) queue
/// children for the owner to drive.
///
/// ```
/// use std::rc::Rc;
/// use tidewall::task::scope::Scope;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let mut scope = Scope::builder().limit(2).build_local::<usize, ()>()?;
/// let shared = Rc::new(vec![1, 2, 3]); // Rc is !Send
/// for i in 0..3 {
///     let shared = Rc::clone(&shared);
///     scope.spawn(async move { Ok(shared[i] * 2) }).await.ok();
/// }
/// let report = scope.join().await;
/// let mut values: Vec<_> = report.children.into_iter().filter_map(|c| c.exit.ok()).collect();
/// values.sort();
/// assert_eq!(values, [2, 4, 6]);
/// # Ok(()) }
/// ```
pub struct LocalScope<T, E, R = DefaultRuntime> {
    shared: Rc<LocalCore<T, E, R>>,
    set: FuturesUnordered<LocalChild<T, E>>,
    closed: bool,
}

/// A cloneable handle that queues `!Send` children into a [`LocalScope`].
pub struct LocalSpawner<T, E, R = DefaultRuntime> {
    shared: Rc<LocalCore<T, E, R>>,
}

impl<T, E, R> Clone for LocalSpawner<T, E, R> {
    fn clone(&self) -> Self {
        Self {
            shared: Rc::clone(&self.shared),
        }
    }
}

impl<T, E, R> std::fmt::Debug for LocalSpawner<T, E, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalSpawner")
            .field("running", &self.shared.state().children.running.len())
            .finish_non_exhaustive()
    }
}

impl<T, E, R> std::fmt::Debug for LocalScope<T, E, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalScope")
            .field("running", &self.shared.state().children.running.len())
            .finish_non_exhaustive()
    }
}

impl<T: 'static, E: 'static, R: Runtime> LocalSpawner<T, E, R> {
    /// Queues `future` as a child, first waiting for a free slot when the scope has a limit
    /// (the owner must be driving the scope for a slot to free).
    ///
    /// # Errors
    ///
    /// [`SpawnError::Closed`] with the future when the scope is closed or cancelled.
    ///
    /// # Cancel safety
    ///
    /// Dropping the returned future spawns nothing.
    pub async fn spawn<F>(&self, future: F) -> Result<ChildId, SpawnError<F>>
    where
        F: Future<Output = Result<T, E>> + 'static,
    {
        self.spawn_driving(future, |_| {}).await
    }

    /// Waits for a slot, calling `before_each_poll` first each time (the owner drives the
    /// children there), and queues `future`; a cancel while waiting refuses it.
    async fn spawn_driving<F>(
        &self,
        future: F,
        before_each_poll: impl FnMut(&mut Context<'_>),
    ) -> Result<ChildId, SpawnError<F>>
    where
        F: Future<Output = Result<T, E>> + 'static,
    {
        self.shared
            .spawn(future, before_each_poll, |id, future| {
                self.launch(id, future)
            })
            .await
    }

    /// Queues `future` as a child if a slot is free now.
    ///
    /// # Errors
    ///
    /// [`SpawnError::Full`] or [`SpawnError::Closed`], with the future.
    pub fn try_spawn<F>(&self, future: F) -> Result<ChildId, SpawnError<F>>
    where
        F: Future<Output = Result<T, E>> + 'static,
    {
        self.shared
            .try_spawn(future, |id, future| self.launch(id, future))
    }

    /// The scope's cancellation token.
    pub fn token(&self) -> CancellationToken {
        self.shared.token.clone()
    }

    /// Children running now (including those queued for the owner to start).
    pub fn running(&self) -> usize {
        self.shared.running()
    }

    /// Queues an admitted child for the owner, and wakes the owner if it waits to drive.
    fn launch<F>(&self, id: u64, future: F)
    where
        F: Future<Output = Result<T, E>> + 'static,
    {
        // Wrapped before it is queued: a child dropped unpolled (aborted, or its scope gone)
        // has its drop's panic caught too.
        let future = Caught::new(future);
        let driver = {
            let mut state = self.shared.state();
            state
                .children
                .incoming
                .push(Box::pin(async move { (id, caught(future.await)) }));
            state.children.driver.take()
        };
        if let Some(driver) = driver {
            driver.wake();
        }
    }
}

impl<T: 'static, E: 'static, R: Runtime> LocalScope<T, E, R> {
    pub(super) fn from_builder(builder: ScopeBuilder<R>) -> Self {
        let children = LocalChildren {
            incoming: Vec::new(),
            running: hashbrown::HashSet::new(),
            driver: None,
        };
        Self {
            shared: Rc::new(Core::new(builder, children, RefCell::new)),
            set: FuturesUnordered::new(),
            closed: false,
        }
    }

    /// A cloneable spawner (children may hold one).
    pub fn spawner(&self) -> LocalSpawner<T, E, R> {
        LocalSpawner {
            shared: Rc::clone(&self.shared),
        }
    }

    /// The scope's cancellation token.
    pub fn token(&self) -> CancellationToken {
        self.shared.token.clone()
    }

    /// Children running now (including those queued for the owner to start).
    pub fn running(&self) -> usize {
        self.shared.running()
    }

    /// See [`LocalSpawner::try_spawn`]: queues `future` if a slot is free now.
    ///
    /// # Errors
    ///
    /// [`SpawnError::Full`] or [`SpawnError::Closed`], with the future.
    pub fn try_spawn<F>(&self, future: F) -> Result<ChildId, SpawnError<F>>
    where
        F: Future<Output = Result<T, E>> + 'static,
    {
        self.spawner().try_spawn(future)
    }

    /// Cancels the scope's token with `reason` (see [`Scope::cancel`](super::Scope::cancel)).
    pub fn cancel(&self, reason: impl Into<Reason>) {
        self.shared.cancel(reason.into());
    }

    /// Refuses new spawns from now on without cancelling anything.
    pub fn close(&self) {
        self.shared.close();
    }

    /// Spawns `future`, driving the running children while it waits for a free slot.
    ///
    /// # Errors
    ///
    /// [`SpawnError::Closed`] with the future when the scope is closed or cancelled.
    ///
    /// # Cancel safety
    ///
    /// Dropping the returned future spawns nothing; children it drove keep their progress.
    pub async fn spawn<F>(&mut self, future: F) -> Result<ChildId, SpawnError<F>>
    where
        F: Future<Output = Result<T, E>> + 'static,
    {
        let spawner = self.spawner();
        // Keep the children going while waiting: a slot frees only when one of them ends.
        spawner.spawn_driving(future, |cx| self.drive(cx)).await
    }

    /// See [`Scope::next`](super::Scope::next); drives the children meanwhile.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe.
    pub async fn next(&mut self) -> Option<ChildReport<T, E>> {
        poll_fn(|cx| {
            self.drive(cx);
            self.shared.poll_next(cx)
        })
        .await
    }

    /// See [`Scope::join`](super::Scope::join).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future drops the scope and every child still running.
    pub async fn join(self) -> ScopeReport<T, E> {
        close::join(self).await
    }

    /// See [`Scope::join_within`](super::Scope::join_within).
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

    /// See [`Scope::shutdown`](super::Scope::shutdown): cancel, grace, drop the rest, report.
    ///
    /// # Cancel safety
    ///
    /// As [`join`](Self::join).
    pub async fn shutdown(self, reason: impl Into<Reason>, grace: Duration) -> ScopeReport<T, E> {
        close::shutdown(self, reason.into(), grace).await
    }

    /// Polls the children until none is ready, recording each that ends.
    fn drive(&mut self, cx: &mut Context<'_>) {
        loop {
            let incoming = {
                let mut state = self.shared.state();
                state.children.driver = Some(cx.waker().clone());
                std::mem::take(&mut state.children.incoming)
            };
            self.set.extend(incoming);
            let Poll::Ready(Some((id, exit))) = self.set.poll_next_unpin(cx) else {
                // Children spawned from inside children during that poll are picked up here.
                if self.shared.state().children.incoming.is_empty() {
                    return;
                }
                continue;
            };
            self.record(id, exit);
        }
    }

    fn record(&self, id: u64, exit: Exit<T, E, Panic>) {
        let core = &*self.shared;
        let cancelled = core.token.is_cancelled();
        let (ended, discarded) = {
            let mut state = core.state();
            if !state.children.running.remove(&id) {
                return;
            }
            state.record_end(id, exit, || core.rt.now(), cancelled)
        };
        // Outside the borrow.
        ended.settle(discarded, None, &core.token);
    }
}

impl<T, E, R> Drop for LocalScope<T, E, R> {
    fn drop(&mut self) {
        if !self.closed {
            self.shared
                .token
                .cancel("scope dropped without being joined");
        }
        // Children queued but never polled go with the scope (one holding a spawner would
        // otherwise keep the shared state, and itself, alive in an `Rc` cycle). Dropped after
        // the borrow ends: their destructors may use a spawner.
        let queued = {
            let mut state = self.shared.state();
            state.closed = true;
            std::mem::take(&mut state.children.incoming)
        };
        drop(queued);
    }
}

impl<T: 'static, E: 'static, R: Runtime> Front<T, E> for LocalScope<T, E, R> {
    type Runtime = R;
    type Children = LocalChildren<T, E>;
    type Lock = RefCell<State<T, E, LocalChildren<T, E>>>;
    type Shared = Rc<LocalCore<T, E, R>>;

    fn shared(&self) -> Self::Shared {
        Rc::clone(&self.shared)
    }

    fn core(shared: &Self::Shared) -> &LocalCore<T, E, R> {
        shared
    }

    fn drive(&mut self, cx: &mut Context<'_>) {
        Self::drive(self, cx);
    }

    /// Drops every child still running, recording each as aborted (a panic in a child's
    /// `Drop` is caught and ignored: the abort is what ended it).
    fn abort_all(&mut self) {
        self.set.clear();
        let queued = {
            let mut state = self.shared.state();
            let now = self.shared.rt.now();
            let mut left: Vec<_> = state.children.running.drain().collect();
            left.sort_unstable();
            for id in left {
                state
                    .ledger
                    .record(ChildId(id), Exit::Aborted, || now, true);
            }
            std::mem::take(&mut state.children.incoming)
        };
        // Dropped after the borrow ends, as in `Drop`: their destructors may use a spawner.
        drop(queued);
    }

    fn set_closed(&mut self) {
        self.closed = true;
    }
}
