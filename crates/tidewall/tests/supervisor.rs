//! Supervisors: restart kinds, strategies, intensity, backoff, nesting and ordered shutdown,
//! on every runtime with virtual time.

mod common;

use common::ms;

use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tidewall::ConfigError;
use tidewall::rt::{Clock, Runtime, Spawn, TaskHandle};
use tidewall::task::{
    CancellationToken,
    supervisor::{ChildSpec, Ended, Exit, Restart, Stopped, Strategy, Supervisor, SupervisorEvent},
};
use tidewall::testing::Clocked;
use tidewall::{Backoff, Jitter};

fn fixed(delay: Duration) -> Backoff {
    Backoff::constant(delay)
        .jitter(Jitter::None)
        .max_attempts(u32::MAX)
        .build()
        .unwrap()
}

type Log = Arc<Mutex<Vec<(Duration, SupervisorEvent)>>>;

/// Records every event with its virtual time since `start`.
fn recorder<R: Runtime>(rt: &R) -> (Log, impl Fn(&SupervisorEvent) + Send + Sync + 'static) {
    let log: Log = Arc::default();
    let (sink, rt, start) = (Arc::clone(&log), rt.clone(), rt.now());
    (log, move |event: &SupervisorEvent| {
        sink.lock().unwrap().push((rt.now() - start, event.clone()));
    })
}

fn starts(log: &Log, name: &str) -> Vec<Duration> {
    log.lock()
        .unwrap()
        .iter()
        .filter_map(|(at, e)| match e {
            SupervisorEvent::Started { child, .. } if &**child == name => Some(*at),
            _ => None,
        })
        .collect()
}

/// A stop token that a task cancels with `reason` after `after` of virtual time.
fn cancelled_after<R: Runtime>(
    rt: &Clocked<R>,
    after: Duration,
    reason: &'static str,
) -> CancellationToken {
    let stop = CancellationToken::new();
    let (stopper, rt2) = (stop.clone(), rt.clone());
    drop(rt.spawn(async move {
        rt2.sleep(after).await;
        stopper.cancel(reason);
    }));
    stop
}

/// A child that fails `after` each start.
fn failing<R: Runtime>(rt: &R, name: &str, after: Duration) -> ChildSpec {
    let rt = rt.clone();
    ChildSpec::new(name, move |_stop| {
        let rt = rt.clone();
        async move {
            rt.sleep(after).await;
            Err::<(), _>("lost connection")
        }
    })
}

/// A child that runs until told to stop.
fn steady<R: Runtime>(rt: &R, name: &str) -> ChildSpec {
    let _ = rt;
    ChildSpec::new(name, |stop: CancellationToken| async move {
        stop.cancelled().await;
        Ok::<(), std::io::Error>(())
    })
}

async fn intensity_is_exceeded_at_exactly_the_fourth_restart<R: Runtime>(rt: Clocked<R>) {
    let (log, hook) = recorder(&rt);
    let supervisor = Supervisor::builder()
        .runtime(rt.clone())
        .intensity(3, ms(10_000))
        .backoff(fixed(ms(100)))
        .on_event(hook)
        .child(failing(&rt, "db", ms(10)))
        .child(steady(&rt, "http"))
        .build()
        .unwrap();
    let escalation = supervisor.run(CancellationToken::new()).await.unwrap_err();
    assert_eq!(&*escalation.child, "db");
    assert_eq!(
        (escalation.max_restarts, escalation.report.restarts),
        (3, 3)
    );
    // Runs at 0, 110, 220, 330 ms; the fourth exit (340 ms) would be the fourth restart.
    assert_eq!(starts(&log, "db"), [ms(0), ms(110), ms(220), ms(330)]);
    let log = log.lock().unwrap();
    let escalated_at = log
        .iter()
        .find(|(_, e)| matches!(e, SupervisorEvent::Escalating { .. }))
        .unwrap()
        .0;
    assert_eq!(escalated_at, ms(340));
    // Its sibling was stopped, in time, before the supervisor failed.
    assert!(matches!(
        escalation.report.stopped.as_slice(),
        [(name, Stopped::InTime { took, exit: Exit::Normal })] if &**name == "http" && *took == ms(0)
    ));
    assert_eq!(
        escalation.to_string(),
        "child `db` exceeded the restart intensity (3 restarts in 10s)"
    );
}

