//! Hostile black-box tests, written from the rustdoc, README, docs/*.md and the CHANGELOG
//! alone, of four recently changed contracts:
//!
//! 1. `SupervisorReport::stopped` holds only the children the supervisor stopped: a child
//!    that ended on its own before its turn to be told (while a sibling was being stopped, or
//!    in the instant `stop` was cancelled) is told as a `SupervisorEvent::Exited`, never as
//!    stopped; `Ending::Stopped` is "ended after it was told to stop". Attacked with children
//!    failing, panicking or returning during a sibling's stop, at the instant of the stop and
//!    at the instant of their own turn, children ignoring their token, zero (brutal-kill)
//!    timeouts, strategies, escalation and nesting, plus a seeded random sweep that checks
//!    every run of every child ends exactly once, on every runtime with virtual time.
//! 2. Dropping a scope, a supervisor's `run` or a shutdown coordinator aborts the children
//!    without waiting, each dropped at its next await point.
//! 3. CoDel: a queue that already stands when a `reconfigure` switches CoDel on counts from
//!    when it began to stand if the bulkhead knew it (it had CoDel, LIFO or priorities
//!    before), else from the switch; queues that empty and refill; priorities through the
//!    adaptive limiter; reloads through the registry.
//! 4. `Reload::reset` names a keyed breaker table once when any of its keys' breakers was
//!    reset, each name once (a plain breaker of the same instance too), forced breakers
//!    excepted; `Reload::relearning` names keyed adaptive tables once.
#![cfg(all(
    feature = "toml",
    feature = "test-util",
    feature = "tokio",
    feature = "smol",
    feature = "async-std"
))]

mod common;
#[path = "common/supervisor.rs"]
mod supervisor;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, Once};
use std::task::{Context, Poll};
use std::time::Duration;

use common::ms;
use common::rng::Rng;
use futures_util::future::{Either, select};
use futures_util::task::noop_waker_ref;
use supervisor::{cancelled_after, fixed, recorder};
use tidewall::adaptive::{AdaptiveLimiter, FixedLimit, Priority, QueueDiscipline};
use tidewall::admission::{Admission, Wait};
use tidewall::breaker::{State, Window};
use tidewall::bulkhead::Bulkhead;
use tidewall::config::{Config, Registry};
use tidewall::rt::{Clock, Runtime, Spawn, Tokio};
use tidewall::task::scope::Scope;
use tidewall::task::shutdown::Shutdown;
use tidewall::task::supervisor::{
    ChildSpec, Ended, Escalation, Restart, Strategy, Supervisor, SupervisorEvent, SupervisorReport,
};
use tidewall::task::{CancellationToken, Ending, Exit, TaskReport};
use tidewall::testing::{Clocked, FakeClock};
use tidewall::{Deadline, Rejected};

// ---------------------------------------------------------------------------------------
// Shared helpers
// ---------------------------------------------------------------------------------------

const FAILURE: &str = "lost connection";
const FAILED_STOPPING: &str = "failed while stopping";
const PANIC: &str = "boom: hostile child";

/// Keeps the expected child panics (`PANIC`) off stderr; any other panic is printed as usual.
fn quiet_child_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let payload = info
                .payload()
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| info.payload().downcast_ref::<&str>().copied());
            if payload != Some(PANIC) {
                previous(info);
            }
        }));
    });
}

/// Counts live child futures: one more while each lives.
struct Alive(Arc<AtomicUsize>);

impl Alive {
    fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, SeqCst);
        Self(Arc::clone(count))
    }
}

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.fetch_sub(1, SeqCst);
    }
}

/// Cancels a token when dropped: a child's future signalling that it has ended.
struct CancelOnDrop(CancellationToken);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.cancel("the child's future ended");
    }
}

/// Returns `Pending` once (waking itself), then `Ready`: one yield to the executor.
#[derive(Default)]
struct YieldOnce(bool);

impl Future for YieldOnce {
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

/// What a supervised child does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Waits for its token, then takes `stop_takes` ms and returns `Ok`.
    Steady { stop_takes: u64 },
    /// Waits for its token, then takes `stop_takes` ms and returns `Err(FAILED_STOPPING)`.
    FailsOnStop { stop_takes: u64 },
    /// Ignores its token and runs (for ever, in practice).
    Stubborn,
    /// Ignores its token; `after` ms after its start it returns `Err(FAILURE)`.
    Fails { after: u64 },
    /// Ignores its token; `after` ms after its start it panics with `PANIC`.
    Panics { after: u64 },
    /// Ignores its token; `after` ms after its start it returns `Ok`.
    Returns { after: u64 },
}

#[derive(Clone, Debug)]
struct Plan {
    name: &'static str,
    kind: Kind,
    /// Its shutdown timeout, in ms (0: brutal kill).
    timeout: u64,
    restart: Restart,
}

fn plan(name: &'static str, kind: Kind, timeout: u64) -> Plan {
    Plan {
        name,
        kind,
        timeout,
        restart: Restart::Permanent,
    }
}

fn spec<R: Runtime>(rt: &R, plan: &Plan, alive: &Arc<AtomicUsize>) -> ChildSpec {
    let (rt, alive, kind) = (rt.clone(), Arc::clone(alive), plan.kind);
    ChildSpec::new(plan.name, move |stop: CancellationToken| {
        let rt = rt.clone();
        let guard = Alive::new(&alive);
        async move {
            let _guard = guard;
            match kind {
                Kind::Steady { stop_takes } => {
                    stop.cancelled().await;
                    rt.sleep(ms(stop_takes)).await;
                    Ok::<(), &'static str>(())
                }
                Kind::FailsOnStop { stop_takes } => {
                    stop.cancelled().await;
                    rt.sleep(ms(stop_takes)).await;
                    Err(FAILED_STOPPING)
                }
                Kind::Stubborn => {
                    rt.sleep(Duration::from_secs(1_000_000)).await;
                    Ok(())
                }
                Kind::Fails { after } => {
                    rt.sleep(ms(after)).await;
                    Err(FAILURE)
                }
                Kind::Panics { after } => {
                    rt.sleep(ms(after)).await;
                    panic!("{PANIC}")
                }
                Kind::Returns { after } => {
                    rt.sleep(ms(after)).await;
                    Ok(())
                }
            }
        }
    })
    .restart(plan.restart)
    .shutdown_timeout(ms(plan.timeout))
}

/// A child that stops as soon as it is told, within a 1 s timeout.
fn steady<R: Runtime>(rt: &R, name: &'static str, alive: &Arc<AtomicUsize>) -> ChildSpec {
    spec(
        rt,
        &plan(name, Kind::Steady { stop_takes: 0 }, 1_000),
        alive,
    )
}

/// How a run of `kind` reads when it ends on its own.
fn own_exit(kind: Kind) -> Exit {
    match kind {
        Kind::Steady { .. } | Kind::Returns { .. } | Kind::Stubborn => Exit::Ok(()),
        Kind::FailsOnStop { .. } => Exit::Err(FAILED_STOPPING.to_owned()),
        Kind::Fails { .. } => Exit::Err(FAILURE.to_owned()),
        Kind::Panics { .. } => Exit::Panicked(PANIC.to_owned()),
    }
}

fn event_child(event: &SupervisorEvent) -> &str {
    match event {
        SupervisorEvent::Started { child, .. }
        | SupervisorEvent::Exited { child, .. }
        | SupervisorEvent::Restarting { child, .. }
        | SupervisorEvent::Stopped { child, .. }
        | SupervisorEvent::Escalating { child, .. } => child,
        other => panic!("an event this test does not know: {other:?}"),
    }
}

fn stopped_list(report: &SupervisorReport) -> Vec<(String, Exit, Ending)> {
    report
        .stopped
        .iter()
        .map(|r: &TaskReport| (r.name.to_string(), r.exit.clone(), r.ending))
        .collect()
}

fn entry(name: &str, exit: Exit, ending: Ending) -> (String, Exit, Ending) {
    (name.to_owned(), exit, ending)
}

fn ok_stopped(name: &str, took: u64) -> (String, Exit, Ending) {
    entry(name, Exit::Ok(()), Ending::Stopped { took: ms(took) })
}

fn took_of(ending: Ending) -> Option<Duration> {
    match ending {
        Ending::Stopped { took } | Ending::Aborted { took } => Some(took),
        _ => None,
    }
}

fn exits_of(log: &[(Duration, SupervisorEvent)], name: &str) -> Vec<(Duration, Exit)> {
    log.iter()
        .filter_map(|(at, e)| match e {
            SupervisorEvent::Exited { child, exit } if &**child == name => {
                Some((*at, exit.clone()))
            }
            _ => None,
        })
        .collect()
}

/// Every `Stopped` event: when, and who stopped how.
fn all_stops(log: &[(Duration, SupervisorEvent)]) -> Vec<(Duration, (String, Exit, Ending))> {
    log.iter()
        .filter_map(|(at, e)| match e {
            SupervisorEvent::Stopped {
                child,
                exit,
                ending,
            } => Some((*at, entry(child, exit.clone(), *ending))),
            _ => None,
        })
        .collect()
}

fn stops_of(log: &[(Duration, SupervisorEvent)], name: &str) -> Vec<(Duration, Exit, Ending)> {
    all_stops(log)
        .into_iter()
        .filter(|(_, (child, ..))| child == name)
        .map(|(at, (_, exit, ending))| (at, exit, ending))
        .collect()
}

/// A `Stopped` event at `at` ms of a child that returned `Ok` `took` ms after it was told.
fn ok_stop_at(at: u64, took: u64) -> (Duration, Exit, Ending) {
    (ms(at), Exit::Ok(()), Ending::Stopped { took: ms(took) })
}

fn starts_of(log: &[(Duration, SupervisorEvent)], name: &str) -> Vec<Duration> {
    log.iter()
        .filter_map(|(at, e)| match e {
            SupervisorEvent::Started { child, .. } if &**child == name => Some(*at),
            _ => None,
        })
        .collect()
}

fn restarting_count(log: &[(Duration, SupervisorEvent)]) -> u64 {
    log.iter()
        .filter(|(_, e)| matches!(e, SupervisorEvent::Restarting { .. }))
        .count() as u64
}

/// How a run ended, as the events tell it.
#[derive(Clone, Debug)]
enum RunEnd {
    Exited(Exit),
    Stopped(Exit, Ending),
}

/// Whether `restart` restarts a child after `exit` (docs of `Restart`).
fn restarts_after(restart: Restart, exit: &Exit) -> bool {
    match restart {
        Restart::Permanent => true,
        Restart::Transient => *exit != Exit::Ok(()),
        _ => false,
    }
}

/// Checks one `Stopped` event of a child against what its kind and timeout allow.
fn check_stop(
    plan: &Plan,
    started: Duration,
    at: Duration,
    exit: &Exit,
    ending: Ending,
    ctx: &str,
) {
    let name = plan.name;
    let Some(took) = took_of(ending) else {
        panic!("{ctx}: {name} was stopped, yet its ending is {ending:?}");
    };
    let told = at
        .checked_sub(took)
        .unwrap_or_else(|| panic!("{ctx}: {name} took {took:?} to stop by {at:?}"));
    assert!(
        told >= started,
        "{ctx}: {name} was told at {told:?}, before its run started at {started:?}"
    );
    assert_eq!(
        matches!(ending, Ending::Aborted { .. }),
        *exit == Exit::Aborted,
        "{ctx}: {name} stopped with exit {exit:?} but ending {ending:?}"
    );
    let timeout = ms(plan.timeout);
    // How long after being told it ends by itself; `None`: never (or, for a child that waits
    // for its token under a zero timeout, aborted before its token is cancelled).
    let own_end = match plan.kind {
        Kind::Steady { stop_takes } | Kind::FailsOnStop { stop_takes } => {
            (plan.timeout > 0).then(|| ms(stop_takes))
        }
        Kind::Stubborn => None,
        Kind::Fails { after } | Kind::Panics { after } | Kind::Returns { after } => {
            let end = started + ms(after);
            assert!(
                end >= told,
                "{ctx}: {name} ended on its own at {end:?}, before its turn to be told at \
                 {told:?}, yet it is reported stopped ({exit:?}, {ending:?}): docs say it \
                 was not stopped and its exit is told as `Exited`"
            );
            Some(end - told)
        }
    };
    let aborted = (Exit::Aborted, Ending::Aborted { took: timeout });
    let allowed: Vec<(Exit, Ending)> = match own_end {
        None => vec![aborted],
        Some(d) if d < timeout => vec![(own_exit(plan.kind), Ending::Stopped { took: d })],
        Some(d) if d > timeout => vec![aborted],
        Some(d) => vec![aborted, (own_exit(plan.kind), Ending::Stopped { took: d })],
    };
    assert!(
        allowed.contains(&(exit.clone(), ending)),
        "{ctx}: {name} (told at {told:?}, run started at {started:?}) stopped as \
         ({exit:?}, {ending:?}); allowed: {allowed:?}"
    );
}

