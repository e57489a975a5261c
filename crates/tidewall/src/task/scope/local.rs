//! [`LocalScope`]: the same scope for `!Send` futures, driven by its owner.

use std::cell::RefCell;
use std::future::{Future, poll_fn};
use std::panic::AssertUnwindSafe;
use std::pin::{Pin, pin};
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use futures_util::FutureExt as _;
use futures_util::stream::{FuturesUnordered, StreamExt as _};

use super::builder::ScopeBuilder;
use super::close::{Closing, Plan, close};
use super::ledger::Ledger;
use super::report::{ChildId, ChildReport, ScopeReport, SpawnError};
use crate::rt::{DefaultRuntime, Panic, Runtime, instant_after};
use crate::task::{CancellationToken, Exit, Reason};

type LocalChild<T, E> = Pin<Box<dyn Future<Output = (u64, Exit<T, E, Panic>)>>>;

struct LocalState<T, E> {
    /// Spawned, not yet moved into the driver's set.
    incoming: Vec<LocalChild<T, E>>,
    /// Every child not yet ended (incoming or in the set).
    running: hashbrown::HashSet<u64>,
    next_id: u64,
    closed: bool,
    ledger: Ledger<T, E>,
    spawners: Vec<Waker>,
    driver: Option<Waker>,
}

struct LocalShared<T, E, R> {
    rt: R,
    limit: Option<usize>,
    grace: Duration,
    token: CancellationToken,
    state: RefCell<LocalState<T, E>>,
}

/// A [`Scope`](super::Scope) for `!Send` futures: same limit, failure policy, reports, join
/// and two-phase shutdown, on one thread.
///
/// The children are not runtime tasks: the scope polls them itself, inside whichever task
/// awaits [`next`](Self::next), [`join`](Self::join), [`shutdown`](Self::shutdown) or the
/// owner's [`spawn`](Self::spawn) (which keeps the children going while it waits for a slot).
/// So it needs no `LocalSet` and works the same inside a tokio `LocalSet` or local runtime,
/// a smol `LocalExecutor`, or a plain `block_on` — and children make progress only while the
/// owner awaits one of those (as with `FuturesUnordered`). "Aborting" a child drops its
/// future. [`LocalSpawner`]s (cloneable, usable from inside children) queue children for the
/// owner to drive.
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
    shared: Rc<LocalShared<T, E, R>>,
    set: FuturesUnordered<LocalChild<T, E>>,
    closed: bool,
}

/// A cloneable handle that queues `!Send` children into a [`LocalScope`].
pub struct LocalSpawner<T, E, R = DefaultRuntime> {
    shared: Rc<LocalShared<T, E, R>>,
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
            .field("running", &self.shared.state.borrow().running.len())
            .finish_non_exhaustive()
    }
}