#[test]
fn restart_intensity_is_exceeded_at_exactly_the_right_restart_on_every_runtime() {
    on_every_runtime!(intensity_is_exceeded_at_exactly_the_fourth_restart);
}

/// Failures spaced wider than the period never add up to the intensity.
async fn spaced_failures_stay_within_the_intensity<R: Runtime>(rt: Clocked<R>) {
    let (log, hook) = recorder(&rt);
    let supervisor = Supervisor::builder()
        .runtime(rt.clone())
        .intensity(1, ms(1_000))
        .backoff(fixed(ms(1)))
        .on_event(hook)
        .child(failing(&rt, "worker", ms(1_500)))
        .build()
        .unwrap();
    let stop = cancelled_after(&rt, ms(10_000), "test over");
    let report = supervisor.run(stop).await.unwrap();
    assert_eq!(report.ended, Ended::Stopped);
    assert_eq!(report.restarts, 6, "failures at 1.5, 3.0, ... 9.0 s");
    assert_eq!(starts(&log, "worker").len(), 7);
}

#[test]
fn failures_spaced_beyond_the_period_never_escalate_on_every_runtime() {
    on_every_runtime!(spaced_failures_stay_within_the_intensity);
}

/// Children a, b, c; b fails 10 ms after its first start only.
fn three_children<R: Runtime>(rt: &R, stop_log: &Arc<Mutex<Vec<String>>>) -> [ChildSpec; 3] {
    ["a", "b", "c"].map(|name| {
        let (rt, stop_log) = (rt.clone(), Arc::clone(stop_log));
        let runs = Arc::new(AtomicU32::new(0));
        ChildSpec::new(name, move |stop: CancellationToken| {
            let (rt, stop_log) = (rt.clone(), Arc::clone(&stop_log));
            let run = runs.fetch_add(1, SeqCst);
            async move {
                if name == "b" && run == 0 {
                    rt.sleep(ms(10)).await;
                    return Err("b crashed");
                }
                stop.cancelled().await;
                stop_log.lock().unwrap().push(name.to_owned());
                Ok(())
            }
        })
    })
}

async fn strategy_scenario<R: Runtime>(rt: Clocked<R>, strategy: Strategy) -> (Log, Vec<String>) {
    let (log, hook) = recorder(&rt);
    let stop_log = Arc::new(Mutex::new(Vec::new()));
    let [a, b, c] = three_children(&rt, &stop_log);
    let supervisor = Supervisor::builder()
        .runtime(rt.clone())
        .strategy(strategy)
        .backoff(fixed(ms(5)))
        .on_event(hook)
        .child(a)
        .child(b)
        .child(c)
        .build()
        .unwrap();
    let stop = cancelled_after(&rt, ms(100), "done");
    let report = supervisor.run(stop).await.unwrap();
    assert_eq!(report.restarts, 1);
    let stopped: Vec<&str> = report.stopped.iter().map(|(n, _)| &**n).collect();
    assert_eq!(
        stopped,
        ["c", "b", "a"],
        "final shutdown in reverse start order"
    );
    let order = stop_log.lock().unwrap().clone();
    (log, order)
}

async fn one_for_all_and_rest_for_one<R: Runtime>(rt: Clocked<R>) {
    let (log, order) = strategy_scenario(rt.clone(), Strategy::OneForAll).await;
    assert_eq!(starts(&log, "a"), [ms(0), ms(15)]);
    assert_eq!(starts(&log, "b"), [ms(0), ms(15)]);
    assert_eq!(starts(&log, "c"), [ms(0), ms(15)]);
    // Siblings stopped in reverse (c, a), then everyone at the end (c, b, a).
    assert_eq!(order, ["c", "a", "c", "b", "a"]);

    let (log, order) = strategy_scenario(rt.clone(), Strategy::RestForOne).await;
    assert_eq!(starts(&log, "a"), [ms(0)]);
    assert_eq!(starts(&log, "b"), [ms(0), ms(15)]);
    assert_eq!(starts(&log, "c"), [ms(0), ms(15)]);
    assert_eq!(order, ["c", "c", "b", "a"]);

    let (log, order) = strategy_scenario(rt, Strategy::OneForOne).await;
    assert_eq!(starts(&log, "a"), [ms(0)]);
    assert_eq!(starts(&log, "b"), [ms(0), ms(15)]);
    assert_eq!(starts(&log, "c"), [ms(0)]);
    assert_eq!(order, ["c", "b", "a"]);
}