/// Checks a supervisor's whole event log and its outcome: every run of every child ends
/// exactly once (an `Exited` or a `Stopped`), never both, consistently with its kind,
/// timeout and virtual time; the report agrees with the events.
///
/// Returns, rather than panics on, the children told to stop strictly after `stop` was
/// cancelled that are missing from `stopped` (the rule
/// `a_child_told_after_the_stop_during_a_restart_is_in_the_report_on_every_runtime`), so a
/// sweep can check every other invariant of every seed first.
fn check_supervision(
    plans: &[Plan],
    log: &[(Duration, SupervisorEvent)],
    outcome: &Result<SupervisorReport, Escalation>,
    stop_at: Duration,
    intensity: (u32, Duration),
    ctx: &str,
) -> Vec<String> {
    let index = |name: &str| {
        plans
            .iter()
            .position(|p| p.name == name)
            .unwrap_or_else(|| panic!("{ctx}: an event about an unknown child {name}"))
    };
    let mut running: Vec<Option<Duration>> = vec![None; plans.len()];
    let mut runs: Vec<u64> = vec![0; plans.len()];
    let mut last_end: Vec<Option<(Duration, Duration, RunEnd)>> = vec![None; plans.len()];
    let mut escalations = Vec::new();
    let mut last_at = Duration::ZERO;
    for (at, event) in log {
        assert!(*at >= last_at, "{ctx}: events out of time order: {log:#?}");
        last_at = *at;
        let i = index(event_child(event));
        let plan = &plans[i];
        match event {
            SupervisorEvent::Started { run, .. } => {
                assert!(
                    running[i].is_none(),
                    "{ctx}: {} started again at {at:?} while its run was not over",
                    plan.name
                );
                runs[i] += 1;
                assert_eq!(*run, runs[i], "{ctx}: {} run numbers", plan.name);
                running[i] = Some(*at);
            }
            SupervisorEvent::Exited { exit, .. } => {
                let started = running[i].take().unwrap_or_else(|| {
                    panic!("{ctx}: {} exited at {at:?} with no run going", plan.name)
                });
                match plan.kind {
                    Kind::Steady { .. } | Kind::FailsOnStop { .. } | Kind::Stubborn => panic!(
                        "{ctx}: {} never ends on its own, yet Exited {exit:?} at {at:?}",
                        plan.name
                    ),
                    Kind::Fails { after } | Kind::Panics { after } | Kind::Returns { after } => {
                        assert_eq!(*exit, own_exit(plan.kind), "{ctx}: {}'s exit", plan.name);
                        assert!(
                            *at >= started + ms(after),
                            "{ctx}: {} told as exited at {at:?}, before it ended at {:?}",
                            plan.name,
                            started + ms(after)
                        );
                    }
                }
                last_end[i] = Some((*at, started, RunEnd::Exited(exit.clone())));
            }
            SupervisorEvent::Stopped { exit, ending, .. } => {
                let started = running[i].take().unwrap_or_else(|| {
                    panic!(
                        "{ctx}: {} stopped at {at:?} with no run going (its end told twice?)",
                        plan.name
                    )
                });
                check_stop(plan, started, *at, exit, *ending, ctx);
                last_end[i] = Some((*at, started, RunEnd::Stopped(exit.clone(), *ending)));
            }
            SupervisorEvent::Restarting {
                restarts_in_period, ..
            } => {
                assert!(
                    (1..=intensity.0).contains(restarts_in_period),
                    "{ctx}: restarts_in_period {restarts_in_period} past the intensity {}",
                    intensity.0
                );
                match &last_end[i] {
                    Some((_, _, RunEnd::Exited(exit))) if running[i].is_none() => assert!(
                        restarts_after(plan.restart, exit),
                        "{ctx}: {} ({:?}) restarted after {exit:?}",
                        plan.name,
                        plan.restart
                    ),
                    other => panic!(
                        "{ctx}: a restart of {} whose last end is {other:?}",
                        plan.name
                    ),
                }
            }
            SupervisorEvent::Escalating { .. } => {
                match &last_end[i] {
                    Some((_, _, RunEnd::Exited(exit))) if running[i].is_none() => assert!(
                        restarts_after(plan.restart, exit),
                        "{ctx}: {} escalated after an exit that restarts nothing",
                        plan.name
                    ),
                    other => panic!(
                        "{ctx}: an escalation by {} whose last end is {other:?}",
                        plan.name
                    ),
                }
                escalations.push((*at, plan.name));
            }
            _ => unreachable!(),
        }
    }
    for (i, plan) in plans.iter().enumerate() {
        assert!(
            running[i].is_none(),
            "{ctx}: {}'s run started at {:?} is in neither an Exited nor a Stopped event",
            plan.name,
            running[i]
        );
        if plan.restart == Restart::Temporary {
            assert!(
                runs[i] <= 1,
                "{ctx}: temporary {} started {} times",
                plan.name,
                runs[i]
            );
        }
    }

    let report = match outcome {
        Ok(report) => {
            assert!(escalations.is_empty(), "{ctx}: escalated yet returned Ok");
            assert!(
                matches!(report.ended, Ended::Stopped | Ended::NoChildrenLeft),
                "{ctx}: {:?}",
                report.ended
            );
            report
        }
        Err(escalation) => {
            assert_eq!(escalation.report.ended, Ended::Escalated, "{ctx}");
            assert_eq!(
                escalations.iter().map(|(_, n)| *n).collect::<Vec<_>>(),
                [&*escalation.child],
                "{ctx}: one Escalating event, for the escalation's child"
            );
            assert_eq!(
                (escalation.max_restarts, escalation.period),
                intensity,
                "{ctx}"
            );
            &escalation.report
        }
    };
    assert_eq!(
        report.restarts,
        restarting_count(log),
        "{ctx}: `restarts` is one per Restarting event"
    );
    if report.ended == Ended::NoChildrenLeft {
        assert!(
            report.stopped.is_empty(),
            "{ctx}: nothing left, nothing stopped"
        );
    }
    if report.ended == Ended::Stopped {
        assert!(
            starts_after(log, stop_at).is_empty(),
            "{ctx}: children started after the stop at {stop_at:?}: {:?}",
            starts_after(log, stop_at)
        );
    }
    // The report: each child at most once, in reverse of the order added, each its last end
    // and a stop, told one after another.
    let mut previous: Option<(usize, Duration)> = None;
    for stopped in &report.stopped {
        let i = index(&stopped.name);
        assert!(
            !matches!(stopped.ending, Ending::Finished),
            "{ctx}: `stopped` holds {} with Ending::Finished",
            stopped.name
        );
        let Some((at, _, RunEnd::Stopped(exit, ending))) = &last_end[i] else {
            panic!(
                "{ctx}: {} is in `stopped` ({:?}, {:?}) but its last end is {:?}",
                stopped.name, stopped.exit, stopped.ending, last_end[i]
            );
        };
        assert_eq!(
            (exit, *ending),
            (&stopped.exit, stopped.ending),
            "{ctx}: {}: the report and its Stopped event differ",
            stopped.name
        );
        let told = *at - took_of(*ending).unwrap();
        if let Some((before, before_at)) = previous {
            assert!(
                i < before,
                "{ctx}: `stopped` is not in reverse of the order added: {:?}",
                stopped_list(report)
            );
            assert!(
                told >= before_at,
                "{ctx}: {} was told at {told:?}, before the one stopped before it was gone \
                 at {before_at:?}",
                stopped.name
            );
        }
        previous = Some((i, *at));
    }
    // A child told after the stop (strictly) was stopped at the end: it is in the report.
    let mut omissions = Vec::new();
    if report.ended == Ended::Stopped {
        for (i, plan) in plans.iter().enumerate() {
            if let Some((at, _, RunEnd::Stopped(_, ending))) = &last_end[i] {
                let told = *at - took_of(*ending).unwrap();
                if told > stop_at && !report.stopped.iter().any(|r| &*r.name == plan.name) {
                    omissions.push(format!(
                        "{ctx}: {} was stopped at the end (told at {told:?}) but is not in \
                         `stopped`: {report:?}\nlog: {log:#?}",
                        plan.name,
                    ));
                }
            }
        }
    }
    omissions
}

fn starts_after(log: &[(Duration, SupervisorEvent)], after: Duration) -> Vec<(Duration, String)> {
    log.iter()
        .filter_map(|(at, e)| match e {
            SupervisorEvent::Started { child, .. } if *at > after => Some((*at, child.to_string())),
            _ => None,
        })
        .collect()
}

/// How `supervise` sets a supervisor up, and when it cancels its `stop`.
#[derive(Clone, Copy, Debug)]
struct Run {
    strategy: Strategy,
    intensity: (u32, Duration),
    backoff: Duration,
    stop_at: Duration,
}

impl Run {
    /// One-for-one, restarting without limit 1 ms after each exit, stopped at `stop_at` ms.
    fn stopped_at(stop_at: u64) -> Self {
        Self {
            strategy: Strategy::OneForOne,
            intensity: GENEROUS,
            backoff: ms(1),
            stop_at: ms(stop_at),
        }
    }
    fn strategy(self, strategy: Strategy) -> Self {
        Self { strategy, ..self }
    }
    fn intensity(self, intensity: (u32, Duration)) -> Self {
        Self { intensity, ..self }
    }
    fn backoff(self, backoff: Duration) -> Self {
        Self { backoff, ..self }
    }
}

/// Builds, runs until `run.stop_at` and checks a supervisor of `plans`; returns the outcome
/// and the log. Children missing from `stopped` though told after the stop are collected in
/// `deferred` if given, else fail at once.
async fn supervise<R: Runtime>(
    rt: &Clocked<R>,
    plans: &[Plan],
    run: Run,
    ctx: &str,
    deferred: Option<&Mutex<Vec<String>>>,
) -> (
    Result<SupervisorReport, Escalation>,
    Vec<(Duration, SupervisorEvent)>,
) {
    quiet_child_panics();
    let alive = Arc::new(AtomicUsize::new(0));
    let (log, hook) = recorder(rt);
    let mut builder = Supervisor::builder()
        .runtime(rt.clone())
        .strategy(run.strategy)
        .intensity(run.intensity.0, run.intensity.1)
        .backoff(fixed(run.backoff))
        .seed(7)
        .on_event(hook);
    for plan in plans {
        builder = builder.child(spec(rt, plan, &alive));
    }
    let supervisor = builder.build().unwrap();
    let stop = cancelled_after(rt, run.stop_at, "deploy");
    let outcome = supervisor.run(stop).await;
    assert_eq!(
        alive.load(SeqCst),
        0,
        "{ctx}: a child's future outlived its supervisor's return"
    );
    let log = log.lock().unwrap().clone();
    let omissions = check_supervision(plans, &log, &outcome, run.stop_at, run.intensity, ctx);
    match deferred {
        Some(deferred) => deferred.lock().unwrap().extend(omissions),
        None => assert!(omissions.is_empty(), "{}", omissions.join("\n")),
    }
    (outcome, log)
}

