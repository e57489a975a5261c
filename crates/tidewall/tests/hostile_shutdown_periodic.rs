//! Hostile black-box tests of `tidewall::task`, written from the rustdoc alone (the public
//! documentation extract, no implementation read): graceful shutdown (deadline then abort,
//! reverse registration order, per-component timeouts, work submitted while the service shuts
//! down, the coordinator dropped mid-stop), periodic work (every missed-tick mode against a
//! model of the documented schedule, long catch-up bursts, runs that panic, runs cancelled
//! mid-way, health probes that outlive their period), cancellable blocking work (panics,
//! cancellation, no result lost or mixed up), scopes nested a dozen deep with cancellation
//! reasons flowing down, supervisors' restart intensity over hours and days of virtual time
//! (OTP's N restarts per window, reverse-order stops) and worker pools' "no lost job" on
//! shutdown and on drop.
//!
//! Everything runs in virtual time on every runtime adapter (`tidewall::testing::Clocked`);
//! the blocking tests run real threads and assert only what holds whatever their timing.

mod common;

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use common::ms;
use futures_util::future::{BoxFuture, Either, select};
use tidewall::rt::{Clock, JoinError, Runtime, Spawn};
use tidewall::stream::MissedTicks;
use tidewall::task::pool::{SubmitError, Submitter, WorkerPool};
use tidewall::task::scope::Scope;
use tidewall::task::shutdown::{Cause, ShutdownBuilder};
use tidewall::task::supervisor::{ChildSpec, Ended, Strategy, SupervisorBuilder, SupervisorEvent};
use tidewall::task::{
    CancellationToken, Ending, Exit, Health, HealthChecker, periodic, spawn_blocking_cancellable,
};
use tidewall::testing::Clocked;
use tidewall::{Backoff, Jitter};
use tidewall_core::rng::SplitMix64;

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn us(n: u64) -> Duration {
    Duration::from_micros(n)
}

const HOUR: Duration = Duration::from_secs(3_600);
const DAY: Duration = Duration::from_secs(86_400);

/// Sets its flag when dropped: proves a future (or what it held) is gone.
struct DropFlag(Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, SeqCst);
    }
}

fn flag() -> Arc<AtomicBool> {
    Arc::new(AtomicBool::new(false))
}

type Log<T> = Arc<Mutex<Vec<T>>>;

fn log<T>() -> Log<T> {
    Arc::new(Mutex::new(Vec::new()))
}

fn taken<T: Clone>(log: &Log<T>) -> Vec<T> {
    log.lock().unwrap().clone()
}

/// Waits (in virtual time, a millisecond at a time) until `done` holds, for at most `limit`
/// steps; returns whether it did.
async fn eventually<R: Runtime>(rt: &Clocked<R>, limit: u32, done: impl Fn() -> bool) -> bool {
    for _ in 0..limit {
        if done() {
            return true;
        }
        rt.sleep(ms(1)).await;
    }
    done()
}

type Component = BoxFuture<'static, Result<(), &'static str>>;

