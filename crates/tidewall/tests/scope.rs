//! Structured concurrency: limits, failure policies, panics, two-phase shutdown and the local
//! variant, on every runtime with virtual time.

mod common;
#[path = "common/hang.rs"]
mod hang;

use common::ms;

use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use tidewall::ConfigError;
use tidewall::rt::{Clock, Runtime, Spawn};
use tidewall::task::scope::{FailurePolicy, Scope, SpawnError};
use tidewall::task::{Ending, Exit};
use tidewall::testing::Clocked;

async fn limit_bounds_running_children<R: Runtime>(rt: Clocked<R>) {
    let scope = Scope::builder()
        .runtime(rt.clone())
        .limit(3)
        .build::<u64, ()>()
        .unwrap();
    let (running, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let start = rt.now();
    for n in 0..12u64 {
        let (rt, running, peak) = (rt.clone(), Arc::clone(&running), Arc::clone(&peak));
        scope
            .spawn(async move {
                let now = running.fetch_add(1, SeqCst) + 1;
                peak.fetch_max(now, SeqCst);
                rt.sleep(ms(10)).await;
                running.fetch_sub(1, SeqCst);
                Ok(n)
            })
            .await
            .unwrap();
    }
    // 12 children of 10 ms, 3 at a time: the last spawn waited for three rounds.
    assert_eq!(rt.now() - start, ms(30));
    assert!(matches!(
        scope.try_spawn(async { Ok(0) }),
        Err(SpawnError::Full(_))
    ));
    let report = scope.join().await;
    assert_eq!(peak.load(SeqCst), 3);
    assert_eq!(rt.now() - start, ms(40));
    assert_eq!((report.spawned, report.succeeded), (12, 12));
    let mut values: Vec<u64> = report
        .children
        .into_iter()
        .filter_map(|c| c.exit.ok())
        .collect();
    values.sort_unstable();
    assert_eq!(values, (0..12).collect::<Vec<_>>());
}

#[test]
fn a_limit_makes_spawn_wait_for_a_free_slot_on_every_runtime() {
    on_every_runtime!(limit_bounds_running_children);
}

/// Child 1 fails at 10 ms; child 0 stops 5 ms after the cancel; child 2 ignores it.
async fn fail_fast_cancels_siblings_then_aborts_stragglers<R: Runtime>(rt: Clocked<R>) {
    let scope = Scope::builder()
        .runtime(rt.clone())
        .grace(ms(100))
        .build::<&str, &str>()
        .unwrap();
    let start = rt.now();
    let stubborn_dropped = Arc::new(AtomicBool::new(false));
    let (token, rt0) = (scope.token(), rt.clone());
    scope
        .spawn(async move {
            token.cancelled().await;
            rt0.sleep(ms(5)).await;
            Ok("cooperative")
        })
        .await
        .unwrap();
    let rt1 = rt.clone();
    scope
        .spawn(async move {
            rt1.sleep(ms(10)).await;
            Err("disk full")
        })
        .await
        .unwrap();
    let (rt2, on_drop) = (rt.clone(), SetOnDrop(Arc::clone(&stubborn_dropped)));
    scope
        .spawn(async move {
            let _on_drop = on_drop;
            rt2.sleep(ms(10_000)).await;
            Ok("stubborn")
        })
        .await
        .unwrap();
    let report = scope.join().await;
    assert_eq!(rt.now() - start, ms(110), "failure at 10 ms + 100 ms grace");
    assert!(stubborn_dropped.load(SeqCst));
    assert_eq!(
        report.cancel_reason.as_ref().unwrap().as_str(),
        "child #1 returned an error"
    );
    assert_eq!((report.succeeded, report.failed, report.aborted), (1, 1, 1));
    assert!(report.is_balanced());
    let endings: Vec<_> = report
        .children
        .iter()
        .map(|c| (c.id.index(), c.ending))
        .collect();
    assert_eq!(
        endings,
        [
            (1, Ending::Finished),
            (0, Ending::Stopped { took: ms(5) }),
            (2, Ending::Aborted { took: ms(100) }),
        ]
    );
    assert!(matches!(report.children[0].exit, Exit::Err("disk full")));
    assert!(matches!(report.children[2].exit, Exit::Aborted));
}

struct SetOnDrop(Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, SeqCst);
    }
}

