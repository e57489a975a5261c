//! Cancellation tokens: reasons, children, always-ready futures, guards, on every runtime;
//! chains and trees of any depth and width on a thread with a 2 MiB stack.

mod common;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tidewall::rt::{Clock, Runtime, Spawn, TaskHandle};
use tidewall::task::{CancellationToken, Reason};
use tidewall::testing::Clocked;

#[test]
fn reasons_flow_to_children_and_the_first_one_wins() {
    let root = CancellationToken::new();
    let (a, b) = (root.child(), root.child());
    let grandchild = a.child();
    b.cancel("b alone");
    assert!(!root.is_cancelled(), "a child never cancels its parent");
    assert_eq!(b.reason(), Some(Reason::new("b alone")));
    root.cancel("shutdown");
    root.cancel("too late");
    for token in [&root, &a, &grandchild] {
        assert_eq!(token.reason().unwrap().as_str(), "shutdown");
    }
    assert_eq!(
        b.reason().unwrap().as_str(),
        "b alone",
        "already cancelled with its own reason"
    );
    let late_child = root.child();
    assert_eq!(
        late_child.reason().unwrap().as_str(),
        "shutdown",
        "born cancelled"
    );
}

/// A future that is always ready to make progress and never finishes: it wakes itself and
/// returns Pending, counting its polls.
struct Busy(Arc<AtomicUsize>);
impl Future for Busy {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.0.fetch_add(1, Ordering::SeqCst);
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// Real (not virtual) time: a busy future keeps its task active, so a virtual clock waiting
/// for every task to idle would never advance.
#[test]
fn run_until_cancelled_stops_an_always_ready_future() {
    for flavor in ["current", "multi"] {
        let runtime = match flavor {
            "current" => tokio::runtime::Builder::new_current_thread().build(),
            _ => tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .build(),
        }
        .unwrap();
        runtime.block_on(async {
            let token = CancellationToken::new();
            let polls = Arc::new(AtomicUsize::new(0));
            let task = {
                let (token, polls) = (token.child(), polls.clone());
                tokio::spawn(async move { token.run_until_cancelled(Busy(polls)).await })
            };
            while polls.load(Ordering::SeqCst) < 10 {
                tokio::task::yield_now().await;
            }
            token.cancel("enough");
            let reason = task.await.unwrap().unwrap_err();
            assert_eq!(reason.as_str(), "enough");
            // Already cancelled: even a ready future is not polled at all.
            let ran = Arc::new(AtomicUsize::new(0));
            let counter = ran.clone();
            let out = token
                .run_until_cancelled(async move { counter.fetch_add(1, Ordering::SeqCst) })
                .await;
            assert_eq!((out.is_err(), ran.load(Ordering::SeqCst)), (true, 0));
        });
    }
}

async fn waiters_wake_and_guards_cancel<R: Runtime>(rt: Clocked<R>) {
    let token = CancellationToken::new();
    let waiters: Vec<_> = (0..16)
        .map(|_| {
            let child = token.child();
            rt.spawn(async move { child.cancelled().await })
        })
        .collect();
    // Futures created and dropped without waiting do not disturb the real waiters.
    for _ in 0..1000 {
        drop(futures_util::FutureExt::now_or_never(token.cancelled()));
    }
    {
        let _guard = token.clone().drop_guard();
        rt.sleep(Duration::from_millis(5)).await;
    }
    for waiter in waiters {
        assert_eq!(waiter.await.unwrap().as_str(), "dropped");
    }
    let kept = CancellationToken::new();
    let token = kept.clone().drop_guard().disarm();
    assert!(!token.is_cancelled() && !kept.is_cancelled());
    let task = rt.spawn(async move { kept.cancelled().await });
    rt.sleep(Duration::from_millis(5)).await;
    task.abort();
    assert!(task.await.is_err(), "an aborted waiter is simply gone");
}

#[test]
fn waiters_wake_and_drop_guards_cancel_on_every_runtime() {
    on_every_runtime!(waiters_wake_and_guards_cancel);
}

#[test]
fn concurrent_cancel_and_child_creation_never_miss_a_child() {
    for _ in 0..200 {
        let root = CancellationToken::new();
        let children = std::thread::scope(|s| {
            let maker = s.spawn(|| (0..50).map(|_| root.child()).collect::<Vec<_>>());
            s.spawn(|| root.cancel("race"));
            maker.join().unwrap()
        });
        assert!(
            children
                .iter()
                .all(|c| c.reason().is_some_and(|r| r.as_str() == "race"))
        );
    }
}

async fn periodic_runs_until_cancelled_mid_run<R: Runtime>(rt: Clocked<R>) {
    use tidewall::stream::MissedTicks;
    let token = CancellationToken::new();
    let starts = Arc::new(std::sync::Mutex::new(Vec::new()));
    let start = rt.now();
    let (log, clock) = (starts.clone(), rt.clone());
    let runner = {
        let token = token.clone();
        let rt2 = rt.clone();
        rt.spawn(async move {
            tidewall::task::periodic(
                rt2.clone(),
                Duration::from_millis(100),
                MissedTicks::Skip,
                &token,
                move |_| {
                    let (log, clock) = (log.clone(), clock.clone());
                    async move {
                        let n = {
                            let mut log = log.lock().unwrap();
                            log.push(clock.now() - start);
                            log.len()
                        };
                        // The second run overruns its period by 150 ms.
                        clock
                            .sleep(Duration::from_millis(if n == 2 { 250 } else { 10 }))
                            .await;
                    }
                },
            )
            .unwrap()
            .await
        })
    };
    rt.sleep(Duration::from_millis(505)).await;
    token.cancel("stop");
    assert_eq!(runner.await.unwrap().as_str(), "stop");
    let ms = |n| Duration::from_millis(n);
    // Runs at 100 and 200; the second lasts until 450. With `Skip`, the tick due at 300 runs
    // once, late, at 450, and 400 is dropped; 500 runs on schedule and is cancelled mid-way
    // at 505 (a run never overlaps the next).
    assert_eq!(
        *starts.lock().unwrap(),
        [ms(100), ms(200), ms(450), ms(500)]
    );
}

#[test]
fn periodic_work_with_missed_ticks_and_cancellation_on_every_runtime() {
    on_every_runtime!(periodic_runs_until_cancelled_mid_run);
}

async fn health_checker_publishes_transitions<R: Runtime>(rt: Clocked<R>) {
    use tidewall::task::{Health, HealthChecker};
    let token = CancellationToken::new();
    let round = Arc::new(AtomicUsize::new(0));
    let (counter, clock) = (round.clone(), rt.clone());
    let (health, checker) = HealthChecker::builder()
        .period(Duration::from_secs(1))
        .timeout(Duration::from_millis(100))
        .runtime(rt.clone())
        .start(&token, move || {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            let clock = clock.clone();
            async move {
                match n {
                    0 => Ok(()),
                    1 => Err("db down".to_owned()),
                    _ => {
                        clock.sleep(Duration::from_secs(10)).await;
                        Ok(())
                    }
                }
            }
        })
        .unwrap();
    let running = rt.spawn(checker);
    let mut seen = Health::Unknown;
    let mut history = Vec::new();
    for _ in 0..3 {
        seen = health.changed(&seen).await;
        history.push(seen.clone());
    }
    assert_eq!(
        history,
        [
            Health::Healthy,
            Health::Unhealthy("db down".into()),
            Health::TimedOut
        ]
    );
    assert!(health.latest().1.is_some());
    token.cancel("shutdown");
    assert_eq!(running.await.unwrap().as_str(), "shutdown");
    assert!(
        HealthChecker::builder()
            .period(Duration::from_secs(1))
            .timeout(Duration::ZERO)
            .runtime(rt.clone())
            .start(&token, || async { Ok::<(), String>(()) })
            .is_err()
    );
}

#[test]
fn health_checker_on_every_runtime() {
    on_every_runtime!(health_checker_publishes_transitions);
}

/// "`probe panicked: ...` for a probe that panicked, when called or while it ran": the
/// checker publishes it as unhealthy and probes on (a dead checker would show its last
/// verdict, maybe `Healthy`, for ever).
async fn a_panicking_probe_is_unhealthy_and_the_checks_go_on<R: Runtime>(rt: Clocked<R>) {
    use tidewall::task::{Health, HealthChecker};
    let token = CancellationToken::new();
    let round = Arc::new(AtomicUsize::new(0));
    let counter = round.clone();
    let (health, checker) = HealthChecker::builder()
        .period(Duration::from_secs(1))
        .runtime(rt.clone())
        .start(&token, move || {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            if n == 1 {
                panic!("called (on purpose)");
            }
            async move {
                if n == 3 {
                    panic!("polled (on purpose)");
                }
                Ok::<(), String>(())
            }
        })
        .unwrap();
    let running = rt.spawn(checker);
    let mut seen = Health::Unknown;
    let mut history = Vec::new();
    for _ in 0..5 {
        seen = health.changed(&seen).await;
        history.push(seen.clone());
    }
    let unhealthy = |what: &str| Health::Unhealthy(format!("probe panicked: {what} (on purpose)"));
    assert_eq!(
        history,
        [
            Health::Healthy,
            unhealthy("called"),
            Health::Healthy,
            unhealthy("polled"),
            Health::Healthy,
        ]
    );
    token.cancel("done");
    assert_eq!(running.await.unwrap().as_str(), "done");
}

#[test]
fn a_panicking_probe_on_every_runtime() {
    on_every_runtime!(a_panicking_probe_is_unhealthy_and_the_checks_go_on);
}

/// Dropping the task (its awaiting future gave up) raises the flag the blocking work checks.
#[test]
fn abandoned_blocking_work_sees_its_flag() {
    // Real time, on purpose: tokio does not advance paused time while a blocking task runs,
    // and this test is about a blocking task that runs until told to stop.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (saw_cancel, seen) = std::sync::mpsc::channel();
    runtime.block_on(async {
        let task = tidewall::task::spawn_blocking_cancellable(&tidewall::rt::Tokio, move |flag| {
            while !flag.is_cancelled() {
                std::thread::sleep(Duration::from_millis(1));
            }
            saw_cancel.send(()).unwrap();
        });
        let gave_up = tidewall::FutureExt::timeout(task, Duration::from_millis(20)).await;
        assert!(gave_up.is_err());
    });
    seen.recv_timeout(Duration::from_secs(10))
        .expect("the work saw the flag and stopped");
    // An explicit cancel works too, and the result still comes back.
    let value = runtime.block_on(async {
        let task = tidewall::task::spawn_blocking_cancellable(&tidewall::rt::Tokio, |flag| {
            while !flag.is_cancelled() {
                std::thread::sleep(Duration::from_millis(1));
            }
            7
        });
        task.cancel();
        task.await.unwrap()
    });
    assert_eq!(value, 7);
}

/// The stack of a thread the tests below run on: Rust's default for spawned threads, small
/// enough that a walk recursing once per token overflows long before the deepest chain.
const STACK: usize = 2 << 20;

/// Runs `f` on a fresh thread with a [`STACK`]-sized stack and returns its result.
fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(STACK)
        .spawn(f)
        .unwrap()
        .join()
        .unwrap()
}

