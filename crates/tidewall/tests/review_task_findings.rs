//! Regression tests for a docs-against-code review of the supervisor, the shutdown
//! coordinator, the worker pool and the health checker: one test (or a pair) per finding,
//! each asserting what the public docs promise (quoted above it). Virtual time, except the
//! zero-timeout pair that must also hold on a real tokio clock (no timing is asserted there);
//! the scenario that used to spin for ever runs under a real-time hang detector.
#![cfg(all(
    feature = "tokio",
    feature = "smol",
    feature = "async-std",
    feature = "test-util"
))]

mod common;
#[path = "common/hang.rs"]
mod hang;
#[path = "common/supervisor.rs"]
mod supervisor;

use common::ms;
use hang::without_hanging;
use supervisor::{cancelled_after, fixed, recorder, starts, steady};

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
use std::task::{Context, Wake, Waker};
use std::time::Duration;

use futures_util::future::{Either, select};
use tidewall::rt::{Clock, Runtime};
use tidewall::task::shutdown::{Cause, Shutdown, ShutdownBuilder};
use tidewall::task::supervisor::{ChildSpec, Ended, Strategy, Supervisor, SupervisorEvent};
use tidewall::task::{CancellationToken, Ending, Exit, Health, HealthChecker, pool::WorkerPool};
use tidewall::testing::Clocked;
use tidewall::{Backoff, ConfigError, Jitter};

const HOUR: Duration = Duration::from_secs(3600);

/// A constant backoff without jitter, of any length.
fn constant(delay: Duration) -> Backoff {
    Backoff::constant(delay)
        .max_delay(delay)
        .jitter(Jitter::None)
        .max_attempts(u32::MAX)
        .build()
        .unwrap()
}

/// A waker that holds a share of a tally, so the tally counts the wakers still alive.
struct Counted {
    _tally: Arc<()>,
}

impl Wake for Counted {
    fn wake(self: Arc<Self>) {}
}

/// A distinct waker (never `will_wake` another), counted in `tally`.
fn counted(tally: &Arc<()>) -> Waker {
    Waker::from(Arc::new(Counted {
        _tally: Arc::clone(tally),
    }))
}

/// Wakers made by [`counted`] from `tally` still alive.
fn alive(tally: &Arc<()>) -> usize {
    Arc::strong_count(tally) - 1
}

/// Polls `future` once with its own counted waker; it must still be waiting.
fn pending_once<F: Future>(future: std::pin::Pin<&mut F>, tally: &Arc<()>) {
    let waker = counted(tally);
    assert!(future.poll(&mut Context::from_waker(&waker)).is_pending());
}

/// A child that returns as soon as it is told to stop.
fn prompt(name: &'static str) -> ChildSpec {
    ChildSpec::new(name, |stop: CancellationToken| async move {
        stop.cancelled().await;
        Ok::<(), std::io::Error>(())
    })
}

// 1. `SupervisorBuilder::build`, `# Errors`: "`ConfigError::Zero` for ... a zero
// `stable_after`".
#[test]
fn a_zero_stable_after_is_refused_as_documented() {
    let built = Supervisor::builder()
        .stable_after(Duration::ZERO)
        .child(prompt("a"))
        .build();
    assert!(matches!(
        built,
        Err(ConfigError::Zero {
            field: "stable_after"
        })
    ));
}

// 2. `ChildSpec::shutdown_timeout`: "Zero aborts it at once, without waiting (OTP's
// `brutal_kill`) ... it reads `Ending::Aborted` unless it had already ended";
// `Shutdown::register_with_timeout`: the same. A child that would end the moment it is told
// to stop is aborted all the same, on every runtime with virtual time...
async fn zero_timeouts_abort_prompt_children<R: Runtime>(rt: Clocked<R>) {
    let supervisor = Supervisor::builder()
        .runtime(rt.clone())
        .child(prompt("c").shutdown_timeout(Duration::ZERO))
        .build()
        .unwrap();
    let start = rt.now();
    let report = supervisor
        .run(cancelled_after(&rt, ms(10), "stop"))
        .await
        .unwrap();
    let child = &report.stopped[0];
    assert_eq!(child.exit, Exit::Aborted);
    assert_eq!(child.ending, Ending::Aborted { took: ms(0) });
    assert_eq!(rt.now() - start, ms(10));

    let mut shutdown = ShutdownBuilder::new().runtime(rt.clone()).build().unwrap();
    shutdown.register_with_timeout("c", Duration::ZERO, |stop| async move {
        stop.cancelled().await;
        Ok::<(), std::io::Error>(())
    });
    rt.sleep(ms(10)).await;
    let report = shutdown.stop("x").await;
    let component = &report.components[0];
    assert_eq!(component.exit, Exit::Aborted);
    assert_eq!(component.ending, Ending::Aborted { took: ms(0) });
}

