//! The engine both scope fronts drive: admission under the limit, closing to new spawns,
//! cancellation, each child's end, `next`, and the final report.
//!
//! A front supplies only what differs: how it keeps its running children ([`Children`]) and
//! the cell its state lives in ([`Lock`]): a [`Scope`](super::Scope)'s children are tasks
//! on the runtime, a [`LocalScope`](super::LocalScope)'s are polled by the owner.

use std::future::{Future, poll_fn};
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use super::builder::ScopeBuilder;
use super::ledger::Ledger;
use super::lock::Lock;
use super::report::{ChildId, ChildReport, ScopeReport, SpawnError};
use crate::rt::{Panic, Runtime};
use crate::task::wakers::{HeldSlot, WakerSlots};
use crate::task::{CancellationToken, Exit, Reason};

/// How a front keeps its running children.
pub(super) trait Children {
    /// Children admitted and not yet ended (a spawn in progress counts).
    fn running(&self) -> usize;
    /// Counts in a child just admitted.
    fn admit(&mut self, id: u64);
    /// Remembers the owner's waker while it waits: in a join (`waits_for_all`, woken when
    /// the last child ends) or in `next` (woken by any new report).
    fn park_owner(&mut self, waker: &Waker, waits_for_all: bool);
}

pub(super) struct State<T, E, C> {
    next_id: u64,
    pub(super) closed: bool,
    pub(super) ledger: Ledger<T, E>,
    /// Spawners waiting for a free slot: one slot each, freed when its spawn ends or is
    /// dropped, so abandoned spawns leave nothing behind.
    spawners: WakerSlots,
    pub(super) children: C,
}

impl<T, E, C> State<T, E, C> {
    /// Records the end of a child already taken out of `children`.
    pub(super) fn record_end(
        &mut self,
        id: u64,
        exit: Exit<T, E, Panic>,
        now: impl FnOnce() -> Instant,
        cancelled: bool,
    ) -> (Ended, Option<Exit<T, E, Panic>>) {
        let (fail_fast, discarded) = self.ledger.record(ChildId(id), exit, now, cancelled);
        if fail_fast.is_some() {
            self.closed = true;
        }
        let ended = Ended {
            fail_fast,
            spawners: self.spawners.take_all(),
        };
        (ended, discarded)
    }
}

/// What a child's end leaves to do once the lock is released.
#[must_use]
pub(super) struct Ended {
    fail_fast: Option<Reason>,
    /// A slot is free: each may now be admitted.
    spawners: Vec<Waker>,
}

impl Ended {
    /// Drops the child's discarded value (outside the lock: its `Drop` may call back into the
    /// scope), then cancels the scope if the child failed it fast and wakes the waiting
    /// spawners and `owner`. They are woken even if that `Drop` panics: the panic goes on to
    /// the child's runtime, and must not strand a `join` or a `spawn` waiting for a slot.
    pub(super) fn settle<V>(self, discarded: V, owner: Option<Waker>, token: &CancellationToken) {
        let wake = Settle {
            ended: self,
            owner,
            token,
        };
        drop(discarded);
        drop(wake);
    }
}

/// Settles an [`Ended`] when dropped, unwinding or not.
struct Settle<'a> {
    ended: Ended,
    owner: Option<Waker>,
    token: &'a CancellationToken,
}

impl Drop for Settle<'_> {
    fn drop(&mut self) {
        if let Some(reason) = self.ended.fail_fast.take() {
            self.token.cancel(reason);
        }
        std::mem::take(&mut self.ended.spawners)
            .into_iter()
            .for_each(Waker::wake);
        if let Some(owner) = self.owner.take() {
            owner.wake();
        }
    }
}

enum Admission {
    Admitted(u64),
    Full,
    Closed,
}

pub(super) struct Core<R, L> {
    pub(super) rt: R,
    limit: Option<usize>,
    pub(super) grace: Duration,
    pub(super) token: CancellationToken,
    state: L,
}

impl<R, L: Lock> Core<R, L> {
    pub(super) fn state(&self) -> L::Guard<'_> {
        self.state.lock()
    }

    pub(super) fn limit(&self) -> Option<usize> {
        self.limit
    }
}

