//! Hostile black-box tests of the `Spawn` contract as changed today (`tidewall::rt::Spawn`'s
//! "# Contract", `TaskHandle::abort`, `JoinError`), attacked through the task patterns built on
//! it, written from the public rustdoc only:
//!
//! > A panic while the task's future is dropped is the task's panic, as on tokio: a future that
//! > panics in `Drop` after it returned, or when it is dropped by an abort, makes the handle
//! > report `Panicked` with that payload. [...] A panic while dropping the output of a detached
//! > task is caught and ignored; so is one while dropping the handle of a finished task.
//!
//! Tasks hold locals that panic when dropped (a [`Bomb`]), are aborted at seeded random points,
//! nest scopes, run by the hundred, and sleep through long virtual gaps. Each test checks what
//! the pattern documents a panicked or cancelled child reads as, that nothing hangs, that slots
//! and capacity come back, that every bomb is dropped exactly once, and (under `Clocked`) that
//! virtual time still moves afterwards.
//!
//! Every adapter runs on its own thread with a real-time bound (a hang fails the test instead
//! of blocking the suite). No assertion is about real time; virtual instants are exact.
#![cfg(all(
    feature = "test-util",
    feature = "tokio",
    feature = "smol",
    feature = "async-std"
))]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::too_many_lines,
    clippy::cast_possible_truncation,
    missing_docs
)]

mod common;
#[path = "common/every_adapter.rs"]
mod every_adapter;

use std::collections::BTreeSet;
use std::fmt;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, mpsc};
use std::task::{Context, Poll};
use std::time::Duration;

use common::ms;
use every_adapter::{clocked, describe, everywhere, on_each, raw, still_runs_tasks};
use futures_channel::oneshot;
use futures_util::StreamExt as _;
use tidewall::fan_out::{FanOut, FanOutError};
use tidewall::hedge::{Hedge, Idempotent};
use tidewall::race::race_ok;
use tidewall::rt::{Clock, JoinError, Panic, Runtime, TaskHandle};
use tidewall::stream::StreamOps as _;
use tidewall::task::pool::WorkerPool;
use tidewall::task::scope::{FailurePolicy, Scope};
use tidewall::task::shutdown::{Cause, ShutdownBuilder};
use tidewall::task::supervisor::{
    ChildSpec, Ended, Supervisor, SupervisorBuilder, SupervisorEvent,
};
use tidewall::task::{CancellationToken, Ending, Exit, spawn_blocking_cancellable};
use tidewall::{Backoff, Jitter};

const HOUR: Duration = Duration::from_secs(3600);

// ---------------------------------------------------------------------------------------------
// Bombs: values that panic when dropped, counted
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct Counts {
    made: AtomicUsize,
    dropped: AtomicUsize,
    exploded: AtomicUsize,
}

/// Makes bombs and counts them: made, dropped (exploded or not), exploded.
#[derive(Clone, Default)]
struct Bombs(Arc<Counts>);

impl Bombs {
    fn bomb(&self, message: &'static str) -> Bomb {
        self.0.made.fetch_add(1, SeqCst);
        Bomb {
            message,
            armed: true,
            counts: Arc::clone(&self.0),
        }
    }

    fn made(&self) -> usize {
        self.0.made.load(SeqCst)
    }

    fn dropped(&self) -> usize {
        self.0.dropped.load(SeqCst)
    }

    fn exploded(&self) -> usize {
        self.0.exploded.load(SeqCst)
    }

    /// Waits (virtual time under `Clocked`, real time otherwise) until every bomb made so far
    /// has been dropped.
    async fn all_dropped<R: Clock>(&self, rt: &R, what: &str) {
        for _ in 0..5_000 {
            if self.dropped() == self.made() {
                return;
            }
            rt.sleep(ms(1)).await;
        }
        panic!(
            "{what}: of {} bombs made, {} dropped ({} went off) after 5,000 sleeps of 1 ms",
            self.made(),
            self.dropped(),
            self.exploded()
        );
    }
}

/// Panics with its message when dropped, unless defused or a panic is already unwinding
/// (a second panic would abort the process).
struct Bomb {
    message: &'static str,
    armed: bool,
    counts: Arc<Counts>,
}

impl Bomb {
    fn defuse(mut self) {
        self.armed = false;
    }
}

impl fmt::Debug for Bomb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Bomb({:?})", self.message)
    }
}

impl Drop for Bomb {
    fn drop(&mut self) {
        self.counts.dropped.fetch_add(1, SeqCst);
        if self.armed && !std::thread::panicking() {
            self.counts.exploded.fetch_add(1, SeqCst);
            panic!("{}", self.message);
        }
    }
}

type BoxFut<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A future that returns its inner future's output and holds a bomb until it is itself
/// dropped: it panics in `Drop` after it returned `Ready` (or when dropped unfinished).
struct WithBomb<T> {
    inner: BoxFut<T>,
    _bomb: Bomb,
}

impl<T> WithBomb<T> {
    fn new(inner: impl Future<Output = T> + Send + 'static, bomb: Bomb) -> Self {
        Self {
            inner: Box::pin(inner),
            _bomb: bomb,
        }
    }
}

impl<T> Future for WithBomb<T> {
    type Output = T;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        self.get_mut().inner.as_mut().poll(cx)
    }
}

/// Pending once, woken at once.
struct YieldNow(bool);

impl Future for YieldNow {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            Poll::Ready(())
        } else {
            self.0 = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
}

fn yield_now() -> YieldNow {
    YieldNow(false)
}

fn panics_now<T>(message: &'static str) -> T {
    panic!("{message}")
}

/// SplitMix64: seeded, reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn join_panic<T>(joined: &Result<T, JoinError>) -> Option<&str> {
    match joined {
        Err(JoinError::Panicked(p)) => p.message(),
        _ => None,
    }
}

fn exit_panic<T, E>(exit: &Exit<T, E, Panic>) -> Option<&str> {
    match exit {
        Exit::Panicked(p) => p.message(),
        _ => None,
    }
}

/// Polls `done` between 1 ms sleeps of `rt`'s clock; fails after 5,000 of them.
async fn wait_until<R: Clock>(rt: &R, what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..5_000 {
        if done() {
            return;
        }
        rt.sleep(ms(1)).await;
    }
    panic!("{what}: still not done after 5,000 sleeps of 1 ms");
}

// ---------------------------------------------------------------------------------------------
// Spawn itself, at scale: aborts at seeded random points
// ---------------------------------------------------------------------------------------------

/// 150 tasks of four kinds: aborted at once, aborted while parked (in a shuffled order, between
/// yields), returning `Ready` and then panicking in `Drop`, and detached with an output that
/// panics when dropped.
async fn many_tasks_aborted_at_random_points<R: Runtime>(rt: R) {
    let bombs = Bombs::default();
    let mut rng = Rng(0x5EED_0036);
    let mut at_once = Vec::new();
    let mut parked = Vec::new();
    let mut after_ready = Vec::new();
    let mut detached = 0;
    for i in 0..150u64 {
        match rng.below(4) {
            0 => {
                let bomb = bombs.bomb("aborted at once");
                let task = rt.spawn(async move {
                    let _bomb = bomb;
                    std::future::pending::<u64>().await
                });
                task.abort();
                at_once.push(task);
            }
            1 => {
                let (started, has_started) = oneshot::channel();
                let bomb = bombs.bomb("aborted while parked");
                let task = rt.spawn(async move {
                    let _bomb = bomb;
                    let _ = started.send(());
                    std::future::pending::<u64>().await
                });
                parked.push((task, has_started));
            }
            2 => after_ready.push((
                i,
                rt.spawn(WithBomb::new(
                    async move { i },
                    bombs.bomb("dropped after ready"),
                )),
            )),
            _ => {
                detached += 1;
                let bomb = bombs.bomb("detached output");
                drop(rt.spawn(async move {
                    yield_now().await;
                    bomb
                }));
            }
        }
    }
    let mut tasks = Vec::new();
    for (task, has_started) in parked {
        has_started.await.unwrap();
        tasks.push(task);
    }
    // Abort the parked ones in a seeded order, with yields in between.
    while !tasks.is_empty() {
        let task = tasks.swap_remove(rng.below(tasks.len() as u64) as usize);
        if rng.below(2) == 0 {
            yield_now().await;
        }
        task.abort();
        at_once.push(task);
    }
    for task in at_once {
        let joined = task.await;
        assert!(
            matches!(
                join_panic(&joined),
                Some("aborted at once" | "aborted while parked")
            ),
            "an aborted task whose drop panics reads Panicked with that payload: {joined:?}"
        );
    }
    for (i, task) in after_ready {
        let joined = task.await;
        assert_eq!(
            join_panic(&joined),
            Some("dropped after ready"),
            "task {i} panicked in Drop after Ready: {joined:?}"
        );
    }
    bombs
        .all_dropped(&rt, "every bomb of 150 tasks dropped")
        .await;
    assert_eq!(bombs.exploded(), bombs.made(), "each went off once");
    assert!(detached > 0);
    still_runs_tasks(&rt).await;
}

#[test]
fn many_tasks_aborted_at_random_points_read_panicked_on_every_adapter() {
    everywhere(
        raw!(many_tasks_aborted_at_random_points),
        clocked!(many_tasks_aborted_at_random_points),
    );
}

