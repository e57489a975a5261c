//! Hostile black-box tests of `tidewall::task` as a user composes it in one service session:
//! scopes inside supervisors inside a shutdown coordinator, reasons through parent and child
//! tokens, children *lost* by a runtime that shuts down (a child spawned on a second tokio
//! runtime that is then dropped), zero and maximal timeouts, restart intensity exactly at the
//! window's edge, idle gaps of hours and years, thousands of waiters and producers dropped at
//! seeded-random points, and every report field the docs define.
//!
//! Written from the public docs only. Every assertion quotes the doc sentence it checks.
//! Time is virtual (`tidewall::testing::Clocked`, or paused tokio); randomness is a seeded
//! `SplitMix64`; scenarios documented to run "on any runtime" run on every adapter.
#![cfg(all(
    feature = "tokio",
    feature = "smol",
    feature = "async-std",
    feature = "test-util"
))]
#![allow(clippy::too_many_lines, clippy::cast_possible_truncation)]

mod common;
#[path = "common/hang.rs"]
mod hang;

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use common::ms;
use tidewall::rt::{AsyncStd, Clock, Runtime, SmolRuntime, Spawn, TaskHandle, Tokio};
use tidewall::stream::MissedTicks;
use tidewall::task::pool::{SubmitError, WorkerPool};
use tidewall::task::scope::{ChildId, FailurePolicy, Scope};
use tidewall::task::shutdown::{Cause, Shutdown};
use tidewall::task::supervisor::{
    ChildSpec, Ended, Restart, Strategy, Supervisor, SupervisorEvent,
};
use tidewall::task::{CancellationToken, Ending, Exit, Health, HealthChecker, Reason, periodic};
use tidewall::testing::Clocked;
use tidewall::time::Elapsed;
use tidewall::{Backoff, ConfigError, FutureExt as _, Jitter};
use tidewall_core::rng::SplitMix64;

const SEC: Duration = Duration::from_secs(1);
const MIN: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3_600);
const DAY: Duration = Duration::from_secs(86_400);
const YEAR: Duration = Duration::from_secs(365 * 86_400);
/// The longest duration the builders accept: `u64::MAX` nanoseconds (about 584 years).
const MAX_NS: Duration = Duration::from_nanos(u64::MAX);
const NS: Duration = Duration::from_nanos(1);

type BoxFut<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Awaits `fut`, failing (instead of hanging) if it takes longer than `limit` of virtual time.
async fn within<R: Clock, F: Future>(rt: &R, limit: Duration, what: &str, fut: F) -> F::Output {
    match fut.timeout_on(rt, limit).await {
        Ok(out) => out,
        Err(_) => panic!("{what}: not done within {limit:?} of virtual time"),
    }
}

fn pick(rng: &mut SplitMix64, low: u64, high: u64) -> u64 {
    rng.between(low, high)
}

/// A constant backoff without jitter that never runs out.
fn fixed(delay: Duration) -> Backoff {
    Backoff::constant(delay)
        .jitter(Jitter::None)
        .max_attempts(u32::MAX)
        .max_delay(delay.max(SEC))
        .build()
        .unwrap()
}

fn explode(message: &str) -> Result<(), String> {
    panic!("{message}")
}

/// Sets its flag when dropped: tells whether a future was dropped (aborted or lost).
struct OnDrop(Arc<AtomicBool>);
impl Drop for OnDrop {
    fn drop(&mut self) {
        self.0.store(true, SeqCst);
    }
}

/// A report's tasks as comparable tuples (`TaskReport` is non-exhaustive).
fn tasks(list: &[tidewall::task::TaskReport]) -> Vec<(String, Exit, Ending)> {
    list.iter()
        .map(|t| (t.name.to_string(), t.exit.clone(), t.ending))
        .collect()
}

/// Supervisor events with the virtual time since `start` each came at.
type Log = Arc<Mutex<Vec<(Duration, SupervisorEvent)>>>;

fn recorder<R: Clock>(rt: &R) -> (Log, impl Fn(&SupervisorEvent) + Send + Sync + 'static) {
    let log: Log = Arc::default();
    let (sink, rt, start) = (Arc::clone(&log), rt.clone(), rt.now());
    (log, move |event: &SupervisorEvent| {
        sink.lock().unwrap().push((rt.now() - start, event.clone()));
    })
}

fn events(log: &Log) -> Vec<SupervisorEvent> {
    log.lock().unwrap().iter().map(|(_, e)| e.clone()).collect()
}

fn restarting(log: &Log) -> Vec<(Duration, Arc<str>, Duration, u32)> {
    log.lock()
        .unwrap()
        .iter()
        .filter_map(|(at, e)| match e {
            SupervisorEvent::Restarting {
                child,
                delay,
                restarts_in_period,
            } => Some((*at, child.clone(), *delay, *restarts_in_period)),
            _ => None,
        })
        .collect()
}

fn started_runs(log: &Log, name: &str) -> Vec<u64> {
    log.lock()
        .unwrap()
        .iter()
        .filter_map(|(_, e)| match e {
            SupervisorEvent::Started { child, run } if &**child == name => Some(*run),
            _ => None,
        })
        .collect()
}

// ================================================================================================
// A runtime that loses tasks: `Lossy<R>` runs every task on `R`, except those it is armed to
// divert, which go to a second (tokio) runtime that the scenario can drop. A task dropped
// unfinished that way is what the docs call "lost by its runtime".
// ================================================================================================

const LOST_THREAD: &str = "tw-lossy-runtime";

#[derive(Debug)]
struct LossState {
    handle: tokio::runtime::Handle,
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
    divert: AtomicUsize,
}

impl Drop for LossState {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.get_mut().unwrap().take() {
            rt.shutdown_background();
        }
    }
}

#[derive(Debug, Clone)]
struct Lossy<R> {
    inner: R,
    loss: Arc<LossState>,
}

impl<R> Lossy<R> {
    fn new(inner: R) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(LOST_THREAD)
            .enable_all()
            .build()
            .unwrap();
        let handle = runtime.handle().clone();
        Self {
            inner,
            loss: Arc::new(LossState {
                handle,
                runtime: Mutex::new(Some(runtime)),
                divert: AtomicUsize::new(0),
            }),
        }
    }
    /// The next spawn goes to the second runtime.
    fn arm(&self) {
        self.loss.divert.fetch_add(1, SeqCst);
    }
    fn armed(&self) -> usize {
        self.loss.divert.load(SeqCst)
    }
    /// Drops the second runtime, and with it every task on it, unfinished; returns once they
    /// are all gone.
    fn lose_everything(&self) {
        let rt = self
            .loss
            .runtime
            .lock()
            .unwrap()
            .take()
            .expect("the second runtime is lost once");
        std::thread::spawn(move || drop(rt)).join().unwrap();
    }
}

fn on_lost_runtime() -> bool {
    std::thread::current().name() == Some(LOST_THREAD)
}

impl<R: Clock> Clock for Lossy<R> {
    type Sleep = R::Sleep;
    fn now(&self) -> Instant {
        self.inner.now()
    }
    fn sleep_until(&self, deadline: Instant) -> Self::Sleep {
        self.inner.sleep_until(deadline)
    }
}

enum Either<A, B> {
    Kept(A),
    Lost(B),
}

impl<A: Future + Unpin, B: Future<Output = A::Output> + Unpin> Future for Either<A, B> {
    type Output = A::Output;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<A::Output> {
        match self.get_mut() {
            Either::Kept(a) => Pin::new(a).poll(cx),
            Either::Lost(b) => Pin::new(b).poll(cx),
        }
    }
}

impl<T: Send + 'static, A: TaskHandle<T>, B: TaskHandle<T>> TaskHandle<T> for Either<A, B> {
    fn abort(&self) {
        match self {
            Either::Kept(a) => a.abort(),
            Either::Lost(b) => b.abort(),
        }
    }
}

impl<R: Spawn> Spawn for Lossy<R> {
    type JoinHandle<T: Send + 'static> =
        Either<R::JoinHandle<T>, tidewall::rt::JoinHandle<Tokio, T>>;

    fn spawn<F>(&self, future: F) -> Self::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let divert = self
            .loss
            .divert
            .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if divert {
            let _on_second = self.loss.handle.enter();
            Either::Lost(Tokio.spawn(future))
        } else {
            Either::Kept(self.inner.spawn(future))
        }
    }

    fn spawn_blocking<W, T>(&self, work: W) -> Self::JoinHandle<T>
    where
        W: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        Either::Kept(self.inner.spawn_blocking(work))
    }
}

fn lossy_tokio_multi_thread<F: Future>(
    scenario: impl FnOnce(Clocked<Lossy<Tokio>>) -> F,
) -> F::Output {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let rt = Clocked::new(Lossy::new(Tokio));
    runtime.block_on(rt.drive(scenario(rt.clone())))
}

fn lossy_tokio_current_thread<F: Future>(
    scenario: impl FnOnce(Clocked<Lossy<Tokio>>) -> F,
) -> F::Output {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let rt = Clocked::new(Lossy::new(Tokio));
    runtime.block_on(rt.drive(scenario(rt.clone())))
}

fn lossy_smol_multi_thread<F: Future>(
    scenario: impl FnOnce(Clocked<Lossy<tidewall::rt::Smol>>) -> F,
) -> F::Output {
    let runtime = SmolRuntime::multi_threaded(2).unwrap();
    let rt = Clocked::new(Lossy::new(runtime.handle()));
    runtime.block_on(rt.drive(scenario(rt.clone())))
}

fn lossy_smol_single_thread<F: Future>(
    scenario: impl FnOnce(Clocked<Lossy<tidewall::rt::Smol>>) -> F,
) -> F::Output {
    let runtime = SmolRuntime::single_threaded();
    let rt = Clocked::new(Lossy::new(runtime.handle()));
    runtime.block_on(rt.drive(scenario(rt.clone())))
}

fn lossy_async_std<F: Future>(scenario: impl FnOnce(Clocked<Lossy<AsyncStd>>) -> F) -> F::Output {
    let rt = Clocked::new(Lossy::new(AsyncStd));
    async_std::task::block_on(rt.drive(scenario(rt.clone())))
}

/// Runs `$scenario` (a generic `async fn(rt: Clocked<Lossy<R>>)`) with every adapter as the
/// main runtime.
macro_rules! on_every_lossy_runtime {
    ($scenario:expr) => {{
        lossy_tokio_multi_thread(|rt| $scenario(rt));
        lossy_tokio_current_thread(|rt| $scenario(rt));
        lossy_smol_multi_thread(|rt| $scenario(rt));
        lossy_smol_single_thread(|rt| $scenario(rt));
        lossy_async_std(|rt| $scenario(rt));
    }};
}

// ================================================================================================
// Cancellation tokens with reasons
// ================================================================================================

/// A waker that, when woken by a cancel, re-enters the token: cancels it again, makes a child,
/// reads the reason, and drops other registered waiters.
struct Reentrant {
    token: CancellationToken,
    born: Mutex<Vec<CancellationToken>>,
    victims: Mutex<Vec<Pin<Box<tidewall::task::CancelledOwned>>>>,
    woken: AtomicUsize,
}

impl Wake for Reentrant {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.fetch_add(1, SeqCst);
        self.token.cancel("again, from inside a waker");
        let kid = self.token.child();
        kid.cancel("a kid born in a waker");
        let _ = self.token.reason();
        self.born.lock().unwrap().push(kid);
        // Dropping other waiters of the token being cancelled, from inside its wake-up.
        self.victims.lock().unwrap().clear();
    }
}

// Docs (`CancellationToken`): "cancel it once, with a Reason; everything waiting on it, and
// every child token, sees the cancellation and the same reason"; "The first cancellation wins:
// later `cancel` calls do not replace the reason"; (`child`) "A child: cancelled when this
// token is (with its reason)"; (`cancelled`) "Cancel safety: dropping the future unregisters
// it; nothing else happens". Wakers that re-enter the token (cancel it again, make a child,
// drop sibling waiters) as the cancel wakes them must neither deadlock nor change the reason.
#[test]
fn wakers_that_reenter_the_token_during_its_cancel_neither_deadlock_nor_change_the_reason() {
    hang::without_hanging("re-entrant wakers", || {
        let root = CancellationToken::new();
        let mid = root.child();
        let leaf = mid.child();
        let mut pending = Vec::new();
        let mut wakers = Vec::new();
        for (i, token) in [&root, &mid, &leaf]
            .into_iter()
            .cycle()
            .take(300)
            .enumerate()
        {
            let hook = Arc::new(Reentrant {
                token: token.clone(),
                born: Mutex::default(),
                victims: Mutex::new(
                    (0..3)
                        .map(|_| Box::pin([&root, &mid, &leaf][i % 3].cancelled_owned()))
                        .collect(),
                ),
                woken: AtomicUsize::new(0),
            });
            {
                let mut victims = hook.victims.lock().unwrap();
                // Its waker re-enters the token these victims wait on (re-entering another
                // token of the tree would cancel that one on its own, first: "cancellable on
                // its own").
                let waker = Waker::from(Arc::new(Reentrant {
                    token: token.clone(),
                    born: Mutex::default(),
                    victims: Mutex::default(),
                    woken: AtomicUsize::new(0),
                }));
                for v in victims.iter_mut() {
                    assert!(
                        v.as_mut()
                            .poll(&mut Context::from_waker(&waker))
                            .is_pending()
                    );
                }
            }
            let mut fut = Box::pin(token.cancelled_owned());
            let waker = Waker::from(hook.clone());
            assert!(
                fut.as_mut()
                    .poll(&mut Context::from_waker(&waker))
                    .is_pending(),
                "not cancelled yet"
            );
            pending.push(fut);
            wakers.push(hook);
        }
        let canceller = {
            let root = root.clone();
            std::thread::spawn(move || root.cancel("first"))
        };
        canceller.join().unwrap();
        let first = Reason::new("first");
        for token in [&root, &mid, &leaf] {
            // "The first cancellation wins: later `cancel` calls do not replace the reason"
            assert_eq!(token.reason(), Some(first.clone()));
        }
        let noop = Waker::noop();
        for fut in &mut pending {
            // "everything waiting on it ... sees the cancellation and the same reason"
            match fut.as_mut().poll(&mut Context::from_waker(noop)) {
                Poll::Ready(reason) => assert_eq!(reason, first),
                Poll::Pending => panic!("a waiter did not see the cancel"),
            }
        }
        for hook in &wakers {
            assert!(
                hook.woken.load(SeqCst) >= 1,
                "a registered waiter was never woken"
            );
            for kid in hook.born.lock().unwrap().iter() {
                // "A child: cancelled when this token is (with its reason)"
                assert_eq!(kid.reason(), Some(first.clone()), "a child made in a waker");
            }
        }
    });
}

// Docs (`CancellationToken::child`): "A child: cancelled when this token is (with its reason),
// cancellable on its own"; (`CancellationToken`) "child tokens are cancelled with their parent
// (with the parent's reason)". Children and grandchildren made on other threads while the
// parent is being cancelled must all end up cancelled with the parent's reason, whichever side
// of the cancel they were made on.
#[test]
fn children_made_while_the_parent_is_being_cancelled_all_end_cancelled_with_its_reason() {
    hang::without_hanging("children racing a cancel", || {
        let mut rng = SplitMix64::new(0x5E55_1011);
        for round in 0..150 {
            let root = CancellationToken::new();
            let parent = root.child();
            let makers = 1 + pick(&mut rng, 0, 3) as usize;
            let per_maker = 20 + pick(&mut rng, 0, 200) as usize;
            let cancel_after = pick(&mut rng, 0, 50) as usize;
            let made: Vec<CancellationToken> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..makers)
                    .map(|_| {
                        let parent = parent.clone();
                        s.spawn(move || {
                            let mut kids = Vec::new();
                            for i in 0..per_maker {
                                let kid = parent.child();
                                if i % 3 == 0 {
                                    kids.push(kid.child());
                                }
                                kids.push(kid);
                            }
                            kids
                        })
                    })
                    .collect();
                for _ in 0..cancel_after {
                    std::hint::spin_loop();
                }
                root.cancel(format!("round {round}"));
                handles
                    .into_iter()
                    .flat_map(|h| h.join().unwrap())
                    .collect()
            });
            let want = Reason::new(format!("round {round}"));
            assert_eq!(parent.reason(), Some(want.clone()));
            for kid in &made {
                assert!(
                    kid.is_cancelled(),
                    "round {round}: a child escaped the cancel"
                );
                assert_eq!(kid.reason(), Some(want.clone()), "round {round}");
                assert!(kid.has_parent());
            }
        }
    });
}

// Docs (`CancellationToken::cancelled`): "Cancel safety: dropping the future unregisters it;
// nothing else happens"; (`CancellationToken`) "everything waiting on it, and every child
// token, sees the cancellation and the same reason"; (task module) "Every piece runs on any
// Runtime". Four thousand waiters, on the token and on children of it, each with a seeded
// patience: those whose patience ends first are dropped; every other one gets the reason at
// the instant of the cancel.
async fn thousands_of_waiters<R: Runtime>(rt: Clocked<R>) {
    let mut rng = SplitMix64::new(0xD20_9ED);
    let root = CancellationToken::new();
    let kids: Vec<CancellationToken> = (0..50).map(|_| root.child()).collect();
    let cancel_at = ms(500);
    let t0 = rt.now();
    let mut waiters = Vec::new();
    for i in 0..4_000u64 {
        // Patience in 1..=999 ms, never exactly the cancel instant.
        let mut patience = pick(&mut rng, 1, 999);
        if patience == 500 {
            patience = 501;
        }
        let token = if i % 2 == 0 {
            root.clone()
        } else {
            kids[(i % 50) as usize].clone()
        };
        let owned = i % 3 == 0;
        let c = rt.clone();
        waiters.push((
            patience,
            rt.spawn(async move {
                let wait: BoxFut<Reason> = if owned {
                    Box::pin(token.cancelled_owned())
                } else {
                    Box::pin(async move { token.cancelled().await })
                };
                let out = wait.timeout_on(&c, ms(patience)).await;
                (out, c.now())
            }),
        ));
    }
    // Half the children are dropped before the cancel: their parent must not mind.
    drop(kids);
    rt.sleep(cancel_at).await;
    root.cancel("maintenance");
    let (mut woke, mut gave_up) = (0, 0);
    for (patience, handle) in waiters {
        let (out, at) = within(&rt, HOUR, "a waiter", handle).await.unwrap();
        if patience < 500 {
            assert_eq!(out, Err(Elapsed), "patience {patience}: it gave up first");
            assert_eq!(at - t0, ms(patience));
            gave_up += 1;
        } else {
            // "everything waiting on it ... sees the cancellation and the same reason"
            assert_eq!(out, Ok(Reason::new("maintenance")), "patience {patience}");
            assert_eq!(at - t0, cancel_at, "woken at the cancel");
            woke += 1;
        }
    }
    assert!(
        woke > 1_000 && gave_up > 1_000,
        "vacuous: {woke} woke, {gave_up} gave up"
    );
}

#[test]
fn thousands_of_waiters_dropped_at_random_leave_the_rest_woken_with_the_reason_on_every_runtime() {
    on_every_runtime!(thousands_of_waiters);
}

struct PanicsIfPolled;
impl Future for PanicsIfPolled {
    type Output = u32;
    fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<u32> {
        panic!("polled after the token was cancelled")
    }
}

