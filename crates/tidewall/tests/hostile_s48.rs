//! Hostile black-box tests of the contracts changed by the audit-s48 fixes, written from the
//! public docs only (rustdoc, README, docs/*.md, the CHANGELOG's `[Unreleased] ### Fixed`):
//!
//! 1. `rt::TaskHandle::try_join` (tokio's override outside the cooperative budget), and the
//!    supervisor's and the shutdown's stops telling a child that ended on its own before its
//!    turn as an `Exited` event (not in `SupervisorReport::stopped`): hundreds of children on
//!    plain tokio, brutal kills, panics and errors, nested supervisors, a stop during a
//!    restart;
//! 2. the hedge's latency estimate (counts halving rounded down, so rare slow latencies fade),
//!    a fixed-delay hedge keeping no estimate across a reload, a budget with no per-second
//!    floor, early hedges after every running attempt failed counting as hedges;
//! 3. the HTTP client: a retryable request copied before each attempt but the last the
//!    schedule allows, the per-authority retry budget kept a window past its latest retry,
//!    `record_gauges`' `keyed_budget`, hyper's errors through `HttpFailure`;
//! 4. `config::Reload::reset` and `Reload::relearning` naming each instance once.
//!
//! Every test quotes the doc sentence it checks. Time is virtual (paused tokio, `Clocked`);
//! nothing asserts on real time.
#![cfg(all(
    feature = "tokio",
    feature = "smol",
    feature = "tower",
    feature = "test-util",
    feature = "toml",
    feature = "metrics",
    feature = "http",
    feature = "hyper"
))]
#![allow(
    clippy::too_many_lines,
    clippy::cast_possible_truncation,
    clippy::float_cmp
)]

mod common;
mod support;

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::ms;
use common::tally::Counters;
use support::snapshot::{gauge, recorded, snapshot};
use tidewall::config::{Config, Registry};
use tidewall::hedge::{Hedge, Idempotent};
use tidewall::http::{Authority, ClientPolicies, FailureKind, HttpFailure, Overrides};
use tidewall::rt::{Clock, JoinError, Spawn, TaskHandle, Tokio};
use tidewall::task::shutdown::Shutdown;
use tidewall::task::supervisor::{
    ChildSpec, Ended, Escalation, Restart, Strategy, Supervisor, SupervisorEvent, SupervisorReport,
};
use tidewall::task::{CancellationToken, Ending, Exit, TaskReport};
use tidewall::telemetry::{Event, EventKind};
use tidewall::{Backoff, Jitter};
use tokio::time::Instant;

fn config(text: &str) -> Config {
    Config::from_toml(text).unwrap_or_else(|e| panic!("a valid configuration: {e}\n{text}"))
}

fn fixed(delay: Duration) -> Backoff {
    Backoff::constant(delay)
        .jitter(Jitter::None)
        .max_attempts(u32::MAX)
        .build()
        .unwrap()
}

/// Three attempts, 10 ms apart.
fn backoff_three_attempts() -> Backoff {
    Backoff::constant(ms(10))
        .jitter(Jitter::None)
        .max_attempts(3)
        .build()
        .unwrap()
}

// === 1. try_join, supervisors and shutdowns at scale on plain tokio ========================

/// Spawns 400 tasks on `$rt`, lets them finish, and asserts that `try_join` reads each one's
/// value. A macro, as the runtime adapters share no trait that spawns a value-returning task.
macro_rules! assert_reads_400_finished {
    ($rt:ident, $what:literal) => {{
        let mut handles: Vec<_> = (0..400_u32).map(|i| $rt.spawn(async move { i })).collect();
        $rt.sleep(ms(1)).await;
        let read: Vec<Option<u32>> = handles
            .iter_mut()
            .map(|h| h.try_join().map(Result::unwrap))
            .collect();
        assert_eq!(read, (0..400).map(Some).collect::<Vec<_>>(), $what);
    }};
}

/// `earlier_waker_survives` for a task of `$rt` that ends once released, settled by `$rt`'s
/// own clock.
macro_rules! earlier_waker_survives_on {
    ($rt:ident) => {{
        let (tx, rx) = futures_channel::oneshot::channel::<()>();
        let handle = $rt.spawn(async move {
            let _ = rx.await;
        });
        $rt.sleep(ms(1)).await;
        let settle = $rt.sleep(ms(1));
        earlier_waker_survives(handle, move || tx.send(()).unwrap(), settle).await
    }};
}

/// Supervisor events with the (paused) tokio time each came at, since the log was made.
type Log = Arc<Mutex<Vec<(Duration, SupervisorEvent)>>>;

fn recorder() -> (Log, impl Fn(&SupervisorEvent) + Send + Sync + 'static) {
    let log: Log = Arc::default();
    let (sink, start) = (Arc::clone(&log), Instant::now());
    (log, move |event: &SupervisorEvent| {
        sink.lock().unwrap().push((start.elapsed(), event.clone()));
    })
}

/// A stop token cancelled `after` from now (paused tokio time).
fn stop_after(after: Duration) -> CancellationToken {
    let stop = CancellationToken::new();
    let stopper = stop.clone();
    tokio::spawn(async move {
        tokio::time::sleep(after).await;
        stopper.cancel("deploy");
    });
    stop
}

/// How a scale child behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Ignores its token, returns `Err("e<i>")` at `at`.
    Fails,
    /// Ignores its token, panics with "p<i>" at `at`.
    Panics,
    /// Ignores its token, returns `Ok` at `at`.
    Returns,
    /// Returns `Ok` as soon as its token is cancelled.
    Steady,
}

fn kind_of(i: usize) -> Kind {
    match i % 4 {
        0 => Kind::Fails,
        1 => Kind::Panics,
        2 => Kind::Returns,
        _ => Kind::Steady,
    }
}

/// The exit a child of `kind` numbered `i` reports when it ends on its own.
fn own_exit(kind: Kind, i: usize) -> Exit {
    match kind {
        Kind::Fails => Exit::Err(format!("e{i}")),
        Kind::Panics => Exit::Panicked(format!("p{i}")),
        Kind::Returns | Kind::Steady => Exit::Ok(()),
    }
}

/// A child named `c<i>` that ends on its own at `at` (an instant of tokio's paused clock), as
/// `kind` says, or runs until told.
fn scale_child(i: usize, kind: Kind, at: Instant) -> ChildSpec {
    ChildSpec::new(
        format!("c{i:03}"),
        move |stop: CancellationToken| async move {
            match kind {
                Kind::Steady => {
                    stop.cancelled().await;
                    Ok::<(), String>(())
                }
                Kind::Fails => {
                    tokio::time::sleep_until(at).await;
                    Err(format!("e{i}"))
                }
                Kind::Panics => {
                    tokio::time::sleep_until(at).await;
                    panic!("p{i}");
                }
                Kind::Returns => {
                    tokio::time::sleep_until(at).await;
                    Ok(())
                }
            }
        },
    )
}

/// A child that takes `drain` to stop once told.
fn slow_child(name: &str, drain: Duration) -> ChildSpec {
    ChildSpec::new(name, move |stop: CancellationToken| async move {
        stop.cancelled().await;
        tokio::time::sleep(drain).await;
        Ok::<(), std::io::Error>(())
    })
}

/// The children named by the log's `Stopped` events, in order.
fn stopped_events(log: &Log) -> Vec<String> {
    log.lock()
        .unwrap()
        .iter()
        .filter_map(|(_, e)| match e {
            SupervisorEvent::Stopped { child, .. } => Some(child.to_string()),
            _ => None,
        })
        .collect()
}

/// `even` for the even-numbered children, `odd` for the rest.
fn alternating(i: usize, even: Kind, odd: Kind) -> Kind {
    if i.is_multiple_of(2) { even } else { odd }
}

/// The `Exited` events of the log, by child name (each name's exits in order).
fn exits(log: &Log) -> BTreeMap<String, Vec<Exit>> {
    let mut exits: BTreeMap<String, Vec<Exit>> = BTreeMap::new();
    for (_, event) in log.lock().unwrap().iter() {
        if let SupervisorEvent::Exited { child, exit } = event {
            exits
                .entry(child.to_string())
                .or_default()
                .push(exit.clone());
        }
    }
    exits
}

fn started_after(log: &Log, after: Duration) -> Vec<String> {
    log.lock()
        .unwrap()
        .iter()
        .filter_map(|(at, e)| match e {
            SupervisorEvent::Started { child, .. } if *at >= after => Some(child.to_string()),
            _ => None,
        })
        .collect()
}

fn rows(reports: &[TaskReport]) -> Vec<(String, Exit, Ending)> {
    reports
        .iter()
        .map(|r| (r.name.to_string(), r.exit.clone(), r.ending))
        .collect()
}

fn names(reports: &[TaskReport]) -> Vec<String> {
    reports.iter().map(|r| r.name.to_string()).collect()
}

/// The report's `stopped` lists the slow child alone (the first other one shows on failure).
#[track_caller]
fn assert_only_slow_stopped(report: &SupervisorReport) {
    assert_eq!(
        names(&report.stopped),
        ["slow"],
        "{:?}",
        report.stopped.get(1)
    );
}

/// Doc (`TaskHandle::try_join`): "The task's result if it has finished, `None` while it runs:
/// without waiting ... tokio's handle does [override it], since tokio's cooperative budget
/// (about 128 polls a turn) makes a handle polled late in a task's turn read as pending."
///
/// 600 finished tasks read in one turn of one task, on plain tokio: each one's result, none
/// `None`; a panicked one's panic, an aborted one's cancellation; and a running one `None`,
/// its handle still giving its result afterwards.
#[tokio::test(start_paused = true)]
async fn try_join_reads_hundreds_of_finished_tokio_tasks_in_one_turn() {
    let done = Arc::new(AtomicUsize::new(0));
    let mut handles: Vec<_> = (0..600_u32)
        .map(|i| {
            let done = Arc::clone(&done);
            Tokio.spawn(async move {
                done.fetch_add(1, SeqCst);
                i
            })
        })
        .collect();
    let panicking = Tokio.spawn(async { panic!("boom in task") });
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let mut aborted = Tokio.spawn(async move {
        let _ = rx.await;
        7_u32
    });
    // Let every task run to its end (and the abort take effect) before reading them.
    for _ in 0..4 {
        tokio::task::yield_now().await;
    }
    assert!(aborted.try_join().is_none(), "still waiting on its channel");
    aborted.abort();
    for _ in 0..4 {
        tokio::task::yield_now().await;
    }
    drop(tx);
    // Every task has ended (tokio runs a limited number of tasks between two polls of this
    // one: wait until each has said so).
    while done.load(SeqCst) < 600 {
        tokio::task::yield_now().await;
    }
    tokio::task::yield_now().await;
    // 600 handles read in one turn: far past tokio's budget of about 128 polls.
    let read: Vec<Option<u32>> = handles
        .iter_mut()
        .map(|h| h.try_join().map(|r| r.expect("it returned")))
        .collect();
    let missing: Vec<usize> = read
        .iter()
        .enumerate()
        .filter(|(_, r)| r.is_none())
        .map(|(i, _)| i)
        .collect();
    assert!(
        missing.is_empty(),
        "{} finished tasks read as running (first {:?})",
        missing.len(),
        missing.first()
    );
    assert_eq!(read, (0..600).map(Some).collect::<Vec<_>>());
    let mut panicking = panicking;
    match panicking.try_join() {
        Some(Err(JoinError::Panicked(panic))) => {
            assert_eq!(panic.message(), Some("boom in task"));
        }
        other => panic!("a finished panicking task: {other:?}"),
    }
    match aborted.try_join() {
        Some(Err(JoinError::Cancelled)) => {}
        other => panic!("an aborted task whose abort took effect: {other:?}"),
    }

    let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
    let mut running = Tokio.spawn(async move { rx.await.unwrap() + 1 });
    tokio::task::yield_now().await;
    for _ in 0..200 {
        assert!(running.try_join().is_none(), "still running");
    }
    tx.send(41).unwrap();
    assert_eq!(
        running.await.unwrap(),
        42,
        "the handle still gives the result"
    );
}

/// Doc (`TaskHandle::try_join`): "The provided method polls the handle once with a waker that
/// does nothing." The `Clocked` and smol adapters read a finished task the same way, at scale.
#[test]
fn try_join_reads_finished_tasks_on_clocked_tokio_and_smol() {
    common::on_tokio_current_thread(|rt| async move {
        assert_reads_400_finished!(rt, "Clocked<Tokio>")
    });
    common::on_smol_single_thread(
        |rt| async move { assert_reads_400_finished!(rt, "Clocked<Smol>") },
    );
}

/// A waker that records that it was woken.
struct Flag(std::sync::atomic::AtomicBool);

impl std::task::Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.0.store(true, SeqCst);
    }
}

/// Polls `handle` once with a waker of its own (as a `select` over handles would), then calls
/// `try_join` while the task still runs: whether the first waker is woken once the task ends.
async fn earlier_waker_survives<H: TaskHandle<()>>(
    mut handle: H,
    release: impl FnOnce(),
    settle: impl std::future::Future<Output = ()>,
) -> bool {
    let flag = Arc::new(Flag(std::sync::atomic::AtomicBool::new(false)));
    let waker = std::task::Waker::from(Arc::clone(&flag));
    let polled = std::pin::Pin::new(&mut handle).poll(&mut std::task::Context::from_waker(&waker));
    assert!(polled.is_pending(), "the task waits for its release");
    assert!(handle.try_join().is_none(), "still running");
    release();
    settle.await;
    assert!(handle.try_join().is_some(), "the task has ended");
    flag.0.load(SeqCst)
}