// ---------------------------------------------------------------------------------------------
// Scope
// ---------------------------------------------------------------------------------------------

const SCOPE_AFTER_READY: &str = "scope child dropped after returning";
const SCOPE_LOCAL: &str = "scope child's local went off as it returned";

/// A scope child of one of five kinds, finishing after `delay` (zero: at its first poll).
fn scope_child<R: Runtime>(
    rt: &R,
    bombs: &Bombs,
    kind: u64,
    i: u64,
    delay: Duration,
) -> BoxFut<Result<u64, &'static str>> {
    let rt = rt.clone();
    match kind {
        // Returns Ok, then panics in Drop.
        0 => Box::pin(WithBomb::new(
            async move {
                rt.sleep(delay).await;
                Ok(i)
            },
            bombs.bomb(SCOPE_AFTER_READY),
        )),
        // Panics in poll holding a bomb (which then stays quiet: it drops while unwinding).
        1 => {
            let bomb = bombs.bomb("held by a panicking child");
            Box::pin(async move {
                let _bomb = bomb;
                rt.sleep(delay).await;
                panics_now::<Result<u64, &'static str>>("scope child panics")
            })
        }
        // Its local goes off as it returns: a panic in poll.
        2 => {
            let bomb = bombs.bomb(SCOPE_LOCAL);
            Box::pin(async move {
                let _bomb = bomb;
                rt.sleep(delay).await;
                Ok(i)
            })
        }
        3 => Box::pin(async move {
            rt.sleep(delay).await;
            Err("scope child failed")
        }),
        _ => Box::pin(async move {
            rt.sleep(delay).await;
            Ok(i)
        }),
    }
}

/// A limit of 2 and 60 children spawned one after the other (each spawn waits for a slot):
/// children whose drops panic must give their slot back, or the spawns hang. Doc (`Scope`):
/// "A panic is caught and reported as a value"; `ScopeReport::is_balanced`.
async fn scope_slots_come_back_from_children_whose_drops_panic<R: Runtime>(rt: R) {
    const N: u64 = 60;
    const LIMIT: usize = 2;
    let bombs = Bombs::default();
    let mut rng = Rng(36_001);
    let scope = Scope::builder()
        .runtime(rt.clone())
        .limit(LIMIT)
        .policy(FailurePolicy::CollectAll)
        .build::<u64, &'static str>()
        .unwrap();
    let mut kinds = Vec::new();
    for i in 0..N {
        let kind = rng.below(5);
        let delay = ms(rng.below(4) * 7);
        kinds.push(kind);
        let id = scope
            .spawn(scope_child(&rt, &bombs, kind, i, delay))
            .await
            .unwrap();
        assert_eq!(id.index(), i);
        assert!(scope.running() <= LIMIT, "{} running", scope.running());
    }
    let report = scope.join().await;
    assert_eq!(report.spawned, N);
    assert!(report.is_balanced(), "{report:?}");
    assert_eq!(report.children.len() as u64, N, "every report kept");
    let (mut ok, mut err, mut panicked) = (0, 0, 0);
    let mut wrong = Vec::new();
    for child in &report.children {
        let i = child.id.index();
        let kind = kinds[i as usize];
        if child.ending != Ending::Finished {
            wrong.push(format!("child {i} of kind {kind}: {child:?}"));
            continue;
        }
        match (kind, &child.exit) {
            (0 | 4, Exit::Ok(v)) if *v == i => ok += 1,
            (0, exit) if exit_panic(exit) == Some(SCOPE_AFTER_READY) => panicked += 1,
            (1, exit) if exit_panic(exit) == Some("scope child panics") => panicked += 1,
            (2, exit) if exit_panic(exit) == Some(SCOPE_LOCAL) => panicked += 1,
            (3, Exit::Err("scope child failed")) => err += 1,
            _ => wrong.push(format!("child {i} of kind {kind}: {child:?}")),
        }
    }
    assert!(
        wrong.is_empty(),
        "{} children misreported (kind 0 returns Ok then panics in Drop; kind 2's local goes \
         off as it returns):\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    assert_eq!(
        (
            report.succeeded,
            report.failed,
            report.panicked,
            report.aborted
        ),
        (ok, err, panicked, 0),
        "nothing was aborted"
    );
    bombs.all_dropped(&rt, "every scope child's bomb").await;
    still_runs_tasks(&rt).await;
}

/// A child that returns `Ok(v)` and then panics in `Drop` reads `Panicked` with that payload.
#[test]
fn scope_slots_come_back_from_children_whose_drops_panic_on_every_adapter() {
    on_each(clocked!(
        scope_slots_come_back_from_children_whose_drops_panic
    ));
}

/// `discard_ok` with `Ok` values that panic when dropped. Doc (`ScopeBuilder::discard_ok`): "If
/// its `Drop` panics, the child still counts as succeeded and whoever waits on the scope
/// (`join`, `next`, a `spawn` waiting for a slot) is still woken".
async fn discarded_values_that_panic_on_drop_wake_every_waiter<R: Runtime>(rt: R) {
    const N: u64 = 40;
    let bombs = Bombs::default();
    let mut rng = Rng(36_002);
    let mut scope = Scope::builder()
        .runtime(rt.clone())
        .limit(1)
        .policy(FailurePolicy::CollectAll)
        .discard_ok()
        .build::<Bomb, &'static str>()
        .unwrap();
    for _ in 0..N {
        let delay = ms(rng.below(3) * 5);
        let (rt2, bombs2) = (rt.clone(), bombs.clone());
        // With a limit of 1, each spawn waits for the previous child's end.
        scope
            .spawn(async move {
                rt2.sleep(delay).await;
                Ok::<_, &'static str>(bombs2.bomb("discarded value"))
            })
            .await
            .unwrap();
    }
    let rt2 = rt.clone();
    scope
        .spawn(async move {
            rt2.sleep(ms(20)).await;
            Err("the last child fails")
        })
        .await
        .unwrap();
    let failure = scope
        .next()
        .await
        .expect("the failure comes through `next`");
    assert!(
        matches!(failure.exit, Exit::Err("the last child fails")),
        "{failure:?}"
    );
    assert!(scope.next().await.is_none(), "no other report");
    let report = scope.join().await;
    assert_eq!(
        (report.spawned, report.succeeded, report.failed),
        (N + 1, N, 1)
    );
    assert!(report.children.is_empty(), "{report:?}");
    assert!(report.is_balanced());
    bombs.all_dropped(&rt, "every discarded value").await;
    assert_eq!(bombs.exploded() as u64, N);
    still_runs_tasks(&rt).await;
}

#[test]
fn discarded_values_that_panic_on_drop_wake_every_waiter_on_every_adapter() {
    on_each(clocked!(
        discarded_values_that_panic_on_drop_wake_every_waiter
    ));
}

/// Six outer children, each running an inner scope (a child of the outer token) of eight
/// children; inner children that ignore the cancel hold bombs. An inner grace shorter than the
/// outer's lets the inner join end in time (the outer child reads `Ok`, `Stopped`); a longer one
/// gets the outer child aborted (`Ending::Aborted`), which drops its inner scope and so aborts
/// the inner children. Doc (`Scope::shutdown`): "cancels [...], waits up to `grace` [...],
/// aborts the rest, and waits until the aborted tasks are gone"; (`Scope`) "Dropping a scope
/// without closing it cancels its token and aborts every child".
async fn nested_scopes_shut_down_children_whose_drops_panic<R: Runtime>(rt: R) {
    for seed in [1u64, 2, 3] {
        let bombs = Bombs::default();
        let mut rng = Rng(36_100 + seed);
        let outer = Scope::builder()
            .runtime(rt.clone())
            .policy(FailurePolicy::CollectAll)
            .build::<(u64, u64, bool), &'static str>()
            .unwrap();
        let outer_token = outer.token();
        let mut long_grace = Vec::new();
        let mut stubborn = Vec::new();
        for _ in 0..6 {
            let long = rng.below(2) == 0;
            let kinds: Vec<u64> = (0..8).map(|_| rng.below(3)).collect();
            long_grace.push(long);
            stubborn.push(kinds.iter().filter(|k| **k == 0).count() as u64);
            let (rt2, bombs2, parent) = (rt.clone(), bombs.clone(), outer_token.clone());
            outer
                .spawn(async move {
                    let own = bombs2.bomb("outer child aborted");
                    let inner = Scope::builder()
                        .runtime(rt2.clone())
                        .parent(&parent)
                        .grace(if long { ms(500) } else { ms(10) })
                        .policy(FailurePolicy::CollectAll)
                        .build::<u64, &'static str>()
                        .unwrap();
                    for kind in kinds {
                        let (bombs3, token) = (bombs2.clone(), inner.token());
                        let _ = inner
                            .spawn(async move {
                                match kind {
                                    0 => {
                                        let _bomb = bombs3.bomb("inner child aborted");
                                        std::future::pending::<()>().await;
                                        Ok(0)
                                    }
                                    1 => {
                                        token.cancelled().await;
                                        Ok(1)
                                    }
                                    _ => {
                                        let bomb = bombs3.bomb("inner child stopped");
                                        token.cancelled().await;
                                        bomb.defuse();
                                        Ok(2)
                                    }
                                }
                            })
                            .await;
                    }
                    let report = inner.join().await;
                    own.defuse();
                    Ok((
                        report.spawned,
                        report.aborted + report.panicked,
                        report.is_balanced(),
                    ))
                })
                .await
                .unwrap();
        }
        rt.sleep(ms(1 + rng.below(100))).await;
        let report = outer.shutdown("deploy", ms(50)).await;
        assert_eq!(report.spawned, 6);
        assert!(report.is_balanced(), "{report:?}");
        assert_eq!(report.children.len(), 6);
        for child in &report.children {
            let j = child.id.index() as usize;
            if long_grace[j] {
                assert!(
                    matches!(child.ending, Ending::Aborted { .. }),
                    "seed {seed}: outer child {j} outlives the grace: {child:?}"
                );
                assert!(
                    matches!(child.exit, Exit::Aborted)
                        || exit_panic(&child.exit) == Some("outer child aborted"),
                    "seed {seed}: outer child {j}: {child:?}"
                );
            } else {
                assert!(
                    matches!(child.ending, Ending::Stopped { .. }),
                    "seed {seed}: outer child {j} stops within the grace: {child:?}"
                );
                assert!(
                    matches!(child.exit, Exit::Ok((8, n, true)) if n == stubborn[j]),
                    "seed {seed}: outer child {j}: {} stubborn inner children: {child:?}",
                    stubborn[j]
                );
            }
        }
        let long = long_grace.iter().filter(|l| **l).count() as u64;
        assert_eq!(report.aborted + report.panicked, long, "{report:?}");
        bombs
            .all_dropped(&rt, "every inner and outer child's bomb")
            .await;
        let expected = stubborn.iter().sum::<u64>() + long;
        assert_eq!(
            bombs.exploded() as u64,
            expected,
            "seed {seed}: each stubborn inner child and each aborted outer child went off once"
        );
    }
    still_runs_tasks(&rt).await;
}

