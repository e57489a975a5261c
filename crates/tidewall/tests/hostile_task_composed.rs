//! Hostile, composed black-box tests for `tidewall::task`, written from the rustdoc alone:
//! scopes, pools, supervisors, shutdowns, periodic work and blocking offload combined the way
//! services combine them, with handles, owners and futures dropped at seeded-random points,
//! and limits, periods, backoffs and deadlines at their extremes. Every claim tested cites
//! the item whose docs make it. Time is virtual throughout (`Clocked` or paused tokio); the
//! randomness is `SplitMix64`, seeded.
#![cfg(all(
    feature = "tokio",
    feature = "smol",
    feature = "async-std",
    feature = "test-util"
))]

mod common;
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use common::ms;
use support::{Gauge, poll_limit};
use tidewall::rt::{Clock, Runtime, Spawn, TaskHandle, Tokio};
use tidewall::stream::MissedTicks;
use tidewall::task::pool::{SubmitError, WorkerPool};
use tidewall::task::scope::{FailurePolicy, Scope, SpawnError, Spawner};
use tidewall::task::shutdown::{Cause, Shutdown};
use tidewall::task::supervisor::{
    ChildSpec, Ended, Restart, Strategy, Supervisor, SupervisorEvent,
};
use tidewall::task::{
    CancelFlag, CancellationToken, Ending, Exit, Health, HealthChecker, Reason, periodic,
    spawn_blocking_cancellable,
};
use tidewall::testing::Clocked;
use tidewall::{Backoff, ConfigError, FutureExt as _, Jitter};
use tidewall_core::rng::SplitMix64;

const SEC: Duration = Duration::from_secs(1);
const HOUR: Duration = Duration::from_secs(3_600);
const YEAR: Duration = Duration::from_secs(365 * 86_400);
/// The longest duration the builders accept: `u64::MAX` nanoseconds (about 584 years).
const MAX_NS: Duration = Duration::from_nanos(u64::MAX);

type BoxFut<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Awaits `fut`, failing the test (instead of hanging it) if it takes longer than `limit` of
/// virtual time: a lost wake-up shows up as a failure, not a stuck test.
async fn within<R: Clock, F: Future>(rt: &R, limit: Duration, what: &str, fut: F) -> F::Output {
    match fut.timeout_on(rt, limit).await {
        Ok(out) => out,
        Err(_) => panic!("{what}: not done within {limit:?} of virtual time"),
    }
}

fn seeded(seed: u64) -> SplitMix64 {
    SplitMix64::new(seed)
}

fn pick(rng: &mut SplitMix64, max: u64) -> u64 {
    rng.below_or_equal(max)
}

fn pick_usize(rng: &mut SplitMix64, max: u64) -> usize {
    usize::try_from(rng.below_or_equal(max)).unwrap()
}

fn pick_u32(rng: &mut SplitMix64, max: u32) -> u32 {
    u32::try_from(rng.below_or_equal(u64::from(max))).unwrap()
}

/// A child/job/component that ignores every stop request, counted while it lives.
async fn guarded_pending(gauge: Gauge) {
    let _alive = gauge.enter();
    std::future::pending::<()>().await;
}

fn explode(message: &str) -> Result<(), &'static str> {
    panic!("{message}")
}

fn explode_io(message: &str) -> Result<(), std::io::Error> {
    panic!("{message}")
}

fn set<T: Ord + Clone>(items: &[T]) -> BTreeSet<T> {
    items.iter().cloned().collect()
}

/// Polls `fut` until `progress` reaches `at`, then at most `extra` more times, then drops it
/// (if still pending): a seeded drop point at a known stage of the owner's work, whatever
/// spurious polls the executor makes. `None` when dropped.
struct DropAt<F> {
    fut: Option<Pin<Box<F>>>,
    progress: Arc<AtomicUsize>,
    at: usize,
    extra: u64,
}

impl<F: Future> Future for DropAt<F> {
    type Output = Option<F::Output>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(fut) = self.fut.as_mut() else {
            return Poll::Ready(None);
        };
        if let Poll::Ready(out) = fut.as_mut().poll(cx) {
            self.fut = None;
            return Poll::Ready(Some(out));
        }
        if self.progress.load(SeqCst) >= self.at {
            if self.extra == 0 {
                self.fut = None;
                return Poll::Ready(None);
            }
            self.extra -= 1;
        }
        Poll::Pending
    }
}

// ================================================================================================
// Cancellation with a reason
// ================================================================================================

type Seen = Arc<Mutex<Vec<(u32, Option<String>, Ending)>>>;
type SpawnerSlot<R> = Arc<Mutex<Option<Spawner<(), (), Clocked<R>>>>>;

/// One level of a chain of scopes nested inside each other's children: each level's scope is
/// a child of the token of the scope its own task runs in (`ScopeBuilder::parent`).
fn nest<R: Runtime>(
    rt: Clocked<R>,
    parent: CancellationToken,
    depth: u32,
    seen: Seen,
) -> BoxFut<Result<String, String>> {
    Box::pin(async move {
        let scope = Scope::builder()
            .runtime(rt.clone())
            .parent(&parent)
            .grace(ms(1_000))
            .build::<String, String>()
            .map_err(|e| e.to_string())?;
        let token = scope.token();
        let child: BoxFut<Result<String, String>> = if depth == 0 {
            Box::pin(async move {
                let reason = token.cancelled().await;
                // The first cancellation wins: this must not replace the root's reason.
                token.cancel("leaf: too late");
                Ok(reason.as_str().to_owned())
            })
        } else {
            nest(rt.clone(), token, depth - 1, seen.clone())
        };
        scope
            .spawn(child)
            .await
            .map_err(|e| format!("level {depth}: {e}"))?;
        let report = scope.join().await;
        let reason = report.cancel_reason.as_ref().map(|r| r.as_str().to_owned());
        let mut children = report.children;
        let child = children.pop().ok_or("no child report")?;
        seen.lock().unwrap().push((depth, reason, child.ending));
        match child.exit {
            Exit::Ok(value) => Ok(value),
            other => Err(format!("level {depth}: {other:?}")),
        }
    })
}

// Docs (`CancellationToken`): "child tokens are cancelled with their parent (with the parent's
// reason)"; "The first cancellation wins: later `cancel` calls do not replace the reason".
// (`ScopeBuilder::parent`): "cancelling `parent` cancels the scope". (`ScopeReport::
// cancel_reason`): "Why the scope was cancelled". (`ChildReport::ending`): `Ending::Stopped`
// for a child that ended "after the scope was cancelled, within the grace period".
async fn reason_through_fifty_scopes<R: Runtime>(rt: Clocked<R>) {
    let root = CancellationToken::new();
    let seen: Seen = Arc::default();
    let top = rt.spawn(nest(rt.clone(), root.child(), 49, seen.clone()));
    rt.sleep(ms(10)).await;
    assert!(
        seen.lock().unwrap().is_empty(),
        "a level ended before the cancel"
    );
    root.cancel("deploy: deep drain");
    let out = within(&rt, HOUR, "the nested scopes", top).await.unwrap();
    assert_eq!(out.as_deref(), Ok("deploy: deep drain"));
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 50, "every level joined");
    for (i, (depth, reason, ending)) in seen.iter().enumerate() {
        assert_eq!(*depth as usize, i, "levels end innermost first");
        assert_eq!(
            reason.as_deref(),
            Some("deploy: deep drain"),
            "level {depth}"
        );
        assert!(
            matches!(ending, Ending::Stopped { .. }),
            "level {depth}: {ending:?}"
        );
    }
}

#[test]
fn a_reason_arrives_intact_through_fifty_nested_scopes_on_every_runtime() {
    on_every_runtime!(reason_through_fifty_scopes);
}