const GENEROUS: (u32, Duration) = (10_000, Duration::from_secs(1));

// ---------------------------------------------------------------------------------------
// 1. Supervisor: who was stopped, who exited
// ---------------------------------------------------------------------------------------

/// c (added last) takes 100 ms to stop; b, waiting for its turn, fails (or panics) on its
/// own at 150 ms: it is not stopped, its crash is an `Exited`; a is told once c is gone.
async fn sibling_crashes_while_another_is_stopped<R: Runtime>(rt: Clocked<R>, panics: bool) {
    let b_kind = if panics {
        Kind::Panics { after: 150 }
    } else {
        Kind::Fails { after: 150 }
    };
    let plans = [
        plan("a", Kind::Steady { stop_takes: 0 }, 1_000),
        plan("b", b_kind, 1_000),
        plan("c", Kind::Steady { stop_takes: 100 }, 1_000),
    ];
    let ctx = format!("b crashes during c's stop (panics: {panics})");
    let (outcome, log) = supervise(&rt, &plans, Run::stopped_at(100), &ctx, None).await;
    let report = outcome.unwrap();
    assert_eq!(report.ended, Ended::Stopped);
    assert_eq!(
        stopped_list(&report),
        [ok_stopped("c", 100), ok_stopped("a", 0)],
        "{ctx}: b ended on its own before its turn: not stopped"
    );
    let exits = exits_of(&log, "b");
    assert_eq!(exits.len(), 1, "{ctx}: b's crash told once: {log:#?}");
    assert_eq!(exits[0].1, own_exit(b_kind));
    assert!(
        (ms(150)..=ms(200)).contains(&exits[0].0),
        "{ctx}: b's exit told at {:?}",
        exits[0].0
    );
    assert!(stops_of(&log, "b").is_empty(), "{ctx}: b is never Stopped");
    assert_eq!(stops_of(&log, "c"), [ok_stop_at(200, 100)]);
    assert_eq!(stops_of(&log, "a"), [ok_stop_at(200, 0)]);
    assert_eq!(
        starts_of(&log, "b"),
        [ms(0)],
        "{ctx}: no restart while stopping"
    );
}

#[test]
fn a_sibling_that_fails_while_another_is_being_stopped_is_exited_not_stopped_on_every_runtime() {
    on_every_runtime!(|rt| sibling_crashes_while_another_is_stopped(rt, false));
}

#[test]
fn a_sibling_that_panics_while_another_is_being_stopped_is_exited_not_stopped_on_every_runtime() {
    on_every_runtime!(|rt| sibling_crashes_while_another_is_stopped(rt, true));
}

/// c (added last, zero timeout) is aborted at once at the stop; b is told at once and,
/// ignoring its token, fails 50 ms later: it ended *after* it was told, so it reads
/// `Ending::Stopped { took: 50 ms }` with its `Err` exit; a is told once b is gone.
async fn brutal_kill_then_a_crash_after_being_told<R: Runtime>(rt: Clocked<R>) {
    let plans = [
        plan("a", Kind::Steady { stop_takes: 0 }, 1_000),
        plan("b", Kind::Fails { after: 150 }, 1_000),
        plan("c", Kind::Stubborn, 0),
    ];
    let ctx = "brutal kill, then a crash after the tell";
    let (outcome, log) = supervise(&rt, &plans, Run::stopped_at(100), ctx, None).await;
    let report = outcome.unwrap();
    assert_eq!(
        stopped_list(&report),
        [
            entry("c", Exit::Aborted, Ending::Aborted { took: ms(0) }),
            entry(
                "b",
                Exit::Err(FAILURE.into()),
                Ending::Stopped { took: ms(50) }
            ),
            ok_stopped("a", 0),
        ],
        "{ctx}"
    );
    assert!(
        exits_of(&log, "b").is_empty(),
        "{ctx}: b was told first: a stop, not an exit"
    );
    assert_eq!(
        stops_of(&log, "a")[0].0,
        ms(150),
        "{ctx}: a told once b was gone"
    );
}

#[test]
fn a_child_that_crashes_after_being_told_reads_stopped_with_its_error_on_every_runtime() {
    on_every_runtime!(brutal_kill_then_a_crash_after_being_told);
}

/// b fails at 200 ms, the very instant c (told at 100 ms, 100 ms to stop) is gone and b's
/// turn comes: it is either an `Exited` (it ended before its turn) or `Stopped` with its
/// error and `took` zero (it ended as it was told), but exactly one of them.
async fn crash_at_the_instant_of_its_turn<R: Runtime>(rt: Clocked<R>, b_timeout: u64) {
    let plans = [
        plan("a", Kind::Steady { stop_takes: 0 }, 1_000),
        plan("b", Kind::Fails { after: 200 }, b_timeout),
        plan("c", Kind::Steady { stop_takes: 100 }, 1_000),
    ];
    let ctx = format!("b crashes at the instant of its turn (timeout {b_timeout} ms)");
    let (outcome, log) = supervise(&rt, &plans, Run::stopped_at(100), &ctx, None).await;
    let report = outcome.unwrap();
    let list = stopped_list(&report);
    let b_exits = exits_of(&log, "b");
    let b_stops = stops_of(&log, "b");
    assert_eq!(
        b_exits.len() + b_stops.len(),
        1,
        "{ctx}: b's one run ends once: {log:#?}"
    );
    if b_stops.is_empty() {
        assert_eq!(list, [ok_stopped("c", 100), ok_stopped("a", 0)], "{ctx}");
    } else {
        assert_eq!(list[0], ok_stopped("c", 100), "{ctx}");
        assert_eq!(list[2], ok_stopped("a", 0), "{ctx}");
        assert!(
            list[1]
                == entry(
                    "b",
                    Exit::Err(FAILURE.into()),
                    Ending::Stopped { took: ms(0) }
                )
                || (b_timeout == 0
                    && list[1] == entry("b", Exit::Aborted, Ending::Aborted { took: ms(0) })),
            "{ctx}: {list:?}"
        );
    }
}

#[test]
fn a_child_crashing_at_the_instant_of_its_turn_ends_exactly_once_on_every_runtime() {
    on_every_runtime!(|rt| crash_at_the_instant_of_its_turn(rt, 1_000));
    on_every_runtime!(|rt| crash_at_the_instant_of_its_turn(rt, 0));
}

/// A child that failed on its own in the instant `stop` was cancelled. `SupervisorReport::
/// stopped`: "in the instant `stop` was cancelled, the child's end and the stop race: it is
/// then one or the other, never both". Here the stop is cancelled right after the child's
/// future has ended (same virtual instant); on a multi-threaded runtime its task may not have
/// published its end yet (CI saw that on smol), so either ending is right, exactly once.
async fn crash_in_the_instant_stop_is_cancelled<R: Runtime>(rt: Clocked<R>, crash_first: bool) {
    quiet_child_panics();
    let ended = CancellationToken::new();
    let alive = Arc::new(AtomicUsize::new(0));
    let crash = {
        let (rt, ended, alive) = (rt.clone(), ended.clone(), Arc::clone(&alive));
        ChildSpec::new("crash", move |_stop| {
            let (rt, signal, guard) = (rt.clone(), CancelOnDrop(ended.clone()), Alive::new(&alive));
            async move {
                let _signal = signal;
                let _guard = guard;
                rt.sleep(ms(100)).await;
                Err::<(), _>(FAILURE)
            }
        })
        .shutdown_timeout(ms(1_000))
    };
    let steady = steady(&rt, "steady", &alive);
    let (log, hook) = recorder(&rt);
    let builder = Supervisor::builder()
        .runtime(rt.clone())
        .backoff(fixed(ms(1_000)))
        .on_event(hook);
    let builder = if crash_first {
        builder.child(crash).child(steady)
    } else {
        builder.child(steady).child(crash)
    };
    let supervisor = builder.build().unwrap();
    let stop = CancellationToken::new();
    {
        let (stop, ended) = (stop.clone(), ended.clone());
        drop(rt.spawn(async move {
            ended.cancelled().await;
            for _ in 0..8 {
                YieldOnce::default().await;
            }
            stop.cancel("deploy");
        }));
    }
    let start = rt.now();
    let report = supervisor.run(stop).await.unwrap();
    let ctx = format!("crash in the instant of the stop (crash added first: {crash_first})");
    assert_eq!(rt.now() - start, ms(100), "{ctx}");
    assert_eq!(alive.load(SeqCst), 0, "{ctx}");
    let log = log.lock().unwrap().clone();
    assert_eq!(report.ended, Ended::Stopped, "{ctx}");
    let crashed = Exit::Err(FAILURE.into());
    let list = stopped_list(&report);
    if exits_of(&log, "crash").is_empty() {
        // It was told first: stopped, with its own error, at once.
        let mut expected = vec![
            ok_stopped("steady", 0),
            entry("crash", crashed.clone(), Ending::Stopped { took: ms(0) }),
        ];
        // Stopped in reverse of the order added.
        if !crash_first {
            expected.reverse();
        }
        assert_eq!(
            list, expected,
            "{ctx}: told first, it reads as stopped: {log:#?}"
        );
        assert_eq!(stops_of(&log, "crash").len(), 1, "{ctx}: {log:#?}");
    } else {
        assert_eq!(
            list,
            [ok_stopped("steady", 0)],
            "{ctx}: ended first, it is not in `stopped`"
        );
        assert_eq!(
            exits_of(&log, "crash"),
            [(ms(100), crashed)],
            "{ctx}: its exit is told as Exited, once: {log:#?}"
        );
        assert!(stops_of(&log, "crash").is_empty(), "{ctx}: {log:#?}");
    }
    assert_eq!(starts_of(&log, "crash"), [ms(0)], "{ctx}");
    assert_eq!(report.restarts, restarting_count(&log), "{ctx}");
    assert!(report.restarts <= 1, "{ctx}");
}

#[test]
fn a_child_that_failed_in_the_instant_stop_was_cancelled_ends_once_on_every_runtime() {
    on_every_runtime!(|rt| crash_in_the_instant_stop_is_cancelled(rt, false));
    on_every_runtime!(|rt| crash_in_the_instant_stop_is_cancelled(rt, true));
}

/// b exceeds `intensity(1, 1 s)` at its second failure (25 ms): the supervisor stops c
/// (20 ms) then a (30 ms) and fails; b's failing exit is an `Exited`, not a stop.
async fn escalation_stops_the_others<R: Runtime>(rt: Clocked<R>) {
    let plans = [
        plan("a", Kind::Steady { stop_takes: 30 }, 1_000),
        plan("b", Kind::Fails { after: 10 }, 1_000),
        plan("c", Kind::Steady { stop_takes: 20 }, 1_000),
    ];
    let ctx = "escalation";
    let start = rt.now();
    let intensity = (1, Duration::from_secs(1));
    let run = Run::stopped_at(10_000).intensity(intensity).backoff(ms(5));
    let (outcome, log) = supervise(&rt, &plans, run, ctx, None).await;
    assert_eq!(rt.now() - start, ms(75), "{ctx}");
    let escalation = outcome.unwrap_err();
    assert_eq!(&*escalation.child, "b");
    assert_eq!(
        escalation.report.restarts, 1,
        "{ctx}: the exceeding exit does not count"
    );
    assert_eq!(
        stopped_list(&escalation.report),
        [ok_stopped("c", 20), ok_stopped("a", 30)],
        "{ctx}"
    );
    assert_eq!(starts_of(&log, "b"), [ms(0), ms(15)], "{ctx}");
    assert_eq!(
        exits_of(&log, "b"),
        [
            (ms(10), Exit::Err(FAILURE.into())),
            (ms(25), Exit::Err(FAILURE.into()))
        ],
        "{ctx}"
    );
}