// Docs (`CancellationToken::run_until_cancelled`): "The token is checked before every poll of
// `future`, so it stops even a future that is always ready; it is never polled again after
// the cancellation is seen"; (`RunUntilCancelled`) "`Ok(output)`, or `Err(reason)` if the
// token was cancelled first"; (`drop_guard`) "A guard that cancels the token (with reason
// "dropped") when dropped, unless disarmed"; "The first cancellation wins".
#[test]
fn a_cancelled_token_never_polls_the_wrapped_future_and_drop_guards_keep_the_first_reason() {
    let noop = Waker::noop();
    let mut cx = Context::from_waker(noop);

    let root = CancellationToken::new();
    let grandchild = root.child().child();
    root.cancel("closed for the night");
    let mut run = Box::pin(grandchild.run_until_cancelled(PanicsIfPolled));
    match run.as_mut().poll(&mut cx) {
        Poll::Ready(Err(reason)) => assert_eq!(reason.as_str(), "closed for the night"),
        other => panic!("expected the parent's reason, got {other:?}"),
    }

    // A guard dropped after an explicit cancel does not replace the reason.
    let token = CancellationToken::new();
    let watcher = token.child();
    let guard = token.clone().drop_guard();
    token.cancel("explicit");
    drop(guard);
    assert_eq!(watcher.reason().unwrap().as_str(), "explicit");

    // A guard dropped with nothing before it cancels with "dropped", through to children.
    let token = CancellationToken::new();
    let watcher = token.child().child();
    let mut waiting = Box::pin(watcher.cancelled_owned());
    assert!(waiting.as_mut().poll(&mut cx).is_pending());
    drop(token.drop_guard());
    assert_eq!(watcher.reason().unwrap().as_str(), "dropped");
    assert!(matches!(waiting.as_mut().poll(&mut cx), Poll::Ready(r) if r.as_str() == "dropped"));

    // Disarmed: the token comes back uncancelled.
    let token = CancellationToken::new();
    let kid = token.child();
    let back = token.drop_guard().disarm();
    assert!(!back.is_cancelled() && !kid.is_cancelled());
    back.cancel("later");
    assert_eq!(kid.reason().unwrap().as_str(), "later");
}

// ================================================================================================
// Scopes whose children are lost by their runtime
// ================================================================================================

/// A child, spawned on the second runtime, that records where it ran and then waits for the
/// token (or for ever, when `deaf`).
#[allow(
    clippy::manual_async_fn,
    reason = "the bounds say what a spawn on the second runtime needs"
)]
fn lost_child<T: Send + 'static, E: Send + 'static>(
    ran_there: Arc<AtomicBool>,
    token: CancellationToken,
    deaf: bool,
    value: T,
) -> impl Future<Output = Result<T, E>> + Send + 'static {
    async move {
        ran_there.store(on_lost_runtime(), SeqCst);
        if deaf {
            std::future::pending::<()>().await;
        }
        token.cancelled().await;
        Ok(value)
    }
}

// Docs (`Exit::is_failure`): "Whether it failed: returned `Err` or panicked. `Ok` and `Aborted`
// are not failures. This is what a `FailurePolicy::FailFast` scope stops on"; (`Exit::Aborted`)
// "It was stopped before it ended: ... or lost by its runtime (its task dropped unfinished)";
// (`Ending::Aborted`) "or (with `took` zero) its task was lost by its runtime before it was
// told to stop"; (`ScopeReport::aborted`) "Children aborted after the grace period, or lost by
// their runtime (it shut down)"; (`Scope::next`) "The next child to end, in completion order";
// (`ScopeReport::children`) "Reports not yet taken with `next`"; (`ScopeReport`) "counts over
// the scope's whole life"; (`is_balanced`) "spawned = succeeded + failed + panicked + aborted".
async fn lost_child_does_not_fail_fast<R: Runtime>(rt: Clocked<Lossy<R>>) {
    let mut scope = Scope::builder()
        .runtime(rt.clone())
        .build::<u32, String>()
        .unwrap();
    let token = scope.token();
    let ran_there = Arc::new(AtomicBool::new(false));
    rt.inner().arm();
    let lost = scope
        .try_spawn(lost_child(ran_there.clone(), token.clone(), false, 0))
        .unwrap();
    assert_eq!(rt.inner().armed(), 0, "try_spawn spawned no task at once");
    let (c, t) = (rt.clone(), token.clone());
    let sibling = scope
        .try_spawn(async move {
            c.sleep(ms(100)).await;
            match t.reason() {
                Some(r) => Err(format!("the sibling saw the scope cancelled: {r}")),
                None => Ok(1),
            }
        })
        .unwrap();
    rt.sleep(ms(10)).await;
    assert!(
        ran_there.load(SeqCst),
        "vacuous: the child never ran on the second runtime"
    );
    rt.inner().lose_everything();

    let first = within(&rt, HOUR, "the lost child's report", scope.next())
        .await
        .expect("a report");
    assert_eq!(first.id, lost, "the lost child ended first");
    assert!(matches!(first.exit, Exit::Aborted), "{:?}", first.exit);
    assert_eq!(
        first.ending,
        Ending::Aborted {
            took: Duration::ZERO
        },
        "lost before it was told to stop"
    );
    assert!(
        !token.is_cancelled(),
        "an Aborted exit is not a failure: the fail-fast scope must not stop on it"
    );
    let report = within(&rt, HOUR, "join", scope.join()).await;
    assert_eq!(report.children.len(), 1);
    assert_eq!(report.children[0].id, sibling);
    assert!(matches!(report.children[0].exit, Exit::Ok(1)), "{report:?}");
    assert_eq!(report.children[0].ending, Ending::Finished);
    assert_eq!(
        (
            report.spawned,
            report.succeeded,
            report.failed,
            report.panicked,
            report.aborted
        ),
        (2, 1, 0, 0, 1),
        "{report:?}"
    );
    assert!(report.is_balanced());
    assert_eq!(report.cancel_reason, None);
    assert_eq!(report.first_failure, None);
}

#[test]
fn a_child_lost_by_its_runtime_reads_aborted_with_zero_took_and_does_not_fail_fast_on_every_runtime()
 {
    on_every_lossy_runtime!(lost_child_does_not_fail_fast);
}

// Docs (`ScopeReport::first_failure`): "The child whose failure failed the scope fast, if one
// did"; (`FailurePolicy::FailFast`) "The first failure cancels the scope with a reason naming
// the child"; (`Scope` example) cancel reason "child #3 returned an error"; (`ChildReport`)
// endings timed "exact for ... a fail-fast failure"; (`Ending::Stopped`) "It ended after it was
// told to stop, within its grace period". A lost child before the failure changes none of it.
async fn fail_fast_after_a_loss<R: Runtime>(rt: Clocked<Lossy<R>>) {
    let scope = Scope::builder()
        .runtime(rt.clone())
        .grace(HOUR)
        .build::<u32, String>()
        .unwrap();
    let token = scope.token();
    let ran_there = Arc::new(AtomicBool::new(false));
    rt.inner().arm();
    scope
        .try_spawn(lost_child(ran_there.clone(), token.clone(), true, 0))
        .unwrap();
    let mut ids = Vec::new();
    for (n, fails_at) in [
        (1u32, None),
        (2, Some(ms(300))),
        (3, Some(ms(900))),
        (4, None),
    ] {
        let (c, t) = (rt.clone(), token.clone());
        ids.push(
            scope
                .try_spawn(async move {
                    match fails_at {
                        Some(at) => match t.run_until_cancelled(c.sleep(at)).await {
                            Ok(()) => Err(format!("child {n} failed")),
                            Err(_) => {
                                c.sleep(ms(40)).await;
                                Ok(n)
                            }
                        },
                        None => {
                            t.cancelled().await;
                            c.sleep(ms(25) * n).await;
                            Ok(n)
                        }
                    }
                })
                .unwrap(),
        );
    }
    rt.sleep(ms(100)).await;
    assert!(
        ran_there.load(SeqCst),
        "vacuous: nothing ran on the second runtime"
    );
    rt.inner().lose_everything();
    let t0 = rt.now();
    let report = within(&rt, HOUR, "join", scope.join()).await;
    // The failure at 300 ms (200 ms after t0); the slowest sibling stops 100 ms after it.
    assert_eq!(
        rt.now() - t0,
        ms(300),
        "join ended when the last sibling stopped"
    );
    assert_eq!(report.first_failure, Some(ids[1]), "{report:?}");
    assert_eq!(
        report.cancel_reason.as_ref().map(Reason::as_str),
        Some(format!("child #{} returned an error", ids[1].index()).as_str())
    );
    assert_eq!(
        (
            report.spawned,
            report.succeeded,
            report.failed,
            report.aborted
        ),
        (5, 3, 1, 1),
        "{report:?}"
    );
    assert!(report.is_balanced());
    for child in &report.children {
        match child.id.index() {
            0 => {
                assert!(matches!(child.exit, Exit::Aborted));
                assert_eq!(
                    child.ending,
                    Ending::Aborted {
                        took: Duration::ZERO
                    }
                );
            }
            1 => assert!(
                matches!(child.exit, Exit::Ok(1))
                    && child.ending == Ending::Stopped { took: ms(25) },
                "{child:?}"
            ),
            2 => assert!(
                matches!(child.exit, Exit::Err(ref e) if e == "child 2 failed")
                    && child.ending == Ending::Finished,
                "{child:?}"
            ),
            3 => assert!(
                matches!(child.exit, Exit::Ok(3))
                    && child.ending == Ending::Stopped { took: ms(40) },
                "{child:?}"
            ),
            4 => assert!(
                matches!(child.exit, Exit::Ok(4))
                    && child.ending == Ending::Stopped { took: ms(100) },
                "{child:?}"
            ),
            other => panic!("child {other}?"),
        }
    }
}

#[test]
fn fail_fast_after_a_lost_child_names_the_failing_child_and_times_each_stop_on_every_runtime() {
    on_every_lossy_runtime!(fail_fast_after_a_loss);
}

// Docs (`Scope::shutdown`): "waits up to `grace` ... for the children to stop, aborts the rest,
// and waits until the aborted tasks are gone"; (`Scope::join`) "Waits for every child";
// (`ChildReport::exit`) "or its task was dropped unfinished (its runtime shut down)";
// (`ScopeReport::aborted`) "or lost by their runtime (it shut down)". A deaf child lost ten
// minutes into an hour-long grace has ended: nothing is left to wait for.
async fn lost_during_grace<R: Runtime>(rt: Clocked<Lossy<R>>) {
    let scope = Scope::builder()
        .runtime(rt.clone())
        .build::<u32, ()>()
        .unwrap();
    let token = scope.token();
    let ran_there = Arc::new(AtomicBool::new(false));
    rt.inner().arm();
    scope
        .try_spawn(lost_child(ran_there.clone(), token.clone(), true, 0))
        .unwrap();
    let (c, t) = (rt.clone(), token.clone());
    scope
        .try_spawn(async move {
            t.cancelled().await;
            c.sleep(SEC).await;
            Ok(1)
        })
        .unwrap();
    let (c, lossy) = (rt.clone(), rt.inner().clone());
    let loser = rt.spawn(async move {
        c.sleep(10 * MIN).await;
        lossy.lose_everything();
    });
    rt.sleep(ms(1)).await;
    assert!(ran_there.load(SeqCst), "vacuous");
    let t0 = rt.now();
    let report = within(&rt, 2 * HOUR, "shutdown", scope.shutdown("rollout", HOUR)).await;
    assert_eq!(
        rt.now() - t0,
        10 * MIN - ms(1),
        "the shutdown waited past the moment its last child was gone"
    );
    loser.await.unwrap();
    assert_eq!(
        (report.spawned, report.succeeded, report.aborted),
        (2, 1, 1),
        "{report:?}"
    );
    assert!(report.is_balanced());
    assert_eq!(report.cancel_reason, Some(Reason::new("rollout")));
    let lost = report.children.iter().find(|c| c.id.index() == 0).unwrap();
    assert!(matches!(lost.exit, Exit::Aborted), "{lost:?}");
}

#[test]
fn a_shutdown_ends_when_its_last_child_is_lost_not_at_the_end_of_the_grace_on_every_runtime() {
    on_every_lossy_runtime!(lost_during_grace);
}

// ================================================================================================
// Supervisors
// ================================================================================================

// Docs (`Exit::is_failure`): "(A transient supervisor child is restarted, and a shutdown
// started, after any exit but `Ok`: an abort included.)"; (`Restart`) Permanent: "Always
// restarted, whether it failed or returned `Ok`", Temporary: "Never restarted";
// (`SupervisorEvent::Exited::exit`) "or `Aborted` (its task was aborted or lost by the
// runtime)"; (`SupervisorEvent::Started::run`) "1 for the first start, 2 after the first
// restart"; (`SupervisorReport::restarts`) "one per `SupervisorEvent::Restarting`";
// (`SupervisorReport::stopped`) "The children it stopped at the end, in the order stopped
// (reverse of the order they were added ...)".
async fn lost_supervised_children<R: Runtime>(rt: Clocked<Lossy<R>>) {
    let (log, hook) = recorder(&rt);
    let ran_there = Arc::new(AtomicUsize::new(0));
    let spec = |name: &'static str, restart: Restart| {
        let (lossy, there) = (rt.inner().clone(), ran_there.clone());
        let mut starts = 0u32;
        ChildSpec::new(name, move |stop: CancellationToken| {
            starts += 1;
            let lose = starts == 1;
            if lose {
                lossy.arm();
            }
            let there = there.clone();
            async move {
                if on_lost_runtime() {
                    there.fetch_add(1, SeqCst);
                } else if lose {
                    panic!("the first run was not on the second runtime");
                }
                stop.cancelled().await;
                Ok::<(), std::io::Error>(())
            }
        })
        .restart(restart)
    };
    let sup = Supervisor::builder()
        .runtime(rt.clone())
        .backoff(fixed(ms(50)))
        .on_event(hook)
        .child(spec("permanent", Restart::Permanent))
        .child(spec("transient", Restart::Transient))
        .child(spec("temporary", Restart::Temporary))
        .build()
        .unwrap();
    let stop = CancellationToken::new();
    let run = rt.spawn(sup.run(stop.clone()));
    rt.sleep(SEC).await;
    assert_eq!(
        ran_there.load(SeqCst),
        3,
        "vacuous: not every first run was on the lost runtime"
    );
    rt.inner().lose_everything();
    rt.sleep(SEC).await;
    stop.cancel("end of test");
    let report = within(&rt, HOUR, "supervisor", run)
        .await
        .unwrap()
        .expect("no escalation");
    let all = events(&log);
    for name in ["permanent", "transient", "temporary"] {
        assert!(
            all.contains(&SupervisorEvent::Exited {
                child: name.into(),
                exit: Exit::Aborted
            }),
            "{name}: no Exited {{ Aborted }} event: {all:?}"
        );
    }
    assert_eq!(started_runs(&log, "permanent"), [1, 2]);
    assert_eq!(
        started_runs(&log, "transient"),
        [1, 2],
        "a lost transient child is restarted"
    );
    assert_eq!(
        started_runs(&log, "temporary"),
        [1],
        "a temporary child is never restarted"
    );
    let restarted: BTreeSet<String> = restarting(&log).iter().map(|r| r.1.to_string()).collect();
    assert_eq!(
        restarted,
        ["permanent".to_owned(), "transient".to_owned()].into()
    );
    assert_eq!(report.restarts, 2);
    assert_eq!(report.ended, Ended::Stopped);
    let stopped: Vec<&str> = report.stopped.iter().map(|t| &*t.name).collect();
    assert_eq!(stopped, ["transient", "permanent"], "{report:?}");
    for t in &report.stopped {
        assert_eq!(
            (&t.exit, t.ending),
            (
                &Exit::Ok(()),
                Ending::Stopped {
                    took: Duration::ZERO
                }
            )
        );
    }
}

// Docs (`Ending::Aborted`): "or (with `took` zero) its task was lost by its runtime", as a
// lost child reads in every report. A child that ignores its token, lost while its supervisor
// waits for it to stop, was not stopped by the supervisor: it reads lost, not `Stopped`.
async fn lost_as_the_supervisor_stops<R: Runtime>(rt: Clocked<Lossy<R>>) {
    let ran_there = Arc::new(AtomicBool::new(false));
    let (lossy, there) = (rt.inner().clone(), ran_there.clone());
    let sup = Supervisor::builder()
        .runtime(rt.clone())
        .child(ChildSpec::new("worker", move |stop: CancellationToken| {
            lossy.arm();
            let there = there.clone();
            async move {
                there.store(on_lost_runtime(), SeqCst);
                // Deaf to its token: only the supervisor's timeout or its loss ends it.
                let _stop = stop;
                std::future::pending::<Result<(), std::io::Error>>().await
            }
        }))
        .build()
        .unwrap();
    let stop = CancellationToken::new();
    let run = rt.spawn(sup.run(stop.clone()));
    rt.sleep(SEC).await;
    assert!(
        ran_there.load(SeqCst),
        "vacuous: the child never ran on the second runtime"
    );
    stop.cancel("end of test");
    rt.sleep(ms(10)).await;
    rt.inner().lose_everything();
    let report = within(&rt, HOUR, "supervisor", run)
        .await
        .unwrap()
        .expect("no escalation");
    let stopped: Vec<(&str, &Exit, Ending)> = report
        .stopped
        .iter()
        .map(|t| (&*t.name, &t.exit, t.ending))
        .collect();
    assert_eq!(
        stopped,
        [(
            "worker",
            &Exit::Aborted,
            Ending::Aborted {
                took: Duration::ZERO
            }
        )],
        "{report:?}"
    );
}

#[test]
fn a_child_lost_as_its_supervisor_stops_reads_aborted_on_every_runtime() {
    on_every_lossy_runtime!(lost_as_the_supervisor_stops);
}

#[test]
fn children_lost_by_their_runtime_are_restarted_by_kind_on_every_runtime() {
    on_every_lossy_runtime!(lost_supervised_children);
}

/// A supervisor whose one child fails `gap` after each start, with zero backoff; stopped after
/// `stop_after` restarts. Returns the outcome, the restart events and when it ended.
async fn edge_case<R: Runtime>(
    rt: &Clocked<R>,
    max_restarts: u32,
    period: Duration,
    gap: Duration,
    stop_after: usize,
) -> (
    Result<tidewall::task::supervisor::SupervisorReport, tidewall::task::supervisor::Escalation>,
    Log,
    Duration,
) {
    let (log, hook) = recorder(rt);
    let stop = CancellationToken::new();
    let (s, seen) = (stop.clone(), Arc::new(AtomicUsize::new(0)));
    let c = rt.clone();
    let sup = Supervisor::builder()
        .runtime(rt.clone())
        .intensity(max_restarts, period)
        .backoff(fixed(Duration::ZERO))
        .on_event(move |e| {
            hook(e);
            if matches!(e, SupervisorEvent::Restarting { .. })
                && seen.fetch_add(1, SeqCst) + 1 == stop_after
            {
                s.cancel("enough");
            }
        })
        .child(ChildSpec::new("edge", move |_stop| {
            let c = c.clone();
            async move {
                c.sleep(gap).await;
                Err::<(), _>("fell over")
            }
        }))
        .build()
        .unwrap();
    let t0 = rt.now();
    let out = within(rt, 100 * YEAR, "supervisor", sup.run(stop)).await;
    (out, log, rt.now() - t0)
}

// Docs (`SupervisorBuilder::intensity`): "At most `max_restarts` restarts within any `period`
// ...; the next one fails the supervisor"; "A restart is dated by the exit that caused it, and
// the window is closed, as OTP's: an exit exactly `period` after an earlier restart still
// counts that restart"; (`SupervisorEvent::Restarting::restarts_in_period`) "Restarts within
// the intensity period, this one included"; (`SupervisorEvent::Escalating`) "The restart
// intensity was exceeded"; (`Escalation`) child, max_restarts, period; (`SupervisorReport::
// restarts`) "the exit that exceeded the intensity does not" count.
async fn intensity_edges<R: Runtime>(rt: Clocked<R>) {
    // Exactly at the edge: the restart at 10 s still counts at the exit at 20 s.
    let (out, log, took) = edge_case(&rt, 1, 10 * SEC, 10 * SEC, 100).await;
    let esc = out.expect_err("an exit exactly one period after a restart exceeds 1 restart");
    assert_eq!(took, 20 * SEC);
    assert_eq!(
        (&*esc.child, esc.max_restarts, esc.period),
        ("edge", 1, 10 * SEC)
    );
    assert_eq!(
        (esc.report.ended.clone(), esc.report.restarts),
        (Ended::Escalated, 1)
    );
    assert!(events(&log).contains(&SupervisorEvent::Escalating {
        child: "edge".into()
    }));
    assert_eq!(
        restarting(&log)
            .iter()
            .map(|r| (r.0, r.3))
            .collect::<Vec<_>>(),
        [(10 * SEC, 1)]
    );

    // One nanosecond later: out of the window, for ever.
    let (out, log, _) = edge_case(&rt, 1, 10 * SEC, 10 * SEC + NS, 8).await;
    let report = out.expect("each earlier restart is 1 ns out of the window");
    assert_eq!((report.ended, report.restarts), (Ended::Stopped, 8));
    assert!(
        restarting(&log).iter().all(|r| r.3 == 1),
        "{:?}",
        restarting(&log)
    );

    // Three in nine seconds, a failure every three: the fourth exit, at 12 s, sees the
    // restart at 3 s on the window's edge.
    let (out, log, took) = edge_case(&rt, 3, 9 * SEC, 3 * SEC, 100).await;
    let esc = out.expect_err("the restart at 3 s is inside [3 s, 12 s]");
    assert_eq!(took, 12 * SEC);
    assert_eq!(esc.report.restarts, 3);
    assert_eq!(
        restarting(&log).iter().map(|r| r.3).collect::<Vec<_>>(),
        [1, 2, 3]
    );

    let (out, log, _) = edge_case(&rt, 3, 9 * SEC, 3 * SEC + NS, 12).await;
    let report = out.expect("every window of 9 s holds at most 3 restarts 3 s + 1 ns apart");
    assert_eq!(report.restarts, 12);
    assert_eq!(
        restarting(&log).iter().map(|r| r.3).collect::<Vec<_>>(),
        [1, 2, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3]
    );

    // Five in ten seconds, a failure every ten: the previous restart, exactly one period back,
    // is always in the window with this one.
    let (out, log, _) = edge_case(&rt, 5, 10 * SEC, 10 * SEC, 6).await;
    out.expect("never more than 2 in a window");
    assert_eq!(
        restarting(&log).iter().map(|r| r.3).collect::<Vec<_>>(),
        [1, 2, 2, 2, 2, 2]
    );
}