#[test]
fn fail_fast_cancels_with_a_reason_and_aborts_at_the_grace_deadline_on_every_runtime() {
    on_every_runtime!(fail_fast_cancels_siblings_then_aborts_stragglers);
}

async fn panics_are_values_and_collect_all_goes_on<R: Runtime>(rt: Clocked<R>) {
    let mut scope = Scope::builder()
        .runtime(rt.clone())
        .policy(FailurePolicy::CollectAll)
        .build::<u32, String>()
        .unwrap();
    for n in 0..6u32 {
        let rt = rt.clone();
        scope
            .spawn(async move {
                rt.sleep(ms(u64::from(10 - n))).await;
                match n {
                    2 => panic!("child two exploded"),
                    4 => Err(format!("child {n} refused")),
                    _ => Ok(n),
                }
            })
            .await
            .unwrap();
    }
    // Completion order: the shortest sleep first.
    let mut order = Vec::new();
    while let Some(child) = scope.next().await {
        order.push(child.id.index());
        match (child.id.index(), child.exit) {
            (2, Exit::Panicked(panic)) => {
                assert_eq!(panic.message(), Some("child two exploded"));
            }
            (4, Exit::Err(message)) => assert_eq!(message, "child 4 refused"),
            (n, Exit::Ok(value)) => assert_eq!(u64::from(value), n),
            (n, other) => panic!("child {n}: unexpected {other:?}"),
        }
        assert_eq!(child.ending, Ending::Finished);
    }
    assert_eq!(order, [5, 4, 3, 2, 1, 0]);
    let report = scope.join().await;
    assert!(report.children.is_empty(), "all taken through next");
    assert_eq!(
        (report.succeeded, report.failed, report.panicked),
        (4, 1, 1)
    );
    assert!(report.cancel_reason.is_none());
}

#[test]
fn panics_surface_as_values_and_collect_all_keeps_going_on_every_runtime() {
    on_every_runtime!(panics_are_values_and_collect_all_goes_on);
}

async fn fail_fast_on_panic_names_the_child<R: Runtime>(rt: Clocked<R>) {
    let scope = Scope::builder()
        .runtime(rt.clone())
        .build::<(), ()>()
        .unwrap();
    scope
        .spawn(async { panic!("invariant broken") })
        .await
        .unwrap();
    let report = scope.join().await;
    assert_eq!(
        report.cancel_reason.unwrap().as_str(),
        "child #0 panicked: invariant broken"
    );
    assert_eq!(report.panicked, 1);
}

#[test]
fn a_panic_fails_fast_with_its_message_on_every_runtime() {
    on_every_runtime!(fail_fast_on_panic_names_the_child);
}

async fn shutdown_is_two_phase_and_refuses_new_spawns<R: Runtime>(rt: Clocked<R>) {
    let scope = Scope::builder()
        .runtime(rt.clone())
        .build::<u32, ()>()
        .unwrap();
    let spawner = scope.spawner();
    for stop_after in [0u64, 20, 40, 10_000] {
        let (rt, token) = (rt.clone(), spawner.token());
        spawner
            .spawn(async move {
                if stop_after < 10_000 {
                    token.cancelled().await;
                }
                rt.sleep(ms(stop_after)).await;
                Ok(1)
            })
            .await
            .unwrap();
    }
    rt.sleep(ms(5)).await;
    let start = rt.now();
    let report = scope.shutdown("deploy", ms(30)).await;
    assert_eq!(rt.now() - start, ms(30));
    assert_eq!(report.cancel_reason.as_ref().unwrap().as_str(), "deploy");
    let endings: Vec<_> = report.children.iter().map(|c| c.ending).collect();
    assert_eq!(
        endings,
        [
            Ending::Stopped { took: ms(0) },
            Ending::Stopped { took: ms(20) },
            Ending::Aborted { took: ms(30) },
            Ending::Aborted { took: ms(30) },
        ]
    );
    assert!(report.is_balanced());
    // The spawner outlives the scope: it hands futures back.
    let refused = spawner.try_spawn(async { Ok(7) });
    assert!(matches!(refused, Err(SpawnError::Closed(_))));
    assert!(matches!(
        spawner.spawn(async { Ok(7) }).await,
        Err(SpawnError::Closed(_))
    ));
}