#[test]
fn an_escalation_stops_the_others_and_never_lists_the_failing_child_on_every_runtime() {
    on_every_runtime!(escalation_stops_the_others);
}

/// b's first exit escalates (`max_restarts = 0`); while the supervisor stops c (100 ms), a
/// fails on its own: a is an `Exited`, not in the escalation's report.
async fn a_crash_during_the_escalations_shutdown<R: Runtime>(rt: Clocked<R>) {
    let plans = [
        plan("a", Kind::Fails { after: 50 }, 1_000),
        plan("b", Kind::Fails { after: 10 }, 1_000),
        plan("c", Kind::Steady { stop_takes: 100 }, 1_000),
    ];
    let ctx = "a crash during the escalation's shutdown";
    let intensity = (0, Duration::from_secs(1));
    let run = Run::stopped_at(10_000).intensity(intensity).backoff(ms(5));
    let (outcome, log) = supervise(&rt, &plans, run, ctx, None).await;
    let escalation = outcome.unwrap_err();
    assert_eq!(&*escalation.child, "b", "{ctx}");
    assert_eq!(escalation.report.restarts, 0, "{ctx}");
    assert_eq!(
        stopped_list(&escalation.report),
        [ok_stopped("c", 100)],
        "{ctx}"
    );
    let a = exits_of(&log, "a");
    assert_eq!(a.len(), 1, "{ctx}: {log:#?}");
    assert_eq!(a[0].1, Exit::Err(FAILURE.into()), "{ctx}");
    assert!((ms(50)..=ms(110)).contains(&a[0].0), "{ctx}: {:?}", a[0].0);
    assert_eq!(
        starts_of(&log, "a"),
        [ms(0)],
        "{ctx}: nothing restarts after an escalation"
    );
}

#[test]
fn a_crash_during_an_escalations_shutdown_is_exited_not_stopped_on_every_runtime() {
    on_every_runtime!(a_crash_during_the_escalations_shutdown);
}

/// A nested supervisor: told to stop, it stops its own children in reverse (g3 20 ms, then
/// g1 30 ms); g2 fails on its own while g3 is being stopped, and is an `Exited` in the inner
/// log. The outer sees the tree stopped cleanly after 50 ms, between web and db.
async fn nested_tree_with_a_crash_inside_its_stop<R: Runtime>(rt: Clocked<R>) {
    quiet_child_panics();
    let alive = Arc::new(AtomicUsize::new(0));
    let (inner_log, inner_hook) = recorder(&rt);
    let inner_hook = Arc::new(inner_hook);
    let inner_plans = [
        plan("g1", Kind::Steady { stop_takes: 30 }, 1_000),
        plan("g2", Kind::Fails { after: 110 }, 1_000),
        plan("g3", Kind::Steady { stop_takes: 20 }, 1_000),
    ];
    let tree = {
        let (rt, alive, plans, hook) = (
            rt.clone(),
            Arc::clone(&alive),
            inner_plans.clone(),
            Arc::clone(&inner_hook),
        );
        ChildSpec::supervisor("tree", move || {
            let hook = Arc::clone(&hook);
            let mut builder = Supervisor::builder()
                .runtime(rt.clone())
                .backoff(fixed(ms(1)))
                .on_event(move |e: &SupervisorEvent| (*hook)(e));
            for plan in &plans {
                builder = builder.child(spec(&rt, plan, &alive));
            }
            builder.build().unwrap()
        })
    };
    let (log, hook) = recorder(&rt);
    let supervisor = Supervisor::builder()
        .runtime(rt.clone())
        .on_event(hook)
        .child(steady(&rt, "db", &alive))
        .child(tree)
        .child(steady(&rt, "web", &alive))
        .build()
        .unwrap();
    let stop = cancelled_after(&rt, ms(100), "deploy");
    let report = supervisor.run(stop).await.unwrap();
    assert_eq!(alive.load(SeqCst), 0);
    assert_eq!(
        stopped_list(&report),
        [
            ok_stopped("web", 0),
            ok_stopped("tree", 50),
            ok_stopped("db", 0)
        ]
    );
    let log = log.lock().unwrap().clone();
    assert!(
        exits_of(&log, "tree").is_empty(),
        "the tree stopped cleanly: {log:#?}"
    );
    assert_eq!(stops_of(&log, "tree"), [ok_stop_at(150, 50)]);
    let inner = inner_log.lock().unwrap().clone();
    assert_eq!(stops_of(&inner, "g3"), [ok_stop_at(120, 20)]);
    assert_eq!(stops_of(&inner, "g1"), [ok_stop_at(150, 30)]);
    assert!(
        stops_of(&inner, "g2").is_empty(),
        "g2 ended before its turn: {inner:#?}"
    );
    let g2 = exits_of(&inner, "g2");
    assert_eq!(g2.len(), 1, "{inner:#?}");
    assert_eq!(g2[0].1, Exit::Err(FAILURE.into()));
    assert!((ms(110)..=ms(120)).contains(&g2[0].0), "{:?}", g2[0].0);
    let inner_stops: Vec<_> = all_stops(&inner).into_iter().map(|(_, s)| s).collect();
    assert_eq!(inner_stops, [ok_stopped("g3", 20), ok_stopped("g1", 30)]);
    assert_eq!(
        starts_of(&inner, "g2"),
        [ms(0)],
        "no restart inside a stopping tree"
    );
}

#[test]
fn a_nested_supervisor_stops_its_children_in_order_around_a_crash_on_every_runtime() {
    on_every_runtime!(nested_tree_with_a_crash_inside_its_stop);
}

/// An inner supervisor escalates at its first failure: the outer sees the tree's `Exited`
/// with an error and restarts it after 1 ms; stopped at 25 ms, the tree (its child told at
/// 25 ms, failing on its own at 32 ms) ends 7 ms after the tell.
async fn nested_escalations_are_exits_of_the_tree<R: Runtime>(rt: Clocked<R>) {
    quiet_child_panics();
    let alive = Arc::new(AtomicUsize::new(0));
    let tree = {
        let (rt, alive) = (rt.clone(), Arc::clone(&alive));
        ChildSpec::supervisor("tree", move || {
            Supervisor::builder()
                .runtime(rt.clone())
                .intensity(0, Duration::from_secs(1))
                .child(steady(&rt, "g0", &alive))
                .child(spec(
                    &rt,
                    &plan("g", Kind::Fails { after: 10 }, 1_000),
                    &alive,
                ))
                .build()
                .unwrap()
        })
    };
    let (log, hook) = recorder(&rt);
    let supervisor = Supervisor::builder()
        .runtime(rt.clone())
        .intensity(100, Duration::from_secs(1))
        .backoff(fixed(ms(1)))
        .on_event(hook)
        .child(tree)
        .build()
        .unwrap();
    let stop = cancelled_after(&rt, ms(25), "deploy");
    let report = supervisor.run(stop).await.unwrap();
    assert_eq!(alive.load(SeqCst), 0);
    let log = log.lock().unwrap().clone();
    assert_eq!(starts_of(&log, "tree"), [ms(0), ms(11), ms(22)], "{log:#?}");
    let exits = exits_of(&log, "tree");
    assert_eq!(
        exits.iter().map(|(at, _)| *at).collect::<Vec<_>>(),
        [ms(10), ms(21)]
    );
    assert!(
        exits.iter().all(|(_, e)| matches!(e, Exit::Err(_))),
        "{exits:?}"
    );
    assert_eq!(report.restarts, 2);
    assert_eq!(stopped_list(&report), [ok_stopped("tree", 7)]);
}

#[test]
fn a_nested_escalation_is_a_failure_of_the_tree_child_on_every_runtime() {
    on_every_runtime!(nested_escalations_are_exits_of_the_tree);
}

/// A restart by strategy stops the siblings in reverse of the order added (d at once, c in
/// 30 ms, then a in 10 ms for one-for-all; a untouched for rest-for-one) and restarts them in
/// order. Stopped at 120 ms, the final shutdown tells d, then c (30 ms): b, restarted, fails
/// again on its own during c's stop, before its turn: an `Exited`, not in `stopped`.
async fn restart_by_strategy_then_stop<R: Runtime>(rt: Clocked<R>, strategy: Strategy) {
    let plans = [
        plan("a", Kind::Steady { stop_takes: 10 }, 1_000),
        plan("b", Kind::Fails { after: 50 }, 1_000),
        plan("c", Kind::Steady { stop_takes: 30 }, 1_000),
        plan("d", Kind::Steady { stop_takes: 0 }, 1_000),
    ];
    let ctx = format!("{strategy:?}, then a stop");
    let run = Run::stopped_at(120).strategy(strategy).backoff(ms(5));
    let (outcome, log) = supervise(&rt, &plans, run, &ctx, None).await;
    let report = outcome.unwrap();
    let restart_stops: Vec<_> = all_stops(&log)
        .into_iter()
        .filter(|(at, _)| *at < ms(120))
        .collect();
    let one_for_all = strategy == Strategy::OneForAll;
    let mut expected = vec![(ms(50), ok_stopped("d", 0)), (ms(80), ok_stopped("c", 30))];
    if one_for_all {
        expected.push((ms(90), ok_stopped("a", 10)));
    }
    assert_eq!(
        restart_stops, expected,
        "{ctx}: siblings stopped in reverse order"
    );
    let first_exit = log
        .iter()
        .position(|(_, e)| matches!(e, SupervisorEvent::Exited { .. }))
        .unwrap();
    assert!(
        matches!(&log[first_exit + 1].1, SupervisorEvent::Restarting { child, delay, restarts_in_period: 1 }
            if &**child == "b" && *delay == ms(5)),
        "{ctx}: {log:#?}"
    );
    let restarted: Vec<_> = log
        .iter()
        .filter_map(|(at, e)| match e {
            SupervisorEvent::Started { child, run: 2 } => Some((*at, child.to_string())),
            _ => None,
        })
        .collect();
    let names: Vec<&str> = restarted.iter().map(|(_, n)| n.as_str()).collect();
    let last_stop = if one_for_all { ms(90) } else { ms(80) };
    assert_eq!(
        names,
        if one_for_all {
            vec!["a", "b", "c", "d"]
        } else {
            vec!["b", "c", "d"]
        },
        "{ctx}: restarted in order"
    );
    let at = restarted[0].0;
    assert!(
        restarted.iter().all(|(t, _)| *t == at) && (last_stop..=last_stop + ms(5)).contains(&at),
        "{ctx}: restarted together once the siblings were stopped: {restarted:?}"
    );
    assert_eq!(report.ended, Ended::Stopped);
    assert_eq!(report.restarts, 1, "{ctx}");
    assert_eq!(
        stopped_list(&report),
        [ok_stopped("d", 0), ok_stopped("c", 30), ok_stopped("a", 10)],
        "{ctx}: b failed on its own at {:?}, before its turn at 150 ms",
        at + ms(50)
    );
    let b_exits = exits_of(&log, "b");
    assert_eq!(b_exits.len(), 2, "{ctx}: {log:#?}");
    assert_eq!(b_exits[1].1, Exit::Err(FAILURE.into()));
    assert!(
        (at + ms(50)..=ms(150)).contains(&b_exits[1].0),
        "{ctx}: {b_exits:?}"
    );
}

#[test]
fn one_for_all_stops_siblings_in_reverse_and_a_later_crash_is_exited_on_every_runtime() {
    on_every_runtime!(|rt| restart_by_strategy_then_stop(rt, Strategy::OneForAll));
}

#[test]
fn rest_for_one_stops_later_siblings_in_reverse_and_a_later_crash_is_exited_on_every_runtime() {
    on_every_runtime!(|rt| restart_by_strategy_then_stop(rt, Strategy::RestForOne));
}