#[test]
fn restart_intensity_exactly_at_the_window_edge_counts_and_one_ns_later_does_not_on_every_runtime()
{
    on_every_runtime!(intensity_edges);
}

// Docs (`SupervisorReport::restarts`): "A restart still waiting for its backoff delay when
// `stop` was cancelled counts, though the child never started again; the exit that exceeded
// the intensity does not"; (`Escalation`) "Its children have been stopped (see `report`)";
// (`SupervisorReport::stopped`) "each one's exit, and `Ending::Stopped` (it ended within its
// shutdown timeout, `took` counted from the cancel)"; (`Ended::Escalated`) "The restart
// intensity was exceeded (the report of an Escalation)".
async fn pending_restart_and_escalation_counts<R: Runtime>(rt: Clocked<R>) {
    let (log, hook) = recorder(&rt);
    let starts = Arc::new(AtomicU32::new(0));
    let s = starts.clone();
    let sup = Supervisor::builder()
        .runtime(rt.clone())
        .backoff(fixed(HOUR))
        .intensity(3, DAY)
        .on_event(hook)
        .child(ChildSpec::new("flaky", move |_stop| {
            s.fetch_add(1, SeqCst);
            async { Err::<(), _>("refused") }
        }))
        .build()
        .unwrap();
    let stop = CancellationToken::new();
    let (st, c) = (stop.clone(), rt.clone());
    rt.spawn(async move {
        c.sleep(30 * MIN).await;
        st.cancel("half an hour");
    });
    let report = within(&rt, DAY, "supervisor", sup.run(stop)).await.unwrap();
    assert_eq!(
        starts.load(SeqCst),
        1,
        "the restart was still in its backoff"
    );
    assert_eq!(report.restarts, 1, "{report:?}");
    assert_eq!(report.ended, Ended::Stopped);
    assert_eq!(restarting(&log).len(), 1);

    let (log, hook) = recorder(&rt);
    let c = rt.clone();
    let sup = Supervisor::builder()
        .runtime(rt.clone())
        .backoff(fixed(Duration::ZERO))
        .intensity(2, HOUR)
        .on_event(hook)
        .child(ChildSpec::new(
            "bystander",
            move |stop: CancellationToken| {
                let c = c.clone();
                async move {
                    stop.cancelled().await;
                    c.sleep(ms(70)).await;
                    Ok::<(), String>(())
                }
            },
        ))
        .child(ChildSpec::new("crasher", |_stop| async {
            Err::<(), _>("crashed")
        }))
        .build()
        .unwrap();
    let t0 = rt.now();
    let esc = within(&rt, DAY, "supervisor", sup.run(CancellationToken::new()))
        .await
        .expect_err("three exits, two restarts allowed");
    assert_eq!(
        rt.now() - t0,
        ms(70),
        "the bystander was stopped before the escalation"
    );
    assert_eq!(&*esc.child, "crasher");
    assert_eq!(
        esc.report.restarts, 2,
        "the escalating exit is not a restart"
    );
    assert_eq!(esc.report.ended, Ended::Escalated);
    assert_eq!(
        tasks(&esc.report.stopped),
        [(
            "bystander".to_owned(),
            Exit::Ok(()),
            Ending::Stopped { took: ms(70) }
        )]
    );
    let escalations = events(&log)
        .into_iter()
        .filter(|e| matches!(e, SupervisorEvent::Escalating { .. }))
        .count();
    assert_eq!(escalations, 1);
}

#[test]
fn a_restart_pending_at_the_stop_counts_and_the_escalating_exit_does_not_on_every_runtime() {
    on_every_runtime!(pending_restart_and_escalation_counts);
}

// Docs (`Strategy::OneForAll`): "Every child is stopped (in reverse of the order added) and all
// are restarted in order"; (`Strategy::RestForOne`) "The child and every child started after it
// are stopped and restarted"; (`SupervisorReport::restarts`) "an exit that restarts siblings
// with it, by the Strategy, counts once"; (`SupervisorEvent::Stopped::ending`) "`took` counts
// from the cancel"; (`SupervisorBuilder::child`) "children start in the order added and stop in
// reverse of it (whatever restarts happened in between, as in OTP)".
async fn strategies_and_stop_order<R: Runtime>(rt: Clocked<R>) {
    for strategy in [Strategy::OneForAll, Strategy::RestForOne] {
        let (log, hook) = recorder(&rt);
        let b_runs = Arc::new(AtomicU32::new(0));
        let steady = |name: &'static str, linger: Duration| {
            let c = rt.clone();
            ChildSpec::new(name, move |stop: CancellationToken| {
                let c = c.clone();
                async move {
                    stop.cancelled().await;
                    c.sleep(linger).await;
                    Ok::<(), String>(())
                }
            })
        };
        let (c, runs) = (rt.clone(), b_runs.clone());
        let sup = Supervisor::builder()
            .runtime(rt.clone())
            .strategy(strategy)
            .backoff(fixed(ms(100)))
            .on_event(hook)
            .child(steady("a", ms(10)))
            .child(ChildSpec::new("b", move |stop: CancellationToken| {
                let (c, first) = (c.clone(), runs.fetch_add(1, SeqCst) == 0);
                async move {
                    if first {
                        c.sleep(SEC).await;
                        return Err("b broke".to_owned());
                    }
                    stop.cancelled().await;
                    Ok(())
                }
            }))
            .child(steady("c", ms(20)))
            .build()
            .unwrap();
        let stop = CancellationToken::new();
        let (st, c) = (stop.clone(), rt.clone());
        rt.spawn(async move {
            c.sleep(10 * SEC).await;
            st.cancel("done");
        });
        let report = within(&rt, DAY, "supervisor", sup.run(stop)).await.unwrap();
        assert_eq!(report.restarts, 1, "{strategy:?}: one exit, one restart");
        let stopped: Vec<(&str, Ending)> = report
            .stopped
            .iter()
            .map(|t| (&*t.name, t.ending))
            .collect();
        assert_eq!(
            stopped,
            [
                ("c", Ending::Stopped { took: ms(20) }),
                (
                    "b",
                    Ending::Stopped {
                        took: Duration::ZERO
                    }
                ),
                ("a", Ending::Stopped { took: ms(10) }),
            ],
            "{strategy:?}"
        );
        // The stops the restart made, before the final ones (in the order made).
        let restart_stops: Vec<SupervisorEvent> = log
            .lock()
            .unwrap()
            .iter()
            .filter(|(at, e)| *at < 10 * SEC && matches!(e, SupervisorEvent::Stopped { .. }))
            .map(|(_, e)| e.clone())
            .collect();
        let stopped_event = |name: &str, took: Duration| SupervisorEvent::Stopped {
            child: name.into(),
            exit: Exit::Ok(()),
            ending: Ending::Stopped { took },
        };
        let want = match strategy {
            Strategy::OneForAll => vec![stopped_event("c", ms(20)), stopped_event("a", ms(10))],
            _ => vec![stopped_event("c", ms(20))],
        };
        assert_eq!(restart_stops, want, "{strategy:?}");
        let runs_a = started_runs(&log, "a");
        let want_a: &[u64] = if strategy == Strategy::OneForAll {
            &[1, 2]
        } else {
            &[1]
        };
        assert_eq!(runs_a, want_a, "{strategy:?}");
        assert_eq!(started_runs(&log, "b"), [1, 2]);
        assert_eq!(started_runs(&log, "c"), [1, 2]);
    }
}

#[test]
fn strategy_restarts_count_once_time_each_stop_and_keep_the_final_stop_order_on_every_runtime() {
    on_every_runtime!(strategies_and_stop_order);
}

// Docs (`ChildSpec::shutdown_timeout`): "Zero aborts it at once, without waiting (OTP's
// `brutal_kill`): it is aborted before its token is cancelled, so it reads
// `Ending::Aborted` unless it had already ended"; (`SupervisorEvent::Stopped`) "a zero timeout
// aborts it at once, without waiting"; "`Exit::Aborted` when it was aborted"; a timeout of
// `u64::MAX` ns is accepted and waited for; (`SupervisorBuilder::build`)
// "`ConfigError::DurationOverflow` for durations beyond `u64::MAX` nanoseconds";
// "`ConfigError::Zero` for a zero intensity period ..., a zero stable_after".
async fn brutal_and_patient<R: Runtime>(rt: Clocked<R>) {
    let (log, hook) = recorder(&rt);
    let c = rt.clone();
    let brutal_saw_cancel = Arc::new(AtomicBool::new(false));
    let saw = brutal_saw_cancel.clone();
    let sup = Supervisor::builder()
        .runtime(rt.clone())
        .on_event(hook)
        .child(
            ChildSpec::new("patient", move |stop: CancellationToken| {
                let c = c.clone();
                async move {
                    stop.cancelled().await;
                    c.sleep(3 * YEAR).await;
                    Ok::<(), String>(())
                }
            })
            .shutdown_timeout(MAX_NS),
        )
        .child(
            ChildSpec::new("brutal", move |stop: CancellationToken| {
                let saw = saw.clone();
                async move {
                    stop.cancelled().await;
                    saw.store(true, SeqCst);
                    Ok::<(), String>(())
                }
            })
            .shutdown_timeout(Duration::ZERO),
        )
        .build()
        .unwrap();
    let stop = CancellationToken::new();
    let (st, c) = (stop.clone(), rt.clone());
    rt.spawn(async move {
        c.sleep(2 * YEAR).await;
        st.cancel("decommission");
    });
    let t0 = rt.now();
    let report = within(&rt, 10 * YEAR, "supervisor", sup.run(stop))
        .await
        .unwrap();
    assert_eq!(rt.now() - t0, 5 * YEAR);
    assert_eq!(
        tasks(&report.stopped),
        [
            (
                "brutal".to_owned(),
                Exit::Aborted,
                Ending::Aborted {
                    took: Duration::ZERO
                }
            ),
            (
                "patient".to_owned(),
                Exit::Ok(()),
                Ending::Stopped { took: 3 * YEAR }
            ),
        ]
    );
    assert!(
        !brutal_saw_cancel.load(SeqCst),
        "a brutally killed child ran past its cancel"
    );
    assert!(events(&log).contains(&SupervisorEvent::Stopped {
        child: "brutal".into(),
        exit: Exit::Aborted,
        ending: Ending::Aborted {
            took: Duration::ZERO
        },
    }));

    let one = || ChildSpec::new("x", |_s| async { Ok::<(), String>(()) });
    let b = || Supervisor::builder().runtime(rt.clone());
    let overflow = |r: Result<Supervisor<Clocked<R>>, ConfigError>| {
        matches!(r, Err(ConfigError::DurationOverflow { .. }))
    };
    assert!(overflow(
        b().child(one().shutdown_timeout(Duration::MAX)).build()
    ));
    assert!(overflow(
        b().intensity(1, Duration::MAX).child(one()).build()
    ));
    assert!(overflow(
        b().stable_after(Duration::MAX).child(one()).build()
    ));
    assert!(matches!(
        b().stable_after(Duration::ZERO).child(one()).build(),
        Err(ConfigError::Zero { .. })
    ));
    assert!(
        b().intensity(u32::MAX, MAX_NS)
            .stable_after(MAX_NS)
            .child(one().shutdown_timeout(MAX_NS))
            .build()
            .is_ok()
    );
}

#[test]
fn zero_shutdown_timeouts_abort_first_and_u64_max_ns_ones_wait_years_on_every_runtime() {
    on_every_runtime!(brutal_and_patient);
}

// ================================================================================================
// The shutdown coordinator, with supervisors, scopes and pools inside
// ================================================================================================

// Docs (`ChildSpec::supervisor`): "A child that is itself a supervisor, built afresh by `make`
// at every (re)start; its escalation is this child's failure"; (`Supervisor`) "Supervisors
// nest: ... so an escalation is a failure of that child in its parent"; (`Escalation`) child,
// max_restarts, period, report; (`Cause::ComponentFailed`) "it saw this component end with any
// exit but `Ok` (return an error, ...)"; (`Exit`) a shutdown's component keeps "the error's
// message"; (`ShutdownReport`) "`Ending::Finished`: it ended on its own ... before the shutdown
// began"; (`is_clean`) "one that failed, panicked or was lost on its own still counts as
// clean"; (`ShutdownReport::components`) "in stop order".
async fn nested_escalation_in_a_shutdown<R: Runtime>(rt: Clocked<R>) {
    let makes = Arc::new(AtomicU32::new(0));
    let escalation = Arc::new(Mutex::new(None));
    let mut shutdown = Shutdown::builder()
        .runtime(rt.clone())
        .deadline(MIN)
        .build()
        .unwrap();
    let db_token = Arc::new(Mutex::new(None));
    let slot = db_token.clone();
    shutdown.register("db", move |stop: CancellationToken| {
        *slot.lock().unwrap() = Some(stop.clone());
        async move {
            stop.cancelled().await;
            Ok::<(), String>(())
        }
    });
    let (c, m, slot) = (rt.clone(), makes.clone(), escalation.clone());
    shutdown.register("tree", move |stop| {
        let inner_rt = c.clone();
        let outer = Supervisor::builder()
            .runtime(c.clone())
            .intensity(1, HOUR)
            .backoff(fixed(ms(5)))
            .child(ChildSpec::supervisor("inner", move || {
                m.fetch_add(1, SeqCst);
                Supervisor::builder()
                    .runtime(inner_rt.clone())
                    .intensity(0, SEC)
                    .child(ChildSpec::new("leaf", |_stop| async {
                        Err::<(), _>("leaf broke")
                    }))
                    .build()
                    .unwrap()
            }))
            .build()
            .unwrap();
        async move {
            match outer.run(stop).await {
                Ok(_) => Ok(()),
                Err(esc) => {
                    *slot.lock().unwrap() = Some((esc.clone(), esc.to_string()));
                    Err(esc)
                }
            }
        }
    });
    let t0 = rt.now();
    let report = within(&rt, DAY, "shutdown", shutdown.run()).await;
    assert_eq!(
        rt.now() - t0,
        ms(5),
        "the second escalation came after one 5 ms backoff"
    );
    assert_eq!(
        makes.load(SeqCst),
        2,
        "the inner supervisor is built afresh at its restart"
    );
    let (esc, message) = escalation
        .lock()
        .unwrap()
        .take()
        .expect("the outer escalated");
    assert_eq!(
        (&*esc.child, esc.max_restarts, esc.period),
        ("inner", 1, HOUR)
    );
    assert_eq!(
        (esc.report.ended.clone(), esc.report.restarts),
        (Ended::Escalated, 1)
    );
    assert_eq!(
        report.cause,
        Cause::ComponentFailed {
            name: "tree".into(),
            exit: Exit::Err(message.clone()),
        }
    );
    assert_eq!(
        tasks(&report.components),
        [
            ("tree".to_owned(), Exit::Err(message), Ending::Finished),
            (
                "db".to_owned(),
                Exit::Ok(()),
                Ending::Stopped {
                    took: Duration::ZERO
                }
            ),
        ]
    );
    assert_eq!(report.took, Duration::ZERO);
    assert!(report.is_clean() && !report.deadline_exceeded && !report.forced);
    assert!(db_token.lock().unwrap().as_ref().unwrap().is_cancelled());
}

#[test]
fn a_nested_supervisor_escalating_twice_fails_its_parent_and_starts_the_shutdown_on_every_runtime()
{
    on_every_runtime!(nested_escalation_in_a_shutdown);
}

// Docs (`Shutdown::register`): "Starts a component now"; (`Cause::ComponentFailed`) "it saw
// this component end with any exit but `Ok` (return an error, panic, or be lost by its
// runtime)"; (`Exit::is_failure`) "a shutdown started, after any exit but `Ok`: an abort
// included"; (`Ending::Aborted`) "or (with `took` zero) its task was lost by its runtime before
// it was told to stop"; (`ShutdownReport::is_clean`) "one that failed, panicked or was lost on
// its own still counts as clean"; (`ShutdownReport`) Finished "it ended on its own (returned,
// ...) before the shutdown began; its token was never cancelled"; (`ShutdownReport::took`)
// "From the moment run began stopping components (when it noticed the cause ...) to the last
// component gone".
async fn lost_component<R: Runtime>(rt: Clocked<Lossy<R>>) {
    let mut shutdown = Shutdown::builder()
        .runtime(rt.clone())
        .deadline(MIN)
        .build()
        .unwrap();
    let c = rt.clone();
    shutdown.register("db", move |stop| async move {
        stop.cancelled().await;
        c.sleep(ms(30)).await;
        Ok::<(), String>(())
    });
    let ran_there = Arc::new(AtomicBool::new(false));
    let there = ran_there.clone();
    rt.inner().arm();
    shutdown.register("worker", move |stop| async move {
        there.store(on_lost_runtime(), SeqCst);
        stop.cancelled().await;
        Ok::<(), String>(())
    });
    assert_eq!(rt.inner().armed(), 0, "register started no task at once");
    let (c, cache_token) = (rt.clone(), Arc::new(Mutex::new(None)));
    let slot = cache_token.clone();
    shutdown.register("cache", move |stop| {
        *slot.lock().unwrap() = Some(stop);
        async move {
            c.sleep(SEC).await;
            Ok::<(), String>(())
        }
    });
    let run = rt.spawn(shutdown.run());
    rt.sleep(5 * SEC).await;
    assert!(
        ran_there.load(SeqCst),
        "vacuous: the component never ran on the second runtime"
    );
    rt.inner().lose_everything();
    let report = within(&rt, DAY, "shutdown", run).await.unwrap();
    assert_eq!(
        report.cause,
        Cause::ComponentFailed {
            name: "worker".into(),
            exit: Exit::Aborted,
        }
    );
    // "`Ending::Aborted`: ... or (with `took` zero) its task was lost by its runtime before it
    // was told to stop" (the one vocabulary "for scopes, supervisors, pools and shutdowns"; a
    // scope reports its lost child so: see the first lost-child test); "Finished" is for one that
    // "ended on its own (returned, failed, or panicked)".
    let got: Vec<(&str, &Exit, Ending)> = report
        .components
        .iter()
        .map(|t| (&*t.name, &t.exit, t.ending))
        .collect();
    assert_eq!(
        got,
        [
            ("cache", &Exit::Ok(()), Ending::Finished),
            (
                "worker",
                &Exit::Aborted,
                Ending::Aborted {
                    took: Duration::ZERO
                }
            ),
            ("db", &Exit::Ok(()), Ending::Stopped { took: ms(30) }),
        ]
    );
    assert!(!cache_token.lock().unwrap().as_ref().unwrap().is_cancelled());
    assert_eq!(report.took, ms(30));
    assert!(
        report.is_clean(),
        "a component lost on its own still counts as clean: {report:?}"
    );
    assert!(!report.deadline_exceeded && !report.forced);
}

