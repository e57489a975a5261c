//! Supervisors stopping their children: reverse start order within each child's shutdown
//! timeout, nested supervisors given the time they need, a stop during a pending restart, and
//! supervisors dropped or aborted taking their children down, on every runtime with virtual
//! time.

mod common;
#[path = "common/supervisor.rs"]
mod supervisor;

use common::ms;
use supervisor::{cancelled_after, failing, fixed, recorder, starts};

use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tidewall::rt::{Clock, Runtime, Spawn, TaskHandle};
use tidewall::task::{
    CancellationToken, Ending, Exit, TaskReport,
    supervisor::{ChildSpec, Ended, Supervisor},
};
use tidewall::testing::Clocked;

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
    let stopped: Vec<_> = report
        .stopped
        .iter()
        .map(|r| (&*r.name, r.exit.clone(), r.ending))
        .collect();
    assert_eq!(
        stopped,
        [
            ("c", Exit::Aborted, Ending::Aborted { took: ms(200) }),
            ("b", Exit::Ok(()), Ending::Stopped { took: ms(50) }),
            ("a", Exit::Ok(()), Ending::Stopped { took: ms(0) }),
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
        [TaskReport { name, exit: Exit::Ok(()), ending: Ending::Stopped { took }, .. }]
            if &**name == "tree" && *took == ms(8_000)
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

/// `a` fails on its own 50 ms into the stop, while `b` (stopped first, in reverse order)
/// takes 100 ms: `a` had ended before it was told to stop, so its exit is its own (an
/// `Exited` event), not a stop (`Ending::Stopped` means "it ended after it was told to
/// stop"), and the report's `stopped` holds only `b`.
async fn a_child_that_ended_before_its_turn_to_stop_is_an_exit<R: Runtime>(rt: Clocked<R>) {
    let (log, hook) = recorder(&rt);
    let supervisor = Supervisor::builder()
        .runtime(rt.clone())
        .on_event(hook)
        .child(failing(&rt, "a", ms(150)).shutdown_timeout(ms(1_000)))
        .child(
            ChildSpec::new("b", {
                let rt = rt.clone();
                move |stop: CancellationToken| {
                    let rt = rt.clone();
                    async move {
                        stop.cancelled().await;
                        rt.sleep(ms(100)).await;
                        Ok::<(), std::io::Error>(())
                    }
                }
            })
            .shutdown_timeout(ms(1_000)),
        )
        .build()
        .unwrap();
    let stop = cancelled_after(&rt, ms(100), "shutdown");
    let report = supervisor.run(stop).await.unwrap();
    let stopped: Vec<_> = report
        .stopped
        .iter()
        .map(|r| (&*r.name, r.exit.clone(), r.ending))
        .collect();
    assert_eq!(
        stopped,
        [("b", Exit::Ok(()), Ending::Stopped { took: ms(100) })]
    );
    let exits: Vec<_> = log
        .lock()
        .unwrap()
        .iter()
        .filter_map(|(at, event)| match event {
            tidewall::task::supervisor::SupervisorEvent::Exited { child, exit } => {
                Some((*at, child.to_string(), exit.clone()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(exits.len(), 1, "{exits:?}");
    assert_eq!(exits[0].1, "a");
    assert!(matches!(exits[0].2, Exit::Err(_)), "{exits:?}");
}

#[test]
fn a_child_that_ended_before_its_turn_to_stop_is_an_exit_on_every_runtime() {
    on_every_runtime!(a_child_that_ended_before_its_turn_to_stop_is_an_exit);
}

/// As above, at scale on tokio itself: 300 children fail on their own while the last one
/// added (stopped first) takes 100 ms to stop, so the final stop finds all 300 ended, unseen,
/// one after another without waiting. Each is an exit, none a stop: tokio's cooperative
/// budget (about 128 polls a turn) must not make a finished child read as still running.
#[tokio::test(start_paused = true)]
async fn hundreds_of_children_ended_before_their_turn_are_exits_on_tokio() {
    const ENDED: usize = 300;
    let rt = tidewall::rt::Tokio;
    let (log, hook) = recorder(&rt);
    let mut builder = Supervisor::builder().on_event(hook);
    for i in 0..ENDED {
        builder = builder.child(failing(&rt, &format!("a{i}"), ms(150)));
    }
    let slow = ChildSpec::new("b", |stop: CancellationToken| async move {
        stop.cancelled().await;
        tokio::time::sleep(ms(100)).await;
        Ok::<(), std::io::Error>(())
    });
    let supervisor = builder.child(slow).build().unwrap();
    let stop = CancellationToken::new();
    let stopper = stop.clone();
    drop(tokio::spawn(async move {
        tokio::time::sleep(ms(100)).await;
        stopper.cancel("shutdown");
    }));
    let report = supervisor.run(stop).await.unwrap();
    let stopped: Vec<_> = report
        .stopped
        .iter()
        .map(|r| (&*r.name, r.ending))
        .collect();
    assert_eq!(stopped, [("b", Ending::Stopped { took: ms(100) })]);
    let exited = log
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, event)| {
            matches!(event, tidewall::task::supervisor::SupervisorEvent::Exited { child, .. }
                if child.starts_with('a'))
        })
        .count();
    assert_eq!(exited, ENDED);
}