#[test]
fn shutdown_cancels_waits_the_grace_then_aborts_and_reports_on_every_runtime() {
    on_every_runtime!(shutdown_is_two_phase_and_refuses_new_spawns);
}

async fn children_spawn_siblings_and_ok_results_can_be_discarded<R: Runtime>(rt: Clocked<R>) {
    let scope = Scope::builder()
        .runtime(rt.clone())
        .discard_ok()
        .policy(FailurePolicy::CollectAll)
        .build::<u64, u64>()
        .unwrap();
    let spawner = scope.spawner();
    for n in 0..10u64 {
        let (rt, inner) = (rt.clone(), spawner.clone());
        spawner
            .spawn(async move {
                rt.sleep(ms(n)).await;
                // Every child spawns a grandchild from inside the scope.
                inner
                    .spawn(async move { if n == 7 { Err(n) } else { Ok(n) } })
                    .await
                    .map_err(|_| n)?;
                Ok(n)
            })
            .await
            .unwrap();
    }
    let report = scope.join().await;
    assert_eq!(
        (report.spawned, report.succeeded, report.failed),
        (20, 19, 1)
    );
    assert_eq!(report.children.len(), 1, "only the failure is kept");
    assert!(matches!(report.children[0].exit, Exit::Err(7)));
}

#[test]
fn spawners_work_from_inside_children_and_discard_ok_keeps_nothing_on_every_runtime() {
    on_every_runtime!(children_spawn_siblings_and_ok_results_can_be_discarded);
}

async fn dropping_a_scope_aborts_its_children<R: Runtime>(rt: Clocked<R>) {
    let dropped = Arc::new(AtomicBool::new(false));
    let scope = Scope::builder()
        .runtime(rt.clone())
        .build::<(), ()>()
        .unwrap();
    let token = scope.token();
    let (rt2, on_drop) = (rt.clone(), SetOnDrop(Arc::clone(&dropped)));
    scope
        .spawn(async move {
            let _on_drop = on_drop;
            rt2.sleep(ms(10_000)).await;
            Ok(())
        })
        .await
        .unwrap();
    drop(scope);
    rt.sleep(ms(1)).await;
    assert!(dropped.load(SeqCst));
    assert!(token.is_cancelled());
}

#[test]
fn dropping_an_unjoined_scope_cancels_and_aborts_on_every_runtime() {
    on_every_runtime!(dropping_a_scope_aborts_its_children);
}

#[test]
fn bad_configuration_is_a_typed_error() {
    let zero = Scope::builder().limit(0).build::<(), ()>();
    assert_eq!(zero.unwrap_err(), ConfigError::Zero { field: "limit" });
    let huge = Scope::builder().grace(Duration::MAX).build::<(), ()>();
    assert_eq!(
        huge.unwrap_err(),
        ConfigError::DurationOverflow { field: "grace" }
    );
}