#[test]
fn a_component_lost_by_its_runtime_starts_the_shutdown_and_the_report_stays_clean_on_every_runtime()
{
    on_every_lossy_runtime!(lost_component);
}

// Docs (`Shutdown`): "A component whose task was lost by its runtime before its turn (it reads
// `Exit::Aborted`) reads `Ending::Aborted` with a `took` of zero, before or during the shutdown";
// (`ShutdownReport::is_clean`) "one that ... was lost on its own still counts as clean". Here it
// is lost while an earlier component is being stopped, waited for (`zero` false) or, with a
// zero timeout, due to be aborted at once (`zero` true).
async fn lost_while_another_stops<R: Runtime>(rt: Clocked<Lossy<R>>, zero: bool) {
    let mut shutdown = Shutdown::builder()
        .runtime(rt.clone())
        .deadline(MIN)
        .build()
        .unwrap();
    let ran_there = Arc::new(AtomicBool::new(false));
    let there = ran_there.clone();
    rt.inner().arm();
    let worker = move |stop: CancellationToken| async move {
        there.store(on_lost_runtime(), SeqCst);
        stop.cancelled().await;
        Ok::<(), String>(())
    };
    if zero {
        shutdown.register_with_timeout("worker", Duration::ZERO, worker);
    } else {
        shutdown.register("worker", worker);
    }
    let c = rt.clone();
    shutdown.register("db", move |stop| async move {
        stop.cancelled().await;
        c.sleep(ms(30)).await;
        Ok::<(), String>(())
    });
    let trigger = shutdown.trigger();
    let run = rt.spawn(shutdown.run());
    rt.sleep(SEC).await;
    assert!(
        ran_there.load(SeqCst),
        "vacuous: the component never ran on the second runtime"
    );
    trigger.cancel("deploy");
    rt.sleep(ms(10)).await;
    rt.inner().lose_everything();
    let report = within(&rt, DAY, "shutdown", run).await.unwrap();
    let got: Vec<(&str, &Exit, Ending)> = report
        .components
        .iter()
        .map(|t| (&*t.name, &t.exit, t.ending))
        .collect();
    assert_eq!(
        got,
        [
            ("db", &Exit::Ok(()), Ending::Stopped { took: ms(30) }),
            (
                "worker",
                &Exit::Aborted,
                Ending::Aborted {
                    took: Duration::ZERO
                }
            ),
        ],
        "zero timeout: {zero}"
    );
    assert!(report.is_clean(), "zero timeout: {zero}: {report:?}");
}

async fn lost_while_another_stops_waited<R: Runtime>(rt: Clocked<Lossy<R>>) {
    lost_while_another_stops(rt, false).await;
}

async fn lost_while_another_stops_zero<R: Runtime>(rt: Clocked<Lossy<R>>) {
    lost_while_another_stops(rt, true).await;
}

#[test]
fn a_component_lost_during_the_shutdown_reads_aborted_and_stays_clean_on_every_runtime() {
    on_every_lossy_runtime!(lost_while_another_stops_waited);
    on_every_lossy_runtime!(lost_while_another_stops_zero);
}

// Docs (`ShutdownBuilder::deadline`): "The whole shutdown's budget ..., counted from the moment
// `Shutdown::run` begins stopping components"; (`Shutdown::run`) "The deadline and the report's
// `took` count from the moment it begins stopping components"; (`Shutdown`) "When the shutdown
// begins: at the moment the trigger is cancelled"; "A component that ended before is reported
// with `Ending::Finished` ... and its token is never cancelled"; (`ShutdownReport`)
// "`Ending::Stopped`: ... at its turn its token was cancelled and it ended, `took` after the
// cancel". Three years of idle between registration and the trigger change none of it.
async fn deadline_after_years_idle<R: Runtime>(rt: Clocked<R>) {
    let mut shutdown = Shutdown::builder()
        .runtime(rt.clone())
        .deadline(10 * SEC)
        .build()
        .unwrap();
    let early_token = Arc::new(Mutex::new(None));
    let (c, slot) = (rt.clone(), early_token.clone());
    shutdown.register("early", move |stop| {
        *slot.lock().unwrap() = Some(stop);
        async move {
            c.sleep(YEAR).await;
            Ok::<(), String>(())
        }
    });
    for (name, linger) in [("fast", SEC), ("slow", 8 * SEC)] {
        let c = rt.clone();
        shutdown.register(name, move |stop| async move {
            stop.cancelled().await;
            c.sleep(linger).await;
            Ok::<(), String>(())
        });
    }
    let trigger = shutdown.trigger();
    let t0 = rt.now();
    let run = rt.spawn(shutdown.run());
    rt.sleep(3 * YEAR).await;
    trigger.cancel("rollout");
    let report = within(&rt, DAY, "shutdown", run).await.unwrap();
    assert_eq!(rt.now() - t0, 3 * YEAR + 9 * SEC);
    assert_eq!(report.cause, Cause::Triggered(Reason::new("rollout")));
    let got: Vec<(&str, Ending)> = report
        .components
        .iter()
        .map(|t| (&*t.name, t.ending))
        .collect();
    assert_eq!(
        got,
        [
            ("slow", Ending::Stopped { took: 8 * SEC }),
            ("fast", Ending::Stopped { took: SEC }),
            ("early", Ending::Finished),
        ]
    );
    assert!(report.components.iter().all(|t| t.exit == Exit::Ok(())));
    assert_eq!(report.took, 9 * SEC);
    assert!(!report.deadline_exceeded && report.is_clean());
    assert!(!early_token.lock().unwrap().as_ref().unwrap().is_cancelled());
}

#[test]
fn the_deadline_counts_from_the_trigger_after_three_idle_years_on_every_runtime() {
    on_every_runtime!(deadline_after_years_idle);
}

// Docs (`Shutdown::register_with_timeout`): "with at most `timeout` to stop once told (the
// global deadline still applies). Zero aborts it as soon as its turn comes (OTP's
// `brutal_kill`), without waiting: it reads `Ending::Aborted` unless it had already ended. Its
// token is cancelled just after the abort, for whatever it shared it with";
// (`ShutdownReport`) "`Ending::Aborted`: it was still running when its own timeout, the global
// deadline ... came, and was aborted; its exit is `Exit::Aborted`"; (`Ending::Aborted::took`)
// "From the stop to the completed abort"; (`deadline_exceeded`) "Whether the global deadline
// passed and the remaining components were aborted"; (`Shutdown`) "the shutdown waits for it
// [an abort] to take effect before it stops the next component". A `Duration::MAX` timeout
// leaves the component the global deadline.
async fn timeouts_max_and_zero<R: Runtime>(rt: Clocked<R>) {
    let mut shutdown = Shutdown::builder()
        .runtime(rt.clone())
        .deadline(3 * HOUR)
        .build()
        .unwrap();
    let deaf_gone = Arc::new(AtomicBool::new(false));
    let gone = deaf_gone.clone();
    shutdown.register("deaf", move |_stop| async move {
        let _gone = OnDrop(gone);
        std::future::pending::<()>().await;
        Ok::<(), String>(())
    });
    let c = rt.clone();
    shutdown.register_with_timeout("patient", Duration::MAX, move |stop| async move {
        stop.cancelled().await;
        c.sleep(2 * HOUR).await;
        Ok::<(), String>(())
    });
    let shared = Arc::new(Mutex::new(None));
    let slot = shared.clone();
    shutdown.register_with_timeout("brutal", Duration::ZERO, move |stop: CancellationToken| {
        *slot.lock().unwrap() = Some(stop.clone());
        async move {
            stop.cancelled().await;
            Ok::<(), String>(())
        }
    });
    let t0 = rt.now();
    let report = within(&rt, DAY, "shutdown", shutdown.stop("maintenance")).await;
    assert_eq!(rt.now() - t0, 3 * HOUR);
    assert_eq!(report.cause, Cause::Triggered(Reason::new("maintenance")));
    assert_eq!(
        tasks(&report.components),
        [
            (
                "brutal".to_owned(),
                Exit::Aborted,
                Ending::Aborted {
                    took: Duration::ZERO
                }
            ),
            (
                "patient".to_owned(),
                Exit::Ok(()),
                Ending::Stopped { took: 2 * HOUR }
            ),
            (
                "deaf".to_owned(),
                Exit::Aborted,
                Ending::Aborted { took: HOUR }
            ),
        ]
    );
    assert_eq!(report.took, 3 * HOUR);
    assert!(report.deadline_exceeded && !report.is_clean() && !report.forced);
    assert!(
        deaf_gone.load(SeqCst),
        "the aborted component's future is still alive"
    );
    assert!(
        shared.lock().unwrap().as_ref().unwrap().is_cancelled(),
        "a brutally killed component's token is cancelled after the abort"
    );
}

#[test]
fn component_timeouts_of_zero_and_duration_max_within_a_global_deadline_on_every_runtime() {
    on_every_runtime!(timeouts_max_and_zero);
}

// Docs (`Shutdown::run`): "With no component registered, every component has ended already:
// unless the trigger is cancelled or a signal has come, it returns at its first poll with
// `Cause::AllComponentsEnded` and an empty report"; "when several are there at one poll, the
// trigger comes first"; (`ShutdownBuilder::build`) "`ConfigError::Zero` for a zero deadline,
// `ConfigError::DurationOverflow` beyond `u64::MAX` nanoseconds"; (`Cause::AllComponentsEnded`)
// "it saw every component end on its own, none failing".
async fn empty_and_all_ended<R: Runtime>(rt: Clocked<R>) {
    let t0 = rt.now();
    let b = || Shutdown::builder().runtime(rt.clone());
    let report = b().build().unwrap().run().await;
    assert_eq!(report.cause, Cause::AllComponentsEnded);
    assert!(report.components.is_empty() && report.took == Duration::ZERO);
    let report = b().deadline(MAX_NS).build().unwrap().stop("bye").await;
    assert_eq!(report.cause, Cause::Triggered(Reason::new("bye")));
    assert!(report.components.is_empty());
    assert_eq!(rt.now(), t0, "no time passed");
    assert!(matches!(
        b().deadline(Duration::ZERO).build(),
        Err(ConfigError::Zero { .. })
    ));
    assert!(matches!(
        b().deadline(Duration::MAX).build(),
        Err(ConfigError::DurationOverflow { .. })
    ));

    // Every component ends on its own, the last after a decade: the cause, and every ending
    // Finished.
    let mut shutdown = b().build().unwrap();
    for (name, after) in [("a", HOUR), ("b", 10 * YEAR), ("c", DAY)] {
        let c = rt.clone();
        shutdown.register(name, move |_stop| async move {
            c.sleep(after).await;
            Ok::<(), String>(())
        });
    }
    let report = within(&rt, 20 * YEAR, "shutdown", shutdown.run()).await;
    assert_eq!(rt.now() - t0, 10 * YEAR);
    assert_eq!(report.cause, Cause::AllComponentsEnded);
    let got: Vec<(&str, Ending)> = report
        .components
        .iter()
        .map(|t| (&*t.name, t.ending))
        .collect();
    assert_eq!(
        got,
        [
            ("c", Ending::Finished),
            ("b", Ending::Finished),
            ("a", Ending::Finished)
        ]
    );
    assert_eq!(report.took, Duration::ZERO);
}

#[test]
fn empty_and_self_ending_shutdowns_report_their_cause_on_every_runtime() {
    on_every_runtime!(empty_and_all_ended);
}

// Docs (`WorkerPool::shutdown`): "Cancel safety: dropped during the drain, the future leaves
// the pool closed and its workers running until the queue is empty (detached, not aborted)";
// (`Shutdown`) "when the deadline passes, everything left is aborted"; (`Submitter::submit`)
// "`SubmitError::Closed` with the job once the pool is shutting down"; (`JobHandle`)
// "`Exit::Ok`: it ran to completion; its value". A pool inside a component whose shutdown the
// global deadline cuts short.
async fn pool_component_cut_short<R: Runtime>(rt: Clocked<R>) {
    let c = rt.clone();
    let pool = WorkerPool::builder()
        .workers(1)
        .queue(10)
        .runtime(rt.clone())
        .start(move |n: u64| {
            let c = c.clone();
            async move {
                c.sleep(10 * SEC).await;
                n
            }
        })
        .unwrap();
    let submitter = pool.submitter();
    let mut handles = Vec::new();
    for n in 0..4 {
        handles.push(pool.try_submit(n).unwrap());
    }
    let mut shutdown = Shutdown::builder()
        .runtime(rt.clone())
        .deadline(SEC)
        .build()
        .unwrap();
    shutdown.register("pool", move |stop| async move {
        stop.cancelled().await;
        pool.shutdown(HOUR).await;
        Ok::<(), String>(())
    });
    rt.sleep(ms(1)).await;
    let t0 = rt.now();
    let report = within(&rt, DAY, "shutdown", shutdown.stop("deploy")).await;
    assert_eq!(rt.now() - t0, SEC);
    assert!(report.deadline_exceeded);
    assert_eq!(
        (&report.components[0].exit, report.components[0].ending),
        (&Exit::Aborted, Ending::Aborted { took: SEC })
    );
    assert!(matches!(
        submitter.try_submit(99),
        Err(SubmitError::Closed(99))
    ));
    for (n, handle) in handles.into_iter().enumerate() {
        let exit = within(&rt, DAY, "a detached job", handle).await;
        assert!(
            matches!(exit, Exit::Ok(v) if v == n as u64),
            "job {n}: {exit:?}"
        );
    }
    assert_eq!(
        rt.now() - t0,
        40 * SEC - ms(1),
        "the queue drained, one job after another"
    );
}

#[test]
fn a_pool_whose_drain_is_cut_by_the_shutdown_deadline_finishes_its_queue_detached_on_every_runtime()
{
    on_every_runtime!(pool_component_cut_short);
}

// The whole session: a shutdown whose component is a supervisor whose child runs a scope.
// Docs (`ScopeBuilder::parent`): "cancelling `parent` cancels the scope"; (`CancellationToken`)
// children see "the same reason"; (`ScopeReport::cancel_reason`) "Why the scope was cancelled";
// (`ChildReport`) times "for a cancellation that reached the scope through its parent token
// ..., from the moment the scope first noticed it (a join watching, ...)"; (`Scope::join`)
// "children still running after the grace period are aborted and reported so"; (`Ending`)
// Finished "It ended on its own, before it was told to stop"; (`SupervisorReport::stopped`)
// "Ending::Stopped (it ended within its shutdown timeout, took counted from the cancel)";
// (`ShutdownReport`) "Ending::Stopped: ... `took` after the cancel"; "Each component, in stop
// order".
async fn scope_in_supervisor_in_shutdown<R: Runtime>(rt: Clocked<R>) {
    let scope_report = Arc::new(Mutex::new(None));
    let sup_report = Arc::new(Mutex::new(None));
    let dropped: Arc<Vec<Arc<AtomicBool>>> =
        Arc::new((0..6).map(|_| Arc::new(AtomicBool::new(false))).collect());
    let mut shutdown = Shutdown::builder()
        .runtime(rt.clone())
        .deadline(MIN)
        .build()
        .unwrap();
    shutdown.register("store", |stop| async move {
        stop.cancelled().await;
        Ok::<(), String>(())
    });
    let (c, slot, drops) = (rt.clone(), scope_report.clone(), dropped.clone());
    let sup = Supervisor::builder()
        .runtime(rt.clone())
        .child(
            ChildSpec::new("handler", move |stop: CancellationToken| {
                let (c, slot, drops) = (c.clone(), slot.clone(), drops.clone());
                async move {
                    let scope = Scope::builder()
                        .runtime(c.clone())
                        .parent(&stop)
                        .grace(2 * SEC)
                        .build::<u32, String>()
                        .map_err(|e| e.to_string())?;
                    for i in 0..6u32 {
                        let (c, t, gone) = (c.clone(), scope.token(), drops[i as usize].clone());
                        scope
                            .try_spawn(async move {
                                let _gone = OnDrop(gone);
                                match i % 3 {
                                    0 => {
                                        t.cancelled().await;
                                        c.sleep(ms(500)).await;
                                    }
                                    1 => std::future::pending::<()>().await,
                                    _ => c.sleep(HOUR).await,
                                }
                                Ok(i)
                            })
                            .map_err(|e| e.to_string())?;
                    }
                    let report = scope.join().await;
                    *slot.lock().unwrap() = Some((report, stop.reason()));
                    Ok::<(), String>(())
                }
            })
            .shutdown_timeout(10 * SEC),
        )
        .build()
        .unwrap();
    let slot = sup_report.clone();
    shutdown.register("api", move |stop| async move {
        let report = sup.run(stop).await.map_err(|e| e.to_string())?;
        *slot.lock().unwrap() = Some(report);
        Ok::<(), String>(())
    });
    let (trigger, c) = (shutdown.trigger(), rt.clone());
    rt.spawn(async move {
        c.sleep(YEAR).await;
        trigger.cancel("upgrade");
    });
    let t0 = rt.now();
    let report = within(&rt, 2 * YEAR, "session", shutdown.run()).await;
    assert_eq!(rt.now() - t0, YEAR + 2 * SEC);
    assert_eq!(report.cause, Cause::Triggered(Reason::new("upgrade")));
    assert_eq!(
        tasks(&report.components),
        [
            (
                "api".to_owned(),
                Exit::Ok(()),
                Ending::Stopped { took: 2 * SEC }
            ),
            (
                "store".to_owned(),
                Exit::Ok(()),
                Ending::Stopped {
                    took: Duration::ZERO
                }
            ),
        ]
    );
    assert_eq!(report.took, 2 * SEC);
    let sup = sup_report
        .lock()
        .unwrap()
        .take()
        .expect("supervisor report");
    assert_eq!((sup.ended.clone(), sup.restarts), (Ended::Stopped, 0));
    assert_eq!(
        tasks(&sup.stopped),
        [(
            "handler".to_owned(),
            Exit::Ok(()),
            Ending::Stopped { took: 2 * SEC }
        )]
    );
    let (scope, handler_reason) = scope_report.lock().unwrap().take().expect("scope report");
    assert!(
        handler_reason.is_some(),
        "the handler's token was cancelled"
    );
    assert_eq!(
        scope.cancel_reason, handler_reason,
        "the scope got its parent's reason"
    );
    assert_eq!(
        (scope.spawned, scope.succeeded, scope.aborted, scope.failed),
        (6, 4, 2, 0)
    );
    assert_eq!(scope.first_failure, None);
    for child in &scope.children {
        let i = child.id.index();
        match i % 3 {
            0 => assert!(
                matches!(child.exit, Exit::Ok(v) if u64::from(v) == i)
                    && child.ending == Ending::Stopped { took: ms(500) },
                "{child:?}"
            ),
            1 => assert!(
                matches!(child.exit, Exit::Aborted)
                    && child.ending == Ending::Aborted { took: 2 * SEC },
                "{child:?}"
            ),
            _ => assert!(
                matches!(child.exit, Exit::Ok(v) if u64::from(v) == i)
                    && child.ending == Ending::Finished,
                "{child:?}"
            ),
        }
    }
    assert!(
        dropped.iter().all(|d| d.load(SeqCst)),
        "a scope child outlived its scope"
    );
}

#[test]
fn a_scope_in_a_supervisor_in_a_shutdown_reports_every_level_consistently_on_every_runtime() {
    on_every_runtime!(scope_in_supervisor_in_shutdown);
}

// ================================================================================================
// Worker pools: accounting
// ================================================================================================

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Quick(u64),
    Panics,
    TimesOut,
    Huge,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Job {
    id: u64,
    kind: Kind,
}

#[derive(Default)]
struct Ledger {
    started: Mutex<BTreeSet<u64>>,
    returned: Mutex<BTreeSet<u64>>,
}