#[test]
fn one_for_all_rest_for_one_and_one_for_one_restart_the_right_children_on_every_runtime() {
    on_every_runtime!(one_for_all_and_rest_for_one);
}

async fn restart_kinds<R: Runtime>(rt: Clocked<R>) {
    let (log, hook) = recorder(&rt);
    let ok_after = |name: &str, after: u64| {
        let rt = rt.clone();
        ChildSpec::new(name, move |_stop| {
            let rt = rt.clone();
            async move {
                rt.sleep(ms(after)).await;
                Ok::<(), std::io::Error>(())
            }
        })
    };
    let panics_once = {
        let runs = Arc::new(AtomicU32::new(0));
        ChildSpec::new("transient-panics", move |_stop| {
            let run = runs.fetch_add(1, SeqCst);
            async move {
                assert!(run > 0, "first run panics");
                Ok::<(), std::io::Error>(())
            }
        })
        .restart(Restart::Transient)
    };
    let supervisor = Supervisor::builder()
        .runtime(rt.clone())
        .intensity(10, ms(1_000))
        .backoff(fixed(ms(1)))
        .on_event(hook)
        .child(ok_after("transient-ok", 5).restart(Restart::Transient))
        .child(failing(&rt, "temporary-fails", ms(5)).restart(Restart::Temporary))
        .child(panics_once)
        .child(ok_after("permanent-ok", 40).restart(Restart::Permanent))
        .build()
        .unwrap();
    let stop = cancelled_after(&rt, ms(100), "done");
    let report = supervisor.run(stop).await.unwrap();
    assert_eq!(starts(&log, "transient-ok").len(), 1);
    assert_eq!(starts(&log, "temporary-fails").len(), 1);
    assert_eq!(starts(&log, "transient-panics").len(), 2);
    assert_eq!(starts(&log, "permanent-ok"), [ms(0), ms(41), ms(82)]);
    assert_eq!(report.restarts, 3);
    let log = log.lock().unwrap();
    assert!(log.iter().any(|(_, e)| matches!(e,
        SupervisorEvent::Exited { child, exit: Exit::Panicked(message) }
            if &**child == "transient-panics" && message == "first run panics")));
    assert!(log.iter().any(|(_, e)| matches!(e,
        SupervisorEvent::Exited { child, exit: Exit::Failed(message) }
            if &**child == "temporary-fails" && message == "lost connection")));
}

#[test]
fn permanent_transient_and_temporary_children_and_panics_on_every_runtime() {
    on_every_runtime!(restart_kinds);
}

async fn no_children_left<R: Runtime>(rt: Clocked<R>) {
    let supervisor = Supervisor::builder()
        .runtime(rt.clone())
        .child(failing(&rt, "once", ms(5)).restart(Restart::Temporary))
        .build()
        .unwrap();
    let report = supervisor.run(CancellationToken::new()).await.unwrap();
    assert_eq!(report.ended, Ended::NoChildrenLeft);
    assert!(report.stopped.is_empty());
}

#[test]
fn a_supervisor_with_nothing_left_to_run_returns_on_every_runtime() {
    on_every_runtime!(no_children_left);
}