/// The local scope: `Rc` children, a limit, fail-fast, a stubborn child aborted at the grace
/// deadline. Run inside a tokio `LocalSet`, a smol `LocalExecutor` and a plain `block_on`.
async fn local_scope_scenario<R: Runtime>(rt: Clocked<R>) {
    let mut scope = Scope::builder()
        .runtime(rt.clone())
        .limit(2)
        .grace(ms(50))
        .build_local::<usize, &str>()
        .unwrap();
    let log = Rc::new(std::cell::RefCell::new(Vec::new()));
    let start = rt.now();
    for n in 0..4usize {
        let (rt, log, token) = (rt.clone(), Rc::clone(&log), scope.token());
        scope
            .spawn(async move {
                if n == 3 {
                    rt.sleep(ms(10_000)).await; // ignores cancellation
                }
                let _stopped_early = token.run_until_cancelled(rt.sleep(ms(10))).await;
                log.borrow_mut().push(n);
                if n == 2 { Err("two failed") } else { Ok(n) }
            })
            .await
            .unwrap();
    }
    // Children 0 and 1 ran first (limit 2); 2 and 3 started at 10 ms.
    assert_eq!(rt.now() - start, ms(10));
    // At the limit, as a `Scope` would be: owner and spawner count the same two children,
    // and a try is refused with its future.
    assert_eq!((scope.running(), scope.spawner().running()), (2, 2));
    assert!(matches!(
        scope.try_spawn(async { Ok(9) }),
        Err(SpawnError::Full(_))
    ));
    let report = scope.join().await;
    assert_eq!(rt.now() - start, ms(70), "failure at 20 ms + 50 ms grace");
    assert_eq!(*log.borrow(), [0, 1, 2]);
    assert_eq!(
        report.cancel_reason.unwrap().as_str(),
        "child #2 returned an error"
    );
    assert_eq!((report.succeeded, report.failed, report.aborted), (2, 1, 1));
    assert_eq!(
        report.children.last().unwrap().ending,
        Ending::Aborted { took: ms(50) }
    );
}

#[test]
fn local_scope_in_a_tokio_local_set() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let rt = Clocked::new(tidewall::rt::Tokio);
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, rt.drive(local_scope_scenario(rt.clone())));
}

#[test]
fn local_scope_in_a_smol_local_executor() {
    let runtime = tidewall::rt::SmolRuntime::single_threaded();
    let rt = Clocked::new(runtime.handle());
    let local = smol::LocalExecutor::new();
    runtime.block_on(local.run(rt.drive(local_scope_scenario(rt.clone()))));
}

#[test]
fn local_scope_under_async_std_block_on() {
    let rt = Clocked::new(tidewall::rt::AsyncStd);
    async_std::task::block_on(rt.drive(local_scope_scenario(rt.clone())));
}

async fn cancel_close_and_join_within<R: Runtime>(rt: Clocked<R>) {
    // An owner's cancel is timed when it happens, not when the first child ends.
    let scope = Scope::builder()
        .runtime(rt.clone())
        .limit(1)
        .build::<(), ()>()
        .unwrap();
    let (token, rt2) = (scope.token(), rt.clone());
    scope
        .spawn(async move {
            token.cancelled().await;
            rt2.sleep(ms(7)).await;
            Ok(())
        })
        .await
        .unwrap();
    // A spawner waiting for the only slot hears the cancel although no child ends.
    let spawner = scope.spawner();
    let waiting = rt.spawn(async move { spawner.spawn(async { Ok(()) }).await.is_err() });
    rt.sleep(ms(5)).await;
    let cancelled_at = rt.now();
    scope.cancel("operator");
    assert!(waiting.await.unwrap(), "refused with Closed");
    assert_eq!(rt.now(), cancelled_at);
    rt.sleep(ms(10)).await;
    let report = scope.join().await;
    assert_eq!(report.children[0].ending, Ending::Stopped { took: ms(7) });
    assert_eq!(report.first_failure, None);

    // close() refuses new children without cancelling the running ones.
    let scope = Scope::builder()
        .runtime(rt.clone())
        .build::<u8, ()>()
        .unwrap();
    let rt2 = rt.clone();
    scope
        .spawn(async move {
            rt2.sleep(ms(3)).await;
            Ok(1)
        })
        .await
        .unwrap();
    scope.close();
    assert!(matches!(
        scope.try_spawn(async { Ok(2) }),
        Err(SpawnError::Closed(_))
    ));
    assert!(!scope.token().is_cancelled());
    let report = scope.join().await;
    assert_eq!((report.succeeded, report.cancel_reason), (1, None));

    // join_within: whatever still runs at the limit is cancelled, then gets the grace.
    let scope = Scope::builder()
        .runtime(rt.clone())
        .grace(ms(20))
        .build::<u8, ()>()
        .unwrap();
    for (n, stop_takes) in [(0u8, None), (1, Some(5)), (2, Some(1_000))] {
        let (rt, token) = (rt.clone(), scope.token());
        scope
            .spawn(async move {
                if n == 0 {
                    rt.sleep(ms(10)).await;
                    return Ok(0);
                }
                token.cancelled().await;
                rt.sleep(ms(stop_takes.unwrap())).await;
                Ok(n)
            })
            .await
            .unwrap();
    }
    let start = rt.now();
    let report = scope.join_within(ms(50), "took too long").await;
    assert_eq!(rt.now() - start, ms(70));
    assert_eq!(
        report.cancel_reason.as_ref().unwrap().as_str(),
        "took too long"
    );
    let endings: Vec<_> = report
        .children
        .iter()
        .map(|c| (c.id.index(), c.ending))
        .collect();
    assert_eq!(
        endings,
        [
            (0, Ending::Finished),
            (1, Ending::Stopped { took: ms(5) }),
            (2, Ending::Aborted { took: ms(20) }),
        ]
    );
}