// Docs (`WorkerPool`): "hands back every job never started: `submitted = completed + failed +
// handed back`, always"; (`PoolReport`) "every job ever submitted is in exactly one of these";
// `failed`: "Jobs that panicked, timed out, or were aborted at the deadline"; `aborted`: "Of
// `failed`, those aborted at the drain deadline"; `handed_back`: "Jobs never started, handed
// back (dead letters) in submission order (their handles read `Exit::Aborted` too)";
// (`JobHandle`) Ok "its value", Err "it exceeded the per-job timeout ...; the Elapsed",
// Panicked "the payload (the worker goes on with the next job)", Aborted; "Dropping it does not
// cancel the job (the pool still runs it)". A seeded mix of every ending, a third of the
// handles dropped at once.
async fn pool_accounting<R: Runtime>(rt: Clocked<R>) {
    let mut rng = SplitMix64::new(0xACC0_0017);
    let ledger = Arc::new(Ledger::default());
    let (c, l) = (rt.clone(), ledger.clone());
    let pool = WorkerPool::builder()
        .workers(3)
        .queue(40)
        .job_timeout(10 * MIN)
        .runtime(rt.clone())
        .start(move |job: Job| {
            let (c, l) = (c.clone(), l.clone());
            async move {
                l.started.lock().unwrap().insert(job.id);
                match job.kind {
                    Kind::Quick(d) => c.sleep(ms(d)).await,
                    Kind::Panics => {
                        c.sleep(ms(1)).await;
                        panic!("job {} exploded", job.id);
                    }
                    Kind::TimesOut => c.sleep(20 * MIN).await,
                    Kind::Huge => c.sleep(10 * HOUR).await,
                }
                l.returned.lock().unwrap().insert(job.id);
                job.id * 7
            }
        })
        .unwrap();
    let mut kept = Vec::new();
    let mut jobs = Vec::new();
    for id in 0..400u64 {
        let kind = match pick(&mut rng, 0, 99) {
            0..=69 => Kind::Quick(pick(&mut rng, 1, 5_000)),
            70..=84 => Kind::Panics,
            85..=96 => Kind::TimesOut,
            _ => Kind::Huge,
        };
        let job = Job { id, kind };
        jobs.push(job);
        let handle = within(&rt, 1_000 * HOUR, "submit", pool.submit(job))
            .await
            .expect("open");
        if pick(&mut rng, 0, 2) == 0 {
            drop(handle);
        } else {
            kept.push((job, handle));
        }
    }
    assert!(pool.queued() > 0, "vacuous: nothing left to hand back");
    let report = within(&rt, 1_000 * HOUR, "shutdown", pool.shutdown(20 * MIN)).await;
    let started = ledger.started.lock().unwrap().clone();
    let returned = ledger.returned.lock().unwrap().clone();
    assert_eq!(report.submitted, 400);
    // "submitted = completed + failed + handed back, always"
    assert_eq!(
        report.submitted,
        report.completed + report.failed + report.handed_back.len() as u64,
        "{report:?}"
    );
    assert!(report.aborted <= report.failed);
    assert!(
        report.aborted > 0,
        "vacuous: nothing running at the deadline"
    );
    // "Jobs that ran to completion": every job whose handler returned, handle kept or not.
    assert_eq!(
        report.completed,
        returned.len() as u64,
        "dropped handles' jobs still count"
    );
    // "Jobs never started, handed back ... in submission order"
    let back: Vec<u64> = report.handed_back.iter().map(|j| j.id).collect();
    assert!(
        back.windows(2).all(|w| w[0] < w[1]),
        "not in submission order: {back:?}"
    );
    assert!(
        back.iter().all(|id| !started.contains(id)),
        "a handed-back job had started"
    );
    assert_eq!(
        started.len() + back.len(),
        400,
        "a job neither started nor handed back"
    );
    assert_eq!(report.failed, (started.len() - returned.len()) as u64);
    for j in &report.handed_back {
        assert_eq!(
            *j, jobs[j.id as usize],
            "the job handed back is the job submitted"
        );
    }
    let mut aborted_running = 0;
    for (job, handle) in kept {
        let exit = within(&rt, HOUR, "a handle", handle).await;
        match exit {
            Exit::Ok(v) => {
                assert!(
                    matches!(job.kind, Kind::Quick(_)) && v == job.id * 7,
                    "{job:?}"
                );
            }
            Exit::Panicked(p) => {
                assert_eq!(job.kind, Kind::Panics);
                assert_eq!(
                    p.message(),
                    Some(format!("job {} exploded", job.id).as_str())
                );
            }
            Exit::Err(Elapsed) => {
                assert!(matches!(job.kind, Kind::TimesOut | Kind::Huge), "{job:?}")
            }
            Exit::Aborted => {
                if started.contains(&job.id) {
                    aborted_running += 1;
                    assert!(
                        !returned.contains(&job.id),
                        "{job:?} returned yet reads Aborted"
                    );
                } else {
                    assert!(
                        back.contains(&job.id),
                        "{job:?} neither ran nor was handed back"
                    );
                }
            }
            other => panic!("{job:?}: {other:?}"),
        }
    }
    assert!(aborted_running <= report.aborted);
}

#[test]
fn pool_shutdown_accounts_for_every_kind_of_ending_with_handles_dropped_on_every_runtime() {
    on_every_runtime!(pool_accounting);
}

// Docs (`Submitter::submit`): "Cancel safety: dropping the future before it resolves drops
// `job` unqueued"; "`SubmitError::Closed` with the job once the pool is shutting down (also
// when it closes while this waits for room)"; (`SubmitError`) "Why a job was not queued: the
// job comes back, never lost"; (`WorkerPool`) "`submitted = completed + failed + handed back`,
// always". Two thousand producers waiting for room, each with a seeded patience; a shutdown in
// the middle of it.
async fn thousands_of_producers<R: Runtime>(rt: Clocked<R>) {
    let mut rng = SplitMix64::new(0x0980_00C3);
    let ran = Arc::new(Mutex::new(BTreeSet::new()));
    let (c, r) = (rt.clone(), ran.clone());
    let pool = WorkerPool::builder()
        .workers(2)
        .queue(8)
        .runtime(rt.clone())
        .start(move |id: u64| {
            let (c, r) = (c.clone(), r.clone());
            async move {
                r.lock().unwrap().insert(id);
                c.sleep(ms(10)).await;
                id
            }
        })
        .unwrap();
    #[derive(Debug)]
    enum Outcome {
        In(tidewall::task::pool::JobHandle<u64>),
        GaveUp,
        Refused(u64),
    }
    let mut producers = Vec::new();
    for id in 0..2_000u64 {
        let mut patience = pick(&mut rng, 1, 600);
        if patience.is_multiple_of(10) {
            patience += 1; // never on a job boundary, nor on the shutdown instant
        }
        let (s, c) = (pool.submitter(), rt.clone());
        producers.push((
            id,
            rt.spawn(async move {
                match s.submit(id).timeout_on(&c, ms(patience)).await {
                    Ok(Ok(handle)) => Outcome::In(handle),
                    Ok(Err(SubmitError::Closed(job))) => Outcome::Refused(job),
                    Ok(Err(other)) => panic!("submit never reports {other:?}"),
                    Err(Elapsed) => Outcome::GaveUp,
                }
            }),
        ));
    }
    rt.sleep(ms(300)).await;
    let report = within(&rt, HOUR, "shutdown", pool.shutdown(ms(5))).await;
    let (mut accepted, mut gave_up, mut refused) = (BTreeSet::new(), BTreeSet::new(), 0);
    let mut handles = Vec::new();
    for (id, producer) in producers {
        match within(&rt, HOUR, "a producer", producer).await.unwrap() {
            Outcome::In(h) => {
                accepted.insert(id);
                handles.push((id, h));
            }
            Outcome::GaveUp => {
                gave_up.insert(id);
            }
            Outcome::Refused(job) => {
                assert_eq!(job, id, "the job handed back is not the producer's own");
                refused += 1;
            }
        }
    }
    assert!(
        accepted.len() > 20 && gave_up.len() > 100 && refused > 100,
        "vacuous: {} in, {} gave up, {refused} refused",
        accepted.len(),
        gave_up.len()
    );
    let ran = ran.lock().unwrap().clone();
    assert!(
        ran.is_disjoint(&gave_up),
        "a job whose submit was dropped ran"
    );
    assert!(
        ran.is_subset(&accepted),
        "a job that was never accepted ran"
    );
    assert_eq!(report.submitted, accepted.len() as u64);
    assert_eq!(
        report.submitted,
        report.completed + report.failed + report.handed_back.len() as u64,
        "{report:?}"
    );
    let back: BTreeSet<u64> = report.handed_back.iter().copied().collect();
    assert!(back.is_subset(&accepted) && back.is_disjoint(&ran));
    for (id, h) in handles {
        match within(&rt, HOUR, "a handle", h).await {
            Exit::Ok(v) => assert_eq!(v, id),
            Exit::Aborted => assert!(back.contains(&id) || ran.contains(&id)),
            other => panic!("{id}: {other:?}"),
        }
    }
}

#[test]
fn thousands_of_producers_dropped_at_random_or_refused_at_shutdown_lose_no_job_on_every_runtime() {
    on_every_runtime!(thousands_of_producers);
}

// Docs (`WorkerPool`): "Dropped without `shutdown` (an early return, a panic), the pool closes:
// a `Submitter` gets `SubmitError::Closed`, and the workers run what is queued, then stop
// (detached, nothing aborted), rather than wait for jobs for ever"; (`WorkerPool::shutdown`)
// "Cancel safety: dropped during the drain, the future leaves the pool closed and its workers
// running until the queue is empty (detached, not aborted)"; (`WorkerPoolBuilder::job_timeout`)
// and (`start`) "`ConfigError::DurationOverflow` for a timeout beyond `u64::MAX` nanoseconds"
// (`u64::MAX` ns itself is accepted: a decade-long job finishes under it).
async fn pools_left_behind<R: Runtime>(rt: Clocked<R>) {
    let start = |timeout: Option<Duration>| {
        let c = rt.clone();
        let mut b = WorkerPool::builder()
            .workers(2)
            .queue(10)
            .runtime(rt.clone());
        if let Some(t) = timeout {
            b = b.job_timeout(t);
        }
        b.start(move |d: Duration| {
            let c = c.clone();
            async move {
                c.sleep(d).await;
                d
            }
        })
    };
    assert!(matches!(
        start(Some(Duration::MAX)),
        Err(ConfigError::DurationOverflow { .. })
    ));

    // Dropped without shutdown.
    let pool = start(None).unwrap();
    let submitter = pool.submitter();
    let handles: Vec<_> = (0..10).map(|_| pool.try_submit(HOUR).unwrap()).collect();
    let t0 = rt.now();
    drop(pool);
    assert!(matches!(submitter.try_submit(SEC), Err(SubmitError::Closed(d)) if d == SEC));
    assert!(matches!(submitter.submit(SEC).await, Err(SubmitError::Closed(d)) if d == SEC));
    for h in handles {
        assert!(matches!(within(&rt, DAY, "queued job", h).await, Exit::Ok(d) if d == HOUR));
    }
    assert_eq!(rt.now() - t0, 5 * HOUR, "ten one-hour jobs on two workers");

    // Its shutdown dropped mid-drain.
    let pool = start(None).unwrap();
    let submitter = pool.submitter();
    let handles: Vec<_> = (0..6).map(|_| pool.try_submit(HOUR).unwrap()).collect();
    let t0 = rt.now();
    assert!(
        pool.shutdown(10 * HOUR)
            .timeout_on(&rt, ms(10))
            .await
            .is_err()
    );
    assert!(matches!(
        submitter.try_submit(SEC),
        Err(SubmitError::Closed(_))
    ));
    for h in handles {
        assert!(matches!(within(&rt, DAY, "queued job", h).await, Exit::Ok(d) if d == HOUR));
    }
    assert_eq!(rt.now() - t0, 3 * HOUR);

    // A job timeout of u64::MAX ns and a decade-long job.
    let pool = start(Some(MAX_NS)).unwrap();
    let decade = pool.try_submit(10 * YEAR).unwrap();
    assert!(
        matches!(within(&rt, 20 * YEAR, "decade", decade).await, Exit::Ok(d) if d == 10 * YEAR)
    );
    let report = pool.shutdown(Duration::ZERO).await;
    assert_eq!(
        (report.submitted, report.completed, report.failed),
        (1, 1, 0)
    );
}

#[test]
fn pools_dropped_or_whose_shutdown_is_dropped_finish_their_queue_detached_on_every_runtime() {
    on_every_runtime!(pools_left_behind);
}

// ================================================================================================
// Periodic work and health checks
// ================================================================================================

// Docs (`HealthHandle::changed`): "Waits until the health differs from `seen` ..., and returns
// the new one"; "Cancel safety: dropping the future loses nothing, and leaves nothing behind";
// (`HealthChecker`) "the first probe starts as soon as the checker's future is first polled
// ...; later probes start at `first + k × period`"; "Each finished probe publishes its verdict
// with the instant it finished"; (`Health::Unhealthy`) "The last probe failed, with its
// message"; (`Health::TimedOut`) "The last probe did not answer within the timeout";
// (`HealthCheckerBuilder::start`) "until `token` is cancelled, and then returns the reason".
// Three thousand waiters per verdict, each with a seeded patience.
async fn health_waiters<R: Runtime>(rt: Clocked<R>) {
    let mut rng = SplitMix64::new(0x4EA1_7400);
    let token = CancellationToken::new();
    let calls = Arc::new(AtomicU32::new(0));
    let (c, n) = (rt.clone(), calls.clone());
    let (health, checker) = HealthChecker::builder()
        .period(10 * SEC)
        .timeout(SEC)
        .runtime(rt.clone())
        .start(&token, move || {
            let (c, call) = (c.clone(), n.fetch_add(1, SeqCst));
            async move {
                match call {
                    1 => {
                        c.sleep(ms(100)).await;
                        Err("db down".to_owned())
                    }
                    2 => std::future::pending().await,
                    _ => {
                        c.sleep(ms(100)).await;
                        Ok(())
                    }
                }
            }
        })
        .unwrap();
    let t0 = rt.now();
    let checker = rt.spawn(checker);
    // (seen, verdict, instant it is published)
    let rounds = [
        (Health::Unknown, Health::Healthy, ms(100)),
        (
            Health::Healthy,
            Health::Unhealthy("db down".to_owned()),
            10 * SEC + ms(100),
        ),
        (
            Health::Unhealthy("db down".to_owned()),
            Health::TimedOut,
            21 * SEC,
        ),
        (Health::TimedOut, Health::Healthy, 30 * SEC + ms(100)),
    ];
    let mut round_start = Duration::ZERO;
    for (seen, verdict, at) in rounds {
        let wait = at - round_start;
        let mut waiters = Vec::new();
        for _ in 0..3_000 {
            let mut patience = ms(pick(&mut rng, 1, 2 * wait.as_millis() as u64));
            if patience == wait {
                patience += ms(1);
            }
            let (h, c, seen) = (health.clone(), rt.clone(), seen.clone());
            waiters.push((
                patience,
                rt.spawn(async move { h.changed(&seen).timeout_on(&c, patience).await }),
            ));
        }
        let (mut saw, mut gave_up) = (0, 0);
        for (patience, w) in waiters {
            let out = within(&rt, DAY, "a waiter", w).await.unwrap();
            if patience < wait {
                assert_eq!(out, Err(Elapsed));
                gave_up += 1;
            } else {
                assert_eq!(out, Ok(verdict.clone()), "patience {patience:?}");
                saw += 1;
            }
        }
        assert!(
            saw > 500 && gave_up > 500,
            "vacuous: {saw} saw, {gave_up} gave up"
        );
        let (latest, when) = health.latest();
        assert_eq!(latest, verdict);
        assert_eq!(
            when.map(|w| w - t0),
            Some(at),
            "{verdict:?} published at the wrong instant"
        );
        round_start = rt.now() - t0;
    }
    token.cancel("bye");
    assert_eq!(
        within(&rt, DAY, "checker", checker).await.unwrap().as_str(),
        "bye"
    );
}

#[test]
fn thousands_of_health_waiters_dropped_at_random_see_each_verdict_on_every_runtime() {
    on_every_runtime!(health_waiters);
}

// Docs (`periodic`): "The token is checked before every poll of a run (see
// `CancellationToken::run_until_cancelled`), so a run is stopped mid-way, not only between
// runs"; "returns the reason"; "the first run is one period later, and runs follow `start + k
// × period`"; (`SupervisorReport::stopped`) "Ending::Stopped (it ended within its shutdown
// timeout, took counted from the cancel)"; (`CancellationToken::child`) a child is cancelled
// "with its reason".
async fn periodic_in_a_child<R: Runtime>(rt: Clocked<R>) {
    let outcome = Arc::new(Mutex::new(None));
    let runs = Arc::new(Mutex::new(Vec::new()));
    let done = Arc::new(AtomicU32::new(0));
    let (c, slot, log, d) = (rt.clone(), outcome.clone(), runs.clone(), done.clone());
    let t0 = rt.now();
    let sup = Supervisor::builder()
        .runtime(rt.clone())
        .child(ChildSpec::new(
            "refresher",
            move |stop: CancellationToken| {
                let (c, slot, log, d) = (c.clone(), slot.clone(), log.clone(), d.clone());
                async move {
                    let inner = stop.child();
                    let reason = periodic(c.clone(), SEC, MissedTicks::Skip, &inner, |tick| {
                        log.lock().unwrap().push((c.now() - t0, tick - t0));
                        let (c, d) = (c.clone(), d.clone());
                        async move {
                            c.sleep(ms(400)).await;
                            d.fetch_add(1, SeqCst);
                        }
                    })
                    .map_err(|e| e.to_string())?
                    .await;
                    *slot.lock().unwrap() = Some((reason, stop.reason()));
                    Ok::<(), String>(())
                }
            },
        ))
        .build()
        .unwrap();
    let stop = CancellationToken::new();
    let (st, c) = (stop.clone(), rt.clone());
    rt.spawn(async move {
        c.sleep(10 * SEC + ms(200)).await;
        st.cancel("shutting down");
    });
    let report = within(&rt, DAY, "supervisor", sup.run(stop)).await.unwrap();
    assert_eq!(
        rt.now() - t0,
        10 * SEC + ms(200),
        "the run in progress was not stopped mid-way"
    );
    let runs = runs.lock().unwrap().clone();
    let want: Vec<(Duration, Duration)> = (1..=10).map(|k| (k * SEC, k * SEC)).collect();
    assert_eq!(runs, want);
    assert_eq!(
        done.load(SeqCst),
        9,
        "the tenth run was stopped at 200 ms of its 400"
    );
    let (reason, token_reason) = outcome.lock().unwrap().take().expect("periodic returned");
    assert_eq!(
        Some(reason),
        token_reason,
        "periodic returns the token's reason"
    );
    assert_eq!(
        tasks(&report.stopped),
        [(
            "refresher".to_owned(),
            Exit::Ok(()),
            Ending::Stopped {
                took: Duration::ZERO
            }
        )]
    );
}

#[test]
fn periodic_work_in_a_supervised_child_stops_mid_run_with_the_childs_reason_on_every_runtime() {
    on_every_runtime!(periodic_in_a_child);
}

// Docs (`periodic`): "`Burst`: one run per overrun tick, back to back, until the schedule is
// caught up"; "`Delay`: the next run starts at once and the schedule restarts from it"; "`tick`
// is the run's scheduled instant"; "Each run is awaited before the next tick is considered, so
// runs never overlap"; "`ConfigError::Zero` for a zero period".
async fn missed_tick_policies<R: Runtime>(rt: Clocked<R>) {
    let token = CancellationToken::new();
    assert!(matches!(
        periodic(
            rt.clone(),
            Duration::ZERO,
            MissedTicks::Skip,
            &token,
            |_| async {}
        )
        .map(drop),
        Err(ConfigError::Zero { .. })
    ));

    // Burst after a 3.5-period run.
    let log = Arc::new(Mutex::new(Vec::new()));
    let (stop, l, c) = (token.clone(), log.clone(), rt.clone());
    let t0 = rt.now();
    let mut n = 0;
    periodic(rt.clone(), SEC, MissedTicks::Burst, &token, move |tick| {
        n += 1;
        l.lock().unwrap().push((c.now() - t0, tick - t0));
        if n == 6 {
            stop.cancel("six");
        }
        let (c, first) = (c.clone(), n == 1);
        async move {
            if first {
                c.sleep(ms(3_500)).await;
            }
        }
    })
    .unwrap()
    .await;
    let got = log.lock().unwrap().clone();
    let (b, s) = (ms(4_500), SEC);
    assert_eq!(
        got,
        [
            (s, s),
            (b, 2 * s),
            (b, 3 * s),
            (b, 4 * s),
            (5 * s, 5 * s),
            (6 * s, 6 * s)
        ]
    );

    // Delay after a run of a year.
    let token = CancellationToken::new();
    let log = Arc::new(Mutex::new(Vec::new()));
    let (stop, l, c) = (token.clone(), log.clone(), rt.clone());
    let t0 = rt.now();
    let mut n = 0;
    let reason = periodic(rt.clone(), HOUR, MissedTicks::Delay, &token, move |_tick| {
        n += 1;
        l.lock().unwrap().push(c.now() - t0);
        if n == 3 {
            stop.cancel("three");
        }
        let (c, first) = (c.clone(), n == 1);
        async move {
            if first {
                c.sleep(YEAR).await;
            }
        }
    })
    .unwrap()
    .await;
    assert_eq!(reason.as_str(), "three");
    let got = log.lock().unwrap().clone();
    assert_eq!(got, [HOUR, HOUR + YEAR, 2 * HOUR + YEAR]);
}