/// A root and the leaf of `depth` nested children below it; only these two tokens are
/// held, so the chain in between lives only through each child's link to its parent.
fn chain(depth: usize) -> (CancellationToken, CancellationToken) {
    let root = CancellationToken::new();
    let mut leaf = root.child();
    for _ in 1..depth {
        leaf = leaf.child();
    }
    (root, leaf)
}

#[test]
fn cancelling_a_deep_chain_reaches_the_leaf_with_the_reason() {
    for depth in [100_000, 1_000_000] {
        on_small_stack(move || {
            let (root, leaf) = chain(depth);
            assert!(leaf.has_parent() && !leaf.is_cancelled());
            root.cancel("deep");
            assert_eq!(leaf.reason(), Some(Reason::new("deep")), "depth {depth}");
            // A child born under the cancelled leaf inherits the reason too.
            assert_eq!(leaf.child().reason(), Some(Reason::new("deep")));
            // Dropping the cancelled chain is as depth-proof as dropping a live one.
            drop(root);
            drop(leaf);
        });
    }
}

#[test]
fn a_deep_chain_drops_root_first_or_leaf_first() {
    for depth in [100_000, 1_000_000] {
        on_small_stack(move || {
            // Root first: the leaf's drop then frees the whole chain.
            let (root, leaf) = chain(depth);
            drop(root);
            assert!(!leaf.is_cancelled(), "dropping a token never cancels it");
            drop(leaf);
            // Leaf first: the chain is freed up to the root, which is still held.
            let (root, leaf) = chain(depth);
            drop(leaf);
            assert!(!root.is_cancelled());
            root.cancel("after the chain is gone");
            drop(root);
        });
    }
}