#[test]
fn nested_scopes_shut_down_children_whose_drops_panic_on_every_adapter() {
    on_each(clocked!(nested_scopes_shut_down_children_whose_drops_panic));
}

/// A fail-fast scope: child 0 fails after 5 ms; ten siblings ignore the cancel holding bombs and
/// are aborted when the 20 ms grace runs out. Doc (`FailurePolicy::FailFast`): "The first failure
/// cancels the scope with a reason naming the child [...] and a join aborts stragglers after the
/// grace period"; each straggler reads `Ending::Aborted`.
async fn a_fail_fast_scope_aborts_stragglers_whose_drops_panic<R: Runtime>(rt: R) {
    let bombs = Bombs::default();
    let scope = Scope::builder()
        .runtime(rt.clone())
        .grace(ms(20))
        .build::<u64, &'static str>()
        .unwrap();
    let rt2 = rt.clone();
    scope
        .spawn(async move {
            rt2.sleep(ms(5)).await;
            Err("the first child fails")
        })
        .await
        .unwrap();
    for _ in 0..10 {
        let bombs2 = bombs.clone();
        scope
            .spawn(async move {
                let _bomb = bombs2.bomb("a straggler aborted");
                std::future::pending::<()>().await;
                Ok(0)
            })
            .await
            .unwrap();
    }
    let report = scope.join().await;
    assert!(report.is_balanced(), "{report:?}");
    assert_eq!(report.spawned, 11);
    assert_eq!(report.failed, 1);
    assert_eq!(report.first_failure.map(|c| c.index()), Some(0));
    assert_eq!(
        report.cancel_reason.as_ref().map(|r| r.as_str()),
        Some("child #0 returned an error")
    );
    assert_eq!(report.aborted + report.panicked, 10, "{report:?}");
    for child in report.children.iter().filter(|c| c.id.index() > 0) {
        assert!(
            matches!(child.ending, Ending::Aborted { .. }),
            "a straggler: {child:?}"
        );
        assert!(
            matches!(child.exit, Exit::Aborted)
                || exit_panic(&child.exit) == Some("a straggler aborted"),
            "{child:?}"
        );
    }
    bombs.all_dropped(&rt, "every straggler's bomb").await;
    assert_eq!(bombs.exploded(), 10);
    still_runs_tasks(&rt).await;
}

#[test]
fn a_fail_fast_scope_aborts_stragglers_whose_drops_panic_on_every_adapter() {
    on_each(clocked!(
        a_fail_fast_scope_aborts_stragglers_whose_drops_panic
    ));
}

/// A task owning a scope (limit 3, twelve children, some pending for ever) aborted at a seeded
/// random point: before its first poll, after a yield, or after up to 10 virtual seconds (while
/// it waits for a slot, joins, or shuts the scope down with an hour's grace). Its own local is
/// a bomb, so once polled it reads `Panicked` with that payload; never polled, `Cancelled`.
async fn a_task_owning_a_scope_aborted_at_a_random_point<R: Runtime>(rt: R) {
    let mut rng = Rng(36_003);
    for round in 0..12 {
        let owner = Bombs::default();
        let children = Bombs::default();
        let shut_down = rng.below(2) == 0;
        let delays: Vec<u64> = (0..12).map(|_| rng.below(4)).collect();
        let (owner2, children2, rt2) = (owner.clone(), children.clone(), rt.clone());
        let task = rt.spawn(async move {
            let _own = owner2.bomb("the owner dropped by abort");
            let scope = Scope::builder()
                .runtime(rt2.clone())
                .limit(3)
                .grace(HOUR)
                .build::<u64, &'static str>()
                .unwrap();
            for d in delays {
                let (rt3, children3) = (rt2.clone(), children2.clone());
                scope
                    .spawn(async move {
                        let bomb = children3.bomb("a child dropped with its scope");
                        if d == 0 {
                            std::future::pending::<()>().await;
                        }
                        rt3.sleep(Duration::from_secs(d)).await;
                        bomb.defuse();
                        Ok(d)
                    })
                    .await
                    .unwrap();
            }
            if shut_down {
                scope.shutdown("owner done", HOUR).await.spawned
            } else {
                scope.join().await.spawned
            }
        });
        match rng.below(3) {
            0 => {}
            1 => yield_now().await,
            _ => rt.sleep(ms(rng.below(10_000))).await,
        }
        task.abort();
        let joined = task.await;
        if owner.made() == 0 {
            assert!(
                matches!(joined, Err(JoinError::Cancelled)),
                "round {round}: never polled: {joined:?}"
            );
        } else {
            assert_eq!(
                join_panic(&joined),
                Some("the owner dropped by abort"),
                "round {round}: {joined:?}"
            );
        }
        children
            .all_dropped(&rt, "every child of the dropped scope")
            .await;
        owner.all_dropped(&rt, "the owner's bomb").await;
    }
    still_runs_tasks(&rt).await;
}

#[test]
fn a_task_owning_a_scope_aborted_at_a_random_point_on_every_adapter() {
    on_each(clocked!(a_task_owning_a_scope_aborted_at_a_random_point));
}

// ---------------------------------------------------------------------------------------------
// Supervisor
// ---------------------------------------------------------------------------------------------

fn fixed(delay: Duration) -> Backoff {
    Backoff::constant(delay)
        .jitter(Jitter::None)
        .max_attempts(u32::MAX)
        .build()
        .unwrap()
}