#[test]
fn burst_and_delay_missed_tick_policies_after_long_runs_on_every_runtime() {
    on_every_runtime!(missed_tick_policies);
}

// ================================================================================================
// Scopes: graces at their extremes, supervisors inside scopes, counts over a life
// ================================================================================================

// Docs (`ScopeBuilder::grace`): "How long children get, once the scope is cancelled, to stop on
// their own before a join aborts them (... zero aborts at once)"; (`build`) "`ConfigError::
// DurationOverflow` for a grace period beyond `u64::MAX` nanoseconds"; (`Scope::shutdown`)
// "waits up to `grace` (from the cancel, at its first poll ...)"; (`Scope::join_within`)
// "children still running after `limit` are cancelled with `reason`"; (`ChildReport`) Ending
// "Stopped ... within the grace period", "Aborted" by abort; (`Ending::Aborted::took`) "From
// the stop to the completed abort".
async fn grace_extremes<R: Runtime>(rt: Clocked<R>) {
    assert!(matches!(
        Scope::builder()
            .runtime(rt.clone())
            .grace(Duration::MAX)
            .build::<(), ()>(),
        Err(ConfigError::DurationOverflow { .. })
    ));
    let patient = |scope: &Scope<u32, (), Clocked<R>>, after: Duration| {
        let (c, t) = (rt.clone(), scope.token());
        scope
            .try_spawn(async move {
                t.cancelled().await;
                c.sleep(after).await;
                Ok(1)
            })
            .unwrap();
    };

    // A grace of u64::MAX ns: a child may take seven years to stop.
    let scope = Scope::builder()
        .runtime(rt.clone())
        .grace(MAX_NS)
        .build::<u32, ()>()
        .unwrap();
    patient(&scope, 7 * YEAR);
    scope.cancel("slowly");
    let t0 = rt.now();
    let report = within(&rt, 20 * YEAR, "join", scope.join()).await;
    assert_eq!(rt.now() - t0, 7 * YEAR);
    assert_eq!(
        report.children[0].ending,
        Ending::Stopped { took: 7 * YEAR }
    );

    // A shutdown whose grace is Duration::MAX.
    let scope = Scope::builder()
        .runtime(rt.clone())
        .build::<u32, ()>()
        .unwrap();
    patient(&scope, 3 * YEAR);
    let report = within(
        &rt,
        20 * YEAR,
        "shutdown",
        scope.shutdown("max", Duration::MAX),
    )
    .await;
    assert_eq!(
        report.children[0].ending,
        Ending::Stopped { took: 3 * YEAR }
    );
    assert!(matches!(report.children[0].exit, Exit::Ok(1)));

    // join_within(Duration::MAX): a child that ends on its own after two decades.
    let scope = Scope::builder()
        .runtime(rt.clone())
        .build::<u32, ()>()
        .unwrap();
    let c = rt.clone();
    scope
        .try_spawn(async move {
            c.sleep(20 * YEAR).await;
            Ok(2)
        })
        .unwrap();
    let report = within(
        &rt,
        25 * YEAR,
        "join_within",
        scope.join_within(Duration::MAX, "never"),
    )
    .await;
    assert_eq!(report.cancel_reason, None, "cancelled before the limit");
    assert_eq!(report.children[0].ending, Ending::Finished);

    // A zero grace: deaf children aborted at once.
    let scope = Scope::builder()
        .runtime(rt.clone())
        .build::<u32, ()>()
        .unwrap();
    let gone: Vec<Arc<AtomicBool>> = (0..5).map(|_| Arc::new(AtomicBool::new(false))).collect();
    for g in &gone {
        let g = g.clone();
        scope
            .try_spawn(async move {
                let _g = OnDrop(g);
                std::future::pending::<Result<u32, ()>>().await
            })
            .unwrap();
    }
    rt.sleep(ms(1)).await;
    let t0 = rt.now();
    let report = within(&rt, DAY, "shutdown", scope.shutdown("now", Duration::ZERO)).await;
    assert_eq!(rt.now(), t0, "a zero grace waited");
    assert_eq!(report.aborted, 5);
    for child in &report.children {
        assert!(matches!(child.exit, Exit::Aborted));
        assert_eq!(
            child.ending,
            Ending::Aborted {
                took: Duration::ZERO
            }
        );
    }
    assert!(
        gone.iter().all(|g| g.load(SeqCst)),
        "\"waits until the aborted tasks are gone\""
    );
}

#[test]
fn scope_graces_from_zero_to_u64_max_ns_and_duration_max_arguments_on_every_runtime() {
    on_every_runtime!(grace_extremes);
}

// Docs (`Supervisor::run`): "Cancel safety: Dropping the future cancels every child's token and
// aborts it at once, without the ordered shutdown"; (`Supervisor` Drop) "no worker outlives its
// supervisor"; (`Scope::shutdown`) "aborts the rest, and waits until the aborted tasks are gone";
// (`ChildReport::exit`) "`Exit::Aborted`: it ignored the scope's cancellation past the grace
// period and was aborted (dropped)". A supervisor run inside a scope's child whose grace is
// shorter than the supervisor's ordered stop.
async fn supervisor_in_a_scope<R: Runtime>(rt: Clocked<R>) {
    let deaf_gone = Arc::new(AtomicBool::new(false));
    let polite_gone = Arc::new(AtomicBool::new(false));
    let polite_token = Arc::new(Mutex::new(None));
    let (dg, pg, pt) = (deaf_gone.clone(), polite_gone.clone(), polite_token.clone());
    let starts = Arc::new(AtomicU32::new(0));
    let st = starts.clone();
    let sup = Supervisor::builder()
        .runtime(rt.clone())
        .child(ChildSpec::new("polite", move |stop: CancellationToken| {
            st.fetch_add(1, SeqCst);
            *pt.lock().unwrap() = Some(stop.clone());
            let pg = pg.clone();
            async move {
                let _g = OnDrop(pg);
                stop.cancelled().await;
                std::future::pending::<()>().await; // stops only when aborted
                Ok::<(), String>(())
            }
        }))
        .child(
            ChildSpec::new("deaf", move |_stop| {
                let dg = dg.clone();
                async move {
                    let _g = OnDrop(dg);
                    std::future::pending::<()>().await;
                    Ok::<(), String>(())
                }
            })
            .shutdown_timeout(HOUR),
        )
        .build()
        .unwrap();
    let scope = Scope::builder()
        .runtime(rt.clone())
        .grace(SEC)
        .build::<(), String>()
        .unwrap();
    let token = scope.token();
    scope
        .try_spawn(async move {
            sup.run(token.child())
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        })
        .unwrap();
    rt.sleep(MIN).await;
    let t0 = rt.now();
    let report = within(&rt, DAY, "shutdown", scope.shutdown("tear down", SEC)).await;
    assert_eq!(rt.now() - t0, SEC);
    assert!(
        matches!(report.children[0].exit, Exit::Aborted),
        "{report:?}"
    );
    assert_eq!(report.children[0].ending, Ending::Aborted { took: SEC });
    let c = rt.clone();
    c.sleep(ms(1)).await;
    assert!(
        deaf_gone.load(SeqCst),
        "the deaf child outlived its dropped supervisor"
    );
    assert!(
        polite_gone.load(SeqCst),
        "the polite child outlived its dropped supervisor"
    );
    assert!(
        polite_token
            .lock()
            .unwrap()
            .as_ref()
            .unwrap()
            .is_cancelled()
    );
    c.sleep(HOUR).await;
    assert_eq!(
        starts.load(SeqCst),
        1,
        "a child was started again after its supervisor died"
    );
}

#[test]
fn a_supervisor_aborted_by_its_scope_takes_every_child_down_with_it_on_every_runtime() {
    on_every_runtime!(supervisor_in_a_scope);
}