/// a stops at once, b takes 50 ms, c ignores its token and is aborted at its 200 ms timeout.
async fn reverse_order_shutdown_with_timeouts<R: Runtime>(rt: Clocked<R>) {
    let seen: Arc<Mutex<Vec<(&str, Instant)>>> = Arc::default();
    let child = |name: &'static str, stop_takes: Option<u64>, timeout: u64| {
        let (rt, seen) = (rt.clone(), Arc::clone(&seen));
        ChildSpec::new(name, move |stop: CancellationToken| {
            let (rt, seen) = (rt.clone(), Arc::clone(&seen));
            async move {
                match stop_takes {
                    Some(took) => {
                        stop.cancelled().await;
                        seen.lock().unwrap().push((name, rt.now()));
                        rt.sleep(ms(took)).await;
                    }
                    None => rt.sleep(ms(1_000_000)).await,
                }
                Ok::<(), std::io::Error>(())
            }
        })
        .shutdown_timeout(ms(timeout))
    };
    let supervisor = Supervisor::builder()
        .runtime(rt.clone())
        .child(child("a", Some(0), 1_000))
        .child(child("b", Some(50), 1_000))
        .child(child("c", None, 200))
        .build()
        .unwrap();
    let stop = CancellationToken::new();
    stop.cancel("shutdown");
    let start = rt.now();
    let report = supervisor.run(stop).await.unwrap();
    assert_eq!(rt.now() - start, ms(250));
    assert_eq!(
        report.stopped,
        [
            ("c".into(), Stopped::Aborted { took: ms(200) }),
            (
                "b".into(),
                Stopped::InTime {
                    took: ms(50),
                    exit: Exit::Normal
                }
            ),
            (
                "a".into(),
                Stopped::InTime {
                    took: ms(0),
                    exit: Exit::Normal
                }
            ),
        ]
    );
    // b was told only after c was gone, a only after b.
    let seen = seen.lock().unwrap();
    let told: Vec<_> = seen.iter().map(|&(name, at)| (name, at - start)).collect();
    assert_eq!(told, [("b", ms(200)), ("a", ms(250))]);
}

#[test]
fn shutdown_stops_children_in_reverse_order_and_aborts_at_each_timeout_on_every_runtime() {
    on_every_runtime!(reverse_order_shutdown_with_timeouts);
}

/// Exponential backoff 100, 200, 400 ms; a run that was stable for 5 s starts it over.
async fn backoff_grows_then_resets_after_a_stable_run<R: Runtime>(rt: Clocked<R>) {
    let (log, hook) = recorder(&rt);
    let runs = Arc::new(AtomicU32::new(0));
    let rt2 = rt.clone();
    let spec = ChildSpec::new("cache", move |_stop| {
        let (rt, run) = (rt2.clone(), runs.fetch_add(1, SeqCst));
        async move {
            rt.sleep(if run == 3 { ms(6_000) } else { ms(10) }).await;
            Err::<(), _>("refresh failed")
        }
    });
    let supervisor = Supervisor::builder()
        .runtime(rt.clone())
        .intensity(4, ms(60_000))
        .stable_after(ms(5_000))
        .backoff(
            Backoff::exponential(ms(100))
                .jitter(Jitter::None)
                .max_delay(ms(10_000))
                .build()
                .unwrap(),
        )
        .on_event(hook)
        .child(spec)
        .build()
        .unwrap();
    let escalation = supervisor.run(CancellationToken::new()).await.unwrap_err();
    assert_eq!(escalation.report.restarts, 4);
    let delays: Vec<Duration> = log
        .lock()
        .unwrap()
        .iter()
        .filter_map(|(_, e)| match e {
            SupervisorEvent::Restarting { delay, .. } => Some(*delay),
            _ => None,
        })
        .collect();
    assert_eq!(delays, [ms(100), ms(200), ms(400), ms(100)]);
}

#[test]
fn restart_backoff_grows_and_resets_after_a_stable_run_on_every_runtime() {
    on_every_runtime!(backoff_grows_then_resets_after_a_stable_run);
}

/// Jittered delays stay within [d/2, d] and are reproducible with a seed.
async fn jittered_backoff_is_seeded<R: Runtime>(rt: Clocked<R>) {
    let delays = |seed: u64| {
        let rt = rt.clone();
        async move {
            let (log, hook) = recorder(&rt);
            Supervisor::builder()
                .runtime(rt.clone())
                .intensity(5, ms(60_000))
                .seed(seed)
                .on_event(hook)
                .child(failing(&rt, "x", ms(1)))
                .build()
                .unwrap()
                .run(CancellationToken::new())
                .await
                .unwrap_err();
            let delays: Vec<Duration> = log
                .lock()
                .unwrap()
                .iter()
                .filter_map(|(_, e)| match e {
                    SupervisorEvent::Restarting { delay, .. } => Some(*delay),
                    _ => None,
                })
                .collect();
            delays
        }
    };
    let first = delays(7).await;
    assert_eq!(first, delays(7).await);
    assert_ne!(first, delays(8).await);
    for (i, delay) in first.iter().enumerate() {
        let full = ms(10 << i).min(ms(1_000));
        assert!(*delay >= full / 2 && *delay <= full, "{i}: {delay:?}");
    }
}