/// Doc (`TaskHandle::try_join`): "The tokio, smol and [`Clocked`] handles override it to read
/// a running task without a poll, and leave an earlier poll's waker in place."
///
/// A handle polled once (its waker registered, as any future's), then asked with `try_join`
/// while the task runs: the first waker stays registered, and is woken when the task ends,
/// on tokio, `Clocked<Tokio>` and smol. (The provided method, which async-std's handle keeps,
/// would have put a waker that does nothing in its place.)
#[tokio::test(start_paused = true)]
async fn try_join_leaves_an_earlier_waker_registered() {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let handle = Tokio.spawn(async move {
        let _ = rx.await;
    });
    tokio::task::yield_now().await;
    let settle = async {
        for _ in 0..8 {
            tokio::task::yield_now().await;
        }
    };
    let tokio_woken = earlier_waker_survives(handle, move || tx.send(()).unwrap(), settle).await;

    let clocked_woken = std::thread::spawn(|| {
        common::on_tokio_current_thread(|rt| async move { earlier_waker_survives_on!(rt) })
    })
    .join()
    .unwrap();
    let smol_woken =
        common::on_smol_single_thread(|rt| async move { earlier_waker_survives_on!(rt) });
    assert_eq!(
        (tokio_woken, clocked_woken, smol_woken),
        (true, true, true),
        "(tokio, Clocked<Tokio>, smol): was the waker registered before `try_join` woken?"
    );
}

/// As above, on smol's own handle (not through `Clocked`): "The tokio, smol and [`Clocked`]
/// handles override it to read a running task without a poll, and leave an earlier poll's
/// waker in place."
#[test]
fn try_join_on_a_bare_smol_handle_leaves_an_earlier_waker_registered() {
    let runtime = tidewall::rt::SmolRuntime::single_threaded();
    let smol = runtime.handle();
    let woken = runtime.block_on(async move {
        let (tx, rx) = futures_channel::oneshot::channel::<()>();
        let handle = smol.spawn(async move {
            let _ = rx.await;
        });
        for _ in 0..8 {
            smol::future::yield_now().await;
        }
        let settle = async {
            for _ in 0..8 {
                smol::future::yield_now().await;
            }
        };
        earlier_waker_survives(handle, move || tx.send(()).unwrap(), settle).await
    });
    assert!(woken, "the waker registered before `try_join` was woken");
}

/// Doc (`SupervisorReport::stopped`): "A child that ended on its own before its turn to be
/// told (while a sibling was being stopped, say) was not stopped: it is not here, and its exit
/// is told as a `SupervisorEvent::Exited`." CHANGELOG: "a supervisor's final stop that found
/// more than about 128 children in a row ended on their own, unseen, reported the later ones
/// as stopped with a zero `took`".
///
/// 400 children on plain tokio (a quarter failing, a quarter panicking, a quarter returning
/// `Ok`, all ignoring their tokens, at 50 ms; a quarter steady), a third with a zero shutdown
/// timeout; the stop comes at 10 ms and the last-added child takes 100 ms to stop.
#[tokio::test(start_paused = true)]
async fn final_stop_tells_hundreds_of_children_that_ended_during_it_as_exits() {
    const N: usize = 400;
    let at = Instant::now() + ms(50);
    let (log, hook) = recorder();
    let mut builder = Supervisor::builder().on_event(hook).seed(5);
    for i in 0..N {
        let mut spec = scale_child(i, kind_of(i), at);
        if i.is_multiple_of(3) {
            spec = spec.shutdown_timeout(Duration::ZERO);
        }
        builder = builder.child(spec);
    }
    let supervisor = builder.child(slow_child("slow", ms(100))).build().unwrap();
    let report = supervisor.run(stop_after(ms(10))).await.unwrap();

    assert_eq!(report.ended, Ended::Stopped);
    assert_eq!(report.restarts, 0, "nothing restarted: {report:?}");
    // Stopped: the slow one first, then every steady child, in reverse of the order added.
    let mut expected = vec![(
        "slow".to_owned(),
        Exit::Ok(()),
        Ending::Stopped { took: ms(100) },
    )];
    for i in (0..N).rev().filter(|i| kind_of(*i) == Kind::Steady) {
        let brutal = i.is_multiple_of(3);
        expected.push((
            format!("c{i:03}"),
            if brutal { Exit::Aborted } else { Exit::Ok(()) },
            if brutal {
                Ending::Aborted {
                    took: Duration::ZERO,
                }
            } else {
                Ending::Stopped {
                    took: Duration::ZERO,
                }
            },
        ));
    }
    let wrongly_stopped: Vec<&TaskReport> = report
        .stopped
        .iter()
        .filter(|r| {
            r.name.starts_with('c') && kind_of(r.name[1..].parse().unwrap()) != Kind::Steady
        })
        .collect();
    assert!(
        wrongly_stopped.is_empty(),
        "{} children that ended on their own listed as stopped, e.g. {:?}",
        wrongly_stopped.len(),
        wrongly_stopped.first()
    );
    assert_eq!(rows(&report.stopped), expected);

    let exits = exits(&log);
    for i in (0..N).filter(|i| kind_of(*i) != Kind::Steady) {
        let name = format!("c{i:03}");
        assert_eq!(
            exits.get(&name).map(Vec::as_slice),
            Some(&[own_exit(kind_of(i), i)][..]),
            "{name} ({:?}, timeout zero: {}) ended on its own: one Exited event",
            kind_of(i),
            i.is_multiple_of(3)
        );
    }
    assert_eq!(exits.len(), N / 4 * 3, "no other child exited: {exits:?}");
    assert!(
        started_after(&log, ms(1)).is_empty(),
        "no child starts again once the stop came"
    );
    // Each stopped child has one Stopped event; no Stopped event for one that exited.
    let stopped_events = stopped_events(&log);
    let expected_names: Vec<String> = expected.into_iter().map(|(name, _, _)| name).collect();
    assert_eq!(stopped_events, expected_names);
}

/// Doc (`ChildSpec::shutdown_timeout`): "Zero aborts it at once, without waiting (OTP's
/// `brutal_kill`): it is aborted before its token is cancelled, so it reads
/// `Ending::Aborted` unless it had already ended." With `SupervisorReport::stopped`: one that
/// had ended on its own before its turn is not there.
///
/// 300 brutal-kill children that all failed (or panicked) on their own while the slow sibling
/// was stopped: the report lists the slow sibling alone.
#[tokio::test(start_paused = true)]
async fn brutal_kill_children_that_ended_before_their_turn_are_exits_not_aborts() {
    const N: usize = 300;
    let at = Instant::now() + ms(30);
    let (log, hook) = recorder();
    let mut builder = Supervisor::builder().on_event(hook);
    for i in 0..N {
        let kind = alternating(i, Kind::Fails, Kind::Panics);
        builder = builder.child(
            scale_child(i, kind, at)
                .restart(Restart::Transient)
                .shutdown_timeout(Duration::ZERO),
        );
    }
    let supervisor = builder.child(slow_child("slow", ms(60))).build().unwrap();
    let report = supervisor.run(stop_after(ms(5))).await.unwrap();
    assert_only_slow_stopped(&report);
    let exits = exits(&log);
    assert_eq!(exits.len(), N);
    for i in 0..N {
        let kind = alternating(i, Kind::Fails, Kind::Panics);
        assert_eq!(
            exits[&format!("c{i:03}")],
            [own_exit(kind, i)],
            "child {i} ended on its own"
        );
    }
    assert_eq!(report.restarts, 0);
}

/// Nested supervisors. Doc (`Supervisor`): "Supervisors nest ... an escalation is a failure of
/// that child in its parent"; (`SupervisorReport::stopped`) a child that ended on its own
/// before its turn "is not here, and its exit is told as a `SupervisorEvent::Exited`".
///
/// The inner supervisor escalates while its parent's final stop is stopping a slow sibling:
/// the parent tells it as an exit (an `Err`), not as stopped. Inside, 250 grandchildren end on
/// their own while the escalation's stop waits for a slow grandchild: they are exits there,
/// and the escalation's report lists the slow grandchild alone.
#[tokio::test(start_paused = true)]
async fn a_nested_supervisor_escalating_during_the_parents_stop_is_an_exit_at_both_levels() {
    const N: usize = 250;
    let start = Instant::now();
    let (inner_log, inner_hook) = recorder();
    let inner_hook = Arc::new(inner_hook);
    let inner_result: Arc<Mutex<Option<Result<SupervisorReport, Escalation>>>> = Arc::default();
    let (hook_for_factory, result_for_factory) =
        (Arc::clone(&inner_hook), Arc::clone(&inner_result));
    let inner = ChildSpec::new("inner", move |stop: CancellationToken| {
        let hook = Arc::clone(&hook_for_factory);
        let mut builder = Supervisor::builder()
            .intensity(0, Duration::from_secs(10))
            .on_event(move |e| hook(e))
            // Fails at 40 ms: the first exit that would restart escalates.
            .child(ChildSpec::new("g_fail", move |_stop| async move {
                tokio::time::sleep_until(start + ms(40)).await;
                Err::<(), _>("lost")
            }));
        let at = start + ms(60);
        for i in 0..N {
            builder = builder.child(scale_child(
                i,
                alternating(i, Kind::Fails, Kind::Returns),
                at,
            ));
        }
        let supervisor = builder.child(slow_child("g_slow", ms(50))).build().unwrap();
        let result = Arc::clone(&result_for_factory);
        async move {
            let outcome = supervisor.run(stop).await;
            *result.lock().unwrap() = Some(outcome.clone());
            outcome.map(drop)
        }
    })
    .restart(Restart::Temporary)
    .shutdown_timeout(Duration::from_secs(3600));
    let (outer_log, outer_hook) = recorder();
    let parent = Supervisor::builder()
        .on_event(outer_hook)
        .child(inner)
        .child(slow_child("p_slow", ms(500)))
        .build()
        .unwrap();
    let report = parent.run(stop_after(ms(10))).await.unwrap();

    assert_eq!(names(&report.stopped), ["p_slow"], "{report:?}");
    let outer_exits = exits(&outer_log);
    assert!(
        matches!(
            outer_exits.get("inner").map(Vec::as_slice),
            Some([Exit::Err(_)])
        ),
        "the escalation is the inner child's failure, told as an exit: {outer_exits:?}"
    );

    let escalation = inner_result
        .lock()
        .unwrap()
        .clone()
        .expect("the inner supervisor ended")
        .expect_err("it escalated");
    assert_eq!(&*escalation.child, "g_fail");
    assert_eq!(escalation.report.ended, Ended::Escalated);
    assert_eq!(
        names(&escalation.report.stopped),
        ["g_slow"],
        "only the slow grandchild was stopped; the others ended on their own first"
    );
    let inner_exits = exits(&inner_log);
    for i in 0..N {
        let kind = alternating(i, Kind::Fails, Kind::Returns);
        assert_eq!(
            inner_exits.get(&format!("c{i:03}")).map(Vec::as_slice),
            Some(&[own_exit(kind, i)][..]),
            "grandchild {i}"
        );
    }
}

/// Doc (`SupervisorReport::stopped`): "A `stop` that comes while a restart is stopping a failed
/// child's siblings ends the restart once the sibling being stopped is down: the siblings
/// still running are stopped by the final stop, and are here (the one the restart was
/// stopping is not: its `SupervisorEvent::Stopped` told its end)."
///
/// One-for-all with 300 siblings: 200 steady, 100 that fail on their own during the restart's
/// stop of the slow sibling; the stop comes mid-restart.
#[tokio::test(start_paused = true)]
async fn a_stop_during_a_one_for_all_restart_leaves_the_rest_to_the_final_stop() {
    let start = Instant::now();
    let (log, hook) = recorder();
    let mut builder = Supervisor::builder()
        .strategy(Strategy::OneForAll)
        .intensity(10, Duration::from_secs(10))
        .backoff(fixed(ms(1)))
        .on_event(hook)
        .child(ChildSpec::new("trigger", |_stop| async {
            tokio::time::sleep(ms(10)).await;
            Err::<(), _>("lost connection")
        }));
    let self_ending = |i: usize| i % 3 == 2;
    for i in 0..300 {
        let kind = if self_ending(i) {
            Kind::Fails
        } else {
            Kind::Steady
        };
        let mut spec = scale_child(i, kind, start + ms(50));
        if i.is_multiple_of(5) {
            spec = spec.shutdown_timeout(Duration::ZERO);
        }
        builder = builder.child(spec);
    }
    let supervisor = builder.child(slow_child("slow", ms(100))).build().unwrap();
    let report = supervisor.run(stop_after(ms(30))).await.unwrap();

    assert_eq!(report.ended, Ended::Stopped);
    assert_eq!(report.restarts, 1, "one restart was decided");
    let log_events = log.lock().unwrap().clone();
    let slow_stops: Vec<&(Duration, SupervisorEvent)> = log_events
        .iter()
        .filter(|(_, e)| matches!(e, SupervisorEvent::Stopped { child, .. } if &**child == "slow"))
        .collect();
    assert_eq!(slow_stops.len(), 1, "the slow sibling is stopped once");
    assert!(
        matches!(
            slow_stops[0].1,
            SupervisorEvent::Stopped { ending: Ending::Stopped { took }, .. } if took == ms(100)
        ),
        "{slow_stops:?}"
    );
    let expected: Vec<String> = (0..300)
        .rev()
        .filter(|i| !self_ending(*i))
        .map(|i| format!("c{i:03}"))
        .collect();
    assert_eq!(
        names(&report.stopped),
        expected,
        "the siblings still running, stopped by the final stop"
    );
    for r in &report.stopped {
        let i: usize = r.name[1..].parse().unwrap();
        if i.is_multiple_of(5) {
            assert_eq!(
                (&r.exit, r.ending),
                (
                    &Exit::Aborted,
                    Ending::Aborted {
                        took: Duration::ZERO
                    }
                )
            );
        } else {
            assert_eq!(
                (&r.exit, r.ending),
                (
                    &Exit::Ok(()),
                    Ending::Stopped {
                        took: Duration::ZERO
                    }
                )
            );
        }
    }
    let exits = exits(&log);
    assert_eq!(
        exits.get("trigger").map(Vec::as_slice),
        Some(&[Exit::Err("lost connection".into())][..])
    );
    for i in (0..300).filter(|i| self_ending(*i)) {
        assert_eq!(
            exits.get(&format!("c{i:03}")).map(Vec::as_slice),
            Some(&[Exit::Err(format!("e{i}"))][..]),
            "sibling {i} ended on its own during the restart's stop"
        );
    }
    assert_eq!(exits.len(), 101);
    assert!(
        started_after(&log, ms(1)).is_empty(),
        "the restart never started anyone"
    );
}