// Docs (`ScopeBuilder::discard_ok`): "Drops each `Ok` result as it arrives (it is still
// counted) ... Failures are kept until read"; (`FailurePolicy::CollectAll`) "Failures are
// recorded; the siblings go on"; (`Scope::next`) "Cancel-safe: a report is removed only when it
// is returned"; (`ScopeReport`) "the children whose reports were not taken through `next`, and
// counts over the scope's whole life"; `succeeded` "(including reports dropped by
// `discard_ok`)"; (`ChildId::index`) "The spawn order, from 0".
async fn collect_all_discarding<R: Runtime>(rt: Clocked<R>) {
    let mut rng = SplitMix64::new(0x0D15_CA4D);
    let mut scope = Scope::builder()
        .runtime(rt.clone())
        .policy(FailurePolicy::CollectAll)
        .discard_ok()
        .build::<u64, String>()
        .unwrap();
    let token = scope.token();
    let mut kinds = Vec::new();
    for i in 0..600u64 {
        let kind = pick(&mut rng, 0, 9);
        let at = ms(pick(&mut rng, 1, 5_000));
        kinds.push(kind);
        let c = rt.clone();
        let id = scope
            .try_spawn(async move {
                c.sleep(at).await;
                match kind {
                    0..=1 => Err(format!("child {i}")),
                    2 => panic!("child {i} panicked"),
                    _ => Ok(i),
                }
            })
            .unwrap();
        assert_eq!(id.index(), i);
    }
    let mut taken = Vec::new();
    // Take reports through `next`, each wait cut short at a seeded moment.
    for _ in 0..200 {
        let patience = ms(pick(&mut rng, 1, 40));
        if let Ok(Some(report)) = scope.next().timeout_on(&rt, patience).await {
            taken.push(report);
        }
    }
    assert!(!token.is_cancelled(), "a CollectAll scope cancelled itself");
    let report = within(&rt, DAY, "join", scope.join()).await;
    let failing = kinds.iter().filter(|k| **k <= 2).count();
    assert!(taken.len() > 20, "vacuous: {} reports taken", taken.len());
    for r in taken.iter().chain(report.children.iter()) {
        assert!(
            !matches!(r.exit, Exit::Ok(_)),
            "an Ok report was kept: {:?}",
            r.id
        );
        let kind = kinds[r.id.index() as usize];
        match &r.exit {
            Exit::Err(e) => assert!(kind <= 1 && *e == format!("child {}", r.id.index())),
            Exit::Panicked(p) => {
                assert_eq!(kind, 2);
                assert_eq!(
                    p.message(),
                    Some(format!("child {} panicked", r.id.index()).as_str())
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(r.ending, Ending::Finished);
    }
    assert_eq!(
        taken.len() + report.children.len(),
        failing,
        "a failure report was lost"
    );
    let ids: BTreeSet<ChildId> = taken
        .iter()
        .chain(report.children.iter())
        .map(|r| r.id)
        .collect();
    assert_eq!(ids.len(), failing, "a report was returned twice");
    assert_eq!(report.spawned, 600);
    assert_eq!(report.succeeded, (600 - failing) as u64);
    assert_eq!(
        report.failed,
        kinds.iter().filter(|k| **k <= 1).count() as u64
    );
    assert_eq!(
        report.panicked,
        kinds.iter().filter(|k| **k == 2).count() as u64
    );
    assert!(report.is_balanced());
    assert_eq!((report.cancel_reason, report.first_failure), (None, None));
}

#[test]
fn a_collect_all_scope_discarding_oks_keeps_every_failure_once_and_counts_its_life_on_every_runtime()
 {
    on_every_runtime!(collect_all_discarding);
}

// Docs (`FailurePolicy::FailFast`): "The first failure cancels the scope with a reason naming the
// child: siblings see the token cancelled, new spawns are refused, and a join aborts stragglers
// after the grace period"; (`ScopeReport::first_failure`) "The child whose failure failed the
// scope fast"; (`Spawner::spawn`) "`SpawnError::Closed` with the future, unpolled, when the
// scope is closed or cancelled (also while waiting)"; (`ScopeBuilder::limit`) "`spawn` waits for
// a free slot". A limited fail-fast scope, spawners waiting for slots, the failure at a seeded
// instant after hours.
async fn fail_fast_first_in_time<R: Runtime>(rt: Clocked<R>) {
    let mut rng = SplitMix64::new(0xFA11_FA57);
    for round in 0..5u64 {
        let scope = Scope::builder()
            .runtime(rt.clone())
            .limit(8)
            .grace(MIN)
            .build::<u64, String>()
            .unwrap();
        let times: Vec<Duration> = (0..8)
            .map(|_| HOUR + ms(pick(&mut rng, 0, 3_600_000)))
            .collect();
        let first = (0..8).min_by_key(|&i| (times[i], i)).unwrap();
        let mut ids = Vec::new();
        for (i, at) in times.iter().copied().enumerate() {
            let (c, t) = (rt.clone(), scope.token());
            ids.push(
                scope
                    .try_spawn(async move {
                        match t.run_until_cancelled(c.sleep(at)).await {
                            Ok(()) => Err(format!("child {i}")),
                            Err(_) => Ok(i as u64),
                        }
                    })
                    .unwrap(),
            );
        }
        // Spawners waiting for a slot: refused, unpolled, at the failure.
        let polled = Arc::new(AtomicUsize::new(0));
        let mut waiting = Vec::new();
        for _ in 0..50 {
            let (spawner, p) = (scope.spawner(), polled.clone());
            waiting.push(rt.spawn(async move {
                spawner
                    .spawn(async move {
                        p.fetch_add(1, SeqCst);
                        Ok(0)
                    })
                    .await
                    .is_err()
            }));
        }
        let t0 = rt.now();
        let report = within(&rt, DAY, "join", scope.join()).await;
        assert_eq!(rt.now() - t0, times[first], "round {round}");
        for w in waiting {
            assert!(
                w.await.unwrap(),
                "round {round}: a waiting spawn was not refused"
            );
        }
        assert_eq!(polled.load(SeqCst), 0, "a refused future was polled");
        assert_eq!(report.first_failure, Some(ids[first]), "round {round}");
        assert_eq!(
            report.cancel_reason.as_ref().map(Reason::as_str),
            Some(format!("child #{first} returned an error").as_str())
        );
        assert_eq!((report.spawned, report.failed, report.succeeded), (8, 1, 7));
        for child in &report.children {
            if child.id == ids[first] {
                assert_eq!(child.ending, Ending::Finished);
            } else {
                assert_eq!(
                    child.ending,
                    Ending::Stopped {
                        took: Duration::ZERO
                    },
                    "{child:?}"
                );
            }
        }
    }
}

#[test]
fn a_limited_fail_fast_scope_stops_on_its_first_failure_in_time_and_refuses_waiting_spawns_on_every_runtime()
 {
    on_every_runtime!(fail_fast_first_in_time);
}

// ================================================================================================
// More losses: while being stopped, in a pool's worker, holding a scope's slot
// ================================================================================================

// Docs (`SupervisorEvent::Stopped`): "A child was stopped by the supervisor: its token
// cancelled, then its end awaited within its shutdown timeout"; (`Exit::Aborted`) "or lost by
// its runtime (its task dropped unfinished)"; (`Shutdown`) "each one's token is cancelled and it
// gets until its own timeout or the global deadline, whichever comes first"; (`ShutdownReport::
// is_clean`) "Whether the shutdown aborted no component (one that failed, panicked or was lost
// on its own still counts as clean)"; (`deadline_exceeded`) "Whether the global deadline passed";
// (`Restart::Temporary`) "Never restarted"; (`Ended::NoChildrenLeft`) "Every child ended and
// none is to be restarted". A child or component lost ten minutes into an hour-long stop has
// ended: the stop goes on at once.
async fn lost_while_being_stopped<R: Runtime>(rt: Clocked<Lossy<R>>) {
    let (log, hook) = recorder(&rt);
    let lossy = rt.inner().clone();
    let sup = Supervisor::builder()
        .runtime(rt.clone())
        .on_event(hook)
        .child(ChildSpec::new(
            "plain",
            |stop: CancellationToken| async move {
                stop.cancelled().await;
                Ok::<(), String>(())
            },
        ))
        .child(
            ChildSpec::new("deaf", move |_stop| {
                lossy.arm();
                async move {
                    assert!(on_lost_runtime(), "not on the second runtime");
                    std::future::pending::<Result<(), String>>().await
                }
            })
            .restart(Restart::Temporary)
            .shutdown_timeout(HOUR),
        )
        .build()
        .unwrap();
    let stop = CancellationToken::new();
    let (st, c, lossy) = (stop.clone(), rt.clone(), rt.inner().clone());
    rt.spawn(async move {
        c.sleep(SEC).await;
        st.cancel("stop");
        c.sleep(10 * MIN).await;
        lossy.lose_everything();
    });
    let t0 = rt.now();
    let report = within(&rt, DAY, "supervisor", sup.run(stop)).await.unwrap();
    assert_eq!(
        rt.now() - t0,
        SEC + 10 * MIN,
        "the supervisor waited for a lost child"
    );
    let stopped: Vec<(String, Exit)> = tasks(&report.stopped)
        .into_iter()
        .map(|t| (t.0, t.1))
        .collect();
    assert_eq!(
        stopped,
        [
            ("deaf".to_owned(), Exit::Aborted),
            ("plain".to_owned(), Exit::Ok(()))
        ],
        "{report:?}"
    );
    assert_eq!(started_runs(&log, "deaf"), [1]);
}

// The same, for a shutdown's component.
async fn component_lost_while_being_stopped<R: Runtime>(rt: Clocked<Lossy<R>>) {
    let mut shutdown = Shutdown::builder()
        .runtime(rt.clone())
        .deadline(HOUR)
        .build()
        .unwrap();
    shutdown.register("store", |stop| async move {
        stop.cancelled().await;
        Ok::<(), String>(())
    });
    rt.inner().arm();
    shutdown.register("deaf", |_stop| async move {
        assert!(on_lost_runtime(), "not on the second runtime");
        std::future::pending::<Result<(), String>>().await
    });
    assert_eq!(rt.inner().armed(), 0);
    let (c, lossy) = (rt.clone(), rt.inner().clone());
    rt.spawn(async move {
        c.sleep(10 * MIN).await;
        lossy.lose_everything();
    });
    let t0 = rt.now();
    let report = within(&rt, DAY, "shutdown", shutdown.stop("deploy")).await;
    assert_eq!(
        rt.now() - t0,
        10 * MIN,
        "the shutdown waited for a lost component"
    );
    assert_eq!(report.took, 10 * MIN);
    assert_eq!(report.components[0].name.as_ref(), "deaf");
    assert_eq!(report.components[0].exit, Exit::Aborted);
    assert_eq!(
        (&report.components[1].exit, report.components[1].ending),
        (
            &Exit::Ok(()),
            Ending::Stopped {
                took: Duration::ZERO
            }
        )
    );
    assert!(!report.deadline_exceeded, "{report:?}");
    assert!(
        report.is_clean(),
        "a component lost on its own still counts as clean: {report:?}"
    );
}

#[test]
fn a_child_or_component_lost_while_being_stopped_ends_the_wait_at_once_on_every_runtime() {
    on_every_lossy_runtime!(lost_while_being_stopped);
    on_every_lossy_runtime!(component_lost_while_being_stopped);
}

// Docs (`WorkerPool`): "hands back every job never started: `submitted = completed + failed +
// handed back`, always"; (`PoolReport`) "every job ever submitted is in exactly one of these";
// (`JobHandle`) "The result of one job: await it for an `Exit<T, Elapsed, Panic>`";
// (`Exit::Aborted`) "or lost by its runtime (its task dropped unfinished)"; (`WorkerPoolBuilder::
// start`) "Starts the workers". One of two workers is lost by its runtime in the middle of a job.
async fn pool_with_a_lost_worker<R: Runtime>(rt: Clocked<Lossy<R>>) {
    let lost_jobs = Arc::new(Mutex::new(Vec::new()));
    let (c, lj) = (rt.clone(), lost_jobs.clone());
    rt.inner().arm();
    let pool = WorkerPool::builder()
        .workers(2)
        .queue(100)
        .runtime(rt.clone())
        .start(move |id: u64| {
            let (c, lj) = (c.clone(), lj.clone());
            async move {
                if on_lost_runtime() {
                    lj.lock().unwrap().push(id);
                }
                c.sleep(MIN).await;
                id
            }
        })
        .unwrap();
    assert_eq!(rt.inner().armed(), 0, "start spawned no worker at once");
    let handles: Vec<_> = (0..20).map(|id| pool.try_submit(id).unwrap()).collect();
    rt.sleep(30 * SEC).await;
    let lost: Vec<u64> = lost_jobs.lock().unwrap().clone();
    assert_eq!(lost.len(), 1, "vacuous: no job ran on the lost worker");
    rt.inner().lose_everything();
    let mut exits = Vec::new();
    for (id, h) in handles.into_iter().enumerate() {
        let exit = within(&rt, DAY, "a job handle", h).await;
        exits.push((id as u64, exit));
    }
    let report = within(&rt, DAY, "shutdown", pool.shutdown(HOUR)).await;
    // "Jobs submitted over the pool's life."
    assert_eq!(report.submitted, 20);
    // "`submitted = completed + failed + handed back`, always"; "every job ever submitted is in
    // exactly one of these".
    assert_eq!(
        report.submitted,
        report.completed + report.failed + report.handed_back.len() as u64,
        "{report:?}"
    );
    for (id, exit) in exits {
        if id == lost[0] {
            // "`Aborted`: ... or lost by its runtime (its task dropped unfinished)"
            assert!(matches!(exit, Exit::Aborted), "the lost job: {exit:?}");
        } else {
            assert!(matches!(exit, Exit::Ok(v) if v == id), "job {id}: {exit:?}");
        }
    }
    assert_eq!(report.completed, 19);
}

#[test]
fn a_pool_worker_lost_mid_job_leaves_the_accounting_balanced_on_every_runtime() {
    on_every_lossy_runtime!(pool_with_a_lost_worker);
}

// Docs (`ScopeBuilder::limit`): "At most `max_running` children at once: `spawn` waits for a free
// slot"; (`ChildReport::exit`) "or its task was dropped unfinished (its runtime shut down)";
// (`ScopeReport::aborted`) "or lost by their runtime". A lost child frees its slot.
async fn lost_child_frees_its_slot<R: Runtime>(rt: Clocked<Lossy<R>>) {
    let scope = Scope::builder()
        .runtime(rt.clone())
        .limit(1)
        .build::<u32, ()>()
        .unwrap();
    let ran_there = Arc::new(AtomicBool::new(false));
    rt.inner().arm();
    scope
        .try_spawn(lost_child(ran_there.clone(), scope.token(), true, 0))
        .unwrap();
    let spawner = scope.spawner();
    let waiting = rt.spawn(async move { spawner.spawn(async { Ok(1) }).await.is_ok() });
    let (c, lossy) = (rt.clone(), rt.inner().clone());
    rt.spawn(async move {
        c.sleep(HOUR).await;
        lossy.lose_everything();
    });
    let t0 = rt.now();
    assert!(
        within(&rt, DAY, "the waiting spawn", waiting)
            .await
            .unwrap()
    );
    assert_eq!(
        rt.now() - t0,
        HOUR,
        "admitted when the lost child freed its slot"
    );
    assert!(ran_there.load(SeqCst));
    let report = within(&rt, DAY, "join", scope.join()).await;
    assert_eq!(
        (report.spawned, report.succeeded, report.aborted),
        (2, 1, 1),
        "{report:?}"
    );
    assert!(report.is_balanced());
}

#[test]
fn a_lost_child_frees_its_slot_for_a_waiting_spawn_on_every_runtime() {
    on_every_lossy_runtime!(lost_child_frees_its_slot);
}

// Docs (`Restart::Temporary`): "Never restarted"; (`Ended::NoChildrenLeft`) "Every child ended
// and none is to be restarted"; (`SupervisorEvent::Exited`) "`Aborted` (its task was aborted or
// lost by the runtime)"; (`SupervisorReport::stopped`) "The children it stopped at the end".
async fn all_temporary_lost<R: Runtime>(rt: Clocked<Lossy<R>>) {
    let (log, hook) = recorder(&rt);
    let spec = |name: &'static str| {
        let lossy = rt.inner().clone();
        ChildSpec::new(name, move |stop: CancellationToken| {
            lossy.arm();
            async move {
                assert!(on_lost_runtime());
                stop.cancelled().await;
                Ok::<(), String>(())
            }
        })
        .restart(Restart::Temporary)
    };
    let sup = Supervisor::builder()
        .runtime(rt.clone())
        .on_event(hook)
        .child(spec("one"))
        .child(spec("two"))
        .build()
        .unwrap();
    let (c, lossy) = (rt.clone(), rt.inner().clone());
    rt.spawn(async move {
        c.sleep(MIN).await;
        lossy.lose_everything();
    });
    let report = within(&rt, DAY, "supervisor", sup.run(CancellationToken::new()))
        .await
        .expect("no escalation");
    assert_eq!(report.ended, Ended::NoChildrenLeft);
    assert_eq!(report.restarts, 0);
    assert!(report.stopped.is_empty(), "{report:?}");
    let exits = events(&log)
        .into_iter()
        .filter(|e| {
            matches!(
                e,
                SupervisorEvent::Exited {
                    exit: Exit::Aborted,
                    ..
                }
            )
        })
        .count();
    assert_eq!(exits, 2);
}

#[test]
fn a_supervisor_whose_temporary_children_are_all_lost_ends_with_no_children_left_on_every_runtime()
{
    on_every_lossy_runtime!(all_temporary_lost);
}

// ================================================================================================
// More supervisor edges: dating restarts, stable runs, pending strategy restarts
// ================================================================================================

// Docs (`SupervisorBuilder::intensity`): "A restart is dated by the exit that caused it"; "At
// most `max_restarts` restarts within any `period`". With an 8 s backoff and a failure 3 s
// after each start, exits are 11 s apart: a 10 s window never holds two restarts (it would if
// restarts were dated by the start they lead to, 8 s after their exit).
async fn dated_by_exit<R: Runtime>(rt: Clocked<R>) {
    let (log, hook) = recorder(&rt);
    let stop = CancellationToken::new();
    let (s, seen) = (stop.clone(), Arc::new(AtomicUsize::new(0)));
    let c = rt.clone();
    let sup = Supervisor::builder()
        .runtime(rt.clone())
        .intensity(1, 10 * SEC)
        .backoff(fixed(8 * SEC))
        .on_event(move |e| {
            hook(e);
            if matches!(e, SupervisorEvent::Restarting { .. }) && seen.fetch_add(1, SeqCst) + 1 == 6
            {
                s.cancel("enough");
            }
        })
        .child(ChildSpec::new("slow-starter", move |_stop| {
            let c = c.clone();
            async move {
                c.sleep(3 * SEC).await;
                Err::<(), _>("fell over")
            }
        }))
        .build()
        .unwrap();
    let report = within(&rt, DAY, "supervisor", sup.run(stop))
        .await
        .expect("exits 11 s apart never exceed 1 restart in 10 s");
    assert_eq!(report.restarts, 6);
    let got: Vec<(Duration, u32)> = restarting(&log).iter().map(|r| (r.0, r.3)).collect();
    let want: Vec<(Duration, u32)> = (0..6u32).map(|k| (3 * SEC + 11 * SEC * k, 1)).collect();
    assert_eq!(got, want);
}

#[test]
fn restarts_are_dated_by_their_exit_not_by_the_start_after_the_backoff_on_every_runtime() {
    on_every_runtime!(dated_by_exit);
}

// Docs (`SupervisorBuilder::stable_after`): "A child that ran at least this long before ending
// starts its backoff afresh"; (`backoff`) "exponential ... doubling"; (`SupervisorEvent::
// Restarting::delay`) "The backoff delay before the restart". Runs of exactly `stable_after`
// and of one nanosecond less.
async fn stable_after_edge<R: Runtime>(rt: Clocked<R>) {
    let (log, hook) = recorder(&rt);
    let stop = CancellationToken::new();
    let (s, seen) = (stop.clone(), Arc::new(AtomicUsize::new(0)));
    let runs = [
        Duration::ZERO,
        Duration::ZERO,
        5 * SEC,
        5 * SEC - NS,
        Duration::ZERO,
        5 * SEC + NS,
    ];
    let (c, n) = (rt.clone(), Arc::new(AtomicUsize::new(0)));
    let sup = Supervisor::builder()
        .runtime(rt.clone())
        .intensity(u32::MAX, HOUR)
        .stable_after(5 * SEC)
        .backoff(
            Backoff::exponential(ms(100))
                .jitter(Jitter::None)
                .max_attempts(u32::MAX)
                .max_delay(HOUR)
                .build()
                .unwrap(),
        )
        .on_event(move |e| {
            hook(e);
            if matches!(e, SupervisorEvent::Restarting { .. })
                && seen.fetch_add(1, SeqCst) + 1 == runs.len()
            {
                s.cancel("enough");
            }
        })
        .child(ChildSpec::new("x", move |_stop| {
            let (c, run) = (c.clone(), runs[n.fetch_add(1, SeqCst) % runs.len()]);
            async move {
                c.sleep(run).await;
                Err::<(), _>("x")
            }
        }))
        .build()
        .unwrap();
    within(&rt, DAY, "supervisor", sup.run(stop)).await.unwrap();
    let delays: Vec<Duration> = restarting(&log).iter().map(|r| r.2).collect();
    assert_eq!(
        delays,
        [ms(100), ms(200), ms(100), ms(200), ms(400), ms(100)],
        "after runs of {runs:?}"
    );
}

#[test]
fn a_run_of_exactly_stable_after_starts_the_backoff_afresh_and_one_ns_less_does_not_on_every_runtime()
 {
    on_every_runtime!(stable_after_edge);
}

// Docs (`Strategy::OneForAll`): "Every child is stopped ... and all are restarted in order";
// (run.rs) "(A transient child that ended normally stays: a sibling's one-for-all or
// rest-for-one restart starts it again, as in OTP.)"; (`SupervisorReport::restarts`) "A restart
// still waiting for its backoff delay when `stop` was cancelled counts, though the child never
// started again"; (`Supervisor::run`) supervises "until `stop` is cancelled (then stops them
// ..., and returns the report)".
async fn one_for_all_pending<R: Runtime>(rt: Clocked<R>) {
    for (backoff, stop_at) in [(ms(10), MIN), (HOUR, 30 * MIN)] {
        let (log, hook) = recorder(&rt);
        let (c, fails) = (rt.clone(), Arc::new(AtomicU32::new(0)));
        let sup = Supervisor::builder()
            .runtime(rt.clone())
            .strategy(Strategy::OneForAll)
            .backoff(fixed(backoff))
            .on_event(hook)
            .child(
                ChildSpec::new("setup", |_stop| async { Ok::<(), String>(()) })
                    .restart(Restart::Transient),
            )
            .child(ChildSpec::new("worker", move |stop: CancellationToken| {
                let (c, first) = (c.clone(), fails.fetch_add(1, SeqCst) == 0);
                async move {
                    if first {
                        c.sleep(SEC).await;
                        return Err("worker broke".to_owned());
                    }
                    stop.cancelled().await;
                    Ok(())
                }
            }))
            .build()
            .unwrap();
        let stop = CancellationToken::new();
        let (st, c) = (stop.clone(), rt.clone());
        rt.spawn(async move {
            c.sleep(stop_at).await;
            st.cancel("done");
        });
        let t0 = rt.now();
        let report = within(&rt, DAY, "supervisor", sup.run(stop)).await.unwrap();
        assert_eq!(rt.now() - t0, stop_at, "backoff {backoff:?}");
        assert_eq!(report.restarts, 1);
        assert_eq!(report.ended, Ended::Stopped);
        if backoff == HOUR {
            assert_eq!(started_runs(&log, "setup"), [1]);
            assert_eq!(started_runs(&log, "worker"), [1]);
            assert!(report.stopped.is_empty(), "nothing was running: {report:?}");
        } else {
            assert_eq!(
                started_runs(&log, "setup"),
                [1, 2],
                "a transient child that ended normally is started again by a one-for-all restart"
            );
            assert_eq!(started_runs(&log, "worker"), [1, 2]);
        }
    }
}

#[test]
fn one_for_all_restarts_bring_back_finished_transients_and_count_while_pending_on_every_runtime() {
    on_every_runtime!(one_for_all_pending);
}

// Docs (`Shutdown::run`): "Cancel safety: ... Dropping the future ends the shutdown there, as
// dropping a Shutdown does: every component not yet stopped has its token cancelled (reason
// "shutdown coordinator dropped") and is aborted at once, and so is the one being stopped at
// that moment (its token already cancelled): no component outlives the coordinator";
// (`Shutdown` Drop) "A coordinator dropped before run ... does not leave its components running
// unseen: each is told to stop and aborted".
async fn coordinator_dropped<R: Runtime>(rt: Clocked<R>) {
    for run_first in [false, true] {
        let mut shutdown = Shutdown::builder()
            .runtime(rt.clone())
            .deadline(DAY)
            .build()
            .unwrap();
        let mut probes = Vec::new();
        for name in ["x", "y", "z"] {
            let (token_slot, gone) = (Arc::new(Mutex::new(None)), Arc::new(AtomicBool::new(false)));
            let (slot, g, c) = (token_slot.clone(), gone.clone(), rt.clone());
            shutdown.register(name, move |stop: CancellationToken| {
                *slot.lock().unwrap() = Some(stop.clone());
                async move {
                    let _g = OnDrop(g);
                    stop.cancelled().await;
                    c.sleep(HOUR).await;
                    Ok::<(), String>(())
                }
            });
            probes.push((name, token_slot, gone));
        }
        rt.sleep(ms(1)).await;
        if run_first {
            let cut = shutdown.stop("deploy").timeout_on(&rt, 30 * MIN).await;
            assert!(cut.is_err(), "the shutdown finished within 30 minutes");
        } else {
            drop(shutdown);
        }
        rt.sleep(ms(1)).await;
        for (name, token, gone) in &probes {
            let token = token.lock().unwrap().clone().unwrap();
            assert!(
                gone.load(SeqCst),
                "{name} outlived its coordinator (run first: {run_first})"
            );
            assert!(token.is_cancelled(), "{name} was not told to stop");
            if run_first && *name != "z" {
                assert_eq!(
                    token.reason().unwrap().as_str(),
                    "shutdown coordinator dropped",
                    "{name}"
                );
            }
        }
    }
}

#[test]
fn a_dropped_coordinator_tells_every_component_why_and_leaves_none_running_on_every_runtime() {
    on_every_runtime!(coordinator_dropped);
}

// Docs (`WorkerPool`): "a shutdown that drains within a deadline and hands back every job never
// started (`submitted = completed + failed + handed back`)"; (`PoolReport::handed_back`) "Jobs
// never started, handed back (dead letters) in submission order (their handles read
// `Exit::Aborted` too)". The pool's only worker is lost while idle: nothing ever starts again.
async fn only_worker_lost<R: Runtime>(rt: Clocked<Lossy<R>>) {
    let c = rt.clone();
    rt.inner().arm();
    let pool = WorkerPool::builder()
        .workers(1)
        .queue(10)
        .runtime(rt.clone())
        .start(move |id: u64| {
            let c = c.clone();
            async move {
                c.sleep(SEC).await;
                id
            }
        })
        .unwrap();
    assert_eq!(rt.inner().armed(), 0);
    rt.sleep(SEC).await;
    rt.inner().lose_everything();
    let handles: Vec<_> = (0..5).map(|id| pool.try_submit(id).unwrap()).collect();
    let report = within(&rt, DAY, "shutdown", pool.shutdown(MIN)).await;
    assert_eq!(report.submitted, 5);
    assert_eq!(report.handed_back, [0, 1, 2, 3, 4], "{report:?}");
    assert_eq!((report.completed, report.failed), (0, 0));
    for h in handles {
        assert!(matches!(within(&rt, DAY, "handle", h).await, Exit::Aborted));
    }
}

#[test]
fn a_pool_whose_only_worker_is_lost_hands_back_every_queued_job_on_every_runtime() {
    on_every_lossy_runtime!(only_worker_lost);
}

// Docs (`ChildSpec::supervisor`): "Its shutdown timeout is `SUPERVISOR_SHUTDOWN_TIMEOUT` (OTP's
// `infinity`): it stops its own children within theirs"; (`SUPERVISOR_SHUTDOWN_TIMEOUT`) "a
// year"; (`Supervisor` Drop) "A supervisor dropped before it stopped its children (its `run`
// future dropped, or aborted by a parent after its shutdown timeout) takes them down with it";
// (`SupervisorReport::stopped`) "`Ending::Aborted` (it was aborted)". An inner supervisor whose
// deaf child may take ten minutes, then one whose deaf child may take two years.
async fn nested_shutdown_timeouts<R: Runtime>(rt: Clocked<R>) {
    assert_eq!(
        tidewall::task::supervisor::SUPERVISOR_SHUTDOWN_TIMEOUT,
        YEAR,
        "documented as a year"
    );
    for (child_timeout, want_took, aborted) in [(10 * MIN, 10 * MIN, false), (2 * YEAR, YEAR, true)]
    {
        let gone = Arc::new(AtomicBool::new(false));
        let (c, g) = (rt.clone(), gone.clone());
        let outer = Supervisor::builder()
            .runtime(rt.clone())
            .child(ChildSpec::supervisor("inner", move || {
                let g = g.clone();
                Supervisor::builder()
                    .runtime(c.clone())
                    .child(
                        ChildSpec::new("deaf", move |_stop| {
                            let g = g.clone();
                            async move {
                                let _g = OnDrop(g);
                                std::future::pending::<Result<(), String>>().await
                            }
                        })
                        .shutdown_timeout(child_timeout),
                    )
                    .build()
                    .unwrap()
            }))
            .build()
            .unwrap();
        let stop = CancellationToken::new();
        let (st, c) = (stop.clone(), rt.clone());
        rt.spawn(async move {
            c.sleep(HOUR).await;
            st.cancel("retire");
        });
        let t0 = rt.now();
        let report = within(&rt, 3 * YEAR, "outer", outer.run(stop))
            .await
            .unwrap();
        assert_eq!(
            rt.now() - t0,
            HOUR + want_took,
            "child timeout {child_timeout:?}"
        );
        let want = if aborted {
            (
                "inner".to_owned(),
                Exit::Aborted,
                Ending::Aborted { took: YEAR },
            )
        } else {
            (
                "inner".to_owned(),
                Exit::Ok(()),
                Ending::Stopped { took: 10 * MIN },
            )
        };
        assert_eq!(tasks(&report.stopped), [want]);
        rt.sleep(ms(1)).await;
        assert!(
            gone.load(SeqCst),
            "the deaf grandchild outlived its supervisor"
        );
    }
}

#[test]
fn a_nested_supervisor_gets_a_year_to_stop_and_takes_its_children_down_when_cut_on_every_runtime() {
    on_every_runtime!(nested_shutdown_timeouts);
}

// Docs (`ScopeReport::children`): "Reports not yet taken with `next`, in the order the children
// ended"; (`ChildId::index`) "The spawn order, from 0"; (`ScopeBuilder::parent`) "Makes the
// scope's token a child of `parent`: cancelling `parent` cancels the scope"; (`Scope::cancel`)
// "new spawns are refused"; (`SpawnError`) "The scope is closed or cancelled"; (`ScopeReport::
// cancel_reason`) "Why the scope was cancelled, if it was".
async fn completion_order_and_born_cancelled<R: Runtime>(rt: Clocked<R>) {
    let mut rng = SplitMix64::new(0x0DE2);
    let scope = Scope::builder()
        .runtime(rt.clone())
        .policy(FailurePolicy::CollectAll)
        .build::<u64, u64>()
        .unwrap();
    let mut times = BTreeSet::new();
    while times.len() < 300 {
        times.insert(pick(&mut rng, 1, 10 * 86_400_000));
    }
    let mut shuffled: Vec<u64> = times.iter().copied().collect();
    for i in (1..shuffled.len()).rev() {
        shuffled.swap(i, pick(&mut rng, 0, i as u64) as usize);
    }
    for (i, t) in shuffled.iter().copied().enumerate() {
        let c = rt.clone();
        scope
            .try_spawn(async move {
                c.sleep(ms(t)).await;
                if i % 4 == 0 { Err(t) } else { Ok(t) }
            })
            .unwrap();
    }
    let report = within(&rt, 20 * DAY, "join", scope.join()).await;
    let ended: Vec<u64> = report
        .children
        .iter()
        .map(|c| match c.exit {
            Exit::Ok(t) | Exit::Err(t) => t,
            _ => panic!("{c:?}"),
        })
        .collect();
    let sorted: Vec<u64> = times.iter().copied().collect();
    assert_eq!(ended, sorted, "reports not in the order the children ended");
    for c in &report.children {
        assert_eq!(
            shuffled[c.id.index() as usize],
            match c.exit {
                Exit::Ok(t) | Exit::Err(t) => t,
                _ => 0,
            }
        );
    }

    let parent = CancellationToken::new();
    parent.cancel("closed before it opened");
    let scope = Scope::builder()
        .runtime(rt.clone())
        .parent(&parent)
        .build::<(), ()>()
        .unwrap();
    assert_eq!(
        scope.token().reason(),
        Some(Reason::new("closed before it opened"))
    );
    assert!(
        scope.try_spawn(async { Ok(()) }).is_err(),
        "a cancelled scope accepted a child"
    );
    assert!(scope.spawn(async { Ok(()) }).await.is_err());
    let report = within(&rt, DAY, "join", scope.join()).await;
    assert_eq!(report.spawned, 0);
    assert_eq!(
        report.cancel_reason,
        Some(Reason::new("closed before it opened"))
    );
}

#[test]
fn scope_reports_come_in_completion_order_and_a_scope_born_cancelled_refuses_children_on_every_runtime()
 {
    on_every_runtime!(completion_order_and_born_cancelled);
}

// Docs (`HealthChecker`): "Each finished probe publishes its verdict with the instant it
// finished (`HealthHandle::latest`)"; (`HealthHandle::changed`) "Waits until the health differs
// from `seen` (pass `Health::Unknown` to wait for the first verdict), and returns the new one";
// (`HealthCheckerBuilder::start`) "`ConfigError::Zero` for a zero period or timeout;
// `ConfigError::DurationOverflow` for either beyond `u64::MAX` nanoseconds". Same verdicts for
// a day of probes: the instant moves, the waiters stay.
async fn same_verdict_republished<R: Runtime>(rt: Clocked<R>) {
    let token = CancellationToken::new();
    let b = || HealthChecker::builder().runtime(rt.clone());
    let probe = || async { Ok::<(), String>(()) };
    assert!(matches!(
        b().period(Duration::ZERO).start(&token, probe).map(drop),
        Err(ConfigError::Zero { .. })
    ));
    assert!(matches!(
        b().timeout(Duration::ZERO).start(&token, probe).map(drop),
        Err(ConfigError::Zero { .. })
    ));
    assert!(matches!(
        b().period(Duration::MAX).start(&token, probe).map(drop),
        Err(ConfigError::DurationOverflow { .. })
    ));
    let c = rt.clone();
    let (health, checker) = b()
        .period(HOUR)
        .timeout(MIN)
        .start(&token, move || {
            let c = c.clone();
            async move {
                c.sleep(SEC).await;
                Ok::<(), String>(())
            }
        })
        .unwrap();
    let t0 = rt.now();
    let checker = rt.spawn(checker);
    assert_eq!(
        within(&rt, DAY, "first", health.changed(&Health::Unknown)).await,
        Health::Healthy
    );
    let (h, c) = (health.clone(), rt.clone());
    let waiter = rt.spawn(async move {
        h.changed(&Health::Healthy)
            .timeout_on(&c, DAY - ms(500))
            .await
    });
    // An already different `seen` returns at once.
    assert_eq!(health.changed(&Health::TimedOut).await, Health::Healthy);
    assert_eq!(rt.now() - t0, SEC);
    assert_eq!(
        within(&rt, 2 * DAY, "waiter", waiter).await.unwrap(),
        Err(Elapsed)
    );
    let (verdict, at) = health.latest();
    assert_eq!(verdict, Health::Healthy);
    // Probes start at k hours; the one at 24 h finished at 24 h + 1 s, after the waiter gave up.
    assert_eq!(at.map(|a| a - t0), Some(23 * HOUR + SEC));
    rt.sleep(SEC).await;
    assert_eq!(health.latest().1.map(|a| a - t0), Some(24 * HOUR + SEC));
    token.cancel("done");
    assert_eq!(
        within(&rt, DAY, "checker", checker).await.unwrap().as_str(),
        "done"
    );
}

#[test]
fn the_same_verdict_republished_moves_the_instant_but_wakes_no_waiter_on_every_runtime() {
    on_every_runtime!(same_verdict_republished);
}

// Docs (`Shutdown`): "Every other one is stopped at its turn and reported with
// `Ending::Stopped`"; (`Shutdown::run`) "The cause is what it sees first"; (`ShutdownReport::
// is_clean`) "Whether the shutdown aborted no component (one that failed, panicked or was lost
// on its own still counts as clean)"; (`Exit`) a component keeps "the error's message" and
// "the panic's message". Components that fail or panic as they are stopped.
async fn failing_while_stopped<R: Runtime>(rt: Clocked<R>) {
    let mut shutdown = Shutdown::builder()
        .runtime(rt.clone())
        .deadline(MIN)
        .build()
        .unwrap();
    let c = rt.clone();
    shutdown.register("panicky", move |stop| async move {
        stop.cancelled().await;
        c.sleep(ms(5)).await;
        explode("flush failed")
    });
    let c = rt.clone();
    shutdown.register("erring", move |stop| async move {
        stop.cancelled().await;
        c.sleep(ms(7)).await;
        Err::<(), _>(std::io::Error::other("socket closed rudely"))
    });
    let (trigger, c) = (shutdown.trigger(), rt.clone());
    rt.spawn(async move {
        c.sleep(100 * DAY).await;
        trigger.cancel("quarterly restart");
    });
    let report = within(&rt, 200 * DAY, "shutdown", shutdown.run()).await;
    assert_eq!(
        report.cause,
        Cause::Triggered(Reason::new("quarterly restart"))
    );
    assert_eq!(
        tasks(&report.components),
        [
            (
                "erring".to_owned(),
                Exit::Err("socket closed rudely".to_owned()),
                Ending::Stopped { took: ms(7) }
            ),
            (
                "panicky".to_owned(),
                Exit::Panicked("flush failed".to_owned()),
                Ending::Stopped { took: ms(5) }
            ),
        ]
    );
    assert_eq!(report.took, ms(12));
    assert!(report.is_clean() && !report.deadline_exceeded);
}

#[test]
fn components_failing_or_panicking_as_they_stop_keep_the_trigger_cause_and_a_clean_report_on_every_runtime()
 {
    on_every_runtime!(failing_while_stopped);
}

// Docs (`WorkerPool::running`): "Jobs running now"; (`WorkerPool::queued`): "Jobs waiting in the
// queue"; (`Exit::Aborted`) "or lost by its runtime (its task dropped unfinished)". After a
// worker is lost mid-job and the queue has drained, nothing is running.
async fn lost_worker_gauges<R: Runtime>(rt: Clocked<Lossy<R>>) {
    let c = rt.clone();
    rt.inner().arm();
    let pool = WorkerPool::builder()
        .workers(2)
        .queue(10)
        .runtime(rt.clone())
        .start(move |id: u64| {
            let c = c.clone();
            async move {
                c.sleep(MIN).await;
                id
            }
        })
        .unwrap();
    let handles: Vec<_> = (0..6).map(|id| pool.try_submit(id).unwrap()).collect();
    rt.sleep(SEC).await;
    assert_eq!(pool.running(), 2);
    rt.inner().lose_everything();
    for h in handles {
        within(&rt, DAY, "handle", h).await;
    }
    rt.sleep(SEC).await;
    assert_eq!(pool.queued(), 0);
    // `running`: "Jobs running now."
    assert_eq!(
        pool.running(),
        0,
        "a job lost with its worker still counts as running"
    );
}

#[test]
fn a_job_lost_with_its_worker_no_longer_counts_as_running_on_every_runtime() {
    on_every_lossy_runtime!(lost_worker_gauges);
}

/// A waker that counts its wakes.
struct Counting(AtomicUsize);
impl Wake for Counting {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, SeqCst);
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.fetch_add(1, SeqCst);
    }
}