#[test]
fn default_backoff_has_seeded_equal_jitter_on_every_runtime() {
    on_every_runtime!(jittered_backoff_is_seeded);
}

/// An inner supervisor escalates twice; the outer restarts it once, then escalates itself.
async fn nested_escalation<R: Runtime>(rt: Clocked<R>) {
    let (log, hook) = recorder(&rt);
    let inner_rt = rt.clone();
    let inner = ChildSpec::supervisor("inner", move || {
        Supervisor::builder()
            .runtime(inner_rt.clone())
            .intensity(1, ms(10_000))
            .backoff(fixed(ms(1)))
            .child(failing(&inner_rt, "leaf", ms(10)))
            .build()
            .unwrap()
    });
    let outer = Supervisor::builder()
        .runtime(rt.clone())
        .intensity(1, ms(10_000))
        .backoff(fixed(ms(1)))
        .on_event(hook)
        .child(steady(&rt, "sibling"))
        .child(inner)
        .build()
        .unwrap();
    let escalation = outer.run(CancellationToken::new()).await.unwrap_err();
    assert_eq!(&*escalation.child, "inner");
    // Inner: leaf at 0 and 11 ms, escalates at 21; outer restarts it at 22: leaf at 22 and
    // 33, escalates at 43: the outer's second restart is one too many.
    assert_eq!(starts(&log, "inner"), [ms(0), ms(22)]);
    let log = log.lock().unwrap();
    let failures: Vec<_> = log
        .iter()
        .filter_map(|(at, e)| match e {
            SupervisorEvent::Exited {
                child,
                exit: Exit::Failed(message),
            } if &**child == "inner" => Some((*at, message.clone())),
            _ => None,
        })
        .collect();
    let message = "child `leaf` exceeded the restart intensity (1 restarts in 10s)".to_owned();
    assert_eq!(failures, [(ms(21), message.clone()), (ms(43), message)]);
}

#[test]
fn nested_supervisors_escalate_up_the_tree_on_every_runtime() {
    on_every_runtime!(nested_escalation);
}

#[test]
fn bad_configuration_is_a_typed_error() {
    let child = || ChildSpec::new("x", |_stop| async { Ok::<(), std::io::Error>(()) });
    let zero_zero = Supervisor::builder()
        .intensity(0, Duration::ZERO)
        .child(child())
        .build();
    assert_eq!(
        zero_zero.unwrap_err(),
        ConfigError::Zero { field: "period" }
    );
    let none = Supervisor::builder().build();
    assert_eq!(none.unwrap_err(), ConfigError::Zero { field: "children" });
    let twins = Supervisor::builder().child(child()).child(child()).build();
    assert!(matches!(twins.unwrap_err(), ConfigError::Conflict { .. }));
    let stable = Supervisor::builder()
        .stable_after(Duration::ZERO)
        .child(child())
        .build();
    assert_eq!(
        stable.unwrap_err(),
        ConfigError::Zero {
            field: "stable_after"
        }
    );
    // Zero restarts is valid: the first exit that needs a restart escalates.
    assert!(
        Supervisor::builder()
            .intensity(0, ms(1))
            .child(child())
            .build()
            .is_ok()
    );
}