async fn pending_with_bomb(bombs: Bombs, message: &'static str) -> Result<(), &'static str> {
    let _bomb = bombs.bomb(message);
    std::future::pending::<Result<(), &'static str>>().await
}

fn inner_supervisor<R: Runtime>(rt: &R, bombs: &Bombs) -> Supervisor<R> {
    let bombs = bombs.clone();
    SupervisorBuilder::new()
        .runtime(rt.clone())
        .child(ChildSpec::new(
            "inner-polite",
            |stop: CancellationToken| async move {
                stop.cancelled().await;
                Ok::<(), &'static str>(())
            },
        ))
        .child(
            ChildSpec::new("inner-stubborn", move |_stop| {
                pending_with_bomb(bombs.clone(), "inner stubborn child aborted")
            })
            .shutdown_timeout(ms(20)),
        )
        .build()
        .unwrap()
}

const FLAKY_AFTER_READY: &str = "flaky child dropped after returning";

/// Children that ignore their stop (aborted after 30 ms, or at once with a zero timeout), a
/// flaky one restarted every ten virtual minutes whose future panics in `Drop` after each
/// return, and a nested supervisor with a stubborn child; stopped after one to two virtual
/// hours. Doc (`SupervisorEvent::Stopped`): "How its future ended: [`Exit::Aborted`] when it was
/// aborted", "[`Ending::Aborted`] when it was aborted"; (`SupervisorReport::stopped`) "in the
/// order stopped (reverse of the order they were added)".
async fn a_supervisor_stops_children_whose_drops_panic<R: Runtime>(rt: R) {
    let bombs = Bombs::default();
    let mut rng = Rng(36_004);
    let events: Arc<Mutex<Vec<SupervisorEvent>>> = Arc::default();
    let sink = Arc::clone(&events);
    let (b1, b2, b3, b4) = (bombs.clone(), bombs.clone(), bombs.clone(), bombs.clone());
    let (rt_flaky, rt_inner) = (rt.clone(), rt.clone());
    let supervisor = SupervisorBuilder::new()
        .runtime(rt.clone())
        .intensity(3, Duration::from_secs(60))
        .backoff(fixed(ms(10)))
        .seed(36)
        .on_event(move |event| sink.lock().unwrap().push(event.clone()))
        .child(ChildSpec::new(
            "polite",
            |stop: CancellationToken| async move {
                stop.cancelled().await;
                Ok::<(), &'static str>(())
            },
        ))
        .child(
            ChildSpec::new("stubborn", move |_stop| {
                pending_with_bomb(b1.clone(), "stubborn child aborted")
            })
            .shutdown_timeout(ms(30)),
        )
        .child(
            ChildSpec::new("brutal", move |_stop| {
                pending_with_bomb(b2.clone(), "brutal child aborted")
            })
            .shutdown_timeout(Duration::ZERO),
        )
        .child(ChildSpec::new("flaky", move |stop: CancellationToken| {
            let rt = rt_flaky.clone();
            WithBomb::new(
                async move {
                    match stop.run_until_cancelled(rt.sleep(10 * 60 * ms(1000))).await {
                        Ok(()) => Err("flaky child failed"),
                        Err(_) => Ok(()),
                    }
                },
                b3.bomb(FLAKY_AFTER_READY),
            )
        }))
        .child(ChildSpec::supervisor("nested", move || {
            inner_supervisor(&rt_inner, &b4)
        }))
        .build()
        .unwrap();
    let stop = CancellationToken::new();
    let (stopper, rt2) = (stop.clone(), rt.clone());
    let at = HOUR + ms(rng.below(3_600_000));
    drop(rt.spawn(async move {
        rt2.sleep(at).await;
        stopper.cancel("deploy");
    }));
    let report = supervisor.run(stop).await.expect("no escalation");
    assert_eq!(report.ended, Ended::Stopped);
    let order: Vec<&str> = report.stopped.iter().map(|r| &*r.name).collect();
    assert_eq!(order, ["nested", "flaky", "brutal", "stubborn", "polite"]);
    let mut wrong = Vec::new();
    for stopped in &report.stopped {
        let fine = match &*stopped.name {
            // Aborted: after its 30 ms timeout, or at once (zero timeout).
            "stubborn" | "brutal" => {
                matches!(stopped.ending, Ending::Aborted { .. }) && stopped.exit == Exit::Aborted
            }
            "flaky" => {
                matches!(stopped.ending, Ending::Stopped { .. })
                    && (stopped.exit == Exit::Ok(())
                        || stopped.exit == Exit::Panicked(FLAKY_AFTER_READY.to_owned()))
            }
            _ => matches!(stopped.ending, Ending::Stopped { .. }) && stopped.exit == Exit::Ok(()),
        };
        if !fine {
            wrong.push(format!("report.stopped: {stopped:?}"));
        }
    }
    let events = events.lock().unwrap().clone();
    for event in &events {
        if let SupervisorEvent::Stopped {
            child,
            exit,
            ending,
            ..
        } = event
            && matches!(&**child, "stubborn" | "brutal")
            && !(matches!(ending, Ending::Aborted { .. }) && *exit == Exit::Aborted)
        {
            wrong.push(format!("event: {event:?}"));
        }
    }
    let restarting = events
        .iter()
        .filter(|e| matches!(e, SupervisorEvent::Restarting { .. }))
        .count() as u64;
    assert_eq!(report.restarts, restarting);
    let flaky_exits: Vec<&Exit> = events
        .iter()
        .filter_map(|e| match e {
            SupervisorEvent::Exited { child, exit, .. } if &**child == "flaky" => Some(exit),
            _ => None,
        })
        .collect();
    assert!(
        flaky_exits.len() >= 6,
        "a failure every ten minutes for at least an hour: {flaky_exits:?}"
    );
    for exit in &flaky_exits {
        if !(**exit == Exit::Err("flaky child failed".to_owned())
            || **exit == Exit::Panicked(FLAKY_AFTER_READY.to_owned()))
        {
            wrong.push(format!("flaky's exit: {exit:?}"));
        }
    }
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, SupervisorEvent::Escalating { .. })),
        "{events:?}"
    );
    assert!(
        wrong.is_empty(),
        "aborted children must read `Exit::Aborted` and `Ending::Aborted`:\n{}",
        wrong.join("\n")
    );
    bombs
        .all_dropped(&rt, "every supervised child's bomb")
        .await;
    assert_eq!(bombs.exploded(), bombs.made(), "each went off once");
    still_runs_tasks(&rt).await;
}

#[test]
fn a_supervisor_stops_children_whose_drops_panic_on_every_adapter() {
    on_each(clocked!(a_supervisor_stops_children_whose_drops_panic));
}

/// A child that fails every second and panics in `Drop` after each return exceeds the
/// intensity; the escalation's shutdown aborts a stubborn sibling holding a bomb.
async fn an_escalating_supervisor_aborts_children_whose_drops_panic<R: Runtime>(rt: R) {
    let bombs = Bombs::default();
    let (b1, b2, rt2) = (bombs.clone(), bombs.clone(), rt.clone());
    let supervisor = SupervisorBuilder::new()
        .runtime(rt.clone())
        .intensity(2, Duration::from_secs(10))
        .backoff(fixed(ms(10)))
        .child(
            ChildSpec::new("stubborn", move |_stop| {
                pending_with_bomb(b1.clone(), "stubborn child aborted")
            })
            .shutdown_timeout(ms(40)),
        )
        .child(ChildSpec::new("doomed", move |_stop| {
            let rt = rt2.clone();
            WithBomb::new(
                async move {
                    rt.sleep(Duration::from_secs(1)).await;
                    Err::<(), _>("doomed child failed")
                },
                b2.bomb("doomed child dropped after returning"),
            )
        }))
        .build()
        .unwrap();
    let escalation = supervisor
        .run(CancellationToken::new())
        .await
        .expect_err("the intensity is exceeded");
    assert_eq!(&*escalation.child, "doomed");
    assert_eq!(escalation.report.ended, Ended::Escalated);
    assert_eq!(escalation.report.restarts, 2);
    let stubborn = escalation
        .report
        .stopped
        .iter()
        .find(|r| &*r.name == "stubborn")
        .expect("the stubborn child was stopped");
    bombs.all_dropped(&rt, "every child's bomb").await;
    assert_eq!(bombs.exploded(), bombs.made());
    still_runs_tasks(&rt).await;
    assert!(
        matches!(stubborn.ending, Ending::Aborted { .. }) && stubborn.exit == Exit::Aborted,
        "aborted after its 40 ms timeout, it must read `Exit::Aborted`, `Ending::Aborted`: \
         {stubborn:?}"
    );
}

#[test]
fn an_escalating_supervisor_aborts_children_whose_drops_panic_on_every_adapter() {
    on_each(clocked!(
        an_escalating_supervisor_aborts_children_whose_drops_panic
    ));
}

// ---------------------------------------------------------------------------------------------
// Shutdown
// ---------------------------------------------------------------------------------------------

/// Components that ignore their stop hold bombs: one is cut by the global deadline, one has a
/// zero timeout. Doc (`ShutdownReport`): "[`Ending::Aborted`]: it was still running when its
/// own timeout, the global deadline or a second signal came, and was aborted; its exit is
/// [`Exit::Aborted`]".
async fn a_shutdown_aborts_components_whose_drops_panic<R: Runtime>(rt: R) {
    let mut rng = Rng(36_005);
    for round in 0..3 {
        let bombs = Bombs::default();
        let mut shutdown = ShutdownBuilder::new()
            .runtime(rt.clone())
            .deadline(Duration::from_secs(1))
            .build()
            .unwrap();
        let (b1, b2, rt2) = (bombs.clone(), bombs.clone(), rt.clone());
        shutdown.register("stubborn", move |_stop| {
            pending_with_bomb(b1.clone(), "stubborn component aborted")
        });
        shutdown.register("db", |stop: CancellationToken| async move {
            stop.cancelled().await;
            Ok::<(), &'static str>(())
        });
        shutdown.register_with_timeout("brutal", Duration::ZERO, move |_stop| {
            pending_with_bomb(b2.clone(), "brutal component aborted")
        });
        shutdown.register("http", move |stop: CancellationToken| async move {
            stop.cancelled().await;
            rt2.sleep(ms(250)).await;
            Ok::<(), &'static str>(())
        });
        rt.sleep(ms(1 + rng.below(2 * 3_600_000))).await;
        let report = shutdown.stop("deploy").await;
        assert!(
            matches!(report.cause, Cause::Triggered(ref r) if r.as_str() == "deploy"),
            "{report:?}"
        );
        let order: Vec<&str> = report.components.iter().map(|c| &*c.name).collect();
        assert_eq!(order, ["http", "brutal", "db", "stubborn"], "round {round}");
        let mut wrong = Vec::new();
        for c in &report.components {
            let fine = match &*c.name {
                "brutal" | "stubborn" => {
                    matches!(c.ending, Ending::Aborted { .. }) && c.exit == Exit::Aborted
                }
                _ => c.exit == Exit::Ok(()) && matches!(c.ending, Ending::Stopped { .. }),
            };
            if !fine {
                wrong.push(format!("{c:?}"));
            }
        }
        if !report.deadline_exceeded {
            wrong.push("deadline_exceeded is false".to_owned());
        }
        if report.forced {
            wrong.push("forced is true".to_owned());
        }
        if report.is_clean() {
            wrong.push("is_clean() is true: it aborted two components".to_owned());
        }
        bombs.all_dropped(&rt, "both components' bombs").await;
        assert_eq!(bombs.exploded(), 2);
        assert!(
            wrong.is_empty(),
            "round {round}: aborted components must read `Exit::Aborted`, `Ending::Aborted`:\n{}",
            wrong.join("\n")
        );
    }
    still_runs_tasks(&rt).await;
}