impl<T, E, C, R, L> Core<R, L>
where
    C: Children,
    R: Runtime,
    L: Lock<Target = State<T, E, C>>,
{
    pub(super) fn new(
        builder: ScopeBuilder<R>,
        children: C,
        cell: impl FnOnce(L::Target) -> L,
    ) -> Self {
        let token = builder.token();
        let state = State {
            next_id: 0,
            closed: false,
            ledger: Ledger::new(builder.policy, builder.keep_ok),
            spawners: WakerSlots::default(),
            children,
        };
        Self {
            rt: builder.rt,
            limit: builder.limit,
            grace: builder.grace,
            token,
            state: cell(state),
        }
    }

    pub(super) fn running(&self) -> usize {
        self.state().children.running()
    }

    /// Takes a slot for a new child, or says why not; a `waiter` (its waker, and its place
    /// among the waiting spawners) is woken when a slot frees, and gives up its place once
    /// admitted or refused.
    fn admit(&self, waiter: Option<(&Waker, &mut Option<usize>)>) -> Admission {
        let mut state = self.state();
        let admission = if state.closed || self.token.is_cancelled() {
            Admission::Closed
        } else if self
            .limit
            .is_some_and(|limit| state.children.running() >= limit)
        {
            Admission::Full
        } else {
            let id = state.next_id;
            state.next_id += 1;
            state.ledger.spawned += 1;
            state.children.admit(id);
            Admission::Admitted(id)
        };
        if let Some((waker, place)) = waiter {
            match admission {
                Admission::Full => state.spawners.register(place, waker),
                _ => state.spawners.free(place),
            }
        }
        admission
    }

    /// Waits for a slot, calling `before_each_poll` first each time (a local owner drives its
    /// children there), then hands `future` to `launch`; a cancel while waiting refuses it.
    pub(super) async fn spawn<F>(
        &self,
        future: F,
        mut before_each_poll: impl FnMut(&mut Context<'_>),
        launch: impl FnOnce(u64, F),
    ) -> Result<ChildId, SpawnError<F>> {
        let mut pending = Some((future, launch));
        // A cancel must reach a spawner waiting for a slot even if no child ends.
        let mut cancelled = pin!(self.token.cancelled());
        // Its place among the waiting spawners, given up when the spawn ends or is dropped.
        let mut place = HeldSlot::new(|key: &mut Option<usize>| self.state().spawners.free(key));
        poll_fn(|cx| {
            before_each_poll(cx);
            // Empty only after `Ready`, which the `await` never polls again.
            let Some((future, launch)) = pending.take() else {
                return Poll::Pending;
            };
            let admission = self.admit(Some((cx.waker(), &mut place.key)));
            match admission {
                Admission::Admitted(id) => {
                    launch(id, future);
                    Poll::Ready(Ok(ChildId(id)))
                }
                Admission::Closed => Poll::Ready(Err(SpawnError::Closed(future))),
                Admission::Full if cancelled.as_mut().poll(cx).is_ready() => {
                    Poll::Ready(Err(SpawnError::Closed(future)))
                }
                Admission::Full => {
                    pending = Some((future, launch));
                    Poll::Pending
                }
            }
        })
        .await
    }

    /// Hands `future` to `launch` if a slot is free now.
    pub(super) fn try_spawn<F>(
        &self,
        future: F,
        launch: impl FnOnce(u64, F),
    ) -> Result<ChildId, SpawnError<F>> {
        match self.admit(None) {
            Admission::Admitted(id) => {
                launch(id, future);
                Ok(ChildId(id))
            }
            Admission::Closed => Err(SpawnError::Closed(future)),
            Admission::Full => Err(SpawnError::Full(future)),
        }
    }

    /// Refuses new spawns from now on, waking the spawners waiting for a slot to say so.
    pub(super) fn close(&self) {
        let wakers = {
            let mut state = self.state();
            state.closed = true;
            state.spawners.take_all()
        };
        wakers.into_iter().for_each(Waker::wake);
    }

    /// Cancels the token, noting the instant first so the endings are timed from it.
    pub(super) fn cancel(&self, reason: Reason) {
        if !self.token.is_cancelled() {
            self.note_cancel(self.rt.now());
        }
        self.token.cancel(reason);
    }

    /// Records the cancellation instant if none is known yet; returns the known one.
    pub(super) fn note_cancel(&self, now: Instant) -> Instant {
        self.state().ledger.note_cancel(now)
    }

    /// The next report, or `None` once no child runs and none is waiting.
    pub(super) fn poll_next(&self, cx: &mut Context<'_>) -> Poll<Option<ChildReport<T, E>>> {
        let (next, failed) = {
            let mut state = self.state();
            let next = if let Some(report) = state.ledger.take_next() {
                Some(report)
            } else if state.children.running() == 0 {
                None
            } else {
                state.children.park_owner(cx.waker(), false);
                return Poll::Pending;
            };
            (next, state.ledger.fail_reason().cloned())
        };
        self.fail_fast(failed);
        Poll::Ready(next)
    }

    /// Ready once no child runs; only a join asks, so the scope closes then, under the lock
    /// that saw the last child end: no child can start after the join has seen it.
    pub(super) fn poll_all_ended(&self, cx: &mut Context<'_>) -> Poll<()> {
        let failed = {
            let mut state = self.state();
            if state.children.running() != 0 {
                state.children.park_owner(cx.waker(), true);
                return Poll::Pending;
            }
            state.closed = true;
            state.ledger.fail_reason().cloned()
        };
        self.fail_fast(failed);
        Poll::Ready(())
    }

    /// Cancels the token with a fail-fast reason the ledger holds, before the owner sees the
    /// failure: the failing child's task cancels it too, but only after it let go of the
    /// lock, and the owner may get there first. The first reason wins, so either is a no-op
    /// after the other.
    fn fail_fast(&self, failed: Option<Reason>) {
        if let Some(reason) = failed {
            self.token.cancel(reason);
        }
    }

    /// The report of a scope that has been joined.
    pub(super) fn take_report(&self) -> ScopeReport<T, E> {
        let reason = self.token.reason();
        let mut state = self.state();
        let ledger = std::mem::replace(&mut state.ledger, Ledger::new(Default::default(), false));
        ledger.into_report(reason)
    }
}