#[test]
fn a_zero_shutdown_timeout_aborts_a_prompt_child_on_every_runtime() {
    on_every_runtime!(zero_timeouts_abort_prompt_children);
}

// ...and on tokio's real clock, which rounds a timer for "now" up to the next millisecond, so
// a timer armed for a zero timeout gave the child time to end first.
#[tokio::test]
async fn a_zero_supervisor_shutdown_timeout_aborts_a_prompt_child_in_real_time() {
    let supervisor = Supervisor::builder()
        .child(prompt("c").shutdown_timeout(Duration::ZERO))
        .build()
        .unwrap();
    let stop = CancellationToken::new();
    let stopper = stop.clone();
    tokio::spawn(async move {
        tokio::time::sleep(ms(10)).await;
        stopper.cancel("x");
    });
    let report = supervisor.run(stop).await.unwrap();
    assert_eq!(report.stopped[0].exit, Exit::Aborted);
    assert!(matches!(report.stopped[0].ending, Ending::Aborted { .. }));
}

#[tokio::test]
async fn a_zero_component_timeout_aborts_a_prompt_component_in_real_time() {
    let mut shutdown = Shutdown::builder().build().unwrap();
    shutdown.register_with_timeout("c", Duration::ZERO, |stop| async move {
        stop.cancelled().await;
        Ok::<(), std::io::Error>(())
    });
    tokio::time::sleep(ms(10)).await;
    let report = shutdown.stop("x").await;
    assert_eq!(report.components[0].exit, Exit::Aborted);
    assert!(matches!(
        report.components[0].ending,
        Ending::Aborted { .. }
    ));
}

// 3. `HealthHandle::changed`: "Waits until the health differs from `seen` ... dropping the
// future loses nothing, and leaves nothing behind". Nothing limits how many may wait: 2000
// waiters under paused time all get the next verdict (a wake-all at a fixed bound used to
// keep the executor busy for ever, so paused time never moved)...
#[test]
fn thousands_of_health_waiters_all_get_the_next_verdict() {
    without_hanging("2000 HealthHandle::changed waiters", || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        runtime.block_on(async {
            let token = CancellationToken::new();
            let probes = Arc::new(AtomicU32::new(0));
            let (health, checker) = HealthChecker::builder()
                .period(Duration::from_secs(5))
                .start(&token, move || {
                    let first = probes.fetch_add(1, SeqCst) == 0;
                    async move { if first { Ok(()) } else { Err("down") } }
                })
                .unwrap();
            let run = tokio::spawn(checker);
            assert_eq!(health.changed(&Health::Unknown).await, Health::Healthy);
            let waiters: Vec<_> = (0..2000)
                .map(|_| {
                    let health = health.clone();
                    tokio::spawn(async move { health.changed(&Health::Healthy).await })
                })
                .collect();
            for waiter in waiters {
                assert_eq!(waiter.await.unwrap(), Health::Unhealthy("down".into()));
            }
            token.cancel("done");
            run.await.unwrap();
        });
    });
}

// ...and abandoned waits leave no waker behind: only the ones still waiting are held.
#[test]
fn dropped_health_waiters_leave_no_waker_behind() {
    let token = CancellationToken::new();
    let (health, _checker) = HealthChecker::builder()
        .start(&token, || async { Ok::<(), String>(()) })
        .unwrap();
    let tally = Arc::new(());
    let mut live: Vec<_> = (0..3)
        .map(|_| Box::pin(health.changed(&Health::Unknown)))
        .collect();
    for waiter in &mut live {
        pending_once(waiter.as_mut(), &tally);
    }
    for _ in 0..5000 {
        let mut waiter = Box::pin(health.changed(&Health::Unknown));
        pending_once(waiter.as_mut(), &tally);
    }
    assert_eq!(alive(&tally), 3);
    drop(live);
    assert_eq!(alive(&tally), 0);
}