/// The same under rest-for-one, the failed child in the middle: the restart stops the children
/// after it (the slow one first), the stop comes, and the final stop takes every child still
/// running, those before the failed one included, in reverse of the order added.
#[tokio::test(start_paused = true)]
async fn a_stop_during_a_rest_for_one_restart_stops_everyone_left_once() {
    let (log, hook) = recorder();
    let mut builder = Supervisor::builder()
        .strategy(Strategy::RestForOne)
        .backoff(fixed(ms(1)))
        .on_event(hook);
    let far = Instant::now() + Duration::from_secs(3600);
    for i in 0..150 {
        builder = builder.child(scale_child(i, Kind::Steady, far));
    }
    builder = builder.child(ChildSpec::new("trigger", |_stop| async {
        tokio::time::sleep(ms(10)).await;
        Err::<(), _>("lost connection")
    }));
    for i in 150..300 {
        builder = builder.child(scale_child(i, Kind::Steady, far));
    }
    let supervisor = builder.child(slow_child("slow", ms(100))).build().unwrap();
    let report = supervisor.run(stop_after(ms(30))).await.unwrap();
    let expected: Vec<String> = (0..300).rev().map(|i| format!("c{i:03}")).collect();
    assert_eq!(names(&report.stopped), expected);
    let stopped_events = stopped_events(&log);
    let mut all = vec!["slow".to_owned()];
    all.extend(expected);
    assert_eq!(
        stopped_events, all,
        "each child stopped once, the slow one by the restart"
    );
}

/// CHANGELOG: "the supervisor's final stop and restart group stops" tell a child that ended on
/// its own before its turn as an `Exited` event. Doc (`SupervisorReport::stopped`): such a
/// child "was not stopped ... its exit is told as a `SupervisorEvent::Exited`".
///
/// A one-for-all restart whose group stop waits 100 ms for the slow sibling, while 250
/// siblings in a row (added between the failed child and the slow one) return on their own:
/// each is one `Exited` event and no `Stopped` event; then everyone starts again, once.
#[tokio::test(start_paused = true)]
async fn a_restart_group_stop_tells_hundreds_of_siblings_that_ended_as_exits() {
    const N: usize = 250;
    let start = Instant::now();
    let (log, hook) = recorder();
    let trigger_runs = Arc::new(AtomicU32::new(0));
    let runs = Arc::clone(&trigger_runs);
    let mut builder = Supervisor::builder()
        .strategy(Strategy::OneForAll)
        .intensity(10, Duration::from_secs(10))
        .backoff(fixed(ms(1)))
        .on_event(hook)
        .child(ChildSpec::new("trigger", move |stop: CancellationToken| {
            let first = runs.fetch_add(1, SeqCst) == 0;
            async move {
                if first {
                    tokio::time::sleep(ms(10)).await;
                    return Err("lost connection");
                }
                stop.cancelled().await;
                Ok(())
            }
        }));
    for i in 0..N {
        let first_run = Arc::new(AtomicU32::new(0));
        builder = builder.child(
            ChildSpec::new(format!("c{i:03}"), move |stop: CancellationToken| {
                let first = first_run.fetch_add(1, SeqCst) == 0;
                async move {
                    if first {
                        // Ignores its token: returns on its own during the group stop.
                        tokio::time::sleep_until(start + ms(50)).await;
                    } else {
                        stop.cancelled().await;
                    }
                    Ok::<(), std::io::Error>(())
                }
            })
            .restart(Restart::Transient)
            .shutdown_timeout(if i.is_multiple_of(2) {
                Duration::ZERO
            } else {
                ms(500)
            }),
        );
    }
    let supervisor = builder.child(slow_child("slow", ms(100))).build().unwrap();
    let report = supervisor.run(stop_after(ms(300))).await.unwrap();

    let events = log.lock().unwrap().clone();
    let (group, after): (Vec<_>, Vec<_>) = events.iter().partition(|(at, _)| *at < ms(200));
    for i in 0..N {
        let name = format!("c{i:03}");
        let mine: Vec<&SupervisorEvent> = group
            .iter()
            .map(|(_, e)| e)
            .filter(|e| match e {
                SupervisorEvent::Exited { child, .. } | SupervisorEvent::Stopped { child, .. } => {
                    **child == *name
                }
                _ => false,
            })
            .collect();
        assert!(
            matches!(
                mine.as_slice(),
                [SupervisorEvent::Exited {
                    exit: Exit::Ok(()),
                    ..
                }]
            ),
            "{name} returned on its own during the group stop: {mine:?}"
        );
    }
    // Every child started twice: once at the start, once after the restart.
    for name in std::iter::once("trigger".to_owned())
        .chain((0..N).map(|i| format!("c{i:03}")))
        .chain(std::iter::once("slow".to_owned()))
    {
        let starts = group
            .iter()
            .filter(
                |(_, e)| matches!(e, SupervisorEvent::Started { child, .. } if **child == *name),
            )
            .count();
        assert_eq!(starts, 2, "{name}");
    }
    assert_eq!(report.restarts, 1, "{report:?}");
    // The final stop then stops all of them, in reverse of the order added.
    let mut expected: Vec<String> = vec!["slow".to_owned()];
    expected.extend((0..N).rev().map(|i| format!("c{i:03}")));
    expected.push("trigger".to_owned());
    assert_eq!(names(&report.stopped), expected);
    assert!(
        after
            .iter()
            .all(|(_, e)| matches!(e, SupervisorEvent::Stopped { .. }))
    );
}

/// Doc (`SupervisorReport::stopped`): "In the instant `stop` was cancelled, the child's end and
/// the stop race ...: it is then one or the other, never both."
///
/// 300 children (errors, panics, `Ok`, some brutal-kill) end at the very instant the stop is
/// cancelled, with a slow sibling stopped first: each is an exit or stopped, never both,
/// never neither.
#[tokio::test(start_paused = true)]
async fn children_ending_at_the_instant_of_the_stop_are_one_or_the_other() {
    const N: usize = 300;
    let at = Instant::now() + ms(20);
    let (log, hook) = recorder();
    let mut builder = Supervisor::builder().on_event(hook);
    for i in 0..N {
        let kind = [Kind::Fails, Kind::Panics, Kind::Returns][i % 3];
        let mut spec = scale_child(i, kind, at).restart(Restart::Temporary);
        if i.is_multiple_of(2) {
            spec = spec.shutdown_timeout(Duration::ZERO);
        }
        builder = builder.child(spec);
    }
    let supervisor = builder.child(slow_child("slow", ms(40))).build().unwrap();
    let report = supervisor.run(stop_after(ms(20))).await.unwrap();
    let exits = exits(&log);
    for i in 0..N {
        let name = format!("c{i:03}");
        let kind = [Kind::Fails, Kind::Panics, Kind::Returns][i % 3];
        let exited = exits.get(&name).map_or(0, Vec::len);
        let stopped: Vec<&TaskReport> =
            report.stopped.iter().filter(|r| *r.name == *name).collect();
        assert_eq!(
            exited + stopped.len(),
            1,
            "{name}: exits {exited}, stopped {stopped:?}"
        );
        if exited == 1 {
            assert_eq!(exits[&name], [own_exit(kind, i)]);
        }
    }
}

/// Doc (`SupervisorReport::restarts`): "A restart still waiting for its backoff delay when
/// `stop` was cancelled counts, though the child never started again". And `stopped` lists
/// only the children the final stop stopped: after a one-for-all group stop, while the
/// restart waits its backoff, nobody is running, so nobody is listed.
#[tokio::test(start_paused = true)]
async fn a_stop_during_the_restart_backoff_stops_nobody() {
    let (log, hook) = recorder();
    let far = Instant::now() + Duration::from_secs(3600);
    let mut builder = Supervisor::builder()
        .strategy(Strategy::OneForAll)
        .backoff(fixed(Duration::from_secs(1)))
        .on_event(hook)
        .child(ChildSpec::new("trigger", |_stop| async {
            tokio::time::sleep(ms(10)).await;
            Err::<(), _>("lost connection")
        }));
    for i in 0..200 {
        let mut spec = scale_child(i, Kind::Steady, far);
        if i.is_multiple_of(2) {
            spec = spec.shutdown_timeout(Duration::ZERO);
        }
        builder = builder.child(spec);
    }
    let report = builder
        .build()
        .unwrap()
        .run(stop_after(ms(500)))
        .await
        .unwrap();
    assert_eq!(report.restarts, 1);
    assert!(report.stopped.is_empty(), "{:?}", report.stopped.first());
    assert!(started_after(&log, ms(1)).is_empty());
    let stopped_by_restart = log
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, e)| matches!(e, SupervisorEvent::Stopped { .. }))
        .count();
    assert_eq!(
        stopped_by_restart, 200,
        "the group stop told each sibling's end once"
    );
}

/// The final stop at scale on a two-worker tokio runtime (`Clocked`, so that virtual time moves
/// only once every child is idle): 300 children in a row that fail or panic on their own while
/// the slow sibling stops are exits, not stopped.
#[test]
fn final_stop_at_scale_on_a_multi_thread_runtime() {
    const N: usize = 300;
    common::on_tokio_multi_thread(|rt| async move {
        let log: Log = Arc::default();
        let (sink, clock) = (Arc::clone(&log), rt.clone());
        let origin = rt.now();
        let mut builder = Supervisor::builder()
            .runtime(rt.clone())
            .on_event(move |e| {
                sink.lock().unwrap().push((clock.now() - origin, e.clone()));
            });
        for i in 0..N {
            let rt = rt.clone();
            let spec = ChildSpec::new(format!("c{i:03}"), move |_stop| {
                let rt = rt.clone();
                async move {
                    rt.sleep(ms(30)).await;
                    if i.is_multiple_of(2) {
                        return Err(format!("e{i}"));
                    }
                    panic!("p{i}");
                }
            });
            builder = builder.child(if i.is_multiple_of(3) {
                spec.shutdown_timeout(Duration::ZERO)
            } else {
                spec
            });
        }
        let slow_rt = rt.clone();
        builder = builder.child(ChildSpec::new("slow", move |stop: CancellationToken| {
            let rt = slow_rt.clone();
            async move {
                stop.cancelled().await;
                rt.sleep(ms(60)).await;
                Ok::<(), std::io::Error>(())
            }
        }));
        let stop = CancellationToken::new();
        let (stopper, timer) = (stop.clone(), rt.clone());
        drop(rt.spawn(async move {
            timer.sleep(ms(5)).await;
            stopper.cancel("deploy");
        }));
        let report = builder.build().unwrap().run(stop).await.unwrap();
        assert_only_slow_stopped(&report);
        let exits = exits(&log);
        for i in 0..N {
            let kind = alternating(i, Kind::Fails, Kind::Panics);
            assert_eq!(
                exits.get(&format!("c{i:03}")).map(Vec::as_slice),
                Some(&[own_exit(kind, i)][..])
            );
        }
    });
}