/// Every token of the chain held in a `Vec`, dropped in either order, and a waiter on the
/// leaf woken from the root.
#[test]
fn a_deep_chain_held_token_by_token_wakes_its_leaf_and_drops_in_either_order() {
    on_small_stack(|| {
        for leaf_first in [false, true] {
            let mut tokens = vec![CancellationToken::new()];
            for _ in 0..100_000 {
                let next = tokens.last().unwrap().child();
                tokens.push(next);
            }
            let leaf = tokens.last().unwrap().clone();
            let mut waiting = Box::pin(leaf.cancelled_owned());
            let mut cx = Context::from_waker(std::task::Waker::noop());
            assert!(waiting.as_mut().poll(&mut cx).is_pending());
            tokens[0].cancel("root");
            assert_eq!(
                waiting.as_mut().poll(&mut cx),
                Poll::Ready(Reason::new("root"))
            );
            if leaf_first {
                tokens.reverse();
            }
            drop(leaf);
            drop(waiting);
            drop(tokens);
        }
    });
}

/// One parent, 100,000 children: half are dropped on one thread while another cancels the
/// parent; every child still held ends up cancelled with the parent's reason, and the parent
/// keeps working afterwards.
#[test]
fn a_wide_tree_cancels_while_its_children_are_dropped() {
    on_small_stack(|| {
        for round in 0..4 {
            let parent = CancellationToken::new();
            let (kept, dropped): (Vec<_>, Vec<_>) = (0..100_000)
                .map(|i| (i, parent.child()))
                .partition(|(i, _)| i % 2 == 0);
            std::thread::scope(|s| {
                let dropping = std::thread::Builder::new()
                    .stack_size(STACK)
                    .spawn_scoped(s, move || {
                        // Alternate the order between rounds: from the front or the back.
                        if round % 2 == 0 {
                            dropped.into_iter().for_each(drop);
                        } else {
                            dropped.into_iter().rev().for_each(drop);
                        }
                    })
                    .unwrap();
                parent.cancel("wide");
                dropping.join().unwrap();
            });
            assert!(
                kept.iter()
                    .all(|(_, c)| c.reason() == Some(Reason::new("wide")))
            );
            assert_eq!(parent.child().reason(), Some(Reason::new("wide")));
        }
        // Children dropped before the parent cancels are swept as the list grows: a parent
        // that spawns and drops children for ever still cancels the live ones.
        let parent = CancellationToken::new();
        for _ in 0..100_000 {
            drop(parent.child());
        }
        let live = parent.child();
        parent.cancel("swept");
        assert_eq!(live.reason(), Some(Reason::new("swept")));
    });
}

