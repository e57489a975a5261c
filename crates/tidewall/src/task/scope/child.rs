//! A [`Scope`](super::Scope)'s shared state and the wrapper every child runs in.
//!
//! The scope keeps no join handles: a child's task is detached at spawn, and an abort is
//! delivered by the wrapper itself, which drops the child's future when the scope's abort
//! flag is up (woken through a waker it registered the first time the child was pending).
//! So a spawn costs one lock and a finish one more, and a child that completes at its first
//! poll never registers anything.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures_util::FutureExt as _;
use futures_util::future::CatchUnwind;
use pin_project_lite::pin_project;

use super::ledger::Ledger;
use super::report::ChildId;
use crate::rt::{Panic, Runtime};
use crate::task::{CancellationToken, Exit};

pub(super) struct State<T, E> {
    /// Children admitted and not yet ended (a spawn in progress counts).
    pub(super) running: usize,
    pub(super) next_id: u64,
    pub(super) closed: bool,
    pub(super) ledger: Ledger<T, E>,
    pub(super) spawners: Vec<Waker>,
    pub(super) owner: Option<Waker>,
    /// The owner waits in `join` (woken when the last child ends), not in `next` (woken by
    /// any new report).
    pub(super) owner_waits_for_all: bool,
    /// Wakers of children that have been pending, so an abort reaches them; slots are reused.
    abort_wakers: Vec<Option<Waker>>,
    free_slots: Vec<usize>,
}

impl<T, E> State<T, E> {
    pub(super) fn new(ledger: Ledger<T, E>) -> Self {
        Self {
            running: 0,
            next_id: 0,
            closed: false,
            ledger,
            spawners: Vec::new(),
            owner: None,
            owner_waits_for_all: false,
            abort_wakers: Vec::new(),
            free_slots: Vec::new(),
        }
    }

    pub(super) fn register_owner(&mut self, waker: &Waker, waits_for_all: bool) {
        if !self.owner.as_ref().is_some_and(|w| w.will_wake(waker)) {
            self.owner = Some(waker.clone());
        }
        self.owner_waits_for_all = waits_for_all;
    }

    fn register_abort_waker(&mut self, slot: Option<usize>, waker: &Waker) -> usize {
        let waker = Some(waker.clone());
        match slot {
            Some(slot) => {
                self.abort_wakers[slot] = waker;
                slot
            }
            None => match self.free_slots.pop() {
                Some(slot) => {
                    self.abort_wakers[slot] = waker;
                    slot
                }
                None => {
                    self.abort_wakers.push(waker);
                    self.abort_wakers.len() - 1
                }
            },
        }
    }
}

pub(super) struct Shared<T, E, R> {
    pub(super) rt: R,
    pub(super) limit: Option<usize>,
    pub(super) grace: Duration,
    pub(super) token: CancellationToken,
    /// Up once the grace period is over (or the scope is dropped): every child's wrapper
    /// drops its future at its next poll. Raised under the state lock, so a child that
    /// registers its waker under that lock either sees it or is woken by it.
    aborting: AtomicBool,
    state: Mutex<State<T, E>>,
}

impl<T, E, R> Shared<T, E, R> {
    pub(super) fn state(&self) -> MutexGuard<'_, State<T, E>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Aborts every child: each drops its future at its next poll (at once if pending).
    pub(super) fn abort_all(&self) {
        let wakers: Vec<Waker> = {
            let mut state = self.state();
            self.aborting.store(true, Ordering::Release);
            state
                .abort_wakers
                .iter_mut()
                .filter_map(Option::take)
                .collect()
        };
        wakers.into_iter().for_each(Waker::wake);
    }
}

impl<T, E, R: Runtime> Shared<T, E, R> {
    pub(super) fn new(
        rt: R,
        limit: Option<usize>,
        grace: Duration,
        token: CancellationToken,
        state: State<T, E>,
    ) -> Self {
        Self {
            rt,
            limit,
            grace,
            token,
            aborting: AtomicBool::new(false),
            state: Mutex::new(state),
        }
    }