// Docs (`CancellationToken`): "The first cancellation wins: later `cancel` calls do not replace
// the reason"; "cancelling a child leaves the parent alone"; (`child`) "A child: cancelled when
// this token is (with its reason), cancellable on its own".
#[test]
fn first_reason_wins_among_racing_cancellers_and_a_child_cancelled_first_keeps_its_own() {
    let mut rng = seeded(0xC0FF_EE00);
    for round in 0..100 {
        let token = CancellationToken::new();
        let kids: Vec<_> = (0..4).map(|_| token.child()).collect();
        let early = token.child();
        early.cancel("early child");
        assert!(
            !token.is_cancelled(),
            "cancelling a child cancelled its parent"
        );
        let threads = 2 + pick_usize(&mut rng, 5);
        let seen: Vec<Reason> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|i| {
                    let token = token.clone();
                    s.spawn(move || {
                        token.cancel(format!("canceller {i}"));
                        token.reason().expect("cancelled by now")
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let winner = token.reason().unwrap();
        assert!(
            seen.iter().all(|r| *r == winner),
            "round {round}: readers saw different reasons: {seen:?}"
        );
        for kid in &kids {
            assert_eq!(kid.reason(), Some(winner.clone()), "round {round}");
            let grandchild = kid.child();
            assert_eq!(grandchild.reason(), Some(winner.clone()), "born cancelled");
        }
        assert_eq!(
            early.reason().unwrap().as_str(),
            "early child",
            "round {round}"
        );
        token.cancel("after the fact");
        assert_eq!(token.reason(), Some(winner));
    }
}

/// A future that is never ready, wakes itself on every poll, and cancels `token` in its
/// `cancel_at`-th poll.
struct Spinner {
    polls: Arc<AtomicU32>,
    cancel_at: u32,
    token: CancellationToken,
}

impl Future for Spinner {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let n = self.polls.fetch_add(1, SeqCst) + 1;
        if n == self.cancel_at {
            self.token.cancel(format!("cancelled in poll {n}"));
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

// Docs (`CancellationToken::run_until_cancelled`): "The token is checked before every poll of
// `future`, so it stops even a future that is always ready; it is never polled again after
// the cancellation is seen."
#[tokio::test(start_paused = true)]
async fn run_until_cancelled_never_polls_again_once_a_cancel_happened_mid_poll() {
    let mut rng = seeded(0x5B1A);
    for round in 0..40u32 {
        let root = CancellationToken::new();
        let watched = if round.is_multiple_of(2) {
            root.clone()
        } else {
            root.child()
        };
        let polls = Arc::new(AtomicU32::new(0));
        let cancel_at = 1 + pick_u32(&mut rng, 40);
        let spinner = Spinner {
            polls: polls.clone(),
            cancel_at,
            token: root.clone(),
        };
        let reason = watched
            .run_until_cancelled(spinner)
            .await
            .expect_err("never ready");
        assert_eq!(reason.as_str(), format!("cancelled in poll {cancel_at}"));
        assert_eq!(
            polls.load(SeqCst),
            cancel_at,
            "round {round}: polled after the cancel"
        );
    }
    // Cancelled before: the future is never polled at all.
    let token = CancellationToken::new();
    token.cancel("before");
    let polled = Arc::new(AtomicU32::new(0));
    let p = polled.clone();
    let out = token
        .run_until_cancelled(std::future::poll_fn(move |_| {
            p.fetch_add(1, SeqCst);
            Poll::Ready(5)
        }))
        .await;
    assert_eq!(out.unwrap_err().as_str(), "before");
    assert_eq!(polled.load(SeqCst), 0);
}

// Docs (`CancellationToken`): "Depth does not matter: cancelling a token and dropping the last
// token of a chain walk it iteratively, so a chain of a million nested children needs no more
// stack than one child." Run on a 256 KiB stack with 200,000 links (only root and leaf held).
#[test]
fn a_two_hundred_thousand_deep_chain_cancels_and_drops_on_a_small_stack() {
    std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(|| {
            let chain = |root: &CancellationToken| {
                let mut leaf = root.child();
                for _ in 0..200_000 {
                    leaf = leaf.child();
                }
                leaf
            };
            // Cancelled from the root, seen at the leaf with the root's reason.
            let root = CancellationToken::new();
            let leaf = chain(&root);
            let waiter = leaf.cancelled_owned();
            root.cancel("deep");
            let reason = futures_util::FutureExt::now_or_never(waiter).expect("leaf woken");
            assert_eq!(reason.as_str(), "deep");
            drop(root);
            drop(leaf);
            // Never cancelled: the root dropped first, then the leaf (the last owner of the
            // whole chain).
            let root = CancellationToken::new();
            let leaf = chain(&root);
            drop(root);
            assert!(!leaf.is_cancelled());
            drop(leaf);
            // Cancelled at the leaf only: the root is left alone.
            let root = CancellationToken::new();
            let leaf = chain(&root);
            leaf.cancel("leaf only");
            assert!(!root.is_cancelled());
            drop(leaf);
            drop(root);
        })
        .unwrap()
        .join()
        .expect("no stack overflow");
}

// Docs (`Scope::join`): "If the scope is (or becomes) cancelled, children still running after
// the grace period are aborted" (none run here, so nothing is waited for);
// (`ScopeReport::cancel_reason`) "Why the scope was cancelled, if it was"; (`Scope::cancel`)
// "new spawns are refused"; (`Ending::Finished`) "It ended on its own, before it was told to
// stop." A child finishing at the very instant of the shutdown is not aborted within a
// non-zero grace (`Scope::shutdown`: "waits up to `grace` ... aborts the rest").
async fn cancel_after_and_at_completion<R: Runtime>(rt: Clocked<R>) {
    let scope = Scope::builder()
        .runtime(rt.clone())
        .build::<u32, ()>()
        .unwrap();
    for i in 0..5u32 {
        let c = rt.clone();
        scope
            .spawn(async move {
                c.sleep(ms(u64::from(i) * 3)).await;
                Ok(i)
            })
            .await
            .unwrap();
    }
    rt.sleep(ms(100)).await;
    assert_eq!(scope.running(), 0);
    scope.cancel("too late");
    assert!(matches!(
        scope.try_spawn(async { Ok(9) }),
        Err(SpawnError::Closed(_))
    ));
    let t0 = rt.now();
    let report = scope.join().await;
    assert_eq!(
        rt.now() - t0,
        Duration::ZERO,
        "joined a finished scope slowly"
    );
    assert_eq!(
        report.cancel_reason.as_ref().map(Reason::as_str),
        Some("too late")
    );
    assert_eq!(
        (report.spawned, report.succeeded, report.aborted),
        (5, 5, 0)
    );
    assert!(report.children.iter().all(|c| c.ending == Ending::Finished));
    assert!(report.is_balanced());

    // Children that finish at the instant the scope is shut down (grace 10 ms).
    let scope = Scope::builder()
        .runtime(rt.clone())
        .build::<u32, ()>()
        .unwrap();
    for i in 0..8u32 {
        let c = rt.clone();
        scope
            .spawn(async move {
                c.sleep(ms(20)).await;
                Ok(i)
            })
            .await
            .unwrap();
    }
    rt.sleep(ms(20)).await;
    let report = scope.shutdown("racing", ms(10)).await;
    assert_eq!((report.succeeded, report.aborted), (8, 0), "{report:?}");
    for child in &report.children {
        assert!(matches!(child.exit, Exit::Ok(_)), "{child:?}");
        match child.ending {
            Ending::Finished
            | Ending::Stopped {
                took: Duration::ZERO,
            } => {}
            other => panic!("finished at the cancel instant, reads {other:?}"),
        }
    }
}

#[test]
fn cancelling_a_finished_scope_and_racing_completion_lose_nothing_on_every_runtime() {
    on_every_runtime!(cancel_after_and_at_completion);
}

// ================================================================================================
// Scopes
// ================================================================================================

// Docs (`Scope`): "Dropping a scope without closing it cancels its token and aborts every
// child"; (`Scope::join`) "Dropping the future drops the scope: its token is cancelled and
// every child aborted"; (module `scope`) "a Scope ... whose children cannot outlive it";
// (child wrapper) an abort reaches a pending child "at once if pending". Owners are dropped at
// seeded-random poll counts and times; children ignore their token, spawn grandchildren, or
// run a nested scope of their own.
async fn scope_owner_dropped_at_random<R: Runtime>(rt: Clocked<R>) {
    let mut rng = seeded(0x0005_C09E);
    let mut rounds_with_children = 0;
    for round in 0..14 {
        let gauge = Gauge::default();
        let token_slot: Arc<Mutex<Option<CancellationToken>>> = Arc::default();
        let spawner_slot: SpawnerSlot<R> = Arc::default();
        let kinds: Vec<u64> = (0..8).map(|_| pick(&mut rng, 4)).collect();
        // At least 1 ms: virtual time moves only once every task is idle, so the children
        // spawned so far have run by then (a drop point before any child ran tests nothing).
        let gaps: Vec<u64> = (0..8).map(|_| 1 + pick(&mut rng, 3)).collect();
        let use_shutdown = pick(&mut rng, 2) == 0;
        let progress = Arc::new(AtomicUsize::new(0));
        let grace = ms(pick(&mut rng, 20));
        let owner = {
            let (rt, gauge) = (rt.clone(), gauge.clone());
            let (token_slot, spawner_slot) = (token_slot.clone(), spawner_slot.clone());
            let progress = progress.clone();
            async move {
                let scope = Scope::builder()
                    .runtime(rt.clone())
                    .grace(ms(50))
                    .build::<(), ()>()
                    .unwrap();
                *token_slot.lock().unwrap() = Some(scope.token());
                *spawner_slot.lock().unwrap() = Some(scope.spawner());
                for (kind, gap) in kinds.into_iter().zip(gaps) {
                    let (g, c, sp, tok) =
                        (gauge.clone(), rt.clone(), scope.spawner(), scope.token());
                    let child = async move {
                        match kind {
                            0 => guarded_pending(g).await,
                            1 => {
                                let _alive = g.enter();
                                loop {
                                    c.sleep(ms(7)).await;
                                }
                            }
                            2 => {
                                let _alive = g.enter();
                                let g2 = g.clone();
                                let _ = sp
                                    .spawn(async move {
                                        guarded_pending(g2).await;
                                        Ok(())
                                    })
                                    .await;
                                std::future::pending::<()>().await;
                            }
                            3 => {
                                let _alive = g.enter();
                                let inner = Scope::builder()
                                    .runtime(c.clone())
                                    .parent(&tok)
                                    .grace(HOUR)
                                    .build::<(), ()>()
                                    .unwrap();
                                for _ in 0..2 {
                                    let g = g.clone();
                                    let _ = inner
                                        .spawn(async move {
                                            guarded_pending(g).await;
                                            Ok(())
                                        })
                                        .await;
                                }
                                let _ = inner.join().await;
                            }
                            _ => {
                                let _alive = g.enter();
                                tok.cancelled().await;
                                c.sleep(HOUR).await; // cleanup far beyond any grace
                            }
                        }
                        Ok(())
                    };
                    let _ = scope.spawn(child).await;
                    rt.sleep(ms(gap)).await;
                    progress.fetch_add(1, SeqCst);
                }
                progress.fetch_add(1, SeqCst);
                if use_shutdown {
                    Some(scope.shutdown("owner done", grace).await)
                } else {
                    let _ = scope.join().await; // never completes: the children ignore the token
                    None
                }
            }
        };
        // Dropped after the `at`-th spawn (9: in the join or shutdown) and `polls` more polls,
        // or at a random virtual time, whichever comes first.
        let (at, polls) = (1 + pick_usize(&mut rng, 8), pick(&mut rng, 6));
        let limit = ms(1 + pick(&mut rng, 40));
        let owner = DropAt {
            fut: Some(Box::pin(owner)),
            progress,
            at,
            extra: polls,
        };
        let out = owner.timeout_on(&rt, limit).await;
        if let Ok(Some(Some(report))) = &out {
            assert!(report.is_balanced(), "round {round}: {report:?}");
            assert_eq!(
                report.succeeded + report.aborted,
                report.spawned,
                "{report:?}"
            );
        }
        if gauge.most() > 0 {
            rounds_with_children += 1;
        }
        rt.sleep(ms(1)).await;
        assert_eq!(
            gauge.now(),
            0,
            "round {round}: children outlived their scope (at {at}+{polls}, limit {limit:?})"
        );
        if let Some(token) = token_slot.lock().unwrap().take() {
            assert!(
                token.is_cancelled(),
                "round {round}: the dropped scope's token"
            );
        }
        if let Some(spawner) = spawner_slot.lock().unwrap().take() {
            assert!(
                matches!(
                    spawner.try_spawn(async { Ok(()) }),
                    Err(SpawnError::Closed(_))
                ),
                "round {round}: a spawner of a dropped scope still spawns"
            );
        }
        rt.sleep(HOUR).await;
        assert_eq!(gauge.now(), 0, "round {round}: something came back");
    }
    assert!(
        rounds_with_children >= 7,
        "vacuous: {rounds_with_children} rounds ran children"
    );
}

#[test]
fn dropping_a_scope_owner_at_random_points_leaves_no_descendant_running_on_every_runtime() {
    on_every_runtime!(scope_owner_dropped_at_random);
}

// Docs (`ScopeBuilder::limit`): "At most `max_running` children at once: `spawn` waits for a
// free slot and `try_spawn` hands the future back"; (`Spawner::spawn`) "Dropping the returned
// future before it resolves spawns nothing (and drops `future`)". Producers waiting for a slot
// are dropped at random poll counts; afterwards no slot may be missing and no dropped child
// may ever have run.
async fn limited_spawns_dropped_at_random<R: Runtime>(rt: Clocked<R>) {
    let mut rng = seeded(0x11_A1);
    let scope = Scope::builder()
        .runtime(rt.clone())
        .limit(2)
        .build::<u64, ()>()
        .unwrap();
    let gauge = Gauge::default();
    let polled: Arc<Mutex<Vec<u64>>> = Arc::default();
    let resolved: Arc<Mutex<Vec<u64>>> = Arc::default();
    let mut producers = Vec::new();
    for id in 0..40u64 {
        let (sp, c, g) = (scope.spawner(), rt.clone(), gauge.clone());
        let (polled, resolved) = (polled.clone(), resolved.clone());
        let (delay, life) = (pick(&mut rng, 30), 1 + pick(&mut rng, 15));
        let polls = (pick(&mut rng, 2) == 0).then(|| pick(&mut rng, 5));
        producers.push(rt.spawn(async move {
            c.sleep(ms(delay)).await;
            let c2 = c.clone();
            let child = async move {
                polled.lock().unwrap().push(id);
                let _alive = g.enter();
                c2.sleep(ms(life)).await;
                Ok(id)
            };
            let out = match polls {
                Some(p) => poll_limit(sp.spawn(child), p).await,
                None => Some(sp.spawn(child).await),
            };
            match out {
                Some(Ok(_)) => resolved.lock().unwrap().push(id),
                Some(Err(e)) => panic!("spawn {id}: {e}"),
                None => {}
            }
        }));
    }
    for p in producers {
        within(&rt, HOUR, "a producer", p).await.unwrap();
    }
    rt.sleep(ms(500)).await;
    assert_eq!(scope.running(), 0, "a slot leaked");
    assert!(gauge.most() <= 2, "limit 2, {} ran at once", gauge.most());
    let (polled, resolved) = (set(&polled.lock().unwrap()), set(&resolved.lock().unwrap()));
    assert_eq!(polled, resolved, "children run vs. spawns that resolved");
    assert!(
        resolved.len() >= 20 && resolved.len() < 40,
        "vacuous: {} of 40 spawns resolved",
        resolved.len()
    );
    // Exactly two slots are free at rest.
    let hold = CancellationToken::new();
    let holder = |t: CancellationToken| async move {
        t.cancelled().await;
        Ok(0)
    };
    assert!(scope.try_spawn(holder(hold.clone())).is_ok());
    assert!(scope.try_spawn(holder(hold.clone())).is_ok());
    assert!(matches!(
        scope.try_spawn(holder(hold.clone())),
        Err(SpawnError::Full(_))
    ));
    hold.cancel("release");
    let report = scope.join().await;
    assert_eq!(report.spawned, resolved.len() as u64 + 2);
    assert_eq!(report.succeeded, report.spawned);
    assert!(report.is_balanced());
}

#[test]
fn spawns_waiting_for_a_slot_dropped_at_random_spawn_nothing_and_leak_no_slot_on_every_runtime() {
    on_every_runtime!(limited_spawns_dropped_at_random);
}

fn tree<R: Runtime>(
    rt: Clocked<R>,
    sp: Spawner<u64, (), Clocked<R>>,
    depth: u32,
    label: u64,
) -> BoxFut<Result<u64, ()>> {
    Box::pin(async move {
        rt.sleep(ms(3)).await;
        if depth < 6 {
            for side in 0..2 {
                let next = tree(rt.clone(), sp.clone(), depth + 1, label * 2 + side);
                sp.spawn(next).await.map_err(|_| ())?;
            }
        }
        Ok(label)
    })
}

// Docs (`Scope::join`): "Waits for every child (children may still spawn siblings meanwhile),
// then closes the scope to new spawns"; (`Scope`) "join waits for every child, including
// those that children spawn meanwhile". A binary tree of 127 children, each spawning its two
// children just before it ends.
async fn join_waits_for_a_spawning_tree<R: Runtime>(rt: Clocked<R>) {
    let scope = Scope::builder()
        .runtime(rt.clone())
        .build::<u64, ()>()
        .unwrap();
    let spawner = scope.spawner();
    scope
        .spawn(tree(rt.clone(), scope.spawner(), 0, 1))
        .await
        .unwrap();
    let t0 = rt.now();
    let report = within(&rt, HOUR, "join", scope.join()).await;
    assert_eq!(rt.now() - t0, ms(21), "seven generations of 3 ms");
    assert_eq!((report.spawned, report.succeeded), (127, 127), "{report:?}");
    let labels: BTreeSet<u64> = report
        .children
        .into_iter()
        .filter_map(|c| c.exit.ok())
        .collect();
    assert_eq!(labels, (1..128).collect::<BTreeSet<u64>>());
    assert!(matches!(
        spawner.try_spawn(async { Ok(0) }),
        Err(SpawnError::Closed(_))
    ));
}

#[test]
fn join_waits_for_children_spawned_by_children_on_every_runtime() {
    on_every_runtime!(join_waits_for_a_spawning_tree);
}

// Docs (`ScopeBuilder::grace`): "zero aborts at once"; (`ScopeBuilder::build`)
// "`ConfigError::DurationOverflow` for a grace period beyond `u64::MAX` nanoseconds";
// (`Scope::shutdown`) "waits up to `grace` (from this call) for the children to stop, aborts
// the rest" (no error for any `grace`); (`Ending::Stopped`) "From the stop to its end".
#[test]
fn scope_grace_extremes() {
    common::on_tokio_current_thread(|rt| async move {
        let err = Scope::builder()
            .runtime(rt.clone())
            .grace(Duration::MAX)
            .build::<(), ()>()
            .unwrap_err();
        assert!(
            matches!(err, ConfigError::DurationOverflow { .. }),
            "{err:?}"
        );
        assert!(
            Scope::builder()
                .runtime(rt.clone())
                .grace(MAX_NS)
                .build::<(), ()>()
                .is_ok()
        );
        let err = Scope::builder()
            .runtime(rt.clone())
            .limit(0)
            .build::<(), ()>()
            .unwrap_err();
        assert!(matches!(err, ConfigError::Zero { .. }), "{err:?}");

        // Shutdown with a zero grace: every child still running is aborted at once.
        let scope = Scope::builder()
            .runtime(rt.clone())
            .build::<(), ()>()
            .unwrap();
        let (tok, c) = (scope.token(), rt.clone());
        scope
            .spawn(async move {
                tok.cancelled().await;
                c.sleep(HOUR).await;
                Ok(())
            })
            .await
            .unwrap();
        scope
            .spawn(async {
                std::future::pending::<()>().await;
                Ok(())
            })
            .await
            .unwrap();
        rt.sleep(ms(5)).await;
        let t0 = rt.now();
        let report = scope.shutdown("now", Duration::ZERO).await;
        assert_eq!(rt.now() - t0, Duration::ZERO);
        assert_eq!(report.aborted, 2, "{report:?}");
        for child in &report.children {
            assert!(matches!(child.exit, Exit::Aborted), "{child:?}");
            assert_eq!(
                child.ending,
                Ending::Aborted {
                    took: Duration::ZERO
                }
            );
        }

        // Shutdown with `Duration::MAX` grace: a child that takes an hour to stop gets it.
        let scope = Scope::builder()
            .runtime(rt.clone())
            .build::<(), ()>()
            .unwrap();
        let (tok, c) = (scope.token(), rt.clone());
        scope
            .spawn(async move {
                tok.cancelled().await;
                c.sleep(HOUR).await;
                Ok(())
            })
            .await
            .unwrap();
        let t0 = rt.now();
        let report = scope.shutdown("patient", Duration::MAX).await;
        assert_eq!(rt.now() - t0, HOUR);
        assert_eq!((report.succeeded, report.aborted), (1, 0), "{report:?}");
        assert_eq!(report.children[0].ending, Ending::Stopped { took: HOUR });
    });
}

// Docs (`Scope::shutdown`): "waits up to `grace` (from this call) ... On a scope cancelled
// earlier, the first reason stays."; (`ChildReport`) "`Ending` times run from the cancellation
// as the scope saw it: exact for `Scope::cancel`"; (`Ending`) "`took` counts from the moment
// the task was told to stop: the cancellation of its scope".
#[test]
fn shutdown_of_an_already_cancelled_scope_keeps_the_first_reason_and_counts_grace_from_the_call() {
    common::on_tokio_current_thread(|rt| async move {
        let scope = Scope::builder()
            .runtime(rt.clone())
            .build::<(), ()>()
            .unwrap();
        scope
            .spawn(async {
                std::future::pending::<()>().await;
                Ok(())
            })
            .await
            .unwrap();
        scope.cancel("first");
        rt.sleep(ms(10_000)).await; // longer than the default 5 s grace: nobody joins yet
        let t0 = rt.now();
        let report = scope.shutdown("second", SEC).await;
        assert_eq!(rt.now() - t0, SEC, "grace counted from the shutdown call");
        assert_eq!(
            report.cancel_reason.as_ref().map(Reason::as_str),
            Some("first")
        );
        assert_eq!(
            report.children[0].ending,
            Ending::Aborted { took: ms(11_000) }
        );

        // Cancelled through its parent first: the children read the parent's reason.
        let parent = CancellationToken::new();
        let scope = Scope::builder()
            .runtime(rt.clone())
            .parent(&parent)
            .build::<String, ()>()
            .unwrap();
        let tok = scope.token();
        scope
            .spawn(async move { Ok(tok.cancelled().await.as_str().to_owned()) })
            .await
            .unwrap();
        parent.cancel("parent says stop");
        let report = scope.shutdown("own reason", SEC).await;
        assert_eq!(
            report.cancel_reason.as_ref().map(Reason::as_str),
            Some("parent says stop")
        );
        let value = report.children.into_iter().next().unwrap().exit.ok();
        assert_eq!(value.as_deref(), Some("parent says stop"));
    });
}

// Docs (`LocalScope::join`): "Dropping the future drops the scope and every child still
// running"; (`LocalSpawner::spawn`) children queued by spawners are the owner's to drive;
// (`LocalScope`) "'Aborting' a child drops its future". `Rc` counts prove the drops.
#[tokio::test(start_paused = true)]
async fn a_local_scope_dropped_at_random_polls_drops_every_child_it_owns() {
    let mut rng = seeded(0x10CA1);
    for round in 0..30 {
        let marker = Rc::new(());
        let scope = Scope::builder().limit(3).build_local::<u32, ()>().unwrap();
        let spawner = scope.spawner();
        // Queued from outside before the owner ever drives them.
        for i in 0..2u32 {
            let m = Rc::clone(&marker);
            let _ = spawner.try_spawn(async move {
                let _m = m;
                std::future::pending::<()>().await;
                Ok(i)
            });
        }
        let plan: Vec<(bool, u64)> = (0..6)
            .map(|_| (pick(&mut rng, 1) == 0, pick(&mut rng, 30)))
            .collect();
        let m = Rc::clone(&marker);
        let owner = async move {
            let mut scope = scope;
            for (i, (forever, sleep)) in (0u32..).zip(plan) {
                let m = Rc::clone(&m);
                let _ = scope
                    .spawn(async move {
                        let _m = m;
                        if forever {
                            std::future::pending::<()>().await;
                        }
                        tokio::time::sleep(ms(sleep)).await;
                        Ok(i)
                    })
                    .await;
            }
            scope.join().await
        };
        let polls = pick(&mut rng, 10);
        let _ = poll_limit(owner, polls)
            .timeout(ms(1 + pick(&mut rng, 60)))
            .await;
        tokio::time::sleep(ms(1)).await;
        assert_eq!(
            Rc::strong_count(&marker),
            1,
            "round {round}: a child of a dropped local scope lives on"
        );
        drop(spawner);
    }
}

// Docs (`CancellationToken::drop_guard`): "A guard that cancels the token (with reason
// `"dropped"`) when dropped, unless `disarm`ed"; (`Scope`) "Dropping a scope without closing it
// ... aborts every child" (so a guard a child holds is dropped with it).
async fn drop_guards_in_aborted_children<R: Runtime>(rt: Clocked<R>) {
    let watched: Vec<CancellationToken> = (0..6).map(|_| CancellationToken::new()).collect();
    let scope = Scope::builder()
        .runtime(rt.clone())
        .build::<(), ()>()
        .unwrap();
    for (i, token) in watched.iter().enumerate() {
        let guard = token.clone().drop_guard();
        let c = rt.clone();
        scope
            .spawn(async move {
                if i.is_multiple_of(2) {
                    c.sleep(ms(1)).await;
                    let _token = guard.disarm(); // finished its work: nothing to signal
                } else {
                    let _guard = guard;
                    std::future::pending::<()>().await;
                }
                Ok(())
            })
            .await
            .unwrap();
    }
    rt.sleep(ms(5)).await;
    drop(scope);
    rt.sleep(ms(1)).await;
    for (i, token) in watched.iter().enumerate() {
        if i.is_multiple_of(2) {
            assert!(
                !token.is_cancelled(),
                "a disarmed guard cancelled token {i}"
            );
        } else {
            assert_eq!(
                token.reason().map(|r| r.to_string()).as_deref(),
                Some("dropped")
            );
        }
    }
}

#[test]
fn drop_guards_held_by_children_of_a_dropped_scope_fire_with_reason_dropped_on_every_runtime() {
    on_every_runtime!(drop_guards_in_aborted_children);
}

// Docs (`LocalScope`): "same limit, failure policy, reports, join and two-phase shutdown, on one
// thread ... it needs no `LocalSet` and works the same inside a tokio `LocalSet` or local
// runtime, a smol `LocalExecutor`, or a plain `block_on`"; (`LocalScope::shutdown`) "cancel,
// grace, drop the rest, report". `!Send` children (`Rc`) on every adapter's `block_on`.
async fn local_scope_everywhere<R: Runtime>(rt: Clocked<R>) {
    let marker = Rc::new(());
    let mut scope = Scope::builder()
        .runtime(rt.clone())
        .limit(2)
        .build_local::<&'static str, ()>()
        .unwrap();
    let (m, tok, c) = (Rc::clone(&marker), scope.token(), rt.clone());
    scope
        .spawn(async move {
            let _m = m;
            tok.cancelled().await;
            c.sleep(ms(20)).await;
            Ok("cooperative")
        })
        .await
        .unwrap();
    let m = Rc::clone(&marker);
    scope
        .spawn(async move {
            let _m = m;
            std::future::pending::<()>().await;
            Ok("deaf")
        })
        .await
        .unwrap();
    let spawner = scope.spawner();
    let m = Rc::clone(&marker);
    assert!(matches!(
        spawner.try_spawn(async move {
            let _m = m;
            Ok("third")
        }),
        Err(SpawnError::Full(_))
    ));
    let t0 = rt.now();
    let report = scope.shutdown("local stop", ms(100)).await;
    assert_eq!(rt.now() - t0, ms(100));
    assert_eq!(
        Rc::strong_count(&marker),
        1,
        "a !Send child outlived its scope"
    );
    let mut ends: Vec<(u64, Ending)> = report
        .children
        .iter()
        .map(|c| (c.id.index(), c.ending))
        .collect();
    ends.sort_by_key(|e| e.0);
    assert_eq!(
        ends,
        [
            (0, Ending::Stopped { took: ms(20) }),
            (1, Ending::Aborted { took: ms(100) })
        ]
    );
    assert_eq!((report.succeeded, report.aborted), (1, 1));
    assert!(matches!(
        spawner.try_spawn(async { Ok("late") }),
        Err(SpawnError::Closed(_))
    ));
}

#[test]
fn a_local_scope_shuts_down_the_same_on_every_runtimes_block_on() {
    on_every_runtime!(local_scope_everywhere);
}

// Docs (`Spawner::spawn`): "`SpawnError::Closed` with the future, unpolled, when the scope is
// closed or cancelled (also while waiting)"; (`Scope::cancel`) "new spawns are refused
// (waiting ones too)".
async fn waiting_spawns_refused_on_cancel<R: Runtime>(rt: Clocked<R>) {
    let scope = Scope::builder()
        .runtime(rt.clone())
        .limit(1)
        .build::<(), ()>()
        .unwrap();
    let tok = scope.token();
    scope
        .spawn(async move {
            tok.cancelled().await;
            Ok(())
        })
        .await
        .unwrap();
    let polled = Arc::new(AtomicUsize::new(0));
    let waiters: Vec<_> = (0..5)
        .map(|_| {
            let (sp, polled) = (scope.spawner(), polled.clone());
            rt.spawn(async move {
                let child = async move {
                    polled.fetch_add(1, SeqCst);
                    Ok(())
                };
                matches!(sp.spawn(child).await, Err(SpawnError::Closed(_)))
            })
        })
        .collect();
    rt.sleep(ms(10)).await;
    scope.cancel("closing time");
    for w in waiters {
        assert!(
            within(&rt, SEC, "a waiting spawn", w).await.unwrap(),
            "not Closed"
        );
    }
    assert_eq!(polled.load(SeqCst), 0, "a refused child was polled");
    let report = scope.join().await;
    assert_eq!((report.spawned, report.succeeded), (1, 1));
}

#[test]
fn spawns_waiting_for_a_slot_are_refused_unpolled_when_the_scope_is_cancelled_on_every_runtime() {
    on_every_runtime!(waiting_spawns_refused_on_cancel);
}

// Docs (`FailurePolicy::FailFast`): "The first failure cancels the scope with a reason naming
// the child: siblings see the token cancelled, new spawns are refused"; (scope example) the
// reason reads "child #3 returned an error"; (`ScopeReport::first_failure`) "The child whose
// failure failed the scope fast". A nested scope under a sibling sees the same reason.
async fn fail_fast_reaches_a_nested_scope<R: Runtime>(rt: Clocked<R>) {
    for panics in [false, true] {
        let outer = Scope::builder()
            .runtime(rt.clone())
            .build::<String, String>()
            .unwrap();
        let (tok, c) = (outer.token(), rt.clone());
        let nested = outer
            .spawn(async move {
                let inner = Scope::builder()
                    .runtime(c)
                    .parent(&tok)
                    .build::<String, String>()
                    .map_err(|e| e.to_string())?;
                for _ in 0..3 {
                    let t = inner.token();
                    let _ = inner
                        .spawn(async move { Ok(t.cancelled().await.as_str().to_owned()) })
                        .await;
                }
                let report = inner.join().await;
                let reason = report.cancel_reason.map(|r| r.as_str().to_owned());
                for child in report.children {
                    let value = child.exit.ok();
                    if value != reason {
                        return Err(format!("inner child read {value:?}, scope {reason:?}"));
                    }
                }
                reason.ok_or_else(|| "inner scope not cancelled".to_owned())
            })
            .await
            .unwrap();
        let c = rt.clone();
        let failing = outer
            .spawn(async move {
                c.sleep(ms(5)).await;
                if panics {
                    panic!("child blew up");
                }
                Err("boom".to_owned())
            })
            .await
            .unwrap();
        let report = within(&rt, HOUR, "fail-fast join", outer.join()).await;
        assert_eq!(report.first_failure, Some(failing), "{report:?}");
        let reason = report
            .cancel_reason
            .clone()
            .expect("failed fast")
            .to_string();
        if !panics {
            assert_eq!(
                reason,
                format!("child #{} returned an error", failing.index())
            );
        }
        let nested_report = report.children.iter().find(|c| c.id == nested).unwrap();
        match &nested_report.exit {
            Exit::Ok(seen) => assert_eq!(*seen, reason, "nested scope's reason"),
            other => panic!("nested child: {other:?}"),
        }
        assert!(matches!(nested_report.ending, Ending::Stopped { .. }));
    }
}

#[test]
fn a_fail_fast_reason_reaches_a_scope_nested_in_a_sibling_on_every_runtime() {
    on_every_runtime!(fail_fast_reaches_a_nested_scope);
}

// Docs (`Scope::next`): "Cancel safety: Cancel-safe: a report is removed only when it is
// returned"; (`ScopeBuilder::discard_ok`) "Drops each `Ok` result as it arrives (it is still
// counted) ... Failures are kept until read"; (`FailurePolicy::CollectAll`) "Failures are
// recorded; the siblings go on"; (`ScopeReport::children`) "Reports not yet taken with `next`".
// `next` futures are dropped at random poll counts; every report must still come out once.
async fn next_dropped_at_random<R: Runtime>(rt: Clocked<R>) {
    let mut rng = seeded(0x4E47);
    for discard in [false, true] {
        let mut builder = Scope::builder()
            .runtime(rt.clone())
            .policy(FailurePolicy::CollectAll);
        if discard {
            builder = builder.discard_ok();
        }
        let mut scope = builder.build::<u64, u64>().unwrap();
        for id in 0..60u64 {
            let (c, d) = (rt.clone(), pick(&mut rng, 20));
            scope
                .spawn(async move {
                    c.sleep(ms(d)).await;
                    if id.is_multiple_of(3) {
                        Err(id)
                    } else {
                        assert!(!id.is_multiple_of(7), "child {id} panics");
                        Ok(id)
                    }
                })
                .await
                .unwrap();
        }
        let mut got = Vec::new();
        let mut dropped_next = 0;
        loop {
            match poll_limit(scope.next(), pick(&mut rng, 2)).await {
                Some(Some(report)) => got.push(report),
                Some(None) => break,
                None => {
                    dropped_next += 1;
                    rt.sleep(ms(pick(&mut rng, 3))).await;
                }
            }
        }
        assert!(dropped_next > 0, "vacuous: no next() was dropped");
        let report = scope.join().await;
        assert!(report.is_balanced(), "{report:?}");
        assert_eq!(
            (
                report.spawned,
                report.succeeded,
                report.failed,
                report.panicked
            ),
            (60, 34, 20, 6)
        );
        got.extend(report.children);
        let mut seen = BTreeSet::new();
        for child in &got {
            let id = child.id.index();
            assert!(
                seen.insert(id),
                "discard {discard}: report of child {id} came out twice"
            );
            match &child.exit {
                Exit::Ok(v) => {
                    assert!(!discard && *v == id && !id.is_multiple_of(3) && !id.is_multiple_of(7))
                }
                Exit::Err(v) => assert!(*v == id && id.is_multiple_of(3)),
                Exit::Panicked(_) => assert!(id.is_multiple_of(7) && !id.is_multiple_of(3)),
                other => panic!("child {id}: {other:?}"),
            }
        }
        let want = if discard { 26 } else { 60 };
        assert_eq!(seen.len(), want, "discard {discard}: reports lost");
    }
}

#[test]
fn scope_next_dropped_at_random_polls_loses_no_report_on_every_runtime() {
    on_every_runtime!(next_dropped_at_random);
}

// Docs (`Scope::join_within`): "As `join`, but children still running after `limit` are
// cancelled with `reason`, then get the scope's grace period before they are aborted"; (no
// error for any `limit`); (`ChildReport`) endings timed "exact for ... `join_within`".
#[test]
fn join_within_extremes() {
    common::on_tokio_current_thread(|rt| async move {
        let make = |rt: &Clocked<Tokio>| {
            let scope = Scope::builder()
                .runtime(rt.clone())
                .grace(SEC)
                .build::<&'static str, ()>()
                .unwrap();
            let (tok, c) = (scope.token(), rt.clone());
            let cooperative = async move {
                tok.cancelled().await;
                c.sleep(ms(300)).await;
                Ok("cooperative")
            };
            let c = rt.clone();
            let slow = async move {
                c.sleep(HOUR).await;
                Ok("slow")
            };
            (scope, cooperative, slow)
        };
        // Limit zero: cancelled at once with the reason, grace 1 s, then aborted.
        let (scope, cooperative, slow) = make(&rt);
        scope.spawn(cooperative).await.unwrap();
        scope.spawn(slow).await.unwrap();
        let t0 = rt.now();
        let report = scope.join_within(Duration::ZERO, "no time at all").await;
        assert_eq!(rt.now() - t0, SEC);
        assert_eq!(
            report.cancel_reason.as_ref().map(Reason::as_str),
            Some("no time at all")
        );
        let mut ends: Vec<(u64, Ending)> = report
            .children
            .iter()
            .map(|c| (c.id.index(), c.ending))
            .collect();
        ends.sort_by_key(|e| e.0);
        assert_eq!(
            ends,
            [
                (0, Ending::Stopped { took: ms(300) }),
                (1, Ending::Aborted { took: SEC })
            ]
        );
        // Limit Duration::MAX: a plain join; nobody is cancelled.
        let (scope, _cooperative, slow) = make(&rt);
        scope.spawn(slow).await.unwrap();
        let t0 = rt.now();
        let report = scope.join_within(Duration::MAX, "never").await;
        assert_eq!(rt.now() - t0, HOUR);
        assert!(report.cancel_reason.is_none(), "{report:?}");
        assert_eq!(report.children[0].ending, Ending::Finished);
    });
}

// Docs (module `shutdown`): "`Shutdown` is the top of a service: its components may be
// supervisors, pools or servers, and the order in which they stop matters"; (`Shutdown`)
// "stops the components in reverse order"; (`WorkerPool::shutdown`) "lets the workers drain
// the queue for up to `drain`"; (`Supervisor::run`) stops children "in reverse start order";
// (`Scope::join`) waits for in-flight children. A whole service: a pool, a supervisor whose
// producer feeds it and whose cache refreshes periodically, and a scope-based server.
async fn composed_service<R: Runtime>(rt: Clocked<R>) {
    let c = rt.clone();
    let pool = WorkerPool::builder()
        .workers(2)
        .queue(100)
        .runtime(rt.clone())
        .start(move |n: u64| {
            let c = c.clone();
            async move {
                c.sleep(ms(30)).await;
                n
            }
        })
        .unwrap();
    let submitter = pool.submitter();
    let accepted = Arc::new(AtomicUsize::new(0));
    let refreshes = Arc::new(AtomicUsize::new(0));
    let pool_report = Arc::new(Mutex::new(None));
    let http_report = Arc::new(Mutex::new(None));
    let sup_report = Arc::new(Mutex::new(None));

    let mut shutdown = Shutdown::builder()
        .runtime(rt.clone())
        .deadline(10 * SEC)
        .build()
        .unwrap();
    let slot = pool_report.clone();
    shutdown.register("pool", move |stop| async move {
        stop.cancelled().await;
        let report = pool.shutdown(2 * SEC).await;
        *slot.lock().unwrap() = Some(report);
        Ok::<(), std::io::Error>(())
    });
    let (c, acc) = (rt.clone(), accepted.clone());
    let producer = ChildSpec::new("producer", move |stop: CancellationToken| {
        let (sub, c, acc) = (submitter.clone(), c.clone(), acc.clone());
        async move {
            let feed = async {
                for n in 0.. {
                    match sub.submit(n).await {
                        Ok(_) => acc.fetch_add(1, SeqCst),
                        Err(e) => return Err(e.to_string()),
                    };
                    c.sleep(ms(10)).await;
                }
                Ok(())
            };
            match stop.run_until_cancelled(feed).await {
                Ok(fed) => fed,
                Err(_reason) => Ok(()),
            }
        }
    });
    let (c, refr) = (rt.clone(), refreshes.clone());
    let cache = ChildSpec::new("cache", move |stop: CancellationToken| {
        let (c, refr) = (c.clone(), refr.clone());
        async move {
            let runs = periodic(c, SEC, MissedTicks::Skip, &stop, |_| {
                refr.fetch_add(1, SeqCst);
                async {}
            })
            .map_err(|e| e.to_string())?;
            runs.await;
            Ok::<(), String>(())
        }
    });
    let sup = Supervisor::builder()
        .runtime(rt.clone())
        .child(producer)
        .child(cache)
        .build()
        .unwrap();
    let slot = sup_report.clone();
    shutdown.register("workers", move |stop| async move {
        let report = sup.run(stop).await.map_err(|e| e.to_string())?;
        *slot.lock().unwrap() = Some(report);
        Ok::<(), String>(())
    });
    let (c, slot) = (rt.clone(), http_report.clone());
    shutdown.register("http", move |stop| async move {
        let scope = Scope::builder()
            .runtime(c.clone())
            .grace(SEC)
            .build::<(), ()>()
            .map_err(|e| e.to_string())?;
        let accept = async {
            loop {
                c.sleep(ms(5)).await;
                let c2 = c.clone();
                let request = async move {
                    c2.sleep(ms(30)).await;
                    Ok(())
                };
                if scope.spawn(request).await.is_err() {
                    return;
                }
            }
        };
        let _ = stop.run_until_cancelled(accept).await;
        let report = scope.join().await;
        *slot.lock().unwrap() = Some(report);
        Ok::<(), String>(())
    });

    let (trigger, c) = (shutdown.trigger(), rt.clone());
    rt.spawn(async move {
        c.sleep(ms(1_502)).await;
        trigger.cancel("deploy");
    });
    let report = within(&rt, HOUR, "service shutdown", shutdown.run()).await;
    assert_eq!(report.cause, Cause::Triggered(Reason::new("deploy")));
    let order: Vec<&str> = report.components.iter().map(|c| &*c.name).collect();
    assert_eq!(order, ["http", "workers", "pool"]);
    assert!(report.is_clean() && !report.deadline_exceeded, "{report:?}");
    for component in &report.components {
        assert_eq!(component.exit, Exit::Ok(()), "{component:?}");
        assert!(
            matches!(component.ending, Ending::Stopped { .. }),
            "{component:?}"
        );
    }
    let pool_report = pool_report.lock().unwrap().take().expect("pool report");
    let accepted = accepted.load(SeqCst) as u64;
    assert!(accepted > 100, "vacuous: {accepted} jobs");
    assert_eq!(pool_report.submitted, accepted, "{pool_report:?}");
    assert_eq!(
        (pool_report.completed, pool_report.failed),
        (accepted, 0),
        "the queue drains within 2 s once the producer stopped first"
    );
    assert!(pool_report.handed_back.is_empty());
    let http = http_report.lock().unwrap().take().expect("http report");
    assert!(
        http.is_balanced() && http.aborted == 0 && http.spawned > 250,
        "{http:?}"
    );
    assert_eq!(http.succeeded, http.spawned);
    let sup = sup_report
        .lock()
        .unwrap()
        .take()
        .expect("supervisor report");
    assert_eq!(sup.ended, Ended::Stopped);
    let stopped: Vec<&str> = sup.stopped.iter().map(|t| &*t.name).collect();
    assert_eq!(stopped, ["cache", "producer"]);
    assert_eq!(sup.restarts, 0);
    assert_eq!(refreshes.load(SeqCst), 1, "one refresh in 1.5 s");
}

#[test]
fn a_service_of_pool_supervisor_and_server_stops_in_order_and_accounts_for_everything_on_every_runtime()
 {
    on_every_runtime!(composed_service);
}

// ================================================================================================
// Worker pools
// ================================================================================================

// Docs (`WorkerPoolBuilder::start`): "`ConfigError::Zero` for zero workers, a zero queue or a
// zero timeout; `ConfigError::OutOfRange` for more than 65,536 workers;
// `ConfigError::DurationOverflow` for a timeout beyond `u64::MAX` nanoseconds";
// (`workers`) "at most 65,536". The queue has no documented maximum.
#[test]
fn pool_builder_extremes() {
    common::on_tokio_current_thread(|rt| async move {
        let start = |b: tidewall::task::pool::WorkerPoolBuilder<Clocked<Tokio>>| {
            b.start(|n: u64| async move { n }).map(drop)
        };
        let b = || WorkerPool::builder().runtime(rt.clone());
        let zero = |r: Result<(), ConfigError>| matches!(r, Err(ConfigError::Zero { .. }));
        assert!(zero(start(b().workers(0))));
        assert!(zero(start(b().queue(0))));
        assert!(zero(start(b().job_timeout(Duration::ZERO))));
        for workers in [65_537, usize::MAX] {
            let r = start(b().workers(workers));
            assert!(
                matches!(r, Err(ConfigError::OutOfRange { .. })),
                "{workers}: {r:?}"
            );
        }
        let r = start(b().job_timeout(Duration::MAX));
        assert!(
            matches!(r, Err(ConfigError::DurationOverflow { .. })),
            "{r:?}"
        );

        // The largest accepted settings work.
        let pool = b()
            .workers(65_536)
            .job_timeout(MAX_NS)
            .start(|n: u64| async move { n + 1 })
            .unwrap();
        let handles: Vec<_> = (0..3).map(|n| pool.try_submit(n).unwrap()).collect();
        for (n, h) in handles.into_iter().enumerate() {
            assert!(matches!(h.await, Exit::Ok(v) if v == n as u64 + 1));
        }
        let report = pool.shutdown(SEC).await;
        assert_eq!((report.submitted, report.completed), (3, 3));
    });
}

// Docs (`WorkerPoolBuilder::queue`): "How many jobs may wait for a worker" (no maximum, no
// error documented for a huge one); (`WorkerPool`) "a bounded queue with backpressure".
#[test]
fn a_pool_with_a_usize_max_queue_starts_and_accepts_jobs() {
    common::on_tokio_current_thread(|rt| async move {
        let pool = WorkerPool::builder()
            .workers(1)
            .queue(usize::MAX)
            .runtime(rt.clone())
            .start(|n: u64| async move { n })
            .expect("a huge queue is a valid configuration");
        let handles: Vec<_> = (0..1_000).map(|n| pool.try_submit(n).unwrap()).collect();
        assert_eq!(pool.queued() + pool.running(), 1_000);
        for (n, h) in handles.into_iter().enumerate() {
            assert!(matches!(h.await, Exit::Ok(v) if v == n as u64));
        }
        assert_eq!(pool.shutdown(SEC).await.completed, 1_000);
    });
}

/// A job that records its own creation and drop, so a leaked or double-dropped job shows.
struct Job {
    id: u64,
    ledger: Arc<JobLedger>,
}

#[derive(Default)]
struct JobLedger {
    created: Mutex<Vec<u64>>,
    ran: Mutex<Vec<u64>>,
    dropped: Mutex<Vec<u64>>,
}

impl Job {
    fn new(id: u64, ledger: &Arc<JobLedger>) -> Self {
        ledger.created.lock().unwrap().push(id);
        Self {
            id,
            ledger: ledger.clone(),
        }
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        self.ledger.dropped.lock().unwrap().push(self.id);
    }
}

impl fmt::Debug for Job {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Job({})", self.id)
    }
}

// Docs (`WorkerPool`): "hands back every job never started: `submitted = completed + failed +
// handed back`, always"; (`Submitter::submit`) "Cancel safety: dropping the future before it
// resolves drops `job` unqueued" and "`SubmitError::Closed` with the job once the pool is
// shutting down (also when it closes while this waits for room)"; (`JobHandle`) "Dropping it
// does not cancel the job (the pool still runs it)"; (`PoolReport`) "every job ever submitted
// is in exactly one of these"; (`Scope`) dropping a scope aborts its children (here: producers
// in the middle of `submit`). Jobs panic, time out, get aborted at the drain deadline.
async fn pool_fed_by_a_dropped_scope<R: Runtime>(rt: Clocked<R>) {
    let mut rng = seeded(0xB001);
    let (mut total_handed, mut total_refused, mut total_cut, mut total_aborted) = (0, 0, 0, 0);
    for round in 0..8 {
        let ledger = Arc::new(JobLedger::default());
        let accepted: Arc<Mutex<Vec<u64>>> = Arc::default();
        let refused: Arc<Mutex<Vec<u64>>> = Arc::default();
        let (clock, l2) = (rt.clone(), ledger.clone());
        let pool = WorkerPool::builder()
            .workers(2)
            .queue(3)
            .job_timeout(ms(40))
            .runtime(rt.clone())
            .start(move |job: Job| {
                l2.ran.lock().unwrap().push(job.id);
                let clock = clock.clone();
                async move {
                    let id = job.id;
                    clock.sleep(ms(id % 61)).await;
                    assert!(!id.is_multiple_of(11), "job {id} panics");
                    drop(job);
                    id
                }
            })
            .unwrap();
        let scope = Scope::builder()
            .runtime(rt.clone())
            .grace(ms(pick(&mut rng, 30)))
            .build::<(), ()>()
            .unwrap();
        for child in 0..10u64 {
            let (sub, l, c) = (pool.submitter(), ledger.clone(), rt.clone());
            let (acc, refd) = (accepted.clone(), refused.clone());
            let plan: Vec<(u64, bool)> = (0..5)
                .map(|_| (pick(&mut rng, 25), pick(&mut rng, 1) == 0))
                .collect();
            scope
                .spawn(async move {
                    for (j, (delay, keep)) in plan.into_iter().enumerate() {
                        c.sleep(ms(delay)).await;
                        let id = child * 100 + j as u64;
                        match sub.submit(Job::new(id, &l)).await {
                            Ok(handle) => {
                                acc.lock().unwrap().push(id);
                                if keep {
                                    let _ = handle.await;
                                }
                            }
                            Err(SubmitError::Closed(job)) => {
                                assert_eq!(job.id, id, "a different job came back");
                                refd.lock().unwrap().push(id);
                            }
                            Err(SubmitError::Full(job)) => panic!("submit gave Full({job:?})"),
                            Err(other) => panic!("submit: {other:?}"),
                        }
                    }
                    Ok(())
                })
                .await
                .unwrap();
        }
        let (scope_at, pool_at) = (ms(pick(&mut rng, 150)), ms(pick(&mut rng, 150)));
        // Half the drains are zero: whatever is queued then is handed back.
        let drain = ms(pick(&mut rng, 1) * pick(&mut rng, 60));
        let grace = ms(pick(&mut rng, 20));
        let mode = pick(&mut rng, 2);
        let c = rt.clone();
        let scope_end = async move {
            c.sleep(scope_at).await;
            match mode {
                0 => drop(scope),
                1 => drop(scope.shutdown("stop producing", grace).await),
                _ => drop(scope.join().await),
            }
        };
        let c = rt.clone();
        let pool_end = async move {
            c.sleep(pool_at).await;
            pool.shutdown(drain).await
        };
        let ((), report) = within(
            &rt,
            HOUR,
            "scope and pool ends",
            futures_util::future::join(scope_end, pool_end),
        )
        .await;
        rt.sleep(ms(100)).await;
        let handed: Vec<u64> = report.handed_back.iter().map(|j| j.id).collect();
        let (submitted, completed, failed, aborted) = (
            report.submitted,
            report.completed,
            report.failed,
            report.aborted,
        );
        drop(report);
        let ran = ledger.ran.lock().unwrap().clone();
        let (ran_set, handed_set) = (set(&ran), set(&handed));
        let accepted = set(&accepted.lock().unwrap());
        let refused = set(&refused.lock().unwrap());
        let ctx = format!("round {round}, mode {mode}");
        assert_eq!(ran.len(), ran_set.len(), "{ctx}: a job ran twice");
        assert_eq!(
            handed.len(),
            handed_set.len(),
            "{ctx}: a job handed back twice"
        );
        assert!(
            ran_set.is_disjoint(&handed_set),
            "{ctx}: ran and handed back"
        );
        assert_eq!(
            ran_set.union(&handed_set).copied().collect::<BTreeSet<_>>(),
            accepted,
            "{ctx}: jobs run or handed back vs. jobs whose submit resolved Ok"
        );
        assert!(
            refused.is_disjoint(&accepted),
            "{ctx}: refused yet accepted"
        );
        assert_eq!(submitted, accepted.len() as u64, "{ctx}");
        assert_eq!(submitted, completed + failed + handed.len() as u64, "{ctx}");
        assert_eq!(completed + failed, ran.len() as u64, "{ctx}");
        assert!(aborted <= failed, "{ctx}");
        let mut created = ledger.created.lock().unwrap().clone();
        let mut dropped = ledger.dropped.lock().unwrap().clone();
        created.sort_unstable();
        dropped.sort_unstable();
        assert_eq!(created, dropped, "{ctx}: a job leaked or was dropped twice");
        total_handed += handed.len();
        total_refused += refused.len();
        total_aborted += aborted;
        total_cut += created.len() - accepted.len() - refused.len();
    }
    // Every path was taken at least once, so the checks above were not vacuous.
    assert!(
        total_handed > 0 && total_refused > 0 && total_cut > 0 && total_aborted > 0,
        "handed {total_handed}, refused {total_refused}, cut {total_cut}, aborted {total_aborted}"
    );
}

#[test]
fn no_job_is_lost_when_a_scope_of_producers_and_the_pool_end_at_random_on_every_runtime() {
    on_every_runtime!(pool_fed_by_a_dropped_scope);
}

// Docs (`WorkerPool::shutdown`): "lets the workers drain the queue for up to `drain`, then
// aborts what still runs and hands back the jobs never started"; (`PoolReport::handed_back`)
// "Jobs never started, handed back (dead letters) in submission order (their handles read
// `Exit::Aborted` too)"; (`PoolReport::aborted`) "those aborted at the drain deadline".
// Drains of zero and of `Duration::MAX` (no error is documented for either).
#[test]
fn pool_drain_extremes_zero_hands_back_in_order_and_max_waits_for_everything() {
    common::on_tokio_current_thread(|rt| async move {
        let c = rt.clone();
        let pool = WorkerPool::builder()
            .workers(1)
            .queue(10)
            .runtime(rt.clone())
            .start(move |d: u64| {
                let c = c.clone();
                async move {
                    c.sleep(ms(d)).await;
                    d
                }
            })
            .unwrap();
        let running = pool.submit(3_600_000).await.unwrap();
        rt.sleep(ms(1)).await;
        assert_eq!(pool.running(), 1);
        let ids: Vec<u64> = (1..=10).collect();
        let queued: Vec<_> = ids.iter().map(|&d| pool.try_submit(d).unwrap()).collect();
        assert!(matches!(pool.try_submit(99), Err(SubmitError::Full(99))));
        let t0 = rt.now();
        let report = pool.shutdown(Duration::ZERO).await;
        assert_eq!(rt.now() - t0, Duration::ZERO, "a zero drain waited");
        assert_eq!(report.handed_back, ids, "handed back in submission order");
        assert_eq!(
            (
                report.submitted,
                report.completed,
                report.failed,
                report.aborted
            ),
            (11, 0, 1, 1)
        );
        assert!(matches!(running.await, Exit::Aborted));
        for h in queued {
            assert!(matches!(h.await, Exit::Aborted));
        }

        let c = rt.clone();
        let pool = WorkerPool::builder()
            .workers(2)
            .queue(10)
            .runtime(rt.clone())
            .start(move |d: u64| {
                let c = c.clone();
                async move {
                    c.sleep(ms(d)).await;
                    d
                }
            })
            .unwrap();
        let submitter = pool.submitter();
        for _ in 0..10 {
            pool.try_submit(3_600_000).unwrap();
        }
        let t0 = rt.now();
        let report = pool.shutdown(Duration::MAX).await;
        assert_eq!(rt.now() - t0, 5 * HOUR, "ten one-hour jobs on two workers");
        assert_eq!((report.completed, report.failed), (10, 0));
        assert!(report.handed_back.is_empty());
        assert!(matches!(
            submitter.try_submit(1),
            Err(SubmitError::Closed(1))
        ));
    });
}

// Docs (`WorkerPool`): "`submit` waits for room in the queue (backpressure; waiting producers
// are all woken when room frees ...); `try_submit` hands the job back at once when it is
// full"; (`Submitter::submit`) "dropping the future before it resolves drops `job` unqueued".
async fn waiting_producers_all_get_room<R: Runtime>(rt: Clocked<R>) {
    let mut rng = seeded(0xF011);
    let ran: Arc<Mutex<Vec<u64>>> = Arc::default();
    let (c, r) = (rt.clone(), ran.clone());
    let pool = WorkerPool::builder()
        .workers(1)
        .queue(2)
        .runtime(rt.clone())
        .start(move |id: u64| {
            r.lock().unwrap().push(id);
            let c = c.clone();
            async move {
                c.sleep(ms(10)).await;
                id
            }
        })
        .unwrap();
    let first = pool.submit(0).await.unwrap();
    rt.sleep(ms(1)).await;
    let q: Vec<_> = [1, 2].map(|id| pool.try_submit(id).unwrap()).into();
    assert_eq!((pool.queued(), pool.running()), (2, 1));
    assert!(matches!(pool.try_submit(3), Err(SubmitError::Full(3))));
    let mut producers = Vec::new();
    for id in 10..40u64 {
        let sub = pool.submitter();
        let drop_after = (id.is_multiple_of(3)).then(|| pick(&mut rng, 3));
        producers.push(rt.spawn(async move {
            let out = match drop_after {
                Some(polls) => poll_limit(sub.submit(id), polls).await,
                None => Some(sub.submit(id).await),
            };
            match out {
                Some(Ok(handle)) => Some((id, handle.await)),
                Some(Err(e)) => panic!("{id}: {e}"),
                None => None,
            }
        }));
    }
    let mut accepted = vec![0, 1, 2];
    for p in producers {
        if let Some((id, exit)) = within(&rt, HOUR, "a waiting producer", p).await.unwrap() {
            assert!(matches!(exit, Exit::Ok(v) if v == id), "{id}: {exit:?}");
            accepted.push(id);
        }
    }
    assert!(matches!(first.await, Exit::Ok(0)));
    for h in q {
        assert!(matches!(h.await, Exit::Ok(_)));
    }
    assert!(accepted.len() >= 23, "every producer never dropped got in");
    assert!(
        accepted.len() < 33,
        "vacuous: no waiting producer was dropped"
    );
    assert_eq!(
        set(&ran.lock().unwrap()),
        set(&accepted),
        "a dropped submit ran"
    );
    let report = pool.shutdown(SEC).await;
    assert_eq!(report.submitted, accepted.len() as u64);
    assert_eq!(report.completed, accepted.len() as u64);
}

#[test]
fn every_producer_waiting_for_room_gets_in_and_dropped_ones_never_run_on_every_runtime() {
    on_every_runtime!(waiting_producers_all_get_room);
}

// Docs (`WorkerPool`): "A panicking job is reported as `Exit::Panicked` and the worker goes on
// with the next job"; (`PoolReport::failed`) "Jobs that panicked, timed out, or were aborted".
async fn panicking_jobs_keep_workers<R: Runtime>(rt: Clocked<R>) {
    let pool = WorkerPool::builder()
        .workers(2)
        .queue(100)
        .runtime(rt.clone())
        .start(|id: u64| async move {
            assert!(id.is_multiple_of(10), "job {id} panics");
            id
        })
        .unwrap();
    let handles: Vec<_> = (0..60).map(|id| pool.try_submit(id).unwrap()).collect();
    for (id, h) in handles.into_iter().enumerate() {
        let exit = within(&rt, HOUR, "a job", h).await;
        match exit {
            Exit::Ok(v) => assert!(v == id as u64 && id.is_multiple_of(10)),
            Exit::Panicked(p) => {
                assert!(!id.is_multiple_of(10));
                assert_eq!(p.message(), Some(format!("job {id} panics").as_str()));
            }
            other => panic!("job {id}: {other:?}"),
        }
    }
    assert_eq!(pool.running(), 0);
    // Both workers still serve, concurrently.
    let a = pool.try_submit(1_000).unwrap();
    let b = pool.try_submit(2_000).unwrap();
    assert!(matches!(
        within(&rt, SEC, "after panics", a).await,
        Exit::Ok(1_000)
    ));
    assert!(matches!(
        within(&rt, SEC, "after panics", b).await,
        Exit::Ok(2_000)
    ));
    let report = pool.shutdown(SEC).await;
    assert_eq!(
        (report.submitted, report.completed, report.failed),
        (62, 8, 54)
    );
}

#[test]
fn a_pool_whose_jobs_mostly_panic_keeps_every_worker_on_every_runtime() {
    on_every_runtime!(panicking_jobs_keep_workers);
}

/// Counts drops.
struct OnDrop(Arc<AtomicUsize>);

impl Drop for OnDrop {
    fn drop(&mut self) {
        self.0.fetch_add(1, SeqCst);
    }
}

// Docs (`WorkerPoolBuilder::job_timeout`): "a job that runs longer is dropped, and its handle
// reads `Exit::Err` with `Elapsed`"; (`WorkerPool`) the worker goes on with the next job.
async fn timed_out_jobs_are_dropped<R: Runtime>(rt: Clocked<R>) {
    let dropped = Arc::new(AtomicUsize::new(0));
    let (c, d) = (rt.clone(), dropped.clone());
    let pool = WorkerPool::builder()
        .workers(1)
        .queue(10)
        .job_timeout(SEC)
        .runtime(rt.clone())
        .start(move |wait: Duration| {
            let (c, guard) = (c.clone(), OnDrop(d.clone()));
            async move {
                let _guard = guard;
                c.sleep(wait).await;
                c.now()
            }
        })
        .unwrap();
    let t0 = rt.now();
    let slow = pool.submit(HOUR).await.unwrap();
    let next = pool.submit(ms(10)).await.unwrap();
    assert!(matches!(slow.await, Exit::Err(tidewall::time::Elapsed)));
    assert_eq!(rt.now() - t0, SEC);
    rt.sleep(Duration::ZERO).await;
    assert!(
        dropped.load(SeqCst) >= 1,
        "the timed-out job's future still lives"
    );
    match next.await {
        Exit::Ok(at) => assert_eq!(at - t0, SEC + ms(10), "the next job started at the timeout"),
        other => panic!("{other:?}"),
    }
    let report = pool.shutdown(SEC).await;
    assert_eq!((report.completed, report.failed, report.aborted), (1, 1, 0));
    assert_eq!(dropped.load(SeqCst), 2);
}

#[test]
fn a_timed_out_job_is_dropped_at_its_deadline_and_the_worker_moves_on_on_every_runtime() {
    on_every_runtime!(timed_out_jobs_are_dropped);
}

// Docs (`WorkerPool::submitter`): "it sees `SubmitError::Closed` once the pool shuts down";
// (`SubmitError`) "the job comes back, never lost"; (`Submitter::try_submit`) "`Full` or
// `Closed`, with the job". Producers hammer `try_submit`/`submit` while the shutdown starts.
async fn submit_racing_shutdown<R: Runtime>(rt: Clocked<R>) {
    let mut rng = seeded(0x5AC3);
    for round in 0..6 {
        let ran: Arc<Mutex<Vec<u64>>> = Arc::default();
        let (c, r) = (rt.clone(), ran.clone());
        let pool = WorkerPool::builder()
            .workers(2)
            .queue(4)
            .runtime(rt.clone())
            .start(move |id: u64| {
                r.lock().unwrap().push(id);
                let c = c.clone();
                async move {
                    c.sleep(ms(id % 7)).await;
                    id
                }
            })
            .unwrap();
        let mut producers = Vec::new();
        for p in 0..4u64 {
            let (sub, c) = (pool.submitter(), rt.clone());
            producers.push(rt.spawn(async move {
                let mut accepted = Vec::new();
                for n in 0.. {
                    let id = p * 10_000 + n;
                    let out = if n.is_multiple_of(2) {
                        sub.try_submit(id)
                    } else {
                        sub.submit(id).await
                    };
                    match out {
                        Ok(_) => accepted.push(id),
                        Err(SubmitError::Full(j)) => {
                            assert_eq!(j, id);
                            c.sleep(ms(1)).await;
                        }
                        Err(SubmitError::Closed(j)) => {
                            assert_eq!(j, id);
                            break;
                        }
                        Err(other) => panic!("submit {id}: {other:?}"),
                    }
                }
                // Closed stays closed, for every way in.
                let late = sub.clone();
                assert!(matches!(late.try_submit(7), Err(SubmitError::Closed(7))));
                assert!(matches!(sub.submit(8).await, Err(SubmitError::Closed(8))));
                accepted
            }));
        }
        rt.sleep(ms(pick(&mut rng, 40))).await;
        let report = pool.shutdown(ms(pick(&mut rng, 10))).await;
        let mut accepted = Vec::new();
        for p in producers {
            accepted.extend(within(&rt, HOUR, "a producer", p).await.unwrap());
        }
        let ran = set(&ran.lock().unwrap());
        let handed = set(&report.handed_back);
        assert!(ran.is_disjoint(&handed), "round {round}");
        let union: BTreeSet<u64> = ran.union(&handed).copied().collect();
        assert_eq!(union, set(&accepted), "round {round}");
        assert_eq!(report.submitted, accepted.len() as u64, "round {round}");
        assert_eq!(
            report.submitted,
            report.completed + report.failed + report.handed_back.len() as u64
        );
    }
}

#[test]
fn submits_racing_a_shutdown_get_their_exact_job_back_on_every_runtime() {
    on_every_runtime!(submit_racing_shutdown);
}

// ================================================================================================
// Supervisors
// ================================================================================================

#[derive(Clone, Default)]
struct Events(Arc<Mutex<Vec<SupervisorEvent>>>);

impl Events {
    fn hook(&self) -> impl Fn(&SupervisorEvent) + Send + Sync + 'static {
        let log = self.0.clone();
        move |e| log.lock().unwrap().push(e.clone())
    }
    fn all(&self) -> Vec<SupervisorEvent> {
        self.0.lock().unwrap().clone()
    }
    fn starts(&self, name: &str) -> Vec<u64> {
        self.all()
            .into_iter()
            .filter_map(|e| match e {
                SupervisorEvent::Started { child, run } if &*child == name => Some(run),
                _ => None,
            })
            .collect()
    }
}

fn no_jitter(b: tidewall_core::backoff::BackoffBuilder) -> Backoff {
    b.jitter(Jitter::None).build().unwrap()
}

// Docs (`SupervisorBuilder::intensity`): "`max_restarts = 0` escalates on the first exit that
// would restart"; (`Restart`) Permanent: "Always restarted, whether it failed or returned
// `Ok`", Transient: "Restarted after any exit but `Ok`"; (`Ended`) "Every child ended and none
// is to be restarted"; (`Escalation::max_restarts`, `period`).
#[tokio::test(start_paused = true)]
async fn intensity_zero_escalates_on_the_first_exit_that_would_restart() {
    let cases: [(&str, Restart, bool); 3] = [
        ("fails", Restart::Permanent, true),
        ("returns-ok-permanent", Restart::Permanent, false),
        ("returns-ok-transient", Restart::Transient, false),
    ];
    for (name, restart, fails) in cases {
        let starts = Arc::new(AtomicU32::new(0));
        let s = starts.clone();
        let sup = Supervisor::builder()
            .intensity(0, SEC)
            .child(
                ChildSpec::new(name, move |_stop| {
                    s.fetch_add(1, SeqCst);
                    async move { if fails { Err("down") } else { Ok(()) } }
                })
                .restart(restart),
            )
            .build()
            .unwrap();
        let out = sup.run(CancellationToken::new()).await;
        assert_eq!(starts.load(SeqCst), 1, "{name}: started again");
        match (restart, fails) {
            (Restart::Transient, false) => {
                let report = out.expect("a transient Ok needs no restart");
                assert_eq!(report.ended, Ended::NoChildrenLeft);
                assert_eq!(report.restarts, 0);
            }
            _ => {
                let esc = out.expect_err("zero restarts allowed");
                assert_eq!(&*esc.child, name);
                assert_eq!((esc.max_restarts, esc.period), (0, SEC));
                assert_eq!(esc.report.ended, Ended::Escalated);
                assert_eq!(esc.report.restarts, 0);
            }
        }
    }
}

// Docs (`SupervisorBuilder::intensity`): "At most `max_restarts` restarts within any `period`";
// (`backoff`) "Restarts are bounded by the intensity, not the backoff"; (`SupervisorEvent::
// Restarting`) "`restarts_in_period`: Restarts within the intensity period, this one
// included"; (`SupervisorReport::restarts`) "Restarts over its life"; (`Supervisor::run`)
// supervises "until `stop` is cancelled". A child that panics at once, forever, with zero
// backoff and `u32::MAX` intensity, stopped from the event hook.
#[tokio::test(start_paused = true)]
async fn a_zero_backoff_crash_loop_at_max_intensity_never_escalates_and_stops_on_demand() {
    const STOP_AFTER: u32 = 300;
    let stop = CancellationToken::new();
    let events = Events::default();
    let (log, s, seen) = (events.hook(), stop.clone(), Arc::new(AtomicU32::new(0)));
    let sup = Supervisor::builder()
        .intensity(u32::MAX, HOUR)
        .backoff(no_jitter(Backoff::constant(Duration::ZERO)))
        .on_event(move |e| {
            log(e);
            if matches!(e, SupervisorEvent::Restarting { .. })
                && seen.fetch_add(1, SeqCst) + 1 == STOP_AFTER
            {
                s.cancel("enough");
            }
        })
        .child(ChildSpec::new("crasher", |_stop| async {
            explode("crasher boom")
        }))
        .build()
        .unwrap();
    let t0 = tokio::time::Instant::now();
    let report = sup
        .run(stop)
        .await
        .expect("u32::MAX restarts never escalate");
    assert_eq!(t0.elapsed(), Duration::ZERO);
    assert_eq!(report.ended, Ended::Stopped);
    let all = events.all();
    let starts = events.starts("crasher");
    assert_eq!(starts, (1..=starts.len() as u64).collect::<Vec<_>>());
    let mut k = 0;
    for e in &all {
        match e {
            SupervisorEvent::Restarting {
                delay,
                restarts_in_period,
                ..
            } => {
                k += 1;
                assert_eq!((*delay, *restarts_in_period), (Duration::ZERO, k));
            }
            SupervisorEvent::Exited { exit, .. } => {
                assert_eq!(*exit, Exit::Panicked("crasher boom".to_owned()));
            }
            SupervisorEvent::Escalating { .. } => panic!("escalated: {e:?}"),
            _ => {}
        }
    }
    assert_eq!(k, STOP_AFTER);
    // `restarts` counts the restarts scheduled (the `Restarting` events; the intensity test
    // above shows an escalation is not counted); the last one may be pre-empted by the stop.
    assert_eq!(
        report.restarts,
        u64::from(k),
        "restarts vs. Restarting events"
    );
    let started = u32::try_from(starts.len()).unwrap();
    assert!(
        started == k || started == k + 1,
        "{started} starts for {k} scheduled restarts"
    );
}

// Docs (`SupervisorBuilder::intensity`): "At most `max_restarts` restarts within any `period`"
// (a window: failures hours apart are forgotten); (`backoff`, `stable_after`) "A child that ran
// at least this long before ending starts its backoff afresh (the intensity period by
// default)"; (`backoff`) exponential from `initial`, doubling. Runs alternate: hours-long
// (seeded), then failing at once.
async fn restart_window_forgets<R: Runtime>(rt: Clocked<R>) {
    let mut rng = seeded(0x1DE5);
    let hours: Vec<u32> = (0..40).map(|_| 1 + pick_u32(&mut rng, 47)).collect();
    let events = Events::default();
    let stop = CancellationToken::new();
    let (log, s) = (events.hook(), stop.clone());
    let restarting = Arc::new(AtomicU32::new(0));
    let r = restarting.clone();
    let runs = Arc::new(AtomicU32::new(0));
    let (c, n) = (rt.clone(), runs.clone());
    let sup = Supervisor::builder()
        .runtime(rt.clone())
        .intensity(2, ms(10_000))
        .backoff(no_jitter(Backoff::exponential(ms(10)).max_delay(SEC)))
        .on_event(move |e| {
            log(e);
            if matches!(e, SupervisorEvent::Restarting { .. }) && r.fetch_add(1, SeqCst) + 1 == 60 {
                s.cancel("seen enough");
            }
        })
        .child(ChildSpec::new("gappy", move |_stop| {
            let run = n.fetch_add(1, SeqCst) as usize;
            let (c, gap) = (c.clone(), hours[(run / 2) % hours.len()]);
            async move {
                if run.is_multiple_of(2) {
                    c.sleep(HOUR * gap).await;
                }
                Err("lost the connection")
            }
        }))
        .build()
        .unwrap();
    let report = within(&rt, 10_000 * HOUR, "supervisor", sup.run(stop))
        .await
        .expect("failures hours apart never exceed 2 in 10 s");
    let restarts: Vec<(Duration, u32)> = events
        .all()
        .into_iter()
        .filter_map(|e| match e {
            SupervisorEvent::Restarting {
                delay,
                restarts_in_period,
                ..
            } => Some((delay, restarts_in_period)),
            _ => None,
        })
        .collect();
    assert_eq!(restarts.len(), 60);
    for (i, got) in restarts.iter().enumerate() {
        // After an hours-long run: the window is empty and the backoff fresh. After an
        // immediate failure 10 ms later: two in the window, the backoff doubled.
        let want = if i.is_multiple_of(2) {
            (ms(10), 1)
        } else {
            (ms(20), 2)
        };
        assert_eq!(*got, want, "restart {i}");
    }
    assert_eq!(report.ended, Ended::Stopped);
}

#[test]
fn a_restart_window_forgets_failures_separated_by_hours_on_every_runtime() {
    on_every_runtime!(restart_window_forgets);
}

// Docs (`SupervisorBuilder::backoff`): the delay before each restart (here the largest a
// `Backoff` accepts, ~584 years); (`Supervisor::run`) supervises "until `stop` is cancelled
// (then stops them in reverse start order and returns the report)"; (`Clock::sleep`) a
// duration too large "sleeps 'forever' ... instead of overflowing".
#[test]
fn a_584_year_restart_backoff_is_cut_short_by_the_stop_token() {
    common::on_tokio_current_thread(|rt| async move {
        let events = Events::default();
        let sup = Supervisor::builder()
            .runtime(rt.clone())
            .backoff(no_jitter(Backoff::constant(MAX_NS).max_delay(MAX_NS)))
            .on_event(events.hook())
            .child(ChildSpec::new("once", |_stop| async { Err("died") }))
            .build()
            .unwrap();
        let stop = CancellationToken::new();
        let (s, c) = (stop.clone(), rt.clone());
        let canceller = rt.spawn(async move {
            c.sleep(HOUR).await;
            s.cancel("operator");
        });
        let t0 = rt.now();
        let report = within(&rt, 2 * HOUR, "supervisor", sup.run(stop))
            .await
            .expect("one failure is within the default intensity");
        canceller.await.unwrap();
        assert_eq!(rt.now() - t0, HOUR);
        assert_eq!(report.ended, Ended::Stopped);
        assert_eq!(events.starts("once"), [1]);
        assert!(events.all().iter().any(|e| matches!(
            e,
            SupervisorEvent::Restarting { delay, .. } if *delay == MAX_NS
        )));
        assert!(
            report.stopped.is_empty(),
            "no child was running: {report:?}"
        );
    });
}

/// The `Restarting` delays a supervisor announced.
fn delays(events: &Events) -> Vec<Duration> {
    events
        .all()
        .into_iter()
        .filter_map(|e| match e {
            SupervisorEvent::Restarting { delay, .. } => Some(delay),
            _ => None,
        })
        .collect()
}

// Docs (`SupervisorBuilder::backoff`): "once a backoff's `max_attempts` (or `max_elapsed`) are
// spent, every later restart waits the last delay it gave ... until a run lasts
// `stable_after` and the backoff starts afresh"; (default) "exponential from 10 ms, doubling,
// capped at 1 s, with equal jitter: uniform in `[d/2, d]`"; (`seed`) "Seeds the backoff jitter
// ..., for reproducible runs".
async fn held_backoff_and_seeds<R: Runtime>(rt: Clocked<R>) {
    let runs = Arc::new(AtomicU32::new(0));
    let (c, n) = (rt.clone(), runs.clone());
    let events = Events::default();
    let stop = CancellationToken::new();
    let (log, s) = (events.hook(), stop.clone());
    let sup = Supervisor::builder()
        .runtime(rt.clone())
        .intensity(100, HOUR)
        .backoff(no_jitter(
            Backoff::exponential(ms(10)).max_attempts(3).max_delay(SEC),
        ))
        .stable_after(5 * SEC)
        .on_event(move |e| {
            log(e);
            if matches!(e, SupervisorEvent::Started { run: 9, .. }) {
                s.cancel("enough");
            }
        })
        .child(ChildSpec::new("held", move |_stop| {
            let run = n.fetch_add(1, SeqCst) + 1;
            let c = c.clone();
            async move {
                if run == 6 {
                    c.sleep(10 * SEC).await; // a stable run
                }
                Err("again")
            }
        }))
        .build()
        .unwrap();
    within(&rt, HOUR, "supervisor", sup.run(stop))
        .await
        .unwrap();
    assert_eq!(
        delays(&events),
        [10, 20, 20, 20, 20, 10, 20, 20].map(ms),
        "held after max_attempts, fresh after the stable run"
    );

    // The default backoff, seeded: the same delays on every run, each within [d/2, d].
    let seeded_run = |seed: u64| {
        let rt = rt.clone();
        async move {
            let events = Events::default();
            let stop = CancellationToken::new();
            let (log, s) = (events.hook(), stop.clone());
            let sup = Supervisor::builder()
                .runtime(rt.clone())
                .intensity(100, HOUR)
                .seed(seed)
                .on_event(move |e| {
                    log(e);
                    if matches!(e, SupervisorEvent::Started { run: 5, .. }) {
                        s.cancel("enough");
                    }
                })
                .child(ChildSpec::new("jittery", |_stop| async { Err("again") }))
                .build()
                .unwrap();
            within(&rt, HOUR, "supervisor", sup.run(stop))
                .await
                .unwrap();
            delays(&events)
        }
    };
    let first = seeded_run(42).await;
    assert_eq!(
        first,
        seeded_run(42).await,
        "a seeded supervisor is not reproducible"
    );
    for (k, d) in first.iter().take(3).enumerate() {
        let raw = ms(10 << k);
        assert!(
            *d >= raw / 2 && *d <= raw,
            "delay {k}: {d:?} outside [{:?}, {raw:?}]",
            raw / 2
        );
    }
}

#[test]
fn a_held_backoff_resets_after_a_stable_run_and_seeded_jitter_repeats_on_every_runtime() {
    on_every_runtime!(held_backoff_and_seeds);
}

// Docs (`SupervisorBuilder::build`): "`ConfigError::Zero` for a zero intensity period
// (`intensity(0, ZERO)` included) or no children; `ConfigError::DurationOverflow` for
// durations beyond `u64::MAX` nanoseconds; `ConfigError::Conflict` when two children share a
// name." `Duration::MAX` for `stable_after` is such a duration. A child's shutdown timeout of
// `Duration::MAX` must either be refused the same way or work (it gets all the time it needs).
#[test]
fn supervisor_builder_extremes() {
    common::on_tokio_current_thread(|rt| async move {
        let child = |name: &'static str| {
            ChildSpec::new(name, |stop: CancellationToken| async move {
                stop.cancelled().await;
                Ok::<(), std::io::Error>(())
            })
        };
        let b = || Supervisor::builder().runtime(rt.clone());
        let err = |r: Result<Supervisor<Clocked<Tokio>>, ConfigError>| r.unwrap_err();
        assert!(matches!(
            err(b().intensity(0, Duration::ZERO).child(child("a")).build()),
            ConfigError::Zero { .. }
        ));
        assert!(matches!(
            err(b().intensity(3, Duration::ZERO).child(child("a")).build()),
            ConfigError::Zero { .. }
        ));
        assert!(matches!(err(b().build()), ConfigError::Zero { .. }));
        assert!(matches!(
            err(b().child(child("a")).child(child("a")).build()),
            ConfigError::Conflict { .. }
        ));
        assert!(matches!(
            err(b().intensity(1, Duration::MAX).child(child("a")).build()),
            ConfigError::DurationOverflow { .. }
        ));
        assert!(matches!(
            err(b().stable_after(Duration::MAX).child(child("a")).build()),
            ConfigError::DurationOverflow { .. }
        ));
        assert!(
            b().intensity(u32::MAX, MAX_NS)
                .stable_after(MAX_NS)
                .child(child("a"))
                .build()
                .is_ok()
        );
        let slow = ChildSpec::new("slow", {
            let c = rt.clone();
            move |stop: CancellationToken| {
                let c = c.clone();
                async move {
                    stop.cancelled().await;
                    c.sleep(HOUR).await;
                    Ok::<(), std::io::Error>(())
                }
            }
        })
        .shutdown_timeout(Duration::MAX);
        match b().child(slow).build() {
            Err(e) => assert!(matches!(e, ConfigError::DurationOverflow { .. }), "{e:?}"),
            Ok(sup) => {
                let stop = CancellationToken::new();
                stop.cancel("deploy");
                let report = sup.run(stop).await.unwrap();
                assert_eq!(report.stopped.len(), 1);
                assert_eq!(report.stopped[0].ending, Ending::Stopped { took: HOUR });
                assert_eq!(report.stopped[0].exit, Exit::Ok(()));
            }
        }
    });
}

// Docs (`Supervisor::run`): "Dropping the future cancels every child's token and aborts it at
// once, without the ordered shutdown"; (`Drop for Supervisor`) "A supervisor dropped before it
// stopped its children (its `run` future dropped, or aborted by a parent after its shutdown
// timeout) takes them down with it ... so no worker outlives its supervisor"; (the stop
// helper) "if this future is dropped mid-wait ... `Drop` still finds it and aborts it". Drops
// at random polls, mid-way through an ordered shutdown, and by aborting the task running it;
// children include a nested supervisor and a scope of their own.
async fn supervisor_dropped_at_random<R: Runtime>(rt: Clocked<R>) {
    let mut rng = seeded(0x50_9E);
    let mut most = 0;
    for round in 0..12 {
        let gauge = Gauge::default();
        let starts = Arc::new(AtomicU32::new(0));
        let (g, st) = (gauge.clone(), starts.clone());
        let plain = ChildSpec::new("plain", move |_stop| {
            st.fetch_add(1, SeqCst);
            let g = g.clone();
            async move {
                guarded_pending(g).await;
                Ok::<(), &'static str>(())
            }
        })
        .shutdown_timeout(HOUR);
        let (g, st, c) = (gauge.clone(), starts.clone(), rt.clone());
        let scoped = ChildSpec::new("scoped", move |stop: CancellationToken| {
            st.fetch_add(1, SeqCst);
            let (g, c) = (g.clone(), c.clone());
            async move {
                let scope = Scope::builder()
                    .runtime(c)
                    .parent(&stop)
                    .build::<(), ()>()
                    .map_err(|e| e.to_string())?;
                for _ in 0..3 {
                    let g = g.clone();
                    let _ = scope
                        .spawn(async move {
                            guarded_pending(g).await;
                            Ok(())
                        })
                        .await;
                }
                let _ = scope.join().await;
                Ok::<(), String>(())
            }
        })
        .shutdown_timeout(HOUR);
        let (g, st, c) = (gauge.clone(), starts.clone(), rt.clone());
        let nested = ChildSpec::supervisor("nested", move || {
            let (g, st2) = (g.clone(), st.clone());
            Supervisor::builder()
                .runtime(c.clone())
                .child(
                    ChildSpec::new("leaf", move |_stop| {
                        st2.fetch_add(1, SeqCst);
                        let g = g.clone();
                        async move {
                            guarded_pending(g).await;
                            Ok::<(), &'static str>(())
                        }
                    })
                    .shutdown_timeout(HOUR),
                )
                .build()
                .unwrap()
        });
        let (g, st, c) = (gauge.clone(), starts.clone(), rt.clone());
        let flaky = ChildSpec::new("flaky", move |_stop| {
            st.fetch_add(1, SeqCst);
            let (g, c) = (g.clone(), c.clone());
            async move {
                let _alive = g.enter();
                c.sleep(ms(5)).await;
                Err("flaky")
            }
        });
        let sup = Supervisor::builder()
            .runtime(rt.clone())
            .intensity(1_000, SEC)
            .child(plain)
            .child(scoped)
            .child(nested)
            .child(flaky)
            .build()
            .unwrap();
        let stop = CancellationToken::new();
        let mode = pick(&mut rng, 2);
        match mode {
            0 => {
                let polls = pick(&mut rng, 25);
                let limit = ms(1 + pick(&mut rng, 80));
                let out = poll_limit(sup.run(stop.clone()), polls)
                    .timeout_on(&rt, limit)
                    .await;
                assert!(
                    !matches!(out, Ok(Some(_))),
                    "round {round}: run ended by itself"
                );
            }
            1 => {
                let at = ms(pick(&mut rng, 50));
                let (s, c) = (stop.clone(), rt.clone());
                let canceller = rt.spawn(async move {
                    c.sleep(at).await;
                    s.cancel("ordered stop");
                });
                // The ordered stop needs an hour for "plain" alone: drop it mid-way.
                let window = at + ms(pick(&mut rng, 3_000));
                let out = sup.run(stop.clone()).timeout_on(&rt, window).await;
                assert!(out.is_err(), "round {round}: ordered stop finished early");
                canceller.await.unwrap();
            }
            _ => {
                let handle = rt.spawn(sup.run(stop.clone()));
                rt.sleep(ms(pick(&mut rng, 80))).await;
                handle.abort();
                let _ = handle.await;
            }
        }
        most = most.max(gauge.most());
        rt.sleep(ms(1)).await;
        assert_eq!(
            gauge.now(),
            0,
            "round {round} (mode {mode}): children outlived the supervisor"
        );
        let before = starts.load(SeqCst);
        rt.sleep(ms(10_000)).await;
        assert_eq!(
            starts.load(SeqCst),
            before,
            "round {round}: a child restarted"
        );
        assert_eq!(gauge.now(), 0, "round {round}");
    }
    // plain + 3 scoped + nested leaf (+ flaky): the trees really were up.
    assert!(
        most >= 5,
        "vacuous: at most {most} descendants alive at once"
    );
}

#[test]
fn dropping_a_supervisor_at_random_points_leaves_no_descendant_on_every_runtime() {
    on_every_runtime!(supervisor_dropped_at_random);
}

// Docs (`ChildSpec::shutdown_timeout`): "How long the child gets to stop once told to before it
// is aborted (... zero aborts at once, OTP's `brutal_kill`)"; (`SupervisorReport::stopped`) "in
// the order stopped (reverse start order): each one's exit, and `Ending::Stopped` (it ended
// within its shutdown timeout, `took` counted from the cancel) or `Ending::Aborted`";
// (`SupervisorEvent::Stopped::exit`) "`Exit::Aborted` when it was aborted".
#[tokio::test(start_paused = true)]
async fn an_ordered_stop_applies_each_childs_own_timeout_in_reverse_start_order() {
    let cooperative = |name: &'static str, cleanup: Duration| {
        ChildSpec::new(name, move |stop: CancellationToken| async move {
            stop.cancelled().await;
            tokio::time::sleep(cleanup).await;
            Ok::<(), &'static str>(())
        })
    };
    let deaf = |name: &'static str| {
        ChildSpec::new(name, |_stop| async {
            std::future::pending::<()>().await;
            Ok::<(), &'static str>(())
        })
    };
    let events = Events::default();
    let sup = Supervisor::builder()
        .on_event(events.hook())
        .child(cooperative("a", ms(30)))
        .child(deaf("b").shutdown_timeout(Duration::ZERO))
        .child(deaf("c").shutdown_timeout(2 * SEC))
        .child(cooperative("d", 10 * SEC).shutdown_timeout(SEC))
        .build()
        .unwrap();
    let stop = CancellationToken::new();
    let s = stop.clone();
    tokio::spawn(async move {
        tokio::time::sleep(ms(100)).await;
        s.cancel("deploy");
    });
    let t0 = tokio::time::Instant::now();
    let report = sup.run(stop).await.unwrap();
    assert_eq!(t0.elapsed(), ms(100) + SEC + 2 * SEC + ms(30));
    let got: Vec<(&str, Exit, Ending)> = report
        .stopped
        .iter()
        .map(|t| (&*t.name, t.exit.clone(), t.ending))
        .collect();
    assert_eq!(
        got,
        [
            ("d", Exit::Aborted, Ending::Aborted { took: SEC }),
            ("c", Exit::Aborted, Ending::Aborted { took: 2 * SEC }),
            (
                "b",
                Exit::Aborted,
                Ending::Aborted {
                    took: Duration::ZERO
                }
            ),
            ("a", Exit::Ok(()), Ending::Stopped { took: ms(30) }),
        ]
    );
    let stopped_events: Vec<String> = events
        .all()
        .into_iter()
        .filter_map(|e| match e {
            SupervisorEvent::Stopped { child, .. } => Some(child.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(stopped_events, ["d", "c", "b", "a"]);
    assert_eq!(report.ended, Ended::Stopped);
}

/// How many instances of each child are alive now, and the most ever alive at once.
#[derive(Clone, Default)]
struct Live(Arc<Mutex<BTreeMap<&'static str, (u32, u32)>>>);

struct LiveGuard(Live, &'static str);

impl Live {
    fn enter(&self, name: &'static str) -> LiveGuard {
        let mut map = self.0.lock().unwrap();
        let entry = map.entry(name).or_default();
        entry.0 += 1;
        entry.1 = entry.1.max(entry.0);
        LiveGuard(self.clone(), name)
    }
    fn most(&self, name: &str) -> u32 {
        self.0.lock().unwrap().get(name).map_or(0, |e| e.1)
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.0.lock().unwrap().get_mut(self.1).unwrap().0 -= 1;
    }
}

// Docs (`Strategy`): OneForAll: "Every child is stopped (in reverse start order) and all are
// restarted in order"; RestForOne: "The child and every child started after it are stopped and
// restarted"; (`Drop for Supervisor`) "no worker ... runs twice after a restart". Siblings
// take 50 ms to stop, tempting an overlap of an old and a new instance.
async fn strategies_never_overlap<R: Runtime>(rt: Clocked<R>) {
    for strategy in [Strategy::OneForAll, Strategy::RestForOne] {
        let live = Live::default();
        let member = |name: &'static str, fails_first: bool| {
            let (live, c, runs) = (live.clone(), rt.clone(), Arc::new(AtomicU32::new(0)));
            ChildSpec::new(name, move |stop: CancellationToken| {
                let run = runs.fetch_add(1, SeqCst) + 1;
                let (live, c) = (live.clone(), c.clone());
                async move {
                    let _alive = live.enter(name);
                    if fails_first && run == 1 {
                        c.sleep(ms(10)).await;
                        return Err("first run fails");
                    }
                    stop.cancelled().await;
                    c.sleep(ms(50)).await;
                    Ok(())
                }
            })
            .shutdown_timeout(SEC)
        };
        let events = Events::default();
        let sup = Supervisor::builder()
            .runtime(rt.clone())
            .strategy(strategy)
            .backoff(no_jitter(Backoff::constant(ms(5))))
            .on_event(events.hook())
            .child(member("a", false))
            .child(member("b", true))
            .child(member("c", false))
            .build()
            .unwrap();
        let stop = CancellationToken::new();
        let (s, c) = (stop.clone(), rt.clone());
        rt.spawn(async move {
            c.sleep(SEC).await;
            s.cancel("end");
        });
        let report = within(&rt, HOUR, "supervisor", sup.run(stop))
            .await
            .unwrap();
        for name in ["a", "b", "c"] {
            assert_eq!(
                live.most(name),
                1,
                "{strategy:?}: two instances of {name} at once"
            );
        }
        let all = events.all();
        let b_exit = all
            .iter()
            .position(|e| matches!(e, SupervisorEvent::Exited { child, .. } if &**child == "b"))
            .expect("b exited");
        let restart: Vec<String> = all[b_exit + 1..]
            .iter()
            .filter_map(|e| match e {
                SupervisorEvent::Stopped {
                    child,
                    ending,
                    exit,
                } => {
                    assert_eq!(*exit, Exit::Ok(()), "{strategy:?}");
                    assert_eq!(*ending, Ending::Stopped { took: ms(50) }, "{strategy:?}");
                    Some(format!("stop {child}"))
                }
                SupervisorEvent::Started { child, run } => Some(format!("start {child} {run}")),
                _ => None,
            })
            .take(if strategy == Strategy::OneForAll {
                5
            } else {
                3
            })
            .collect();
        let want: &[&str] = if strategy == Strategy::OneForAll {
            &["stop c", "stop a", "start a 2", "start b 2", "start c 2"]
        } else {
            &["stop c", "start b 2", "start c 2"]
        };
        assert_eq!(restart, want, "{strategy:?}");
        if strategy == Strategy::RestForOne {
            assert_eq!(
                events.starts("a"),
                [1],
                "rest-for-one touched an earlier child"
            );
        }
        let order: Vec<&str> = report.stopped.iter().map(|t| &*t.name).collect();
        assert_eq!(order, ["c", "b", "a"]);
    }
}

#[test]
fn one_for_all_and_rest_for_one_never_run_two_instances_of_a_child_on_every_runtime() {
    on_every_runtime!(strategies_never_overlap);
}

// Docs (`Restart::Temporary`): "Never restarted"; (supervisor loop) "A temporary child that
// ended or was stopped: OTP deletes it, it never starts again. (A transient child that ended
// normally stays: a sibling's one-for-all or rest-for-one restart starts it again, as in
// OTP.)"; (`Ended`) "Every child ended and none is to be restarted".
#[tokio::test(start_paused = true)]
async fn a_temporary_child_is_never_restarted_by_a_siblings_one_for_all_restart() {
    let events = Events::default();
    let runs = Arc::new(AtomicU32::new(0));
    let r = runs.clone();
    let sup = Supervisor::builder()
        .strategy(Strategy::OneForAll)
        .backoff(no_jitter(Backoff::constant(ms(5))))
        .on_event(events.hook())
        .child(
            ChildSpec::new("temp", |stop: CancellationToken| async move {
                stop.cancelled().await;
                Ok::<(), &'static str>(())
            })
            .restart(Restart::Temporary),
        )
        .child(
            ChildSpec::new("oneshot", |_stop| async { Ok::<(), &'static str>(()) })
                .restart(Restart::Transient),
        )
        .child(ChildSpec::new("perm", move |stop: CancellationToken| {
            let run = r.fetch_add(1, SeqCst) + 1;
            async move {
                if run == 1 {
                    tokio::time::sleep(ms(10)).await;
                    return Err("first run fails");
                }
                stop.cancelled().await;
                Ok(())
            }
        }))
        .build()
        .unwrap();
    let stop = CancellationToken::new();
    let s = stop.clone();
    tokio::spawn(async move {
        tokio::time::sleep(SEC).await;
        s.cancel("end");
    });
    let report = sup.run(stop).await.unwrap();
    assert_eq!(events.starts("temp"), [1], "a temporary child came back");
    assert_eq!(
        events.starts("oneshot"),
        [1, 2],
        "the ended transient child stays"
    );
    assert_eq!(events.starts("perm"), [1, 2]);
    let stopped: Vec<&str> = report.stopped.iter().map(|t| &*t.name).collect();
    assert_eq!(stopped, ["perm"]);

    // Only temporary children, all ending: nothing is left to run.
    let sup = Supervisor::builder()
        .child(
            ChildSpec::new("t1", |_stop| async { Err::<(), _>("failed") })
                .restart(Restart::Temporary),
        )
        .child(
            ChildSpec::new("t2", |_stop| async { explode("panicked") }).restart(Restart::Temporary),
        )
        .build()
        .unwrap();
    let report = sup.run(CancellationToken::new()).await.unwrap();
    assert_eq!((report.ended, report.restarts), (Ended::NoChildrenLeft, 0));
}

// ================================================================================================
// Graceful shutdown
// ================================================================================================

// Docs (`ShutdownBuilder::build`): "`ConfigError::Zero` for a zero deadline,
// `ConfigError::DurationOverflow` beyond `u64::MAX` nanoseconds"; (`register_with_timeout`)
// "at most `timeout` to stop once told (the global deadline still applies)";
// (`ShutdownReport::deadline_exceeded`) "Whether the global deadline passed".
#[tokio::test(start_paused = true)]
async fn shutdown_deadline_extremes() {
    let err = Shutdown::builder()
        .deadline(Duration::ZERO)
        .build()
        .unwrap_err();
    assert!(matches!(err, ConfigError::Zero { .. }), "{err:?}");
    let err = Shutdown::builder()
        .deadline(Duration::MAX)
        .build()
        .unwrap_err();
    assert!(
        matches!(err, ConfigError::DurationOverflow { .. }),
        "{err:?}"
    );
    let mut shutdown = Shutdown::builder().deadline(MAX_NS).build().unwrap();
    shutdown.register("slow-db", |stop| async move {
        stop.cancelled().await;
        tokio::time::sleep(HOUR).await;
        Ok::<(), std::io::Error>(())
    });
    shutdown.register_with_timeout("slower-cache", Duration::MAX, |stop| async move {
        stop.cancelled().await;
        tokio::time::sleep(2 * HOUR).await;
        Ok::<(), std::io::Error>(())
    });
    let report = shutdown.stop("deploy").await;
    assert_eq!(report.took, 3 * HOUR);
    assert!(!report.deadline_exceeded && !report.forced && report.is_clean());
    let ends: Vec<(&str, Ending)> = report
        .components
        .iter()
        .map(|c| (&*c.name, c.ending))
        .collect();
    assert_eq!(
        ends,
        [
            ("slower-cache", Ending::Stopped { took: 2 * HOUR }),
            ("slow-db", Ending::Stopped { took: HOUR }),
        ]
    );
}

// Docs (`Shutdown::trigger`): "The token that starts the shutdown when cancelled (its reason is
// the cause)"; (`CancellationToken`) "The first cancellation wins"; (`Shutdown::stop`)
// "`trigger.cancel(reason)`, then `run`"; (`Shutdown`) only "A second signal during the
// shutdown aborts everything left at once" — a second *trigger* is no signal.
#[tokio::test(start_paused = true)]
async fn a_trigger_cancelled_twice_keeps_the_first_reason_and_does_not_force() {
    let mut shutdown = Shutdown::builder().build().unwrap();
    let trigger = shutdown.trigger();
    shutdown.register("worker", |stop| async move {
        stop.cancelled().await;
        tokio::time::sleep(2 * SEC).await;
        Ok::<(), std::io::Error>(())
    });
    trigger.cancel("first");
    let t = trigger.clone();
    tokio::spawn(async move {
        tokio::time::sleep(SEC).await;
        t.cancel("second, mid-shutdown");
    });
    let report = shutdown.stop("third").await;
    assert_eq!(report.cause, Cause::Triggered(Reason::new("first")));
    assert!(!report.forced, "a second trigger forced the shutdown");
    assert_eq!(
        report.components[0].ending,
        Ending::Stopped { took: 2 * SEC }
    );
    assert_eq!(report.components[0].exit, Exit::Ok(()));
}

// Docs (`Shutdown`): "one that ended on its own after the shutdown began, before its turn came,
// reads `Ending::Stopped` with a `took` of about zero"; (`ShutdownReport::took`) "to the last
// component gone".
#[tokio::test(start_paused = true)]
async fn a_component_ending_by_itself_mid_shutdown_reads_stopped_with_zero_took() {
    let mut shutdown = Shutdown::builder().build().unwrap();
    shutdown.register("batch", |_stop| async {
        tokio::time::sleep(ms(1_500)).await; // ignores its token, ends on its own
        Ok::<(), std::io::Error>(())
    });
    shutdown.register("server", |stop| async move {
        stop.cancelled().await;
        tokio::time::sleep(2 * SEC).await;
        Ok::<(), std::io::Error>(())
    });
    tokio::time::sleep(SEC).await;
    let report = shutdown.stop("deploy").await;
    let got: Vec<(&str, Exit, Ending)> = report
        .components
        .iter()
        .map(|c| (&*c.name, c.exit.clone(), c.ending))
        .collect();
    assert_eq!(
        got,
        [
            ("server", Exit::Ok(()), Ending::Stopped { took: 2 * SEC }),
            (
                "batch",
                Exit::Ok(()),
                Ending::Stopped {
                    took: Duration::ZERO
                }
            ),
        ]
    );
    assert_eq!(report.took, 2 * SEC);
}

// Docs (`Shutdown::stop`): "Starts the shutdown now, at the call (not at the first poll)";
// (`Shutdown`) "When the shutdown begins: at the moment the trigger is cancelled ..., or when
// `run` notices another cause. ... A component that ended before is reported with
// `Ending::Finished`, whether or not `run` was being polled at the time ... one that ended on
// its own after the shutdown began, before its turn came, reads `Ending::Stopped` with a `took`
// of about zero"; (`ShutdownReport::took`) from "its first poll for a trigger cancelled
// earlier".
#[tokio::test(start_paused = true)]
async fn the_shutdown_begins_at_the_stop_call_and_at_the_noticed_failure_not_at_a_later_poll() {
    let quick = |after: Duration| {
        move |_stop: CancellationToken| async move {
            tokio::time::sleep(after).await;
            Ok::<(), std::io::Error>(())
        }
    };
    let mut shutdown = Shutdown::builder().build().unwrap();
    shutdown.register("early", quick(ms(100)));
    shutdown.register("late", quick(ms(300)));
    shutdown.register("server", |stop| async move {
        stop.cancelled().await;
        Ok::<(), std::io::Error>(())
    });
    tokio::time::sleep(ms(200)).await;
    let stopping = shutdown.stop("deploy"); // begins now, at 200 ms; first polled at 500 ms
    tokio::time::sleep(ms(300)).await;
    let report = stopping.await;
    let ends: Vec<(&str, Ending)> = report
        .components
        .iter()
        .map(|c| (&*c.name, c.ending))
        .collect();
    assert_eq!(
        ends,
        [
            (
                "server",
                Ending::Stopped {
                    took: Duration::ZERO
                }
            ),
            (
                "late",
                Ending::Stopped {
                    took: Duration::ZERO
                }
            ),
            ("early", Ending::Finished),
        ]
    );

    // A failure at 100 ms, `run` first polled at 500 ms: the shutdown begins when `run`
    // notices it, so a component that ended at 300 ms ended before it began.
    let mut shutdown = Shutdown::builder().build().unwrap();
    shutdown.register("fails", |_stop| async {
        tokio::time::sleep(ms(100)).await;
        Err::<(), _>(std::io::Error::other("lost the disk"))
    });
    shutdown.register("ends", quick(ms(300)));
    shutdown.register("server", |stop| async move {
        stop.cancelled().await;
        Ok::<(), std::io::Error>(())
    });
    tokio::time::sleep(ms(500)).await;
    let report = shutdown.run().await;
    assert!(matches!(&report.cause, Cause::ComponentFailed { name, .. } if &**name == "fails"));
    let ends: Vec<(&str, Ending)> = report
        .components
        .iter()
        .map(|c| (&*c.name, c.ending))
        .collect();
    assert_eq!(
        ends,
        [
            (
                "server",
                Ending::Stopped {
                    took: Duration::ZERO
                }
            ),
            ("ends", Ending::Finished),
            ("fails", Ending::Finished),
        ]
    );
}

// Docs (`ShutdownReport`): `Ending::Stopped`: "it was still running when the shutdown began;
// at its turn its token was cancelled and it ended, `took` after the cancel" (a panic is an
// end too: `Exit` "the panic's message"); (`ShutdownReport::is_clean`) "one that failed,
// panicked or was lost on its own still counts as clean".
#[tokio::test(start_paused = true)]
async fn a_component_panicking_while_it_stops_is_reported_and_the_shutdown_goes_on() {
    let mut shutdown = Shutdown::builder().build().unwrap();
    shutdown.register("db", |stop| async move {
        stop.cancelled().await;
        Ok::<(), std::io::Error>(())
    });
    shutdown.register("flaky-drain", |stop| async move {
        stop.cancelled().await;
        tokio::time::sleep(ms(40)).await;
        explode_io("drain blew up")
    });
    let report = shutdown.stop("deploy").await;
    let got: Vec<(&str, Exit, Ending)> = report
        .components
        .iter()
        .map(|c| (&*c.name, c.exit.clone(), c.ending))
        .collect();
    assert_eq!(
        got,
        [
            (
                "flaky-drain",
                Exit::Panicked("drain blew up".to_owned()),
                Ending::Stopped { took: ms(40) }
            ),
            (
                "db",
                Exit::Ok(()),
                Ending::Stopped {
                    took: Duration::ZERO
                }
            ),
        ]
    );
    assert!(report.is_clean());
    assert_eq!(report.cause, Cause::Triggered(Reason::new("deploy")));
}

// Docs (`Shutdown`): "each one's token is cancelled and it gets until its own timeout or the
// global deadline, whichever comes first; when the deadline passes, everything left is
// aborted"; (`register_with_timeout`) "Zero aborts it as soon as its turn comes";
// (`ShutdownReport` / `Ending::Aborted`) "it was still running when its own timeout, the global
// deadline or a second signal came, and was aborted; its exit is `Exit::Aborted`".
async fn deadline_cuts_deaf_components<R: Runtime>(rt: Clocked<R>) {
    let gauge = Gauge::default();
    let mut shutdown = Shutdown::builder()
        .runtime(rt.clone())
        .deadline(10 * SEC)
        .build()
        .unwrap();
    let (g, c) = (gauge.clone(), rt.clone());
    shutdown.register("a-cooperative", move |stop| async move {
        let _alive = g.enter();
        stop.cancelled().await;
        c.sleep(SEC).await;
        Ok::<(), std::io::Error>(())
    });
    let g = gauge.clone();
    shutdown.register("b-deaf", move |_stop| async move {
        guarded_pending(g).await;
        Ok::<(), std::io::Error>(())
    });
    let g = gauge.clone();
    shutdown.register_with_timeout("c-deaf-2s", 2 * SEC, move |_stop| async move {
        guarded_pending(g).await;
        Ok::<(), std::io::Error>(())
    });
    let (g, c) = (gauge.clone(), rt.clone());
    shutdown.register_with_timeout("d-brutal", Duration::ZERO, move |stop| async move {
        let _alive = g.enter();
        stop.cancelled().await;
        c.sleep(ms(1)).await;
        Ok::<(), std::io::Error>(())
    });
    rt.sleep(ms(5)).await;
    let t0 = rt.now();
    let report = within(&rt, HOUR, "shutdown", shutdown.stop("deploy")).await;
    assert_eq!(rt.now() - t0, 10 * SEC);
    assert_eq!(report.took, 10 * SEC);
    assert!(report.deadline_exceeded && !report.forced && !report.is_clean());
    let got: Vec<(&str, Exit, Ending)> = report
        .components
        .iter()
        .map(|c| (&*c.name, c.exit.clone(), c.ending))
        .collect();
    assert_eq!(
        got,
        [
            (
                "d-brutal",
                Exit::Aborted,
                Ending::Aborted {
                    took: Duration::ZERO
                }
            ),
            (
                "c-deaf-2s",
                Exit::Aborted,
                Ending::Aborted { took: 2 * SEC }
            ),
            ("b-deaf", Exit::Aborted, Ending::Aborted { took: 8 * SEC }),
            (
                "a-cooperative",
                Exit::Aborted,
                Ending::Aborted {
                    took: Duration::ZERO
                }
            ),
        ]
    );
    rt.sleep(ms(1)).await;
    assert_eq!(gauge.now(), 0, "a component outlived the shutdown");
}

#[test]
fn the_global_deadline_cuts_components_that_ignore_their_token_on_every_runtime() {
    on_every_runtime!(deadline_cuts_deaf_components);
}

// Docs (`Shutdown::run`): "Dropping the future ends the shutdown there, as dropping a `Shutdown`
// does: every component not yet stopped has its token cancelled (reason "shutdown coordinator
// dropped") and is aborted at once, and so is the one being stopped at that moment ...: no
// component outlives the coordinator"; (`Drop for Shutdown`) "each is told to stop and
// aborted".
async fn shutdown_dropped_at_random<R: Runtime>(rt: Clocked<R>) {
    let mut rng = seeded(0xD0_0D);
    let mut most = 0;
    for round in 0..15 {
        let gauge = Gauge::default();
        let tokens: Arc<Mutex<Vec<CancellationToken>>> = Arc::default();
        let mut shutdown = Shutdown::builder()
            .runtime(rt.clone())
            .deadline(HOUR)
            .build()
            .unwrap();
        for i in 0..5u64 {
            let (g, c, tokens) = (gauge.clone(), rt.clone(), tokens.clone());
            let deaf = pick(&mut rng, 1) == 0;
            shutdown.register(format!("c{i}"), move |stop: CancellationToken| {
                tokens.lock().unwrap().push(stop.clone());
                async move {
                    let _alive = g.enter();
                    if deaf {
                        std::future::pending::<()>().await;
                    }
                    stop.cancelled().await;
                    c.sleep(ms(200)).await;
                    Ok::<(), std::io::Error>(())
                }
            });
        }
        rt.sleep(ms(pick(&mut rng, 3))).await;
        let mode = pick(&mut rng, 2);
        match mode {
            0 => drop(shutdown),
            1 => {
                // No cause ever comes: `run` waits, and is dropped while waiting.
                let polls = pick(&mut rng, 6);
                let out = poll_limit(shutdown.run(), polls)
                    .timeout_on(&rt, ms(1 + pick(&mut rng, 30)))
                    .await;
                assert!(!matches!(out, Ok(Some(_))), "round {round}: no cause came");
            }
            _ => {
                let trigger = shutdown.trigger();
                let (at, c) = (ms(pick(&mut rng, 20)), rt.clone());
                rt.spawn(async move {
                    c.sleep(at).await;
                    trigger.cancel("deploy");
                });
                let out = shutdown
                    .run()
                    .timeout_on(&rt, at + ms(pick(&mut rng, 1_500)))
                    .await;
                assert!(
                    out.is_err(),
                    "round {round}: deaf components, an hour's deadline"
                );
            }
        }
        most = most.max(gauge.most());
        rt.sleep(ms(1)).await;
        assert_eq!(
            gauge.now(),
            0,
            "round {round} (mode {mode}): a component lives on"
        );
        let tokens = tokens.lock().unwrap();
        assert_eq!(tokens.len(), 5);
        for t in tokens.iter() {
            assert!(
                t.is_cancelled(),
                "round {round}: a token was never cancelled"
            );
            if mode == 1 {
                assert_eq!(
                    t.reason().unwrap().as_str(),
                    "shutdown coordinator dropped",
                    "round {round}"
                );
            }
        }
    }
    assert_eq!(most, 5, "vacuous: the components never all ran");
}

#[test]
fn dropping_a_shutdown_at_random_points_leaves_no_component_running_on_every_runtime() {
    on_every_runtime!(shutdown_dropped_at_random);
}

// Docs (`Shutdown::run`): "The cause is what it sees first; when several are there at one
// poll, the trigger comes first, then a signal, then the components' ends in registration
// order"; (`Cause::ComponentFailed`) "it saw this component end with any exit but `Ok`";
// (`Cause::AllComponentsEnded`); (`Shutdown`) "A component that ended before is reported with
// `Ending::Finished`, whether or not `run` was being polled at the time"; (`Exit`) supervisor
// and shutdown exits carry "the error's message" / "the panic's message".
#[tokio::test(start_paused = true)]
async fn causes_present_together_resolve_in_the_documented_precedence() {
    for triggered in [false, true] {
        let mut shutdown = Shutdown::builder().build().unwrap();
        let ok_token: Arc<Mutex<Option<CancellationToken>>> = Arc::default();
        let slot = ok_token.clone();
        shutdown.register("ok", move |stop| {
            *slot.lock().unwrap() = Some(stop);
            async { Ok::<(), std::io::Error>(()) }
        });
        shutdown.register("bad", |_stop| async {
            Err::<(), _>(std::io::Error::other("bad news"))
        });
        shutdown.register("worse", |_stop| async { explode_io("worse boom") });
        shutdown.register("waiter", |stop| async move {
            stop.cancelled().await;
            Ok::<(), std::io::Error>(())
        });
        tokio::time::sleep(ms(1)).await; // three components end before `run` is polled
        if triggered {
            shutdown.trigger().cancel("deploy");
        }
        let report = shutdown.run().await;
        if triggered {
            assert_eq!(report.cause, Cause::Triggered(Reason::new("deploy")));
        } else {
            assert!(
                matches!(
                    &report.cause,
                    Cause::ComponentFailed { name, exit }
                        if &**name == "bad" && *exit == Exit::Err("bad news".to_owned())
                ),
                "{:?}",
                report.cause
            );
        }
        let got: Vec<(&str, Exit, Ending)> = report
            .components
            .iter()
            .map(|c| (&*c.name, c.exit.clone(), c.ending))
            .collect();
        assert_eq!(
            got,
            [
                (
                    "waiter",
                    Exit::Ok(()),
                    Ending::Stopped {
                        took: Duration::ZERO
                    }
                ),
                (
                    "worse",
                    Exit::Panicked("worse boom".to_owned()),
                    Ending::Finished
                ),
                ("bad", Exit::Err("bad news".to_owned()), Ending::Finished),
                ("ok", Exit::Ok(()), Ending::Finished),
            ],
            "triggered: {triggered}"
        );
        // (`Shutdown`): a component that ended before the shutdown began: "its token is never
        // cancelled".
        let token = ok_token.lock().unwrap().take().unwrap();
        assert!(!token.is_cancelled(), "{:?}", token.reason());
    }
    let mut shutdown = Shutdown::builder().build().unwrap();
    for name in ["x", "y"] {
        shutdown.register(name, |_stop| async { Ok::<(), std::io::Error>(()) });
    }
    let report = shutdown.run().await;
    assert_eq!(report.cause, Cause::AllComponentsEnded);
    assert!(
        report
            .components
            .iter()
            .all(|c| c.ending == Ending::Finished)
    );
}

// ================================================================================================
// Periodic work
// ================================================================================================

/// Runs `periodic` with a first run that takes `gap`, until `runs` runs have started; returns
/// each run's (scheduled tick, actual start), both measured from the first poll.
async fn trace<R: Runtime>(
    rt: &Clocked<R>,
    missed: MissedTicks,
    period: Duration,
    gap: Duration,
    runs: usize,
) -> Vec<(Duration, Duration)> {
    let token = CancellationToken::new();
    let stop = token.clone();
    let log: Arc<Mutex<Vec<(Duration, Duration)>>> = Arc::default();
    let (l, clock) = (log.clone(), rt.clone());
    let start = rt.now();
    let work = move |tick: Instant| {
        let mut log = l.lock().unwrap();
        log.push((tick - start, clock.now() - start));
        let n = log.len();
        if n == runs {
            stop.cancel("done");
        }
        let sleep = (n == 1).then(|| clock.sleep(gap));
        async move {
            if let Some(s) = sleep {
                s.await;
            }
        }
    };
    let reason = periodic(rt.clone(), period, missed, &token, work)
        .unwrap()
        .await;
    assert_eq!(reason.as_str(), "done");
    log.lock().unwrap().clone()
}

// Docs (`periodic`): "the first run is one period later, and runs follow `start + k × period`
// (`tick` is the run's scheduled instant)"; "Skip: the next run starts at once, late, for the
// earliest tick it overran; the other overrun ticks are dropped, and runs return to the
// original schedule at its first point after the late run started. An overrun of any length
// behaves so, from one period to centuries. Burst: one run per overrun tick, back to back,
// until the schedule is caught up. Delay: the next run starts at once and the schedule restarts
// from it."
async fn missed_ticks_after_gaps<R: Runtime>(rt: Clocked<R>) {
    let s = |x: f64| Duration::from_secs_f64(x);
    let skip = trace(&rt, MissedTicks::Skip, SEC, s(3.5), 4).await;
    assert_eq!(
        skip,
        [
            (s(1.), s(1.)),
            (s(2.), s(4.5)),
            (s(5.), s(5.)),
            (s(6.), s(6.))
        ]
    );

    let burst = trace(&rt, MissedTicks::Burst, SEC, s(3.5), 6).await;
    assert_eq!(
        burst,
        [
            (s(1.), s(1.)),
            (s(2.), s(4.5)),
            (s(3.), s(4.5)),
            (s(4.), s(4.5)),
            (s(5.), s(5.)),
            (s(6.), s(6.)),
        ]
    );

    let delay = trace(&rt, MissedTicks::Delay, SEC, s(3.5), 4).await;
    let starts: Vec<Duration> = delay.iter().map(|r| r.1).collect();
    assert_eq!(starts, [s(1.), s(4.5), s(5.5), s(6.5)]);

    // A century of overrun, skipped.
    let century = 100 * YEAR;
    let skip = trace(&rt, MissedTicks::Skip, SEC, century + ms(500), 4).await;
    assert_eq!(
        skip,
        [
            (SEC, SEC),
            (2 * SEC, century + ms(1_500)),
            (century + 2 * SEC, century + 2 * SEC),
            (century + 3 * SEC, century + 3 * SEC),
        ]
    );

    // Ten thousand overrun ticks, burst back to back.
    let gap = ms(10_000_500);
    let burst = trace(&rt, MissedTicks::Burst, SEC, gap, 10_003).await;
    assert_eq!(burst[0], (SEC, SEC));
    for (k, run) in (2u32..).zip(&burst[1..10_001]) {
        assert_eq!(*run, (SEC * k, SEC + gap), "burst run {k}");
    }
    assert_eq!(burst[10_001], (10_002 * SEC, 10_002 * SEC));
    assert_eq!(burst[10_002], (10_003 * SEC, 10_003 * SEC));
}

#[test]
fn periodic_missed_ticks_after_long_gaps_follow_the_documented_policy_on_every_runtime() {
    on_every_runtime!(missed_ticks_after_gaps);
}

// Docs (`periodic`): "`ConfigError::Zero` for a zero period" (no other error: `Duration::MAX`
// is a valid period); "The token is checked before every poll of a run ..., so a run is stopped
// mid-way, not only between runs"; "Cancel safety: dropping the future drops the run in
// progress"; Skip with runs longer than the period (1 ns).
async fn periodic_extremes<R: Runtime>(rt: Clocked<R>) {
    let token = CancellationToken::new();
    let err = periodic(
        rt.clone(),
        Duration::ZERO,
        MissedTicks::Skip,
        &token,
        |_| async {},
    )
    .err()
    .expect("a zero period is refused");
    assert!(matches!(err, ConfigError::Zero { .. }), "{err:?}");

    // The longest period accepted elsewhere (`u64::MAX` ns): nothing runs, the cancel still
    // ends it at once. (`Duration::MAX` itself: see the ignored test below.)
    let (t, c) = (token.clone(), rt.clone());
    let canceller = rt.spawn(async move {
        c.sleep(HOUR).await;
        t.cancel("an hour is enough");
    });
    let runs = Arc::new(AtomicUsize::new(0));
    let r = runs.clone();
    let t0 = rt.now();
    let fut = periodic(rt.clone(), MAX_NS, MissedTicks::Burst, &token, move |_| {
        r.fetch_add(1, SeqCst);
        async {}
    })
    .expect("u64::MAX ns is a period");
    let reason = within(&rt, 2 * HOUR, "periodic(u64::MAX ns)", fut).await;
    canceller.await.unwrap();
    assert_eq!(reason.as_str(), "an hour is enough");
    assert_eq!((rt.now() - t0, runs.load(SeqCst)), (HOUR, 0));

    // A 1 ns period with 1 s runs: every run overruns, the next starts at once; the one in
    // progress at the cancel is stopped mid-way (its future dropped).
    let token = CancellationToken::new();
    let (t, c) = (token.clone(), rt.clone());
    let canceller = rt.spawn(async move {
        c.sleep(10 * SEC).await;
        t.cancel("ten seconds");
    });
    let (started, finished, dropped) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let (s, f, d, c) = (
        started.clone(),
        finished.clone(),
        dropped.clone(),
        rt.clone(),
    );
    let fut = periodic(
        rt.clone(),
        Duration::from_nanos(1),
        MissedTicks::Skip,
        &token,
        move |_| {
            s.fetch_add(1, SeqCst);
            let (f, guard, c) = (f.clone(), OnDrop(d.clone()), c.clone());
            async move {
                let _guard = guard;
                c.sleep(SEC).await;
                f.fetch_add(1, SeqCst);
            }
        },
    )
    .unwrap();
    let reason = within(&rt, HOUR, "periodic(1ns)", fut).await;
    canceller.await.unwrap();
    assert_eq!(reason.as_str(), "ten seconds");
    assert_eq!(
        (
            started.load(SeqCst),
            finished.load(SeqCst),
            dropped.load(SeqCst)
        ),
        (10, 9, 10),
        "runs started, finished, dropped"
    );
}

#[test]
fn periodic_period_extremes_on_every_runtime() {
    on_every_runtime!(periodic_extremes);
}

// Docs (`periodic`, `# Errors`): "`ConfigError::Zero` for a zero period;
// `ConfigError::DurationOverflow` for one beyond `u64::MAX` nanoseconds";
// (`HealthCheckerBuilder::start`) the same for a period or timeout. A black-box round found
// the overflow undocumented; the docs now name it, and the largest accepted period works.
#[test]
fn periodic_and_health_checks_refuse_periods_past_u64_nanoseconds_as_documented() {
    common::on_tokio_current_thread(|rt| async move {
        let token = CancellationToken::new();
        let refused = periodic(
            rt.clone(),
            Duration::MAX,
            MissedTicks::Skip,
            &token,
            |_| async {},
        )
        .map(drop);
        assert_eq!(
            refused,
            Err(ConfigError::DurationOverflow { field: "period" })
        );
        for (period, timeout, field) in [
            (Duration::MAX, SEC, "period"),
            (SEC, Duration::MAX, "timeout"),
        ] {
            let started = HealthChecker::builder()
                .period(period)
                .timeout(timeout)
                .runtime(rt.clone())
                .start(&token, || async { Ok::<(), String>(()) })
                .map(drop);
            assert_eq!(
                started,
                Err(ConfigError::DurationOverflow { field }),
                "{period:?} {timeout:?}"
            );
        }
        // The largest period accepted: work that never comes due, stopped by its token.
        let (t, c) = (token.clone(), rt.clone());
        rt.spawn(async move {
            c.sleep(HOUR).await;
            t.cancel("an hour is enough");
        });
        let fut = periodic(
            rt.clone(),
            Duration::from_nanos(u64::MAX),
            MissedTicks::Skip,
            &token,
            |_| async {},
        )
        .expect("u64::MAX nanoseconds fits");
        assert_eq!(fut.await.as_str(), "an hour is enough");
    });
}

// Docs (`periodic`): "A run that panics is not caught: the panic leaves this future and the
// schedule ends (spawned, its task reports the panic; supervised, it is a crashed child)";
// (`SupervisorEvent::Exited::exit`) "its panic's message".
#[tokio::test(start_paused = true)]
async fn a_panicking_periodic_run_crashes_its_supervised_child_which_is_restarted() {
    let events = Events::default();
    let stop = CancellationToken::new();
    let (log, s) = (events.hook(), stop.clone());
    let t0 = tokio::time::Instant::now();
    let crash_at: Arc<Mutex<Option<Duration>>> = Arc::default();
    let ca = crash_at.clone();
    let sup = Supervisor::builder()
        .intensity(10, HOUR)
        .on_event(move |e| {
            log(e);
            if let SupervisorEvent::Exited { .. } = e {
                ca.lock().unwrap().get_or_insert(t0.elapsed());
            }
            if matches!(e, SupervisorEvent::Started { run: 2, .. }) {
                s.cancel("restarted once");
            }
        })
        .child(ChildSpec::new(
            "ticker",
            |stop: CancellationToken| async move {
                let mut n = 0;
                let reason = periodic(Tokio, SEC, MissedTicks::Skip, &stop, |_| {
                    n += 1;
                    let n = n;
                    async move { assert!(n != 3, "tick {n} panics") }
                })
                .map_err(|e| e.to_string())?
                .await;
                drop(reason);
                Ok::<(), String>(())
            },
        ))
        .build()
        .unwrap();
    sup.run(stop).await.unwrap();
    let exits: Vec<Exit> = events
        .all()
        .into_iter()
        .filter_map(|e| match e {
            SupervisorEvent::Exited { exit, .. } => Some(exit),
            _ => None,
        })
        .collect();
    assert_eq!(exits, [Exit::Panicked("tick 3 panics".to_owned())]);
    assert_eq!(*crash_at.lock().unwrap(), Some(3 * SEC));
    assert_eq!(events.starts("ticker"), [1, 2]);
}

// Docs (`HealthChecker`): "the first probe starts as soon as the checker's future is first
// polled ...; later probes start at `first + k × period`. Probes never overlap: a probe that
// overruns ticks (it can, when the timeout is longer than the period) is followed at once by
// one late probe, and the other overrun ticks are dropped (`MissedTicks::Skip`) ... Each
// finished probe publishes its verdict with the instant it finished".
async fn health_overrun<R: Runtime>(rt: Clocked<R>) {
    let token = CancellationToken::new();
    let starts: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let (st, c) = (starts.clone(), rt.clone());
    let t0 = rt.now();
    let calls = Arc::new(AtomicU32::new(0));
    let (health, checker) = HealthChecker::builder()
        .period(ms(5_000))
        .timeout(ms(12_500))
        .runtime(rt.clone())
        .start(&token, move || {
            st.lock().unwrap().push(c.now() - t0);
            let first = calls.fetch_add(1, SeqCst) == 0;
            async move {
                if first {
                    std::future::pending::<()>().await;
                }
                Ok::<(), String>(())
            }
        })
        .unwrap();
    let run = rt.spawn(checker);
    rt.sleep(ms(12_000)).await;
    assert_eq!(health.latest(), (Health::Unknown, None));
    rt.sleep(ms(9_000)).await;
    token.cancel("bye");
    assert_eq!(run.await.unwrap().as_str(), "bye");
    assert_eq!(
        *starts.lock().unwrap(),
        [ms(0), ms(12_500), ms(15_000), ms(20_000)]
    );
    assert_eq!(health.latest(), (Health::Healthy, Some(t0 + ms(20_000))));
}

#[test]
fn a_health_probe_overrunning_its_period_is_followed_by_one_late_probe_on_every_runtime() {
    on_every_runtime!(health_overrun);
}

// ================================================================================================
// Blocking offload
// ================================================================================================

/// Spins (bounded by iterations, not time) until the flag is raised; `true` if it was.
fn spin_until(flag: &CancelFlag) -> bool {
    for _ in 0..20_000_000u64 {
        if flag.is_cancelled() {
            return true;
        }
        std::thread::yield_now();
    }
    false
}

// Docs (`BlockingTask`): "Dropping the handle (e.g. because the awaiting future was itself
// cancelled or timed out) raises the flag too"; (`spawn_blocking_cancellable`) "dropping the
// returned task (or the future awaiting it) raises the flag"; (`BlockingTask::cancel`) "Asks
// the work to stop (it sees the flag at its next check)".
async fn blocking_flags<R: Runtime>(rt: Clocked<R>) {
    use futures_channel::oneshot;
    // Dropped outright.
    let (started_tx, started) = oneshot::channel::<()>();
    let (done_tx, done) = oneshot::channel::<bool>();
    let task = spawn_blocking_cancellable(&rt, move |flag| {
        let _ = started_tx.send(());
        let _ = done_tx.send(spin_until(&flag));
        7u32
    });
    started.await.unwrap();
    drop(task);
    assert!(
        done.await.unwrap(),
        "dropping the task did not raise the flag"
    );

    // Cancelled, then awaited: the work's own early result comes back.
    let (started_tx, started) = oneshot::channel::<()>();
    let task = spawn_blocking_cancellable(&rt, move |flag| {
        let _ = started_tx.send(());
        if spin_until(&flag) {
            "stopped early"
        } else {
            "never told"
        }
    });
    started.await.unwrap();
    task.cancel();
    assert_eq!(task.await.unwrap(), "stopped early");

    // The future awaiting it dropped after one poll.
    let (started_tx, started) = oneshot::channel::<()>();
    let (done_tx, done) = oneshot::channel::<bool>();
    let task = spawn_blocking_cancellable(&rt, move |flag| {
        let _ = started_tx.send(());
        let _ = done_tx.send(spin_until(&flag));
    });
    started.await.unwrap();
    let awaiting = async move { task.await.is_ok() };
    assert!(poll_limit(awaiting, 0).await.is_none());
    assert!(
        done.await.unwrap(),
        "dropping the awaiting future did not raise the flag"
    );
}

#[test]
fn dropping_or_cancelling_blocking_work_raises_its_flag_on_every_runtime() {
    on_every_runtime!(blocking_flags);
}