#[test]
fn cancel_close_and_join_within_on_every_runtime() {
    on_every_runtime!(cancel_close_and_join_within);
}

/// A shutdown long after a fail-fast still gives its full grace, and the report names the
/// child that failed first.
async fn shutdown_after_fail_fast_gives_its_own_grace<R: Runtime>(rt: Clocked<R>) {
    let scope = Scope::builder()
        .runtime(rt.clone())
        .build::<(), &str>()
        .unwrap();
    let rt2 = rt.clone();
    scope
        .spawn(async move {
            rt2.sleep(ms(1_000_000)).await;
            Ok(())
        })
        .await
        .unwrap();
    scope.spawn(async { Err("boom") }).await.unwrap();
    rt.sleep(ms(10_000)).await;
    let start = rt.now();
    let report = scope.shutdown("late", ms(100)).await;
    assert_eq!(rt.now() - start, ms(100));
    assert_eq!(report.first_failure.map(|id| id.index()), Some(1));
    assert_eq!(
        report.cancel_reason.unwrap().as_str(),
        "child #1 returned an error",
        "the first reason stays"
    );
}

#[test]
fn shutdown_after_fail_fast_gives_its_own_grace_on_every_runtime() {
    on_every_runtime!(shutdown_after_fail_fast_gives_its_own_grace);
}

async fn a_parent_token_cancels_the_scope<R: Runtime>(rt: Clocked<R>) {
    let parent = tidewall::task::CancellationToken::new();
    let scope = Scope::builder()
        .runtime(rt.clone())
        .parent(&parent)
        .build::<(), ()>()
        .unwrap();
    let token = scope.token();
    scope
        .spawn(async move {
            token.cancelled().await;
            Ok(())
        })
        .await
        .unwrap();
    let (parent2, rt2) = (parent.clone(), rt.clone());
    rt.spawn(async move {
        rt2.sleep(ms(10)).await;
        parent2.cancel("request aborted by the client");
    });
    let report = scope.join().await;
    assert_eq!(
        report.cancel_reason.unwrap().as_str(),
        "request aborted by the client"
    );
    assert_eq!(report.children[0].ending, Ending::Stopped { took: ms(0) });
}

#[test]
fn a_parent_token_cancels_the_scope_on_every_runtime() {
    on_every_runtime!(a_parent_token_cancels_the_scope);
}