/// Records whether it was woken.
#[derive(Default)]
struct WakeFlag(std::sync::atomic::AtomicBool);

impl std::task::Wake for WakeFlag {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// "Dropping the future loses nothing": waiters that register, refresh their waker and give
/// up on four threads while another cancels never miss the cancel. A waiter pending when the
/// cancel lands is woken through the waker it gave last, then ready with the reason; a waiter
/// that registers after it is ready at once. Seeded, 200 rounds.
#[test]
fn waiters_that_come_and_go_while_a_cancel_lands_are_all_woken() {
    use tidewall_core::rng::SplitMix64;
    for round in 0..200u64 {
        let token = CancellationToken::new();
        let start = Arc::new(std::sync::Barrier::new(5));
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let (token, start) = (token.clone(), Arc::clone(&start));
                std::thread::spawn(move || {
                    let mut rng = SplitMix64::new(round * 4 + t);
                    start.wait();
                    let mut kept = Vec::new();
                    for _ in 0..50 {
                        let mut waiter = Box::pin(token.cancelled_owned());
                        let mut flag = Arc::new(WakeFlag::default());
                        let mut polls = rng.between(1, 3);
                        let pending = loop {
                            let waker = std::task::Waker::from(Arc::clone(&flag));
                            if waiter
                                .as_mut()
                                .poll(&mut Context::from_waker(&waker))
                                .is_ready()
                            {
                                break false;
                            }
                            polls -= 1;
                            if polls == 0 {
                                break true;
                            }
                            // A later poll gives a new waker: only that one must be woken.
                            flag = Arc::new(WakeFlag::default());
                        };
                        if pending && rng.below_or_equal(1) == 0 {
                            kept.push((waiter, flag));
                        }
                    }
                    kept
                })
            })
            .collect();
        start.wait();
        token.cancel("stop");
        for thread in threads {
            for (mut waiter, flag) in thread.join().unwrap() {
                assert!(
                    flag.0.load(Ordering::SeqCst),
                    "round {round}: a waiter never woken"
                );
                let waker = std::task::Waker::noop();
                match waiter.as_mut().poll(&mut Context::from_waker(waker)) {
                    Poll::Ready(reason) => assert_eq!(reason.as_str(), "stop"),
                    Poll::Pending => panic!("round {round}: woken but still pending"),
                }
            }
        }
        // Registered after the cancel: ready at once.
        let mut late = Box::pin(token.cancelled_owned());
        assert!(
            late.as_mut()
                .poll(&mut Context::from_waker(std::task::Waker::noop()))
                .is_ready()
        );
    }
}