/// A component that notes when its token is cancelled (relative to `t0`), then stops after
/// `after`, or never (it ignores its token) for `None`. It sets `gone` when its future is
/// dropped.
fn watcher<R: Runtime>(
    rt: &Clocked<R>,
    t0: Instant,
    seen: &Log<(&'static str, Duration)>,
    name: &'static str,
    after: Option<Duration>,
    gone: Option<Arc<AtomicBool>>,
) -> impl FnOnce(CancellationToken) -> Component + use<R> {
    let (rt, seen) = (rt.clone(), seen.clone());
    move |stop: CancellationToken| -> Component {
        // Held by the future from the start: set even if it is dropped before its first poll.
        let gone = gone.map(DropFlag);
        Box::pin(async move {
            let _gone = gone;
            stop.cancelled().await;
            seen.lock().unwrap().push((name, rt.now() - t0));
            match after {
                Some(after) => {
                    rt.sleep(after).await;
                    Ok(())
                }
                None => std::future::pending().await,
            }
        })
    }
}

fn names(report: &tidewall::task::shutdown::ShutdownReport) -> Vec<String> {
    report
        .components
        .iter()
        .map(|c| c.name.to_string())
        .collect()
}

// ---------------------------------------------------------------------------------------
// Shutdown
// ---------------------------------------------------------------------------------------

// Docs (`Shutdown`): "each one's token is cancelled and it gets until its own timeout or the
// global deadline, whichever comes first; when the deadline passes, everything left is
// aborted." (`ShutdownReport::deadline_exceeded`): "Whether the global deadline passed and
// the remaining components were aborted."
async fn deadline_aborts_everything_left<R: Runtime>(rt: Clocked<R>) {
    let t0 = rt.now();
    let seen = log();
    let gone: Vec<_> = (0..3).map(|_| flag()).collect();
    let mut shutdown = ShutdownBuilder::new()
        .runtime(rt.clone())
        .deadline(secs(3))
        .build()
        .unwrap();
    for (name, gone) in ["a", "b", "c"].into_iter().zip(&gone) {
        shutdown.register(
            name,
            watcher(&rt, t0, &seen, name, None, Some(gone.clone())),
        );
    }
    let report = shutdown.stop("deploy").await;
    assert_eq!(
        rt.now() - t0,
        secs(3),
        "the deadline bounds the whole shutdown"
    );
    assert_eq!(names(&report), ["c", "b", "a"]);
    assert!(report.deadline_exceeded);
    assert!(!report.forced);
    assert!(!report.is_clean());
    assert_eq!(report.took, secs(3));
    for c in &report.components {
        assert_eq!(c.exit, Exit::Aborted, "{}", c.name);
        assert!(matches!(c.ending, Ending::Aborted { .. }), "{c:?}");
    }
    assert_eq!(
        report.components[0].ending,
        Ending::Aborted { took: secs(3) },
        "the first one stopped got the whole deadline"
    );
    // Only the first one's turn came before the deadline.
    let seen = taken(&seen);
    assert_eq!(seen[0], ("c", Duration::ZERO));
    assert!(seen[1..].iter().all(|(_, at)| *at >= secs(3)), "{seen:?}");
    for (i, gone) in gone.iter().enumerate() {
        assert!(gone.load(SeqCst), "component {i} outlived its coordinator");
    }
}

#[test]
fn shutdown_deadline_aborts_every_component_left_and_returns_at_the_deadline() {
    on_every_runtime!(deadline_aborts_everything_left);
}

// Docs (`Shutdown`): "stops the components in reverse order: each one's token is cancelled
// and it gets until its own timeout or the global deadline, whichever comes first".
// (`register_with_timeout`): "with at most `timeout` to stop once told (the global deadline
// still applies)".
async fn timeouts_and_the_deadline<R: Runtime>(rt: Clocked<R>) {
    let t0 = rt.now();
    let seen = log();
    let mut shutdown = ShutdownBuilder::new()
        .runtime(rt.clone())
        .deadline(secs(10))
        .build()
        .unwrap();
    shutdown.register("a", watcher(&rt, t0, &seen, "a", None, None));
    shutdown.register("b", watcher(&rt, t0, &seen, "b", Some(secs(2)), None));
    shutdown.register_with_timeout("c", secs(1), watcher(&rt, t0, &seen, "c", None, None));
    shutdown.register(
        "d",
        watcher(&rt, t0, &seen, "d", Some(Duration::ZERO), None),
    );
    let report = shutdown.stop("deploy").await;
    // d stops at once, c is aborted after its own 1 s, b takes 2 s, and a (deaf) gets what
    // the deadline leaves: 10 - 3 = 7 s.
    assert_eq!(
        taken(&seen),
        [
            ("d", Duration::ZERO),
            ("c", Duration::ZERO),
            ("b", secs(1)),
            ("a", secs(3)),
        ],
        "each token is cancelled only once the one stopped before it is gone"
    );
    let endings: Vec<_> = report
        .components
        .iter()
        .map(|c| (c.name.to_string(), c.exit.clone(), c.ending))
        .collect();
    assert_eq!(
        endings,
        [
            (
                "d".to_owned(),
                Exit::Ok(()),
                Ending::Stopped {
                    took: Duration::ZERO
                }
            ),
            (
                "c".to_owned(),
                Exit::Aborted,
                Ending::Aborted { took: secs(1) }
            ),
            (
                "b".to_owned(),
                Exit::Ok(()),
                Ending::Stopped { took: secs(2) }
            ),
            (
                "a".to_owned(),
                Exit::Aborted,
                Ending::Aborted { took: secs(7) }
            ),
        ]
    );
    assert!(report.deadline_exceeded);
    assert_eq!(report.took, secs(10));
    assert_eq!(rt.now() - t0, secs(10));
}

#[test]
fn a_component_timeout_cuts_only_its_own_stop_and_the_rest_share_what_the_deadline_leaves() {
    on_every_runtime!(timeouts_and_the_deadline);
}

// Docs (`register_with_timeout`): "the global deadline still applies": a per-component
// timeout longer than the deadline does not extend the shutdown.
async fn component_timeout_beyond_deadline<R: Runtime>(rt: Clocked<R>) {
    let t0 = rt.now();
    let seen = log();
    let mut shutdown = ShutdownBuilder::new()
        .runtime(rt.clone())
        .deadline(secs(2))
        .build()
        .unwrap();
    shutdown.register_with_timeout("slow", DAY, watcher(&rt, t0, &seen, "slow", None, None));
    let report = shutdown.stop("deploy").await;
    assert_eq!(rt.now() - t0, secs(2));
    assert_eq!(
        report.components[0].ending,
        Ending::Aborted { took: secs(2) }
    );
    assert!(report.deadline_exceeded);
}

#[test]
fn a_component_timeout_longer_than_the_deadline_is_cut_at_the_deadline() {
    on_every_runtime!(component_timeout_beyond_deadline);
}

// Docs (`Shutdown::run`): "stops every component in reverse registration order", one at a
// time (each gets "until its own timeout or the global deadline"); `Ending::Stopped`'s
// `took` counts "from the stop to its end"; `ShutdownReport::took` "to the last component
// gone". Eight components with seeded stop times.
async fn sequential_reverse_stops<R: Runtime>(rt: Clocked<R>) {
    for seed in [1_u64, 2, 3] {
        let mut rng = SplitMix64::new(seed);
        let t0 = rt.now();
        let seen = log();
        let mut shutdown = ShutdownBuilder::new()
            .runtime(rt.clone())
            .deadline(HOUR)
            .build()
            .unwrap();
        let names: Vec<&'static str> = vec!["c0", "c1", "c2", "c3", "c4", "c5", "c6", "c7"];
        let stops: Vec<Duration> = names.iter().map(|_| ms(rng.between(0, 900))).collect();
        for (name, stop) in names.iter().zip(&stops) {
            shutdown.register(*name, watcher(&rt, t0, &seen, name, Some(*stop), None));
        }
        let report = shutdown.stop("rolling").await;
        let mut at = Duration::ZERO;
        let mut expected_seen = Vec::new();
        let mut expected_endings = Vec::new();
        for (name, stop) in names.iter().zip(&stops).rev() {
            expected_seen.push((*name, at));
            expected_endings.push((name.to_string(), Ending::Stopped { took: *stop }));
            at += *stop;
        }
        assert_eq!(taken(&seen), expected_seen, "seed {seed}");
        let endings: Vec<_> = report
            .components
            .iter()
            .map(|c| (c.name.to_string(), c.ending))
            .collect();
        assert_eq!(endings, expected_endings, "seed {seed}");
        assert_eq!(report.took, at, "seed {seed}");
        assert!(report.is_clean());
        assert!(!report.deadline_exceeded);
        assert_eq!(rt.now() - t0, at);
    }
}

#[test]
fn shutdown_stops_components_one_at_a_time_in_reverse_registration_order() {
    on_every_runtime!(sequential_reverse_stops);
}

// Docs (`register_with_timeout`): "Zero aborts it as soon as its turn comes." (`Ending`):
// "It was still running when its grace period ended, and was aborted."
async fn zero_timeout_is_brutal_kill<R: Runtime>(rt: Clocked<R>) {
    let t0 = rt.now();
    let seen = log();
    let gone = flag();
    let mut shutdown = ShutdownBuilder::new().runtime(rt.clone()).build().unwrap();
    shutdown.register("first", watcher(&rt, t0, &seen, "first", Some(ms(5)), None));
    shutdown.register_with_timeout(
        "brutal",
        Duration::ZERO,
        watcher(&rt, t0, &seen, "brutal", Some(ms(1)), Some(gone.clone())),
    );
    let report = shutdown.stop("now").await;
    let brutal = &report.components[0];
    assert_eq!(&*brutal.name, "brutal");
    assert_eq!(brutal.exit, Exit::Aborted);
    assert_eq!(
        brutal.ending,
        Ending::Aborted {
            took: Duration::ZERO
        }
    );
    assert!(gone.load(SeqCst));
    // The next component's turn came at once.
    assert!(taken(&seen).contains(&("first", Duration::ZERO)));
    assert_eq!(report.took, ms(5));
}

#[test]
fn a_zero_component_timeout_aborts_at_its_turn_without_waiting() {
    on_every_runtime!(zero_timeout_is_brutal_kill);
}

// Docs (`Shutdown`): "the shutdown begins at the moment the trigger is cancelled ... A
// component that ended before is reported with `Ending::Finished` ... one that ended on its
// own after the shutdown began, before its turn came, reads `Ending::Stopped` with a `took` of
// about zero." (`ShutdownReport::took`): "from the moment `run` began stopping components
// (... or at its first poll for a trigger cancelled earlier)".
async fn trigger_long_before_run<R: Runtime>(rt: Clocked<R>) {
    let t0 = rt.now();
    let mut shutdown = ShutdownBuilder::new().runtime(rt.clone()).build().unwrap();
    let clock = rt.clone();
    // Registered first (stopped last): ends on its own 30 min in, never watching its token.
    shutdown.register("batch", move |_stop| async move {
        clock.sleep_until(t0 + 30 * 60 * secs(1)).await;
        Ok::<(), &str>(())
    });
    let seen = log();
    shutdown.register(
        "server",
        watcher(&rt, t0, &seen, "server", Some(ms(100)), None),
    );
    shutdown.trigger().cancel("maintenance");
    rt.sleep_until(t0 + HOUR).await;
    let report = shutdown.run().await;
    assert!(matches!(&report.cause, Cause::Triggered(r) if r.as_str() == "maintenance"));
    assert_eq!(names(&report), ["server", "batch"]);
    assert_eq!(
        report.components[0].ending,
        Ending::Stopped { took: ms(100) }
    );
    let batch = &report.components[1];
    assert_eq!(batch.exit, Exit::Ok(()));
    assert!(
        matches!(batch.ending, Ending::Stopped { took } if took <= ms(1)),
        "ended after the trigger, before its turn: Stopped with about zero, got {:?}",
        batch.ending
    );
    assert_eq!(report.took, ms(100), "counted from run's first poll");
    assert_eq!(taken(&seen), [("server", HOUR)]);
}

#[test]
fn a_component_ending_after_an_early_trigger_but_before_run_is_polled_reads_stopped() {
    on_every_runtime!(trigger_long_before_run);
}

// Docs (`Shutdown::stop`): "Starts the shutdown now, at the call (not at the first poll)".
async fn stop_starts_at_the_call<R: Runtime>(rt: Clocked<R>) {
    let t0 = rt.now();
    let mut shutdown = ShutdownBuilder::new().runtime(rt.clone()).build().unwrap();
    let clock = rt.clone();
    shutdown.register("early", |_stop| async { Ok::<(), &str>(()) });
    shutdown.register("batch", move |_stop| async move {
        clock.sleep_until(t0 + 30 * 60 * secs(1)).await;
        Ok::<(), &str>(())
    });
    rt.sleep(ms(10)).await; // "early" ends before the stop
    let stopping = shutdown.stop("deploy");
    rt.sleep_until(t0 + HOUR).await;
    let report = stopping.await;
    assert!(matches!(&report.cause, Cause::Triggered(r) if r.as_str() == "deploy"));
    assert_eq!(names(&report), ["batch", "early"]);
    assert!(
        matches!(report.components[0].ending, Ending::Stopped { took } if took <= ms(1)),
        "the shutdown began at the call: {:?}",
        report.components[0]
    );
    assert_eq!(report.components[1].ending, Ending::Finished);
}

#[test]
fn shutdown_stop_begins_at_the_call_so_later_ends_are_not_finished() {
    on_every_runtime!(stop_starts_at_the_call);
}

// Docs (`WorkerPool`): "`shutdown` stops accepting, drains the queue within a deadline,
// aborts what still runs, and hands back every job never started: `submitted = completed +
// failed + handed back`, always"; (`Submitter`): "it sees `SubmitError::Closed` once the pool
// shuts down"; (`SubmitError`): "the job comes back, never lost". Here the pool is registered
// *after* the producer, so it shuts down first while the producer is still submitting.
async fn work_submitted_during_shutdown<R: Runtime>(rt: Clocked<R>) {
    let clock = rt.clone();
    let pool = WorkerPool::builder()
        .workers(2)
        .queue(4)
        .runtime(rt.clone())
        .start(move |n: u64| {
            let clock = clock.clone();
            async move {
                clock.sleep(ms(10)).await;
                n
            }
        })
        .unwrap();
    let submitter = pool.submitter();
    let handles = log();
    let refused = log();
    let mut shutdown = ShutdownBuilder::new().runtime(rt.clone()).build().unwrap();
    {
        let (handles, refused, clock) = (handles.clone(), refused.clone(), rt.clone());
        shutdown.register("producer", move |stop: CancellationToken| async move {
            let mut n = 0_u64;
            loop {
                match submitter.submit(n).await {
                    Ok(handle) => handles.lock().unwrap().push((n, handle)),
                    Err(refusal) => {
                        assert!(matches!(refusal, SubmitError::Closed(_)));
                        refused.lock().unwrap().push(refusal.into_job());
                        break;
                    }
                }
                n += 1;
                clock.sleep(ms(3)).await;
            }
            stop.cancelled().await;
            Ok::<(), &str>(())
        });
    }
    let reports = log();
    {
        let reports = reports.clone();
        shutdown.register("pool", move |stop: CancellationToken| async move {
            stop.cancelled().await;
            let report = pool.shutdown(ms(15)).await;
            reports.lock().unwrap().push(report);
            Ok::<(), &str>(())
        });
    }
    rt.sleep(ms(200)).await;
    let report = shutdown.stop("deploy").await;
    assert!(report.is_clean(), "{report:?}");
    let pool_report = reports.lock().unwrap().pop().expect("the pool shut down");
    let handles = std::mem::take(&mut *handles.lock().unwrap());
    let refused = taken(&refused);
    assert_eq!(
        refused.len(),
        1,
        "the producer stopped at its first refusal"
    );
    let (mut ok, mut aborted) = (Vec::new(), Vec::new());
    let (ids, handles): (Vec<u64>, Vec<_>) = handles.into_iter().unzip();
    for (n, handle) in ids
        .into_iter()
        .zip(futures_util::future::join_all(handles).await)
    {
        match handle {
            Exit::Ok(value) => {
                assert_eq!(value, n);
                ok.push(n);
            }
            Exit::Aborted => aborted.push(n),
            other => panic!("job {n}: {other:?}"),
        }
    }
    let accepted = u64::try_from(ok.len() + aborted.len()).unwrap();
    assert_eq!(pool_report.submitted, accepted);
    assert_eq!(
        pool_report.submitted,
        pool_report.completed
            + pool_report.failed
            + u64::try_from(pool_report.handed_back.len()).unwrap()
    );
    assert_eq!(pool_report.completed, u64::try_from(ok.len()).unwrap());
    let mut every: Vec<u64> = ok
        .iter()
        .chain(&pool_report.handed_back)
        .chain(&refused)
        .copied()
        .collect();
    // Jobs aborted at the drain deadline are accounted for in the report, not handed back.
    every.extend(
        aborted
            .iter()
            .filter(|n| !pool_report.handed_back.contains(n)),
    );
    every.sort_unstable();
    let expected: Vec<u64> = (0..=refused[0]).collect();
    assert_eq!(
        every, expected,
        "every job produced is accounted for exactly once"
    );
}

#[test]
fn work_submitted_while_the_pool_shuts_down_under_a_service_shutdown_is_never_lost() {
    on_every_runtime!(work_submitted_during_shutdown);
}

// Docs (`Shutdown::run`, cancel safety): "Dropping the future ends the shutdown there ...:
// every component not yet stopped has its token cancelled (reason "shutdown coordinator
// dropped") and is aborted at once, and so is the one being stopped at that moment ...: no
// component outlives the coordinator."
async fn run_dropped_mid_stop<R: Runtime>(rt: Clocked<R>) {
    let tokens: Log<(&'static str, CancellationToken)> = log();
    let gone: Vec<_> = (0..3).map(|_| flag()).collect();
    let mut shutdown = ShutdownBuilder::new().runtime(rt.clone()).build().unwrap();
    for (name, gone) in ["a", "b", "c"].into_iter().zip(&gone) {
        let (tokens, gone) = (tokens.clone(), gone.clone());
        shutdown.register(name, move |stop: CancellationToken| {
            tokens.lock().unwrap().push((name, stop.clone()));
            let gone = DropFlag(gone);
            async move {
                let _gone = gone;
                std::future::pending::<Result<(), &str>>().await
            }
        });
    }
    shutdown.trigger().cancel("deploy");
    let run = Box::pin(shutdown.run());
    let timer = Box::pin(rt.sleep(ms(100)));
    assert!(matches!(select(run, timer).await, Either::Right(_)));
    assert!(
        eventually(&rt, 100, || gone.iter().all(|g| g.load(SeqCst))).await,
        "every component is aborted with the coordinator"
    );
    for (name, token) in taken(&tokens) {
        let reason = token.reason().map(|r| r.as_str().to_owned());
        if name == "c" {
            assert!(reason.is_some(), "c was being stopped");
        } else {
            assert_eq!(
                reason.as_deref(),
                Some("shutdown coordinator dropped"),
                "{name} was not stopped yet"
            );
        }
    }
}

#[test]
fn dropping_a_running_shutdown_aborts_every_component_and_names_the_reason() {
    on_every_runtime!(run_dropped_mid_stop);
}

// Docs (`Shutdown`): "when the deadline passes, everything left is aborted"; (`Supervisor`
// drop): "A supervisor dropped before it stopped its children (its `run` future dropped, or
// aborted by a parent after its shutdown timeout) takes them down with it". A supervisor run
// as a shutdown component whose children need longer than the deadline.
async fn supervisor_component_cut_by_deadline<R: Runtime>(rt: Clocked<R>) {
    let t0 = rt.now();
    let gone: Vec<_> = (0..3).map(|_| flag()).collect();
    let mut builder = SupervisorBuilder::new().runtime(rt.clone());
    for (i, gone) in gone.iter().enumerate() {
        let gone = gone.clone();
        let name = format!("worker-{i}");
        builder = builder.child(
            ChildSpec::new(name, move |_stop| {
                let gone = DropFlag(gone.clone());
                async move {
                    let _gone = gone;
                    std::future::pending::<Result<(), &str>>().await
                }
            })
            .shutdown_timeout(secs(60)),
        );
    }
    let supervisor = builder.build().unwrap();
    let mut shutdown = ShutdownBuilder::new()
        .runtime(rt.clone())
        .deadline(secs(2))
        .build()
        .unwrap();
    shutdown.register("workers", move |stop| async move {
        supervisor
            .run(stop)
            .await
            .map(|_| ())
            .map_err(|_| "escalated")
    });
    rt.sleep(ms(10)).await;
    let report = shutdown.stop("deploy").await;
    assert_eq!(rt.now() - t0, ms(10) + secs(2));
    assert_eq!(report.components[0].exit, Exit::Aborted);
    assert!(report.deadline_exceeded);
    assert!(
        eventually(&rt, 100, || gone.iter().all(|g| g.load(SeqCst))).await,
        "no supervised child outlives its aborted supervisor"
    );
}

#[test]
fn a_supervisor_component_cut_by_the_shutdown_deadline_takes_its_children_down() {
    on_every_runtime!(supervisor_component_cut_by_deadline);
}

// ---------------------------------------------------------------------------------------
// Periodic
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Skip,
    Burst,
    Delay,
}

impl Mode {
    fn ticks(self) -> MissedTicks {
        match self {
            Self::Skip => MissedTicks::Skip,
            Self::Burst => MissedTicks::Burst,
            Self::Delay => MissedTicks::Delay,
        }
    }
}

/// The documented schedule of `periodic`: for runs lasting `durations` (ns), each run's
/// (tick, start) relative to the first poll, and whether it started late. `None` when the
/// durations hit a boundary the docs leave open (a late `Skip` run starting exactly on a
/// schedule point).
fn periodic_model(mode: Mode, period: u64, durations: &[u64]) -> Option<Vec<(u64, u64, bool)>> {
    let mut runs = Vec::new();
    let mut next = period;
    let mut now = 0;
    for &d in durations {
        let tick = next;
        let start = tick.max(now);
        let late = start > tick;
        runs.push((tick, start, late));
        now = start + d;
        next = match (mode, late) {
            (Mode::Burst, _) | (_, false) => tick + period,
            (Mode::Skip, true) => {
                if start % period == 0 {
                    return None;
                }
                (start / period + 1) * period
            }
            (Mode::Delay, true) => start + period,
        };
    }
    Some(runs)
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap()
}

// Docs (`periodic`): "runs follow `start + k × period` (`tick` is the run's scheduled
// instant). Each run is awaited before the next tick is considered, so runs never overlap.
// ... `Skip`: the next run starts at once, late, for the earliest tick it overran; the other
// overrun ticks are dropped, and runs return to the original schedule at its first point
// after the late run started. `Burst`: one run per overrun tick, back to back, until the
// schedule is caught up. `Delay`: the next run starts at once and the schedule restarts from
// it."
async fn periodic_matches_model<R: Runtime>(rt: Clocked<R>) {
    let period = ms(10);
    for mode in [Mode::Skip, Mode::Burst, Mode::Delay] {
        for seed in [11_u64, 12, 13] {
            let mut rng = SplitMix64::new(seed ^ (mode as u64) << 8);
            let durations: Vec<u64> = (0..80)
                .map(|_| {
                    let us = match rng.below_or_equal(7) {
                        0 => 0,
                        1 | 2 => rng.between(1, 20) * 10_000 + rng.between(1, 9_999),
                        _ => rng.between(1, 9_999),
                    };
                    us * 1_000
                })
                .collect();
            let Some(model) = periodic_model(mode, nanos(period), &durations) else {
                panic!("seed {seed} hits an undocumented boundary: pick another seed");
            };
            let token = CancellationToken::new();
            let stop = token.clone();
            let t0 = rt.now();
            let mut runs: Vec<(u64, u64)> = Vec::new();
            let active = Arc::new(AtomicUsize::new(0));
            let most = Arc::new(AtomicUsize::new(0));
            let clock = rt.clone();
            let reason = periodic(rt.clone(), period, mode.ticks(), &token, |tick| {
                let now = clock.now();
                runs.push((nanos(tick - t0), nanos(now - t0)));
                let n = runs.len();
                if n > durations.len() {
                    stop.cancel("enough");
                }
                let until = durations.get(n - 1).map(|d| now + Duration::from_nanos(*d));
                let (clock, active, most) = (clock.clone(), active.clone(), most.clone());
                async move {
                    let running = active.fetch_add(1, SeqCst) + 1;
                    most.fetch_max(running, SeqCst);
                    if let Some(until) = until {
                        clock.sleep_until(until).await;
                    }
                    active.fetch_sub(1, SeqCst);
                }
            })
            .unwrap()
            .await;
            assert_eq!(reason.as_str(), "enough");
            assert!(most.load(SeqCst) <= 1, "runs overlapped");
            let starts: Vec<u64> = runs.iter().take(model.len()).map(|r| r.1).collect();
            let expected: Vec<u64> = model.iter().map(|m| m.1).collect();
            assert_eq!(starts, expected, "{mode:?} seed {seed}: run start instants");
            for (i, ((tick, start), (m_tick, m_start, late))) in runs.iter().zip(&model).enumerate()
            {
                if mode != Mode::Delay || !late {
                    assert_eq!(
                        (tick, start),
                        (m_tick, m_start),
                        "{mode:?} seed {seed}: run {i} (late: {late})"
                    );
                }
            }
        }
    }
}

#[test]
fn periodic_follows_the_documented_schedule_in_every_missed_tick_mode() {
    on_every_runtime!(periodic_matches_model);
}

// Docs (`periodic`): "`Burst`: one run per overrun tick, back to back, until the schedule is
// caught up." One run overruns 20,000 periods: exactly 20,000 late runs follow at once, each
// for its own tick, then the schedule goes on.
async fn burst_after_long_stall<R: Runtime>(rt: Clocked<R>) {
    let period = ms(1);
    let overrun: u64 = 20_000;
    let token = CancellationToken::new();
    let stop = token.clone();
    let t0 = rt.now();
    let clock = rt.clone();
    let mut runs: Vec<(Duration, Duration)> = Vec::new();
    let total = usize::try_from(overrun).unwrap() + 3;
    let stalled_until = t0 + ms(1) + ms(overrun) + us(500);
    let reason = periodic(rt.clone(), period, MissedTicks::Burst, &token, |tick| {
        runs.push((tick - t0, clock.now() - t0));
        let n = runs.len();
        if n == total {
            stop.cancel("caught up");
        }
        let clock = clock.clone();
        async move {
            if n == 1 {
                clock.sleep_until(stalled_until).await;
            }
        }
    })
    .unwrap()
    .await;
    assert_eq!(reason.as_str(), "caught up");
    assert_eq!(runs.len(), total);
    assert_eq!(runs[0], (ms(1), ms(1)));
    let stalled = stalled_until - t0;
    for (k, run) in runs[1..=usize::try_from(overrun).unwrap()]
        .iter()
        .enumerate()
    {
        let tick = ms(2 + u64::try_from(k).unwrap());
        assert_eq!(*run, (tick, stalled), "late run {k}");
    }
    assert_eq!(runs[total - 2], (ms(overrun + 2), ms(overrun + 2)));
    assert_eq!(runs[total - 1], (ms(overrun + 3), ms(overrun + 3)));
}

#[test]
fn periodic_burst_runs_once_per_missed_tick_after_a_stall_of_twenty_thousand_periods() {
    on_every_runtime!(burst_after_long_stall);
}

/// A run that never finishes and wakes itself at once every poll; it cancels `token` at its
/// `cancel_at`-th poll.
struct Spinner {
    polls: Arc<AtomicUsize>,
    token: CancellationToken,
    cancel_at: usize,
    _gone: DropFlag,
}

impl Future for Spinner {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let n = self.polls.fetch_add(1, SeqCst) + 1;
        if n == self.cancel_at {
            self.token.cancel("spun enough");
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

// Docs (`periodic`): "The token is checked before every poll of a run (see
// `CancellationToken::run_until_cancelled`), so a run is stopped mid-way"; (`run_until_
// cancelled`): "it is never polled again after the cancellation is seen."
async fn run_stopped_mid_way<R: Runtime>(rt: Clocked<R>) {
    let token = CancellationToken::new();
    let polls = Arc::new(AtomicUsize::new(0));
    let gone = flag();
    let t0 = rt.now();
    let mut calls = 0;
    let reason = periodic(rt.clone(), ms(10), MissedTicks::Skip, &token, |_tick| {
        calls += 1;
        Spinner {
            polls: polls.clone(),
            token: token.clone(),
            cancel_at: 5,
            _gone: DropFlag(gone.clone()),
        }
    })
    .unwrap()
    .await;
    assert_eq!(reason.as_str(), "spun enough");
    assert_eq!(calls, 1);
    assert_eq!(polls.load(SeqCst), 5, "polled once more after it cancelled");
    assert!(
        gone.load(SeqCst),
        "the run was dropped when the periodic work returned"
    );
    assert_eq!(rt.now() - t0, ms(10));
}

#[test]
fn periodic_never_polls_a_run_again_once_its_token_is_cancelled() {
    on_every_runtime!(run_stopped_mid_way);
}

// Docs (`periodic`): "Runs `work(tick)` every `period` until `token` is cancelled; returns the
// reason." A cancel between two runs of an hourly job returns at the cancel, not at the next
// tick; a token cancelled before the first poll runs nothing.
async fn cancel_between_runs<R: Runtime>(rt: Clocked<R>) {
    let token = CancellationToken::new();
    let t0 = rt.now();
    let canceller = {
        let (rt2, token) = (rt.clone(), token.clone());
        rt.spawn(async move {
            rt2.sleep_until(t0 + HOUR + 10 * 60 * secs(1)).await;
            token.cancel("between runs");
        })
    };
    let mut calls = Vec::new();
    let reason = periodic(rt.clone(), HOUR, MissedTicks::Skip, &token, |tick| {
        calls.push(tick - t0);
        async {}
    })
    .unwrap()
    .await;
    canceller.await.unwrap();
    assert_eq!(reason.as_str(), "between runs");
    assert_eq!(calls, [HOUR]);
    assert_eq!(rt.now() - t0, HOUR + 10 * 60 * secs(1));

    let token = CancellationToken::new();
    token.cancel("before");
    let t1 = rt.now();
    let mut called = false;
    let reason = periodic(rt.clone(), DAY, MissedTicks::Burst, &token, |_| {
        called = true;
        async {}
    })
    .unwrap()
    .await;
    assert_eq!(reason.as_str(), "before");
    assert!(!called);
    assert_eq!(rt.now(), t1, "a cancelled token does not wait a period");
}

#[test]
fn periodic_returns_at_the_cancel_not_at_the_next_tick() {
    on_every_runtime!(cancel_between_runs);
}

// Docs (`periodic`): "**Cancel safety:** dropping the future drops the run in progress."
async fn dropped_mid_run<R: Runtime>(rt: Clocked<R>) {
    let token = CancellationToken::new();
    let gone = flag();
    let after = Arc::new(AtomicBool::new(false));
    let clock = rt.clone();
    let work = periodic(rt.clone(), ms(10), MissedTicks::Skip, &token, |_| {
        let (clock, gone, after) = (clock.clone(), DropFlag(gone.clone()), after.clone());
        async move {
            let _gone = gone;
            clock.sleep(secs(60)).await;
            after.store(true, SeqCst);
        }
    })
    .unwrap();
    let timed_out = matches!(
        select(Box::pin(work), Box::pin(rt.sleep(secs(1)))).await,
        Either::Right(_)
    );
    assert!(timed_out);
    assert!(
        gone.load(SeqCst),
        "the run in progress was dropped with the future"
    );
    rt.sleep(secs(120)).await;
    assert!(!after.load(SeqCst), "the run went on after being dropped");
    assert!(!token.is_cancelled());
}

#[test]
fn dropping_a_periodic_future_drops_its_run_in_progress() {
    on_every_runtime!(dropped_mid_run);
}

// Docs (`periodic`) promise no panic catching, so a run's panic is the periodic future's
// panic: it must surface to whoever runs it (never be swallowed while later ticks run).
async fn panicking_run<R: Runtime>(rt: Clocked<R>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let rt2 = rt.clone();
    let handle = rt.spawn(async move {
        let token = CancellationToken::new();
        periodic(rt2, ms(10), MissedTicks::Skip, &token, move |_| {
            let n = counted.fetch_add(1, SeqCst) + 1;
            async move {
                if n == 3 {
                    panic!("run 3 failed");
                }
            }
        })
        .unwrap()
        .await
    });
    match handle.await {
        Err(JoinError::Panicked(panic)) => assert_eq!(panic.message(), Some("run 3 failed")),
        other => panic!("expected the run's panic, got {other:?}"),
    }
    assert_eq!(calls.load(SeqCst), 3, "no run after the one that panicked");
}

#[test]
fn a_panicking_periodic_run_surfaces_as_the_tasks_panic_and_stops_the_schedule() {
    on_every_runtime!(panicking_run);
}

// Docs (`HealthChecker`): "the first probe starts as soon as the checker's future is first
// polled ...; later probes start at `first + k × period`. Probes never overlap: a probe that
// overruns ticks (it can, when the timeout is longer than the period) is followed at once by
// one late probe, and the other overrun ticks are dropped, for an overrun of any length. Each
// finished probe publishes its verdict with the instant it finished."
async fn probe_longer_than_period<R: Runtime>(rt: Clocked<R>) {
    let token = CancellationToken::new();
    let t0 = rt.now();
    let starts = log();
    let gone = flag();
    let (probe_starts, clock, probe_gone) = (starts.clone(), rt.clone(), gone.clone());
    let (health, checker) = HealthChecker::builder()
        .period(secs(1))
        .timeout(ms(4_500))
        .runtime(rt.clone())
        .start(&token, move || {
            let n = {
                let mut starts = probe_starts.lock().unwrap();
                starts.push(clock.now() - t0);
                starts.len()
            };
            let gone = probe_gone.clone();
            async move {
                match n {
                    1 => {
                        let _gone = DropFlag(gone);
                        std::future::pending::<()>().await;
                        Ok(())
                    }
                    2 => Err("down".to_owned()),
                    _ => Ok(()),
                }
            }
        })
        .unwrap();
    let running = rt.spawn(checker);
    rt.sleep_until(t0 + ms(4_400)).await;
    assert_eq!(health.latest(), (Health::Unknown, None));
    rt.sleep_until(t0 + ms(4_700)).await;
    assert!(gone.load(SeqCst), "the timed-out probe was dropped");
    assert_eq!(
        health.latest(),
        (Health::Unhealthy("down".to_owned()), Some(t0 + ms(4_500)))
    );
    rt.sleep_until(t0 + ms(5_500)).await;
    assert_eq!(health.latest(), (Health::Healthy, Some(t0 + secs(5))));
    rt.sleep_until(t0 + ms(6_500)).await;
    token.cancel("bye");
    assert_eq!(running.await.unwrap().as_str(), "bye");
    assert_eq!(
        taken(&starts),
        [Duration::ZERO, ms(4_500), secs(5), secs(6)],
        "one late probe at the timeout, then the schedule"
    );
}

#[test]
fn a_health_probe_that_times_out_past_several_periods_is_followed_by_one_late_probe() {
    on_every_runtime!(probe_longer_than_period);
}

// ---------------------------------------------------------------------------------------
// Blocking offload (real threads: only timing-independent assertions)
// ---------------------------------------------------------------------------------------

// Docs (`spawn_blocking_cancellable`): the task resolves to the work's result; (`cancel`):
// "Asks the work to stop (it sees the flag at its next check)". A cancelled work still hands
// back what it returned, a panic comes back as a value, and no result is lost or mixed up.
async fn blocking_results<R: Runtime>(rt: Clocked<R>) {
    let mut rng = SplitMix64::new(99);
    let mut tasks = Vec::new();
    for i in 0..24_u64 {
        let kind = rng.below_or_equal(2);
        let task = match kind {
            0 => spawn_blocking_cancellable(&rt, move |_flag| i * i),
            1 => spawn_blocking_cancellable(&rt, move |_flag| -> u64 { panic!("boom") }),
            _ => spawn_blocking_cancellable(&rt, move |flag| {
                while !flag.is_cancelled() {
                    std::thread::yield_now();
                }
                i + 1_000
            }),
        };
        tasks.push((i, kind, task));
    }
    for (_, kind, task) in &tasks {
        if *kind == 2 || rng.below_or_equal(1) == 0 {
            task.cancel();
            task.cancel();
        }
    }
    for (i, kind, task) in tasks {
        match (kind, task.await) {
            (0, Ok(v)) => assert_eq!(v, i * i),
            (1, Err(JoinError::Panicked(p))) => assert_eq!(p.message(), Some("boom")),
            (2, Ok(v)) => assert_eq!(v, i + 1_000),
            (kind, other) => panic!("task {i} (kind {kind}): {other:?}"),
        }
    }
}

#[test]
fn cancellable_blocking_work_returns_every_result_and_panic_to_its_own_task() {
    on_every_runtime!(blocking_results);
}

// Docs (`CancelFlag`): "A flag blocking work polls to learn that nobody wants its result any
// more": one task's cancel is not another's.
async fn flags_are_per_task<R: Runtime>(rt: Clocked<R>) {
    let (go, wait) = std::sync::mpsc::channel::<()>();
    let other = spawn_blocking_cancellable(&rt, move |flag| {
        wait.recv().unwrap();
        flag.is_cancelled()
    });
    let cancelled = spawn_blocking_cancellable(&rt, |flag| {
        while !flag.is_cancelled() {
            std::thread::yield_now();
        }
        7_u8
    });
    cancelled.cancel();
    assert_eq!(cancelled.await.unwrap(), 7);
    go.send(()).unwrap();
    assert!(!other.await.unwrap(), "a sibling's cancel raised this flag");
}

#[test]
fn cancelling_one_blocking_task_leaves_the_flags_of_the_others_down() {
    on_every_runtime!(flags_are_per_task);
}

// Docs (`BlockingTask`): "Dropping the handle (e.g. because the awaiting future was itself
// cancelled or timed out) raises the flag too, so abandoned work stops at its next check".
async fn abandoned_blocking_work<R: Runtime>(rt: Clocked<R>) {
    let (saw, seen) = std::sync::mpsc::channel();
    let task = spawn_blocking_cancellable(&rt, move |flag| {
        while !flag.is_cancelled() {
            std::thread::yield_now();
        }
        saw.send(()).unwrap();
        1_u8
    });
    // The awaiting future gives up after one poll (a timer would not do: virtual time does
    // not need to move while a blocking thread runs).
    let mut task = task;
    assert!(futures_util::FutureExt::now_or_never(&mut task).is_none());
    drop(task);
    // A safety net, not a timing assertion: the flag is up, so the work ends.
    seen.recv_timeout(Duration::from_secs(60))
        .expect("the abandoned work saw its flag");
}

#[test]
fn blocking_work_whose_awaiter_gives_up_after_one_poll_sees_its_flag_on_every_runtime() {
    on_every_runtime!(abandoned_blocking_work);
}

// ---------------------------------------------------------------------------------------
// Scopes nested deep
// ---------------------------------------------------------------------------------------

const DEPTH: usize = 12;

#[derive(Debug, Clone)]
struct LevelReport {
    depth: usize,
    reason: Option<String>,
    balanced: bool,
    aborted: u64,
    endings: Vec<Ending>,
    leaf_saw: Option<String>,
    ended: Duration,
}

type Level = Pin<Box<dyn Future<Output = Result<String, String>> + Send>>;

/// One level: a scope (a child of `parent`'s token) with a cooperative leaf that returns the
/// reason it saw, and the next level (or, at the bottom, a leaf deaf to cancellation).
fn level<R: Runtime>(
    rt: Clocked<R>,
    t0: Instant,
    depth: usize,
    parent: CancellationToken,
    reports: Log<LevelReport>,
) -> Level {
    Box::pin(async move {
        let grace = if depth == DEPTH { secs(1) } else { secs(10) };
        let scope = Scope::builder()
            .runtime(rt.clone())
            .parent(&parent)
            .grace(grace)
            .build::<String, String>()
            .unwrap();
        let token = scope.token();
        scope
            .spawn(async move { Ok(token.cancelled().await.as_str().to_owned()) })
            .await
            .unwrap();
        if depth == DEPTH {
            scope
                .spawn(std::future::pending::<Result<String, String>>())
                .await
                .unwrap();
        } else {
            let next = level(rt.clone(), t0, depth + 1, scope.token(), reports.clone());
            scope.spawn(next).await.unwrap();
        }
        let report = scope.join().await;
        let leaf_saw = report
            .children
            .iter()
            .find(|c| c.id.index() == 0)
            .and_then(|c| match &c.exit {
                Exit::Ok(seen) => Some(seen.clone()),
                _ => None,
            });
        reports.lock().unwrap().push(LevelReport {
            depth,
            reason: report.cancel_reason.as_ref().map(|r| r.as_str().to_owned()),
            balanced: report.is_balanced(),
            aborted: report.aborted,
            endings: report.children.iter().map(|c| c.ending).collect(),
            leaf_saw,
            ended: rt.now() - t0,
        });
        Ok(format!("level {depth}"))
    })
}

// Docs (`ScopeBuilder::parent`): "cancelling `parent` cancels the scope"; (`ScopeReport::
// cancel_reason`): "Why the scope was cancelled"; (`CancellationToken`): "every child token
// sees the cancellation and the same reason"; (`Scope::join`): "If the scope is (or becomes)
// cancelled, children still running after the grace period are aborted and reported so."
async fn deep_scope_shutdown<R: Runtime>(rt: Clocked<R>) {
    let t0 = rt.now();
    let reports = log();
    let root = Scope::builder()
        .runtime(rt.clone())
        .grace(secs(10))
        .build::<String, String>()
        .unwrap();
    root.spawn(level(rt.clone(), t0, 1, root.token(), reports.clone()))
        .await
        .unwrap();
    rt.sleep(ms(50)).await;
    let report = root.shutdown("deploy: drain", secs(10)).await;
    assert_eq!(
        rt.now() - t0,
        ms(50) + secs(1),
        "only the deepest grace ran out"
    );
    assert_eq!(
        report.cancel_reason.as_ref().unwrap().as_str(),
        "deploy: drain"
    );
    assert!(report.is_balanced());
    assert_eq!((report.succeeded, report.aborted), (1, 0));
    let mut levels = taken(&reports);
    levels.sort_by_key(|l| l.depth);
    assert_eq!(levels.len(), DEPTH);
    for l in &levels {
        assert_eq!(l.reason.as_deref(), Some("deploy: drain"), "{l:?}");
        assert_eq!(l.leaf_saw.as_deref(), Some("deploy: drain"), "{l:?}");
        assert!(l.balanced, "{l:?}");
        assert_eq!(l.ended, ms(50) + secs(1), "{l:?}");
        if l.depth == DEPTH {
            assert_eq!(l.aborted, 1, "{l:?}");
            assert!(
                l.endings.contains(&Ending::Aborted { took: secs(1) }),
                "{l:?}"
            );
        } else {
            assert_eq!(l.aborted, 0, "{l:?}");
            assert!(
                l.endings
                    .iter()
                    .all(|e| matches!(e, Ending::Stopped { .. })),
                "{l:?}"
            );
        }
    }
}

#[test]
fn a_shutdown_reason_reaches_every_level_of_a_twelve_deep_scope_tree_with_per_level_grace() {
    on_every_runtime!(deep_scope_shutdown);
}

// Docs (`CancellationToken`): "cancelling a child leaves the parent alone. ... The first
// cancellation wins"; (`Scope::cancel`): "new spawns are refused"; (`ScopeReport::
// cancel_reason`).
async fn mid_chain_cancel<R: Runtime>(rt: Clocked<R>) {
    let mut scopes: Vec<Scope<u8, u8, Clocked<R>>> = Vec::new();
    let root = Scope::builder()
        .runtime(rt.clone())
        .build::<u8, u8>()
        .unwrap();
    scopes.push(root);
    for _ in 1..=DEPTH {
        let parent = scopes.last().unwrap().token();
        scopes.push(
            Scope::builder()
                .runtime(rt.clone())
                .parent(&parent)
                .build::<u8, u8>()
                .unwrap(),
        );
    }
    scopes[5].cancel("mid");
    for (i, scope) in scopes.iter().enumerate() {
        let reason = scope.token().reason().map(|r| r.as_str().to_owned());
        let expected = (i >= 5).then(|| "mid".to_owned());
        assert_eq!(reason, expected, "level {i}");
        let refused = scope.try_spawn(async { Ok(1) }).is_err();
        assert_eq!(refused, i >= 5, "level {i}");
    }
    scopes[0].cancel("root");
    let mut reasons = Vec::new();
    for scope in scopes.into_iter().rev() {
        let report = scope.join().await;
        assert!(report.is_balanced());
        reasons.push(report.cancel_reason.map(|r| r.as_str().to_owned()));
    }
    reasons.reverse();
    for (i, reason) in reasons.iter().enumerate() {
        let expected = if i >= 5 { "mid" } else { "root" };
        assert_eq!(reason.as_deref(), Some(expected), "level {i}");
    }
}

#[test]
fn a_cancel_in_the_middle_of_a_deep_scope_chain_reaches_down_not_up_and_keeps_its_reason() {
    on_every_runtime!(mid_chain_cancel);
}

type LocalLevel = Pin<Box<dyn Future<Output = Result<String, String>>>>;

/// Each local level's (depth, cancel reason, aborted, balanced).
type LocalReports = Rc<RefCell<Vec<(usize, Option<String>, u64, bool)>>>;

fn local_level<R: Runtime>(
    rt: Clocked<R>,
    depth: usize,
    parent: CancellationToken,
    reports: LocalReports,
) -> LocalLevel {
    Box::pin(async move {
        let grace = if depth == DEPTH { secs(1) } else { secs(10) };
        let mut scope = Scope::builder()
            .runtime(rt.clone())
            .parent(&parent)
            .grace(grace)
            .build_local::<String, String>()
            .unwrap();
        let token = scope.token();
        let not_send = Rc::new(depth);
        scope
            .spawn(async move {
                let reason = token.cancelled().await;
                Ok(format!("{} at {}", reason.as_str(), not_send))
            })
            .await
            .unwrap();
        if depth == DEPTH {
            scope
                .spawn(std::future::pending::<Result<String, String>>())
                .await
                .unwrap();
        } else {
            let next = local_level(rt.clone(), depth + 1, scope.token(), reports.clone());
            scope.spawn(next).await.unwrap();
        }
        let report = scope.join().await;
        reports.borrow_mut().push((
            depth,
            report.cancel_reason.as_ref().map(|r| r.as_str().to_owned()),
            report.aborted,
            report.is_balanced(),
        ));
        Ok(String::new())
    })
}

// Docs (`LocalScope`): "same limit, failure policy, reports, join and two-phase shutdown, on
// one thread"; nested twelve deep through parent tokens.
async fn deep_local_scopes<R: Runtime>(rt: Clocked<R>) {
    let t0 = rt.now();
    let reports = Rc::new(RefCell::new(Vec::new()));
    let mut root = Scope::builder()
        .runtime(rt.clone())
        .build_local::<String, String>()
        .unwrap();
    let first = local_level(rt.clone(), 1, root.token(), reports.clone());
    root.spawn(first).await.unwrap();
    // Children of a local scope run only while its owner drives it: build the tree first
    // (`next` is cancel-safe).
    let ended_early = matches!(
        select(Box::pin(root.next()), Box::pin(rt.sleep(ms(50)))).await,
        Either::Left(_)
    );
    assert!(!ended_early, "nothing ends on its own");
    let report = root.shutdown("local drain", secs(10)).await;
    assert_eq!(rt.now() - t0, ms(50) + secs(1));
    assert_eq!(
        report.cancel_reason.as_ref().unwrap().as_str(),
        "local drain"
    );
    assert!(report.is_balanced());
    let mut levels = reports.borrow().clone();
    levels.sort_by_key(|l| l.0);
    assert_eq!(levels.len(), DEPTH);
    for (depth, reason, aborted, balanced) in levels {
        assert_eq!(reason.as_deref(), Some("local drain"), "level {depth}");
        assert_eq!(aborted, u64::from(depth == DEPTH), "level {depth}");
        assert!(balanced, "level {depth}");
    }
}

#[test]
fn a_twelve_deep_local_scope_tree_shuts_down_with_one_reason() {
    on_every_runtime!(deep_local_scopes);
}

// Docs (`Scope`): "Dropping a scope without closing it cancels its token and aborts every
// child." Each aborted child drops the scope it owns, down twelve levels.
async fn dropped_root_scope<R: Runtime>(rt: Clocked<R>) {
    let gone: Vec<_> = (0..=DEPTH).map(|_| flag()).collect();
    let tokens = log();
    fn nest<R: Runtime>(
        rt: Clocked<R>,
        depth: usize,
        parent: CancellationToken,
        gone: Vec<Arc<AtomicBool>>,
        tokens: Log<CancellationToken>,
    ) -> Pin<Box<dyn Future<Output = Result<(), ()>> + Send>> {
        let flag = DropFlag(gone[depth].clone());
        Box::pin(async move {
            let _gone = flag;
            let scope = Scope::builder()
                .runtime(rt.clone())
                .parent(&parent)
                .build::<(), ()>()
                .unwrap();
            tokens.lock().unwrap().push(scope.token());
            if depth < DEPTH {
                let next = nest(rt.clone(), depth + 1, scope.token(), gone, tokens);
                scope.spawn(next).await.unwrap();
            }
            scope.join().await;
            std::future::pending().await
        })
    }
    let root = Scope::builder()
        .runtime(rt.clone())
        .build::<(), ()>()
        .unwrap();
    let root_token = root.token();
    root.spawn(nest(
        rt.clone(),
        0,
        root.token(),
        gone.clone(),
        tokens.clone(),
    ))
    .await
    .unwrap();
    assert!(eventually(&rt, 100, || tokens.lock().unwrap().len() == DEPTH + 1).await);
    drop(root);
    assert!(root_token.is_cancelled());
    assert!(
        eventually(&rt, 100, || gone.iter().all(|g| g.load(SeqCst))).await,
        "every level was aborted"
    );
    assert!(taken(&tokens).iter().all(CancellationToken::is_cancelled));
}

#[test]
fn dropping_the_root_of_a_deep_scope_tree_aborts_every_level() {
    on_every_runtime!(dropped_root_scope);
}

// ---------------------------------------------------------------------------------------
// Supervisors
// ---------------------------------------------------------------------------------------

fn fixed_backoff(delay: Duration) -> Backoff {
    Backoff::constant(delay)
        .jitter(Jitter::None)
        .max_delay(delay)
        .build()
        .unwrap()
}

/// OTP intensity over exit instants (ns): for each exit the restarts within `(e - period,
/// e]` with this one included, until one exceeds `max`: (counts, index of the exit that
/// escalated).
fn intensity_model(exits: &[u64], max: u32, period: u64) -> (Vec<u32>, Option<usize>) {
    let mut restarts: Vec<u64> = Vec::new();
    let mut counts = Vec::new();
    for (i, &e) in exits.iter().enumerate() {
        let within = restarts.iter().filter(|&&r| r + period > e).count() + 1;
        let within = u32::try_from(within).unwrap();
        if within > max {
            return (counts, Some(i));
        }
        counts.push(within);
        restarts.push(e);
    }
    (counts, None)
}

type Events = Log<(Duration, SupervisorEvent)>;

fn recorder<R: Runtime>(
    rt: &Clocked<R>,
    t0: Instant,
    events: &Events,
) -> impl Fn(&SupervisorEvent) + Send + Sync + 'static + use<R> {
    let (rt, events) = (rt.clone(), events.clone());
    move |event: &SupervisorEvent| events.lock().unwrap().push((rt.now() - t0, event.clone()))
}

// Docs (`SupervisorBuilder::intensity`): "At most `max_restarts` restarts within any
// `period` ...; the next one fails the supervisor"; (`SupervisorEvent::Restarting`):
// "Restarts within the intensity period, this one included." Seeded run lengths over hours
// and days of virtual time, against a sliding-window model (no exit within 25 ms of a window
// edge, so exit-time or restart-time windows agree).
async fn intensity_against_model<R: Runtime>(rt: Clocked<R>) {
    const DELAY: u64 = 10_000_000;
    const PERIOD: u64 = 5_000_000_000;
    const MARGIN: u64 = 25_000_000;
    for seed in [5_u64, 6, 7, 8] {
        let mut rng = SplitMix64::new(seed);
        let mut durations: Vec<u64> = Vec::new();
        let mut exits: Vec<u64> = Vec::new();
        while durations.len() < 400 {
            let mut d = match rng.below_or_equal(99) {
                0..=2 => rng.between(3_600, 3 * 86_400) * 1_000_000_000,
                3..=14 => rng.between(20, 400) * 1_000_000,
                _ => rng.between(1_200, 4_000) * 1_000_000,
            } + rng.between(1, 999_999);
            let base = exits.last().map_or(0, |e| e + DELAY);
            while exits
                .iter()
                .any(|&r| (base + d).abs_diff(r + PERIOD) < MARGIN)
            {
                d += 2 * MARGIN;
            }
            durations.push(d);
            exits.push(base + d);
        }
        let (counts, escalated) = intensity_model(&exits, 3, PERIOD);
        let t0 = rt.now();
        let events = log();
        let stop = CancellationToken::new();
        let runs = Arc::new(AtomicUsize::new(0));
        let (factory_runs, clock, durations2, stop2) =
            (runs.clone(), rt.clone(), durations.clone(), stop.clone());
        let supervisor = SupervisorBuilder::new()
            .runtime(rt.clone())
            .intensity(3, Duration::from_nanos(PERIOD))
            .backoff(fixed_backoff(Duration::from_nanos(DELAY)))
            .on_event(recorder(&rt, t0, &events))
            .child(ChildSpec::new("flaky", move |token: CancellationToken| {
                let n = factory_runs.fetch_add(1, SeqCst);
                let run = durations2.get(n).copied();
                let (clock, stop) = (clock.clone(), stop2.clone());
                async move {
                    match run {
                        Some(d) => {
                            clock
                                .sleep_until(clock.now() + Duration::from_nanos(d))
                                .await;
                            Err("crashed")
                        }
                        None => {
                            stop.cancel("enough");
                            token.cancelled().await;
                            Ok(())
                        }
                    }
                }
            }))
            .build()
            .unwrap();
        let outcome = supervisor.run(stop).await;
        let seen: Vec<u32> = taken(&events)
            .iter()
            .filter_map(|(_, e)| match e {
                SupervisorEvent::Restarting {
                    restarts_in_period, ..
                } => Some(*restarts_in_period),
                _ => None,
            })
            .collect();
        assert_eq!(seen, counts, "seed {seed}: restarts within the period");
        match (escalated, outcome) {
            (Some(i), Err(escalation)) => {
                assert_eq!(&*escalation.child, "flaky");
                assert_eq!(escalation.max_restarts, 3);
                assert_eq!(escalation.report.restarts, u64::try_from(i).unwrap());
                assert_eq!(runs.load(SeqCst), i + 1, "seed {seed}");
                assert_eq!(rt.now() - t0, Duration::from_nanos(exits[i]), "seed {seed}");
            }
            (None, Ok(report)) => {
                assert_eq!(report.ended, Ended::Stopped);
                assert_eq!(report.restarts, u64::try_from(durations.len()).unwrap());
            }
            (expected, outcome) => {
                panic!("seed {seed}: model says {expected:?}, supervisor {outcome:?}")
            }
        }
    }
}

#[test]
fn supervisor_restart_intensity_matches_a_sliding_window_over_days_of_virtual_time() {
    on_every_runtime!(intensity_against_model);
}

// Docs (`SupervisorBuilder::intensity`): "At most `max_restarts` restarts within any
// `period`": bursts of exactly three restarts, each followed by a quiet spell longer than the
// period, for 40 minutes of virtual time, never escalate.
async fn at_the_limit_for_hours<R: Runtime>(rt: Clocked<R>) {
    let t0 = rt.now();
    let events = log();
    let stop = CancellationToken::new();
    let runs = Arc::new(AtomicUsize::new(0));
    let (counter, clock, stop2) = (runs.clone(), rt.clone(), stop.clone());
    let pattern = [secs(6), ms(10), ms(10)];
    let bursts = 400;
    let supervisor = SupervisorBuilder::new()
        .runtime(rt.clone())
        .intensity(3, secs(5))
        .backoff(fixed_backoff(ms(10)))
        .on_event(recorder(&rt, t0, &events))
        .child(ChildSpec::new("bursty", move |token: CancellationToken| {
            let n = counter.fetch_add(1, SeqCst);
            let (clock, stop) = (clock.clone(), stop2.clone());
            async move {
                if n == bursts * pattern.len() {
                    stop.cancel("enough");
                    token.cancelled().await;
                    return Ok(());
                }
                clock.sleep(pattern[n % pattern.len()]).await;
                Err("crashed")
            }
        }))
        .build()
        .unwrap();
    let report = supervisor
        .run(stop)
        .await
        .expect("never more than 3 in 5 s");
    assert_eq!(report.ended, Ended::Stopped);
    assert_eq!(
        report.restarts,
        u64::try_from(bursts * pattern.len()).unwrap()
    );
    let most = taken(&events)
        .iter()
        .filter_map(|(_, e)| match e {
            SupervisorEvent::Restarting {
                restarts_in_period, ..
            } => Some(*restarts_in_period),
            _ => None,
        })
        .max();
    assert_eq!(most, Some(3));
    assert!(rt.now() - t0 > 40 * 60 * secs(1));
}

#[test]
fn supervisor_restarting_exactly_at_its_intensity_for_hours_never_escalates() {
    on_every_runtime!(at_the_limit_for_hours);
}

// Docs (`Supervisor::run`): "supervises them until `stop` is cancelled (then stops them in
// reverse start order and returns the report)"; (`SupervisorReport::stopped`): "The children
// it stopped at the end". A stop during a child's restart backoff returns at once, and the
// child is never started again.
async fn stop_during_backoff<R: Runtime>(rt: Clocked<R>) {
    let t0 = rt.now();
    let events = log();
    let stop = CancellationToken::new();
    let starts = Arc::new(AtomicUsize::new(0));
    let counter = starts.clone();
    let supervisor = SupervisorBuilder::new()
        .runtime(rt.clone())
        .backoff(fixed_backoff(HOUR))
        .on_event(recorder(&rt, t0, &events))
        .child(ChildSpec::new(
            "steady",
            |token: CancellationToken| async move {
                token.cancelled().await;
                Ok::<(), &str>(())
            },
        ))
        .child(ChildSpec::new("flaky", move |_token| {
            counter.fetch_add(1, SeqCst);
            async { Err::<(), _>("crashed") }
        }))
        .build()
        .unwrap();
    let stopper = {
        let (rt2, stop) = (rt.clone(), stop.clone());
        rt.spawn(async move {
            rt2.sleep_until(t0 + 30 * 60 * secs(1)).await;
            stop.cancel("deploy");
        })
    };
    let report = supervisor.run(stop).await.unwrap();
    stopper.await.unwrap();
    assert_eq!(
        rt.now() - t0,
        30 * 60 * secs(1),
        "the pending restart is not awaited"
    );
    rt.sleep(2 * HOUR).await;
    assert_eq!(starts.load(SeqCst), 1, "restarted after the stop");
    assert_eq!(report.ended, Ended::Stopped);
    let stopped: Vec<String> = report.stopped.iter().map(|c| c.name.to_string()).collect();
    assert_eq!(stopped, ["steady"]);
    assert!(
        !taken(&events)
            .iter()
            .any(|(_, e)| matches!(e, SupervisorEvent::Started { run: 2, .. })),
        "{:?}",
        taken(&events)
    );
}

#[test]
fn a_supervisor_stopped_during_a_restart_backoff_returns_at_once_and_never_restarts() {
    on_every_runtime!(stop_during_backoff);
}

// Docs (`Strategy::OneForAll`): "Every child is stopped (in reverse start order) and all are
// restarted in order"; (`SupervisorEvent::Stopped`): "its token cancelled, then its end
// awaited within its shutdown timeout (it is aborted when the timeout runs out)".
async fn one_for_all_reverse_stop<R: Runtime>(rt: Clocked<R>) {
    let t0 = rt.now();
    let events = log();
    let seen = log();
    let stop = CancellationToken::new();
    let runs = Arc::new(AtomicUsize::new(0));
    let coop = |name: &'static str, after: Option<Duration>, timeout: Duration| {
        let (seen, clock) = (seen.clone(), rt.clone());
        ChildSpec::new(name, move |token: CancellationToken| {
            let (seen, clock) = (seen.clone(), clock.clone());
            async move {
                token.cancelled().await;
                seen.lock().unwrap().push((name, clock.now() - t0));
                match after {
                    Some(after) => clock.sleep(after).await,
                    None => std::future::pending().await,
                }
                Ok::<(), &str>(())
            }
        })
        .shutdown_timeout(timeout)
    };
    let (counter, clock, stop2) = (runs.clone(), rt.clone(), stop.clone());
    let supervisor = SupervisorBuilder::new()
        .runtime(rt.clone())
        .strategy(Strategy::OneForAll)
        .backoff(fixed_backoff(ms(10)))
        .on_event(recorder(&rt, t0, &events))
        .child(coop("a", Some(Duration::ZERO), secs(5)))
        .child(coop("b", Some(ms(100)), secs(5)))
        .child(ChildSpec::new("c", move |_token| {
            let n = counter.fetch_add(1, SeqCst);
            let (clock, stop) = (clock.clone(), stop2.clone());
            async move {
                if n == 0 {
                    clock.sleep(secs(1)).await;
                    Err("crashed")
                } else {
                    stop.cancel("done");
                    Ok(())
                }
            }
        }))
        .child(coop("d", None, ms(300)))
        .build()
        .unwrap();
    let _ = supervisor.run(stop).await;
    let seen = taken(&seen);
    assert_eq!(
        &seen[..3],
        [("d", secs(1)), ("b", ms(1_300)), ("a", ms(1_400))],
        "stopped in reverse start order, one after the other"
    );
    let order: Vec<String> = taken(&events)
        .into_iter()
        .filter_map(|(_, e)| match e {
            SupervisorEvent::Stopped { child, ending, .. } => {
                Some(format!("stop {child} {ending:?}"))
            }
            SupervisorEvent::Started { child, run } => Some(format!("start {child} {run}")),
            _ => None,
        })
        .take(11)
        .collect();
    assert_eq!(
        order,
        [
            "start a 1",
            "start b 1",
            "start c 1",
            "start d 1",
            "stop d Aborted { took: 300ms }",
            "stop b Stopped { took: 100ms }",
            "stop a Stopped { took: 0ns }",
            "start a 2",
            "start b 2",
            "start c 2",
            "start d 2",
        ]
    );
}

#[test]
fn one_for_all_stops_siblings_in_reverse_start_order_each_within_its_timeout_then_restarts_in_order()
 {
    on_every_runtime!(one_for_all_reverse_stop);
}

// Docs (`SupervisorBuilder::backoff`): "Restarts are bounded by the intensity, not the
// backoff: once a backoff's `max_attempts` (or `max_elapsed`) are spent, every later restart
// waits the last delay it gave (its cap, `max_delay`, if it gave none)". (`BackoffBuilder::
// max_attempts`): "Total attempts, the first call included": three attempts are two delays
// (10 ms, 20 ms), then 20 ms held. (Found starting the schedule over at 10 ms.)
async fn backoff_holds_its_last_delay_after_attempts<R: Runtime>(rt: Clocked<R>) {
    let t0 = rt.now();
    let events = log();
    let stop = CancellationToken::new();
    let runs = Arc::new(AtomicUsize::new(0));
    let (counter, stop2) = (runs.clone(), stop.clone());
    let backoff = Backoff::exponential(ms(10))
        .jitter(Jitter::None)
        .max_attempts(3)
        .max_delay(secs(1))
        .build()
        .unwrap();
    let supervisor = SupervisorBuilder::new()
        .runtime(rt.clone())
        .intensity(1_000, secs(1))
        .stable_after(DAY)
        .backoff(backoff)
        .on_event(recorder(&rt, t0, &events))
        .child(ChildSpec::new("flaky", move |token: CancellationToken| {
            let n = counter.fetch_add(1, SeqCst);
            let stop = stop2.clone();
            async move {
                if n == 6 {
                    stop.cancel("done");
                    token.cancelled().await;
                    return Ok(());
                }
                Err("crashed")
            }
        }))
        .build()
        .unwrap();
    let report = supervisor.run(stop).await.unwrap();
    assert_eq!(report.restarts, 6);
    let delays: Vec<Duration> = taken(&events)
        .iter()
        .filter_map(|(_, e)| match e {
            SupervisorEvent::Restarting { delay, .. } => Some(*delay),
            _ => None,
        })
        .collect();
    assert_eq!(delays, [ms(10), ms(20), ms(20), ms(20), ms(20), ms(20)]);
}

#[test]
fn supervisor_backoff_holds_its_last_delay_once_its_attempts_are_spent() {
    on_every_runtime!(backoff_holds_its_last_delay_after_attempts);
}

// ---------------------------------------------------------------------------------------
// Worker pools
// ---------------------------------------------------------------------------------------

fn sleeper_pool<R: Runtime>(
    rt: &Clocked<R>,
    workers: usize,
    queue: usize,
) -> WorkerPool<u64, u64, Clocked<R>> {
    let clock = rt.clone();
    WorkerPool::builder()
        .workers(workers)
        .queue(queue)
        .runtime(rt.clone())
        .start(move |ms_: u64| {
            let clock = clock.clone();
            async move {
                clock.sleep(ms(ms_)).await;
                ms_
            }
        })
        .unwrap()
}

// Docs (`WorkerPool::shutdown`): "lets the workers drain the queue for up to `drain`, then
// aborts what still runs and hands back the jobs never started." A drain that is done early
// returns early; one cut short aborts the running job and hands back the rest in submission
// order.
async fn drain_early_and_cut<R: Runtime>(rt: Clocked<R>) {
    let pool = sleeper_pool(&rt, 1, 20);
    let mut handles = Vec::new();
    for _ in 0..5 {
        handles.push(pool.submit(1_000).await.unwrap());
    }
    let t0 = rt.now();
    let report = pool.shutdown(secs(10)).await;
    assert_eq!(
        rt.now() - t0,
        secs(5),
        "returns once drained, not at the deadline"
    );
    assert_eq!(
        (report.submitted, report.completed, report.failed),
        (5, 5, 0)
    );
    assert!(report.handed_back.is_empty());
    for handle in handles {
        assert!(matches!(handle.await, Exit::Ok(1_000)));
    }

    let pool = sleeper_pool(&rt, 1, 20);
    let mut handles = Vec::new();
    for i in 0..10 {
        handles.push(pool.submit(1_000 + i).await.unwrap());
    }
    let t0 = rt.now();
    let report = pool.shutdown(ms(3_500)).await;
    assert!(rt.now() - t0 <= ms(3_500) + ms(1));
    assert_eq!(report.submitted, 10);
    assert_eq!(report.completed, 3);
    assert_eq!((report.failed, report.aborted), (1, 1));
    assert_eq!(
        report.handed_back,
        [1_004, 1_005, 1_006, 1_007, 1_008, 1_009]
    );
    let exits: Vec<String> = futures_util::future::join_all(handles)
        .await
        .into_iter()
        .map(|e| match e {
            Exit::Ok(v) => format!("ok {v}"),
            Exit::Aborted => "aborted".to_owned(),
            other => format!("{other:?}"),
        })
        .collect();
    let mut expected = vec!["ok 1000", "ok 1001", "ok 1002"];
    expected.extend(["aborted"; 7]);
    assert_eq!(exits, expected);
}

#[test]
fn pool_shutdown_returns_once_drained_and_a_cut_drain_accounts_for_every_job() {
    on_every_runtime!(drain_early_and_cut);
}

// Docs (`WorkerPool::shutdown`): "Stops accepting jobs"; (`Submitter`): "it sees
// `SubmitError::Closed` once the pool shuts down". Jobs that submit follow-up jobs while the
// pool drains get them back.
async fn follow_ups_during_drain<R: Runtime>(rt: Clocked<R>) {
    type Sub = Arc<Mutex<Option<Submitter<u64, u64>>>>;
    let submitter: Sub = Arc::new(Mutex::new(None));
    let refused = log();
    let accepted = log();
    let (sub, clock, refused2, accepted2) = (
        submitter.clone(),
        rt.clone(),
        refused.clone(),
        accepted.clone(),
    );
    let pool = WorkerPool::builder()
        .workers(1)
        .queue(10)
        .runtime(rt.clone())
        .start(move |n: u64| {
            let (sub, clock, refused, accepted) = (
                sub.clone(),
                clock.clone(),
                refused2.clone(),
                accepted2.clone(),
            );
            async move {
                clock.sleep(ms(10)).await;
                if n < 100 {
                    let sub = sub.lock().unwrap().clone().unwrap();
                    match sub.try_submit(n + 100) {
                        Ok(handle) => accepted.lock().unwrap().push((n + 100, handle)),
                        Err(SubmitError::Closed(job)) => refused.lock().unwrap().push(job),
                        Err(other) => panic!("{other}"),
                    }
                }
                n
            }
        })
        .unwrap();
    *submitter.lock().unwrap() = Some(pool.submitter());
    for n in 0..4 {
        pool.submit(n).await.unwrap();
    }
    let report = pool.shutdown(secs(1)).await;
    let accepted: Vec<u64> = accepted.lock().unwrap().iter().map(|(n, _)| *n).collect();
    assert_eq!(accepted, Vec::<u64>::new(), "a closed pool accepted jobs");
    assert_eq!(taken(&refused), [100, 101, 102, 103]);
    assert_eq!((report.submitted, report.completed), (4, 4));
}

#[test]
fn jobs_submitted_from_inside_a_draining_pool_are_refused_and_handed_back() {
    on_every_runtime!(follow_ups_during_drain);
}

// Docs (`PoolReport::handed_back`): "Jobs never started, handed back (dead letters) in
// submission order". Three producers interleave (seeded) while the one worker is stuck.
async fn handed_back_in_order<R: Runtime>(rt: Clocked<R>) {
    let pool = sleeper_pool(&rt, 1, 64);
    let producers = [pool.submitter(), pool.submitter(), pool.submitter()];
    let mut rng = SplitMix64::new(2024);
    let first = pool.try_submit(u64::MAX / 2).unwrap();
    rt.sleep(ms(1)).await; // the worker takes the first job
    let mut order = Vec::new();
    for n in 0..60_u64 {
        let who = usize::try_from(rng.below_or_equal(2)).unwrap();
        producers[who].try_submit(n).unwrap();
        order.push(n);
    }
    let report = pool.shutdown(ms(5)).await;
    assert_eq!(report.handed_back, order);
    assert_eq!(
        (report.submitted, report.aborted, report.failed),
        (61, 1, 1)
    );
    assert!(matches!(first.await, Exit::Aborted));
    for producer in &producers {
        assert!(matches!(
            producer.try_submit(7),
            Err(SubmitError::Closed(7))
        ));
    }
}

#[test]
fn pool_hands_back_unstarted_jobs_from_many_submitters_in_submission_order() {
    on_every_runtime!(handed_back_in_order);
}

// Docs (`WorkerPoolBuilder::job_timeout`): "a job that runs longer is dropped, and its handle
// reads `Exit::Err`"; (`PoolReport::aborted`): "Of `failed`, those aborted at the drain
// deadline (their handles read `Exit::Aborted`)". The drain deadline and the job timeout
// race both ways.
async fn timeout_vs_drain<R: Runtime>(rt: Clocked<R>) {
    for (drain, timed_out) in [(secs(2), true), (ms(300), false)] {
        let clock = rt.clone();
        let pool = WorkerPool::builder()
            .workers(2)
            .queue(4)
            .job_timeout(ms(500))
            .runtime(rt.clone())
            .start(move |n: u64| {
                let clock = clock.clone();
                async move {
                    clock.sleep(ms(n)).await;
                    n
                }
            })
            .unwrap();
        let quick = pool.submit(200).await.unwrap();
        let slow = pool.submit(10_000).await.unwrap();
        let t0 = rt.now();
        let report = pool.shutdown(drain).await;
        assert!(matches!(quick.await, Exit::Ok(200)));
        let slow = slow.await;
        if timed_out {
            assert!(matches!(slow, Exit::Err(_)), "{slow:?}");
            assert_eq!((report.failed, report.aborted), (1, 0));
            assert_eq!(rt.now() - t0, ms(500));
        } else {
            assert!(matches!(slow, Exit::Aborted), "{slow:?}");
            assert_eq!((report.failed, report.aborted), (1, 1));
            assert_eq!(rt.now() - t0, ms(300));
        }
        assert_eq!((report.submitted, report.completed), (2, 1));
    }
}

#[test]
fn a_job_timeout_inside_the_drain_is_a_failure_and_the_drain_deadline_first_is_an_abort() {
    on_every_runtime!(timeout_vs_drain);
}

// Docs (`JobHandle`): "await it for an `Exit`" (Ok / Err / Panicked / Aborted, "lost by its
// runtime" included); (`SubmitError`): "the job comes back, never lost". The docs say nothing
// of dropping a pool without `shutdown`, so either outcome is accepted for each job (it ran:
// `Ok`; it did not: `Aborted`), but every handle must resolve and a submitter that outlives
// the pool must not swallow a job.
async fn dropped_pool<R: Runtime>(rt: Clocked<R>) {
    let pool = sleeper_pool(&rt, 2, 16);
    let submitter = pool.submitter();
    let mut handles = Vec::new();
    for n in 1..=10_u64 {
        handles.push((n * 100, pool.submit(n * 100).await.unwrap()));
    }
    rt.sleep(ms(150)).await;
    drop(pool);
    let late = submitter.try_submit(5);
    for (n, handle) in handles {
        let bounded = select(handle, Box::pin(rt.sleep(DAY))).await;
        match bounded {
            Either::Left((Exit::Ok(v), _)) => assert_eq!(v, n),
            Either::Left((Exit::Aborted, _)) => {}
            Either::Left((other, _)) => panic!("job {n}: {other:?}"),
            Either::Right(_) => {
                panic!("job {n}: its handle never resolved after the pool was dropped")
            }
        }
    }
    match late {
        Err(refused) => assert_eq!(refused.into_job(), 5),
        Ok(handle) => {
            let bounded = select(handle, Box::pin(rt.sleep(DAY))).await;
            assert!(
                matches!(bounded, Either::Left((Exit::Ok(5) | Exit::Aborted, _))),
                "a job accepted after the pool was dropped was lost"
            );
        }
    }
}

#[test]
fn every_job_handle_resolves_after_a_pool_is_dropped_without_shutdown() {
    on_every_runtime!(dropped_pool);
}

// Docs (`SupervisorBuilder::backoff`): "The delay before each restart of a child (by default
// exponential from 10 ms, doubling, capped at 1 s, with equal jitter: uniform in `[d/2,
// d]`). Restarts are bounded by the intensity, not the backoff". A child failing at once,
// restart after restart (never stable), climbs to the 1 s cap and stays there.
async fn default_backoff_climbs_to_its_cap<R: Runtime>(rt: Clocked<R>) {
    let t0 = rt.now();
    let events = log();
    let stop = CancellationToken::new();
    let runs = Arc::new(AtomicUsize::new(0));
    let (counter, stop2) = (runs.clone(), stop.clone());
    let supervisor = SupervisorBuilder::new()
        .runtime(rt.clone())
        .intensity(1_000, secs(1))
        .stable_after(DAY)
        .seed(42)
        .on_event(recorder(&rt, t0, &events))
        .child(ChildSpec::new("flaky", move |token: CancellationToken| {
            let n = counter.fetch_add(1, SeqCst);
            let stop = stop2.clone();
            async move {
                if n == 12 {
                    stop.cancel("done");
                    token.cancelled().await;
                    return Ok(());
                }
                Err("crashed")
            }
        }))
        .build()
        .unwrap();
    supervisor.run(stop).await.unwrap();
    let delays: Vec<Duration> = taken(&events)
        .iter()
        .filter_map(|(_, e)| match e {
            SupervisorEvent::Restarting { delay, .. } => Some(*delay),
            _ => None,
        })
        .collect();
    assert_eq!(delays.len(), 12);
    for (k, delay) in delays.iter().enumerate() {
        let raw = ms(10).saturating_mul(1 << k.min(20)).min(secs(1));
        assert!(
            *delay >= raw / 2 && *delay <= raw,
            "restart {k}: {delay:?} outside [{:?}, {raw:?}]; all: {delays:?}",
            raw / 2
        );
    }
}

#[test]
fn the_default_supervisor_backoff_doubles_up_to_its_one_second_cap_and_stays_there() {
    on_every_runtime!(default_backoff_climbs_to_its_cap);
}