/// Nested with `ChildSpec::supervisor`: the parent's final stop stops the inner supervisor,
/// whose own final stop finds 250 children in a row that ended on their own while its slow
/// child stopped. Inside, they are exits; the parent lists the inner supervisor as stopped,
/// `Ok`, within its (infinite) shutdown timeout.
#[tokio::test(start_paused = true)]
async fn a_nested_supervisors_own_final_stop_tells_its_children_that_ended_as_exits() {
    const N: usize = 250;
    let start = Instant::now();
    let (inner_log, inner_hook) = recorder();
    let inner_hook = Arc::new(inner_hook);
    let inner = ChildSpec::supervisor("inner", move || {
        let hook = Arc::clone(&inner_hook);
        let mut builder = Supervisor::builder().on_event(move |e| hook(e));
        for i in 0..N {
            let kind = alternating(i, Kind::Panics, Kind::Fails);
            builder = builder
                .child(scale_child(i, kind, start + ms(40)).shutdown_timeout(Duration::ZERO));
        }
        builder.child(slow_child("g_slow", ms(70))).build().unwrap()
    });
    let report = Supervisor::builder()
        .child(inner)
        .build()
        .unwrap()
        .run(stop_after(ms(10)))
        .await
        .unwrap();
    assert_eq!(
        rows(&report.stopped),
        [(
            "inner".to_owned(),
            Exit::Ok(()),
            Ending::Stopped { took: ms(70) }
        )]
    );
    let exits = exits(&inner_log);
    for i in 0..N {
        let kind = alternating(i, Kind::Panics, Kind::Fails);
        assert_eq!(
            exits.get(&format!("c{i:03}")).map(Vec::as_slice),
            Some(&[own_exit(kind, i)][..]),
            "grandchild {i}"
        );
    }
    let inner_stops = stopped_events(&inner_log);
    assert_eq!(inner_stops, ["g_slow"]);
}

/// Doc (`ShutdownReport`): "`Ending::Stopped`: it was still running when the shutdown began ...
/// One that ended on its own during the shutdown, before its turn came, reads `Stopped` with
/// a `took` of about zero." And (`register_with_timeout`) zero "reads `Ending::Aborted` unless
/// it had already ended."
///
/// 300 brutal-kill components that fail, panic or return during the shutdown, before their
/// turn (the slow component registered last takes 100 ms): each reads its own exit and
/// `Stopped`, none aborted, the shutdown clean.
#[tokio::test(start_paused = true)]
async fn shutdown_reads_hundreds_of_components_that_ended_before_their_turn() {
    const N: usize = 300;
    let at = Instant::now() + ms(50);
    let mut shutdown = Shutdown::builder().build().unwrap();
    for i in 0..N {
        let kind = [Kind::Fails, Kind::Panics, Kind::Returns][i % 3];
        shutdown.register_with_timeout(
            format!("c{i:03}"),
            Duration::ZERO,
            move |_stop| async move {
                tokio::time::sleep_until(at).await;
                match kind {
                    Kind::Fails => Err(std::io::Error::other(format!("e{i}"))),
                    Kind::Panics => panic!("p{i}"),
                    _ => Ok(()),
                }
            },
        );
    }
    shutdown.register("slow", |stop| async move {
        stop.cancelled().await;
        tokio::time::sleep(ms(100)).await;
        Ok::<(), std::io::Error>(())
    });
    tokio::time::sleep(ms(10)).await;
    let report = shutdown.stop("deploy").await;
    assert_eq!(report.components.len(), N + 1);
    assert_eq!(
        (&*report.components[0].name, report.components[0].ending),
        ("slow", Ending::Stopped { took: ms(100) })
    );
    for (n, component) in report.components[1..].iter().enumerate() {
        let i = N - 1 - n;
        let kind = [Kind::Fails, Kind::Panics, Kind::Returns][i % 3];
        assert_eq!(&*component.name, format!("c{i:03}"));
        assert_eq!(component.exit, own_exit(kind, i), "{component:?}");
        assert!(
            matches!(component.ending, Ending::Stopped { took } if took <= ms(1)),
            "ended on its own before its turn: {component:?}"
        );
    }
    assert!(report.is_clean(), "the shutdown aborted nothing");
}

/// Doc (`ShutdownReport`): "`Ending::Finished`: it ended on its own (returned, failed, or
/// panicked) before the shutdown began; its token was never cancelled. This holds even when
/// nobody was polling `run` as it ended".
///
/// 300 components (errors, panics, `Ok`) that all ended before the trigger, nobody polling
/// `run`, and one still running: each of the 300 reads `Finished` with its own exit.
#[tokio::test(start_paused = true)]
async fn shutdown_reads_hundreds_of_components_that_ended_before_it_as_finished() {
    const N: usize = 300;
    let mut shutdown = Shutdown::builder().build().unwrap();
    let told = Arc::new(AtomicUsize::new(0));
    for i in 0..N {
        let kind = [Kind::Fails, Kind::Panics, Kind::Returns][i % 3];
        let told = Arc::clone(&told);
        let timeout = if i.is_multiple_of(2) {
            Duration::ZERO
        } else {
            ms(100)
        };
        shutdown.register_with_timeout(
            format!("c{i:03}"),
            timeout,
            move |stop: CancellationToken| async move {
                tokio::time::sleep(ms(5)).await;
                if stop.is_cancelled() {
                    told.fetch_add(1, SeqCst);
                }
                match kind {
                    Kind::Fails => Err(std::io::Error::other(format!("e{i}"))),
                    Kind::Panics => panic!("p{i}"),
                    _ => Ok(()),
                }
            },
        );
    }
    shutdown.register("server", |stop| async move {
        stop.cancelled().await;
        Ok::<(), std::io::Error>(())
    });
    tokio::time::sleep(ms(50)).await;
    let report = shutdown.stop("deploy").await;
    assert_eq!(
        (&*report.components[0].name, &report.components[0].exit),
        ("server", &Exit::Ok(()))
    );
    for (n, component) in report.components[1..].iter().enumerate() {
        let i = N - 1 - n;
        let kind = [Kind::Fails, Kind::Panics, Kind::Returns][i % 3];
        assert_eq!(
            (&*component.name, &component.exit, component.ending),
            (&*format!("c{i:03}"), &own_exit(kind, i), Ending::Finished)
        );
    }
    assert_eq!(told.load(SeqCst), 0);
    assert!(report.is_clean());
}

// === 2. The hedge: its latency estimate, a fixed delay, its budget, early hedges ==========

/// One hedged call whose every copy takes `latency` (paused time) and succeeds.
async fn timed_call(hedge: &Hedge<Tokio>, latency: Duration) -> u32 {
    hedge
        .call(Idempotent(move || async move {
            tokio::time::sleep(latency).await;
            Ok::<u32, ()>(1)
        }))
        .await
        .expect("every copy succeeds")
}

/// A hedge whose delay is the `quantile` of the latencies it records, from the first one on.
fn percentile_hedge(delay: Duration, quantile: f64, max_hedges: Option<u32>) -> Hedge<Tokio> {
    let builder = Hedge::builder().delay(delay).percentile(quantile, 1);
    match max_hedges {
        Some(n) => builder.max_hedges(n).build().unwrap(),
        None => builder.build().unwrap(),
    }
}

/// Calls the primary answers in 2 ms, numbered by `calls` (the range says where in the
/// halving schedule they fall).
async fn fast_calls(hedge: &Hedge<Tokio>, calls: std::ops::Range<u32>) {
    for _ in calls {
        timed_call(hedge, ms(2)).await;
    }
}

#[track_caller]
fn assert_delay_at_least(hedge: &Hedge<Tokio>, bound: Duration, why: &str) {
    let delay = hedge.delay();
    assert!(delay >= bound, "{why}{delay:?}");
}

#[track_caller]
fn assert_delay_at_most(hedge: &Hedge<Tokio>, bound: Duration, why: &str) {
    let delay = hedge.delay();
    assert!(delay <= bound, "{why}{delay:?}");
}

/// Doc (`HedgeBuilder::percentile`): "Each count halves rounded down, so a latency seen once is
/// gone at the next halving: however rare and slow, no latency holds even the 1.0 quantile
/// (the slowest seen) for good." And: "Older latencies fade as the counts halve whenever they
/// hold 4,096 latencies".
///
/// p100 over one 5 s call and then thousands of 2 ms calls: the slow one holds the delay until
/// the first halving (checked at 4,032 calls, a multiple of 64), and is gone after it.
#[tokio::test(start_paused = true)]
async fn a_single_slow_latency_fades_from_the_one_quantile() {
    let hedge = percentile_hedge(Duration::from_secs(1), 1.0, Some(1));
    timed_call(&hedge, Duration::from_secs(5)).await;
    assert_delay_at_least(&hedge, Duration::from_secs(5), "");
    fast_calls(&hedge, 1..4_032).await;
    assert_delay_at_least(
        &hedge,
        Duration::from_secs(5),
        "before the first halving the slowest latency is the 1.0 quantile: ",
    );
    fast_calls(&hedge, 4_032..4_352).await;
    assert_delay_at_most(
        &hedge,
        ms(10),
        "the one slow latency is gone after the halving: ",
    );
    // And it stays gone, halving after halving.
    fast_calls(&hedge, 4_352..12_800).await;
    assert_delay_at_most(&hedge, ms(10), "");
}

/// CHANGELOG: "a slow incident spread over a few dozen buckets pinned a p99 (and the 1.0
/// quantile any single slow call) high forever ... The counts now halve rounding down, and
/// such latencies fade as the docs say."
///
/// 3,000 fast calls, then an incident of 40 calls each at its own slow latency (1 s to 4.9 s:
/// over 1 % of the counts, so the p99), then fast calls again: the p99 comes back down once
/// the counts halve, and stays down.
#[tokio::test(start_paused = true)]
async fn a_slow_incident_spread_over_many_buckets_fades_from_the_p99() {
    let hedge = percentile_hedge(Duration::from_secs(1), 0.99, Some(1));
    fast_calls(&hedge, 0..3_000).await;
    assert_delay_at_most(&hedge, ms(10), "");
    for k in 0..40_u64 {
        timed_call(&hedge, ms(1_000 + 100 * k)).await;
    }
    // 3,040 calls: the estimate is recomputed at 3,072; the 40 slow ones are 1.3 % of them.
    fast_calls(&hedge, 3_040..3_072).await;
    assert_delay_at_least(
        &hedge,
        Duration::from_secs(1),
        "the incident is the p99 for now: ",
    );
    fast_calls(&hedge, 3_072..4_352).await;
    assert_delay_at_most(
        &hedge,
        ms(10),
        "after a halving, the incident's latencies (one each) are gone: ",
    );
    fast_calls(&hedge, 4_352..16_384).await;
    assert_delay_at_most(&hedge, ms(10), "");
}

/// Doc (`HedgeBuilder::percentile`): "Each count halves rounded down" and "(after the first
/// halving, every 2,048 or so)". A slow latency seen twice holds the 1.0 quantile through the
/// first halving (2 halves to 1) and is gone after the second (1 halves to 0).
#[tokio::test(start_paused = true)]
async fn a_latency_seen_twice_outlives_one_halving_and_not_two() {
    let hedge = percentile_hedge(Duration::from_secs(1), 1.0, None);
    timed_call(&hedge, Duration::from_secs(3)).await;
    timed_call(&hedge, Duration::from_secs(3)).await;
    fast_calls(&hedge, 2..4_352).await;
    assert_delay_at_least(
        &hedge,
        Duration::from_secs(3),
        "one halving leaves one of the two: ",
    );
    fast_calls(&hedge, 4_352..7_040).await;
    assert_delay_at_most(&hedge, ms(10), "the second halving takes the last: ");
}

/// Doc (`budget_ratio`): "over a 10 s window (10 buckets of 1 s: a call counts for 9 to 10 s)";
/// no floor, so once the calls have left the window, nothing pays for a hedge.
#[tokio::test(start_paused = true)]
async fn hedge_budget_calls_count_nine_to_ten_seconds() {
    let (heard, listener) = hearing();
    let hedge = Hedge::builder()
        .delay(ms(10))
        .budget_ratio(0.05)
        .on_event(listener)
        .build()
        .unwrap();
    let start = Instant::now();
    for _ in 0..60 {
        slow_primary(&hedge, ms(2)).await;
    }
    tokio::time::sleep_until(start + ms(8_900)).await;
    assert_eq!(
        slow_primary(&hedge, ms(50)).await,
        2,
        "8.9 s later: the calls still pay"
    );
    tokio::time::sleep_until(start + ms(10_100)).await;
    assert_eq!(
        slow_primary(&hedge, ms(50)).await,
        1,
        "10.1 s later: they have left"
    );
    assert_eq!(*heard.lock().unwrap(), ["L1", "B"]);
}

/// Doc (`HedgeBuilder::percentile`): "one won by a hedge also records what the losing primary
/// had run by then ..., so such a call counts twice. ... The estimate is computed when
/// `min_samples` latencies were recorded and then again whenever the count of latencies
/// recorded is a multiple of 64 ...: the delay is at most 64 calls behind the latencies
/// recorded."
///
/// One call won by its primary at 1 ms (one latency: the p50 is then 1 ms), then 300 calls
/// whose primary is stuck and whose hedge answers 30 ms after it starts (two latencies each,
/// both at least 30 ms): the median moves to them, and the delay must follow within 64 calls.
#[tokio::test(start_paused = true)]
async fn hedge_won_calls_counting_twice_still_move_the_estimate() {
    let hedge = percentile_hedge(ms(100), 0.5, None);
    timed_call(&hedge, ms(1)).await;
    let first = hedge.delay();
    assert!(first <= ms(2), "one latency of 1 ms: {first:?}");
    for call in 0..300 {
        let copies = AtomicU32::new(0);
        let answer = hedge
            .call(Idempotent(|| {
                let n = copies.fetch_add(1, SeqCst);
                async move {
                    tokio::time::sleep(if n == 0 {
                        Duration::from_secs(10)
                    } else {
                        ms(30)
                    })
                    .await;
                    Ok::<u32, ()>(n)
                }
            }))
            .await;
        assert_eq!(answer, Ok(1), "call {call}: the hedge wins");
    }
    assert!(
        hedge.delay() >= ms(30),
        "600 latencies of 30 ms and more against one of 1 ms: the median is theirs, yet the \
         delay is {:?}",
        hedge.delay()
    );
}