/// One-for-all: while the restart stops c (50 to 80 ms), a fails on its own: a's run ends
/// once, as an `Exited`, and is never also a `Stopped`.
async fn a_crash_during_a_one_for_all_restart<R: Runtime>(rt: Clocked<R>) {
    let plans = [
        plan("a", Kind::Fails { after: 70 }, 1_000),
        plan("b", Kind::Fails { after: 50 }, 1_000),
        plan("c", Kind::Steady { stop_takes: 30 }, 1_000),
        plan("d", Kind::Steady { stop_takes: 0 }, 1_000),
    ];
    let ctx = "a crash during a one-for-all restart";
    let run = Run::stopped_at(100)
        .strategy(Strategy::OneForAll)
        .backoff(ms(5));
    let (_, log) = supervise(&rt, &plans, run, ctx, None).await;
    let a_first_end = log
        .iter()
        .find(|(_, e)| {
            matches!(e, SupervisorEvent::Exited { child, .. } | SupervisorEvent::Stopped { child, .. } if &**child == "a")
        })
        .unwrap();
    assert!(
        matches!(&a_first_end.1, SupervisorEvent::Exited { exit: Exit::Err(m), .. } if m == FAILURE),
        "{ctx}: a ended on its own before its turn: {log:#?}"
    );
    assert!(
        (ms(70)..=ms(80)).contains(&a_first_end.0),
        "{ctx}: {a_first_end:?}"
    );
    assert_eq!(stops_of(&log, "d")[0], ok_stop_at(50, 0));
    assert_eq!(stops_of(&log, "c")[0], ok_stop_at(80, 30));
}

#[test]
fn a_crash_during_a_one_for_all_restart_is_exited_not_stopped_on_every_runtime() {
    on_every_runtime!(a_crash_during_a_one_for_all_restart);
}

/// `stop` is cancelled at 100 ms, in the middle of a rest-for-one (or one-for-all) restart:
/// the restart is stopping c (told at 50 ms, aborted at its 100 ms timeout, at 150 ms). b is
/// still running when the stop comes and is told at 150 ms, 50 ms after the stop: the
/// supervisor stops it at its end, so it is in `stopped` ("The children it stopped at the
/// end"), and nothing starts again.
async fn stop_in_the_middle_of_a_restart<R: Runtime>(rt: Clocked<R>, strategy: Strategy) {
    let plans = [
        plan("a", Kind::Fails { after: 50 }, 1_000),
        plan("b", Kind::Steady { stop_takes: 0 }, 1_000),
        plan("c", Kind::Stubborn, 100),
    ];
    let ctx = format!("a stop in the middle of a {strategy:?} restart");
    let alive = Arc::new(AtomicUsize::new(0));
    let (log, hook) = recorder(&rt);
    let mut builder = Supervisor::builder()
        .runtime(rt.clone())
        .strategy(strategy)
        .backoff(fixed(ms(5)))
        .on_event(hook);
    for plan in &plans {
        builder = builder.child(spec(&rt, plan, &alive));
    }
    let stop = cancelled_after(&rt, ms(100), "deploy");
    let report = builder.build().unwrap().run(stop).await.unwrap();
    let log = log.lock().unwrap().clone();
    assert_eq!(alive.load(SeqCst), 0, "{ctx}");
    assert_eq!(report.ended, Ended::Stopped, "{ctx}");
    assert!(starts_after(&log, ms(100)).is_empty(), "{ctx}: {log:#?}");
    assert_eq!(
        stops_of(&log, "c"),
        [(ms(150), Exit::Aborted, Ending::Aborted { took: ms(100) })],
        "{ctx}"
    );
    assert_eq!(stops_of(&log, "b"), [ok_stop_at(150, 0)]);
    let list = stopped_list(&report);
    // `SupervisorReport::stopped`: "A `stop` that comes while a restart is stopping a failed
    // child's siblings ends the restart once the sibling being stopped is down: the siblings
    // still running are stopped by the final stop, and are here". Found by this suite: the
    // supervisor used to finish the restart's stops first, so b, told 50 ms after the stop,
    // was stopped as a restart's sibling and the report listed nothing.
    // c, which the restart was stopping, is not here ("its `SupervisorEvent::Stopped` told
    // its end").
    assert_eq!(
        list,
        [ok_stopped("b", 0)],
        "{ctx}: b, still running when `stop` was cancelled at 100 ms, was told at 150 ms\nlog: \
         {log:#?}"
    );
}

#[test]
fn a_child_told_after_the_stop_during_a_restart_is_in_the_report_on_every_runtime() {
    on_every_runtime!(|rt| stop_in_the_middle_of_a_restart(rt, Strategy::RestForOne));
    on_every_runtime!(|rt| stop_in_the_middle_of_a_restart(rt, Strategy::OneForAll));
}

/// A transient child that returns `Ok` and a temporary one that fails are not restarted: with
/// nothing left to run the supervisor returns `Ended::NoChildrenLeft` at the last exit, with
/// nothing stopped and no restart.
async fn nothing_left_to_run<R: Runtime>(rt: Clocked<R>) {
    let mut plans = [
        plan("transient", Kind::Returns { after: 10 }, 1_000),
        plan("temporary", Kind::Fails { after: 20 }, 0),
    ];
    plans[0].restart = Restart::Transient;
    plans[1].restart = Restart::Temporary;
    let ctx = "nothing left to run";
    let start = rt.now();
    let run = Run::stopped_at(10_000).strategy(Strategy::OneForAll);
    let (outcome, log) = supervise(&rt, &plans, run, ctx, None).await;
    assert_eq!(rt.now() - start, ms(20), "{ctx}");
    let report = outcome.unwrap();
    assert_eq!(
        (report.ended, report.restarts),
        (Ended::NoChildrenLeft, 0),
        "{ctx}"
    );
    assert!(report.stopped.is_empty(), "{ctx}");
    assert_eq!(exits_of(&log, "transient"), [(ms(10), Exit::Ok(()))]);
    assert_eq!(
        exits_of(&log, "temporary"),
        [(ms(20), Exit::Err(FAILURE.into()))]
    );
    assert_eq!(log.len(), 4, "{ctx}: two starts, two exits: {log:#?}");
}

#[test]
fn children_not_to_be_restarted_leave_no_children_on_every_runtime() {
    on_every_runtime!(nothing_left_to_run);
}

fn random_kind(rng: &mut Rng, stop_at: u64) -> Kind {
    let after = |rng: &mut Rng| {
        if rng.one_in(4) {
            stop_at.max(1)
        } else {
            1 + rng.below(150)
        }
    };
    match rng.below(7) {
        0 => Kind::Steady {
            stop_takes: [0, 5, 20, 50, 120][rng.index(5)],
        },
        1 => Kind::FailsOnStop {
            stop_takes: [0, 10, 50][rng.index(3)],
        },
        2 => Kind::Stubborn,
        3 | 4 => Kind::Fails { after: after(rng) },
        5 => Kind::Panics { after: after(rng) },
        _ => Kind::Returns { after: after(rng) },
    }
}

const NAMES: [&str; 5] = ["k0", "k1", "k2", "k3", "k4"];

/// A seeded random supervisor: 2 to 5 children of every kind, restart kind and timeout
/// (brutal kills included), a random strategy and intensity, stopped at a random instant
/// (often the very instant a child fails).
async fn random_supervision<R: Runtime>(rt: Clocked<R>, seed: u64, deferred: &Mutex<Vec<String>>) {
    let mut rng = Rng::new(seed);
    let stop_at = rng.below(300);
    let count = 2 + rng.index(4);
    let plans: Vec<Plan> = (0..count)
        .map(|i| Plan {
            name: NAMES[i],
            kind: random_kind(&mut rng, stop_at),
            timeout: [0, 0, 20, 50, 120, 1_000][rng.index(6)],
            restart: [Restart::Permanent, Restart::Transient, Restart::Temporary][rng.index(3)],
        })
        .collect();
    let strategy = [
        Strategy::OneForOne,
        Strategy::OneForAll,
        Strategy::RestForOne,
    ][rng.index(3)];
    let intensity = if rng.one_in(3) {
        (
            u32::try_from(rng.below(3)).unwrap(),
            ms(50 + rng.below(500)),
        )
    } else {
        GENEROUS
    };
    let backoff = ms(1 + rng.below(20));
    let ctx = format!(
        "seed {seed}: {plans:?}, {strategy:?}, intensity {intensity:?}, backoff {backoff:?}, \
         stop at {stop_at} ms"
    );
    let run = Run::stopped_at(stop_at)
        .strategy(strategy)
        .intensity(intensity)
        .backoff(backoff);
    let _ = supervise(&rt, &plans, run, &ctx, Some(deferred)).await;
}

#[test]
fn every_run_of_every_child_ends_exactly_once_under_random_stops_on_every_runtime() {
    let deferred = Mutex::new(Vec::new());
    for seed in 0..64_u64 {
        let seed = common::rng::mix(seed ^ 0x5EED_5709);
        on_every_runtime!(|rt| random_supervision(rt, seed, &deferred));
    }
    // The same rule, hit here when a child's exit and the stop come in the same virtual
    // instant and the supervisor sees the exit first (found by this sweep, e.g. seed
    // 6192628916218151763 under rest-for-one: k2, told 120 ms after the stop, was missing).
    let deferred = deferred.into_inner().unwrap();
    assert!(
        deferred.is_empty(),
        "{} runs left a child stopped after the stop out of `stopped`; the first:\n{}",
        deferred.len(),
        deferred[0]
    );
}

// ---------------------------------------------------------------------------------------
// 2. Drops: children aborted without waiting, each gone at its next await
// ---------------------------------------------------------------------------------------

/// Lets every task run until it is idle: virtual time only moves once they all are.
async fn settle<R: Runtime>(rt: &Clocked<R>) {
    rt.sleep(ms(1)).await;
}

/// A scope of four running children, each holding a clone of `held`: one waits forever, one
/// on a timer, one on the token then a timer, one in a loop.
async fn holding_scope<R: Runtime>(rt: &Clocked<R>, held: &Arc<()>) -> Scope<(), (), Clocked<R>> {
    let scope = Scope::builder()
        .runtime(rt.clone())
        .build::<(), ()>()
        .unwrap();
    let token = scope.token();
    for i in 0..4 {
        let (held, rt2, token) = (Arc::clone(held), rt.clone(), token.clone());
        let spawned = scope
            .spawn(async move {
                let _held = held;
                match i {
                    0 => std::future::pending::<()>().await,
                    1 => rt2.sleep(Duration::from_secs(3_600)).await,
                    2 => {
                        // Ignores the cancel: sleeps on after it.
                        token.cancelled().await;
                        rt2.sleep(Duration::from_secs(3_600)).await;
                    }
                    _ => loop {
                        YieldOnce::default().await;
                        rt2.sleep(ms(7)).await;
                    },
                }
                Ok(())
            })
            .await;
        assert!(spawned.is_ok());
    }
    settle(rt).await;
    assert_eq!(Arc::strong_count(held), 5, "every child is running");
    scope
}

/// Dropping a scope unjoined: its token is cancelled and each child is dropped at its next
/// poll, however it waits (forever, on a timer, on the token then a timer, in a loop).
async fn dropped_scope<R: Runtime>(rt: Clocked<R>) {
    let held = Arc::new(());
    let scope = holding_scope(&rt, &held).await;
    let token = scope.token();
    drop(scope);
    assert!(token.is_cancelled(), "dropping cancels the scope's token");
    settle(&rt).await;
    assert_eq!(
        Arc::strong_count(&held),
        1,
        "every child was dropped at its next poll"
    );
    assert_eq!(rt.clock().pending_timers(), 0, "and its timers with it");
}

#[test]
fn a_dropped_scope_drops_every_child_at_its_next_poll_on_every_runtime() {
    on_every_runtime!(dropped_scope);
}