// 4. `Shutdown`: `run` waits for the cause — "... or every component ending (at once when
// none is registered)"; `Cause::AllComponentsEnded`: "(at once, when none was registered)".
// The trigger still comes first.
async fn an_empty_shutdown_ends_at_once<R: Runtime>(rt: Clocked<R>) {
    let shutdown = ShutdownBuilder::new().runtime(rt.clone()).build().unwrap();
    let start = rt.now();
    let report = match select(Box::pin(shutdown.run()), Box::pin(rt.sleep(HOUR))).await {
        Either::Left((report, _)) => report,
        Either::Right(_) => panic!("`run` with no components waited for a trigger"),
    };
    assert_eq!(report.cause, Cause::AllComponentsEnded);
    assert!(report.components.is_empty() && report.is_clean());
    assert_eq!((rt.now() - start, report.took), (ms(0), ms(0)));

    let shutdown = ShutdownBuilder::new().runtime(rt.clone()).build().unwrap();
    let report = shutdown.stop("deploy").await;
    assert!(matches!(report.cause, Cause::Triggered(ref r) if r.as_str() == "deploy"));
}

#[test]
fn a_shutdown_with_no_components_ends_at_once_on_every_runtime() {
    on_every_runtime!(an_empty_shutdown_ends_at_once);
}

// 5. `Supervisor::run`: "stops them in reverse of the order they were added, whatever
// restarts happened"; `SupervisorReport::stopped` likewise. Under one-for-one, `a` restarts
// after `b` started, and still stops after it.
async fn stop_order_is_reverse_of_the_order_added<R: Runtime>(rt: Clocked<R>) {
    let runs = Arc::new(AtomicU32::new(0));
    let (clock, counter) = (rt.clone(), Arc::clone(&runs));
    let a = ChildSpec::new("a", move |stop: CancellationToken| {
        let (rt, first) = (clock.clone(), counter.fetch_add(1, SeqCst) == 0);
        async move {
            if first {
                rt.sleep(ms(1000)).await;
                return Err("lost connection".into());
            }
            stop.cancelled().await;
            Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
        }
    });
    let (log, hook) = recorder(&rt);
    let supervisor = Supervisor::builder()
        .runtime(rt.clone())
        .strategy(Strategy::OneForOne)
        .backoff(fixed(ms(10)))
        .on_event(hook)
        .child(a)
        .child(steady(&rt, "b"))
        .build()
        .unwrap();
    let report = supervisor
        .run(cancelled_after(&rt, ms(5000), "stop"))
        .await
        .unwrap();
    assert_eq!(starts(&log, "a"), [ms(0), ms(1010)]);
    assert_eq!(starts(&log, "b"), [ms(0)]);
    let order: Vec<&str> = report.stopped.iter().map(|r| &*r.name).collect();
    assert_eq!(order, ["b", "a"]);
}

#[test]
fn a_supervisor_stops_in_reverse_of_the_order_added_after_a_restart_on_every_runtime() {
    on_every_runtime!(stop_order_is_reverse_of_the_order_added);
}

// 6. `WorkerPool::submit` / `Submitter::submit`: "dropping the future before it resolves
// drops `job` unqueued"; DESIGN §6: every queue is bounded. Producers that give up while the
// queue is full leave no waker behind, and one still waiting gets the room that frees.
async fn dropped_submits_leave_no_waker_behind<R: Runtime>(rt: Clocked<R>) {
    let release = CancellationToken::new();
    let gate = release.clone();
    let pool = WorkerPool::builder()
        .workers(1)
        .queue(1)
        .runtime(rt.clone())
        .start(move |_: u32| {
            let gate = gate.clone();
            async move { gate.cancelled().await }
        })
        .unwrap();
    let running = pool.submit(0).await.unwrap();
    while pool.running() == 0 {
        rt.sleep(ms(1)).await;
    }
    let queued = pool.submit(1).await.unwrap();
    let tally = Arc::new(());
    let mut waiting = Box::pin(pool.submit(2));
    pending_once(waiting.as_mut(), &tally);
    for n in 3..5003 {
        let mut abandoned = Box::pin(pool.submit(n));
        pending_once(abandoned.as_mut(), &tally);
    }
    assert_eq!(alive(&tally), 1);
    release.cancel("go");
    let last = waiting.await.unwrap();
    assert_eq!(alive(&tally), 0);
    for handle in [running, queued, last] {
        assert!(matches!(handle.await, Exit::Ok(_)));
    }
    let report = pool.shutdown(ms(100)).await;
    assert_eq!((report.submitted, report.completed), (3, 3));
}