#[test]
fn a_shutdown_aborts_components_whose_drops_panic_on_every_adapter() {
    on_each(clocked!(a_shutdown_aborts_components_whose_drops_panic));
}

/// A component that returns `Ok` after a second and then panics in `Drop`, before any shutdown
/// (triggered after an hour). Doc (`Shutdown`): "A component that ended before is reported with
/// [`Ending::Finished`]"; only one "whose task was lost by its runtime" reads
/// `Exit::Aborted`/`Ending::Aborted`. Either it reads `Ok` (and the trigger starts the
/// shutdown) or `Panicked` with that payload (and its failure does: `Cause::ComponentFailed`).
async fn a_component_that_panics_in_drop_after_returning<R: Runtime>(rt: R) {
    let bombs = Bombs::default();
    let mut shutdown = ShutdownBuilder::new()
        .runtime(rt.clone())
        .deadline(Duration::from_secs(10))
        .build()
        .unwrap();
    let (rt2, bombs2) = (rt.clone(), bombs.clone());
    shutdown.register("early", move |_stop| {
        WithBomb::new(
            async move {
                rt2.sleep(Duration::from_secs(1)).await;
                Ok::<(), &'static str>(())
            },
            bombs2.bomb("component dropped after returning"),
        )
    });
    shutdown.register("server", |stop: CancellationToken| async move {
        stop.cancelled().await;
        Ok::<(), &'static str>(())
    });
    let (trigger, rt3) = (shutdown.trigger(), rt.clone());
    drop(rt.spawn(async move {
        rt3.sleep(HOUR).await;
        trigger.cancel("deploy");
    }));
    let report = shutdown.run().await;
    bombs.all_dropped(&rt, "the early component's bomb").await;
    let early = report
        .components
        .iter()
        .find(|c| &*c.name == "early")
        .expect("reported");
    let fine = match &early.exit {
        Exit::Ok(()) => {
            matches!(report.cause, Cause::Triggered(ref r) if r.as_str() == "deploy")
        }
        Exit::Panicked(m) => {
            m == "component dropped after returning"
                && matches!(report.cause, Cause::ComponentFailed { ref name, .. } if &**name == "early")
        }
        _ => false,
    };
    assert!(
        fine && early.ending == Ending::Finished,
        "it returned Ok (then panicked in Drop) on its own, before any shutdown; its task was \
         not lost: {report:?}"
    );
}

#[test]
fn a_component_that_panics_in_drop_after_returning_on_every_adapter() {
    on_each(clocked!(a_component_that_panics_in_drop_after_returning));
}

/// A task running `Shutdown::stop` aborted at a seeded point within the first half hour of a
/// shutdown whose deadline is an hour. Doc (`Shutdown::run`, cancel safety): "every component
/// not yet stopped has its token cancelled [...] and is aborted at once, and so is the one being
/// stopped at that moment". The run future itself holds no bomb: the handle reads `Cancelled`.
async fn a_task_running_a_shutdown_aborted_at_a_random_point<R: Runtime>(rt: R) {
    let mut rng = Rng(36_006);
    for round in 0..8 {
        let bombs = Bombs::default();
        let mut shutdown = ShutdownBuilder::new()
            .runtime(rt.clone())
            .deadline(HOUR)
            .build()
            .unwrap();
        for name in ["first", "second", "third"] {
            let b = bombs.clone();
            shutdown.register(name, move |_stop| {
                pending_with_bomb(b.clone(), "component aborted with the coordinator")
            });
        }
        let (b, rt2) = (bombs.clone(), rt.clone());
        shutdown.register("slow", move |stop: CancellationToken| async move {
            let bomb = b.bomb("slow component aborted with the coordinator");
            stop.cancelled().await;
            rt2.sleep(10 * 60 * ms(1000)).await;
            bomb.defuse();
            Ok::<(), &'static str>(())
        });
        rt.sleep(ms(1)).await;
        let task = rt.spawn(shutdown.stop("deploy"));
        match rng.below(3) {
            0 => {}
            1 => yield_now().await,
            _ => rt.sleep(ms(rng.below(30 * 60_000))).await,
        }
        task.abort();
        let joined = task.await;
        assert!(
            matches!(joined, Err(JoinError::Cancelled)),
            "round {round}: {joined:?}"
        );
        bombs
            .all_dropped(&rt, "every component's bomb, aborted with the coordinator")
            .await;
        assert!(bombs.exploded() >= 3, "round {round}: {}", bombs.exploded());
    }
    still_runs_tasks(&rt).await;
}

#[test]
fn a_task_running_a_shutdown_aborted_at_a_random_point_on_every_adapter() {
    on_each(clocked!(
        a_task_running_a_shutdown_aborted_at_a_random_point
    ));
}