/// Doc (`LiveHedge`): "The latency estimate of a percentile delay is kept across a reload
/// unless `percentile` or `min_samples` changes"; CHANGELOG: "A fixed hedge now keeps no
/// estimate." A percentile hedge reloaded to a fixed delay and back to the same percentile has
/// changed its `percentile` twice: the estimate it had learned is not back.
#[tokio::test(start_paused = true)]
async fn a_percentile_turned_off_and_on_again_starts_afresh() {
    let p50 = "[instances.s.hedge]\ndelay = \"40ms\"\npercentile = 0.5\nmin_samples = 1\n";
    let fixed_text = "[instances.s.hedge]\ndelay = \"40ms\"\n";
    let registry = Registry::new(config(p50)).unwrap();
    let s = registry.hedge("s").unwrap();
    for _ in 0..100 {
        timed_call(&s.hedge(), ms(3)).await;
    }
    let learned = s.hedge().delay();
    assert!(learned < ms(40), "{learned:?}");
    registry.reload(config(fixed_text)).unwrap();
    assert_eq!(s.hedge().delay(), ms(40));
    registry.reload(config(p50)).unwrap();
    assert_eq!(
        s.hedge().delay(),
        ms(40),
        "a new estimate, no latency in it yet (the one learned before was {learned:?})"
    );
}

/// Doc (`LiveHedge`): "The latency estimate of a percentile delay is kept across a reload
/// unless `percentile` or `min_samples` changes (another quantile starts a new estimate)."
/// CHANGELOG: "A fixed hedge now keeps no estimate."
///
/// A fixed 40 ms hedge serves 300 calls of 3 ms; a reload turns on `percentile = 0.5` with
/// `min_samples = 1`: the new estimate has no latency, so the delay is the fixed fallback
/// until a call records one. Then a reload to another quantile starts afresh again, and one
/// to the same quantile keeps it.
#[tokio::test(start_paused = true)]
async fn a_reload_turning_a_percentile_on_starts_a_new_estimate() {
    let fixed_text = "[instances.search.hedge]\ndelay = \"40ms\"\n";
    let p50 = "[instances.search.hedge]\ndelay = \"40ms\"\npercentile = 0.5\nmin_samples = 1\n";
    let p90 = "[instances.search.hedge]\ndelay = \"40ms\"\npercentile = 0.9\nmin_samples = 1\n";
    let registry = Registry::new(config(fixed_text)).unwrap();
    let search = registry.hedge("search").unwrap();
    for _ in 0..300 {
        timed_call(&search.hedge(), ms(3)).await;
    }
    assert_eq!(search.hedge().delay(), ms(40));
    registry.reload(config(p50)).unwrap();
    assert_eq!(
        search.hedge().delay(),
        ms(40),
        "a new estimate, with no latency yet: the fixed fallback"
    );
    timed_call(&search.hedge(), ms(20)).await;
    let learned = search.hedge().delay();
    assert!(
        learned >= ms(20) && learned < ms(40),
        "its first latency is the median: {learned:?}"
    );
    // Same quantile and min_samples: kept.
    registry
        .reload(config(&p50.replace("40ms", "45ms")))
        .unwrap();
    assert_eq!(search.hedge().delay(), learned, "the estimate is kept");
    // Another quantile: a new estimate.
    registry.reload(config(p90)).unwrap();
    assert_eq!(
        search.hedge().delay(),
        ms(40),
        "another quantile starts a new estimate"
    );
}

/// Events a hedge's listener heard: `L<n>` for a hedge launched, `B` for a budget refusal.
type Heard = Arc<Mutex<Vec<String>>>;

fn hearing() -> (Heard, impl Fn(&Event<'_>) + Send + Sync + 'static) {
    let heard: Heard = Arc::default();
    let sink = Arc::clone(&heard);
    (heard, move |event: &Event<'_>| match event.kind {
        EventKind::HedgeLaunched { hedge } => sink.lock().unwrap().push(format!("L{hedge}")),
        EventKind::BudgetExhausted => sink.lock().unwrap().push("B".to_owned()),
        _ => {}
    })
}

/// A call whose primary takes `primary` and whose hedges take 1 ms, all succeeding; the
/// copies it started.
async fn slow_primary(hedge: &Hedge<Tokio>, primary: Duration) -> u32 {
    let copies = AtomicU32::new(0);
    let _ = hedge
        .call(Idempotent(|| {
            let n = copies.fetch_add(1, SeqCst);
            let latency = if n == 0 { primary } else { ms(1) };
            async move {
                tokio::time::sleep(latency).await;
                Ok::<u32, ()>(n)
            }
        }))
        .await;
    copies.into_inner()
}

/// Doc (`HedgeBuilder::budget_ratio`): "a hedge budget has no per-second floor, and none can be
/// set: only the calls in the window pay for hedges, and a hedge is granted while `ratio ×`
/// those calls is at least the hedges already granted in it plus one (with `0.05`, 20 calls in
/// the window for each hedge). A quiet service, or one just started, hedges rarely or not at
/// all until enough calls have gone through." And "(10 buckets of 1 s: a call counts for 9 to
/// 10 s)".
#[tokio::test(start_paused = true)]
async fn a_hedge_budget_has_no_floor() {
    let (heard, listener) = hearing();
    let hedge = Hedge::builder()
        .delay(ms(10))
        .max_hedges(1)
        .budget_ratio(0.05)
        .on_event(listener)
        .build()
        .unwrap();
    // Just started: ten calls in the window pay for half a hedge.
    for _ in 0..9 {
        assert_eq!(slow_primary(&hedge, ms(2)).await, 1, "fast: no hedge due");
    }
    assert_eq!(
        slow_primary(&hedge, ms(50)).await,
        1,
        "the budget refuses the hedge"
    );
    assert_eq!(*heard.lock().unwrap(), ["B"]);
    // 50 more calls: 60 in the window, three hedges' worth.
    for _ in 0..50 {
        slow_primary(&hedge, ms(2)).await;
    }
    heard.lock().unwrap().clear();
    for _ in 0..2 {
        assert_eq!(slow_primary(&hedge, ms(50)).await, 2, "granted");
    }
    assert_eq!(*heard.lock().unwrap(), ["L1", "L1"]);
    // Quiet for 11 s: no call left in the window, and no floor to hedge on.
    tokio::time::sleep(Duration::from_secs(11)).await;
    heard.lock().unwrap().clear();
    assert_eq!(
        slow_primary(&hedge, ms(50)).await,
        1,
        "refused after a quiet spell"
    );
    assert_eq!(*heard.lock().unwrap(), ["B"]);
}

/// Doc (module): "When every running attempt has failed, the next hedge starts at once instead
/// of waiting for the delay ... It is a hedge like the others: the budget, if any, pays for
/// it, and it is reported as `HedgeLaunched` and counted in `tidewall_hedges_total`". And
/// (`max_hedges`): "an operation that fails at once can be started `1 + n` times back to back".
#[tokio::test(start_paused = true)]
async fn hedges_started_at_once_after_failures_are_hedges_in_events_and_metrics() {
    let counters = Counters::installed();
    let (heard, listener) = hearing();
    let hedge = Hedge::builder()
        .name("s48_early_hedges")
        .delay(Duration::from_secs(1))
        .max_hedges(3)
        .on_event(listener)
        .build()
        .unwrap();
    let copies = AtomicU32::new(0);
    let start = Instant::now();
    let answer = hedge
        .call(Idempotent(|| {
            let n = copies.fetch_add(1, SeqCst);
            async move { Err::<u32, _>(n) }
        }))
        .await;
    assert_eq!(answer, Err(3), "the last failure");
    assert_eq!(copies.into_inner(), 4, "1 + max_hedges, back to back");
    assert_eq!(start.elapsed(), Duration::ZERO, "no delay waited");
    assert_eq!(*heard.lock().unwrap(), ["L1", "L2", "L3"]);
    assert_eq!(
        counters.total(
            "tidewall_hedges_total",
            &["policy=hedge", "name=s48_early_hedges"]
        ),
        3
    );
}

/// Doc (`budget_ratio`): "A hedge the budget refuses is not sent, and no later hedge of that
/// call is scheduled; if every attempt then running fails, the budget is asked once more, at
/// once, and a second refusal ends the call with the last failure." (`on_event`): "a hedge
/// asked for again, once every running attempt failed, and refused again is told twice";
/// telemetry: `tidewall_retry_budget_exhausted_total` "counts twice".
///
/// And the budget pays for early hedges: with 100 calls in the window (five hedges' worth at
/// 0.05), an operation failing at once under `max_hedges(10)` starts five hedges, no more.
#[tokio::test(start_paused = true)]
async fn the_budget_pays_for_early_hedges_and_a_second_refusal_ends_the_call() {
    let counters = Counters::installed();
    let (heard, listener) = hearing();
    let hedge = Hedge::builder()
        .name("s48_budget_early")
        .delay(ms(10))
        .max_hedges(10)
        .budget_ratio(0.05)
        .on_event(listener)
        .build()
        .unwrap();
    // Fresh: the primary fails at 20 ms, after its hedge (due at 10 ms) was refused.
    let copies = AtomicU32::new(0);
    let answer = hedge
        .call(Idempotent(|| {
            copies.fetch_add(1, SeqCst);
            async {
                tokio::time::sleep(ms(20)).await;
                Err::<u32, _>("primary down")
            }
        }))
        .await;
    assert_eq!(answer, Err("primary down"));
    assert_eq!(copies.into_inner(), 1, "no hedge was sent");
    assert_eq!(
        *heard.lock().unwrap(),
        ["B", "B"],
        "refused, asked again, refused again"
    );
    assert_eq!(
        counters.total(
            "tidewall_retry_budget_exhausted_total",
            &["policy=hedge", "name=s48_budget_early"]
        ),
        2
    );
    assert_eq!(
        counters.total(
            "tidewall_hedges_total",
            &["policy=hedge", "name=s48_budget_early"]
        ),
        0
    );

    for _ in 0..99 {
        slow_primary(&hedge, ms(1)).await;
    }
    heard.lock().unwrap().clear();
    let copies = AtomicU32::new(0);
    let answer = hedge
        .call(Idempotent(|| {
            let n = copies.fetch_add(1, SeqCst);
            async move { Err::<u32, _>(n) }
        }))
        .await;
    assert_eq!(
        copies.into_inner(),
        6,
        "the primary and the five hedges the budget pays"
    );
    assert_eq!(answer, Err(5));
    let heard = heard.lock().unwrap().clone();
    assert_eq!(heard[..5], ["L1", "L2", "L3", "L4", "L5"]);
    assert!(
        heard[5..].iter().all(|e| e == "B") && heard.len() > 5,
        "{heard:?}"
    );
    assert_eq!(
        counters.total(
            "tidewall_hedges_total",
            &["policy=hedge", "name=s48_budget_early"]
        ),
        5
    );
}

// === 3. The HTTP client: copies, the per-authority budget table, gauges, hyper ============

/// A body whose every clone is counted.
#[derive(Debug)]
struct Counted(Arc<AtomicUsize>);

impl Clone for Counted {
    fn clone(&self) -> Self {
        self.0.fetch_add(1, SeqCst);
        Self(Arc::clone(&self.0))
    }
}

/// What an attempt answers.
#[derive(Clone, Copy, Debug)]
enum Answer {
    Status(u16),
    /// A 503 with `Retry-After: <seconds>`.
    After(u16, u64),
    /// A reset connection (an interrupted attempt: retryable).
    Reset,
    /// No answer for an hour (the attempt timeout cuts it).
    Hang,
}

fn respond(answer: Answer) -> Result<http::Response<()>, std::io::Error> {
    match answer {
        Answer::Hang => unreachable!("answered by `answer`"),
        Answer::Status(status) => Ok(http::Response::builder().status(status).body(()).unwrap()),
        Answer::After(status, seconds) => Ok(http::Response::builder()
            .status(status)
            .header("retry-after", seconds.to_string())
            .body(())
            .unwrap()),
        Answer::Reset => Err(std::io::ErrorKind::ConnectionReset.into()),
    }
}

/// Runs one request through `policies`: the attempts made and the copies of its body.
async fn attempts_and_clones(
    policies: &ClientPolicies,
    method: http::Method,
    headers: &[(&str, &str)],
    overrides: Overrides,
    script: &[Answer],
) -> (usize, usize) {
    let clones = Arc::new(AtomicUsize::new(0));
    let mut request = http::Request::builder()
        .method(method)
        .uri("http://copies.example/items");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(Counted(Arc::clone(&clones))).unwrap();
    let attempts = AtomicUsize::new(0);
    let _ = policies
        .run(request, overrides, |_request: http::Request<Counted>| {
            let n = attempts.fetch_add(1, SeqCst);
            let answer = script[n.min(script.len() - 1)];
            async move {
                if let Answer::Hang = answer {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                }
                respond(if let Answer::Hang = answer {
                    Answer::Status(200)
                } else {
                    answer
                })
            }
        })
        .await;
    (attempts.into_inner(), clones.load(SeqCst))
}

fn three_attempts() -> ClientPolicies {
    ClientPolicies::builder()
        .retry(backoff_three_attempts())
        .retry_budget(None)
        .breaker(None)
        .build()
        .unwrap()
}