/// The same, with only one yield after the drop, on tokio's current-thread runtime (whose
/// `block_on` runs the tasks woken meanwhile before it polls the main future again).
async fn dropped_scope_one_yield<R: Runtime>(rt: Clocked<R>) {
    let held = Arc::new(());
    let scope = holding_scope(&rt, &held).await;
    drop(scope);
    YieldOnce::default().await;
    assert_eq!(
        Arc::strong_count(&held),
        1,
        "one yield: each child had its next poll"
    );
}

#[test]
fn a_dropped_scope_frees_its_children_after_one_yield_on_a_current_thread_runtime() {
    common::on_tokio_current_thread(dropped_scope_one_yield);
}

/// A local scope's children are dropped with it, at once.
#[test]
fn a_dropped_local_scope_drops_its_children_at_once() {
    let held = Arc::new(());
    let scope = Scope::builder()
        .runtime(Clocked::new(Tokio))
        .build_local::<(), ()>()
        .unwrap();
    for _ in 0..3 {
        let held = Arc::clone(&held);
        assert!(
            scope
                .try_spawn(async move {
                    let _held = held;
                    std::future::pending::<()>().await;
                    Ok(())
                })
                .is_ok()
        );
    }
    assert_eq!(Arc::strong_count(&held), 4);
    drop(scope);
    assert_eq!(Arc::strong_count(&held), 1);
}

/// The stop token each holder was given, by name.
type Told = Arc<Mutex<Vec<(&'static str, CancellationToken)>>>;

/// A holder's run: it holds `guard` until its token is cancelled, or, if it `ignores` the
/// token, for an hour.
async fn hold<R: Runtime>(
    rt: Clocked<R>,
    stop: CancellationToken,
    ignores: bool,
    guard: Alive,
) -> Result<(), std::io::Error> {
    let _guard = guard;
    if ignores {
        rt.sleep(Duration::from_secs(3_600)).await;
    } else {
        stop.cancelled().await;
    }
    Ok(())
}

/// After a drop that told every holder to stop: each was told, and each is gone at its next
/// await, after one yield or once every task is idle.
async fn assert_told_and_gone<R: Runtime>(
    rt: &Clocked<R>,
    tokens: &Told,
    alive: &AtomicUsize,
    one_yield: bool,
    gone: &str,
) {
    for (name, token) in tokens.lock().unwrap().iter() {
        assert!(token.is_cancelled(), "{name} was told to stop");
    }
    if one_yield {
        YieldOnce::default().await;
    } else {
        settle(rt).await;
    }
    assert_eq!(alive.load(SeqCst), 0, "{gone}");
}

fn holder_specs<R: Runtime>(
    rt: &Clocked<R>,
    alive: &Arc<AtomicUsize>,
    tokens: &Told,
) -> Vec<ChildSpec> {
    let make = |name: &'static str, ignores: bool, timeout: Duration| {
        let (rt, alive, tokens) = (rt.clone(), Arc::clone(alive), Arc::clone(tokens));
        ChildSpec::new(name, move |stop: CancellationToken| {
            tokens.lock().unwrap().push((name, stop.clone()));
            hold(rt.clone(), stop, ignores, Alive::new(&alive))
        })
        .shutdown_timeout(timeout)
    };
    vec![
        make("a", false, ms(1_000)),
        make("b", true, ms(1_000)),
        make("c", true, Duration::from_secs(3_600)),
    ]
}

/// Polls `future` against a virtual sleep of `for_`; the sleep must win.
async fn poll_for<R: Runtime, F: Future + Unpin>(rt: &Clocked<R>, future: F, for_: Duration) {
    match select(future, Box::pin(rt.sleep(for_))).await {
        Either::Left(_) => panic!("it should still be running"),
        Either::Right(_) => {}
    }
}

/// A supervisor's `run` dropped while supervising, or in the middle of its ordered shutdown
/// (waiting an hour for c, which ignores its token): every child is told and gone.
async fn dropped_supervisor<R: Runtime>(rt: Clocked<R>, mid_shutdown: bool, one_yield: bool) {
    let alive = Arc::new(AtomicUsize::new(0));
    let tokens = Arc::default();
    let mut builder = Supervisor::builder().runtime(rt.clone());
    for spec in holder_specs(&rt, &alive, &tokens) {
        builder = builder.child(spec);
    }
    let supervisor = builder.build().unwrap();
    let stop = CancellationToken::new();
    let mut run = Box::pin(supervisor.run(stop.clone()));
    poll_for(&rt, run.as_mut(), ms(10)).await;
    assert_eq!(alive.load(SeqCst), 3);
    if mid_shutdown {
        stop.cancel("deploy");
        poll_for(&rt, run.as_mut(), ms(10)).await;
        let told: Vec<_> = tokens
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, t)| t.is_cancelled())
            .map(|(n, _)| *n)
            .collect();
        assert_eq!(told, ["c"], "c, added last, is being stopped first");
    }
    drop(run);
    let gone = format!("every child aborted at its next await (mid shutdown: {mid_shutdown})");
    assert_told_and_gone(&rt, &tokens, &alive, one_yield, &gone).await;
}

#[test]
fn a_dropped_supervisor_run_takes_every_child_down_on_every_runtime() {
    on_every_runtime!(|rt| dropped_supervisor(rt, false, false));
    on_every_runtime!(|rt| dropped_supervisor(rt, true, false));
}

#[test]
fn a_dropped_supervisor_run_frees_its_children_after_one_yield_on_a_current_thread_runtime() {
    common::on_tokio_current_thread(|rt| dropped_supervisor(rt, false, true));
    common::on_tokio_current_thread(|rt| dropped_supervisor(rt, true, true));
}

const COORDINATOR_DROPPED: &str = "shutdown coordinator dropped";

/// Components that hold a count while they run: "db" waits for its token, "cache" ignores
/// it (an hour), "http" ignores it too, with an hour's timeout.
fn register_holders<R: Runtime>(
    rt: &Clocked<R>,
    shutdown: &mut Shutdown<Clocked<R>>,
    alive: &Arc<AtomicUsize>,
    tokens: &Told,
) {
    for (name, ignores) in [("db", false), ("cache", true), ("http", true)] {
        let (rt, guard, tokens) = (rt.clone(), Alive::new(alive), Arc::clone(tokens));
        let start = move |stop: CancellationToken| {
            tokens.lock().unwrap().push((name, stop.clone()));
            hold(rt, stop, ignores, guard)
        };
        shutdown.register_with_timeout(name, Duration::from_secs(3_600), start);
    }
}

/// A coordinator dropped before `run`, or its `run` dropped while it waits for "http":
/// every component not yet stopped is told with the documented reason, and all are gone.
async fn dropped_shutdown<R: Runtime>(rt: Clocked<R>, during_run: bool, one_yield: bool) {
    let alive = Arc::new(AtomicUsize::new(0));
    let tokens = Arc::default();
    let mut shutdown = Shutdown::builder().runtime(rt.clone()).build().unwrap();
    register_holders(&rt, &mut shutdown, &alive, &tokens);
    settle(&rt).await;
    assert_eq!(alive.load(SeqCst), 3);
    if during_run {
        shutdown.trigger().cancel("deploy");
        let mut run = Box::pin(shutdown.run());
        poll_for(&rt, run.as_mut(), ms(10)).await;
        drop(run);
    } else {
        drop(shutdown);
    }
    for (name, token) in tokens.lock().unwrap().iter() {
        if !during_run || *name != "http" {
            assert_eq!(
                token.reason().map(|r| r.as_str().to_owned()).as_deref(),
                Some(COORDINATOR_DROPPED),
                "{name}'s reason (during run: {during_run})"
            );
        }
    }
    let gone = format!("every component aborted at its next await (during run: {during_run})");
    assert_told_and_gone(&rt, &tokens, &alive, one_yield, &gone).await;
}

#[test]
fn a_dropped_shutdown_takes_every_component_down_on_every_runtime() {
    on_every_runtime!(|rt| dropped_shutdown(rt, false, false));
    on_every_runtime!(|rt| dropped_shutdown(rt, true, false));
}

#[test]
fn a_dropped_shutdown_frees_its_components_after_one_yield_on_a_current_thread_runtime() {
    common::on_tokio_current_thread(|rt| dropped_shutdown(rt, false, true));
    common::on_tokio_current_thread(|rt| dropped_shutdown(rt, true, true));
}

// ---------------------------------------------------------------------------------------
// 3. CoDel: from when the queue began to stand, if the bulkhead knew it
// ---------------------------------------------------------------------------------------

type Waiting<T> = Pin<Box<dyn Future<Output = Result<T, Rejected>> + Send>>;

/// Polls once: the future must be waiting (queued).
fn queued<T>(future: impl Future<Output = Result<T, Rejected>> + Send + 'static) -> Waiting<T> {
    let mut future: Waiting<T> = Box::pin(future);
    assert!(
        future
            .as_mut()
            .poll(&mut Context::from_waker(noop_waker_ref()))
            .is_pending(),
        "it should wait"
    );
    future
}

fn poll<T>(future: &mut Waiting<T>) -> Poll<Result<(), Rejected>> {
    future
        .as_mut()
        .poll(&mut Context::from_waker(noop_waker_ref()))
        .map(|r| r.map(drop))
}

fn codel(target: u64, interval: u64) -> QueueDiscipline {
    QueueDiscipline::Codel {
        target: ms(target),
        interval: ms(interval),
    }
}

fn bulkhead_settings(discipline: QueueDiscipline) -> tidewall::bulkhead::BulkheadBuilder {
    Bulkhead::builder(1)
        .max_queue(16)
        .max_wait(Duration::from_secs(1))
        .discipline(discipline)
}

fn bulkhead(clock: &FakeClock, discipline: QueueDiscipline) -> Bulkhead<FakeClock> {
    bulkhead_settings(discipline)
        .runtime(clock.clone())
        .build()
        .unwrap()
}

type BulkheadPermit = tidewall::bulkhead::OwnedPermit<FakeClock>;

/// A caller joining `bulkhead` now: polled once, it waits.
fn join(bulkhead: &Bulkhead<FakeClock>) -> Waiting<BulkheadPermit> {
    queued(bulkhead.acquire_owned(Deadline::none()))
}

/// A bulkhead of one slot under `discipline` on a fresh clock, its slot held and a first
/// caller waiting from the clock's start.
fn standing(
    discipline: QueueDiscipline,
) -> (
    FakeClock,
    Bulkhead<FakeClock>,
    BulkheadPermit,
    Waiting<BulkheadPermit>,
) {
    let clock = FakeClock::new();
    let b = bulkhead(&clock, discipline);
    let held = b.try_acquire_owned().unwrap();
    let first = join(&b);
    (clock, b, held, first)
}

/// The waiter is cut at `target` after it joined (refused `BulkheadFull` then, not before).
fn assert_cut<T>(clock: &FakeClock, waiter: &mut Waiting<T>, target: u64, what: &str) {
    clock.advance(ms(target - 1));
    assert!(
        poll(waiter).is_pending(),
        "{what}: still waiting 1 ms before the cut"
    );
    clock.advance(ms(1));
    assert_eq!(
        poll(waiter),
        Poll::Ready(Err(Rejected::BulkheadFull)),
        "{what}: cut at {target} ms"
    );
}

/// The waiter is not cut: it is still waiting `beyond` ms after it joined.
fn assert_not_cut<T>(clock: &FakeClock, waiter: &mut Waiting<T>, beyond: u64, what: &str) {
    clock.advance(ms(beyond));
    assert!(
        poll(waiter).is_pending(),
        "{what}: not cut, still waiting after {beyond} ms"
    );
}