async fn stop_while_a_restart_is_pending<R: Runtime>(rt: Clocked<R>) {
    let (log, hook) = recorder(&rt);
    let supervisor = Supervisor::builder()
        .runtime(rt.clone())
        .backoff(fixed(ms(1_000)))
        .on_event(hook)
        .child(failing(&rt, "db", ms(10)))
        .build()
        .unwrap();
    let stop = cancelled_after(&rt, ms(100), "deploy");
    let start = rt.now();
    let report = supervisor.run(stop).await.unwrap();
    assert_eq!(rt.now() - start, ms(100), "no waiting out the backoff");
    assert_eq!(report.ended, Ended::Stopped);
    assert!(report.stopped.is_empty(), "nothing was running");
    assert_eq!(
        starts(&log, "db"),
        [ms(0)],
        "the pending restart was dropped"
    );
}

#[test]
fn a_stop_during_a_pending_restart_ends_at_once_on_every_runtime() {
    on_every_runtime!(stop_while_a_restart_is_pending);
}

async fn factory_and_hook_panics_are_contained<R: Runtime>(rt: Clocked<R>) {
    let (log, hook) = recorder(&rt);
    let calls = Arc::new(AtomicU32::new(0));
    let counter = Arc::clone(&calls);
    let spec = ChildSpec::new("fragile", move |stop: CancellationToken| {
        assert!(
            counter.fetch_add(1, SeqCst) > 0,
            "bad config on first start"
        );
        async move {
            stop.cancelled().await;
            Ok::<(), std::io::Error>(())
        }
    });
    let supervisor = Supervisor::builder()
        .runtime(rt.clone())
        .backoff(fixed(ms(1)))
        .on_event(move |event| {
            hook(event);
            if matches!(event, SupervisorEvent::Started { run: 2, .. }) {
                panic!("a buggy hook");
            }
        })
        .child(spec)
        .child(steady(&rt, "sibling"))
        .build()
        .unwrap();
    let stop = cancelled_after(&rt, ms(50), "done");
    let report = supervisor.run(stop).await.unwrap();
    assert_eq!(report.restarts, 1);
    assert_eq!(calls.load(SeqCst), 2);
    assert!(log.lock().unwrap().iter().any(|(_, e)| matches!(e,
        SupervisorEvent::Exited { child, exit: Exit::Panicked(m) }
            if &**child == "fragile" && m == "bad config on first start")));
    assert_eq!(
        report.stopped.len(),
        2,
        "both children were running at the end"
    );
}

#[test]
fn a_panicking_factory_is_a_crashed_child_and_a_panicking_hook_is_ignored_on_every_runtime() {
    on_every_runtime!(factory_and_hook_panics_are_contained);
}

/// Spawned through a function generic over the runtime: with the runtime written as
/// `Clocked<R>` for a generic `R`, rustc cannot prove the `run` future `Send` (a higher-ranked
/// lifetime limitation when normalizing `Clocked<R>`'s join handle type inside the future).
fn spawn_run<RT: Runtime>(
    rt: &RT,
    supervisor: Supervisor<RT>,
) -> tidewall::rt::JoinHandle<
    RT,
    Result<tidewall::task::supervisor::SupervisorReport, tidewall::task::supervisor::Escalation>,
> {
    rt.spawn(supervisor.run(CancellationToken::new()))
}

async fn a_dropped_supervisor_takes_its_children_down<R: Runtime>(rt: Clocked<R>) {
    let tokens: Arc<Mutex<Vec<CancellationToken>>> = Arc::default();
    let alive = Arc::new(AtomicU32::new(0));
    let (seen, count) = (Arc::clone(&tokens), Arc::clone(&alive));
    let supervisor = Supervisor::builder()
        .runtime(rt.clone())
        .child(ChildSpec::new("worker", move |stop: CancellationToken| {
            seen.lock().unwrap().push(stop);
            let alive = Alive::new(Arc::clone(&count));
            async move {
                let _alive = alive;
                std::future::pending::<()>().await;
                Ok::<(), std::io::Error>(())
            }
        }))
        .build()
        .unwrap();
    let running = spawn_run(&rt, supervisor);
    rt.sleep(ms(10)).await;
    assert_eq!(alive.load(SeqCst), 1);
    running.abort();
    assert!(running.await.is_err());
    rt.sleep(ms(10)).await;
    assert_eq!(alive.load(SeqCst), 0, "the worker went with its supervisor");
    assert!(
        tokens.lock().unwrap()[0].is_cancelled(),
        "and its token was cancelled"
    );
}