#[test]
fn a_dropped_local_scope_drops_children_it_never_polled() {
    let dropped = Arc::new(AtomicBool::new(false));
    let scope = Scope::builder().build_local::<(), ()>().unwrap();
    let spawner = scope.spawner();
    let on_drop = SetOnDrop(Arc::clone(&dropped));
    let inner = spawner.clone();
    // Queued, never polled; it holds a spawner (an `Rc` back to the scope's state).
    assert!(
        spawner
            .try_spawn(async move {
                let _keep = (on_drop, inner);
                Ok(())
            })
            .is_ok()
    );
    drop(scope);
    assert!(
        dropped.load(SeqCst),
        "no Rc cycle keeps the queued child alive"
    );
    assert!(matches!(
        spawner.try_spawn(async { Ok(()) }),
        Err(SpawnError::Closed(_))
    ));
}

/// Many spawners on a multi-threaded runtime race children ending, the limit, and an abort
/// in the middle: the limit is never exceeded and every child is counted exactly once.
#[test]
fn stress_spawners_limit_and_abort_race_on_a_multi_thread_runtime() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    for round in 0..20u64 {
        runtime.block_on(async move {
            let scope = Scope::builder()
                .limit(16)
                .grace(Duration::ZERO)
                .policy(FailurePolicy::CollectAll)
                .discard_ok()
                .build::<(), ()>()
                .unwrap();
            let (running, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
            let (admitted, parked) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
            let mut producers = Vec::new();
            for producer in 0..8u64 {
                let spawner = scope.spawner();
                let (running, peak, admitted, parked) = (
                    Arc::clone(&running),
                    Arc::clone(&peak),
                    Arc::clone(&admitted),
                    Arc::clone(&parked),
                );
                producers.push(tokio::spawn(async move {
                    for n in 0..200u64 {
                        let (running, peak, parked) =
                            (Arc::clone(&running), Arc::clone(&peak), Arc::clone(&parked));
                        let child = async move {
                            let now = running.fetch_add(1, SeqCst) + 1;
                            peak.fetch_max(now, SeqCst);
                            // 4 children park until aborted (one each from 4 producers: the
                            // limit of 16 always leaves room); the rest are ready at once or
                            // yield first.
                            if n == 50 && producer < 4 {
                                parked.fetch_add(1, SeqCst);
                                std::future::pending::<()>().await;
                            }
                            match (n + producer + round) % 3 {
                                0 => {}
                                1 => tokio::task::yield_now().await,
                                _ => tokio::task::yield_now().await,
                            }
                            running.fetch_sub(1, SeqCst);
                            Ok(())
                        };
                        if spawner.spawn(child).await.is_err() {
                            break;
                        }
                        admitted.fetch_add(1, SeqCst);
                    }
                }));
            }
            // Let the producers race until half the children are in, then abort the rest.
            while admitted.load(SeqCst) < 800 || parked.load(SeqCst) < 4 {
                tokio::task::yield_now().await;
            }
            let report = scope.shutdown("stress", Duration::ZERO).await;
            for producer in producers {
                producer.await.unwrap();
            }
            assert!(
                peak.load(SeqCst) <= 16,
                "limit exceeded: {}",
                peak.load(SeqCst)
            );
            assert!(report.is_balanced(), "{report:?}");
            assert_eq!(report.spawned, admitted.load(SeqCst) as u64);
            assert!(report.spawned >= 800 && report.aborted >= 4, "{report:?}");
        });
    }
}

/// A value `discard_ok` drops may call back into its scope from its `Drop` (here: how many
/// children run): it is dropped after the scope's lock is released, so that neither
/// deadlocks (`Scope`) nor panics on a borrow (`LocalScope`).
#[test]
fn a_discarded_ok_value_may_use_its_scope_when_dropped() {
    struct Probe(tidewall::task::scope::Spawner<Probe, (), tidewall::rt::Tokio>);
    impl Drop for Probe {
        fn drop(&mut self) {
            let _ = self.0.running();
        }
    }
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let scope = Scope::builder()
                .runtime(tidewall::rt::Tokio)
                .discard_ok()
                .build::<Probe, ()>()
                .unwrap();
            let spawner = scope.spawner();
            for _ in 0..3 {
                let own = spawner.clone();
                spawner.spawn(async move { Ok(Probe(own)) }).await.unwrap();
            }
            drop(spawner);
            let report = scope.join().await;
            assert_eq!((report.spawned, report.succeeded), (3, 3));
        });
        let _ = done.send(());
    });
    finished
        .recv_timeout(Duration::from_secs(10))
        .expect("joined: no deadlock when a discarded value reads its scope");
}