/// One case of the copies table: what, method, headers, overrides, script, then the attempts
/// and the copies expected.
type CopyCase<'a> = (
    &'a str,
    http::Method,
    &'a [(&'a str, &'a str)],
    Overrides,
    Vec<Answer>,
    usize,
    usize,
);

/// Doc (`ClientPolicies::run`): "A request that may be retried is copied
/// (`Outbound::try_clone`) before each attempt but the last the schedule allows; one that may
/// not is never copied." CHANGELOG: "It now copies only before an attempt another could
/// follow."
#[tokio::test(start_paused = true)]
async fn a_request_is_copied_only_before_an_attempt_another_could_follow() {
    use Answer::{After, Hang, Reset, Status};
    use http::Method;
    let n = |k: u32| NonZeroU32::new(k).unwrap();
    let policies = three_attempts();
    let key = [("idempotency-key", "order-7")];
    // (what, method, headers, overrides, script, attempts, clones)
    let cases: Vec<CopyCase<'_>> = vec![
        (
            "503 thrice",
            Method::GET,
            &[],
            Overrides::new(),
            vec![Status(503)],
            3,
            2,
        ),
        (
            "200 at once",
            Method::GET,
            &[],
            Overrides::new(),
            vec![Status(200)],
            1,
            1,
        ),
        (
            "503 then 200",
            Method::GET,
            &[],
            Overrides::new(),
            vec![Status(503), Status(200)],
            2,
            2,
        ),
        (
            "resets",
            Method::GET,
            &[],
            Overrides::new(),
            vec![Reset],
            3,
            2,
        ),
        (
            "timeouts",
            Method::GET,
            &[],
            Overrides::new(),
            vec![Hang],
            3,
            2,
        ),
        (
            "a timeout then 200",
            Method::HEAD,
            &[],
            Overrides::new(),
            vec![Hang, Status(200)],
            2,
            2,
        ),
        (
            "a 501, not retried",
            Method::GET,
            &[],
            Overrides::new(),
            vec![Status(501)],
            1,
            1,
        ),
        (
            "max_attempts 1",
            Method::GET,
            &[],
            Overrides::new().max_attempts(n(1)),
            vec![Status(503)],
            1,
            0,
        ),
        (
            "max_attempts 2",
            Method::GET,
            &[],
            Overrides::new().max_attempts(n(2)),
            vec![Status(503)],
            2,
            1,
        ),
        (
            "max_attempts 10, capped at 3",
            Method::PUT,
            &[],
            Overrides::new().max_attempts(n(10)),
            vec![Status(503)],
            3,
            2,
        ),
        (
            "no_retry",
            Method::GET,
            &[],
            Overrides::new().no_retry(),
            vec![Status(503)],
            1,
            0,
        ),
        (
            "no_retry, max_attempts 3",
            Method::GET,
            &[],
            Overrides::new().max_attempts(n(3)).no_retry(),
            vec![Status(503)],
            1,
            0,
        ),
        (
            "POST",
            Method::POST,
            &[],
            Overrides::new(),
            vec![Status(503)],
            1,
            0,
        ),
        (
            "PATCH",
            Method::PATCH,
            &[],
            Overrides::new(),
            vec![Reset],
            1,
            0,
        ),
        (
            "POST with a key",
            Method::POST,
            &key,
            Overrides::new(),
            vec![Status(503)],
            3,
            2,
        ),
        (
            "POST made idempotent",
            Method::POST,
            &[],
            Overrides::new().idempotent(),
            vec![Status(503)],
            3,
            2,
        ),
        (
            "POST idempotent, max 2",
            Method::POST,
            &[],
            Overrides::new().idempotent().max_attempts(n(2)),
            vec![Status(503)],
            2,
            1,
        ),
        (
            "Retry-After 1 s",
            Method::GET,
            &[],
            Overrides::new(),
            vec![After(503, 1)],
            3,
            2,
        ),
        (
            "Retry-After past the deadline",
            Method::GET,
            &[],
            Overrides::new(),
            vec![After(503, 120)],
            1,
            1,
        ),
        (
            "429 then 200",
            Method::DELETE,
            &[],
            Overrides::new(),
            vec![After(429, 2), Status(200)],
            2,
            2,
        ),
    ];
    let mut wrong = Vec::new();
    for (what, method, headers, overrides, script, attempts, clones) in cases {
        let got = attempts_and_clones(&policies, method, headers, overrides, &script).await;
        if got != (attempts, clones) {
            wrong.push(format!(
                "{what}: (attempts, clones) {got:?}, expected {:?}",
                (attempts, clones)
            ));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");

    // A client that never retries, or allows one attempt, copies nothing.
    let once = ClientPolicies::builder().no_retry().build().unwrap();
    let single = ClientPolicies::builder()
        .retry(Backoff::constant(ms(10)).max_attempts(1).build().unwrap())
        .build()
        .unwrap();
    for sent_once in [&once, &single] {
        assert_eq!(
            attempts_and_clones(
                sent_once,
                http::Method::GET,
                &[],
                Overrides::new(),
                &[Status(503)]
            )
            .await,
            (1, 0)
        );
    }
}

/// Doc (`ClientPolicies`): a full budgets' table "gives it no budget (its call is sent once, not
/// retried)"; (`run`) a request that may not be retried "is never copied". And
/// (`on_event`): "a request whose authority got no budget, the budgets' table full, is sent
/// once with no such event".
#[tokio::test(start_paused = true)]
async fn a_request_the_full_budget_table_sends_once_is_never_copied() {
    let heard: Arc<Mutex<Vec<String>>> = Arc::default();
    let sink = Arc::clone(&heard);
    let policies = ClientPolicies::builder()
        .max_authorities(1)
        .breaker(None)
        .retry(backoff_three_attempts())
        .on_event(move |event: &Event<'_>| {
            sink.lock()
                .unwrap()
                .push(format!("{} {:?}", event.key.unwrap_or("-"), event.kind));
        })
        .build()
        .unwrap();
    // The first authority takes the only budget, and draws a retry on it.
    let first = http::Request::get("http://first.example/")
        .body(())
        .unwrap();
    let statuses = Mutex::new(vec![200, 503]);
    let answer = policies
        .run(first, Overrides::new(), |_request| {
            let status = statuses.lock().unwrap().pop().unwrap();
            async move { respond(Answer::Status(status)) }
        })
        .await;
    assert_eq!(answer.unwrap().status(), 200);
    heard.lock().unwrap().clear();
    // A second authority, a second later: the table is full.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let clones = Arc::new(AtomicUsize::new(0));
    let second = http::Request::get("http://second.example/")
        .body(Counted(Arc::clone(&clones)))
        .unwrap();
    let attempts = AtomicUsize::new(0);
    let answer = policies
        .run(second, Overrides::new(), |_request| {
            attempts.fetch_add(1, SeqCst);
            async { respond(Answer::Status(503)) }
        })
        .await;
    assert_eq!(
        answer.unwrap().status(),
        503,
        "sent once, answered as it is"
    );
    assert_eq!(attempts.into_inner(), 1, "not retried");
    let heard = heard.lock().unwrap().clone();
    assert!(
        !heard
            .iter()
            .any(|e| e.contains("BudgetExhausted") || e.contains("RetryScheduled")),
        "{heard:?}"
    );
    assert_eq!(
        clones.load(SeqCst),
        0,
        "a request sent once is never copied"
    );
}

/// The gauges `record_gauges` sets for `policy` of the client named `name`: (keys, max_keys).
fn table_gauges(policies: &ClientPolicies, policy: &str) -> (Option<f64>, Option<f64>) {
    let ((), snapshotter) = recorded(|| policies.record_gauges());
    let all = snapshot(&snapshotter);
    let labels = [("policy", policy), ("name", policies.name())];
    (
        gauge(&all, "tidewall_keyed_keys", &labels),
        gauge(&all, "tidewall_keyed_max_keys", &labels),
    )
}

/// Doc (`ClientPolicies`): a budget is forgotten only when "no call has begun on it nor drawn a
/// retry from it for the budget's window (a request's retries may come long after it began)".
/// CHANGELOG: "A budget is now kept for a window after its latest retry too."
///
/// One authority's request has a 15 s first attempt, then a retry (drawn at 15 s). At 20 s,
/// 20 s after it began but 5 s after its retry, a second authority still meets a full table
/// (sent once, `keyed_budget` at 1 of 1); at 27 s, more than a window after the retry, it gets
/// the budget and is retried.
#[tokio::test(start_paused = true)]
async fn the_budget_table_keeps_a_budget_a_window_past_its_latest_retry() {
    let policies = ClientPolicies::builder()
        .name("s48_budget_window")
        .max_authorities(1)
        .breaker(None)
        .attempt_timeout(None)
        .deadline(Some(Duration::from_secs(120)))
        .retry(
            Backoff::constant(Duration::from_secs(1))
                .jitter(Jitter::None)
                .max_attempts(3)
                .build()
                .unwrap(),
        )
        .retry_budget(Some(
            tidewall::budget::RetryBudgetPolicy::builder()
                .build()
                .unwrap(),
        ))
        .build()
        .unwrap();
    assert_eq!(
        table_gauges(&policies, "keyed_budget"),
        (Some(0.0), Some(1.0))
    );
    let start = Instant::now();
    let slow = http::Request::get("http://slow.example/").body(()).unwrap();
    let attempts = AtomicUsize::new(0);
    let answer = policies
        .run(slow, Overrides::new(), |_request| {
            let n = attempts.fetch_add(1, SeqCst);
            async move {
                if n == 0 {
                    tokio::time::sleep(Duration::from_secs(15)).await;
                    respond(Answer::Status(503))
                } else {
                    respond(Answer::Status(200))
                }
            }
        })
        .await;
    assert_eq!(answer.unwrap().status(), 200);
    assert_eq!(attempts.into_inner(), 2);
    assert_eq!(
        start.elapsed(),
        Duration::from_secs(16),
        "retried at 15 s, after 1 s"
    );
    assert_eq!(
        table_gauges(&policies, "keyed_budget"),
        (Some(1.0), Some(1.0))
    );

    let attempts = AtomicUsize::new(0);
    tokio::time::sleep_until(start + Duration::from_secs(20)).await;
    let answer = other_host(&policies, &attempts).await;
    assert_eq!(answer.unwrap().status(), 503);
    assert_eq!(
        attempts.load(SeqCst),
        1,
        "5 s after the first authority's retry its budget is kept: the table is full"
    );
    assert_eq!(
        table_gauges(&policies, "keyed_budget"),
        (Some(1.0), Some(1.0))
    );

    tokio::time::sleep_until(start + Duration::from_secs(27)).await;
    let answer = other_host(&policies, &attempts).await;
    assert_eq!(answer.unwrap().status(), 503);
    assert_eq!(
        attempts.load(SeqCst),
        3,
        "12 s after that retry the budget is gone: a new authority gets one and retries"
    );
}