#[test]
fn dropped_submits_leave_no_waker_behind_on_every_runtime() {
    on_every_runtime!(dropped_submits_leave_no_waker_behind);
}

// 7. `SupervisorBuilder::intensity`: "the window is closed, as OTP's: an exit exactly
// `period` after an earlier restart still counts that restart". intensity(1, 10 s): the
// first run fails at 0 s (restart 1); the second starts at 1 s and fails `second_run`
// later. At exactly 10 s that is a second restart within the period: escalation. 1 ms
// later the first has left the window: a restart.
async fn intensity_window_edge<R: Runtime>(rt: Clocked<R>, second_run: Duration) -> Option<u64> {
    let runs = Arc::new(AtomicU32::new(0));
    let (clock, counter) = (rt.clone(), Arc::clone(&runs));
    let child = ChildSpec::new("c", move |stop: CancellationToken| {
        let (rt, run) = (clock.clone(), counter.fetch_add(1, SeqCst) + 1);
        async move {
            match run {
                1 => Err("at once"),
                2 => {
                    rt.sleep(second_run).await;
                    Err("at the edge")
                }
                _ => {
                    stop.cancelled().await;
                    Ok(())
                }
            }
        }
    });
    let supervisor = Supervisor::builder()
        .runtime(rt.clone())
        .intensity(1, ms(10_000))
        .backoff(fixed(ms(1000)))
        .child(child)
        .build()
        .unwrap();
    let start = rt.now();
    match supervisor
        .run(cancelled_after(&rt, ms(60_000), "stop"))
        .await
    {
        Err(escalation) => {
            assert_eq!(rt.now() - start, ms(10_000));
            assert_eq!(escalation.report.restarts, 1);
            None
        }
        Ok(report) => Some(report.restarts),
    }
}

async fn a_restart_exactly_period_old_still_counts<R: Runtime>(rt: Clocked<R>) {
    assert_eq!(intensity_window_edge(rt.clone(), ms(9_000)).await, None);
    assert_eq!(intensity_window_edge(rt, ms(9_001)).await, Some(2));
}

#[test]
fn a_restart_exactly_one_period_old_still_counts_on_every_runtime() {
    on_every_runtime!(a_restart_exactly_period_old_still_counts);
}

// 8. `SupervisorReport::restarts`: "Restarts scheduled over its life: one per
// `SupervisorEvent::Restarting` ... A restart still waiting for its backoff delay when `stop`
// was cancelled counts, though the child never started again".
async fn restarts_count_the_restarts_scheduled<R: Runtime>(rt: Clocked<R>) {
    for (delay, runs) in [(HOUR, 1), (ms(1000), 2)] {
        let (log, hook) = recorder(&rt);
        let runs_seen = Arc::new(AtomicU32::new(0));
        let counter = Arc::clone(&runs_seen);
        let child = ChildSpec::new("c", move |stop: CancellationToken| {
            let first = counter.fetch_add(1, SeqCst) == 0;
            async move {
                if first {
                    return Err("at once");
                }
                stop.cancelled().await;
                Ok(())
            }
        });
        let supervisor = Supervisor::builder()
            .runtime(rt.clone())
            .backoff(constant(delay))
            .on_event(hook)
            .child(child)
            .build()
            .unwrap();
        let report = supervisor
            .run(cancelled_after(&rt, ms(60_000), "stop"))
            .await
            .unwrap();
        let scheduled = log
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, e)| matches!(e, SupervisorEvent::Restarting { .. }))
            .count();
        assert_eq!(report.ended, Ended::Stopped);
        assert_eq!((report.restarts, scheduled), (1, 1), "backoff {delay:?}");
        assert_eq!(starts(&log, "c").len(), runs, "backoff {delay:?}");
    }
}

#[test]
fn a_restart_cut_short_by_a_stop_still_counts_as_scheduled_on_every_runtime() {
    on_every_runtime!(restarts_count_the_restarts_scheduled);
}