/// A plain FIFO queue does not note when it began: switched to CoDel after standing 200 ms,
/// it counts from the switch (a caller joining then waits its `max_wait`; one joining
/// `interval` after the switch is cut at `target`).
#[test]
fn a_fifo_queue_switched_to_codel_counts_from_the_switch() {
    let (clock, b, _held, mut first) = standing(QueueDiscipline::Fifo);
    clock.advance(ms(200));
    b.reconfigure(bulkhead_settings(codel(5, 100))).unwrap();
    let mut at_switch = join(&b);
    assert_not_cut(&clock, &mut at_switch, 50, "a caller joining at the switch");
    clock.advance(ms(49)); // 99 ms after the switch
    let mut early = join(&b);
    clock.advance(ms(1)); // 100 ms after the switch: the queue has stood `interval`
    let mut late = join(&b);
    assert_cut(
        &clock,
        &mut late,
        5,
        "a caller joining 100 ms after the switch",
    );
    assert!(
        poll(&mut early).is_pending(),
        "the early caller keeps its wait"
    );
    assert!(poll(&mut first).is_pending());
    assert!(poll(&mut at_switch).is_pending());
}

/// LIFO tracks when the queue began to stand: switched to CoDel after 200 ms, the queue has
/// stood `interval` already, and the next caller is cut at `target`.
#[test]
fn a_lifo_queue_switched_to_codel_counts_from_when_it_began() {
    let (clock, b, _held, mut first) = standing(QueueDiscipline::Lifo);
    clock.advance(ms(200));
    b.reconfigure(bulkhead_settings(codel(5, 100))).unwrap();
    let mut joiner = join(&b);
    assert_cut(
        &clock,
        &mut joiner,
        5,
        "a caller joining a LIFO queue standing 200 ms",
    );
    assert!(
        poll(&mut first).is_pending(),
        "the first caller keeps its 1 s wait"
    );
}

/// CoDel retuned to other durations keeps the moment it began: a queue standing 50 ms
/// under an `interval` of 40 ms cuts at once.
#[test]
fn codel_retuned_to_a_shorter_interval_counts_from_when_the_queue_began() {
    let (clock, b, _held, mut first) = standing(codel(5, 100));
    clock.advance(ms(50));
    b.reconfigure(bulkhead_settings(codel(10, 40))).unwrap();
    let mut joiner = join(&b);
    assert_cut(&clock, &mut joiner, 10, "the new target, counted from 0");
    assert!(poll(&mut first).is_pending());
}

/// A queue that had CoDel, switched to FIFO (no bound), then back to CoDel: it had CoDel
/// before, so it counts from when it began.
#[test]
fn codel_switched_off_and_on_again_counts_from_when_the_queue_began() {
    let (clock, b, _held, mut first) = standing(codel(5, 100));
    clock.advance(ms(150));
    b.reconfigure(bulkhead_settings(QueueDiscipline::Fifo))
        .unwrap();
    let mut under_fifo = join(&b);
    assert_not_cut(&clock, &mut under_fifo, 20, "FIFO bounds no wait");
    clock.advance(ms(30)); // 200 ms
    b.reconfigure(bulkhead_settings(codel(5, 100))).unwrap();
    let mut joiner = join(&b);
    assert_cut(&clock, &mut joiner, 5, "back to CoDel: standing since 0");
    assert!(poll(&mut first).is_pending());
    assert!(poll(&mut under_fifo).is_pending());
}

/// A CoDel queue that empties (its only waiter leaves, or is admitted, or runs out of
/// deadline) starts counting again when it refills.
#[test]
fn a_codel_queue_that_empties_and_refills_counts_from_the_refill() {
    for how in ["leaves", "admitted", "deadline"] {
        let clock = FakeClock::new();
        let b = bulkhead(&clock, codel(5, 100));
        let mut held = Some(b.try_acquire_owned().unwrap());
        let start = clock.now();
        let mut first: Waiting<_> = if how == "deadline" {
            queued(b.acquire_owned(Deadline::at(start + ms(150))))
        } else {
            join(&b)
        };
        clock.advance(ms(150));
        let _admitted = match how {
            "leaves" => {
                drop(first);
                None
            }
            "admitted" => {
                drop(held.take());
                let Poll::Ready(Ok(permit)) = first
                    .as_mut()
                    .poll(&mut Context::from_waker(noop_waker_ref()))
                else {
                    panic!("the freed slot goes to the waiter");
                };
                Some(permit)
            }
            _ => {
                assert_eq!(
                    poll(&mut first),
                    Poll::Ready(Err(Rejected::DeadlineExceeded))
                );
                None
            }
        };
        assert_eq!(b.queued(), 0, "{how}: the queue is empty at 150 ms");
        clock.advance(ms(10)); // 160 ms: it refills
        let mut refill = join(&b);
        clock.advance(ms(99)); // it has stood 99 ms
        let mut early = join(&b);
        clock.advance(ms(1)); // 100 ms
        let mut late = join(&b);
        assert_cut(&clock, &mut late, 5, how);
        assert!(
            poll(&mut early).is_pending(),
            "{how}: joined before `interval`"
        );
        assert!(poll(&mut refill).is_pending(), "{how}");
    }
}

/// A LIFO queue empties and refills, is switched to FIFO, then to CoDel: it had LIFO
/// before, so it knew when the current standing began (the refill at 30 ms), neither from
/// its first standing (0) nor from the switch.
#[test]
fn a_queue_that_had_lifo_knows_when_its_refill_began_standing() {
    let (clock, b, _held, first) = standing(QueueDiscipline::Lifo);
    clock.advance(ms(10));
    drop(first);
    clock.advance(ms(10)); // 20 ms
    b.reconfigure(bulkhead_settings(QueueDiscipline::Fifo))
        .unwrap();
    clock.advance(ms(10)); // 30 ms
    let mut refill = join(&b);
    clock.advance(ms(90)); // 120 ms: stood 90 ms since the refill
    b.reconfigure(bulkhead_settings(codel(5, 100))).unwrap();
    let mut early = join(&b);
    assert_not_cut(&clock, &mut early, 10, "stood 90 ms at its join");
    // 130 ms: stood 100 ms since the refill.
    let mut late = join(&b);
    assert_cut(
        &clock,
        &mut late,
        5,
        "stood 100 ms since the refill at 30 ms",
    );
    assert!(poll(&mut refill).is_pending());
}

fn limiter_settings(
    discipline: QueueDiscipline,
) -> tidewall::adaptive::AdaptiveLimiterBuilder<FixedLimit> {
    AdaptiveLimiter::builder(FixedLimit(1))
        .max_queue(16)
        .max_wait(Duration::from_secs(1))
        .discipline(discipline)
}

type Limiter = AdaptiveLimiter<FixedLimit, FakeClock>;
type LimiterPermit = tidewall::adaptive::AdaptivePermit<FixedLimit, FakeClock>;

fn admit_as(limiter: &Limiter, priority: Priority) -> Waiting<LimiterPermit> {
    queued(
        limiter
            .with_priority(priority)
            .admit(Wait::Until(Deadline::none())),
    )
}

/// A plain FIFO limit of one on a fresh clock, its slot held and a first caller of
/// `priority` waiting from the clock's start.
fn standing_limiter(
    priority: Priority,
) -> (FakeClock, Limiter, LimiterPermit, Waiting<LimiterPermit>) {
    let clock = FakeClock::new();
    let limiter = limiter_settings(QueueDiscipline::Fifo)
        .runtime(clock.clone())
        .build()
        .unwrap();
    let held = limiter.try_acquire().unwrap();
    let first = admit_as(&limiter, priority);
    (clock, limiter, held, first)
}

/// The CHANGELOG's bug: a FIFO queue whose first waiter ever was critical or sheddable did
/// not note when it began to stand. With priorities it knows: CoDel switched on after
/// 200 ms cuts the next caller (of any priority) at `target`.
#[test]
fn a_queue_whose_first_waiter_ever_had_a_priority_knows_when_it_began_to_stand() {
    for (first_priority, joiner_priority) in [
        (Priority::Sheddable, Priority::Default),
        (Priority::Critical, Priority::Default),
        (Priority::Sheddable, Priority::Critical),
        (Priority::Critical, Priority::Sheddable),
    ] {
        let what = format!("first waiter {first_priority:?}, joiner {joiner_priority:?}");
        let (clock, limiter, _held, mut first) = standing_limiter(first_priority);
        assert_eq!(limiter.queued(), 1, "{what}");
        clock.advance(ms(200));
        limiter
            .reconfigure(limiter_settings(codel(5, 100)))
            .unwrap();
        let mut joiner = admit_as(&limiter, joiner_priority);
        assert_cut(&clock, &mut joiner, 5, &what);
        assert!(
            poll(&mut first).is_pending(),
            "{what}: the first keeps its wait"
        );
        clock.advance(ms(795)); // 1 s after it joined
        assert_eq!(
            poll(&mut first),
            Poll::Ready(Err(Rejected::BulkheadFull)),
            "{what}: the first waited its `max_wait`"
        );
    }
}

/// A queue that had priorities empties, refills with a default waiter at 30 ms, and is
/// switched to CoDel at 120 ms: it knew when the refill began standing.
#[test]
fn a_queue_that_had_priorities_knows_when_its_refill_began_standing() {
    let (clock, limiter, _held, first) = standing_limiter(Priority::Critical);
    clock.advance(ms(10));
    drop(first);
    assert_eq!(limiter.queued(), 0);
    clock.advance(ms(20)); // 30 ms
    let mut refill = admit_as(&limiter, Priority::Default);
    clock.advance(ms(90)); // 120 ms
    limiter
        .reconfigure(limiter_settings(codel(5, 100)))
        .unwrap();
    let mut early = admit_as(&limiter, Priority::Default);
    assert_not_cut(&clock, &mut early, 10, "stood 90 ms at its join");
    let mut late = admit_as(&limiter, Priority::Sheddable);
    assert_cut(
        &clock,
        &mut late,
        5,
        "stood 100 ms since the refill at 30 ms",
    );
    assert!(poll(&mut refill).is_pending());
}

/// A limiter without priorities or another discipline (plain FIFO, default callers) counts
/// from the switch, as a plain bulkhead does.
#[test]
fn a_limiter_queue_of_default_callers_switched_to_codel_counts_from_the_switch() {
    let (clock, limiter, _held, mut first) = standing_limiter(Priority::Default);
    clock.advance(ms(200));
    limiter
        .reconfigure(limiter_settings(codel(5, 100)))
        .unwrap();
    let mut at_switch = admit_as(&limiter, Priority::Default);
    assert_not_cut(&clock, &mut at_switch, 99, "joined at the switch");
    clock.advance(ms(1)); // 100 ms after the switch
    let mut late = admit_as(&limiter, Priority::Default);
    assert_cut(&clock, &mut late, 5, "100 ms after the switch");
    assert!(poll(&mut first).is_pending());
}