/// "If its `Drop` panics, the child still counts as succeeded and whoever waits on the scope
/// (`join`, `next`, a `spawn` waiting for a slot) is still woken."
#[test]
fn a_discarded_value_panicking_on_drop_strands_no_waiter() {
    struct Bomb;
    impl Drop for Bomb {
        fn drop(&mut self) {
            panic!("a discarded value panics on drop (on purpose)");
        }
    }
    for multi_thread in [false, true] {
        hang::without_hanging("a discarded value panicking on drop", move || {
            let rt = if multi_thread {
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .build()
            } else {
                tokio::runtime::Builder::new_current_thread().build()
            };
            rt.unwrap().block_on(async {
                let scope = Scope::builder()
                    .runtime(tidewall::rt::Tokio)
                    .discard_ok()
                    .limit(1)
                    .build::<Bomb, ()>()
                    .unwrap();
                let (release, held) = futures_channel::oneshot::channel::<()>();
                scope
                    .spawn(async move {
                        let _ = held.await;
                        Ok(Bomb)
                    })
                    .await
                    .unwrap();
                // The only slot is held: this spawn waits for it.
                let mut second = Box::pin(scope.spawn(async { Ok(Bomb) }));
                assert!(futures_util::poll!(second.as_mut()).is_pending());
                release.send(()).unwrap();
                second
                    .await
                    .expect("woken for the slot the first child freed");
                let report = scope.join().await;
                assert_eq!((report.spawned, report.succeeded), (2, 2));
            });
        });
    }
}

/// Panics when dropped, counting its drops (a panic while one is already unwinding would
/// abort the process, so it stays quiet then).
struct PanicsOnDrop(Rc<std::cell::Cell<usize>>);

impl Drop for PanicsOnDrop {
    fn drop(&mut self) {
        self.0.set(self.0.get() + 1);
        if !std::thread::panicking() {
            panic!("a child's local panics on drop (on purpose)");
        }
    }
}

/// A local scope's children whose locals panic when dropped, aborted (by the grace running
/// out) or dropped with the scope, whether they were polled or never were: every one is
/// dropped, and no panic reaches the owner ("a panic in its `Drop` then is caught, as a
/// runtime catches a task's, and never reaches the owner").
#[test]
fn a_local_scope_drops_every_child_whose_drop_panics_and_the_owner_sees_none() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    for polled in [false, true] {
        for by_shutdown in [false, true] {
            let dropped = Rc::new(std::cell::Cell::new(0));
            let mut scope = Scope::builder()
                .grace(ms(10))
                .build_local::<(), &str>()
                .unwrap();
            let owner = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                runtime.block_on(async {
                    for _ in 0..3 {
                        let local = PanicsOnDrop(Rc::clone(&dropped));
                        let child = async move {
                            let _local = local;
                            std::future::pending::<Result<(), &str>>().await
                        };
                        scope.spawn(child).await.unwrap();
                    }
                    if polled {
                        let _ = tokio::time::timeout(ms(1), scope.next()).await;
                    }
                    if by_shutdown {
                        let report = scope.shutdown("done", ms(10)).await;
                        assert_eq!(report.aborted, 3);
                    } else {
                        drop(scope);
                    }
                })
            }));
            assert!(owner.is_ok(), "polled {polled}, by shutdown {by_shutdown}");
            assert_eq!(
                dropped.get(),
                3,
                "polled {polled}, by shutdown {by_shutdown}"
            );
        }
    }
}