// ---------------------------------------------------------------------------------------------
// Worker pool
// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
enum Made {
    Num(u64),
    Bomb(#[allow(dead_code)] Bomb),
}

const JOB_AFTER_READY: &str = "job dropped after returning";

/// Forty jobs of five kinds through two workers and a queue of four (backpressure): timed out
/// holding a bomb, panicking holding one, returning a bomb whose handle was dropped, panicking
/// in `Drop` after returning, plain. Doc (`WorkerPool`): "A panicking job is reported as
/// [`Exit::Panicked`] and the worker goes on with the next job [...] So it does when a job's
/// destructors panic: those of a job its timeout drops, or of a value whose handle was dropped
/// (the job keeps the exit it was reported with, and the panic is not reported)".
async fn a_pool_goes_on_after_jobs_whose_drops_panic<R: Runtime>(rt: R) {
    const N: u64 = 40;
    let bombs = Bombs::default();
    let mut rng = Rng(36_007);
    let (rt2, bombs2) = (rt.clone(), bombs.clone());
    let pool = WorkerPool::builder()
        .workers(2)
        .queue(4)
        .job_timeout(ms(100))
        .runtime(rt.clone())
        .start(move |(i, kind, d): (u64, u64, u64)| -> BoxFut<Made> {
            let (rt, bombs) = (rt2.clone(), bombs2.clone());
            match kind {
                0 => Box::pin(async move {
                    let _bomb = bombs.bomb("timed-out job dropped");
                    rt.sleep(ms(200 + d)).await;
                    Made::Num(i)
                }),
                1 => Box::pin(async move {
                    let _bomb = bombs.bomb("held by a panicking job");
                    rt.sleep(ms(d)).await;
                    panics_now::<Made>("job panics")
                }),
                2 => Box::pin(async move {
                    rt.sleep(ms(d)).await;
                    Made::Bomb(bombs.bomb("unread job value"))
                }),
                3 => Box::pin(WithBomb::new(
                    async move {
                        rt.sleep(ms(d)).await;
                        Made::Num(i)
                    },
                    bombs.bomb(JOB_AFTER_READY),
                )),
                _ => Box::pin(async move {
                    rt.sleep(ms(d)).await;
                    Made::Num(i)
                }),
            }
        })
        .unwrap();
    let mut kept = Vec::new();
    let mut kinds = Vec::new();
    for i in 0..N {
        let kind = rng.below(5);
        kinds.push(kind);
        let handle = pool.submit((i, kind, rng.below(90))).await.unwrap();
        assert!(pool.running() <= 2 && pool.queued() <= 4);
        if kind == 2 {
            drop(handle);
        } else {
            kept.push((i, kind, handle));
        }
    }
    let (mut completed, mut failed) = (kinds.iter().filter(|k| **k == 2).count() as u64, 0);
    for (i, kind, handle) in kept {
        let exit = handle.await;
        match (kind, &exit) {
            (0, Exit::Err(_)) => failed += 1,
            (1, e) if exit_panic(e) == Some("job panics") => failed += 1,
            (3 | 4, Exit::Ok(Made::Num(v))) if *v == i => completed += 1,
            (3, e) if exit_panic(e) == Some(JOB_AFTER_READY) => failed += 1,
            _ => panic!("job {i} of kind {kind} reads {exit:?}"),
        }
    }
    let report = pool.shutdown(Duration::from_secs(10)).await;
    assert_eq!(report.submitted, N);
    assert!(report.handed_back.is_empty(), "{report:?}");
    assert_eq!(report.aborted, 0, "{report:?}");
    assert_eq!(
        (report.completed, report.failed),
        (completed, failed),
        "{report:?}"
    );
    bombs.all_dropped(&rt, "every job's bomb").await;
    let quiet = kinds.iter().filter(|k| **k == 1).count();
    assert_eq!(
        bombs.exploded() + quiet,
        bombs.made(),
        "each went off once, but those held by panicking jobs (dropped while unwinding)"
    );
    still_runs_tasks(&rt).await;
}

#[test]
fn a_pool_goes_on_after_jobs_whose_drops_panic_on_every_adapter() {
    on_each(clocked!(a_pool_goes_on_after_jobs_whose_drops_panic));
}

/// Three workers stuck in jobs holding bombs, five jobs queued; `shutdown` with a 100 ms drain.
/// Doc (`WorkerPool::shutdown`): "aborts what still runs and hands back the jobs never
/// started"; (`JobHandle`) "[`Exit::Aborted`]: [...] it was still running at the drain deadline
/// and was aborted [...] or it had not started and was handed back"; `submitted = completed +
/// failed + handed back`.
async fn a_pool_shutdown_aborts_jobs_whose_drops_panic<R: Runtime>(rt: R) {
    for round in 0..3u64 {
        let bombs = Bombs::default();
        let bombs2 = bombs.clone();
        let pool = WorkerPool::builder()
            .workers(3)
            .queue(10)
            .runtime(rt.clone())
            .start(move |_job: u64| {
                let bombs = bombs2.clone();
                async move {
                    let _bomb = bombs.bomb("running job aborted at the drain deadline");
                    std::future::pending::<u64>().await
                }
            })
            .unwrap();
        let mut handles = Vec::new();
        for job in 0..8u64 {
            handles.push(pool.submit(job).await.unwrap());
        }
        wait_until(&rt, "three jobs running", || pool.running() == 3).await;
        rt.sleep(ms(round * 1000)).await;
        let report = pool.shutdown(ms(100)).await;
        assert_eq!(report.submitted, 8);
        assert_eq!(
            (report.completed, report.failed, report.aborted),
            (0, 3, 3),
            "{report:?}"
        );
        assert_eq!(report.handed_back.len(), 5, "{report:?}");
        assert!(report.handed_back.windows(2).all(|w| w[0] < w[1]));
        for handle in handles {
            let exit = handle.await;
            assert!(matches!(exit, Exit::Aborted), "{exit:?}");
        }
        bombs.all_dropped(&rt, "the running jobs' bombs").await;
        assert_eq!(bombs.exploded(), 3);
    }
    still_runs_tasks(&rt).await;
}

#[test]
fn a_pool_shutdown_aborts_jobs_whose_drops_panic_on_every_adapter() {
    on_each(clocked!(a_pool_shutdown_aborts_jobs_whose_drops_panic));
}

// ---------------------------------------------------------------------------------------------
// Fan-out and par_map
// ---------------------------------------------------------------------------------------------

const FAN_AFTER_READY: &str = "fan-out task dropped after returning";
const FAN_LOCAL: &str = "fan-out task's local went off";

fn fan_task<R: Runtime>(rt: &R, bombs: &Bombs, kind: u64, i: u64, delay: Duration) -> BoxFut<u64> {
    let (rt, bombs) = (rt.clone(), bombs.clone());
    match kind {
        0 => Box::pin(WithBomb::new(
            async move {
                rt.sleep(delay).await;
                i
            },
            bombs.bomb(FAN_AFTER_READY),
        )),
        1 => Box::pin(async move {
            let _bomb = bombs.bomb("held by a panicking task");
            rt.sleep(delay).await;
            panics_now::<u64>("fan-out task panics")
        }),
        2 => Box::pin(async move {
            let _bomb = bombs.bomb(FAN_LOCAL);
            rt.sleep(delay).await;
            i
        }),
        _ => Box::pin(async move {
            rt.sleep(delay).await;
            i
        }),
    }
}

/// Whether input `i` of `kind` reads as documented; if not, says so in `wrong`.
fn check_fan_outcome(wrong: &mut Vec<String>, kind: u64, i: u64, outcome: &Result<u64, JoinError>) {
    let fine = match (kind, outcome) {
        (0 | 3, Ok(v)) => *v == i,
        (0, o) => join_panic(o) == Some(FAN_AFTER_READY),
        (1, o) => join_panic(o) == Some("fan-out task panics"),
        (2, o) => join_panic(o) == Some(FAN_LOCAL),
        _ => false,
    };
    if !fine {
        wrong.push(format!("input {i} of kind {kind}: {outcome:?}"));
    }
}

fn no_misreport(wrong: &[String]) {
    assert!(
        wrong.is_empty(),
        "{} inputs misreported (kind 0 returned its input, then panicked in Drop: Ok(input) or \
         Panicked with that payload; nothing cancelled it):\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

/// Sixty inputs, at most four in flight, in input order. Doc (`FanOut::run`): "yields each
/// outcome, with a panic or a runtime cancellation as [`JoinError`]"; at most `limit` taken and
/// not yet delivered.
async fn fan_out_yields_one_outcome_per_input_whose_drops_panic<R: Runtime>(rt: R) {
    const N: u64 = 60;
    let bombs = Bombs::default();
    let mut rng = Rng(36_008);
    let plan: Vec<(u64, u64)> = (0..N).map(|_| (rng.below(4), rng.below(5) * 3)).collect();
    let (plan2, rt2, bombs2) = (plan.clone(), rt.clone(), bombs.clone());
    let mut results = Box::pin(
        FanOut::new(4)
            .unwrap()
            .runtime(rt.clone())
            .ordered()
            .run_iter(0..N, move |i| {
                let (kind, d) = plan2[i as usize];
                fan_task(&rt2, &bombs2, kind, i, ms(d))
            }),
    );
    let mut i = 0;
    let mut wrong = Vec::new();
    while let Some(outcome) = results.next().await {
        assert!(results.in_flight() <= 4, "{}", results.in_flight());
        check_fan_outcome(&mut wrong, plan[i as usize].0, i, &outcome);
        i += 1;
    }
    assert_eq!(i, N, "one outcome per input");
    assert_eq!(results.in_flight(), 0);
    bombs.all_dropped(&rt, "every fan-out task's bomb").await;
    still_runs_tasks(&rt).await;
    no_misreport(&wrong);
}

/// A task that returns and then panics in `Drop` yields `Err(JoinError::Panicked)`.
#[test]
fn fan_out_yields_one_outcome_per_input_whose_drops_panic_on_every_adapter() {
    on_each(clocked!(
        fan_out_yields_one_outcome_per_input_whose_drops_panic
    ));
}

/// `par_map_on` (input order) and `par_map_unordered_on` over the same kinds. Doc
/// (`StreamOps::par_map_on`): "a panic arrives as `Err(JoinError::Panicked)`".
async fn par_map_yields_one_outcome_per_input_whose_drops_panic<R: Runtime>(rt: R) {
    const N: u64 = 40;
    let bombs = Bombs::default();
    let mut rng = Rng(36_009);
    let plan: Vec<(u64, u64)> = (0..N).map(|_| (rng.below(4), rng.below(4) * 5)).collect();
    let (plan2, rt2, bombs2) = (plan.clone(), rt.clone(), bombs.clone());
    let ordered: Vec<Result<u64, JoinError>> = futures_util::stream::iter(0..N)
        .par_map_on(&rt, 3, move |i| {
            let (kind, d) = plan2[i as usize];
            fan_task(&rt2, &bombs2, kind, i, ms(d))
        })
        .unwrap()
        .collect()
        .await;
    assert_eq!(ordered.len() as u64, N);
    let mut wrong = Vec::new();
    for (i, outcome) in ordered.iter().enumerate() {
        check_fan_outcome(&mut wrong, plan[i].0, i as u64, outcome);
    }
    // Unordered: tag each outcome through a task that never panics itself.
    let (plan3, rt3, bombs3) = (plan.clone(), rt.clone(), bombs.clone());
    type Tagged = Result<(u64, Result<u64, JoinError>), JoinError>;
    let unordered: Vec<Tagged> = futures_util::stream::iter(0..N)
        .par_map_unordered_on(&rt, 5, move |i| {
            let (kind, d) = plan3[i as usize];
            let inner = rt3.spawn(fan_task(&rt3, &bombs3, kind, i, ms(d)));
            async move { (i, inner.await) }
        })
        .unwrap()
        .collect()
        .await;
    let mut seen = BTreeSet::new();
    for outcome in &unordered {
        let (i, inner) = outcome.as_ref().expect("the tagging task never panics");
        let mut tagged = Vec::new();
        check_fan_outcome(&mut tagged, plan[*i as usize].0, *i, inner);
        assert!(tagged.is_empty(), "straight from `Spawn`: {tagged:?}");
        assert!(seen.insert(*i));
    }
    assert_eq!(seen.len() as u64, N);
    bombs.all_dropped(&rt, "every par_map task's bomb").await;
    still_runs_tasks(&rt).await;
    no_misreport(&wrong);
}

/// As the fan-out: a drop after return reads `Panicked`, as straight from `Spawn`.
#[test]
fn par_map_yields_one_outcome_per_input_whose_drops_panic_on_every_adapter() {
    on_each(clocked!(
        par_map_yields_one_outcome_per_input_whose_drops_panic
    ));
}

/// A fail-fast fan-out whose error at a seeded input cuts tasks sleeping an hour with bombs.
/// Doc (`FanOut::try_run`): "the first error or panic aborts the running tasks whose results
/// would come after it [...] and ends the stream after it is yielded".
async fn a_fail_fast_fan_out_cuts_tasks_whose_drops_panic<R: Runtime>(rt: R) {
    let mut rng = Rng(36_010);
    for round in 0..4 {
        let bombs = Bombs::default();
        let fail_at = 5 + rng.below(20);
        let start = rt.now();
        let (rt2, bombs2) = (rt.clone(), bombs.clone());
        let mut results = Box::pin(FanOut::new(8).unwrap().runtime(rt.clone()).try_run_iter(
            0..40u64,
            move |i| {
                let (rt, bombs) = (rt2.clone(), bombs2.clone());
                async move {
                    if i == fail_at {
                        rt.sleep(ms(3)).await;
                        return Err("bad input");
                    }
                    if i % 5 == 0 {
                        let bomb = bombs.bomb("cut fan-out task");
                        rt.sleep(HOUR).await;
                        bomb.defuse();
                    } else {
                        rt.sleep(ms(i % 4)).await;
                    }
                    Ok(i)
                }
            },
        ));
        let mut items = Vec::new();
        while let Some(item) = results.next().await {
            items.push(item);
        }
        let (last, oks) = items.split_last().expect("at least the error");
        assert!(
            matches!(last, Err(FanOutError::Inner("bad input"))),
            "round {round}: the stream ends after the error: {last:?}"
        );
        for ok in oks {
            assert!(
                matches!(ok, Ok(i) if i % 5 != 0),
                "round {round}: only quick inputs before the error: {ok:?}"
            );
        }
        assert!(
            rt.now() - start < HOUR,
            "round {round}: the cut tasks were not waited for"
        );
        drop(results);
        bombs.all_dropped(&rt, "every cut task's bomb").await;
        assert_eq!(
            bombs.exploded(),
            bombs.made(),
            "round {round}: every hour-long task was cut"
        );
    }
    still_runs_tasks(&rt).await;
}

#[test]
fn a_fail_fast_fan_out_cuts_tasks_whose_drops_panic_on_every_adapter() {
    on_each(clocked!(a_fail_fast_fan_out_cuts_tasks_whose_drops_panic));
}

/// A fail-fast fan-out, in input order, where input 3's task returns `Ok(3)` and then panics in
/// `Drop`. Doc (`FanOutError::Task`): "A task panicked or was cancelled by its runtime": the
/// stream may deliver `Ok(3)`, or end at `Task(Panicked)` with that payload; nothing cancelled
/// the task, so never `Task(Cancelled)`.
async fn a_fail_fast_fan_out_reads_a_drop_after_return_as_what_happened<R: Runtime>(rt: R) {
    let bombs = Bombs::default();
    let (rt2, bombs2) = (rt.clone(), bombs.clone());
    let results = FanOut::new(2)
        .unwrap()
        .runtime(rt.clone())
        .ordered()
        .try_run_iter(0..6u64, move |i| -> BoxFut<Result<u64, &'static str>> {
            let rt = rt2.clone();
            if i == 3 {
                Box::pin(WithBomb::new(
                    async move {
                        rt.sleep(ms(1)).await;
                        Ok(3)
                    },
                    bombs2.bomb(FAN_AFTER_READY),
                ))
            } else {
                Box::pin(async move {
                    rt.sleep(ms(i)).await;
                    Ok(i)
                })
            }
        });
    let items: Vec<Result<u64, FanOutError<&'static str>>> = results.collect().await;
    bombs.all_dropped(&rt, "input 3's bomb").await;
    let described: Vec<String> = items.iter().map(|i| format!("{i:?}")).collect();
    assert!(
        items.len() >= 4 && items[..3].iter().all(Result::is_ok),
        "{described:?}"
    );
    match &items[3] {
        Ok(3) => assert_eq!(items.len(), 6, "{described:?}"),
        Err(FanOutError::Task(JoinError::Panicked(p))) if p.message() == Some(FAN_AFTER_READY) => {
            assert_eq!(items.len(), 4, "{described:?}");
        }
        _ => panic!(
            "input 3 returned Ok(3), then panicked in Drop; nothing cancelled it: {described:?}"
        ),
    }
    still_runs_tasks(&rt).await;
}

/// The drop after return ends the stream with `Task(Panicked)`, never `Task(Cancelled)`.
#[test]
fn a_fail_fast_fan_out_reads_a_drop_after_return_as_what_happened_on_every_adapter() {
    on_each(clocked!(
        a_fail_fast_fan_out_reads_a_drop_after_return_as_what_happened
    ));
}

/// `FanOutStream::abort` at a seeded point while tasks holding bombs sleep. Doc: "Tasks still
/// running are aborted and deliver nothing, not even `Err(Cancelled)`"; results that arrived
/// are delivered.
async fn aborting_a_fan_out_delivers_only_arrived_results<R: Runtime>(rt: R) {
    let mut rng = Rng(36_011);
    for round in 0..6 {
        let bombs = Bombs::default();
        let (rt2, bombs2) = (rt.clone(), bombs.clone());
        let mut results = Box::pin(FanOut::new(6).unwrap().runtime(rt.clone()).run_iter(
            0..30u64,
            move |i| {
                let (rt, bombs) = (rt2.clone(), bombs2.clone());
                let d = ms((i * 37 % 11) * 10);
                async move {
                    let bomb = bombs.bomb("aborted fan-out task");
                    rt.sleep(d).await;
                    bomb.defuse();
                    i
                }
            },
        ));
        let mut delivered = BTreeSet::new();
        for _ in 0..rng.below(10) {
            let i = results.next().await.expect("30 inputs").unwrap();
            assert!(delivered.insert(i));
        }
        rt.sleep(ms(rng.below(60))).await;
        results.as_mut().abort();
        while let Some(outcome) = results.next().await {
            let i = outcome.unwrap_or_else(|e| {
                panic!("round {round}: an aborted task delivers nothing: {e:?}")
            });
            assert!(delivered.insert(i));
        }
        drop(results);
        bombs.all_dropped(&rt, "every aborted task's bomb").await;
        assert!(
            bombs.exploded() + delivered.len() <= bombs.made(),
            "round {round}: a delivered task's bomb was defused"
        );
    }
    still_runs_tasks(&rt).await;
}

#[test]
fn aborting_a_fan_out_delivers_only_arrived_results_on_every_adapter() {
    on_each(clocked!(aborting_a_fan_out_delivers_only_arrived_results));
}

/// Dropping a fan-out whose tasks pend holding bombs. Doc: "dropping the stream aborts every
/// task still running (no orphaned work)".
async fn dropping_a_fan_out_aborts_tasks_whose_drops_panic<R: Runtime>(rt: R) {
    let bombs = Bombs::default();
    let bombs2 = bombs.clone();
    let mut results = Box::pin(FanOut::new(8).unwrap().runtime(rt.clone()).run_iter(
        0..100u64,
        move |_| {
            let bomb = bombs2.bomb("dropped with its fan-out");
            async move {
                let _bomb = bomb;
                std::future::pending::<u64>().await
            }
        },
    ));
    assert!(futures_util::poll!(results.next()).is_pending());
    let in_flight = results.in_flight();
    assert!((1..=8).contains(&in_flight), "{in_flight}");
    assert_eq!(bombs.made(), in_flight);
    drop(results);
    bombs
        .all_dropped(&rt, "every task aborted with the stream")
        .await;
    assert_eq!(bombs.exploded(), in_flight);
    still_runs_tasks(&rt).await;
}

#[test]
fn dropping_a_fan_out_aborts_tasks_whose_drops_panic_on_every_adapter() {
    everywhere(
        raw!(dropping_a_fan_out_aborts_tasks_whose_drops_panic),
        clocked!(dropping_a_fan_out_aborts_tasks_whose_drops_panic),
    );
}

// ---------------------------------------------------------------------------------------------
// Hedge and race, run inside tasks
// ---------------------------------------------------------------------------------------------

/// A hedge whose slow primary holds a bomb: the hedge wins and the primary is dropped inside
/// the task (doc: "the losers are dropped (cancelled)"); the task's handle reads `Panicked`
/// with that payload. Then hedged calls aborted at seeded points with both attempts holding
/// bombs: `Panicked` too.
async fn hedges_in_tasks_whose_attempts_panic_on_drop<R: Runtime>(rt: R) {
    let bombs = Bombs::default();
    let (rt2, bombs2) = (rt.clone(), bombs.clone());
    let task = rt.spawn(async move {
        let hedge = Hedge::builder()
            .runtime(rt2.clone())
            .delay(ms(50))
            .max_hedges(1)
            .build()
            .unwrap();
        let mut calls = 0u32;
        hedge
            .call(Idempotent(|| {
                calls += 1;
                let n = calls;
                let (rt, bomb) = (rt2.clone(), bombs2.bomb("the losing primary dropped"));
                let latency = if n == 1 {
                    Duration::from_secs(10)
                } else {
                    ms(10)
                };
                async move {
                    rt.sleep(latency).await;
                    bomb.defuse();
                    Ok::<u32, &'static str>(n)
                }
            }))
            .await
    });
    let joined = task.await;
    assert_eq!(
        join_panic(&joined),
        Some("the losing primary dropped"),
        "{joined:?}"
    );
    bombs.all_dropped(&rt, "both attempts' bombs").await;
    assert_eq!((bombs.made(), bombs.exploded()), (2, 1));

    // Two losers: the primary and the first hedge; the second hedge wins.
    let bombs = Bombs::default();
    let (rt2, bombs2) = (rt.clone(), bombs.clone());
    let task = rt.spawn(async move {
        let hedge = Hedge::builder()
            .runtime(rt2.clone())
            .delay(ms(50))
            .max_hedges(2)
            .build()
            .unwrap();
        let mut calls = 0u32;
        hedge
            .call(Idempotent(|| {
                calls += 1;
                let n = calls;
                let (rt, bomb) = (rt2.clone(), bombs2.bomb("a losing attempt dropped"));
                let latency = if n < 3 {
                    Duration::from_secs(10)
                } else {
                    ms(10)
                };
                async move {
                    rt.sleep(latency).await;
                    bomb.defuse();
                    Ok::<u32, &'static str>(n)
                }
            }))
            .await
    });
    let joined = task.await;
    assert_eq!(
        join_panic(&joined),
        Some("a losing attempt dropped"),
        "{joined:?}"
    );
    bombs
        .all_dropped(&rt, "all three attempts' bombs (two losers)")
        .await;

    let mut rng = Rng(36_012);
    for round in 0..6 {
        let bombs = Bombs::default();
        let (rt2, bombs2) = (rt.clone(), bombs.clone());
        let task = rt.spawn(async move {
            let hedge = Hedge::builder()
                .runtime(rt2.clone())
                .delay(ms(50))
                .max_hedges(1)
                .build()
                .unwrap();
            hedge
                .call(Idempotent(|| {
                    let (rt, bomb) = (rt2.clone(), bombs2.bomb("an attempt dropped by abort"));
                    async move {
                        rt.sleep(Duration::from_secs(10)).await;
                        bomb.defuse();
                        Ok::<u32, &'static str>(0)
                    }
                }))
                .await
        });
        rt.sleep(ms(1 + rng.below(9_000))).await;
        task.abort();
        let joined = task.await;
        assert_eq!(
            join_panic(&joined),
            Some("an attempt dropped by abort"),
            "round {round}: {joined:?}"
        );
        bombs.all_dropped(&rt, "the attempts' bombs").await;
    }
    still_runs_tasks(&rt).await;
}

#[test]
fn hedges_in_tasks_whose_attempts_panic_on_drop_on_every_adapter() {
    on_each(clocked!(hedges_in_tasks_whose_attempts_panic_on_drop));
}

/// `race_ok` in a task: a failing contestant, a winner, two slow losers holding bombs. Doc:
/// "The first `Ok` is returned and every other future is dropped at once".
async fn races_in_tasks_whose_losers_panic_on_drop<R: Runtime>(rt: R) {
    let bombs = Bombs::default();
    let (rt2, bombs2) = (rt.clone(), bombs.clone());
    let task = rt.spawn(async move {
        let contestant = |delay: u64, ok: bool| {
            let (rt, bomb) = (rt2.clone(), bombs2.bomb("a race loser dropped"));
            async move {
                rt.sleep(ms(delay)).await;
                bomb.defuse();
                if ok { Ok(delay) } else { Err(delay) }
            }
        };
        race_ok([
            contestant(2, false),
            contestant(5, true),
            contestant(400, true),
            contestant(800, true),
        ])
        .await
    });
    let joined = task.await;
    assert_eq!(
        join_panic(&joined),
        Some("a race loser dropped"),
        "{joined:?}"
    );
    bombs.all_dropped(&rt, "every contestant's bomb").await;
    assert!(bombs.exploded() >= 1);
    still_runs_tasks(&rt).await;
}

/// `race_ok` polled in the caller, no runtime: one contestant ready with `Ok`, three pending
/// for ever holding bombs. Doc (`race`): "The first `Ok` is returned and every other future is
/// dropped at once"; "dropping the race drops every contestant"; a contestant's drop that
/// panics "does not stop the others from being dropped: the first such panic comes out of the
/// race's poll, or its drop". Every bomb is dropped; each that goes off (one at least) panics
/// on its own, and the first comes out.
#[test]
fn a_race_drops_every_loser_even_when_one_panics_on_drop() {
    let mut wrong = Vec::new();
    for winner in 0..4 {
        let bombs = Bombs::default();
        let contestants: Vec<BoxFut<Result<u32, u32>>> = (0..4)
            .map(|i| -> BoxFut<Result<u32, u32>> {
                let bomb = bombs.bomb("a race loser dropped");
                Box::pin(async move {
                    if i != winner {
                        std::future::pending::<()>().await;
                    }
                    bomb.defuse();
                    Ok(i)
                })
            })
            .collect();
        let race = race_ok(contestants);
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            futures_util::FutureExt::now_or_never(race)
        }));
        let message = outcome.as_ref().err().map(|p| describe(&**p));
        assert_eq!(
            message.as_deref(),
            Some("a race loser dropped"),
            "winner {winner}: {outcome:?}"
        );
        let counts = (bombs.made(), bombs.dropped(), bombs.exploded() >= 1);
        if counts != (4, 4, true) {
            wrong.push(format!(
                "winner {winner}: (made, dropped, went off) = {counts:?} once the race is gone"
            ));
        }
    }
    // Dropped before any contestant is ready.
    let bombs = Bombs::default();
    let contestants: Vec<BoxFut<Result<u32, u32>>> = (0..4)
        .map(|_| -> BoxFut<Result<u32, u32>> {
            let bomb = bombs.bomb("a pending contestant dropped with the race");
            Box::pin(async move {
                let _bomb = bomb;
                std::future::pending::<Result<u32, u32>>().await
            })
        })
        .collect();
    let mut race = race_ok(contestants);
    assert!(futures_util::FutureExt::now_or_never(&mut race).is_none());
    let dropped = catch_unwind(AssertUnwindSafe(|| drop(race)));
    assert!(
        dropped.is_err(),
        "the first bomb's panic comes out of the drop"
    );
    let counts = (bombs.made(), bombs.dropped());
    if counts != (4, 4) {
        wrong.push(format!(
            "dropping a pending race: (made, dropped) = {counts:?}"
        ));
    }
    assert!(
        wrong.is_empty(),
        "every contestant must be dropped (\"every other future is dropped at once\"; \
         \"dropping the race drops every contestant\"):\n{}",
        wrong.join("\n")
    );
}