/// The same rule, with two retries: the budget is kept a window past the *latest* one, not the
/// first. A request whose first attempt takes 15 s and second 8 s draws retries at 15 s and
/// 24 s: at 31 s (16 s after the first retry, 7 s after the latest) the table is still full.
#[tokio::test(start_paused = true)]
async fn the_budget_table_counts_from_the_latest_retry_not_the_first() {
    let policies = ClientPolicies::builder()
        .name("s48_budget_latest")
        .max_authorities(1)
        .breaker(None)
        .attempt_timeout(None)
        .deadline(None)
        .retry(
            Backoff::constant(Duration::from_secs(1))
                .jitter(Jitter::None)
                .max_attempts(3)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    let start = Instant::now();
    let slow = http::Request::get("http://slow.example/").body(()).unwrap();
    let attempts = AtomicUsize::new(0);
    let answer = policies
        .run(slow, Overrides::new(), |_request| {
            let n = attempts.fetch_add(1, SeqCst);
            async move {
                match n {
                    0 => {
                        tokio::time::sleep(Duration::from_secs(15)).await;
                        respond(Answer::Status(503))
                    }
                    1 => {
                        tokio::time::sleep(Duration::from_secs(8)).await;
                        respond(Answer::Status(503))
                    }
                    _ => respond(Answer::Status(200)),
                }
            }
        })
        .await;
    assert_eq!(answer.unwrap().status(), 200);
    assert_eq!(start.elapsed(), Duration::from_secs(25));
    let attempts = AtomicUsize::new(0);
    tokio::time::sleep_until(start + Duration::from_secs(31)).await;
    let _ = other_host(&policies, &attempts).await;
    assert_eq!(
        attempts.load(SeqCst),
        1,
        "7 s after the latest retry: still full"
    );
    tokio::time::sleep_until(start + Duration::from_secs(36)).await;
    let _ = other_host(&policies, &attempts).await;
    assert_eq!(
        attempts.load(SeqCst),
        3,
        "12 s after it: the budget is gone"
    );
}

/// Doc (`ClientPolicies::reconfigure`): "A stage the new settings add starts empty; one they
/// remove is gone"; (`record_gauges`) "0 and 0 for a stage the stack does not have".
#[tokio::test(start_paused = true)]
async fn the_budget_gauge_follows_a_reconfiguration_that_removes_and_adds_the_stage() {
    let policies = ClientPolicies::builder()
        .name("s48_budget_reconf")
        .max_authorities(100)
        .build()
        .unwrap();
    for host in ["a", "b"] {
        let request = http::Request::get(format!("http://{host}.example/"))
            .body(())
            .unwrap();
        let _ = policies
            .run(request, Overrides::new(), |_request| async {
                respond(Answer::Status(200))
            })
            .await;
    }
    assert_eq!(
        table_gauges(&policies, "keyed_budget"),
        (Some(2.0), Some(100.0))
    );
    policies
        .reconfigure(
            ClientPolicies::builder()
                .max_authorities(100)
                .retry_budget(None),
        )
        .unwrap();
    assert_eq!(
        table_gauges(&policies, "keyed_budget"),
        (Some(0.0), Some(0.0))
    );
    policies
        .reconfigure(ClientPolicies::builder().max_authorities(100))
        .unwrap();
    assert_eq!(
        table_gauges(&policies, "keyed_budget"),
        (Some(0.0), Some(100.0)),
        "added again: a new, empty table"
    );
}

/// A request to `other.example` answered 503 at every attempt; `attempts` counts them.
async fn other_host(
    policies: &ClientPolicies,
    attempts: &AtomicUsize,
) -> Result<http::Response<()>, tidewall::Error<std::io::Error>> {
    attempts.store(0, SeqCst);
    let request = http::Request::get("http://other.example/")
        .body(())
        .unwrap();
    policies
        .run(request, Overrides::new(), |_request| {
            attempts.fetch_add(1, SeqCst);
            async { respond(Answer::Status(503)) }
        })
        .await
}

/// Doc (`record_gauges`): "`tidewall_keyed_keys` and `tidewall_keyed_max_keys` of each table
/// (`policy` `keyed_breaker`, `keyed_bulkhead`, `keyed_adaptive`, `keyed_rate`, and
/// `keyed_budget` for the retry budgets ...; 0 and 0 for a stage the stack does not have)".
#[tokio::test(start_paused = true)]
async fn record_gauges_reports_the_budget_table_and_zeroes_for_a_missing_one() {
    let standard = ClientPolicies::builder()
        .name("s48_gauges_std")
        .build()
        .unwrap();
    assert_eq!(
        table_gauges(&standard, "keyed_budget"),
        (Some(0.0), Some(10_000.0))
    );
    for host in ["a", "b", "c", "a"] {
        let request = http::Request::get(format!("http://{host}.example/"))
            .body(())
            .unwrap();
        let _ = standard
            .run(request, Overrides::new(), |_request| async {
                respond(Answer::Status(200))
            })
            .await;
    }
    assert_eq!(
        table_gauges(&standard, "keyed_budget"),
        (Some(3.0), Some(10_000.0))
    );
    assert_eq!(
        table_gauges(&standard, "keyed_breaker"),
        (Some(3.0), Some(10_000.0))
    );
    assert_eq!(
        table_gauges(&standard, "keyed_rate"),
        (Some(0.0), Some(0.0)),
        "no rate stage"
    );

    let unbudgeted = ClientPolicies::builder()
        .name("s48_gauges_none")
        .retry_budget(None)
        .max_authorities(64)
        .build()
        .unwrap();
    let request = http::Request::get("http://a.example/").body(()).unwrap();
    let _ = unbudgeted
        .run(request, Overrides::new(), |_request| async {
            respond(Answer::Status(503))
        })
        .await;
    assert_eq!(
        table_gauges(&unbudgeted, "keyed_budget"),
        (Some(0.0), Some(0.0))
    );
    assert_eq!(
        table_gauges(&unbudgeted, "keyed_breaker"),
        (Some(1.0), Some(64.0))
    );
}

/// Doc (`tower::http::ClientLayer`): "A request that may be retried is copied before each
/// attempt but the last the schedule allows, so the body type is `Clone`; per-request
/// `Overrides` are read from the request's extensions."
#[tokio::test(start_paused = true)]
async fn the_client_layer_copies_as_run_does() {
    use tower::{Layer, ServiceExt};
    let layer = tidewall::tower::http::ClientLayer::new(three_attempts());
    let attempts = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&attempts);
    let client = tower::service_fn(move |_: http::Request<Counted>| {
        counted.fetch_add(1, SeqCst);
        async { respond(Answer::Status(503)) }
    });
    let service = layer.layer(client);
    for (overrides, expected) in [
        (None, (3, 2)),
        (
            Some(Overrides::new().max_attempts(NonZeroU32::new(2).unwrap())),
            (2, 1),
        ),
        (Some(Overrides::new().no_retry()), (1, 0)),
    ] {
        attempts.store(0, SeqCst);
        let clones = Arc::new(AtomicUsize::new(0));
        let mut request = http::Request::get("http://layer.example/")
            .body(Counted(Arc::clone(&clones)))
            .unwrap();
        if let Some(overrides) = overrides {
            request.extensions_mut().insert(overrides);
        }
        let answer = service.clone().oneshot(request).await;
        assert_eq!(answer.unwrap().status(), 503);
        assert_eq!(
            (attempts.load(SeqCst), clones.load(SeqCst)),
            expected,
            "{overrides:?}"
        );
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Reads a request head from `io`, then answers `reply` (nothing: closes the connection).
async fn one_exchange(mut io: tokio::io::DuplexStream, reply: &'static [u8]) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut head = Vec::new();
    let mut buffer = [0; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match io.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buffer[..n]),
        }
    }
    if !reply.is_empty() {
        let _ = io.write_all(reply).await;
        let _ = io.flush().await;
    }
    drop(io);
}

/// hyper's own error from one request over an in-memory connection whose server answers
/// `reply` (nothing: it closes the connection once it read the request: hyper's "incomplete
/// message").
async fn hyper_error(reply: &'static [u8]) -> hyper::Error {
    let (client, server) = tokio::io::duplex(1 << 16);
    let (mut sender, connection) = hyper::client::conn::http1::handshake::<
        _,
        http_body_util::Empty<bytes::Bytes>,
    >(hyper_util::rt::TokioIo::new(client))
    .await
    .unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    tokio::spawn(one_exchange(server, reply));
    let request = http::Request::get("http://hyper.example/")
        .body(http_body_util::Empty::new())
        .unwrap();
    sender.send_request(request).await.unwrap_err()
}

/// hyper's error for a request whose connection went away before it was sent (canceled).
async fn hyper_canceled() -> hyper::Error {
    let (client, _server) = tokio::io::duplex(1 << 16);
    let (mut sender, connection) = hyper::client::conn::http1::handshake::<
        _,
        http_body_util::Empty<bytes::Bytes>,
    >(hyper_util::rt::TokioIo::new(client))
    .await
    .unwrap();
    drop(connection);
    let request = http::Request::get("http://hyper.example/")
        .body(http_body_util::Empty::new())
        .unwrap();
    sender.send_request(request).await.unwrap_err()
}

/// An error of a client library that wraps hyper's, as its source.
#[derive(Debug)]
struct ClientError(hyper::Error);

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("client error")
    }
}

impl std::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

/// Doc (`HttpFailure`): "Implemented for ... any `dyn Error + Send + Sync` (the first refusal,
/// timeout or I/O error in the source chain ...; with the `hyper` feature, a `hyper::Error` for
/// a connection closed before the whole response or a request canceled with its connection is
/// `Interrupted`)".
#[tokio::test(start_paused = true)]
async fn hypers_incomplete_message_and_canceled_read_as_interrupted_however_held() {
    let incomplete = hyper_error(b"").await;
    assert!(incomplete.is_incomplete_message(), "{incomplete:?}");
    let canceled = hyper_canceled().await;
    assert!(canceled.is_canceled(), "{canceled:?}");
    let garbage = hyper_error(b"NOT HTTP AT ALL\r\n\r\n").await;
    assert!(
        !garbage.is_incomplete_message() && !garbage.is_canceled(),
        "{garbage:?}"
    );

    for (what, error, expected) in [
        ("incomplete", incomplete, FailureKind::Interrupted),
        ("canceled", canceled, FailureKind::Interrupted),
        ("a parse error", garbage, FailureKind::Other),
    ] {
        let wrapped = ClientError(error);
        // As a `dyn Error + Send + Sync`, its source hyper's.
        let read: &(dyn std::error::Error + Send + Sync) = &wrapped;
        assert_eq!(
            read.failure_kind(),
            expected,
            "{what}, wrapped, by reference"
        );
        // Inside tidewall's own error, read through its chain.
        let inner = tidewall::Error::Inner(wrapped);
        assert_eq!(inner.failure_kind(), expected, "{what}, in Error::Inner");
        let tidewall::Error::Inner(ClientError(error)) = inner else {
            unreachable!()
        };
        // Boxed, hyper's error itself, and the `dyn` in the box.
        let boxed: BoxError = Box::new(error);
        assert_eq!(boxed.failure_kind(), expected, "{what}, boxed");
        assert_eq!((*boxed).failure_kind(), expected, "{what}, the dyn itself");
        // Boxed, wrapped.
        let error = *boxed.downcast::<hyper::Error>().unwrap();
        let wrapped: BoxError = Box::new(ClientError(error));
        assert_eq!(
            wrapped.failure_kind(),
            expected,
            "{what}, wrapped and boxed"
        );
    }
}