    /// Records a child's end, wakes whoever waits on the scope, and fails fast if due.
    fn finish(&self, guard: &ChildGuard<T, E, R>, exit: Exit<T, E, Panic>) {
        let cancelled = self.token.is_cancelled();
        let (reason, spawners, owner) = {
            let mut state = self.state();
            state.running -= 1;
            if let Some(slot) = guard.slot {
                state.abort_wakers[slot] = None;
                state.free_slots.push(slot);
            }
            let reason = state
                .ledger
                .record(ChildId(guard.id), exit, || self.rt.now(), cancelled);
            if reason.is_some() {
                state.closed = true;
            }
            // Wake the owner only for what it waits for: a cross-thread wake per child would
            // cost more than the child itself.
            let owner_done =
                state.running == 0 || (!state.owner_waits_for_all && state.ledger.has_reports());
            let owner = if owner_done { state.owner.take() } else { None };
            (reason, std::mem::take(&mut state.spawners), owner)
        };
        if let Some(reason) = reason {
            self.token.cancel(reason);
        }
        spawners.into_iter().for_each(Waker::wake);
        if let Some(owner) = owner {
            owner.wake();
        }
    }
}

/// Records the child's end exactly once: when it completes or is aborted by the scope, and
/// as [`Exit::Aborted`] when its task is dropped unfinished (its runtime shut down).
pub(super) struct ChildGuard<T, E, R: Runtime> {
    shared: Arc<Shared<T, E, R>>,
    id: u64,
    /// Its abort-waker slot, once it has been pending.
    slot: Option<usize>,
    finished: bool,
}

impl<T, E, R: Runtime> ChildGuard<T, E, R> {
    fn finish(&mut self, exit: Exit<T, E, Panic>) {
        if !self.finished {
            self.finished = true;
            self.shared.finish(self, exit);
        }
    }
}

impl<T, E, R: Runtime> Drop for ChildGuard<T, E, R> {
    fn drop(&mut self) {
        self.finish(Exit::Aborted);
    }
}

pin_project! {
    /// The future a child's task runs: the child's own future with panics caught, dropped
    /// (and reported aborted) when the scope aborts.
    pub(super) struct Child<F, T, E, R: Runtime> {
        // Declared before the guard: fields drop in order, so when the runtime drops the task
        // the child's own destructors have run before it is reported aborted.
        #[pin]
        future: Option<CatchUnwind<AssertUnwindSafe<F>>>,
        guard: ChildGuard<T, E, R>,
        // The waker registered for aborts, to register again only when it changes.
        registered: Option<Waker>,
    }
}

impl<F, T, E, R> Child<F, T, E, R>
where
    F: Future<Output = Result<T, E>>,
    R: Runtime,
{
    pub(super) fn new(shared: Arc<Shared<T, E, R>>, id: u64, future: F) -> Self {
        Self {
            future: Some(AssertUnwindSafe(future).catch_unwind()),
            guard: ChildGuard {
                shared,
                id,
                slot: None,
                finished: false,
            },
            registered: None,
        }
    }
}

impl<F, T, E, R> Future for Child<F, T, E, R>
where
    F: Future<Output = Result<T, E>>,
    R: Runtime,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        if this.guard.finished {
            return Poll::Ready(());
        }
        let shared = Arc::clone(&this.guard.shared);
        if !shared.aborting.load(Ordering::Acquire) {
            let Some(future) = this.future.as_mut().as_pin_mut() else {
                return Poll::Ready(());
            };
            if let Poll::Ready(caught) = future.poll(cx) {
                this.future.set(None);
                this.guard.finish(match caught {
                    Ok(Ok(value)) => Exit::Ok(value),
                    Ok(Err(error)) => Exit::Err(error),
                    Err(payload) => Exit::Panicked(Panic::new(payload)),
                });
                return Poll::Ready(());
            }
            if this
                .registered
                .as_ref()
                .is_some_and(|w| w.will_wake(cx.waker()))
            {
                return Poll::Pending;
            }
            let mut state = shared.state();
            // Checked again under the lock the abort is raised under: no lost wake-up.
            if !shared.aborting.load(Ordering::Acquire) {
                this.guard.slot = Some(state.register_abort_waker(this.guard.slot, cx.waker()));
                *this.registered = Some(cx.waker().clone());
                return Poll::Pending;
            }
        }
        // Aborted: drop the child's future first (its destructors run now), then report.
        this.future.set(None);
        this.guard.finish(Exit::Aborted);
        Poll::Ready(())
    }
}