/// Counts live instances.
struct Alive(Arc<AtomicU32>);

impl Alive {
    fn new(count: Arc<AtomicU32>) -> Self {
        count.fetch_add(1, SeqCst);
        Self(count)
    }
}

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.fetch_sub(1, SeqCst);
    }
}

#[test]
fn an_aborted_supervisor_cancels_and_aborts_its_children_on_every_runtime() {
    on_every_runtime!(a_dropped_supervisor_takes_its_children_down);
}

async fn exhausted_backoff_starts_over<R: Runtime>(rt: Clocked<R>) {
    let (log, hook) = recorder(&rt);
    let supervisor = Supervisor::builder()
        .runtime(rt.clone())
        .intensity(5, ms(60_000))
        .backoff(
            Backoff::exponential(ms(10))
                .jitter(Jitter::None)
                .max_attempts(3)
                .build()
                .unwrap(),
        )
        .on_event(hook)
        .child(failing(&rt, "x", ms(1)))
        .build()
        .unwrap();
    supervisor.run(CancellationToken::new()).await.unwrap_err();
    let delays: Vec<Duration> = log
        .lock()
        .unwrap()
        .iter()
        .filter_map(|(_, e)| match e {
            SupervisorEvent::Restarting { delay, .. } => Some(*delay),
            _ => None,
        })
        .collect();
    // Two delays per schedule (max_attempts 3 = 2 retries), then it starts over.
    assert_eq!(delays, [ms(10), ms(20), ms(10), ms(20), ms(10)]);
}

#[test]
fn a_backoff_that_runs_out_starts_over_on_every_runtime() {
    on_every_runtime!(exhausted_backoff_starts_over);
}

/// One-for-all: a transient sibling that ended normally comes back with the group; a
/// temporary one stopped by the group restart does not.
async fn one_for_all_with_transient_and_temporary_siblings<R: Runtime>(rt: Clocked<R>) {
    let (log, hook) = recorder(&rt);
    let rt2 = rt.clone();
    let transient = ChildSpec::new("transient", move |_stop| {
        let rt = rt2.clone();
        async move {
            rt.sleep(ms(5)).await;
            Ok::<(), std::io::Error>(())
        }
    })
    .restart(Restart::Transient);
    let runs = Arc::new(AtomicU32::new(0));
    let rt3 = rt.clone();
    let permanent = ChildSpec::new("permanent", move |stop: CancellationToken| {
        let (rt, run) = (rt3.clone(), runs.fetch_add(1, SeqCst));
        async move {
            if run == 0 {
                rt.sleep(ms(20)).await;
                return Err("crash");
            }
            stop.cancelled().await;
            Ok(())
        }
    });
    let supervisor = Supervisor::builder()
        .runtime(rt.clone())
        .strategy(Strategy::OneForAll)
        .backoff(fixed(ms(1)))
        .on_event(hook)
        .child(transient)
        .child(steady(&rt, "temporary").restart(Restart::Temporary))
        .child(permanent)
        .build()
        .unwrap();
    let stop = cancelled_after(&rt, ms(100), "done");
    supervisor.run(stop).await.unwrap();
    assert_eq!(starts(&log, "transient"), [ms(0), ms(21)]);
    assert_eq!(starts(&log, "temporary"), [ms(0)]);
    assert_eq!(starts(&log, "permanent"), [ms(0), ms(21)]);
}

#[test]
fn one_for_all_restarts_transient_siblings_but_never_temporary_ones_on_every_runtime() {
    on_every_runtime!(one_for_all_with_transient_and_temporary_siblings);
}

/// Compile-time check: a supervisor's `run` future can be spawned on tokio as is.
#[allow(dead_code)]
fn run_is_spawnable_on_tokio(
    supervisor: Supervisor<tidewall::rt::Tokio>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let _ = supervisor.run(CancellationToken::new()).await;
    })
}

/// Compile-time check: and so are a scope's join and a shutdown's run.
#[allow(dead_code)]
fn closers_are_spawnable_on_tokio(
    scope: tidewall::task::scope::Scope<u8, ()>,
    shutdown: tidewall::task::shutdown::Shutdown<tidewall::rt::Tokio>,
) {
    drop(tokio::spawn(scope.join()));
    drop(tokio::spawn(shutdown.run()));
}

