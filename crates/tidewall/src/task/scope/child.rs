//! What a [`Scope`](super::Scope) adds to the core: its children as detached tasks, and the
//! wrapper every child runs in.
//!
//! The scope keeps no join handles: a child's task is detached at spawn, and an abort is
//! delivered by the wrapper itself, which drops the child's future when the scope's abort
//! flag is up (woken through a waker it registered the first time the child was pending).
//! So a spawn costs one lock and a finish one more, and a child that completes at its first
//! poll never registers anything.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use pin_project_lite::pin_project;

use super::engine::{Children, Core, State};
use crate::rt::caught::Caught;
use crate::rt::{Panic, Runtime};
use crate::task::Exit;

/// A [`Scope`](super::Scope)'s running children: detached tasks, known by their number and
/// the wakers an abort goes through.
pub(super) struct TaskChildren {
    running: usize,
    owner: Option<Waker>,
    /// The owner waits in `join` (woken when the last child ends), not in `next` (woken by
    /// any new report).
    owner_waits_for_all: bool,
    /// Wakers of children that have been pending, so an abort reaches them; slots are reused.
    abort_wakers: Vec<Option<Waker>>,
    free_slots: Vec<usize>,
}

impl TaskChildren {
    pub(super) fn new() -> Self {
        Self {
            running: 0,
            owner: None,
            owner_waits_for_all: false,
            abort_wakers: Vec::new(),
            free_slots: Vec::new(),
        }
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

    /// Takes out a child that ended, freeing its abort-waker slot.
    fn remove(&mut self, slot: Option<usize>) {
        self.running -= 1;
        if let Some(slot) = slot {
            self.abort_wakers[slot] = None;
            self.free_slots.push(slot);
        }
    }

    /// The owner, if a child's end is what it waits for: a cross-thread wake per child would
    /// cost more than the child itself.
    fn owner_to_wake(&mut self, has_reports: bool) -> Option<Waker> {
        let owner_done = self.running == 0 || (!self.owner_waits_for_all && has_reports);
        if owner_done { self.owner.take() } else { None }
    }
}

impl Children for TaskChildren {
    fn running(&self) -> usize {
        self.running
    }

    fn admit(&mut self, _id: u64) {
        self.running += 1;
    }

    fn park_owner(&mut self, waker: &Waker, waits_for_all: bool) {
        if !self.owner.as_ref().is_some_and(|w| w.will_wake(waker)) {
            self.owner = Some(waker.clone());
        }
        self.owner_waits_for_all = waits_for_all;
    }
}

pub(super) type TaskCore<T, E, R> = Core<R, Mutex<State<T, E, TaskChildren>>>;

/// What a scope's spawners and children share: the engine, and the abort flag the children's
/// wrappers read without taking the lock.
pub(super) struct Shared<T, E, R> {
    pub(super) core: TaskCore<T, E, R>,
    /// Up once the grace period is over (or the scope is dropped): every child's wrapper
    /// drops its future at its next poll. Raised under the state lock, so a child that
    /// registers its waker under that lock either sees it or is woken by it.
    aborting: AtomicBool,
}

impl<T, E, R> Shared<T, E, R> {
    pub(super) fn new(core: TaskCore<T, E, R>) -> Self {
        Self {
            core,
            aborting: AtomicBool::new(false),
        }
    }

    /// Aborts every child: each drops its future at its next poll (at once if pending).
    pub(super) fn abort_all(&self) {
        let wakers: Vec<Waker> = {
            let mut state = self.core.state();
            self.aborting.store(true, Ordering::Release);
            state
                .children
                .abort_wakers
                .iter_mut()
                .filter_map(Option::take)
                .collect()
        };
        wakers.into_iter().for_each(Waker::wake);
    }
}

impl<T, E, R: Runtime> Shared<T, E, R> {
    /// Records a child's end, wakes whoever waits on the scope, and fails fast if due.
    fn finish(&self, guard: &ChildGuard<T, E, R>, exit: Exit<T, E, Panic>) {
        let core = &self.core;
        let cancelled = core.token.is_cancelled();
        let (ended, owner, discarded) = {
            let mut state = core.state();
            state.children.remove(guard.slot);
            let (ended, discarded) = state.record_end(guard.id, exit, || core.rt.now(), cancelled);
            let has_reports = state.ledger.has_reports();
            (ended, state.children.owner_to_wake(has_reports), discarded)
        };
        ended.settle(discarded, owner, &core.token);
    }
}

/// Records the child's end exactly once: when it completes or is aborted by the scope, and
/// as [`Exit::Aborted`] when its task is dropped unfinished (its runtime shut down).
struct ChildGuard<T, E, R: Runtime> {
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
    /// The future a child's task runs: the child's own future with its panics caught, in a
    /// poll or in its `Drop` once it has returned (then it reads `Panicked`, not `Ok`), and
    /// dropped (and reported aborted) when the scope aborts.
    pub(super) struct Child<F, T, E, R: Runtime> {
        // Declared before the guard: fields drop in order, so when the runtime drops the task
        // the child's own destructors have run before it is reported aborted.
        #[pin]
        future: Caught<F>,
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
            future: Caught::new(future),
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
        if !this.guard.shared.aborting.load(Ordering::Acquire) {
            if let Poll::Ready(caught) = this.future.as_mut().poll(cx) {
                this.guard.finish(crate::task::caught(caught));
                return Poll::Ready(());
            }
            if this
                .registered
                .as_ref()
                .is_some_and(|w| w.will_wake(cx.waker()))
            {
                return Poll::Pending;
            }
            // Disjoint borrows of the guard: its shared state (locked) and its waker slot.
            let guard = &mut *this.guard;
            let mut state = guard.shared.core.state();
            // Checked again under the lock the abort is raised under: no lost wake-up.
            if !guard.shared.aborting.load(Ordering::Acquire) {
                let slot = state.children.register_abort_waker(guard.slot, cx.waker());
                guard.slot = Some(slot);
                *this.registered = Some(cx.waker().clone());
                return Poll::Pending;
            }
            drop(state);
        }
        // Aborted: drop the child's future first (its destructors run now), then report. The
        // abort is what ended it, so a panic in its `Drop` is not reported (see `ChildReport`).
        let _ = this.future.drop_future();
        this.guard.finish(Exit::Aborted);
        Poll::Ready(())
    }
}