// Docs (`CancellationToken::cancelled`): "Completes with the reason once the token is
// cancelled"; (`CancelledOwned`) "holds its own token, so it is 'static"; (`CancellationToken`)
// "everything waiting on it ... sees the cancellation". As every `Future`, a waiter polled again
// with another waker must wake the latest one; a thousand waiters each moved between wakers,
// a seeded third of them dropped.
#[test]
fn waiters_polled_with_a_new_waker_wake_the_latest_one() {
    let mut rng = SplitMix64::new(0x3A7E5);
    let token = CancellationToken::new();
    let child = token.child();
    let mut kept = Vec::new();
    for i in 0..1_000 {
        let old = Arc::new(Counting(AtomicUsize::new(0)));
        let new = Arc::new(Counting(AtomicUsize::new(0)));
        let mut fut: Pin<Box<dyn Future<Output = Reason> + Send>> = if i % 2 == 0 {
            Box::pin(child.cancelled_owned())
        } else {
            Box::pin(token.cancelled_owned())
        };
        let w_old = Waker::from(old.clone());
        let w_new = Waker::from(new.clone());
        assert!(
            fut.as_mut()
                .poll(&mut Context::from_waker(&w_old))
                .is_pending()
        );
        for _ in 0..pick(&mut rng, 0, 3) {
            assert!(
                fut.as_mut()
                    .poll(&mut Context::from_waker(&w_old))
                    .is_pending()
            );
        }
        assert!(
            fut.as_mut()
                .poll(&mut Context::from_waker(&w_new))
                .is_pending()
        );
        if pick(&mut rng, 0, 2) == 0 {
            drop(fut);
        } else {
            kept.push((fut, new));
        }
    }
    token.cancel("rotate");
    assert!(kept.len() > 300);
    for (mut fut, new) in kept {
        assert!(new.0.load(SeqCst) >= 1, "the latest waker was not woken");
        let noop = Waker::noop();
        assert!(
            matches!(fut.as_mut().poll(&mut Context::from_waker(noop)), Poll::Ready(r) if r.as_str() == "rotate")
        );
    }
}

// Docs (`periodic`): "Runs `work(tick)` every `period` until `token` is cancelled; returns the
// reason"; "the first run is one period later"; (task module) periodic work "stopped by a token";
// (`HealthCheckerBuilder::start`) "until `token` is cancelled, and then returns the reason".
// A cancel between runs of a yearly schedule ends it then, not at the next tick.
async fn prompt_stop_between_runs<R: Runtime>(rt: Clocked<R>) {
    let token = CancellationToken::new();
    token.cancel("before it began");
    let runs = Arc::new(AtomicU32::new(0));
    let r = runs.clone();
    let t0 = rt.now();
    let reason = within(
        &rt,
        10 * YEAR,
        "periodic",
        periodic(rt.clone(), YEAR, MissedTicks::Skip, &token, move |_| {
            r.fetch_add(1, SeqCst);
            async {}
        })
        .unwrap(),
    )
    .await;
    assert_eq!(
        (reason.as_str(), rt.now() - t0, runs.load(SeqCst)),
        ("before it began", Duration::ZERO, 0)
    );

    let token = CancellationToken::new();
    let (stop, c) = (token.clone(), rt.clone());
    rt.spawn(async move {
        c.sleep(YEAR + 10 * MIN).await;
        stop.cancel("between runs");
    });
    let r = runs.clone();
    let t0 = rt.now();
    let reason = within(
        &rt,
        10 * YEAR,
        "periodic",
        periodic(rt.clone(), YEAR, MissedTicks::Burst, &token, move |_| {
            r.fetch_add(1, SeqCst);
            async {}
        })
        .unwrap(),
    )
    .await;
    assert_eq!(reason.as_str(), "between runs");
    assert_eq!(
        rt.now() - t0,
        YEAR + 10 * MIN,
        "it waited for the next tick"
    );
    assert_eq!(runs.load(SeqCst), 1);

    let token = CancellationToken::new();
    let (_health, checker) = HealthChecker::builder()
        .runtime(rt.clone())
        .period(YEAR)
        .timeout(SEC)
        .start(&token, || async { Ok::<(), String>(()) })
        .unwrap();
    let (stop, c) = (token.clone(), rt.clone());
    rt.spawn(async move {
        c.sleep(DAY).await;
        stop.cancel("a day later");
    });
    let t0 = rt.now();
    assert_eq!(
        within(&rt, 10 * YEAR, "checker", checker).await.as_str(),
        "a day later"
    );
    assert_eq!(rt.now() - t0, DAY);
}

#[test]
fn periodic_work_and_health_checks_stop_at_the_cancel_not_at_the_next_tick_on_every_runtime() {
    on_every_runtime!(prompt_stop_between_runs);
}

// Docs (`PoolReport::handed_back`): "Jobs never started, handed back (dead letters) in
// submission order"; (`WorkerPool::shutdown`) "hands back the jobs never started"; (`Submitter`)
// "Submits to a WorkerPool from anywhere". Producers on many tasks, each at its own seeded
// instant over a year, while the only worker is busy.
async fn handed_back_in_submission_order<R: Runtime>(rt: Clocked<R>) {
    let mut rng = SplitMix64::new(0xDEAD_1E77);
    let c = rt.clone();
    let pool = WorkerPool::builder()
        .workers(1)
        .queue(1_000)
        .runtime(rt.clone())
        .start(move |(_id, d): (u64, Duration)| {
            let c = c.clone();
            async move { c.sleep(d).await }
        })
        .unwrap();
    pool.try_submit((u64::MAX, 2 * YEAR)).unwrap();
    let mut at = BTreeSet::new();
    while at.len() < 500 {
        at.insert(pick(&mut rng, 1, YEAR.as_secs()));
    }
    let mut order: Vec<u64> = at.iter().copied().collect();
    for i in (1..order.len()).rev() {
        order.swap(i, pick(&mut rng, 0, i as u64) as usize);
    }
    let mut producers = Vec::new();
    for secs in order {
        let (s, c) = (pool.submitter(), rt.clone());
        producers.push(rt.spawn(async move {
            c.sleep(Duration::from_secs(secs)).await;
            s.try_submit((secs, Duration::ZERO)).is_ok()
        }));
    }
    for p in producers {
        assert!(within(&rt, 2 * YEAR, "producer", p).await.unwrap());
    }
    let report = within(&rt, DAY, "shutdown", pool.shutdown(Duration::ZERO)).await;
    let back: Vec<u64> = report.handed_back.iter().map(|j| j.0).collect();
    let want: Vec<u64> = at.iter().copied().collect();
    assert_eq!(back, want, "not in submission order");
    assert_eq!(
        (report.submitted, report.aborted, report.failed),
        (501, 1, 1)
    );
}

#[test]
fn jobs_from_many_producers_are_handed_back_in_submission_order_on_every_runtime() {
    on_every_runtime!(handed_back_in_submission_order);
}

// Docs (`SupervisorBuilder::backoff`): "by default exponential from 10 ms, doubling, capped at
// 1 s, with equal jitter: uniform in `[d/2, d]`"; (`SupervisorBuilder::seed`) "Seeds the backoff
// jitter (fresh per supervisor by default), for reproducible runs"; (run.rs) "a seeded
// supervisor restarts with the same delays on every run". Eight quick failures, twice with one
// seed and once with another, on every runtime: the same delays each time, every one in its
// band.
static SEEDED_DELAYS: Mutex<Vec<Vec<Duration>>> = Mutex::new(Vec::new());

async fn seeded_default_backoff<R: Runtime>(rt: Clocked<R>) {
    let run = |seed: u64| {
        let rt = rt.clone();
        async move {
            let (log, hook) = recorder(&rt);
            let stop = CancellationToken::new();
            let (s, seen) = (stop.clone(), Arc::new(AtomicUsize::new(0)));
            let sup = Supervisor::builder()
                .runtime(rt.clone())
                .intensity(100, 5 * SEC)
                .seed(seed)
                .on_event(move |e| {
                    hook(e);
                    if matches!(e, SupervisorEvent::Restarting { .. })
                        && seen.fetch_add(1, SeqCst) + 1 == 8
                    {
                        s.cancel("enough");
                    }
                })
                .child(ChildSpec::new("quick", |_stop| async {
                    Err::<(), _>("no")
                }))
                .build()
                .unwrap();
            within(&rt, DAY, "supervisor", sup.run(stop)).await.unwrap();
            restarting(&log)
                .iter()
                .map(|r| r.2)
                .collect::<Vec<Duration>>()
        }
    };
    let a = run(42).await;
    let b = run(42).await;
    let other = run(43).await;
    assert_eq!(a, b, "one seed, two different sequences");
    assert_ne!(a, other, "two seeds, one sequence");
    for delays in [&a, &other] {
        for (k, d) in delays.iter().enumerate() {
            let cap = (ms(10) * (1 << k)).min(SEC);
            assert!(
                *d >= cap / 2 && *d <= cap,
                "restart {k}: {d:?} outside [{:?}, {cap:?}]",
                cap / 2
            );
        }
    }
    SEEDED_DELAYS.lock().unwrap().push(a);
}

#[test]
fn a_seeded_default_backoff_repeats_its_jittered_delays_within_their_bands_on_every_runtime() {
    on_every_runtime!(seeded_default_backoff);
    let runs = SEEDED_DELAYS.lock().unwrap();
    assert_eq!(runs.len(), 5);
    assert!(
        runs.windows(2).all(|w| w[0] == w[1]),
        "the runtime changed a seeded sequence: {runs:?}"
    );
}

// Docs (`Submitter::submit`): "`SubmitError::Closed` with the job once the pool is shutting down
// (also when it closes while this waits for room)"; (`WorkerPool`) "Dropped without `shutdown`
// (an early return, a panic), the pool closes: a `Submitter` gets `SubmitError::Closed`, and the
// workers run what is queued"; (`SubmitError`) "the job comes back, never lost".
async fn waiting_submitters_when_the_pool_is_dropped<R: Runtime>(rt: Clocked<R>) {
    let c = rt.clone();
    let pool = WorkerPool::builder()
        .workers(1)
        .queue(2)
        .runtime(rt.clone())
        .start(move |id: u64| {
            let c = c.clone();
            async move {
                c.sleep(HOUR).await;
                id
            }
        })
        .unwrap();
    let queued: Vec<_> = (0..3).map(|id| pool.try_submit(id)).collect();
    let mut waiting = Vec::new();
    for id in 100..400u64 {
        let s = pool.submitter();
        waiting.push(rt.spawn(async move { s.submit(id).await.map_err(SubmitError::into_job) }));
    }
    rt.sleep(MIN).await;
    drop(pool);
    let mut got_in = Vec::new();
    for (k, w) in waiting.into_iter().enumerate() {
        let id = 100 + k as u64;
        match within(&rt, MIN, "a waiting submit", w).await.unwrap() {
            // Room freed once, when the worker took its first job, before the drop.
            Ok(handle) => got_in.push((id, handle)),
            Err(job) => assert_eq!(job, id, "a refused submit handed back another job"),
        }
    }
    assert!(
        got_in.len() <= 1,
        "{} waiting submits got in while the queue stayed full",
        got_in.len()
    );
    for (id, h) in got_in {
        assert!(matches!(within(&rt, DAY, "admitted", h).await, Exit::Ok(v) if v == id));
    }
    let mut ok = 0;
    for h in queued.into_iter().flatten() {
        assert!(matches!(within(&rt, DAY, "queued", h).await, Exit::Ok(_)));
        ok += 1;
    }
    assert!(ok >= 2, "vacuous");
}

#[test]
fn submitters_waiting_for_room_get_their_job_back_when_the_pool_is_dropped_on_every_runtime() {
    on_every_runtime!(waiting_submitters_when_the_pool_is_dropped);
}