#[test]
fn races_in_tasks_whose_losers_panic_on_drop_on_every_adapter() {
    everywhere(
        raw!(races_in_tasks_whose_losers_panic_on_drop),
        clocked!(races_in_tasks_whose_losers_panic_on_drop),
    );
}

// ---------------------------------------------------------------------------------------------
// spawn_blocking
// ---------------------------------------------------------------------------------------------

/// Blocking work whose closure or result panics when dropped:
///
/// * a capture dropped as the closure ends: the work panicked, `Panicked` with that payload;
/// * a result awaited: handed over whole;
/// * a result of a detached job, and of a finished job whose handle is dropped: "caught and
///   ignored";
/// * a started job aborted: "it runs to completion and awaiting the handle yields its result";
/// * `spawn_blocking_cancellable` dropped: "the work stops at its next check, and its result is
///   discarded".
async fn blocking_work_whose_closure_or_result_panics_on_drop<R: Runtime>(rt: R) {
    let bombs = Bombs::default();

    let bomb = bombs.bomb("a blocking closure's capture");
    let joined = rt
        .spawn_blocking(move || {
            let _bomb = bomb;
            7u32
        })
        .await;
    assert_eq!(
        join_panic(&joined),
        Some("a blocking closure's capture"),
        "{joined:?}"
    );

    let bomb = bombs.bomb("a blocking result read");
    rt.spawn_blocking(move || bomb).await.unwrap().defuse();

    let (go, gate) = mpsc::channel::<()>();
    let bomb = bombs.bomb("a detached blocking result");
    drop(rt.spawn_blocking(move || {
        let _ = gate.recv();
        bomb
    }));
    go.send(()).unwrap();

    let (done, is_done) = oneshot::channel();
    let bomb = bombs.bomb("an unread blocking result");
    let handle = rt.spawn_blocking(move || {
        let _ = done.send(());
        bomb
    });
    is_done.await.unwrap();
    drop(handle);

    let (started, has_started) = oneshot::channel();
    let (go, gate) = mpsc::channel::<()>();
    let bomb = bombs.bomb("an aborted blocking job's result");
    let handle = rt.spawn_blocking(move || {
        let _ = started.send(());
        let _ = gate.recv();
        bomb
    });
    has_started.await.unwrap();
    handle.abort();
    go.send(()).unwrap();
    handle
        .await
        .expect("an aborted blocking job that started yields its result")
        .defuse();

    let (started, has_started) = oneshot::channel();
    let bomb = bombs.bomb("an abandoned cancellable job's result");
    let task = spawn_blocking_cancellable(&rt, move |flag| {
        let _ = started.send(());
        while !flag.is_cancelled() {
            std::thread::sleep(Duration::from_millis(1));
        }
        bomb
    });
    has_started.await.unwrap();
    drop(task);

    bombs.all_dropped(&rt, "every blocking bomb").await;
    assert_eq!(bombs.exploded(), 4, "capture, detached, unread, abandoned");
    still_runs_tasks(&rt).await;
}

#[test]
fn blocking_work_whose_closure_or_result_panics_on_drop_on_every_adapter() {
    everywhere(
        raw!(blocking_work_whose_closure_or_result_panics_on_drop),
        clocked!(blocking_work_whose_closure_or_result_panics_on_drop),
    );
}