/// Doc (feature `hyper`): "a connection closed before the whole response came ("incomplete
/// message") or a request canceled with its connection is `Interrupted`, and retried". A
/// request whose send fails so (its error boxed) is retried by `ClientPolicies::run`; one that
/// fails with another hyper error (a response that does not parse: `Other`) is not.
#[tokio::test(start_paused = true)]
async fn run_retries_hypers_interrupted_exchanges_only() {
    let policies = three_attempts();
    let cases: [(&str, &'static [u8], bool); 2] = [
        ("incomplete", b"", true),
        ("a parse error", b"NOT HTTP AT ALL\r\n\r\n", false),
    ];
    for (what, first, retried) in cases {
        let attempts = AtomicUsize::new(0);
        let request = http::Request::get("http://hyper.example/")
            .body(())
            .unwrap();
        let answer = policies
            .run(request, Overrides::new(), |_request| {
                let n = attempts.fetch_add(1, SeqCst);
                async move {
                    if n == 0 {
                        Err::<http::Response<()>, BoxError>(Box::new(hyper_error(first).await))
                    } else {
                        Ok(http::Response::new(()))
                    }
                }
            })
            .await;
        if retried {
            assert!(answer.is_ok(), "{what}: {answer:?}");
            assert_eq!(attempts.into_inner(), 2, "{what}: retried once");
        } else {
            assert!(
                matches!(answer, Err(tidewall::Error::Inner(_))),
                "{what}: {answer:?}"
            );
            assert_eq!(attempts.into_inner(), 1, "{what}: not retried");
        }
    }
    // Canceled: retried too.
    let attempts = AtomicUsize::new(0);
    let request = http::Request::get("http://hyper.example/")
        .body(())
        .unwrap();
    let answer = policies
        .run(request, Overrides::new(), |_request| {
            let n = attempts.fetch_add(1, SeqCst);
            async move {
                if n < 2 {
                    Err::<http::Response<()>, BoxError>(Box::new(hyper_canceled().await))
                } else {
                    Ok(http::Response::new(()))
                }
            }
        })
        .await;
    assert!(answer.is_ok(), "{answer:?}");
    assert_eq!(attempts.into_inner(), 3);
}

// === 4. Reload::reset and Reload::relearning name each instance once ======================

const BREAKER: u32 = 1;
const KEYED_BREAKER: u32 = 2;
const HTTP: u32 = 4;
const ADAPTIVE: u32 = 8;
const KEYED_ADAPTIVE: u32 = 16;

/// Every instance `m<mask>` (mask 0 to 31) on one base with a breaker, an adaptive limit and
/// keys; an instance whose mask has `HTTP` is an HTTP client.
fn combinations(
    window_calls: u32,
    initial_limit: u32,
    failure_rate: f64,
    max_queue: u32,
) -> String {
    let mut text = format!(
        "[configs.shared.breaker]\nconsecutive_failures = 1\nwindow_calls = {window_calls}\n\
         failure_rate = {failure_rate}\n\
         [configs.shared.adaptive]\nalgorithm = \"aimd\"\nmin_limit = 1\n\
         initial_limit = {initial_limit}\nmax_queue = {max_queue}\n\
         [configs.shared.keys]\nmax_keys = 50\n"
    );
    for mask in 0..32 {
        text.push_str(&format!("[instances.m{mask}]\nbase = \"shared\"\n"));
        if mask & HTTP != 0 {
            text.push_str("http = {}\n");
        }
    }
    text
}

fn sorted(names: &[tidewall::Name]) -> Vec<String> {
    let mut names: Vec<String> = names.iter().map(ToString::to_string).collect();
    names.sort();
    names
}

fn unique(names: &[tidewall::Name]) -> bool {
    let all = sorted(names);
    let mut deduped = all.clone();
    deduped.dedup();
    all == deduped
}

/// Doc (`Reload::reset`): "(an HTTP client's name when any of its hosts' breakers was, a keyed
/// table's when any of its keys' was; each name once)"; (`Reload::relearning`): "Instances
/// whose adaptive limiter (or keyed table of them, or HTTP client's per-host limits; each name
/// once) had its algorithm changed"; (`Reload::retuned`): "a keyed table counts once, however
/// many keys it retuned, and an HTTP client once, however many tables".
///
/// All 32 combinations of a plain breaker, a keyed breaker table, an HTTP client, a plain
/// adaptive limiter and a keyed adaptive table, each instance on one shared base, each table
/// with a key: a reload that changes the breakers' window shape and the limiters' algorithm
/// names each instance that holds any of them, once in each list.
#[tokio::test(start_paused = true)]
async fn every_combination_of_policies_is_named_once() {
    let registry = Registry::new(config(&combinations(10, 4, 0.5, 0))).unwrap();
    let mut held_breakers = Vec::new();
    let mut held_adaptive = Vec::new();
    let mut keyed_tables = Vec::new();
    let mut policies = 0;
    for mask in 0..32_u32 {
        let name = format!("m{mask}");
        if mask & BREAKER != 0 {
            let breaker = registry.breaker(&name).unwrap();
            let _ = breaker.call(|| async { Err::<(), _>("down") }).await;
            held_breakers.push(breaker);
            policies += 1;
        }
        if mask & KEYED_BREAKER != 0 {
            let table = registry.keyed_breaker::<String>(&name).unwrap();
            let _ = table
                .call(&"k".to_owned(), || async { Err::<(), _>("down") })
                .await;
            keyed_tables.push(table);
            policies += 1;
        }
        if mask & HTTP != 0 {
            let client = registry.http_client(&name).unwrap();
            let request = http::Request::get("http://host.example/").body(()).unwrap();
            let _ = client
                .run(request, Overrides::new(), |_request| async {
                    respond(Answer::Status(503))
                })
                .await;
            policies += 1;
        }
        if mask & ADAPTIVE != 0 {
            let limiter = registry.adaptive_limiter(&name).unwrap();
            limiter.try_acquire().unwrap().success();
            held_adaptive.push(limiter);
            policies += 1;
        }
        if mask & KEYED_ADAPTIVE != 0 {
            let table = registry.keyed_adaptive_limiter::<String>(&name).unwrap();
            table.try_acquire(&"k".to_owned()).unwrap().success();
            policies += 1;
        }
    }
    let expect = |bits: u32| -> Vec<String> {
        let mut names: Vec<String> = (0..32_u32)
            .filter(|m| m & bits != 0)
            .map(|m| format!("m{m}"))
            .collect();
        names.sort();
        names
    };

    // Nothing of shape or algorithm changes: nobody reset, nobody relearning.
    let reload = registry
        .reload(config(&combinations(10, 4, 0.6, 3)))
        .unwrap();
    assert!(reload.reset.is_empty(), "{reload:?}");
    assert!(reload.relearning.is_empty(), "{reload:?}");
    assert_eq!(
        reload.retuned, policies,
        "each policy, table and client once"
    );

    // Both change.
    let reload = registry
        .reload(config(&combinations(20, 8, 0.6, 3)))
        .unwrap();
    assert!(
        unique(&reload.reset),
        "a name twice in reset: {:?}",
        reload.reset
    );
    assert!(
        unique(&reload.relearning),
        "a name twice in relearning: {:?}",
        reload.relearning
    );
    assert_eq!(
        sorted(&reload.reset),
        expect(BREAKER | KEYED_BREAKER | HTTP)
    );
    assert_eq!(
        sorted(&reload.relearning),
        expect(ADAPTIVE | KEYED_ADAPTIVE | HTTP)
    );
    assert_eq!(reload.retuned, policies);
    for limiter in &held_adaptive {
        assert_eq!(limiter.limit(), 8, "relearning from the new initial limit");
    }
    for breaker in &held_breakers {
        assert_eq!(breaker.state(), tidewall::breaker::State::Closed);
    }
    for table in &keyed_tables {
        assert_eq!(
            table.state(&"k".to_owned()),
            Some(tidewall::breaker::State::Closed)
        );
    }

    // Only the algorithm changes.
    let reload = registry
        .reload(config(&combinations(20, 6, 0.6, 3)))
        .unwrap();
    assert!(reload.reset.is_empty(), "{reload:?}");
    assert!(unique(&reload.relearning), "{:?}", reload.relearning);
    assert_eq!(
        sorted(&reload.relearning),
        expect(ADAPTIVE | KEYED_ADAPTIVE | HTTP)
    );
    // Only the shape changes.
    let reload = registry
        .reload(config(&combinations(30, 6, 0.6, 3)))
        .unwrap();
    assert!(reload.relearning.is_empty(), "{reload:?}");
    assert!(unique(&reload.reset), "{:?}", reload.reset);
    assert_eq!(
        sorted(&reload.reset),
        expect(BREAKER | KEYED_BREAKER | HTTP)
    );
}

/// Doc (`Reload::reset`): "A breaker forced open or closed by hand stays forced, and is not
/// listed (`Reconfigured::KeptForced`)", with "an HTTP client's name when any of its hosts'
/// breakers was, a keyed table's when any of its keys' was; each name once".
#[tokio::test(start_paused = true)]
async fn forced_breakers_are_not_named_and_the_rest_are_named_once() {
    use tidewall::breaker::State;
    let text = |calls: u32| {
        let mut text = format!(
            "[configs.shared.breaker]\nconsecutive_failures = 1\nwindow_calls = {calls}\n\
             [configs.shared.keys]\nmax_keys = 50\n"
        );
        for name in [
            "all_forced",
            "plain_forced",
            "keyed_mixed",
            "http_mixed",
            "http_forced",
            "empty",
        ] {
            text.push_str(&format!(
                "[instances.{name}]\nbase = \"shared\"\nhttp = {{}}\n"
            ));
        }
        text
    };
    let registry = Registry::new(config(&text(10))).unwrap();
    let host = |h: &str| Authority::new("http", h, None).unwrap();
    let trip_host = |client: ClientPolicies, h: &'static str| async move {
        let request = http::Request::get(format!("http://{h}/")).body(()).unwrap();
        let _ = client
            .run(request, Overrides::new(), |_request| async {
                respond(Answer::Status(503))
            })
            .await;
    };
    let k = |s: &str| s.to_owned();

    // all_forced: the plain breaker, a key and a host, each forced.
    let plain = registry.breaker("all_forced").unwrap();
    plain.force_open();
    let keyed = registry.keyed_breaker::<String>("all_forced").unwrap();
    keyed.get_or_make(&k("a")).unwrap().force_closed();
    let client = registry.http_client("all_forced").unwrap();
    client
        .breakers()
        .unwrap()
        .get_or_make(&host("a.example"))
        .unwrap()
        .force_open();
    // plain_forced: the plain breaker forced, a key tripped.
    registry.breaker("plain_forced").unwrap().force_open();
    let plain_forced_keyed = registry.keyed_breaker::<String>("plain_forced").unwrap();
    let _ = plain_forced_keyed
        .call(&k("a"), || async { Err::<(), _>("down") })
        .await;
    // keyed_mixed: one key forced, another tripped.
    let mixed = registry.keyed_breaker::<String>("keyed_mixed").unwrap();
    mixed.get_or_make(&k("a")).unwrap().force_open();
    let _ = mixed.call(&k("b"), || async { Err::<(), _>("down") }).await;
    // http_mixed: one host forced, another tripped.
    let http_mixed = registry.http_client("http_mixed").unwrap();
    http_mixed
        .breakers()
        .unwrap()
        .get_or_make(&host("a.example"))
        .unwrap()
        .force_closed();
    trip_host(http_mixed.clone(), "b.example").await;
    // http_forced: its only host forced.
    let http_forced = registry.http_client("http_forced").unwrap();
    http_forced
        .breakers()
        .unwrap()
        .get_or_make(&host("a.example"))
        .unwrap()
        .force_open();
    // empty: an HTTP client and a keyed table that never saw a host or key.
    registry.http_client("empty").unwrap();
    registry.keyed_breaker::<String>("empty").unwrap();

    let reload = registry.reload(config(&text(20))).unwrap();
    assert!(unique(&reload.reset), "{:?}", reload.reset);
    assert_eq!(
        sorted(&reload.reset),
        ["http_mixed", "keyed_mixed", "plain_forced"],
        "{reload:?}"
    );
    assert_eq!(plain.state(), State::ForcedOpen);
    assert_eq!(keyed.state(&k("a")), Some(State::ForcedClosed));
    assert_eq!(
        client.breakers().unwrap().state(&host("a.example")),
        Some(State::ForcedOpen)
    );
    assert_eq!(mixed.state(&k("a")), Some(State::ForcedOpen));
    assert_eq!(mixed.state(&k("b")), Some(State::Closed));
    assert_eq!(
        http_mixed.breakers().unwrap().state(&host("b.example")),
        Some(State::Closed)
    );
}

/// Doc (`Reload::removed`): instances the new configuration no longer declares "now run on the
/// layers that remain (the defaults), and count in `retuned`"; with `reset` and `relearning`
/// naming each instance once.
///
/// An instance holding a plain breaker, a keyed breaker table, a plain adaptive limiter and a
/// keyed adaptive table is removed; the defaults give its breakers another window shape and
/// its limiters another algorithm: it is named once in each of `removed`, `reset` and
/// `relearning`.
#[tokio::test(start_paused = true)]
async fn a_removed_instance_falling_back_to_the_defaults_is_named_once_in_each_list() {
    let defaults = "[defaults.breaker]\nconsecutive_failures = 1\nwindow_calls = 30\n\
                    [defaults.adaptive]\nalgorithm = \"aimd\"\nmin_limit = 1\ninitial_limit = 9\n\
                    [defaults.keys]\nmax_keys = 50\n";
    let own = "[instances.gone.breaker]\nwindow_calls = 10\n\
               [instances.gone.adaptive]\ninitial_limit = 4\n\
               [instances.stays.breaker]\nwindow_calls = 10\n";
    let registry = Registry::new(config(&format!("{defaults}{own}"))).unwrap();
    let plain = registry.breaker("gone").unwrap();
    let _ = plain.call(|| async { Err::<(), _>("down") }).await;
    let keyed = registry.keyed_breaker::<String>("gone").unwrap();
    let _ = keyed
        .call(&"k".to_owned(), || async { Err::<(), _>("down") })
        .await;
    let limiter = registry.adaptive_limiter("gone").unwrap();
    assert_eq!(limiter.limit(), 4);
    let keyed_limiter = registry.keyed_adaptive_limiter::<String>("gone").unwrap();
    keyed_limiter
        .try_acquire(&"k".to_owned())
        .unwrap()
        .success();
    let stays = registry.breaker("stays").unwrap();

    let reload = registry
        .reload(config(&format!(
            "{defaults}[instances.stays.breaker]\nwindow_calls = 10\n"
        )))
        .unwrap();
    assert_eq!(sorted(&reload.removed), ["gone"], "{reload:?}");
    assert_eq!(sorted(&reload.reset), ["gone"], "{reload:?}");
    assert_eq!(sorted(&reload.relearning), ["gone"], "{reload:?}");
    assert_eq!(limiter.limit(), 9, "the defaults' initial limit");
    assert_eq!(keyed_limiter.limit(&"k".to_owned()), Some(9));
    assert_eq!(plain.state(), tidewall::breaker::State::Closed);
    assert_eq!(stays.state(), tidewall::breaker::State::Closed);
}

/// `Reload::reset` and `relearning` with a pipeline of the instance held too (its breaker and
/// adaptive limit the instance's), next to the plain, keyed and HTTP client ones: each name
/// once; the pipeline counted in `pipelines`.
#[tokio::test(start_paused = true)]
async fn an_instance_with_a_pipeline_and_every_table_is_named_once() {
    let text = |calls: u32, initial: u32| {
        format!(
            "[instances.api]\nhttp = {{}}\n[instances.api.breaker]\nconsecutive_failures = 1\n\
             window_calls = {calls}\n[instances.api.adaptive]\nalgorithm = \"aimd\"\n\
             min_limit = 1\ninitial_limit = {initial}\n[instances.api.keys]\nmax_keys = 10\n\
             [instances.job.breaker]\nconsecutive_failures = 1\nwindow_calls = {calls}\n\
             [instances.job.adaptive]\nalgorithm = \"aimd\"\nmin_limit = 1\n\
             initial_limit = {initial}\n[instances.job.keys]\nmax_keys = 10\n"
        )
    };
    let registry = Registry::new(config(&text(10, 4))).unwrap();
    for name in ["api", "job"] {
        let pipeline = registry.pipeline(name).unwrap();
        let _ = pipeline.call(|| async { Err::<(), _>("down") }).await;
        let _ = registry.breaker(name).unwrap();
        let _ = registry.adaptive_limiter(name).unwrap();
        let keyed = registry.keyed_breaker::<String>(name).unwrap();
        let _ = keyed
            .call(&"k".to_owned(), || async { Err::<(), _>("down") })
            .await;
        let limits = registry.keyed_adaptive_limiter::<String>(name).unwrap();
        limits.try_acquire(&"k".to_owned()).unwrap().success();
    }
    let client = registry.http_client("api").unwrap();
    let request = http::Request::get("http://host.example/").body(()).unwrap();
    let _ = client
        .run(request, Overrides::new(), |_request| async {
            respond(Answer::Status(503))
        })
        .await;
    let reload = registry.reload(config(&text(20, 8))).unwrap();
    assert_eq!(reload.reset.len(), 2, "{reload:?}");
    assert_eq!(sorted(&reload.reset), ["api", "job"], "{reload:?}");
    assert_eq!(sorted(&reload.relearning), ["api", "job"], "{reload:?}");
    assert_eq!(reload.relearning.len(), 2, "{reload:?}");
    assert_eq!(reload.pipelines, 2, "{reload:?}");
}