/// A parent stopping a nested supervisor waits for its ordered shutdown, however long its
/// children take within their own timeouts (OTP's `infinity` for supervisor children).
async fn nested_shutdown_is_not_cut_short<R: Runtime>(rt: Clocked<R>) {
    let stopped: Arc<Mutex<Vec<(&'static str, Duration)>>> = Arc::default();
    let start = rt.now();
    let (inner_rt, log) = (rt.clone(), Arc::clone(&stopped));
    let tree = ChildSpec::supervisor("tree", move || {
        let mut builder = Supervisor::builder().runtime(inner_rt.clone());
        for name in ["g1", "g2"] {
            let (rt, log) = (inner_rt.clone(), Arc::clone(&log));
            builder = builder.child(ChildSpec::new(name, move |stop: CancellationToken| {
                let (rt, log) = (rt.clone(), Arc::clone(&log));
                async move {
                    stop.cancelled().await;
                    rt.sleep(ms(4_000)).await; // within its 5 s default timeout
                    log.lock().unwrap().push((name, rt.now() - start));
                    Ok::<(), std::io::Error>(())
                }
            }));
        }
        builder.build().unwrap()
    });
    let parent = Supervisor::builder()
        .runtime(rt.clone())
        .child(tree)
        .build()
        .unwrap();
    let stop = CancellationToken::new();
    stop.cancel("shutdown");
    let report = parent.run(stop).await.unwrap();
    assert_eq!(
        *stopped.lock().unwrap(),
        [("g2", ms(4_000)), ("g1", ms(8_000))]
    );
    assert!(matches!(
        report.stopped.as_slice(),
        [(name, Stopped::InTime { took, exit: Exit::Normal })] if &**name == "tree" && *took == ms(8_000)
    ));
}

#[test]
fn a_nested_supervisor_gets_to_stop_its_children_in_order_on_every_runtime() {
    on_every_runtime!(nested_shutdown_is_not_cut_short);
}

/// A supervisor dropped while it waits out a child's shutdown timeout (its ordered stop under
/// way) still aborts that child: the child stays in its slot until it has ended, so the
/// supervisor's `Drop` finds it, instead of a handle dropped mid-wait detaching it.
async fn dropped_mid_stop_aborts_the_child_being_stopped<R: Runtime>(rt: Clocked<R>) {
    let alive = Arc::new(AtomicU32::new(0));
    let count = Arc::clone(&alive);
    let clock = rt.clone();
    let supervisor = Supervisor::builder()
        .runtime(rt.clone())
        .child(
            ChildSpec::new("stubborn", move |_stop| {
                let (count, clock) = (Arc::clone(&count), clock.clone());
                async move {
                    let _alive = Alive::new(count);
                    // Ignores its token: only an abort stops it.
                    clock.sleep(Duration::from_secs(86_400)).await;
                    Ok::<(), std::io::Error>(())
                }
            })
            .shutdown_timeout(Duration::from_secs(10)),
        )
        .build()
        .unwrap();
    let stop = CancellationToken::new();
    let run = rt.spawn(supervisor.run(stop.clone()));
    rt.sleep(Duration::from_millis(1)).await;
    assert_eq!(alive.load(SeqCst), 1);
    stop.cancel("ordered stop");
    // One second into the child's ten-second shutdown timeout, the supervisor goes.
    rt.sleep(Duration::from_secs(1)).await;
    assert_eq!(alive.load(SeqCst), 1, "still within its shutdown timeout");
    run.abort();
    assert!(run.await.unwrap_err().is_cancelled());
    rt.sleep(Duration::from_millis(1)).await;
    assert_eq!(alive.load(SeqCst), 0, "the child outlived its supervisor");
    rt.sleep(Duration::from_secs(86_400 * 2)).await;
    assert_eq!(alive.load(SeqCst), 0);
}

#[test]
fn a_supervisor_dropped_mid_stop_aborts_the_child_being_stopped_on_every_runtime() {
    on_every_runtime!(dropped_mid_stop_aborts_the_child_being_stopped);
}