impl<T, E, R> std::fmt::Debug for LocalScope<T, E, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalScope")
            .field("running", &self.shared.state.borrow().running.len())
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
        mut before_each_poll: impl FnMut(&mut Context<'_>),
    ) -> Result<ChildId, SpawnError<F>>
    where
        F: Future<Output = Result<T, E>> + 'static,
    {
        let mut future = Some(future);
        let mut cancelled = pin!(self.shared.token.cancelled());
        poll_fn(|cx| {
            before_each_poll(cx);
            // Empty only after `Ready`, which the `await` never polls again.
            let Some(pending) = future.take() else {
                return Poll::Pending;
            };
            match self.admit(pending, Some(cx.waker())) {
                Err(SpawnError::Full(pending)) if cancelled.as_mut().poll(cx).is_ready() => {
                    Poll::Ready(Err(SpawnError::Closed(pending)))
                }
                Err(SpawnError::Full(pending)) => {
                    future = Some(pending);
                    Poll::Pending
                }
                done => Poll::Ready(done),
            }
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
        self.admit(future, None)
    }

    /// The scope's cancellation token.
    pub fn token(&self) -> CancellationToken {
        self.shared.token.clone()
    }

    fn admit<F>(&self, future: F, waiter: Option<&Waker>) -> Result<ChildId, SpawnError<F>>
    where
        F: Future<Output = Result<T, E>> + 'static,
    {
        let mut state = self.shared.state.borrow_mut();
        if state.closed || self.shared.token.is_cancelled() {
            return Err(SpawnError::Closed(future));
        }
        if self
            .shared
            .limit
            .is_some_and(|limit| state.running.len() >= limit)
        {
            if let Some(waker) = waiter
                && !state.spawners.iter().any(|w| w.will_wake(waker))
            {
                state.spawners.push(waker.clone());
            }
            return Err(SpawnError::Full(future));
        }
        let id = state.next_id;
        state.next_id += 1;
        state.ledger.spawned += 1;
        state.running.insert(id);
        state.incoming.push(Box::pin(async move {
            let exit = match AssertUnwindSafe(future).catch_unwind().await {
                Ok(Ok(value)) => Exit::Ok(value),
                Ok(Err(error)) => Exit::Err(error),
                Err(payload) => Exit::Panicked(Panic::new(payload)),
            };
            (id, exit)
        }));
        let driver = state.driver.take();
        drop(state);
        if let Some(driver) = driver {
            driver.wake();
        }
        Ok(ChildId(id))
    }
}

impl<T: 'static, E: 'static, R: Runtime> LocalScope<T, E, R> {
    pub(super) fn from_builder(builder: ScopeBuilder<R>) -> Self {
        let token = builder.token();
        Self {
            shared: Rc::new(LocalShared {
                rt: builder.rt,
                limit: builder.limit,
                grace: builder.grace,
                token,
                state: RefCell::new(LocalState {
                    incoming: Vec::new(),
                    running: hashbrown::HashSet::new(),
                    next_id: 0,
                    closed: false,
                    ledger: Ledger::new(builder.policy, builder.keep_ok),
                    spawners: Vec::new(),
                    driver: None,
                }),
            }),
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

    /// Cancels the scope's token with `reason` (see [`Scope::cancel`](super::Scope::cancel)).
    pub fn cancel(&self, reason: impl Into<Reason>) {
        self.cancel_now(reason.into());
    }

    /// Refuses new spawns from now on without cancelling anything.
    pub fn close(&self) {
        let wakers = {
            let mut state = self.shared.state.borrow_mut();
            state.closed = true;
            std::mem::take(&mut state.spawners)
        };
        wakers.into_iter().for_each(Waker::wake);
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
            let mut state = self.shared.state.borrow_mut();
            match state.ledger.take_next() {
                Some(report) => Poll::Ready(Some(report)),
                None if state.running.is_empty() => Poll::Ready(None),
                None => Poll::Pending,
            }
        })
        .await
    }

    /// See [`Scope::join`](super::Scope::join).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future drops the scope and every child still running.
    pub async fn join(self) -> ScopeReport<T, E> {
        let grace = self.shared.grace;
        self.finish(Plan {
            grace,
            grace_from: None,
            cancel_at: None,
        })
        .await
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
        let at = instant_after(self.shared.rt.now(), limit);
        let grace = self.shared.grace;
        let cancel_at = Some((at, reason.into()));
        self.finish(Plan {
            grace,
            grace_from: None,
            cancel_at,
        })
        .await
    }

    /// See [`Scope::shutdown`](super::Scope::shutdown): cancel, grace, drop the rest, report.
    ///
    /// # Cancel safety
    ///
    /// As [`join`](Self::join).
    pub async fn shutdown(self, reason: impl Into<Reason>, grace: Duration) -> ScopeReport<T, E> {
        self.cancel_now(reason.into());
        let grace_from = Some(self.shared.rt.now());
        self.finish(Plan {
            grace,
            grace_from,
            cancel_at: None,
        })
        .await
    }

    async fn finish(mut self, plan: Plan) -> ScopeReport<T, E> {
        let shared = Rc::clone(&self.shared);
        close(&mut self, &shared.rt, &shared.token, plan).await;
        self.closed = true;
        let reason = shared.token.reason();
        let mut state = shared.state.borrow_mut();
        let ledger = std::mem::replace(&mut state.ledger, Ledger::new(Default::default(), false));
        ledger.into_report(reason)
    }

    /// Polls the children until none is ready, recording each that ends.
    fn drive(&mut self, cx: &mut Context<'_>) {
        loop {
            let incoming = {
                let mut state = self.shared.state.borrow_mut();
                state.driver = Some(cx.waker().clone());
                std::mem::take(&mut state.incoming)
            };
            self.set.extend(incoming);
            let Poll::Ready(Some((id, exit))) = self.set.poll_next_unpin(cx) else {
                // Children spawned from inside children during that poll are picked up here.
                if self.shared.state.borrow().incoming.is_empty() {
                    return;
                }
                continue;
            };
            self.record(id, exit);
        }
    }

    fn record(&self, id: u64, exit: Exit<T, E, Panic>) {
        let rt = &self.shared.rt;
        let cancelled = self.shared.token.is_cancelled();
        let (reason, wakers) = {
            let mut state = self.shared.state.borrow_mut();
            if !state.running.remove(&id) {
                return;
            }
            let reason = state
                .ledger
                .record(ChildId(id), exit, || rt.now(), cancelled);
            if reason.is_some() {
                state.closed = true;
            }
            (reason, std::mem::take(&mut state.spawners))
        };
        if let Some(reason) = reason {
            self.shared.token.cancel(reason);
        }
        wakers.into_iter().for_each(Waker::wake);
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
            let mut state = self.shared.state.borrow_mut();
            state.closed = true;
            std::mem::take(&mut state.incoming)
        };
        drop(queued);
    }
}

impl<T: 'static, E: 'static, R: Runtime> Closing for LocalScope<T, E, R> {
    fn all_ended(&mut self) -> impl Future<Output = ()> + '_ {
        poll_fn(|cx: &mut Context<'_>| {
            self.drive(cx);
            let mut state = self.shared.state.borrow_mut();
            if state.running.is_empty() {
                // Closed under the same borrow that saw the last child end (as in `Scope`).
                state.closed = true;
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
    }

    fn note_cancel(&self, now: Instant) -> Instant {
        self.shared.state.borrow_mut().ledger.note_cancel(now)
    }

    fn cancel_now(&self, reason: Reason) {
        if !self.shared.token.is_cancelled() {
            self.note_cancel(self.shared.rt.now());
        }
        self.shared.token.cancel(reason);
    }

    /// Drops every child still running, recording each as aborted.
    fn abort_all(&mut self) {
        self.set.clear();
        let mut state = self.shared.state.borrow_mut();
        state.incoming.clear();
        let now = self.shared.rt.now();
        let mut left: Vec<_> = state.running.drain().collect();
        left.sort_unstable();
        for id in left {
            state
                .ledger
                .record(ChildId(id), Exit::Aborted, || now, true);
        }
    }
}