/// Through a registry: a reload that switches a standing LIFO queue (or an adaptive queue
/// whose first waiter was sheddable) to CoDel cuts the next caller at `target`; a plain
/// FIFO bulkhead counts from the reload.
#[tokio::test]
async fn a_reload_switching_a_standing_queue_to_codel_counts_as_the_docs_say() {
    let text = |lifo: &str, fifo: &str, codel_keys: &str| {
        format!(
            "[instances.lifo.bulkhead]\nmax_concurrent = 1\nmax_queue = 8\nmax_wait = \"1s\"\n\
             discipline = \"{lifo}\"\n{codel_keys}\n\
             [instances.fifo.bulkhead]\nmax_concurrent = 1\nmax_queue = 8\nmax_wait = \"1s\"\n\
             discipline = \"{fifo}\"\n{codel_keys}\n\
             [instances.adaptive.adaptive]\nalgorithm = \"aimd\"\nmin_limit = 1\n\
             initial_limit = 1\nmax_limit = 1\nmax_queue = 8\nmax_wait = \"1s\"\n\
             discipline = \"{fifo}\"\n{codel_keys}\n"
        )
    };
    let codel_keys = "codel_target = \"5ms\"\ncodel_interval = \"100ms\"";
    let rt = Clocked::new(Tokio);
    let clock = rt.clock().clone();
    let registry = Registry::builder(config(&text("lifo", "fifo", "")))
        .runtime(rt.clone())
        .build()
        .unwrap();
    let lifo = registry.bulkhead("lifo").unwrap();
    let fifo = registry.bulkhead("fifo").unwrap();
    let adaptive = registry.adaptive_limiter("adaptive").unwrap();
    let _held = (
        lifo.try_acquire_owned().unwrap(),
        fifo.try_acquire_owned().unwrap(),
        adaptive.try_acquire().unwrap(),
    );
    let mut first_lifo = queued(lifo.acquire_owned(Deadline::none()));
    let mut first_fifo = queued(fifo.acquire_owned(Deadline::none()));
    let sheddable = adaptive.with_priority(Priority::Sheddable);
    let mut first_adaptive = queued(sheddable.admit(Wait::Until(Deadline::none())));
    clock.advance(ms(200));
    let reload = registry
        .reload(config(&text("codel", "codel", codel_keys)))
        .unwrap();
    assert!(
        reload.relearning.is_empty(),
        "only the discipline changed: {reload:?}"
    );
    let mut lifo_joiner = queued(lifo.acquire_owned(Deadline::none()));
    let mut fifo_joiner = queued(fifo.acquire_owned(Deadline::none()));
    let mut adaptive_joiner = queued(adaptive.admit(Wait::Until(Deadline::none())));
    clock.advance(ms(4));
    assert!(poll(&mut lifo_joiner).is_pending());
    assert!(poll(&mut adaptive_joiner).is_pending());
    clock.advance(ms(1));
    assert_eq!(
        poll(&mut lifo_joiner),
        Poll::Ready(Err(Rejected::BulkheadFull)),
        "LIFO knew"
    );
    assert_eq!(
        poll(&mut adaptive_joiner),
        Poll::Ready(Err(Rejected::BulkheadFull)),
        "a sheddable first waiter: the queue knew"
    );
    assert!(
        poll(&mut fifo_joiner).is_pending(),
        "a plain FIFO queue counts from the reload"
    );
    assert!(poll(&mut first_adaptive).is_pending());
    assert!(poll(&mut first_lifo).is_pending());
    assert!(poll(&mut first_fifo).is_pending());
}

// ---------------------------------------------------------------------------------------
// 4. Reloads: keyed breaker tables in `reset`, keyed adaptive tables in `relearning`
// ---------------------------------------------------------------------------------------

fn config(text: &str) -> Config {
    Config::from_toml(text).unwrap_or_else(|e| panic!("a valid configuration: {e}\n{text}"))
}

fn names(list: &[tidewall::Name]) -> Vec<String> {
    let mut names: Vec<String> = list.iter().map(|n| n.to_string()).collect();
    names.sort();
    names
}

/// Instances a..f: keyed tables (a, b, c, e, f) and plain breakers (d, and the plain
/// breakers asked for by the name of keyed instances a, b, e, f). `window_line` is the
/// defaults' window; `a_line` is instance a's own breaker keys.
fn breakers_text(window_line: &str, a_line: &str) -> String {
    let mut text = format!("[defaults.breaker]\nconsecutive_failures = 1\n{window_line}\n");
    for name in ["a", "b", "c", "d", "e", "f"] {
        text.push_str(&format!("[instances.{name}.breaker]\n"));
        if name == "a" {
            text.push_str(a_line);
            text.push('\n');
        }
        if name != "d" {
            text.push_str(&format!("[instances.{name}.keys]\nmax_keys = 64\n"));
        }
    }
    text
}

#[tokio::test(start_paused = true)]
async fn reload_names_each_keyed_breaker_table_once_and_never_a_forced_one() {
    let registry = Registry::new(config(&breakers_text("window_calls = 10", ""))).unwrap();
    let reload_with = |window_line: &str, a_line: &str| {
        registry
            .reload(config(&breakers_text(window_line, a_line)))
            .unwrap()
    };
    let keyed = |name: &str| registry.keyed_breaker::<String>(name).unwrap();
    let (a, b, c, e, f) = (keyed("a"), keyed("b"), keyed("c"), keyed("e"), keyed("f"));
    let plain = |name: &str| registry.breaker(name).unwrap();
    let (pa, pb, pd, pe, pf) = (plain("a"), plain("b"), plain("d"), plain("e"), plain("f"));
    let k = |s: &str| s.to_owned();

    // a: one key open, one closed; its plain breaker closed (it resets too: still once).
    let _ = a.call(&k("1"), || async { Err::<(), _>("down") }).await;
    assert!(
        a.call(&k("2"), || async { Ok::<_, &str>(()) })
            .await
            .is_ok()
    );
    assert_eq!(a.state(&k("1")), Some(State::Open));
    // b: every key and its plain breaker forced by hand: nothing of b is reset.
    b.get_or_make(&k("1")).unwrap().force_open();
    b.get_or_make(&k("2")).unwrap().force_closed();
    pb.force_open();
    let (_, b1_generation) = b.get(&k("1")).unwrap().state_and_generation();
    // c: a table with no key at all.
    assert_eq!(c.len(), 0);
    // e: its only key forced, its plain breaker not: named once, for the plain one.
    e.get_or_make(&k("1")).unwrap().force_open();
    // f: its key closed, its plain breaker forced closed: named once, for the key.
    assert!(
        f.call(&k("1"), || async { Ok::<_, &str>(()) })
            .await
            .is_ok()
    );
    pf.force_closed();

    let reload = reload_with("window_calls = 20", "");
    assert_eq!(
        names(&reload.reset),
        ["a", "d", "e", "f"],
        "each table or breaker name once, no forced-only name, no keyless table: {reload:?}"
    );
    assert_eq!(
        a.state(&k("1")),
        Some(State::Closed),
        "a's open key was reset"
    );
    assert_eq!(
        (b.state(&k("1")), b.state(&k("2")), pb.state()),
        (
            Some(State::ForcedOpen),
            Some(State::ForcedClosed),
            State::ForcedOpen
        ),
        "forced breakers stay forced"
    );
    assert_eq!(
        b.get(&k("1")).unwrap().state_and_generation(),
        (State::ForcedOpen, b1_generation),
        "kept forced in the same generation"
    );
    assert_eq!(e.state(&k("1")), Some(State::ForcedOpen));
    assert_eq!(pf.state(), State::ForcedClosed);
    for (name, policy) in [
        ("a", a.policy()),
        ("b", b.policy()),
        ("c", c.policy()),
        ("e", e.policy()),
        ("f", f.policy()),
        ("pa", pa.policy()),
        ("pd", pd.policy()),
        ("pe", pe.policy()),
    ] {
        assert_eq!(policy.window(), Window::Count { calls: 20 }, "{name}");
    }

    // The same configuration again: every window keeps its shape, nothing is reset.
    let again = reload_with("window_calls = 20", "");
    assert!(again.reset.is_empty(), "{again:?}");

    // Another length again: the same names, each once.
    let third = reload_with("window_calls = 30", "");
    assert_eq!(names(&third.reset), ["a", "d", "e", "f"], "{third:?}");

    // Only a's own window: only a.
    let fourth = reload_with("window_calls = 30", "window_calls = 40");
    assert_eq!(names(&fourth.reset), ["a"], "{fourth:?}");
    assert_eq!(a.policy().window(), Window::Count { calls: 40 });
    assert_eq!(pa.policy().window(), Window::Count { calls: 40 });

    // A key of a, forced now: a's other key and its plain breaker still reset: a once.
    a.get_or_make(&k("1")).unwrap().force_open();
    let fifth = reload_with("window_calls = 30", "window_calls = 50");
    assert_eq!(names(&fifth.reset), ["a"], "{fifth:?}");
    assert_eq!(a.state(&k("1")), Some(State::ForcedOpen));
}

/// Two keyed-only instances: a table whose keys are reset is named even with no plain
/// breaker of its name, and an instance whose table was never asked for is not named.
#[tokio::test(start_paused = true)]
async fn reload_names_keyed_tables_without_a_plain_breaker() {
    let text = |calls: u32| {
        format!(
            "[defaults.breaker]\nwindow_calls = {calls}\n\
             [instances.x.breaker]\n[instances.x.keys]\nmax_keys = 8\n\
             [instances.y.breaker]\n[instances.y.keys]\nmax_keys = 8\n\
             [instances.z.breaker]\n[instances.z.keys]\nmax_keys = 8\n"
        )
    };
    let registry = Registry::new(config(&text(10))).unwrap();
    let x = registry.keyed_breaker::<u32>("x").unwrap();
    let y = registry.keyed_breaker::<u32>("y").unwrap();
    for key in 0..5 {
        assert!(x.call(&key, || async { Ok::<_, &str>(()) }).await.is_ok());
    }
    assert!(y.call(&7, || async { Ok::<_, &str>(()) }).await.is_ok());
    assert!(
        registry.breakers().is_empty(),
        "keyed instances make no plain breaker"
    );
    let reload = registry.reload(config(&text(11))).unwrap();
    assert_eq!(names(&reload.reset), ["x", "y"], "{reload:?}");
    assert!(registry.breakers().is_empty());
}

fn adaptive_text(x_initial: u32, x_extra: &str, y_initial: u32, y_extra: &str) -> String {
    format!(
        "[instances.x.adaptive]\nalgorithm = \"aimd\"\nmin_limit = 1\ninitial_limit = {x_initial}\n{x_extra}\n\
         [instances.x.keys]\nmax_keys = 100\n\
         [instances.y.adaptive]\nalgorithm = \"aimd\"\nmin_limit = 1\ninitial_limit = {y_initial}\n{y_extra}\n\
         [instances.y.keys]\nmax_keys = 100\n"
    )
}

#[tokio::test(start_paused = true)]
async fn reload_names_each_keyed_adaptive_table_once_and_keeps_what_others_learned() {
    let registry = Registry::new(config(&adaptive_text(4, "", 4, ""))).unwrap();
    let x = registry.keyed_adaptive_limiter::<String>("x").unwrap();
    let y = registry.keyed_adaptive_limiter::<String>("y").unwrap();
    let plain_x = registry.adaptive_limiter("x").unwrap();
    let slow = "slow.example".to_owned();
    x.try_acquire(&slow).unwrap().failure();
    y.try_acquire(&slow).unwrap().failure();
    plain_x.try_acquire().unwrap().failure();
    assert_eq!(
        (x.limit(&slow), y.limit(&slow), plain_x.limit()),
        (Some(3), Some(3), 3)
    );

    // x's algorithm changes (plain and keyed: named once); y writes a default out and
    // changes only the limiter's own queue: no change of algorithm.
    let reload = registry
        .reload(config(&adaptive_text(
            6,
            "",
            4,
            "backoff_ratio = 0.9\nmax_queue = 2",
        )))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(names(&reload.relearning), ["x"], "{reload:?}");
    assert!(reload.reset.is_empty());
    assert_eq!(x.limit(&slow), Some(6), "every key of x starts again");
    assert_eq!(plain_x.limit(), 6);
    assert_eq!(y.limit(&slow), Some(3), "y keeps what it learned");

    // Learn again, then reload the same configuration: nothing relearns.
    x.try_acquire(&slow).unwrap().failure();
    assert_eq!(x.limit(&slow), Some(5));
    let again = registry
        .reload(config(&adaptive_text(
            6,
            "",
            4,
            "backoff_ratio = 0.9\nmax_queue = 2",
        )))
        .unwrap();
    assert!(again.relearning.is_empty(), "{again:?}");
    assert_eq!((x.limit(&slow), y.limit(&slow)), (Some(5), Some(3)));

    // Both change: both named, each once.
    let both = registry
        .reload(config(&adaptive_text(7, "", 8, "")))
        .unwrap();
    assert_eq!(names(&both.relearning), ["x", "y"], "{both:?}");
    assert_eq!(
        (x.limit(&slow), y.limit(&slow), plain_x.limit()),
        (Some(7), Some(8), 7)
    );
}
